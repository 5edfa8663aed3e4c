"""How mix-cd fares with each kind of snapshot, on both budget axes, from a report's folder (report.json and
runs.csv): the eval-mode pass (the default), the training-time snapshot (snapshot.source=training) and scored
subsets (snapshot.subset=N, the fold-versus-N curve), each fold with its labelled interval, the gap to random at
the same total budget, the difference from the default mix-cd paired by seed, and how close a training-time
snapshot was to the true pass.

    python scripts/snapshot_table.py results/snapshots_split > results/snapshots_split/snapshots.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mixcd_cli.report.runs_csv import read_runs_csv


def _fold(x: object, at_least: float | None = None) -> str:
    if x is None:
        return "-"
    if isinstance(x, str):
        return f"> {at_least:.2f}x" if at_least is not None else x
    return f"{x:.2f}x"


def _with_interval(x: object, iv: dict | None, at_least: float | None = None) -> str:
    if iv is None:
        return _fold(x, at_least)
    return f"{_fold(x, at_least)} [{_fold(iv['lo'])}, {_fold(iv['hi'])}] {iv['label']}"


def _points(mean: float | None, iv: dict | None) -> str:
    if mean is None:
        return "-"
    return f"{100 * mean:+.2f}" + (f" [{100 * iv['lo']:+.2f}, {100 * iv['hi']:+.2f}] {iv['label']}" if iv else "")


def _snapshot(sampler: str) -> tuple[int, str]:
    """(sort key, what the snapshot is) of a mix-cd group's name."""
    if "snapshot.source=training" in sampler:
        return 1, "training-time (no pass)"
    if "snapshot.subset=" in sampler:
        n = int(sampler.split("snapshot.subset=")[1].split()[0].rstrip(")"))
        return 2 + n, f"subset of {n:,} rows"
    return 0, "eval-mode pass (default)"


def table(folder: Path) -> str:
    """The Markdown table of the mix-cd groups of a report folder."""
    summary = json.loads((folder / "report.json").read_text())
    runs = read_runs_csv(folder / "runs.csv")
    against = {(v["sampler"], v["mix_ratio"]): v for v in summary["against_default"]}
    head = ["snapshot", "r", "seeds", "budget, total axis (one-time)", "fold, total axis [interval]",
            "fold, rehearsal axis [interval]", "Δ retention vs random at same total budget, pts [interval]",
            "Δ retention vs default mix-cd, pts [interval]", "precision / recall of 'correct' vs true pass",
            "rows never visited"]
    rows = []
    for e in summary["random_equivalent"]:
        if not e["sampler"].startswith("mixcd") or (e["sampler"] != "mixcd" and "snapshot." not in e["sampler"]):
            continue
        order, what = _snapshot(e["sampler"])
        mine = [r for r in runs if r.sampler == "mixcd" and r.mix_ratio == e["mix_ratio"]
                and _snapshot(_name(r))[1] == what]
        precision = _mean([r.values.get("snapshot_precision") for r in mine])
        recall = _mean([r.values.get("snapshot_recall") for r in mine])
        unvisited = _mean([r.values.get("snapshot_unvisited") for r in mine])
        other = e.get("other_axis") or {}
        vs = against.get((e["sampler"], e["mix_ratio"]))
        rows.append((order, e["mix_ratio"], [
            what, f"{e['mix_ratio']:g}", str(e["paired_seeds"]),
            f"{e['budget']:,.0f} ({e['budget_one_time'] or 0:,.0f})",
            _with_interval(e["fold"], e["fold_interval"], e.get("fold_at_least")),
            _with_interval(other.get("fold"), other.get("fold_interval"), other.get("fold_at_least")),
            _points(e["gap_to_random"], e["gap_to_random_interval"]),
            "-" if vs is None else _points(vs["retention"]["mean"], vs["retention"].get("interval")),
            "-" if precision is None else f"{100 * precision:.1f}% / {100 * recall:.1f}%",
            "-" if unvisited is None else f"{100 * unvisited:.1f}%"]))
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for _, _, r in sorted(rows, key=lambda x: (x[1], x[0]))]
    return "\n".join(lines) + "\n"


def _name(run: object) -> str:
    """A run's variant as the report names it, from its snapshot options."""
    options = dict(run.options)  # type: ignore[attr-defined]
    if json.loads(options.get("snapshot.source", '"pass"')) == "training":
        return "mixcd (snapshot.source=training)"
    subset = json.loads(options.get("snapshot.subset", "null"))
    return f"mixcd (snapshot.subset={subset})" if subset is not None else "mixcd"


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


if __name__ == "__main__":
    sys.stdout.write(table(Path(sys.argv[1])))
