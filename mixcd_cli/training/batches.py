"""The data a training run feeds its model: the seeded epoch-wise row order (resumable from two integers and
shardable across ranks), what a run's order costs without running it, and batches made ready for the device."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..data import BatchTransform, Task
from ..objectives import Batch
from ..runtime import derive_seed
from .settings import TrainSettings


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
        """This rank's rows of the next batch."""
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


def order_seed(settings: TrainSettings) -> int:
    """The seed of a run's data order (`BatchOrder`)."""
    return derive_seed(settings.seed, f"{settings.purpose}-order")


def planned_rows(n: int, settings: TrainSettings) -> Iterator[torch.Tensor]:
    """The rows each step of a one-process run of ``settings`` over a task of ``n`` rows trains on, in the order
    its `BatchOrder` gives them: what such a run costs, known without running it (θ0's pretraining read from
    the cache)."""
    order = BatchOrder(n, settings.batch_size, order_seed(settings))
    for _ in range(settings.steps):
        yield order.next()


def host_batch(task: Task, rows: torch.Tensor, device: torch.device) -> Batch:
    """Inputs and targets of task rows; pinned when bound for a GPU so the copy is asynchronous."""
    batch = task.batch(rows)
    return batch.pinned() if device.type == "cuda" else batch


def to_device(batch: Batch, transform: BatchTransform, device: torch.device, channels_last: bool) -> Batch:
    """The batch on ``device`` with model-ready (normalised) inputs."""
    moved = batch.to(device)
    x = transform(moved.inputs)
    if channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return Batch(x, moved.targets, moved.mask, moved.tokens)
