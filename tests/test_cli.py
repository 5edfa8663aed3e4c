"""The CLI through Typer's runner and as a user runs it (subprocess): overrides, -m, errors."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from mixcd_cli.cli import app

runner = CliRunner()


def mixcd(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mixcd_cli.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env={**__import__("os").environ, "MIXCD_PROGRESS": "0"})


def test_help_imports_no_torch() -> None:
    """--help stays fast by never importing torch (the import is what costs seconds); how fast it is on a given
    machine is a benchmark's business, not a test's, which a loaded machine would fail by chance."""
    code = ("import sys; from mixcd_cli.cli import app; "
            "from typer.testing import CliRunner; r=CliRunner().invoke(app, ['--help']); "
            "print(r.exit_code, 'torch' in sys.modules); print(r.output)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    exit_code, torch_loaded = out.splitlines()[0].split()
    assert exit_code == "0" and torch_loaded == "False"
    for stage in ("pretrain", "snapshot", "train", "eval", "report", "config", "ls"):
        assert stage in out


def test_ls_lists_all_registered_samplers() -> None:
    result = runner.invoke(app, ["ls", "samplers"])
    assert result.exit_code == 0
    for name in ("none", "random", "class_balanced", "loss_high", "loss_low", "oracle_cd", "mir", "mixcd"):
        assert name in result.output


def test_ls_other_kinds() -> None:
    for kind, expect in (("models", "cnn"), ("tasks", "fmnist_0to4"), ("experiments", "tiny"),
                         ("datasets", "fashion_mnist"), ("loggers", "tensorboard")):
        result = runner.invoke(app, ["ls", kind])
        assert result.exit_code == 0 and expect in result.output


def test_config_prints_composed_config() -> None:
    result = runner.invoke(app, ["config", "train", "sampler=mixcd", "sampler.num_bins=7"])
    assert result.exit_code == 0
    assert "name: mixcd" in result.output and "num_bins: 7" in result.output


def test_unknown_sampler_is_one_line_naming_the_valid_ones() -> None:
    proc = mixcd("train", "sampler=nosuch")
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for name in ("mixcd", "random", "none", "oracle_cd"):
        assert name in lines[0]


def test_unknown_key_suggests_the_closest() -> None:
    proc = mixcd("train", "trainer.stepz=3")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "did you mean 'steps'" in proc.stderr


def test_sweep_without_multirun_flag_is_refused() -> None:
    proc = mixcd("train", "sampler=random,mixcd")
    assert proc.returncode != 0 and "-m" in proc.stderr and "Traceback" not in proc.stderr


def test_a_sweep_value_is_checked_as_hydra_writes_it(tmp_path: Path) -> None:
    """null, a quoted string and a list are checked as the job will receive them (not as Python prints them)."""
    from mixcd_cli.hydra_app import validate

    a, c = tmp_path / "a b", tmp_path / "c"
    _, first, trials = validate("train", ["threads=1,null", "prior.classes=[0,1],[2,3]",
                                          f"paths.output_dir='{a}','{c}'"], multirun=True)
    assert first == ["threads=1", "prior.classes=[0,1]", f"paths.output_dir='{a}'"]
    assert [label for label, _ in trials] == ["threads=null", "prior.classes=[2,3]", f"paths.output_dir='{c}'"]
    assert trials[0][1].threads is None and list(trials[1][1].prior.classes) == [2, 3]


def test_train_through_cli_with_overrides(tiny: list[str], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = runner.invoke(app, ["train", *tiny, "sampler=mixcd", "trainer.steps=12", f"hydra.run.dir={run_dir}"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["sampler"] == "mixcd" and metrics["steps"] == 12
    assert (run_dir / "config.yaml").is_file() and (run_dir / "env.json").is_file()
    assert "prior-test acc" in result.output


def test_multirun_through_cli(tiny: list[str], out_dir: Path) -> None:
    start = time.time()
    result = runner.invoke(app, ["train", "-m", *tiny, "sampler=random,mixcd", "trainer.steps=6", "seed=1,2"])
    assert result.exit_code == 0, result.output
    found = sorted(out_dir.glob("multirun/train/*/*/metrics.json"))
    assert len(found) == 4
    runs = [json.loads(p.read_text()) for p in found]
    assert {(r["sampler"], r["seed"]) for r in runs} == {("random", 1), ("random", 2), ("mixcd", 1), ("mixcd", 2)}
    # the prior model and snapshot were computed once and reused by every job
    assert sum(not r["cached"]["prior"] for r in runs) <= 1
    assert time.time() - start < 120


def test_a_failing_sweep_job_does_not_stop_the_others(tiny: list[str], out_dir: Path) -> None:
    # lr=1e30 diverges during work (a value refused by reading files is refused before the sweep starts): that
    # job fails, the other still runs
    result = runner.invoke(app, ["train", "-m", *tiny, "trainer.steps=20", "trainer.lr=0.05,1e30"])
    assert result.exit_code != 0
    assert "1 sweep job(s) failed" in str(result.exception)
    sweep = next((out_dir / "multirun" / "train").iterdir())
    assert (sweep / "0" / "metrics.json").is_file()
    assert "loss became" in (sweep / "1" / "error.txt").read_text()
    from mixcd_cli.report import collect

    runs, skipped = collect([sweep])
    assert len(runs) == 1 and "loss became" in skipped[0][1]


def test_hydra_flags_pass_through_and_run_nothing(tiny: list[str], out_dir: Path) -> None:
    job = mixcd("train", "--cfg", "job", *tiny, "sampler=mixcd", "trainer.steps=7")
    assert job.returncode == 0, job.stderr
    assert "steps: 7" in job.stdout and "name: mixcd" in job.stdout and "hydra:" not in job.stdout
    part = mixcd("train", "--cfg", "job", "--resolve", "--package", "trainer", *tiny)
    assert part.returncode == 0 and part.stdout.startswith("# @package trainer") and "mix_ratio: 0.25" in part.stdout
    hydra = mixcd("train", "-c", "hydra", *tiny)
    assert hydra.returncode == 0 and "job_logging" in hydra.stdout
    info = mixcd("train", "--info", "defaults", *tiny)
    assert info.returncode == 0 and "Defaults List" in info.stdout and "sampler/random" in info.stdout
    assert mixcd("train", "--hydra-help").returncode == 0
    assert not out_dir.exists()  # printing a config runs no stage
    bad = mixcd("train", "--cfg", "jobs", *tiny)
    assert bad.returncode == 2 and "'jobs' is not one of 'job', 'hydra', 'all'" in bad.stderr


def test_stage_help_lists_config_groups() -> None:
    result = runner.invoke(app, ["train", "--help"])
    assert result.exit_code == 0
    assert "sampler:" in result.output and "mixcd" in result.output and "hydra/launcher:" in result.output


def test_logging_goes_to_the_stage_log_once(tiny: list[str], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = mixcd("train", *tiny, "sampler=mixcd", "trainer.steps=20", "trainer.log_every=10",
                 f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr
    log = (run_dir / "train.log").read_text()
    assert "mixcd train in" in log
    assert "finetune step 10/20" in log and "finetune step 20/20" in log and "hit rate" in log
    assert "prior-test acc after" in log and f"run folder: {run_dir}" in log
    # the rich console prints the result once: the log handler does not echo it a second time
    assert proc.stdout.count("run folder:") == 1 and "[INFO]" not in proc.stdout + proc.stderr


def test_exit_codes_are_2_for_a_mistake_and_3_for_divergence(tiny: list[str], tmp_path: Path) -> None:
    assert mixcd("train", *tiny, "sampler=nosuch").returncode == 2
    assert mixcd("report", str(tmp_path / "nothing-here")).returncode == 2
    diverged = mixcd("train", *tiny, "trainer.lr=1e30", "trainer.steps=20", f"hydra.run.dir={tmp_path / 'r'}")
    assert diverged.returncode == 3, diverged.stderr
    assert "loss became" in diverged.stderr and "Traceback" not in diverged.stderr


def test_help_lists_each_commands_choices() -> None:
    for args, choices in ((["ls"], ("samplers", "models", "tasks", "experiments", "datasets", "loggers")),
                          (["config"], ("pretrain", "snapshot", "train", "eval")),
                          (["report"], ("train|eval",)),
                          (["train"], ("job|hydra|all", "defaults-tree"))):
        # wide enough that rich does not wrap a choice list inside its box
        result = runner.invoke(app, [*args, "--help"], env={"TERMINAL_WIDTH": "200", "COLUMNS": "200"})
        assert result.exit_code == 0
        for choice in choices:
            assert choice in result.output, (args, choice)
    assert "logger:" in runner.invoke(app, ["train", "--help"]).output  # the config groups: logger, hparams_search
    assert "hparams_search:" in runner.invoke(app, ["train", "--help"]).output


def complete(words: str) -> list[str]:
    """What bash completion offers after ``words`` (the shell script `mixcd --install-completion` installs
    asks the program itself, through these variables)."""
    import os

    position = len(words.split()) - (0 if words.endswith(" ") else 1)
    env = {**os.environ, "_MIXCD_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(position)}
    proc = subprocess.run([sys.executable, "-c", "from mixcd_cli.cli import main; main()"], capture_output=True,
                          text=True, env=env)
    return proc.stdout.split()


def test_shell_completion_offers_the_choices() -> None:
    assert complete("mixcd ls ") == ["samplers", "models", "tasks", "experiments", "datasets", "loggers"]
    assert complete("mixcd config ") == ["pretrain", "snapshot", "train", "eval"]
    assert complete("mixcd report --stage ") == ["train", "eval"]
    assert complete("mixcd train --cfg ") == ["job", "hydra", "all"]
    assert {"train", "report", "ls"} <= set(complete("mixcd "))
    assert "--install-completion" in runner.invoke(app, ["--help"]).output


def test_completion_script_names_the_program() -> None:
    # the shell named, not detected: --install-completion/--show-completion detect it from the parent
    # processes, which under make or CI is sh (not supported), so ask for bash's script the explicit way
    import os

    proc = subprocess.run([sys.executable, "-c", "from mixcd_cli.cli import main; main()"], capture_output=True,
                          text=True, env={**os.environ, "_MIXCD_COMPLETE": "source_bash"})
    assert proc.returncode == 0 and "_MIXCD_COMPLETE=complete_bash" in proc.stdout
    assert "complete -o default -F _mixcd_completion mixcd" in proc.stdout
