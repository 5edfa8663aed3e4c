"""Baselines that spend extra passes to choose: oracle_cd and MIR. Every pass is charged to the ledger."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import MixcdError
from ..options import opt
from .base import (
    OverOptions,
    PoolInfo,
    RehearsalSampler,
    RunFacts,
    SelectionContext,
    distinct_rows,
    register_sampler,
    uniform_rows,
)
from .static import _support, reads_eligible


@dataclass
class OracleOptions:
    refresh_every: int = opt(50, ge=1, help="M: refresh the collateral-damage set at steps M, 2M, ...")
    subset: int = opt(0, ge=0, help="rows of the eligible set each refresh checks (0: all of it)")
    tau: float = opt(0.0, ge=0, le=1, help="τ: eligible = prior-correct with confidence ≥ τ")


@dataclass
class MirOptions(OverOptions):
    candidates: int = opt(0, ge=0, help="C: uniform candidates scored per step (0: 4·b)")

    def check(self, facts: RunFacts) -> None:
        """The candidates cover the rehearsal batch."""
        if self.candidates and self.candidates < facts.rehearsal_batch:
            raise MixcdError(f"sampler.candidates={self.candidates} must be ≥ the rehearsal batch "
                             f"({facts.rehearsal_batch})")


def _need(ctx: SelectionContext | None, name: str) -> SelectionContext:
    if ctx is None:
        raise MixcdError(f"sampler '{name}' needs the model at draw time (a selection context)")
    return ctx


@register_sampler("oracle_cd", help="uniform over the true CD set, refreshed every M steps by a forward pass "
                                   "(from step M: at step 0 there is none)",
                  options=OracleOptions, needs_selection=True)
class OracleCDSampler(RehearsalSampler):
    """Knows the true collateral damage, at the price of forward passes over E (or a subset) every M steps.

    The refreshes run at steps M, 2M, ...: at step 0 the model is θ0, under which no eligible
    sample is wrong by construction, so a refresh there would be charged and find nothing.
    Until the first refresh the draws are uniform over E.
    """

    def __init__(self, pool: PoolInfo, batch_size: int, seed: int, *, refresh_every: int,
                 subset: int, tau: float) -> None:
        super().__init__(pool, batch_size, seed)
        if refresh_every < 1:
            raise MixcdError(f"oracle_cd: refresh_every must be ≥ 1, got {refresh_every}")
        self.eligible = pool.eligible(tau)
        if self.eligible.numel() == 0:
            raise MixcdError("oracle_cd: no eligible pool samples (the prior model got none right)")
        self.refresh_every, self.subset = int(refresh_every), int(subset)
        self.cd_rows = torch.empty(0, dtype=torch.int64)
        self.last_refresh = 0  # step 0 counts as refreshed: θ0 has no collateral damage
        self.refreshes = 0

    def refresh(self, ctx: SelectionContext) -> None:
        rows = self.eligible
        if 0 < self.subset < rows.numel():
            pick = torch.randperm(rows.numel(), generator=self.generator)[: self.subset]
            rows = rows[pick]
        self.cd_rows = rows[ctx.wrong(rows)]
        self.refreshes += 1

    def draw(self, step: int, ctx: SelectionContext | None = None) -> torch.Tensor:
        if step - self.last_refresh >= self.refresh_every:
            self.refresh(_need(ctx, self.name))
            self.last_refresh = step
        # No CD yet (early steps): fall back to uniform over E rather than draw nothing.
        support = self.cd_rows if self.cd_rows.numel() else self.eligible
        return uniform_rows(support, self.batch_size, self.generator)

    def telemetry(self) -> dict[str, Any]:
        return {"cd_set_size": int(self.cd_rows.numel()), "refreshes": self.refreshes}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "cd_rows": self.cd_rows.clone(), "last_refresh": self.last_refresh,
                "refreshes": self.refreshes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.cd_rows, self.last_refresh = state["cd_rows"].clone(), int(state["last_refresh"])
        self.refreshes = int(state["refreshes"])


@register_sampler("mir", help="Maximally Interfered Retrieval: top-b loss increase under a virtual SGD step",
                  options=MirOptions, needs_snapshot=reads_eligible, needs_selection=True)
class MIRSampler(RehearsalSampler):
    """Aljundi et al. 2019: C uniform candidates, loss before/after a virtual step on the fine-tune batch."""

    def __init__(self, pool: PoolInfo, batch_size: int, seed: int, *, candidates: int,
                 over: str) -> None:
        super().__init__(pool, batch_size, seed)
        self.candidates = int(candidates) if candidates else 4 * self.batch_size
        if self.candidates < self.batch_size:
            raise MixcdError(f"mir: candidates ({self.candidates}) must be ≥ the rehearsal batch "
                             f"({self.batch_size})")
        self.rows = _support(pool, over)
        if self.candidates > self.rows.numel():
            raise MixcdError(f"mir: candidates ({self.candidates}) exceed the {self.rows.numel()} pool samples "
                             "it draws from; lower sampler.candidates")

    def draw(self, step: int, ctx: SelectionContext | None = None) -> torch.Tensor:
        ctx = _need(ctx, self.name)
        cands = distinct_rows(self.rows, self.candidates, self.generator)
        before = ctx.pool_losses(cands, None)
        after = ctx.pool_losses(cands, ctx.virtual_params())
        top = torch.topk(after - before, self.batch_size, sorted=False).indices
        return cands[top]
