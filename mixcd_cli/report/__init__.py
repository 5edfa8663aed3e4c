"""`mixcd report`: read run folders, aggregate seeds, compare samplers at equal compute.

Runs are grouped by their whole configuration (every setting that can change a result; seeds,
paths, devices and logging aside), so runs that differ in any override — `trainer.steps`, the
model's norm — never merge; a seed run twice in one group counts once. Each group shows mean ±
std (n) beside the ledger. For every sampler other than random, the *random-equivalent budget* is
the rehearsal budget random rehearsal with the same settings would need, interpolated on its own
curve, to reach the same prior-test accuracy; it is given from the means, for each seed pair, and
with an interval over seeds labelled with its level and method (a range below 5 seeds). At each ratio
the samplers on the Pareto frontier of (pre_acc, ft_acc) are marked.

The parts: `read` (run folders → runs, through the typed results), `groups` (runs → groups, labels,
frontier), `folds` (the mathematics on plain numbers), `equivalence` (random-equivalent budgets of
groups), `compare` (every setting against the default mix-cd), `tables`, `render`, `plots` and `html`
(what is shown and written), and `command` (`run_report`, the whole command).
"""

from .command import run_report
from .compare import against_default
from .equivalence import curve_groups, equivalents, fold_on, random_curve
from .folds import bootstrap_interval, equivalent_budget, fold_of, verdict
from .groups import RETENTION, Group, Run, group_runs, mark_frontier
from .read import collect, run_settings

__all__ = ["RETENTION", "Group", "Run", "against_default", "bootstrap_interval", "collect", "curve_groups",
           "equivalent_budget", "equivalents", "fold_of", "fold_on", "group_runs", "mark_frontier",
           "random_curve", "run_report", "run_settings", "verdict"]
