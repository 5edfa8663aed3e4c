"""The random-equivalent budget of groups: the rehearsal budget random rehearsal with the same settings would
need, interpolated on its own curve (in log budget), to reach a group's retention; from the means, for each
seed, with an interval over seeds labelled by its method; beside it, the accuracy gap to random at the group's
own budget (the numbers themselves: `folds`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import folds
from .groups import NO_REHEARSAL, RANDOM, RETENTION, Group

# The samplers that make up the random curve (plain fine-tuning as its budget 0): never measured against it.
CURVE_SAMPLERS = (RANDOM, NO_REHEARSAL)
FoldMemo = dict[tuple[int, tuple[int, ...]], tuple[float | None, folds.Interval | None, list[int]]]


def curve_budget(g: Group) -> float | None:
    """A curve group's budget: random's mean rehearsal budget, 0 for plain fine-tuning."""
    return g.stat("rehearsal_budget")[0] if g.sampler == RANDOM else 0.0


def curve_groups(groups: Sequence[Group], target: Group) -> list[Group]:
    """Random rehearsal (and plain fine-tuning, budget 0) with ``target``'s experiment and settings,
    one group per budget."""
    chosen: dict[float, Group] = {}
    for g in groups:
        if g.experiment == target.experiment and g.settings == target.settings and g.sampler in CURVE_SAMPLERS:
            budget = curve_budget(g)
            if budget is not None and g.stat(RETENTION)[0] is not None:
                chosen.setdefault(budget, g)
    return [chosen[b] for b in sorted(chosen)]


def random_curve(members: Sequence[Group], seeds: Sequence[int] | None = None) -> list[tuple[float, float]]:
    """(rehearsal budget, mean retention) of the `curve_groups` ``members`` (over ``seeds`` when given, else
    over each group's runs), plain fine-tuning as budget 0."""
    return folds.curve((curve_budget(g), g.stat(RETENTION)[0] if seeds is None else g.mean_over(RETENTION, seeds))
                       for g in members)


def fold_on(groups: Sequence[Group], g: Group, seeds: Sequence[int] | None = None, memo: FoldMemo | None = None
            ) -> tuple[float | None, folds.Interval | None, list[int]]:
    """(fold, its labelled interval, the seeds used) of ``g`` against random's curve (log-budget
    interpolation), over the seeds ``g`` shares with every point of that curve (and with ``seeds`` when
    given): the point and its interval always come from the same seeds, so a group with fewer seeds than
    random's is never set against a curve averaged over others. The interval is the 95% bootstrap from
    `folds.MIN_SEEDS_FOR_INTERVAL` seeds, the range of the per-seed folds below (`folds.seed_interval`).
    ``memo`` keeps each (group, seeds) result, so the report bootstraps the default mix-cd once, not once for
    every setting compared with it."""
    members = curve_groups(groups, g) if g.sampler not in CURVE_SAMPLERS else []
    own, _, _ = g.stat("rehearsal_budget")
    if not members or not own:
        return None, None, []
    common = set(g.seeds()).intersection(*(set(c.seeds()) for c in members))
    usable = sorted(common if seeds is None else common & set(seeds))
    if not usable or g.mean_over(RETENTION, usable) is None:
        return None, None, usable
    key = (id(g), tuple(usable))
    if memo is not None and key in memo:
        return memo[key]

    def over(chosen: Sequence[int]) -> float:
        return folds.fold_of(random_curve(members, chosen), g.mean_over(RETENTION, chosen), own)  # type: ignore[arg-type]

    result = over(usable), folds.seed_interval(over, usable, {s: over([s]) for s in usable}), usable
    if memo is not None:
        memo[key] = result
    return result


def equivalents(groups: Sequence[Group], memo: FoldMemo | None = None) -> list[dict[str, Any]]:
    """Random-equivalent budget of every group of a sampler other than random: from the means (in log budget,
    and in linear budget beside it), per seed, with a labelled interval, and the accuracy gap to random at the
    group's own budget, all over the seeds the group shares with every point of random's curve."""
    rows = []
    for g in groups:
        fold, interval, common = fold_on(groups, g, memo=memo)
        if not common:
            continue
        members = curve_groups(groups, g)
        own, acc = g.stat("rehearsal_budget")[0], g.mean_over(RETENTION, common)
        points = random_curve(members, common)
        budget, label = folds.equivalent_budget(points, acc)  # type: ignore[arg-type]
        linear, linear_label = folds.equivalent_budget(points, acc, "linear")  # type: ignore[arg-type]
        per_seed = {s: folds.fold_of(random_curve(members, [s]), g.mean_over(RETENTION, [s]), own)  # type: ignore[arg-type]
                    for s in common}
        # paired by seed: each seed's retention against random's curve made of that seed alone
        gap, gap_per_seed, gap_interval = folds.accuracy_gap({s: random_curve(members, [s]) for s in common},
                                                             {s: g.mean_over(RETENTION, [s]) for s in common},
                                                             own)  # type: ignore[arg-type]
        rows.append({"experiment": g.experiment, "config": g.label, "sampler": g.name, "mix_ratio": g.mix_ratio,
                     "pre_acc": acc, "rehearsal_budget": own, "random_equivalent_budget": budget,
                     "random_equivalent": label, "fold": _shown(fold, budget, label),
                     "random_equivalent_budget_linear": linear,
                     "fold_linear": _shown(folds.fold_of(points, acc, own, "linear"), linear, linear_label),  # type: ignore[arg-type]
                     "fold_per_seed": per_seed, "paired_seeds": len(common),
                     "fold_interval": interval, "fold_ci95": folds.ci95(interval),
                     "gap_to_random": gap, "gap_to_random_per_seed": gap_per_seed,
                     "gap_to_random_interval": gap_interval, "frontier": g.frontier})
    return rows


def _shown(fold: float | None, budget: float | None, label: str) -> float | None:
    """The fold a row shows: none where even random's smallest budget does better ('< min': no fold to read)."""
    return fold if budget is not None or label.startswith(">") else None
