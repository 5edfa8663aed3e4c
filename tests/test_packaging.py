"""`pip install .` (not editable) gives a mixcd that finds its configs and runs from any folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from this checkout, installed into a folder of its own (dependencies: this venv's)."""
    base = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(base / "dist"), str(REPO)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next((base / "dist").glob("mixcd-*.whl"))
    target = base / "site"
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "-q",
                           "--target", str(target), str(wheel)], capture_output=True, text=True, timeout=300)
    assert inst.returncode == 0, inst.stderr[-3000:]
    return target


def _run(target: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MIXCD_ROOT", "MIXCD_CONFIG_DIR", "MIXCD_DATA_DIR")}
    env.update(PYTHONPATH=str(target), MIXCD_PROGRESS="0", OMP_NUM_THREADS="1")
    return subprocess.run([str(target / "bin" / "mixcd"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def test_installed_package_ships_its_configs_and_runs_elsewhere(installed: Path, tmp_path: Path) -> None:
    assert (installed / "mixcd_cli" / "conf" / "train.yaml").is_file()
    assert (installed / "mixcd_cli" / "conf" / "experiment" / "fmnist.yaml").is_file()
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run([sys.executable, "-c", "import mixcd_cli; print(mixcd_cli.__file__)"], cwd=work,
                           env={**os.environ, "PYTHONPATH": str(installed)}, capture_output=True, text=True)
    assert where.stdout.strip().startswith(str(installed))  # the wheel, not the checkout

    help_ = _run(installed, work, "--help")
    assert help_.returncode == 0 and "train" in help_.stdout
    run = _run(installed, work, "train", "experiment=tiny", "trainer.steps=3", "threads=1")
    assert run.returncode == 0, run.stderr[-3000:]
    # without a checkout, outputs go under the folder mixcd was started from
    assert list((work / "outputs" / "runs" / "train").glob("*/metrics.json"))
    assert not (installed / "outputs").exists()
