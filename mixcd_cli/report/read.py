"""Reading run folders: each finished run's result (metrics.json, as a typed result) and its saved settings.

A folder with a config.yaml is a run; one whose metrics.json is missing, unreadable or lacks what the report
needs is skipped with the reason. The settings come from config.yaml: every key that can change what a run
measures, so runs that differ in any of them never merge.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..console import note
from ..errors import MixcdError
from ..generation.objectives import GENERATION_KINDS as TOKEN_KINDS
from ..metrics import PURPOSES
from ..results import REQUIRED, EvalResult, RunResult, result_from_dict
from ..samplers import SAMPLERS
from ..schema import INTRODUCED, flatten
from .groups import Run, Settings
from .runs_csv import read_runs_table

# an experiment's name → its settings as this checkout composes it (`hydra_app.experiment_settings`)
Composer = Callable[[str], Settings]

# Config keys (and key prefixes) that cannot change what a run measures: they never split a group.
# snapshot.source and snapshot.subset change what a sampler reads: they split groups; where the snapshot is kept
# and in what batches it is made do not.
NOT_GROUPING = ("seed", "stage", "device", "resume", "threads", "paths", "hydra", "run_dir", "eval", "snapshot.path",
                "snapshot.batch_size", "logger", "optimized_metric",
                "trainer.log_every", "trainer.audit_every", "trainer.checkpoint_every", "trainer.data_on_device")
# Where a run's sampler and ratio live (today's and before the ratio moved to the trainer): columns, not settings.
OWN_COLUMNS = ("sampler.name", "sampler.mix_ratio", "trainer.mix_ratio")
# Settings that change only what a sampler reads (the snapshot's source and its scored subset) are the sampler's
# own options in the report: they name a variant (`mixcd (snapshot.source=training)`), which is set against the
# same random curve and the same default mix-cd as every other variant, since random reads no snapshot.
VARIANT_KEYS = ("snapshot.source", "snapshot.subset")
# The required keys a run may hold as null: forgetting is unknown when the prior accuracy before was not measured.
MAY_BE_NULL = ("forgetting",)


def values_of(result: RunResult | EvalResult) -> dict[str, float | None]:
    """A run's metrics by the report's names: accuracies, signal quality, CD rates, ledger passes, wall time."""
    ledger = result.ledger
    fwd, bwd = (ledger.forward, ledger.backward) if ledger is not None else ({}, {})
    cats = result.retention.categories
    by_class = [v for v in ((cats.cd_rate_by_class if cats else None) or {}).values() if v is not None]
    signal = result.signal
    return {
        "pre_acc0": result.retention.pre_acc0,
        "pre_acc": result.retention.pre_acc, "forgetting": result.retention.forgetting,
        "ft_acc": result.retention.ft_acc, **_sequence_values(result),
        "hit_rate": signal.hit_rate, "signal_rate": signal.signal_rate,
        "signal_precision": signal.signal_precision, "signal_recall": signal.signal_recall,
        "cd_rate": cats.cd_rate if cats else None,
        # how concentrated the damage is: the CD rates of the least and the most damaged prior class
        "cd_rate_class_min": min(by_class) if by_class else None,
        "cd_rate_class_max": max(by_class) if by_class else None,
        "ledger_finetune": fwd.get("finetune", 0) + bwd.get("finetune", 0),
        "ledger_rehearsal": fwd.get("rehearsal", 0) + bwd.get("rehearsal", 0),
        "ledger_selection": fwd.get("selection", 0) + bwd.get("selection", 0),
        "training_passes": ledger.training_passes if ledger is not None else None,
        # generation runs are read in tokens (docs/design.md §10): a sampler that prefers long rows pays for them
        "rehearsal_budget": (ledger.forward_tokens or {}).get("rehearsal", 0) if _in_tokens(result) and
        ledger is not None else fwd.get("rehearsal", 0),
        "budget_in_tokens": 1.0 if _in_tokens(result) else 0.0,
        "wall_time": result.wall_time.get("finetune"),
        **_compute_values(result),
        **_fidelity_values(result),
    }


def _fidelity_values(result: RunResult | EvalResult) -> dict[str, float | None]:
    """How close a training-time snapshot was to the true pass (snapshot.source=training; None otherwise)."""
    fidelity = result.snapshot_fidelity if isinstance(result, RunResult) else None
    return {f"snapshot_{k}": None if fidelity is None else getattr(fidelity, k)
            for k in ("precision", "recall", "unvisited", "loss_mae")}


def _in_tokens(result: RunResult | EvalResult) -> bool:
    """Whether a run's budgets are counted in tokens: a generation run (its rows differ in length)."""
    return isinstance(result, RunResult) and result.task_kind in TOKEN_KINDS


def _compute_values(result: RunResult | EvalResult) -> dict[str, float | None]:
    """A run's compute (fwd + 2·bwd, docs/design.md §11): in total, its fine-tuning and one-time parts, and what
    the sampler adds (the total axis, before amortisation); None for runs made before compute was kept."""
    compute = result.compute if isinstance(result, RunResult) else None
    ledger = result.ledger
    passes = {f"{way}_{p}": (getattr(ledger, way).get(p, 0) if ledger is not None else None)
              for way in ("forward", "backward") for p in PURPOSES}
    if compute is None:
        return {**dict.fromkeys(COMPUTE_VALUES), **passes}
    if _in_tokens(result) and compute.tokens is not None:
        compute = compute.tokens
    return {"compute_total": compute.total, "compute_training": compute.training, "compute_one_time": compute.one_time,
            "compute_sampler": compute.sampler, "compute_sampler_one_time": compute.sampler_one_time,
            **{f"compute_{p}": compute.by_purpose.get(p) for p in PURPOSES}, **passes}


COMPUTE_VALUES = ("compute_total", "compute_training", "compute_one_time", "compute_sampler",
                  "compute_sampler_one_time", *(f"compute_{p}" for p in PURPOSES))


def _sequence_values(result: RunResult | EvalResult) -> dict[str, float | None]:
    """The sequence summary a run measured. An evaluation, and a run written before sequences (no stage names),
    measured none: its earlier task is the prior task, and the summary the result type fills in for it is not
    shown, so such runs read as they always have."""
    if isinstance(result, RunResult) and (result.stage_names or result.num_stages > 1):
        seq = result.sequence
        return {"earlier_acc": seq.earlier_acc, "avg_acc": seq.avg_acc, "bwt": seq.bwt,
                "avg_forgetting": seq.avg_forgetting, "num_stages": result.num_stages}
    return {"earlier_acc": result.retention.pre_acc, "avg_acc": None, "bwt": None, "avg_forgetting": None,
            "num_stages": 1}


def collect(paths: Iterable[Path], stage: str = "train", compose: Composer | None = None
            ) -> tuple[list[Run], list[tuple[Path, str]]]:
    """Every run folder under ``paths`` (any depth), and the rows of any runs.csv among them (a committed
    report's runs, docs/design.md §6): (runs, skipped with the reason). ``compose`` gives the settings of an
    experiment as this checkout composes it (`hydra_app.experiment_settings`), for rows with no report.json."""
    runs: list[Run] = []
    tabled: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    seen: set[Path] = set()
    for root in paths:
        root = Path(root)
        if not root.exists():
            raise MixcdError(f"no such folder or runs.csv: {root}")
        if root.is_file():
            tabled.append(root)
            continue
        for cfg_path in sorted(root.rglob("config.yaml")):
            folder = cfg_path.parent
            if folder in seen or "cache" in folder.relative_to(root).parts or folder.name == ".hydra":
                continue
            seen.add(folder)
            read = read_run(folder, stage)
            if isinstance(read, Run):
                runs.append(read)
            elif read is not None:
                skipped.append((folder, read))
    return runs + [r for table in tabled for r in _tabled_runs(table, stage, runs, compose)], skipped


def _tabled_runs(path: Path, stage: str, beside: Iterable[Run], compose: Composer | None) -> list[Run]:
    """The runs of a runs.csv, named by where they came from (``results/fmnist/runs.csv:rehearsal/3``), with the
    settings and sampler options a run folder's config.yaml would give them.

    A runs.csv records only the settings that differed between its own runs; the rest were the same for all of
    them. They are taken from the report.json written with the runs.csv (each group's full settings), or, where
    there is none and the rows are set ``beside`` run folders of the same experiment (whose settings are
    complete: a row would match none of them), from the experiment as this checkout composes it (what `mixcd
    train experiment=NAME` runs), with a note. Keys added since, and sampler options declared since, take the
    value older runs ran as, as for an older run folder. Rows left incomplete (no report.json, alone) are marked
    so, and the report written from them says its settings are incomplete."""
    if path.suffix != ".csv":
        raise MixcdError(f"{path} is a file, not a folder of runs nor a runs.csv")
    report = _report_json(path.parent / "report.json")
    made_by = report.get("stage", "train") if report is not None else "train"
    if made_by != "train" or stage != "train":
        raise MixcdError(f"{path}: a runs.csv is read as train runs"
                         + (f", and this one holds {made_by} runs" if made_by != "train" else
                            f"; --stage {stage} reads run folders only"))
    rows, recorded = read_runs_table(path)
    folder_experiments = {r.experiment for r in beside}
    common: dict[str, dict[str, str] | None] = {}
    done = []
    for r in rows:
        if r.experiment not in common:
            common[r.experiment] = _common_settings(path, report, r.experiment, recorded,
                                                    r.experiment in folder_experiments, compose)
        shared = common[r.experiment]
        r = replace(r, path=Path(f"{path}:{r.path}"))
        done.append(replace(r, complete=False) if shared is None else _completed(r, shared))
    return done


def _report_json(path: Path) -> dict[str, Any] | None:
    """A report.json's content (None: no such file, or not a report's)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _common_settings(path: Path, report: dict[str, Any] | None, experiment: str, recorded: set[str],
                     needed: bool, compose: Composer | None) -> dict[str, str] | None:
    """The settings the rows of ``experiment`` in the runs.csv at ``path`` share and do not record (None: not
    known, and not ``needed``)."""
    full = _report_settings(report, experiment)
    if full is None:
        if not needed:
            return None
        if compose is None:
            raise MixcdError(f"{path}: no complete report.json beside it names the settings its rows of experiment "
                             f"'{experiment}' share, to set them beside run folders of it")
        full = dict(compose(experiment))
        note(f"{path}: no complete report.json beside it names the settings its rows share; they are read as "
             f"experiment={experiment} as this checkout composes it")
    return {k: v for k, v in full.items() if k not in recorded}


def _report_settings(report: dict[str, Any] | None, experiment: str) -> dict[str, str] | None:
    """The settings of a group of ``experiment`` in a report.json (None: no report, no such group, or a report
    made from runs.csv rows whose settings it could not complete)."""
    if report is None or report.get("settings_complete") is False:
        return None
    groups = report.get("groups", [])
    for g in groups if isinstance(groups, list) else []:
        if isinstance(g, dict) and g.get("experiment") == experiment and isinstance(g.get("settings"), dict):
            return {str(k): str(v) for k, v in g["settings"].items()}
    return None


def _completed(run: Run, shared: dict[str, str]) -> Run:
    """A runs.csv row with the settings and options a run folder's config.yaml gives today: the ones it shares,
    each key classed as the report classes it now (a report.json older than a key's class keeps it elsewhere), and
    keys and sampler options added since at the value older runs ran as."""
    settings, options = {**shared, **dict(run.settings)}, dict(run.options)
    for key in list(settings):
        kind = key_kind(key)
        if kind != "setting":
            value = settings.pop(key)
            if kind == "option":
                options.setdefault(key, value)
    for key, value in introduced_missing([*settings, *options]).items():
        kind = key_kind(key)
        if kind is not None:
            (settings if kind == "setting" else options).setdefault(key, json.dumps(value, sort_keys=True))
    options = {**declared_defaults(run.sampler), **options}
    return replace(run, settings=tuple(sorted(settings.items())), options=tuple(sorted(options.items())))


def read_run(folder: Path, stage: str) -> Run | str | None:
    """The run in ``folder`` if it is a finished ``stage`` run, else why it is skipped (None: not a ``stage``
    run at all, nothing to say)."""
    metrics_path = folder / "metrics.json"
    if not metrics_path.is_file():
        if stage_of(folder / "config.yaml") != stage:
            return None
        error = folder / "error.txt"
        return f"failed: {error.read_text().strip()}" if error.is_file() else \
            "no metrics.json (unfinished or failed run)"
    try:
        data = json.loads(metrics_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return f"metrics.json is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc})"
    if not isinstance(data, dict):
        return "metrics.json is not an object"
    result, why = _typed(data, str(metrics_path), stage)
    if result is None:
        return why
    settings, options = run_settings(folder / "config.yaml")
    return Run(folder, "?" if result.experiment is None else result.experiment, str(result.sampler),
               float(result.mix_ratio), int(result.seed), values_of(result),  # type: ignore[arg-type]
               settings, options, metrics_path.stat().st_mtime,
               result.accuracy_matrix if isinstance(result, RunResult) and result.num_stages > 1 else None)


def _typed(data: dict[str, Any], source: str, stage: str) -> tuple[RunResult | EvalResult | None, str | None]:
    """(the result, None) of a ``stage`` run; (None, why it is skipped) of one the report cannot read; (None,
    None) of another stage's."""
    try:
        result = result_from_dict(data, source)
    except MixcdError as exc:
        if data.get("stage", "train") != stage:  # another stage's file is no business of this report
            return None, None
        lacking = [k for k in REQUIRED if data.get(k) is None and k not in MAY_BE_NULL]
        return None, f"metrics.json lacks {', '.join(lacking)}" if lacking else f"metrics.json: {exc}"
    if result.STAGE != stage or not isinstance(result, RunResult | EvalResult):
        return None, None
    known = {"sampler": result.sampler, "mix_ratio": result.mix_ratio, "seed": result.seed,
             "pre_acc": result.retention.pre_acc, "ft_acc": result.retention.ft_acc, "ledger": result.ledger}
    lacking = [k for k in REQUIRED if k not in MAY_BE_NULL and known[k] is None]
    return (None, f"metrics.json lacks {', '.join(lacking)}") if lacking else (result, None)


def run_settings(cfg_path: Path) -> tuple[Settings, Settings]:
    """(settings, sampler options) of a run's saved configuration, as sorted (key, JSON value) pairs."""
    import yaml

    try:
        cfg = yaml.safe_load(cfg_path.read_text(errors="replace")) or {}
    except yaml.YAMLError:
        cfg = {}
    settings, options = [], []
    flat = flatten(cfg if isinstance(cfg, dict) else {})
    for key, value in {**introduced_missing(flat), **flat}.items():
        kind = key_kind(key)
        if kind is not None:
            (options if kind == "option" else settings).append((key, json.dumps(value, sort_keys=True)))
    name = cfg.get("sampler", {}).get("name") if isinstance(cfg, dict) and isinstance(cfg.get("sampler"), dict) \
        else None
    return tuple(sorted(settings)), tuple(sorted({**declared_defaults(name), **dict(options)}.items()))


def declared_defaults(sampler: Any) -> dict[str, str]:
    """The declared default of every option of ``sampler`` as (key, JSON) (none for an unknown one): a run made
    before an option existed ran as its default does, so it groups with today's default runs."""
    if sampler not in SAMPLERS:
        return {}
    return {f"sampler.{k}": json.dumps(v, sort_keys=True) for k, v in SAMPLERS.spec(sampler).defaults().items()}


def introduced_missing(keys: Iterable[str]) -> dict[str, Any]:
    """The keys added since older runs were made that ``keys`` lacks, at the value those runs ran as."""
    keys = list(keys)
    return {k: v for k, v in INTRODUCED.items() if not any(f == k or f.startswith(k + ".") for f in keys)}


def key_kind(key: str) -> str | None:
    """What a configuration key is to the report: a ``setting`` (splits groups), a sampler ``option`` (names a
    variant), or None (cannot change what a run measures, or is a column of its own)."""
    if any(key == k or key.startswith(k + ".") for k in NOT_GROUPING) or key in OWN_COLUMNS:
        return None
    return "option" if key.startswith("sampler.") or key in VARIANT_KEYS else "setting"


def stage_of(cfg_path: Path) -> str | None:
    """The ``stage:`` of a saved configuration, read without parsing it (a run that failed may have left it
    half written)."""
    for line in cfg_path.read_text(errors="replace").splitlines():
        if line.startswith("stage:"):
            return line.split(":", 1)[1].strip()
    return None
