"""The report's mathematics on hand-made numbers: no run folder, no file, every expected value worked out by hand."""

from __future__ import annotations

import math

import pytest

from mixcd_cli.report.folds import (
    MIN_SEEDS_FOR_INTERVAL,
    accuracy_at,
    accuracy_gap,
    bootstrap_interval,
    ci95,
    curve,
    equivalent_budget,
    fold_of,
    frontier,
    mean_interval,
    mean_matrix,
    mean_or_none,
    mean_std,
    paired_difference,
    seed_interval,
    t975,
    verdict,
)
from mixcd_cli.report.tables import fold_text, interval_text, points_text

CURVE = [(0.0, 0.1), (100.0, 0.6), (200.0, 0.8)]
# A curve whose budgets quadruple: halfway in log budget from 100 to 400 is 200, halfway linearly 250.
LOG_CURVE = [(0.0, 0.1), (100.0, 0.6), (400.0, 0.8)]


def test_mean_and_sample_std() -> None:
    mean, std, n = mean_std([1.0, 2.0, 6.0])
    assert (mean, n) == (3.0, 3) and std == pytest.approx(math.sqrt((4 + 1 + 9) / 2))
    assert mean_std([5.0]) == (5.0, 0.0, 1)
    assert mean_std([]) == (None, None, 0)
    assert mean_or_none([1.0, 2.0]) == 1.5
    assert mean_or_none([1.0, None]) is None and mean_or_none([]) is None


def test_the_curve_keeps_points_with_both_coordinates_sorted_by_budget() -> None:
    assert curve([(200.0, 0.8), (None, 0.5), (0.0, 0.1), (100.0, None), (100.0, 0.6)]) == CURVE


def test_linear_interpolation_between_budgets() -> None:
    """The linear reading, kept beside the log one: accuracy a straight line in the budget."""
    assert equivalent_budget(CURVE, 0.7, "linear") == (pytest.approx(150.0), "150")
    assert equivalent_budget(CURVE, 0.35, "linear")[0] == pytest.approx(50.0)
    assert equivalent_budget(CURVE, 0.6, "linear") == (100.0, "100")  # on a point: that point's budget
    assert equivalent_budget([(0.0, 0.5), (100.0, 0.5)], 0.5, "linear") == (0.0, "0")  # flat: its first budget
    assert equivalent_budget([(0.0, 0.1), (1000.0, 0.6), (3000.0, 0.8)], 0.7, "linear") == (pytest.approx(2000.0),
                                                                                            "2,000")
    assert fold_of(CURVE, 0.7, 100.0, "linear") == pytest.approx(1.5)


def test_log_budget_interpolation_on_a_hand_example() -> None:
    """LOG_CURVE, target 0.7: on the segment (100, .6)–(400, .8) it is t = (.7 − .6) / (.8 − .6) = 0.5 of the
    way, so budget = exp(log 100 + 0.5 · (log 400 − log 100)) = 100 · 4^0.5 = 200 (linearly: 100 + 0.5 · 300
    = 250). Target 0.75: t = 0.75, 100 · 4^0.75 = 100 · 2^1.5 = 282.84 (linearly 325). Own budget 100: folds
    2.0 and 2.5. The segment from budget 0 has no log: target 0.35 is t = 0.5 of (0, .1)–(100, .6), 50 in
    both scales. Log is the default."""
    assert equivalent_budget(LOG_CURVE, 0.7) == (pytest.approx(200.0), "200")
    assert equivalent_budget(LOG_CURVE, 0.7, "log") == (pytest.approx(200.0), "200")
    assert equivalent_budget(LOG_CURVE, 0.7, "linear") == (pytest.approx(250.0), "250")
    assert equivalent_budget(LOG_CURVE, 0.75)[0] == pytest.approx(200 * math.sqrt(2))
    assert equivalent_budget(LOG_CURVE, 0.75, "linear")[0] == pytest.approx(325.0)
    assert fold_of(LOG_CURVE, 0.7, 100.0) == pytest.approx(2.0)
    assert fold_of(LOG_CURVE, 0.7, 100.0, "linear") == pytest.approx(2.5)
    assert equivalent_budget(LOG_CURVE, 0.35)[0] == pytest.approx(50.0)
    assert equivalent_budget(LOG_CURVE, 0.35, "linear")[0] == pytest.approx(50.0)
    assert equivalent_budget(LOG_CURVE, 0.6) == (100.0, "100") and equivalent_budget(LOG_CURVE, 0.8) == (400.0, "400")
    with pytest.raises(ValueError, match="scale"):
        equivalent_budget(LOG_CURVE, 0.7, "sqrt")  # type: ignore[arg-type]


def test_the_curve_read_at_a_budget_is_linear_in_log_budget() -> None:
    """Budget 200 is halfway from 100 to 400 in log budget (log 2 / log 4 = 0.5): .6 + 0.5 · .2 = .7; linearly a
    third of the way: .6 + .2 / 3 = .6667. On the segment from 0 linearly (50 → .35); beyond the curve, None."""
    assert accuracy_at(LOG_CURVE, 200.0) == pytest.approx(0.7)
    assert accuracy_at(LOG_CURVE, 200.0, "linear") == pytest.approx(0.6 + 0.2 / 3)
    assert accuracy_at(LOG_CURVE, 50.0) == pytest.approx(0.35)
    assert accuracy_at(LOG_CURVE, 400.0) == pytest.approx(0.8) and accuracy_at(LOG_CURVE, 0.0) == 0.1
    assert accuracy_at(LOG_CURVE, 401.0) is None and accuracy_at([], 1.0) is None
    assert accuracy_at([(100.0, 0.5)], 100.0) == 0.5
    # the two readings agree: the budget read for an accuracy gives that accuracy back
    budget, _ = equivalent_budget(LOG_CURVE, 0.73)
    assert accuracy_at(LOG_CURVE, budget) == pytest.approx(0.73)  # type: ignore[arg-type]


def test_a_target_above_the_curves_max_is_more_than_max() -> None:
    assert equivalent_budget(CURVE, 0.9) == (None, "> 200 (max)")
    assert fold_of(CURVE, 0.9, 100.0) == math.inf
    assert fold_of(CURVE, 0.9, 100.0, "linear") == math.inf


def test_a_more_than_max_fold_inside_an_interval() -> None:
    """One seed of three beyond random's curve: the range runs up to '> max' (infinite, never dropped).
    With five seeds, the fifth at .95 (above the curve's .8): a resample's mean target exceeds .8 when it
    draws seed 5 at least three times, probability 10 · .2³ · .8² + 5 · .2⁴ · .8 + .2⁵ = 0.058 > 2.5%, so
    the bootstrap's upper bound is '> max'; the lower is the fold at .7 (no seed 5 drawn, probability .8⁵):
    100 · 4^0.5 / 100 = 2.0 on LOG_CURVE."""
    three = seed_interval(lambda seeds: 2.2, [1, 2, 3], {1: 1.5, 2: math.inf, 3: 2.0})
    assert three is not None and (three["lo"], three["hi"], three["method"]) == (1.5, math.inf, "range")
    assert interval_text(three) == "[1.50x, > max] range over 3 seeds"
    assert fold_text(2.2, three) == "2.20x [1.50x, > max] range over 3 seeds"

    targets = {1: 0.7, 2: 0.7, 3: 0.7, 4: 0.7, 5: 0.95}

    def fold(seeds: list[int]) -> float:
        return fold_of(LOG_CURVE, sum(targets[s] for s in seeds) / len(seeds), 100.0)

    five = seed_interval(fold, list(targets), {s: fold([s]) for s in targets})
    assert five is not None and five["method"] == "bootstrap"
    assert five["lo"] == pytest.approx(2.0) and five["hi"] == math.inf
    assert interval_text(five) == "[2.00x, > max] 95% bootstrap over 5 seeds"
    assert ci95(five) == [five["lo"], math.inf]


def test_a_target_below_the_curves_start_and_no_curve() -> None:
    assert equivalent_budget(CURVE, 0.05) == (None, "< 0")
    assert fold_of(CURVE, 0.05, 100.0) == 0.0
    assert equivalent_budget([], 0.5) == (None, "n/a (no random runs)")


def test_a_non_monotone_curve_is_read_where_it_first_reaches_the_target() -> None:
    dip = [(0.0, 0.2), (100.0, 0.6), (200.0, 0.4), (300.0, 0.8)]
    # 0.5 is crossed three times (rising, falling, rising): the first, at 75 (the segment from 0: linear)
    assert equivalent_budget(dip, 0.5)[0] == pytest.approx(75.0)
    # 0.7 only on the last segment: 200 + (0.7 − 0.4) / (0.8 − 0.4) · 100 linearly
    assert equivalent_budget(dip, 0.7, "linear")[0] == pytest.approx(275.0)
    assert equivalent_budget(dip, 0.4)[0] == pytest.approx(50.0)


def test_a_non_monotone_curve_in_log_budget_takes_the_first_crossing() -> None:
    """Budgets quadrupling, accuracy up, down, up: .6 is reached rising on (100, .3)–(400, .7) at t = .75, i.e.
    100 · 4^.75 = 282.84, before the falling (400, .7)–(1600, .5) segment (t = .5: 800) and the last rising
    one (t = .25: 1600 · 4^.25 = 2262.7). .8 only on the last: t = .75, 1600 · 4^.75 = 4525.48. A target
    under the first point stays '< min' (fold 0) even where the curve dips below it later: the smallest budget
    already does better, as before the log reading."""
    wavy = [(0.0, 0.1), (100.0, 0.3), (400.0, 0.7), (1600.0, 0.5), (6400.0, 0.9)]
    assert equivalent_budget(wavy, 0.6)[0] == pytest.approx(100 * 4 ** 0.75)
    assert equivalent_budget(wavy, 0.6)[1] == "283"
    assert equivalent_budget(wavy, 0.8)[0] == pytest.approx(1600 * 4 ** 0.75)
    assert equivalent_budget(wavy, 0.95) == (None, "> 6,400 (max)")
    dips_below = [(0.0, 0.5), (100.0, 0.3), (400.0, 0.9)]
    assert equivalent_budget(dips_below, 0.4) == (None, "< 0")
    assert fold_of(dips_below, 0.4, 100.0) == 0.0


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


def test_fewer_than_five_seeds_give_a_range_named_a_range() -> None:
    """Three (and four) seeds: the lowest and highest per-seed value, level None, never '95%', and no value
    for the older ci95 key. The statistic is deliberately not any seed's value: a bootstrap over it would
    give (9, 9), so only the range fallback yields (1, 3)."""
    per_seed = {1: 1.0, 2: 3.0, 3: 2.0}
    iv = seed_interval(lambda seeds: 9.0, [1, 2, 3], per_seed)
    assert iv == {"lo": 1.0, "hi": 3.0, "level": None, "method": "range", "n": 3, "label": "range over 3 seeds"}
    assert ci95(iv) is None
    four = seed_interval(lambda seeds: 9.0, [1, 2, 3, 4], {**per_seed, 4: 0.5})
    assert four is not None and (four["method"], four["lo"], four["label"]) == ("range", 0.5, "range over 4 seeds")
    assert MIN_SEEDS_FOR_INTERVAL == 5
    assert seed_interval(lambda seeds: 9.0, [1], {1: 1.0}) is None  # one seed: no interval at all
    assert mean_interval([0.01, 0.03, 0.02]) == {"lo": 0.01, "hi": 0.03, "level": None, "method": "range", "n": 3,
                                                 "label": "range over 3 pairs"}
    assert mean_interval([0.01]) is None


def test_five_seeds_give_a_labelled_95_percent_interval() -> None:
    """Five seeds: the percentile bootstrap, labelled '95% bootstrap over 5 seeds'. Five pairs 1 … 5 pts: mean
    3, sd √2.5 = 1.5811, t(4) = 2.776, half-width 2.776 · 1.5811 / √5 = 1.9629 → [1.0371, 4.9629] pts,
    labelled '95% Student-t, 5 pairs'."""
    value = {1: 1.0, 2: 2.0, 3: 3.0, 4: 4.0, 5: 5.0}

    def mean(seeds: list[int]) -> float:
        return sum(value[s] for s in seeds) / len(seeds)

    iv = seed_interval(mean, list(value), value)
    assert iv is not None and (iv["lo"], iv["hi"]) == bootstrap_interval(mean, list(value))
    assert (iv["level"], iv["method"], iv["n"], iv["label"]) == (0.95, "bootstrap", 5, "95% bootstrap over 5 seeds")
    assert 1.0 < iv["lo"] and iv["hi"] < 5.0  # not the range
    assert ci95(iv) == [iv["lo"], iv["hi"]]
    t = mean_interval([0.01, 0.02, 0.03, 0.04, 0.05])
    half = 2.776 * math.sqrt(2.5) / math.sqrt(5) / 100
    assert t is not None and (t["method"], t["level"], t["n"], t["label"]) == ("t", 0.95, 5, "95% Student-t, 5 pairs")
    assert t["lo"] == pytest.approx(0.03 - half) and t["hi"] == pytest.approx(0.03 + half)
    assert points_text(0.03, t) == "+3.00 [+1.04, +4.96] 95% Student-t, 5 pairs"


def test_the_accuracy_gap_to_random_at_the_same_budget() -> None:
    """Own budget 200 on LOG_CURVE-shaped curves per seed, random's accuracy there halfway between its points at
    100 and 400 in log budget. Seed 1: curve .6 → .8, random at 200 = .7, retention .75 → +5 pts; seed 2:
    .5 → .7, random .6, retention .66 → +6 (against seed 1's curve it would be −4: the pairing shows); seed 3:
    .6 → .8, .7, retention .77 → +7. Mean +6, the range [+5, +7] over 3 pairs (fewer than five). Read
    linearly, seed 1's random would be .6667 and its gap +8.33."""
    curves = {1: LOG_CURVE, 2: [(0.0, 0.1), (100.0, 0.5), (400.0, 0.7)], 3: LOG_CURVE}
    gap, per_seed, iv = accuracy_gap(curves, {1: 0.75, 2: 0.66, 3: 0.77}, 200.0)
    assert gap == pytest.approx(0.06)
    assert per_seed == {1: pytest.approx(0.05), 2: pytest.approx(0.06), 3: pytest.approx(0.07)}
    assert iv is not None and iv["method"] == "range" and iv["label"] == "range over 3 pairs"
    assert (iv["lo"], iv["hi"]) == (pytest.approx(0.05), pytest.approx(0.07))
    assert points_text(gap, iv) == "+6.00 [+5.00, +7.00] range over 3 pairs"
    assert accuracy_gap({1: LOG_CURVE}, {1: 0.75}, 200.0, "linear")[0] == pytest.approx(0.75 - (0.6 + 0.2 / 3))
    # five pairs +5 … +9 pts: the Student-t interval, 7 ± 1.9629
    five = {s: LOG_CURVE for s in range(1, 6)}
    gap5, _, iv5 = accuracy_gap(five, {s: 0.7 + (4 + s) / 100 for s in range(1, 6)}, 200.0)
    assert gap5 == pytest.approx(0.07) and iv5 is not None and iv5["label"] == "95% Student-t, 5 pairs"
    assert iv5["lo"] == pytest.approx(0.07 - 2.776 * math.sqrt(2.5) / math.sqrt(5) / 100)
    # beyond random's largest budget there is nothing to read (no extrapolation); a seed without a value: none
    assert accuracy_gap(curves, {1: 0.75, 2: 0.66, 3: 0.77}, 500.0)[0] is None
    assert accuracy_gap(curves, {1: 0.75, 2: None}, 200.0)[0] is None
    assert accuracy_gap({1: LOG_CURVE}, {1: 0.75}, 200.0)[2] is None  # one pair: no interval


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


def test_the_frontier_at_equal_or_lower_budget() -> None:
    """With budgets, only a point of at most the same budget competes, and one as good on both at a smaller
    budget wins: more compute for the same accuracies is off the frontier."""
    points = [(0.70, 0.88), (0.80, 0.90), (0.70, 0.88), (0.60, 0.95), (0.65, 0.85)]
    budgets = [600.0, 1200.0, 300.0, 100.0, None]
    # 1200 is better on both than 600 but costs more: 600 stays unless something cheaper beats it, and the
    # equal point at 300 does (as good on both, cheaper); an unknown budget gets no mark
    assert frontier(points, budgets) == [False, True, True, True, None]
    assert frontier(points[:2], [600.0, 1200.0]) == [True, True]
    assert frontier(points[:2]) == [False, True]  # without budgets the two compete as at one ratio


def test_the_paired_by_seed_t_interval_on_a_hand_example() -> None:
    """Seeds 1-3 shared: diffs 5, 4, 6 pts → mean 5, sd 1, t(2) = 4.303 → ±4.303 / √3 = ±2.4843; seeds 4
    and 5 have no partner and a None value pairs with nothing."""
    mine = {1: 0.65, 2: 0.66, 3: 0.70, 4: 0.50, 6: None}
    theirs = {1: 0.60, 2: 0.62, 3: 0.64, 5: 0.90, 6: 0.5}
    diff = paired_difference(mine, theirs)
    assert diff is not None and diff["n"] == 3
    assert diff["mean"] == pytest.approx(0.05)
    # lo/hi: the t-interval the verdict reads; interval: what is printed, the range below five pairs
    assert diff["lo"] == pytest.approx(0.05 - 4.303 * 0.01 / math.sqrt(3))
    assert diff["hi"] == pytest.approx(0.05 + 4.303 * 0.01 / math.sqrt(3))
    iv = diff["interval"]
    assert (iv["lo"], iv["hi"], iv["method"], iv["level"]) == (pytest.approx(0.04), pytest.approx(0.06), "range", None)
    assert paired_difference({1: 0.7}, {1: 0.5}) == {"mean": pytest.approx(0.2), "lo": None, "hi": None, "n": 1,
                                                     "interval": None}
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
