"""No-grad passes: per-sample predictions, the largest batch that fits, and selection passes for samplers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..data import BatchTransform, Task
from ..errors import MixcdError
from ..metrics import Ledger
from ..models import MixcdNet
from ..runtime import autocast_for
from ..samplers.base import SelectionContext


@dataclass
class Predictions:
    """Per-sample columns of one inference pass (CPU tensors)."""

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
            groups = task.head_groups(chunk, head)
            if len(groups) == 1:
                loss, pred, conf = _columns(model, x, y, groups[0][0], device, amp)
            else:  # rows of several tasks, each read by its own head (heads may differ in size)
                loss, pred, conf = torch.empty(chunk.numel()), torch.empty(chunk.numel(), dtype=torch.int64), \
                    torch.empty(chunk.numel())
                for name, at in groups:
                    on = at.to(x.device)
                    loss[at], pred[at], conf[at] = _columns(model, x[on], y[on], name, device, amp)
            out_loss.append(loss)
            out_pred.append(pred)
            out_conf.append(conf)
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


@torch.no_grad()
def task_features(model: MixcdNet, task: Task, transform: BatchTransform, device: torch.device, batch_size: int,
                  ledger: Ledger | None = None, purpose: str = "snapshot", amp: str = "auto") -> torch.Tensor:
    """The backbone's features (the heads' input) of every row of ``task``, float32 on the host."""
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, len(task), batch_size):
            chunk = torch.arange(start, min(start + batch_size, len(task)))
            with autocast_for(device, amp):
                out.append(model.features(transform(task.images(chunk).to(device, non_blocking=True))).float().cpu())
            if ledger is not None:
                ledger.add(purpose, forward=chunk.numel())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, model.num_features)


def _columns(model: MixcdNet, x: torch.Tensor, y: torch.Tensor, head: str, device: torch.device,
             amp: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    with autocast_for(device, amp):
        logits = model(x, head).float()
    conf, pred = logits.softmax(1).max(1)
    return F.cross_entropy(logits, y, reduction="none").cpu(), pred.cpu(), conf.cpu()


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


class ModelSelection(SelectionContext):
    """The trainer's side of SelectionContext: live model, pool data, this step's fine-tune batch."""

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
        losses = torch.empty(rows.numel())
        try:
            for head, at in self.pool.head_groups(rows, self.prior_head):
                on = at.to(self.device)
                if params is None:
                    logits = self.model(x[on], head)
                else:
                    logits = torch.func.functional_call(self.model, params, (x[on],), {"head": head})
                losses[at] = F.cross_entropy(logits.float(), y[on], reduction="none").cpu()
        finally:
            self.model.train(was_training)
        self.ledger.add("selection", forward=rows.numel())
        return losses

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
