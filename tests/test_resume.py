"""Interruption and resume: SIGKILL or Ctrl-C mid-run, then the same command finishes with identical numbers."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from as_json import run_train

from mixcd_cli.errors import MixcdError

VOLATILE = {"wall_time", "peak_memory_mb", "resumed_from", "cached", "prior_checkpoint", "snapshot"}


def stable(metrics: dict) -> dict:
    """Everything but times, paths and what this run happened to find cached (pretrain/snapshot passes)."""
    out = {k: v for k, v in metrics.items() if k not in VOLATILE}
    ledger = json.loads(json.dumps(out["ledger"]))
    for direction in ("forward", "backward", "forward_tokens", "backward_tokens"):  # tokens: token tasks only
        for purpose in ("pretrain", "snapshot"):
            ledger.get(direction, {}).pop(purpose, None)
    out["ledger"] = ledger
    # per stage likewise: what it found cached, its times, its cumulative ledgers and telemetry offset
    volatile = ("snapshot", "snapshot_cached", "resumed_from", "wall_time", "telemetry_end", "ledger", "ledger_delta")
    out["stages"] = [{k: v for k, v in s.items() if k not in volatile} for s in out.get("stages", [])]
    return out


def telemetry(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("throughput")
    return rows


def start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "MIXCD_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    # SIGINT as a foreground job has it, even when this suite runs as a shell's background job (SIGINT ignored)
    return subprocess.Popen([sys.executable, "-m", "mixcd_cli.cli", "train", *args, "threads=1"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for_checkpoint(proc: subprocess.Popen, ckpt: Path, min_step: int) -> None:
    import torch

    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"run ended before it could be interrupted: {proc.stderr.read()}")
        if ckpt.is_file():
            try:
                if torch.load(ckpt, weights_only=False)["step"] >= min_step:
                    return
            except Exception:  # a rename may race the read; try again
                pass
        time.sleep(0.02)
    pytest.fail("no checkpoint appeared")


@pytest.mark.parametrize("how", ["sigkill", "sigint"])
def test_interrupted_run_resumes_to_identical_metrics(how: str, tiny: list[str], tmp_path: Path) -> None:
    args = [*tiny, "sampler=mixcd", "trainer.steps=800", "trainer.checkpoint_every=7", "trainer.log_every=25"]
    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    ref = start([*args, f"hydra.run.dir={ref_dir}"])
    assert ref.wait() == 0, ref.stderr.read()

    proc = start([*args, f"hydra.run.dir={cut_dir}"])
    wait_for_checkpoint(proc, cut_dir / "checkpoints" / "last.pt", random.Random(how).randint(20, 200))
    if how == "sigkill":
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
    else:
        proc.send_signal(signal.SIGINT)
        assert proc.wait() == 130
        err = proc.stderr.read()
        assert "interrupted at step" in err and "Traceback" not in err
    assert not (cut_dir / "metrics.json").exists()

    again = start([*args, f"hydra.run.dir={cut_dir}"])  # the same command: resume=auto continues
    assert again.wait() == 0, again.stderr.read()
    ref_m = json.loads((ref_dir / "metrics.json").read_text())
    cut_m = json.loads((cut_dir / "metrics.json").read_text())
    assert cut_m["resumed_from"] is not None and cut_m["resumed_from"] > 0
    assert stable(cut_m) == stable(ref_m)
    assert telemetry(cut_dir) == telemetry(ref_dir)


def test_same_seed_same_metrics(compose_cfg, tiny: list[str], tmp_path: Path) -> None:
    for sampler in ("mixcd", "mir"):
        args = [*tiny, f"sampler={sampler}", "trainer.steps=20"]
        a = run_train(compose_cfg("train", args), tmp_path / f"a-{sampler}")
        b = run_train(compose_cfg("train", args), tmp_path / f"b-{sampler}")
        assert stable(a) == stable(b)
        c = run_train(compose_cfg("train", [*args, "seed=5"]), tmp_path / f"c-{sampler}")
        assert stable(c) != stable(a)


def test_resume_guards(compose_cfg, tiny: list[str], tmp_path: Path) -> None:
    args = [*tiny, "trainer.steps=10", "trainer.checkpoint_every=5"]
    run_dir = tmp_path / "r"
    with pytest.raises(MixcdError, match="does not exist"):
        run_train(compose_cfg("train", [*args, "resume=true"]), run_dir)
    run_train(compose_cfg("train", args), run_dir)
    with pytest.raises(MixcdError, match="finished run"):
        run_train(compose_cfg("train", args), run_dir)
    # an unfinished run: only a checkpoint, no metrics.json
    (run_dir / "metrics.json").unlink()
    with pytest.raises(MixcdError, match="different configuration"):
        run_train(compose_cfg("train", [*args, "trainer.lr=0.5"]), run_dir)
    with pytest.raises(MixcdError, match="unfinished run"):
        run_train(compose_cfg("train", [*args, "resume=false"]), run_dir)
    ckpt = run_dir / "checkpoints" / "last.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:200])
    with pytest.raises(MixcdError, match="corrupt or truncated"):
        run_train(compose_cfg("train", args), run_dir)
