"""Multi-stage fine-tuning (docs/design.md §9): sequences in config, pools per stage, snapshots per stage, the
accuracy matrix, resume anywhere, and a one-stage sequence that is exactly a single fine-tuning."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from as_json import run_train
from test_bad_inputs import _mixcd
from test_resume import stable, start, telemetry

from mixcd_cli.data import build_experiment
from mixcd_cli.errors import MixcdError
from mixcd_cli.metrics import sequence_metrics
from mixcd_cli.samplers import create_sampler
from mixcd_cli.samplers.base import PoolInfo
from mixcd_cli.sources import load_source

SYN = {"num_classes": 8, "image_size": 8, "n_train": 400, "n_test": 200, "noise": 0.4}


def seq(out_dir: Path) -> list[str]:
    return ["experiment=tiny_seq", f"paths.output_dir={out_dir}", f"paths.data_dir={out_dir.parent / 'data'}"]


def test_accuracy_matrix_metrics_match_a_hand_computed_example() -> None:
    # rows: θ0, after stage 1, 2, 3; columns: tasks 0..3
    a = [[0.90, None, None, None],
         [0.70, 0.80, None, None],
         [0.60, 0.50, 0.85, None],
         [0.65, 0.40, 0.60, 0.95]]
    m = sequence_metrics(a)
    assert m["avg_acc"] == pytest.approx((0.65 + 0.40 + 0.60 + 0.95) / 4)
    assert m["earlier_acc"] == pytest.approx((0.65 + 0.40 + 0.60) / 3)
    # BWT: final minus just-learned, over tasks 0..2: (0.65-0.90 + 0.40-0.80 + 0.60-0.85) / 3
    assert m["bwt"] == pytest.approx((-0.25 - 0.40 - 0.25) / 3)
    # forgetting: best earlier accuracy (stages i..S-1) minus final: task 0 max(.9,.7,.6)-.65, task 1 max(.8,.5)-.4
    assert m["forgetting_per_task"] == pytest.approx([0.25, 0.40, 0.25])
    assert m["avg_forgetting"] == pytest.approx(0.30)
    one = sequence_metrics([[0.9, None], [0.6, 0.8]])  # one stage: earlier = prior task, BWT = -forgetting
    assert one["earlier_acc"] == pytest.approx(0.6) and one["bwt"] == pytest.approx(-0.3)


def _exp(head: str, stages: list[dict] | None, transform: dict | None = None):
    prior = {"name": "p", "dataset": "synthetic", "classes": [0, 1], "options": SYN}
    finetune = {"name": "f", "dataset": "synthetic", "classes": [2, 3], "options": SYN, "transform": transform}
    return build_experiment(prior, finetune, head, "", None, stages)


@pytest.mark.parametrize("head", ["shared", "multi"])
def test_pool_of_each_stage_for_each_mode(head: str) -> None:
    exp = _exp(head, [{"name": "s1", "classes": [2, 3]}, {"name": "s2", "classes": [4, 5]},
                      {"name": "s3", "classes": [6, 7]}])
    n0, n1, n2 = len(exp.pool), len(exp.stages[0].train), len(exp.stages[1].train)
    expect = {  # stage 3's pool, by mode: (size, rows per source)
        "all": (n0 + n1 + n2, {0: n0, 1: n1, 2: n2}), "prior": (n0, {0: n0}), "previous": (n2, {2: n2})}
    for mode, (size, by_source) in expect.items():
        pool = exp.pool_at(3, mode)
        assert len(pool) == size
        sources = pool.aux("source")
        assert dict(zip(*[t.tolist() for t in sources.unique(return_counts=True)], strict=True)) == by_source
        # every row is the very sample of the task it came from, with that task's label
        for sid, task in ((0, exp.pool), (1, exp.stages[0].train), (2, exp.stages[1].train)):
            rows = torch.nonzero(sources == sid).flatten()
            if rows.numel():
                assert torch.equal(pool.inputs(rows), task.inputs(torch.arange(len(task))))
                assert torch.equal(pool.targets[rows], task.targets)
        if head == "multi" and mode == "all":
            assert pool.heads == ("prior", "finetune", "stage2")
    for mode in ("all", "prior", "previous"):  # stage 1: the prior pool, every row from source 0
        first = exp.pool_at(1, mode)
        assert len(first) == n0 and first.aux("source").eq(0).all()
        assert first.fingerprint() == exp.pool.fingerprint()  # so θ0's snapshot is shared with one-stage runs
    with pytest.raises(MixcdError, match="choose one of: all, previous, prior"):
        exp.pool_at(2, "everything")
    # mix-cd partitioned by source: one bin per task, of that task's rows
    pool = exp.pool_at(3, "all")
    info = PoolInfo(classes=pool.targets, correct0=torch.ones(len(pool), dtype=torch.bool),
                    loss0=torch.rand(len(pool)), conf0=torch.rand(len(pool)), aux=pool.aux_columns())
    sampler = create_sampler("mixcd", info, 8, 0, partition="aux", aux_column="source")
    assert sampler.telemetry()["bin_sizes"] == [n0, n1, n2]


def test_rotate_and_permute_are_fixed_transforms_of_the_inputs() -> None:
    base = load_source("synthetic", "", True, options=SYN)
    rot = load_source("synthetic", "", True, options=SYN, transform={"rotate": 90})
    assert torch.equal(rot.data, torch.rot90(base.data, 1, dims=(-2, -1)))  # counter-clockwise, exact at 90°
    perm = load_source("synthetic", "", True, options=SYN, transform={"permute": 3})
    again = load_source("synthetic", "", True, options={**SYN, "data_seed": 1234}, transform={"permute": 3})
    assert not torch.equal(perm.data, base.data) and torch.equal(perm.data, again.data)
    assert torch.equal(perm.data.flatten(2).sort(-1).values, base.data.flatten(2).sort(-1).values)  # same pixels
    other = load_source("synthetic", "", True, options=SYN, transform={"permute": 4})
    assert not torch.equal(other.data, perm.data)
    assert torch.equal(perm.targets, base.targets)


def test_three_stages_run_end_to_end_through_the_cli(out_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = _mixcd(["train", *seq(out_dir), "sampler=mixcd", "sampler.partition=aux", "sampler.aux_column=source",
                   "threads=1", f"hydra.run.dir={run_dir}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    m = json.loads((run_dir / "metrics.json").read_text())
    a = m["accuracy_matrix"]
    assert m["num_stages"] == 3 and [len(r) for r in a] == [4, 4, 4, 4]
    assert all(a[k][i] is None for k in range(4) for i in range(k + 1, 4))
    assert all(0 <= a[k][i] <= 1 for k in range(4) for i in range(k + 1))
    assert a[0][0] == m["pre_acc0"] and a[3][0] == m["pre_acc"] and a[3][3] == m["ft_acc"]
    assert m["earlier_acc"] == pytest.approx(sum(a[3][:3]) / 3)
    assert m["steps"] == 90 and [s["stage"] for s in m["stages"]] == [1, 2, 3]
    # each stage's pool is the prior pool and the earlier stages' training sets; source tags them
    assert [sorted(s["pool"]["by_source"]) for s in m["stages"]] == [["0"], ["0", "1"], ["0", "1", "2"]]
    assert [s["accuracy"] for s in m["stages"]] == [r[:k + 1] for k, r in enumerate(a[1:], 1)]
    # the ledger per stage adds up to the total, and every stage pays the same fine-tuning budget
    deltas = [s["ledger_delta"]["training_passes"] for s in m["stages"]]
    assert sum(deltas) == m["ledger"]["training_passes"] and len(set(deltas)) == 1
    assert m["rehearsal_counts"]["drawn"] == sum(s["rehearsal_counts"]["drawn"] for s in m["stages"])
    # one bin per source that still has prior-correct rows (θ(k−1) may have forgotten a whole task)
    assert [len(s["sampler_final"]["bin_sizes"]) <= k for k, s in enumerate(m["stages"], 1)] == [True] * 3
    stages_seen = [json.loads(line)["stage"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert stages_seen == sorted(stages_seen) and set(stages_seen) == {1, 2, 3}
    report = _mixcd(["report", str(run_dir), "--out", str(tmp_path / "rep")], tmp_path)
    assert report.returncode == 0, report.stderr
    assert [p.name for p in (tmp_path / "rep").glob("tiny_seq_matrix_*.png")] == [
        "tiny_seq_matrix_mixcd.png"]
    assert "earlier-task acc %" in (tmp_path / "rep" / "report.md").read_text()


def test_one_stage_sequence_is_the_single_fine_tuning(compose_cfg, tiny: list[str], tmp_path: Path) -> None:
    args = [*tiny, "sampler=mixcd", "trainer.steps=20"]
    single = run_train(compose_cfg("train", args), tmp_path / "single")
    listed = run_train(compose_cfg("train", [*args, "stages=[{}]"]), tmp_path / "listed")
    today = ("pre_acc0", "pre_acc", "forgetting", "ft_acc", "categories", "hit_rate", "signal_rate",
             "rehearsal_counts", "final_loss", "sampler_final", "steps", "rehearsal_batch")
    assert {k: listed[k] for k in today} == {k: single[k] for k in today}
    assert stable(listed)["ledger"] == stable(single)["ledger"]
    assert single["accuracy_matrix"] == [[single["pre_acc0"], None], [single["pre_acc"], single["ft_acc"]]]
    assert single["earlier_acc"] == single["pre_acc"] and single["bwt"] == pytest.approx(-single["forgetting"])
    assert not (tmp_path / "single" / "stages").exists()  # nothing extra in a one-stage run folder


def test_each_stage_snapshot_is_made_once_and_verified_on_reuse(compose_cfg, out_dir: Path, tmp_path: Path) -> None:
    args = [*seq(out_dir), "sampler=mixcd", "trainer.steps=10"]
    first = run_train(compose_cfg("train", [*args, "seed=1"]), tmp_path / "a")
    other = run_train(compose_cfg("train", [*args, "seed=2"]), tmp_path / "b")
    again = run_train(compose_cfg("train", [*args, "seed=1"]), tmp_path / "c")
    assert [s["snapshot_cached"] for s in first["stages"]] == [False, False, False]
    assert [s["snapshot_cached"] for s in other["stages"]] == [True, False, False]  # θ0's is shared
    assert [s["snapshot_cached"] for s in again["stages"]] == [True, True, True]  # same seed: same θ1, θ2
    assert [s["snapshot"] for s in again["stages"]] == [s["snapshot"] for s in first["stages"]]
    assert again["ledger"]["forward"]["snapshot"] == 0
    assert len(list((out_dir / "cache" / "snapshots").iterdir())) == 5
    assert stable(again) == stable(first)
    # reuse verifies: a flipped bit in stage 2's snapshot is refused, not trained on
    column = Path(first["stages"][1]["snapshot"]) / "pool_correct.npy"
    data = bytearray(column.read_bytes())
    data[-1] ^= 1
    column.write_bytes(bytes(data))
    with pytest.raises(MixcdError, match="does not match its checksum"):
        run_train(compose_cfg("train", [*args, "seed=1"]), tmp_path / "d")


@pytest.mark.parametrize("where", ["mid-stage", "stage start"])
def test_killed_in_stage_two_resumes_to_identical_metrics(where: str, out_dir: Path, tmp_path: Path) -> None:
    args = [*seq(out_dir), "sampler=mixcd", "trainer.steps=300", "trainer.log_every=25",
            "trainer.checkpoint_every=" + ("7" if where == "mid-stage" else "0")]
    ref = start([*args, f"hydra.run.dir={tmp_path / 'ref'}"])
    assert ref.wait() == 0, ref.stderr.read()
    cut_dir = tmp_path / "cut"
    proc = start([*args, f"hydra.run.dir={cut_dir}"])
    import time

    deadline = time.time() + 180
    while time.time() < deadline:  # in stage 2: its first checkpoint (mid-stage) or stage 1's record (start)
        if where == "stage start" and (cut_dir / "stages" / "stage1.json").is_file():
            break
        if where == "mid-stage" and any(
                json.loads(line).get("stage") == 2 and json.loads(line)["step"] >= 100
                for line in _lines(cut_dir / "metrics.jsonl")):
            break
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (cut_dir / "metrics.json").exists() and (cut_dir / "stages" / "stage1.json").is_file()
    again = start([*args, f"hydra.run.dir={cut_dir}"])
    assert again.wait() == 0, again.stderr.read()
    ref_m, cut_m = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "ref", cut_dir))

    assert stable(cut_m) == stable(ref_m)
    assert cut_m["stages"][1]["ledger_delta"]["training_passes"] == ref_m["stages"][1]["ledger_delta"][
        "training_passes"]
    assert telemetry(cut_dir) == telemetry(tmp_path / "ref")
    if where == "mid-stage":
        assert cut_m["resumed_from"]["stage"] == 2 and cut_m["resumed_from"]["step"] > 0


def _lines(path: Path) -> list[str]:
    try:
        return [line for line in path.read_text().splitlines() if line.endswith("}")]
    except FileNotFoundError:
        return []


def test_domain_stages_may_reuse_labels_and_multi_heads_may_too(tmp_path: Path) -> None:
    same_labels = [{"name": "r90", "classes": [0, 1], "transform": {"rotate": 90}},
                   {"name": "r180", "classes": [0, 1], "transform": {"rotate": 180}}]
    exp = _exp("shared", same_labels)
    assert exp.head_sizes() == {"shared": 2}
    multi = _exp("multi", [{"classes": [2, 3]}, {"classes": [2, 3]}])
    assert multi.head_sizes() == {"prior": 2, "finetune": 2, "stage2": 2}


@pytest.mark.parametrize("sampler", ["mixcd", "mir", "oracle_cd"])
def test_a_head_per_task_reads_each_pool_row_with_its_own_head(sampler: str, compose_cfg, out_dir: Path,
                                                                tmp_path: Path) -> None:
    m = run_train(compose_cfg("train", [*seq(out_dir), "head=multi", f"sampler={sampler}", "trainer.steps=8"]),
                  tmp_path / sampler)
    assert m["num_stages"] == 3 and m["rehearsal_counts"]["drawn"] == 3 * 8 * 4
    model = torch.load(tmp_path / sampler / "model.pt", weights_only=False)
    assert model["heads"] == {"prior": 2, "finetune": 2, "stage2": 2, "stage3": 2}


def test_snapshot_of_a_multi_head_pool_equals_a_direct_computation() -> None:
    from mixcd_cli.data import make_transform
    from mixcd_cli.models import create_model
    from mixcd_cli.training.inference import predict_task

    exp = _exp("multi", [{"name": "s1", "classes": [2, 3]}, {"name": "s2", "classes": [4, 5, 6]}])
    torch.manual_seed(0)
    model = create_model("cnn", 1, {"prior": 2, "finetune": 2, "stage2": 3}, width=4, norm="group")
    pool, transform = exp.pool_at(3, "all"), make_transform(exp.pool.source)
    got = predict_task(model, pool, "prior", transform, torch.device("cpu"), 64)
    model.eval()
    offset = 0
    for task, head in ((exp.pool, "prior"), (exp.stages[0].train, "finetune"), (exp.stages[1].train, "stage2")):
        with torch.no_grad():
            logits = model(transform(task.inputs(torch.arange(len(task)))), head)
        rows = slice(offset, offset + len(task))
        assert torch.allclose(got.loss[rows], torch.nn.functional.cross_entropy(logits, task.targets,
                                                                                reduction="none"), atol=1e-6)
        assert torch.equal(got.pred[rows], logits.argmax(1))
        offset += len(task)
