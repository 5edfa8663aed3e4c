"""What runs write: atomic files, checkpoints, caches with locks, run-folder metadata."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import math
import os
import platform
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .errors import MixcdError


def _current_umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def honour_umask(path: Path, directory: bool = False) -> None:
    """Give a file (or folder) made by mkstemp/mkdtemp the mode a plain open/mkdir would have.

    mkstemp and mkdtemp create 0600/0700 whatever the umask, which would make a cache shared by a
    team unreadable to everyone but its first writer.
    """
    os.chmod(path, (0o777 if directory else 0o666) & ~_current_umask())


def write_error(path: Path, exc: OSError) -> MixcdError:
    if exc.errno == errno.ENOSPC:
        return MixcdError(f"disk full while writing {path}; free space and rerun (earlier files are intact)")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return MixcdError(f"no permission to write {path}; choose another output folder (paths.output_dir=...)")
    return MixcdError(f"could not write {path}: {exc.strerror or exc}")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename over it only if the body succeeds.

    A reader therefore sees either the old complete file or the new complete one, never half.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        honour_umask(Path(tmp))
    except OSError as exc:
        raise write_error(path, exc) from exc
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise write_error(path, exc) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save, atomically, with bytes that depend on ``obj`` alone.

    Serialising to memory first keeps the archive's internal name fixed ('archive'): saved
    straight to the temporary file, the zip would carry that file's random name, and two saves of
    the same weights would get different fingerprints (and miss the snapshot cache).
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def to_json_safe(obj: Any) -> Any:
    """Plain JSON values: tensors and arrays as lists, paths as strings, NaN and ±inf as null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): to_json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json_safe(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # torch tensors, numpy arrays and scalars
        return to_json_safe(obj.tolist())
    return obj


def json_text(obj: Any, **kwargs: Any) -> str:
    """Strict JSON (never a bare NaN token, which JSON does not allow)."""
    return json.dumps(to_json_safe(obj), allow_nan=False, **kwargs)


def write_json(obj: Any, path: Path) -> None:
    """Write strict JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json_text(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: Path, what: str = "file") -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise MixcdError(f"{what} not found: {path}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MixcdError(f"{what} {path} is corrupt ({exc}); delete it and rerun") from exc


def safe_torch_load(path: Path, what: str = "checkpoint", yours: bool = False) -> Any:
    """torch.load with one clear message for a missing, truncated or foreign file.

    ``yours``: a file the user named (not one mixcd made and can remake), so never advise deleting it.
    """
    path = Path(path)
    if not path.is_file():
        raise MixcdError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        advice = "check that it is a complete mixcd model checkpoint" if yours else \
            "delete it and rerun to recompute"
        raise MixcdError(f"{what} {path} is corrupt or truncated ({type(exc).__name__}); {advice}") from exc


def file_digest(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def config_digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock across processes (filelock), so parallel jobs compute a shared cache entry once."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path)):
        yield


def git_sha(start: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(start), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=False)
        dirty = subprocess.run(["git", "-C", str(start), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def environment_info() -> dict[str, Any]:
    """Package versions, git sha and machine, written beside every run's config."""
    import importlib.metadata as md

    versions = {}
    for pkg in ("mixcd", "torch", "torchvision", "timm", "hydra-core", "omegaconf", "typer", "rich", "numpy"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return {
        "versions": versions,
        "python": platform.python_version(),
        "git_sha": git_sha(Path(__file__).resolve().parent),
        "platform": platform.platform(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "threads": torch.get_num_threads(),
    }


class JsonlWriter:
    """Append-only telemetry; ``offset`` lets a resumed run cut what came after its checkpoint."""

    def __init__(self, path: Path, truncate_to: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if truncate_to is not None and self.path.exists():
            with open(self.path, "r+b") as f:
                f.truncate(truncate_to)
        elif truncate_to is None and self.path.exists():
            self.path.unlink()
        self._f = open(self.path, "ab")

    def write(self, record: dict[str, Any]) -> None:
        try:
            self._f.write((json_text(record) + "\n").encode())
            self._f.flush()
        except OSError as exc:
            raise write_error(self.path, exc) from exc

    @property
    def offset(self) -> int:
        return self._f.tell()

    def close(self) -> None:
        self._f.close()

