"""No-grad passes: per-sample predictions, the largest batch that fits, and selection passes for samplers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..data import BatchTransform, Task
from ..errors import MixcdError
from ..metrics import Ledger
from ..models import MixcdNet
from ..objectives import Batch, Objective
from ..runtime import autocast_for
from ..samplers.base import SelectionContext
from ..sources import PAD


def is_token_batch(inputs: torch.Tensor) -> bool:
    """Whether model inputs are a token batch: (n, 2, L) integer ids and segments padded with PAD
    (`text.TokenSource`), told apart from images as `data.join_batches` does."""
    return inputs.ndim == 3 and not inputs.is_floating_point()


def token_count(inputs: torch.Tensor) -> int:
    """Non-padding tokens of a batch of model inputs (0 for images). Token sources are read on the host, so
    counting their batches before they move to a device waits for nothing."""
    return int((inputs[:, 0] != PAD).sum()) if is_token_batch(inputs) else 0


def batch_tokens(batch: Batch) -> int:
    """Non-padding tokens a pass over ``batch`` reads: what its source counted (a generated sequence's prompt and
    target, both an encoder's and a decoder's rows), else what its inputs show (`token_count`)."""
    return int(batch.tokens) if batch.tokens is not None else token_count(batch.inputs)


def row_tokens(task: Task, batch_size: int = 4096) -> torch.Tensor | None:
    """Each row's non-padding tokens (int64), or None when the task's rows are not token sequences: what a pass
    over the rows costs in tokens, known without running the model (a cached artifact's cost)."""
    if len(task) == 0 or not is_token_batch(task.inputs(torch.arange(1))):
        return None
    laid_out = bool(getattr(task.source, "laid_out", False))  # every id row is read (a decoder's and encoder's)
    parts = []
    for start in range(0, len(task), batch_size):
        chunk = torch.arange(start, min(start + batch_size, len(task)))
        if laid_out:
            parts.append((task.batch(chunk).inputs != PAD).flatten(1).sum(1).long().cpu())
        else:
            parts.append((task.inputs(chunk)[:, 0] != PAD).sum(1).long().cpu())
    return torch.cat(parts)


def task_tokens(task: Task) -> int:
    """The non-padding tokens of every row of ``task`` (0 for tasks without tokens)."""
    per_row = row_tokens(task)
    return 0 if per_row is None else int(per_row.sum())


@dataclass
class Predictions:
    """Per-sample columns of one inference pass (CPU tensors); ``pred`` is None for kinds that have none."""

    loss: torch.Tensor
    pred: torch.Tensor | None
    conf: torch.Tensor
    correct: torch.Tensor


@torch.no_grad()
def predict_task(model: MixcdNet, task: Task, head: str, transform: BatchTransform, device: torch.device,
                 batch_size: int, ledger: Ledger | None = None, purpose: str = "eval", amp: str = "auto",
                 rows: torch.Tensor | None = None, progress: Any = None) -> Predictions:
    """Per-sample loss, prediction, confidence and correctness as the task kind's objective defines them."""
    was_training = model.training
    model.eval()
    rows = torch.arange(len(task)) if rows is None else rows
    objective = task.objective
    chunks: list[dict[str, torch.Tensor | None]] = []
    try:
        for start in range(0, rows.numel(), batch_size):
            chunk = rows[start:start + batch_size]
            batch = task.batch(chunk)
            tokens = batch_tokens(batch)  # on the host, before the copy
            chunks.append(_chunk_columns(model, task, objective, chunk, batch, head, transform, device, amp))
            if ledger is not None:
                ledger.add(purpose, forward=chunk.numel(), forward_tokens=tokens)
            if progress is not None:
                progress(chunk.numel())
    finally:
        model.train(was_training)
    if not chunks:
        empty = torch.empty(0)
        return Predictions(empty, empty.long() if objective.has_classes else None, empty, empty.bool())
    cat = {k: None if chunks[0][k] is None else torch.cat([c[k] for c in chunks]) for k in chunks[0]}
    return Predictions(cat["loss"], cat["pred"], cat["conf"], cat["correct"])


def _chunk_columns(model: MixcdNet, task: Task, objective: Objective, chunk: torch.Tensor, host: Batch, head: str,
                   transform: BatchTransform, device: torch.device, amp: str) -> dict[str, torch.Tensor | None]:
    """The objective's columns of one chunk of rows (``host``: their batch), each group read by its own head."""
    batch = host.to(device)
    x = transform(batch.inputs)
    groups = task.head_groups(chunk, head)
    if len(groups) == 1:
        return _columns(model, objective, x, batch.targets, groups[0][0], device, amp)
    # rows of several tasks, each read by its own head (heads may differ in size)
    out: dict[str, torch.Tensor | None] = {}
    for name, at in groups:
        on = at.to(x.device)
        part = _columns(model, objective, x[on], batch.targets[on], name, device, amp)
        for key, value in part.items():
            if value is None:
                out[key] = None
                continue
            if key not in out:
                out[key] = torch.empty((chunk.numel(), *value.shape[1:]), dtype=value.dtype)
            out[key][at] = value
    return out


def _columns(model: MixcdNet, objective: Objective, x: torch.Tensor, y: torch.Tensor, head: str,
             device: torch.device, amp: str) -> dict[str, torch.Tensor | None]:
    with autocast_for(device, amp):
        outputs = model(x, head)
    cols = objective.columns(outputs, y)
    return {k: None if v is None else v.cpu() for k, v in cols.items()}


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
            batch = task.batch(chunk)
            with autocast_for(device, amp):
                out.append(model.features(transform(batch.inputs.to(device, non_blocking=True))).float().cpu())
            if ledger is not None:
                ledger.add(purpose, forward=chunk.numel(), forward_tokens=batch_tokens(batch))
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, model.num_features)


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
                    model(transform(task.inputs(rows).to(device)), head)
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
        self.objective = pool.objective
        self.ft_batch: Batch | None = None  # this step's fine-tune batch, set by the trainer before each draw
        self.ft_tokens = 0  # its non-padding tokens (token tasks), counted by the trainer on the host

    def wrong(self, rows: torch.Tensor) -> torch.Tensor:
        preds = predict_task(self.model, self.pool, self.prior_head, self.transform, self.device,
                             self.batch_size, self.ledger, "selection", rows=rows)
        return ~preds.correct

    @torch.no_grad()
    def pool_losses(self, rows: torch.Tensor, params: dict[str, torch.Tensor] | None) -> torch.Tensor:
        host = self.pool.batch(rows)
        tokens = batch_tokens(host)
        batch = host.to(self.device)
        x, y = self.transform(batch.inputs), batch.targets
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
                losses[at] = self.objective.loss(logits, y[on]).cpu()
        finally:
            self.model.train(was_training)
        self.ledger.add("selection", forward=rows.numel(), forward_tokens=tokens)
        return losses

    def virtual_params(self) -> dict[str, torch.Tensor]:
        if self.ft_batch is None:
            raise MixcdError("virtual step asked for before the fine-tune batch was set")
        ft = self.ft_batch
        names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        # Cloned buffers: the virtual forward must not move BatchNorm running statistics.
        buffers = {n: b.clone() for n, b in self.model.named_buffers()}
        outputs = torch.func.functional_call(self.model, {**params, **buffers}, (ft.inputs,), {"head": self.ft_head})
        loss = self.objective.loss(outputs, ft.targets, "mean")
        grads = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
        self.ledger.add("selection", forward=len(ft), backward=len(ft), forward_tokens=self.ft_tokens,
                        backward_tokens=self.ft_tokens)
        new = {n: (params[n] - self.lr * g).detach() if g is not None else params[n].detach()
               for n, g in zip(names, grads, strict=True)}
        return {**new, **{n: b for n, b in self.model.named_buffers()}}
