"""Tasks, experiments and batch transforms.

A *task* selects a class subset of one dataset split (`sources`) and maps its labels into the model's label
space (kinds without classes take every row as it is); an *experiment* is the prior task and the fine-tuning
stages, with the head layout and the transform that turns a batch into model inputs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F

from .errors import MixcdError, unknown_choice
from .objectives import DEFAULT_KIND, Batch, Objective, objective_of
from .sources import DATA_DIR_KEY, PAD, Source, load_source

HEAD_MODES = ("shared", "multi")  # one head over the union of labels, or one head per task
MISSING = "???"  # OmegaConf's mandatory value, left as this string by to_container: a key nobody set


# ---------------------------------------------------------------- tasks


@dataclass
class Task:
    """A class subset of one split with its labels mapped into the model's label space."""

    name: str
    source: Source
    index: torch.Tensor  # indices into source, in a fixed order
    targets: torch.Tensor  # mapped labels (or the kind's targets), aligned with index
    head_size: int  # outputs the task's head needs (classes, for classification)
    definition: dict[str, Any]
    # A pool made of several tasks: the head each row is read by (names, and a per-row id into them).
    heads: tuple[str, ...] | None = None
    head_of: torch.Tensor | None = None
    columns: dict[str, torch.Tensor] = field(default_factory=dict)  # per-row columns of the task itself

    def __len__(self) -> int:
        return int(self.index.numel())

    @property
    def objective(self) -> Objective:
        """What loss, "wrong" and correctness mean for this task's kind."""
        return objective_of(self.source)

    def batch(self, rows: torch.Tensor) -> Batch:
        """Inputs and targets of the task's rows (a source whose targets are laid out with its inputs, as a
        generated sequence's token labels are, makes the batch itself)."""
        if getattr(self.source, "laid_out", False):
            return self.source.batch(self.index[rows])
        return Batch(self.inputs(rows), self.targets[rows])

    def inputs(self, rows: torch.Tensor) -> torch.Tensor:
        """Model inputs of the task's rows (not source indices): uint8 images or token ids."""
        return self.source.inputs(self.index[rows])

    def aux_columns(self) -> dict[str, torch.Tensor]:
        """Every per-row integer column: the dataset's aux columns, then the task's own (e.g. ``source``)."""
        return {**{k: v[self.index] for k, v in getattr(self.source, "aux", {}).items()}, **self.columns}

    def aux(self, column: str) -> torch.Tensor:
        columns = self.aux_columns()
        if column not in columns:
            raise unknown_choice(f"aux column of task '{self.name}'", column, columns)
        return columns[column]

    def head_groups(self, rows: torch.Tensor, default: str) -> list[tuple[str, torch.Tensor]]:
        """(head, positions in ``rows``) for each head the rows are read by; one group for a one-head task."""
        if self.head_of is None or self.heads is None:
            return [(default, torch.arange(rows.numel()))]
        ids = self.head_of[rows]
        return [(self.heads[h], torch.nonzero(ids == h).flatten()) for h in ids.unique().tolist()]

    def fingerprint(self) -> str:
        """Hash of the definition plus the actual index order and targets, to verify snapshots."""
        h = hashlib.sha256(json.dumps(self.definition, sort_keys=True, default=str).encode())
        h.update(self.index.numpy().tobytes())
        h.update(self.targets.numpy().tobytes())
        return h.hexdigest()[:16]


def make_task(name: str, dataset: str, root: str, split: str, classes: Sequence[int] | None,
              label_map: dict[int, int] | None, label_mode: str, download: bool = False,
              options: dict[str, Any] | None = None, limit: int | None = None,
              transform: dict[str, Any] | None = None, root_key: str = DATA_DIR_KEY) -> Task:
    """Build a task.

    ``label_mode='original'`` keeps (or ``label_map``s) the dataset's labels, for one shared head
    over the union of tasks; ``'local'`` renumbers the task's classes 0..k-1, for its own head.
    ``root_key``: the key that chose ``root``, for a message about the folder.
    """
    if split not in ("train", "test"):
        raise MixcdError(f"split must be 'train' or 'test', got '{split}'")
    source = load_source(dataset, root, split == "train", download, options, transform, root_key)
    definition = {"name": name, "dataset": dataset, "split": split, "classes": classes, "label_map": label_map,
                  "options": options or {}, "limit": limit}
    if transform:  # only when given, so the tasks of earlier versions keep their fingerprints (and caches)
        definition["transform"] = dict(transform)
    objective = objective_of(source)
    if not objective.has_classes:
        return _kind_task(name, source, objective, definition)
    return _class_task(name, source, definition, label_mode)


def _kind_task(name: str, source: Source, objective: Objective, definition: dict[str, Any]) -> Task:
    """A task of a kind without classes: every row of the split (the first ``limit``), targets as they are."""
    if definition["classes"] is not None or definition["label_map"]:
        raise MixcdError(f"task '{name}': classes and label_map choose and relabel classes, and task kind "
                         f"'{objective.name}' has none; leave them null")
    index = torch.arange(len(source))
    limit = definition["limit"]
    if limit is not None and 0 < limit < index.numel():
        index = index[:limit]
    targets = source.targets[index]
    definition = {**definition, "kind": objective.name}
    return Task(name, source, index, targets, objective.head_size(targets), definition)


def _class_task(name: str, source: Source, definition: dict[str, Any], label_mode: str) -> Task:
    """A classification task: the chosen classes of the split, labels kept, mapped or renumbered."""
    classes, label_map, limit = definition["classes"], definition["label_map"], definition["limit"]
    dataset, split = definition["dataset"], definition["split"]
    targets = source.targets
    present = sorted(set(targets.unique().tolist()))
    chosen = list(present if classes is None else classes)
    if not chosen:
        raise MixcdError(f"task '{name}': the classes list is empty")
    missing = [c for c in chosen if c not in present]
    if missing:
        raise MixcdError(f"task '{name}': classes {missing} do not occur in {dataset}/{split} "
                         f"(labels present: {present[0]}..{present[-1]})")
    if len(set(chosen)) != len(chosen):
        raise MixcdError(f"task '{name}': classes list has duplicates: {chosen}")
    mask = torch.isin(targets, torch.tensor(chosen, dtype=targets.dtype))
    index = torch.nonzero(mask).flatten()
    if limit is not None and 0 < limit < index.numel():
        index = index[:limit]  # the first samples, so the subset is a pure function of the config
    orig = targets[index]
    if label_map:  # a relabelling (e.g. coarse groups of classes) holds in either head mode
        lut = {c: int(label_map.get(c, c)) for c in chosen}
    elif label_mode == "local":
        lut = {c: i for i, c in enumerate(chosen)}
    else:
        lut = {c: c for c in chosen}
    table = torch.full((max(chosen) + 1,), -1, dtype=torch.int64)
    table[torch.tensor(list(lut))] = torch.tensor(list(lut.values()))
    mapped = table[orig]
    definition = {**definition, "classes": chosen, "label_map": lut}
    return Task(name, source, index, mapped, int(max(lut.values())) + 1, definition)


# ---------------------------------------------------------------- transform


@dataclass(frozen=True)
class BatchTransform:
    """uint8 (n, C, H, W) → normalised float, optionally resized; applied on the batch's device."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: int | None = None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().div_(255.0)
        if self.size is not None and x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std

    def describe(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "std": list(self.std), "size": self.size}


@dataclass(frozen=True)
class TokenTransform:
    """Token batches go to the model as they are: the text backbone reads ids, segments and padding itself."""

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens

    def describe(self) -> dict[str, Any]:
        return {"tokens": True}


def is_text(source: Any) -> bool:
    """Whether a source holds text (raw or tokenised) rather than images."""
    return getattr(source, "channels", None) == 0


def make_transform(source: Source, size: int | None = None) -> BatchTransform | TokenTransform:
    if is_text(source):
        return TokenTransform()
    return BatchTransform(tuple(source.mean), tuple(source.std), size)


def _padded(x: torch.Tensor, width: int) -> torch.Tensor:
    return F.pad(x, (0, width - x.shape[-1]), value=PAD) if x.shape[-1] < width else x


def join_batches(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """Model inputs of several batches as one: images as they are; token batches (each padded to its own
    longest row) first padded to the longest of all."""
    if parts[0].ndim == 3 and not parts[0].is_floating_point():
        width = max(p.shape[-1] for p in parts)
        parts = [_padded(p, width) for p in parts]
    return torch.cat(list(parts))


class ConcatSource:
    """Rows of several tasks read as one source (a pool that grows stage by stage), with no copy of the images."""

    def __init__(self, parts: Sequence[Task]) -> None:
        self.parts = list(parts)
        sizes = torch.tensor([len(t) for t in self.parts], dtype=torch.int64)
        self.offsets = torch.zeros(len(self.parts) + 1, dtype=torch.int64)
        self.offsets[1:] = torch.cumsum(sizes, 0)
        self.targets = torch.cat([t.targets for t in self.parts])
        first = self.parts[0].source
        self.channels, self.mean, self.std = first.channels, first.mean, first.std
        self.kind = getattr(first, "kind", DEFAULT_KIND)
        self.aux: dict[str, torch.Tensor] = {}

    def inputs(self, index: torch.Tensor) -> torch.Tensor:
        index = index.cpu()
        part = torch.searchsorted(self.offsets[1:], index, right=True)
        masks = [(p, part == p) for p in part.unique().tolist()]
        pieces = [(mask, self.parts[p].inputs(index[mask] - self.offsets[p])) for p, mask in masks]
        if not pieces:
            return self.parts[0].inputs(index)
        if pieces[0][1].ndim == 3:  # token batches: each part padded to its own longest row
            width = max(imgs.shape[-1] for _, imgs in pieces)
            pieces = [(mask, _padded(imgs, width)) for mask, imgs in pieces]
        first = pieces[0][1]
        out = torch.empty((index.numel(), *first.shape[1:]), dtype=first.dtype, device=first.device)
        for mask, imgs in pieces:
            out[mask.to(imgs.device)] = imgs
        return out

    @property
    def laid_out(self) -> bool:
        """Whether the parts make their batches themselves (generated sequences: labels laid out with inputs)."""
        return bool(getattr(self.parts[0].source, "laid_out", False))

    def batch(self, index: torch.Tensor) -> Batch:
        """Rows of laid-out parts as one batch: inputs padded with PAD, labels with their own padding value."""
        index = index.cpu()
        part = torch.searchsorted(self.offsets[1:], index, right=True)
        pieces = [(part == p, self.parts[p].batch(index[part == p] - self.offsets[p])) for p in part.unique().tolist()]
        if not pieces:
            return self.parts[0].batch(index)
        width = max(b.inputs.shape[-1] for _, b in pieces)
        label_width = max(b.targets.shape[-1] for _, b in pieces)
        first = pieces[0][1]
        fill = int(self.parts[0].source.label_pad)
        inputs = torch.full((index.numel(), *first.inputs.shape[1:-1], width), PAD, dtype=first.inputs.dtype)
        labels = torch.full((index.numel(), label_width), fill, dtype=first.targets.dtype)
        for mask, b in pieces:
            inputs[mask] = _padded(b.inputs, width)
            labels[mask] = F.pad(b.targets, (0, label_width - b.targets.shape[-1]), value=fill)
        return Batch(inputs, labels, tokens=sum(b.tokens or 0 for _, b in pieces))

    def __len__(self) -> int:
        return int(self.offsets[-1])


def concat_tasks(name: str, parts: Sequence[tuple[Task, str, int]], source_column: bool) -> Task:
    """One task over ``parts`` = (task, head, source id), in order; with ``source_column`` every row carries the
    id of the task it came from (column ``source``). A single part without it is that task itself."""
    if len(parts) == 1 and not source_column:
        return parts[0][0]
    tasks = [t for t, _, _ in parts]
    heads = tuple(dict.fromkeys(h for _, h, _ in parts))
    sizes = [len(t) for t in tasks]
    columns = {"source": torch.cat([torch.full((n,), sid, dtype=torch.int64) for n, (_, _, sid) in
                                    zip(sizes, parts, strict=True)])} if source_column else {}
    if len(parts) == 1:  # (e.g. the previous stage's training set, read by that stage's head)
        task = parts[0][0]
        return replace(task, columns={**task.columns, **columns}, heads=heads,
                       head_of=torch.zeros(len(task), dtype=torch.int64))
    source = ConcatSource(tasks)
    shared = set.intersection(*(set(t.aux_columns()) for t in tasks)) - {"source"}
    source.aux = {k: torch.cat([t.aux_columns()[k] for t in tasks]) for k in sorted(shared)}
    head_of = torch.cat([torch.full((n,), heads.index(h), dtype=torch.int64) for n, (_, h, _) in
                         zip(sizes, parts, strict=True)])
    definition = {"name": name, "parts": [{**t.definition, "head": h, "source": sid} for t, h, sid in parts]}
    return Task(name, source, torch.arange(len(source)), source.targets.clone(),
                max(t.head_size for t in tasks), definition, heads if len(heads) > 1 else None,
                head_of if len(heads) > 1 else None, columns)


# What a stage entry may set besides its task: the fine-tuning knobs it overrides for that stage alone.
STAGE_TRAINER_KEYS = ("steps", "lr", "mix_ratio")


@dataclass
class Stage:
    """One fine-tuning stage: its task's train and test splits, the head it trains, its trainer overrides."""

    name: str
    train: Task
    test: Task
    head: str
    trainer: dict[str, Any] = field(default_factory=dict)
    inputs: str = ""  # the input domain (dataset, options, transform): same inputs + same labels = same task


POOL_MODES = ("all", "prior", "previous")


@dataclass
class Experiment:
    """The prior task (pool + test), the fine-tuning stages (train + test each), and how heads are laid out.

    A single fine-tuning is a sequence of one stage; ``ft_train``/``ft_test`` are stage 1's.
    """

    pool: Task
    prior_test: Task
    stages: list[Stage]
    head: str  # 'shared' | 'multi'
    transform: BatchTransform | TokenTransform
    vocab_size: int = 0  # text experiments: the tokenizer's, once encoded (text.encode_experiment)
    lm: Any = None  # generation experiments: the tokenizer's ids the model needs (generation.data.LMTokens)
    # With a probe (`prior.probe`): the rows θ0 learns (pool + probe), and the prior task's own test split, which the
    # probe replaces as the retention set (`prior_test`) and which is kept to be reported beside it.
    theta0_train: Task | None = None
    heldout: Task | None = None

    @property
    def prior_train(self) -> Task:
        """The rows θ0 is pretrained on: the pool, and the probe when there is one."""
        return self.theta0_train if self.theta0_train is not None else self.pool

    @property
    def channels(self) -> int:
        return self.pool.source.channels

    @property
    def text(self) -> bool:
        return is_text(self.pool.source)

    @property
    def objective(self) -> Objective:
        """The task kind's objective, shared by every task of the experiment (build_experiment checks)."""
        return self.pool.objective

    @property
    def ft_train(self) -> Task:
        return self.stages[0].train

    @property
    def ft_test(self) -> Task:
        return self.stages[0].test

    def head_sizes(self) -> dict[str, int]:
        if self.head == "shared":
            return {"shared": max(self.pool.head_size, *(s.train.head_size for s in self.stages))}
        return {"prior": self.pool.head_size, **{s.head: s.train.head_size for s in self.stages}}

    def prior_head(self) -> str:
        return "shared" if self.head == "shared" else "prior"

    def ft_head(self) -> str:
        return self.stages[0].head

    def tasks(self) -> list[Task]:
        """Every split of the experiment (for placing data on a device)."""
        extra = [t for t in (self.theta0_train, self.heldout) if t is not None]
        return [self.pool, self.prior_test, *(t for s in self.stages for t in (s.train, s.test)), *extra]

    def map_tasks(self, fn: Callable[[Task], Task]) -> None:
        """Replace every task of the experiment by ``fn(task)`` (tokenisation swaps sources this way)."""
        self.pool, self.prior_test = fn(self.pool), fn(self.prior_test)
        for stage in self.stages:
            stage.train, stage.test = fn(stage.train), fn(stage.test)
        self.theta0_train = None if self.theta0_train is None else fn(self.theta0_train)
        self.heldout = None if self.heldout is None else fn(self.heldout)

    def pool_at(self, k: int, mode: str) -> Task:
        """Stage k's rehearsal pool (k ≥ 1): ``all`` the prior pool and stages 1..k−1's training sets, ``prior``
        the prior pool, ``previous`` stage k−1's training set (the prior pool at stage 1). In a sequence of two
        or more stages every row carries ``source``: 0 for the prior task, j for stage j."""
        if mode not in POOL_MODES:
            raise unknown_choice("rehearsal.pool", mode, POOL_MODES)
        parts = [(self.pool, self.prior_head(), 0)]
        earlier = [(s.train, s.head, j) for j, s in enumerate(self.stages[:k - 1], 1)]
        if mode == "all":
            parts += earlier
        elif mode == "previous" and earlier:
            parts = earlier[-1:]
        return concat_tasks(f"pool{k}", parts, source_column=len(self.stages) > 1)

    def tests_before(self, k: int) -> Task:
        """The test sets of the tasks seen before stage k (the prior task and stages 1..k−1), as one task."""
        parts = [(self.prior_test, self.prior_head(), 0)] + \
            [(s.test, s.head, j) for j, s in enumerate(self.stages[:k - 1], 1)]
        return concat_tasks(f"tests-before-{k}", parts, source_column=False)


def _stage_head(k: int, head: str) -> str:
    # stage 1 keeps the head name of the single-stage layout, so one-stage runs are unchanged
    return "shared" if head == "shared" else ("finetune" if k == 1 else f"stage{k}")


def stage_specs(finetune: dict[str, Any], stages: list[Any] | None) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(task spec, trainer overrides) per stage: ``finetune`` alone, or each ``stages`` entry filled in from it."""
    if stages is None:
        return [(dict(finetune), {})]
    if not stages:
        raise MixcdError("stages is empty: list at least one task, or drop stages for a single fine-tuning")
    out = []
    for i, entry in enumerate(stages, 1):
        if not isinstance(entry, dict):
            raise MixcdError(f"stages[{i - 1}] must be a mapping of task keys (name, classes, transform, ...), "
                             f"got {entry!r}")
        entry = dict(entry)
        trainer = dict(entry.pop("trainer", None) or {})
        unknown = [k for k in trainer if k not in STAGE_TRAINER_KEYS]
        if unknown:
            raise unknown_choice(f"trainer key of stages[{i - 1}]", str(unknown[0]), STAGE_TRAINER_KEYS)
        bad = [k for k in entry if k not in finetune]
        if bad:
            raise unknown_choice(f"key of stages[{i - 1}]", str(bad[0]), [*finetune, "trainer"])
        spec = {**finetune, **entry}
        if "name" not in entry:
            spec["name"] = f"stage{i}"
        out.append((spec, trainer))
    return out


def unset_keys(spec: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted names of a task spec's values left at ``???`` (a task option that must be set, such as an
    ImageFolder's root), so the refusal names the key rather than a path like ``???/train``."""
    out = []
    for name, value in spec.items():
        if isinstance(value, dict):
            out += unset_keys(value, f"{prefix}{name}.")
        elif isinstance(value, str) and value == MISSING:
            out.append(f"{prefix}{name}")
    return out


def _inputs(spec: dict[str, Any]) -> str:
    return json.dumps({k: spec.get(k) for k in ("dataset", "options", "transform")}, sort_keys=True, default=str)


def _spec_task(spec: dict[str, Any], split: str, role: str, key_of: Callable[[str], str], data_root: str,
               mode: str) -> Task:
    """One split of a task spec; a value left at ``???`` is refused by the key that holds it (``key_of``)."""
    unset = unset_keys(spec)
    if unset:
        name = key_of(unset[0])
        example = " (a folder such as /data/imagenet)" if unset[0] == "root" else ""
        who = "fine-tune" if role == "finetune" else role
        raise MixcdError(f"{name} is not set: the {who} task '{spec.get('name', role)}' (dataset "
                         f"{spec.get('dataset')}) needs it; add {name}=...{example}")
    root_key = key_of("root") if spec.get("root") else DATA_DIR_KEY
    return make_task(f"{spec.get('name', role)}/{split}", spec["dataset"], spec.get("root") or data_root,
                     split, spec.get("classes"), spec.get("label_map"), mode,
                     bool(spec.get("download", False)), spec.get("options"), spec.get(f"limit_{split}"),
                     spec.get("transform"), root_key)


def _stage_key(stages: list[Any] | None, k: int) -> Callable[[str], str]:
    """Stage k's config key for a task key: a stage list entry overrides finetune's keys, so name the one that
    holds the value."""
    entry = stages[k - 1] if stages is not None and isinstance(stages[k - 1], dict) else {}
    return lambda name: f"stages[{k - 1}].{name}" if name.split(".")[0] in entry else f"finetune.{name}"


def _check_stages_agree(pool: Task, built: list[Stage]) -> None:
    """Every stage of the prior task's kind, medium (text or images) and channel count; no task empty."""
    for s in built:
        if pool.objective.name != s.train.objective.name:
            raise MixcdError(f"the prior task is of kind '{pool.objective.name}' and stage '{s.name}' of kind "
                             f"'{s.train.objective.name}': every task of an experiment is of one kind")
        if is_text(pool.source) != is_text(s.train.source):
            raise MixcdError(f"the prior task and stage '{s.name}' must both be text or both be images")
        if pool.source.channels != s.train.source.channels:
            raise MixcdError(f"prior and stage '{s.name}' datasets have different channel counts "
                             f"({pool.source.channels} vs {s.train.source.channels})")
    if len(pool) == 0 or any(len(s.train) == 0 for s in built):
        raise MixcdError("a task selected no samples: check the classes lists")


def _refuse_reused_rows(pool: Task, prior_inputs: str, built: list[Stage]) -> None:
    """Under a shared head, a stage that trains on rows an earlier task already holds, on the same inputs, is not
    a new task (a single stage too). Rows, not label values: a label_map that gives other classes an earlier
    task's labels (new meanings, as text_topics does) trains on rows of its own."""
    seen = [("the prior task", prior_inputs, pool)]
    for s in built:
        for name, inputs, earlier in seen:
            shared = torch.isin(s.train.index, earlier.index) if inputs == s.inputs else None
            if shared is not None and bool(shared.any()):
                labels = sorted(s.train.targets[shared].unique().tolist())
                raise MixcdError(f"stage '{s.name}' reuses labels {labels} of {name} on the same inputs under "
                                 "a shared head: give it new classes (class-incremental), a transform such as "
                                 "{rotate: 45} (domain-incremental), or head=multi")
        seen.append((f"stage '{s.name}'", s.inputs, s.train))


def build_experiment(prior: dict[str, Any], finetune: dict[str, Any], head: str, data_root: str,
                     image_size: int | None = None, stages: list[Any] | None = None) -> Experiment:
    """Build the prior task and every stage from plain dicts (dataset, classes, label_map, download, options,
    transform, limit_*); ``stages`` entries are filled in from ``finetune`` (None: ``finetune`` is the one stage)."""
    if head not in HEAD_MODES:
        raise unknown_choice("head mode", head, HEAD_MODES)
    mode = "original" if head == "shared" else "local"

    def prior_key(name: str) -> str:
        return f"prior.{name}"

    pool = _spec_task(prior, "train", "prior", prior_key, data_root, mode)
    prior_test = _spec_task(prior, "test", "prior", prior_key, data_root, mode)
    theta0_train = heldout = None
    if prior.get("probe") is not None:
        theta0_train, heldout = pool, prior_test
        pool, prior_test = split_probe(pool, float(prior["probe"]), int(prior.get("probe_seed") or 0))
    built: list[Stage] = []
    for k, (spec, trainer) in enumerate(stage_specs(finetune, stages), 1):
        key_of = _stage_key(stages, k)
        if spec.get("probe") is not None:
            raise MixcdError(f"{key_of('probe')}: a probe is a part of θ0's training rows kept out of the pool; set "
                             "prior.probe instead (a fine-tuning stage's rows are learnt by the run itself)")
        built.append(Stage(str(spec.get("name") or f"stage{k}"),
                           _spec_task(spec, "train", "finetune", key_of, data_root, mode),
                           _spec_task(spec, "test", "finetune", key_of, data_root, mode), _stage_head(k, head),
                           trainer, _inputs(spec)))
    _check_stages_agree(pool, built)
    if head == "shared" and pool.objective.has_classes:
        _refuse_reused_rows(pool, _inputs(prior), built)
    return Experiment(pool, prior_test, built, head, make_transform(pool.source, image_size),
                      theta0_train=theta0_train, heldout=heldout)


def split_probe(task: Task, fraction: float, seed: int) -> tuple[Task, Task]:
    """(pool, probe): a seeded ``fraction`` of the prior task's training rows, which θ0 learns but no pool holds,
    so rehearsal can protect them only through the rows it does replay; the pool keeps the rest in their order."""
    if not 0.0 < fraction < 1.0:
        raise MixcdError(f"prior.probe must be a fraction in (0, 1) of the prior training rows, got {fraction}")
    n = len(task)
    m = round(fraction * n)
    if not 0 < m < n:
        raise MixcdError(f"prior.probe={fraction} of {n} rows leaves {'no probe' if m == 0 else 'no pool'}: choose a "
                         "fraction that keeps rows on both sides")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    in_probe = torch.zeros(n, dtype=torch.bool)
    in_probe[order[:m]] = True

    def part(keep: torch.Tensor, role: str) -> Task:
        return replace(task, name=f"{task.name}/{role}", index=task.index[keep], targets=task.targets[keep],
                       definition={**task.definition, "probe": {"fraction": fraction, "seed": seed, "part": role}},
                       columns={k: v[keep] for k, v in task.columns.items()})

    return part(~in_probe, "pool"), part(in_probe, "probe")
