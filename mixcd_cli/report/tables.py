"""The report's tables as rows of text: the groups with mean ± std, the random-equivalent budgets (every interval
with its label), and the groups as CSV numbers."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .folds import Interval
from .groups import NO_REHEARSAL, RETENTION, Group

METRICS = ("pre_acc", "forgetting", "ft_acc", "hit_rate", "signal_rate", "signal_precision", "signal_recall",
           "cd_rate", "cd_rate_class_min", "cd_rate_class_max", "ledger_finetune", "ledger_rehearsal",
           "ledger_selection", "training_passes", "total_budget", "wall_time")
# report.csv's further columns: the compute a run spent (fwd + 2·bwd), whatever axis the report is read on.
CSV_ONLY = ("rehearsal_budget", "total_budget_one_time", "compute_sampler", "compute_sampler_one_time",
            "compute_training", "compute_one_time", "compute_total", "snapshot_precision", "snapshot_recall",
            "snapshot_unvisited", "snapshot_loss_mae")
# Multi-stage runs (docs/design.md §9) add these columns: final average accuracy over every task, average accuracy on
# the tasks before the last stage, backward transfer, and average forgetting of the earlier tasks.
SEQUENCE_METRICS = ("earlier_acc", "avg_acc", "bwt", "avg_forgetting")
PCT = {"pre_acc", "forgetting", "ft_acc", "hit_rate", "signal_rate", "signal_precision", "signal_recall", "cd_rate",
       "cd_rate_class_min", "cd_rate_class_max", "earlier_acc", "avg_acc", "bwt", "avg_forgetting"}
HEADERS = {"pre_acc": "pre_acc %", "forgetting": "forgetting pts", "ft_acc": "ft_acc %",
           "hit_rate": "hit rate % (audited)", "signal_rate": "signal rate %", "signal_precision": "signal precision %",
           "signal_recall": "signal recall %", "cd_rate": "CD rate %",
           "cd_rate_class_min": "CD rate, least damaged class %", "cd_rate_class_max": "CD rate, most damaged class %",
           "ledger_finetune": "fine-tune passes",
           "ledger_rehearsal": "rehearsal passes", "ledger_selection": "selection passes",
           "training_passes": "total passes", "total_budget": "compute the sampler adds",
           "wall_time": "fine-tune s",
           "earlier_acc": "earlier-task acc %", "avg_acc": "avg acc %", "bwt": "BWT pts",
           "avg_forgetting": "avg forgetting pts"}
LEAD = ["experiment", "config", "sampler", "r", "n", "frontier"]
# The random-equivalent table, on one budget axis (`axes`). "fold" reads random's curve in log budget; the linear
# reading stands beside it because it is what reports before log-budget interpolation printed (and reads high on
# a concave curve); the fold on the other axis stands beside them, so both axes are read side by side. Beside the
# folds, the retention gap to random at the same budget: a large fold on a flat curve can be a fraction of a
# point, and a reader must see both. Every interval cell carries its own label (level, method, n), since groups
# with different numbers of seeds share the table.
EQ_HEAD = ["experiment", "config", "sampler", "r", "budget", "of which one-time", "pre_acc %", "random needs",
           "fold", "fold, linear interp.", "fold interval", "per seed", "fold on the other axis [interval]",
           "Δ pre_acc vs random at same budget, pts [interval]", "frontier"]


def is_sequence(groups: Sequence[Group]) -> bool:
    """Whether some run has several stages (then retention is earlier-task accuracy, with its columns)."""
    return any((r.values.get("num_stages") or 1) > 1 for g in groups for r in g.runs)


def metric_keys(groups: Sequence[Group]) -> tuple[str, ...]:
    """The columns: the multi-stage ones only when some run has several stages (older reports stay as they were)."""
    return METRICS + SEQUENCE_METRICS if is_sequence(groups) else METRICS


def retention_name(groups: Sequence[Group]) -> str:
    """What retention is called in the report's text."""
    return "earlier-task acc" if is_sequence(groups) else "pre_acc"


def retention_key(groups: Sequence[Group]) -> str:
    """The metric retention is measured in, as report.json names it."""
    return RETENTION if is_sequence(groups) else "pre_acc"


def eq_head(groups: Sequence[Group], axis: str = "rehearsal") -> list[str]:
    """The random-equivalent table's header, its accuracy named as retention is, its budget by ``axis``."""
    other = "total" if axis == "rehearsal" else "rehearsal"
    names = {"budget": f"budget ({axis} axis)", "fold on the other axis [interval]": f"fold, {other} axis [interval]"}
    return [names.get(h, h).replace("pre_acc", retention_name(groups)) for h in EQ_HEAD]


def fold_text(x: float | None, iv: Interval | None = None, at_least: float | None = None) -> str:
    """A fold as the tables show it: ``1.50x``, ``> max`` for an infinite one (``> 0.53x`` with ``at_least``: random's
    largest budget over the group's own), ``-`` for none; with ``iv``, its labelled interval: ``1.43x [1.36x,
    1.47x] range over 3 seeds``."""
    shown = f"> {at_least:.2f}x" if x is not None and math.isinf(x) and at_least is not None else _fold(x)
    return shown + (f" {interval_text(iv)}" if iv else "")


def interval_text(iv: Interval | None) -> str:
    """A fold interval with its label, ``[1.36x, > max] range over 3 seeds``; ``-`` for none."""
    return "-" if iv is None else f"[{_fold(iv['lo'])}, {_fold(iv['hi'])}] {iv['label']}"


def _fold(x: float | None) -> str:
    if x is None:
        return "-"
    return "> max" if math.isinf(x) else f"{x:.2f}x"


def points_text(mean: float | None, iv: Interval | None) -> str:
    """An accuracy difference in points with its labelled interval, ``+5.00 [+4.00, +6.00] range over 3
    pairs``; ``-`` for none."""
    if mean is None:
        return "-"
    return f"{100 * mean:+.2f}" + (f" [{100 * iv['lo']:+.2f}, {100 * iv['hi']:+.2f}] {iv['label']}" if iv else "")


def _fmt(mean: float | None, std: float | None, kind: str) -> str:
    if mean is None:
        return "-"
    if kind == "pct":
        return f"{100 * mean:.2f} ± {100 * (std or 0):.2f}"
    if kind == "count":
        return f"{mean:,.0f} ± {std or 0:,.0f}"
    return f"{mean:.2f} ± {std or 0:.2f}"


def _kind(key: str) -> str:
    return "pct" if key in PCT else "count" if key.startswith(("ledger", "compute")) or key.endswith("budget") \
        or key == "training_passes" else "plain"


def _lead(g: Group) -> list[str]:
    n = str(g.stat("pre_acc")[2]) + (f" (+{g.duplicates} dup)" if g.duplicates else "")
    return [g.experiment, g.label or "-", g.name, f"{g.mix_ratio:g}", n,
            "-" if g.frontier is None or g.sampler == NO_REHEARSAL else ("yes" if g.frontier else "no")]


def table_rows(groups: Sequence[Group]) -> list[list[str]]:
    """The groups table: who, then mean ± std of every metric column."""
    return [_lead(g) + [_fmt(*g.stat(k)[:2], _kind(k)) for k in metric_keys(groups)] for g in groups]


def eq_rows(eq: Sequence[dict[str, Any]]) -> list[list[str]]:
    """The random-equivalent table's rows, from `equivalence.equivalents`."""
    rows = []
    for e in eq:
        one_time = e.get("budget_one_time")
        other = e.get("other_axis") or {}
        rows.append([e["experiment"], e["config"] or "-", e["sampler"], f"{e['mix_ratio']:g}",
                     f"{e['budget'] or 0:,.0f}", "-" if not one_time else f"{one_time:,.0f}",
                     "-" if e["pre_acc"] is None else f"{100 * e['pre_acc']:.2f}",
                     e["random_equivalent"], fold_text(e["fold"], at_least=e.get("fold_at_least")),
                     fold_text(e["fold_linear"], at_least=e.get("fold_at_least")),
                     interval_text(e["fold_interval"]),
                     " ".join(fold_text(f) for f in e["fold_per_seed"].values()) or "-",
                     fold_text(other.get("fold"), other.get("fold_interval"), other.get("fold_at_least")),
                     points_text(e["gap_to_random"], e["gap_to_random_interval"]),
                     "-" if e["frontier"] is None else ("yes" if e["frontier"] else "no")])
    return rows


def write_csv(groups: Sequence[Group], path: Path) -> None:
    """report.csv: a row per group, the mean and std of every metric column as plain numbers."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        head = ["experiment", "config", "sampler", "mix_ratio", "n", "duplicates", "frontier"]
        keys = metric_keys(groups) + CSV_ONLY
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
