"""The training engine: mixed fine-tune + rehearsal batches, inference, checkpoints and telemetry."""

from __future__ import annotations

import hashlib
import math
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
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
    description: str = "fine-tune"
    extras: dict[str, Any] = field(default_factory=dict)


class BatchOrder:
    """Epoch-wise permutations from (seed, epoch): resuming needs only (epoch, position)."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size, self.seed = n, min(batch_size, n), seed
        self.epoch, self.pos = 0, 0
        self._perm = self._permutation()

    def _permutation(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(derive_seed(self.seed, f"epoch{self.epoch}"))
        return torch.randperm(self.n, generator=g)

    def next(self) -> torch.Tensor:
        if self.pos + self.batch_size > self.n:  # drop the ragged tail: every batch has B rows
            self.epoch, self.pos = self.epoch + 1, 0
            self._perm = self._permutation()
        rows = self._perm[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
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


def train_loop(model: MixcdNet, task: Task, head: str, transform: BatchTransform, device: torch.device,
               settings: TrainSettings, ledger: Ledger, sampler: RehearsalSampler | None = None,
               pool: Task | None = None, pool_head: str | None = None, correct0: torch.Tensor | None = None,
               telemetry_path: Path | None = None, checkpoint_path: Path | None = None,
               resume: bool = False, progress: Any = None) -> LoopResult:
    """Train ``model`` on ``task``; with a sampler, mix ``rehearsal_batch`` pool rows into every step.

    The loss is (Σ fine-tune CE + w·Σ rehearsal CE) / (B + b). The sampler sees, from this very
    forward pass and before the optimizer step, which of its rows are now predicted wrong.
    """
    rehearse = sampler is not None and sampler.draws and settings.rehearsal_batch > 0
    if rehearse and (pool is None or pool_head is None or correct0 is None):
        raise ValueError("rehearsal needs the pool task, its head and the prior correctness column")
    model.to(device)
    if settings.channels_last and device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = create_optimizer(model.parameters(), settings.optimizer, settings.lr, settings.momentum,
                                 settings.weight_decay)
    schedule = create_schedule(optimizer, settings.schedule, settings.steps, settings.warmup_steps)
    order = BatchOrder(len(task), settings.batch_size, derive_seed(settings.seed, f"{settings.purpose}-order"))
    selection = None
    if rehearse:
        selection = EngineSelection(model, pool, transform, device, pool_head, head, ledger, settings.lr,
                                    settings.eval_batch_size)
    hits = drawn = 0
    start_step = 0
    resumed_from = None
    telemetry_offset = None
    elapsed_before = 0.0
    if resume and checkpoint_path is not None and checkpoint_path.is_file():
        state = safe_torch_load(checkpoint_path, what="training checkpoint")
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            order.load_state_dict(state["order"])
            ledger.load_state_dict(state["ledger"])
            if rehearse and state.get("sampler") is not None:
                sampler.load_state_dict(state["sampler"])
            torch.set_rng_state(state["torch_rng"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise MixcdError(f"checkpoint {checkpoint_path} does not match this run's configuration "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc
        start_step, hits, drawn = int(state["step"]), int(state["hits"]), int(state["drawn"])
        telemetry_offset, elapsed_before = int(state["telemetry_offset"]), float(state["elapsed"])
        resumed_from = start_step
    writer = JsonlWriter(telemetry_path, truncate_to=telemetry_offset) if telemetry_path else None

    def save(step: int) -> None:
        if checkpoint_path is None:
            return
        atomic_torch_save({
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
            "scaler": None,  # bf16 autocast needs no loss scaling
            "order": order.state_dict(), "ledger": ledger.state_dict(),
            "sampler": sampler.state_dict() if rehearse else None, "torch_rng": torch.get_rng_state(),
            "step": step, "hits": hits, "drawn": drawn, "telemetry_offset": writer.offset if writer else 0,
            "elapsed": elapsed_before + time.perf_counter() - t0,
        }, checkpoint_path)

    t0 = time.perf_counter()
    interval = {"t": t0, "samples": 0, "hits": 0, "drawn": 0, "loss": 0.0, "n": 0}
    loss_value = float("nan")
    b = settings.rehearsal_batch if rehearse else 0
    with stop_on_sigint() as interrupted:
        for step in range(start_step, settings.steps):
            rows = order.next()
            ft_x = transform(task.images(rows).to(device, non_blocking=True))
            ft_y = task.targets[rows].to(device, non_blocking=True)
            if settings.channels_last and device.type == "cuda":
                ft_x = ft_x.contiguous(memory_format=torch.channels_last)
            if rehearse:
                selection.ft_x, selection.ft_y = ft_x, ft_y
                pool_rows = sampler.draw(step, selection)
                pool_x = transform(pool.images(pool_rows).to(device, non_blocking=True))
                pool_y = pool.targets[pool_rows].to(device, non_blocking=True)
                x = torch.cat([ft_x, pool_x])
            else:
                x = ft_x
            with autocast_for(device, settings.amp):
                feats = model.features(x)
                ft_logits = model.heads[head](feats[: ft_x.shape[0]]).float()
                loss_sum = F.cross_entropy(ft_logits, ft_y, reduction="sum")
                if rehearse:
                    reh_logits = model.heads[pool_head](feats[ft_x.shape[0]:]).float()
                    loss_sum = loss_sum + settings.rehearsal_weight * F.cross_entropy(reh_logits, pool_y,
                                                                                      reduction="sum")
            loss = loss_sum / x.shape[0]
            if not torch.isfinite(loss):
                if writer:
                    writer.close()
                where = f"; the last good checkpoint is {checkpoint_path}" if checkpoint_path and \
                    checkpoint_path.is_file() else ""
                raise TrainingDiverged(f"loss became {loss.item()} at step {step}{where}; "
                                       "lower the learning rate or check the data")
            if rehearse:
                wrong_now = (reh_logits.detach().argmax(1) != pool_y).cpu()
                sampler.observe(pool_rows, wrong_now)
                step_hits = int((correct0[pool_rows] & wrong_now).sum())
                hits, drawn = hits + step_hits, drawn + pool_rows.numel()
                interval["hits"] += step_hits
                interval["drawn"] += pool_rows.numel()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            ledger.add(settings.purpose, forward=ft_x.shape[0], backward=ft_x.shape[0])
            if rehearse:
                ledger.add("rehearsal", forward=b, backward=b)
            loss_value = float(loss.detach())
            interval["samples"] += x.shape[0]
            interval["loss"] += loss_value
            interval["n"] += 1
            done = step + 1
            if progress is not None:
                progress(done, loss_value)
            if writer and (done % settings.log_every == 0 or done == settings.steps):
                now = time.perf_counter()
                record = {"step": done, "loss": interval["loss"] / interval["n"],
                          "lr": schedule.get_last_lr()[0],
                          "throughput": interval["samples"] / max(now - interval["t"], 1e-9),
                          "hit_rate": interval["hits"] / interval["drawn"] if interval["drawn"] else None}
                if rehearse:
                    record.update(sampler.telemetry())
                writer.write(record)
                interval = {"t": now, "samples": 0, "hits": 0, "drawn": 0, "loss": 0.0, "n": 0}
            if settings.checkpoint_every and (done % settings.checkpoint_every == 0 or done == settings.steps):
                save(done)
            if interrupted["stop"] and done < settings.steps:
                save(done)
                if writer:
                    writer.close()
                raise MixcdError(f"interrupted at step {done}/{settings.steps}; checkpoint saved to "
                                 f"{checkpoint_path}; rerun with resume=true to continue")
    if writer:
        writer.close()
    return LoopResult(settings.steps, elapsed_before + time.perf_counter() - t0,
                      hits / drawn if drawn else None, drawn, hits, loss_value, resumed_from)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
