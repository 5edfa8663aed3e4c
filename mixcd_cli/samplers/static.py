"""Baselines whose distribution never changes: none, random, class_balanced, loss_high, loss_low."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import MixcdError, unknown_choice
from ..options import opt
from .base import (
    OVER,
    BinnedIndex,
    NoOptions,
    OverOptions,
    PoolInfo,
    RehearsalSampler,
    SelectionContext,
    register_sampler,
    uniform_rows,
)


def reads_eligible(options: OverOptions) -> bool:
    """Whether a sampler over ``options.over`` reads θ0's correctness (the eligible set)."""
    return options.over == "eligible"


@dataclass
class TemperedOptions(OverOptions):
    temperature: float = opt(1.0, gt=0, help="T: weights exp(±z(loss0)/T); lower is sharper")


def _support(pool: PoolInfo, over: str) -> torch.Tensor:
    if over not in OVER:
        raise unknown_choice("value for 'over'", over, OVER)
    rows = torch.arange(len(pool)) if over == "pool" else pool.eligible()
    if rows.numel() == 0:
        raise MixcdError("the prior model got no pool sample right, so the eligible set is empty; "
                         "use over=pool or check the prior model")
    return rows


@register_sampler("none", help="no rehearsal: plain fine-tuning", options=NoOptions, draws=False, needs_snapshot=False)
class NoneSampler(RehearsalSampler):

    def draw(self, step: int, ctx: SelectionContext | None = None) -> torch.Tensor:
        return torch.empty(0, dtype=torch.int64)


@register_sampler("random", help="uniform over the pool (or the eligible set, over=eligible)", options=OverOptions,
                  needs_snapshot=reads_eligible)
class RandomSampler(RehearsalSampler):

    def __init__(self, pool: PoolInfo, batch_size: int, seed: int, over: str) -> None:
        super().__init__(pool, batch_size, seed)
        self.over = over
        self.rows = _support(pool, over)

    def draw(self, step: int, ctx: SelectionContext | None = None) -> torch.Tensor:
        if self.over == "pool":  # no index array needed: O(b)
            return torch.randint(len(self.pool), (self.batch_size,), generator=self.generator)
        return uniform_rows(self.rows, self.batch_size, self.generator)


@register_sampler("class_balanced", help="uniform class, then uniform within the class", options=OverOptions,
                  needs_snapshot=reads_eligible, needs_classes=True)
class ClassBalancedSampler(RehearsalSampler):
    def __init__(self, pool: PoolInfo, batch_size: int, seed: int, over: str) -> None:
        super().__init__(pool, batch_size, seed)
        column = pool.class_column(f"sampler {self.name}", "sampler=random, or a sampler with "
                                   "partition=loss, aux or kmeans (e.g. sampler=mixcd)")
        rows = _support(pool, over)
        classes, bins = torch.unique(column[rows], return_inverse=True)
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


@register_sampler("loss_high", help="static weights favouring high prior loss (hardest first), tempered",
                  options=TemperedOptions)
class LossHighSampler(_LossWeighted):
    sign = 1.0


@register_sampler("loss_low", help="static weights favouring low prior loss (most confident first), tempered",
                  options=TemperedOptions)
class LossLowSampler(_LossWeighted):
    sign = -1.0
