"""What runs write: atomic files, checkpoints, caches with locks, run-folder metadata."""

from __future__ import annotations

import codecs
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


def write_error(path: Path, exc: OSError, key: str | None = None) -> MixcdError:
    """One line for a failed write. ``key``: the setting that chose the folder (paths.cache_dir,
    hydra.run.dir, ...), so the advice names what would actually move it; without one the advice names
    no key, since pointing at the wrong one (paths.output_dir for a cache) would not help."""
    if exc.errno == errno.ENOSPC:
        return MixcdError(f"disk full while writing {path}; free space and rerun (earlier files are intact)")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        advice = f"choose another folder ({key}=...)" if key else "make it writable or choose another folder"
        return MixcdError(f"no permission to write {path}; {advice}")
    advice = f"; choose another folder ({key}=...)" if key else ""
    return MixcdError(f"could not write {path}: {exc.strerror or exc}{advice}")


@contextlib.contextmanager
def atomic_path(path: Path, key: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename over it only if the body succeeds.

    A reader therefore sees either the old complete file or the new complete one, never half.
    ``key``: the setting that chose the folder, for the advice of a failed write (`write_error`).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        honour_umask(Path(tmp))
    except OSError as exc:
        raise write_error(path, exc, key) from exc
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise write_error(path, exc, key) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def atomic_torch_save(obj: Any, path: Path, key: str | None = None) -> None:
    """torch.save, atomically, with bytes that depend on ``obj`` alone.

    Serialising to memory first keeps the archive's internal name fixed ('archive'): saved
    straight to the temporary file, the zip would carry that file's random name, and two saves of
    the same weights would get different fingerprints (and miss the snapshot cache).
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path, key) as tmp:
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


# What torch.save writes first: a zip archive (since torch 1.6), or the legacy format, a pickle
# (protocol 2+ opens with 0x80). Anything else was never a torch file, whatever torch.load then says.
TORCH_SIGNATURES = (b"PK\x03\x04", b"\x80")


def not_torch_file(path: Path) -> str | None:
    """Why ``path`` cannot be a torch.save file (its first bytes fit neither format), or None.

    Checked before torch.load because the unpickler, fed text, fails with whatever its opcodes hit
    ("pop from empty list", "could not find MARK", a KeyError), which says nothing about the file.
    """
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(TORCH_SIGNATURES):
        return None
    if not head:
        return "it is empty"
    try:  # incremental: a character cut in two at byte 64 is still text
        text = codecs.getincrementaldecoder("utf-8")().decode(head)
    except UnicodeDecodeError:
        return f"it starts with the bytes {head[:8].hex(' ')}"
    if any(ord(c) < 32 and c not in "\t\n\r" for c in text):  # control bytes: binary, not text
        return f"it starts with the bytes {head[:8].hex(' ')}"
    words = " ".join(text.split())
    return f"it holds text ('{words[:24]}{'…' if len(words) > 24 or len(head) == 64 else ''}')"


def safe_torch_load(path: Path, what: str = "checkpoint", yours: bool = False) -> Any:
    """torch.load with one clear message for a missing, truncated or foreign file.

    ``yours``: a file the user named (not one mixcd made and can remake), so never advise deleting it.
    """
    path = Path(path)
    if not path.is_file():
        raise MixcdError(f"{what} not found: {path}")
    advice = "check that it is a complete mixcd model checkpoint" if yours else "delete it and rerun to recompute"
    foreign = not_torch_file(path)
    if foreign:
        # "corrupt or truncated" stays: a file damaged in its first bytes looks the same as a foreign one
        raise MixcdError(f"{what} {path} is not a torch checkpoint: {foreign}, not a torch.save archive "
                         f"(another kind of file, or one corrupt or truncated); {advice}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
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
def file_lock(path: Path, key: str | None = None) -> Iterator[None]:
    """An exclusive lock across processes (filelock), so parallel jobs compute a shared cache entry once.

    ``key``: the setting that chose the lock's folder (paths.cache_dir, ...), named if it cannot be written.
    """
    from filelock import FileLock

    lock = FileLock(str(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except OSError as exc:  # a read-only cache: one line, not filelock's traceback
        raise write_error(path, exc, key) from exc
    try:
        yield
    finally:
        lock.release()


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
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if truncate_to is not None and self.path.exists():
                with open(self.path, "r+b") as f:
                    f.truncate(truncate_to)
            elif truncate_to is None and self.path.exists():
                self.path.unlink()
            self._f = open(self.path, "ab")
        except OSError as exc:  # the folder turned read-only or full since the checks before the run
            raise write_error(self.path, exc) from exc

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

