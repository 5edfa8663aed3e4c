"""Bad input: one clear message, non-zero exit, no traceback, nothing left that looks like a result."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from as_json import run_train
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mixcd_cli.errors import MixcdError, TrainingDiverged
from mixcd_cli.hydra_app import normalise_overrides, validate


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mixcd_cli.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "MIXCD_PROGRESS": "0"})


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.mark.parametrize("override,expect", [
    ("sampler=mixcdd", "did you mean 'mixcd'"),
    ("experiment=tinyy", "did you mean 'tiny'"),
    ("trainer.lrr=0.1", "did you mean 'lr'"),
    ("trainer.steps=ten", "must be an integer"),
    ("trainer.mix_ratio=-0.5", "mix_ratio must be ≥ 0"),
    ("sampler=mixcd sampler.num_bins=0", "num_bins"),
    ("sampler=none trainer.mix_ratio=0.25", "sampler=none mixes nothing"),
    ("device=cuda:7" if not torch.cuda.is_available() else "device=tpu", "device"),
])
def test_config_mistakes(override: str, expect: str, tiny: list[str]) -> None:
    line = one_line_error(cli("train", *tiny, *override.split()))
    assert expect in line


def test_missing_and_partial_dataset(tmp_path: Path, tiny: list[str]) -> None:
    root = tmp_path / "fm"
    (root / "FashionMNIST" / "raw").mkdir(parents=True)
    (root / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"\0" * 10)  # partial copy
    line = one_line_error(cli("train", f"paths.output_dir={tmp_path / 'o'}", f"prior.root={root}",
                              f"finetune.root={root}", "prior.dataset=mnist", "finetune.dataset=mnist"))
    assert "not found" in line and "download=true" in line


def test_corrupt_prior_checkpoint(tmp_path: Path, tiny: list[str]) -> None:
    bad = tmp_path / "prior.pt"
    bad.write_bytes(b"garbage")
    line = one_line_error(cli("train", *tiny, f"prior_model.checkpoint={bad}", f"hydra.run.dir={tmp_path / 'r'}"))
    assert "corrupt or truncated" in line
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_nan_loss_stops_and_keeps_last_good_checkpoint(compose_cfg, tiny: list[str], tmp_path: Path,
                                                       monkeypatch) -> None:
    import torch.nn.functional as F

    real = F.cross_entropy
    calls = {"n": 0}

    def poisoned(logits, target, reduction="mean"):
        out = real(logits, target, reduction=reduction)
        if reduction == "sum" and logits.requires_grad:
            calls["n"] += 1
            if calls["n"] > 2 * 12:  # ft + rehearsal terms per step: poison from step 12 on
                return out * float("nan")
        return out

    run_train(compose_cfg("train", [*tiny, "trainer.steps=2"]), tmp_path / "warm")  # pretrain outside the patch
    monkeypatch.setattr(F, "cross_entropy", poisoned)
    run_dir = tmp_path / "r"
    with pytest.raises(TrainingDiverged, match="at step 12") as info:
        run_train(compose_cfg("train", [*tiny, "trainer.steps=30", "trainer.checkpoint_every=5"]), run_dir)
    assert "last good checkpoint" in str(info.value)
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)["step"] == 10
    assert not (run_dir / "metrics.json").exists()


def test_disk_full_keeps_previous_checkpoint(compose_cfg, tiny: list[str], tmp_path: Path, monkeypatch) -> None:
    run_dir = tmp_path / "r"
    real_write = Path.write_bytes
    state = {"saves": 0}

    def failing_write(self, data):
        if ".last.pt." in self.name:  # the temporary file a checkpoint is written to
            state["saves"] += 1
            if state["saves"] == 3:
                real_write(self, bytes(data)[:100])  # half written, then the disk is full
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)

    run_train(compose_cfg("train", [*tiny, "trainer.steps=2"]), tmp_path / "warm")
    monkeypatch.setattr(Path, "write_bytes", failing_write)
    with pytest.raises(MixcdError, match="disk full"):
        run_train(compose_cfg("train", [*tiny, "trainer.steps=30", "trainer.checkpoint_every=5"]), run_dir)
    monkeypatch.undo()
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    assert ckpt["step"] == 10  # the last good one, not the partial third
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))


def test_no_write_permission(compose_cfg, tiny: list[str], tmp_path: Path, monkeypatch) -> None:
    import mixcd_cli.artifacts as artifacts

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(artifacts.tempfile, "mkstemp", denied)
    with pytest.raises(MixcdError, match="no permission to write"):
        run_train(compose_cfg("train", [*tiny, "trainer.steps=2"]), tmp_path / "r")


KEYS = ["trainer.steps", "trainer.mix_ratio", "trainer.lr", "sampler", "sampler.num_bins", "model", "seed",
        "experiment", "head", "trainer.optimizer", "nosuch.key", "prior.classes", "device", "resume", "+extra",
        "~trainer.lr", "task@prior", "trainer", "hydra.run.dir"]
VALUES = st.one_of(st.integers(-5, 10**6).map(str), st.floats(allow_nan=True).map(str),
                   st.sampled_from(["mixcd", "none", "random", "cnn", "tiny", "multi", "auto", "[1,2]", "[]", "null",
                                    "true", "${trainer.steps}", "${nosuch}", "a,b", "'x'", "{a: 1}", "[0,", "=",
                                    "resnet18", "fmnist_0to4"]),
                   st.text(max_size=8))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(KEYS), VALUES), max_size=3))
@example([("trainer.steps", "\n")])  # found by this test: a newline in a value once made a two-line message
@example([("sampler", "\t")])
def test_random_overrides_never_raise_anything_but_a_clear_error(pairs: list[tuple[str, str]]) -> None:
    overrides = [f"{k}={v}" if not k.startswith("~") else k for k, v in pairs]
    try:
        validate("train", normalise_overrides(overrides), multirun=False)
    except MixcdError as exc:
        assert str(exc) and "\n" not in str(exc).strip()


def test_concurrent_jobs_share_one_cache(tiny: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "MIXCD_PROGRESS": "0"}
    procs = [subprocess.Popen([sys.executable, "-m", "mixcd_cli.cli", "train", *tiny, "trainer.steps=5",
                               f"seed={i}", "threads=1", f"hydra.run.dir={tmp_path / f'job{i}'}"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(3)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    runs = [json.loads((tmp_path / f"job{i}" / "metrics.json").read_text()) for i in range(3)]
    assert sum(not r["cached"]["prior"] for r in runs) == 1  # computed once, by whoever took the lock
    assert sum(not r["cached"]["snapshot"] for r in runs) == 1
    assert len({r["snapshot"] for r in runs}) == 1
    cache = Path(tiny[1].split("=", 1)[1]) / "cache"
    assert len(list((cache / "prior").iterdir())) == 1
    assert not [p for p in cache.rglob("*") if p.name.startswith(".") and p.suffix == ".tmp"]
