"""User-facing errors: one clear sentence, no stack trace."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager


class MixcdError(Exception):
    """A mistake the user can fix (bad option, missing data, mismatched snapshot, ...).

    The CLI prints its message on one line and exits with ``exit_code``; anything else is a bug
    and keeps its traceback.
    """

    exit_code = 2


class TrainingDiverged(MixcdError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""

    exit_code = 3


def closest(name: str, choices: Iterable[str]) -> str:
    """A ' (did you mean X?)' suffix for the nearest valid choice, or ''."""
    match = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def unknown_choice(kind: str, name: str, choices: Iterable[str]) -> MixcdError:
    """The standard 'unknown X, choose one of ...' error."""
    valid = sorted(choices)
    return MixcdError(f"unknown {kind} '{name}'{closest(name, valid)}; choose one of: {', '.join(valid)}")


class Interrupted(MixcdError):
    """Ctrl-C: what was saved is named in the message."""

    exit_code = 130


# What the process is doing and what a Ctrl-C there leaves behind, for the one line it prints.
_PHASE = {"doing": "starting", "kept": "nothing was written"}


@contextmanager
def phase(doing: str, kept: str) -> Iterator[None]:
    """Mark a stretch of work: an interrupt inside it says it stopped during ``doing`` and that ``kept`` holds."""
    previous = dict(_PHASE)
    _PHASE.update(doing=doing, kept=kept)
    yield  # on an exception (Ctrl-C) the phase stays set, for the line printed at the top
    _PHASE.update(previous)


def phase_kept(kept: str) -> None:
    """Update what the current phase has safely written so far (e.g. a new checkpoint)."""
    _PHASE["kept"] = kept


def interrupt_message() -> str:
    """The line printed for a Ctrl-C that reached the top (not one handled by fine-tuning)."""
    return f"interrupted during {_PHASE['doing']}; {_PHASE['kept']}"
