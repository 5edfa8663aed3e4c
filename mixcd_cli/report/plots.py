"""The report's PNGs: retention against compute and against the new task (the Pareto view), accuracy-matrix
heatmaps of multi-stage runs, and the forest plot of each setting against the default mix-cd."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .folds import MIN_SEEDS_FOR_INTERVAL
from .groups import RETENTION, Group
from .render import mean_matrix
from .tables import is_sequence

# The budget plot's x axis is the report's budget axis (`axes`): rehearsal rows, or the compute a sampler adds.
BUDGET_LABELS = {"rehearsal_budget": "rehearsal budget ({unit} drawn)",
                 "total_budget": "compute the sampler adds (rehearsal + selection + snapshots it reads, fwd + 2·bwd "
                                 "{unit})"}


def plot_kinds(budget: str, unit: str = "rows") -> tuple[tuple[str, str, str], ...]:
    """(file suffix, x value, x label) of each per-experiment plot: retention against ``budget`` (counted in
    ``unit``), and the Pareto view against the new task."""
    label = BUDGET_LABELS.get(budget, budget).format(unit=unit)
    return (("budget", budget, label), ("pareto", "ft_acc", "fine-tune-test accuracy (%)"))


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def file_name(*parts: str) -> str:
    """A PNG's name from words read in run folders (experiment and sampler names): letters, digits, ``-``, ``_``
    and inner dots only, so a name such as ``../../x`` can never lead a file out of the report's folder."""
    words = ["".join(c if c.isalnum() or c in "-_." else "_" for c in str(p)).strip("._") for p in parts]
    return "_".join(w for w in words if w) or "report"


def save_figure(fig: Any, path: Path, dpi: int = 120) -> Path:
    """Lay out, write as a PNG and close ``fig``; → ``path``."""
    plt = _pyplot()
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _line_name(g: Group) -> str:
    return g.name + (f" [{g.label}]" if g.label else "")


def plot(groups: Sequence[Group], out: Path, budget: str = "rehearsal_budget", unit: str = "rows") -> list[Path]:
    """Retention vs the budget on the report's axis (``budget``: the run value), and the Pareto view retention vs
    ft_acc (frontier points ringed); one PNG of each per experiment."""
    plt = _pyplot()
    written = []
    by_exp: dict[str, list[Group]] = defaultdict(list)
    for g in groups:
        by_exp[g.experiment].append(g)
    for exp, gs in by_exp.items():
        lines: dict[str, list[Group]] = defaultdict(list)
        for g in gs:
            lines[_line_name(g)].append(g)
        for kind, xkey, xlabel in plot_kinds(budget, unit):
            fig, ax = plt.subplots(figsize=(8, 5))
            ringed = False
            for name, sg in lines.items():
                ringed = _plot_line(ax, name, sg, kind, xkey, ringed)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("earlier-task accuracy (%)" if is_sequence(gs) else "prior-test accuracy (%)")
            ax.set_title(f"{exp}: " + ("retention vs compute" if kind == "budget" else "retention vs new task"))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
            written.append(save_figure(fig, out / f"{file_name(exp, kind)}.png"))
    return written


def _plot_line(ax: Any, name: str, sg: Sequence[Group], kind: str, xkey: str, ringed: bool) -> bool:
    """One sampler's line of retention against ``xkey``; on the Pareto view its frontier points ringed.
    → whether the frontier's legend entry has been drawn."""
    pts = []
    for g in sorted(sg, key=lambda g: g.stat(xkey)[0] or 0):
        x, xs_, _ = g.stat(xkey)
        y, ys_, _ = g.stat(RETENTION)
        if x is not None and y is not None:
            scale = 100 if xkey == "ft_acc" else 1
            pts.append((x * scale, (xs_ or 0) * scale, 100 * y, 100 * (ys_ or 0), g.frontier))
    if not pts:
        return ringed
    xs, xe, ys, ye, front = zip(*pts, strict=True)
    ax.errorbar(xs, ys, yerr=ye, xerr=xe if xkey == "ft_acc" else None, marker="o", capsize=3,
                label=name, linestyle="-" if kind == "budget" else ":")
    if kind != "pareto":
        return ringed
    fx = [x for x, f in zip(xs, front, strict=True) if f]
    fy = [y for y, f in zip(ys, front, strict=True) if f]
    ax.scatter(fx, fy, s=160, facecolors="none", edgecolors="black", linewidths=1.2,
               label=None if ringed else "on the frontier", zorder=5)
    return ringed or bool(fx)


def heatmaps(groups: Sequence[Group], out: Path) -> list[Path]:
    """One PNG per sampler (and configuration) of a multi-stage experiment: its mean accuracy matrix at each
    ratio (rows: after stage k, row 0 = θ0; columns: task i)."""
    plt = _pyplot()
    panels: dict[tuple[str, str], list[Group]] = defaultdict(list)
    for g in groups:
        if mean_matrix(g):
            panels[(g.experiment, _line_name(g))].append(g)
    written = []
    for (exp, name), gs in panels.items():
        gs = sorted(gs, key=lambda g: g.mix_ratio)
        fig, axes = plt.subplots(1, len(gs), figsize=(3.6 * len(gs) + 0.6, 3.4), squeeze=False)
        for ax, g in zip(axes[0], gs, strict=True):
            _heatmap(ax, g)
        fig.suptitle(f"{exp}: {name} — accuracy matrix (%)", fontsize=10)
        written.append(save_figure(fig, out / f"{file_name(exp, 'matrix', name)}.png", dpi=110))
    return written


def _heatmap(ax: Any, g: Group) -> None:
    """A group's mean accuracy matrix in %, each entry written on its cell."""
    grid = [[math.nan if v is None else 100 * v for v in row] for row in mean_matrix(g) or []]
    ax.imshow(grid, vmin=0, vmax=100, cmap="viridis")
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            if not math.isnan(v):
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=8, color="white" if v < 60 else "black")
    ax.set_xticks(range(len(grid[0])))
    ax.set_yticks(range(len(grid)))
    ax.set_xlabel("task")
    ax.set_ylabel("after stage (0 = θ0)")
    ax.set_title(f"r={g.mix_ratio:g} (n={len(g.runs)})", fontsize=9)


def _forest_name(r: dict[str, Any]) -> str:
    return r["sampler"] + (f" [{r['config']}]" if r["config"] else "")


def plot_against_default(rows: Sequence[dict[str, Any]], out: Path, retention_label: str) -> list[Path]:
    """One forest plot per experiment: Δ retention against the default mix-cd, a panel per ratio; the bars are
    the interval the tables print, the colour the verdict."""
    plt = _pyplot()
    written = []
    by_exp: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["retention"] is not None:
            by_exp[r["experiment"]].append(r)
    for exp, rs in by_exp.items():
        ratios = sorted({r["mix_ratio"] for r in rs})
        names = sorted({_forest_name(r) for r in rs})
        fig, axes = plt.subplots(1, len(ratios), figsize=(5 * len(ratios), 0.32 * len(names) + 1.6), sharey=True,
                                 squeeze=False)
        for ax, ratio in zip(axes[0], ratios, strict=True):
            for r in (r for r in rs if r["mix_ratio"] == ratio):
                d = r["retention"]
                colour = {"better": "tab:green", "worse": "tab:red"}.get(r["verdict"], "tab:gray")
                iv = d.get("interval")  # the interval the tables print: a range below 5 pairs, as they say
                err = None if iv is None else [[100 * (d["mean"] - iv["lo"])], [100 * (iv["hi"] - d["mean"])]]
                ax.errorbar([100 * d["mean"]], [names.index(_forest_name(r))], xerr=err, fmt="o", color=colour,
                            capsize=3)
            ax.axvline(0, color="black", linewidth=0.8)
            ax.set_title(f"r = {ratio:g}")
            ax.set_xlabel(f"Δ {retention_label} vs default mix-cd (pts)")
            ax.grid(alpha=0.3)
        axes[0][0].set_yticks(range(len(names)), names, fontsize=7)
        fig.suptitle(f"{exp}: each setting against the paper-faithful mix-cd (bars: 95% t-interval over paired seeds "
                     f"from {MIN_SEEDS_FOR_INTERVAL} pairs, the range of the pairs below; colour: paired t-test)",
                     fontsize=9)
        written.append(save_figure(fig, out / f"{file_name(exp, 'vs_default')}.png"))
    return written
