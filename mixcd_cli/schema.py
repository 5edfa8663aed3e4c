"""The structured configuration: types, ranges and cross-field rules of every stage, in one place.

The dataclasses are registered in Hydra's ConfigStore and named first in every primary config's
defaults list (``mixcd_schema``, ``mixcd_eval_schema``), so a value of the wrong type fails while
the configuration is composed, before any work. Values come from the YAML files in conf/ (fields
here are MISSING: one source of defaults), except the samplers' options: each sampler declares them
beside its class (mixcd_cli/samplers, ``@register_sampler``), and `register` stores every declared
sampler in the ConfigStore as group ``sampler``'s option of its name — no YAML file. Ranges are field
metadata (mixcd_cli/options.py) checked by `check_ranges`; rules that tie fields together are in
`cross_field_rules`. `validate` runs both and is called before any work.
"""

from __future__ import annotations

from dataclasses import MISSING as NO_FACTORY
from dataclasses import dataclass, field, fields, is_dataclass, make_dataclass
from functools import cache
from typing import Any, Optional  # noqa: UP035  (OmegaConf reads these annotations at run time)

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from .data import HEAD_MODES, POOL_MODES, stage_specs
from .errors import MixcdError, closest, unknown_choice
from .models import BN_MODES, NORMS, POOLINGS
from .options import check_value, opt
from .results import OPTIMIZABLE
from .runtime import AMP_MODES
from .samplers import SAMPLERS, RunFacts, SamplerSpec, rehearsal_batch, sampler_options
from .sources import check_task_transform
from .training.optim import OPTIMIZERS, SCHEDULES

RESUME_MODES = ("auto", True, False)
STAGES = ("pretrain", "snapshot", "train", "eval")
# Where a sampler's snapshot columns come from (docs/design.md §11): an eval-mode pass, or the training forwards.
SNAPSHOT_SOURCES = ("pass", "training")


# Settings added after runs were already being made, with the value that behaves as runs before them did:
# `mixcd report` reads an older run's missing key as this value, so old and new runs of one setting group, and
# `mixcd eval` evaluates an older run with it.
# (Sampler options need no entry: their declared defaults play that part.) Add a key here when adding one.
INTRODUCED: dict[str, Any] = {"rehearsal.pool": "all", "stages": None, "logger": None, "optimized_metric": None,
                              "prior.transform": None,
                              "finetune.transform": None, "snapshot.source": "pass", "snapshot.subset": None,
                              "prior.probe": None, "prior.probe_seed": 0, "finetune.probe": None,
                              "finetune.probe_seed": 0}

# Keys older runs' configurations carry that now live elsewhere (old key → its home now): dropped from a
# configuration read back from a run folder (`mixcd eval`, resuming), so it reads as it ran; refused in a
# configuration composed now, naming the key's home.
RETIRED: dict[str, str] = {"sampler.mix_ratio": "trainer.mix_ratio"}


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
    transform: Optional[dict[str, Any]] = opt(None)  # noqa: UP045  (sources.TASK_TRANSFORMS: rotate, permute)
    # prior task only: a seeded fraction of its training rows θ0 learns, no pool holds, and retention is read on
    probe: Optional[float] = opt(None, gt=0, lt=1)  # noqa: UP045
    probe_seed: int = opt(0)


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
    source: str = _req(choices=SNAPSHOT_SOURCES)
    subset: Optional[int] = _req(ge=1)  # noqa: UP045


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
    sampler: Any = _req()  # checked by the node its declaration makes (sampler_node)
    trainer: TrainerConf = field(default_factory=TrainerConf)
    pretrain: PretrainConf = field(default_factory=PretrainConf)
    prior_model: PriorModelConf = field(default_factory=PriorModelConf)
    snapshot: SnapshotConf = field(default_factory=SnapshotConf)
    eval: EvalConf = field(default_factory=EvalConf)
    prior: TaskConf = field(default_factory=TaskConf)
    finetune: TaskConf = field(default_factory=TaskConf)
    rehearsal: RehearsalConf = field(default_factory=RehearsalConf)
    # A sequence: tasks in order after the prior one, each entry filled in from `finetune` (null: `finetune` alone)
    stages: Optional[list[Any]] = opt(None)  # noqa: UP045
    logger: Optional[dict[str, Any]] = opt(None)  # noqa: UP045  (tracking.LOGGER_SCHEMAS)
    # a metrics.json number `mixcd train` returns, for sweepers (hparams_search=mixcd_optuna)
    optimized_metric: Optional[str] = opt(None, choices=(None, *OPTIMIZABLE))  # noqa: UP045


@dataclass
class MixcdEvalConf(MixcdConf):
    run_dir: Optional[str] = opt(None)  # noqa: UP045


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


@dataclass
class HuggingFaceModelConf:
    """What every Hugging Face model node has: where the model comes from, its tokenizer and its context."""

    backbone: str = _req()
    name: Optional[str] = _req()  # noqa: UP045
    config: Optional[dict[str, Any]] = _req()  # noqa: UP045
    tokenizer: Optional[str] = _req()  # noqa: UP045
    max_length: int = _req(ge=2)


@dataclass
class HfModelConf(HuggingFaceModelConf):
    pooling: str = _req(choices=POOLINGS)
    lowercase: bool = _req()


@dataclass
class LoraConf:
    rank: int = _req(ge=0)
    alpha: float = _req(gt=0)
    target_modules: Optional[list[str]] = _req(nonempty=True)  # noqa: UP045
    dropout: float = _req(ge=0, lt=1)


@dataclass
class LmModelConf(HuggingFaceModelConf):
    lora: LoraConf = field(default_factory=LoraConf)


MODEL_SCHEMAS = {"cnn": CnnModelConf, "timm": TimmModelConf, "hf": HfModelConf, "lm": LmModelConf}


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


# ----------------------------------------------------------------------------------- samplers
# Each sampler's node is built from its declaration (mixcd_cli/samplers: class, options, help in one place).


@dataclass
class _SamplerName:
    name: str = MISSING


@cache
def sampler_node(spec: SamplerSpec) -> type:
    """The config node of a sampler: ``name`` (set to the sampler's, first) and its declared options, typed."""
    # _SamplerName last among the bases comes first in the MRO's reverse: `name` leads the node's fields.
    return make_dataclass(f"{spec.options.__name__}Node", [("name", str, field(default=spec.name))],
                          bases=(spec.options, _SamplerName))


def sampler_ratio(name: Any, ratio: float) -> float:
    """``${sampler_ratio:${sampler.name},r}``, trainer.mix_ratio's default: r, or 0 for a sampler that draws
    nothing (an unknown name keeps r: `validate` refuses the name itself)."""
    return float(ratio) if str(name) not in SAMPLERS or SAMPLERS.spec(str(name)).draws else 0.0


# ----------------------------------------------------------------------------------- registration

_STORED_SAMPLERS: set[str] = set()


def register() -> None:
    """Put the schemas, and a node per registered sampler (group ``sampler``), in Hydra's ConfigStore, and the
    ``sampler_ratio`` resolver in OmegaConf (idempotent; a sampler registered since is added, one gone is
    dropped)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="mixcd_schema", node=MixcdConf)
    cs.store(name="mixcd_eval_schema", node=MixcdEvalConf)
    for spec in SAMPLERS.specs():
        cs.store(group="sampler", name=spec.name, node=sampler_node(spec))
    for gone in _STORED_SAMPLERS - set(SAMPLERS.names()):
        cs.repo.get("sampler", {}).pop(f"{gone}.yaml", None)
    _STORED_SAMPLERS.clear()
    _STORED_SAMPLERS.update(SAMPLERS.names())
    if not OmegaConf.has_resolver("sampler_ratio"):
        OmegaConf.register_new_resolver("sampler_ratio", sampler_ratio)


# ----------------------------------------------------------------------------------- checks

def _describe(value: Any) -> str:
    if isinstance(value, ListConfig | DictConfig):
        value = OmegaConf.to_container(value)
    return repr(value)


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
            check_value(key, value, dict(f.metadata))


# The nodes that take keys of the user's choosing (a dataset's options, a transform, a text model's config, the
# loggers): there `+key=value` adds one; everywhere else the schema names every key.
OPEN_NODES = ("prior.options", "finetune.options", "prior.transform", "finetune.transform", "model.config", "logger")


def open_node(key: str) -> bool:
    """Whether ``key`` lies under a node that takes new keys (OPEN_NODES)."""
    return any(key == node or key.startswith(node + ".") for node in OPEN_NODES)


def _first_leaf(value: Any) -> str:
    """'.a.b' down to the first leaf of a mapping (what was typed, +foo.bar=x, for the unknown key foo)."""
    path = ""
    while isinstance(value, dict | DictConfig) and len(value):
        key = next(iter(value))
        path, value = f"{path}.{key}", value[key]
    return path


def _keys_under(schema: type, path: str) -> list[str]:
    """The field names of the dataclass at dotted ``path`` below ``schema`` ('' for its own)."""
    for part in [p for p in path.split(".") if p]:
        match = next((f for f in fields(schema) if f.name == part), None)
        if match is None or match.default_factory is NO_FACTORY or not is_dataclass(match.default_factory):
            return []
        schema = match.default_factory
    return [f.name for f in fields(schema)]


def typed(schema: type, node: Any, prefix: str) -> DictConfig:
    """``node`` merged into ``schema`` (types checked, unknown keys refused), as one clear error."""
    from omegaconf.errors import ConfigKeyError, ValidationError

    try:
        return OmegaConf.merge(OmegaConf.structured(schema), node)
    except ConfigKeyError as exc:
        relative = str(getattr(exc, "full_key", None) or exc.key)
        full = prefix + relative
        parent, _, leaf = full.rpartition(".")
        valid = _keys_under(schema, relative.rpartition(".")[0])
        where = f" under '{parent}'" if parent else ""
        shown = full + _first_leaf(OmegaConf.select(node, relative) if isinstance(node, DictConfig) else None)
        raise MixcdError(f"unknown config key '{shown}'{closest(leaf, valid)}; keys{where}: {', '.join(valid)} "
                         f"(mixcd's keys are fixed; + adds keys only under {', '.join(OPEN_NODES)})") from exc
    except ValidationError as exc:
        raise type_error(exc, prefix) from exc


# Lists whose items are not class labels get an example of their own in a type error.
LIST_EXAMPLES = {"stages": "[{classes: [3]}, {classes: [4]}]"}


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
            if key in LIST_EXAMPLES and needle == "is not a ListConfig":
                kind = f"a list, e.g. {LIST_EXAMPLES[key]} (quote it in a shell: 'KEY={LIST_EXAMPLES[key]}')"
            return MixcdError(f"{key} must be {kind.replace('KEY', key)}, got {shown}")
    return MixcdError(f"invalid value for {key}: {text}")


def cross_field_rules(cfg: DictConfig) -> None:
    """Rules that tie fields together."""
    t = cfg.trainer
    rehearsal_batch(str(cfg.sampler.name), t.mix_ratio, t.batch_size)
    if t.warmup_steps > t.steps:
        raise MixcdError(f"trainer.warmup_steps={t.warmup_steps} exceeds trainer.steps={t.steps}")
    if cfg.stage == "eval" and not cfg.get("run_dir"):
        raise MixcdError("mixcd eval needs run_dir=PATH (a folder written by `mixcd train`)")
    batches = stage_rules(cfg)
    sampler_rules(cfg, max(batches))
    snapshot_rules(cfg)
    if cfg.trainer.devices > 1 and str(cfg.device).startswith("cuda:"):
        raise MixcdError(f"trainer.devices={cfg.trainer.devices} uses GPUs 0..N-1; give device=auto or cuda, "
                         f"not {cfg.device}")


def snapshot_rules(cfg: DictConfig) -> None:
    """snapshot.source and snapshot.subset against the rest of the run (their ranges: `check_ranges`; what needs
    the data or θ0: recipes/preflight.py)."""
    snap = cfg.snapshot
    source, subset = snap.get("source", "pass"), snap.get("subset")
    options = OmegaConf.to_container(cfg.sampler) if isinstance(cfg.sampler, DictConfig) else dict(cfg.sampler)
    if not SAMPLERS.spec(str(options["name"])).needs_snapshot(sampler_options(options)):
        subset = None  # a sampler that reads no snapshot draws over the whole pool: subset does not apply to it
    if source == "training" and subset is not None:
        raise MixcdError(f"snapshot.subset={subset} scores a seeded subset of the pool in an eval-mode pass, and "
                         "snapshot.source=training makes no pass (it reads the training forwards' record of every "
                         "row); choose one: drop snapshot.subset or use snapshot.source=pass")
    if source == "training" and cfg.trainer.devices > 1:
        raise MixcdError(f"snapshot.source=training records the training forwards in one process, and trainer."
                         f"devices={cfg.trainer.devices} trains in several; use trainer.devices=1 or "
                         "snapshot.source=pass")
    if subset is not None and cfg.eval.on_pool:
        raise MixcdError(f"eval.on_pool=true counts the categories on every pool row against θ0's snapshot, and "
                         f"snapshot.subset={subset} scores only some of them; drop one of the two")


def sampler_rules(cfg: DictConfig, batch: int) -> None:
    """The sampler's own rules against the run (declared with its options: ``check``), before any work;
    ``batch``: the largest rehearsal batch of any stage."""
    options = OmegaConf.to_container(cfg.sampler) if isinstance(cfg.sampler, DictConfig) else dict(cfg.sampler)
    spec = SAMPLERS.spec(str(options["name"]))
    spec.check(sampler_options(options), RunFacts(rehearsal_batch=batch, devices=int(cfg.trainer.devices)))


def stage_rules(cfg: DictConfig) -> list[int]:
    """A sequence's stage list: each entry a task that types as one, its trainer overrides in range.

    Returns each stage's rehearsal batch (its mix_ratio checked by `samplers.rehearsal_batch`).
    """
    stages = OmegaConf.to_container(cfg.stages) if cfg.stages is not None else None
    specs = stage_specs(OmegaConf.to_container(cfg.finetune), stages)
    batches = []
    for i, (spec, trainer) in enumerate(specs):
        where = f"stages[{i}]." if stages is not None else "finetune."
        check_ranges(TaskConf, typed(TaskConf, spec, where), where)
        check_label_map(spec.get("label_map"), f"{where}label_map")
        check_task_transform(spec.get("transform"))
        for key, value in trainer.items():
            rules = {f.name: dict(f.metadata) for f in fields(TrainerConf)}[key]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise MixcdError(f"{where}trainer.{key} must be a number, got {value!r}")
            check_value(f"{where}trainer.{key}", value, rules)
        key = f"{where}trainer.mix_ratio" if "mix_ratio" in trainer else "trainer.mix_ratio"
        batches.append(rehearsal_batch(str(cfg.sampler.name), trainer.get("mix_ratio", cfg.trainer.mix_ratio),
                                       cfg.trainer.batch_size, key))
    if len(specs) > 1 and cfg.trainer.devices > 1:
        raise MixcdError(f"a sequence of {len(specs)} stages runs in one process; trainer.devices="
                         f"{cfg.trainer.devices} is for a single fine-tuning (drop it)")
    if cfg.sampler.get("aux_column") == "source" and len(specs) < 2:
        raise MixcdError("sampler.aux_column=source partitions the pool by the task each row came from, and a "
                         "one-stage run's pool has a single source; use it with a sequence (an experiment with "
                         "stages, e.g. experiment=fmnist_split)")
    return batches


def drop_retired(node: dict[str, Any]) -> dict[str, Any]:
    """A plain configuration read back from a run folder without its `RETIRED` keys (in place; returned)."""
    for key in RETIRED:
        _retired_in(node, key, drop=True)
    return node


def _retired_in(node: dict[str, Any], key: str, drop: bool = False) -> bool:
    *parents, leaf = key.split(".")
    at: Any = node
    for part in parents:
        at = at.get(part) if isinstance(at, dict) else None
    if not isinstance(at, dict) or leaf not in at:
        return False
    if drop:
        at.pop(leaf)
    return True


def validate(cfg: DictConfig) -> None:
    """Types, ranges and cross-field rules of a composed configuration; one clear message each."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as exc:
        raise MixcdError(f"invalid configuration: {str(exc).splitlines()[0]}") from exc
    for key, home in RETIRED.items():
        if _retired_in(plain, key):
            raise MixcdError(f"{key} is now {home}: set {home}=... instead")
    resolved = OmegaConf.create(plain)
    schema = MixcdEvalConf if resolved.get("stage") == "eval" else MixcdConf
    resolved = typed(schema, resolved, "")
    model = resolved.model
    backbone = model.get("backbone")
    if backbone not in MODEL_SCHEMAS:
        raise unknown_choice("model backbone", str(backbone), MODEL_SCHEMAS)
    model = typed(MODEL_SCHEMAS[backbone], model, "model.")
    sampler = resolved.sampler
    if sampler.get("name") not in SAMPLERS:
        raise unknown_choice("sampler", str(sampler.get("name")), SAMPLERS.names())
    node = sampler_node(SAMPLERS.spec(str(sampler.name)))
    sampler = typed(node, sampler, "sampler.")
    check_ranges(schema, resolved)
    check_label_map(resolved.prior.label_map, "prior.label_map")
    check_ranges(MODEL_SCHEMAS[backbone], model, "model.")  # the sampler's ranges: sampler_rules (its declaration)
    resolved.sampler = sampler
    for name, settings in (resolved.get("logger") or {}).items():
        if name not in LOGGER_SCHEMAS:
            raise unknown_choice("logger", str(name), LOGGER_SCHEMAS)
        typed(LOGGER_SCHEMAS[name], settings, f"logger.{name}.")
    cross_field_rules(resolved)
