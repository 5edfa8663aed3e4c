"""Every other sampler and variant against the paper-faithful mix-cd: paired differences with intervals.

The report's random-equivalent budget says how far each setting is from random rehearsal; this says
whether a setting beats the default mix-cd (same experiment, settings and ratio) by more than the
seeds' noise: the mean over seeds of (setting − default), each seed paired with the same seed of the
default, with a 95% Student-t interval of that mean. Both random-equivalent folds are taken over the
seeds the pair shares, so a default with more seeds is never set against a variant with fewer.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# Two-sided 95% quantiles of Student's t by degrees of freedom (n pairs − 1).
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        15: 2.131, 20: 2.086, 30: 2.042}
REFERENCE = "mixcd"


def t975(dof: int) -> float:
    """The 97.5% quantile of Student's t with ``dof`` degrees of freedom."""
    if dof < 1:
        raise ValueError("an interval needs at least two pairs")
    return T975[max(d for d in T975 if d <= dof)]  # the nearest tabled dof below: a slightly wider interval


def paired_difference(group: Any, reference: Any, key: str) -> dict[str, Any] | None:
    """Mean of ``key``(group) − ``key``(reference) over the seeds both have, with its 95% t-interval."""
    mine, theirs = group.seeds(), reference.seeds()
    diffs = [mine[s].values.get(key) - theirs[s].values.get(key) for s in sorted(set(mine) & set(theirs))
             if mine[s].values.get(key) is not None and theirs[s].values.get(key) is not None]
    if not diffs:
        return None
    mean = sum(diffs) / len(diffs)
    if len(diffs) < 2:
        return {"mean": mean, "lo": None, "hi": None, "n": 1}
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1))
    half = t975(len(diffs) - 1) * sd / math.sqrt(len(diffs))
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": len(diffs)}


def verdict(diff: dict[str, Any] | None) -> str:
    """'better' / 'worse' when the interval excludes zero, else 'within noise' (or 'n/a' without one);
    'identical' when every pair is equal (a variant that never acted, e.g. adaptive bins with no split)."""
    if diff is None or diff["lo"] is None:
        return "n/a"
    if diff["lo"] == diff["hi"] == diff["mean"] == 0:
        return "identical"
    return "better" if diff["lo"] > 0 else "worse" if diff["hi"] < 0 else "within noise"


def against_default(groups: Sequence[Any], fold_on: Callable[[Any, Sequence[int]], tuple[Any, Any, list[int]]],
                    retention: str) -> list[dict[str, Any]]:
    """One row per group (other than none, random and the default mix-cd itself) that has a default mix-cd
    group at its experiment, settings and ratio: paired differences in retention, ft_acc and audited hit
    rate, and both random-equivalent folds over the seeds the pair shares (``fold_on(group, seeds)`` →
    (fold, interval, seeds used))."""
    reference = {(g.experiment, g.settings, g.mix_ratio): g for g in groups
                 if g.sampler == REFERENCE and not g.variant}
    rows = []
    for g in groups:
        ref = reference.get((g.experiment, g.settings, g.mix_ratio))
        if ref is None or ref is g or g.sampler in ("none", "random"):
            continue
        pair = sorted(set(g.seeds()) & set(ref.seeds()))
        mine, theirs = fold_on(g, pair), fold_on(ref, pair)
        d_ret = paired_difference(g, ref, retention)
        rows.append({"experiment": g.experiment, "config": g.label, "sampler": g.name, "mix_ratio": g.mix_ratio,
                     "retention": d_ret, "ft_acc": paired_difference(g, ref, "ft_acc"),
                     "hit_rate": paired_difference(g, ref, "hit_rate"),
                     "fold": mine[0], "fold_ci95": list(mine[1]) if mine[1] else None,
                     "default_fold": theirs[0], "default_fold_ci95": list(theirs[1]) if theirs[1] else None,
                     "verdict": verdict(d_ret)})
    return rows


def _pts(diff: dict[str, Any] | None) -> str:
    if diff is None:
        return "-"
    text = f"{100 * diff['mean']:+.2f}"
    return text + (f" [{100 * diff['lo']:+.2f}, {100 * diff['hi']:+.2f}]" if diff["lo"] is not None else "")


def _fold(x: Any, ci: Any) -> str:
    def one(v: Any) -> str:
        return "-" if v is None else "> max" if (isinstance(v, float) and math.isinf(v)) else f"{v:.2f}x"

    return one(x) + (f" [{one(ci[0])}, {one(ci[1])}]" if ci else "")


HEAD = ["experiment", "config", "sampler", "r", "pairs", "Δ retention pts [95% CI]", "Δ ft_acc pts [95% CI]",
        "Δ hit rate pts (audited)", "fold [95% CI]", "default's fold [95% CI]", "verdict"]


def rows_of(rows: Sequence[dict[str, Any]]) -> list[list[str]]:
    """Table rows of `against_default`."""
    return [[r["experiment"], r["config"] or "-", r["sampler"], f"{r['mix_ratio']:g}",
             str(r["retention"]["n"]) if r["retention"] else "0", _pts(r["retention"]), _pts(r["ft_acc"]),
             "-" if r["hit_rate"] is None else f"{100 * r['hit_rate']['mean']:+.2f}",
             _fold(r["fold"], r["fold_ci95"]), _fold(r["default_fold"], r["default_fold_ci95"]), r["verdict"]]
            for r in rows]


def plot_against_default(rows: Sequence[dict[str, Any]], out: Path, retention_label: str) -> list[Path]:
    """One forest plot per experiment: Δ retention against the default mix-cd, a panel per ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    by_exp: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["retention"] is not None:
            by_exp[r["experiment"]].append(r)
    for exp, rs in by_exp.items():
        ratios = sorted({r["mix_ratio"] for r in rs})
        names = sorted({r["sampler"] + (f" [{r['config']}]" if r["config"] else "") for r in rs})
        fig, axes = plt.subplots(1, len(ratios), figsize=(5 * len(ratios), 0.32 * len(names) + 1.6), sharey=True,
                                 squeeze=False)
        for ax, ratio in zip(axes[0], ratios, strict=True):
            for r in (r for r in rs if r["mix_ratio"] == ratio):
                y = names.index(r["sampler"] + (f" [{r['config']}]" if r["config"] else ""))
                d = r["retention"]
                colour = {"better": "tab:green", "worse": "tab:red"}.get(r["verdict"], "tab:gray")
                err = None if d["lo"] is None else [[100 * (d["mean"] - d["lo"])], [100 * (d["hi"] - d["mean"])]]
                ax.errorbar([100 * d["mean"]], [y], xerr=err, fmt="o", color=colour, capsize=3)
            ax.axvline(0, color="black", linewidth=0.8)
            ax.set_title(f"r = {ratio:g}")
            ax.set_xlabel(f"Δ {retention_label} vs default mix-cd (pts)")
            ax.grid(alpha=0.3)
        axes[0][0].set_yticks(range(len(names)), names, fontsize=7)
        fig.suptitle(f"{exp}: each setting against the paper-faithful mix-cd (95% t-interval over paired seeds)",
                     fontsize=9)
        written.append(save_figure(fig, out / f"{exp}_vs_default.png"))
    return written


def save_figure(fig: Any, path: Path) -> Path:
    """Lay out, write as a 120-dpi PNG and close ``fig``; → ``path``."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
