"""The ablation at a glance: one row per setting, per ratio its Δ retention against the default mix-cd
(over paired seeds, with the interval the report labels: 95% Student-t from 5 pairs, the range below), verdict
and random-equivalent fold on the report's axis and, where the report has it, on the other axis, from a
report.json.

    python scripts/ablation_table.py results/ablate_fmnist/report.json > results/ablate_fmnist/ablation.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def fold(x: object, iv: dict | None, ci: object = None) -> str:
    """A fold with its labelled interval (report.json's ``*_interval``), or an older report's ``*_ci95``."""
    def one(v: object) -> str:
        return "-" if v is None else str(v) if isinstance(v, str) else f"{v:.2f}x"

    if iv:
        return one(x) + f" [{one(iv['lo'])}, {one(iv['hi'])}] {iv['label']}"
    return one(x) + (f" [{one(ci[0])}, {one(ci[1])}] bootstrap, nominal 95%" if ci else "")


def points(d: dict) -> str:
    """Δ in points with its labelled interval (an older report's t-interval bounds otherwise)."""
    iv = d.get("interval")
    if iv:
        return f"{100 * d['mean']:+.2f} [{100 * iv['lo']:+.2f}, {100 * iv['hi']:+.2f}] {iv['label']}"
    bounds = f" [{100 * d['lo']:+.2f}, {100 * d['hi']:+.2f}] 95% Student-t" if d["lo"] is not None else ""
    return f"{100 * d['mean']:+.2f}{bounds}"


def other_folds(report: dict) -> dict[tuple[str, float], str]:
    """Each (setting, ratio)'s fold on the axis the report was not made on, labelled like the first."""
    out = {}
    for e in report.get("random_equivalent", []):
        other = e.get("other_axis")
        if other and "sampler" in e:
            out[(e["sampler"], e["mix_ratio"])] = fold(other["fold"], other.get("fold_interval"))
    return out


def main(path: Path) -> None:
    report = json.loads(path.read_text())
    rows = report["against_default"]
    axis = report.get("budget_axis")
    other = other_folds(report)
    second = {"total": "rehearsal", "rehearsal": "total"}.get(axis or "") if other else None

    def folds(name: str, ratio: float, own: str) -> str:
        return own + (f" · {other.get((name, ratio), '-')}" if second else "")

    ratios = sorted({r["mix_ratio"] for r in rows})
    defaults: dict[float, str] = {}
    table: dict[str, dict[float, str]] = {}
    for r in rows:
        d = r["retention"]
        cell = "-" if d is None else points(d)
        mark = {"better": " **better**", "worse": " *worse*", "identical": " (identical)"}.get(r["verdict"], "")
        own = folds(r["sampler"], r["mix_ratio"], fold(r["fold"], r.get("fold_interval"), r.get("fold_ci95")))
        table.setdefault(r["sampler"], {})[r["mix_ratio"]] = f"{cell}{mark} · {own}"
        base = fold(r["default_fold"], r.get("default_fold_interval"), r.get("default_fold_ci95"))
        defaults[r["mix_ratio"]] = folds("mixcd", r["mix_ratio"], base)
    exp = rows[0]["experiment"] if rows else "-"
    print(f"Ablation on `{exp}`: each setting against the paper-faithful mix-cd at the same ratio. Cell: Δ "
          f"{report['retention']} in points, mean over seeds paired with the default's [interval, as labelled] "
          "(bold: better, italic: worse, beyond the interval; identical: the same result on every seed) · "
          f"random-equivalent fold{f' on the {axis} axis' if axis else ''} [interval, as labelled]"
          f"{f' · the same on the {second} axis' if second else ''}.\n")
    print("| setting | " + " | ".join(f"r = {r:g}" for r in ratios) + " |")
    print("|---|" + "---|" * len(ratios))
    print("| **mixcd (default)** | " + " | ".join(f"0 · {defaults.get(r, '-')}" for r in ratios) + " |")
    for name in sorted(table, key=lambda n: (not n.startswith("mixcd"), n)):
        print(f"| {name} | " + " | ".join(table[name].get(r, "-") for r in ratios) + " |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
