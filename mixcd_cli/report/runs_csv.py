"""runs.csv: every run a report counted, a row each, so that anyone can recompute the report's numbers.

A row holds the run's experiment, sampler, ratio and seed, every setting and sampler option that sets its
group apart (as the JSON of its value; empty where the run has no such key), every metric the report reads,
the ledger's passes and the compute by purpose, and the accuracy matrix of a multi-stage run. `read_runs_csv`
gives the runs back exactly (floats are written with every digit), so grouping them and reading folds from
them gives the report's figures to the last digit (`tests/test_paper_table.py` does this for README).
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import MixcdError
from .groups import Group, Run

RUNS_CSV = "runs.csv"
LEAD = ("experiment", "sampler", "mix_ratio", "seed", "run")
SETTING, OPTION = "setting:", "option:"
MATRIX = "accuracy_matrix"


def _number(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return repr(float(x)) if isinstance(x, float) else str(x)


def _relative(path: Path, roots: Sequence[Path]) -> str:
    """The run's folder relative to the report's input folder it was found under (absolute otherwise)."""
    for root in roots:
        try:
            return str(Path(path).resolve().relative_to(Path(root).resolve()))
        except ValueError:
            continue
    return str(path)


def write_runs_csv(groups: Sequence[Group], path: Path, roots: Sequence[Path] = ()) -> None:
    """runs.csv of the runs each group counts (a seed run twice counts once: its latest run)."""
    runs = [r for g in groups for r in g.runs]
    settings = _varying([r.settings for r in runs])
    options = sorted({k for r in runs for k, _ in r.options})
    values = sorted({k for r in runs for k in r.values})
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*LEAD, *(SETTING + k for k in settings), *(OPTION + k for k in options), *values, MATRIX])
        for r in runs:
            own, opts = dict(r.settings), dict(r.options)
            w.writerow([r.experiment, r.sampler, _number(r.mix_ratio), r.seed, _relative(r.path, roots),
                        *(own.get(k, "") for k in settings), *(opts.get(k, "") for k in options),
                        *(_number(r.values.get(k)) for k in values),
                        json.dumps(r.matrix) if r.matrix else ""])


def _varying(all_settings: Sequence[tuple[tuple[str, str], ...]]) -> list[str]:
    """The setting keys whose value (or presence) differs between runs: the ones that can split groups."""
    seen: dict[str, set[str]] = {}
    for settings in all_settings:
        for k, v in settings:
            seen.setdefault(k, set()).add(v)
    return sorted(k for k, vs in seen.items()
                  if len(vs) > 1 or any(k not in dict(s) for s in all_settings))


def read_runs_csv(path: Path) -> list[Run]:
    """The runs a runs.csv holds, as the report groups them (settings and options as (key, JSON) pairs)."""
    return read_runs_table(path)[0]


def read_runs_table(path: Path) -> tuple[list[Run], set[str]]:
    """(the runs a runs.csv holds, the settings it records): a runs.csv records the settings that differed between
    its runs; the rest were common to all of them."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise MixcdError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from exc
    runs = []
    for i, row in enumerate(rows, start=2):
        try:
            runs.append(_run_of(row))
        except (KeyError, ValueError, json.JSONDecodeError) as exc:
            raise MixcdError(f"{path}, line {i}: not a row of a mixcd runs.csv ({exc})") from exc
    return runs, {k.removeprefix(SETTING) for k in header if k.startswith(SETTING)}


def _value(text: str) -> float | None:
    """A metric as written: an integer count reads back as one, so a runs.csv written again is the same file; a
    missing value is empty (never nan or inf, which would poison every mean they join)."""
    if text == "":
        return None
    if re.fullmatch(r"-?[0-9]+", text):
        return int(text)
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value


def _run_of(row: dict[str, str]) -> Run:
    settings = tuple(sorted((k.removeprefix(SETTING), v) for k, v in row.items() if k.startswith(SETTING) and v))
    options = tuple(sorted((k.removeprefix(OPTION), v) for k, v in row.items() if k.startswith(OPTION) and v))
    values = {k: _value(v) for k, v in row.items()
              if k not in LEAD and k != MATRIX and not k.startswith((SETTING, OPTION))}
    matrix = json.loads(row[MATRIX]) if row.get(MATRIX) else None
    return Run(Path(row["run"]), row["experiment"], row["sampler"], float(row["mix_ratio"]), int(row["seed"]),
               values, settings, options, 0.0, matrix)
