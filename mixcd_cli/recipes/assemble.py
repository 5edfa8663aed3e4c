"""A stage's record and a run's result, put together from what the stages measured."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .. import distributed
from ..artifacts import to_json_safe
from ..data import Stage, Task
from ..metrics import accuracy, sequence_metrics
from ..results import (
    Cached,
    Categories,
    Compute,
    Heldout,
    LedgerSummary,
    Retention,
    RunResult,
    SequenceSummary,
    SignalQuality,
    SnapshotFidelity,
    StagePool,
    StageRecord,
    with_deltas,
)
from ..runtime import peak_memory_mb
from ..samplers import RehearsalSampler
from ..snapshot import Snapshot
from ..training import TrainSettings
from ..training.finetuner import COUNTERS, LoopResult, signal_quality
from .context import Context


def stage_record(ctx: Context, k: int, stage: Stage, settings: TrainSettings, pool: Task, row: list[torch.Tensor],
                 against: dict[str, dict[str, Any]], loop: LoopResult, sampler: RehearsalSampler, snap: Snapshot,
                 snap_cached: bool, fidelity: dict[str, Any] | None = None) -> StageRecord:
    """Stage k's entry of metrics.json's ``stages``: its settings, pool, accuracy row, categories against θ(k−1)
    (every test set seen before the stage) and θ0 (the prior task), rehearsal counters and cumulative ledger;
    ``fidelity`` (snapshot.source=training): how far the training-time columns were from the pass's."""
    telemetry = ctx.run_dir / "metrics.jsonl"
    sources = pool.columns.get("source")
    by_source = {str(i): int(n) for i, n in enumerate(torch.bincount(sources))} if sources is not None \
        else {"0": len(pool)}
    return StageRecord(
        stage=k, name=stage.name, steps=settings.steps, lr=settings.lr,
        mix_ratio=settings.rehearsal_batch / settings.batch_size, rehearsal_batch=settings.rehearsal_batch,
        pool=StagePool(size=len(pool), by_source=by_source), accuracy=[accuracy(c) for c in row],
        chrf=getattr(row, "chrf", None),
        categories_vs_previous=Categories.from_dict(against["previous"]),
        categories_vs_theta0=Categories.from_dict(against["theta0"]),
        signal=SignalQuality.from_dict(loop.quality()), rehearsal_counts=dict(loop.counts),
        final_loss=loop.final_loss, ledger=LedgerSummary.from_dict(ctx.ledger.summary()),
        snapshot=str(snap.path), snapshot_cached=snap_cached, resumed_from=loop.resumed_from,
        sampler_final=to_json_safe(sampler.telemetry()), sampler_notes=list(sampler.notes),
        telemetry_end=telemetry.stat().st_size if telemetry.is_file() else 0, wall_time=loop.wall_time,
        snapshot_fidelity=None if fidelity is None else SnapshotFidelity.from_dict(fidelity))


def mean_fidelity(records: list[StageRecord]) -> SnapshotFidelity | None:
    """The stages' snapshot fidelities averaged (each field over the stages where it is defined; rows summed);
    None when no stage has one (snapshot.source=pass)."""
    parts = [r.snapshot_fidelity for r in records if r.snapshot_fidelity is not None]
    if not parts:
        return None

    def mean(name: str) -> float | None:
        values = [getattr(f, name) for f in parts if getattr(f, name) is not None]
        return sum(values) / len(values) if values else None

    return SnapshotFidelity(precision=mean("precision"), recall=mean("recall"), unvisited=mean("unvisited"),
                            loss_mae=mean("loss_mae"), rows=sum(int(f.rows or 0) for f in parts))


def run_result(ctx: Context, records: list[StageRecord], metrics: dict[str, Any], outcome: Any,
               snap0: Snapshot, prior_path: Path, cached: dict[str, bool]) -> RunResult:
    """metrics.json of a `mixcd train` run: the final evaluation, the counters and ledger summed over stages,
    the accuracy matrix and its sequence metrics, every stage's record, and the run's compute (forward + 2 ×
    backward, with θ0's one-time artifacts counted whether they were made now or cached)."""
    cfg, exp = ctx.cfg, ctx.experiment
    n = len(exp.stages)
    counts = {key: sum(int(r.rehearsal_counts[key]) for r in records) for key in COUNTERS}
    theta0 = accuracy(snap0.test.correct.bool())
    # each stage's record holds its row of accuracies; the last stage's record is this run's own
    matrix = [[theta0] + [None] * n] + [r.accuracy + [None] * (n - k) for k, r in enumerate(records, 1)]
    metrics = dict(metrics)
    heldout = metrics.pop("heldout", None)
    chrf_matrix = None
    if records[0].chrf is not None:
        chrf_matrix = [[ctx.theta0_chrf] + [None] * n] + [list(r.chrf) + [None] * (n - k)
                                                          for k, r in enumerate(records, 1)]
    return RunResult(
        experiment=str(cfg.experiment_name), sampler=str(cfg.sampler.name),
        mix_ratio=float(cfg.trainer.mix_ratio) if records[0].rehearsal_batch else 0.0, seed=int(cfg.seed),
        steps=sum(r.steps for r in records), batch_size=int(cfg.trainer.batch_size),
        rehearsal_batch=records[0].rehearsal_batch, retention=Retention.from_dict(metrics),
        signal=SignalQuality.from_dict(signal_quality(counts)), rehearsal_counts=counts,
        final_loss=outcome.loop.final_loss, ledger=LedgerSummary.from_dict(ctx.ledger.summary()),
        wall_time=dict(ctx.timings), peak_memory_mb=peak_memory_mb(ctx.device), device=str(ctx.device),
        world_size=distributed.world(), prior_checkpoint=str(prior_path), snapshot=str(snap0.path),
        cached=Cached(**cached), resumed_from=_resumed_from(records, outcome.loop),
        sampler_final=to_json_safe(outcome.sampler.telemetry()),
        sampler_notes=list(dict.fromkeys(m for r in records for m in r.sampler_notes)),
        num_stages=n, stage_names=[s.name for s in exp.stages], rehearsal_pool=str(cfg.rehearsal.pool),
        task_kind=exp.objective.name if exp.lm is not None else None,
        accuracy_matrix=matrix, chrf_matrix=chrf_matrix,
        heldout=None if heldout is None else Heldout.from_dict(heldout),
        sequence=SequenceSummary.from_dict(sequence_metrics(matrix)),
        stages=with_deltas(records), compute=Compute.from_dict(ctx.ledger.compute()),
        snapshot_fidelity=mean_fidelity(records))


def _resumed_from(records: list[StageRecord], loop: LoopResult) -> Any:
    """The step a single fine-tuning resumed from; in a sequence, the first stage that resumed and its step."""
    if len(records) == 1:
        return loop.resumed_from
    return next(({"stage": r.stage, "step": r.resumed_from} for r in records if r.resumed_from is not None), None)
