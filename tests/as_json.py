"""The stages as tests that check what a user reads call them: each returns its result as the JSON object it
writes (metrics.json, pretrain.json, snapshot.json), keys as in the file. Tests of the typed results
themselves use mixcd_cli.recipes and mixcd_cli.results directly."""

from __future__ import annotations

from typing import Any

from mixcd_cli import recipes


def _json(result: Any) -> dict[str, Any]:
    return {} if result is None else result.to_dict()


def run_pretrain(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return _json(recipes.run_pretrain(*args, **kwargs))


def run_snapshot(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return _json(recipes.run_snapshot(*args, **kwargs))


def run_train(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return _json(recipes.run_train(*args, **kwargs))


def run_eval(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return _json(recipes.run_eval(*args, **kwargs))
