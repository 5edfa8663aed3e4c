"""snapshot.source=training (a snapshot read off the training forwards, at no extra pass) and snapshot.subset (a
snapshot of a seeded subset of the pool, the only rows a snapshot-reading sampler draws), docs/design.md §11."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from as_json import run_pretrain, run_train

from mixcd_cli.data import BatchTransform, Task, build_experiment
from mixcd_cli.metrics import Ledger
from mixcd_cli.models import create_model
from mixcd_cli.samplers import PoolInfo, create_sampler
from mixcd_cli.snapshot import (
    ROW_ID_STRIDE,
    merge_visits,
    row_ids,
    stage_row_ids,
    subset_rows,
    training_columns,
)
from mixcd_cli.sources import ArraySource
from mixcd_cli.training import FineTuner, Rehearsal, TrainSettings, predict_task
from mixcd_cli.training import finetuner as finetuner_module

CPU = torch.device("cpu")
TRANSFORM = BatchTransform((0.5,), (0.25,))


def _task(n: int = 64, classes: int = 3, seed: int = 0) -> Task:
    """Class templates plus noise: learnable within a few steps, so the weights really move."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, classes, (n,), generator=g)
    templates = torch.rand(classes, 1, 6, 6, generator=g) * 255
    data = (templates[targets] + torch.randn(n, 1, 6, 6, generator=g) * 40).clamp(0, 255).to(torch.uint8)
    return Task("t", ArraySource(data, targets, (0.5,), (0.25,)), torch.arange(n), targets, classes, {})


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("cnn", 1, {"shared": 3}, width=4, norm="group")  # GroupNorm, no dropout


def _lr_zero_after(step: int):
    """A schedule at the base rate until ``step``, then 0: every later visit sees the weights as they end."""
    def schedule(optimizer: torch.optim.Optimizer, name: str, total: int, warmup: int = 0) -> Any:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 1.0 if t < step else 0.0)
    return schedule


def _trained_with_record(monkeypatch: pytest.MonkeyPatch, frozen_from: int | None) -> tuple[Any, Any, Task, Task]:
    """Two epochs over a 64-row task (8 steps each) with rehearsal from a 40-row pool, recording every visit;
    ``frozen_from``: the step from which the learning rate is 0 (None: never)."""
    task, pool = _task(), _task(40, seed=1)
    if frozen_from is not None:
        monkeypatch.setattr(finetuner_module, "create_schedule", _lr_zero_after(frozen_from))
    model = _model()
    info = PoolInfo(correct0=torch.ones(len(pool), dtype=torch.bool), loss0=torch.rand(len(pool)),
                    conf0=torch.rand(len(pool)))
    sampler = create_sampler("random", info, 4, seed=0)
    settings = TrainSettings(steps=16, batch_size=8, rehearsal_batch=4, lr=0.1, schedule="constant", log_every=8)
    loop = FineTuner(model, task, "shared", TRANSFORM, CPU, settings, Ledger(),
                     Rehearsal(sampler, pool, "shared", info.correct0), record=True).run()
    return loop, model, task, pool


def test_the_model_has_no_train_eval_difference() -> None:
    """The premise of the equality below: GroupNorm and no dropout, so a row's output does not depend on the mode."""
    model, task = _model(), _task()
    x = TRANSFORM(task.inputs(torch.arange(16)))
    model.train()
    with torch.no_grad():
        train_out = model(x, "shared")
        model.eval()
        eval_out = model(x, "shared")
    assert torch.allclose(train_out, eval_out, atol=1e-6)


def test_a_record_equals_a_true_pass_when_the_weights_stop_moving_before_the_last_visits(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Learning rate 0 for the second epoch: each row's last visit (in that epoch) saw the final weights, so the
    record is what an eval-mode pass of the final model says: prediction and correctness exactly, loss and
    confidence up to float error; rehearsal rows last visited in that epoch likewise."""
    loop, model, task, pool = _trained_with_record(monkeypatch, frozen_from=8)
    record = loop.record["task"]
    assert bool((record["step"] >= 8).all())  # every row's last visit lies in the frozen epoch
    true = predict_task(model, task, "shared", TRANSFORM, CPU, 64)
    assert torch.equal(record["pred"], true.pred) and torch.equal(record["correct"], true.correct)
    assert torch.allclose(record["loss"], true.loss, atol=1e-5)
    assert torch.allclose(record["conf"], true.conf, atol=1e-5)
    visited = loop.record["pool"]["step"] >= 8
    assert int(visited.sum()) > 5
    true_pool = predict_task(model, pool, "shared", TRANSFORM, CPU, 64)
    assert torch.equal(loop.record["pool"]["pred"][visited], true_pool.pred[visited])
    assert torch.allclose(loop.record["pool"]["loss"][visited], true_pool.loss[visited], atol=1e-5)


def test_a_record_differs_from_a_true_pass_when_the_weights_move_during_the_last_visits(
        monkeypatch: pytest.MonkeyPatch) -> None:
    loop, model, task, _ = _trained_with_record(monkeypatch, frozen_from=None)
    record = loop.record["task"]
    true = predict_task(model, task, "shared", TRANSFORM, CPU, 64)
    assert bool((record["step"] >= 8).all())
    assert float((record["loss"] - true.loss).abs().max()) > 1e-3  # at least one row differs


def test_merge_takes_the_last_visit_and_keeps_the_previous_columns_of_the_rest() -> None:
    """Stage 2's pool under rehearsal.pool=all: pool 1 (ids 0..3) then stage 1's training rows (task 1). Stage
    1's columns recorded rows 0, 1 and 3 (row 2 never visited before); stage 1's training visited its own rows 0
    and 2 (at steps 5 and 2) and, by rehearsal, pool rows 1 (last at step 7) and 2 (last at step 6)."""
    previous = {"loss": torch.tensor([1.0, 2.0, 9.0, 4.0]), "conf": torch.tensor([.1, .2, .9, .4]),
                "correct": torch.tensor([True, True, False, False]), "pred": torch.tensor([0, 1, -1, 2]),
                "recorded": torch.tensor([True, True, False, True])}
    own = {"loss": torch.tensor([5.0, 0.0, 7.0]), "conf": torch.tensor([.5, 0.0, .7]),
           "correct": torch.tensor([True, False, False]), "pred": torch.tensor([1, -1, 0]),
           "step": torch.tensor([5, -1, 2])}
    rehearsal = {"loss": torch.tensor([0.0, 0.5, 0.25, 0.0]), "conf": torch.tensor([0.0, .95, .8, 0.0]),
                 "correct": torch.tensor([False, False, True, False]), "pred": torch.tensor([-1, 2, 1, -1]),
                 "step": torch.tensor([-1, 7, 6, -1])}
    pool1 = torch.arange(4)
    pool2 = torch.cat([pool1, stage_row_ids(1, 3)])
    got = merge_visits(pool2, [(pool1, previous), (stage_row_ids(1, 3), own), (pool1, rehearsal)])
    assert got["recorded"].tolist() == [True, True, True, True, True, False, True]
    assert got["loss"].tolist() == [1.0, 0.5, 0.25, 4.0, 5.0, 7.0, 7.0]  # unvisited: the largest recorded loss
    assert got["conf"].tolist() == pytest.approx([.1, .95, .8, .4, .5, 0.0, .7])
    assert got["correct"].tolist() == [True, False, True, False, True, False, False]
    assert got["pred"].tolist() == [0, 2, 1, 2, 1, -1, 0]
    # a later visit of the same row wins over an earlier one, whichever source holds it
    again = merge_visits(pool1, [(pool1, rehearsal), (pool1, {**rehearsal, "loss": torch.full((4,), 3.0),
                                                              "step": torch.tensor([-1, 8, 1, -1])})])
    assert again["loss"].tolist() == [3.0, 3.0, 0.25, 3.0]  # rows 0 and 3: nothing recorded, the largest loss
    assert again["recorded"].tolist() == [False, True, True, False]


def test_fidelity_is_precision_and_recall_of_the_recorded_correct_against_the_true_one() -> None:
    from mixcd_cli.snapshot import SnapshotPart, TrainingColumns, fidelity

    said = torch.tensor([True, True, True, False, False, False])
    truth = torch.tensor([True, True, False, True, False, False])
    part = SnapshotPart(loss=torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 9.0]), conf=torch.zeros(6), correct=said,
                        index=torch.arange(6))
    view = TrainingColumns(part, torch.tensor([True, True, True, True, True, False]))
    true = SnapshotPart(loss=torch.tensor([1.5, 1.0, 0.0, 1.0, 1.0, 0.0]), conf=torch.zeros(6), correct=truth,
                        index=torch.arange(6))
    got = fidelity(view, true)
    assert got["precision"] == pytest.approx(2 / 3) and got["recall"] == pytest.approx(2 / 3)
    assert got["unvisited"] == pytest.approx(1 / 6) and got["rows"] == 6
    assert got["loss_mae"] == pytest.approx((0.5 + 1.0) / 5)  # over the recorded rows only
    truth_only_two = torch.tensor([True, False, False, False, False, True])
    got = fidelity(view, SnapshotPart(loss=true.loss, conf=true.conf, correct=truth_only_two, index=true.index))
    assert got["precision"] == pytest.approx(1 / 3) and got["recall"] == pytest.approx(1 / 2)


def test_row_ids_name_a_row_by_its_task_in_every_pool_mode() -> None:
    """A pool row keeps its id across stages: pool 2 under `all` starts with pool 1's rows, stage 1's own rows
    follow as task 1; under `previous` pool 2 is stage 1's rows alone."""
    syn = {"num_classes": 6, "image_size": 8, "n_train": 120, "n_test": 60, "noise": 0.4}
    exp = build_experiment({"name": "p", "dataset": "synthetic", "classes": [0, 1], "options": syn},
                           {"name": "f", "dataset": "synthetic", "classes": [2, 3], "options": syn}, "shared", "",
                           None, [{"name": "s1", "classes": [2, 3]}, {"name": "s2", "classes": [4, 5]}])
    n0, n1 = len(exp.pool), len(exp.stages[0].train)
    assert torch.equal(row_ids(exp.pool_at(1, "all")), torch.arange(n0))
    assert torch.equal(row_ids(exp.pool_at(2, "all")), torch.cat([torch.arange(n0), stage_row_ids(1, n1)]))
    assert torch.equal(row_ids(exp.pool_at(2, "previous")), ROW_ID_STRIDE + torch.arange(n1))
    assert torch.equal(row_ids(exp.pool_at(2, "prior")), torch.arange(n0))


def test_a_resumed_fine_tuning_restores_its_record_exactly(tmp_path: Path) -> None:
    """Interrupted at step 3 of 8 (its checkpoint), resumed: the record is the uninterrupted run's."""
    task, pool = _task(), _task(40, seed=1)
    info = PoolInfo(correct0=torch.ones(len(pool), dtype=torch.bool), loss0=torch.rand(len(pool)),
                    conf0=torch.rand(len(pool)))
    settings = TrainSettings(steps=8, batch_size=8, rehearsal_batch=4, lr=0.1, checkpoint_every=3, log_every=4)

    def tuner(path: Path) -> FineTuner:
        return FineTuner(_model(), task, "shared", TRANSFORM, CPU, settings, Ledger(),
                         Rehearsal(create_sampler("random", info, 4, seed=0), pool, "shared", info.correct0),
                         checkpoint_path=path, record=True)

    whole = tuner(tmp_path / "whole.pt").run().record
    cut = tuner(tmp_path / "cut.pt")
    cut.setup()
    for step in range(3):
        cut.step(step)
        cut._boundary(False)  # step 3: the checkpoint
    assert torch.load(tmp_path / "cut.pt", weights_only=False)["step"] == 3
    resumed = tuner(tmp_path / "cut.pt").run(resume=True)
    assert resumed.resumed_from == 3
    for part in ("task", "pool"):
        for name, column in whole[part].items():
            assert torch.equal(resumed.record[part][name], column), (part, name)
    assert bool((whole["task"]["step"] < 3).any())  # some rows were last visited before the interruption


def test_the_signal_reads_the_samplers_columns_and_the_audit_the_true_ones() -> None:
    """snapshot.source=training: the signal counters count what the sampler believed (its training-time
    prior-correct), the audit what was true (the pass's)."""
    task, pool = _task(), _task(40, seed=1)
    info = PoolInfo(correct0=torch.ones(len(pool), dtype=torch.bool), loss0=torch.rand(len(pool)),
                    conf0=torch.rand(len(pool)))
    never = torch.zeros(len(pool), dtype=torch.bool)  # the pass: no row was prior-correct
    settings = TrainSettings(steps=6, batch_size=8, rehearsal_batch=4, lr=0.1, log_every=2, audit_every=1)
    loop = FineTuner(_model(), task, "shared", TRANSFORM, CPU, settings, Ledger(),
                     Rehearsal(create_sampler("random", info, 4, seed=0), pool, "shared", never,
                               signal0=info.correct0)).run()
    assert loop.counts["signal"] > 0 and loop.counts["true"] == 0 and loop.counts["audited"] == 24


# ----------------------------------------------------------------------------------- through the recipe


def _artifacts(metrics: dict[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
    return {(a["what"], a["stage"]): a for a in metrics["compute"]["artifacts"]}


def test_a_training_source_run_costs_no_pass_and_measures_its_fidelity(compose_cfg, tiny: list[str],
                                                                        tmp_path: Path) -> None:
    args = [*tiny, "sampler=mixcd", "trainer.steps=6", "threads=1", "pretrain.epochs=2", "snapshot.source=training"]
    m = run_train(compose_cfg("train", args), tmp_path / "r")
    artifacts = _artifacts(m)
    sampler_part, true_part = artifacts[("snapshot", 1)], artifacts[("snapshot, true pass", 1)]
    assert (sampler_part["compute"], sampler_part["source"], sampler_part["needed"]) == (0, "training", True)
    assert true_part["needed"] is False and true_part["source"] == "pass" and true_part["compute"] > 0
    ledger_part = next(a for a in m["ledger"]["artifacts"] if (a["what"], a["stage"]) == ("snapshot", 1))
    assert ledger_part["forward"] == 0 and ledger_part["source"] == "training"
    # the sampler's own compute has no snapshot in it: only its rehearsal
    assert m["compute"]["sampler"] == 3 * m["ledger"]["forward"]["rehearsal"]
    fid = m["stages"][0]["snapshot_fidelity"]
    assert 0 <= fid["precision"] <= 1 and 0 <= fid["recall"] <= 1 and 0 <= fid["unvisited"] <= 1
    assert fid["loss_mae"] >= 0 and fid["rows"] == true_part["compute"]
    assert m["snapshot_fidelity"] == fid  # one stage: the run's mean is that stage's
    # θ0's record lies beside it in the cache, with its checksum
    prior = Path(m["prior_checkpoint"])
    assert (prior.parent / "record.pt").is_file() and (prior.parent / "record.json").is_file()
    # the same run with the pass: the same θ0, the pool's pass needed by the sampler, no fidelity
    passed = run_train(compose_cfg("train", [*args[:-1], "snapshot.source=pass"]), tmp_path / "p")
    assert passed["prior_checkpoint"] == m["prior_checkpoint"] and "snapshot_fidelity" not in passed
    assert _artifacts(passed)[("snapshot", 1)]["compute"] == true_part["compute"]
    assert ("snapshot, true pass", 1) not in _artifacts(passed)


def test_a_training_source_sequence_carries_records_across_stages(compose_cfg, out_dir: Path,
                                                                  tmp_path: Path) -> None:
    """Three stages: each later stage's columns come from the stage before (kept beside its model), and every
    stage measures them against its true pass."""
    from mixcd_cli.recipes import experiment_of

    args = ["experiment=tiny_seq", f"paths.output_dir={out_dir}", f"paths.data_dir={out_dir.parent / 'data'}",
            "trainer.steps=8", "threads=1", "pretrain.epochs=2", "sampler=loss_high", "snapshot.source=training"]
    m = run_train(compose_cfg("train", args), tmp_path / "seq")
    exp = experiment_of(compose_cfg("train", args))
    fids = [s["snapshot_fidelity"] for s in m["stages"]]
    assert [f["rows"] for f in fids] == [s["pool"]["size"] for s in m["stages"]]
    # pool 2 = pool 1 (every row recorded at stage 1) + stage 1's training rows, of which its 8 steps of 16 visited
    # 128 (one epoch's order repeats none): the rest, and only they, have no record
    assert fids[0]["unvisited"] == 0
    assert round(fids[1]["unvisited"] * fids[1]["rows"]) == len(exp.stages[0].train) - 8 * 16
    # pool 3 adds stage 2's rows likewise; stage 2's rehearsal (8 steps of 4) may have visited some of stage 1's
    # unvisited rows (loss_high favours them: they read as the hardest)
    unvisited = round(fids[2]["unvisited"] * fids[2]["rows"])
    assert sum(len(s.train) - 8 * 16 for s in exp.stages[:2]) - 8 * 4 <= unvisited < sum(
        len(s.train) - 8 * 16 for s in exp.stages[:2])
    assert (tmp_path / "seq" / "stages" / "record1.pt").is_file() and (tmp_path / "seq" / "stages" / "record2.json"
                                                                       ).is_file()
    assert [a["compute"] for a in m["compute"]["artifacts"] if a["what"] == "snapshot"] == [0, 0, 0]


def test_a_subset_snapshot_scores_n_rows_and_the_sampler_draws_only_among_them(
        compose_cfg, tiny: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mixcd_cli.recipes import experiment_of

    size = 60
    args = [*tiny, "sampler=mixcd", "trainer.steps=12", "threads=1", "pretrain.epochs=2", f"snapshot.subset={size}"]
    exp = experiment_of(compose_cfg("train", args))
    run_pretrain(compose_cfg("pretrain", args), tmp_path / "pre")  # θ0 first: its pretraining reads the pool too
    drawn: list[torch.Tensor] = []
    host_batch = finetuner_module.host_batch

    def spy(task: Task, rows: torch.Tensor, device: torch.device) -> Any:
        if task.name.startswith(exp.pool.name):  # rehearsal rows: of the pool (its scored part), not the new task
            drawn.append(task.index[rows])  # as rows of the dataset
        return host_batch(task, rows, device)

    monkeypatch.setattr(finetuner_module, "host_batch", spy)
    m = run_train(compose_cfg("train", args), tmp_path / "a")
    rows = subset_rows(len(exp.pool), size, 0, 1)
    assert _artifacts(m)[("snapshot", 1)]["compute"] == size  # forward = N
    assert len(drawn) == 12 and sum(d.numel() for d in drawn) == m["rehearsal_counts"]["drawn"]
    scored = set(exp.pool.index[rows].tolist())
    assert all(set(d.tolist()) <= scored for d in drawn)
    assert len(scored) < len(exp.pool)
    # the same seed scores the same rows (and finds their snapshot cached); another seed other rows
    again = run_train(compose_cfg("train", args), tmp_path / "b")
    assert again["snapshot"] == m["snapshot"] and again["cached"]["snapshot"] is True
    assert torch.equal(subset_rows(len(exp.pool), size, 0, 1), rows)
    assert not torch.equal(subset_rows(len(exp.pool), size, 1, 1), rows)
    other = run_train(compose_cfg("train", [*args, "seed=1"]), tmp_path / "c")
    assert other["snapshot"] != m["snapshot"]
    # a sampler that reads no snapshot is not affected: its measuring pass scores the whole pool
    random = run_train(compose_cfg("train", [*tiny, "sampler=random", "trainer.steps=2", "threads=1",
                                             "pretrain.epochs=2", f"snapshot.subset={size}"]), tmp_path / "d")
    assert _artifacts(random)[("snapshot", 1)]["compute"] == len(exp.pool)


def test_training_columns_feed_the_sampler_only_rows_it_may_take(compose_cfg, tiny: list[str]) -> None:
    """An unvisited row reads as not prior-correct, so mix-cd's eligible set never holds it."""
    from mixcd_cli.recipes import experiment_of

    exp = experiment_of(compose_cfg("train", tiny))
    n = len(exp.pool)
    record = {"loss": torch.rand(n), "conf": torch.rand(n), "correct": torch.ones(n, dtype=torch.bool),
              "pred": exp.pool.targets.clone(), "step": torch.where(torch.arange(n) % 3 == 0, -1, 1)}
    view = training_columns(exp.pool, merge_visits(row_ids(exp.pool), [(row_ids(exp.pool), record)]))
    eligible = view.part.correct.nonzero().flatten()
    assert set(eligible.tolist()) == {i for i in range(n) if i % 3}
    assert float(view.part.loss[0]) == float(record["loss"][record["step"] >= 0].max())


# ----------------------------------------------------------------------------------- refused, through the CLI


def _mixcd(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if k != "MIXCD_DATA_DIR"}, "MIXCD_PROGRESS": "0",
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "mixcd_cli.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)) + ("/" if p.is_dir() else ""):
            "folder" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """θ0 pretrained once (its cache holds its record), and a copy of that cache whose θ0 has none (an earlier
    mixcd's)."""
    root = tmp_path_factory.mktemp("snapshot-source")
    (root / "cwd").mkdir()
    tiny = ["experiment=tiny", f"paths.output_dir={root / 'outputs'}", f"paths.data_dir={root / 'data'}",
            "threads=1", "pretrain.epochs=1"]
    made = _mixcd(["pretrain", *tiny, f"hydra.run.dir={root / 'pretrain'}"], root / "cwd")
    assert made.returncode == 0, made.stderr
    old_cache = root / "old-cache"
    shutil.copytree(root / "outputs" / "cache" / "prior", old_cache / "prior")
    for record in old_cache.glob("prior/*/record.*"):
        record.unlink()
    bad_cache = root / "bad-cache"  # a record altered after it was written
    shutil.copytree(root / "outputs" / "cache" / "prior", bad_cache / "prior")
    record = next(bad_cache.glob("prior/*/record.pt"))
    data = bytearray(record.read_bytes())
    data[len(data) // 2] ^= 1
    record.write_bytes(bytes(data))
    theta0 = next((root / "outputs" / "cache" / "prior").glob("*/model.pt"))
    return {"root": root, "tiny": tiny, "theta0": str(theta0), "old_cache": str(old_cache),
            "bad_cache": str(bad_cache)}


SEQ = ["stages=[{name: s1, classes: [3]}, {name: s2, classes: [4]}]", "rehearsal.pool=previous"]
REFUSED = [
    ("source unknown", ["snapshot.source=eval"], ["snapshot.source", "pass", "training"]),
    ("source training, a given θ0", ["snapshot.source=training", "prior_model.checkpoint={theta0}"],
     ["prior_model.checkpoint", "not pretrained by mixcd", "snapshot.source=pass"]),
    ("source training, a cached θ0 without its record", ["snapshot.source=training", "paths.cache_dir={old_cache}"],
     ["kept none", "delete the folder", "snapshot.source=pass"]),
    ("source training, a damaged record", ["snapshot.source=training", "paths.cache_dir={bad_cache}"],
     ["does not match its checksum", "delete the folder"]),
    ("source training, several processes", ["snapshot.source=training", "trainer.devices=2"],
     ["trainer.devices=1"]),
    ("source training with a subset", ["snapshot.source=training", "sampler=mixcd", "snapshot.subset=10"],
     ["choose one"]),
    ("subset 0", ["sampler=mixcd", "snapshot.subset=0"], ["snapshot.subset must be ≥ 1, got 0"]),
    ("subset negative", ["sampler=mixcd", "snapshot.subset=-3"], ["snapshot.subset must be ≥ 1, got -3"]),
    ("subset above the pool", ["sampler=mixcd", "snapshot.subset=100000"], ["larger than the pool (308 rows)"]),
    # stage 1's pool (the prior task's 308 rows) holds 250; stage 2's (stage 1's 108 training rows) does not
    ("subset above a later stage's pool", ["sampler=mixcd", "snapshot.subset=250", *SEQ],
     ["stage 2's pool (rehearsal.pool=previous: 108 rows)"]),
    ("subset with eval.on_pool", ["sampler=mixcd", "snapshot.subset=10", "eval.on_pool=true"], ["eval.on_pool"]),
]


@pytest.mark.parametrize(("args", "expect"), [pytest.param(a, e, id=i) for i, a, e in REFUSED])
def test_bad_snapshot_options_are_refused_in_one_line_writing_nothing(args: list[str], expect: list[str],
                                                                      world: dict[str, Any]) -> None:
    root = world["root"]
    run_dir = root / "new-run"
    before = _tree(root)
    filled = [a.format(**world) if "{" in a and "stages" not in a else a for a in args]
    proc = _mixcd(["train", *world["tiny"], *filled, f"hydra.run.dir={run_dir}"], root / "cwd")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    assert len(lines) == 1 and proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert lines[0].startswith("error: ")
    for text in expect:
        assert text in lines[0], (text, lines[0])
    assert not run_dir.exists()
    assert _tree(root) == before, "a refused command wrote (or removed) files"
