"""Whether a folder mixcd is asked to write can be written, asked before any work (a refused command writes
nothing)."""

from __future__ import annotations

from pathlib import Path

from .artifacts import write_error
from .errors import MixcdError


def check_writable(path: Path, what: str) -> None:
    """Refuse, before any work, a folder that cannot be created or written (a file in the way, a
    read-only place, a name too long)."""
    import errno
    import tempfile

    for part in path.parts:
        if len(part.encode()) > 255:
            raise MixcdError(f"{what}={path}: the name '{part[:40]}…' is longer than the file system allows")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise MixcdError(f"{what}={path} cannot be created: {probe} is a file, not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".mixcd-probe-"):
            pass
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            raise MixcdError(f"{what}={path}: the path is longer than the file system allows") from exc
        raise write_error(path, exc, what) from exc
