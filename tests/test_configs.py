"""Every shipped config composes, and config groups agree with the registries."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from mixcd_cli.hydra_app import STAGE_NAMES, compose, group_options
from mixcd_cli.recipes import validate_config
from mixcd_cli.samplers import SAMPLERS


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
    """Each sampler's declaration holds its defaults; the composed config, the schema and create_sampler all
    say the same, and no YAML file under conf/sampler/ sets an option."""
    import torch

    from mixcd_cli.hydra_app import config_dir
    from mixcd_cli.samplers import PoolInfo, create_sampler
    pool = PoolInfo(correct0=torch.ones(100, dtype=torch.bool), loss0=torch.rand(100), conf0=torch.rand(100),
                    classes=torch.arange(100) % 5, clusters=lambda k, seed: torch.arange(100) % k)
    for name in SAMPLERS.names():
        defaults = SAMPLERS.spec(name).defaults()
        composed = OmegaConf.to_container(compose("train", [f"sampler={name}"]).sampler)
        assert composed == {"name": name, **defaults}, name
        sampler = create_sampler(name, pool, 4, seed=0)
        for key, value in defaults.items():
            if key == "candidates":  # 0 means 4·b, resolved by the sampler
                value = value or 4 * 4
            if hasattr(sampler, key) and not isinstance(getattr(sampler, key), torch.Tensor):
                assert getattr(sampler, key) == value, (name, key)
    folder = config_dir() / "sampler"
    for path in folder.glob("*.yaml") if folder.is_dir() else []:
        node = OmegaConf.load(path)
        assert set(node) <= {"defaults", "name"}, f"{path} sets options: they belong to the declaration"


def test_mix_ratio_has_one_home() -> None:
    """trainer.mix_ratio alone: 0.25 for a sampler that draws, 0 for none, and a sweep over samplers keeps that."""
    for name in SAMPLERS.names():
        cfg = compose("train", [f"sampler={name}"])
        assert "mix_ratio" not in cfg.sampler
        assert cfg.trainer.mix_ratio == (0.25 if SAMPLERS.spec(name).draws else 0.0), name
    assert compose("train", ["sampler=none", "trainer.mix_ratio=0"]).trainer.mix_ratio == 0
    assert compose("train", ["sampler=mixcd", "trainer.mix_ratio=0.125"]).trainer.mix_ratio == 0.125


def test_an_older_runs_sampler_mix_ratio_reads_as_it_ran_and_a_new_one_is_refused() -> None:
    """A configuration read back from a run made when the ratio lived in the sampler node (sampler.mix_ratio)
    validates once drop_retired has read it; one composed now that sets it is refused, naming trainer.mix_ratio
    (never silently dropped: the run would ignore the ratio asked for)."""
    from mixcd_cli.errors import MixcdError
    from mixcd_cli.schema import drop_retired

    cfg = compose("train", ["sampler=mixcd", "trainer.mix_ratio=0.125"])
    old = OmegaConf.to_container(cfg, resolve=True)
    old["sampler"]["mix_ratio"] = 0.125
    with pytest.raises(MixcdError, match="sampler.mix_ratio is now trainer.mix_ratio"):
        validate_config(OmegaConf.create(old))
    validate_config(OmegaConf.create(drop_retired(old)))
    with pytest.raises(MixcdError, match="sampler.mix_ratio is now trainer.mix_ratio"):
        compose("train", ["sampler=mixcd", "sampler.mix_ratio=0.5"])
    with pytest.raises(MixcdError, match="sampler.mix_ratio is now trainer.mix_ratio"):
        validate_config(compose("train", ["sampler=mixcd", "+sampler.mix_ratio=0.5"]))


@pytest.mark.parametrize("overrides,message", [
    (["sampler=none", "trainer.mix_ratio=0.5"], "sampler=none mixes nothing, but trainer.mix_ratio=0.5"),
    (["sampler=random", "trainer.mix_ratio=0.001"], "trainer.mix_ratio=0.001 with batch_size=64 mixes in no sample"),
    (["sampler=none", "stages=[{classes: [4], trainer: {mix_ratio: 0.5}}]"],
     r"sampler=none mixes nothing, but stages\[0\].trainer.mix_ratio=0.5"),
    (["sampler=mixcd", "stages=[{classes: [4]}, {classes: [5], trainer: {mix_ratio: 0.001}}]"],
     r"stages\[1\].trainer.mix_ratio=0.001 with batch_size=64 mixes in no sample"),
])
def test_every_ratio_is_checked_by_one_rule(overrides: list[str], message: str) -> None:
    from mixcd_cli.errors import MixcdError

    with pytest.raises(MixcdError, match=message):
        validate_config(compose("train", overrides))
