"""Loggers (TensorBoard, MLflow) read back with their own readers, sweeps as one experiment, Optuna search."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mixcd_cli import tracking
from mixcd_cli.errors import MixcdError
from mixcd_cli.results import LedgerSummary, Retention, RunResult, read_result

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")


def mixcd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mixcd_cli.cli", *args], capture_output=True, text=True,
                          env={**__import__("os").environ, "MIXCD_PROGRESS": "0"})


def telemetry(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def same(got: list[tuple[int, float]], want: list[tuple[int, float]]) -> bool:
    """The same steps, and the same values to float32 precision (TensorBoard stores float32)."""
    return [g[0] for g in got] == [w[0] for w in want] and \
        [g[1] for g in got] == pytest.approx([w[1] for w in want], rel=1e-6)


def events(logdir: Path):
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    # every events file of the folder (the hparams summary is written by a writer of its own)
    mux = EventMultiplexer(size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    return mux


def mlflow_client(out_dir: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{out_dir}/mlflow/mlflow.db")


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One tiny mix-cd run logged to both trackers: (run folder, outputs folder)."""
    out = tmp_path_factory.mktemp("tracked") / "outputs"
    run_dir = out / "run"
    proc = mixcd("train", "experiment=tiny", f"paths.output_dir={out}", f"paths.data_dir={out.parent / 'data'}",
                 "sampler=mixcd", "sampler.num_bins=4", "logger=[tensorboard,mlflow]", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr
    return run_dir, out


def test_tensorboard_holds_config_every_interval_bins_and_final_metrics(tracked_run: tuple[Path, Path]) -> None:
    run_dir, _ = tracked_run
    where = json.loads((run_dir / "tracking.json").read_text())
    logdir = Path(where["loggers"]["tensorboard"]["logdir"])
    assert logdir.name == "run experiment=tiny,sampler=mixcd,sampler.num_bins=4"  # folder, then its overrides
    mux = events(logdir)
    scalars = {}
    tags: dict[str, list[str]] = {}
    for run in mux.Runs():
        acc = mux.GetAccumulator(run)
        for kind, names in acc.Tags().items():
            if isinstance(names, list):
                tags.setdefault(kind, []).extend(names)
        for tag in acc.Tags()["scalars"]:
            scalars[tag] = [(e.step, e.value) for e in acc.Scalars(tag)]
    records = telemetry(run_dir)
    assert same(scalars["finetune/loss"], [(r["step"], r["loss"]) for r in records])
    assert same(scalars["finetune/hit_rate"], [(r["step"], r["hit_rate"]) for r in records])
    for i in range(4):  # α̂_k and p_k per bin, each a series
        assert same(scalars[f"finetune/alpha/bin{i:02d}"], [(r["step"], r["alpha"][i]) for r in records])
        assert same(scalars[f"finetune/p/bin{i:02d}"], [(r["step"], r["p"][i]) for r in records])
    assert "finetune/p_by_bin" in tags["histograms"] and "finetune/alpha_by_bin" in tags["histograms"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert scalars["final/pre_acc"][0][1] == pytest.approx(metrics["pre_acc"])
    assert scalars["final/ft_acc"][0][1] == pytest.approx(metrics["ft_acc"])
    assert scalars["ledger/forward/rehearsal"][0][1] == metrics["ledger"]["forward"]["rehearsal"]
    assert scalars["ledger/training_passes"][0][1] == metrics["ledger"]["training_passes"]
    assert "config/text_summary" in tags["tensors"]
    hparams = mux.PluginRunToTagToContent("hparams")["."]  # the HParams dashboard's session of this run
    assert b"sampler.num_bins" in hparams["_hparams_/experiment"]
    assert b"final/pre_acc" in hparams["_hparams_/experiment"]


def test_mlflow_holds_params_every_interval_final_metrics_and_files(tracked_run: tuple[Path, Path]) -> None:
    run_dir, out = tracked_run
    client = mlflow_client(out)
    experiment = client.get_experiment_by_name("tiny")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "experiment=tiny,sampler=mixcd,sampler.num_bins=4"
    config = OmegaConf.load(run_dir / "config.yaml")
    assert run.data.params["sampler.name"] == "mixcd" and run.data.params["sampler.num_bins"] == "4"
    assert run.data.params["trainer.steps"] == str(config.trainer.steps)
    records = telemetry(run_dir)
    history = client.get_metric_history(run.info.run_id, "finetune/loss")
    assert same([(m.step, m.value) for m in history], [(r["step"], r["loss"]) for r in records])
    p3 = client.get_metric_history(run.info.run_id, "finetune/p/bin03")
    assert [m.value for m in p3] == pytest.approx([r["p"][3] for r in records])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert run.data.metrics["final/pre_acc"] == pytest.approx(metrics["pre_acc"])
    assert run.data.metrics["ledger/forward/rehearsal"] == metrics["ledger"]["forward"]["rehearsal"]
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"config.yaml", "metrics.json"}


def test_a_two_job_sweep_is_one_experiment_with_a_run_per_job(tiny: list[str], out_dir: Path) -> None:
    proc = mixcd("train", "-m", *tiny, "seed=1,2", "logger=[tensorboard,mlflow]", "trainer.steps=10")
    assert proc.returncode == 0, proc.stderr
    (sweep,) = (out_dir / "multirun" / "train").iterdir()
    client = mlflow_client(out_dir)
    experiment = client.get_experiment_by_name(f"tiny sweep {sweep.name}")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["experiment=tiny,seed=1,trainer.steps=10",
                                                     "experiment=tiny,seed=2,trainer.steps=10"]
    assert sorted(r.data.tags["mixcd.job"] for r in runs) == ["0", "1"]
    assert all(r.info.status == "FINISHED" for r in runs)
    jobs = sorted(p.name for p in (out_dir / "tensorboard" / "sweeps" / sweep.name).iterdir())
    assert jobs == ["experiment=tiny,seed=1,trainer.steps=10", "experiment=tiny,seed=2,trainer.steps=10"]


def test_a_sequence_logs_one_series_per_stage_on_one_step_axis(out_dir: Path) -> None:
    proc = mixcd("train", "experiment=tiny_seq", f"paths.output_dir={out_dir}",
                 f"paths.data_dir={out_dir.parent / 'data'}", "logger=[mlflow]", "trainer.steps=20")
    assert proc.returncode == 0, proc.stderr
    client = mlflow_client(out_dir)
    (run,) = client.search_runs([client.get_experiment_by_name("tiny_seq").experiment_id])
    steps = {k: [m.step for m in client.get_metric_history(run.info.run_id, f"stage{k}/loss")] for k in (1, 2, 3)}
    assert steps == {1: [10, 20], 2: [30, 40], 3: [50, 60]}
    assert "finetune/loss" not in run.data.metrics


def test_a_logger_failing_mid_run_is_one_line_and_training_goes_on(tmp_path: Path, capsys) -> None:
    class Flaky(tracking.Tracker):
        name = "flaky"

        def __init__(self) -> None:
            self.intervals: list[int] = []
            self.closed = ""

        def log_config(self, params, config_yaml):
            pass

        def log_interval(self, series, step, scalars, vectors):
            if step >= 20:
                raise OSError("disk full")
            self.intervals.append(step)

        def log_final(self, params, metrics, step, files):
            raise AssertionError("a stopped logger gets nothing more")

        def close(self, status):
            self.closed = status

    flaky = Flaky()
    hub = tracking.Tracking([flaky], tmp_path)
    log = hub.interval_logger(1, 1, 0)
    for step in (10, 20, 30):
        log({"step": step, "loss": 1.0, "p": [0.5, 0.5]})
    hub.finish(RunResult(sampler="random", mix_ratio=0.25, seed=0, steps=30,
                         retention=Retention(pre_acc=0.5, forgetting=0.4, ft_acc=0.9), ledger=LedgerSummary()), [])
    assert flaky.intervals == [10]
    record = json.loads((tmp_path / tracking.TRACKING_FILE).read_text())
    assert record["failed"] == {"flaky": "OSError: disk full"}
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "logger flaky stopped" in err[0] and "training goes on" in err[0]


OLD_RUNS = Path(__file__).parent / "data" / "old_runs"


def test_final_scalars_of_a_result_are_its_file_s_numbers_without_settings_or_format(tmp_path: Path) -> None:
    """A run's typed result gives the trackers what its metrics.json holds: results, the wall time by phase
    and the ledger, never its settings nor the file's format."""
    path = OLD_RUNS / "train_mixcd_2stage" / "metrics.json"
    result = read_result(path, RunResult)
    scalars = tracking.final_scalars(result.to_dict())
    assert scalars == tracking.final_scalars(json.loads(path.read_text()))
    assert "final/format" not in scalars and "final/seed" not in scalars and "final/steps" not in scalars
    assert scalars["final/bwt"] == pytest.approx(result.sequence.bwt)
    assert scalars["ledger/forward/rehearsal"] == result.ledger.forward["rehearsal"]
    assert scalars["wall_time/finetune"] == result.wall_time["finetune"]

    class Keeper(tracking.Tracker):
        name = "keeper"
        final: tuple[dict[str, float], int] | None = None

        def log_config(self, params, config_yaml):
            pass

        def log_final(self, params, metrics, step, files):
            self.final = (metrics, step)

        def close(self, status):
            pass

    keeper = Keeper()
    tracking.Tracking([keeper], tmp_path).finish(result, [])
    assert keeper.final == (scalars, result.steps)


def test_the_training_loop_only_queues_records(tmp_path: Path) -> None:
    import threading
    import time

    release = threading.Event()

    class Slow(tracking.Tracker):
        name = "slow"

        def log_interval(self, series, step, scalars, vectors):
            release.wait(5)

        def close(self, status):
            pass

    hub = tracking.Tracking([Slow()], tmp_path)
    log = hub.interval_logger(1, 1, 0)
    t0 = time.perf_counter()
    for step in range(1, 6):
        log({"step": step, "loss": 1.0})
    queued = time.perf_counter() - t0
    release.set()
    hub.close("FINISHED")
    assert queued < 1.0  # five 5-second writes did not hold the loop
    assert hub.cost["slow"]["intervals"] == 5


@pytest.mark.parametrize("override, expect", [
    ("logger.mlflow.tracking_uri=sqlite:////proc/mixcd-no/mlflow.db", "logger.mlflow.tracking_uri"),
    ("logger.tensorboard.dir=/proc/mixcd-no", "logger.tensorboard.dir"),
])
def test_a_logger_that_cannot_start_is_one_line(tiny: list[str], out_dir: Path, override: str, expect: str) -> None:
    group = "logger=[mlflow]" if "mlflow" in override else "logger=[tensorboard]"
    proc = mixcd("train", *tiny, group, override, f"hydra.run.dir={out_dir / 'run'}")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0 and len(lines) == 1 and expect in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and "/proc/mixcd-no" in lines[0]
    assert not out_dir.exists()  # refused before any folder was made


def test_a_missing_logger_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(MixcdError, match=r"logger=mlflow needs the mlflow package.*\.\[track\]"):
        tracking.check_available(["tensorboard", "mlflow"])
    with pytest.raises(MixcdError, match="unknown logger 'wandb'"):
        tracking.check_available(["wandb"])


def test_unknown_logger_choice_names_the_valid_ones(tiny: list[str]) -> None:
    proc = mixcd("train", *tiny, "logger=[tensorbord]")
    assert proc.returncode != 0 and "did you mean 'tensorboard'" in proc.stderr and "Traceback" not in proc.stderr


def test_run_names_leave_out_where_and_how_fast() -> None:
    assert tracking.run_name(["sampler=mixcd", "threads=1", "paths.output_dir=/x", "hydra.run.dir=/y",
                              "logger=[mlflow]", "seed=2"], "d") == "sampler=mixcd,seed=2"
    assert tracking.run_name(["threads=1"], "defaults") == "defaults"


# ------------------------------------------------------------------------------------ Optuna


def test_optuna_search_runs_trials_and_records_the_returned_metric(tiny: list[str], out_dir: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    proc = mixcd("train", "-m", *tiny, "hparams_search=mixcd_optuna", "hydra.sweeper.n_trials=2",
                 "optimized_metric=ft_acc", "sampler.tau=choice(0.0,0.5)")
    assert proc.returncode == 0, proc.stderr
    (sweep,) = (out_dir / "multirun" / "train").iterdir()
    trials = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [t.name for t in trials] == ["0", "1"]
    values = [json.loads((t / "metrics.json").read_text())["ft_acc"] for t in trials]
    best = OmegaConf.load(sweep / "optimization_results.yaml")
    assert best.best_value == pytest.approx(max(values))
    chosen = [OmegaConf.load(t / "config.yaml").sampler for t in trials]
    assert all(c.name == "mixcd" and c.num_bins in (4, 8, 16, 32) and 0.9 <= c.decay <= 0.999
               and 0 <= c.epsilon <= 0.3 and c.tau in (0.0, 0.5) for c in chosen)
    assert dict(best.best_params) == {k: v for k, v in zip(
        ("sampler.num_bins", "sampler.decay", "sampler.epsilon", "sampler.tau"),
        (lambda c: (c.num_bins, c.decay, c.epsilon, c.tau))(chosen[values.index(max(values))]), strict=True)}
    # the best trial's settings as overrides, as `make tune-mixcd-confirm` reruns them
    script = Path(__file__).resolve().parent.parent / "scripts" / "best_overrides.py"
    printed = subprocess.run([sys.executable, str(script), str(sweep)], capture_output=True, text=True, check=True)
    winner = trials[values.index(max(values))]
    rerun = OmegaConf.merge(OmegaConf.load(winner / "config.yaml"), OmegaConf.from_dotlist(printed.stdout.split()))
    assert rerun.sampler == OmegaConf.load(winner / "config.yaml").sampler


def test_train_returns_the_optimized_metric() -> None:
    from mixcd_cli.hydra_app import returned

    def result(pre_acc: float | None) -> RunResult:
        return RunResult(sampler="mixcd", mix_ratio=0.25, seed=0, ledger=LedgerSummary(),
                         retention=Retention(pre_acc=pre_acc, forgetting=None, ft_acc=0.5))

    cfg = OmegaConf.create({"optimized_metric": "pre_acc"})
    assert returned(cfg, result(0.75)) == 0.75
    assert returned(cfg, result(None)) is None  # Optuna records a failed trial
    assert returned(OmegaConf.create({"optimized_metric": None}), result(0.75)) == result(0.75).to_dict()


def test_hparams_search_needs_multirun_and_a_known_metric(tiny: list[str]) -> None:
    proc = mixcd("train", *tiny, "hparams_search=mixcd_optuna")
    assert proc.returncode != 0 and "add -m" in proc.stderr and "Traceback" not in proc.stderr
    proc = mixcd("train", *tiny, "optimized_metric=accuracy")
    assert proc.returncode != 0 and "optimized_metric" in proc.stderr and "pre_acc" in proc.stderr


def test_a_killed_run_resumes_into_the_same_records(tiny: list[str], out_dir: Path) -> None:
    """SIGKILL after step 30 was logged, last checkpoint at 20: the rerun logs 30 again. MLflow goes on in the
    same run; TensorBoard drops what the killed process wrote from step 30 on, so each step appears once."""
    import os
    import signal
    import time

    run_dir = out_dir / "run"
    args = [*tiny, "sampler=mixcd", "logger=[tensorboard,mlflow]", "trainer.steps=60", "trainer.checkpoint_every=20",
            f"hydra.run.dir={run_dir}"]
    slow = "import mixcd_cli.training.finetuner as t; f = t.FineTuner.step; " \
           "t.FineTuner.step = lambda self, i: (time.sleep(0.15 if i >= 30 else 0), f(self, i))[1]"
    code = f"import sys, time; {slow}; from mixcd_cli.cli import main; sys.argv = ['mixcd', *sys.argv[1:]]; main()"
    proc = subprocess.Popen([sys.executable, "-c", code, "train", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "MIXCD_PROGRESS": "0"})
    deadline = time.time() + 120
    while time.time() < deadline and not (run_dir / "metrics.jsonl").is_file() or \
            '"step": 30' not in (run_dir / "metrics.jsonl").read_text():
        assert proc.poll() is None and time.time() < deadline, "the run ended before step 30"
        time.sleep(0.05)
    time.sleep(0.3)  # the tracking thread writes step 30 too
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = json.loads((run_dir / "tracking.json").read_text())["loggers"]
    done = mixcd("train", *args)
    assert done.returncode == 0 and "resuming" in done.stderr, done.stderr
    after = json.loads((run_dir / "tracking.json").read_text())["loggers"]
    assert after["mlflow"]["run_id"] == before["mlflow"]["run_id"]
    client = mlflow_client(out_dir)
    (run,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert run.info.status == "FINISHED"
    assert sorted({m.step for m in client.get_metric_history(run.info.run_id, "finetune/loss")}) == \
        [10, 20, 30, 40, 50, 60]
    mux = events(Path(after["tensorboard"]["logdir"]))
    steps = [e.step for r in mux.Runs() if "finetune/loss" in mux.GetAccumulator(r).Tags()["scalars"]
             for e in mux.GetAccumulator(r).Scalars("finetune/loss")]
    assert steps == [10, 20, 30, 40, 50, 60]


@pytest.mark.parametrize("overrides, expect", [
    (["logger=[tensorboard]", "logger.tensorboard.histograms=maybe"], "logger.tensorboard.histograms must be true"),
    (["logger=[mlflow]", "+logger.mlflow.foo=1"], "unknown config key 'logger.mlflow.foo'"),
])
def test_logger_options_are_typed(compose_cfg, overrides: list[str], expect: str) -> None:
    from mixcd_cli.recipes import validate_config

    with pytest.raises(MixcdError, match=expect):
        validate_config(compose_cfg("train", ["experiment=tiny", *overrides]))
