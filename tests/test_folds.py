"""The report's mathematics on hand-made numbers: no run folder, no file, every expected value worked out by hand."""

from __future__ import annotations

import math

import pytest

from mixcd_cli.report.folds import (
    bootstrap_interval,
    curve,
    equivalent_budget,
    fold_of,
    frontier,
    mean_matrix,
    mean_or_none,
    mean_std,
    paired_difference,
    t975,
    verdict,
)

CURVE = [(0.0, 0.1), (100.0, 0.6), (200.0, 0.8)]


def test_mean_and_sample_std() -> None:
    mean, std, n = mean_std([1.0, 2.0, 6.0])
    assert (mean, n) == (3.0, 3) and std == pytest.approx(math.sqrt((4 + 1 + 9) / 2))
    assert mean_std([5.0]) == (5.0, 0.0, 1)
    assert mean_std([]) == (None, None, 0)
    assert mean_or_none([1.0, 2.0]) == 1.5
    assert mean_or_none([1.0, None]) is None and mean_or_none([]) is None


def test_the_curve_keeps_points_with_both_coordinates_sorted_by_budget() -> None:
    assert curve([(200.0, 0.8), (None, 0.5), (0.0, 0.1), (100.0, None), (100.0, 0.6)]) == CURVE


def test_interpolation_between_budgets() -> None:
    assert equivalent_budget(CURVE, 0.7) == (pytest.approx(150.0), "150")
    assert equivalent_budget(CURVE, 0.35)[0] == pytest.approx(50.0)
    assert equivalent_budget(CURVE, 0.6) == (100.0, "100")  # on a point: that point's budget
    assert equivalent_budget([(0.0, 0.5), (100.0, 0.5)], 0.5) == (0.0, "0")  # flat: its first budget
    assert equivalent_budget([(0.0, 0.1), (1000.0, 0.6), (3000.0, 0.8)], 0.7) == (pytest.approx(2000.0), "2,000")
    assert fold_of(CURVE, 0.7, 100.0) == pytest.approx(1.5)


def test_a_target_above_the_curves_max_is_more_than_max() -> None:
    assert equivalent_budget(CURVE, 0.9) == (None, "> 200 (max)")
    assert fold_of(CURVE, 0.9, 100.0) == math.inf


def test_a_target_below_the_curves_start_and_no_curve() -> None:
    assert equivalent_budget(CURVE, 0.05) == (None, "< 0")
    assert fold_of(CURVE, 0.05, 100.0) == 0.0
    assert equivalent_budget([], 0.5) == (None, "n/a (no random runs)")


def test_a_non_monotone_curve_is_read_where_it_first_reaches_the_target() -> None:
    dip = [(0.0, 0.2), (100.0, 0.6), (200.0, 0.4), (300.0, 0.8)]
    # 0.5 is crossed three times (rising, falling, rising): the first, at 75
    assert equivalent_budget(dip, 0.5)[0] == pytest.approx(75.0)
    # 0.7 only on the last segment: 200 + (0.7 − 0.4) / (0.8 − 0.4) · 100
    assert equivalent_budget(dip, 0.7)[0] == pytest.approx(275.0)
    assert equivalent_budget(dip, 0.4)[0] == pytest.approx(50.0)


def test_bootstrap_interval_is_seeded_and_takes_its_percentiles_at_fixed_ranks() -> None:
    def mean(sample: list[int]) -> float:
        return sum(sample) / len(sample)

    seeds = [1, 2, 3, 4, 5]
    lo, hi = bootstrap_interval(mean, seeds)
    assert (lo, hi) == bootstrap_interval(mean, seeds)
    assert 1.0 < lo < 3.0 < hi < 5.0

    def resamples(seed: int) -> list[tuple[int, ...]]:
        drawn: list[tuple[int, ...]] = []
        bootstrap_interval(lambda sample: drawn.append(tuple(sample)) or 0.0, seeds, samples=20, seed=seed)
        return drawn

    assert resamples(0) == resamples(0) != resamples(1)  # the resampling itself is what the seed fixes
    assert all(len(r) == len(seeds) and set(r) <= set(seeds) for r in resamples(0))
    assert bootstrap_interval(mean, [7, 7, 7]) == (7.0, 7.0)

    def counter() -> object:
        calls = iter(range(10_000))
        return lambda sample: float(next(calls))  # the k-th resample's statistic is k: ranks show through

    # 2000 resamples at 95%: ranks ⌊0.025 · 1999⌋ = 49 and ⌈0.975 · 1999⌉ = 1950
    assert bootstrap_interval(counter(), seeds) == (49.0, 1950.0)
    assert bootstrap_interval(counter(), seeds, samples=101, level=0.5) == (25.0, 75.0)


def test_the_frontier_on_a_hand_example() -> None:
    points = [(0.70, 0.88),  # best retention
              (0.60, 0.90),  # best ft_acc
              (0.59, 0.89),  # beaten on both by the second
              (None, 0.95),  # unknown retention: no mark, and it beats no one
              (0.70, 0.88),  # a tie with the first: neither beats the other
              (0.70, 0.87)]  # as good on retention as the first, worse on ft_acc
    assert frontier(points) == [True, True, False, None, True, False]
    assert frontier([(0.5, 0.5), (0.6, 0.6)]) == [False, True]  # beaten by the next one alone
    assert frontier([]) == []
    assert frontier([(0.5, None)]) == [None]


def test_the_paired_by_seed_t_interval_on_a_hand_example() -> None:
    """Seeds 1-3 shared: diffs 5, 4, 6 pts → mean 5, sd 1, t(2) = 4.303 → ±4.303 / √3 = ±2.4843; seeds 4
    and 5 have no partner and a None value pairs with nothing."""
    mine = {1: 0.65, 2: 0.66, 3: 0.70, 4: 0.50, 6: None}
    theirs = {1: 0.60, 2: 0.62, 3: 0.64, 5: 0.90, 6: 0.5}
    diff = paired_difference(mine, theirs)
    assert diff is not None and diff["n"] == 3
    assert diff["mean"] == pytest.approx(0.05)
    assert diff["lo"] == pytest.approx(0.05 - 4.303 * 0.01 / math.sqrt(3))
    assert diff["hi"] == pytest.approx(0.05 + 4.303 * 0.01 / math.sqrt(3))
    assert paired_difference({1: 0.7}, {1: 0.5}) == {"mean": pytest.approx(0.2), "lo": None, "hi": None, "n": 1}
    assert paired_difference({1: 0.7}, {2: 0.5}) is None


def test_t_quantiles_take_the_nearest_tabled_dof_below() -> None:
    assert t975(1) == 12.706 and t975(2) == 4.303 and t975(10) == 2.228
    assert t975(12) == 2.228 and t975(100) == 2.042
    with pytest.raises(ValueError):
        t975(0)


def test_verdicts() -> None:
    assert verdict({"mean": 0.05, "lo": 0.02, "hi": 0.08, "n": 3}) == "better"
    assert verdict({"mean": -0.05, "lo": -0.08, "hi": -0.02, "n": 3}) == "worse"
    assert verdict({"mean": 0.01, "lo": -0.01, "hi": 0.03, "n": 3}) == "within noise"
    assert verdict({"mean": 0.0, "lo": 0.0, "hi": 0.0, "n": 3}) == "identical"
    assert verdict({"mean": 0.2, "lo": None, "hi": None, "n": 1}) == "n/a"
    assert verdict(None) == "n/a"


def test_the_mean_accuracy_matrix() -> None:
    a = [[0.9, None], [0.5, 0.8]]
    b = [[0.7, None], [None, 0.6]]
    other_shape = [[0.0, None, None], [0.0, 0.0, None], [0.0, 0.0, 0.0]]
    assert mean_matrix([a, b, other_shape]) == [[pytest.approx(0.8), None], [0.5, pytest.approx(0.7)]]
    assert mean_matrix([]) is None
