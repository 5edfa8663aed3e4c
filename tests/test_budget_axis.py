"""The report on either budget axis (docs/design.md §6, §11): the total axis counts what a sampler adds to plain
fine-tuning — rehearsal, selection and the snapshots it reads — and --amortize spreads θ0's one-time snapshot;
runs.csv gives back every run so a report's figures can be recomputed to the last digit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_report import fake_compute, fake_run

from mixcd_cli.report import group_runs, run_report
from mixcd_cli.report.axes import set_total_budgets
from mixcd_cli.report.equivalence import on_both_axes
from mixcd_cli.report.runs_csv import read_runs_csv

POOL = 300  # θ0's pool snapshot mix-cd reads: 300 forwards, one-time


def _runs(root: Path, seeds: tuple[int, ...] = (1,)) -> None:
    """none .10; random .60/.75/.80 at 100/200/400 rows (compute 300/600/1,200); mix-cd .70 at 100 rows plus
    θ0's pool snapshot (300): 600 on the total axis."""
    for s in seeds:
        fake_run(root / f"n{s}", "none", 0.0, s, 0.10)
        for rows, acc in ((100, 0.60), (200, 0.75), (400, 0.80)):
            fake_run(root / f"r{rows}-{s}", "random", rows / 400, s, acc, rehearsal=rows)
        fake_run(root / f"m{s}", "mixcd", 0.25, s, 0.70, rehearsal=100, hit_rate=0.4,
                 compute=fake_compute(100, snapshot=POOL))


def test_the_total_axis_counts_the_snapshot_a_sampler_reads(tmp_path: Path) -> None:
    """Rehearsal axis: .70 lies 2/3 of the way (linear in log budget) from (100, .60) to (200, .75): random
    needs 100 · 2^(2/3) = 158.7 rows, fold 1.59x. Total axis: the same point on random's curve in compute,
    (300, .60) to (600, .75): 476.2 against mix-cd's 300 + 300 = 600, fold 0.79x: it loses once its snapshot is
    counted. There random at 200 rows (600, .75) is as cheap and better: mix-cd is off the frontier, while on
    the rehearsal axis nothing of at most its 100 rows beats it."""
    _runs(tmp_path / "runs")
    total = run_report([tmp_path / "runs"], tmp_path / "t", plots=False)
    (e,) = total["random_equivalent"]
    assert total["budget_axis"] == "total" and e["axis"] == "total"
    assert e["budget"] == pytest.approx(3 * 100 + POOL) and e["budget_one_time"] == pytest.approx(POOL)
    assert e["random_equivalent_budget"] == pytest.approx(300 * 2 ** (2 / 3))
    assert e["fold"] == pytest.approx(300 * 2 ** (2 / 3) / 600)
    assert e["other_axis"]["axis"] == "rehearsal" and e["other_axis"]["fold"] == pytest.approx(2 ** (2 / 3))
    assert e["frontier"] is False
    # at its own total budget (600) random has .75: mix-cd is 5 points behind
    assert e["gap_to_random"] == pytest.approx(-0.05)

    rehearsal = run_report([tmp_path / "runs"], tmp_path / "r", plots=False, budget="rehearsal")
    (e,) = rehearsal["random_equivalent"]
    assert e["budget"] == 100 and e["budget_one_time"] is None
    assert e["fold"] == pytest.approx(2 ** (2 / 3)) and e["frontier"] is True
    assert e["other_axis"]["fold"] == pytest.approx(300 * 2 ** (2 / 3) / 600)
    md = (tmp_path / "t" / "report.md").read_text()
    assert "| budget (total axis) | of which one-time |" in md and "fold, rehearsal axis [interval]" in md
    assert "| exp | - | mixcd | 0.25 | 600 | 300 | 70.00 | 476 | 0.79x |" in md


def test_amortize_spreads_the_one_time_snapshot_over_n_fine_tunings(tmp_path: Path) -> None:
    """--amortize 3: mix-cd is charged 300 + 300 / 3 = 400, fold 476.2 / 400 = 1.19x; random reads no snapshot
    and its curve does not move; --amortize 1 is the default, in full."""
    _runs(tmp_path / "runs")
    (e,) = run_report([tmp_path / "runs"], tmp_path / "a3", plots=False, amortize=3)["random_equivalent"]
    assert e["budget"] == pytest.approx(400) and e["budget_one_time"] == pytest.approx(100)
    assert e["fold"] == pytest.approx(300 * 2 ** (2 / 3) / 400)
    one = run_report([tmp_path / "runs"], tmp_path / "a1", plots=False, amortize=1)["random_equivalent"]
    default = run_report([tmp_path / "runs"], tmp_path / "a0", plots=False)["random_equivalent"]
    assert one[0]["fold"] == default[0]["fold"] == pytest.approx(300 * 2 ** (2 / 3) / 600)


def test_selection_passes_count_on_the_total_axis_only(tmp_path: Path) -> None:
    """A sampler that draws like random but spends 600 selection forwards: on the rehearsal axis it is charged
    its 100 rows, on the total axis 300 + 600."""
    _runs(tmp_path / "runs")
    fake_run(tmp_path / "runs" / "o1", "oracle_cd", 0.25, 1, 0.75, rehearsal=100, compute=fake_compute(100, 600, POOL))
    summary = run_report([tmp_path / "runs"], tmp_path / "o", plots=False)
    groups = {e["sampler"]: e for e in summary["random_equivalent"]}
    assert groups["oracle_cd"]["budget"] == pytest.approx(300 + 600 + POOL)
    assert groups["oracle_cd"]["other_axis"]["budget"] == 100
    assert groups["oracle_cd"]["fold"] == pytest.approx(600 / 1200)  # random reaches .75 at 600


def test_beyond_randoms_curve_the_fold_is_a_lower_bound_that_can_be_below_one(tmp_path: Path) -> None:
    """.85 is above random's best (.80 at 1,200): random never gets there, so the fold is at least 1,200 over the
    sampler's own 300 + 900 + 300 = 1,500: '> 0.80x', not an unbounded win; on the rehearsal axis, > 4.00x."""
    _runs(tmp_path / "runs")
    fake_run(tmp_path / "runs" / "o1", "oracle_cd", 0.25, 1, 0.85, rehearsal=100, compute=fake_compute(100, 900, POOL))
    summary = run_report([tmp_path / "runs"], tmp_path / "o", plots=False)
    e = next(e for e in summary["random_equivalent"] if e["sampler"] == "oracle_cd")
    assert e["random_equivalent"].startswith("> 1,200") and e["fold"] == "> max"
    assert e["fold_at_least"] == pytest.approx(0.8)
    assert e["other_axis"]["fold_at_least"] == pytest.approx(400 / 100)
    md = (tmp_path / "o" / "report.md").read_text()
    assert "| exp | - | oracle_cd | 0.25 | 1,500 | 300 | 85.00 | > 1,200 (max) | > 0.80x | > 0.80x |" in md


def test_runs_without_compute_have_no_total_axis(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Runs made before compute was counted: the total axis cannot read them (said in one note), the rehearsal
    axis still does."""
    for s in (1,):
        fake_run(tmp_path / "runs" / "n", "none", 0.0, s, 0.10, with_compute=False)
        fake_run(tmp_path / "runs" / "r", "random", 0.25, s, 0.60, rehearsal=100, with_compute=False)
        fake_run(tmp_path / "runs" / "m", "mixcd", 0.25, s, 0.50, rehearsal=100, with_compute=False)
    assert run_report([tmp_path / "runs"], tmp_path / "t", plots=False)["random_equivalent"] == []
    assert "3 run(s) have no compute recorded" in capsys.readouterr().err
    (e,) = run_report([tmp_path / "runs"], tmp_path / "r", plots=False, budget="rehearsal")["random_equivalent"]
    assert e["fold"] is not None and e["other_axis"] is None


def test_runs_csv_gives_the_report_back_to_the_last_digit(tmp_path: Path) -> None:
    """Groups and folds recomputed from runs.csv alone equal the report's, on both axes, with --amortize."""
    import random as rnd

    root = tmp_path / "runs"
    for s in range(1, 6):
        noise = rnd.Random(s).gauss(0, 0.02)
        fake_run(root / f"n{s}", "none", 0.0, s, 0.10 + noise)
        for rows, acc in ((100, 0.60), (200, 0.75), (400, 0.80)):
            fake_run(root / f"r{rows}-{s}", "random", rows / 400, s, acc + noise, rehearsal=rows)
        fake_run(root / f"m{s}", "mixcd", 0.25, s, 0.70 + noise / 3, rehearsal=100, hit_rate=0.4 + noise,
                 compute=fake_compute(100, snapshot=POOL))
        fake_run(root / f"t{s}", "mixcd", 0.25, s, 0.72 + noise, rehearsal=100,
                 compute=fake_compute(100, snapshot=POOL))
        cfg = root / f"t{s}" / "config.yaml"
        cfg.write_text(cfg.read_text() + "  estimate: thompson\n")
    summary = run_report([root], tmp_path / "rep", plots=False, amortize=2)
    runs = read_runs_csv(tmp_path / "rep" / "runs.csv")
    assert len(runs) == 30 and {r.path.name for r in runs} >= {"m1", "t5"}  # folders relative to the input
    set_total_budgets(runs, 2)
    groups = group_runs(runs, "total_budget")
    again = on_both_axes(groups, "total")
    assert [json.loads(json.dumps(e, default=str))["sampler"] for e in again] == [
        e["sampler"] for e in summary["random_equivalent"]]
    for mine, theirs in zip(again, summary["random_equivalent"], strict=True):
        assert mine["fold"] == theirs["fold"] and mine["budget"] == theirs["budget"]
        assert mine["fold_interval"]["lo"] == theirs["fold_interval"]["lo"]
        assert mine["gap_to_random"] == theirs["gap_to_random"]
        assert mine["other_axis"]["fold"] == theirs["other_axis"]["fold"]
        assert mine["frontier"] == theirs["frontier"]
    header = (tmp_path / "rep" / "runs.csv").read_text().splitlines()[0].split(",")
    for column in ("seed", "option:sampler.estimate", "pre_acc", "forward_rehearsal", "compute_snapshot",
                   "compute_sampler", "total_budget", "rehearsal_budget"):
        assert column in header


@pytest.mark.parametrize(("options", "says"), [
    (["--budget", "flops"], "unknown --budget 'flops'; choose one of: rehearsal, total"),
    (["--amortize", "0"], "--amortize must be a whole number of fine-tunings, at least 1 (got 0)"),
    (["--amortize", "-3"], "--amortize must be a whole number of fine-tunings, at least 1 (got -3)"),
])
def test_a_bad_budget_option_is_one_line_and_writes_nothing(options: list[str], says: str, tmp_path: Path) -> None:
    _runs(tmp_path / "runs")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "mixcd_cli.cli", "report", str(tmp_path / "runs"), *options,
                           "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and says in lines[0], proc.stderr
    assert not out.exists() and proc.stdout == ""


def test_a_snapshot_source_or_subset_names_a_variant_read_against_the_same_random_curve(tmp_path: Path) -> None:
    """mix-cd with a training-time snapshot (no pass: the sampler's snapshot costs 0) and with a 100-row subset
    are variants of mix-cd, not other experiments: folded on the same random curve (which reads no snapshot) and
    set against the default mix-cd, paired by seed."""
    _runs(tmp_path / "runs")
    for name, extra, snapshot, acc in (("tr", "snapshot:\n  source: training\n", 0, 0.68),
                                       ("sub", "snapshot:\n  subset: 100\n", 100, 0.69)):
        fake_run(tmp_path / "runs" / name, "mixcd", 0.25, 1, acc, rehearsal=100,
                 compute=fake_compute(100, snapshot=snapshot))
        cfg = tmp_path / "runs" / name / "config.yaml"
        cfg.write_text(cfg.read_text() + extra)
    summary = run_report([tmp_path / "runs"], tmp_path / "v", plots=False)
    eq = {e["sampler"]: e for e in summary["random_equivalent"]}
    assert set(eq) == {"mixcd", "mixcd (snapshot.source=training)", "mixcd (snapshot.subset=100)"}
    # .68 on random's curve (300, .60)-(600, .75): 300 · 2^(.08/.15); the training-time variant costs its 300 rows
    assert eq["mixcd (snapshot.source=training)"]["budget"] == pytest.approx(300)
    assert eq["mixcd (snapshot.source=training)"]["fold"] == pytest.approx(2 ** (0.08 / 0.15))
    assert eq["mixcd (snapshot.subset=100)"]["budget"] == pytest.approx(400)
    assert {v["sampler"] for v in summary["against_default"]} == {"mixcd (snapshot.source=training)",
                                                                 "mixcd (snapshot.subset=100)"}
    assert {g["config"] for g in summary["groups"]} == {""}  # no setting split the experiment
