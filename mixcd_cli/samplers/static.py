"""Baselines whose distribution never changes: none, random, class_balanced, loss_high, loss_low."""

from __future__ import annotations

import torch

from ..errors import MixcdError, unknown_choice
from ..schema import OVER
from .base import SAMPLERS, BinnedIndex, PoolInfo, RehearsalSampler, SelectionContext, uniform_rows


def _support(pool: PoolInfo, over: str) -> torch.Tensor:
    if over not in OVER:
        raise unknown_choice("value for 'over'", over, OVER)
    rows = torch.arange(len(pool)) if over == "pool" else pool.eligible()
    if rows.numel() == 0:
        raise MixcdError("the prior model got no pool sample right, so the eligible set is empty; "
                         "use over=pool or check the prior model")
    return rows


@SAMPLERS.register("none", help="no rehearsal: plain fine-tuning")
class NoneSampler(RehearsalSampler):
    name = "none"
    draws = False

    def draw(self, step: int, ctx: SelectionContext | None = None) -> torch.Tensor:
        return torch.empty(0, dtype=torch.int64)


@SAMPLERS.register("random", help="uniform over the pool (or the eligible set, over=eligible)")
class RandomSampler(RehearsalSampler):
    name = "random"

    def __init__(self, pool: PoolInfo, batch_size: int, seed: int, over: str) -> None:
        super().__init__(pool, batch_size, seed)
        self.over = over
        self.rows = _support(pool, over)

    def draw(self, step: int, ctx: SelectionContext | None = None) -> torch.Tensor:
        if self.over == "pool":  # no index array needed: O(b)
            return torch.randint(len(self.pool), (self.batch_size,), generator=self.generator)
        return uniform_rows(self.rows, self.batch_size, self.generator)


@SAMPLERS.register("class_balanced", help="uniform class, then uniform within the class")
class ClassBalancedSampler(RehearsalSampler):
    name = "class_balanced"

    def __init__(self, pool: PoolInfo, batch_size: int, seed: int, over: str) -> None:
        super().__init__(pool, batch_size, seed)
        rows = _support(pool, over)
        classes, bins = torch.unique(pool.targets[rows], return_inverse=True)
        self.num_classes = int(classes.numel())
        self.index = BinnedIndex(rows, bins, self.num_classes)

    def draw(self, step: int, ctx: SelectionContext | None = None) -> torch.Tensor:
        bins = torch.randint(self.num_classes, (self.batch_size,), generator=self.generator)
        return self.index.draw_within(bins, self.generator)


class _LossWeighted(RehearsalSampler):
    """p ∝ exp(sign · z(ℓ0) / T) with z the standardised prior loss; drawn by inverse CDF in O(b log N)."""

    sign = 1.0

    def __init__(self, pool: PoolInfo, batch_size: int, seed: int, temperature: float,
                 over: str) -> None:
        super().__init__(pool, batch_size, seed)
        if temperature <= 0:
            raise MixcdError(f"{self.name}: temperature must be > 0, got {temperature}")
        self.rows = _support(pool, over)
        loss = pool.loss0[self.rows].double()
        z = (loss - loss.mean()) / loss.std().clamp_min(1e-12) if loss.numel() > 1 else loss * 0
        logits = self.sign * z / temperature
        w = torch.exp(logits - logits.max())
        self.cdf = torch.cumsum(w, 0)
        self.cdf /= self.cdf[-1].clone()

    def draw(self, step: int, ctx: SelectionContext | None = None) -> torch.Tensor:
        u = torch.rand(self.batch_size, generator=self.generator, dtype=torch.float64)
        pos = torch.searchsorted(self.cdf, u).clamp_max(self.rows.numel() - 1)
        return self.rows[pos]


@SAMPLERS.register("loss_high", help="static weights favouring high prior loss (hardest first), tempered")
class LossHighSampler(_LossWeighted):
    name = "loss_high"
    sign = 1.0


@SAMPLERS.register("loss_low", help="static weights favouring low prior loss (most confident first), tempered")
class LossLowSampler(_LossWeighted):
    name = "loss_low"
    sign = -1.0
