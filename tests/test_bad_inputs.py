"""A careful new user's mistakes, through the real CLI: exit code, one line, no traceback, nothing half-made.

Three classes:
- refused before any work: exit 2, exactly one line on stderr, and no run folder or cache entry;
- refused during the run (missing data, a corrupt file, divergence): the run folder keeps the
  reason in error.txt and holds no metrics.json;
- command-line usage errors: click's short usage message and exit 2.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BEFORE_WORK = [
    (["sampler=nosuch"], "unknown sampler 'nosuch'"),
    (["sampler=mixcdd"], "did you mean 'mixcd'"),
    (["sampler=mixcd", "sampler.estimate=foo"], "sampler.estimate 'foo'; choose one of: mean, thompson"),
    (["sampler=mixcd", "sampler.memory=lifo"], "choose one of: none, recent"),
    (["sampler=mixcd", "sampler.adaptive_bins=true", "sampler.partition=class"], "needs sampler.partition=loss"),
    (["sampler=mixcd", "sampler.split_ratio=1.0"], "sampler.split_ratio must be > 1"),
    (["sampler=mixcd", "sampler.estimate=thompson", "trainer.devices=2"], "estimate=thompson draws each rank's"),
    (["sampler=amr", "sampler.temperature=0"], "sampler.temperature must be > 0"),
    (["sampler=amr", "sampler.partition=aux"], "needs sampler.aux_column"),
    (["sampler=loss_ema", "sampler.estimate=thompson"], "unknown config key 'sampler.estimate'"),
    (["experiment=tinyy"], "did you mean 'tiny'"),
    (["model=nosuchmodel_xyz"], "unknown model"),
    (["model=timm", "model.name=resnet18x"], "unknown timm model 'resnet18x'"),
    (["trainer.lrr=0.1"], "did you mean 'lr'"),
    (["trainer.steps=ten"], "trainer.steps must be an integer, got 'ten'"),
    (["trainer.steps=0"], "trainer.steps must be ≥ 1"),
    (["trainer.steps=-3"], "trainer.steps must be ≥ 1"),
    (["trainer.steps=1.5"], "trainer.steps must be an integer"),
    (["trainer.batch_size=0"], "trainer.batch_size must be ≥ 1"),
    (["trainer.mix_ratio=-0.5"], "trainer.mix_ratio must be ≥ 0"),
    (["trainer.mix_ratio=abc"], "trainer.mix_ratio must be a number"),
    (["trainer.mix_ratio=null"], "trainer.mix_ratio must be set"),
    (["trainer.lr=0"], "trainer.lr must be > 0"),
    (["trainer.lr=nan"], "trainer.lr must be a finite number"),
    (["trainer.lr=inf"], "trainer.lr must be a finite number"),
    (["trainer.momentum=1.5"], "trainer.momentum must be < 1"),
    (["trainer.weight_decay=-1"], "trainer.weight_decay must be ≥ 0"),
    (["trainer.optimizer=lion"], "choose one of: adam, adamw, sgd"),
    (["trainer.schedule=step"], "choose one of: constant, cosine, linear"),
    (["trainer.amp=fp16"], "choose one of: auto, bf16, off"),
    (["trainer.log_every=0"], "trainer.log_every must be ≥ 1"),
    (["trainer.checkpoint_every=-1"], "trainer.checkpoint_every must be ≥ 0"),
    (["trainer.devices=0"], "trainer.devices must be ≥ 1"),
    (["trainer.devices=-2"], "trainer.devices must be ≥ 1"),
    (["trainer.devices=two"], "trainer.devices must be an integer"),
    (["trainer.warmup_steps=100"], "exceeds trainer.steps"),
    (["trainer.compile=maybe"], "trainer.compile must be true or false"),
    (["pretrain.epochs=0"], "pretrain.epochs must be ≥ 1"),
    (["pretrain.batch_size=0"], "pretrain.batch_size must be ≥ 1"),
    (["pretrain.lr=-1"], "pretrain.lr must be > 0"),
    (["eval.batch_size=0"], "eval.batch_size must be ≥ 1"),
    (["snapshot.batch_size=0"], "snapshot.batch_size must be auto or an integer ≥ 1"),
    (["snapshot.batch_size=big"], "snapshot.batch_size must be auto or an integer ≥ 1"),
    (["image_size=0"], "image_size must be ≥ 1"),
    (["model.width=0"], "model.width must be ≥ 1"),
    (["threads=-1"], "threads must be ≥ 1"),
    (["threads=0"], "threads must be ≥ 1"),
    (["seed=abc"], "seed must be an integer"),
    (["device=gpu"], "device must be auto, cpu, cuda or cuda:N"),
    (["device=cuda"], "no CUDA device"),
    (["resume=maybe"], "choose one of: auto, false, true"),
    (["resume=true"], "resume=true continues the run in hydra.run.dir"),
    (["head=both"], "choose one of: multi, shared"),
    (["prior.classes=3"], "prior.classes must be a list"),
    (["prior.classes='0,1'"], "prior.classes must be a list"),
    (["prior.classes=[]"], "prior.classes must not be empty"),
    (["prior.classes=[a]"], "must be an integer, got 'a'"),
    (["prior.label_map=3"], "prior.label_map must be a mapping"),
    (["finetune.label_map={a:1}"], "finetune.label_map must be a mapping of integer labels, e.g. {0: 1}, got {'a': 1}"),
    (["sampler=none", "trainer.mix_ratio=0.25"], "sampler=none mixes nothing"),
    (["trainer.mix_ratio=0.01"], "mixes in no sample"),
    (["sampler=mixcd", "sampler.num_bins=0"], "sampler.num_bins must be ≥ 1"),
    (["sampler=mixcd", "sampler.epsilon=2"], "sampler.epsilon must be ≤ 1"),
    (["sampler=mixcd", "sampler.tau=-1"], "sampler.tau must be ≥ 0"),
    (["sampler=mixcd", "sampler.decay=0"], "sampler.decay must be > 0"),
    (["sampler=mixcd", "sampler.decay=1.5"], "sampler.decay must be ≤ 1"),
    (["sampler=mixcd", "sampler.prior_a=0"], "sampler.prior_a must be > 0"),
    (["sampler=mixcd", "sampler.partition=nosuch"], "choose one of: aux, aux_loss, class, class_loss, kmeans, loss"),
    (["sampler=mixcd", "sampler.partition=aux"], "needs sampler.aux_column"),
    (["sampler=mixcd", "sampler.bogus=1"], "unknown config key 'sampler.bogus'"),
    (["sampler=oracle_cd", "sampler.refresh_every=0"], "sampler.refresh_every must be ≥ 1"),
    (["sampler=mir", "sampler.candidates=2"], "must be ≥ the rehearsal batch"),
    (["sampler=loss_high", "sampler.temperature=0"], "sampler.temperature must be > 0"),
    (["sampler=random", "sampler.over=everything"], "choose one of: eligible, pool"),
    (["trainer.steps=5,6"], "is a sweep; add -m"),
    (["-m", "trainer.steps=5,0"], "in the sweep, trainer.steps=0: trainer.steps must be ≥ 1"),
    (["-m", "sampler=random,nosuch"], "unknown sampler 'nosuch'"),
    (["paths.output_dir=/tmp/my", "dir"], "must be quoted"),
    (["trainer.steps=["], "cannot parse override"),
    (["prior_model.checkpoint=/nonexistent/prior0.pt"], "prior_model.checkpoint not found"),
    (["snapshot.path=/nonexistent/snap"], "snapshot not found"),
    # sequences (docs/design.md §9)
    (["stages=[]"], "stages is empty"),
    (["stages=[{classes: []}]"], "stages[0].classes must not be empty"),
    (["stages=[{classes: [2], transform: {spin: 3}}]"], "unknown task transform 'spin'"),
    (["stages=[{classes: [2], transform: {rotate: 400}}]"], "rotate needs an angle in degrees between -360 and 360"),
    (["stages=[{classes: [2], transform: {rotate: left}}]"], "rotate needs an angle"),
    (["stages=[{classes: [2], transform: {permute: -1}}]"], "permute needs a non-negative integer seed"),
    (["stages=[{classes: [2], colour: red}]"], "unknown key of stages[0] 'colour'"),
    (["stages=[{classes: [2], trainer: {steps: 0}}]"], "stages[0].trainer.steps must be ≥ 1"),
    (["rehearsal.pool=everything"], "choose one of: all, previous, prior"),
    (["stages=[{classes: [3]}, {classes: [4]}]", "trainer.devices=2"], "a sequence of 2 stages runs in one process"),
    (["sampler=mixcd", "sampler.partition=aux", "sampler.aux_column=source"], "a one-stage run's pool has a single"),
]


def _mixcd(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MIXCD_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "mixcd_cli.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


def _one_line(proc: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.mark.parametrize("args,expect", BEFORE_WORK, ids=[" ".join(a) for a, _ in BEFORE_WORK])
def test_refused_before_any_work(args: list[str], expect: str, tiny: list[str], out_dir: Path,
                                 tmp_path: Path) -> None:
    proc = _mixcd(["train", *tiny, "threads=1", *args], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert expect in _one_line(proc)
    assert not out_dir.exists()  # no run folder, no cache entry


def test_output_locations_that_cannot_be_written(tiny: list[str], tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    cases = [
        ([f"paths.output_dir={a_file}"], "is a file, not a folder"),
        ([f"paths.output_dir={a_file}/below"], "is a file, not a folder"),
        ([f"hydra.run.dir={a_file}"], "is a file, not a folder"),
        ([f"hydra.run.dir={a_file}/run"], "is a file, not a folder"),
        ([f"paths.output_dir={tmp_path / ('x' * 300)}"], "longer than the file system allows"),
        (["paths.cache_dir=/sys/mixcd-cache"], "no permission to write"),
    ]
    for args, expect in cases:
        proc = _mixcd(["train", *tiny, "threads=1", *args], tmp_path)
        assert proc.returncode == 2, (args, proc.stderr)
        assert expect in _one_line(proc), args


def test_eval_mistakes(tiny: list[str], tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for args, expect in (([], "mixcd eval needs run_dir"), (["run_dir=/nonexistent/run"], "does not exist"),
                         ([f"run_dir={empty}"], "holds no finished `mixcd train` run")):
        proc = _mixcd(["eval", *tiny, *args], tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert expect in _one_line(proc)


READING_FILES = [  # refused after reading the data, still before any folder (the imagefolder case: class
    # folders without a single image)
    (["prior.dataset=mnist"], "dataset 'mnist' not found"),
    (["task@prior=imagefolder", "prior.root=EMPTY_TREE"], "holds no images"),
    (["prior.classes=[9]"], "do not occur"),
    (["stages=[{classes: [3]}, {classes: [9]}]"], "classes [9] do not occur"),
    (["stages=[{classes: [3]}, {classes: [3, 4]}]"], "reuses labels [3] of stage 'stage1' on the same inputs"),
    (["stages=[{classes: [3]}, {classes: [0]}]"], "reuses labels [0] of the prior task"),
]


@pytest.mark.parametrize("args,expect", READING_FILES, ids=[" ".join(a) for a, _ in READING_FILES])
def test_refused_after_reading_files_leaves_no_folder(args: list[str], expect: str, tiny: list[str], out_dir: Path,
                                                      tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    for split in ("train/a", "train/b", "val"):  # class folders without images; an empty test split
        (tmp_path / "tree" / split).mkdir(parents=True)
    args = [a.replace("EMPTY_TREE", str(tmp_path / "tree")) for a in args]
    proc = _mixcd(["train", *tiny, "threads=1", f"hydra.run.dir={run_dir}", *args], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert expect in _one_line(proc)
    assert not run_dir.exists() and not out_dir.exists()


def test_divergence_during_the_run_marks_the_folder(tiny: list[str], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = _mixcd(["train", *tiny, "threads=1", f"hydra.run.dir={run_dir}", "trainer.lr=1e30", "trainer.steps=20"],
                  tmp_path)
    assert proc.returncode == 3, proc.stderr
    assert "loss became" in _one_line(proc)
    assert "loss became" in (run_dir / "error.txt").read_text() and not (run_dir / "metrics.json").exists()


def test_a_corrupt_checkpoint_of_your_own_is_not_to_be_deleted(tiny: list[str], tmp_path: Path) -> None:
    mine = tmp_path / "mine.pt"
    mine.write_bytes(b"garbage")
    proc = _mixcd(["train", *tiny, "threads=1", f"prior_model.checkpoint={mine}",
                   f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    line = _one_line(proc)
    assert proc.returncode == 2 and "corrupt or truncated" in line and "delete" not in line


def test_a_finished_run_folder_is_called_finished(tiny: list[str], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    first = _mixcd(["train", *tiny, "threads=1", "trainer.steps=2", f"hydra.run.dir={run_dir}"], tmp_path)
    assert first.returncode == 0
    for extra in ([], ["trainer.steps=3"]):  # same or different configuration: it is finished either way
        proc = _mixcd(["train", *tiny, "threads=1", "trainer.steps=2", *extra, f"hydra.run.dir={run_dir}"], tmp_path)
        assert proc.returncode == 2 and "already holds a finished run" in _one_line(proc)


def test_too_many_bins_are_capped_and_said(tiny: list[str], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = _mixcd(["train", *tiny, "threads=1", "sampler=mixcd", "sampler.num_bins=100000", "trainer.steps=2",
                   f"hydra.run.dir={run_dir}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "sampler.num_bins=100000 is more than" in proc.stderr
    import json

    assert json.loads((run_dir / "metrics.json").read_text())["sampler_notes"]


def test_report_says_left_out_folders_in_one_line(tiny: list[str], tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    ok = _mixcd(["train", *tiny, "threads=1", "trainer.steps=2", f"hydra.run.dir={sweep / 'ok'}"], tmp_path)
    assert ok.returncode == 0
    for i in range(3):
        # runs that fail during work (a refused command leaves no folder to count)
        _mixcd(["train", *tiny, "threads=1", "trainer.lr=1e30", "trainer.steps=20",
                f"hydra.run.dir={sweep / f'bad{i}'}"], tmp_path)
    proc = _mixcd(["report", str(sweep), "--no-plots"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in proc.stderr.splitlines() if "left out" in line]
    assert len(notes) == 1 and "3 failed" in notes[0]
