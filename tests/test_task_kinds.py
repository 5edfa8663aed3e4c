"""The objective seam is real: a task kind declared in this file alone runs through every stage.

The kind is a regression toy: each image's two halves have a brightness, the targets are those two
levels, the loss is the squared error and a row is "wrong" when either level is off by more than a
tolerance. Its dataset, objective and registrations live here; nothing else in the package knows it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from mixcd_cli.errors import MixcdError
from mixcd_cli.objectives import OBJECTIVES, Objective
from mixcd_cli.recipes import run_eval, run_pretrain, run_snapshot, run_train
from mixcd_cli.sources import DATASETS, ArraySource

KIND = "toy_levels"
TOLERANCE = 0.15


@dataclass
class LevelSource(ArraySource):
    """Images whose left and right halves have their own brightness; targets: the two levels, float."""

    kind: str = KIND


def make_levels(root: str | None = None, train: bool = True, n_train: int = 600, n_test: int = 300,
                swap: bool = False, data_seed: int = 7, **_: Any) -> LevelSource:
    g = torch.Generator().manual_seed(data_seed + (0 if train else 1))
    n = n_train if train else n_test
    levels = torch.rand((n, 2), generator=g)
    x = torch.empty((n, 1, 8, 8))
    x[:, 0, :, :4] = levels[:, :1, None]
    x[:, 0, :, 4:] = levels[:, 1:, None]
    x = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    # the fine-tuning task reads the same kind of images the other way round: learning it undoes θ0
    targets = levels.flip(1) if swap else levels
    return LevelSource((x * 255).round().to(torch.uint8), targets, (0.5,), (0.25,))


class Levels(Objective):
    """Squared error per row; wrong when either level is off by more than the tolerance."""

    name = KIND

    def head_size(self, targets: torch.Tensor) -> int:
        return int(targets.shape[1])

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, reduction: str = "none") -> torch.Tensor:
        per_row = (outputs.float() - targets).pow(2).mean(1)
        return {"none": per_row, "sum": per_row.sum(), "mean": per_row.mean()}[reduction]

    def wrong(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (outputs.float() - targets).abs().amax(1) > TOLERANCE

    def confidence(self, outputs: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        return torch.ones(outputs.shape[0])


@pytest.fixture
def levels_kind():
    DATASETS.register("toy_levels", help="two brightness levels per image (a test's own task kind)")(make_levels)
    OBJECTIVES.register(KIND, help="regression toy")(Levels)
    yield
    DATASETS.unregister("toy_levels")
    OBJECTIVES.unregister(KIND)


def _levels(tiny: list[str]) -> list[str]:
    return [*tiny, "prior.dataset=toy_levels", "prior.classes=null",
            "finetune.dataset=toy_levels", "finetune.classes=null", "+finetune.options.swap=true",
            "pretrain.epochs=20", "pretrain.lr=0.02", "trainer.lr=0.02", "trainer.steps=40"]


def test_a_kind_declared_in_a_test_runs_every_stage(levels_kind, compose_cfg, tiny: list[str],
                                                    tmp_path: Path) -> None:
    over = _levels(tiny)
    pre = run_pretrain(compose_cfg("pretrain", over), tmp_path / "p")
    assert pre.pre_acc0 > 0.5  # θ0 gets most rows within the tolerance: the kind's "correct" is in use
    snap = run_snapshot(compose_cfg("snapshot", over), tmp_path / "s")
    folder = Path(snap.snapshot)
    assert not (folder / "pool_pred.npy").exists() and not (folder / "pool_target.npy").exists()
    none = run_train(compose_cfg("train", [*over, "sampler=none"]), tmp_path / "none")
    assert none.retention.forgetting > 0.2  # swapping the levels undoes θ0
    results = {}
    for sampler, options in (("mixcd", []), ("mir", []), ("oracle_cd", ["sampler.refresh_every=10"])):
        results[sampler] = res = run_train(compose_cfg("train", [*over, f"sampler={sampler}", *options,
                                                                 "trainer.mix_ratio=0.5", "trainer.audit_every=1"]),
                                           tmp_path / sampler)
        assert res.retention.pre_acc > none.retention.pre_acc, sampler  # rehearsal of the kind's rows protects θ0
        assert res.rehearsal_counts["audited"] == 40 * 8 and res.signal.signal_precision == 1.0, sampler
        if sampler != "mixcd":
            assert res.ledger.forward["selection"] > 0, sampler
    ev = run_eval(compose_cfg("eval", [*over, f"run_dir={tmp_path / 'mixcd'}"]), tmp_path / "e")
    assert ev.retention.pre_acc == pytest.approx(results["mixcd"].retention.pre_acc)
    assert ev.retention.categories.cd_rate_by_class is None  # the kind has no classes


@pytest.mark.parametrize("sampler", ["class_balanced", "mixcd sampler.partition=class"])
def test_options_that_need_classes_are_refused_for_a_kind_without(levels_kind, compose_cfg, tiny: list[str],
                                                                  tmp_path: Path, sampler: str) -> None:
    over = [*_levels(tiny), *[f"sampler={sampler.split()[0]}", *sampler.split()[1:]], "trainer.steps=2"]
    with pytest.raises(MixcdError, match="needs a class column"):
        run_train(compose_cfg("train", over), tmp_path / "t")


def test_class_choices_are_refused_for_a_kind_without(levels_kind, compose_cfg, tiny: list[str],
                                                      tmp_path: Path) -> None:
    over = [*_levels(tiny), "prior.classes=[0,1]"]
    with pytest.raises(MixcdError, match="task kind 'toy_levels' has none"):
        run_pretrain(compose_cfg("pretrain", over), tmp_path / "p")
