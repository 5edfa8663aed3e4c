"""scripts/ablation_table.py: each cell carries its own setting's fold on both axes, at its own ratio."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from repo_scripts import load_script


def _iv(lo: float, hi: float) -> dict:
    return {"lo": lo, "hi": hi, "label": "95% bootstrap over 5 seeds"}


def _report(with_other_axis: bool) -> dict:
    """Two ratios, the default and one setting; every fold a different number so a mix-up shows."""
    folds = {("mixcd", 0.125): (0.31, 1.11), ("mixcd", 0.25): (0.52, 1.42),
             ("mixcd (tau=0.9)", 0.125): (0.37, 1.33), ("mixcd (tau=0.9)", 0.25): (0.44, 1.19)}
    t_label = "95% Student-t, 5 pairs"
    against = [{"sampler": "mixcd (tau=0.9)", "experiment": "fmnist", "mix_ratio": r, "verdict": v,
                "retention": {"mean": m, "interval": {"lo": m - 0.01, "hi": m + 0.01, "label": t_label}},
                "fold": folds[("mixcd (tau=0.9)", r)][0], "fold_interval": _iv(0.1, 0.9),
                "default_fold": folds[("mixcd", r)][0], "default_fold_interval": _iv(0.1, 0.9)}
               for r, v, m in ((0.125, "better", 0.06), (0.25, "worse", -0.047))]
    equivalent = []
    for (name, r), (total, rehearsal) in folds.items():
        entry = {"sampler": name, "mix_ratio": r, "fold": total}
        if with_other_axis:
            entry["other_axis"] = {"axis": "rehearsal", "fold": rehearsal, "fold_interval": _iv(1.0, 2.0)}
        equivalent.append(entry)
    return {"against_default": against, "random_equivalent": equivalent, "budget_axis": "total",
            "retention": "pre_acc"}


def _table(tmp_path: Path, capsys: pytest.CaptureFixture, report: dict) -> dict[str, list[str]]:
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    load_script("ablation_table").main(path)
    out = capsys.readouterr().out
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    return {"header": [out.splitlines()[0]], **{cells[0].strip("| *"): cells[1:] for cells in rows[1:]}}


def test_each_cell_has_its_own_folds_on_both_axes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    t = _table(tmp_path, capsys, _report(with_other_axis=True))
    assert "on the total axis" in t["header"][0] and "the same on the rehearsal axis" in t["header"][0]
    tau, default = t["mixcd (tau=0.9)"], t["mixcd (default)"]
    assert tau[0].startswith("+6.00 [+5.00, +7.00]") and "**better**" in tau[0]
    assert "0.37x [0.10x, 0.90x]" in tau[0] and "1.33x [1.00x, 2.00x]" in tau[0]
    assert "*worse*" in tau[1] and "0.44x" in tau[1] and "1.19x" in tau[1] and "1.33x" not in tau[1]
    assert "0.31x" in default[0] and "1.11x" in default[0] and "1.42x" in default[1]


def test_a_report_without_the_other_axis_gives_one_fold(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    t = _table(tmp_path, capsys, _report(with_other_axis=False))
    assert "the same on" not in t["header"][0]
    assert t["mixcd (tau=0.9)"][0].count("x [") == 1
