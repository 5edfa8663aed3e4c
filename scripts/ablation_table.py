"""The ablation at a glance: one row per setting, per ratio its Δ retention against the default mix-cd
(95% t-interval over paired seeds), verdict and random-equivalent fold, from a report.json.

    python scripts/ablation_table.py results/ablate_fmnist/report.json > results/ablate_fmnist/ablation.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def fold(x: object, ci: object) -> str:
    def one(v: object) -> str:
        return "-" if v is None else str(v) if isinstance(v, str) else f"{v:.2f}x"

    return one(x) + (f" [{one(ci[0])}, {one(ci[1])}]" if ci else "")


def main(path: Path) -> None:
    report = json.loads(path.read_text())
    rows = report["against_default"]
    ratios = sorted({r["mix_ratio"] for r in rows})
    defaults: dict[float, str] = {}
    table: dict[str, dict[float, str]] = {}
    for r in rows:
        d = r["retention"]
        cell = "-" if d is None else f"{100 * d['mean']:+.2f}" + (
            f" [{100 * d['lo']:+.2f}, {100 * d['hi']:+.2f}]" if d["lo"] is not None else "")
        mark = {"better": " **better**", "worse": " *worse*", "identical": " (identical)"}.get(r["verdict"], "")
        table.setdefault(r["sampler"], {})[r["mix_ratio"]] = f"{cell}{mark} · {fold(r['fold'], r['fold_ci95'])}"
        defaults[r["mix_ratio"]] = fold(r["default_fold"], r["default_fold_ci95"])
    exp = rows[0]["experiment"] if rows else "-"
    print(f"Ablation on `{exp}`: each setting against the paper-faithful mix-cd at the same ratio. Cell: Δ "
          f"{report['retention']} in points, mean over seeds paired with the default's [95% t-interval] "
          "(bold: better, italic: worse, beyond the interval; identical: the same result on every seed) · "
          "random-equivalent fold [bootstrap 95% CI].\n")
    print("| setting | " + " | ".join(f"r = {r:g}" for r in ratios) + " |")
    print("|---|" + "---|" * len(ratios))
    print("| **mixcd (default)** | " + " | ".join(f"0 · {defaults.get(r, '-')}" for r in ratios) + " |")
    for name in sorted(table, key=lambda n: (not n.startswith("mixcd"), n)):
        print(f"| {name} | " + " | ".join(table[name].get(r, "-") for r in ratios) + " |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
