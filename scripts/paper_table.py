"""README's table against the paper, recomputed from the committed runs.csv files alone.

For each reproduction in `EXPERIMENTS` whose `results/<folder>/runs.csv` is committed: the default mix-cd at
every ratio, its random-equivalent fold on the rehearsal axis and on the total axis (θ0's snapshot charged in
full: every pass a sampler needs counted), each with its labelled interval, the retention gap to random at
the same total budget, the total-axis fold with θ0's snapshot spread over `AMORTIZE` fine-tunings, and the
audited hit rate of mix-cd over random's. `tests/test_paper_table.py` checks
that README and docs/results/index.md hold exactly this table between their paper-table markers.

    python scripts/paper_table.py            # print the table
    python scripts/paper_table.py --readme   # write it into README.md and docs/results/index.md
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from mixcd_cli.report.axes import set_total_budgets
from mixcd_cli.report.equivalence import on_both_axes
from mixcd_cli.report.groups import RANDOM, group_runs
from mixcd_cli.report.runs_csv import RUNS_CSV, read_runs_csv
from mixcd_cli.report.tables import fold_text, points_text

ROOT = Path(__file__).resolve().parent.parent
# results folder → (what README calls it, the Makefile target that makes it), in README's order
# folder → the one config label whose rows it adds (the BatchNorm report holds the default's GroupNorm runs too,
# which are the default experiment's own row above)
ONLY = {"fmnist_norm": "model.norm=batch"}
EXPERIMENTS = {
    "fmnist": ("default, GroupNorm", "reproduce-fmnist"),
    "fmnist_ten": ("default, GroupNorm, random and mix-cd alone", "reproduce-fmnist-ten"),
    "fmnist_norm": ("default, BatchNorm", "reproduce-fmnist-norm"),
    "fmnist_multi": ("multi-head even → odd", "reproduce-fmnist-multi"),
    "fmnist_foundation": ("foundation, sparse damage", "reproduce-fmnist-foundation"),
    "fmnist_split": ("Split FMNIST, 3 stages", "reproduce-fmnist-split"),
    "fmnist_domain": ("Rotated FMNIST, 3 stages", "reproduce-fmnist-domain"),
    "text_topics": ("generated text topics, tiny BERT", "reproduce-text"),
    "translate": ("FreeDict translation, eng→deu then fra, spa, ita", "reproduce-translate"),
    "qa": ("V.E.R.A. acronym QA after eng→deu", "reproduce-qa"),
}
BEGIN, END = "<!-- paper-table:begin (scripts/paper_table.py) -->", "<!-- paper-table:end -->"
# where the table is shown: README, and the documentation site's results overview
PAGES = (ROOT / "README.md", ROOT / "docs" / "results" / "index.md")
# θ0's snapshot is shared by every fine-tuning of θ0: the last fold column spreads it over this many, about the
# mix-cd runs one of these reproductions makes on one θ0 (`mixcd report --amortize`).
AMORTIZE = 25
HEAD = ["experiment (target)", "r", "seeds", "fold, rehearsal axis [interval]", "fold, total axis [interval]",
        "Δ retention vs random at same total budget, pts [interval]",
        f"fold, total axis, θ0's snapshot over {AMORTIZE} runs [interval]", "hit rate, mix-cd / random (audited)"]


def _mixcd_folds(runs: list, amortize: int | None) -> dict[tuple[str, float], dict]:
    """The fold rows of the default mix-cd (by config label and ratio) on the total axis, θ0's snapshot spread
    over ``amortize`` runs (on copies: the runs' own budgets stay as they are)."""
    runs = [dataclasses.replace(r, values=dict(r.values)) for r in runs]
    set_total_budgets(runs, amortize)
    groups = group_runs(runs, "total_budget")
    return {(e["config"], e["mix_ratio"]): e for e in on_both_axes(groups, "total") if e["sampler"] == "mixcd"}


def rows_of(folder: str, label: str, target: str, results: Path) -> list[list[str]]:
    """The default mix-cd's rows of one reproduction, from its runs.csv."""
    runs = read_runs_csv(results / folder / RUNS_CSV)
    set_total_budgets(runs)
    groups = group_runs(runs, "total_budget")
    hit = {(g.settings, g.mix_ratio): g.stat("hit_rate")[0] for g in groups if g.sampler == RANDOM}
    by_group = {(g.label, g.name, g.mix_ratio): g for g in groups}
    spread = _mixcd_folds(runs, AMORTIZE)
    rows = []
    for e in on_both_axes(groups, "total"):
        if e["sampler"] != "mixcd" or (folder in ONLY and e["config"] != ONLY[folder]):
            continue
        a = spread[(e["config"], e["mix_ratio"])]
        g = by_group[(e["config"], e["sampler"], e["mix_ratio"])]
        theirs, mine = hit.get((g.settings, g.mix_ratio)), g.stat("hit_rate")[0]
        other = e["other_axis"] or {}
        config = f" [{e['config']}]" if e["config"] and folder not in ONLY else ""
        rows.append([f"{label}{config} (`{target}`)",
                     f"{e['mix_ratio']:g}", str(e["paired_seeds"]),
                     fold_text(other.get("fold"), other.get("fold_interval"), other.get("fold_at_least")),
                     fold_text(e["fold"], e["fold_interval"], e["fold_at_least"]),
                     points_text(e["gap_to_random"], e["gap_to_random_interval"]),
                     fold_text(a["fold"], a["fold_interval"], a["fold_at_least"]),
                     "-" if not mine or not theirs else f"{mine / theirs:.2f}×"])
    return rows


def table(results: Path = ROOT / "results") -> str:
    """The whole table, Markdown, for every reproduction whose runs.csv is committed."""
    rows = [r for folder, (label, target) in EXPERIMENTS.items() if (results / folder / RUNS_CSV).is_file()
            for r in rows_of(folder, label, target, results)]
    lines = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)] + ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def in_readme(text: str) -> str | None:
    """The table README holds between the markers (None when they are missing)."""
    if BEGIN not in text or END not in text:
        return None
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n") + "\n"


def main() -> None:
    made = table()
    if "--readme" in sys.argv[1:]:
        for page in PAGES:
            text = page.read_text()
            if in_readme(text) is None:
                sys.exit(f"{page.relative_to(ROOT)} has no {BEGIN} ... {END} markers")
            head, rest = text.split(BEGIN, 1)
            page.write_text(head + BEGIN + "\n" + made + rest[rest.index(END):])
    else:
        sys.stdout.write(made)


if __name__ == "__main__":
    main()
