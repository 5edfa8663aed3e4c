"""`mixcd report`: read run folders, aggregate seeds, compare samplers at equal compute.

Groups runs by (experiment, sampler, mixing ratio), shows mean ± std (n) beside the ledger, and
computes mix-cd's *random-equivalent budget*: the rehearsal budget that random rehearsal would
need, interpolated on its own curve, to reach the same prior-test accuracy.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import MixcdError

REQUIRED = ("sampler", "mix_ratio", "seed", "pre_acc", "ft_acc", "forgetting", "ledger")
METRICS = ("pre_acc", "forgetting", "ft_acc", "hit_rate", "cd_rate", "ledger_finetune", "ledger_rehearsal",
           "ledger_selection", "training_passes", "wall_time")


@dataclass
class Run:
    path: Path
    experiment: str
    sampler: str
    mix_ratio: float
    seed: int
    values: dict[str, float | None]


@dataclass
class Group:
    experiment: str
    sampler: str
    mix_ratio: float
    runs: list[Run] = field(default_factory=list)

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
    wall = m.get("wall_time") or {}
    return {
        "pre_acc": m.get("pre_acc"), "forgetting": m.get("forgetting"), "ft_acc": m.get("ft_acc"),
        "hit_rate": m.get("hit_rate"), "cd_rate": cats.get("cd_rate"),
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
            runs.append(Run(folder, str(m.get("experiment", "?")), str(m["sampler"]), float(m["mix_ratio"]),
                            int(m["seed"]), _flatten(m)))
    return runs, skipped


def _stage_of(cfg_path: Path) -> str | None:
    for line in cfg_path.read_text(errors="replace").splitlines():
        if line.startswith("stage:"):
            return line.split(":", 1)[1].strip()
    return None


def group_runs(runs: Sequence[Run]) -> list[Group]:
    groups: dict[tuple[str, str, float], Group] = {}
    for r in runs:
        key = (r.experiment, r.sampler, r.mix_ratio)
        groups.setdefault(key, Group(*key)).runs.append(r)
    order = {s: i for i, s in enumerate(("none", "random", "class_balanced", "loss_high", "loss_low", "mixcd",
                                         "oracle_cd", "mir"))}
    return sorted(groups.values(), key=lambda g: (g.experiment, order.get(g.sampler, 99), g.sampler, g.mix_ratio))


def random_curve(groups: Sequence[Group], experiment: str) -> list[tuple[float, float]]:
    """(rehearsal budget, mean pre_acc) of random rehearsal, with plain fine-tuning as budget 0."""
    points = []
    for g in groups:
        if g.experiment == experiment and g.sampler in ("random", "none"):
            budget, _, _ = g.stat("rehearsal_budget")
            acc, _, _ = g.stat("pre_acc")
            if budget is not None and acc is not None:
                points.append((budget if g.sampler == "random" else 0.0, acc))
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


def equivalents(groups: Sequence[Group], sampler: str = "mixcd") -> list[dict[str, Any]]:
    rows = []
    for g in groups:
        if g.sampler != sampler:
            continue
        curve = random_curve(groups, g.experiment)
        acc, _, _ = g.stat("pre_acc")
        own, _, _ = g.stat("rehearsal_budget")
        budget, label = equivalent_budget(curve, acc) if acc is not None else (None, "n/a")
        rows.append({"experiment": g.experiment, "sampler": sampler, "mix_ratio": g.mix_ratio, "pre_acc": acc,
                     "rehearsal_budget": own, "random_equivalent_budget": budget, "random_equivalent": label,
                     "fold": (budget / own) if budget is not None and own else None})
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


PCT = {"pre_acc", "forgetting", "ft_acc", "hit_rate", "cd_rate"}
HEADERS = {"pre_acc": "pre_acc %", "forgetting": "forgetting pts", "ft_acc": "ft_acc %", "hit_rate": "hit rate %",
           "cd_rate": "CD rate %", "ledger_finetune": "fine-tune passes", "ledger_rehearsal": "rehearsal passes",
           "ledger_selection": "selection passes", "training_passes": "total passes", "wall_time": "fine-tune s"}


def table_rows(groups: Sequence[Group]) -> list[list[str]]:
    rows = []
    for g in groups:
        rows.append([g.experiment, g.sampler, f"{g.mix_ratio:g}", str(g.stat("pre_acc")[2])]
                    + [_fmt(*g.stat(k)[:2], _kind(k)) for k in METRICS])
    return rows


def write_csv(groups: Sequence[Group], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        head = ["experiment", "sampler", "mix_ratio", "n"]
        for k in METRICS:
            head += [f"{k}_mean", f"{k}_std"]
        w.writerow(head)
        for g in groups:
            row: list[Any] = [g.experiment, g.sampler, g.mix_ratio, g.stat("pre_acc")[2]]
            for k in METRICS:
                mean, std, _ = g.stat(k)
                row += ["" if mean is None else mean, "" if std is None else std]
            w.writerow(row)


def markdown(groups: Sequence[Group], eq: Sequence[dict[str, Any]], skipped: Sequence[tuple[Path, str]]) -> str:
    head = ["experiment", "sampler", "r", "n"] + [HEADERS[k] for k in METRICS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(groups)]
    if eq:
        lines += ["", "Random-equivalent rehearsal budget of mix-cd (budget random needs for the same pre_acc):", "",
                  "| experiment | r | mix-cd budget | mix-cd pre_acc % | random-equivalent budget | fold |",
                  "|---|---|---|---|---|---|"]
        for e in eq:
            fold = f"{e['fold']:.2f}x" if e["fold"] is not None else "-"
            acc = f"{100 * e['pre_acc']:.2f}" if e["pre_acc"] is not None else "-"
            lines.append(f"| {e['experiment']} | {e['mix_ratio']:g} | {e['rehearsal_budget'] or 0:,.0f} | {acc} | "
                         f"{e['random_equivalent']} | {fold} |")
    if skipped:
        lines += ["", "Skipped runs:", ""] + [f"- `{p}`: {why}" for p, why in skipped]
    return "\n".join(lines) + "\n"


def plot(groups: Sequence[Group], out: Path) -> list[Path]:
    """pre_acc vs total fine-tuning passes, and the Pareto view pre_acc vs ft_acc; one PNG per experiment."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    by_exp: dict[str, list[Group]] = defaultdict(list)
    for g in groups:
        by_exp[g.experiment].append(g)
    for exp, gs in by_exp.items():
        by_sampler: dict[str, list[Group]] = defaultdict(list)
        for g in gs:
            by_sampler[g.sampler].append(g)
        for kind, xkey, xlabel in (("budget", "training_passes", "fine-tuning passes (ledger: fwd + bwd samples)"),
                                   ("pareto", "ft_acc", "fine-tune-test accuracy (%)")):
            fig, ax = plt.subplots(figsize=(7, 4.5))
            for sampler, sg in by_sampler.items():
                sg = sorted(sg, key=lambda g: g.stat(xkey)[0] or 0)
                xs, xe, ys, ye = [], [], [], []
                for g in sg:
                    x, xs_, _ = g.stat(xkey)
                    y, ys_, _ = g.stat("pre_acc")
                    if x is None or y is None:
                        continue
                    scale = 100 if xkey == "ft_acc" else 1
                    xs.append(x * scale)
                    xe.append((xs_ or 0) * scale)
                    ys.append(100 * y)
                    ye.append(100 * (ys_ or 0))
                ax.errorbar(xs, ys, yerr=ye, xerr=xe if xkey == "ft_acc" else None, marker="o", capsize=3,
                            label=sampler, linestyle="-" if kind == "budget" else ":")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("prior-test accuracy (%)")
            ax.set_title(f"{exp}: " + ("retention vs compute" if kind == "budget" else "retention vs new task"))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            fig.tight_layout()
            path = out / f"{exp}_{kind}.png"
            fig.savefig(path, dpi=120)
            plt.close(fig)
            written.append(path)
    return written


def run_report(paths: Sequence[Path], out: Path | None = None, stage: str = "train",
               plots: bool = True) -> dict[str, Any]:
    """Collect, aggregate, print, and write report.csv / report.md / report.json (+ PNGs)."""
    from rich.console import Console
    from rich.table import Table

    from .artifacts import write_json
    from .console import console, note

    if not console.is_terminal:  # a log or a pipe: do not squeeze the table into 80 columns
        console = Console(width=240)

    runs, skipped = collect(paths, stage)
    if not runs:
        raise MixcdError(f"no finished {stage} runs under {', '.join(map(str, paths))}"
                         + (f" ({len(skipped)} skipped)" if skipped else ""))
    groups = group_runs(runs)
    eq = equivalents(groups)
    out = Path(out) if out else Path(paths[0])
    out.mkdir(parents=True, exist_ok=True)

    table = Table(title=f"mixcd report: {len(runs)} runs, {len(groups)} groups (mean ± std over seeds)")
    for h in ["experiment", "sampler", "r", "n"] + [HEADERS[k] for k in METRICS]:
        table.add_column(h, justify="left" if h in ("experiment", "sampler") else "right")
    for row in table_rows(groups):
        table.add_row(*row)
    console.print(table)
    if eq:
        t2 = Table(title="random-equivalent rehearsal budget of mix-cd")
        for h in ("experiment", "r", "mix-cd budget", "pre_acc %", "random needs", "fold"):
            t2.add_column(h, justify="right")
        for e in eq:
            t2.add_row(e["experiment"], f"{e['mix_ratio']:g}", f"{e['rehearsal_budget'] or 0:,.0f}",
                       "-" if e["pre_acc"] is None else f"{100 * e['pre_acc']:.2f}", e["random_equivalent"],
                       f"{e['fold']:.2f}x" if e["fold"] is not None else "-")
        console.print(t2)
    if skipped:  # one line, however many folders: the list is in report.md and report.json
        failed = sum(why.startswith("failed:") for _, why in skipped)
        note(f"{len(skipped)} run folder(s) left out ({failed} failed with error.txt, {len(skipped) - failed} "
             f"unfinished or unreadable); see {out / 'report.md'}")

    write_csv(groups, out / "report.csv")
    (out / "report.md").write_text(markdown(groups, eq, skipped))
    pngs = plot(groups, out) if plots else []
    summary = {"runs": len(runs), "groups": [
        {"experiment": g.experiment, "sampler": g.sampler, "mix_ratio": g.mix_ratio,
         **{k: dict(zip(("mean", "std", "n"), g.stat(k), strict=True)) for k in METRICS}} for g in groups],
        "random_equivalent": eq, "skipped": [[str(p), why] for p, why in skipped],
        "plots": [p.name for p in pngs]}
    write_json(summary, out / "report.json")
    console.print(f"wrote {out / 'report.csv'}, report.md, report.json" + (f" and {len(pngs)} plots" if pngs else ""),
                  highlight=False, soft_wrap=True)
    return summary
