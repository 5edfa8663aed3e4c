"""Experiment trackers: TensorBoard and MLflow, chosen with ``logger=[tensorboard,mlflow]``.

A fine-tuning run hands each tracker its resolved configuration, the telemetry record of every log
interval (loss, learning rate, throughput, observed and audited hit rates, the sampler's per-bin
α̂_k / p_k), and at the end its final metrics and ledger. Multi-stage runs log one series per stage
(``stage2/loss``) on a step count that runs on across stages, so the curves line up end to end.

Trackers never stall training: the training loop only queues a record at a log interval; one
background thread writes it. A tracker that fails while training says so in one line and is
dropped (the run and its own JSON files go on); one that cannot start fails the run before any
work, in one line.
"""

from __future__ import annotations

import inspect
import math
import re
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .artifacts import file_lock, read_json, write_json
from .console import note
from .errors import MixcdError
from .places import check_writable
from .registry import Registry

if TYPE_CHECKING:  # only for annotations: finish() reads the result it is handed
    from .results import RunResult

INSTALL_HINT = "install the tracking extra: pip install -e '.[track]' (or make install-track)"
# Telemetry lists that are not per-bin estimates worth a series (sizes change only when a bin splits).
NOT_SERIES = ("bin_sizes",)
# Overrides that say where or how fast a run goes, not what it is: left out of run names.
UNNAMED = ("hydra", "paths", "threads", "logger", "hparams_search", "device", "resume")
TRACKING_FILE = "tracking.json"


@dataclass
class RunIdentity:
    """Who a run is to a tracker: its folder, a name made of its overrides, and its sweep if any."""

    run_dir: Path
    name: str
    experiment: str
    sweep: str | None = None  # the sweep folder's name: every job of one sweep shares it
    job: int | None = None
    resumed: bool = False


def run_name(overrides: Iterable[str], fallback: str) -> str:
    """A run's name from its command-line overrides (where it runs and how fast left out)."""
    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~").split(".")[0].split("/")[0] not in UNNAMED]
    return ",".join(kept) or fallback


def identity_from_hydra(run_dir: Path, experiment: str, resumed: bool) -> RunIdentity:
    """The run's identity from Hydra's job configuration (the run folder's name outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return RunIdentity(run_dir, run_dir.name, experiment, resumed=resumed)
    hc = HydraConfig.get()
    overrides = list(hc.overrides.task)
    if hc.mode == RunMode.MULTIRUN:
        return RunIdentity(run_dir, run_name(overrides, f"job {hc.job.num}"), experiment,
                           sweep=Path(str(hc.sweep.dir)).name, job=int(hc.job.num), resumed=resumed)
    return RunIdentity(run_dir, run_name(overrides, "defaults"), experiment, resumed=resumed)


def flat_params(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The configuration as dotted keys with scalar values (lists and null as text), for hyper-parameters."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat_params(value, name + "."))
        elif isinstance(value, bool | int | float | str):
            out[name] = value
        else:
            out[name] = str(value)
    return out


def split_record(record: dict[str, Any]) -> tuple[dict[str, float], dict[str, list[float]]]:
    """A telemetry record as (scalars, per-bin vectors); ``step`` and ``stage`` are the coordinates, not values."""
    scalars: dict[str, float] = {}
    vectors: dict[str, list[float]] = {}
    for key, value in record.items():
        if key in ("step", "stage") or key in NOT_SERIES:
            continue
        if isinstance(value, bool):
            scalars[key] = float(value)
        elif isinstance(value, int | float) and math.isfinite(value):
            scalars[key] = float(value)
        elif isinstance(value, list) and value and all(isinstance(v, int | float) for v in value):
            vectors[key] = [float(v) for v in value]
    return scalars, vectors


# metrics.json numbers that restate the configuration (hyper-parameters already) or the file's format: not results
SETTINGS_IN_RESULT = ("seed", "batch_size", "rehearsal_batch", "mix_ratio", "num_stages", "world_size", "steps",
                      "format")


def final_scalars(result: dict[str, Any]) -> dict[str, float]:
    """A finished run's numbers: every finite top-level metric, the wall time by phase, and the ledger's
    passes by purpose."""
    out: dict[str, float] = {}
    for key, value in result.items():
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) \
                and key not in SETTINGS_IN_RESULT:
            out[f"final/{key}"] = float(value)
    for key, value in (result.get("wall_time") or {}).items():
        out[f"wall_time/{key}"] = float(value)
    ledger = result.get("ledger") or {}
    for direction in ("forward", "backward"):
        for purpose, n in (ledger.get(direction) or {}).items():
            out[f"ledger/{direction}/{purpose}"] = float(n)
    for key in ("training_passes", "rehearsal_budget"):
        if isinstance(ledger.get(key), int | float):
            out[f"ledger/{key}"] = float(ledger[key])
    return out


def _safe_name(text: str, limit: int = 200) -> str:
    """A folder name from a run name: no path separators, short enough for any file system."""
    import hashlib

    text = re.sub(r"[/\\\0]", "_", text)
    if len(text.encode()) <= limit:
        return text
    return text[:limit - 13] + "~" + hashlib.sha1(text.encode()).hexdigest()[:12]


class Tracker:
    """What a tracker receives; each call runs on the tracking thread, never the training loop's."""

    name = "tracker"

    def log_config(self, params: dict[str, Any], config_yaml: str) -> None:
        raise NotImplementedError

    def log_interval(self, series: str, step: int, scalars: dict[str, float], vectors: dict[str, list[float]]
                     ) -> None:
        raise NotImplementedError

    def log_final(self, params: dict[str, Any], metrics: dict[str, float], step: int, files: list[Path]) -> None:
        raise NotImplementedError

    def close(self, status: str) -> None:
        raise NotImplementedError

    def where(self) -> dict[str, Any]:
        """Where this run's records are, for the run folder's tracking.json."""
        return {}


LOGGERS: Registry[Callable[..., Tracker]] = Registry("logger")


@LOGGERS.register("tensorboard", help="TensorBoard event files, one folder a run (tensorboard --logdir)")
class TensorBoardTracker(Tracker):
    """torch.utils.tensorboard's SummaryWriter: scalars per series, per-bin histograms, hparams, config text."""

    name = "tensorboard"

    def __init__(self, run: RunIdentity, dir: str, histograms: bool = True) -> None:
        check_available(["tensorboard"])
        group = Path(dir) / ("sweeps" / Path(_safe_name(run.sweep)) if run.sweep else Path("runs"))
        leaf = run.name if run.sweep else f"{run.run_dir.name} {run.name}"
        self.logdir = group / _safe_name(leaf)
        self.histograms, self.resumed = histograms, run.resumed
        self.writer: Any = None
        try:
            self.logdir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MixcdError(f"logger=tensorboard could not write {self.logdir}: {exc.strerror or exc}") from exc
        if not self.resumed:
            self._open(None)

    def _open(self, purge_step: int | None) -> Any:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.logdir), purge_step=purge_step, flush_secs=30)
        return self.writer

    def _at(self, step: int) -> Any:
        # A resumed run logs again the intervals after its checkpoint: opened at its first one, the writer
        # tells TensorBoard to drop what the interrupted run wrote from that step on.
        return self.writer if self.writer is not None else self._open(step)

    def log_config(self, params: dict[str, Any], config_yaml: str) -> None:
        if not self.resumed:  # the interrupted run logged it
            self.writer.add_text("config", "```yaml\n" + config_yaml + "\n```", 0)

    def log_interval(self, series: str, step: int, scalars: dict[str, float], vectors: dict[str, list[float]]
                     ) -> None:
        writer = self._at(step)
        for key, value in scalars.items():
            writer.add_scalar(f"{series}/{key}", value, step)
        for key, values in vectors.items():
            for i, value in enumerate(values):
                writer.add_scalar(f"{series}/{key}/bin{i:02d}", value, step)
            if self.histograms:
                # the per-bin values as a histogram over bin index, weighted by each bin's value
                self._bin_histogram(f"{series}/{key}_by_bin", values, step)
        writer.flush()  # on disk at every interval: a killed run keeps its curves up to its last one

    def _bin_histogram(self, tag: str, weights: list[float], step: int) -> None:
        import numpy as np

        values, k = np.asarray(weights), len(weights)
        edges = np.arange(k + 1, dtype=float) - 0.5
        self.writer.add_histogram_raw(tag, min=0.0, max=float(k - 1), num=float(values.sum()),
                                      sum=float((np.arange(k) * values).sum()),
                                      sum_squares=float((np.arange(k) ** 2 * values).sum()),
                                      bucket_limits=edges[1:].tolist(), bucket_counts=values.tolist(),
                                      global_step=step)

    def log_final(self, params: dict[str, Any], metrics: dict[str, float], step: int, files: list[Path]) -> None:
        # resumed after training ended (killed while evaluating): no interval is logged again, keep them all
        writer = self._at(step + 1)
        for key, value in metrics.items():
            writer.add_scalar(key, value, step)
        # where the run wrote and what it logged to are not hyper-parameters (they would crowd the HParams table)
        hparams = {k: v for k, v in params.items() if isinstance(v, bool | int | float | str)
                   and k.split(".")[0] not in ("paths", "logger")}
        # "." keeps the hparams session in this run's own folder (torch would add a time-stamped one)
        writer.add_hparams(hparams, {k: v for k, v in metrics.items() if k.startswith("final/")}, run_name=".",
                           global_step=step)

    def close(self, status: str) -> None:
        if self.writer is not None:
            self.writer.close()

    def where(self) -> dict[str, Any]:
        return {"logdir": str(self.logdir)}


@LOGGERS.register("mlflow", help="MLflow runs in a local SQLite store (mlflow ui --backend-store-uri ...)")
class MlflowTracker(Tracker):
    """MLflow's client: params from the config, metrics per series, artifacts, one run per job."""

    name = "mlflow"

    def __init__(self, run: RunIdentity, tracking_uri: str, artifact_dir: str, experiment: str | None,
                 lock_dir: Path, previous: dict[str, Any] | None = None) -> None:
        import logging

        check_available(["mlflow"])
        from mlflow.tracking import MlflowClient

        # MLflow's store reports creating and migrating its tables at INFO: not a user's business
        for name in ("alembic", "mlflow.store"):
            logging.getLogger(name).setLevel(logging.WARNING)

        self.experiment_name = experiment or (f"{run.experiment} sweep {run.sweep}" if run.sweep else run.experiment)
        self.tracking_uri = tracking_uri
        try:
            if tracking_uri.startswith("sqlite:///"):
                Path(tracking_uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
            # jobs of a sweep start together: one at a time creates the store and the experiment
            import hashlib

            lock = lock_dir / f"mlflow-{hashlib.sha1(tracking_uri.encode()).hexdigest()[:12]}.lock"
            with file_lock(lock):
                self.client = MlflowClient(tracking_uri=tracking_uri)
                found = self.client.get_experiment_by_name(self.experiment_name)
                experiment_id = found.experiment_id if found else self.client.create_experiment(
                    self.experiment_name, artifact_location=Path(artifact_dir).resolve().as_uri())
            run_id = (previous or {}).get("run_id") if run.resumed else None
            if run_id:
                self.run_id = run_id
                self.client.update_run(run_id, status="RUNNING")
            else:
                tags = {"mixcd.run_dir": str(run.run_dir), **({"mixcd.sweep": run.sweep, "mixcd.job": str(run.job)}
                                                               if run.sweep else {})}
                self.run_id = self.client.create_run(experiment_id, run_name=run.name[:250], tags=tags).info.run_id
        except MixcdError:
            raise
        except Exception as exc:
            raise MixcdError(f"logger=mlflow could not start ({tracking_uri}): "
                             f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc

    def log_config(self, params: dict[str, Any], config_yaml: str) -> None:
        from mlflow.entities import Param

        items = [Param(k[:250], str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self.run_id, params=items[i:i + 100])
        self.client.log_text(self.run_id, config_yaml, "config.yaml")

    def log_interval(self, series: str, step: int, scalars: dict[str, float], vectors: dict[str, list[float]]
                     ) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(f"{series}/{k}", v, now, step) for k, v in scalars.items()]
        metrics += [Metric(f"{series}/{k}/bin{i:02d}", x, now, step) for k, values in vectors.items()
                    for i, x in enumerate(values)]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def log_final(self, params: dict[str, Any], metrics: dict[str, float], step: int, files: list[Path]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])
        for path in files:
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path))

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)

    def where(self) -> dict[str, Any]:
        return {"tracking_uri": self.tracking_uri, "experiment": self.experiment_name, "run_id": self.run_id}


class Tracking:
    """The run's trackers behind one background thread; what the stages call.

    ``cost`` keeps, per tracker, the seconds it took to start, to write the log intervals (and how
    many) and to write the rest (config, final metrics, files, closing) on the tracking thread, and
    ``queued_s`` the training loop's own time spent handing records over: what logging costs
    (`benchmarks/logger_cost.py`).
    """

    def __init__(self, trackers: list[Tracker], run_dir: Path, start_s: dict[str, float] | None = None) -> None:
        self.trackers = trackers
        self.run_dir = run_dir
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="mixcd-tracking")
        self.cost = {t.name: {"start_s": (start_s or {}).get(t.name, 0.0), "interval_s": 0.0, "intervals": 0,
                              "other_s": 0.0} for t in trackers}
        self.queued_s = 0.0
        self.failed: dict[str, str] = {}
        self.params: dict[str, Any] = {}  # the flattened config, logged at the start and kept for the end
        self.write_where()

    def _call(self, method: str, *args: Any, interval: bool = False) -> None:
        for tracker in list(self.trackers):
            if tracker.name in self.failed and method != "close":
                continue
            t0 = time.perf_counter()
            try:
                getattr(tracker, method)(*args)
            except Exception as exc:  # a logger must never take the run down with it
                if tracker.name in self.failed:
                    continue  # closing what already failed: said once
                self.failed[tracker.name] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                note(f"logger {tracker.name} stopped ({self.failed[tracker.name]}); training goes on and the run's "
                     "own files are complete")
                continue
            cost = self.cost[tracker.name]
            cost["interval_s" if interval else "other_s"] += time.perf_counter() - t0
            cost["intervals"] += int(interval)

    def submit(self, method: str, *args: Any, interval: bool = False) -> None:
        t0 = time.perf_counter()
        self.pool.submit(self._call, method, *args, interval=interval)
        self.queued_s += time.perf_counter() - t0

    def log_config(self, config: dict[str, Any], config_yaml: str) -> None:
        self.params = flat_params(config)
        self.submit("log_config", self.params, config_yaml)

    def interval_logger(self, stage: int, stages: int, step_offset: int) -> Callable[[dict[str, Any]], None]:
        """What the training loop calls with each telemetry record of stage ``stage`` (of ``stages``)."""
        series = "finetune" if stages == 1 else f"stage{stage}"

        def log(record: dict[str, Any]) -> None:
            scalars, vectors = split_record(record)
            self.submit("log_interval", series, step_offset + int(record["step"]), scalars, vectors, interval=True)

        return log

    def finish(self, result: RunResult, files: list[Path]) -> None:
        """Final metrics and ledger, the run's files as artifacts; wait for every record to be written."""
        self.submit("log_final", self.params, final_scalars(result.to_dict()), int(result.steps or 0), files)
        self.close("FINISHED")

    def close(self, status: str) -> None:
        """Write what is queued, then close every tracker with ``status`` (FINISHED, FAILED, KILLED)."""
        if self.pool is None:
            return
        self.submit("close", status)
        self.pool.shutdown(wait=True)
        self.pool = None  # type: ignore[assignment]
        self.write_where()

    def write_where(self) -> None:
        write_json({"loggers": {t.name: t.where() for t in self.trackers}, "failed": self.failed,
                    "cost": self.cost, "queued_seconds": self.queued_s}, self.run_dir / TRACKING_FILE)


def check_available(names: Iterable[str]) -> None:
    """Fail fast, before any work, when a chosen logger's package is missing."""
    import importlib.util

    for name in names:
        LOGGERS.get(name)  # an unknown name lists the valid ones
        if importlib.util.find_spec(name) is None:  # each logger is the package of its name
            raise MixcdError(f"logger={name} needs the {name} package; {INSTALL_HINT}")


# What start() passes a tracker itself; the rest of its constructor's arguments are the logger's options.
_GIVEN = ("run", "lock_dir", "previous")


def check_can_start(logger_cfg: dict[str, Any]) -> None:
    """Refuse, before any work, a logger that could not start here: its package missing, an option it does not
    take or lacks, or a local folder it would write that cannot be written. (A server it talks to is reached
    only when it starts.)"""
    check_available(sorted(logger_cfg))
    for name in sorted(logger_cfg):
        options = dict(logger_cfg[name] or {})
        params = {k: v for k, v in inspect.signature(LOGGERS.get(name)).parameters.items() if k not in _GIVEN}
        unknown = sorted(set(options) - set(params))
        missing = sorted(k for k, v in params.items() if v.default is inspect.Parameter.empty and k not in options)
        if unknown or missing:
            wrong = f"unknown option {unknown[0]!r}" if unknown else f"option {missing[0]!r} is not set"
            raise MixcdError(f"logger={name}: {wrong} (its options: {', '.join(params)})")
        for key, folder in _local_folders(name, options):
            check_writable(folder, f"logger.{name}.{key}")


def _local_folders(name: str, options: dict[str, Any]) -> list[tuple[str, Path]]:
    if name == "tensorboard":
        return [("dir", Path(str(options["dir"])))]
    if name == "mlflow":
        uri = str(options["tracking_uri"])
        store = [("tracking_uri", Path(uri[len("sqlite:///"):]).parent)] if uri.startswith("sqlite:///") else []
        return [*store, ("artifact_dir", Path(str(options["artifact_dir"])))]
    return []


def start(logger_cfg: dict[str, Any] | None, run: RunIdentity, lock_dir: Path) -> Tracking | None:
    """Start the chosen trackers (none: None); one that cannot start raises one clear MixcdError."""
    if not logger_cfg:
        return None
    previous_file = run.run_dir / TRACKING_FILE
    previous = read_json(previous_file, "tracking record").get("loggers", {}) if run.resumed and \
        previous_file.is_file() else {}
    trackers: list[Tracker] = []
    start_s: dict[str, float] = {}
    try:
        for name in sorted(logger_cfg):  # a fixed order, whatever order the choices were given in
            options = dict(logger_cfg[name] or {})
            t0 = time.perf_counter()
            if name == "mlflow":
                trackers.append(MlflowTracker(run, lock_dir=lock_dir, previous=previous.get("mlflow"), **options))
            else:
                trackers.append(LOGGERS.get(name)(run, **options))
            start_s[name] = time.perf_counter() - t0
    except TypeError as exc:
        raise MixcdError(f"logger options: {exc}") from exc
    except MixcdError:
        for tracker in trackers:
            tracker.close("FAILED")
        raise
    return Tracking(trackers, run.run_dir, start_s)
