"""Shared fixtures: tiny generated-data configs that run every stage in seconds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MIXCD_PROGRESS", "0")

FMNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    return tmp_path / "outputs"


@pytest.fixture
def tiny(out_dir: Path) -> list[str]:
    """Overrides for a seconds-long run on generated data, writing under a temporary folder."""
    return ["experiment=tiny", f"paths.output_dir={out_dir}", f"paths.data_dir={out_dir.parent / 'data'}"]


@pytest.fixture
def compose_cfg():
    """Compose a stage config without going through @hydra.main."""
    from mixcd_cli.hydra_app import compose

    return compose


def pytest_collection_modifyitems(config, items):
    if not FMNIST_DEBIAN.is_file():
        skip = pytest.mark.skip(reason="needs Debian dataset-fashion-mnist (make data)")
        for item in items:
            if "fmnist" in item.keywords:
                item.add_marker(skip)
