"""Datasets, tasks and batch transforms.

A *dataset* is a split of raw samples (model inputs — uint8 images or token ids — and one target per
sample, plus optional per-sample integer ``aux`` columns). Its source names its task kind (``kind``,
classification when absent; docs/design.md §7), whose objective says what the targets mean. A *task*
selects a class subset of one split and maps its labels into the model's label space (kinds without
classes take every row as it is). Batches are fetched by index, so the rehearsal sampler's indices go
straight to the data with no DataLoader in between.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from .errors import MixcdError, unknown_choice
from .objectives import DEFAULT_KIND, Batch, Objective, objective_of
from .registry import Registry

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

DATASETS: Registry = Registry("dataset")
HEAD_MODES = ("shared", "multi")  # one head over the union of labels, or one head per task
PAD = -1  # the padding value of token batches: never a token id, so the mask is `ids != PAD`


class Source(Protocol):
    """Anything that returns input batches by sample index: uint8 images (n, C, H, W), or token ids.

    ``targets`` holds one entry per sample in whatever shape the source's task kind uses (a class id for
    classification); a source of another kind says so with a ``kind`` attribute (objectives.OBJECTIVES).
    """

    targets: torch.Tensor
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def inputs(self, index: torch.Tensor) -> torch.Tensor: ...

    def __len__(self) -> int: ...


@dataclass
class ArraySource:
    """An in-memory split: all images in one uint8 tensor (on the host, or moved to the GPU whole)."""

    data: torch.Tensor  # (N, C, H, W) uint8
    targets: torch.Tensor  # (N, ...) one target per sample: int64 class ids for classification
    mean: tuple[float, ...]
    std: tuple[float, ...]
    aux: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def channels(self) -> int:
        return int(self.data.shape[1])

    def inputs(self, index: torch.Tensor) -> torch.Tensor:
        return self.data[index.to(self.data.device)]

    def on_device(self, device: torch.device) -> ArraySource:
        """A copy whose images live on ``device`` (each step then sends only index tensors there).

        A copy, not a move: sources are memoised per process, and a sweep worker that reuses the
        process for its next job must find them on the host as loaded.
        """
        return replace(self, data=self.data.to(device))

    def __len__(self) -> int:
        return int(self.targets.shape[0])


class FolderSource:
    """An ImageFolder tree (root/class/image), decoded lazily and resized to a fixed square."""

    def __init__(self, root: Path, image_size: int, workers: int = 8) -> None:
        from torchvision.datasets import ImageFolder

        try:
            self.folder = ImageFolder(str(root))
        except FileNotFoundError as exc:  # no class folders, or class folders without a single image
            raise MixcdError(f"ImageFolder split {root} holds no images: it needs class folders with .jpg/.png "
                             f"files ({str(exc).splitlines()[0].rstrip('.')})") from exc
        self.image_size = image_size
        self.workers = max(1, int(workers))
        self._pool: Any = None
        self.targets = torch.tensor(self.folder.targets, dtype=torch.int64)
        self.channels = 3
        self.mean = (0.485, 0.456, 0.406)
        self.std = (0.229, 0.224, 0.225)
        self.aux: dict[str, torch.Tensor] = {}

    def _decode(self, i: int) -> torch.Tensor:
        from PIL import Image

        path, _ = self.folder.samples[i]
        with Image.open(path) as img:
            img = img.convert("RGB").resize((self.image_size, self.image_size))
            return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)

    def inputs(self, index: torch.Tensor) -> torch.Tensor:
        """Decode in a persistent thread pool (PIL releases the GIL while decoding)."""
        if self._pool is None and self.workers > 1:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="mixcd-decode")
        rows = index.tolist()
        decoded = list(self._pool.map(self._decode, rows)) if self._pool else [self._decode(i) for i in rows]
        if not decoded:
            return torch.empty((0, 3, self.image_size, self.image_size), dtype=torch.uint8)
        return torch.stack(decoded)

    def __len__(self) -> int:
        return int(self.targets.shape[0])


# ---------------------------------------------------------------- Fashion-MNIST and friends


def prepare_fashion_mnist(root: Path, debian_dir: Path = DEBIAN_FASHION_MNIST) -> Path:
    """Make ``root/FashionMNIST/raw`` hold the four idx files, gunzipped from the Debian package.

    torchvision only reads the uncompressed files; the copy is written to a temporary name and
    renamed so a killed preparation never leaves a truncated file behind.
    """
    raw = root / "FashionMNIST" / "raw"
    names = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte"]
    if all((raw / n).is_file() for n in names):
        return raw
    sources = [debian_dir / f"{n}.gz" for n in names]
    if not all(s.is_file() for s in sources):
        return raw
    raw.mkdir(parents=True, exist_ok=True)
    for name, src in zip(names, sources, strict=True):
        dst = raw / name
        if dst.is_file():
            continue
        tmp = dst.with_suffix(".part")
        with gzip.open(src, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout)
        tmp.replace(dst)
    return raw


_TV_SPECS: dict[str, dict[str, Any]] = {
    "fashion_mnist": {"cls": "FashionMNIST", "folder": "FashionMNIST", "mean": (0.2860,), "std": (0.3530,),
                      "how": "apt-get install dataset-fashion-mnist (Debian), or set download=true with internet",
                      "offline": "apt-get install dataset-fashion-mnist (Debian)"},
    "mnist": {"cls": "MNIST", "folder": "MNIST", "mean": (0.1307,), "std": (0.3081,)},
    "kmnist": {"cls": "KMNIST", "folder": "KMNIST", "mean": (0.1918,), "std": (0.3483,)},
    "cifar10": {"cls": "CIFAR10", "folder": "cifar-10-batches-py", "mean": (0.4914, 0.4822, 0.4465),
                "std": (0.2470, 0.2435, 0.2616)},
    "cifar100": {"cls": "CIFAR100", "folder": "cifar-100-python", "mean": (0.5071, 0.4865, 0.4409),
                 "std": (0.2673, 0.2564, 0.2762)},
    "svhn": {"cls": "SVHN", "folder": "", "mean": (0.4377, 0.4438, 0.4728), "std": (0.1980, 0.2010, 0.1970)},
}


def _load_torchvision(name: str, root: Path, train: bool, download: bool) -> ArraySource:
    import torchvision.datasets as tvd

    spec = _TV_SPECS[name]
    if name == "fashion_mnist":
        prepare_fashion_mnist(root)
    cls = getattr(tvd, spec["cls"])
    how = spec.get("how", "set download=true where there is internet, or place the files there yourself")
    if download:  # the advice must not be the very thing that just failed
        offline = spec.get("offline", "")
        how = "this machine could not fetch it; copy the files there by hand" + (f", or {offline}" if offline else "")
    try:
        if name == "svhn":
            ds = cls(str(root), split="train" if train else "test", download=download)
        else:
            ds = cls(str(root), train=train, download=download)
    except RuntimeError as exc:  # torchvision's "Dataset not found or corrupted"
        raise MixcdError(f"dataset '{name}' not found under {root}: {how}") from exc
    except OSError as exc:  # download attempted without network
        raise MixcdError(f"dataset '{name}' could not be downloaded to {root} ({exc}); {how}") from exc
    data = ds.data
    data = torch.as_tensor(np.asarray(data))
    if data.ndim == 3:
        data = data.unsqueeze(1)
    elif name.startswith("cifar"):
        data = data.permute(0, 3, 1, 2)
    labels = getattr(ds, "targets", None)
    if labels is None:
        labels = ds.labels
    targets = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    return ArraySource(data.contiguous(), targets, spec["mean"], spec["std"])


for _name in _TV_SPECS:
    DATASETS.register(_name, help=f"torchvision {_TV_SPECS[_name]['cls']} (in memory)")(
        lambda root, train, download=False, _n=_name, **_: _load_torchvision(_n, Path(root), train, download)
    )


@DATASETS.register("imagefolder", help="ImageFolder tree: <root>/<train|val>/<class>/<image>")
def _load_imagefolder(root: str, train: bool, image_size: int = 224, train_dir: str = "train",
                      test_dir: str = "val", workers: int = 8, **_: Any) -> FolderSource:
    path = Path(root) / (train_dir if train else test_dir)
    if not path.is_dir():
        raise MixcdError(f"ImageFolder split not found: {path} (expected <root>/{train_dir} and <root>/{test_dir})")
    return FolderSource(path, image_size, workers)


@DATASETS.register("synthetic", help="small generated dataset (class templates + noise), for tests")
def make_synthetic(root: str | None = None, train: bool = True, num_classes: int = 4, image_size: int = 8,
                   channels: int = 1, n_train: int = 512, n_test: int = 256, noise: float = 0.6,
                   num_aux: int = 3, data_seed: int = 1234, **_: Any) -> ArraySource:
    """Each class is a fixed random template; samples add Gaussian noise and a random brightness.

    The noise level sets how hard the task is, so tests can produce forgetting on demand. The
    ``style`` aux column (a random group id) exercises the aux partitions.
    """
    g = torch.Generator().manual_seed(int(data_seed))
    templates = torch.rand((num_classes, channels, image_size, image_size), generator=g)
    n = n_train if train else n_test
    g_split = torch.Generator().manual_seed(int(data_seed) + (1 if train else 2))
    targets = torch.randint(0, num_classes, (n,), generator=g_split)
    x = templates[targets] + noise * torch.randn((n, channels, image_size, image_size), generator=g_split)
    x = x * (0.8 + 0.4 * torch.rand((n, 1, 1, 1), generator=g_split))
    data = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    style = torch.randint(0, num_aux, (n,), generator=g_split)
    return ArraySource(data, targets, (0.5,) * channels, (0.25,) * channels, aux={"style": style})


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
        """Inputs and targets of the task's rows."""
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


_SOURCE_CACHE: dict[tuple, Source] = {}

# Input-domain shifts a task can ask for (``options.domain``): the same images seen another way, so a
# downstream task can share the prior task's data yet pull the backbone elsewhere.
DOMAIN_SHIFTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "invert": lambda x: 255 - x,
    "rot90": lambda x: torch.rot90(x, 1, dims=(-2, -1)),
    "rot180": lambda x: torch.rot90(x, 2, dims=(-2, -1)),
    "hflip": lambda x: torch.flip(x, dims=(-1,)),
    "vflip": lambda x: torch.flip(x, dims=(-2,)),
    "transpose": lambda x: x.transpose(-2, -1),
}


def _check_angle(angle: Any) -> None:
    if isinstance(angle, bool) or not isinstance(angle, int | float) or not -360 <= angle <= 360:
        raise MixcdError(f"task transform rotate needs an angle in degrees between -360 and 360, got {angle!r}")


def _check_seed(seed: Any) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise MixcdError(f"task transform permute needs a non-negative integer seed, got {seed!r}")


def _rotate(data: torch.Tensor, angle: Any) -> torch.Tensor:
    _check_angle(angle)
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.functional import rotate

    # in chunks: the rotation works in float, and a whole split at once would need 4× its bytes
    return torch.cat([rotate(data[i:i + 8192], float(angle), InterpolationMode.BILINEAR)
                      for i in range(0, data.shape[0], 8192)])


def _permute(data: torch.Tensor, seed: Any) -> torch.Tensor:
    _check_seed(seed)
    n, c, h, w = data.shape
    perm = torch.randperm(h * w, generator=torch.Generator().manual_seed(seed))
    return data.reshape(n, c, h * w)[:, :, perm].reshape(n, c, h, w)


# Task-level input transforms (a task's ``transform: {name: value}``): the classic domain-incremental
# benchmarks. rotate: a fixed angle in degrees; permute: a fixed pixel permutation drawn from a seed.
TASK_TRANSFORMS: dict[str, Callable[[torch.Tensor, Any], torch.Tensor]] = {"rotate": _rotate, "permute": _permute}
TRANSFORM_CHECKS: dict[str, Callable[[Any], None]] = {"rotate": _check_angle, "permute": _check_seed}


def check_task_transform(spec: Any) -> dict[str, Any]:
    """A task's ``transform`` as a mapping of known transforms; one clear error otherwise."""
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        raise MixcdError(f"a task's transform must be a mapping such as {{rotate: 45}} or {{permute: 1}}, got {spec!r}")
    for name in spec:
        if name not in TASK_TRANSFORMS:
            raise unknown_choice("task transform", str(name), TASK_TRANSFORMS)
        TRANSFORM_CHECKS[name](spec[name])
    return dict(spec)


def load_source(dataset: str, root: str, train: bool, download: bool = False,
                options: dict[str, Any] | None = None, transform: dict[str, Any] | None = None) -> Source:
    """Load one split of a registered dataset (memoised per process: tasks share splits); ``options.domain``
    names a `DOMAIN_SHIFTS` entry applied to every image, ``transform`` `TASK_TRANSFORMS` applied after it."""
    options = dict(options or {})
    domain = options.pop("domain", None)
    transform = check_task_transform(transform)
    key = (dataset, str(root), train, json.dumps(options, sort_keys=True, default=str))
    if key not in _SOURCE_CACHE:
        _SOURCE_CACHE[key] = DATASETS.get(dataset)(root=root, train=train, download=download, **options)
    if domain is not None and domain not in DOMAIN_SHIFTS:
        raise unknown_choice("task option domain", str(domain), DOMAIN_SHIFTS)
    steps: list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]] = []
    if domain is not None:
        steps.append((f"domain={domain}", DOMAIN_SHIFTS[domain]))
    for name, value in transform.items():
        steps.append((f"{name}={json.dumps(value)}", lambda x, f=TASK_TRANSFORMS[name], v=value: f(x, v)))
    for i in range(len(steps)):
        shifted = (*key, *(label for label, _ in steps[:i + 1]))
        if shifted not in _SOURCE_CACHE:
            base = _SOURCE_CACHE[(*key, *(label for label, _ in steps[:i]))]
            if not isinstance(base, ArraySource):
                raise MixcdError(f"{steps[i][0]} needs an in-memory dataset; '{dataset}' is read from files")
            _SOURCE_CACHE[shifted] = replace(base, data=steps[i][1](base.data).contiguous())
    return _SOURCE_CACHE[(*key, *(label for label, _ in steps))]


def make_task(name: str, dataset: str, root: str, split: str, classes: Sequence[int] | None,
              label_map: dict[int, int] | None, label_mode: str, download: bool = False,
              options: dict[str, Any] | None = None, limit: int | None = None,
              transform: dict[str, Any] | None = None) -> Task:
    """Build a task.

    ``label_mode='original'`` keeps (or ``label_map``s) the dataset's labels, for one shared head
    over the union of tasks; ``'local'`` renumbers the task's classes 0..k-1, for its own head.
    """
    if split not in ("train", "test"):
        raise MixcdError(f"split must be 'train' or 'test', got '{split}'")
    source = load_source(dataset, root, split == "train", download, options, transform)
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
        return [self.pool, self.prior_test, *(t for s in self.stages for t in (s.train, s.test))]

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


def _inputs(spec: dict[str, Any]) -> str:
    return json.dumps({k: spec.get(k) for k in ("dataset", "options", "transform")}, sort_keys=True, default=str)


def build_experiment(prior: dict[str, Any], finetune: dict[str, Any], head: str, data_root: str,
                     image_size: int | None = None, stages: list[Any] | None = None) -> Experiment:
    """Build the prior task and every stage from plain dicts (dataset, classes, label_map, download, options,
    transform, limit_*); ``stages`` entries are filled in from ``finetune`` (None: ``finetune`` is the one stage)."""
    if head not in HEAD_MODES:
        raise unknown_choice("head mode", head, HEAD_MODES)
    mode = "original" if head == "shared" else "local"

    def task(spec: dict[str, Any], split: str, role: str) -> Task:
        limit = spec.get(f"limit_{split}")
        return make_task(f"{spec.get('name', role)}/{split}", spec["dataset"], spec.get("root") or data_root,
                         split, spec.get("classes"), spec.get("label_map"), mode,
                         bool(spec.get("download", False)), spec.get("options"), limit, spec.get("transform"))

    pool, prior_test = task(prior, "train", "prior"), task(prior, "test", "prior")
    built: list[Stage] = []
    for k, (spec, trainer) in enumerate(stage_specs(finetune, stages), 1):
        built.append(Stage(str(spec.get("name") or f"stage{k}"), task(spec, "train", "finetune"),
                           task(spec, "test", "finetune"), _stage_head(k, head), trainer, _inputs(spec)))
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
    if head == "shared" and len(built) > 1 and pool.objective.has_classes:
        seen = [("the prior task", _inputs(prior), set(pool.targets.unique().tolist()))]
        for s in built:
            labels = set(s.train.targets.unique().tolist())
            for name, inputs, have in seen:
                if inputs == s.inputs and labels & have:
                    raise MixcdError(f"stage '{s.name}' reuses labels {sorted(labels & have)} of {name} on the same "
                                     "inputs under a shared head: give it new classes (class-incremental), a "
                                     "transform such as {rotate: 45} (domain-incremental), or head=multi")
            seen.append((f"stage '{s.name}'", s.inputs, labels))
    return Experiment(pool, prior_test, built, head, make_transform(pool.source, image_size))
