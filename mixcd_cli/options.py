"""Declared options: a dataclass field's default, its range rules and its one-line help, in one place.

Low in the package (it imports nothing of it but errors), so a sampler declares its options beside its
class without importing the schema, and the schema checks every node by the same rules. A rule is a
field's metadata: ``ge``/``gt``/``le``/``lt`` (bounds), ``choices`` (a tuple of the valid values),
``nonempty``, ``device``, ``auto_or_ge``; ``help`` is the line `mixcd ls` shows.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from .errors import MixcdError, unknown_choice

DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


def opt(default: Any, help: str = "", **rules: Any) -> Any:
    """A declared option: its default, a one-line ``help`` and range rules (``ge=1``, ``choices=(...)``)."""
    return field(default=default, metadata={**rules, "help": help} if help else rules)


@dataclass(frozen=True)
class OptionDoc:
    """One declared option as `mixcd ls` shows it."""

    name: str
    default: Any
    help: str
    choices: tuple[Any, ...] | None


def shown(value: Any) -> str:
    """A value as it is written on the command line (null, true, 0.25)."""
    if value is None:
        return "null"
    return str(value).lower() if isinstance(value, bool) else str(value)


def defaults(options_type: type) -> dict[str, Any]:
    """Every declared option of ``options_type`` with its default."""
    return {f.name: f.default for f in fields(options_type) if f.default is not MISSING}


def docs(options_type: type) -> list[OptionDoc]:
    """The declared options of ``options_type``, in declaration order."""
    return [OptionDoc(f.name, f.default, str(f.metadata.get("help", "")), f.metadata.get("choices"))
            for f in fields(options_type)]


def check_value(key: str, value: Any, rules: Mapping[str, Any]) -> None:
    """``value`` of setting ``key`` against its range rules; one clear MixcdError naming the key."""
    if "choices" in rules and value not in rules["choices"]:
        raise unknown_choice(f"value for {key}", str(value), [shown(c) for c in rules["choices"]])
    if rules.get("device") and not DEVICE.match(str(value)):
        raise MixcdError(f"{key} must be auto, cpu, cuda or cuda:N, got {value!r}")
    if "auto_or_ge" in rules:
        if value == "auto":
            return
        if not isinstance(value, int) or isinstance(value, bool) or value < rules["auto_or_ge"]:
            raise MixcdError(f"{key} must be auto or an integer ≥ {rules['auto_or_ge']}, got {value!r}")
        return
    if value is None:
        return
    if rules.get("nonempty") and len(value) == 0:
        raise MixcdError(f"{key} must not be empty; leave it null for all classes")
    if isinstance(value, float) and not math.isfinite(value):
        raise MixcdError(f"{key} must be a finite number, got {value}")
    for name, ok, word in (("ge", lambda v, b: v >= b, "≥"), ("gt", lambda v, b: v > b, ">"),
                           ("le", lambda v, b: v <= b, "≤"), ("lt", lambda v, b: v < b, "<")):
        if name in rules and isinstance(value, int | float) and not ok(value, rules[name]):
            raise MixcdError(f"{key} must be {word} {rules[name]}, got {value}")


def fill(options_type: type, given: Mapping[str, Any], what: str, prefix: str = "") -> dict[str, Any]:
    """The declared options of ``options_type``: ``given`` over the defaults, each checked against its rules.

    An undeclared key is refused naming it and the valid ones (``what`` says whose options they are).
    """
    values = defaults(options_type)
    for key in given:
        if key not in values:
            raise unknown_choice(f"option for {what}", key, list(values) or ["(none)"])
    values.update(given)
    for f in fields(options_type):
        check_value(f"{prefix}{f.name}", values[f.name], f.metadata)
    return values
