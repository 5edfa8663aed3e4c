"""Each stage alone on the tiny config; the snapshot cache hits, verifies and refuses mismatches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mixcd_cli.errors import MixcdError
from mixcd_cli.recipes import run_eval, run_pretrain, run_snapshot, run_train
from mixcd_cli.results import Cached, read_result


def test_stages_alone_then_chain(compose_cfg, tiny: list[str], tmp_path: Path) -> None:
    with pytest.raises(MixcdError, match="mixcd pretrain"):
        run_snapshot(compose_cfg("snapshot", tiny), tmp_path / "s0")
    pre = run_pretrain(compose_cfg("pretrain", tiny), tmp_path / "p")
    assert not pre.cached and Path(pre.checkpoint).is_file() and pre.pre_acc0 > 0.5
    assert run_pretrain(compose_cfg("pretrain", tiny), tmp_path / "p2").cached
    assert read_result(tmp_path / "p" / "pretrain.json") == pre

    snap = run_snapshot(compose_cfg("snapshot", tiny), tmp_path / "s")
    assert not snap.cached and snap.pool_size > 0
    snap2 = run_snapshot(compose_cfg("snapshot", tiny), tmp_path / "s2")
    assert snap2.cached and snap2.snapshot == snap.snapshot
    assert snap2.ledger.forward["snapshot"] == 0  # a cache hit costs no pass

    res = run_train(compose_cfg("train", [*tiny, "trainer.steps=8"]), tmp_path / "t")
    assert res.cached == Cached(prior=True, snapshot=True)
    assert read_result(tmp_path / "t" / "metrics.json") == res  # what train returns is what it wrote
    kept = res.retention
    assert kept.pre_acc0 == pytest.approx(snap.test_acc0)
    assert kept.forgetting == pytest.approx(kept.pre_acc0 - kept.pre_acc)
    cats = kept.categories
    assert cats.retained + cats.collateral_damage + cats.unlearned + cats.gained == 150
    lines = (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == 8

    ev = run_eval(compose_cfg("eval", [*tiny, f"run_dir={tmp_path / 't'}"]), tmp_path / "e")
    assert ev.retention.pre_acc == pytest.approx(kept.pre_acc) and ev.retention.ft_acc == pytest.approx(kept.ft_acc)
    assert ev.sampler == res.sampler and ev.ledger == res.ledger  # copied from the run it evaluates


def test_ledger_counts_real_passes(compose_cfg, tiny: list[str], tmp_path: Path) -> None:
    res = run_train(compose_cfg("train", [*tiny, "trainer.steps=5", "trainer.batch_size=16",
                                          "trainer.mix_ratio=0.5"]), tmp_path / "t")
    ledger = res.ledger
    assert ledger.forward["finetune"] == ledger.backward["finetune"] == 5 * 16
    assert ledger.forward["rehearsal"] == ledger.backward["rehearsal"] == 5 * 8
    assert ledger.forward["eval"] == 300  # prior test + fine-tune test of the tiny experiment
    assert res.rehearsal_counts["drawn"] == 40
    # only the last step is audited (audit_every = log_every = 10 > steps)
    assert ledger.forward["audit"] == res.rehearsal_counts["audited"] == 8
    assert ledger.training_passes == 2 * (5 * 16 + 5 * 8)  # the audit is not a training pass


def test_snapshot_mismatch_is_refused(compose_cfg, tiny: list[str], tmp_path: Path) -> None:
    run_train(compose_cfg("train", [*tiny, "trainer.steps=2"]), tmp_path / "t")
    snap_dir = next((Path(tiny[1].split("=", 1)[1]) / "cache" / "snapshots").iterdir())
    # the same snapshot offered for another pool (other prior classes) must be refused
    other = [*tiny, "trainer.steps=2", f"snapshot.path={snap_dir}", "prior.classes=[0,1]"]
    with pytest.raises(MixcdError, match="another model, pool or transform"):
        run_train(compose_cfg("train", other), tmp_path / "t2")


def test_corrupt_snapshot_is_reported(compose_cfg, tiny: list[str], tmp_path: Path) -> None:
    run_train(compose_cfg("train", [*tiny, "trainer.steps=2"]), tmp_path / "t")
    snap_dir = next((Path(tiny[1].split("=", 1)[1]) / "cache" / "snapshots").iterdir())
    (snap_dir / "pool_loss.npy").write_bytes(b"not a numpy file")
    with pytest.raises(MixcdError, match="corrupt"):
        run_train(compose_cfg("train", [*tiny, "trainer.steps=2"]), tmp_path / "t2")


def test_snapshot_columns_are_memory_mappable(compose_cfg, tiny: list[str], tmp_path: Path) -> None:
    run_train(compose_cfg("train", [*tiny, "trainer.steps=1"]), tmp_path / "t")
    snap_dir = next((Path(tiny[1].split("=", 1)[1]) / "cache" / "snapshots").iterdir())
    loss = np.load(snap_dir / "pool_loss.npy", mmap_mode="r")
    assert isinstance(loss, np.memmap) and loss.dtype == np.float32
    meta = json.loads((snap_dir / "meta.json").read_text())
    assert meta["pool_size"] == len(loss)


def test_multi_head_experiment(compose_cfg, tiny: list[str], tmp_path: Path) -> None:
    res = run_train(compose_cfg("train", [*tiny, "head=multi", "trainer.steps=6"]), tmp_path / "t")
    assert res.retention.ft_acc is not None and res.retention.pre_acc0 > 0.5


def test_a_run_folder_of_the_previous_format_is_evaluated(compose_cfg, tiny: list[str], tmp_path: Path) -> None:
    """metrics.json without `format` and a config whose sampler node still holds mix_ratio, as runs were written
    before typed results and one-declaration samplers: `mixcd eval` reads both."""
    import yaml

    res = run_train(compose_cfg("train", [*tiny, "sampler=mixcd", "trainer.steps=4"]), tmp_path / "t")
    metrics = json.loads((tmp_path / "t" / "metrics.json").read_text())
    del metrics["format"]
    (tmp_path / "t" / "metrics.json").write_text(json.dumps(metrics))
    config = yaml.safe_load((tmp_path / "t" / "config.yaml").read_text())
    config["sampler"]["mix_ratio"] = config["trainer"]["mix_ratio"]
    (tmp_path / "t" / "config.yaml").write_text(yaml.safe_dump(config))
    ev = run_eval(compose_cfg("eval", [*tiny, f"run_dir={tmp_path / 't'}"]), tmp_path / "e")
    assert ev.retention.pre_acc == pytest.approx(res.retention.pre_acc) and ev.sampler == "mixcd"
    assert ev.signal == res.signal and ev.mix_ratio == res.mix_ratio


def test_an_unfinished_run_of_the_previous_format_resumes(compose_cfg, tiny: list[str], tmp_path: Path) -> None:
    """A run started when the ratio lived in the sampler node resumes with today's command: the moved key does
    not make its configuration 'different'."""
    import yaml

    args = [*tiny, "sampler=mixcd", "trainer.steps=4"]
    done = run_train(compose_cfg("train", args), tmp_path / "t")
    (tmp_path / "t" / "metrics.json").unlink()  # killed after its last checkpoint, before evaluation
    config = yaml.safe_load((tmp_path / "t" / "config.yaml").read_text())
    config["sampler"]["mix_ratio"] = config["trainer"]["mix_ratio"]
    (tmp_path / "t" / "config.yaml").write_text(yaml.safe_dump(config))
    resumed = run_train(compose_cfg("train", args), tmp_path / "t")
    assert resumed.resumed_from == 4 and resumed.retention == done.retention
