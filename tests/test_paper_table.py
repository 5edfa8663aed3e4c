"""README's table against the paper is what the committed runs.csv files give (scripts/paper_table.py)."""

from __future__ import annotations

from pathlib import Path

from repo_scripts import load_script

ROOT = Path(__file__).resolve().parent.parent


def test_readme_table_against_the_paper_equals_the_committed_runs() -> None:
    """Recomputed from results/*/runs.csv alone — every fold, interval and gap — it must equal README's table to
    the last printed digit; a number edited by hand, or runs remade without README, fails here (rerun
    `python scripts/paper_table.py --readme` after a reproduction)."""
    paper = load_script("paper_table")
    committed = [f for f in paper.EXPERIMENTS if (ROOT / "results" / f / "runs.csv").is_file()]
    assert committed, "no results/<experiment>/runs.csv committed"
    made = paper.table()
    assert made.count("\n") == 2 + sum(len(paper.rows_of(f, *paper.EXPERIMENTS[f], ROOT / "results"))
                                       for f in committed)
    for page in paper.PAGES:  # README and the site's results overview
        assert paper.in_readme(page.read_text()) == made, page
