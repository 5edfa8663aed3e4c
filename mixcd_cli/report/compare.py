"""Every other sampler and variant against the paper-faithful mix-cd: paired differences with intervals.

The report's random-equivalent budget says how far each setting is from random rehearsal; this says
whether a setting beats the default mix-cd (same experiment, settings and ratio) by more than the
seeds' noise: the mean over seeds of (setting − default), each seed paired with the same seed of the
default. The verdict is the paired t-test (the 95% Student-t interval of that mean excludes 0,
`folds.paired_difference`); the interval printed beside the mean is that t-interval from
`folds.MIN_SEEDS_FOR_INTERVAL` pairs and, below, the range of the per-pair differences, labelled as such
(a "95%" over three pairs is not shown). Both random-equivalent folds are taken over the seeds the pair
shares, so a default with more seeds is never set against a variant with fewer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from . import folds
from .equivalence import CURVE_SAMPLERS
from .groups import Group
from .tables import fold_text, points_text

# The comparison is against the paper-faithful method: the default mix-cd (the group of this sampler with no
# variant name) is its reference by definition, whatever else the registry holds.
REFERENCE = "mixcd"
HEAD = ["experiment", "config", "sampler", "r", "pairs", "Δ retention pts [interval]", "Δ ft_acc pts [interval]",
        "Δ hit rate pts (audited)", "fold [interval]", "default's fold [interval]", "verdict"]
FoldOn = Callable[[Group, Sequence[int]], tuple[Any, Any, list[int]]]


def paired_difference(group: Group, reference: Group, key: str) -> dict[str, Any] | None:
    """Mean of ``key``(group) − ``key``(reference) over the seeds both have, with its t-interval and the
    labelled interval the report prints (`folds.paired_difference`)."""
    return folds.paired_difference(group.by_seed(key), reference.by_seed(key))


def against_default(groups: Sequence[Group], fold_on: FoldOn, retention: str) -> list[dict[str, Any]]:
    """One row per group (other than none, random and the default mix-cd itself) that has a default mix-cd
    group at its experiment, settings and ratio: paired differences in retention, ft_acc and audited hit
    rate, and both random-equivalent folds over the seeds the pair shares (``fold_on(group, seeds)`` →
    (fold, labelled interval, seeds used)). ``fold_ci95``/``default_fold_ci95`` keep report.json's older keys:
    the bounds of a 95% interval, None where the interval is a range."""
    reference = {(g.experiment, g.settings, g.mix_ratio): g for g in groups
                 if g.sampler == REFERENCE and not g.variant}
    rows = []
    for g in groups:
        ref = reference.get((g.experiment, g.settings, g.mix_ratio))
        if ref is None or ref is g or g.sampler in CURVE_SAMPLERS:
            continue
        pair = sorted(set(g.seeds()) & set(ref.seeds()))
        mine, theirs = fold_on(g, pair), fold_on(ref, pair)
        d_ret = paired_difference(g, ref, retention)
        rows.append({"experiment": g.experiment, "config": g.label, "sampler": g.name, "mix_ratio": g.mix_ratio,
                     "retention": d_ret, "ft_acc": paired_difference(g, ref, "ft_acc"),
                     "hit_rate": paired_difference(g, ref, "hit_rate"),
                     "fold": mine[0], "fold_interval": mine[1], "fold_ci95": folds.ci95(mine[1]),
                     "default_fold": theirs[0], "default_fold_interval": theirs[1],
                     "default_fold_ci95": folds.ci95(theirs[1]), "verdict": folds.verdict(d_ret)})
    return rows


def _pts(diff: dict[str, Any] | None) -> str:
    return "-" if diff is None else points_text(diff["mean"], diff.get("interval"))


def rows_of(rows: Sequence[dict[str, Any]]) -> list[list[str]]:
    """Table rows of `against_default`."""
    return [[r["experiment"], r["config"] or "-", r["sampler"], f"{r['mix_ratio']:g}",
             str(r["retention"]["n"]) if r["retention"] else "0", _pts(r["retention"]), _pts(r["ft_acc"]),
             "-" if r["hit_rate"] is None else f"{100 * r['hit_rate']['mean']:+.2f}",
             fold_text(r["fold"], r["fold_interval"]), fold_text(r["default_fold"], r["default_fold_interval"]),
             r["verdict"]]
            for r in rows]
