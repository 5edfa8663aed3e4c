"""Rehearsal samplers: what each step mixes in from the prior pool (DESIGN §4, §5)."""

from . import bandit, mixcd, selection, static  # noqa: F401  (registration side effects)
from .base import SAMPLERS, PoolInfo, RehearsalSampler, SelectionContext, create_sampler

__all__ = ["SAMPLERS", "PoolInfo", "RehearsalSampler", "SelectionContext", "create_sampler"]
