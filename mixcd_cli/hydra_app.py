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
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("mixcd_root"):
        OmegaConf.register_new_resolver("mixcd_root", project_root)


def group_options(group: str) -> list[str]:
    folder = config_dir() / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def config_groups() -> list[str]:
    return sorted(p.name for p in config_dir().iterdir() if p.is_dir())


def _timm_name(value: str) -> bool:
    try:
        import timm
    except ImportError:
        return False
    return bool(timm.is_model(value))


def normalise_overrides(overrides: list[str]) -> list[str]:
    """Accept `model=<timm name>` as shorthand for `model=timm model.name=<timm name>`."""
    out: list[str] = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep and key == "model" and value and "," not in value and value not in group_options("model") \
                and _timm_name(value):
            out += ["model=timm", f"model.name={value}"]
        else:
            out.append(item)
    return out


def _values(override: Any) -> list[str]:
    """Every value an override names: one, or each element of a sweep."""
    from hydra.core.override_parser.types import ChoiceSweep, Glob, RangeSweep

    value = override.value()
    if isinstance(value, ChoiceSweep):
        return [str(v) for v in value.list]
    if isinstance(value, (RangeSweep, Glob)):
        return []
    if isinstance(value, list):
        return [str(v) for v in value]
    return [str(value)]


def check_overrides(overrides: list[str], multirun: bool) -> list[str]:
    """Parse overrides; refuse unknown group options. Returns overrides for a validation compose."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as exc:
        raise MixcdError(f"cannot parse override: {str(exc).splitlines()[0]}") from exc
    groups = config_groups()
    first: list[str] = []
    for ov, text in zip(parsed, overrides, strict=True):
        key = ov.key_or_group
        group = key.split("@")[0].lstrip("+~")
        if group in groups and not ov.is_delete():
            for value in _values(ov):
                if value not in group_options(group):
                    if group == "model":
                        raise MixcdError(f"unknown model '{value}': neither a config in conf/model "
                                         f"({', '.join(group_options('model'))}) nor a timm model name"
                                         f"{closest(value, group_options('model'))}")
                    raise unknown_choice(group if group != "task" else f"task for {key}", value, group_options(group))
        if ov.is_sweep_override():
            if not multirun:
                raise MixcdError(f"'{text}' is a sweep; add -m to run it as a multirun")
            vals = _values(ov)
            if vals:
                first.append(f"{ov.get_key_element()}={vals[0]}")
            continue
        first.append(text)
    return first


def _explain_compose_error(exc: Exception, cfg_keys: Any) -> MixcdError:
    text = str(exc)
    import re

    m = re.search(r"Could not override '([^']+)'", text) or re.search(r"Key '([^']+)' is not in struct", text)
    if m:
        full = m.group(1)
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
        if valid:
            return MixcdError(f"unknown config key '{full}'{hint}; keys{where}: {', '.join(valid)} "
                              f"(prefix with + to add a new key)")
        return MixcdError(f"unknown config key '{full}' (prefix with + to add a new key)")
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
            base = hydra_compose(config_name=stage, overrides=[])
            raise _explain_compose_error(exc, base) from exc


def validate(stage: str, overrides: list[str], multirun: bool) -> Any:
    """Everything that can be checked before running: overrides, composition, value ranges."""
    from omegaconf.errors import OmegaConfBaseException

    from .stages import validate_config

    first = check_overrides(overrides, multirun)
    cfg = compose(stage, first)
    try:
        validate_config(cfg)
    except OmegaConfBaseException as exc:
        raise MixcdError(f"invalid configuration: {str(exc).splitlines()[0]}") from exc
    return cfg


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


def _task(stage: str) -> Any:
    def task_function(cfg: Any) -> Any:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        from . import distributed
        from .console import error
        from .stages import STAGES

        hc = HydraConfig.get()
        multirun = hc.mode == RunMode.MULTIRUN
        folder = Path(hc.runtime.output_dir)
        if multirun:  # a rerun into the same sweep folder starts clean
            (folder / ERROR_FILE).unlink(missing_ok=True)
        try:
            return STAGES[stage](cfg)
        except MixcdError as exc:
            error(str(exc))
            if not multirun:
                sys.exit(exc.exit_code)
            # In a sweep one bad job must not stop the others: leave the reason in its folder
            # (the report lists it as failed) and fail the sweep at the end.
            try:
                folder.mkdir(parents=True, exist_ok=True)
                (folder / ERROR_FILE).write_text(str(exc) + "\n")
            except OSError:
                pass
            return None
        finally:
            distributed.shutdown()

    return task_function


def run_stage(stage: str, overrides: list[str], multirun: bool = False, hydra_args: list[str] | None = None) -> int:
    """Run ``stage`` through @hydra.main so -m sweeps, launchers and run folders behave as in Hydra."""
    import hydra

    from . import distributed

    overrides = normalise_overrides(list(overrides))
    cfg = validate(stage, overrides, multirun)
    devices = int(cfg.trainer.get("devices", 1) or 1)
    inspect_only = any(a in (hydra_args or []) for a in ("--cfg", "--info", "--hydra-help"))
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
    finally:
        sys.argv = argv
    failed = failed_jobs(SweepOutcome.sweep_dir) if multirun and SweepOutcome.sweep_dir else []
    if failed:
        raise MixcdError(f"{len(failed)} sweep job(s) failed (each folder holds {ERROR_FILE}); "
                         f"first: {failed[0]}")
    return 0
