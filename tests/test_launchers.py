"""Hydra launchers: joblib (parallel jobs on one machine) and submitit_local (what SLURM runs, locally)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mixcd_cli.cli import app


def _sweep(tiny: list[str], out_dir: Path, launcher: str) -> list[dict]:
    result = CliRunner().invoke(app, ["train", "-m", f"hydra/launcher={launcher}", *tiny, "sampler=random,mixcd",
                                      "trainer.steps=6", "threads=1"])
    assert result.exit_code == 0, result.output
    found = sorted(out_dir.glob("multirun/train/*/*/metrics.json"))
    assert len(found) == 2
    return [json.loads(p.read_text()) for p in found]


def test_joblib_launcher_runs_jobs_in_parallel(tiny: list[str], out_dir: Path) -> None:
    runs = _sweep(tiny, out_dir, "local_parallel")
    assert {r["sampler"] for r in runs} == {"random", "mixcd"}


@pytest.mark.slow
def test_submitit_local_launcher(tiny: list[str], out_dir: Path) -> None:
    runs = _sweep(tiny, out_dir, "submitit_local")
    assert {r["sampler"] for r in runs} == {"random", "mixcd"}
    assert all(r["pre_acc"] is not None for r in runs)


def test_a_failing_job_fails_a_parallel_sweep(tiny: list[str], out_dir: Path) -> None:
    """Under joblib the jobs run in worker processes: failure is read back from their folders."""
    import os
    import subprocess
    import sys

    # lr=1e30 diverges: only training, inside the job, finds that out
    proc = subprocess.run([sys.executable, "-m", "mixcd_cli.cli", "train", "-m", "hydra/launcher=local_parallel",
                           *tiny, "trainer.steps=20", "trainer.lr=0.05,1e30", "threads=1"], capture_output=True,
                          text=True, env={**os.environ, "MIXCD_PROGRESS": "0"}, timeout=600)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "1 sweep job(s) failed" in proc.stderr and "loss became" in proc.stderr
    assert "Traceback" not in proc.stderr
    sweep = next((out_dir / "multirun" / "train").iterdir())
    assert (sweep / "0" / "metrics.json").is_file() and not (sweep / "0" / "error.txt").exists()
    assert "loss became" in (sweep / "1" / "error.txt").read_text()
