"""The stages (DESIGN §3), each a function of a composed config: pretrain, snapshot, train, eval.

This is the only module that reads config objects; everything it calls takes plain arguments.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from . import console, distributed
from .artifacts import config_digest, environment_info, file_lock, read_json, write_json
from .data import Experiment, build_experiment
from .errors import Interrupted, MixcdError, phase
from .metrics import Ledger, accuracy, categories, forgetting_metrics, sequence_metrics
from .models import FINETUNE_ONLY, MixcdNet, create_model, load_model, model_spec, save_model
from .runtime import derive_seed, peak_memory_mb, resolve_device
from .samplers import create_sampler
from .schema import flatten
from .snapshot import Snapshot, cluster_column, get_or_create_snapshot
from .training import FineTuner, Rehearsal, TrainSettings, largest_batch, predict_task
from .training.finetuner import COUNTERS, signal_quality

SAMPLER_META_KEYS = ("name", "mix_ratio")
log = logging.getLogger(__name__)


def plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig | ListConfig) else node


def validate_config(cfg: DictConfig) -> None:
    """Everything checkable before work starts: the schema's types, ranges and cross-field rules."""
    from .schema import validate

    validate(cfg)


def run_dir_of(cfg: DictConfig, run_dir: Path | None = None) -> Path:
    """The run folder: given (tests, library use), Hydra's, or a fresh time-stamped one."""
    from hydra.core.hydra_config import HydraConfig

    if run_dir is not None:
        return Path(run_dir)
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(cfg.paths.output_dir) / "runs" / cfg.stage / time.strftime("%Y-%m-%d_%H-%M-%S")


@dataclass
class Context:
    cfg: DictConfig
    run_dir: Path
    device: torch.device
    experiment: Experiment
    ledger: Ledger
    timings: dict[str, float]
    resume: bool = False  # train: continue the unfinished run in run_dir


def _comparable(cfg_yaml: str) -> dict[str, Any]:
    data = OmegaConf.to_container(OmegaConf.create(cfg_yaml)) or {}
    data.pop("resume", None)
    return data


def setup(cfg: DictConfig, run_dir: Path | None = None) -> Context:
    """Validate, pick the device, fix the run folder (shared by all ranks), write config and environment, load data."""
    validate_config(cfg)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    device = distributed.init_from_env(str(cfg.device)) or resolve_device(str(cfg.device))
    # Under torchrun every rank must use rank 0's folder (Hydra's timestamp differs per process).
    run_dir = Path(distributed.broadcast(str(run_dir_of(cfg, run_dir))))
    text = OmegaConf.to_yaml(cfg, resolve=True)
    if distributed.rank() != 0:
        exp = experiment_of(cfg)
        place_data(exp, device, cfg.trainer.get("data_on_device", "auto"))
        return Context(cfg, run_dir, device, exp, Ledger(), {})
    previous = run_dir / "config.yaml"
    if cfg.stage == "train" and (run_dir / "metrics.json").is_file():
        raise MixcdError(f"{run_dir} already holds a finished run; choose another hydra.run.dir")
    if (run_dir / "checkpoints" / "last.pt").is_file() and previous.is_file() and cfg.stage == "train":
        if _comparable(previous.read_text()) != _comparable(text):
            raise MixcdError(f"{run_dir} holds an unfinished run made with a different configuration; "
                             "rerun with its original overrides, or choose another hydra.run.dir")
    resume = resume_decision(cfg.resume, run_dir, run_dir / "checkpoints" / "last.pt") if cfg.stage == "train" \
        else False
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        from .artifacts import _write_error

        raise _write_error(run_dir, exc) from exc
    from .artifacts import atomic_path

    with atomic_path(previous) as tmp:
        tmp.write_text(text)
    write_json(environment_info(), run_dir / "env.json")
    log.info("mixcd %s in %s on %s (world size %d)", cfg.stage, run_dir, device, distributed.world())
    t0 = time.perf_counter()
    with phase("data loading", f"only the configuration was written ({run_dir})"):
        exp = experiment_of(cfg)
        place_data(exp, device, cfg.trainer.get("data_on_device", "auto"))
    return Context(cfg, run_dir, device, exp, Ledger(), {"data": time.perf_counter() - t0}, resume)


def experiment_of(cfg: DictConfig) -> Experiment:
    """The prior task and the stages of ``cfg`` (``finetune`` alone when it lists no ``stages``)."""
    stages = plain(cfg.stages) if cfg.get("stages") is not None else None
    exp = build_experiment(plain(cfg.prior), plain(cfg.finetune), str(cfg.head), str(cfg.paths.data_dir),
                           cfg.image_size, stages)
    model = plain(cfg.model)
    if exp.text != (model["backbone"] == "hf"):
        raise MixcdError("text tasks need a text model (model=hf)" if exp.text else
                         f"model={model['backbone']} reads images; model=hf reads text tasks only")
    if exp.text:
        from .text import encode_experiment, model_position_limit

        encode_experiment(exp, model.get("name"), model.get("tokenizer"), int(model["max_length"]),
                          model_position_limit(model.get("name"), model.get("config")), Path(cfg.paths.cache_dir),
                          bool(model.get("lowercase", True)))
    return exp


def place_data(exp: Experiment, device: torch.device, mode: Any) -> None:
    """On a GPU, keep in-memory datasets there when they fit in a quarter of free memory (mode auto).

    The experiment's tasks are pointed at device copies; the memoised host sources stay untouched.
    """
    if device.type != "cuda" or mode is False:
        return
    tasks = exp.tasks()
    sources = {id(t.source): t.source for t in tasks}
    arrays = {key: s for key, s in sources.items() if hasattr(s, "on_device")}
    need = sum(s.data.numel() * s.data.element_size() for s in arrays.values())
    free, _ = torch.cuda.mem_get_info(device)
    if mode is True or need < free / 4:
        moved = {key: s.on_device(device) for key, s in arrays.items()}
        for t in tasks:
            t.source = moved.get(id(t.source), t.source)


def model_args(cfg: DictConfig) -> dict[str, Any]:
    return {k: v for k, v in plain(cfg.model).items() if k not in ("backbone", *FINETUNE_ONLY)}


def settings_from(node: DictConfig, steps: int, seed: int, purpose: str, eval_batch: int,
                  rehearsal_batch: int = 0, **extra: Any) -> TrainSettings:
    return TrainSettings(steps=steps, batch_size=int(node.batch_size), rehearsal_batch=rehearsal_batch,
                         optimizer=str(node.optimizer), lr=float(node.lr), momentum=float(node.momentum),
                         weight_decay=float(node.weight_decay), schedule=str(node.schedule),
                         warmup_steps=int(node.warmup_steps), seed=seed, eval_batch_size=eval_batch,
                         purpose=purpose, **extra)


# ------------------------------------------------------------------------------------ pretrain


def prior_checkpoint(ctx: Context, allow_train: bool = True) -> tuple[Path, bool]:
    """θ0: the given checkpoint, or the cached pretrained one (trained now if missing). → (path, cached)."""
    cfg, exp = ctx.cfg, ctx.experiment
    if cfg.prior_model.checkpoint:
        path = Path(cfg.prior_model.checkpoint)
        if not path.is_file():
            raise MixcdError(f"prior_model.checkpoint not found: {path}")
        return path, True
    spec = model_spec(plain(cfg.model))
    heads = {exp.prior_head(): exp.head_sizes()[exp.prior_head()]}
    arch = {k: v for k, v in plain(cfg.model).items() if k not in FINETUNE_ONLY}  # weights count, bn does not
    key = config_digest({"model": arch, "pool": exp.pool.fingerprint(),
                         "transform": exp.transform.describe(), "heads": heads, "pretrain": plain(cfg.pretrain)})
    cache = Path(cfg.paths.cache_dir)
    path = cache / "prior" / key / "model.pt"
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


def _prior_locked(ctx: Context, cache: Path, key: str, path: Path, spec: dict[str, Any], heads: dict[str, int],
                  allow_train: bool) -> tuple[Path, bool]:
    cfg, exp = ctx.cfg, ctx.experiment
    with file_lock(cache / "locks" / f"prior-{key}.lock"):
        if path.is_file():
            return path, True
        if not allow_train:
            raise MixcdError("no prior model yet for this configuration: run `mixcd pretrain` (same overrides) "
                             "or give prior_model.checkpoint=PATH")
        pre = cfg.pretrain
        torch.manual_seed(derive_seed(int(pre.seed), "prior-init"))
        model = create_model(spec["backbone"], exp.channels, heads, exp.vocab_size, **model_args(cfg))
        batch = min(int(pre.batch_size), len(exp.pool))
        steps = int(pre.epochs) * max(1, len(exp.pool) // batch)
        settings = settings_from(pre, steps, int(pre.seed), "pretrain", int(cfg.eval.batch_size),
                                 amp=str(cfg.trainer.amp), log_every=max(1, steps // 10), distributed=False)
        t0 = time.perf_counter()
        with phase("pretraining of θ0", "the cache holds only finished prior models; rerun to pretrain again"), \
                console.step_progress("pretrain θ0", steps) as progress:
            FineTuner(model, exp.pool, exp.prior_head(), exp.transform, ctx.device, settings, ctx.ledger,
                      telemetry_path=path.parent / "pretrain.jsonl", progress=progress).run()
        save_model(model, path, spec, {"experiment_pool": exp.pool.definition})
        ctx.timings["pretrain"] = time.perf_counter() - t0
        return path, False


def load_prior(ctx: Context, path: Path) -> MixcdNet:
    exp = ctx.experiment
    model, _ = load_model(path, model_spec(plain(ctx.cfg.model)), exp.channels, vocab_size=exp.vocab_size,
                          yours=bool(ctx.cfg.prior_model.checkpoint))
    expected = exp.head_sizes()[exp.prior_head()]
    head = model.heads[exp.prior_head()] if exp.prior_head() in model.heads else None
    if head is None or head.out_features != expected:
        have = {n: h.out_features for n, h in model.heads.items()}
        raise MixcdError(f"prior checkpoint {path} has heads {have}, but this experiment's prior head "
                         f"'{exp.prior_head()}' needs {expected} classes")
    return model.to(ctx.device)


def run_pretrain(cfg: DictConfig, run_dir: Path | None = None) -> dict[str, Any]:
    ctx = setup(cfg, run_dir)
    path, cached = prior_checkpoint(ctx)
    model = load_prior(ctx, path)
    exp = ctx.experiment
    preds = predict_task(model, exp.prior_test, exp.prior_head(), exp.transform, ctx.device,
                         int(cfg.eval.batch_size), ctx.ledger, "eval", str(cfg.trainer.amp))
    result = {"stage": "pretrain", "checkpoint": str(path), "cached": cached,
              "pre_acc0": float(preds.correct.float().mean()), "ledger": ctx.ledger.summary(),
              "wall_time": ctx.timings}
    write_json(result, ctx.run_dir / "pretrain.json")
    console.print_kv("pretrain", {"checkpoint": str(path), "cached": cached,
                                    "prior-test accuracy": f"{result['pre_acc0']:.4f}"})
    return result


# ------------------------------------------------------------------------------------ snapshot


def snapshot_for(ctx: Context, path: Path, model: MixcdNet | None = None, k: int = 1) -> tuple[Snapshot, bool]:
    """Stage k's snapshot: the model in ``path`` (θ(k−1); θ0 for k = 1) over pool k and the test sets seen
    before stage k, cached by fingerprint (a sweep's runs share each distinct one)."""
    cfg, exp = ctx.cfg, ctx.experiment
    model = load_prior(ctx, path) if model is None else model
    pool, tests = exp.pool_at(k, str(cfg.rehearsal.pool)), exp.tests_before(k)
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
    ctx.timings["snapshot"] = ctx.timings.get("snapshot", 0.0) + time.perf_counter() - t0
    return snap, cached


def run_snapshot(cfg: DictConfig, run_dir: Path | None = None) -> dict[str, Any]:
    ctx = setup(cfg, run_dir)
    path, _ = prior_checkpoint(ctx, allow_train=False)
    snap, cached = snapshot_for(ctx, path)
    result = {"stage": "snapshot", "snapshot": str(snap.path), "cached": cached, "pool_size": len(snap.pool),
              "pool_acc0": float(snap.pool.correct.float().mean()),
              "test_acc0": float(snap.test.correct.float().mean()),
              "ledger": ctx.ledger.summary()}
    write_json(result, ctx.run_dir / "snapshot.json")
    console.print_kv("snapshot", {"folder": str(snap.path), "cached": cached, "pool size": len(snap.pool),
                                    "pool accuracy θ0": f"{result['pool_acc0']:.4f}",
                                    "prior-test accuracy θ0": f"{result['test_acc0']:.4f}"})
    return result


# ------------------------------------------------------------------------------------ fine-tune + eval


def accuracy_row(ctx: Context, model: MixcdNet, k: int) -> list[torch.Tensor]:
    """Per-sample correctness on the test set of every task seen up to stage k: the prior task, stages 1..k."""
    cfg, exp = ctx.cfg, ctx.experiment
    bs, amp = int(cfg.eval.batch_size), str(cfg.trainer.amp)
    tasks = [(exp.prior_test, exp.prior_head())] + [(s.test, s.head) for s in exp.stages[:k]]
    return [predict_task(model, task, head, exp.transform, ctx.device, bs, ctx.ledger, "eval", amp).correct
            for task, head in tasks]


def evaluate(ctx: Context, model: MixcdNet, snap0: Snapshot, row: list[torch.Tensor] | None = None
             ) -> dict[str, Any]:
    """The final model against θ0 (``snap0``: stage 1's snapshot): prior-task accuracy before and after,
    forgetting, the last stage's accuracy, the four categories; ``row``: the final accuracy row if known."""
    cfg, exp = ctx.cfg, ctx.experiment
    t0 = time.perf_counter()
    row = accuracy_row(ctx, model, len(exp.stages)) if row is None else row
    out = forgetting_metrics(snap0.test.correct, row[0], row[-1], exp.prior_test.targets)
    if cfg.eval.on_pool:
        preds = predict_task(model, exp.pool, exp.prior_head(), exp.transform, ctx.device, int(cfg.eval.batch_size),
                             ctx.ledger, "eval", str(cfg.trainer.amp))
        out["pool_categories"] = categories(snap0.pool.correct, preds.correct, exp.pool.targets)
    ctx.timings["eval"] = ctx.timings.get("eval", 0.0) + time.perf_counter() - t0
    return out


def resume_decision(mode: Any, run_dir: Path, checkpoint: Path) -> bool:
    """auto: continue when the folder holds an unfinished run; true: must continue; false: must be fresh."""
    if (run_dir / "metrics.json").is_file():
        raise MixcdError(f"{run_dir} already holds a finished run; choose another hydra.run.dir")
    has = checkpoint.is_file()
    if mode is True and not has:
        raise MixcdError(f"resume=true but {checkpoint} does not exist; drop resume to start a new run")
    if mode is False and has:
        raise MixcdError(f"{run_dir} holds an unfinished run (checkpoint {checkpoint}); resume=auto continues "
                         "it, or choose another hydra.run.dir")
    return has


def stage_settings(cfg: DictConfig, k: int, overrides: dict[str, Any], telemetry_start: int) -> TrainSettings:
    """Stage k's training settings: the trainer's, less what the stage overrides (steps, lr, mix_ratio).

    Stage 1 draws from exactly the seeds a single fine-tuning always did, so a one-stage sequence is
    today's run; later stages derive their own.
    """
    t, seed = cfg.trainer, int(cfg.seed)
    ratio = float(overrides.get("mix_ratio", t.mix_ratio))
    b = 0 if cfg.sampler.name == "none" else int(round(ratio * int(t.batch_size)))
    stage_seed = seed if k == 1 else derive_seed(seed, f"stage{k}")
    settings = settings_from(t, int(overrides.get("steps", t.steps)), stage_seed, "finetune",
                             int(cfg.eval.batch_size), rehearsal_batch=b,
                             rehearsal_weight=float(t.rehearsal_weight), log_every=int(t.log_every),
                             audit_every=int(t.audit_every), checkpoint_every=int(t.checkpoint_every),
                             amp=str(t.amp), channels_last=bool(t.channels_last), compile=bool(t.get("compile", False)),
                             stage=k, telemetry_start=telemetry_start)
    if "lr" in overrides:
        settings.lr = float(overrides["lr"])
    return settings


def checkpoint_stage(path: Path) -> int | None:
    """The stage a training checkpoint belongs to (1 for one written before sequences existed); None if absent."""
    if not path.is_file():
        return None
    from .artifacts import safe_torch_load

    checkpoint = safe_torch_load(path, what="training checkpoint")
    return int(checkpoint.get("stage") or 1) if isinstance(checkpoint, dict) else None


def _seed_tag(name: str, k: int) -> str:
    return name if k == 1 else f"{name}-stage{k}"


@dataclass
class StageOutcome:
    """What one stage leaves: its record (metrics.json's ``stages`` entry) and its accuracy row."""

    record: dict[str, Any]
    row: list[torch.Tensor]
    loop: Any
    sampler: Any


def train_stage(ctx: Context, k: int, snap: Snapshot, snap_cached: bool, model: MixcdNet,
                resume: bool, telemetry_start: int, theta0_correct: torch.Tensor,
                on_log: Any = None) -> StageOutcome:
    """Fine-tune θ(k−1) (``model``; ``snap``: its snapshot) on stage k with rehearsal from pool k, then
    evaluate on every task seen so far. ``theta0_correct``: θ0 on the prior test set, for the record."""
    cfg, exp, run_dir = ctx.cfg, ctx.experiment, ctx.run_dir
    stage, seed, last = exp.stages[k - 1], int(cfg.seed), k == len(exp.stages)
    pool = exp.pool_at(k, str(cfg.rehearsal.pool))
    if cfg.model.get("bn") == "frozen" and model.freeze_batchnorm() == 0 and distributed.rank() == 0 and k == 1:
        console.note(f"model.bn=frozen: {cfg.model.get('name')} has no BatchNorm layers; nothing to freeze")
    if exp.head == "multi":
        torch.manual_seed(derive_seed(seed, _seed_tag("ft-head", k)))
        model.add_head(stage.head, exp.head_sizes()[stage.head])
    torch.manual_seed(derive_seed(seed, _seed_tag("finetune", k)))
    settings = stage_settings(cfg, k, stage.trainer, telemetry_start)
    options = {key: v for key, v in plain(cfg.sampler).items() if key not in SAMPLER_META_KEYS}
    # Each rank draws its own rows from the shared distribution: one generator per rank.
    tag = _seed_tag("sampler", k) if distributed.world() == 1 else f"sampler-rank{distributed.rank()}"
    info = snap.pool_info(pool)
    batch = settings.eval_batch_size
    # θ(k−1) is the snapshot's model: its features give partition=kmeans, computed once per snapshot
    info.clusters = lambda n, s: cluster_column(snap.path, model, pool, exp.transform, ctx.device, batch,
                                                ctx.ledger, str(cfg.trainer.amp), n, s)
    sampler = create_sampler(str(cfg.sampler.name), info, settings.rehearsal_batch, derive_seed(seed, tag),
                             **options)
    if distributed.rank() == 0:
        for message in sampler.notes:
            console.note(message)
    checkpoint = run_dir / "checkpoints" / "last.pt"
    t0 = time.perf_counter()
    kept = f"the checkpoint {checkpoint} is kept; rerun the same command to resume" if resume else \
        "no checkpoint of this stage was written yet" + ("" if k == 1 else "; rerun the same command to resume "
                                                         "from the stages already done")
    what = f"fine-tune [{cfg.sampler.name}]" + ("" if len(exp.stages) == 1 else f" stage {k}/{len(exp.stages)}")
    with phase("fine-tuning (second Ctrl-C: stopped at once)", kept), \
            console.step_progress(what, settings.steps) as progress:
        rehearsal = Rehearsal(sampler, pool, exp.prior_head(), snap.pool.correct.bool())
        loop = FineTuner(model, stage.train, stage.head, exp.transform, ctx.device, settings, ctx.ledger,
                         rehearsal, telemetry_path=run_dir / "metrics.jsonl", checkpoint_path=checkpoint,
                         progress=progress, on_log=on_log).run(resume)
    wall = loop.wall_time if loop.resumed_from is None else time.perf_counter() - t0
    ctx.timings["finetune"] = ctx.timings.get("finetune", 0.0) + wall
    if last:
        distributed.all_reduce_ledger(ctx.ledger)
    if distributed.rank() != 0:
        return StageOutcome({}, [], loop, sampler)
    t1 = time.perf_counter()
    with phase("evaluation", f"{checkpoint.name} is kept; rerun the same command to evaluate it"):
        row = accuracy_row(ctx, model, k)
    ctx.timings["eval"] = ctx.timings.get("eval", 0.0) + time.perf_counter() - t1
    telemetry = run_dir / "metrics.jsonl"
    sources = pool.columns.get("source")
    record = {
        "stage": k, "name": stage.name, "steps": settings.steps, "lr": settings.lr,
        "mix_ratio": settings.rehearsal_batch / settings.batch_size, "rehearsal_batch": settings.rehearsal_batch,
        "pool": {"size": len(pool), "by_source": {str(i): int(n) for i, n in enumerate(torch.bincount(sources))}
                 if sources is not None else {"0": len(pool)}},
        "accuracy": [accuracy(c) for c in row],
        # against θ(k−1) on every test set seen before this stage, and against θ0 on the prior task's
        # (per-class rates only where labels mean one thing: several tasks may share label numbers)
        "categories_vs_previous": categories(snap.test.correct, torch.cat(row[:k]),
                                             exp.prior_test.targets if k == 1 else None),
        "categories_vs_theta0": categories(theta0_correct, row[0], exp.prior_test.targets),
        **loop.quality(), "rehearsal_counts": loop.counts, "final_loss": loop.final_loss,
        "ledger": ctx.ledger.summary(), "ledger_state": ctx.ledger.state_dict(),
        "snapshot": str(snap.path), "snapshot_cached": snap_cached, "resumed_from": loop.resumed_from,
        "sampler_final": sampler.telemetry(), "sampler_notes": sampler.notes,
        "telemetry_end": telemetry.stat().st_size if telemetry.is_file() else 0, "wall_time": wall,
    }
    return StageOutcome(record, row, loop, sampler)


def _stage_files(run_dir: Path, k: int) -> tuple[Path, Path]:
    return run_dir / "stages" / f"stage{k}.json", run_dir / "stages" / f"model{k}.pt"


def run_train(cfg: DictConfig, run_dir: Path | None = None) -> dict[str, Any]:
    """Fine-tune θ0 through every stage of the sequence (one stage: a single fine-tuning), with rehearsal,
    evaluating after each stage on every task seen so far; resumable at any point of any stage."""
    t_start = time.perf_counter()
    ctx = setup(cfg, run_dir)
    tracking = start_tracking(ctx)
    try:
        result = _train(ctx, t_start, tracking)
    except BaseException as exc:
        if tracking is not None:
            interrupted = isinstance(exc, KeyboardInterrupt | Interrupted)
            tracking.close("KILLED" if interrupted else "FAILED")
        raise
    if tracking is not None:
        tracking.finish(result, [ctx.run_dir / "metrics.json"])  # config.yaml went with the config at the start
    return result


def start_tracking(ctx: Context) -> Any:
    """The run's trackers (logger=[...]) on rank 0, with the resolved config logged; None when none are chosen."""
    from . import tracking

    cfg = ctx.cfg
    if not cfg.get("logger") or distributed.rank() != 0:
        return None
    run = tracking.identity_from_hydra(ctx.run_dir, str(cfg.experiment_name), ctx.resume)
    started = tracking.start(plain(cfg.logger), run, Path(cfg.paths.cache_dir) / "locks")
    started.log_config(plain(cfg), OmegaConf.to_yaml(cfg, resolve=True))
    return started


def _train(ctx: Context, t_start: float, tracking: Any) -> dict[str, Any]:
    cfg = ctx.cfg
    exp, run_dir = ctx.experiment, ctx.run_dir
    prior_path, prior_cached = prior_checkpoint(ctx)
    model = load_prior(ctx, prior_path)
    snap0, snap0_cached = snapshot_for(ctx, prior_path, model, 1)
    checkpoint = run_dir / "checkpoints" / "last.pt"
    resume = distributed.broadcast(ctx.resume if distributed.rank() == 0 else None)
    if resume and distributed.rank() == 0:
        console.note(f"resuming from {checkpoint}")
    at_stage = checkpoint_stage(checkpoint) if resume else None
    spec = model_spec(plain(cfg.model))
    n = len(exp.stages)
    records: list[dict[str, Any]] = []
    theta0_correct = snap0.test.correct.bool()  # row 0 of the accuracy matrix: θ0 on the prior task
    model_path, outcome, telemetry_start = prior_path, None, 0
    for k in range(1, n + 1):
        record_path, model_file = _stage_files(run_dir, k)
        if k < n and record_path.is_file() and model_file.is_file():  # done before an interruption
            records.append(read_json(record_path, "stage record"))
            model_path, telemetry_start = model_file, int(records[-1]["telemetry_end"])
            ctx.ledger.load_state_dict(records[-1]["ledger_state"])
            continue
        if k > 1:
            model, _ = load_model(model_path, spec, exp.channels, vocab_size=exp.vocab_size)
            model.to(ctx.device)
            snap, snap_cached = snapshot_for(ctx, model_path, model, k)
        else:
            snap, snap_cached = snap0, snap0_cached
        on_log = tracking.interval_logger(k, n, sum(int(r["steps"]) for r in records)) if tracking else None
        outcome = train_stage(ctx, k, snap, snap_cached, model, bool(at_stage == k), telemetry_start,
                              theta0_correct, on_log)
        if distributed.rank() != 0:
            if k == n:
                return {}
            continue
        records.append(outcome.record)
        if k < n:  # θk is the next stage's starting point and its snapshot's fingerprint
            save_model(model, model_file, spec, {"stage": k})
            write_json(outcome.record, record_path)
            model_path, telemetry_start = model_file, int(outcome.record["telemetry_end"])
    save_model(model, run_dir / "model.pt", spec,
               {"heads_of": {"prior": exp.prior_head(), "finetune": exp.ft_head(),
                             **{f"stage{k}": s.head for k, s in enumerate(exp.stages, 1)}}})
    with phase("evaluation", f"the fine-tuned model and {checkpoint.name} are kept; rerun the same command "
                             "to evaluate them"):
        metrics = evaluate(ctx, model, snap0, outcome.row)
    ctx.timings["total"] = time.perf_counter() - t_start
    loop = outcome.loop
    counts = {key: sum(int(r["rehearsal_counts"][key]) for r in records) for key in COUNTERS}
    # each stage's record holds its row of accuracies; the last stage's record is this run's own
    matrix = [[accuracy(theta0_correct)] + [None] * n] + [r["accuracy"] + [None] * (n - k)
                                                           for k, r in enumerate(records, 1)]
    result = {
        "stage": "train", "experiment": str(cfg.experiment_name), "sampler": str(cfg.sampler.name),
        "mix_ratio": float(cfg.trainer.mix_ratio) if records[0]["rehearsal_batch"] else 0.0, "seed": int(cfg.seed),
        "steps": sum(r["steps"] for r in records), "batch_size": int(cfg.trainer.batch_size),
        "rehearsal_batch": records[0]["rehearsal_batch"], **metrics,
        **signal_quality(counts), "rehearsal_counts": counts,
        "final_loss": loop.final_loss, "ledger": ctx.ledger.summary(), "wall_time": ctx.timings,
        "peak_memory_mb": peak_memory_mb(ctx.device), "device": str(ctx.device), "world_size": distributed.world(),
        "prior_checkpoint": str(prior_path), "snapshot": str(snap0.path),
        "cached": {"prior": prior_cached, "snapshot": snap0_cached},
        "resumed_from": loop.resumed_from if n == 1 else next(
            ({"stage": r["stage"], "step": r["resumed_from"]} for r in records if r["resumed_from"] is not None), None),
        "sampler_final": outcome.sampler.telemetry(),
        "sampler_notes": list(dict.fromkeys(m for r in records for m in r["sampler_notes"])),
        "num_stages": n, "stage_names": [s.name for s in exp.stages], "rehearsal_pool": str(cfg.rehearsal.pool),
        "accuracy_matrix": matrix, **sequence_metrics(matrix),
        "stages": [{k: v for k, v in r.items() if k != "ledger_state"} | {"ledger_delta": _delta(records, i)}
                   for i, r in enumerate(records)],
    }
    write_json(result, run_dir / "metrics.json")
    console.print_run(result, run_dir)
    return result


def _delta(records: list[dict[str, Any]], i: int) -> dict[str, Any]:
    """What stage i spent, from the cumulative ledgers of it and the stage before."""
    now, before = records[i]["ledger"], records[i - 1]["ledger"] if i else None
    out: dict[str, Any] = {}
    for direction in ("forward", "backward"):
        out[direction] = {p: now[direction][p] - (before[direction][p] if before else 0) for p in now[direction]}
    out["training_passes"] = now["training_passes"] - (before["training_passes"] if before else 0)
    out["rehearsal_budget"] = now["rehearsal_budget"] - (before["rehearsal_budget"] if before else 0)
    return out


# What `mixcd eval` may change of the configuration a run was trained with: how and where it
# evaluates, never what was trained or on which data.
EVAL_ONLY = ("eval", "device", "threads", "paths", "snapshot.batch_size", "trainer.amp", "run_dir", "stage", "resume",
             "hydra")


def _eval_only(path: str) -> bool:
    return any(path == key or path.startswith(key + ".") for key in EVAL_ONLY)


# A group choice on `mixcd eval`'s command line is checked by the node it fills (experiment: by name).
GROUP_NODES = {"experiment": "experiment_name", "sampler": "sampler", "model": "model", "trainer": "trainer",
               "pretrain": "pretrain", "task@prior": "prior", "task@finetune": "finetune"}


def check_finished_run(source: Path) -> None:
    """``source`` must be a folder written by a finished `mixcd train` (model.pt and config.yaml)."""
    if not source.is_dir():
        raise MixcdError(f"run_dir={source} does not exist")
    if not (source / "model.pt").is_file() or not (source / "config.yaml").is_file():
        raise MixcdError(f"{source} holds no finished `mixcd train` run (model.pt and config.yaml)")


def eval_config(cfg: DictConfig, source: Path, overrides: list[str]) -> DictConfig:
    """The configuration ``source`` was trained with, plus what only changes evaluation.

    An override that would evaluate something else (another experiment, other classes, another
    model) is refused, naming the first key that differs from the run's own configuration.
    """
    check_finished_run(source)
    trained = OmegaConf.load(source / "config.yaml")
    if trained.get("stage") != "train":
        raise MixcdError(f"{source} was written by `mixcd {trained.get('stage')}`, not `mixcd train`")
    from .schema import INTRODUCED

    for key, value in INTRODUCED.items():  # a run made before a setting existed ran as its "as before" value
        if OmegaConf.select(trained, key, default="__missing__") == "__missing__":
            OmegaConf.update(trained, key, value, force_add=True)
    given, have = flatten(plain(cfg)), flatten(plain(trained))
    named = [o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o]
    plain_keys = {k for k in named if k not in GROUP_NODES}
    checked: set[str] = set()
    for key in named:
        node = GROUP_NODES.get(key, key)
        # a group's node, less what is overridden key by key (checked on its own)
        checked |= {k for k in given if (k == node or k.startswith(node + ".")) and (key in plain_keys
                                                                                     or k not in plain_keys)}
    for key in sorted(checked):
        if not _eval_only(key) and given.get(key) != have.get(key):
            raise MixcdError(f"mixcd eval uses the configuration {source} was trained with, and {key}="
                             f"{given.get(key)!r} differs from it ({have.get(key)!r}); drop that override "
                             "(only eval.*, device, threads, paths.*, snapshot.batch_size, trainer.amp may change)")
    OmegaConf.set_struct(trained, False)
    for key in sorted(checked):
        if _eval_only(key) and not key.startswith("hydra") and key in given:
            OmegaConf.update(trained, key, given[key], force_add=True)
    trained.stage, trained.run_dir = "eval", str(source)
    return trained


def run_eval(cfg: DictConfig, run_dir: Path | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Evaluate a finished fine-tune run with the configuration it was trained with; write a folder of its own."""
    if not cfg.get("run_dir"):
        raise MixcdError("mixcd eval needs run_dir=PATH (a folder written by `mixcd train`)")
    source = Path(str(cfg.run_dir)).resolve()
    check_finished_run(source)
    if overrides is None:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    target = run_dir_of(cfg, run_dir)
    if target.resolve() == source:
        raise MixcdError(f"mixcd eval writes a folder of its own and never into the run it evaluates ({source}); "
                         "drop hydra.run.dir or choose another folder")
    cfg = eval_config(cfg, source, overrides)
    ctx = setup(cfg, target)
    prior_path, _ = prior_checkpoint(ctx, allow_train=False)
    snap, _ = snapshot_for(ctx, prior_path)
    model, _ = load_model(source / "model.pt", model_spec(plain(cfg.model)), ctx.experiment.channels,
                          vocab_size=ctx.experiment.vocab_size)
    model.to(ctx.device)
    with phase("evaluation", "nothing of this evaluation was written; rerun to evaluate again"):
        metrics = evaluate(ctx, model, snap)
    trained = read_json(source / "metrics.json", "run metrics") if (source / "metrics.json").is_file() else {}
    result = {"stage": "eval", "run_dir": str(source), **{k: trained.get(k) for k in (
        "experiment", "sampler", "mix_ratio", "seed", "hit_rate", "signal_rate", "signal_precision",
        "signal_recall", "ledger")}, **metrics,
              "wall_time": ctx.timings}
    write_json(result, ctx.run_dir / "metrics.json")
    console.print_run(result, ctx.run_dir)
    return result


STAGES = {"pretrain": run_pretrain, "snapshot": run_snapshot, "train": run_train, "eval": run_eval}
