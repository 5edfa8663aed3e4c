"""`mixcd report` from end to end: read the runs, group them, do the fold mathematics, print and write."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from ..artifacts import write_error, write_json
from ..console import console, note
from ..errors import MixcdError
from . import compare
from .axes import DEFAULT_AXIS, budget_key, budget_unit, check_axis, set_total_budgets
from .equivalence import FoldMemo, fold_on, on_both_axes
from .groups import RETENTION, Group, group_runs, mixed_theta0
from .html import write_html
from .plots import heatmaps, plot, plot_against_default
from .read import Composer, collect
from .render import Section, markdown, print_report, sections, summary_of
from .runs_csv import RUNS_CSV, write_runs_csv
from .tables import retention_name, write_csv


def run_report(paths: Sequence[Path], out: Path | None = None, stage: str = "train",
               plots: bool = True, samplers: Sequence[str] | None = None, html: bool = False,
               budget: str = DEFAULT_AXIS, amortize: int | None = None,
               compose: Composer | None = None) -> dict[str, Any]:
    """Collect, aggregate, print, and write report.csv / runs.csv / report.md / report.json (+ PNGs, and with
    ``html`` report.html: everything on one self-contained page); ``samplers`` keeps only those samplers' runs.
    Folds, the frontier and the budget plot are read on the ``budget`` axis (`axes`), the fold on the other axis
    beside each; ``amortize`` N spreads θ0's one-time snapshot over N fine-tunings on the total axis. ``compose``
    gives an experiment's settings as composed, for the rows of a runs.csv with no report.json (`collect`)."""
    check_axis(budget, amortize)
    if out is None and Path(paths[0]).is_file():  # the report's own runs.csv would overwrite the one it reads
        raise MixcdError(f"--out is needed when the first PATH is a file ({paths[0]}): name the report's folder")
    # a log or a pipe: do not squeeze the table into 80 columns
    shown = console if console.is_terminal else Console(width=300)

    runs, skipped = collect(paths, stage, compose)
    if samplers:
        runs = [r for r in runs if r.sampler in samplers]
    if not runs:
        raise MixcdError(f"no finished {stage} runs under {', '.join(map(str, paths))}"
                         + (f" ({len(skipped)} skipped)" if skipped else ""))
    unit = budget_unit(runs)
    without_compute = set_total_budgets(runs, amortize)
    key = budget_key(budget)
    groups = group_runs(runs, key)
    memo: FoldMemo = {}
    eq = on_both_axes(groups, budget, memo)
    vs = compare.against_default(groups, lambda g, seeds: fold_on(groups, g, seeds, memo, key), RETENTION)
    out = _report_folder(Path(out) if out else Path(paths[0]))

    print_report(shown, runs, groups, eq, vs, budget)
    mixed = mixed_theta0(groups)
    _remarks(groups, skipped, without_compute, mixed, budget, out)
    parts = sections(groups, eq, skipped, vs, budget, amortize, unit)
    if mixed:
        parts.append(Section(["Runs that should share a θ0 and do not:"], items=[_theta0_text(m) for m in mixed]))
    try:  # a folder that turns read-only or full midway: one line, like every other write
        write_csv(groups, out / "report.csv")
        write_runs_csv(groups, out / RUNS_CSV, roots=paths)
        (out / "report.md").write_text(markdown(parts))
        pngs = _plots(groups, vs, out, key, unit) if plots else []
        summary = summary_of(runs, groups, eq, vs, skipped, pngs, budget, amortize, unit)
        summary["theta0_mixed"] = mixed
        # what a runs.csv of this report can be completed from (read.py): its stage, and whether every row's
        # settings were known
        summary["stage"] = stage
        summary["settings_complete"] = all(r.complete for r in runs)
        write_json(summary, out / "report.json")
        if html:
            title = f"mixcd report: {len(runs)} {stage} runs, {len(groups)} groups"
            write_html(out / "report.html", title, parts, pngs, sources=[str(p) for p in paths])
    except OSError as exc:
        raise write_error(Path(exc.filename or out), exc, OUT_KEY) from exc
    shown.print(f"wrote {out / 'report.csv'}, {RUNS_CSV}, report.md, report.json" + (", report.html" if html else "")
                + (f" and {len(pngs)} plots" if pngs else ""), highlight=False, soft_wrap=True)
    return summary


def _report_folder(out: Path) -> Path:
    """``out``, made, after checking that it can be written: one line and nothing written if not."""
    check_out(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(out, exc, OUT_KEY) from exc
    return out


def _remarks(groups: Sequence[Group], skipped: Sequence[tuple[Path, str]], without_compute: int,
             mixed: Sequence[dict[str, Any]], budget: str, out: Path) -> None:
    """The notes on stderr after the tables: runs with no compute, left out, from different θ0s, repeated."""
    if without_compute:
        note(f"{without_compute} run(s) have no compute recorded (made before mixcd counted it): the total axis "
             "leaves them out of the folds and the frontier" + ("; --budget rehearsal reads them" if budget == "total"
                                                                 else ""))
    if skipped:  # one line, however many folders: the list is in report.md and report.json
        failed = sum(why.startswith("failed:") for _, why in skipped)
        note(f"{len(skipped)} run folder(s) left out ({failed} failed with error.txt, {len(skipped) - failed} "
             f"unfinished or unreadable); see {out / 'report.md'}")
    for m in mixed:
        note(_theta0_text(m))
    duplicates = sum(g.duplicates for g in groups)
    if duplicates:
        note(f"{duplicates} run(s) repeat a seed already in their group and count once")


def _theta0_text(m: dict[str, Any]) -> str:
    seeds = "; ".join(f"seed {s}: " + ", ".join(f"{100 * float(a):.2f}% in {n} run(s)" for a, n in accs.items())
                      for s, accs in m["theta0_acc"].items())
    return (f"{m['experiment']}{' (' + m['config'] + ')' if m['config'] else ''}: runs of the same seed start from "
            f"different θ0 (prior-test accuracy before fine-tuning, {seeds}), pretrained on another machine, with "
            "another thread count or by other code; differences between them mix θ0s with samplers")


OUT_KEY = "--out"  # what moves the report's folder, given or not (it defaults to the first PATH)


def check_out(out: Path) -> None:
    """Refuse, before anything is printed or made, a report folder that cannot be created or written.

    The nearest existing folder is probed with a temporary file (removed at once): permission bits do
    not tell, since root passes them and a read-only mount refuses everyone.
    """
    probe = out
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise MixcdError(f"{OUT_KEY} {out} cannot be created: {probe} is a file, not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".mixcd-probe-"):
            pass
    except OSError as exc:
        raise write_error(out, exc, OUT_KEY) from exc


def _plots(groups: Sequence[Group], vs: Sequence[dict[str, Any]], out: Path, budget: str, unit: str = "rows"
           ) -> list[Path]:
    return (plot(groups, out, budget, unit) + heatmaps(groups, out)
            + plot_against_default(vs, out, retention_name(groups)))
