"""Short end-to-end runs on the real Fashion-MNIST (from the Debian package)."""

from __future__ import annotations

from pathlib import Path

import pytest
from as_json import run_train


@pytest.mark.fmnist
def test_fmnist_forgetting_recovery_and_hit_rate(compose_cfg, tmp_path: Path) -> None:
    """none forgets, random recovers, mixcd finds more collateral damage than random at the same ratio."""
    base = [f"paths.output_dir={tmp_path / 'out'}", f"paths.data_dir={tmp_path / 'data'}",
            "prior.limit_train=6000", "pretrain.epochs=4", "trainer.steps=150", "trainer.audit_every=1"]
    none = run_train(compose_cfg("train", [*base, "sampler=none"]), tmp_path / "none")
    rand = run_train(compose_cfg("train", [*base, "sampler=random"]), tmp_path / "random")
    mixcd = run_train(compose_cfg("train", [*base, "sampler=mixcd"]), tmp_path / "mixcd")
    assert none["pre_acc0"] > 0.75
    assert none["forgetting"] > 0.2  # plain fine-tuning forgets the prior classes
    assert rand["pre_acc"] > none["pre_acc"] + 0.1  # rehearsal recovers part of them (150 steps, r = 1/4)
    assert rand["ft_acc"] > 0.4  # twice chance after 150 steps (GroupNorm learns the new classes slower than BatchNorm)
    assert rand["cached"] == {"prior": True, "snapshot": True}
    assert mixcd["mix_ratio"] == rand["mix_ratio"]
    assert mixcd["ledger"]["training_passes"] == rand["ledger"]["training_passes"]
    # audited every step: the true share of drawn rows that were collateral damage
    assert mixcd["hit_rate"] > rand["hit_rate"] + 0.05, (mixcd["hit_rate"], rand["hit_rate"])
    # GroupNorm (the default): what the sampler saw is the truth
    assert mixcd["signal_precision"] == mixcd["signal_recall"] == 1.0
