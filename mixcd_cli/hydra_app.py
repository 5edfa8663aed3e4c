"""Running stages through Hydra: config location, override checks, and @hydra.main dispatch.

Overrides are checked before Hydra sees them, so an unknown group option or key becomes one
line that names the valid choices (and the closest one) rather than Hydra's multi-line report.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from .callbacks import ERROR_FILE, SweepOutcome
from .errors import MixcdError, closest, unknown_choice
from .places import check_writable

STAGE_NAMES = ("pretrain", "snapshot", "train", "eval")


def config_dir() -> Path:
    """MIXCD_CONFIG_DIR; conf/ beside the package (checkout, editable install); else the packaged copy."""
    env = os.environ.get("MIXCD_CONFIG_DIR")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve().parent
    candidates += [here.parent / "conf", here / "conf"]
    for path in candidates:
        if (path / "common.yaml").is_file():
            return path
    raise MixcdError("mixcd's conf/ folder was not found; install with `pip install -e .` from the "
                     "repository or set MIXCD_CONFIG_DIR")


def project_root() -> str:
    """Where outputs/ and data/ live by default.

    MIXCD_ROOT when set; else the repository checkout whose conf/ is in use (a clone, or an editable
    install); else, for a package installed without a checkout, the folder mixcd was started from,
    as Hydra itself does.
    """
    env = os.environ.get("MIXCD_ROOT")
    if env:
        return env
    conf = config_dir()
    if conf == Path(__file__).resolve().parent / "conf":
        return os.getcwd()
    return str(conf.parent)


def register_resolvers() -> None:
    """The ${mixcd_root:} resolver and the structured-config schemas, before any composition."""
    from omegaconf import OmegaConf

    from .schema import register

    register()
    if not OmegaConf.has_resolver("mixcd_root"):
        OmegaConf.register_new_resolver("mixcd_root", project_root)


# Groups whose options are (also) nodes schema.register puts in Hydra's ConfigStore, with no YAML file:
# every registered sampler is group `sampler`'s option of its name (its declaration, mixcd_cli/samplers).
STORED_GROUPS = ("sampler",)


def group_options(group: str) -> list[str]:
    """The options of a config group: its YAML files, and for a stored group the ConfigStore's nodes (which
    imports the registries: torch)."""
    folder = config_dir() / group
    names = {p.stem for p in folder.glob("*.yaml")} if folder.is_dir() else set()
    if group in STORED_GROUPS:
        from hydra.core.config_store import ConfigStore

        register_resolvers()
        names |= {n.removesuffix(".yaml") for n in ConfigStore.instance().repo.get(group, {})}
    return sorted(names)


def config_groups() -> list[str]:
    return sorted({p.name for p in config_dir().iterdir() if p.is_dir()} | set(STORED_GROUPS))


def _timm_name(value: str) -> bool:
    try:
        import timm
    except ImportError:
        return False
    return bool(timm.is_model(value))


def _timm_hint(name: str) -> str:
    try:
        import timm
    except ImportError:
        return ""
    return closest(name, timm.list_models())


def normalise_overrides(overrides: list[str]) -> list[str]:
    """Accept `model=<timm name>` as shorthand for `model=timm model.name=<timm name>`; refuse an override holding
    a control character (a newline or tab pasted into a value), shown escaped so the message stays one line."""
    out: list[str] = []
    for item in overrides:
        if not item.isprintable():
            shown = item.encode("unicode_escape").decode("ascii")
            raise MixcdError(f"the override '{shown}' holds a control character (a newline or a tab); remove it")
        key, sep, value = item.partition("=")
        if sep and key == "model" and value and "," not in value and value not in group_options("model") \
                and _timm_name(value):
            out += ["model=timm", f"model.name={value}"]
        else:
            out.append(item)
    return out


def _values(override: Any) -> list[str]:
    """Every value an override names: one, or each element of a sweep."""
    from hydra.core.override_parser.types import ChoiceSweep, Glob, IntervalSweep, Override, RangeSweep

    value = override.value()
    if isinstance(value, ChoiceSweep):
        # each as Hydra's sweeper writes a job's override (null, not Python's None, which a value check refuses)
        return [Override._get_value_element_as_str(v) for v in value.list]
    if isinstance(value, (RangeSweep, Glob, IntervalSweep)):  # a search space (Optuna): checked by its jobs
        return []
    if isinstance(value, list):
        return [str(v) for v in value]
    return [str(value)]


def _refuse_split_values(overrides: list[str]) -> None:
    """A word without '=' is almost always a value the shell split at a space."""
    for i, item in enumerate(overrides):
        if "=" not in item and not item.startswith("~"):
            before = f" after '{overrides[i - 1]}'" if i else ""
            raise MixcdError(f"'{item}'{before} is not an override (key=value); a value with spaces must be quoted "
                             f"whole, e.g. 'paths.output_dir=/data/my runs'")


def _refuse_unknown_options(group: str, key: str, values: list[str]) -> None:
    options = group_options(group)
    for value in values:
        if value in options:
            continue
        if group == "model":
            raise MixcdError(f"unknown model '{value}': neither a config in conf/model ({', '.join(options)}) nor a "
                             f"timm model name{closest(value, options)}")
        raise unknown_choice(group if group != "task" else f"task for {key}", value, options)


def _explain_parse_error(parser: Any, overrides: list[str], exc: Exception) -> MixcdError:
    """Hydra's parse error as one line naming the override; a value the grammar cannot read unquoted (letters
    beyond ASCII, most punctuation) is told to be quoted, which Hydra reads as it is."""
    bad = next((o for o in overrides if not _parses(parser, o)), None)
    if bad is None:
        return MixcdError(f"cannot parse override: {str(exc).splitlines()[0]}")
    key, sep, value = bad.partition("=")
    if sep and "LexerNoViableAltException" in str(exc) and not value.startswith(("'", '"', "[", "{")):
        return MixcdError(f"cannot read the value of '{bad}' unquoted: quote it for Hydra inside the shell's quotes, "
                          f"e.g. '{key}=\"{value}\"'")
    return MixcdError(f"cannot parse override '{bad}': {str(exc).splitlines()[0]}")


def _parses(parser: Any, override: str) -> bool:
    try:
        parser.parse_overrides([override])
    except Exception:
        return False
    return True


# (position in the first-value overrides, key, the sweep's other values)
SweepValues = list[tuple[int, str, list[str]]]


def check_overrides(overrides: list[str], multirun: bool) -> tuple[list[str], SweepValues]:
    """Parse overrides; refuse unknown group options.

    Returns the overrides with every sweep at its first value (for a validation compose) and, per
    sweep, its other values (each checked on its own by `validate`).
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    _refuse_split_values(overrides)
    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(overrides)
    except OverrideParseException as exc:
        raise _explain_parse_error(parser, overrides, exc) from exc
    groups = config_groups()
    first: list[str] = []
    sweeps: SweepValues = []
    for ov, text in zip(parsed, overrides, strict=True):
        key = ov.key_or_group
        group = key.split("@")[0].lstrip("+~")
        if group in groups and not ov.is_delete():
            _refuse_unknown_options(group, key, _values(ov))
        if ov.is_sweep_override():
            if not multirun:
                raise MixcdError(f"'{text}' is a sweep; add -m to run it as a multirun")
            vals = _values(ov)
            if vals:
                first.append(f"{ov.get_key_element()}={vals[0]}")
                sweeps.append((len(first) - 1, ov.get_key_element(), vals[1:]))
            continue
        first.append(text)
    return first, sweeps


def _explain_compose_error(exc: Exception, cfg_keys: Any) -> MixcdError:
    """Hydra's multi-line composition error as one line: an unknown key, or a value of the wrong type."""
    import re

    from omegaconf.errors import ValidationError

    from .schema import RETIRED, open_node, type_error

    cause = exc
    while cause is not None and not isinstance(cause, ValidationError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, ValidationError):
        return type_error(cause)
    text = str(exc)

    m = re.search(r"Could not override '([^']+)'", text) or re.search(r"Key '([^']+)' is not in struct", text)
    if m:
        full = m.group(1)
        if full in RETIRED:
            return MixcdError(f"{full} is now {RETIRED[full]}: set {RETIRED[full]}=... instead")
        parent, _, leaf = full.rpartition(".")
        node = cfg_keys
        try:
            for part in [p for p in parent.split(".") if p]:
                node = node[part]
            valid = sorted(str(k) for k in node.keys())
        except Exception:
            valid = []
        where = f" under '{parent}'" if parent else ""
        hint = closest(leaf, valid)
        # + adds a key only where the schema takes new ones; elsewhere it would be refused just the same
        plus = " (prefix with + to add a new key)" if open_node(full) else ""
        if valid:
            return MixcdError(f"unknown config key '{full}'{hint}; keys{where}: {', '.join(valid)}{plus}")
        return MixcdError(f"unknown config key '{full}'{plus}")
    first = next((line for line in text.splitlines() if line.strip()), text)
    return MixcdError(f"invalid configuration: {first}")


def compose(stage: str, overrides: list[str]) -> Any:
    """Compose a stage's config without running it (config command, validation, tests)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        try:
            return hydra_compose(config_name=stage, overrides=overrides)
        except Exception as exc:
            # the keys the user could have meant: under their own group choices (sampler=mixcd, ...)
            choices = [o for o in overrides if "=" in o and "." not in o.split("=", 1)[0]]
            try:
                base = hydra_compose(config_name=stage, overrides=choices)
            except Exception:
                base = hydra_compose(config_name=stage, overrides=[])
            raise _explain_compose_error(exc, base) from exc


def experiment_settings(experiment: str) -> tuple[tuple[str, str], ...]:
    """The settings (as the report reads a run folder's) of a train run of ``experiment`` as this checkout composes
    it: what a committed runs.csv's rows share and do not record, where no report.json says it."""
    import tempfile

    from omegaconf import OmegaConf

    from .report.read import run_settings

    try:
        text = OmegaConf.to_yaml(compose("train", [f"experiment={experiment}"]), resolve=True)
    except Exception as exc:  # an experiment this checkout does not have: its settings cannot be known
        raise MixcdError(f"a runs.csv of experiment '{experiment}' is set beside run folders of it, and this "
                         f"checkout cannot compose experiment={experiment} to know the settings the runs.csv "
                         f"leaves out ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from exc
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = Path(tmp) / "config.yaml"
        cfg_path.write_text(text)
        return run_settings(cfg_path)[0]


def validate(stage: str, overrides: list[str], multirun: bool) -> tuple[Any, list[str], list[tuple[str, Any]]]:
    """Everything that can be checked before running without reading a file: overrides, composition, value ranges,
    output folders. → the config (a sweep at its first values), its overrides, and each other value of a sweep as
    ("key=value", its config)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from .recipes import validate_config

    first, sweeps = check_overrides(overrides, multirun)
    cfg = compose(stage, first)
    trials: list[tuple[str, Any]] = []
    try:
        validate_config(cfg)
        # every value of a sweep, each with the others at their first value: a bad one fails now,
        # not in the middle of the sweep
        for position, key, others in sweeps:
            for value in others:
                trial = [*first[:position], f"{key}={value}", *first[position + 1:]]
                try:
                    trial_cfg = compose(stage, trial)
                    validate_config(trial_cfg)
                except MixcdError as exc:
                    raise MixcdError(f"in the sweep, {key}={value}: {exc}") from exc
                trials.append((f"{key}={value}", trial_cfg))
    except OmegaConfBaseException as exc:
        raise MixcdError(f"invalid configuration: {str(exc).splitlines()[0]}") from exc
    for key in ("paths.output_dir", "paths.cache_dir"):
        check_writable(Path(str(OmegaConf.select(cfg, key))), key)
    return cfg, first, trials


def preflight(stage: str, cfg: Any, first: list[str], trials: list[tuple[str, Any]], multirun: bool,
              overrides: list[str]) -> None:
    """Every check that reads a file or asks the machine, before Hydra writes anything (docs/design.md §3): the
    folder the run writes (or the sweep's), the run to resume or evaluate, CUDA, the inputs of the config and of
    each other value of a sweep."""
    from .recipes.preflight import check_before_running, check_inputs, check_sweep_folder

    if str(cfg.device).startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise MixcdError(f"device={cfg.device} requested but no CUDA device is available; use device=cpu or auto")
    if cfg.model.get("backbone") == "timm" and not _timm_name(str(cfg.model.name)):
        raise MixcdError(f"unknown timm model '{cfg.model.name}'{_timm_hint(str(cfg.model.name))}")
    folders = planned_folders(stage, first)
    if multirun:
        check_sweep_folder(folders["sweep"])
        check_before_running(cfg, None, overrides)
    else:
        if stage == "train" and cfg.resume is True:
            _check_resumable(folders["run"])
        check_before_running(cfg, folders["run"], overrides)
    for label, trial in trials:
        try:
            check_inputs(trial)
        except MixcdError as exc:
            raise MixcdError(f"in the sweep, {label}: {exc}") from exc


def planned_folders(stage: str, overrides: list[str]) -> dict[str, Path]:
    """The run folder and the sweep folder Hydra will use ("run", "sweep"): named, fixed by MIXCD_RUN_STAMP, or
    a time stamp of now (a folder that does not exist yet)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        full = hydra_compose(config_name=stage, overrides=overrides, return_hydra_config=True)
    return {"run": Path(str(OmegaConf.select(full, "hydra.run.dir"))),
            "sweep": Path(str(OmegaConf.select(full, "hydra.sweep.dir")))}


def check_sweeper(overrides: list[str], multirun: bool) -> None:
    """hparams_search=... needs -m and the Optuna sweeper plugin: say so in one line, before composing."""
    import importlib.util

    chosen = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == "hparams_search" and "=" in o]
    if not chosen or chosen[-1] in ("null", ""):
        return
    if not multirun:
        raise MixcdError(f"hparams_search={chosen[-1]} runs a sweep of trials; add -m")
    if importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None:
        raise MixcdError(f"hparams_search={chosen[-1]} needs Hydra's Optuna sweeper; install the tracking extra: "
                         "pip install -e '.[track]' (or make install-track)")


def _check_resumable(run_dir: Path) -> None:
    if not run_dir.is_dir():
        raise MixcdError("resume=true continues the run in hydra.run.dir=<its folder>; name that folder")
    if not (run_dir / "checkpoints" / "last.pt").is_file():
        raise MixcdError(f"resume=true but {run_dir} holds no checkpoint (checkpoints/last.pt); drop resume to "
                         "start a new run")


def failed_jobs(sweep_dir: Path) -> list[str]:
    """'job N (overrides): reason' for every job folder of a sweep that holds error.txt."""
    out = []
    for error in sorted(sweep_dir.glob(f"*/{ERROR_FILE}"), key=lambda p: (len(p.parent.name), p.parent.name)):
        overrides = error.parent / ".hydra" / "overrides.yaml"
        what = ""
        if overrides.is_file():
            from omegaconf import OmegaConf

            what = f" ({' '.join(str(o) for o in OmegaConf.load(overrides))})"
        reason = error.read_text().strip().splitlines()
        out.append(f"job {error.parent.name}{what}: {reason[0] if reason else 'failed'}")
    return out


def returned(cfg: Any, result: Any) -> Any:
    """What a job returns to Hydra: the number named by ``optimized_metric`` (None when the run has none,
    which the Optuna sweeper records as a failed trial), else the whole result as a plain dict."""
    name = cfg.get("optimized_metric")
    if not name:
        return result.to_dict() if result is not None else None
    return result.metric(str(name)) if hasattr(result, "metric") else None


def _task(stage: str) -> Any:
    def task_function(cfg: Any) -> Any:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        from . import distributed
        from .console import error
        from .recipes import STAGES

        hc = HydraConfig.get()
        multirun = hc.mode == RunMode.MULTIRUN
        folder = Path(hc.runtime.output_dir)
        (folder / ERROR_FILE).unlink(missing_ok=True)  # a rerun into the same folder starts clean
        try:
            return returned(cfg, STAGES[stage](cfg))
        except MixcdError as exc:
            error(str(exc))
            # The reason stays in the run folder, if there is one, so `mixcd report` lists the run
            # as failed rather than unfinished.
            if multirun or folder.is_dir():
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                    (folder / ERROR_FILE).write_text(str(exc) + "\n")
                except OSError:
                    pass
            if not multirun:
                sys.exit(exc.exit_code)
            # In a sweep one bad job must not stop the others (Optuna records a failed trial); the sweep
            # fails at the end.
            return None
        finally:
            distributed.shutdown()

    return task_function


def run_stage(stage: str, overrides: list[str], multirun: bool = False, hydra_args: list[str] | None = None) -> int:
    """Run ``stage`` through @hydra.main so -m sweeps, launchers and run folders behave as in Hydra."""
    import hydra

    from . import distributed

    overrides = normalise_overrides(list(overrides))
    check_sweeper(overrides, multirun)
    cfg, first, trials = validate(stage, overrides, multirun)
    named = dict(item.partition("=")[::2] for item in overrides if "=" in item)
    inspect_only = any(a in (hydra_args or []) for a in ("--cfg", "--info", "--hydra-help"))
    if not inspect_only:  # printing the configuration reads no file
        preflight(stage, cfg, first, trials, multirun, overrides)
    # a folder named on the command line must be creatable; probed once the checks that refuse an existing run
    # folder have passed, so a refused command does not even touch its time stamp
    for key in ("hydra.run.dir", "hydra.sweep.dir"):
        if named.get(key) and "," not in named[key]:
            check_writable(Path(named[key]), key)
    devices = int(cfg.trainer.get("devices", 1) or 1)
    if devices > 1 and distributed.env_world_size() == 1 and not inspect_only:
        if multirun:
            raise MixcdError("trainer.devices > 1 runs one job over several processes; sweep with a launcher "
                             "(hydra/launcher=submitit_slurm) instead of -m, or run the jobs one by one")
        return distributed.launch(stage, overrides, devices)
    register_resolvers()
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    main = hydra.main(config_path=str(config_dir()), config_name=stage, version_base="1.3")(_task(stage))
    argv = sys.argv
    sys.argv = [f"mixcd {stage}", *(["--multirun"] if multirun else []), *(hydra_args or []), *overrides]
    SweepOutcome.sweep_dir = None
    try:
        main()
    except Exception as exc:
        # a sweeper that gives up on failed jobs (Optuna with no completed trial): the jobs' own reasons
        failed = failed_jobs(SweepOutcome.sweep_dir) if multirun and SweepOutcome.sweep_dir else []
        if failed:
            raise MixcdError(f"{len(failed)} sweep job(s) failed (each folder holds {ERROR_FILE}); first: "
                             f"{failed[0]}") from exc
        raise
    finally:
        sys.argv = argv
    failed = failed_jobs(SweepOutcome.sweep_dir) if multirun and SweepOutcome.sweep_dir else []
    if failed:
        raise MixcdError(f"{len(failed)} sweep job(s) failed (each folder holds {ERROR_FILE}); "
                         f"first: {failed[0]}")
    return 0
