"""Runs and the groups they form: runs with the same whole configuration, named by what sets them apart.

A group is a sampler at a ratio with one experiment's settings and one set of sampler options; a seed run twice
in one group counts once (its latest run). Groups are shown in a fixed sampler order and marked when they sit
on the Pareto frontier of (retention, ft_acc) at their ratio.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..samplers import SAMPLERS
from ..schema import INTRODUCED
from . import folds

# What retention means in the random-equivalent budget, the frontier and the plots: accuracy on the tasks
# before the last stage (for a single fine-tuning that is the prior-test accuracy, pre_acc).
RETENTION = "earlier_acc"
# Random rehearsal is, by definition of the random-equivalent budget, the curve every other sampler is measured
# on, and plain fine-tuning (no rehearsal) that curve's budget-0 point: these two names are the comparison's.
RANDOM = "random"
NO_REHEARSAL = "none"
# The order samplers are shown in. The registry keeps no registration order (SAMPLERS.names() is sorted), so
# the samplers shown first are listed here; any other, registered since or unknown, follows alphabetically.
DISPLAY_ORDER = (NO_REHEARSAL, RANDOM, "class_balanced", "loss_high", "loss_low", "mixcd", "mixcd_plus", "oracle_cd",
                 "mir")
Settings = tuple[tuple[str, str], ...]


@dataclass
class Run:
    """One finished run as the report needs it: who it is, its settings, and its metrics by name."""

    path: Path
    experiment: str
    sampler: str
    mix_ratio: float
    seed: int
    values: dict[str, float | None]
    settings: Settings = ()  # what must match for runs to be compared (sampler options aside)
    options: Settings = ()  # the sampler's own options
    mtime: float = 0.0
    matrix: list[list[float | None]] | None = None  # the accuracy matrix of a multi-stage run
    complete: bool = True  # False: a runs.csv row whose unrecorded settings could not be known


@dataclass
class Group:
    """The runs of one sampler at one ratio with one whole configuration, a seed each."""

    experiment: str
    sampler: str
    mix_ratio: float
    settings: Settings = ()
    options: Settings = ()
    runs: list[Run] = field(default_factory=list)
    duplicates: int = 0  # runs left out because their seed was already in the group
    label: str = ""  # the settings that set this group apart from the experiment's others
    variant: str = ""  # the sampler options that set it apart from the same sampler's other groups
    frontier: bool | None = None  # on the Pareto frontier of (pre_acc, ft_acc) at its ratio

    @property
    def name(self) -> str:
        """The sampler, with its distinguishing options: ``mixcd (partition=aux aux_column=source)``."""
        return self.sampler + (f" ({self.variant})" if self.variant else "")

    def seeds(self) -> dict[int, Run]:
        """Each seed's run."""
        return {r.seed: r for r in self.runs}

    def by_seed(self, key: str) -> dict[int, float | None]:
        """Each seed's value of metric ``key``."""
        return {s: r.values.get(key) for s, r in self.seeds().items()}

    def mean_over(self, key: str, seeds: Sequence[int]) -> float | None:
        """The mean of ``key`` over ``seeds`` (None when one of them lacks it)."""
        by_seed = self.seeds()
        return folds.mean_or_none([by_seed[s].values.get(key) for s in seeds])

    def stat(self, key: str) -> tuple[float | None, float | None, int]:
        """(mean, sample std, n) over the runs that have the value."""
        return folds.mean_std([v for v in (r.values.get(key) for r in self.runs) if v is not None])


def display_rank(sampler: str) -> tuple[int, str]:
    """Where ``sampler`` is shown: the listed ones in `DISPLAY_ORDER`, then every other alphabetically."""
    order = DISPLAY_ORDER.index(sampler) if sampler in DISPLAY_ORDER else len(DISPLAY_ORDER)
    return order, sampler


def group_runs(runs: Sequence[Run], budget: str | None = None) -> list[Group]:
    """Groups of runs with the same whole configuration; within one, a seed counts once (its latest run); the
    frontier marked at each ratio, or with ``budget`` (a run value: the budget on an axis) among the groups of
    at most the same budget (`mark_frontier`)."""
    groups: dict[tuple[Any, ...], Group] = {}
    for r in sorted(runs, key=lambda r: r.mtime, reverse=True):
        key = (r.experiment, r.sampler, r.mix_ratio, r.settings, r.options)
        group = groups.setdefault(key, Group(*key))
        if r.seed in group.seeds():
            group.duplicates += 1
        else:
            group.runs.append(r)
    for g in groups.values():
        g.runs.sort(key=lambda r: r.seed)
    label_groups(list(groups.values()))
    ordered = sorted(groups.values(), key=lambda g: (g.experiment, g.label, display_rank(g.sampler), g.mix_ratio,
                                                     g.options))
    mark_frontier(ordered, budget)
    return ordered


def theta0_accuracy(run: Run) -> float | None:
    """θ0's prior-test accuracy in a run (pre_acc0; pre_acc + forgetting in a runs.csv written before it had it)."""
    v = run.values
    if v.get("pre_acc0") is not None:
        return v["pre_acc0"]
    if v.get("pre_acc") is not None and v.get("forgetting") is not None:
        return v["pre_acc"] + v["forgetting"]  # type: ignore[operator]
    return None


def mixed_theta0(groups: Sequence[Group]) -> list[dict[str, Any]]:
    """Where runs that should start from one θ0 do not: the same experiment, settings and seed, and θ0's accuracy
    differs (to 1e-6: a test set's accuracy, not rounding). Runs made on another machine, with another thread
    count or by other code can pretrain another θ0 from the same seed; set side by side, their differences mix
    θ0s with samplers. One entry per experiment and settings: each such seed's accuracies with their run counts."""
    found: dict[tuple[str, str, Settings], dict[int, Counter[float]]] = {}
    for g in groups:
        for r in g.runs:
            acc = theta0_accuracy(r)
            if acc is not None:
                found.setdefault((g.experiment, g.label, g.settings), {}).setdefault(r.seed, Counter())[
                    round(acc, 6)] += 1
    mixed = []
    for (experiment, label, _), seeds in found.items():
        bad = {s: accs for s, accs in sorted(seeds.items()) if len(accs) > 1}
        if bad:
            mixed.append({"experiment": experiment, "config": label, "seeds": list(bad),
                          "theta0_acc": {str(s): {f"{acc:.6g}": n for acc, n in sorted(accs.items())}
                                         for s, accs in bad.items()}})
    return mixed


def label_groups(groups: Sequence[Group]) -> None:
    """Name each group by the settings in which its experiment's groups differ (e.g. ``trainer.steps=200``),
    and each variant by the sampler options in which it differs from the sampler's defaults."""
    by_exp: dict[str, list[Group]] = defaultdict(list)
    for g in groups:
        by_exp[g.experiment].append(g)
    for gs in by_exp.values():
        values: dict[str, set[str]] = defaultdict(set)
        for g in gs:
            for k, v in g.settings:
                values[k].add(v)
        keys = {k for g in gs for k, _ in g.settings}
        varying = sorted(k for k in keys if len(values[k]) > 1 or any(k not in dict(g.settings) for g in gs))
        for g in gs:
            own = dict(g.settings)
            g.label = " ".join(f"{k}={json.loads(own[k]) if k in own else '-'}" for k in varying)
    by_sampler: dict[tuple[str, str], list[Group]] = defaultdict(list)
    for g in groups:
        by_sampler[(g.experiment, g.sampler)].append(g)
    for gs in by_sampler.values():
        _name_variants(gs)


def _name_variants(gs: Sequence[Group]) -> None:
    """Name the groups of one sampler by the options in which they differ from its declared defaults."""
    options: dict[str, set[str]] = defaultdict(set)
    for g in gs:
        for k, v in g.options:
            options[k].add(v)
    varying = sorted(k for k, vs in options.items() if len(vs) > 1)
    declared = SAMPLERS.spec(gs[0].sampler).defaults() if gs[0].sampler in SAMPLERS else {}
    defaults = {**{f"sampler.{k}": v for k, v in declared.items()}, **INTRODUCED}
    for g in gs:
        own = dict(g.options)
        # named by what sets it apart from the sampler's defaults: the default group keeps the plain name
        g.variant = " ".join(f"{k.removeprefix('sampler.')}={json.loads(own[k])}" for k in varying
                             if k in own and json.loads(own[k]) is not None
                             and json.loads(own[k]) != defaults.get(k, object()))


def mark_frontier(groups: Sequence[Group], budget: str | None = None) -> None:
    """Mark the groups no other group beats on both retention and ft_acc (means): at each ratio (same experiment
    and settings), or, with ``budget``, among all of the experiment's groups with the same settings, where a
    group competes only with those of at most its budget (mean of that run value) and one as good on both at a
    smaller budget beats it: the frontier at equal or lower compute on that axis."""
    cells: dict[tuple[Any, ...], list[Group]] = defaultdict(list)
    for g in groups:
        cells[(g.experiment, g.settings) + ((g.mix_ratio,) if budget is None else ())].append(g)
    for cell in cells.values():
        points = [(g.stat(RETENTION)[0], g.stat("ft_acc")[0]) for g in cell]
        marks = folds.frontier(points, None if budget is None else [g.stat(budget)[0] for g in cell])
        for g, mark in zip(cell, marks, strict=True):
            if mark is not None:  # a group without both means keeps its mark unset
                g.frontier = mark
