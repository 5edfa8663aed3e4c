"""The report: aggregation on hand-made run folders, random-equivalent budget, a real tiny multirun."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mixcd_cli.cli import app
from mixcd_cli.errors import MixcdError
from mixcd_cli.report import (
    bootstrap_interval,
    collect,
    curve_groups,
    equivalent_budget,
    equivalents,
    group_runs,
    run_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_compute(rehearsal: int, selection: int = 0, snapshot: int = 0, own_snapshot: int = 0) -> dict:
    """metrics.json's compute of a run that drew ``rehearsal`` rows, made ``selection`` forwards, and reads θ0's
    one-time pool snapshot of ``snapshot`` rows and later stages' snapshots of ``own_snapshot`` rows (0: none)."""
    by_purpose = {"pretrain": 9000, "finetune": 3000, "rehearsal": 3 * rehearsal, "selection": selection,
                  "snapshot": snapshot + own_snapshot + 100, "eval": 100, "audit": 0}
    artifacts = [{"what": "pretraining", "model": "theta0", "stage": 0, "one_time": True, "needed": True,
                  "compute": 9000},
                 {"what": "snapshot", "model": "theta0", "stage": 1, "one_time": True, "needed": bool(snapshot),
                  "compute": snapshot},
                 {"what": "snapshot of the test sets", "model": "theta0", "stage": 1, "one_time": True,
                  "needed": False, "compute": 100}]
    if own_snapshot:
        artifacts.append({"what": "snapshot", "model": "theta1", "stage": 2, "one_time": False, "needed": True,
                          "compute": own_snapshot})
    return {"by_purpose": by_purpose, "total": sum(by_purpose.values()), "training": 3000 + 3 * rehearsal + selection,
            "one_time": 9000 + snapshot + 100, "sampler": 3 * rehearsal + selection + snapshot + own_snapshot,
            "sampler_one_time": snapshot, "artifacts": artifacts}


def fake_run(folder: Path, sampler: str, ratio: float, seed: int, pre_acc: float, ft_acc: float = 0.9,
             rehearsal: int = 0, hit_rate: float | None = None, steps: int = 600, compute: dict | None = None,
             with_compute: bool = True) -> None:
    """A finished run's folder; its compute is ``compute``, else that of its rehearsal alone (no snapshot read:
    the total axis then reads as the rehearsal axis), or none with ``with_compute=False`` (an older run)."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(f"stage: train\nseed: {seed}\nthreads: 1\ntrainer:\n  steps: {steps}\n"
                                        f"  mix_ratio: {ratio}\n  log_every: 50\nsampler:\n  name: {sampler}\n")
    metrics = {"stage": "train", "experiment": "exp", "sampler": sampler, "mix_ratio": ratio, "seed": seed,
               "pre_acc0": 0.9, "pre_acc": pre_acc, "forgetting": 0.9 - pre_acc, "ft_acc": ft_acc,
               "hit_rate": hit_rate,
               "categories": {"cd_rate": 0.1, "cd_rate_by_class": {"0": 0.02, "1": None, "2": 0.3}},
               "ledger": {"forward": {"finetune": 1000, "rehearsal": rehearsal, "selection": 0},
                          "backward": {"finetune": 1000, "rehearsal": rehearsal, "selection": 0},
                          "training_passes": 2000 + 2 * rehearsal},
               "wall_time": {"finetune": 1.0}}
    if with_compute:
        metrics["compute"] = compute if compute is not None else fake_compute(rehearsal)
    (folder / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    fake_run(root / "none" / "0", "none", 0.0, 0, 0.10)
    for i, (seed, acc) in enumerate([(0, 0.50), (1, 0.60), (2, 0.70)]):
        fake_run(root / "r1" / str(i), "random", 0.25, seed, acc, rehearsal=100)
    fake_run(root / "r2" / "0", "random", 0.5, 0, 0.80, rehearsal=200)
    fake_run(root / "m1" / "0", "mixcd", 0.25, 0, 0.70, rehearsal=100, hit_rate=0.4)
    fake_run(root / "m2" / "0", "mixcd", 0.5, 0, 0.90, rehearsal=200, hit_rate=0.5)
    broken = root / "broken"
    broken.mkdir()
    (broken / "config.yaml").write_text("stage: train\n")
    (broken / "metrics.json").write_text("{not json")
    unfinished = root / "deep" / "er" / "unfinished"
    unfinished.mkdir(parents=True)
    (unfinished / "config.yaml").write_text("stage: train\n")
    partial = root / "partial"
    partial.mkdir()
    (partial / "config.yaml").write_text("stage: train\n")
    (partial / "metrics.json").write_text(json.dumps({"stage": "train", "sampler": "random"}))
    return root


def test_aggregation_means_stds_and_skips(runs_dir: Path) -> None:
    runs, skipped = collect([runs_dir])
    assert len(runs) == 7
    reasons = {p.name: why for p, why in skipped}
    assert set(reasons) == {"broken", "unfinished", "partial"}
    assert "not valid JSON" in reasons["broken"] and "no metrics.json" in reasons["unfinished"]
    assert "lacks" in reasons["partial"]
    groups = group_runs(runs)
    rnd = next(g for g in groups if g.sampler == "random" and g.mix_ratio == 0.25)
    mean, std, n = rnd.stat("pre_acc")
    assert n == 3 and mean == pytest.approx(0.60) and std == pytest.approx(0.10)
    assert rnd.stat("training_passes")[0] == pytest.approx(2200)
    assert (rnd.stat("cd_rate_class_min")[0], rnd.stat("cd_rate_class_max")[0]) == (0.02, 0.3)
    assert [g.sampler for g in groups][:1] == ["none"]


def test_random_equivalent_interpolation() -> None:
    curve = [(0.0, 0.1), (100.0, 0.6), (200.0, 0.8)]
    # halfway from (100, .6) to (200, .8) in log budget: 100 · 2^0.5; linearly 150
    assert equivalent_budget(curve, 0.7)[0] == pytest.approx(100 * 2 ** 0.5)
    assert equivalent_budget(curve, 0.7, "linear")[0] == pytest.approx(150.0)
    assert equivalent_budget(curve, 0.35)[0] == pytest.approx(50.0)  # the segment from 0: linear
    budget, label = equivalent_budget(curve, 0.9)
    assert budget is None and label.startswith("> 200")
    assert equivalent_budget(curve, 0.05)[0] is None
    assert equivalent_budget([], 0.5)[0] is None


def test_equivalents_on_runs(runs_dir: Path) -> None:
    groups = group_runs(collect([runs_dir])[0])
    eq = {e["mix_ratio"]: e for e in equivalents(groups)}
    # mixcd has seed 0 only, and so has random at budget 200: the curve is seed 0's, (0, .10) (100, .50)
    # (200, .80), not the mean over random's three seeds at 100 (.60); mixcd's .70 is 2/3 of the way from .50
    # to .80 → random needs 100 · 2^(2/3) = 158.7 in log budget (100 + 200/3 = 166.7 linearly)
    assert eq[0.25]["random_equivalent_budget"] == pytest.approx(100 * 2 ** (2 / 3))
    assert eq[0.25]["random_equivalent_budget_linear"] == pytest.approx(100 + 100 * 0.2 / 0.3)
    assert eq[0.25]["fold"] == pytest.approx(eq[0.25]["fold_per_seed"][0]) == pytest.approx(2 ** (2 / 3))
    assert eq[0.25]["fold_linear"] == pytest.approx(5 / 3)
    # at its own budget, 100, random (seed 0) has .50: the gap is .20, one pair, so no interval
    assert eq[0.25]["gap_to_random"] == pytest.approx(0.2) and eq[0.25]["gap_to_random_interval"] is None
    assert eq[0.5]["random_equivalent_budget"] is None and eq[0.5]["random_equivalent"].startswith(">")
    assert eq[0.5]["gap_to_random"] == pytest.approx(0.1)  # .90 against random's .80 at 200: a fold > max


def test_report_writes_files(runs_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "rep"
    summary = run_report([runs_dir], out)
    assert summary["runs"] == 7 and len(summary["skipped"]) == 3
    rows = (out / "report.csv").read_text().splitlines()
    assert rows[0].startswith("experiment,config,sampler,mix_ratio,n,duplicates,frontier,pre_acc_mean,pre_acc_std")
    assert len(rows) == 1 + 5
    md = (out / "report.md").read_text()
    assert "60.00 ± 10.00" in md and "Random-equivalent" in md and "broken" in md
    for png in summary["plots"]:
        assert (out / png).read_bytes()[:8] == PNG_MAGIC
    assert len(summary["plots"]) == 2


def test_runs_that_differ_in_any_setting_never_merge(tmp_path: Path) -> None:
    """A 200-step quick run must not average with a 600-step one, nor serve as its random curve."""
    fake_run(tmp_path / "a", "random", 0.25, 1, 0.60, rehearsal=100, steps=600)
    fake_run(tmp_path / "b", "random", 0.25, 2, 0.64, rehearsal=100, steps=600)
    fake_run(tmp_path / "c", "random", 0.25, 1, 0.20, rehearsal=100, steps=200)
    fake_run(tmp_path / "d", "mixcd", 0.25, 1, 0.30, rehearsal=100, steps=200)
    groups = group_runs(collect([tmp_path])[0])
    random_groups = {g.label: g for g in groups if g.sampler == "random"}
    assert set(random_groups) == {"trainer.steps=600", "trainer.steps=200"}
    assert random_groups["trainer.steps=600"].stat("pre_acc")[:1] == (pytest.approx(0.62),)
    assert random_groups["trainer.steps=200"].stat("pre_acc")[2] == 1
    (mixcd,) = [g for g in groups if g.sampler == "mixcd"]
    assert mixcd.label == "trainer.steps=200"
    assert [c.label for c in curve_groups(groups, mixcd)] == ["trainer.steps=200"]


def test_a_seed_run_twice_counts_once(tmp_path: Path) -> None:
    fake_run(tmp_path / "first", "random", 0.25, 1, 0.50, rehearsal=100)
    fake_run(tmp_path / "again", "random", 0.25, 1, 0.52, rehearsal=100)
    fake_run(tmp_path / "other", "random", 0.25, 2, 0.70, rehearsal=100)
    (g,) = group_runs(collect([tmp_path])[0])
    assert g.stat("pre_acc")[2] == 2 and g.duplicates == 1
    assert sorted(g.seeds()) == [1, 2]


def _seeded_runs(root: Path, seeds: list[int]) -> None:
    """Random at two budgets and mix-cd at the first, with seed-to-seed noise that is shared within a seed."""
    import random as rnd

    for s in seeds:
        noise = rnd.Random(s).gauss(0, 0.03)
        fake_run(root / f"n{s}", "none", 0.0, s, 0.05 + noise / 3)
        fake_run(root / f"r1-{s}", "random", 0.25, s, 0.50 + noise, rehearsal=100)
        fake_run(root / f"r2-{s}", "random", 0.5, s, 0.80 + noise, rehearsal=200)
        fake_run(root / f"m-{s}", "mixcd", 0.25, s, 0.62 + noise + rnd.Random(100 + s).gauss(0, 0.02), rehearsal=100)


def test_fold_intervals_hold_the_point_estimate_and_narrow_with_seeds(tmp_path: Path) -> None:
    """Three seeds: the range of the per-seed folds (and no ci95); twelve: the 95% bootstrap, narrower."""
    widths = []
    for n, method, ci in ((3, "range", False), (12, "bootstrap", True)):
        _seeded_runs(tmp_path / str(n), list(range(n)))
        (e,) = equivalents(group_runs(collect([tmp_path / str(n)])[0]))
        iv = e["fold_interval"]
        lo, hi = iv["lo"], iv["hi"]
        assert (iv["method"], iv["n"], e["fold_ci95"] == [lo, hi]) == (method, n, ci)
        assert lo <= e["fold"] <= hi, (lo, e["fold"], hi)
        assert e["paired_seeds"] == n and len(e["fold_per_seed"]) == n
        assert min(e["fold_per_seed"].values()) <= e["fold"] <= max(e["fold_per_seed"].values())
        if method == "range":
            assert (lo, hi) == (min(e["fold_per_seed"].values()), max(e["fold_per_seed"].values()))
        widths.append(hi - lo)
    assert widths[1] < widths[0], widths


def _curve_and_mixcd(root: Path, seeds: list[int]) -> None:
    """Random at budgets 100 (.60) and 400 (.80), plain fine-tuning (.10), and mix-cd at budget 200 keeping
    .75, .76, … by seed: random's curve reads .70 at 200 in log budget (halfway from 100 to 400)."""
    for s in seeds:
        fake_run(root / f"n{s}", "none", 0.0, s, 0.10)
        fake_run(root / f"r1-{s}", "random", 0.25, s, 0.60, rehearsal=100)
        fake_run(root / f"r4-{s}", "random", 1.0, s, 0.80, rehearsal=400)
        fake_run(root / f"m-{s}", "mixcd", 0.5, s, 0.74 + s / 100, rehearsal=200)


def test_the_fold_table_gives_log_and_linear_folds_and_the_gap_with_labelled_intervals(tmp_path: Path) -> None:
    """Three seeds, mix-cd at .75/.76/.77 (mean .76) on own budget 200. Log budget: .76 is t = .8 of the way
    from (100, .6) to (400, .8) → 100 · 4^.8 = 303.1 → fold 1.52x; per seed t = .75, .8, .85 → 1.41x, 1.52x,
    1.62x. Linearly 100 + .8 · 300 = 340 → 1.70x. Gap at 200: random .70 → +5, +6, +7 pts: +6.00, the range
    over 3 pairs. Five seeds (.75 … .79): the 95% bootstrap for the fold, and gaps +5 … +9 pts → 7 ± 2.776 ·
    √2.5 / √5 = 7 ± 1.96 (Student-t, 5 pairs)."""
    _curve_and_mixcd(tmp_path / "three", [1, 2, 3])
    summary = run_report([tmp_path / "three"], tmp_path / "rep3", plots=False, budget="rehearsal")
    (e,) = summary["random_equivalent"]
    assert e["fold"] == pytest.approx(4 ** 0.8 / 2) and e["fold_linear"] == pytest.approx(1.7)
    assert e["random_equivalent_budget"] == pytest.approx(100 * 4 ** 0.8)
    assert e["random_equivalent_budget_linear"] == pytest.approx(340.0)
    assert e["fold_interval"] == {"lo": pytest.approx(4 ** 0.75 / 2), "hi": pytest.approx(4 ** 0.85 / 2),
                                  "level": None, "method": "range", "n": 3, "label": "range over 3 seeds"}
    assert e["fold_ci95"] is None  # the older key never holds a range
    assert e["gap_to_random"] == pytest.approx(0.06)
    assert e["gap_to_random_per_seed"] == {"1": pytest.approx(0.05), "2": pytest.approx(0.06),
                                           "3": pytest.approx(0.07)}
    assert e["gap_to_random_interval"] == {"lo": pytest.approx(0.05), "hi": pytest.approx(0.07), "level": None,
                                           "method": "range", "n": 3, "label": "range over 3 pairs"}
    md = (tmp_path / "rep3" / "report.md").read_text()
    assert ("| random needs | fold | fold, linear interp. | fold interval | per seed | fold, total axis [interval] | "
            "Δ pre_acc vs random at same budget, pts [interval] | frontier |") in md
    # with no snapshot read, the total axis (3 × the rows: fwd + 2 · bwd) gives the same folds beside
    assert ("| exp | - | mixcd | 0.5 | 200 | - | 76.00 | 303 | 1.52x | 1.70x | [1.41x, 1.62x] range over 3 seeds | "
            "1.41x 1.52x 1.62x | 1.52x [1.41x, 1.62x] range over 3 seeds | +6.00 [+5.00, +7.00] range over 3 pairs "
            "| yes |") in md
    assert "95%" not in md.split("| experiment | config | sampler | r | budget")[1]  # no row claims 95%

    _curve_and_mixcd(tmp_path / "five", [1, 2, 3, 4, 5])
    (e,) = run_report([tmp_path / "five"], tmp_path / "rep5", plots=False, budget="rehearsal")["random_equivalent"]
    iv = e["fold_interval"]
    assert (iv["method"], iv["level"], iv["n"], iv["label"]) == ("bootstrap", 0.95, 5, "95% bootstrap over 5 seeds")
    assert e["fold_ci95"] == [iv["lo"], iv["hi"]]
    half = 2.776 * 0.025 ** 0.5 / 5 ** 0.5 / 10
    assert e["gap_to_random"] == pytest.approx(0.07)
    assert e["gap_to_random_interval"] == {"lo": pytest.approx(0.07 - half), "hi": pytest.approx(0.07 + half),
                                           "level": 0.95, "method": "t", "n": 5, "label": "95% Student-t, 5 pairs"}
    md = (tmp_path / "rep5" / "report.md").read_text()
    assert "95% bootstrap over 5 seeds | " in md and "| +7.00 [+5.04, +8.96] 95% Student-t, 5 pairs |" in md


def test_bootstrap_is_seeded_and_covers_the_resampled_statistic() -> None:
    seeds = [1, 2, 3, 4, 5]
    value = {1: 1.0, 2: 2.0, 3: 3.0, 4: 4.0, 5: 5.0}

    def mean(sample):
        return sum(value[s] for s in sample) / len(sample)

    lo, hi = bootstrap_interval(mean, seeds)
    assert (lo, hi) == bootstrap_interval(mean, seeds)
    assert 1.0 < lo < 3.0 < hi < 5.0


def test_the_frontier_marks_who_no_one_beats_on_both_accuracies(tmp_path: Path) -> None:
    fake_run(tmp_path / "r", "random", 0.25, 1, 0.60, ft_acc=0.90, rehearsal=100)
    fake_run(tmp_path / "m", "mixcd", 0.25, 1, 0.70, ft_acc=0.88, rehearsal=100)
    fake_run(tmp_path / "c", "class_balanced", 0.25, 1, 0.59, ft_acc=0.89, rehearsal=100)
    frontier = {g.sampler: g.frontier for g in group_runs(collect([tmp_path])[0])}
    assert frontier == {"random": True, "mixcd": True, "class_balanced": False}


def test_report_with_nothing_to_read(tmp_path: Path) -> None:
    with pytest.raises(MixcdError, match="no finished"):
        run_report([tmp_path])


def test_tiny_multirun_into_report(tiny: list[str], out_dir: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["train", "-m", *tiny, "sampler=random,mixcd", "trainer.mix_ratio=0.25,0.5",
                                 "trainer.steps=6", "seed=3"])
    assert result.exit_code == 0, result.output
    sweep = next((out_dir / "multirun" / "train").iterdir())
    result = runner.invoke(app, ["report", str(sweep)])
    assert result.exit_code == 0, result.output
    data = json.loads((sweep / "report.json").read_text())
    assert {(g["sampler"], g["mix_ratio"]) for g in data["groups"]} == {
        ("random", 0.25), ("random", 0.5), ("mixcd", 0.25), ("mixcd", 0.5)}
    assert all(g["pre_acc"]["n"] == 1 for g in data["groups"])
    assert all(not math.isnan(g["pre_acc"]["mean"]) for g in data["groups"])
    from PIL import Image

    for png in data["plots"]:
        with Image.open(sweep / png) as img:
            img.verify()


def fake_sequence(folder: Path, sampler: str, ratio: float, seed: int, matrix: list[list[float | None]],
                  rehearsal: int = 0, partition: str | None = None) -> None:
    """A three-task run (prior + 2 stages) whose prior-task accuracy and earlier-task accuracy disagree."""
    from mixcd_cli.metrics import sequence_metrics

    fake_run(folder, sampler, ratio, seed, matrix[-1][0], ft_acc=matrix[-1][-1], rehearsal=rehearsal)
    if partition:
        cfg = folder / "config.yaml"
        cfg.write_text(cfg.read_text() + f"  partition: {partition}\n")
    m = json.loads((folder / "metrics.json").read_text())
    m.update(num_stages=len(matrix) - 1, accuracy_matrix=matrix, **sequence_metrics(matrix))
    (folder / "metrics.json").write_text(json.dumps(m))


def test_multi_stage_runs_compare_on_earlier_task_accuracy(tmp_path: Path) -> None:
    def matrix(prior: float, stage1: float) -> list[list[float | None]]:
        return [[0.9, None, None], [0.5, 0.9, None], [prior, stage1, 0.9]]

    fake_sequence(tmp_path / "n", "none", 0.0, 1, matrix(0.0, 0.0))
    fake_sequence(tmp_path / "r1", "random", 0.25, 1, matrix(0.2, 0.2), rehearsal=100)
    fake_sequence(tmp_path / "r2", "random", 0.5, 1, matrix(0.4, 0.4), rehearsal=200)
    # the prior task alone says mixcd equals random at 100; earlier-task accuracy (0.3) says it equals 150
    fake_sequence(tmp_path / "m", "mixcd", 0.25, 1, matrix(0.2, 0.4), rehearsal=100, partition="loss")
    fake_sequence(tmp_path / "s", "mixcd", 0.25, 1, matrix(0.2, 0.6), rehearsal=100, partition="aux")
    summary = run_report([tmp_path], tmp_path / "rep", budget="rehearsal")
    eq = {e["sampler"]: e for e in summary["random_equivalent"]}
    assert set(eq) == {"mixcd", "mixcd (partition=aux)"}  # two variants, never merged; the default unnamed
    assert eq["mixcd"]["random_equivalent_budget"] == pytest.approx(100 * 2 ** 0.5)  # halfway in log budget
    assert eq["mixcd (partition=aux)"]["random_equivalent_budget"] == pytest.approx(200)
    assert summary["retention"] == "earlier_acc"
    group = next(g for g in summary["groups"] if g["sampler"] == "random" and g["mix_ratio"] == 0.5)
    assert group["earlier_acc"]["mean"] == pytest.approx(0.4) and group["bwt"]["mean"] == pytest.approx(-0.5)
    assert group["accuracy_matrix"] == matrix(0.4, 0.4)
    pngs = sorted(p.name for p in (tmp_path / "rep").glob("exp_matrix_*.png"))
    assert pngs == ["exp_matrix_mixcd.png", "exp_matrix_mixcd__partition_aux.png", "exp_matrix_none.png",
                    "exp_matrix_random.png"]
    assert all((tmp_path / "rep" / p).read_bytes().startswith(PNG_MAGIC) for p in pngs)
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "earlier-task acc %" in md and "BWT pts" in md


def test_a_run_older_than_an_option_groups_with_that_options_default(tmp_path: Path) -> None:
    """Runs made before a sampler option existed ran as its default: they join today's default runs (one
    group, no variant name), while a run with the option set apart stays its own named variant."""
    fake_run(tmp_path / "old" / "0", "mixcd", 0.25, 1, 0.70, rehearsal=100)  # no estimate/memory keys at all
    fake_run(tmp_path / "new" / "0", "mixcd", 0.25, 2, 0.72, rehearsal=100)
    fake_run(tmp_path / "ts" / "0", "mixcd", 0.25, 1, 0.75, rehearsal=100)
    for folder, extra in (("new", "  estimate: mean\n  memory: none\n"), ("ts", "  estimate: thompson\n")):
        cfg = tmp_path / folder / "0" / "config.yaml"
        cfg.write_text(cfg.read_text() + extra)
    groups = {g["variant"]: g for g in run_report([tmp_path], tmp_path / "rep")["groups"]}
    assert sorted(groups) == ["", "estimate=thompson"]
    assert groups[""]["seeds"] == [1, 2]


def test_each_setting_against_the_default_mixcd_paired_by_seed(tmp_path: Path) -> None:
    """Hand-computed: diffs 5, 4, 6 pts → mean 5, sd 1, t(2) = 4.303 → ±2.484; a setting whose seeds
    disagree stays 'within noise'; random, none and the default itself get no row."""
    fake_run(tmp_path / "n" / "0", "none", 0.0, 1, 0.10)
    for seed, (d, v, w, r) in enumerate([(0.60, 0.65, 0.70, 0.55), (0.62, 0.66, 0.50, 0.57), (0.64, 0.70, 0.66, 0.59)],
                                        start=1):
        fake_run(tmp_path / "d" / str(seed), "mixcd", 0.25, seed, d, rehearsal=100)
        fake_run(tmp_path / "v" / str(seed), "mixcd", 0.25, seed, v, rehearsal=100, ft_acc=0.88)
        fake_run(tmp_path / "w" / str(seed), "mixcd", 0.25, seed, w, rehearsal=100)
        fake_run(tmp_path / "r" / str(seed), "random", 0.25, seed, r, rehearsal=100)
    for folder, extra in (("v", "  estimate: thompson\n"), ("w", "  memory: recent\n")):
        for cfg in (tmp_path / folder).glob("*/config.yaml"):
            cfg.write_text(cfg.read_text() + extra)
    summary = run_report([tmp_path], tmp_path / "rep")
    rows = {r["sampler"]: r for r in summary["against_default"]}
    assert sorted(rows) == ["mixcd (estimate=thompson)", "mixcd (memory=recent)"]
    v = rows["mixcd (estimate=thompson)"]
    assert v["retention"]["n"] == 3 and v["retention"]["mean"] == pytest.approx(0.05)
    # lo/hi: the 95% t-interval the verdict tests; printed, with three pairs, the range of the differences
    assert v["retention"]["lo"] == pytest.approx(0.05 - 4.303 * 0.01 / 3 ** 0.5)
    assert v["retention"]["hi"] == pytest.approx(0.05 + 4.303 * 0.01 / 3 ** 0.5)
    assert v["retention"]["interval"] == {"lo": pytest.approx(0.04), "hi": pytest.approx(0.06), "level": None,
                                          "method": "range", "n": 3, "label": "range over 3 pairs"}
    assert v["ft_acc"]["mean"] == pytest.approx(-0.02) and v["verdict"] == "better"
    assert rows["mixcd (memory=recent)"]["verdict"] == "within noise"
    from mixcd_cli.report.folds import verdict

    assert verdict({"mean": 0.0, "lo": 0.0, "hi": 0.0, "n": 3}) == "identical"
    assert verdict({"mean": 0.01, "lo": -0.01, "hi": 0.03, "n": 3}) == "within noise"
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| exp | - | mixcd (estimate=thompson) | 0.25 | 3 | +5.00 [+4.00, +6.00] range over 3 pairs |" in md
    assert (tmp_path / "rep" / "exp_vs_default.png").read_bytes().startswith(PNG_MAGIC)


def test_folds_against_the_default_use_the_seeds_the_pair_shares(tmp_path: Path) -> None:
    """A default with seeds 1-4 against a variant with seeds 1-3: both folds over seeds 1-3 (seed 4, far
    off, would move the default's fold if it were used)."""
    for seed in (1, 2, 3, 4):
        fake_run(tmp_path / "n" / str(seed), "none", 0.0, seed, 0.10)
        fake_run(tmp_path / "r1" / str(seed), "random", 0.25, seed, 0.50, rehearsal=100)
        fake_run(tmp_path / "r2" / str(seed), "random", 0.5, seed, 0.80, rehearsal=200)
        fake_run(tmp_path / "d" / str(seed), "mixcd", 0.25, seed, 0.62 if seed < 4 else 0.79, rehearsal=100)
    for seed in (1, 2, 3):
        fake_run(tmp_path / "v" / str(seed), "mixcd", 0.25, seed, 0.65, rehearsal=100)
        cfg = tmp_path / "v" / str(seed) / "config.yaml"
        cfg.write_text(cfg.read_text() + "  estimate: thompson\n")
    summary = run_report([tmp_path], tmp_path / "rep")
    (row,) = summary["against_default"]
    # seeds 1-3: random curve (100, .50) (200, .80); default .62 is t = .4 of the way → 100 · 2^.4 → 1.32x;
    # variant .65, t = .5 → 100 · 2^.5 → 1.41x (log budget)
    assert row["default_fold"] == pytest.approx(2 ** 0.4) and row["fold"] == pytest.approx(2 ** 0.5)
    own = next(e for e in summary["random_equivalent"] if e["sampler"] == "mixcd")
    assert own["paired_seeds"] == 4 and own["fold"] == pytest.approx(2 ** ((0.6625 - 0.5) / 0.3))


def _browser() -> str | None:
    import os
    import shutil

    found = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if found is None and os.environ.get("MIXCD_REQUIRE_BROWSER"):
        pytest.fail("MIXCD_REQUIRE_BROWSER is set (CI) but no headless Chromium is installed")
    return found


def rendered(page: Path) -> str:
    """The page's DOM after headless Chromium loaded it, with what it could count: tables, table rows, and
    images that decoded to a picture (naturalWidth > 0: a broken or missing image has none)."""
    import subprocess

    browser = _browser()
    if browser is None:
        pytest.skip("needs headless Chromium (apt-get install chromium)")
    probe = page.parent / "probe.html"
    counter = ("<script>addEventListener('load', () => { const d = document.body.dataset;"
               " d.tables = document.querySelectorAll('table').length;"
               " d.rows = document.querySelectorAll('tbody tr').length;"
               " d.images = [...document.images].filter(i => i.complete && i.naturalWidth > 0).length; });</script>")
    probe.write_text(page.read_text().replace("</body>", counter + "</body>"))
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                           "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_html_report_renders_every_table_and_plot_in_a_browser(runs_dir: Path, tmp_path: Path) -> None:
    import re

    out = tmp_path / "report"
    summary = run_report([runs_dir], out, html=True)
    page = out / "report.html"
    text = page.read_text()
    assert "src=\"file:" not in text and "<link" not in text  # self-contained: nothing to fetch
    dom = rendered(page)
    counts = dict(re.findall(r'data-(tables|rows|images)="(\d+)"', dom))
    groups, eq = len(summary["groups"]), len(summary["random_equivalent"])
    assert int(counts["tables"]) == 1 + (eq > 0) + (len(summary["against_default"]) > 0)
    assert int(counts["rows"]) == groups + eq + len(summary["against_default"])
    assert int(counts["images"]) == len(summary["plots"]) >= 2
    for name in summary["plots"]:
        assert name in dom
    assert "mixcd report" in dom and "Skipped runs" in dom


def test_html_report_from_the_command_line(runs_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["report", str(runs_dir), "--out", str(tmp_path / "r"), "--html", "--no-plots"])
    assert result.exit_code == 0, result.output
    assert "report.html" in result.output and (tmp_path / "r" / "report.html").is_file()
    result = CliRunner().invoke(app, ["report", str(runs_dir), "--out", str(tmp_path / "r2")])
    assert result.exit_code == 0 and not (tmp_path / "r2" / "report.html").exists()  # only when asked


# ------------------------------------------------------------------ the report of old-format runs, byte for byte

DATA = Path(__file__).parent / "data"
EXPECTED = DATA / "report_expected"
REPORT_FILES = ("report.md", "report.csv", "report.json", "report.html", "runs.csv")
# case → (the folders reported, relative to the inputs' root, and the options). Runs made before compute was
# counted have no total axis: their reports are read on the rehearsal axis they were made on.
REPORT_CASES: dict[str, tuple[list[str], list[str]]] = {
    "old_train": (["old_runs"], ["--stage", "train", "--html", "--no-plots", "--budget", "rehearsal"]),
    "old_eval": (["old_runs"], ["--stage", "eval", "--no-plots", "--budget", "rehearsal"]),
    "synthetic": (["synthetic"], ["--html", "--no-plots", "--budget", "rehearsal"]),
    "sequences": (["sequences"], ["--no-plots", "--budget", "rehearsal"]),
}


def _without_compute(root: Path) -> None:
    """Every run under ``root`` as written before compute was counted (no ``compute`` key)."""
    for path in root.rglob("metrics.json"):
        try:
            metrics = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue
        if isinstance(metrics, dict) and "compute" in metrics:
            del metrics["compute"]
            path.write_text(json.dumps(metrics))


def _old_runs(root: Path) -> None:
    """tests/data/old_runs: real runs of today's format and of older ones (before DDP, sequences, signal)."""
    import shutil

    shutil.copytree(DATA / "old_runs", root)


def _synthetic_runs(root: Path) -> None:
    """Format-1 runs of every kind the report tells apart: seeds with shared noise, random at two budgets,
    mix-cd under, within and above random's curve, variants of it, a setting apart, samplers shown after the
    listed ones, a seed run twice, and folders skipped for each reason."""
    import random as rnd

    for s in (1, 2, 3):
        noise = rnd.Random(s).gauss(0, 0.03)
        fake_run(root / "none" / str(s), "none", 0.0, s, 0.05 + noise / 3)
        fake_run(root / "random" / f"a{s}", "random", 0.25, s, 0.50 + noise, rehearsal=100, hit_rate=0.1)
        fake_run(root / "random" / f"b{s}", "random", 0.5, s, 0.80 + noise, rehearsal=200, hit_rate=0.1)
        fake_run(root / "mixcd" / f"a{s}", "mixcd", 0.25, s, 0.62 + noise + rnd.Random(100 + s).gauss(0, 0.02),
                 rehearsal=100, hit_rate=0.4)
        fake_run(root / "mixcd" / f"b{s}", "mixcd", 0.5, s, 0.85 + noise, rehearsal=200, hit_rate=0.5)
        fake_run(root / "thompson" / str(s), "mixcd", 0.25, s, 0.66 + noise, ft_acc=0.88, rehearsal=100,
                 hit_rate=0.45)
        fake_run(root / "balanced" / str(s), "class_balanced", 0.25, s, 0.55 + noise, rehearsal=100)
        fake_run(root / "short" / str(s), "random", 0.25, s, 0.3 + noise, rehearsal=100, steps=200)
    for s in (1, 2):
        fake_run(root / "recent" / str(s), "mixcd", 0.25, s, 0.60 + s / 100, rehearsal=100, hit_rate=0.3)
    for folder, extra in (("thompson", "  estimate: thompson\n"), ("recent", "  memory: recent\n")):
        for cfg in (root / folder).glob("*/config.yaml"):
            cfg.write_text(cfg.read_text() + extra)
    fake_run(root / "custom" / "z", "zz_custom", 0.25, 1, 0.58, rehearsal=100)  # no such sampler registered
    fake_run(root / "custom" / "a", "aa_custom", 0.25, 1, 0.57, rehearsal=100)
    fake_run(root / "again" / "1", "mixcd", 0.25, 1, 0.99, rehearsal=100)  # seed 1 again
    _skipped_runs(root / "skipped")
    _without_compute(root)


def _skipped_runs(root: Path) -> None:
    """A folder for every reason a run is left out, and another stage's run (not a skip: not this report's)."""
    for name, metrics in (("broken", "{not json"), ("partial", json.dumps({"stage": "train", "sampler": "random"})),
                          ("nulls", json.dumps({"stage": "train", "sampler": "random", "mix_ratio": 0.25, "seed": 1,
                                                "pre_acc": None, "forgetting": None, "ft_acc": 0.5,
                                                "ledger": {}})),
                          ("listed", "[1, 2]"), ("unfinished", None), ("failed", None)):
        (root / name).mkdir(parents=True)
        (root / name / "config.yaml").write_text("stage: train\n")
        if metrics is not None:
            (root / name / "metrics.json").write_text(metrics)
    (root / "failed" / "error.txt").write_text("MixcdError: out of memory\n")
    fake_run(root / "evaluated", "mixcd", 0.25, 1, 0.5, rehearsal=100)
    metrics = json.loads((root / "evaluated" / "metrics.json").read_text())
    (root / "evaluated" / "metrics.json").write_text(json.dumps({**metrics, "stage": "eval"}))


def _sequence_runs(root: Path) -> None:
    """Three-task runs at two ratios and two seeds, mix-cd with two partitions, and one run of one stage from
    before sequences (no sequence keys at all) in the default mix-cd's group."""
    def matrix(prior: float, stage1: float) -> list[list[float | None]]:
        return [[0.9, None, None], [0.5, 0.9, None], [prior, stage1, 0.9]]

    for s in (1, 2):
        fake_sequence(root / f"n{s}", "none", 0.0, s, matrix(0.0, 0.05 * s))
        fake_sequence(root / f"r1-{s}", "random", 0.25, s, matrix(0.2, 0.2 + 0.02 * s), rehearsal=100)
        fake_sequence(root / f"r2-{s}", "random", 0.5, s, matrix(0.4, 0.4 + 0.01 * s), rehearsal=200)
        fake_sequence(root / f"m-{s}", "mixcd", 0.25, s, matrix(0.2, 0.4 - 0.01 * s), rehearsal=100,
                      partition="loss")
        fake_sequence(root / f"a-{s}", "mixcd", 0.25, s, matrix(0.2, 0.6), rehearsal=100, partition="aux")
    fake_run(root / "single", "mixcd", 0.25, 3, 0.3, rehearsal=100)
    _without_compute(root)


INPUTS = {"old_runs": _old_runs, "synthetic": _synthetic_runs, "sequences": _sequence_runs}


def build_report_inputs(root: Path, folders: list[str]) -> None:
    """The run folders of a case under ``root``, each metrics.json given its own fixed modification time (which
    run of a seed counts is the latest: a checkout's times must not decide it)."""
    import os

    for folder in folders:
        INPUTS[folder](root / folder)
        for i, path in enumerate(sorted((root / folder).rglob("metrics.json"))):
            os.utime(path, (1_600_000_000 + i, 1_600_000_000 + i))


def normalised(path: Path) -> str:
    """A report file's text with the time the HTML page was made left out."""
    import re

    return re.sub(r"made \d{4}-\d\d-\d\d \d\d:\d\d UTC", "made <time>", path.read_text())


@pytest.mark.parametrize("case", sorted(REPORT_CASES))
def test_a_report_of_old_format_run_folders_equals_todays(case: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The report of old-format run folders is, byte for byte, what the report wrote before it read typed
    results (tests/data/report_expected/<case>, made by the code of the commit before, as below), less the
    changes made on purpose since: remade with the report's own code when folds moved to log-budget
    interpolation with the linear fold beside them, intervals were labelled (a range below five seeds or
    pairs), the gap to random at the same budget was added, and the budget's unit (rows, or tokens for
    generation runs) was named, the probes (prior.probe, finetune.probe) joined the settings a run made before
    them is read with, and θ0's accuracy (pre_acc0) joined runs.csv with the check that runs of one seed share a
    θ0 (theta0_mixed), with the report's stage and whether its settings are complete ($OLD = this checkout).

    To make them again (the report code to compare against checked out in $OLD, e.g. `git worktree add $OLD
    6fd8f33`, and this repository's tests on the path)::

        cd "$(mktemp -d)" && for case in old_train old_eval synthetic sequences; do PYTHONPATH=$OLD:$REPO/tests \\
          python -c "import sys, test_report as t; t.make_expected(sys.argv[1])" $case; done

    """
    folders, options = REPORT_CASES[case]
    build_report_inputs(tmp_path, folders)
    monkeypatch.chdir(tmp_path)  # relative folders: the paths in the report do not depend on where tmp_path is
    result = CliRunner().invoke(app, ["report", *folders, *options, "--out", "out"])
    assert result.exit_code == 0, result.output
    for name in REPORT_FILES:
        expected = EXPECTED / case / name
        assert (tmp_path / "out" / name).exists() == expected.exists(), name
        if expected.exists():
            assert normalised(tmp_path / "out" / name) == expected.read_text(), f"{case}/{name}"


def make_expected(case: str) -> None:
    """Write tests/data/report_expected/<case> from the report code on the path, run in the current folder
    (empty) the way the test runs it: `mixcd report` as a command."""
    import subprocess
    import sys

    folders, options = REPORT_CASES[case]
    build_report_inputs(Path.cwd() / case, folders)
    subprocess.run([sys.executable, "-m", "mixcd_cli.cli", "report", *folders, *options, "--out", "out"],
                   cwd=case, check=True)
    (EXPECTED / case).mkdir(parents=True, exist_ok=True)
    for name in REPORT_FILES:
        if (Path(case) / "out" / name).exists():
            (EXPECTED / case / name).write_text(normalised(Path(case) / "out" / name))


def test_names_read_from_run_folders_never_choose_where_the_report_writes(tmp_path: Path) -> None:
    """An experiment named `../../x` in a shared run folder: every plot lands in --out, named without the path."""
    runs = tmp_path / "a" / "b" / "runs"
    for seed, acc in ((0, 0.5), (1, 0.6)):
        fake_run(runs / f"r{seed}", "random", 0.25, seed, acc, rehearsal=100)
        fake_run(runs / f"m{seed}", "mixcd", 0.25, seed, acc + 0.1, rehearsal=100)
    for metrics in runs.glob("*/metrics.json"):
        metrics.write_text(metrics.read_text().replace('"experiment": "exp"', '"experiment": "../../x"'))
    out = tmp_path / "a" / "b" / "out"
    summary = run_report([runs], out)
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png"))
    assert written and all(p.startswith("a/b/out/x_") for p in written), written
    assert sorted(Path(p).name for p in summary["plots"]) == sorted(Path(p).name for p in written)
