"""User-facing errors: one clear sentence, no stack trace."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


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
