"""The structured configuration: types, ranges and cross-field rules of every stage, in one place.

The dataclasses are registered in Hydra's ConfigStore and named first in every primary config's
defaults list (``mixcd_schema``, ``mixcd_eval_schema``), so a value of the wrong type fails while
the configuration is composed, before any work. Values come from the YAML files in conf/ (fields
here are MISSING: one source of defaults), except the samplers' options: their defaults live in
the per-sampler dataclasses below, which both conf/sampler/*.yaml (through its defaults list)
and `create_sampler` read. Ranges are field metadata checked by `check_ranges`; rules that tie
fields together are in `cross_field_rules`. `validate` runs both and is called before any work.
"""

from __future__ import annotations

import math
import re
from dataclasses import MISSING as NO_FACTORY
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Optional  # noqa: UP035  (OmegaConf reads these annotations at run time)

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from .errors import MixcdError, unknown_choice

HEAD_MODES = ("shared", "multi")
OPTIMIZERS = ("sgd", "adamw", "adam")
SCHEDULES = ("constant", "cosine", "linear")
AMP_MODES = ("auto", "bf16", "off")
OVER = ("pool", "eligible")
PARTITIONS = ("loss", "class", "class_loss", "aux", "aux_loss", "kmeans")
ESTIMATES = ("mean", "thompson")  # mixcd: the posterior mean α̂_k, or a draw from each bin's Beta posterior
MEMORIES = ("none", "recent")  # mixcd: recent = a queue of rows seen as collateral damage, redrawn with priority
RESUME_MODES = ("auto", True, False)
# What `mixcd train` can return to a sweeper (optimized_metric): metrics.json numbers, higher or lower is better
# as the sweeper's direction says.
OPTIMIZABLE = ("pre_acc", "forgetting", "ft_acc", "earlier_acc", "avg_acc", "bwt", "avg_forgetting", "hit_rate",
               "signal_rate", "final_loss")
STAGES = ("pretrain", "snapshot", "train", "eval")
POOL_MODES = ("all", "prior", "previous")  # rehearsal pool of stage k (DESIGN §10): data.Experiment.pool_at
NORMS = ("batch", "group", "layer", "none")  # built-in CNN: models.norm_layer
BN_MODES = ("train", "frozen")  # timm models while fine-tuning: MixcdNet.freeze_batchnorm


# Settings added after runs were already being made, with the value that behaves as runs before them did:
# `mixcd report` reads an older run's missing key as this value, so old and new runs of one setting group, and
# `mixcd eval` evaluates an older run with it.
# (Sampler options need no entry: their schema defaults play that part.) Add a key here when adding one.
INTRODUCED: dict[str, Any] = {"rehearsal.pool": "all", "stages": None, "logger": None, "optimized_metric": None,
                              "prior.transform": None,
                              "finetune.transform": None}


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """A nested plain config as {"a.b.c": value}: how configurations are compared key by key."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


def _req(**rules: Any) -> Any:
    """A field with no default here (its value comes from conf/) and range rules as metadata."""
    return field(default=MISSING, metadata=rules)


def _opt(default: Any, **rules: Any) -> Any:
    return field(default=default, metadata=rules)


# ----------------------------------------------------------------------------------- nodes


@dataclass
class PathsConf:
    root: str = _req()
    output_dir: str = _req()
    data_dir: str = _req()
    cache_dir: str = _req()


@dataclass
class TaskConf:
    name: str = _req()
    dataset: str = _req()
    classes: Optional[list[int]] = _req(nonempty=True)  # noqa: UP045
    # a mapping of integer labels, or null: checked by check_label_map, because Hydra cannot assign a
    # mapping on the command line (finetune.label_map={4:1}) to a key typed Optional[dict] while it is null
    label_map: Any = _req()
    download: bool = _req()
    root: Optional[str] = _req()  # noqa: UP045
    options: dict[str, Any] = _req()
    limit_train: Optional[int] = _req(ge=1)  # noqa: UP045
    limit_test: Optional[int] = _req(ge=1)  # noqa: UP045
    transform: Optional[dict[str, Any]] = _opt(None)  # noqa: UP045  (data.TASK_TRANSFORMS: rotate, permute)


@dataclass
class OptimConf:
    batch_size: int = _req(ge=1)
    optimizer: str = _req(choices=OPTIMIZERS)
    lr: float = _req(gt=0)
    momentum: float = _req(ge=0, lt=1)
    weight_decay: float = _req(ge=0)
    schedule: str = _req(choices=SCHEDULES)
    warmup_steps: int = _req(ge=0)


@dataclass
class TrainerConf(OptimConf):
    steps: int = _req(ge=1)
    mix_ratio: float = _req(ge=0)
    rehearsal_weight: float = _req(ge=0)
    log_every: int = _req(ge=1)
    audit_every: int = _req(ge=0)
    checkpoint_every: int = _req(ge=0)
    amp: str = _req(choices=AMP_MODES)
    channels_last: bool = _req()
    devices: int = _req(ge=1)
    compile: bool = _req()
    data_on_device: Any = _req(choices=("auto", True, False))


@dataclass
class PretrainConf(OptimConf):
    epochs: int = _req(ge=1)
    seed: int = _req()


@dataclass
class PriorModelConf:
    checkpoint: Optional[str] = _req()  # noqa: UP045


@dataclass
class SnapshotConf:
    path: Optional[str] = _req()  # noqa: UP045
    batch_size: Any = _req(auto_or_ge=1)


@dataclass
class RehearsalConf:
    pool: str = _req(choices=POOL_MODES)


@dataclass
class EvalConf:
    batch_size: int = _req(ge=1)
    on_pool: bool = _req()


@dataclass
class MixcdConf:
    """Every stage's configuration (`mixcd config STAGE` prints it)."""

    stage: str = _req(choices=STAGES)
    seed: int = _req()
    device: str = _req(device=True)
    resume: Any = _req(choices=RESUME_MODES)
    threads: Optional[int] = _req(ge=1)  # noqa: UP045
    experiment_name: str = _req()
    head: str = _req(choices=HEAD_MODES)
    image_size: Optional[int] = _req(ge=1)  # noqa: UP045
    paths: PathsConf = field(default_factory=PathsConf)
    model: Any = _req()  # checked by the schema of its backbone (MODEL_SCHEMAS)
    sampler: Any = _req()  # checked by the schema of the sampler (SAMPLER_SCHEMAS)
    trainer: TrainerConf = field(default_factory=TrainerConf)
    pretrain: PretrainConf = field(default_factory=PretrainConf)
    prior_model: PriorModelConf = field(default_factory=PriorModelConf)
    snapshot: SnapshotConf = field(default_factory=SnapshotConf)
    eval: EvalConf = field(default_factory=EvalConf)
    prior: TaskConf = field(default_factory=TaskConf)
    finetune: TaskConf = field(default_factory=TaskConf)
    rehearsal: RehearsalConf = field(default_factory=RehearsalConf)
    # A sequence: tasks in order after the prior one, each entry filled in from `finetune` (null: `finetune` alone)
    stages: Optional[list[Any]] = _opt(None)  # noqa: UP045
    logger: Optional[dict[str, Any]] = _opt(None)  # noqa: UP045  (tracking.LOGGER_SCHEMAS)
    # a metrics.json number `mixcd train` returns, for sweepers (hparams_search=mixcd_optuna)
    optimized_metric: Optional[str] = _opt(None, choices=(None, *OPTIMIZABLE))  # noqa: UP045


@dataclass
class MixcdEvalConf(MixcdConf):
    run_dir: Optional[str] = _opt(None)  # noqa: UP045


# ----------------------------------------------------------------------------------- models


@dataclass
class CnnModelConf:
    backbone: str = _req()
    width: int = _req(ge=1)
    norm: str = _req(choices=NORMS)


@dataclass
class TimmModelConf:
    backbone: str = _req()
    name: str = _req()
    pretrained: bool = _req()
    weights: Optional[str] = _req()  # noqa: UP045
    drop_rate: float = _req(ge=0, lt=1)
    bn: str = _req(choices=BN_MODES)


POOLINGS = ("first", "mean", "pooler")  # text models: models.TextBackbone


@dataclass
class HfModelConf:
    backbone: str = _req()
    name: Optional[str] = _req()  # noqa: UP045
    config: Optional[dict[str, Any]] = _req()  # noqa: UP045
    tokenizer: Optional[str] = _req()  # noqa: UP045
    pooling: str = _req(choices=POOLINGS)
    max_length: int = _req(ge=2)
    lowercase: bool = _req()


MODEL_SCHEMAS = {"cnn": CnnModelConf, "timm": TimmModelConf, "hf": HfModelConf}


# ----------------------------------------------------------------------------------- samplers
# The one source of each sampler's defaults: conf/sampler/<name>.yaml extends these, and
# create_sampler fills what a caller leaves out from them.


@dataclass
class SamplerConf:
    name: str = _req()
    mix_ratio: float = _opt(0.25, ge=0)


@dataclass
class NoneSamplerConf(SamplerConf):
    mix_ratio: float = _opt(0.0, ge=0)


@dataclass
class OverSamplerConf(SamplerConf):
    over: str = _opt("pool", choices=OVER)


@dataclass
class TemperedSamplerConf(OverSamplerConf):
    temperature: float = _opt(1.0, gt=0)


@dataclass
class PartitionedSamplerConf(SamplerConf):
    """How a sampler splits its rows into bins (or arms): mixcd_cli.samplers.mixcd.partition_rows."""

    partition: str = _opt("loss", choices=PARTITIONS)
    num_bins: int = _opt(10, ge=1)
    aux_column: Optional[str] = _opt(None)  # noqa: UP045
    kmeans_seed: int = _opt(0, ge=0)


@dataclass
class BinRateSamplerConf(PartitionedSamplerConf):
    """mix-cd's machinery: bins of the eligible set, decayed per-bin counts, a Beta prior, a uniform floor."""

    tau: float = _opt(0.0, ge=0, le=1)
    decay: float = _opt(0.99, gt=0, le=1)
    prior_a: float = _opt(1.0, gt=0)
    prior_b: float = _opt(1.0, gt=0)
    epsilon: float = _opt(0.05, ge=0, le=1)


@dataclass
class MixcdSamplerConf(BinRateSamplerConf):
    estimate: str = _opt("mean", choices=ESTIMATES)
    memory: str = _opt("none", choices=MEMORIES)
    memory_size: int = _opt(64, ge=1)
    memory_share: float = _opt(0.25, ge=0, le=1)
    memory_ttl: int = _opt(100, ge=1)
    adaptive_bins: bool = _opt(False)
    split_every: int = _opt(50, ge=1)
    split_ratio: float = _opt(1.5, gt=1)
    max_bins: int = _opt(0, ge=0)


@dataclass
class MixcdPlusSamplerConf(MixcdSamplerConf):
    """mix-cd with the one variant the ablation kept (README "The mix-cd ablation"): the recent-damage memory."""

    memory: str = _opt("recent", choices=MEMORIES)


@dataclass
class AmrSamplerConf(PartitionedSamplerConf):
    partition: str = _opt("kmeans", choices=PARTITIONS)  # AMR's arms: clusters of θ0's features
    temperature: float = _opt(1.0, gt=0)
    decay: float = _opt(0.99, gt=0, le=1)
    over: str = _opt("pool", choices=OVER)


@dataclass
class OracleSamplerConf(SamplerConf):
    refresh_every: int = _opt(50, ge=1)
    subset: int = _opt(0, ge=0)
    tau: float = _opt(0.0, ge=0, le=1)


@dataclass
class MirSamplerConf(OverSamplerConf):
    candidates: int = _opt(0, ge=0)


@dataclass
class TensorboardLoggerConf:
    dir: str = _req()
    histograms: bool = _req()


@dataclass
class MlflowLoggerConf:
    tracking_uri: str = _req()
    artifact_dir: str = _req()
    experiment: Optional[str] = _req()  # noqa: UP045


# conf/logger/*.yaml, one node each under `logger` (tracking.LOGGERS builds them)
LOGGER_SCHEMAS: dict[str, type] = {"tensorboard": TensorboardLoggerConf, "mlflow": MlflowLoggerConf}


SAMPLER_SCHEMAS: dict[str, type] = {
    "none": NoneSamplerConf, "random": OverSamplerConf, "class_balanced": OverSamplerConf,
    "loss_high": TemperedSamplerConf, "loss_low": TemperedSamplerConf, "mixcd": MixcdSamplerConf,
    "oracle_cd": OracleSamplerConf, "mir": MirSamplerConf, "loss_ema": BinRateSamplerConf, "amr": AmrSamplerConf,
    "mixcd_plus": MixcdPlusSamplerConf,
}


def sampler_defaults(name: str) -> dict[str, Any]:
    """A sampler's options with their defaults (name and mix_ratio excluded)."""
    schema = SAMPLER_SCHEMAS[name]
    return {f.name: f.default for f in fields(schema) if f.name not in ("name", "mix_ratio")}


# ----------------------------------------------------------------------------------- registration


def register() -> None:
    """Put the schemas in Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="mixcd_schema", node=MixcdConf)
    cs.store(name="mixcd_eval_schema", node=MixcdEvalConf)
    for name, schema in SAMPLER_SCHEMAS.items():
        cs.store(group="sampler", name=f"{name}_schema", node=schema)


# ----------------------------------------------------------------------------------- checks

DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


def _describe(value: Any) -> str:
    if isinstance(value, ListConfig | DictConfig):
        value = OmegaConf.to_container(value)
    return repr(value)


def _check_value(key: str, value: Any, rules: dict[str, Any]) -> None:
    if "choices" in rules and value not in rules["choices"]:
        shown = ["null" if c is None else str(c).lower() if isinstance(c, bool) else str(c) for c in rules["choices"]]
        raise unknown_choice(f"value for {key}", str(value), shown)
    if rules.get("device") and not DEVICE.match(str(value)):
        raise MixcdError(f"{key} must be auto, cpu, cuda or cuda:N, got {value!r}")
    if "auto_or_ge" in rules:
        if value == "auto":
            return
        if not isinstance(value, int) or isinstance(value, bool) or value < rules["auto_or_ge"]:
            raise MixcdError(f"{key} must be auto or an integer ≥ {rules['auto_or_ge']}, got {value!r}")
        return
    if value is None:
        return
    if rules.get("nonempty") and len(value) == 0:
        raise MixcdError(f"{key} must not be empty; leave it null for all classes")
    if isinstance(value, float) and not math.isfinite(value):
        raise MixcdError(f"{key} must be a finite number, got {value}")
    for name, ok, word in (("ge", lambda v, b: v >= b, "≥"), ("gt", lambda v, b: v > b, ">"),
                           ("le", lambda v, b: v <= b, "≤"), ("lt", lambda v, b: v < b, "<")):
        if name in rules and isinstance(value, int | float) and not ok(value, rules[name]):
            raise MixcdError(f"{key} must be {word} {rules[name]}, got {value}")


def check_label_map(value: Any, key: str) -> None:
    """A task's label_map: null, or a mapping from integer labels to integer labels."""
    if value is None:
        return
    pairs = value.items() if isinstance(value, dict | DictConfig) else None
    if pairs is None or not all(isinstance(x, int) and not isinstance(x, bool) for kv in pairs for x in kv):
        raise MixcdError(f"{key} must be a mapping of integer labels, e.g. {{0: 1}}, got {_describe(value)}")


def check_ranges(schema: type, node: Any, prefix: str = "") -> None:
    """Every field of ``node`` against the range rules of its dataclass (recursively)."""
    for f in fields(schema):
        key = f"{prefix}{f.name}"
        if f.name not in node:
            continue
        value = node[f.name]
        # nested nodes are the fields made by a dataclass factory (annotations are strings here)
        if f.default_factory is not NO_FACTORY and is_dataclass(f.default_factory):
            check_ranges(f.default_factory, value, key + ".")
        else:
            _check_value(key, value, dict(f.metadata))


def typed(schema: type, node: Any, prefix: str) -> DictConfig:
    """``node`` merged into ``schema`` (types checked, unknown keys refused), as one clear error."""
    from omegaconf.errors import ConfigKeyError, ValidationError

    try:
        return OmegaConf.merge(OmegaConf.structured(schema), node)
    except ConfigKeyError as exc:
        raise MixcdError(f"unknown config key '{prefix}{exc.key}' for this {prefix.rstrip('.')} "
                         f"(valid: {', '.join(f.name for f in fields(schema))})") from exc
    except ValidationError as exc:
        raise type_error(exc, prefix) from exc


def type_error(exc: Exception, prefix: str = "") -> MixcdError:
    """An OmegaConf validation error as 'key must be ..., got ...'."""
    key = f"{prefix}{getattr(exc, 'full_key', '') or getattr(exc, 'key', '')}"
    text = str(exc).splitlines()[0]
    value = getattr(exc, "value", None)
    shown = "null" if value is None else _describe(value)
    kinds = (("to Integer", "an integer"), ("to Float", "a number"), ("to Boolean", "true or false"),
             ("not a valid bool", "true or false"),
             ("is not a ListConfig", "a list, e.g. [0,1,2] (quote it in a shell: 'KEY=[0,1,2]')"),
             ("to Dict", "a mapping, e.g. {0: 1}"), ("is not Optional", "set (it cannot be null)"))
    for needle, kind in kinds:
        if needle in text:
            return MixcdError(f"{key} must be {kind.replace('KEY', key)}, got {shown}")
    return MixcdError(f"invalid value for {key}: {text}")


def cross_field_rules(cfg: DictConfig) -> None:
    """Rules that tie fields together."""
    t, s = cfg.trainer, cfg.sampler
    if s.name == "none" and t.mix_ratio > 0:
        raise MixcdError(f"sampler=none mixes nothing, but trainer.mix_ratio={t.mix_ratio}; drop the ratio or "
                         "pick a sampler")
    if s.name != "none" and round(t.mix_ratio * t.batch_size) < 1:
        raise MixcdError(f"trainer.mix_ratio={t.mix_ratio} with batch_size={t.batch_size} mixes in no sample; "
                         "raise the ratio")
    sampler_rules(cfg)
    if s.name in ("mixcd", "mixcd_plus", "loss_ema", "amr") and s.partition.startswith("aux") and not s.aux_column:
        raise MixcdError(f"sampler.partition={s.partition} needs sampler.aux_column (a per-sample column of the "
                         "pool's dataset)")
    if s.name == "mir" and s.candidates and s.candidates < round(t.mix_ratio * t.batch_size):
        raise MixcdError(f"sampler.candidates={s.candidates} must be ≥ the rehearsal batch "
                         f"({round(t.mix_ratio * t.batch_size)})")
    if t.warmup_steps > t.steps:
        raise MixcdError(f"trainer.warmup_steps={t.warmup_steps} exceeds trainer.steps={t.steps}")
    if cfg.stage == "eval" and not cfg.get("run_dir"):
        raise MixcdError("mixcd eval needs run_dir=PATH (a folder written by `mixcd train`)")
    stage_rules(cfg)
    if cfg.trainer.devices > 1 and str(cfg.device).startswith("cuda:"):
        raise MixcdError(f"trainer.devices={cfg.trainer.devices} uses GPUs 0..N-1; give device=auto or cuda, "
                         f"not {cfg.device}")


def sampler_rules(cfg: DictConfig) -> None:
    """mix-cd's variants: the settings they need, refused before any work."""
    s = cfg.sampler
    if s.name not in ("mixcd", "mixcd_plus"):
        return
    if s.adaptive_bins and s.partition != "loss":
        raise MixcdError(f"sampler.adaptive_bins=true splits loss bins (their neighbours are the bins of adjacent "
                         f"loss); it needs sampler.partition=loss, not {s.partition}")
    if s.estimate == "thompson" and cfg.trainer.devices > 1:
        raise MixcdError("sampler.estimate=thompson draws each rank's rates from its own generator, so ranks would "
                         "sample from different distributions; use trainer.devices=1 or estimate=mean")


def stage_rules(cfg: DictConfig) -> None:
    """A sequence's stage list: each entry a task that types as one, its trainer overrides in range."""
    from .data import check_task_transform, stage_specs

    stages = OmegaConf.to_container(cfg.stages) if cfg.stages is not None else None
    specs = stage_specs(OmegaConf.to_container(cfg.finetune), stages)
    for i, (spec, trainer) in enumerate(specs):
        where = f"stages[{i}]." if stages is not None else "finetune."
        check_ranges(TaskConf, typed(TaskConf, spec, where), where)
        check_label_map(spec.get("label_map"), f"{where}label_map")
        check_task_transform(spec.get("transform"))
        for key, value in trainer.items():
            rules = {f.name: dict(f.metadata) for f in fields(TrainerConf)}[key]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise MixcdError(f"{where}trainer.{key} must be a number, got {value!r}")
            _check_value(f"{where}trainer.{key}", value, rules)
        ratio = trainer.get("mix_ratio", cfg.trainer.mix_ratio)
        if cfg.sampler.name != "none" and round(ratio * cfg.trainer.batch_size) < 1:
            raise MixcdError(f"{where}trainer.mix_ratio={ratio} with batch_size={cfg.trainer.batch_size} mixes in "
                             "no sample; raise the ratio")
        if cfg.sampler.name == "none" and trainer.get("mix_ratio"):
            raise MixcdError(f"sampler=none mixes nothing, but {where}trainer.mix_ratio={ratio}")
    if len(specs) > 1 and cfg.trainer.devices > 1:
        raise MixcdError(f"a sequence of {len(specs)} stages runs in one process; trainer.devices="
                         f"{cfg.trainer.devices} is for a single fine-tuning (drop it)")
    if cfg.sampler.get("aux_column") == "source" and len(specs) < 2:
        raise MixcdError("sampler.aux_column=source partitions the pool by the task each row came from, and a "
                         "one-stage run's pool has a single source; use it with a sequence (an experiment with "
                         "stages, e.g. experiment=fmnist_split)")


def validate(cfg: DictConfig) -> None:
    """Types, ranges and cross-field rules of a composed configuration; one clear message each."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    except OmegaConfBaseException as exc:
        raise MixcdError(f"invalid configuration: {str(exc).splitlines()[0]}") from exc
    schema = MixcdEvalConf if resolved.get("stage") == "eval" else MixcdConf
    resolved = typed(schema, resolved, "")
    model = resolved.model
    backbone = model.get("backbone")
    if backbone not in MODEL_SCHEMAS:
        raise unknown_choice("model backbone", str(backbone), MODEL_SCHEMAS)
    model = typed(MODEL_SCHEMAS[backbone], model, "model.")
    sampler = resolved.sampler
    if sampler.get("name") not in SAMPLER_SCHEMAS:
        raise unknown_choice("sampler", str(sampler.get("name")), SAMPLER_SCHEMAS)
    sampler = typed(SAMPLER_SCHEMAS[sampler.name], sampler, "sampler.")
    check_ranges(schema, resolved)
    check_label_map(resolved.prior.label_map, "prior.label_map")
    check_ranges(MODEL_SCHEMAS[backbone], model, "model.")
    check_ranges(SAMPLER_SCHEMAS[sampler.name], sampler, "sampler.")
    resolved.sampler = sampler
    for name, node in (resolved.get("logger") or {}).items():
        if name not in LOGGER_SCHEMAS:
            raise unknown_choice("logger", str(name), LOGGER_SCHEMAS)
        typed(LOGGER_SCHEMAS[name], node, f"logger.{name}.")
    cross_field_rules(resolved)
