"""`mixcd report`: read run folders, aggregate seeds, compare samplers at equal compute.

Runs are grouped by their whole configuration (every setting that can change a result; seeds,
paths, devices and logging aside), so runs that differ in any override — `trainer.steps`, the
model's norm — never merge; a seed run twice in one group counts once. Each group shows mean ±
std (n) beside the ledger. For every sampler other than random, the *random-equivalent budget* is
the rehearsal budget random rehearsal with the same settings would need, interpolated on its own
curve, to reach the same prior-test accuracy; it is given from the means, for each seed pair, and
with a paired bootstrap interval over seeds. At each ratio the samplers on the Pareto frontier of
(pre_acc, ft_acc) are marked.
"""

from __future__ import annotations

import csv
import json
import math
import random as _random
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import compare
from .errors import MixcdError
from .schema import INTRODUCED, SAMPLER_SCHEMAS, flatten, sampler_defaults

REQUIRED = ("sampler", "mix_ratio", "seed", "pre_acc", "ft_acc", "forgetting", "ledger")
METRICS = ("pre_acc", "forgetting", "ft_acc", "hit_rate", "signal_rate", "signal_precision", "signal_recall",
           "cd_rate", "cd_rate_class_min", "cd_rate_class_max", "ledger_finetune", "ledger_rehearsal",
           "ledger_selection", "training_passes", "wall_time")
# Config keys (and key prefixes) that cannot change what a run measures: they never split a group.
NOT_GROUPING = ("seed", "stage", "device", "resume", "threads", "paths", "hydra", "run_dir", "eval", "snapshot",
                "logger", "optimized_metric",
                "trainer.log_every", "trainer.audit_every", "trainer.checkpoint_every", "trainer.data_on_device")
# Multi-stage runs (DESIGN §10) add these columns: final average accuracy over every task, average accuracy on
# the tasks before the last stage, backward transfer, and average forgetting of the earlier tasks.
SEQUENCE_METRICS = ("earlier_acc", "avg_acc", "bwt", "avg_forgetting")
# What retention means in the random-equivalent budget, the frontier and the plots: accuracy on the tasks
# before the last stage (for a single fine-tuning that is the prior-test accuracy, pre_acc).
RETENTION = "earlier_acc"
BOOTSTRAP_SAMPLES = 2000
Settings = tuple[tuple[str, str], ...]


@dataclass
class Run:
    path: Path
    experiment: str
    sampler: str
    mix_ratio: float
    seed: int
    values: dict[str, float | None]
    settings: Settings = ()  # what must match for runs to be compared (sampler options aside)
    options: Settings = ()  # the sampler's own options
    mtime: float = 0.0
    matrix: list[list[float | None]] | None = None  # the accuracy matrix of a multi-stage run


@dataclass
class Group:
    experiment: str
    sampler: str
    mix_ratio: float
    settings: Settings = ()
    options: Settings = ()
    runs: list[Run] = field(default_factory=list)
    duplicates: int = 0  # runs left out because their seed was already in the group
    label: str = ""  # the settings that set this group apart from the experiment's others
    variant: str = ""  # the sampler options that set it apart from the same sampler's other groups
    frontier: bool | None = None  # on the Pareto frontier of (pre_acc, ft_acc) at its ratio

    @property
    def name(self) -> str:
        """The sampler, with its distinguishing options: ``mixcd (partition=aux aux_column=source)``."""
        return self.sampler + (f" ({self.variant})" if self.variant else "")

    def seeds(self) -> dict[int, Run]:
        return {r.seed: r for r in self.runs}

    def mean_over(self, key: str, seeds: Sequence[int]) -> float | None:
        by_seed = self.seeds()
        vals = [by_seed[s].values.get(key) for s in seeds]
        return None if not vals or any(v is None for v in vals) else sum(vals) / len(vals)  # type: ignore[misc]

    def stat(self, key: str) -> tuple[float | None, float | None, int]:
        """(mean, sample std, n) over the runs that have the value."""
        vals = [r.values[key] for r in self.runs if r.values.get(key) is not None]
        if not vals:
            return None, None, 0
        mean = sum(vals) / len(vals)
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
        return mean, std, len(vals)


def _flatten(m: dict[str, Any]) -> dict[str, float | None]:
    ledger = m.get("ledger") or {}
    fwd, bwd = ledger.get("forward", {}), ledger.get("backward", {})
    cats = m.get("categories") or {}
    by_class = [v for v in (cats.get("cd_rate_by_class") or {}).values() if v is not None]
    wall = m.get("wall_time") or {}
    return {
        "pre_acc": m.get("pre_acc"), "forgetting": m.get("forgetting"), "ft_acc": m.get("ft_acc"),
        # runs of one stage (also those made before sequences existed): the earlier task is the prior task
        "earlier_acc": m.get("earlier_acc", m.get("pre_acc")), "avg_acc": m.get("avg_acc"), "bwt": m.get("bwt"),
        "avg_forgetting": m.get("avg_forgetting"), "num_stages": m.get("num_stages", 1),
        "hit_rate": m.get("hit_rate"), "signal_rate": m.get("signal_rate"),
        "signal_precision": m.get("signal_precision"), "signal_recall": m.get("signal_recall"),
        "cd_rate": cats.get("cd_rate"),
        # how concentrated the damage is: the CD rates of the least and the most damaged prior class
        "cd_rate_class_min": min(by_class) if by_class else None,
        "cd_rate_class_max": max(by_class) if by_class else None,
        "ledger_finetune": fwd.get("finetune", 0) + bwd.get("finetune", 0),
        "ledger_rehearsal": fwd.get("rehearsal", 0) + bwd.get("rehearsal", 0),
        "ledger_selection": fwd.get("selection", 0) + bwd.get("selection", 0),
        "training_passes": ledger.get("training_passes"),
        "rehearsal_budget": fwd.get("rehearsal", 0),
        "wall_time": wall.get("finetune"),
    }


def collect(paths: Iterable[Path], stage: str = "train") -> tuple[list[Run], list[tuple[Path, str]]]:
    """Every run folder under ``paths`` (any depth): (runs, skipped with the reason)."""
    runs: list[Run] = []
    skipped: list[tuple[Path, str]] = []
    seen: set[Path] = set()
    for root in paths:
        root = Path(root)
        if not root.exists():
            raise MixcdError(f"no such folder: {root}")
        for cfg_path in sorted(root.rglob("config.yaml")):
            folder = cfg_path.parent
            if folder in seen or "cache" in folder.relative_to(root).parts or folder.name == ".hydra":
                continue
            seen.add(folder)
            metrics_path = folder / "metrics.json"
            if not metrics_path.is_file():
                if _stage_of(cfg_path) == stage:
                    error = folder / "error.txt"
                    why = f"failed: {error.read_text().strip()}" if error.is_file() else \
                        "no metrics.json (unfinished or failed run)"
                    skipped.append((folder, why))
                continue
            try:
                m = json.loads(metrics_path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                skipped.append((folder, f"metrics.json is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc})"))
                continue
            if not isinstance(m, dict):
                skipped.append((folder, "metrics.json is not an object"))
                continue
            if m.get("stage", "train") != stage:
                continue
            missing = [k for k in REQUIRED if m.get(k) is None and k != "forgetting"]
            if missing:
                skipped.append((folder, f"metrics.json lacks {', '.join(missing)}"))
                continue
            settings, options = run_settings(cfg_path)
            runs.append(Run(folder, str(m.get("experiment", "?")), str(m["sampler"]), float(m["mix_ratio"]),
                            int(m["seed"]), _flatten(m), settings, options, metrics_path.stat().st_mtime,
                            m.get("accuracy_matrix") if (m.get("num_stages") or 1) > 1 else None))
    return runs, skipped


def run_settings(cfg_path: Path) -> tuple[Settings, Settings]:
    """(settings, sampler options) of a run's saved configuration, as sorted (key, JSON value) pairs."""
    import yaml

    try:
        cfg = yaml.safe_load(cfg_path.read_text(errors="replace")) or {}
    except yaml.YAMLError:
        cfg = {}
    settings, options = [], []
    flat = flatten(cfg if isinstance(cfg, dict) else {})
    missing = {k: v for k, v in INTRODUCED.items() if not any(f == k or f.startswith(k + ".") for f in flat)}
    for key, value in {**missing, **flat}.items():
        if any(key == k or key.startswith(k + ".") for k in NOT_GROUPING):
            continue
        item = (key, json.dumps(value, sort_keys=True))
        if key.startswith("sampler."):
            if key not in ("sampler.name", "sampler.mix_ratio"):  # the run's own sampler and ratio are columns
                options.append(item)
        elif key != "trainer.mix_ratio":
            settings.append(item)
    # A run made before an option existed ran as its default does: group it with today's default runs.
    name = cfg.get("sampler", {}).get("name") if isinstance(cfg, dict) and isinstance(cfg.get("sampler"), dict) \
        else None
    if name in SAMPLER_SCHEMAS:
        have = {k for k, _ in options}
        options += [(f"sampler.{k}", json.dumps(v, sort_keys=True)) for k, v in sampler_defaults(name).items()
                    if f"sampler.{k}" not in have]
    return tuple(sorted(settings)), tuple(sorted(options))


def _stage_of(cfg_path: Path) -> str | None:
    for line in cfg_path.read_text(errors="replace").splitlines():
        if line.startswith("stage:"):
            return line.split(":", 1)[1].strip()
    return None


def group_runs(runs: Sequence[Run]) -> list[Group]:
    """Groups of runs with the same whole configuration; within one, a seed counts once (its latest run)."""
    groups: dict[tuple[Any, ...], Group] = {}
    for r in sorted(runs, key=lambda r: r.mtime, reverse=True):
        key = (r.experiment, r.sampler, r.mix_ratio, r.settings, r.options)
        group = groups.setdefault(key, Group(*key))
        if r.seed in group.seeds():
            group.duplicates += 1
        else:
            group.runs.append(r)
    for g in groups.values():
        g.runs.sort(key=lambda r: r.seed)
    _label(list(groups.values()))
    order = {s: i for i, s in enumerate(("none", "random", "class_balanced", "loss_high", "loss_low", "mixcd",
                                         "mixcd_plus", "oracle_cd", "mir"))}
    ordered = sorted(groups.values(), key=lambda g: (g.experiment, g.label, order.get(g.sampler, 99), g.sampler,
                                                     g.mix_ratio, g.options))
    mark_frontier(ordered)
    return ordered


def _label(groups: Sequence[Group]) -> None:
    """Name each group by the settings in which its experiment's groups differ (e.g. ``trainer.steps=200``)."""
    by_exp: dict[str, list[Group]] = defaultdict(list)
    for g in groups:
        by_exp[g.experiment].append(g)
    for gs in by_exp.values():
        values: dict[str, set[str]] = defaultdict(set)
        for g in gs:
            for k, v in g.settings:
                values[k].add(v)
        keys = {k for g in gs for k, _ in g.settings}
        varying = sorted(k for k in keys if len(values[k]) > 1 or any(k not in dict(g.settings) for g in gs))
        for g in gs:
            own = dict(g.settings)
            g.label = " ".join(f"{k}={json.loads(own[k]) if k in own else '-'}" for k in varying)
    by_sampler: dict[tuple[str, str], list[Group]] = defaultdict(list)
    for g in groups:
        by_sampler[(g.experiment, g.sampler)].append(g)
    for gs in by_sampler.values():
        options: dict[str, set[str]] = defaultdict(set)
        for g in gs:
            for k, v in g.options:
                options[k].add(v)
        varying = sorted(k for k, vs in options.items() if len(vs) > 1)
        defaults = sampler_defaults(gs[0].sampler) if gs[0].sampler in SAMPLER_SCHEMAS else {}
        for g in gs:
            own = dict(g.options)
            # named by what sets it apart from the sampler's defaults: the default group keeps the plain name
            g.variant = " ".join(f"{k.removeprefix('sampler.')}={json.loads(own[k])}" for k in varying
                                 if k in own and json.loads(own[k]) is not None
                                 and json.loads(own[k]) != defaults.get(k.removeprefix("sampler."), object()))


def mark_frontier(groups: Sequence[Group]) -> None:
    """At each ratio (same experiment and settings), mark the groups no other group beats on both pre_acc
    and ft_acc (means): the samplers on the Pareto frontier there."""
    cells: dict[tuple[Any, ...], list[Group]] = defaultdict(list)
    for g in groups:
        cells[(g.experiment, g.settings, g.mix_ratio)].append(g)
    for cell in cells.values():
        points = {id(g): (g.stat(RETENTION)[0], g.stat("ft_acc")[0]) for g in cell}
        for g in cell:
            p, f = points[id(g)]
            if p is None or f is None:
                continue
            g.frontier = not any(q is not None and h is not None and q >= p and h >= f and (q > p or h > f)
                                 for q, h in (points[id(o)] for o in cell if o is not g))


def curve_groups(groups: Sequence[Group], target: Group) -> list[Group]:
    """Random rehearsal (and plain fine-tuning, budget 0) with ``target``'s experiment and settings,
    one group per budget."""
    chosen: dict[float, Group] = {}
    for g in groups:
        if g.experiment == target.experiment and g.settings == target.settings and g.sampler in ("random", "none"):
            budget = g.stat("rehearsal_budget")[0] if g.sampler == "random" else 0.0
            if budget is not None and g.stat(RETENTION)[0] is not None:
                chosen.setdefault(budget, g)
    return [chosen[b] for b in sorted(chosen)]


def random_curve(members: Sequence[Group], seeds: Sequence[int] | None = None) -> list[tuple[float, float]]:
    """(rehearsal budget, mean pre_acc) of the `curve_groups` ``members`` (over ``seeds`` when given, else over
    each group's runs), plain fine-tuning as budget 0."""
    points = []
    for g in members:
        budget = g.stat("rehearsal_budget")[0] if g.sampler == "random" else 0.0
        acc = g.stat(RETENTION)[0] if seeds is None else g.mean_over(RETENTION, seeds)
        if budget is not None and acc is not None:
            points.append((budget, acc))
    return sorted(points)


def equivalent_budget(curve: Sequence[tuple[float, float]], target: float) -> tuple[float | None, str]:
    """Budget at which the piecewise-linear random curve first reaches ``target`` accuracy.

    Returns (budget, label); budget is None with label '> max' when random never gets there, or
    '< min' when even its smallest budget does better.
    """
    if not curve:
        return None, "n/a (no random runs)"
    if target < curve[0][1]:
        return None, f"< {curve[0][0]:,.0f}"
    for (b0, a0), (b1, a1) in zip(curve, curve[1:], strict=False):
        if a0 <= target <= a1 or a1 <= target <= a0:
            if a1 == a0:
                return b0, f"{b0:,.0f}"
            budget = b0 + (target - a0) * (b1 - b0) / (a1 - a0)
            return budget, f"{budget:,.0f}"
    # The segments join up from the first point, so a target no segment spans lies above them all.
    return None, f"> {curve[-1][0]:,.0f} (max)"


def fold_of(curve: Sequence[tuple[float, float]], target: float, own: float) -> float:
    """Random-equivalent budget over ``own`` budget; +inf where random never gets there, 0 where even plain
    fine-tuning (or random's smallest budget) does better."""
    budget, label = equivalent_budget(curve, target)
    if budget is not None:
        return budget / own
    return math.inf if label.startswith(">") else 0.0


def bootstrap_interval(values: Callable[[Sequence[int]], float], seeds: Sequence[int], samples: int = BOOTSTRAP_SAMPLES,
                       level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of ``values(resampled seeds)`` over ``samples`` resamplings of ``seeds`` with
    replacement (seeded: the same runs give the same interval)."""
    rng = _random.Random(seed)
    stats = sorted(values([rng.choice(seeds) for _ in seeds]) for _ in range(samples))
    lo = stats[int(math.floor((1 - level) / 2 * (samples - 1)))]
    hi = stats[int(math.ceil((1 + level) / 2 * (samples - 1)))]
    return lo, hi


def _fold_text(x: float | None) -> str:
    if x is None:
        return "-"
    return "> max" if math.isinf(x) else f"{x:.2f}x"


FoldMemo = dict[tuple[int, tuple[int, ...]], tuple[float | None, tuple[float, float] | None, list[int]]]


def fold_on(groups: Sequence[Group], g: Group, seeds: Sequence[int] | None = None, memo: FoldMemo | None = None
            ) -> tuple[float | None, tuple[float, float] | None, list[int]]:
    """(fold, bootstrap 95% interval, the seeds used) of ``g`` against random's curve, over the seeds ``g``
    shares with every point of that curve (and with ``seeds`` when given): the point and its interval
    always come from the same seeds, so a group with fewer seeds than random's is never set against a
    curve averaged over others. ``memo`` keeps each (group, seeds) result, so the report bootstraps the
    default mix-cd once, not once for every setting compared with it."""
    members = curve_groups(groups, g) if g.sampler not in ("random", "none") else []
    own, _, _ = g.stat("rehearsal_budget")
    if not members or not own:
        return None, None, []
    common = set(g.seeds()).intersection(*(set(c.seeds()) for c in members))
    usable = sorted(common if seeds is None else common & set(seeds))
    if not usable or g.mean_over(RETENTION, usable) is None:
        return None, None, usable
    key = (id(g), tuple(usable))
    if memo is not None and key in memo:
        return memo[key]

    def over(chosen: Sequence[int]) -> float:
        return fold_of(random_curve(members, chosen), g.mean_over(RETENTION, chosen), own)  # type: ignore[arg-type]

    result = over(usable), bootstrap_interval(over, usable) if len(usable) >= 2 else None, usable
    if memo is not None:
        memo[key] = result
    return result


def equivalents(groups: Sequence[Group], memo: FoldMemo | None = None) -> list[dict[str, Any]]:
    """Random-equivalent budget of every group of a sampler other than random: from the means, per seed, and
    a paired bootstrap interval, all over the seeds the group shares with every point of random's curve."""
    rows = []
    for g in groups:
        fold, interval, common = fold_on(groups, g, memo=memo)
        if not common:
            continue
        members = curve_groups(groups, g)
        own, acc = g.stat("rehearsal_budget")[0], g.mean_over(RETENTION, common)
        budget, label = equivalent_budget(random_curve(members, common), acc)  # type: ignore[arg-type]
        per_seed = {s: fold_of(random_curve(members, [s]), g.mean_over(RETENTION, [s]), own)  # type: ignore[arg-type]
                    for s in common}
        rows.append({"experiment": g.experiment, "config": g.label, "sampler": g.name, "mix_ratio": g.mix_ratio,
                     "pre_acc": acc, "rehearsal_budget": own, "random_equivalent_budget": budget,
                     "random_equivalent": label, "fold": fold if budget is not None or label.startswith(">")
                     else None, "fold_per_seed": per_seed, "paired_seeds": len(common),
                     "fold_ci95": list(interval) if interval else None, "frontier": g.frontier})
    return rows


def _fmt(mean: float | None, std: float | None, kind: str) -> str:
    if mean is None:
        return "-"
    if kind == "pct":
        return f"{100 * mean:.2f} ± {100 * (std or 0):.2f}"
    if kind == "count":
        return f"{mean:,.0f} ± {std or 0:,.0f}"
    return f"{mean:.2f} ± {std or 0:.2f}"


def _kind(key: str) -> str:
    return "pct" if key in PCT else "count" if key.startswith("ledger") or key == "training_passes" else "plain"


PCT = {"pre_acc", "forgetting", "ft_acc", "hit_rate", "signal_rate", "signal_precision", "signal_recall", "cd_rate",
       "cd_rate_class_min", "cd_rate_class_max", "earlier_acc", "avg_acc", "bwt", "avg_forgetting"}
HEADERS = {"pre_acc": "pre_acc %", "forgetting": "forgetting pts", "ft_acc": "ft_acc %",
           "hit_rate": "hit rate % (audited)", "signal_rate": "signal rate %", "signal_precision": "signal precision %",
           "signal_recall": "signal recall %", "cd_rate": "CD rate %",
           "cd_rate_class_min": "CD rate, least damaged class %", "cd_rate_class_max": "CD rate, most damaged class %",
           "ledger_finetune": "fine-tune passes",
           "ledger_rehearsal": "rehearsal passes", "ledger_selection": "selection passes",
           "training_passes": "total passes", "wall_time": "fine-tune s",
           "earlier_acc": "earlier-task acc %", "avg_acc": "avg acc %", "bwt": "BWT pts",
           "avg_forgetting": "avg forgetting pts"}
LEAD = ["experiment", "config", "sampler", "r", "n", "frontier"]
EQ_HEAD = ["experiment", "config", "sampler", "r", "budget", "pre_acc %", "random needs", "fold", "95% CI (bootstrap)",
           "per seed", "frontier"]


def eq_head(groups: Sequence[Group]) -> list[str]:
    return [f"{_retention_name(groups)} %" if h == "pre_acc %" else h for h in EQ_HEAD]


def is_sequence(groups: Sequence[Group]) -> bool:
    return any((r.values.get("num_stages") or 1) > 1 for g in groups for r in g.runs)


def metric_keys(groups: Sequence[Group]) -> tuple[str, ...]:
    """The columns: the multi-stage ones only when some run has several stages (older reports stay as they were)."""
    return METRICS + SEQUENCE_METRICS if is_sequence(groups) else METRICS


def _retention_name(groups: Sequence[Group]) -> str:
    return "earlier-task acc" if is_sequence(groups) else "pre_acc"


def _lead(g: Group) -> list[str]:
    n = str(g.stat("pre_acc")[2]) + (f" (+{g.duplicates} dup)" if g.duplicates else "")
    return [g.experiment, g.label or "-", g.name, f"{g.mix_ratio:g}", n,
            "-" if g.frontier is None or g.sampler == "none" else ("yes" if g.frontier else "no")]


def table_rows(groups: Sequence[Group]) -> list[list[str]]:
    return [_lead(g) + [_fmt(*g.stat(k)[:2], _kind(k)) for k in metric_keys(groups)] for g in groups]


def eq_rows(eq: Sequence[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for e in eq:
        ci = e["fold_ci95"]
        rows.append([e["experiment"], e["config"] or "-", e["sampler"], f"{e['mix_ratio']:g}",
                     f"{e['rehearsal_budget'] or 0:,.0f}", "-" if e["pre_acc"] is None else f"{100 * e['pre_acc']:.2f}",
                     e["random_equivalent"], _fold_text(e["fold"]),
                     f"[{_fold_text(ci[0])}, {_fold_text(ci[1])}]" if ci else "-",
                     " ".join(_fold_text(f) for f in e["fold_per_seed"].values()) or "-",
                     "-" if e["frontier"] is None else ("yes" if e["frontier"] else "no")])
    return rows


def write_csv(groups: Sequence[Group], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        head = ["experiment", "config", "sampler", "mix_ratio", "n", "duplicates", "frontier"]
        keys = metric_keys(groups)
        for k in keys:
            head += [f"{k}_mean", f"{k}_std"]
        w.writerow(head)
        for g in groups:
            row: list[Any] = [g.experiment, g.label, g.name, g.mix_ratio, g.stat("pre_acc")[2], g.duplicates,
                              "" if g.frontier is None else g.frontier]
            for k in keys:
                mean, std, _ = g.stat(k)
                row += ["" if mean is None else mean, "" if std is None else std]
            w.writerow(row)


def _md_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


@dataclass
class Section:
    """One part of the report: paragraphs, an optional table, an optional list; rendered as Markdown and HTML."""

    text: list[str]
    head: Sequence[str] = ()
    rows: Sequence[Sequence[str]] = ()
    items: Sequence[str] = ()


def sections(groups: Sequence[Group], eq: Sequence[dict[str, Any]], skipped: Sequence[tuple[Path, str]],
             vs: Sequence[dict[str, Any]] = ()) -> list[Section]:
    """The report's content, in order, once for every format."""
    notes = ["mean ± std over seeds; a seed run twice in one group counts once (dup). hit rate: audited share "
             "of drawn rows that were collateral damage; signal: what the training forward pass told the sampler. "
             f"frontier: no other sampler at the same ratio has both higher {_retention_name(groups)} and higher "
             "ft_acc."]
    if is_sequence(groups):
        notes.append("Multi-stage runs: earlier-task acc = mean accuracy, after the last stage, on every task before "
                     "it; avg acc = the same over all tasks; BWT = mean of (final − just-learned) accuracy over the "
                     "earlier tasks; pre_acc is the prior task's alone and ft_acc the last stage's.")
    out = [Section([], LEAD + [HEADERS[k] for k in metric_keys(groups)], table_rows(groups)), Section(notes)]
    if eq:
        out.append(Section(["Random-equivalent rehearsal budget (the budget random rehearsal with the same settings "
                            f"needs for the same {_retention_name(groups)}), from the means, per seed pair, and a "
                            f"paired bootstrap 95% interval over seeds ({BOOTSTRAP_SAMPLES} resamples):"],
                           eq_head(groups), eq_rows(eq)))
    if vs:
        out.append(Section([f"Against the paper-faithful mix-cd (the default `mixcd` at the same experiment, settings "
                            f"and ratio): the mean over seeds of (setting − default), each seed paired with the "
                            f"default's, with a 95% Student-t interval; Δ retention is in {_retention_name(groups)}. "
                            "verdict: better / worse when the interval excludes 0, identical when every seed's result "
                            "is, else within noise. fold: random-equivalent budget over own budget."],
                           compare.HEAD, compare.rows_of(vs)))
    if skipped:
        out.append(Section(["Skipped runs:"], items=[f"`{p}`: {why}" for p, why in skipped]))
    return out


def markdown(parts: Sequence[Section]) -> str:
    """report.md from the report's sections."""
    lines: list[str] = []
    for section in parts:
        for paragraph in section.text:
            lines += [paragraph, ""]
        if section.head:
            lines += _md_table(section.head, section.rows) + [""]
        if section.items:
            lines += [f"- {item}" for item in section.items] + [""]
    return "\n".join(lines).rstrip("\n") + "\n"


def plot(groups: Sequence[Group], out: Path) -> list[Path]:
    """pre_acc vs total fine-tuning passes, and the Pareto view pre_acc vs ft_acc (frontier points ringed);
    one PNG of each per experiment."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    by_exp: dict[str, list[Group]] = defaultdict(list)
    for g in groups:
        by_exp[g.experiment].append(g)
    for exp, gs in by_exp.items():
        lines: dict[str, list[Group]] = defaultdict(list)
        for g in gs:
            lines[g.name + (f" [{g.label}]" if g.label else "")].append(g)
        for kind, xkey, xlabel in (("budget", "training_passes", "fine-tuning passes (ledger: fwd + bwd samples)"),
                                   ("pareto", "ft_acc", "fine-tune-test accuracy (%)")):
            fig, ax = plt.subplots(figsize=(8, 5))
            ringed = False
            for name, sg in lines.items():
                sg = sorted(sg, key=lambda g: g.stat(xkey)[0] or 0)
                pts = []
                for g in sg:
                    x, xs_, _ = g.stat(xkey)
                    y, ys_, _ = g.stat(RETENTION)
                    if x is not None and y is not None:
                        scale = 100 if xkey == "ft_acc" else 1
                        pts.append((x * scale, (xs_ or 0) * scale, 100 * y, 100 * (ys_ or 0), g.frontier))
                if not pts:
                    continue
                xs, xe, ys, ye, front = zip(*pts, strict=True)
                ax.errorbar(xs, ys, yerr=ye, xerr=xe if xkey == "ft_acc" else None, marker="o", capsize=3,
                            label=name, linestyle="-" if kind == "budget" else ":")
                if kind == "pareto":
                    fx = [x for x, f in zip(xs, front, strict=True) if f]
                    fy = [y for y, f in zip(ys, front, strict=True) if f]
                    ax.scatter(fx, fy, s=160, facecolors="none", edgecolors="black", linewidths=1.2,
                               label=None if ringed else "on the frontier at its ratio", zorder=5)
                    ringed = ringed or bool(fx)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("earlier-task accuracy (%)" if is_sequence(gs) else "prior-test accuracy (%)")
            ax.set_title(f"{exp}: " + ("retention vs compute" if kind == "budget" else "retention vs new task"))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
            written.append(compare.save_figure(fig, out / f"{exp}_{kind}.png"))
    return written


def mean_matrix(g: Group) -> list[list[float | None]] | None:
    """The mean accuracy matrix of a group's multi-stage runs (None where no run has the entry)."""
    matrices = [r.matrix for r in g.runs if r.matrix]
    if not matrices:
        return None
    rows, cols = len(matrices[0]), len(matrices[0][0])
    out: list[list[float | None]] = []
    for i in range(rows):
        out.append([])
        for j in range(cols):
            vals = [m[i][j] for m in matrices if len(m) == rows and m[i][j] is not None]
            out[-1].append(sum(vals) / len(vals) if vals else None)
    return out


def heatmaps(groups: Sequence[Group], out: Path) -> list[Path]:
    """One PNG per sampler (and configuration) of a multi-stage experiment: its mean accuracy matrix at each
    ratio (rows: after stage k, row 0 = θ0; columns: task i)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: dict[tuple[str, str], list[Group]] = defaultdict(list)
    for g in groups:
        if mean_matrix(g):
            panels[(g.experiment, g.name + (f" [{g.label}]" if g.label else ""))].append(g)
    written = []
    for (exp, name), gs in panels.items():
        gs = sorted(gs, key=lambda g: g.mix_ratio)
        fig, axes = plt.subplots(1, len(gs), figsize=(3.6 * len(gs) + 0.6, 3.4), squeeze=False)
        for ax, g in zip(axes[0], gs, strict=True):
            m = mean_matrix(g) or []
            grid = [[math.nan if v is None else 100 * v for v in row] for row in m]
            ax.imshow(grid, vmin=0, vmax=100, cmap="viridis")
            for i, row in enumerate(grid):
                for j, v in enumerate(row):
                    if not math.isnan(v):
                        ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=8,
                                color="white" if v < 60 else "black")
            ax.set_xticks(range(len(grid[0])))
            ax.set_yticks(range(len(grid)))
            ax.set_xlabel("task")
            ax.set_ylabel("after stage (0 = θ0)")
            ax.set_title(f"r={g.mix_ratio:g} (n={len(g.runs)})", fontsize=9)
        fig.suptitle(f"{exp}: {name} — accuracy matrix (%)", fontsize=10)
        fig.tight_layout()
        slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("_")
        path = out / f"{exp}_matrix_{slug}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _json_fold(x: float | None) -> float | str | None:
    return "> max" if x is not None and math.isinf(x) else x


def _rich_table(title: str, head: Sequence[str], rows: Sequence[Sequence[str]]) -> Any:
    from rich.table import Table

    table = Table(title=title)
    for h in head:
        table.add_column(h, justify="left" if h in ("experiment", "config", "sampler", "verdict") else "right")
    for row in rows:
        table.add_row(*row)
    return table


def print_report(console: Any, runs: Sequence[Run], groups: Sequence[Group], eq: Sequence[dict[str, Any]],
                 vs: Sequence[dict[str, Any]]) -> None:
    """The report's tables on the terminal: groups, random-equivalent budgets, against the default mix-cd."""
    console.print(_rich_table(f"mixcd report: {len(runs)} runs, {len(groups)} groups (mean ± std over seeds)",
                              LEAD + [HEADERS[k] for k in metric_keys(groups)], table_rows(groups)))
    if eq:
        console.print(_rich_table("random-equivalent rehearsal budget (paired bootstrap 95% interval over seeds)",
                                  eq_head(groups), eq_rows(eq)))
    if vs:
        console.print(_rich_table("against the paper-faithful mix-cd (paired by seed, 95% t-interval)",
                                  compare.HEAD, compare.rows_of(vs)))


def summary_of(runs: Sequence[Run], groups: Sequence[Group], eq: Sequence[dict[str, Any]],
               vs: Sequence[dict[str, Any]], skipped: Sequence[tuple[Path, str]], pngs: Sequence[Path]
               ) -> dict[str, Any]:
    """report.json: every group with its statistics, the folds (infinite ones as "> max"), skipped runs, plots."""
    return {"runs": len(runs), "groups": [
        {"experiment": g.experiment, "config": g.label, "sampler": g.sampler, "variant": g.variant,
         "mix_ratio": g.mix_ratio,
         "settings": dict(g.settings), "sampler_options": dict(g.options), "duplicates": g.duplicates,
         "frontier": g.frontier, "seeds": sorted(g.seeds()),
         **{k: dict(zip(("mean", "std", "n"), g.stat(k), strict=True)) for k in metric_keys(groups)},
         **({"accuracy_matrix": mean_matrix(g)} if mean_matrix(g) else {})} for g in groups],
        "retention": RETENTION if is_sequence(groups) else "pre_acc",
        "random_equivalent": [{**e, "fold": _json_fold(e["fold"]),
                               "fold_per_seed": {str(k): _json_fold(v) for k, v in e["fold_per_seed"].items()},
                               "fold_ci95": [_json_fold(v) for v in e["fold_ci95"]] if e["fold_ci95"] else None}
                              for e in eq],
        "against_default": [{**v, "fold": _json_fold(v["fold"]), "default_fold": _json_fold(v["default_fold"]),
                             "fold_ci95": [_json_fold(x) for x in v["fold_ci95"]] if v["fold_ci95"] else None,
                             "default_fold_ci95": [_json_fold(x) for x in v["default_fold_ci95"]]
                             if v["default_fold_ci95"] else None} for v in vs],
        "skipped": [[str(p), why] for p, why in skipped], "plots": [p.name for p in pngs]}


def run_report(paths: Sequence[Path], out: Path | None = None, stage: str = "train",
               plots: bool = True, samplers: Sequence[str] | None = None, html: bool = False) -> dict[str, Any]:
    """Collect, aggregate, print, and write report.csv / report.md / report.json (+ PNGs, and with ``html``
    report.html: everything on one self-contained page); ``samplers`` keeps only those samplers' runs."""
    from rich.console import Console

    from .artifacts import write_json
    from .console import console, note

    if not console.is_terminal:  # a log or a pipe: do not squeeze the table into 80 columns
        console = Console(width=300)

    runs, skipped = collect(paths, stage)
    if samplers:
        runs = [r for r in runs if r.sampler in samplers]
    if not runs:
        raise MixcdError(f"no finished {stage} runs under {', '.join(map(str, paths))}"
                         + (f" ({len(skipped)} skipped)" if skipped else ""))
    groups = group_runs(runs)
    memo: FoldMemo = {}
    eq = equivalents(groups, memo)
    vs = compare.against_default(groups, lambda g, seeds: fold_on(groups, g, seeds, memo), RETENTION)
    out = Path(out) if out else Path(paths[0])
    out.mkdir(parents=True, exist_ok=True)

    print_report(console, runs, groups, eq, vs)
    if skipped:  # one line, however many folders: the list is in report.md and report.json
        failed = sum(why.startswith("failed:") for _, why in skipped)
        note(f"{len(skipped)} run folder(s) left out ({failed} failed with error.txt, {len(skipped) - failed} "
             f"unfinished or unreadable); see {out / 'report.md'}")
    duplicates = sum(g.duplicates for g in groups)
    if duplicates:
        note(f"{duplicates} run(s) repeat a seed already in their group and count once")

    parts = sections(groups, eq, skipped, vs)
    write_csv(groups, out / "report.csv")
    (out / "report.md").write_text(markdown(parts))
    pngs = (plot(groups, out) + heatmaps(groups, out)
            + compare.plot_against_default(vs, out, _retention_name(groups))) if plots else []
    summary = summary_of(runs, groups, eq, vs, skipped, pngs)
    write_json(summary, out / "report.json")
    if html:
        from .html_report import write_html

        title = f"mixcd report: {len(runs)} {stage} runs, {len(groups)} groups"
        write_html(out / "report.html", title, parts, pngs, sources=[str(p) for p in paths])
    console.print(f"wrote {out / 'report.csv'}, report.md, report.json" + (", report.html" if html else "")
                  + (f" and {len(pngs)} plots" if pngs else ""), highlight=False, soft_wrap=True)
    return summary
