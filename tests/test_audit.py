"""The audited hit rate: an eval-mode check of the drawn rows that measures, and never steers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from as_json import run_train

from mixcd_cli.data import BatchTransform, Task
from mixcd_cli.metrics import Ledger
from mixcd_cli.models import create_model
from mixcd_cli.samplers import PoolInfo, create_sampler
from mixcd_cli.sources import ArraySource
from mixcd_cli.training import FineTuner, Rehearsal, TrainSettings


def _task(seed: int, shift: float, n: int = 96) -> Task:
    g = torch.Generator().manual_seed(seed)
    data = (torch.rand(n, 1, 8, 8, generator=g) * 128 + shift).clamp(0, 255).to(torch.uint8)
    targets = torch.randint(0, 3, (n,), generator=g)
    return Task(f"t{seed}", ArraySource(data, targets, (0.5,), (0.25,)), torch.arange(n), targets, 3, {})


def _one_step_counts(norm: str) -> dict[str, int]:
    """One step from a briefly pretrained θ0 with every pool row eligible: `called` is what train mode says
    is wrong now, `true` what eval mode says, for the same weights."""
    torch.manual_seed(0)
    model = create_model("cnn", 1, {"shared": 3}, width=8, norm=norm)
    ft, pool = _task(1, 0.0), _task(2, 120.0)  # the pool looks unlike the fine-tune batch
    transform = BatchTransform((0.5,), (0.25,))
    FineTuner(model, pool, "shared", transform, torch.device("cpu"),
              TrainSettings(steps=30, batch_size=16, lr=0.05, purpose="pretrain"), Ledger()).run()
    b = 48
    info = PoolInfo(classes=pool.targets, correct0=torch.ones(len(pool), dtype=torch.bool),
                    loss0=torch.zeros(len(pool)), conf0=torch.ones(len(pool)))
    sampler = create_sampler("random", info, b, seed=0)
    settings = TrainSettings(steps=1, batch_size=16, rehearsal_batch=b, lr=0.01, log_every=1, audit_every=1)
    rehearsal = Rehearsal(sampler, pool, "shared", torch.ones(len(pool), dtype=torch.bool))
    return FineTuner(model, ft, "shared", transform, torch.device("cpu"), settings, Ledger(), rehearsal).run().counts


def test_a_per_sample_norm_gives_a_signal_equal_to_the_eval_mode_truth() -> None:
    for norm in ("group", "layer", "none"):
        c = _one_step_counts(norm)
        assert c["audited"] == c["drawn"] == 48, norm
        assert c["true"] > 0, norm  # an untrained model gets rows wrong: the equality below is not vacuous
        assert c["called"] == c["true"] == c["both"], (norm, c)


def test_batchnorm_makes_the_train_mode_signal_disagree_with_the_truth() -> None:
    c = _one_step_counts("batch")
    assert c["audited"] == 48
    assert not c["called"] == c["true"] == c["both"], c


def test_frozen_batchnorm_gives_a_per_sample_signal() -> None:
    torch.manual_seed(0)
    model = create_model("cnn", 1, {"shared": 3}, width=8, norm="batch")
    assert model.freeze_batchnorm() == 3
    model.train()
    bn = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(not m.training and not m.weight.requires_grad for m in bn)
    x = torch.randn(10, 1, 8, 8)
    alone = model(x[:1])
    assert torch.allclose(model(x)[:1], alone, atol=1e-6)  # no batch dependence left
    before = bn[0].running_mean.clone()
    model(x * 3 + 1)
    assert torch.equal(bn[0].running_mean, before)


@pytest.mark.parametrize("sampler", ["mixcd", "mir"])
def test_the_audit_changes_no_draw_no_weight_and_no_training_pass(sampler: str, compose_cfg, tiny: list[str],
                                                                  tmp_path: Path) -> None:
    runs = {}
    for every in (0, 1):
        args = [*tiny, "model.norm=batch", f"sampler={sampler}", f"trainer.audit_every={every}"]
        runs[every] = (run_train(compose_cfg("train", args), tmp_path / str(every)),
                       torch.load(tmp_path / str(every) / "checkpoints" / "last.pt", weights_only=False))
    (off, ck_off), (on, ck_on) = runs[0], runs[1]
    for name, tensor in ck_off["shared"]["model"].items():
        assert torch.equal(tensor, ck_on["shared"]["model"][name]), name
    # the sampler's state holds its generator: equal states mean equal draws
    assert repr(ck_off["ranks"][0]["sampler"]) == repr(ck_on["ranks"][0]["sampler"])
    assert off["ledger"]["training_passes"] == on["ledger"]["training_passes"]
    assert off["ledger"]["forward"]["audit"] == 0 < on["ledger"]["forward"]["audit"]
    assert on["ledger"]["forward"]["audit"] == on["rehearsal_counts"]["audited"] == on["rehearsal_counts"]["drawn"]
    assert off["signal_rate"] == on["signal_rate"] and off["hit_rate"] is None and on["hit_rate"] is not None
    assert (off["pre_acc"], off["ft_acc"]) == (on["pre_acc"], on["ft_acc"])


def test_frozen_batchnorm_in_a_timm_model_and_through_the_config(compose_cfg, tiny: list[str], tmp_path: Path) -> None:
    pytest.importorskip("timm")
    torch.manual_seed(0)
    model = create_model("timm", 1, {"shared": 3}, name="resnet18")
    assert model.freeze_batchnorm() == 20  # README: resnet18 carries 20 BatchNorm layers
    frozen = run_train(compose_cfg("train", [*tiny, "model=resnet18", "model.bn=frozen", "sampler=random",
                                             "trainer.steps=4"]), tmp_path / "frozen")
    # a frozen run starts from the same θ0 as a training-BN one: bn is not part of the model's identity
    trained = run_train(compose_cfg("train", [*tiny, "model=resnet18", "sampler=random", "trainer.steps=4"]),
                        tmp_path / "train")
    assert frozen["prior_checkpoint"] == trained["prior_checkpoint"]
    assert frozen["signal_precision"] in (None, 1.0) and frozen["signal_recall"] in (None, 1.0)
    saved = torch.load(tmp_path / "frozen" / "model.pt", weights_only=False)["model"]
    prior = torch.load(frozen["prior_checkpoint"], weights_only=False)["model"]
    for key in ("backbone.bn1.running_mean", "backbone.bn1.weight", "backbone.layer1.0.bn1.running_var"):
        assert torch.equal(saved[key], prior[key]), key
    assert not torch.equal(saved["backbone.conv1.weight"], prior["backbone.conv1.weight"])
