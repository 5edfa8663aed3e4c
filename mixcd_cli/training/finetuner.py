"""The training recipe: one model, one task, optionally a rehearsal sampler mixing in pool rows.

`FineTuner` is a small class in the shape of a torchtune recipe — ``setup``, ``step``, ``save``,
``restore``, ``run`` — over one `TrainState`. What a checkpoint holds is one list (`FineTuner.parts`)
that both ``save`` and ``restore`` walk, so the two can never disagree. Parts are either shared
(identical on every rank: model, optimizer, schedule, data order) or per rank (ledger, sampler,
counters, RNG), and per-rank parts are saved for every rank so that a resumed multi-process run
reports exactly what an uninterrupted one does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import distributed
from ..artifacts import JsonlWriter, atomic_torch_save, safe_torch_load
from ..data import BatchTransform, Task, join_batches
from ..errors import Interrupted, MixcdError, TrainingDiverged, phase_kept
from ..metrics import COUNTERS, HitAudit, Ledger, signal_quality
from ..models import MixcdNet
from ..objectives import Batch
from ..runtime import autocast_for, stop_on_sigint
from ..samplers.base import RehearsalSampler
from .batches import BatchOrder, host_batch, order_seed, to_device
from .inference import ModelSelection, batch_tokens
from .optim import create_optimizer, create_schedule
from .settings import TrainSettings
from .visits import VisitRecord

CHECKPOINT_FORMAT = 3
log = logging.getLogger(__name__)


@dataclass
class Rehearsal:
    """The prior pool a sampler draws ``rehearsal_batch`` rows from at every step."""

    sampler: RehearsalSampler
    pool: Task
    head: str
    correct0: torch.Tensor  # bool per pool row: prior-correct under θ0 (a drawn row that is now wrong is a hit)
    # bool per pool row: prior-correct as the sampler's snapshot says (snapshot.source=training: the training-time
    # columns); the signal counters read it, the audit reads ``correct0``. None: the same as ``correct0``.
    signal0: torch.Tensor | None = None


def _fresh_interval() -> dict[str, float]:
    return {"samples": 0, "loss": 0.0, "n": 0, **dict.fromkeys(COUNTERS, 0)}


@dataclass
class TrainState:
    """Where the run is: the step reached, this rank's rehearsal counters, the open log interval, times."""

    step: int = 0
    counts: dict[str, float] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    interval: dict[str, float] = field(default_factory=_fresh_interval)
    telemetry_offset: int = 0
    elapsed: float = 0.0
    last_loss: float = float("nan")  # the latest checked loss: a run resumed at its last step still reports it

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, dict(value) if isinstance(value, dict) else value)


class _Part:
    """A checkpoint part given by a getter and a setter (for state that is not an object of its own)."""

    def __init__(self, get: Callable[[], Any], put: Callable[[Any], None]) -> None:
        self.state_dict, self.load_state_dict = get, put


@dataclass
class LoopResult:
    """What a finished run reports (rehearsal counters summed over ranks, see `COUNTERS`)."""

    steps: int
    wall_time: float
    counts: dict[str, int]
    final_loss: float
    resumed_from: int | None
    # with record=True: per row of the trained task ("task") and of the rehearsal pool ("pool"), its last
    # visit's columns (`VisitRecord.columns`)
    record: dict[str, dict[str, torch.Tensor]] | None = None

    def quality(self) -> dict[str, float | None]:
        return signal_quality(self.counts)


@dataclass
class _Drawn:
    """This step's rehearsal rows, on the device, in the order the heads read them."""

    rows: torch.Tensor
    batch: Batch
    tokens: int  # their non-padding tokens (0 for tasks without tokens)
    order: torch.Tensor | None  # how the drawn rows were regrouped by head (None: as drawn)
    audit_wrong: torch.Tensor | None  # eval-mode "wrong" of the same rows, on audited steps
    splits: list[tuple[str, int, int]]  # (head, start, stop) of each slice in the joined batch


@dataclass
class _Pending:
    """Step t's rehearsal predictions on their way to the host; observed before draw t+1."""

    rows: torch.Tensor
    wrong: torch.Tensor
    loss: torch.Tensor | None  # per-row training loss, for samplers that observe it (wants_loss)
    audit_wrong: torch.Tensor | None  # eval-mode predictions of the same rows, on audited steps
    order: torch.Tensor | None  # how the drawn rows were regrouped by head (None: as drawn)
    event: Any


class FineTuner:
    """Train ``model`` on ``task``; with a `Rehearsal`, mix ``rehearsal_batch`` pool rows into every step.

    The loss is (Σ fine-tune loss + w·Σ rehearsal loss) / (B + b), each row's loss as the task kind's
    objective defines it (cross-entropy for classification). The sampler observes which of its
    rows this step's forward pass (before the optimizer step) predicts wrong; the observation is
    copied to the host asynchronously and folded in before the next draw, so on a GPU the host
    never waits for the backward pass. Under torch.distributed each rank trains on its shard of
    the fine-tune data and draws its own rehearsal rows; the sampler's counts are all-reduced.
    The ledger is charged the rows (and non-padding tokens) each step really sends through the model:
    for rehearsal, what the sampler drew, which may be fewer than ``rehearsal_batch``.
    """

    def __init__(self, model: MixcdNet, task: Task, head: str, transform: BatchTransform, device: torch.device,
                 settings: TrainSettings, ledger: Ledger, rehearsal: Rehearsal | None = None,
                 telemetry_path: Path | None = None, checkpoint_path: Path | None = None,
                 progress: Callable[[int, float], None] | None = None,
                 on_log: Callable[[dict[str, Any]], None] | None = None, record: bool = False) -> None:
        self.model, self.task, self.head, self.transform = model, task, head, transform
        self.device, self.settings, self.ledger = device, settings, ledger
        self.objective = task.objective
        self.rehearsal = rehearsal if rehearsal is not None and rehearsal.sampler.draws \
            and settings.rehearsal_batch > 0 else None
        self.telemetry_path, self.checkpoint_path, self.progress = telemetry_path, checkpoint_path, progress
        self.on_log = on_log  # trackers (TensorBoard, MLflow): handed each telemetry record, rank 0 only
        self.rank, self.world = (distributed.rank(), distributed.world()) if settings.distributed else (0, 1)
        self.cuda = device.type == "cuda"
        self.channels_last = settings.channels_last and self.cuda
        self.state = TrainState(telemetry_offset=settings.telemetry_start)
        self.resumed_from: int | None = None
        if record and self.world > 1:  # each rank would see its own rows: records are not gathered across ranks
            raise MixcdError("recording the training forwards (snapshot.source=training) needs one process; "
                             "use trainer.devices=1 or snapshot.source=pass")
        # record: each row's last training visit (`VisitRecord`), of the task and of the rehearsal pool
        self.records: dict[str, VisitRecord] = {}
        if record:
            classes = self.objective.has_classes
            self.records["task"] = VisitRecord(len(task), classes, device)
            if self.rehearsal is not None:
                self.records["pool"] = VisitRecord(len(self.rehearsal.pool), classes, device)

    # ------------------------------------------------------------------ setup

    def setup(self, resume: bool = False) -> None:
        """Build the network, optimizer, schedule, data order and selection context; restore if asked."""
        s, model = self.settings, self.model
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        model.train()
        self.net: nn.Module = model
        if self.world > 1:
            self.net = nn.parallel.DistributedDataParallel(model, device_ids=[self.device.index] if self.cuda else None)
        if s.compile:
            self.net = torch.compile(self.net)
        # frozen weights (LoRA's base model) take no optimiser state
        self.optimizer = create_optimizer([p for p in model.parameters() if p.requires_grad], s.optimizer, s.lr,
                                          s.momentum, s.weight_decay)
        self.schedule = create_schedule(self.optimizer, s.schedule, s.steps, s.warmup_steps)
        self.order = BatchOrder(len(self.task), s.batch_size, order_seed(s), self.rank, self.world)
        self.selection: ModelSelection | None = None
        if self.rehearsal is not None:
            r = self.rehearsal
            self.selection = ModelSelection(model, r.pool, self.transform, self.device, r.head, self.head,
                                            self.ledger, s.lr, s.eval_batch_size)
            # the counts live in self.state (checkpointed, per interval); the audit only classifies each draw
            self._audit = HitAudit(r.correct0, r.signal0)
        if resume and self.checkpoint_path is not None and self.checkpoint_path.is_file():
            self.restore(self.checkpoint_path)
        self._elapsed_before = self.state.elapsed
        self.writer = JsonlWriter(self.telemetry_path, truncate_to=self.state.telemetry_offset) \
            if self.telemetry_path and self.rank == 0 else None
        self._pending: _Pending | None = None
        self._losses: list[tuple[int, torch.Tensor]] = []  # NaN-checked at boundaries: one sync, not one a step
        # Host-side sources on a GPU (or decoded from files): fetch step t+1's fine-tune batch while
        # step t runs. Its rows come from the seeded order, so prefetching changes no number.
        in_memory = isinstance(getattr(self.task.source, "data", None), torch.Tensor)
        on_host = not in_memory or self.task.source.data.device.type == "cpu"
        self._prefetcher = ThreadPoolExecutor(1, thread_name_prefix="mixcd-prefetch") \
            if (self.cuda and on_host) or not in_memory else None
        self._order_at_step = self.order.state_dict()  # the order as of the step boundary (before any prefetch)
        self._upcoming: tuple[torch.Tensor, Future] | None = None
        if self._prefetcher is not None and self.state.step < s.steps:
            self._upcoming = self._prefetch()
        self._t0 = self._t_interval = time.perf_counter()

    # ------------------------------------------------------------------ checkpoint

    def parts(self) -> list[tuple[str, bool, Any]]:
        """(name, per_rank, object with state_dict/load_state_dict): what a checkpoint holds, for save and restore."""
        parts: list[tuple[str, bool, Any]] = [
            ("model", False, self.model),
            ("optimizer", False, self.optimizer),
            ("schedule", False, self.schedule),
            ("order", False, _Part(lambda: dict(self._order_at_step), self.order.load_state_dict)),
            ("ledger", True, self.ledger),
            ("state", True, self.state),
            ("torch_rng", True, _Part(torch.get_rng_state, torch.set_rng_state)),
        ]
        if self.rehearsal is not None:
            parts.append(("sampler", True, self.rehearsal.sampler))
        if self.records:  # only when recording: checkpoints of runs that do not record stay as they were
            parts.append(("record", True, _Part(lambda: {n: r.state_dict() for n, r in self.records.items()},
                                                self._load_records)))
        return parts

    def _load_records(self, state: dict[str, Any]) -> None:
        if set(state) != set(self.records):
            raise KeyError("the checkpoint's training record covers other tasks")
        for name, record in self.records.items():
            record.load_state_dict(state[name])

    def save(self) -> None:
        """Write the checkpoint atomically (rank 0), with every rank's per-rank parts."""
        if self.checkpoint_path is None:
            return
        self.state.telemetry_offset = self.writer.offset if self.writer else 0
        self.state.elapsed = self._elapsed_before + time.perf_counter() - self._t0
        mine = {name: obj.state_dict() for name, obj in self._per_rank(True)}
        ranks = distributed.gather_objects(mine) if self.world > 1 else [mine]
        if self.rank != 0:
            return
        shared = {name: obj.state_dict() for name, obj in self._per_rank(False)}
        atomic_torch_save({"format": CHECKPOINT_FORMAT, "world_size": self.world, "step": self.state.step,
                           "stage": self.settings.stage, "shared": shared, "ranks": ranks}, self.checkpoint_path)
        phase_kept(f"the checkpoint of step {self.state.step} ({self.checkpoint_path}) is kept; rerun the same "
                   "command to resume from it")

    def restore(self, path: Path) -> None:
        """Load a checkpoint written by `save`: shared parts as they are, per-rank parts for this rank."""
        checkpoint = safe_torch_load(path, what="training checkpoint")
        if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
            raise MixcdError(f"checkpoint {path} was written by another version of mixcd; start a new run folder")
        if checkpoint.get("stage", 0) != self.settings.stage:
            raise MixcdError(f"checkpoint {path} belongs to stage {checkpoint.get('stage', 0)}, not stage "
                             f"{self.settings.stage}; start a new run folder")
        if checkpoint["world_size"] != self.world:
            raise MixcdError(f"checkpoint {path} was written by {checkpoint['world_size']} process(es), this run "
                             f"has {self.world}; resume with trainer.devices={checkpoint['world_size']}")
        try:
            for name, obj in self._per_rank(False):
                obj.load_state_dict(checkpoint["shared"][name])
            for name, obj in self._per_rank(True):
                obj.load_state_dict(checkpoint["ranks"][self.rank][name])
        except (KeyError, IndexError, RuntimeError, ValueError, TypeError) as exc:
            raise MixcdError(f"checkpoint {path} does not match this run's configuration "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc
        self._order_at_step = self.order.state_dict()
        self.resumed_from = self.state.step

    def _per_rank(self, per_rank: bool) -> list[tuple[str, Any]]:
        return [(name, obj) for name, rank_part, obj in self.parts() if rank_part == per_rank]

    # ------------------------------------------------------------------ one step

    def _prefetch(self) -> tuple[torch.Tensor, Future]:
        rows = self.order.next()
        return rows, self._prefetcher.submit(host_batch, self.task, rows, self.device)

    def _next_batch(self, step: int) -> tuple[Batch, int, torch.Tensor]:
        """This step's fine-tune batch on the device, its non-padding tokens (counted on the host) and its rows."""
        if self._prefetcher is None:
            rows = self.order.next()
            batch = host_batch(self.task, rows, self.device)
            self._order_at_step = self.order.state_dict()
        else:
            rows, future = self._upcoming
            batch = future.result()
            self._order_at_step = self.order.state_dict()  # before the prefetch moves the order ahead
            self._upcoming = self._prefetch() if step + 1 < self.settings.steps else None
        return to_device(batch, self.transform, self.device, self.channels_last), batch_tokens(batch), rows

    def step(self, step: int) -> None:
        """One optimisation step: fine-tune batch, rehearsal rows drawn after folding in step−1's observation."""
        s = self.settings
        ft, ft_tokens, ft_rows = self._next_batch(step)
        drawn = self._draw(step, ft, ft_tokens) if self.rehearsal is not None else None
        loss, wrong_parts, loss_parts = self._forward(ft, drawn, ft_rows if self.records else None, step)
        self._losses.append((step, loss.detach()))
        if not self.cuda:  # on the host a check is free; on a GPU it waits for a boundary
            self.state.last_loss = self.check_losses()
        if drawn is not None:
            self._pending = self._pending_of(drawn, wrong_parts, loss_parts)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.schedule.step()
        self.ledger.add(s.purpose, forward=len(ft), backward=len(ft), forward_tokens=ft_tokens,
                        backward_tokens=ft_tokens)
        if drawn is not None:
            # what the sampler drew and the step sent through the model, not the b it was asked for: a sampler
            # that draws fewer rows (or more) is charged for exactly those
            n = len(drawn.batch)
            self.ledger.add("rehearsal", forward=n, backward=n, forward_tokens=drawn.tokens,
                            backward_tokens=drawn.tokens)
        self.state.interval["samples"] += len(ft) + (len(drawn.batch) if drawn is not None else 0)
        self.state.step = step + 1

    def _draw(self, step: int, ft: Batch, ft_tokens: int) -> _Drawn:
        """This step's rehearsal rows: drawn after step−1's observation is folded in, on the device, audited
        when due, with the slice of the joined batch each head reads."""
        r, s = self.rehearsal, self.settings
        self.flush()
        self.selection.ft_batch, self.selection.ft_tokens = ft, ft_tokens
        # MIR's virtual step must be the step about to be taken: the scheduled rate, not the base one.
        self.selection.lr = self.optimizer.param_groups[0]["lr"]
        rows = r.sampler.draw(step, self.selection)
        order = None
        if r.pool.head_of is not None:  # rows of several tasks: grouped by head, one slice each
            order = torch.argsort(r.pool.head_of[rows], stable=True)
            rows = rows[order]
        host = host_batch(r.pool, rows, self.device)
        tokens = batch_tokens(host)
        batch = to_device(host, self.transform, self.device, self.channels_last)
        # like telemetry, the last (possibly shorter) interval is audited too
        audit_now = s.audit_every and ((step + 1) % s.audit_every == 0 or step + 1 == s.steps)
        audit_wrong = self.audit(rows, batch, tokens) if audit_now else None
        n_ft = len(ft)
        splits = [(h, n_ft + int(at[0]), n_ft + int(at[-1]) + 1) for h, at in r.pool.head_groups(rows, r.head)]
        return _Drawn(rows, batch, tokens, order, audit_wrong, splits)

    def _forward(self, ft: Batch, drawn: _Drawn | None, ft_rows: torch.Tensor | None = None, step: int = 0
                 ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """The mixed batch's mean loss, and per rehearsal slice which rows are wrong now (and their losses when
        the sampler observes them), all from this one training forward. When recording (``ft_rows``: the
        fine-tune batch's rows), every row's columns from the same outputs go into the record."""
        s, objective, n_ft = self.settings, self.objective, len(ft)
        splits = [(self.head, 0, n_ft)] + (drawn.splits if drawn is not None else [])
        x = ft.inputs if drawn is None else join_batches([ft.inputs, drawn.batch.inputs])
        wrong_parts: list[torch.Tensor] = []
        loss_parts: list[torch.Tensor] = []
        record_parts: list[dict[str, torch.Tensor | None]] = []
        with autocast_for(self.device, s.amp):
            outputs = self.net(x, splits=splits)
            loss_sum = objective.loss(outputs[0], ft.targets, "sum")
            for (_, a, b), out in zip(splits[1:], outputs[1:], strict=True):
                y = drawn.batch.targets[a - n_ft:b - n_ft]
                loss_sum = loss_sum + s.rehearsal_weight * objective.loss(out, y, "sum")
                wrong_parts.append(objective.wrong(out.detach(), y))
                if self.rehearsal.sampler.wants_loss:  # the same forward's outputs: no extra pass
                    loss_parts.append(objective.loss(out.detach(), y))
                if "pool" in self.records:
                    record_parts.append(objective.columns(out.detach(), y))
        if ft_rows is not None:
            self.records["task"].update(ft_rows, objective.columns(outputs[0].detach(), ft.targets), step)
        if record_parts:  # the slices are in the drawn rows' (head-grouped) order
            joined = {k: None if record_parts[0][k] is None else torch.cat([p[k] for p in record_parts])
                      for k in record_parts[0]}
            self.records["pool"].update(drawn.rows, joined, step)
        return loss_sum / x.shape[0], wrong_parts, loss_parts

    def _pending_of(self, drawn: _Drawn, wrong_parts: list[torch.Tensor], loss_parts: list[torch.Tensor]
                    ) -> _Pending:
        """The observation of this step, started on its way to the host (asynchronously on a GPU)."""
        wrong = torch.cat(wrong_parts)
        row_loss = torch.cat(loss_parts) if loss_parts else None
        audit_wrong, event = drawn.audit_wrong, None
        if self.cuda:
            wrong = wrong.to("cpu", non_blocking=True)
            row_loss = None if row_loss is None else row_loss.to("cpu", non_blocking=True)
            audit_wrong = None if audit_wrong is None else audit_wrong.to("cpu", non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        return _Pending(drawn.rows, wrong, row_loss, audit_wrong, drawn.order, event)

    def audit(self, pool_rows: torch.Tensor, batch: Batch, tokens: int = 0) -> torch.Tensor:
        """Which drawn rows the current weights truly get wrong: an eval-mode, no-grad pass before the
        training forward (so BatchNorm's running statistics are still those of this step's weights).
        Charged to the ledger's ``audit`` purpose (``tokens``: the rows' non-padding tokens), never to the
        training budget; no sampler reads it."""
        r = self.rehearsal
        with torch.no_grad(), autocast_for(self.device, self.settings.amp):
            self.model.eval()
            try:
                parts = []
                for h, at in r.pool.head_groups(pool_rows, r.head):
                    on = at.to(batch.inputs.device)
                    parts.append(self.objective.wrong(self.model(batch.inputs[on], head=h), batch.targets[on]))
                wrong = torch.cat(parts)
            finally:
                self.model.train()
        self.ledger.add("audit", forward=len(batch), forward_tokens=tokens)
        return wrong

    def flush(self) -> None:
        """Fold the pending observation into the sampler and the rehearsal counters."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        if pending.event is not None:
            pending.event.synchronize()
        rows, wrong, row_loss, audit_wrong = pending.rows, pending.wrong.bool(), pending.loss, pending.audit_wrong
        if pending.order is not None:  # back to the order of the draw: samplers may tell its slots apart
            undo = torch.argsort(pending.order)
            rows, wrong = rows[undo], wrong[undo]
            row_loss = None if row_loss is None else row_loss[undo]
            audit_wrong = None if audit_wrong is None else audit_wrong[undo]
        self.rehearsal.sampler.observe(rows, wrong, row_loss)
        for key, value in self._audit.add(rows, wrong, audit_wrong).items():
            self.state.counts[key] += value
            self.state.interval[key] += value

    def check_losses(self) -> float:
        """Raise at the first non-finite loss since the last check; return the latest loss."""
        if not self._losses:
            return self.state.last_loss
        values = torch.stack([v for _, v in self._losses]).float().cpu()
        bad = (~torch.isfinite(values)).nonzero()
        if bad.numel():
            step_bad = self._losses[int(bad[0])][0]
            path = self.checkpoint_path
            kept = f"; the last good checkpoint is kept: {path}" if path and path.is_file() else ""
            raise TrainingDiverged(f"loss became {values[int(bad[0])].item()} at step {step_bad}{kept}; "
                                   "lower the learning rate or check the data")
        self.state.interval["loss"] += float(values.sum())
        self.state.interval["n"] += len(self._losses)
        self._losses.clear()
        return float(values[-1])

    # ------------------------------------------------------------------ boundaries and the loop

    def _boundary(self, stop_requested: bool) -> None:
        """After a step: NaN check and observation at boundaries, progress, telemetry, checkpoint, Ctrl-C."""
        s, done = self.settings, self.state.step
        log_now = done % s.log_every == 0 or done == s.steps
        # checkpoint_every=0: only the final checkpoint (a kill during evaluation then resumes at the end)
        save_now = done == s.steps or bool(s.checkpoint_every) and done % s.checkpoint_every == 0
        stop_now = stop_requested and done < s.steps
        if log_now or save_now or stop_now or done == s.steps:
            self.state.last_loss = self.check_losses()
            if self.rehearsal is not None:
                self.flush()
        if self.progress is not None and (not self.cuda or log_now):
            self.progress(done, self.state.last_loss)
        if log_now:
            if self.writer:
                record = self._telemetry()
                self.writer.write(record)
                if self.on_log is not None:
                    self.on_log(record)
                rates = "".join(f", {name.replace('_', ' ')} {record[name]:.3f}"
                                for name in ("signal_rate", "hit_rate") if record.get(name) is not None)
                log.info("%s step %d/%d: loss %.4f, lr %.4g, %.0f samples/s%s", s.purpose, done, s.steps,
                         record["loss"], record["lr"], record["throughput"], rates)
            self._t_interval = time.perf_counter()
            self.state.interval = _fresh_interval()
        if save_now or stop_now:
            self.save()
        if stop_now:
            path = self.checkpoint_path
            where = f"checkpoint saved to {path}; rerun the same command with resume=true " \
                    f"hydra.run.dir=<this run folder> to continue" if path else "nothing was saved"
            of = f" of stage {s.stage}/{s.stages}" if s.stages > 1 else ""
            raise Interrupted(f"interrupted at step {done}/{s.steps}{of}; {where}")

    def _telemetry(self) -> dict[str, Any]:
        interval = self.state.interval
        now = time.perf_counter()
        record = {**({"stage": self.settings.stage} if self.settings.stage else {}),
                  "step": self.state.step, "loss": interval["loss"] / max(interval["n"], 1),
                  "lr": self.schedule.get_last_lr()[0],
                  "throughput": interval["samples"] * self.world / max(now - self._t_interval, 1e-9)}
        if self.rehearsal is not None:
            record.update(signal_quality(interval))
            record.update(self.rehearsal.sampler.telemetry())
        return record

    def run(self, resume: bool = False) -> LoopResult:
        """Set up (restoring when ``resume`` and a checkpoint exists), train to the end, report."""
        self.setup(resume)
        try:
            with stop_on_sigint() as interrupted:
                for step in range(self.state.step, self.settings.steps):
                    self.step(step)
                    self._boundary(interrupted["stop"])
        finally:
            if self.writer:
                self.writer.close()
            if self._prefetcher is not None:
                self._prefetcher.shutdown(wait=True)
        totals = torch.tensor([self.state.counts[k] for k in COUNTERS], dtype=torch.float64)
        if self.world > 1:
            totals = distributed.all_reduce_sum(totals)
        return LoopResult(self.settings.steps, self._elapsed_before + time.perf_counter() - self._t0,
                          {k: int(v) for k, v in zip(COUNTERS, totals.tolist(), strict=True)},
                          self.state.last_loss, self.resumed_from,
                          {n: r.columns() for n, r in self.records.items()} if self.records else None)
