"""README's snapshot table and each committed snapshots.md are what the committed runs.csv files give
(scripts/snapshot_table.py)."""

from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path

import pytest
from repo_scripts import load_script

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = sorted(p.parent for p in (ROOT / "results").glob("snapshots_*/snapshots.md"))
SEQUENCES = {"Split FMNIST": "snapshots_split", "Rotated FMNIST": "snapshots_domain"}
# README's column heads, as snapshot_table.py names the snapshot
COLUMNS = {"eval-mode pass (default)": "eval-mode pass (default)", "training-time, no pass": "training-time (no pass)",
           "subset of 500 rows": "subset of 500 rows", "subset of 1,000 rows": "subset of 1,000 rows"}


def _rows(markdown: str, head: str) -> list[list[str]]:
    """The cells of each body row of the Markdown table whose header line starts with ``head``."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(head))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def compact(cell: str) -> str:
    """README's short form of a snapshot_table fold cell: '1.06x [0.99x, 1.13x] 95% bootstrap over 5 seeds'
    → '1.06× [0.99, 1.13]'."""
    m = re.fullmatch(r"(>? ?[\d.]+)x \[([^,]+), ([^\]]+)\] .*", cell)
    assert m, cell
    return f"{m[1]}× [{m[2].removesuffix('x')}, {m[3].removesuffix('x')}]"


@pytest.fixture(scope="module")
def made() -> dict[str, str]:
    snapshot_table = load_script("snapshot_table")
    return {f.name: snapshot_table.table(f) for f in FOLDERS}


def test_the_committed_snapshot_tables_equal_their_runs(made: dict[str, str]) -> None:
    """snapshots.md recomputed from the same folder's runs.csv, to the last digit: runs remade without their
    table, or a table edited by hand, fail here."""
    assert {"snapshots_split", "snapshots_domain"} <= set(made)
    for name, text in made.items():
        assert (ROOT / "results" / name / "snapshots.md").read_text() == text, name


def test_readme_snapshot_table_equals_the_committed_runs(made: dict[str, str]) -> None:
    """Every cell of README's snapshot table — the fold on the total axis with its interval, and the seeds it
    rests on — is the matching row of snapshots.md as recomputed from runs.csv."""
    readme = _rows((ROOT / "README.md").read_text(), "| sequence, ratio |")
    head, body = readme[0], readme[2:]
    assert head[:2] == ["sequence, ratio", "seeds"] and set(head[2:]) <= set(COLUMNS), head
    assert {row[0].split(",")[0] for row in body} == set(SEQUENCES)
    # (sequence, snapshot, ratio) → that row of snapshots.md; its ratio is printed exactly ('0.0625')
    source_rows = {(sequence, r[0], Fraction(r[1])): r for sequence, folder in SEQUENCES.items()
                   for r in _rows(made[folder], "| snapshot |")[2:]}
    filled = 0
    for row in body:
        sequence, ratio = re.fullmatch(r"(.+), r = (\d+/\d+)", row[0]).groups()
        seeds = set()
        for column, cell in zip(head[2:], row[2:], strict=True):
            source = source_rows.get((sequence, COLUMNS[column], Fraction(ratio)))
            if cell == "–":
                assert source is None, (row[0], column)
                continue
            assert source is not None, (row[0], column)
            assert cell.strip("*") == compact(source[4]), (row[0], column)
            seeds.add(source[2])
            filled += 1
        assert seeds == {row[1]}, row[0]
    assert filled >= 8
