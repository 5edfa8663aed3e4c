"""θ0's cache key holds what sets its floats besides the inputs: a run never takes a θ0 pretrained with another
CPU thread count for its own (found rerunning `make norm-choice`: 89.98% instead of 89.86%), and a run with
threads=null computes with torch's default even after a sweep's earlier job in the same process asked for one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


def prior_path(compose_cfg, tiny: list[str], *overrides: str) -> Path:
    from mixcd_cli.recipes import experiment_of
    from mixcd_cli.recipes.prior import cached_prior_path

    cfg = compose_cfg("train", [*tiny, *overrides])
    return cached_prior_path(cfg, experiment_of(cfg))


def test_the_key_holds_the_thread_count_and_the_device(compose_cfg, tiny: list[str], monkeypatch) -> None:
    from mixcd_cli import distributed
    from mixcd_cli.runtime import DEFAULT_THREADS

    one, two, three = (prior_path(compose_cfg, tiny, f"threads={n}") for n in (1, 2, 3))
    assert len({one, two, three}) == 3
    assert prior_path(compose_cfg, tiny, "threads=null") == prior_path(compose_cfg, tiny, f"threads={DEFAULT_THREADS}")
    assert prior_path(compose_cfg, tiny, "threads=1", "device=cpu") == one
    if not torch.cuda.is_available():
        assert prior_path(compose_cfg, tiny, "threads=1", "device=auto") == one  # auto is the CPU here
    # another kind of device (none but the CPU here: one torch knows by name) has a θ0 of its own
    monkeypatch.setattr(distributed, "planned_device", lambda name: torch.device("meta"))
    assert prior_path(compose_cfg, tiny, "threads=1") != one
    monkeypatch.undo()
    # what does not change θ0 does not split the cache: the fine-tuning's sampler, ratio and seed
    assert prior_path(compose_cfg, tiny, "threads=1", "sampler=random", "trainer.mix_ratio=0.5", "seed=7") == one


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mixcd_cli.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "MIXCD_PROGRESS": "0"}, timeout=600)


def test_runs_of_other_thread_counts_pretrain_their_own_theta0(tiny: list[str], tmp_path: Path) -> None:
    runs = {}
    for name, threads in (("a", 1), ("b", 2), ("c", 1)):
        done = _cli("train", *tiny, "trainer.steps=3", f"threads={threads}", f"hydra.run.dir={tmp_path / name}")
        assert done.returncode == 0, done.stderr[-2000:]
        runs[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    assert [runs[n]["cached"]["prior"] for n in "abc"] == [False, False, True]
    cache = Path(tiny[1].split("=", 1)[1]) / "cache" / "prior"
    assert len([p for p in cache.iterdir() if (p / "model.pt").is_file()]) == 2


def test_a_default_thread_job_after_a_one_thread_job_computes_with_the_default(tiny: list[str],
                                                                                tmp_path: Path) -> None:
    alone = _cli("train", *tiny, "trainer.steps=2", "threads=null", f"hydra.run.dir={tmp_path / 'alone'}")
    assert alone.returncode == 0, alone.stderr[-2000:]
    default = json.loads((tmp_path / "alone" / "env.json").read_text())["threads"]
    if default == 1:
        pytest.skip("torch's default here is one thread: nothing tells the two apart")
    # the basic launcher runs a sweep's jobs one after another in this one process
    swept = _cli("train", "-m", *tiny, "trainer.steps=2", "threads=1,null", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert swept.returncode == 0, swept.stderr[-2000:]
    threads = [json.loads((tmp_path / "sweep" / str(job) / "env.json").read_text())["threads"] for job in (0, 1)]
    assert threads == [1, default]


def test_eval_with_other_threads_reads_the_theta0_the_run_was_fine_tuned_from(compose_cfg, tiny: list[str],
                                                                               tmp_path: Path) -> None:
    from as_json import run_eval, run_train

    trained = run_train(compose_cfg("train", [*tiny, "trainer.steps=3", "threads=1"]), tmp_path / "R")
    other = [*tiny, "threads=2", f"run_dir={tmp_path / 'R'}"]
    ev = run_eval(compose_cfg("eval", other), tmp_path / "E", overrides=other)
    assert (ev["pre_acc0"], ev["pre_acc"]) == (trained["pre_acc0"], trained["pre_acc"])
    cache = Path(tiny[1].split("=", 1)[1]) / "cache" / "prior"
    assert len(list(cache.iterdir())) == 1  # nothing pretrained, nothing looked up elsewhere
