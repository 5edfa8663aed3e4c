"""The report's content in order (`sections`), rendered as Markdown and on the terminal, and report.json."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import compare, folds
from .groups import Group, Run
from .tables import (
    HEADERS,
    LEAD,
    eq_head,
    eq_rows,
    is_sequence,
    metric_keys,
    retention_key,
    retention_name,
    table_rows,
)

# How the report's intervals are made, said once in each section that prints them (each cell names its own).
_INTERVALS = (f"Fold intervals: the 95% percentile bootstrap over seeds ({folds.BOOTSTRAP_SAMPLES} resamples) from "
              f"{folds.MIN_SEEDS_FOR_INTERVAL} seeds, else the range of the per-seed folds, named a range.")
_PAIRS = (f"Intervals of paired differences: the 95% Student-t interval from {folds.MIN_SEEDS_FOR_INTERVAL} pairs, "
          "else the range of the per-pair differences, named a range.")


@dataclass
class Section:
    """One part of the report: paragraphs, an optional table, an optional list; rendered as Markdown and HTML."""

    text: list[str]
    head: Sequence[str] = ()
    rows: Sequence[Sequence[str]] = ()
    items: Sequence[str] = ()


def axis_text(axis: str, amortize: int | None, unit: str = "rows") -> str:
    """What the budget is on ``axis`` (in ``unit``: rows, or tokens for generation), and how θ0's one-time
    snapshot is charged on the total axis."""
    if axis == "rehearsal":
        what = "rows" if unit == "rows" else "tokens of the rows"
        return f"budget: the rehearsal {what} a sampler drew (selection passes and snapshots not counted)."
    spread = "charged in full to every run" if amortize is None else f"spread over {amortize} fine-tunings"
    counted = "" if unit == "rows" else " (in tokens: each row counts its non-padding tokens)"
    return (f"budget: the compute a sampler adds to plain fine-tuning at the same steps, forward + 2 × backward"
            f"{counted}: "
            "its rehearsal and selection passes and the snapshots (and clusters) it reads; plain fine-tuning's own "
            "passes, made alike by every sampler, are left out, and so are passes that only measure. θ0's "
            f"snapshot, which every fine-tuning of θ0 can share, is {spread} (its part: 'of which one-time').")


def sections(groups: Sequence[Group], eq: Sequence[dict[str, Any]], skipped: Sequence[tuple[Path, str]],
             vs: Sequence[dict[str, Any]] = (), axis: str = "rehearsal", amortize: int | None = None,
             unit: str = "rows") -> list[Section]:
    """The report's content, in order, once for every format."""
    retention = retention_name(groups)
    notes = ["mean ± std over seeds; a seed run twice in one group counts once (dup). hit rate: audited share "
             "of drawn rows that were collateral damage; signal: what the training forward pass told the sampler. "
             f"frontier: no other group of the experiment with at most the same budget on the {axis} axis has "
             f"{retention} and ft_acc both at least as high (and one higher, or a smaller budget). "
             + axis_text(axis, amortize, unit)]
    if is_sequence(groups):
        notes.append("Multi-stage runs: earlier-task acc = mean accuracy, after the last stage, on every task before "
                     "it; avg acc = the same over all tasks; BWT = mean of (final − just-learned) accuracy over the "
                     "earlier tasks; pre_acc is the prior task's alone and ft_acc the last stage's.")
    out = [Section([], LEAD + [HEADERS[k] for k in metric_keys(groups)], table_rows(groups)), Section(notes)]
    if eq:
        out.append(Section([f"Random-equivalent budget on the {axis} axis (the budget random rehearsal with the same "
                            f"settings needs for the same {retention}), from the means and per seed pair. "
                            + axis_text(axis, amortize, unit) + " fold: that budget "
                            f"over the group's own, reading random's curve as linear in log budget (the segment from "
                            f"budget 0, plain fine-tuning, linearly); fold, linear interp.: the same read linearly "
                            f"between budgets, which on a concave curve reads high. {_INTERVALS} Δ at same budget: "
                            f"{retention} minus random's curve (log budget) at the group's own budget, in points, "
                            f"each seed paired with random's curve of that seed. {_PAIRS} The fold on the other "
                            "axis is read the same way there."],
                           eq_head(groups, axis), eq_rows(eq)))
    if vs:
        out.append(Section([f"Against the paper-faithful mix-cd (the default `mixcd` at the same experiment, settings "
                            f"and ratio): the mean over seeds of (setting − default), each seed paired with the "
                            f"default's; Δ retention is in {retention}. {_PAIRS} verdict: the paired t-test, better / "
                            "worse when the 95% Student-t interval of the mean excludes 0 (computed from 2 pairs up, "
                            "also where the range is what is printed), identical when every seed's result is, else "
                            f"within noise. fold: random-equivalent budget over own budget. {_INTERVALS}"],
                           compare.HEAD, compare.rows_of(vs)))
    if skipped:
        out.append(Section(["Skipped runs:"], items=[f"`{p}`: {why}" for p, why in skipped]))
    return out


def _md_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


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


def _rich_table(title: str, head: Sequence[str], rows: Sequence[Sequence[str]]) -> Any:
    from rich.table import Table

    table = Table(title=title)
    for h in head:
        table.add_column(h, justify="left" if h in ("experiment", "config", "sampler", "verdict") else "right")
    for row in rows:
        table.add_row(*row)
    return table


def print_report(console: Any, runs: Sequence[Run], groups: Sequence[Group], eq: Sequence[dict[str, Any]],
                 vs: Sequence[dict[str, Any]], axis: str = "rehearsal") -> None:
    """The report's tables on the terminal: groups, random-equivalent budgets, against the default mix-cd."""
    console.print(_rich_table(f"mixcd report: {len(runs)} runs, {len(groups)} groups (mean ± std over seeds)",
                              LEAD + [HEADERS[k] for k in metric_keys(groups)], table_rows(groups)))
    if eq:
        console.print(_rich_table(f"random-equivalent budget, {axis} axis (log-budget interpolation; each interval "
                                  "labelled: 95% with ≥ 5 seeds or pairs, else the range)",
                                  eq_head(groups, axis), eq_rows(eq)))
    if vs:
        console.print(_rich_table("against the paper-faithful mix-cd (paired by seed; verdict: paired t-test; each "
                                  "interval labelled)", compare.HEAD, compare.rows_of(vs)))


def mean_matrix(g: Group) -> list[list[float | None]] | None:
    """The mean accuracy matrix of a group's multi-stage runs (None where no run has the entry)."""
    return folds.mean_matrix([r.matrix for r in g.runs if r.matrix])


def _json_fold(x: float | None) -> float | str | None:
    return "> max" if x is not None and math.isinf(x) else x


def _json_folds(xs: Sequence[float | None] | None) -> list[float | str | None] | None:
    return [_json_fold(x) for x in xs] if xs else None


def _json_interval(iv: folds.Interval | None) -> dict[str, Any] | None:
    """A labelled fold interval for report.json, an infinite bound as "> max"."""
    return None if iv is None else {**iv, "lo": _json_fold(iv["lo"]), "hi": _json_fold(iv["hi"])}


def _json_other_axis(o: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if o is None else {**o, "fold": _json_fold(o["fold"]), "fold_linear": _json_fold(o["fold_linear"]),
                                   "fold_interval": _json_interval(o["fold_interval"]),
                                   "fold_per_seed": {str(k): _json_fold(v) for k, v in o["fold_per_seed"].items()}}


def _json_equivalent(e: dict[str, Any]) -> dict[str, Any]:
    return {**e, "fold": _json_fold(e["fold"]), "fold_linear": _json_fold(e["fold_linear"]),
            "other_axis": _json_other_axis(e.get("other_axis")),
            "fold_per_seed": {str(k): _json_fold(v) for k, v in e["fold_per_seed"].items()},
            "fold_interval": _json_interval(e["fold_interval"]), "fold_ci95": _json_folds(e["fold_ci95"]),
            "gap_to_random_per_seed": {str(k): v for k, v in e["gap_to_random_per_seed"].items()}}


def _json_against(v: dict[str, Any]) -> dict[str, Any]:
    return {**v, "fold": _json_fold(v["fold"]), "default_fold": _json_fold(v["default_fold"]),
            "fold_interval": _json_interval(v["fold_interval"]), "fold_ci95": _json_folds(v["fold_ci95"]),
            "default_fold_interval": _json_interval(v["default_fold_interval"]),
            "default_fold_ci95": _json_folds(v["default_fold_ci95"])}


def summary_of(runs: Sequence[Run], groups: Sequence[Group], eq: Sequence[dict[str, Any]],
               vs: Sequence[dict[str, Any]], skipped: Sequence[tuple[Path, str]], pngs: Sequence[Path],
               axis: str = "rehearsal", amortize: int | None = None, unit: str = "rows") -> dict[str, Any]:
    """report.json: every group with its statistics, the folds (infinite ones as "> max") with their labelled
    intervals, skipped runs, plots. The older ``*_ci95`` keys stay for readers written before intervals were
    labelled: the bounds of a 95% interval, null where the interval is a range (docs/design.md §6)."""
    return {"runs": len(runs), "groups": [_group_summary(g, metric_keys(groups)) for g in groups],
            "retention": retention_key(groups), "budget_axis": axis, "amortize": amortize, "budget_unit": unit,
            "budget": axis_text(axis, amortize, unit),
            "random_equivalent": [_json_equivalent(e) for e in eq],
            "against_default": [_json_against(v) for v in vs],
            "skipped": [[str(p), why] for p, why in skipped], "plots": [p.name for p in pngs]}


def _group_summary(g: Group, keys: Sequence[str]) -> dict[str, Any]:
    matrix = mean_matrix(g)
    return {"experiment": g.experiment, "config": g.label, "sampler": g.sampler, "variant": g.variant,
            "mix_ratio": g.mix_ratio, "settings": dict(g.settings), "sampler_options": dict(g.options),
            "duplicates": g.duplicates, "frontier": g.frontier, "seeds": sorted(g.seeds()),
            **{k: dict(zip(("mean", "std", "n"), g.stat(k), strict=True)) for k in keys},
            **({"accuracy_matrix": matrix} if matrix else {})}
