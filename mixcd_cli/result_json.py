"""The JSON mapping of typed results: dataclass parts built from, and turned back into, flat or nested JSON
objects with the file's own key names, unknown keys kept, every value checked against its type hint (one
`MixcdError` naming the file and the key when it does not fit). `results` declares the parts."""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import field
from typing import Any, ClassVar, TypeVar, Union

from .artifacts import to_json_safe
from .errors import MixcdError

P = TypeVar("P", bound="Part")


def flat_part(factory: Any = None) -> Any:
    """A part whose keys sit at its owner's top level: the file stays flat, the type groups them."""
    if factory is None:
        return field(metadata={"flat": True})
    return field(default_factory=factory, metadata={"flat": True})


def omitted() -> Any:
    """An optional value whose key runs leave out, rather than write as null, when it was not measured."""
    return field(default=None, metadata={"omit": True})


def extra_keys() -> Any:
    return field(default_factory=dict)


class Part:
    """Built from, and turned back into, a dict with the JSON's own keys."""

    # keys dropped on reading: bookkeeping some files carry beside the part (see StageRecord)
    SKIP: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_dict(cls: type[P], data: dict[str, Any], source: str = "a result") -> P:
        """Build from a dict with today's key names (a producer's, or one read from ``source``, named in errors).

        Keys the part does not know go to its ``extra`` where it has one; a flat part refuses them.
        """
        return decode(cls, data, source, "")

    def to_dict(self) -> dict[str, Any]:
        """The JSON object: today's key names, plain values (NaN as None), ``extra`` beside the known keys."""
        return to_json_safe(encode(self))


# ------------------------------------------------------------------------------------ the JSON mapping


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def encode(part: Any) -> dict[str, Any]:
    out: dict[str, Any] = dict(getattr(part, "extra", {}))  # known keys are written over unknown ones
    for f in dataclasses.fields(part):
        value = getattr(part, f.name)
        if f.name == "extra" or (value is None and f.metadata.get("omit")):
            continue
        if f.metadata.get("flat"):
            out.update(encode(value))
        else:
            out[f.name] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, Part):
        return encode(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def decode(cls: type[P], data: Any, source: str, where: str, used: set[str] | None = None) -> P:
    """``cls`` from ``data``; ``where``: the key path so far, for messages; ``used``: the keys claimed so far
    when ``cls`` is a flat part of its owner (whose ``extra`` takes what no field claims)."""
    if not isinstance(data, dict):
        raise MixcdError(f"{source}: '{where.rstrip('.')}' is not a JSON object")
    own = used is None
    claimed: set[str] = set(cls.SKIP) if used is None else used
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    names = set()
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        names.add(f.name)
        if f.name == "extra":
            continue
        if f.metadata.get("flat"):
            kwargs[f.name] = decode(hints[f.name], data, source, where, claimed)
        elif f.name in data:
            claimed.add(f.name)
            kwargs[f.name] = _value(data[f.name], hints[f.name], source, where + f.name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise MixcdError(f"{source} lacks the required key '{where}{f.name}'")
    if own:
        rest = {k: v for k, v in data.items() if k not in claimed}
        if "extra" in names:
            kwargs["extra"] = rest
        elif rest:
            raise MixcdError(f"{source}: {cls.__name__} has no key(s) {', '.join(sorted(rest))}")
    return cls(**kwargs)


def _value(value: Any, hint: Any, source: str, key: str) -> Any:
    """``value`` checked against the field's type ``hint``, parts built from their objects."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (Union, types.UnionType) else (hint,)
    if value is None:
        if type(None) in options or hint is Any:
            return None
        raise MixcdError(f"{source} has null for '{key}', which must be {_describe(hint)}")
    for option in options:
        matched, out = _as(value, option, source, key)
        if matched:
            return out
    shown = repr(value) if len(repr(value)) < 40 else f"a {type(value).__name__}"
    raise MixcdError(f"{source} has {shown} for '{key}', which must be {_describe(hint)}")


def _as(value: Any, option: Any, source: str, key: str) -> tuple[bool, Any]:
    origin = typing.get_origin(option)
    if option is Any:
        return True, value
    if origin is list:
        if not isinstance(value, list):
            return False, None
        item = typing.get_args(option)[0]
        return True, [_value(v, item, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            return False, None
        item = typing.get_args(option)[1]
        return True, {k: _value(v, item, source, f"{key}.{k}") for k, v in value.items()}
    if isinstance(option, type) and issubclass(option, Part):
        return (True, decode(option, value, source, key + ".")) if isinstance(value, dict) else (False, None)
    if option in (int, float) and isinstance(value, bool):  # JSON's true is no number
        return False, None
    if option is float:
        return isinstance(value, int | float), value
    return isinstance(value, option), value


def _describe(hint: Any) -> str:
    if isinstance(hint, type) and not typing.get_args(hint):
        return "an object" if issubclass(hint, Part) else hint.__name__
    return str(hint).replace("typing.", "").replace("NoneType", "None")
