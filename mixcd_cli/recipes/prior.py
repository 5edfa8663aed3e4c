"""The prior stages: θ0 (given, or pretrained once and cached) and snapshots of a model over a stage's pool."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from .. import console, distributed
from ..artifacts import config_digest, file_digest, file_lock
from ..data import Experiment, Task
from ..errors import MixcdError, phase
from ..metrics import Artifact
from ..models import FINETUNE_ONLY, MixcdNet, create_model, load_model, model_spec, save_model
from ..results import LedgerSummary, PretrainResult, SnapshotResult, write_result
from ..runtime import derive_seed, numerics, run_threads
from ..samplers import SAMPLERS, sampler_options
from ..snapshot import (
    Snapshot,
    get_or_create_snapshot,
    load_columns,
    save_columns,
    subset_rows,
    subset_task,
)
from ..training import FineTuner, TrainSettings, largest_batch, predict_task
from ..training.batches import planned_rows
from ..training.inference import row_tokens, task_tokens
from .context import Context, model_args, plain, settings_from, setup


def prior_checkpoint(ctx: Context, allow_train: bool = True) -> tuple[Path, bool]:
    """θ0: the given checkpoint, or the cached pretrained one (trained now if missing). → (path, cached).

    A θ0 mixcd pretrains is recorded in the ledger as a one-time artifact, cached or not; a given one's
    pretraining is not mixcd's to know, and is not recorded."""
    path, cached = _prior(ctx, allow_train)
    if not ctx.cfg.prior_model.checkpoint:
        ctx.ledger.need(pretraining_artifact(ctx))
    return path, cached


def _prior(ctx: Context, allow_train: bool) -> tuple[Path, bool]:
    cfg, exp = ctx.cfg, ctx.experiment
    if cfg.prior_model.checkpoint:
        path = Path(cfg.prior_model.checkpoint)
        if not path.is_file():
            raise MixcdError(f"prior_model.checkpoint not found: {path}")
        return path, True
    spec = model_spec(plain(cfg.model))
    heads = {exp.prior_head(): exp.head_sizes()[exp.prior_head()]}
    cache = Path(cfg.paths.cache_dir)
    path = cached_prior_path(cfg, exp)
    key = path.parent.name
    if distributed.world() > 1:
        # θ0 is trained by rank 0 alone (no collectives); the others wait for its outcome, error included,
        # so a failure there cannot leave them blocked.
        outcome: Any = None
        if distributed.rank() == 0:
            try:
                outcome = ("ok", _prior_locked(ctx, cache, key, path, spec, heads, allow_train))
            except MixcdError as exc:
                outcome = ("error", str(exc))
        outcome = distributed.broadcast(outcome)
        if outcome[0] == "error":
            raise MixcdError(outcome[1])
        return outcome[1]
    return _prior_locked(ctx, cache, key, path, spec, heads, allow_train)


def cached_prior_path(cfg: DictConfig, exp: Experiment) -> Path:
    """Where θ0 for this model, training rows (the pool, and a probe), transform, prior head, pretraining and
    numerics (device; CPU threads) lives in the cache (made or not)."""
    key = _evaluated_runs_prior(cfg) or _prior_key(cfg, exp)
    return Path(cfg.paths.cache_dir) / "prior" / key / "model.pt"


def _prior_key(cfg: DictConfig, exp: Experiment) -> str:
    heads = {exp.prior_head(): exp.head_sizes()[exp.prior_head()]}
    arch = {k: v for k, v in plain(cfg.model).items() if k not in FINETUNE_ONLY}  # weights count, bn does not
    # θ0 pretrained with 1 thread differs from one pretrained with 2 (89.98% vs 89.86% on the default experiment):
    # a run must not take the other's for its own
    where = numerics(distributed.planned_device(str(cfg.device)), run_threads(cfg.threads))
    return config_digest({"model": arch, "pool": exp.prior_train.fingerprint(), "transform": exp.transform.describe(),
                          "heads": heads, "pretrain": plain(cfg.pretrain), "numerics": where})


def _evaluated_runs_prior(cfg: DictConfig) -> str | None:
    """`mixcd eval`: the cache key of the θ0 the evaluated run was fine-tuned from, as its metrics.json names it, so
    an evaluation with other threads or another device (which it may choose) reads that θ0; None for another stage,
    a run fine-tuned from a given checkpoint, or a run whose metrics.json does not say."""
    if cfg.stage != "eval" or not cfg.get("run_dir"):
        return None
    try:
        recorded = json.loads((Path(str(cfg.run_dir)) / "metrics.json").read_text()).get("prior_checkpoint")
    except (OSError, ValueError, AttributeError):
        return None
    path = Path(str(recorded)) if recorded else None
    return path.parent.name if path is not None and path.parent.parent.name == "prior" else None


NO_PRIOR = ("no prior model yet for this configuration: run `mixcd pretrain` (same overrides, threads and device "
            "included) or give prior_model.checkpoint=PATH")


def _prior_locked(ctx: Context, cache: Path, key: str, path: Path, spec: dict[str, Any], heads: dict[str, int],
                  allow_train: bool) -> tuple[Path, bool]:
    cfg, exp = ctx.cfg, ctx.experiment
    if not allow_train:  # read, never made: no lock (it would be left behind for a model that does not exist)
        if not path.is_file():
            raise MixcdError(NO_PRIOR)
        return path, True
    with file_lock(cache / "locks" / f"prior-{key}.lock", "paths.cache_dir"):
        if path.is_file():
            return path, True
        torch.manual_seed(derive_seed(int(cfg.pretrain.seed), "prior-init"))
        model = create_model(spec["backbone"], exp.channels, heads, exp.vocab_size, exp.lm, **model_args(cfg))
        settings = pretrain_settings(cfg, exp)
        t0 = time.perf_counter()
        with phase("pretraining of θ0", "the cache holds only finished prior models; rerun to pretrain again"), \
                console.step_progress("pretrain θ0", settings.steps) as progress:
            # always recorded (it costs no pass): snapshot.source=training reads it, whichever run asks later
            loop = FineTuner(model, exp.prior_train, exp.prior_head(), exp.transform, ctx.device, settings, ctx.ledger,
                             telemetry_path=path.parent / "pretrain.jsonl", progress=progress, record=True).run()
        save_model(model, path, spec, {"experiment_pool": exp.prior_train.definition})
        save_columns(prior_record_path(path), loop.record["task"], _record_meta(path, exp))
        ctx.timings["pretrain"] = time.perf_counter() - t0
        return path, False


def prior_record_path(path: Path) -> Path:
    """Where the record of θ0's pretraining (each pool row's last training visit) lies beside θ0 in the cache."""
    return path.parent / "record.pt"


def _record_meta(path: Path, exp: Experiment) -> dict[str, Any]:
    return {"model": file_digest(path), "pool": exp.prior_train.fingerprint()}


def prior_record_problem(cfg: DictConfig, path: Path) -> str | None:
    """Why snapshot.source=training cannot read θ0's pretraining record, or None: a given θ0 was not pretrained by
    mixcd; a cached θ0 pretrained by an earlier mixcd kept no record (this one does not pretrain it again: its
    weights, and every snapshot cached for them, would change under other runs' feet on a GPU)."""
    if cfg.prior_model.checkpoint:
        return (f"snapshot.source=training reads θ0's pool columns from its pretraining, and prior_model.checkpoint="
                f"{cfg.prior_model.checkpoint} was not pretrained by mixcd (no training record); use "
                "snapshot.source=pass, or drop prior_model.checkpoint to let mixcd pretrain θ0")
    if path.is_file() and not prior_record_path(path).with_suffix(".json").is_file():
        return (f"snapshot.source=training reads the record θ0's pretraining keeps beside it, and the cached θ0 "
                f"{path} was pretrained by an earlier mixcd that kept none; delete the folder {path.parent} to "
                "pretrain θ0 again with its record, or use snapshot.source=pass")
    return None


def prior_record(cfg: DictConfig, exp: Experiment, path: Path) -> dict[str, torch.Tensor]:
    """The record of θ0's pretraining over its training rows (`FineTuner` with record=True), verified against θ0."""
    problem = prior_record_problem(cfg, path)
    if problem is not None:
        raise MixcdError(problem)
    return load_columns(prior_record_path(path), len(exp.prior_train), "the training record of θ0",
                        _record_meta(path, exp), f"delete the folder {path.parent} to pretrain θ0 again with its "
                        "record, or use snapshot.source=pass")


def pretrain_settings(cfg: DictConfig, exp: Experiment) -> TrainSettings:
    """How θ0 is pretrained on its training rows (the prior pool, and a probe): `pretrain.epochs` over them in
    batches of `pretrain.batch_size`."""
    pre = cfg.pretrain
    batch = min(int(pre.batch_size), len(exp.prior_train))
    steps = int(pre.epochs) * max(1, len(exp.prior_train) // batch)
    return settings_from(pre, steps, int(pre.seed), "pretrain", int(cfg.eval.batch_size),
                         amp=str(cfg.trainer.amp), log_every=max(1, steps // 10), distributed=False)


def pretraining_artifact(ctx: Context) -> Artifact:
    """θ0's pretraining as a one-time artifact: its rows (and tokens) replayed from its settings' data order,
    exactly what `FineTuner` charges when it trains θ0, so a cached θ0 costs what a fresh one did."""
    exp = ctx.experiment
    settings = pretrain_settings(ctx.cfg, exp)
    per_row = row_tokens(exp.prior_train)
    rows = tokens = 0
    for step_rows in planned_rows(len(exp.prior_train), settings):
        rows += step_rows.numel()
        tokens += 0 if per_row is None else int(per_row[step_rows].sum())
    return Artifact("pretraining", "pretrain", "theta0", 0, one_time=True, forward=rows, backward=rows,
                    forward_tokens=tokens, backward_tokens=tokens)


def load_prior(ctx: Context, path: Path) -> MixcdNet:
    """θ0 from ``path`` on the run's device, refused when it is not this experiment's model and prior head."""
    return prior_model(ctx.cfg, ctx.experiment, path).to(ctx.device)


def prior_model(cfg: DictConfig, exp: Experiment, path: Path, ckpt: dict[str, Any] | None = None) -> MixcdNet:
    """θ0 from ``path`` (on the host; ``ckpt``: its contents if already read), refused when it is not this
    experiment's model and prior head."""
    model, _ = load_model(path, model_spec(plain(cfg.model)), exp.channels, vocab_size=exp.vocab_size, lm=exp.lm,
                          yours=bool(cfg.prior_model.checkpoint), ckpt=ckpt)
    if exp.lm is not None:  # a language model has no heads: its spec (checked on reading) says it all
        return model
    expected = exp.head_sizes()[exp.prior_head()]
    head = model.heads[exp.prior_head()] if exp.prior_head() in model.heads else None
    if head is None or head.out_features != expected:
        have = {n: h.out_features for n, h in model.heads.items()}
        raise MixcdError(f"prior checkpoint {path} has heads {have}, but this experiment's prior head "
                         f"'{exp.prior_head()}' needs {expected} classes")
    return model


def run_pretrain(cfg: DictConfig, run_dir: Path | None = None) -> PretrainResult:
    """`mixcd pretrain`: θ0 (cached, or trained now) and its prior-test accuracy, written to pretrain.json."""
    ctx = setup(cfg, run_dir)
    path, cached = prior_checkpoint(ctx)
    model = load_prior(ctx, path)
    exp = ctx.experiment
    preds = predict_task(model, exp.prior_test, exp.prior_head(), exp.transform, ctx.device,
                         int(cfg.eval.batch_size), ctx.ledger, "eval", str(cfg.trainer.amp))
    result = PretrainResult(checkpoint=str(path), cached=cached, pre_acc0=float(preds.correct.float().mean()),
                            ledger=LedgerSummary.from_dict(ctx.ledger.summary()), wall_time=dict(ctx.timings))
    write_result(result, ctx.run_dir / "pretrain.json")
    console.print_kv("pretrain", {"checkpoint": str(path), "cached": cached,
                                    "prior-test accuracy": f"{result.pre_acc0:.4f}"})
    return result


def snapshot_source(cfg: DictConfig) -> str:
    """snapshot.source: ``pass`` (an eval-mode pass) or ``training`` (the training forwards' record)."""
    return str(cfg.snapshot.get("source", "pass"))


def subset_applies(cfg: DictConfig) -> bool:
    """Whether snapshot.subset restricts this run: set, and the sampler reads the snapshot (a sampler that does not
    draws over the whole pool, and its snapshot only measures, so it scores every row as before)."""
    return cfg.snapshot.get("subset") is not None and sampler_reads_snapshot(cfg)


def stage_pools(cfg: DictConfig, exp: Experiment, k: int) -> tuple[Task, Task]:
    """Stage k's pool, and the part of it the snapshot scores and the sampler draws from: the whole pool, or with
    snapshot.subset (`subset_applies`) a seeded subset of its rows (`snapshot.subset_rows`)."""
    pool = exp.pool_at(k, str(cfg.rehearsal.pool))
    if not subset_applies(cfg):
        return pool, pool
    return pool, subset_task(pool, subset_rows(len(pool), int(cfg.snapshot.subset), int(cfg.seed), k))


def snapshot_for(ctx: Context, path: Path, model: MixcdNet | None = None, k: int = 1, source: str = "pass"
                 ) -> tuple[Snapshot, bool]:
    """Stage k's snapshot: the model in ``path`` (θ(k−1); θ0 for k = 1) over pool k (or its scored subset,
    `stage_pools`) and the test sets seen before stage k, cached by fingerprint (a sweep's runs share each
    distinct one). ``source``: where the sampler's pool columns come from (`snapshot_artifacts`); the pass is
    made (or read) either way, as the truth the run is measured against."""
    cfg, exp = ctx.cfg, ctx.experiment
    model = load_prior(ctx, path) if model is None else model
    (_, pool), tests = stage_pools(cfg, exp, k), exp.tests_before(k)
    t0 = time.perf_counter()
    total = len(pool) + len(tests)
    batch = cfg.snapshot.batch_size
    if batch == "auto":  # the largest batch that fits: inference needs no activations kept
        batch = largest_batch(model, exp.pool, exp.prior_head(), exp.transform, ctx.device, str(cfg.trainer.amp))
    label = "snapshot θ0" if k == 1 else f"snapshot θ{k - 1}"
    with phase("the snapshot", "the cache holds only complete snapshots; rerun to compute it again"), \
            console.count_progress(label, total) as progress:
        snap, cached = get_or_create_snapshot(
            # rows of later tasks are read by their own heads, named in the tasks' fingerprints
            Path(cfg.paths.cache_dir), path, model, pool, tests, exp.prior_head(), exp.transform,
            ctx.device, int(batch), ctx.ledger, str(cfg.trainer.amp),
            Path(cfg.snapshot.path) if cfg.snapshot.path and k == 1 else None, progress)
    for artifact in snapshot_artifacts(pool, tests, k, sampler_reads_snapshot(cfg), source):
        ctx.ledger.need(artifact)
    ctx.timings["snapshot"] = ctx.timings.get("snapshot", 0.0) + time.perf_counter() - t0
    return snap, cached


def sampler_reads_snapshot(cfg: DictConfig) -> bool:
    """Whether the run's sampler, with its options, reads the snapshot's pool columns to choose rows."""
    return SAMPLERS.spec(str(cfg.sampler.name)).needs_snapshot(sampler_options(plain(cfg.sampler)))


def snapshot_artifacts(pool: Task, tests: Task, k: int, needed: bool, source: str = "pass") -> list[Artifact]:
    """Stage k's snapshot as artifacts, one forward a row, known from the sizes whether made or read: the
    pool's part (``needed`` when the sampler reads it; ``pool``: the rows scored, a subset's with snapshot.subset)
    and the test sets' part, which only measures (the report's categories and forgetting) and is never part of
    a sampler's budget. θ0's (k = 1) is one-time, shared by every fine-tuning of θ0; a later stage's is of
    this run's own θ(k−1), and the run's own.

    With ``source="training"`` the sampler's pool columns come from the training forwards already made: its
    ``snapshot`` costs nothing (forward 0, ``source`` training), and the eval-mode pass over the pool, still made
    (or read) as the truth the audit and the fidelity are measured against, is a measure-only artifact of its own."""
    model = f"theta{k - 1}"
    tests_part = Artifact("snapshot of the test sets", "snapshot", model, k, one_time=k == 1, forward=len(tests),
                          forward_tokens=task_tokens(tests), needed=False, source="pass")
    if source == "training":
        return [Artifact("snapshot", "snapshot", model, k, one_time=k == 1, forward=0, needed=needed,
                         source="training"),
                Artifact("snapshot, true pass", "snapshot", model, k, one_time=k == 1, forward=len(pool),
                         forward_tokens=task_tokens(pool), needed=False, source="pass"),
                tests_part]
    return [Artifact("snapshot", "snapshot", model, k, one_time=k == 1, forward=len(pool),
                     forward_tokens=task_tokens(pool), needed=needed, source="pass"),
            tests_part]


def run_snapshot(cfg: DictConfig, run_dir: Path | None = None) -> SnapshotResult:
    """`mixcd snapshot`: θ0's snapshot over the prior pool and test set (cached), summed up in snapshot.json."""
    ctx = setup(cfg, run_dir)
    path, _ = prior_checkpoint(ctx, allow_train=False)
    snap, cached = snapshot_for(ctx, path)
    result = SnapshotResult(snapshot=str(snap.path), cached=cached, pool_size=len(snap.pool),
                            pool_acc0=float(snap.pool.correct.float().mean()),
                            test_acc0=float(snap.test.correct.float().mean()),
                            ledger=LedgerSummary.from_dict(ctx.ledger.summary()))
    write_result(result, ctx.run_dir / "snapshot.json")
    pool, scored = stage_pools(cfg, ctx.experiment, 1)
    size = {"pool size": len(pool)} if scored is pool else {"pool size": len(pool), "rows scored (snapshot.subset)":
                                                             len(scored)}
    console.print_kv("snapshot", {"folder": str(snap.path), "cached": cached, **size,
                                    "pool accuracy θ0" + (" (rows scored)" if scored is not pool else ""):
                                    f"{result.pool_acc0:.4f}",
                                    "prior-test accuracy θ0": f"{result.test_acc0:.4f}"})
    return result


