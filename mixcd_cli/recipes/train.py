"""The fine-tuning recipe: θ0 through every stage of the sequence with a rehearsal sampler, then evaluation.

A single fine-tuning is a sequence of one stage: one code path. Each stage k fine-tunes θ(k−1) on its
task, drawing rehearsal rows from pool k by the snapshot of θ(k−1) over it, and is evaluated on every
task seen so far (one row of the accuracy matrix). Resumable at any step of any stage.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from .. import console, distributed, tracking
from ..api import create_sampler
from ..artifacts import read_json, safe_torch_load, write_json
from ..data import Stage, Task
from ..errors import Interrupted, phase
from ..metrics import Artifact, Ledger, categories
from ..models import MixcdNet, load_model, model_spec, save_model
from ..results import RunResult, StageRecord, write_result
from ..runtime import derive_seed
from ..samplers import RehearsalSampler, rehearsal_batch, sampler_options
from ..snapshot import (
    Snapshot,
    TrainingColumns,
    cluster_column,
    fidelity,
    load_columns,
    merge_visits,
    row_ids,
    save_columns,
    stage_row_ids,
    training_columns,
)
from ..training import FineTuner, Rehearsal, TrainSettings
from ..training.finetuner import LoopResult
from ..training.inference import task_tokens
from .assemble import run_result, stage_record
from .context import Context, plain, settings_from, setup
from .evaluate import accuracy_row, decoded_row, evaluate, heldout_scores
from .prior import (
    load_prior,
    prior_checkpoint,
    prior_record,
    snapshot_for,
    snapshot_source,
    stage_pools,
    subset_applies,
)


def run_train(cfg: DictConfig, run_dir: Path | None = None) -> RunResult | None:
    """Fine-tune θ0 through every stage of the sequence (one stage: a single fine-tuning), with rehearsal,
    evaluating after each stage on every task seen so far; resumable at any point of any stage. The result
    (None on ranks other than 0 of a multi-process run) is also written to the run folder's metrics.json."""
    t_start = time.perf_counter()
    ctx = setup(cfg, run_dir)
    tracking = start_tracking(ctx)
    try:
        result = Sequence(ctx, tracking).run(t_start)
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
    cfg = ctx.cfg
    if not cfg.get("logger") or distributed.rank() != 0:
        return None
    run = tracking.identity_from_hydra(ctx.run_dir, str(cfg.experiment_name), ctx.resume)
    started = tracking.start(plain(cfg.logger), run, Path(cfg.paths.cache_dir) / "locks")
    started.log_config(plain(cfg), OmegaConf.to_yaml(cfg, resolve=True))
    return started


@dataclass
class StageOutcome:
    """What one stage leaves: its record (metrics.json's ``stages`` entry) and its accuracy row."""

    record: StageRecord | None  # None on ranks other than 0, which do not evaluate
    row: list[torch.Tensor]
    loop: LoopResult | None
    sampler: RehearsalSampler | None


class Sequence:
    """The stage loop of one `mixcd train` run: stages done before an interruption are read back, the rest
    trained; θk is saved between stages as the next stage's starting point and its snapshot's fingerprint."""

    def __init__(self, ctx: Context, tracking: Any) -> None:
        self.ctx, self.tracking = ctx, tracking
        self.checkpoint = ctx.run_dir / "checkpoints" / "last.pt"
        self.records: list[StageRecord] = []

    def run(self, t_start: float) -> RunResult | None:
        """Every stage, then the final evaluation against θ0; the run's result (empty on ranks other than 0)."""
        ctx, exp = self.ctx, self.ctx.experiment
        source = snapshot_source(ctx.cfg)
        prior_path, prior_cached = prior_checkpoint(ctx)
        model = load_prior(ctx, prior_path)
        snap0, snap0_cached = snapshot_for(ctx, prior_path, model, 1, source)
        if exp.lm is not None and distributed.rank() == 0:  # the snapshot does not decode; chrF needs θ0's text
            ctx.theta0_chrf = decoded_row(ctx, model, [exp.prior_test]).chrf[0]
        if exp.heldout is not None and distributed.rank() == 0:
            ctx.theta0_heldout = heldout_scores(ctx, model)
        if ctx.cfg.snapshot.get("subset") is not None and not subset_applies(ctx.cfg) and distributed.rank() == 0:
            console.note(f"snapshot.subset: sampler={ctx.cfg.sampler.name} reads no snapshot and draws over the "
                         "whole pool, so its snapshot (which only measures) scores every row")
        resume = distributed.broadcast(ctx.resume if distributed.rank() == 0 else None)
        if resume and distributed.rank() == 0:
            console.note(f"resuming from {self.checkpoint}")
        at_stage = checkpoint_stage(self.checkpoint) if resume else None
        theta0_correct = snap0.test.correct.bool()  # row 0 of the accuracy matrix: θ0 on the prior task
        model_path, telemetry_start, outcome = prior_path, 0, None
        for k in range(1, len(exp.stages) + 1):
            done = self._done_before(k)
            if done is not None:
                model_path, telemetry_start = done
                continue
            model, snap, snap_cached = (model, snap0, snap0_cached) if k == 1 else self._next_start(model_path, k)
            view = self._training_view(k, prior_path) if source == "training" else None
            outcome = self._stage(k, snap, snap_cached, model, at_stage == k, telemetry_start, theta0_correct, view)
            if distributed.rank() != 0:
                continue
            self.records.append(outcome.record)
            if k < len(exp.stages):
                model_path, telemetry_start = self._keep_stage(k, model, outcome, view)
        if distributed.rank() != 0:
            return None
        return self._finish(model, snap0, outcome, t_start, prior_path, {"prior": prior_cached,
                                                                         "snapshot": snap0_cached})

    def _done_before(self, k: int) -> tuple[Path, int] | None:
        """Stage k's model and telemetry end when it was finished before an interruption (never the last stage)."""
        record_path, model_file = stage_files(self.ctx.run_dir, k)
        if k == len(self.ctx.experiment.stages) or not (record_path.is_file() and model_file.is_file()):
            return None
        record = StageRecord.from_dict(read_json(record_path, "stage record"), str(record_path))
        self.records.append(record)
        self.ctx.ledger.load_state_dict(record.ledger.state_dict())
        return model_file, int(record.telemetry_end)

    def _next_start(self, model_path: Path, k: int) -> tuple[MixcdNet, Snapshot, bool]:
        """θ(k−1) read back from its stage file, and its snapshot over pool k."""
        ctx = self.ctx
        model, _ = load_model(model_path, model_spec(plain(ctx.cfg.model)), ctx.experiment.channels,
                              vocab_size=ctx.experiment.vocab_size, lm=ctx.experiment.lm)
        model.to(ctx.device)
        snap, cached = snapshot_for(ctx, model_path, model, k, snapshot_source(ctx.cfg))
        return model, snap, cached

    def _training_view(self, k: int, prior_path: Path) -> TrainingColumns:
        """snapshot.source=training: pool k's columns as training recorded them. Stage 1: θ0's pretraining record
        (kept beside θ0 in the cache); stage k ≥ 2: what stage k−1 left beside its model (`_keep_stage`)."""
        ctx, exp = self.ctx, self.ctx.experiment
        pool = exp.pool_at(k, str(ctx.cfg.rehearsal.pool))
        classes = exp.objective.has_classes
        if k == 1:
            record = prior_record(ctx.cfg, exp, prior_path)  # over θ0's training rows (a probe's too), by row id
            return training_columns(pool, merge_visits(row_ids(pool), [(row_ids(exp.prior_train), record)], classes))
        path = stage_record_file(ctx.run_dir, k - 1)
        return training_columns(pool, load_columns(path, len(pool), f"the training record of stage {k - 1}",
                                                   {"pool": pool.fingerprint()},
                                                   "it is made only while the stage trains: start a new run folder"))

    def _stage(self, k: int, snap: Snapshot, snap_cached: bool, model: MixcdNet, resume: bool,
               telemetry_start: int, theta0_correct: torch.Tensor, view: TrainingColumns | None) -> StageOutcome:
        n = len(self.ctx.experiment.stages)
        on_log = self.tracking.interval_logger(k, n, sum(int(r.steps) for r in self.records)) \
            if self.tracking else None
        return train_stage(self.ctx, k, snap, snap_cached, model, resume, telemetry_start, theta0_correct, on_log,
                           view)

    def _keep_stage(self, k: int, model: MixcdNet, outcome: StageOutcome, view: TrainingColumns | None
                    ) -> tuple[Path, int]:
        """θk and stage k's record for the stages after it (and a resume); with snapshot.source=training first the
        training-time columns of pool k+1 (`next_training_columns`), so a finished stage always has them."""
        record_path, model_file = stage_files(self.ctx.run_dir, k)
        if view is not None:
            exp = self.ctx.experiment
            pool = exp.pool_at(k + 1, str(self.ctx.cfg.rehearsal.pool))
            cols = next_training_columns(exp.pool_at(k, str(self.ctx.cfg.rehearsal.pool)), view, k,
                                         len(exp.stages[k - 1].train), outcome.loop.record or {}, pool,
                                         exp.objective.has_classes)
            save_columns(stage_record_file(self.ctx.run_dir, k), cols, {"stage": k, "pool": pool.fingerprint()})
        keep_model(model, model_file, self.ctx.cfg, {"stage": k})
        write_json(outcome.record.to_dict(), record_path)
        return model_file, int(outcome.record.telemetry_end)

    def _finish(self, model: MixcdNet, snap0: Snapshot, outcome: StageOutcome, t_start: float, prior_path: Path,
                cached: dict[str, bool]) -> RunResult:
        """Save the final model, evaluate it against θ0, write metrics.json and print the run's table."""
        ctx, exp = self.ctx, self.ctx.experiment
        keep_model(model, ctx.run_dir / "model.pt", ctx.cfg,
                   {"heads_of": {"prior": exp.prior_head(), "finetune": exp.ft_head(),
                                 **{f"stage{k}": s.head for k, s in enumerate(exp.stages, 1)}}})
        with phase("evaluation", f"the fine-tuned model and {self.checkpoint.name} are kept; rerun the same "
                                 "command to evaluate them"):
            metrics = evaluate(ctx, model, snap0, outcome.row)
        ctx.timings["total"] = time.perf_counter() - t_start
        result = run_result(ctx, self.records, metrics, outcome, snap0, prior_path, cached)
        write_result(result, ctx.run_dir / "metrics.json")
        console.print_run(result, ctx.run_dir)
        return result


def stage_files(run_dir: Path, k: int) -> tuple[Path, Path]:
    """Stage k's record and model, kept so that an interrupted sequence resumes after its finished stages."""
    return run_dir / "stages" / f"stage{k}.json", run_dir / "stages" / f"model{k}.pt"


def stage_record_file(run_dir: Path, k: int) -> Path:
    """snapshot.source=training: pool k+1's training-time columns as stage k's training left them (with a
    ``.json`` sidecar holding its checksum), beside θk."""
    return run_dir / "stages" / f"record{k}.pt"


def next_training_columns(pool: Task, view: TrainingColumns, k: int, train_rows: int,
                          record: dict[str, dict[str, torch.Tensor]], next_pool: Task, classes: bool
                          ) -> dict[str, torch.Tensor]:
    """Pool k+1's training-time columns after stage k: a row stage k's training forwards visited (a row of its
    own task, ``record["task"]``, or a rehearsal row of pool k, ``record["pool"]``) takes its last visit's
    values; any other row keeps what stage k's own columns (``view``, over ``pool``) held; a row neither holds
    is unrecorded (`snapshot.fill_unrecorded`)."""
    ids = row_ids(pool)
    sources = [(ids, view.columns())]
    if "task" in record:
        sources.append((stage_row_ids(k, train_rows), record["task"]))
    if "pool" in record:
        sources.append((ids, record["pool"]))
    return merge_visits(row_ids(next_pool), sources, classes)


def checkpoint_stage(path: Path) -> int | None:
    """The stage a training checkpoint belongs to (1 for one written before sequences existed); None if absent."""
    if not path.is_file():
        return None
    checkpoint = safe_torch_load(path, what="training checkpoint")
    return int(checkpoint.get("stage") or 1) if isinstance(checkpoint, dict) else None


def stage_settings(cfg: DictConfig, k: int, overrides: dict[str, Any], telemetry_start: int) -> TrainSettings:
    """Stage k's training settings: the trainer's, less what the stage overrides (steps, lr, mix_ratio).

    Stage 1 draws from exactly the seeds a single fine-tuning always did, so a one-stage sequence is
    today's run; later stages derive their own.
    """
    t, seed = cfg.trainer, int(cfg.seed)
    ratio = float(overrides.get("mix_ratio", t.mix_ratio))
    b = rehearsal_batch(str(cfg.sampler.name), ratio, int(t.batch_size))
    stage_seed = seed if k == 1 else derive_seed(seed, f"stage{k}")
    settings = settings_from(t, int(overrides.get("steps", t.steps)), stage_seed, "finetune",
                             int(cfg.eval.batch_size), rehearsal_batch=b,
                             rehearsal_weight=float(t.rehearsal_weight), log_every=int(t.log_every),
                             audit_every=int(t.audit_every), checkpoint_every=int(t.checkpoint_every),
                             amp=str(t.amp), channels_last=bool(t.channels_last), compile=bool(t.get("compile", False)),
                             stage=k, stages=len(cfg.stages) if cfg.get("stages") else 1,
                             telemetry_start=telemetry_start)
    if "lr" in overrides:
        settings.lr = float(overrides["lr"])
    return settings


def _seed_tag(name: str, k: int) -> str:
    return name if k == 1 else f"{name}-stage{k}"


def prepare_model(ctx: Context, k: int, stage: Stage, model: MixcdNet) -> None:
    """Freeze BatchNorm when asked; under head=multi give stage k its own freshly seeded head."""
    cfg, exp = ctx.cfg, ctx.experiment
    if cfg.model.get("bn") == "frozen" and model.freeze_batchnorm() == 0 and distributed.rank() == 0 and k == 1:
        console.note(f"model.bn=frozen: {cfg.model.get('name')} has no BatchNorm layers; nothing to freeze")
    if exp.head == "multi":
        torch.manual_seed(derive_seed(int(cfg.seed), _seed_tag("ft-head", k)))
        model.add_head(stage.head, exp.head_sizes()[stage.head])
    lora = plain(cfg.model).get("lora") or {}
    if lora.get("rank"):  # fresh adapters on θ(k−1) for stage k, merged into θk when the stage ends (`keep_model`)
        torch.manual_seed(derive_seed(int(cfg.seed), _seed_tag("lora", k)))
        trainable = model.add_adapters(int(lora["rank"]), float(lora["alpha"]), lora.get("target_modules"),
                                       float(lora.get("dropout", 0.0)))
        if distributed.rank() == 0 and k == 1:
            console.note(f"model.lora: rank {lora['rank']} adapters, {trainable:,} trainable parameters; the rest of "
                         "the model is frozen")


def keep_model(model: MixcdNet, path: Path, cfg: DictConfig, extra: dict[str, Any] | None = None) -> None:
    """Save a stage's model as the next stage (or `mixcd eval`) reads it: LoRA adapters folded into its weights."""
    if getattr(model, "has_adapters", False):
        model.merge_adapters()
    save_model(model, path, model_spec(plain(cfg.model)), extra)


def stage_sampler(ctx: Context, k: int, snap: Snapshot, pool: Task, model: MixcdNet,
                  settings: TrainSettings) -> RehearsalSampler:
    """Stage k's sampler over pool k, fed by θ(k−1)'s snapshot; one seeded generator per rank."""
    cfg, exp = ctx.cfg, ctx.experiment
    tag = _seed_tag("sampler", k) if distributed.world() == 1 else f"sampler-rank{distributed.rank()}"
    info = snap.pool_info(pool)

    def clusters(n: int, s: int) -> torch.Tensor:
        """θ(k−1) is the snapshot's model: its features give partition=kmeans, computed once per snapshot (a
        feature pass over the pool) and needed like it, one-time at stage 1: an artifact, computed now or cached."""
        labels = cluster_column(snap.path, model, pool, exp.transform, ctx.device, settings.eval_batch_size,
                                ctx.ledger, str(cfg.trainer.amp), n, s)
        ctx.ledger.need(Artifact("clusters", "snapshot", f"theta{k - 1}", k, one_time=k == 1, forward=len(pool),
                                 forward_tokens=task_tokens(pool)))
        return labels

    info.clusters = clusters
    sampler = create_sampler(str(cfg.sampler.name), info, settings.rehearsal_batch,
                             derive_seed(int(cfg.seed), tag), **sampler_options(plain(cfg.sampler)))
    sampler.pool_digest = pool.fingerprint()
    if distributed.rank() == 0:
        for message in sampler.notes:
            console.note(message)
    return sampler


def train_stage(ctx: Context, k: int, snap: Snapshot, snap_cached: bool, model: MixcdNet,
                resume: bool, telemetry_start: int, theta0_correct: torch.Tensor,
                on_log: Any = None, view: TrainingColumns | None = None) -> StageOutcome:
    """Fine-tune θ(k−1) (``model``; ``snap``: its snapshot) on stage k with rehearsal from pool k (its scored rows
    with snapshot.subset), then evaluate on every task seen so far. ``theta0_correct``: θ0 on the prior test set,
    for the record. ``view`` (snapshot.source=training): pool k's training-time columns, which the sampler reads
    instead of the pass's; the pass stays the truth the audit and the stage's ``snapshot_fidelity`` measure
    against, and every stage but the last records its own training forwards for the next."""
    cfg, exp = ctx.cfg, ctx.experiment
    stage, last = exp.stages[k - 1], k == len(exp.stages)
    pool, scored = stage_pools(cfg, exp, k)
    prepare_model(ctx, k, stage, model)
    torch.manual_seed(derive_seed(int(cfg.seed), _seed_tag("finetune", k)))
    settings = stage_settings(cfg, k, stage.trainer, telemetry_start)
    seen = snap if view is None else replace(snap, pool=view.part)  # what the sampler reads
    sampler = stage_sampler(ctx, k, seen, scored, model, settings)
    loop = fine_tune(ctx, k, stage, model, scored, snap, sampler, settings, resume, on_log,
                     signal0=None if view is None else view.part.correct, record=view is not None and not last)
    if last:
        sum_ledger_over_ranks(ctx.ledger)
    if distributed.rank() != 0:
        return StageOutcome(None, [], loop, sampler)
    t1 = time.perf_counter()
    of = "" if last and k == 1 else f" of stage {k}/{len(exp.stages)} ('{stage.name}')"
    with phase(f"evaluation{of}", f"{ctx.run_dir / 'checkpoints' / 'last.pt'} is kept; rerun the same command to "
                                  "evaluate it"):
        row = accuracy_row(ctx, model, k)
    ctx.timings["eval"] = ctx.timings.get("eval", 0.0) + time.perf_counter() - t1
    prior_classes = exp.objective.classes(exp.prior_test.targets)
    against = {"previous": categories(snap.test.correct, torch.cat(row[:k]), prior_classes if k == 1 else None),
               "theta0": categories(theta0_correct, row[0], prior_classes)}
    record = stage_record(ctx, k, stage, settings, pool, row, against, loop, sampler, snap, snap_cached,
                          None if view is None else fidelity(view, snap.pool))
    return StageOutcome(record, row, loop, sampler)


def sum_ledger_over_ranks(ledger: Ledger) -> None:
    """Every rank's passes (rows and tokens, counted where they were made) summed into each; artifacts are
    recorded alike on every rank, so they are not summed."""
    if distributed.world() <= 1:
        return
    counters = ledger.counters()
    keys = [(name, purpose) for name, counter in counters.items() for purpose in counter]
    total = distributed.all_reduce_sum(torch.tensor([counters[n][p] for n, p in keys], dtype=torch.float64))
    for (name, purpose), value in zip(keys, total.tolist(), strict=True):
        counters[name][purpose] = int(value)


def fine_tune(ctx: Context, k: int, stage: Stage, model: MixcdNet, pool: Task, snap: Snapshot,
              sampler: RehearsalSampler, settings: TrainSettings, resume: bool, on_log: Any,
              signal0: torch.Tensor | None = None, record: bool = False) -> LoopResult:
    """The training loop of stage k, with progress, Ctrl-C handling and its time kept. ``signal0``: prior-correct
    as the sampler's columns say, when they are not the pass's (`Rehearsal`); ``record``: keep each row's last
    training visit (the next stage's columns under snapshot.source=training)."""
    cfg, exp, run_dir = ctx.cfg, ctx.experiment, ctx.run_dir
    checkpoint = run_dir / "checkpoints" / "last.pt"
    t0 = time.perf_counter()
    kept = f"the checkpoint {checkpoint} is kept; rerun the same command to resume" if resume else \
        "no checkpoint of this stage was written yet" + ("" if k == 1 else "; rerun the same command to resume "
                                                         "from the stages already done")
    what = f"fine-tune [{cfg.sampler.name}]" + ("" if len(exp.stages) == 1 else f" stage {k}/{len(exp.stages)}")
    of = "" if len(exp.stages) == 1 else f" of stage {k}/{len(exp.stages)} ('{stage.name}')"
    with phase(f"fine-tuning{of} (second Ctrl-C: stopped at once)", kept), \
            console.step_progress(what, settings.steps) as progress:
        rehearsal = Rehearsal(sampler, pool, exp.prior_head(), snap.pool.correct.bool(),
                              None if signal0 is None else signal0.bool())
        loop = FineTuner(model, stage.train, stage.head, exp.transform, ctx.device, settings, ctx.ledger,
                         rehearsal, telemetry_path=run_dir / "metrics.jsonl", checkpoint_path=checkpoint,
                         progress=progress, on_log=on_log, record=record).run(resume)
    wall = loop.wall_time if loop.resumed_from is None else time.perf_counter() - t0
    ctx.timings["finetune"] = ctx.timings.get("finetune", 0.0) + wall
    loop.wall_time = wall
    return loop
