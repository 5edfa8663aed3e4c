"""Adaptive memory replay (Smith et al. 2024, arXiv 2404.12526): clusters of the pool as bandit arms.

Like mix-cd it pays no extra pass: the reward of an arm is the training loss its replayed rows had in
the step's own forward pass. Unlike mix-cd it weighs arms by their value alone (not by their size) and
explores through a Boltzmann distribution rather than a uniform floor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import distributed
from ..errors import MixcdError
from ..options import opt
from .base import OVER, BinnedIndex, PoolInfo, RehearsalSampler, SelectionContext, register_sampler
from .mixcd import PARTITIONS, PartitionOptions, partition_rows, per_bin
from .static import _support


@dataclass
class AmrOptions(PartitionOptions):
    partition: str = opt("kmeans", choices=PARTITIONS,  # AMR's arms: clusters of θ0's features
                         help="arms: k-means clusters of θ0's features, or any of mix-cd's partitions")
    temperature: float = opt(1.0, gt=0, help="T: p = softmax(Q / T) over the arms' mean training losses")
    decay: float = opt(0.99, gt=0, le=1, help="per-step decay of the per-arm loss averages")
    over: str = opt("pool", choices=OVER, help="draw from the whole pool, or from the eligible set (prior-correct)")


def _amr_reads_snapshot(options: AmrOptions) -> bool:
    return options.over == "eligible" or options.uses_loss()


@register_sampler("amr", help="adaptive memory replay: pool clusters as bandit arms, rewarded by their rows' "
                              "training loss, drawn by a Boltzmann distribution with temperature T",
                  options=AmrOptions, needs_snapshot=_amr_reads_snapshot, needs_classes=PartitionOptions.uses_classes,
                  observes_loss=True)
class AMRSampler(RehearsalSampler):
    """Q_k = L_k / M_k, the decayed mean training loss of arm k's replayed rows (an arm never replayed
    takes the largest Q seen, so it stays worth trying); p_k = softmax(Q / T); rows uniform within the arm.
    """

    def __init__(self, pool: PoolInfo, batch_size: int, seed: int, *, partition: str, num_bins: int,
                 aux_column: str | None, kmeans_seed: int, temperature: float, decay: float, over: str) -> None:
        super().__init__(pool, batch_size, seed)
        if temperature <= 0:
            raise MixcdError(f"amr: temperature must be > 0, got {temperature}")
        if not 0.0 < decay <= 1.0:
            raise MixcdError(f"amr: decay must be in (0, 1], got {decay}")
        self.temperature, self.decay = float(temperature), float(decay)
        rows = _support(pool, over)
        arms = partition_rows(pool, rows, partition, int(num_bins), aux_column, kmeans_seed)
        self.num_arms = int(arms.max()) + 1
        self.index = BinnedIndex(rows, arms, self.num_arms)
        self.arm_of = np.full(len(pool), -1, dtype=np.int32)
        self.arm_of[rows.numpy()] = arms.numpy()
        self.seen = np.zeros(self.num_arms)
        self.loss = np.zeros(self.num_arms)

    def values(self) -> np.ndarray:
        """Q_k per arm."""
        tried = self.seen > 0
        q = np.zeros(self.num_arms)
        q[tried] = self.loss[tried] / self.seen[tried]
        q[~tried] = q[tried].max() if tried.any() else 0.0
        return q

    def probs(self) -> np.ndarray:
        """p_k = softmax(Q / T)."""
        z = self.values() / self.temperature
        w = np.exp(z - z.max())
        return w / w.sum()

    def row_probs(self) -> np.ndarray:
        """Probability of each pool row at one draw slot."""
        out = np.zeros(len(self.pool))
        member = self.arm_of >= 0
        sizes = self.index.sizes.double().numpy()
        out[member] = self.probs()[self.arm_of[member]] / sizes[self.arm_of[member]]
        return out

    def draw(self, step: int, ctx: SelectionContext | None = None) -> torch.Tensor:
        arms = torch.multinomial(torch.from_numpy(self.probs()), self.batch_size, replacement=True,
                                 generator=self.generator)
        return self.index.draw_within(arms, self.generator)

    def observe(self, rows: torch.Tensor, wrong: torch.Tensor, loss: torch.Tensor | None = None) -> None:
        if loss is None:
            raise MixcdError("amr is rewarded by per-sample training losses, and none were given")
        new = per_bin(self.arm_of, rows, loss.double().numpy(), self.num_arms)
        if distributed.world() > 1:  # every rank draws from the same p
            new = distributed.all_reduce_sum(torch.from_numpy(new)).numpy()
        self.seen = self.decay * self.seen + new[0]
        self.loss = self.decay * self.loss + new[1]

    def telemetry(self) -> dict[str, Any]:
        return {"value": [round(v, 5) for v in self.values().tolist()],
                "p": [round(v, 5) for v in self.probs().tolist()], "bin_sizes": self.index.sizes.tolist()}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "seen": torch.from_numpy(self.seen.copy()),
                "loss": torch.from_numpy(self.loss.copy())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if state["seen"].shape != self.seen.shape:
            raise MixcdError("sampler state does not match this partition (different number of arms)")
        self.seen[:] = state["seen"].numpy()
        self.loss[:] = state["loss"].numpy()
