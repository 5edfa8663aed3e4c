"""The random-equivalent budget of groups: the budget random rehearsal with the same settings would need,
interpolated on its own curve (in log budget), to reach a group's retention; from the means, for each seed,
with an interval over seeds labelled by its method; beside it, the accuracy gap to random at the group's own
budget (the numbers themselves: `folds`). Budgets are read on one axis (`axes`): a run value named by
``budget``, the rehearsal rows drawn by default here, the compute the sampler adds on the total axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import folds
from .axes import AXES, ONE_TIME, budget_key, other_axis
from .groups import NO_REHEARSAL, RANDOM, RETENTION, Group

# The samplers that make up the random curve (plain fine-tuning as its budget 0): never measured against it.
CURVE_SAMPLERS = (RANDOM, NO_REHEARSAL)
FoldMemo = dict[tuple[int, tuple[int, ...], str], tuple[float | None, folds.Interval | None, list[int]]]
REHEARSAL_BUDGET = "rehearsal_budget"


def curve_budget(g: Group, budget: str = REHEARSAL_BUDGET) -> float | None:
    """A curve group's budget: random's mean budget, 0 for plain fine-tuning (it adds nothing on either axis)."""
    return g.stat(budget)[0] if g.sampler == RANDOM else 0.0


def curve_groups(groups: Sequence[Group], target: Group, budget: str = REHEARSAL_BUDGET) -> list[Group]:
    """Random rehearsal (and plain fine-tuning, budget 0) with ``target``'s experiment and settings,
    one group per budget."""
    chosen: dict[float, Group] = {}
    for g in groups:
        if g.experiment == target.experiment and g.settings == target.settings and g.sampler in CURVE_SAMPLERS:
            at = curve_budget(g, budget)
            if at is not None and g.stat(RETENTION)[0] is not None:
                chosen.setdefault(at, g)
    return [chosen[b] for b in sorted(chosen)]


def random_curve(members: Sequence[Group], seeds: Sequence[int] | None = None, budget: str = REHEARSAL_BUDGET
                 ) -> list[tuple[float, float]]:
    """(budget, mean retention) of the `curve_groups` ``members`` (over ``seeds`` when given, else over each
    group's runs), plain fine-tuning as budget 0."""
    return folds.curve((curve_budget(g, budget),
                        g.stat(RETENTION)[0] if seeds is None else g.mean_over(RETENTION, seeds)) for g in members)


def fold_on(groups: Sequence[Group], g: Group, seeds: Sequence[int] | None = None, memo: FoldMemo | None = None,
            budget: str = REHEARSAL_BUDGET) -> tuple[float | None, folds.Interval | None, list[int]]:
    """(fold, its labelled interval, the seeds used) of ``g`` against random's curve (log-budget
    interpolation), over the seeds ``g`` shares with every point of that curve (and with ``seeds`` when
    given): the point and its interval always come from the same seeds, so a group with fewer seeds than
    random's is never set against a curve averaged over others. The interval is the 95% bootstrap from
    `folds.MIN_SEEDS_FOR_INTERVAL` seeds, the range of the per-seed folds below (`folds.seed_interval`).
    ``memo`` keeps each (group, seeds) result, so the report bootstraps the default mix-cd once, not once for
    every setting compared with it."""
    members = curve_groups(groups, g, budget) if g.sampler not in CURVE_SAMPLERS else []
    own, _, _ = g.stat(budget)
    if not members or not own:
        return None, None, []
    common = set(g.seeds()).intersection(*(set(c.seeds()) for c in members))
    usable = sorted(common if seeds is None else common & set(seeds))
    if not usable or g.mean_over(RETENTION, usable) is None:
        return None, None, usable
    key = (id(g), tuple(usable), budget)
    if memo is not None and key in memo:
        return memo[key]

    def over(chosen: Sequence[int]) -> float:
        return folds.fold_of(random_curve(members, chosen, budget), g.mean_over(RETENTION, chosen), own)  # type: ignore[arg-type]

    result = over(usable), folds.seed_interval(over, usable, {s: over([s]) for s in usable}), usable
    if memo is not None:
        memo[key] = result
    return result


def equivalents(groups: Sequence[Group], memo: FoldMemo | None = None, budget: str = REHEARSAL_BUDGET
                ) -> list[dict[str, Any]]:
    """Random-equivalent budget of every group of a sampler other than random, on the axis whose run value is
    ``budget``: from the means (in log budget, and in linear budget beside it), per seed, with a labelled
    interval, and the accuracy gap to random at the group's own budget, all over the seeds the group shares with
    every point of random's curve."""
    rows = []
    for g in groups:
        fold, interval, common = fold_on(groups, g, memo=memo, budget=budget)
        if not common:
            continue
        members = curve_groups(groups, g, budget)
        own, acc = g.stat(budget)[0], g.mean_over(RETENTION, common)
        points = random_curve(members, common, budget)
        needs, label = folds.equivalent_budget(points, acc)  # type: ignore[arg-type]
        linear, linear_label = folds.equivalent_budget(points, acc, "linear")  # type: ignore[arg-type]
        per_seed = {s: folds.fold_of(random_curve(members, [s], budget), g.mean_over(RETENTION, [s]), own)  # type: ignore[arg-type]
                    for s in common}
        # paired by seed: each seed's retention against random's curve made of that seed alone
        gap, gap_per_seed, gap_interval = folds.accuracy_gap({s: random_curve(members, [s], budget) for s in common},
                                                             {s: g.mean_over(RETENTION, [s]) for s in common},
                                                             own)  # type: ignore[arg-type]
        rows.append({"experiment": g.experiment, "config": g.label, "sampler": g.name, "mix_ratio": g.mix_ratio,
                     "pre_acc": acc, "budget": own, "rehearsal_budget": g.stat(REHEARSAL_BUDGET)[0],
                     "budget_one_time": g.stat(ONE_TIME)[0] if budget == AXES["total"] else None,
                     "random_equivalent_budget": needs,
                     "random_equivalent": label, "fold": _shown(fold, needs, label),
                     # "> max": random never gets there within its largest budget, so the fold is at least that
                     # budget over the group's own, which on the total axis can be below 1
                     "fold_at_least": points[-1][0] / own if needs is None and label.startswith(">") else None,
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


def on_both_axes(groups: Sequence[Group], axis: str, memo: FoldMemo | None = None) -> list[dict[str, Any]]:
    """`equivalents` on ``axis``, each row carrying the same group's fold on the other axis (``other_axis``:
    its axis, budget, random-equivalent label, fold, linear fold and labelled interval), so a table can set the
    two side by side; a group that has a fold on one axis only (no compute recorded) has none on the other."""
    other = other_axis(axis)
    theirs = {(e["experiment"], e["config"], e["sampler"], e["mix_ratio"]): e
              for e in equivalents(groups, memo, budget_key(other))}
    rows = equivalents(groups, memo, budget_key(axis))
    for e in rows:
        o = theirs.get((e["experiment"], e["config"], e["sampler"], e["mix_ratio"]))
        e["axis"] = axis
        e["other_axis"] = None if o is None else {
            "axis": other, "budget": o["budget"], "random_equivalent": o["random_equivalent"], "fold": o["fold"],
            "fold_at_least": o["fold_at_least"],
            "fold_linear": o["fold_linear"], "fold_interval": o["fold_interval"], "fold_per_seed": o["fold_per_seed"],
            "paired_seeds": o["paired_seeds"]}
    return rows
