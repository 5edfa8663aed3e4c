"""The budget axes a comparison is read on (docs/design.md §6, §11).

``rehearsal``: the rehearsal rows a sampler drew (the axis of every report before compute was counted).
``total``: the compute a sampler adds to plain fine-tuning at the same steps, forward + 2 × backward: its
rehearsal and selection passes and the snapshots (and clusters) it reads. Plain fine-tuning's own passes are
left out: every sampler makes them alike. θ0's snapshot is one-time (every fine-tuning of that θ0 can share
it): by default it is charged in full to each run and shown apart; ``amortize`` N spreads it over N
fine-tunings (each run is charged 1/N of it).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import MixcdError
from .groups import Run

AXES = {"rehearsal": "rehearsal_budget", "total": "total_budget"}
DEFAULT_AXIS = "total"
UNITS = {"rehearsal": "rehearsal rows drawn",
         "total": "compute the sampler adds: rehearsal + selection + snapshots it reads (fwd + 2·bwd rows)"}
# The one-time part of a run's total budget, as charged (after amortisation): shown beside the budget.
ONE_TIME = "total_budget_one_time"


def budget_unit(runs: Sequence[Run]) -> str:
    """What the report's budgets count: ``tokens`` for generation runs (docs/design.md §10), ``rows`` otherwise; a
    report over both is refused, since a budget in tokens and one in rows do not compare."""
    in_tokens = {bool(r.values.get("budget_in_tokens")) for r in runs}
    if len(in_tokens) > 1:
        raise MixcdError("these runs mix generation tasks (budgets in tokens) with row-counted tasks (budgets in "
                         "rows), which do not compare: report them apart (mixcd report PATH -s ..., or two folders)")
    return "tokens" if in_tokens == {True} else "rows"


def budget_key(axis: str) -> str:
    """The run value that is the budget on ``axis``."""
    check_axis(axis)
    return AXES[axis]


def other_axis(axis: str) -> str:
    """The axis that is not ``axis``."""
    return next(a for a in AXES if a != axis)


def check_axis(axis: str, amortize: int | None = None) -> None:
    """Refuse an unknown axis (naming the valid ones) and an amortisation below one run."""
    if axis not in AXES:
        raise MixcdError(f"unknown --budget '{axis}'; choose one of: {', '.join(AXES)}")
    if amortize is not None and (isinstance(amortize, bool) or int(amortize) != amortize or amortize < 1):
        raise MixcdError(f"--amortize must be a whole number of fine-tunings, at least 1 (got {amortize}); leave it "
                         "out to charge θ0's snapshot in full to every run")


def set_total_budgets(runs: Sequence[Run], amortize: int | None = None) -> int:
    """Each run's budget on the total axis (and its one-time part as charged) from its compute, θ0's one-time
    snapshot spread over ``amortize`` fine-tunings when given (in full otherwise). → how many runs have no
    compute (made before compute was kept): their total budget is unknown, and the total axis leaves them out."""
    n = 1 if amortize is None else int(amortize)
    lacking = 0
    for r in runs:
        own, one_time = r.values.get("compute_sampler"), r.values.get("compute_sampler_one_time")
        if own is None:
            r.values[AXES["total"]] = r.values[ONE_TIME] = None
            lacking += 1
            continue
        one_time = one_time or 0.0
        r.values[AXES["total"]] = own - one_time + one_time / n
        r.values[ONE_TIME] = one_time / n
    return lacking
