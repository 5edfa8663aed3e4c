"""One declaration per sampler: a sampler registered here, in this file alone, is listed, composes, is checked.

Also the registry's answers (capabilities, options, ratios) and the layering that keeps samplers below the
schema and the CLI.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import torch
from omegaconf import OmegaConf
from typer.testing import CliRunner

from mixcd_cli.cli import app
from mixcd_cli.errors import MixcdError
from mixcd_cli.hydra_app import compose, group_options
from mixcd_cli.options import opt
from mixcd_cli.recipes import validate_config
from mixcd_cli.samplers import (
    SAMPLERS,
    PoolInfo,
    RehearsalSampler,
    SelectionContext,
    create_sampler,
    register_sampler,
    rehearsal_batch,
    sampler_options,
)

NAME = "every_kth"
runner = CliRunner()


@dataclass
class EveryKthOptions:
    k: int = opt(3, ge=1, le=50, help="draw rows k, 2k, 3k, ... of the pool")


class EveryKth(RehearsalSampler):
    """Rows k, 2k, 3k, ... in turn: a sampler that exists only in this test file."""

    def __init__(self, pool: PoolInfo, batch_size: int, seed: int, *, k: int) -> None:
        super().__init__(pool, batch_size, seed)
        self.rows = torch.arange(k - 1, len(pool), k)

    def draw(self, step: int, ctx: SelectionContext | None = None) -> torch.Tensor:
        return self.rows[(torch.arange(self.batch_size) + step * self.batch_size) % self.rows.numel()]


@contextmanager
def registered() -> Iterator[str]:
    """EveryKth registered as NAME for the block; forgotten after (registry and Hydra's ConfigStore)."""
    from mixcd_cli.schema import register

    register_sampler(NAME, help="every k-th pool row, in turn (a test's own sampler)", options=EveryKthOptions,
                     needs_snapshot=False)(EveryKth)
    try:
        yield NAME
    finally:
        SAMPLERS.unregister(NAME)
        register()  # drops its ConfigStore node


@pytest.fixture
def every_kth() -> Iterator[str]:
    with registered() as name:
        yield name


def pool(n: int = 60) -> PoolInfo:
    return PoolInfo(correct0=torch.ones(n, dtype=torch.bool), loss0=torch.rand(n), conf0=torch.rand(n))


# --------------------------------------------------------------------------- a sampler declared here alone


def test_a_new_sampler_is_listed_with_its_help_and_options(every_kth: str) -> None:
    result = runner.invoke(app, ["ls", "samplers"])
    assert result.exit_code == 0, result.output
    assert every_kth in result.output and "a test's own sampler" in result.output
    assert "k=3" in result.output and "draw rows k, 2k" in result.output


def test_a_new_sampler_composes_with_no_yaml_file(every_kth: str) -> None:
    assert every_kth in group_options("sampler")
    cfg = compose("train", [f"sampler={every_kth}", "sampler.k=7"])
    assert OmegaConf.to_container(cfg.sampler) == {"name": every_kth, "k": 7}
    assert cfg.trainer.mix_ratio == 0.25  # a sampler that draws: the trainer's default ratio
    validate_config(cfg)
    # and through the CLI, which checks the group option first
    result = runner.invoke(app, ["config", "train", f"sampler={every_kth}"])
    assert result.exit_code == 0, result.output
    assert f"name: {every_kth}" in result.output and "k: 3" in result.output
    sampler = create_sampler(every_kth, pool(), 4, seed=0)
    assert sampler.draw(0).tolist() == [2, 5, 8, 11] and sampler.name == every_kth


def test_a_new_samplers_range_is_checked_naming_the_key(every_kth: str) -> None:
    with pytest.raises(MixcdError, match="sampler.k must be ≥ 1, got 0"):
        validate_config(compose("train", [f"sampler={every_kth}", "sampler.k=0"]))
    with pytest.raises(MixcdError, match="sampler.k must be ≤ 50, got 51"):
        validate_config(compose("train", [f"sampler={every_kth}", "sampler.k=51"]))
    with pytest.raises(MixcdError, match="sampler.k must be ≥ 1"):
        create_sampler(every_kth, pool(), 4, seed=0, k=0)


def test_a_new_samplers_unknown_option_is_refused_naming_it(every_kth: str) -> None:
    with pytest.raises(MixcdError, match="unknown config key 'sampler.bogus'"):
        compose("train", [f"sampler={every_kth}", "sampler.bogus=1"])
    added = compose("train", [f"sampler={every_kth}", "+sampler.bogus=1"])  # forced in past Hydra
    with pytest.raises(MixcdError, match=r"unknown config key 'sampler.bogus'; keys under 'sampler': name, k"):
        validate_config(added)
    with pytest.raises(MixcdError, match="unknown option for sampler 'every_kth' 'bogus'; choose one of: k"):
        create_sampler(every_kth, pool(), 4, seed=0, bogus=1)


def test_a_forgotten_sampler_is_gone_everywhere() -> None:
    with registered():
        assert NAME in SAMPLERS and NAME in group_options("sampler")
    assert NAME not in SAMPLERS and NAME not in group_options("sampler")
    assert NAME not in runner.invoke(app, ["ls", "samplers"]).output
    with pytest.raises(MixcdError, match=f"unknown sampler '{NAME}'"):
        create_sampler(NAME, pool(), 4, seed=0)


def test_a_declaration_must_be_complete() -> None:
    @dataclass
    class NoDefault:
        k: int

    with pytest.raises(TypeError, match="without a default: k"):
        register_sampler("broken", options=NoDefault)(EveryKth)
    with pytest.raises(ValueError, match="registered twice"):
        register_sampler("mixcd")(EveryKth)
    assert "broken" not in SAMPLERS


# --------------------------------------------------------------------------- what the registry answers


def test_capabilities_are_declared_with_each_sampler() -> None:
    spec = SAMPLERS.spec
    assert [n for n in SAMPLERS.names() if not spec(n).draws] == ["none"]
    assert {n for n in SAMPLERS.names() if spec(n).needs_selection} == {"oracle_cd", "mir"}
    assert {n for n in SAMPLERS.names() if spec(n).observes_loss} == {"amr", "loss_ema"}
    assert {n for n in SAMPLERS.names() if spec(n).needs_classes()} == {"class_balanced"}
    for name in ("mixcd", "mixcd_plus", "loss_ema", "amr"):  # the partition decides
        assert spec(name).needs_classes({"partition": "class_loss"}) and not spec(name).needs_classes(
            {"partition": "aux", "aux_column": "style"})
    assert not spec("none").needs_snapshot() and spec("mixcd").needs_snapshot()
    assert not spec("random").needs_snapshot() and spec("random").needs_snapshot({"over": "eligible"})
    assert not spec("amr").needs_snapshot() and spec("amr").needs_snapshot({"partition": "loss"})
    # the class attributes the trainer reads come from the declaration
    assert spec("amr").cls.wants_loss and not spec("mixcd").cls.wants_loss and not spec("none").cls.draws


def test_sampler_options_keeps_only_the_declared_options() -> None:
    node = {"name": "mixcd", "mix_ratio": 0.25, "num_bins": 7, "memory": "recent"}  # an older run's node
    assert sampler_options(node) == {"num_bins": 7, "memory": "recent"}
    assert sampler_options({"name": "none", "mix_ratio": 0.0}) == {}
    with pytest.raises(MixcdError, match="unknown sampler 'nosuch'"):
        sampler_options({"name": "nosuch"})


def test_rehearsal_batch_is_the_one_ratio_rule() -> None:
    assert rehearsal_batch("mixcd", 0.25, 64) == 16
    assert rehearsal_batch(SAMPLERS.spec("random"), 0.125, 64) == 8
    assert rehearsal_batch("none", 0.0, 64) == 0
    with pytest.raises(MixcdError, match=r"sampler=none mixes nothing, but trainer.mix_ratio=0.5; drop the ratio"):
        rehearsal_batch("none", 0.5, 64)
    with pytest.raises(MixcdError, match=r"stages\[2\].trainer.mix_ratio=0.001 with batch_size=64 mixes in no"):
        rehearsal_batch("mixcd", 0.001, 64, "stages[2].trainer.mix_ratio")


def test_create_sampler_fills_defaults_from_the_declaration() -> None:
    s = create_sampler("mixcd_plus", pool(400), 8, seed=0)
    assert s.memory == "recent" and s.recent is not None  # mixcd_plus's one changed default
    with pytest.raises(MixcdError, match="choose one of: .*adaptive_bins.*num_bins"):
        create_sampler("mixcd", pool(400), 8, seed=0, num_binz=4)


