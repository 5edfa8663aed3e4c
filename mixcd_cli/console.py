"""Console output: rich progress bars and result tables (the report command lives in the report package).

Everything printed here is also logged to the ``mixcd`` logger, which Hydra's job logging
(conf/hydra/job_logging/mixcd.yaml) writes to the run folder's <stage>.log.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

if TYPE_CHECKING:  # results load torch: only when a result is printed
    from .results import EvalResult, LedgerSummary, RunResult

console = Console()
err_console = Console(stderr=True)
log = logging.getLogger("mixcd")
# Outside a Hydra job (tests, library use) nothing is configured: stay silent rather than let
# logging's last-resort handler print every error a second time.
log.addHandler(logging.NullHandler())


def _progress_enabled() -> bool:
    """Bars on rank 0 only (torchrun sets RANK), and never when MIXCD_PROGRESS=0."""
    return os.environ.get("MIXCD_PROGRESS", "1") != "0" and os.environ.get("RANK", "0") == "0"


@contextmanager
def step_progress(description: str, total: int) -> Iterator[Callable[[int, float], None]]:
    """A bar over training steps showing the running loss and steps/s."""
    if not _progress_enabled():
        yield lambda done, loss: None
        return
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                  console=err_console, transient=False,
                  refresh_per_second=4) as bar:
        task = bar.add_task(description, total=total, loss="-")

        def update(done: int, loss: float) -> None:
            bar.update(task, completed=done, loss=f"{loss:.4f}")

        yield update


@contextmanager
def count_progress(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A bar over samples (snapshot inference); only drawn when there is work to do."""
    if not _progress_enabled():
        yield lambda n: None
        return
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=err_console, transient=True)
    task = bar.add_task(description, total=total)
    started = False

    def update(n: int) -> None:
        nonlocal started
        if not started:
            bar.start()
            started = True
        bar.advance(task, n)

    try:
        yield update
    finally:
        if started:
            bar.stop()


def note(message: str) -> None:
    """A remark on stderr (resuming, a value adjusted, ...)."""
    log.info(message)
    err_console.print(f"[yellow]{message}[/yellow]", soft_wrap=True)


def error(message: str) -> None:
    """The one line a user mistake gets."""
    log.error(message)
    err_console.print(f"[bold red]error:[/bold red] {message}", highlight=False, markup=True, soft_wrap=True)


def print_kv(title: str, values: dict[str, Any]) -> None:
    """A two-column table of named values."""
    log.info("%s: %s", title, "; ".join(f"{k}={v}" for k, v in values.items()))
    table = Table(title=title, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for k, v in values.items():
        table.add_row(k, str(v))
    console.print(table)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def print_run(result: RunResult | EvalResult, run_dir: Path) -> None:
    """The result table of one run: accuracies, forgetting, categories, ledger, compute, wall time."""
    title = f"mixcd {result.STAGE}: {result.experiment} · sampler={result.sampler}"
    if result.mix_ratio:
        title += f" · r={result.mix_ratio}"
    table = Table(title=title, show_header=True)
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    rows = _accuracy_rows(result) + _signal_rows(result) + _ledger_rows(result.ledger) \
        + (_compute_rows(cast("RunResult", result)) + _fidelity_rows(cast("RunResult", result))
           if result.STAGE == "train" else [])
    rows.append(("wall time (s)", " · ".join(f"{k} {v:.1f}" for k, v in result.wall_time.items())))
    for row in rows:
        table.add_row(*row)
    log.info("%s: %s", title, "; ".join(f"{k}={v}" for k, v in rows))
    log.info("run folder: %s", run_dir)
    console.print(table)
    console.print(f"run folder: {run_dir}", highlight=False, soft_wrap=True)


def _accuracy_rows(result: RunResult | EvalResult) -> list[tuple[str, str]]:
    """The prior task before and after, the new task, a sequence's summary and matrix, the categories."""
    kept = result.retention
    rows = [
        ("prior-test acc before (pre_acc0, %)", _pct(kept.pre_acc0)),
        ("prior-test acc after (pre_acc, %)", _pct(kept.pre_acc)),
        ("forgetting (points)", _pct(kept.forgetting)),
        ("fine-tune-test acc (ft_acc, %)", _pct(kept.ft_acc)),
    ]
    if result.STAGE == "train" and result.num_stages > 1:
        seq = result.sequence
        rows += [("stages", " → ".join(result.stage_names)),
                 ("earlier-task acc after the last stage (%)", _pct(seq.earlier_acc)),
                 ("average acc over all tasks (%)", _pct(seq.avg_acc)),
                 ("backward transfer, BWT (points)", _pct(seq.bwt)),
                 ("average forgetting of earlier tasks (points)", _pct(seq.avg_forgetting))]
        for k, row in enumerate(result.accuracy_matrix or []):
            rows.append((f"accuracy after {'θ0' if k == 0 else f'stage {k}'} (%, task 0..)",
                         " ".join("-" if v is None else f"{100 * v:.1f}" for v in row)))
    cats = kept.categories
    counts = {k: getattr(cats, k) if cats else None for k in ("retained", "collateral_damage", "unlearned", "gained")}
    rows += [(f"prior test: {k.replace('_', ' ')}", "-" if n is None else str(n)) for k, n in counts.items()]
    rows.append(("prior test: CD rate (%)", _pct(cats.cd_rate if cats else None)))
    return rows


def _signal_rows(result: RunResult | EvalResult) -> list[tuple[str, str]]:
    """The audited hit rate and what the sampler's own signal saw, where measured."""
    signal = result.signal
    rows = []
    if signal.hit_rate is not None:
        rows.append(("rehearsal hit rate, audited (%)", _pct(signal.hit_rate)))
    if signal.signal_rate is not None:
        rows.append(("rehearsal CD signal rate, what the sampler saw (%)", _pct(signal.signal_rate)))
    if signal.signal_precision is not None or signal.signal_recall is not None:
        rows.append(("CD signal precision / recall vs audit (%)",
                     f"{_pct(signal.signal_precision)} / {_pct(signal.signal_recall)}"))
    return rows


def _ledger_rows(ledger: LedgerSummary | None) -> list[tuple[str, str]]:
    """Sample passes by purpose (those with any), and the fine-tuning total."""
    if ledger is None:
        return []
    fwd, bwd = ledger.forward, ledger.backward
    rows = [(f"ledger {purpose} (fwd / bwd samples)", f"{fwd.get(purpose, 0):,} / {bwd.get(purpose, 0):,}")
            for purpose in ("finetune", "rehearsal", "selection", "snapshot", "pretrain", "eval", "audit")
            if fwd.get(purpose) or bwd.get(purpose)]
    if ledger.training_passes is not None:
        rows.append(("ledger fine-tuning total passes", f"{ledger.training_passes:,}"))
    return rows


def _compute_rows(result: RunResult) -> list[tuple[str, str]]:
    """Compute = fwd + 2·bwd (docs/design.md §11): by purpose (those with any), the fine-tuning part, the total
    and its one-time part, each artifact the run needed (and whether this run found it cached); in tokens too
    for token tasks. A run written before compute was kept has none."""
    compute = result.compute
    if compute is None:
        return []
    rows = [(f"compute {purpose} (fwd + 2·bwd rows)", f"{n:,}") for purpose, n in compute.by_purpose.items() if n]
    rows += [("compute fine-tuning: fine-tune + rehearsal + selection", f"{compute.training:,}"),
             ("compute total", f"{compute.total:,}"),
             ("compute one-time (shared by every run of θ0)", f"{compute.one_time:,}")]
    if compute.sampler is not None:
        rows.append(("compute the sampler adds: rehearsal + selection + snapshots it reads",
                     f"{compute.sampler:,}" + (f" (one-time {compute.sampler_one_time:,})"
                                               if compute.sampler_one_time else "")))
    for a in compute.artifacts:
        how = ["one-time" if a.one_time else "this run's"] + ([] if a.needed else ["measures only"])
        cached = None if a.source == "training" else _found_cached(result, a.what, a.stage)
        if a.source == "training":
            how.append("from the training forwards")
        if cached is not None:
            how.append("cached" if cached else "made")
        name = f"compute {a.what} of {a.model.replace('theta', 'θ')}" + (f" (stage {a.stage})" if a.stage else "")
        rows.append((name, " · ".join([f"{a.compute:,}", *how])))
    if compute.tokens is not None:
        tokens = compute.tokens
        rows += [("compute fine-tuning in tokens (fwd + 2·bwd)", f"{tokens.training:,}"),
                 ("compute total in tokens", f"{tokens.total:,}"),
                 ("compute one-time in tokens", f"{tokens.one_time:,}")]
    return rows


def _fidelity_rows(result: RunResult) -> list[tuple[str, str]]:
    """snapshot.source=training: how far the training-time columns the sampler read were from the true pass,
    per stage in a sequence, and over the run."""
    if result.snapshot_fidelity is None:
        return []

    def row(name: str, f: Any) -> list[tuple[str, str]]:
        mae = "-" if f.loss_mae is None else f"{f.loss_mae:.4f}"
        return [(f"{name}: precision / recall of correct vs the true pass (%)",
                 f"{_pct(f.precision)} / {_pct(f.recall)}"),
                (f"{name}: rows never visited (%) · loss MAE of visited rows",
                 f"{_pct(f.unvisited)} · {mae}")]

    rows: list[tuple[str, str]] = []
    if result.num_stages > 1:
        for record in result.stages:
            if record.snapshot_fidelity is not None:
                rows += row(f"snapshot from training, stage {record.stage}", record.snapshot_fidelity)
        return rows + row("snapshot from training, mean over stages", result.snapshot_fidelity)
    return row("snapshot from training", result.snapshot_fidelity)


def _found_cached(result: RunResult, what: str, stage: int) -> bool | None:
    """Whether the run read θ0 or a stage's snapshot from the cache (its own keys say); None where unknown."""
    if what == "pretraining":
        return result.cached.prior if result.cached else None
    if what.startswith("snapshot"):
        record = next((r for r in result.stages if r.stage == stage), None)
        return record.snapshot_cached if record is not None else None
    return None
