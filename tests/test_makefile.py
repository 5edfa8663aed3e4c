"""The reproduction and ablation targets as `make -n` prints them (nothing trains): an ablation's reference is a
BASE given on the command line, else the newest reproduction made here, else reference runs of its own."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# target → the experiment whose newest reproduction folder is its default reference
ABLATIONS = {"ablate-mixcd-fmnist": "fmnist", "ablate-mixcd-foundation": "fmnist_foundation",
             "ablate-text": "text_topics", "ablate-mixcd-confirm": "fmnist_multi"}

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def dry_run(target: str, repro: Path, *args: str) -> list[str]:
    """The lines `make -n TARGET` would run, REPRO pointed at a folder of the test's."""
    done = subprocess.run(["make", "-n", "--no-print-directory", "-o", "install", "-o", "data", target,
                           f"REPRO={repro}", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.splitlines()


def reference_runs(lines: list[str]) -> list[str]:
    return [line for line in lines if "sampler=none" in line]


def report_line(lines: list[str]) -> str:
    (line,) = [line for line in lines if " report " in line]
    return line


@pytest.mark.parametrize("target", ABLATIONS)
def test_a_base_on_the_command_line_is_the_reference(target: str, tmp_path: Path) -> None:
    (tmp_path / ABLATIONS[target] / "20260101T000000Z").mkdir(parents=True)  # a reproduction made here: BASE wins
    lines = dry_run(target, tmp_path, "ABLATE_SEEDS=3,4,5", "BASE=results/piece1/runs.csv")
    assert reference_runs(lines) == []
    assert " results/piece1/runs.csv " in report_line(lines)
    assert "seed=3,4,5" in "\n".join(lines)


@pytest.mark.parametrize("target", ABLATIONS)
def test_the_newest_reproduction_made_here_is_the_reference(target: str, tmp_path: Path) -> None:
    for stamp in ("20260101T000000Z", "20260202T000000Z"):
        (tmp_path / ABLATIONS[target] / stamp).mkdir(parents=True)
    lines = dry_run(target, tmp_path)
    assert reference_runs(lines) == []
    assert f" {tmp_path / ABLATIONS[target] / '20260202T000000Z'} " in report_line(lines)


@pytest.mark.parametrize("target", ABLATIONS)
def test_without_either_it_runs_its_own_reference(target: str, tmp_path: Path) -> None:
    lines = dry_run(target, tmp_path)
    assert len(reference_runs(lines)) == 1
    assert "seed=1,2,3,4,5" in reference_runs(lines)[0]


def seeds_of(lines: list[str]) -> list[str]:
    """The seed list of every `mixcd train` the dry run prints (a command may go on over continued lines)."""
    return re.findall(r"(?<![\w.])seed=(\S+)", " ".join(lines))


@pytest.mark.parametrize("target", ["reproduce-fmnist-foundation", "reproduce-fmnist-ten", "snapshots-fmnist-domain"])
def test_a_ten_seed_reproduction_runs_ten_seeds_unless_told(target: str, tmp_path: Path) -> None:
    # At five seeds an interval of theirs held 1x, so their committed results rest on ten.
    seeds = seeds_of(dry_run(target, tmp_path))
    assert seeds and set(seeds) == {"1,2,3,4,5,6,7,8,9,10"}
    told = seeds_of(dry_run(target, tmp_path, "SEEDS=6,7"))
    assert told and set(told) == {"6,7"}


@pytest.mark.parametrize("target", ["snapshots-fmnist-split", "snapshots-fmnist-domain"])
def test_a_snapshot_comparison_runs_in_pieces_of_seeds(target: str, tmp_path: Path) -> None:
    lines = dry_run(target, tmp_path, "SEEDS=6,7,8,9,10", "ALSO=results/piece1/runs.csv")
    seeds = seeds_of(lines)
    assert len(seeds) == 4 and set(seeds) == {"6,7,8,9,10"}  # none, pass, training, subsets
    assert " results/piece1/runs.csv " in report_line(lines)
