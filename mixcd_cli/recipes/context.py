"""A stage's context: the validated config, the run folder, the device, the experiment and the ledger.

`setup` is the first thing every stage does; nothing else reads the config's folders or loads data.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from .. import catalog, distributed  # noqa: F401  (catalog: every registry filled first)
from ..artifacts import atomic_path, environment_info, write_error, write_json
from ..data import Experiment, build_experiment, stage_specs
from ..errors import MixcdError, phase
from ..generation.data import GENERATION_KINDS, encode_generation
from ..generation.dictd import check_languages
from ..generation.models import check_lm
from ..metrics import Ledger
from ..models import FINETUNE_ONLY
from ..runtime import resolve_device, run_threads
from ..samplers import SAMPLERS, sampler_options
from ..schema import drop_retired, validate
from ..text import encode_experiment, model_position_limit
from ..training import TrainSettings

log = logging.getLogger(__name__)


def plain(node: Any) -> Any:
    """A config node as plain Python containers (resolved); anything else as it is."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig | ListConfig) else node


def validate_config(cfg: DictConfig) -> None:
    """Everything checkable before work starts: the schema's types, ranges and cross-field rules."""
    validate(cfg)


def run_dir_of(cfg: DictConfig, run_dir: Path | None = None) -> Path:
    """The run folder: given (tests, library use), Hydra's, or a fresh time-stamped one."""
    from hydra.core.hydra_config import HydraConfig

    if run_dir is not None:
        return Path(run_dir)
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(cfg.paths.output_dir) / "runs" / cfg.stage / time.strftime("%Y-%m-%d_%H-%M-%S")


@dataclass
class Context:
    """What every stage works with once `setup` has run."""

    cfg: DictConfig
    run_dir: Path
    device: torch.device
    experiment: Experiment
    ledger: Ledger
    timings: dict[str, float]
    resume: bool = False  # train: continue the unfinished run in run_dir
    theta0_chrf: float | None = None  # generation: θ0's decoded chrF on the prior test set (chrF matrix row 0)
    theta0_heldout: tuple[float, float | None] | None = None  # with a probe: θ0's accuracy (and chrF) held out


def _comparable(cfg_yaml: str) -> dict[str, Any]:
    """A run's configuration as an unfinished run in the same folder must match it: resume aside, and keys that
    moved since (RETIRED) dropped, so a run started before they moved still resumes."""
    data = drop_retired(OmegaConf.to_container(OmegaConf.create(cfg_yaml)) or {})
    data.pop("resume", None)
    return data


def setup(cfg: DictConfig, run_dir: Path | None = None) -> Context:
    """Validate, pick the device, fix the run folder (shared by all ranks), write config and environment, load data."""
    validate_config(cfg)
    torch.set_num_threads(run_threads(cfg.threads))
    device = distributed.init_from_env(str(cfg.device)) or resolve_device(str(cfg.device))
    # Under torchrun every rank must use rank 0's folder (Hydra's timestamp differs per process).
    run_dir = Path(distributed.broadcast(str(run_dir_of(cfg, run_dir))))
    if distributed.rank() != 0:
        return Context(cfg, run_dir, device, load_experiment(cfg, device), Ledger(), {})
    text = OmegaConf.to_yaml(cfg, resolve=True)
    resume = check_run_folder(cfg, run_dir, text)
    write_run_folder(run_dir, text)
    log.info("mixcd %s in %s on %s (world size %d)", cfg.stage, run_dir, device, distributed.world())
    t0 = time.perf_counter()
    with phase("data loading", f"only the configuration was written ({run_dir})"):
        exp = load_experiment(cfg, device)
    return Context(cfg, run_dir, device, exp, Ledger(), {"data": time.perf_counter() - t0}, resume)


# The file a stage writes last, when it has finished: a folder holding it is a finished run.
RESULT_FILES = {"train": "metrics.json", "eval": "metrics.json", "pretrain": "pretrain.json",
                "snapshot": "snapshot.json"}


def check_run_folder(cfg: DictConfig, run_dir: Path, cfg_yaml: str) -> bool:
    """Whether `mixcd train` continues an unfinished run in ``run_dir``; refuse a folder holding another stage's
    run, a finished run, or an unfinished one made with another configuration (it has progress to lose)."""
    stage = str(cfg.stage)
    checkpoint, previous = run_dir / "checkpoints" / "last.pt", run_dir / "config.yaml"
    if previous.is_file():
        made_by = _stage_of(previous)
        if made_by != stage:
            raise MixcdError(f"{run_dir} holds a run of `mixcd {made_by}` already; choose another hydra.run.dir")
    if (run_dir / RESULT_FILES[stage]).is_file():
        raise MixcdError(f"{run_dir} already holds a finished run; choose another hydra.run.dir")
    if stage != "train":
        return False
    if checkpoint.is_file() and previous.is_file() and _comparable(previous.read_text()) != _comparable(cfg_yaml):
        raise MixcdError(f"{run_dir} holds an unfinished run made with a different configuration; "
                         "rerun with its original overrides, or choose another hydra.run.dir")
    return resume_decision(cfg.resume, run_dir, checkpoint)


def _stage_of(config_file: Path) -> str:
    """The stage that wrote a run folder's config.yaml ("another tool" when it is not mixcd's)."""
    try:
        data = OmegaConf.to_container(OmegaConf.load(config_file))
    except Exception:  # not YAML, or not a mapping: a file of someone else's
        return "another tool"
    return str(data.get("stage", "another tool")) if isinstance(data, dict) else "another tool"


def write_run_folder(run_dir: Path, cfg_yaml: str) -> None:
    """The run folder with the resolved configuration and the environment it ran in."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(run_dir, exc, "hydra.run.dir") from exc
    with atomic_path(run_dir / "config.yaml") as tmp:
        tmp.write_text(cfg_yaml)
    write_json(environment_info(), run_dir / "env.json")


def load_experiment(cfg: DictConfig, device: torch.device) -> Experiment:
    """The experiment's data, placed on ``device`` where it fits (trainer.data_on_device)."""
    exp = experiment_of(cfg)
    place_data(exp, device, cfg.trainer.get("data_on_device", "auto"))
    return exp


def experiment_of(cfg: DictConfig, encode: bool = True) -> Experiment:
    """The prior task and the stages of ``cfg`` (``finetune`` alone when it lists no ``stages``), checked against
    the model and the sampler; text tasks tokenised too unless ``encode`` is false (tokenising writes a cache)."""
    stages = plain(cfg.stages) if cfg.get("stages") is not None else None
    specs = stage_specs(plain(cfg.finetune), stages)
    check_languages([("prior", plain(cfg.prior))] + [("finetune" if stages is None else f"stages[{k}]", spec)
                                                      for k, (spec, _) in enumerate(specs)])
    exp = build_experiment(plain(cfg.prior), plain(cfg.finetune), str(cfg.head), str(cfg.paths.data_dir),
                           cfg.image_size, stages)
    model = plain(cfg.model)
    generation = exp.objective.name in GENERATION_KINDS
    if generation != (model["backbone"] == "lm"):
        raise MixcdError(f"generation tasks ({exp.objective.name}) need a language model (model=lm, lm_tiny, "
                         "t5_tiny)" if generation else f"model=lm generates text; task kind '{exp.objective.name}' "
                         "needs a classifier (model=cnn, timm, hf)")
    if not generation and exp.text != (model["backbone"] == "hf"):
        raise MixcdError("text tasks need a text model (model=hf)" if exp.text else
                         f"model={model['backbone']} reads images; model=hf reads text tasks only")
    spec = SAMPLERS.spec(str(cfg.sampler.name))
    if spec.needs_classes(sampler_options(plain(cfg.sampler))) and not exp.objective.has_classes:
        raise MixcdError(f"sampler={spec.name} with these options needs a class column, and task kind "
                         f"'{exp.objective.name}' has none; use a partition by loss or a sampler that reads no classes")
    if encode:
        encode_text(cfg, exp)
    return exp


def encode_text(cfg: DictConfig, exp: Experiment) -> None:
    """Tokenise a text or generation experiment's tasks in place (text: cached under paths.cache_dir); images:
    nothing to do. A language model is checked against the task kind first, from its configuration."""
    if not exp.text:
        return
    model = plain(cfg.model)
    if exp.objective.name in GENERATION_KINDS:
        lora = model.get("lora") or {}
        limit = check_lm(exp.objective.name, model.get("name"), model.get("config"),
                         lora.get("target_modules") if lora.get("rank") else None)
        encode_generation(exp, exp.objective.name, model.get("name"), model.get("tokenizer"),
                          int(model["max_length"]), limit)
        return
    encode_experiment(exp, model.get("name"), model.get("tokenizer"), int(model["max_length"]),
                      model_position_limit(model.get("name"), model.get("config")), Path(cfg.paths.cache_dir),
                      bool(model.get("lowercase", True)))


def place_data(exp: Experiment, device: torch.device, mode: Any) -> None:
    """On a GPU, keep in-memory datasets there when they fit in a quarter of free memory (mode auto).

    The experiment's tasks are pointed at device copies; the memoised host sources stay untouched.
    """
    if device.type != "cuda" or mode is False:
        return
    tasks = exp.tasks()
    sources = {id(t.source): t.source for t in tasks}
    arrays = {key: s for key, s in sources.items() if hasattr(s, "on_device")}
    need = sum(s.data.numel() * s.data.element_size() for s in arrays.values())
    free, _ = torch.cuda.mem_get_info(device)
    if mode is True or need < free / 4:
        moved = {key: s.on_device(device) for key, s in arrays.items()}
        for t in tasks:
            t.source = moved.get(id(t.source), t.source)


def model_args(cfg: DictConfig) -> dict[str, Any]:
    """The model's architecture options, as create_model takes them."""
    return {k: v for k, v in plain(cfg.model).items() if k not in ("backbone", *FINETUNE_ONLY)}


def settings_from(node: DictConfig, steps: int, seed: int, purpose: str, eval_batch: int,
                  rehearsal_batch: int = 0, **extra: Any) -> TrainSettings:
    """Training settings from an optimiser node (trainer or pretrain) and the run's own values."""
    return TrainSettings(steps=steps, batch_size=int(node.batch_size), rehearsal_batch=rehearsal_batch,
                         optimizer=str(node.optimizer), lr=float(node.lr), momentum=float(node.momentum),
                         weight_decay=float(node.weight_decay), schedule=str(node.schedule),
                         warmup_steps=int(node.warmup_steps), seed=seed, eval_batch_size=eval_batch,
                         purpose=purpose, **extra)


def resume_decision(mode: Any, run_dir: Path, checkpoint: Path) -> bool:
    """auto: continue when the folder holds an unfinished run; true: must continue; false: must be fresh (a
    finished run is refused before, by `check_run_folder`)."""
    has = checkpoint.is_file()
    if mode is True and not has:
        raise MixcdError(f"resume=true but {checkpoint} does not exist; drop resume to start a new run")
    if mode is False and has:
        raise MixcdError(f"{run_dir} holds an unfinished run (checkpoint {checkpoint}); resume=auto continues "
                         "it, or choose another hydra.run.dir")
    return has


