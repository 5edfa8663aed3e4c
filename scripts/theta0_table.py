"""Print and write the prior-test accuracy of every θ0 a `mixcd pretrain -m` sweep trained.

Usage: python scripts/theta0_table.py SWEEP_DIR OUT.md — one row per job folder (model and
pretraining settings that vary across the sweep, then θ0's prior-test accuracy).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml


def main(sweep: Path, out: Path) -> None:
    rows = []
    for result in sorted(sweep.glob("*/pretrain.json")):
        cfg = yaml.safe_load((result.parent / "config.yaml").read_text())
        acc = json.loads(result.read_text())["pre_acc0"]
        rows.append((cfg["model"], cfg["pretrain"], acc))
    if not rows:
        sys.exit(f"no pretrain.json under {sweep}")
    keys = [f"model.{k}" for k in rows[0][0] if len({str(r[0].get(k)) for r in rows}) > 1]
    keys += [f"pretrain.{k}" for k in rows[0][1] if len({str(r[1].get(k)) for r in rows}) > 1]
    lines = ["| " + " | ".join([*keys, "θ0 prior-test accuracy %"]) + " |", "|" + "---|" * (len(keys) + 1)]
    for model, pretrain, acc in rows:
        cells = [str((model if k.startswith("model.") else pretrain)[k.split(".", 1)[1]]) for k in keys]
        lines.append("| " + " | ".join([*cells, f"{100 * acc:.2f}"]) + " |")
    text = "\n".join(lines) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
