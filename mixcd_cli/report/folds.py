"""The report's mathematics, as pure functions on numbers: statistics over seeds, the random curve and its
interpolation, folds, labelled intervals (bootstrap, Student-t, or the range where seeds are few), the Pareto
frontier, paired differences.

Nothing here reads a file or knows a run: callers hand over budgets, accuracies and per-seed values, so each
function is tested on hand-made numbers (tests/test_folds.py).
"""

from __future__ import annotations

import math
import random as _random
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, TypedDict

BOOTSTRAP_SAMPLES = 2000
# Two-sided 95% quantiles of Student's t by degrees of freedom (n pairs − 1).
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        15: 2.131, 20: 2.086, 30: 2.042}
# Below this many seeds (or pairs) no interval is called "95%": the report gives the range of the per-seed
# values and names it a range. A percentile bootstrap over three seeds is, at its 2.5% and 97.5% ranks, the
# lowest and highest per-seed value (each seed drawn three times has probability 1/27 > 2.5%), so printing it
# as a 95% interval claimed a coverage it never had.
MIN_SEEDS_FOR_INTERVAL = 5
Curve = Sequence[tuple[float, float]]
Scale = Literal["log", "linear"]
SCALES: tuple[Scale, ...] = ("log", "linear")


class Interval(TypedDict):
    """An interval as the report shows and writes it: bounds, level (None for a range), method, how many
    seeds or pairs it is over, and its label (e.g. "95% bootstrap over 5 seeds", "range over 3 seeds")."""

    lo: float
    hi: float
    level: float | None
    method: str  # "bootstrap" | "t" | "range"
    n: int
    label: str


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None, int]:
    """(mean, sample standard deviation, n) of ``values``; (None, None, 0) when there are none, std 0 for one."""
    if not values:
        return None, None, 0
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std, len(values)


def mean_or_none(values: Sequence[float | None]) -> float | None:
    """The mean of ``values``; None when there are none or any of them is unknown."""
    known = [v for v in values if v is not None]
    if not values or len(known) < len(values):
        return None
    return sum(known) / len(known)


def curve(points: Iterable[tuple[float | None, float | None]]) -> list[tuple[float, float]]:
    """The (budget, accuracy) points that have both, sorted by budget: a piecewise curve."""
    return sorted((b, a) for b, a in points if b is not None and a is not None)


def _check_scale(scale: str) -> None:
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}, not {scale!r}")


def _budget_between(b0: float, b1: float, t: float, scale: Scale) -> float:
    """The budget a fraction ``t`` of the way from ``b0`` to ``b1``: in log budget, exp(log b0 + t·(log b1 −
    log b0)); linearly on a segment from budget 0 (plain fine-tuning), which has no log."""
    if scale == "linear" or b0 <= 0:
        return b0 + t * (b1 - b0)
    return b0 * (b1 / b0) ** t  # = exp(log b0 + t·(log b1 − log b0)), and exactly b1 at t = 1


def _fraction_of(b0: float, b1: float, budget: float, scale: Scale) -> float:
    """How far ``budget`` lies from ``b0`` to ``b1`` (0 to 1), in the same budget scale as `_budget_between`."""
    if b1 == b0:
        return 0.0
    if scale == "linear" or b0 <= 0:
        return (budget - b0) / (b1 - b0)
    return (math.log(budget) - math.log(b0)) / (math.log(b1) - math.log(b0))


def equivalent_budget(points: Curve, target: float, scale: Scale = "log") -> tuple[float | None, str]:
    """Budget at which the piecewise curve ``points`` first reaches ``target`` accuracy.

    Between two points accuracy is read as linear in log budget (``scale="log"``, the default): learning
    curves are concave in the budget, and a straight chord between two budgets lies under them, so linear
    interpolation (``scale="linear"``, kept for comparison) reads the equivalent budget high. The segment from
    budget 0 (plain fine-tuning) has no log and is read linearly in both scales.

    Returns (budget, label); budget is None with label '> max' when the curve never gets there, or
    '< min' when even its smallest budget does better. On a curve that is not monotone, the first crossing
    (smallest budget) is the one read.
    """
    _check_scale(scale)
    if not points:
        return None, "n/a (no random runs)"
    if target < points[0][1]:
        return None, f"< {points[0][0]:,.0f}"
    for (b0, a0), (b1, a1) in zip(points, points[1:], strict=False):
        if a0 <= target <= a1 or a1 <= target <= a0:
            if a1 == a0:
                return b0, f"{b0:,.0f}"
            budget = _budget_between(b0, b1, (target - a0) / (a1 - a0), scale)
            return budget, f"{budget:,.0f}"
    # The segments join up from the first point, so a target no segment spans lies above them all.
    return None, f"> {points[-1][0]:,.0f} (max)"


def accuracy_at(points: Curve, budget: float, scale: Scale = "log") -> float | None:
    """The curve's accuracy at ``budget``, interpolated as `equivalent_budget` reads it (linear in log budget,
    linear on the segment from 0); None outside the budgets the curve spans (nothing is extrapolated)."""
    _check_scale(scale)
    if not points or budget < points[0][0] or budget > points[-1][0]:
        return None
    for (b0, a0), (b1, a1) in zip(points, points[1:], strict=False):
        if b0 <= budget <= b1:
            return a0 + _fraction_of(b0, b1, budget, scale) * (a1 - a0)
    return points[-1][1]  # a one-point curve, at exactly its budget


def fold_of(points: Curve, target: float, own: float, scale: Scale = "log") -> float:
    """Equivalent budget over ``own`` budget; +inf where the curve never gets there, 0 where even its smallest
    budget does better."""
    budget, label = equivalent_budget(points, target, scale)
    if budget is not None:
        return budget / own
    return math.inf if label.startswith(">") else 0.0


def accuracy_gap(curves: Mapping[int, Curve], retention: Mapping[int, float | None], budget: float,
                 scale: Scale = "log") -> tuple[float | None, dict[int, float], Interval | None]:
    """Retention minus the curve at the same ``budget``, paired by seed: ``retention[s]`` against ``curves[s]``
    (random's curve made of seed s) read at ``budget`` (`accuracy_at`). → (mean gap, gap per seed, its interval
    by `mean_interval`: Student-t 95% from `MIN_SEEDS_FOR_INTERVAL` pairs, the range below), as accuracy
    (× 100 for points). The mean is None unless every seed has a gap: where ``budget`` lies beyond the curve
    (nothing is extrapolated) or a seed lacks its retention or its curve. A fold on a flat curve can be large
    while this is under a point: the report shows both."""
    per_seed: dict[int, float] = {}
    for s, acc in retention.items():
        random_acc = accuracy_at(curves[s], budget, scale) if s in curves else None
        if acc is not None and random_acc is not None:
            per_seed[s] = acc - random_acc
    if not per_seed or len(per_seed) < len(retention):
        return None, per_seed, None
    values = list(per_seed.values())
    return sum(values) / len(values), per_seed, mean_interval(values)


def bootstrap_interval(values: Callable[[Sequence[int]], float], seeds: Sequence[int],
                       samples: int = BOOTSTRAP_SAMPLES, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of ``values(resampled seeds)`` over ``samples`` resamplings of ``seeds`` with
    replacement (seeded: the same runs give the same interval)."""
    rng = _random.Random(seed)
    stats = sorted(values([rng.choice(seeds) for _ in seeds]) for _ in range(samples))
    lo = stats[int(math.floor((1 - level) / 2 * (samples - 1)))]
    hi = stats[int(math.ceil((1 + level) / 2 * (samples - 1)))]
    return lo, hi


def interval(lo: float, hi: float, method: str, n: int, level: float | None = 0.95, unit: str = "seeds"
             ) -> Interval:
    """A labelled interval: "95% bootstrap over 5 seeds", "95% Student-t, 6 pairs", "range over 3 seeds"."""
    if method == "range":
        label = f"range over {n} {unit}"
    elif method == "t":
        label = f"{100 * (level or 0):g}% Student-t, {n} {unit}"
    else:
        label = f"{100 * (level or 0):g}% {method} over {n} {unit}"
    return {"lo": lo, "hi": hi, "level": None if method == "range" else level, "method": method, "n": n,
            "label": label}


def value_range(values: Sequence[float], unit: str = "seeds") -> Interval | None:
    """The range (lowest, highest) of per-seed values, labelled as one; None under two values."""
    if len(values) < 2:
        return None
    return interval(min(values), max(values), "range", len(values), level=None, unit=unit)


def seed_interval(statistic: Callable[[Sequence[int]], float], seeds: Sequence[int],
                  per_seed: Mapping[int, float]) -> Interval | None:
    """The interval of a statistic over seeds: the percentile bootstrap (95%, `BOOTSTRAP_SAMPLES` resamplings
    of ``seeds``) from `MIN_SEEDS_FOR_INTERVAL` seeds up, the range of the ``per_seed`` values below, none
    under two seeds."""
    if len(seeds) < 2:
        return None
    if len(seeds) < MIN_SEEDS_FOR_INTERVAL:
        return value_range([per_seed[s] for s in seeds])
    return interval(*bootstrap_interval(statistic, seeds), "bootstrap", len(seeds))


def mean_interval(values: Sequence[float], unit: str = "pairs") -> Interval | None:
    """The interval of the mean of ``values`` (paired differences): the Student-t 95% interval from
    `MIN_SEEDS_FOR_INTERVAL` values up, the range of the values below, none under two."""
    if len(values) < MIN_SEEDS_FOR_INTERVAL:
        return value_range(values, unit)
    lo, hi = t_interval(values)
    return interval(lo, hi, "t", len(values), unit=unit)


def ci95(iv: Interval | None) -> list[float] | None:
    """[lo, hi] of a 95% interval, None for a range or none: what report.json's older ``*_ci95`` keys hold, so
    a reader of those never takes a range for a 95% interval."""
    return [iv["lo"], iv["hi"]] if iv is not None and iv["level"] == 0.95 else None


def frontier(points: Sequence[tuple[float | None, float | None]],
             budgets: Sequence[float | None] | None = None) -> list[bool | None]:
    """For each (retention, ft_acc) point: whether no other point is at least as good on both and better on
    one (the Pareto frontier); None for a point with an unknown coordinate. With ``budgets``, only points of
    at most the same budget compete, and one of smaller budget that is as good on both also wins: the frontier
    at equal or lower compute (a point with an unknown budget gets None)."""
    marks: list[bool | None] = []
    cost = list(budgets) if budgets is not None else [0.0] * len(points)
    for i, (p, f) in enumerate(points):
        if p is None or f is None or cost[i] is None:
            marks.append(None)
            continue
        marks.append(not any(_dominates((q, h, cost[j]), (p, f, cost[i]))
                             for j, (q, h) in enumerate(points) if j != i))
    return marks


def _dominates(a: tuple[float | None, float | None, float | None], b: tuple[float, float, float]) -> bool:
    """Whether point a = (retention, ft_acc, budget) is at least as good as b on every count and better on one."""
    q, h, c = a
    p, f, d = b
    if q is None or h is None or c is None:
        return False
    return q >= p and h >= f and c <= d and (q > p or h > f or c < d)


def t975(dof: int) -> float:
    """The 97.5% quantile of Student's t with ``dof`` degrees of freedom."""
    if dof < 1:
        raise ValueError("an interval needs at least two pairs")
    return T975[max(d for d in T975 if d <= dof)]  # the nearest tabled dof below: a slightly wider interval


def t_interval(values: Sequence[float]) -> tuple[float, float]:
    """The Student-t 95% interval of the mean of ``values`` (at least two)."""
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((d - mean) ** 2 for d in values) / (len(values) - 1))
    half = t975(len(values) - 1) * sd / math.sqrt(len(values))
    return mean - half, mean + half


def paired_difference(mine: Mapping[int, float | None], theirs: Mapping[int, float | None]
                      ) -> dict[str, Any] | None:
    """Mean of mine[s] − theirs[s] over the seeds s both have a value for: {"mean", "lo", "hi", "n",
    "interval"} (None from no pair). ``lo``/``hi`` are the Student-t 95% interval, the paired t-test that
    `verdict` reads, from two pairs up; ``interval`` is the one the report prints (`mean_interval`: that
    t-interval from `MIN_SEEDS_FOR_INTERVAL` pairs, the range of the differences below)."""
    pairs = [(mine[s], theirs[s]) for s in sorted(set(mine) & set(theirs))]
    diffs = [a - b for a, b in pairs if a is not None and b is not None]
    if not diffs:
        return None
    mean = sum(diffs) / len(diffs)
    if len(diffs) < 2:
        return {"mean": mean, "lo": None, "hi": None, "n": 1, "interval": None}
    lo, hi = t_interval(diffs)
    return {"mean": mean, "lo": lo, "hi": hi, "n": len(diffs), "interval": mean_interval(diffs)}


def verdict(diff: Mapping[str, Any] | None) -> str:
    """'better' / 'worse' when the 95% t-interval excludes zero, else 'within noise' (or 'n/a' without one);
    'identical' when every pair is equal (a variant that never acted, e.g. adaptive bins with no split)."""
    if diff is None or diff["lo"] is None:
        return "n/a"
    if diff["lo"] == diff["hi"] == diff["mean"] == 0:
        return "identical"
    return "better" if diff["lo"] > 0 else "worse" if diff["hi"] < 0 else "within noise"


def mean_matrix(matrices: Sequence[Sequence[Sequence[float | None]]]) -> list[list[float | None]] | None:
    """The entry-wise mean of accuracy matrices shaped as the first (None where none has the entry; a matrix
    with another number of rows is left out of every entry); None without matrices."""
    if not matrices:
        return None
    rows, cols = len(matrices[0]), len(matrices[0][0])
    out: list[list[float | None]] = []
    for i in range(rows):
        out.append([])
        for j in range(cols):
            vals = [v for v in (m[i][j] for m in matrices if len(m) == rows) if v is not None]
            out[-1].append(sum(vals) / len(vals) if vals else None)
    return out
