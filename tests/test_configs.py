"""Every shipped config composes, and config groups agree with the registries."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from mixcd_cli.hydra_app import STAGE_NAMES, compose, group_options
from mixcd_cli.samplers import SAMPLERS
from mixcd_cli.stages import validate_config


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_every_stage_composes(stage: str) -> None:
    cfg = compose(stage, ["run_dir=/some/run"] if stage == "eval" else [])
    assert cfg.stage == stage
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    validate_config(cfg)


@pytest.mark.parametrize("group", ["sampler", "model", "experiment", "trainer", "pretrain", "paths"])
def test_every_group_option_composes(group: str) -> None:
    for option in group_options(group):
        cfg = compose("train", [f"{group}={option}"])
        OmegaConf.to_container(cfg, resolve=True)
        validate_config(cfg)


def test_every_task_composes_in_both_roles() -> None:
    for option in group_options("task"):
        for role in ("prior", "finetune"):
            cfg = compose("train", [f"task@{role}={option}"])
            assert cfg[role].name == option


def test_sampler_configs_match_registry() -> None:
    configs = set(group_options("sampler"))
    assert configs == set(SAMPLERS.names())
    for name in configs:
        assert compose("train", [f"sampler={name}"]).sampler.name == name


def test_paths_never_depend_on_cwd(tmp_path, monkeypatch) -> None:
    before = compose("train", []).paths
    monkeypatch.chdir(tmp_path)
    after = compose("train", []).paths
    assert before == after
    assert str(after.output_dir).startswith("/")


def test_class_split_is_expressible_as_overrides() -> None:
    cfg = compose("train", ["prior.classes=[0,2,4]", "finetune.classes=[1,3]", "head=multi"])
    assert list(cfg.prior.classes) == [0, 2, 4] and list(cfg.finetune.classes) == [1, 3]
    assert cfg.head == "multi"


def test_none_sampler_defaults_to_no_mixing() -> None:
    assert compose("train", ["sampler=none"]).trainer.mix_ratio == 0


def test_sampler_defaults_have_one_source() -> None:
    """The schema holds each sampler's defaults; the composed config, create_sampler and the YAML's
    comments all say the same."""
    import re

    import torch

    from mixcd_cli.hydra_app import config_dir
    from mixcd_cli.samplers import PoolInfo, create_sampler
    from mixcd_cli.schema import SAMPLER_SCHEMAS, sampler_defaults

    pool = PoolInfo(torch.arange(100) % 5, torch.ones(100, dtype=torch.bool), torch.rand(100), torch.rand(100),
                    clusters=lambda k, seed: torch.arange(100) % k)
    for name in SAMPLER_SCHEMAS:
        defaults = sampler_defaults(name)
        composed = OmegaConf.to_container(compose("train", [f"sampler={name}"]).sampler)
        assert {k: v for k, v in composed.items() if k not in ("name", "mix_ratio")} == defaults, name
        sampler = create_sampler(name, pool, 4, seed=0)
        for key, value in defaults.items():
            if key == "candidates":  # 0 means 4·b, resolved by the sampler
                value = value or 4 * 4
            if hasattr(sampler, key) and not isinstance(getattr(sampler, key), torch.Tensor):
                assert getattr(sampler, key) == value, (name, key)
        text = (config_dir() / "sampler" / f"{name}.yaml").read_text()
        for key, shown in re.findall(r"(\w+)=([\w\-]+(?:\.\d+)?)", "\n".join(
                line for line in text.splitlines() if line.startswith("#"))):
            if key in defaults:
                value = defaults[key]
                assert shown == ("null" if value is None else str(value).lower() if isinstance(value, bool)
                                 else str(value)), (name, key)
