"""Rehearsal samplers: what each step mixes in from the prior pool (docs/design.md §4, §5).

Each sampler is declared once, beside its class (``@register_sampler``); ``SAMPLERS.spec(name)`` is that
declaration. This package imports nothing above it (schema, recipes, report, cli): they ask it.
"""

from . import bandit, mixcd, selection, static  # noqa: F401  (registration side effects)
from .base import (
    OVER,
    SAMPLERS,
    PoolInfo,
    RehearsalSampler,
    RunFacts,
    SamplerSpec,
    SelectionContext,
    create_sampler,
    register_sampler,
    rehearsal_batch,
    sampler_options,
)
from .mixcd import ESTIMATES, MEMORIES, PARTITIONS

__all__ = ["ESTIMATES", "MEMORIES", "OVER", "PARTITIONS", "SAMPLERS", "PoolInfo", "RehearsalSampler", "RunFacts",
           "SamplerSpec", "SelectionContext", "create_sampler", "register_sampler", "rehearsal_batch",
           "sampler_options"]
