"""The `mixcd` command: thin Typer commands over the library (heavy imports happen inside commands)."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from typer.core import TyperCommand

if TYPE_CHECKING:  # the samplers import torch: only when `ls samplers` runs
    from .samplers import SamplerSpec

app = typer.Typer(
    name="mixcd",
    help="Rehearsal during fine-tuning: mix-cd (arXiv 2402.08096) and its baselines at equal compute.\n\n"
         "Stages take Hydra overrides (key=value, group=option) and -m for sweeps.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

STAGE_CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True}
OVERRIDES = typer.Argument(None, help="Hydra overrides, e.g. sampler=mixcd trainer.steps=300", show_default=False)
MULTIRUN = typer.Option(False, "-m", "--multirun", help="Run a Hydra sweep (comma-separated values).")
# Hydra's own flags, passed through to @hydra.main unchanged.


class Stage(str, Enum):
    """The stages (hydra_app.STAGE_NAMES)."""

    pretrain = "pretrain"
    snapshot = "snapshot"
    train = "train"
    eval = "eval"


class ReportStage(str, Enum):
    """The stages whose run folders `mixcd report` reads."""

    train = "train"
    eval = "eval"


class ListKind(str, Enum):
    """What `mixcd ls` lists."""

    samplers = "samplers"
    models = "models"
    tasks = "tasks"
    experiments = "experiments"
    datasets = "datasets"
    loggers = "loggers"


class CfgPart(str, Enum):
    """Hydra's --cfg choices."""

    job = "job"
    hydra = "hydra"
    all = "all"


class InfoPart(str, Enum):
    """Hydra's --info choices."""

    all = "all"
    config = "config"
    defaults = "defaults"
    defaults_tree = "defaults-tree"
    plugins = "plugins"
    searchpath = "searchpath"


CFG = typer.Option(None, "--cfg", "-c", help="Print the config instead of running.", show_default=False)
RESOLVE = typer.Option(False, "--resolve", help="With --cfg: resolve interpolations before printing.")
PACKAGE = typer.Option(None, "--package", "-p", help="With --cfg: print only this package of the config.",
                       show_default=False)
INFO = typer.Option(None, "--info", "-i", help="Print Hydra information instead of running.", show_default=False)
HYDRA_HELP = typer.Option(False, "--hydra-help", help="Hydra's own help (its flags and config groups).")


def _groups_epilog() -> str:
    """The config groups and their options, for every stage's --help (read only when help is shown)."""
    from .hydra_app import config_groups, group_options

    try:
        groups = [g for g in config_groups() if group_options(g)] + ["hydra/launcher"]
        lines = [f"{g}: {', '.join(group_options(g))}" for g in groups]
    except Exception:  # a broken install still shows the rest of the help
        return ""
    return "Config groups (group=option):\n\n" + "\n\n".join(lines)


def _hydra_args(cfg: CfgPart | None, resolve: bool, package: str | None, info: InfoPart | None,
                hydra_help: bool) -> list[str]:
    from .errors import MixcdError

    if (resolve or package) and cfg is None:
        raise MixcdError("--resolve and --package only apply with --cfg job|hydra|all")
    args = ["--cfg", cfg.value] if cfg else []
    args += ["--resolve"] if resolve else []
    args += ["--package", package] if package else []
    args += ["--info", info.value] if info else []
    return args + (["--hydra-help"] if hydra_help else [])


def _stage(stage: str, ctx: typer.Context, overrides: list[str] | None, multirun: bool, cfg: CfgPart | None,
           resolve: bool, package: str | None, info: InfoPart | None, hydra_help: bool) -> None:
    from .hydra_app import run_stage

    hydra_args = _hydra_args(cfg, resolve, package, info, hydra_help)
    code = run_stage(stage, list(overrides or []) + list(ctx.args), multirun, hydra_args)
    if code:
        raise typer.Exit(code)


class StageCommand(TyperCommand):
    """A stage's command: its help ends with the config groups and their options, gathered when the help is
    shown (group sampler's options are the registered samplers, whose import loads torch: not on every start)."""

    def format_help(self, ctx: typer.Context, formatter: Any) -> None:  # Any: click's HelpFormatter, vendored
        if self.epilog is None:
            self.epilog = _groups_epilog()
        super().format_help(ctx, formatter)


@app.command(cls=StageCommand, context_settings=STAGE_CONTEXT)
def pretrain(ctx: typer.Context, overrides: list[str] = OVERRIDES, multirun: bool = MULTIRUN, cfg: CfgPart = CFG,
             resolve: bool = RESOLVE, package: str = PACKAGE, info: InfoPart = INFO,
             hydra_help: bool = HYDRA_HELP) -> None:
    """Train the prior model θ0 on the prior task (cached; skipped when prior_model.checkpoint is set)."""
    _stage("pretrain", ctx, overrides, multirun, cfg, resolve, package, info, hydra_help)


@app.command(cls=StageCommand, context_settings=STAGE_CONTEXT)
def snapshot(ctx: typer.Context, overrides: list[str] = OVERRIDES, multirun: bool = MULTIRUN, cfg: CfgPart = CFG,
             resolve: bool = RESOLVE, package: str = PACKAGE, info: InfoPart = INFO,
             hydra_help: bool = HYDRA_HELP) -> None:
    """Record θ0's per-sample loss, prediction, confidence and correctness on the pool (cached)."""
    _stage("snapshot", ctx, overrides, multirun, cfg, resolve, package, info, hydra_help)


@app.command(cls=StageCommand, context_settings=STAGE_CONTEXT)
def train(ctx: typer.Context, overrides: list[str] = OVERRIDES, multirun: bool = MULTIRUN, cfg: CfgPart = CFG,
          resolve: bool = RESOLVE, package: str = PACKAGE, info: InfoPart = INFO,
          hydra_help: bool = HYDRA_HELP) -> None:
    """Run the chain: pretrain and snapshot (cached), fine-tune with a rehearsal sampler, evaluate."""
    _stage("train", ctx, overrides, multirun, cfg, resolve, package, info, hydra_help)


@app.command("eval", cls=StageCommand, context_settings=STAGE_CONTEXT)
def eval_(ctx: typer.Context, overrides: list[str] = OVERRIDES, multirun: bool = MULTIRUN, cfg: CfgPart = CFG,
          resolve: bool = RESOLVE, package: str = PACKAGE, info: InfoPart = INFO,
          hydra_help: bool = HYDRA_HELP) -> None:
    """Re-evaluate a finished run folder (run_dir=PATH) as it was trained; only evaluation settings may change."""
    _stage("eval", ctx, overrides, multirun, cfg, resolve, package, info, hydra_help)


@app.command()
def report(paths: list[Path] = typer.Argument(..., help="Run folders or folders holding them (any depth), or a "
                                              "report's runs.csv."),
           out: Path = typer.Option(None, "--out", "-o", help="Where to write CSV/Markdown/PNG (default: first PATH)."),
           stage: ReportStage = typer.Option(ReportStage.train, help="Which runs to read."),
           plots: bool = typer.Option(True, help="Write PNG plots."),
           sampler: list[str] = typer.Option(None, "--sampler", "-s",
                                             help="Only these samplers (repeat the option); default: all."),
           html: bool = typer.Option(False, "--html", help="Also write report.html: one self-contained page with "
                                     "the tables and the plots inline, to share."),
           budget: str = typer.Option("total", "--budget", help="The budget axis of the folds, the frontier and the "
                                      "budget plot: total (the compute a sampler adds: rehearsal + selection + the "
                                      "snapshots it reads, fwd + 2·bwd) or rehearsal (rows drawn). The fold on the "
                                      "other axis is shown beside.", metavar="total|rehearsal"),
           amortize: int = typer.Option(None, "--amortize", help="Spread θ0's one-time snapshot over N "
                                        "fine-tunings on the total axis (default: charged in full, shown apart).",
                                        metavar="N")) -> None:
    """Compare runs: mean ± std over seeds by whole configuration; random-equivalent budgets on the total or the
    rehearsal axis with labelled intervals; CSV (a row per group, and runs.csv: a row per run), Markdown and
    plots (and --html: one page to share)."""
    from .hydra_app import experiment_settings
    from .report import run_report

    run_report(paths, out, stage=stage.value, plots=plots, samplers=sampler or None, html=html, budget=budget,
               amortize=amortize, compose=experiment_settings)


@app.command("config")
def config_(stage: Stage = typer.Argument(Stage.train, help="The stage whose config to print."),
            overrides: list[str] = typer.Argument(None, show_default=False)) -> None:
    """Print the composed config of a stage with the given overrides."""
    from omegaconf import OmegaConf

    from .hydra_app import check_overrides, compose, normalise_overrides

    overrides = normalise_overrides(list(overrides or []))
    check_overrides(overrides, multirun=False)  # unknown group options are refused here
    cfg = compose(stage.value, overrides)
    typer.echo(OmegaConf.to_yaml(cfg, resolve=True), nl=False)


@app.command("ls")
def ls(kind: ListKind = typer.Argument(..., help="What to list.")) -> None:
    """List what is registered: samplers, models, tasks, experiments, datasets or loggers."""
    from rich.table import Table
    from rich.text import Text

    from .console import console
    from .hub import text_extra_installed
    from .hydra_app import config_dir, group_options
    from .text import TEXT_DATASETS

    kind = kind.value
    show_text = text_extra_installed()
    table = Table(title=kind)
    table.add_column("name", style="bold")
    table.add_column("what")
    if kind == "samplers":
        from .samplers import SAMPLERS

        for spec in SAMPLERS.specs():
            table.add_row(spec.name, Text(_sampler_text(spec)))
    elif kind == "datasets":
        from .sources import DATASETS

        for name in DATASETS:
            if show_text or name not in TEXT_DATASETS:
                table.add_row(name, DATASETS.help(name))
    elif kind == "loggers":
        from .tracking import LOGGERS

        for name in LOGGERS:
            table.add_row(name, LOGGERS.help(name))
    else:
        group = {"models": "model", "tasks": "task", "experiments": "experiment"}[kind]
        for name in group_options(group):
            text = (config_dir() / group / f"{name}.yaml").read_text().splitlines()
            comment = next((line.lstrip("# ").strip() for line in text
                            if line.startswith("#") and "@package" not in line), "")
            if show_text or not _needs_text(config_dir(), group, name):
                table.add_row(name, comment)
        if kind == "models":
            table.add_row("<timm name>", "any timm.list_models() entry: model=convnext_atto")
    console.print(table)
    if not show_text and kind in ("models", "tasks", "experiments", "datasets"):
        from .hub import TEXT_EXTRA

        console.print(f"text {kind} (Hugging Face encoders, text files, the generated text experiment) need the "
                      f"text extra: {TEXT_EXTRA}", highlight=False, markup=False)


def _sampler_text(spec: SamplerSpec) -> str:
    """A sampler's help, then each of its declared options as ``key=default (choices): help``."""
    from .options import docs, shown

    lines = [spec.help]
    for doc in docs(spec.options):
        choices = f" ({' | '.join(shown(c) for c in doc.choices)})" if doc.choices else ""
        lines.append(f"  {doc.name}={shown(doc.default)}{choices}" + (f": {doc.help}" if doc.help else ""))
    return "\n".join(lines)


def _needs_text(config_dir: Path, group: str, name: str) -> bool:
    """Whether config ``group/name`` needs the text extra: an hf backbone, a text dataset, or a defaults entry
    (a model's base, an experiment's tasks and model) that does."""
    import yaml

    from .text import TEXT_DATASETS

    node = yaml.safe_load((config_dir / group / f"{name}.yaml").read_text()) or {}
    if node.get("backbone") == "hf" or node.get("dataset") in TEXT_DATASETS:
        return True
    for entry in node.get("defaults") or []:
        if isinstance(entry, dict):  # "/task@prior: topics_prior", "override /model: hf_tiny"
            key, ref = next(iter(entry.items()))
            ref_group = key.split()[-1].strip("/").split("@")[0]
        else:  # "hf" (a model's base) or "_self_"
            ref_group, ref = group, entry
        if isinstance(ref, str) and (config_dir / ref_group / f"{ref}.yaml").is_file() and \
                _needs_text(config_dir, ref_group, ref):
            return True
    return False


def main() -> None:
    """Console entry point: user mistakes print one line and exit non-zero, never a traceback."""
    from .errors import MixcdError

    try:
        # Without standalone mode click returns (not raises) the code of typer.Exit and of an
        # Abort (Ctrl-C) — it must reach the shell, not be dropped.
        code = app(prog_name="mixcd", standalone_mode=False)
    except MixcdError as exc:
        from .console import error

        error(str(exc))
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        from .console import error
        from .errors import interrupt_message

        error(interrupt_message())
        sys.exit(130)
    except Exception as exc:
        # Usage errors (missing argument, unknown command or option): click's short usage message and
        # its exit code 2. Typer vendors its own click, so recognise them by shape, not by class.
        show, exit_code = getattr(exc, "show", None), getattr(exc, "exit_code", None)
        if callable(show) and isinstance(exit_code, int):
            show()
            sys.exit(exit_code)
        raise
    if code == 130:  # typer turns a Ctrl-C it caught into this code: say what it interrupted
        from .console import error
        from .errors import interrupt_message

        error(interrupt_message())
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
