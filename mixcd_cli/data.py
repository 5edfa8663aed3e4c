"""Datasets, tasks and batch transforms.

A *dataset* is a split of raw samples (uint8 images and integer labels, plus optional per-sample
integer ``aux`` columns). A *task* selects a class subset of one split and maps its labels into
the model's label space. Batches are fetched by index, so the rehearsal sampler's indices go
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

from .errors import MixcdError
from .registry import Registry
from .schema import HEAD_MODES

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

DATASETS: Registry = Registry("dataset")


class ImageSource(Protocol):
    """Anything that returns uint8 image batches (n, C, H, W) by sample index."""

    targets: torch.Tensor
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def images(self, index: torch.Tensor) -> torch.Tensor: ...

    def __len__(self) -> int: ...


@dataclass
class ArraySource:
    """An in-memory split: all images in one uint8 tensor (on the host, or moved to the GPU whole)."""

    data: torch.Tensor  # (N, C, H, W) uint8
    targets: torch.Tensor  # (N,) int64
    mean: tuple[float, ...]
    std: tuple[float, ...]
    aux: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def channels(self) -> int:
        return int(self.data.shape[1])

    def images(self, index: torch.Tensor) -> torch.Tensor:
        return self.data[index.to(self.data.device)]

    def on_device(self, device: torch.device) -> ArraySource:
        """A copy whose images live on ``device`` (each step then sends only index tensors there).

        A copy, not a move: sources are memoised per process, and a sweep worker that reuses the
        process for its next job must find them on the host as loaded.
        """
        return replace(self, data=self.data.to(device))

    def __len__(self) -> int:
        return int(self.targets.numel())


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

    def images(self, index: torch.Tensor) -> torch.Tensor:
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
        return int(self.targets.numel())


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
    source: ImageSource
    index: torch.Tensor  # indices into source, in a fixed order
    targets: torch.Tensor  # mapped labels, aligned with index
    num_classes: int
    definition: dict[str, Any]

    def __len__(self) -> int:
        return int(self.index.numel())

    def images(self, rows: torch.Tensor) -> torch.Tensor:
        """uint8 images of the task's rows (not source indices)."""
        return self.source.images(self.index[rows])

    def aux(self, column: str) -> torch.Tensor:
        columns = getattr(self.source, "aux", {})
        if column not in columns:
            from .errors import unknown_choice

            raise unknown_choice(f"aux column of task '{self.name}'", column, columns)
        return columns[column][self.index]

    def fingerprint(self) -> str:
        """Hash of the definition plus the actual index order and targets, to verify snapshots."""
        h = hashlib.sha256(json.dumps(self.definition, sort_keys=True, default=str).encode())
        h.update(self.index.numpy().tobytes())
        h.update(self.targets.numpy().tobytes())
        return h.hexdigest()[:16]


_SOURCE_CACHE: dict[tuple, ImageSource] = {}

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


def load_source(dataset: str, root: str, train: bool, download: bool = False,
                options: dict[str, Any] | None = None) -> ImageSource:
    """Load one split of a registered dataset (memoised per process: tasks share splits); ``options.domain``
    names a `DOMAIN_SHIFTS` entry applied to every image."""
    options = dict(options or {})
    domain = options.pop("domain", None)
    key = (dataset, str(root), train, json.dumps(options, sort_keys=True, default=str))
    if key not in _SOURCE_CACHE:
        _SOURCE_CACHE[key] = DATASETS.get(dataset)(root=root, train=train, download=download, **options)
    if domain is None:
        return _SOURCE_CACHE[key]
    if domain not in DOMAIN_SHIFTS:
        from .errors import unknown_choice

        raise unknown_choice("task option domain", str(domain), DOMAIN_SHIFTS)
    shifted = (*key, domain)
    if shifted not in _SOURCE_CACHE:
        base = _SOURCE_CACHE[key]
        if not isinstance(base, ArraySource):
            raise MixcdError(f"options.domain={domain} needs an in-memory dataset; '{dataset}' is read from files")
        _SOURCE_CACHE[shifted] = replace(base, data=DOMAIN_SHIFTS[domain](base.data).contiguous())
    return _SOURCE_CACHE[shifted]


def make_task(name: str, dataset: str, root: str, split: str, classes: Sequence[int] | None,
              label_map: dict[int, int] | None, label_mode: str, download: bool = False,
              options: dict[str, Any] | None = None, limit: int | None = None) -> Task:
    """Build a task.

    ``label_mode='original'`` keeps (or ``label_map``s) the dataset's labels, for one shared head
    over the union of tasks; ``'local'`` renumbers the task's classes 0..k-1, for its own head.
    """
    if split not in ("train", "test"):
        raise MixcdError(f"split must be 'train' or 'test', got '{split}'")
    source = load_source(dataset, root, split == "train", download, options)
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
    definition = {"name": name, "dataset": dataset, "split": split, "classes": chosen, "label_map": lut,
                  "options": options or {}, "limit": limit}
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


def make_transform(source: ImageSource, size: int | None = None) -> BatchTransform:
    return BatchTransform(tuple(source.mean), tuple(source.std), size)


@dataclass
class Experiment:
    """The prior task (pool + test), the fine-tune task (train + test), and how heads are laid out."""

    pool: Task
    prior_test: Task
    ft_train: Task
    ft_test: Task
    head: str  # 'shared' | 'multi'
    transform: BatchTransform

    @property
    def channels(self) -> int:
        return self.pool.source.channels

    def head_sizes(self) -> dict[str, int]:
        if self.head == "shared":
            return {"shared": max(self.pool.num_classes, self.ft_train.num_classes)}
        return {"prior": self.pool.num_classes, "finetune": self.ft_train.num_classes}

    def prior_head(self) -> str:
        return "shared" if self.head == "shared" else "prior"

    def ft_head(self) -> str:
        return "shared" if self.head == "shared" else "finetune"



def build_experiment(prior: dict[str, Any], finetune: dict[str, Any], head: str, data_root: str,
                     image_size: int | None = None) -> Experiment:
    """Build both tasks from plain dicts (dataset, classes, label_map, download, options, limit)."""
    if head not in HEAD_MODES:
        from .errors import unknown_choice

        raise unknown_choice("head mode", head, HEAD_MODES)
    mode = "original" if head == "shared" else "local"

    def task(spec: dict[str, Any], split: str, role: str) -> Task:
        limit = spec.get(f"limit_{split}")
        return make_task(f"{spec.get('name', role)}/{split}", spec["dataset"], spec.get("root") or data_root,
                         split, spec.get("classes"), spec.get("label_map"), mode,
                         bool(spec.get("download", False)), spec.get("options"), limit)

    pool, prior_test = task(prior, "train", "prior"), task(prior, "test", "prior")
    ft_train, ft_test = task(finetune, "train", "finetune"), task(finetune, "test", "finetune")
    if pool.source.channels != ft_train.source.channels:
        raise MixcdError("prior and fine-tune datasets have different channel counts "
                         f"({pool.source.channels} vs {ft_train.source.channels})")
    if len(pool) == 0 or len(ft_train) == 0:
        raise MixcdError("a task selected no samples: check the classes lists")
    return Experiment(pool, prior_test, ft_train, ft_test, head, make_transform(pool.source, image_size))
