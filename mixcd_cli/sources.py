"""Datasets: splits of raw samples read by index, their registry, and the input shifts a task may ask for.

A *dataset* is a split of raw samples (model inputs — uint8 images or token ids — and one target per
sample, plus optional per-sample integer ``aux`` columns). Its source names its task kind (``kind``,
classification when absent; docs/design.md §7), whose objective says what the targets mean. Sources are
read by index, so the rehearsal sampler's indices go straight to the data with no DataLoader in between,
and each split is loaded once per process (`load_source`).
"""

from __future__ import annotations

import errno
import gzip
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from .errors import MixcdError, unknown_choice
from .registry import Registry

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

DATASETS: Registry = Registry("dataset")
PAD = -1  # the padding value of token batches: never a token id, so the mask is `ids != PAD`
DATA_DIR_KEY = "paths.data_dir"  # the key that chooses a dataset's folder when its task names no root


class DataFolderError(MixcdError):
    """A dataset's files could not be written into its folder (prepared or downloaded there).

    Raised by the loaders, which only know the folder; `load_source` raises it again naming the key
    that chose the folder, since the fix is to point that key elsewhere.
    """

    def __init__(self, path: Path, exc: OSError, root: str = "", key: str = DATA_DIR_KEY) -> None:
        self.path, self.exc, self.root, self.key = Path(path), exc, root, key
        super().__init__(self._message())

    def naming(self, root: str, key: str) -> DataFolderError:
        return DataFolderError(self.path, self.exc, root, key)

    def _message(self) -> str:
        where = f"{self.key}={self.root}" if self.root else self.key
        if self.key == DATA_DIR_KEY:  # the default root comes from MIXCD_DATA_DIR when that is set
            where += " (or MIXCD_DATA_DIR)"
            advice = f"set {DATA_DIR_KEY}=... or MIXCD_DATA_DIR=... to a folder you can write"
        else:
            advice = f"set {self.key}=... to a folder you can write"
        advice += ", or to one that already holds the dataset's files"
        if self.exc.errno == errno.ENOSPC:
            return f"disk full while writing {self.path}, the dataset folder chosen by {where}; free space and rerun"
        if self.exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return f"no permission to write {self.path}, the dataset folder chosen by {where}; {advice}"
        return (f"could not write {self.path}, the dataset folder chosen by {where} "
                f"({self.exc.strerror or self.exc}); {advice}")


WRITE_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC)


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
    try:
        raw.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a read-only data folder: one line naming it, not mkdir's traceback
        raise DataFolderError(Path(exc.filename or raw), exc) from exc
    for name, src in zip(names, sources, strict=True):
        dst = raw / name
        if dst.is_file():
            continue
        tmp = dst.with_suffix(".part")
        try:
            with gzip.open(src, "rb") as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout)
            tmp.replace(dst)
        except OSError as exc:
            tmp.unlink(missing_ok=True)  # a disk that filled up midway keeps no half file
            raise DataFolderError(raw, exc) from exc
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
    except OSError as exc:
        if exc.errno in WRITE_ERRNOS:  # the folder, not the network: "could not fetch it" would mislead
            raise DataFolderError(Path(exc.filename or root), exc) from exc
        # download attempted without network
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
                options: dict[str, Any] | None = None, transform: dict[str, Any] | None = None,
                root_key: str = DATA_DIR_KEY) -> Source:
    """Load one split of a registered dataset (memoised per process: tasks share splits); ``options.domain``
    names a `DOMAIN_SHIFTS` entry applied to every image, ``transform`` `TASK_TRANSFORMS` applied after it.
    ``root_key``: the key that chose ``root`` (paths.data_dir, prior.root, ...), named when it cannot be written."""
    options = dict(options or {})
    domain = options.pop("domain", None)
    transform = check_task_transform(transform)
    key = (dataset, str(root), train, json.dumps(options, sort_keys=True, default=str))
    if key not in _SOURCE_CACHE:
        try:
            _SOURCE_CACHE[key] = DATASETS.get(dataset)(root=root, train=train, download=download, **options)
        except DataFolderError as exc:
            raise exc.naming(str(root), root_key) from exc.__cause__
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

