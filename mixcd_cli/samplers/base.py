"""The rehearsal-sampler interface and the pool facts every sampler draws from."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import MixcdError
from ..registry import Registry

SAMPLERS: Registry = Registry("sampler")

@dataclass
class PoolInfo:
    """Snapshot columns of the prior pool P under θ0, as CPU tensors (index = pool row)."""

    targets: torch.Tensor  # int64
    correct0: torch.Tensor  # bool
    loss0: torch.Tensor  # float32
    conf0: torch.Tensor  # float32
    aux: dict[str, torch.Tensor] = field(default_factory=dict)
    # (k, seed) → a k-means cluster id per pool row on the snapshot model's features, computed on first
    # use and cached beside the snapshot (snapshot.cluster_column); None where no model is at hand.
    clusters: Callable[[int, int], torch.Tensor] | None = None

    def __len__(self) -> int:
        return int(self.targets.numel())

    def eligible(self, tau: float = 0.0) -> torch.Tensor:
        """Rows that can become collateral damage: prior-correct, confidence ≥ τ."""
        mask = self.correct0
        if tau > 0:
            mask = mask & (self.conf0 >= tau)
        return torch.nonzero(mask).flatten()


class SelectionContext:
    """What samplers that spend extra passes (oracle_cd, mir) may use at a step.

    Implemented by the trainer (training.inference.ModelSelection); each method charges the passes
    it makes to the ledger under ``selection``, so no sampler can hide its cost.
    """

    def predict(self, rows: torch.Tensor) -> torch.Tensor:
        """Current predicted labels on pool rows (no grad)."""
        raise NotImplementedError

    def pool_losses(self, rows: torch.Tensor, params: dict[str, torch.Tensor] | None) -> torch.Tensor:
        """Per-sample loss on pool rows, under the live weights or under ``params``."""
        raise NotImplementedError

    def virtual_params(self) -> dict[str, torch.Tensor]:
        """Weights after one virtual SGD step on this step's fine-tune batch."""
        raise NotImplementedError


class BinnedIndex:
    """Rows grouped by bin in one sorted array, so drawing uniformly within chosen bins is O(b)."""

    def __init__(self, rows: torch.Tensor, bins: torch.Tensor, num_bins: int) -> None:
        order = torch.argsort(bins, stable=True)
        self.rows = rows[order]
        self.sizes = torch.bincount(bins, minlength=num_bins)
        self.offsets = torch.zeros(num_bins + 1, dtype=torch.int64)
        self.offsets[1:] = torch.cumsum(self.sizes, 0)

    def draw_within(self, bins: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        sizes = self.sizes[bins]
        u = torch.rand(bins.numel(), generator=generator, dtype=torch.float64)
        # u < 1 in float64, so ⌊u·size⌋ ≤ size − 1 for any size below 2^52: no clamp needed.
        pos = self.offsets[bins] + (u * sizes).long()
        return self.rows[pos]


class RehearsalSampler:
    """Chooses b pool rows per step and observes the step's predictions on them.

    ``draw`` runs before the step's forward pass; ``observe`` gets, from that same forward pass
    (before the optimizer step), whether each drawn row is now predicted wrong. Samplers own a
    seeded generator, and their state (counts + generator) round-trips through ``state_dict``.
    """

    name = "base"
    draws = True  # 'none' sets False: no rehearsal at all
    wants_loss = False  # True: observe() needs each drawn row's training loss (amr, loss_ema)

    def __init__(self, pool: PoolInfo, batch_size: int, seed: int) -> None:
        self.pool = pool
        self.batch_size = int(batch_size)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.notes: list[str] = []  # values the sampler had to adjust, said to the user

    def draw(self, step: int, ctx: SelectionContext | None = None) -> torch.Tensor:
        raise NotImplementedError

    def observe(self, rows: torch.Tensor, wrong_now: torch.Tensor, loss_now: torch.Tensor | None = None) -> None:
        """Learn from the training forward pass over the last draw's rows (in the order ``draw`` gave them):
        whether each is now predicted wrong and, where the trainer has it, its per-sample training loss.
        Default: nothing to learn."""

    def telemetry(self) -> dict[str, Any]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


def uniform_rows(rows: torch.Tensor, b: int, generator: torch.Generator) -> torch.Tensor:
    if rows.numel() == 0:
        raise MixcdError("cannot draw rehearsal samples from an empty set")
    return rows[torch.randint(rows.numel(), (b,), generator=generator)]


def distinct_rows(rows: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k different members of ``rows``, uniformly without replacement, in O(k) when k ≪ |rows|.

    A full permutation would cost O(N) per step on a 10^7-sample pool; drawing with replacement
    and dropping repeats (keeping first occurrences, so the result is a pure function of the
    generator) needs one round almost always when k is small against N.
    """
    n = rows.numel()
    if k > n:
        raise MixcdError(f"cannot draw {k} distinct rehearsal candidates from {n} pool samples")
    if 4 * k >= n:
        return rows[torch.randperm(n, generator=generator)[:k]]
    picked: list[int] = []
    seen: set[int] = set()
    while len(picked) < k:
        for i in torch.randint(n, (k - len(picked),), generator=generator).tolist():
            if i not in seen:
                seen.add(i)
                picked.append(i)
    return rows[torch.tensor(picked, dtype=torch.int64)]


def create_sampler(name: str, pool: PoolInfo, batch_size: int, seed: int, **options: Any) -> RehearsalSampler:
    """Build registered sampler ``name``; options left out take the schema's defaults (mixcd_cli/schema.py).

    Unknown options are refused with the valid ones named.
    """
    from ..errors import unknown_choice
    from ..schema import sampler_defaults

    cls = SAMPLERS.get(name)
    defaults = sampler_defaults(name)
    for key in options:
        if key not in defaults:
            raise unknown_choice(f"option for sampler '{name}'", key, list(defaults) or ["(none)"])
    return cls(pool, batch_size, seed, **{**defaults, **options})
