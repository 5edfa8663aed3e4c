"""mix-cd (arXiv 2402.08096) exactly as DESIGN §4: per-bin collateral-damage rates estimated for free."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .. import distributed
from ..errors import MixcdError, unknown_choice
from ..schema import PARTITIONS
from .base import SAMPLERS, BinnedIndex, PoolInfo, RehearsalSampler, SelectionContext


def quantile_bins(groups: torch.Tensor, loss: torch.Tensor, k: int) -> torch.Tensor:
    """Equal-count loss bins within each group: bin = group·k + ⌊rank·k_g / n_g⌋, k_g = min(k, n_g).

    Ties in loss are broken by row order so the partition is a pure function of the snapshot.
    """
    n = loss.numel()
    if n == 0:
        return torch.empty(0, dtype=torch.int64)
    by_loss = torch.argsort(loss, stable=True)
    order = by_loss[torch.argsort(groups[by_loss], stable=True)]
    g_sorted = groups[order]
    _, counts = torch.unique_consecutive(g_sorted, return_counts=True)
    starts = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    sizes = torch.repeat_interleave(counts, counts)
    rank = torch.arange(n) - starts
    k_g = sizes.clamp_max(k)
    bins_sorted = g_sorted * k + torch.div(rank * k_g, sizes, rounding_mode="floor")
    bins = torch.empty_like(bins_sorted)
    bins[order] = bins_sorted
    return bins


def partition_eligible(pool: PoolInfo, rows: torch.Tensor, partition: str, num_bins: int,
                       aux_column: str | None) -> torch.Tensor:
    """Bin id (0..K'-1, no empty bins) for each eligible row."""
    if partition not in PARTITIONS:
        raise unknown_choice("mixcd partition", partition, PARTITIONS)
    if num_bins < 1:
        raise MixcdError(f"mixcd: num_bins must be ≥ 1, got {num_bins}")
    loss = pool.loss0[rows]
    zeros = torch.zeros(rows.numel(), dtype=torch.int64)
    if partition.startswith("aux"):
        if not aux_column:
            raise MixcdError(f"mixcd partition '{partition}' needs sampler.aux_column (one of: "
                             f"{', '.join(sorted(pool.aux)) or 'none in this dataset'})")
        if aux_column not in pool.aux:
            raise unknown_choice("aux column", aux_column, list(pool.aux) or ["(dataset has none)"])
        label = pool.aux[aux_column][rows].long()
    else:
        label = pool.targets[rows].long()
    if partition == "loss":
        raw = quantile_bins(zeros, loss, num_bins)
    elif partition in ("class", "aux"):
        raw = label
    else:
        _, groups = torch.unique(label, return_inverse=True)
        raw = quantile_bins(groups, loss, num_bins)
    _, compact = torch.unique(raw, return_inverse=True)
    return compact


@SAMPLERS.register("mixcd", help="mix-cd: draw bins by estimated collateral-damage rate (DESIGN §4)")
class MixCDSampler(RehearsalSampler):
    """Decayed per-bin counts m_k (seen) and s_k (CD) from the training forward pass.

    α̂_k = (s_k + a) / (m_k + a + b0);  p_k = (1-ε)·n_k α̂_k / Σ n_j α̂_j + ε·n_k/|E|.
    """

    name = "mixcd"

    def __init__(self, pool: PoolInfo, batch_size: int, seed: int, *, partition: str, num_bins: int, tau: float,
                 decay: float, prior_a: float, prior_b: float, epsilon: float, aux_column: str | None) -> None:
        super().__init__(pool, batch_size, seed)
        if not 0.0 <= epsilon <= 1.0:
            raise MixcdError(f"mixcd: epsilon must be in [0, 1], got {epsilon}")
        if not 0.0 < decay <= 1.0:
            raise MixcdError(f"mixcd: decay λ must be in (0, 1], got {decay}")
        if prior_a <= 0 or prior_b <= 0:
            raise MixcdError(f"mixcd: prior_a and prior_b must be > 0, got {prior_a}, {prior_b}")
        rows = pool.eligible(tau)
        if rows.numel() == 0:
            raise MixcdError(f"mixcd: no eligible pool samples (prior-correct with confidence ≥ τ={tau}); "
                             "lower sampler.tau or check the prior model")
        self.partition, self.tau, self.decay = partition, float(tau), float(decay)
        self.prior_a, self.prior_b, self.epsilon = float(prior_a), float(prior_b), float(epsilon)
        bins = partition_eligible(pool, rows, partition, int(num_bins), aux_column)
        self.num_bins = int(bins.max()) + 1
        if partition == "loss" and self.num_bins < num_bins:
            self.notes.append(f"sampler.num_bins={num_bins} is more than the {rows.numel()} eligible samples allow: "
                              f"using {self.num_bins} bins")
        self.index = BinnedIndex(rows, bins, self.num_bins)
        # The K-sized arithmetic runs in numpy: a torch op costs microseconds of dispatch, and this
        # runs every step on the host.
        self.sizes = self.index.sizes.double().numpy()
        self._uniform = self.sizes / self.sizes.sum()
        # Row → bin lookup (−1 = not eligible): the O(N) int32 state that makes observe O(b).
        self.bin_of = np.full(len(pool), -1, dtype=np.int32)
        self.bin_of[rows.numpy()] = bins.numpy()
        self.seen = np.zeros(self.num_bins)
        self.cd = np.zeros(self.num_bins)

    def alpha(self) -> np.ndarray:
        """α̂_k, the Beta-smoothed collateral-damage rate of each bin."""
        return (self.cd + self.prior_a) / (self.seen + self.prior_a + self.prior_b)

    def probs(self) -> np.ndarray:
        """p_k, the probability of drawing from bin k at the next step."""
        mass = self.sizes * self.alpha()
        return (1.0 - self.epsilon) * mass / mass.sum() + self.epsilon * self._uniform

    def draw(self, step: int, ctx: SelectionContext | None = None) -> torch.Tensor:
        p = torch.from_numpy(self.probs())
        bins = torch.multinomial(p, self.batch_size, replacement=True, generator=self.generator)
        return self.index.draw_within(bins, self.generator)

    def observe(self, rows: torch.Tensor, wrong_now: torch.Tensor) -> None:
        # One bincount over (bin + 1, wrong) pairs; bin −1 (not eligible) lands in row 0 and is dropped.
        pair = (self.bin_of[rows.numpy()].astype(np.int64) + 1) * 2 + wrong_now.numpy()
        counts = np.bincount(pair, minlength=2 * (self.num_bins + 1)).reshape(-1, 2)[1:]
        new = np.stack([counts.sum(1), counts[:, 1]]).astype(np.float64)
        if distributed.world() > 1:
            # Every rank must sample from the same p: sum the observations of all ranks (on the
            # host, over the group's gloo half when training runs on CUDA).
            new = distributed.all_reduce_sum(torch.from_numpy(new)).numpy()
        self.seen *= self.decay
        self.seen += new[0]
        self.cd *= self.decay
        self.cd += new[1]

    def telemetry(self) -> dict[str, Any]:
        return {"alpha": [round(v, 5) for v in self.alpha().tolist()],
                "p": [round(v, 5) for v in self.probs().tolist()],
                "bin_sizes": self.index.sizes.tolist()}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "seen": torch.from_numpy(self.seen.copy()),
                "cd": torch.from_numpy(self.cd.copy())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if state["seen"].shape != self.seen.shape:
            raise MixcdError("sampler state does not match this partition (different number of bins)")
        self.seen[:] = state["seen"].numpy()
        self.cd[:] = state["cd"].numpy()
