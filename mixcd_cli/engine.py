"""The training engine: mixed fine-tune + rehearsal batches, inference, checkpoints and telemetry."""

from __future__ import annotations

import hashlib
import math
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .artifacts import JsonlWriter, atomic_torch_save, safe_torch_load
from .data import BatchTransform, Task
from .errors import MixcdError, TrainingDiverged, unknown_choice
from .models import MixcdNet
from .samplers.base import Ledger, RehearsalSampler, SelectionContext


def derive_seed(seed: int, purpose: str) -> int:
    """Independent, reproducible seeds per purpose (model init, data order, sampler, ...)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{purpose}".encode()).digest()[:4], "little") & 0x7FFFFFFF


def resolve_device(name: str) -> torch.device:
    """'auto' → CUDA when present, else CPU; asking for CUDA without one is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MixcdError(f"device={name} requested but no CUDA device is available; use device=cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise MixcdError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N") from exc


def autocast_for(device: torch.device, amp: str) -> Any:
    """bf16 autocast on CUDA when supported (amp=auto|bf16); fp32 on CPU keeps runs bit-reproducible."""
    if amp not in ("auto", "bf16", "off"):
        raise unknown_choice("amp mode", amp, ["auto", "bf16", "off"])
    if device.type == "cuda" and amp != "off" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


# ------------------------------------------------------------------------------------ inference


@dataclass
class Predictions:
    loss: torch.Tensor
    pred: torch.Tensor
    conf: torch.Tensor
    correct: torch.Tensor


@torch.no_grad()
def predict_task(model: MixcdNet, task: Task, head: str, transform: BatchTransform, device: torch.device,
                 batch_size: int, ledger: Ledger | None = None, purpose: str = "eval", amp: str = "auto",
                 rows: torch.Tensor | None = None, progress: Any = None) -> Predictions:
    """Per-sample loss, predicted class, max-softmax confidence and correctness, no autograd."""
    was_training = model.training
    model.eval()
    rows = torch.arange(len(task)) if rows is None else rows
    out_loss, out_pred, out_conf = [], [], []
    targets_all = task.targets[rows]
    try:
        for start in range(0, rows.numel(), batch_size):
            chunk = rows[start:start + batch_size]
            x = transform(task.images(chunk).to(device, non_blocking=True))
            y = task.targets[chunk].to(device, non_blocking=True)
            with autocast_for(device, amp):
                logits = model(x, head).float()
            out_loss.append(F.cross_entropy(logits, y, reduction="none").cpu())
            prob = logits.softmax(1)
            conf, pred = prob.max(1)
            out_pred.append(pred.cpu())
            out_conf.append(conf.cpu())
            if ledger is not None:
                ledger.add(purpose, forward=chunk.numel())
            if progress is not None:
                progress(chunk.numel())
    finally:
        model.train(was_training)
    if not out_loss:
        empty = torch.empty(0)
        return Predictions(empty, empty.long(), empty, empty.bool())
    pred = torch.cat(out_pred)
    return Predictions(torch.cat(out_loss), pred, torch.cat(out_conf), pred == targets_all)


def largest_batch(model: MixcdNet, task: Task, head: str, transform: BatchTransform, device: torch.device,
                  amp: str = "auto", start: int = 8192, floor: int = 64) -> int:
    """The largest power-of-two inference batch (≤ start) that fits on the GPU; 1024 on the host."""
    if device.type != "cuda":
        return 1024
    was_training = model.training
    model.eval()
    size = start
    try:
        while size > floor:
            rows = torch.arange(min(size, len(task)))
            try:
                with torch.no_grad(), autocast_for(device, amp):
                    model(transform(task.images(rows).to(device)), head)
                torch.cuda.synchronize(device)
                return size
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                size //= 2
        return floor
    finally:
        model.train(was_training)


# ------------------------------------------------------------------------------------ selection


class EngineSelection(SelectionContext):
    """The engine's side of SelectionContext: live model, pool data, this step's fine-tune batch."""

    def __init__(self, model: MixcdNet, pool: Task, transform: BatchTransform, device: torch.device,
                 prior_head: str, ft_head: str, ledger: Ledger, lr: float, batch_size: int = 1024) -> None:
        self.model, self.pool, self.transform, self.device = model, pool, transform, device
        self.prior_head, self.ft_head, self.ledger, self.lr = prior_head, ft_head, ledger, lr
        self.batch_size = batch_size
        self.ft_x: torch.Tensor | None = None
        self.ft_y: torch.Tensor | None = None

    def predict(self, rows: torch.Tensor) -> torch.Tensor:
        preds = predict_task(self.model, self.pool, self.prior_head, self.transform, self.device,
                             self.batch_size, self.ledger, "selection", rows=rows)
        return preds.pred

    @torch.no_grad()
    def pool_losses(self, rows: torch.Tensor, params: dict[str, torch.Tensor] | None) -> torch.Tensor:
        x = self.transform(self.pool.images(rows).to(self.device))
        y = self.pool.targets[rows].to(self.device)
        was_training = self.model.training
        self.model.eval()
        try:
            if params is None:
                logits = self.model(x, self.prior_head)
            else:
                logits = torch.func.functional_call(self.model, params, (x,), {"head": self.prior_head})
        finally:
            self.model.train(was_training)
        self.ledger.add("selection", forward=rows.numel())
        return F.cross_entropy(logits.float(), y, reduction="none").cpu()

    def virtual_params(self) -> dict[str, torch.Tensor]:
        if self.ft_x is None or self.ft_y is None:
            raise MixcdError("virtual step asked for before the fine-tune batch was set")
        names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        # Cloned buffers: the virtual forward must not move BatchNorm running statistics.
        buffers = {n: b.clone() for n, b in self.model.named_buffers()}
        logits = torch.func.functional_call(self.model, {**params, **buffers}, (self.ft_x,), {"head": self.ft_head})
        loss = F.cross_entropy(logits.float(), self.ft_y)
        grads = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
        self.ledger.add("selection", forward=self.ft_x.shape[0], backward=self.ft_x.shape[0])
        new = {n: (params[n] - self.lr * g).detach() if g is not None else params[n].detach()
               for n, g in zip(names, grads, strict=True)}
        return {**new, **{n: b for n, b in self.model.named_buffers()}}


# ------------------------------------------------------------------------------------ optimisation


OPTIMIZERS = ("sgd", "adamw", "adam")
SCHEDULES = ("constant", "cosine", "linear")


def create_optimizer(params: Any, name: str, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                     nesterov: bool = False) -> torch.optim.Optimizer:
    if lr <= 0:
        raise MixcdError(f"learning rate must be > 0, got {lr}")
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise unknown_choice("optimizer", name, OPTIMIZERS)


def create_schedule(optimizer: torch.optim.Optimizer, name: str, total_steps: int,
                    warmup_steps: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    if name not in SCHEDULES:
        raise unknown_choice("schedule", name, SCHEDULES)

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if name == "cosine":
            return 0.5 * (1 + math.cos(math.pi * t))
        if name == "linear":
            return 1.0 - t
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class TrainSettings:
    """Plain settings of one training loop (fine-tune or pretrain)."""

    steps: int
    batch_size: int
    rehearsal_batch: int = 0
    rehearsal_weight: float = 1.0
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup_steps: int = 0
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 0
    eval_batch_size: int = 1024
    amp: str = "auto"
    channels_last: bool = False
    purpose: str = "finetune"


class BatchOrder:
    """Epoch-wise permutations from (seed, epoch): resuming needs only (epoch, position).

    Under DDP every rank computes the same permutation and takes its own slice of each global
    batch, so the ranks' shards never overlap.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> None:
        self.batch_size = min(batch_size, max(1, n // world))
        self.n, self.seed, self.rank, self.world = n, seed, rank, world
        self.epoch, self.pos = 0, 0
        self._perm = self._permutation()

    def _permutation(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(derive_seed(self.seed, f"epoch{self.epoch}"))
        return torch.randperm(self.n, generator=g)

    def next(self) -> torch.Tensor:
        span = self.batch_size * self.world
        if self.pos + span > self.n:  # drop the ragged tail: every batch has B rows per rank
            self.epoch, self.pos = self.epoch + 1, 0
            self._perm = self._permutation()
        start = self.pos + self.rank * self.batch_size
        rows = self._perm[start:start + self.batch_size]
        self.pos += span
        return rows

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self._perm = self._permutation()


@contextmanager
def stop_on_sigint() -> Iterator[dict[str, bool]]:
    """Turn Ctrl-C into a flag checked between steps, so the checkpoint written is consistent."""
    flag = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        if flag["stop"]:  # second Ctrl-C: the user insists
            raise KeyboardInterrupt
        flag["stop"] = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


@dataclass
class LoopResult:
    steps: int
    wall_time: float
    hit_rate: float | None
    drawn: int
    hits: int
    final_loss: float
    resumed_from: int | None


def dist_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) without torch.distributed."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class Interrupted(MixcdError):
    exit_code = 130


@dataclass
class _Pending:
    """Step t's rehearsal predictions on their way to the host; observed before draw t+1."""

    rows: torch.Tensor
    wrong: torch.Tensor
    event: Any


def _host_batch(task: Task, rows: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images and labels of task rows; pinned when bound for a GPU so the copy is asynchronous."""
    images = task.images(rows)
    if device.type == "cuda" and images.device.type == "cpu":
        images = images.pin_memory()
    return images, task.targets[rows]


def _to_device(images: torch.Tensor, labels: torch.Tensor, transform: BatchTransform, device: torch.device,
               channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    x = transform(images.to(device, non_blocking=True))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, labels.to(device, non_blocking=True)


def train_loop(model: MixcdNet, task: Task, head: str, transform: BatchTransform, device: torch.device,
               settings: TrainSettings, ledger: Ledger, sampler: RehearsalSampler | None = None,
               pool: Task | None = None, pool_head: str | None = None, correct0: torch.Tensor | None = None,
               telemetry_path: Path | None = None, checkpoint_path: Path | None = None,
               resume: bool = False, progress: Any = None, compile_model: bool = False,
               distributed: bool = True) -> LoopResult:
    """Train ``model`` on ``task``; with a sampler, mix ``rehearsal_batch`` pool rows into every step.

    The loss is (Σ fine-tune CE + w·Σ rehearsal CE) / (B + b). The sampler observes which of its
    rows this step's forward pass (before the optimizer step) predicts wrong; the observation is
    copied to the host asynchronously and folded in before the next draw, so on a GPU the host
    never waits for the backward pass. Under torch.distributed each rank trains on its shard of
    the fine-tune data and draws its own rehearsal rows; the sampler's counts are all-reduced.
    """
    rank, world = dist_info() if distributed else (0, 1)
    rehearse = sampler is not None and sampler.draws and settings.rehearsal_batch > 0
    if rehearse and (pool is None or pool_head is None or correct0 is None):
        raise ValueError("rehearsal needs the pool task, its head and the prior correctness column")
    cuda = device.type == "cuda"
    channels_last = settings.channels_last and cuda
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    model.train()
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    if compile_model:
        net = torch.compile(net)
    optimizer = create_optimizer(model.parameters(), settings.optimizer, settings.lr, settings.momentum,
                                 settings.weight_decay)
    schedule = create_schedule(optimizer, settings.schedule, settings.steps, settings.warmup_steps)
    order = BatchOrder(len(task), settings.batch_size, derive_seed(settings.seed, f"{settings.purpose}-order"),
                       rank, world)
    selection = None
    if rehearse:
        selection = EngineSelection(model, pool, transform, device, pool_head, head, ledger, settings.lr,
                                    settings.eval_batch_size)
    counters = {"hits": 0, "drawn": 0}
    start_step, resumed_from, telemetry_offset, elapsed_before = 0, None, None, 0.0
    fresh_interval = {"samples": 0, "hits": 0, "drawn": 0, "loss": 0.0, "n": 0}
    interval = dict(fresh_interval)
    if resume and checkpoint_path is not None and checkpoint_path.is_file():
        state = safe_torch_load(checkpoint_path, what="training checkpoint")
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            order.load_state_dict(state["order"])
            ledger.load_state_dict(state["ledger"])
            if rehearse:
                samplers = state["sampler"]
                sampler.load_state_dict(samplers[rank] if isinstance(samplers, list) else samplers)
            torch.set_rng_state(state["torch_rng"])
            interval.update(state["interval"])
        except (KeyError, IndexError, RuntimeError, ValueError, TypeError) as exc:
            raise MixcdError(f"checkpoint {checkpoint_path} does not match this run's configuration "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc
        start_step = int(state["step"])
        counters.update(hits=int(state["hits"]), drawn=int(state["drawn"]))
        telemetry_offset, elapsed_before = int(state["telemetry_offset"]), float(state["elapsed"])
        resumed_from = start_step
    writer = JsonlWriter(telemetry_path, truncate_to=telemetry_offset) if telemetry_path and rank == 0 else None
    pending: _Pending | None = None
    last_loss = float("nan")
    losses: list[tuple[int, torch.Tensor]] = []  # checked for NaN/inf at boundaries (one sync, not one per step)

    def flush() -> None:
        """Fold the pending observation into the sampler and the hit counters."""
        nonlocal pending
        if pending is None:
            return
        if pending.event is not None:
            pending.event.synchronize()
        wrong = pending.wrong.bool()
        sampler.observe(pending.rows, wrong)
        hits = int((correct0[pending.rows] & wrong).sum())
        counters["hits"] += hits
        counters["drawn"] += pending.rows.numel()
        interval["hits"] += hits
        interval["drawn"] += pending.rows.numel()
        pending = None

    def check_losses() -> float:
        """Raise at the first non-finite loss since the last check; return the latest loss."""
        if not losses:
            return last_loss
        values = torch.stack([v for _, v in losses]).float().cpu()
        bad = (~torch.isfinite(values)).nonzero()
        if bad.numel():
            step_bad = losses[int(bad[0])][0]
            if writer:
                writer.close()
            kept = f"; the last good checkpoint is kept: {checkpoint_path}" if checkpoint_path and \
                checkpoint_path.is_file() else ""
            raise TrainingDiverged(f"loss became {values[int(bad[0])].item()} at step {step_bad}{kept}; "
                                   "lower the learning rate or check the data")
        interval["loss"] += float(values.sum())
        interval["n"] += len(losses)
        losses.clear()
        return float(values[-1])

    def save(step: int) -> None:
        if checkpoint_path is None:
            return
        sampler_state = sampler.state_dict() if rehearse else None
        if world > 1 and rehearse:
            gathered: list[Any] = [None] * world
            torch.distributed.all_gather_object(gathered, sampler_state)
            sampler_state = gathered
        if rank != 0:
            return
        atomic_torch_save({
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
            "scaler": None,  # bf16 autocast needs no loss scaling
            "order": order_after_step if prefetcher else order.state_dict(), "ledger": ledger.state_dict(),
            "sampler": sampler_state,
            "torch_rng": torch.get_rng_state(), "step": step, "hits": counters["hits"],
            "drawn": counters["drawn"], "interval": interval,
            "telemetry_offset": writer.offset if writer else 0,
            "elapsed": elapsed_before + time.perf_counter() - t0,
        }, checkpoint_path)

    t0 = time.perf_counter()
    t_interval = t0
    b = settings.rehearsal_batch if rehearse else 0
    # Host-side sources on a GPU (or decoded from files): fetch step t+1's fine-tune images while
    # step t runs. Its rows come from the seeded order, so prefetching changes no number.
    in_memory = isinstance(getattr(task.source, "data", None), torch.Tensor)
    host_images = not in_memory or task.source.data.device.type == "cpu"
    prefetcher = None
    if (cuda and host_images) or not in_memory:
        from concurrent.futures import ThreadPoolExecutor

        prefetcher = ThreadPoolExecutor(1, thread_name_prefix="mixcd-prefetch")

    order_after_step = order.state_dict()
    upcoming = None
    if prefetcher is not None and start_step < settings.steps:
        upcoming = prefetcher.submit(_host_batch, task, order.next(), device)
    with stop_on_sigint() as interrupted:
        for step in range(start_step, settings.steps):
            if prefetcher is not None:
                batch = upcoming.result()
                order_after_step = order.state_dict()  # before the prefetch moves the order ahead
                upcoming = prefetcher.submit(_host_batch, task, order.next(), device) \
                    if step + 1 < settings.steps else None
            else:
                batch = _host_batch(task, order.next(), device)
            ft_x, ft_y = _to_device(*batch, transform, device, channels_last)
            n_ft = ft_x.shape[0]
            if rehearse:
                flush()
                selection.ft_x, selection.ft_y = ft_x, ft_y
                # MIR's virtual step must be the step about to be taken: the scheduled rate, not the base one.
                selection.lr = optimizer.param_groups[0]["lr"]
                pool_rows = sampler.draw(step, selection)
                pool_x, pool_y = _to_device(*_host_batch(pool, pool_rows, device), transform, device,
                                            channels_last)
                x = torch.cat([ft_x, pool_x])
                splits = [(head, 0, n_ft), (pool_head, n_ft, x.shape[0])]
            else:
                x, splits = ft_x, [(head, 0, n_ft)]
            with autocast_for(device, settings.amp):
                outputs = net(x, splits=splits)
                loss_sum = F.cross_entropy(outputs[0].float(), ft_y, reduction="sum")
                if rehearse:
                    reh_logits = outputs[1].float()
                    loss_sum = loss_sum + settings.rehearsal_weight * F.cross_entropy(reh_logits, pool_y,
                                                                                      reduction="sum")
            loss = loss_sum / x.shape[0]
            losses.append((step, loss.detach()))
            if not cuda:  # on the host a check is free; on a GPU it waits for a boundary
                last_loss = check_losses()
            if rehearse:
                wrong = reh_logits.detach().argmax(1) != pool_y
                event = None
                if cuda:
                    wrong = wrong.to("cpu", non_blocking=True)
                    event = torch.cuda.Event()
                    event.record()
                pending = _Pending(pool_rows, wrong, event)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            ledger.add(settings.purpose, forward=n_ft, backward=n_ft)
            if rehearse:
                ledger.add("rehearsal", forward=b, backward=b)
            interval["samples"] += x.shape[0]
            done = step + 1
            log_now = done % settings.log_every == 0 or done == settings.steps
            save_now = bool(settings.checkpoint_every) and (done % settings.checkpoint_every == 0
                                                            or done == settings.steps)
            stop_now = interrupted["stop"] and done < settings.steps
            if log_now or save_now or stop_now or done == settings.steps:
                last_loss = check_losses()
                if rehearse:
                    flush()
            if progress is not None and (not cuda or log_now):
                progress(done, last_loss)
            if log_now and writer:
                now = time.perf_counter()
                record = {"step": done, "loss": interval["loss"] / max(interval["n"], 1),
                          "lr": schedule.get_last_lr()[0],
                          "throughput": interval["samples"] * world / max(now - t_interval, 1e-9),
                          "hit_rate": interval["hits"] / interval["drawn"] if interval["drawn"] else None}
                if rehearse:
                    record.update(sampler.telemetry())
                writer.write(record)
            if log_now:
                t_interval = time.perf_counter()
                interval.update(fresh_interval)
            if save_now or stop_now:
                save(done)
            if stop_now:
                if writer:
                    writer.close()
                where = f"checkpoint saved to {checkpoint_path}; rerun the same command with resume=true " \
                        f"hydra.run.dir=<this run folder> to continue" if checkpoint_path else "nothing was saved"
                raise Interrupted(f"interrupted at step {done}/{settings.steps}; {where}")
    if writer:
        writer.close()
    if prefetcher is not None:
        prefetcher.shutdown(wait=True)
    hits, drawn = counters["hits"], counters["drawn"]
    if world > 1:
        totals = torch.tensor([hits, drawn], dtype=torch.float64)
        torch.distributed.all_reduce(totals)
        hits, drawn = int(totals[0]), int(totals[1])
    return LoopResult(settings.steps, elapsed_before + time.perf_counter() - t0,
                      hits / drawn if drawn else None, drawn, hits, last_loss, resumed_from)

