"""The report: aggregation on hand-made run folders, random-equivalent budget, a real tiny multirun."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mixcd_cli.cli import app
from mixcd_cli.errors import MixcdError
from mixcd_cli.report import collect, equivalent_budget, equivalents, group_runs, run_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_run(folder: Path, sampler: str, ratio: float, seed: int, pre_acc: float, ft_acc: float = 0.9,
             rehearsal: int = 0, hit_rate: float | None = None) -> None:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("stage: train\n")
    metrics = {"stage": "train", "experiment": "exp", "sampler": sampler, "mix_ratio": ratio, "seed": seed,
               "pre_acc0": 0.9, "pre_acc": pre_acc, "forgetting": 0.9 - pre_acc, "ft_acc": ft_acc,
               "hit_rate": hit_rate, "categories": {"cd_rate": 0.1},
               "ledger": {"forward": {"finetune": 1000, "rehearsal": rehearsal, "selection": 0},
                          "backward": {"finetune": 1000, "rehearsal": rehearsal, "selection": 0},
                          "training_passes": 2000 + 2 * rehearsal},
               "wall_time": {"finetune": 1.0}}
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
    assert [g.sampler for g in groups][:1] == ["none"]


def test_random_equivalent_interpolation() -> None:
    curve = [(0.0, 0.1), (100.0, 0.6), (200.0, 0.8)]
    assert equivalent_budget(curve, 0.7)[0] == pytest.approx(150.0)
    assert equivalent_budget(curve, 0.35)[0] == pytest.approx(50.0)
    budget, label = equivalent_budget(curve, 0.9)
    assert budget is None and label.startswith("> 200")
    assert equivalent_budget(curve, 0.05)[0] is None
    assert equivalent_budget([], 0.5)[0] is None


def test_equivalents_on_runs(runs_dir: Path) -> None:
    groups = group_runs(collect([runs_dir])[0])
    eq = {e["mix_ratio"]: e for e in equivalents(groups)}
    # random curve: (0, .10) (100, .60) (200, .80); mixcd at budget 100 reaches .70 → random needs 150
    assert eq[0.25]["random_equivalent_budget"] == pytest.approx(150.0)
    assert eq[0.25]["fold"] == pytest.approx(1.5)
    assert eq[0.5]["random_equivalent_budget"] is None and eq[0.5]["random_equivalent"].startswith(">")


def test_report_writes_files(runs_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "rep"
    summary = run_report([runs_dir], out)
    assert summary["runs"] == 7 and len(summary["skipped"]) == 3
    rows = (out / "report.csv").read_text().splitlines()
    assert rows[0].startswith("experiment,sampler,mix_ratio,n,pre_acc_mean,pre_acc_std")
    assert len(rows) == 1 + 5
    md = (out / "report.md").read_text()
    assert "60.00 ± 10.00" in md and "Random-equivalent" in md and "broken" in md
    for png in summary["plots"]:
        assert (out / png).read_bytes()[:8] == PNG_MAGIC
    assert len(summary["plots"]) == 2


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
