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
