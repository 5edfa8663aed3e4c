"""How mix-cd fares with each kind of snapshot, on both budget axes, recomputed from a report folder's runs.csv:
the eval-mode pass (the default), the training-time snapshot (snapshot.source=training) and scored subsets
(snapshot.subset=N, the fold-versus-N curve), each fold with its labelled interval, the gap to random at the
same total budget, the difference from the default mix-cd paired by seed, and how close a training-time
snapshot was to the true pass.

    python scripts/snapshot_table.py results/snapshots_split > results/snapshots_split/snapshots.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mixcd_cli.report.axes import set_total_budgets
from mixcd_cli.report.compare import against_default
from mixcd_cli.report.equivalence import FoldMemo, fold_on, on_both_axes
from mixcd_cli.report.groups import RETENTION, Group, group_runs
from mixcd_cli.report.runs_csv import RUNS_CSV, read_runs_csv
from mixcd_cli.report.tables import fold_text, points_text

HEAD = ["snapshot", "r", "seeds", "budget, total axis (one-time)", "fold, total axis [interval]",
        "fold, rehearsal axis [interval]", "Δ retention vs random at same total budget, pts [interval]",
        "Δ retention vs default mix-cd, pts [interval]", "precision / recall of 'correct' vs true pass",
        "rows never visited"]


def _snapshot(g: Group) -> tuple[int, str] | None:
    """(sort key, what the snapshot is) of a mix-cd group that differs from the default in its snapshot alone;
    None for any other group."""
    options = {k: json.loads(v) for k, v in g.options}
    if g.sampler != "mixcd" or (g.variant and "snapshot." not in g.variant):
        return None
    if options.get("snapshot.source") == "training":
        return 1, "training-time (no pass)"
    if options.get("snapshot.subset") is not None:
        n = int(options["snapshot.subset"])
        return 2 + n, f"subset of {n:,} rows"
    return 0, "eval-mode pass (default)"


def table(folder: Path) -> str:
    """The Markdown table of the mix-cd groups of a report folder, from its runs.csv."""
    runs = read_runs_csv(folder / RUNS_CSV)
    set_total_budgets(runs)
    groups = group_runs(runs, "total_budget")
    memo: FoldMemo = {}
    folds = {(e["sampler"], e["mix_ratio"]): e for e in on_both_axes(groups, "total", memo)}
    versus = {(v["sampler"], v["mix_ratio"]): v for v in
              against_default(groups, lambda g, seeds: fold_on(groups, g, seeds, memo, "total_budget"), RETENTION)}
    rows = []
    for g in groups:
        what = _snapshot(g)
        e = folds.get((g.name, g.mix_ratio))
        if what is None or e is None:
            continue
        other, vs = e["other_axis"] or {}, versus.get((g.name, g.mix_ratio))
        precision, recall, unvisited = (g.stat(f"snapshot_{k}")[0] for k in ("precision", "recall", "unvisited"))
        rows.append((g.mix_ratio, what[0], [
            what[1], f"{g.mix_ratio:g}", str(e["paired_seeds"]),
            f"{e['budget']:,.0f} ({e['budget_one_time'] or 0:,.0f})",
            fold_text(e["fold"], e["fold_interval"], e["fold_at_least"]),
            fold_text(other.get("fold"), other.get("fold_interval"), other.get("fold_at_least")),
            points_text(e["gap_to_random"], e["gap_to_random_interval"]),
            "-" if vs is None or vs["retention"] is None else points_text(vs["retention"]["mean"],
                                                                        vs["retention"].get("interval")),
            "-" if precision is None else f"{100 * precision:.1f}% / {100 * recall:.1f}%",
            "-" if unvisited is None else f"{100 * unvisited:.1f}%"]))
    lines = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    lines += ["| " + " | ".join(r) + " |" for _, _, r in sorted(rows, key=lambda x: (x[0], x[1]))]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(table(Path(sys.argv[1])))
