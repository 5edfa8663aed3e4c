"""The report's mathematics, as pure functions on numbers: statistics over seeds, the random curve and its
interpolation, folds, bootstrap and Student-t intervals, the Pareto frontier, paired differences.

Nothing here reads a file or knows a run: callers hand over budgets, accuracies and per-seed values, so each
function is tested on hand-made numbers (tests/test_folds.py).
"""

from __future__ import annotations

import math
import random as _random
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

BOOTSTRAP_SAMPLES = 2000
# Two-sided 95% quantiles of Student's t by degrees of freedom (n pairs − 1).
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        15: 2.131, 20: 2.086, 30: 2.042}
Curve = Sequence[tuple[float, float]]


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
    """The (budget, accuracy) points that have both, sorted by budget: a piecewise-linear curve."""
    return sorted((b, a) for b, a in points if b is not None and a is not None)


def equivalent_budget(points: Curve, target: float) -> tuple[float | None, str]:
    """Budget at which the piecewise-linear curve ``points`` first reaches ``target`` accuracy.

    Returns (budget, label); budget is None with label '> max' when the curve never gets there, or
    '< min' when even its smallest budget does better.
    """
    if not points:
        return None, "n/a (no random runs)"
    if target < points[0][1]:
        return None, f"< {points[0][0]:,.0f}"
    for (b0, a0), (b1, a1) in zip(points, points[1:], strict=False):
        if a0 <= target <= a1 or a1 <= target <= a0:
            if a1 == a0:
                return b0, f"{b0:,.0f}"
            budget = b0 + (target - a0) * (b1 - b0) / (a1 - a0)
            return budget, f"{budget:,.0f}"
    # The segments join up from the first point, so a target no segment spans lies above them all.
    return None, f"> {points[-1][0]:,.0f} (max)"


def fold_of(points: Curve, target: float, own: float) -> float:
    """Equivalent budget over ``own`` budget; +inf where the curve never gets there, 0 where even its smallest
    budget does better."""
    budget, label = equivalent_budget(points, target)
    if budget is not None:
        return budget / own
    return math.inf if label.startswith(">") else 0.0


def bootstrap_interval(values: Callable[[Sequence[int]], float], seeds: Sequence[int],
                       samples: int = BOOTSTRAP_SAMPLES, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of ``values(resampled seeds)`` over ``samples`` resamplings of ``seeds`` with
    replacement (seeded: the same runs give the same interval)."""
    rng = _random.Random(seed)
    stats = sorted(values([rng.choice(seeds) for _ in seeds]) for _ in range(samples))
    lo = stats[int(math.floor((1 - level) / 2 * (samples - 1)))]
    hi = stats[int(math.ceil((1 + level) / 2 * (samples - 1)))]
    return lo, hi


def frontier(points: Sequence[tuple[float | None, float | None]]) -> list[bool | None]:
    """For each (retention, ft_acc) point: whether no other point is at least as good on both and better on
    one (the Pareto frontier); None for a point with an unknown coordinate."""
    marks: list[bool | None] = []
    for i, (p, f) in enumerate(points):
        if p is None or f is None:
            marks.append(None)
            continue
        marks.append(not any(q is not None and h is not None and q >= p and h >= f and (q > p or h > f)
                             for j, (q, h) in enumerate(points) if j != i))
    return marks


def t975(dof: int) -> float:
    """The 97.5% quantile of Student's t with ``dof`` degrees of freedom."""
    if dof < 1:
        raise ValueError("an interval needs at least two pairs")
    return T975[max(d for d in T975 if d <= dof)]  # the nearest tabled dof below: a slightly wider interval


def paired_difference(mine: Mapping[int, float | None], theirs: Mapping[int, float | None]
                      ) -> dict[str, Any] | None:
    """Mean of mine[s] − theirs[s] over the seeds s both have a value for, with its 95% t-interval
    ({"mean", "lo", "hi", "n"}; no interval from one pair, None from none)."""
    pairs = [(mine[s], theirs[s]) for s in sorted(set(mine) & set(theirs))]
    diffs = [a - b for a, b in pairs if a is not None and b is not None]
    if not diffs:
        return None
    mean = sum(diffs) / len(diffs)
    if len(diffs) < 2:
        return {"mean": mean, "lo": None, "hi": None, "n": 1}
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1))
    half = t975(len(diffs) - 1) * sd / math.sqrt(len(diffs))
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": len(diffs)}


def verdict(diff: Mapping[str, Any] | None) -> str:
    """'better' / 'worse' when the interval excludes zero, else 'within noise' (or 'n/a' without one);
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
