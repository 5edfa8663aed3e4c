"""Ctrl-C anywhere ends with exit 130 and one line saying what was kept; usage errors exit 2 cleanly.

Each phase is made slow by a patch applied in the child process before the CLI starts, so the
SIGINT lands inside it for certain.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SLOW = {
    # the run's own data loading, not the checks before it (which read the data first, before any folder exists)
    "data loading": "import mixcd_cli.recipes.context as s; f = s.build_experiment; n = []; "
                    "s.build_experiment = lambda *a, **k: (n.append(1), len(n) > 1 and time.sleep(60), f(*a, **k))[2]",
    "the snapshot": "import mixcd_cli.recipes.prior as s; f = s.get_or_create_snapshot; "
                    "s.get_or_create_snapshot = lambda *a, **k: (time.sleep(60), f(*a, **k))[1]",
    "evaluation": "import mixcd_cli.recipes.train as s; f = s.evaluate; "
                  "s.evaluate = lambda *a, **k: (time.sleep(60), f(*a, **k))[1]",
    "fine-tuning": "import mixcd_cli.training.finetuner as t; f = t.FineTuner.step; "
                   "t.FineTuner.step = lambda self, i: (time.sleep(0.2), f(self, i))[1]",
}
# the snapshot: the last pretraining line, so the signal never lands in the pretraining still under way
MARK = {"data loading": "mixcd train in", "the snapshot": "pretrain step 90/90", "evaluation": "finetune step 6/6",
        "fine-tuning": "finetune step 2/"}


def _start(patch: str, args: list[str]) -> subprocess.Popen:
    code = f"import sys, time; {patch}; from mixcd_cli.cli import main; sys.argv = ['mixcd', *sys.argv[1:]]; main()"
    env = {**os.environ, "MIXCD_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    # SIGINT as a terminal's foreground job has it, whatever this suite inherited: a shell starts background
    # jobs with it ignored, and a process started so ignores Ctrl-C by design
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for(log: Path, text: str, proc: subprocess.Popen) -> None:
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"ended before the phase: {proc.stderr.read()[-2000:]}")
        if log.is_file() and text in log.read_text():
            return
        time.sleep(0.05)
    pytest.fail(f"'{text}' never appeared in {log}")


@pytest.mark.parametrize("phase", sorted(SLOW))
def test_sigint_in_every_phase_exits_130_with_one_line(phase: str, tiny: list[str], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    steps = "trainer.steps=40" if phase == "fine-tuning" else "trainer.steps=6"
    proc = _start(SLOW[phase], ["train", *tiny, steps, "trainer.log_every=2", "trainer.checkpoint_every=2",
                                "threads=1", f"hydra.run.dir={run_dir}"])
    _wait_for(run_dir / "train.log", MARK[phase], proc)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    if phase == "fine-tuning":  # the first Ctrl-C asks for a clean stop at the next step; the second insists
        time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) == 1, err
    assert "interrupted" in lines[0]
    if phase == "fine-tuning":
        # either the clean stop at the next step or the immediate one; both name the checkpoint kept
        assert "checkpoint" in lines[0] and "step" in lines[0]
    else:
        assert f"during {phase}" in lines[0]
    if phase == "evaluation":
        assert "model" in lines[0] and (run_dir / "model.pt").is_file()
    assert not (run_dir / "metrics.json").exists()


@pytest.mark.parametrize("args", [[], ["ls"], ["report"], ["nosuchcmd"], ["report", "--badopt", "x"],
                                  ["config", "train", "--nope"]])
def test_usage_errors_print_usage_and_exit_2(args: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "mixcd_cli.cli", *args], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "Usage: mixcd" in proc.stderr + proc.stdout


def test_dash_h_is_help() -> None:
    proc = subprocess.run([sys.executable, "-m", "mixcd_cli.cli", "train", "-h"], capture_output=True, text=True)
    assert proc.returncode == 0 and "Usage: mixcd train" in proc.stdout


def test_an_interrupt_in_a_sequence_names_its_stage(tiny: list[str], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    slow_second = ("import mixcd_cli.training.finetuner as t; f = t.FineTuner.step; "
                   "t.FineTuner.step = lambda self, i: (self.settings.stage == 2 and time.sleep(0.2), f(self, i))[1]")
    proc = _start(slow_second, ["train", *tiny, "trainer.steps=40", "trainer.log_every=2", "threads=1",
                                "stages=[{classes: [3], trainer: {steps: 2}}, {classes: [4]}]",
                                f"hydra.run.dir={run_dir}"])
    _wait_for(run_dir / "train.log", "finetune step 2/40", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 130 and len(lines) == 1, err
    assert "of stage 2/2" in lines[0], lines[0]
