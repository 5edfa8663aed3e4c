"""What is written can be trusted: strict JSON, verified snapshots, stable fingerprints, shared caches,
exact resume after a kill during evaluation, and eval that evaluates the run as it was trained."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from as_json import run_eval, run_train

from mixcd_cli.artifacts import atomic_torch_save, file_digest, json_text, write_json
from mixcd_cli.errors import MixcdError


def test_json_is_strict(tmp_path: Path) -> None:
    write_json({"a": float("nan"), "b": [1.0, float("inf")], "c": torch.tensor([0.5, float("nan")])},
               tmp_path / "m.json")
    text = (tmp_path / "m.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"a": None, "b": [1.0, None], "c": [0.5, None]}
    assert json_text({"x": float("-inf")}) == '{"x": null}'


def test_same_weights_saved_twice_have_one_fingerprint(tmp_path: Path) -> None:
    state = {"model": torch.nn.Linear(3, 2).state_dict(), "spec": {"backbone": "x"}}
    atomic_torch_save(state, tmp_path / "a" / "model.pt")
    atomic_torch_save(state, tmp_path / "b" / "model.pt")
    assert file_digest(tmp_path / "a" / "model.pt") == file_digest(tmp_path / "b" / "model.pt")


def test_cache_files_follow_the_umask(compose_cfg, tiny: list[str], tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        run_train(compose_cfg("train", [*tiny, "trainer.steps=2"]), tmp_path / "r")
    finally:
        os.umask(old)
    cache = Path(tiny[1].split("=", 1)[1]) / "cache"
    snapshot = next((cache / "snapshots").iterdir())
    assert stat.S_IMODE(snapshot.stat().st_mode) == 0o755
    for f in [*snapshot.iterdir(), next((cache / "prior").iterdir()) / "model.pt"]:
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f


def test_a_snapshot_with_an_altered_value_is_refused(compose_cfg, tiny: list[str], tmp_path: Path) -> None:
    run_train(compose_cfg("train", [*tiny, "trainer.steps=2"]), tmp_path / "r1")
    cache = Path(tiny[1].split("=", 1)[1]) / "cache"
    snapshot = next((cache / "snapshots").iterdir())
    column = snapshot / "pool_correct.npy"
    values = np.load(column)
    values[0] = not values[0]  # prior correctness of one sample inverted, shapes untouched
    np.save(column, values)
    with pytest.raises(MixcdError, match="does not match its checksum"):
        run_train(compose_cfg("train", [*tiny, "trainer.steps=2"]), tmp_path / "r2")


def test_kill_during_evaluation_then_resume_gives_identical_metrics(compose_cfg, tiny: list[str], tmp_path: Path,
                                                                    monkeypatch) -> None:
    import mixcd_cli.recipes.train as stages

    args = [*tiny, "sampler=mixcd", "trainer.steps=12", "trainer.checkpoint_every=0"]
    ref = run_train(compose_cfg("train", args), tmp_path / "ref")
    real = stages.evaluate

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(stages, "evaluate", killed)
    with pytest.raises(KeyboardInterrupt):
        run_train(compose_cfg("train", args), tmp_path / "cut")
    assert (tmp_path / "cut" / "model.pt").is_file() and not (tmp_path / "cut" / "metrics.json").exists()
    monkeypatch.setattr(stages, "evaluate", real)
    resumed = run_train(compose_cfg("train", args), tmp_path / "cut")
    assert resumed["resumed_from"] == 12
    for key in ("pre_acc", "ft_acc", "final_loss", "hit_rate", "signal_rate", "rehearsal_counts", "categories",
                "sampler_final"):
        assert resumed[key] == ref[key], key
    assert resumed["ledger"]["training_passes"] == ref["ledger"]["training_passes"]
    assert json.loads((tmp_path / "cut" / "metrics.json").read_text())["final_loss"] == ref["final_loss"]


def test_eval_uses_the_runs_own_configuration(compose_cfg, tiny: list[str], tmp_path: Path) -> None:
    trained = run_train(compose_cfg("train", [*tiny, "finetune.classes=[4,5]", "trainer.steps=10"]), tmp_path / "R")
    paths = [o for o in tiny if o.startswith("paths.")]
    # no class overrides given: the run's own classes are used, not eval's defaults
    ev = run_eval(compose_cfg("eval", [*paths, f"run_dir={tmp_path / 'R'}"]), tmp_path / "E",
                  overrides=[*paths, f"run_dir={tmp_path / 'R'}"])
    assert ev["ft_acc"] == trained["ft_acc"] and ev["pre_acc"] == trained["pre_acc"]
    assert (tmp_path / "E" / "metrics.json").is_file()
    assert json.loads((tmp_path / "R" / "metrics.json").read_text())["stage"] == "train"  # not overwritten
    # what only changes evaluation is allowed
    ok = [*tiny, "eval.batch_size=7", f"run_dir={tmp_path / 'R'}"]
    assert run_eval(compose_cfg("eval", ok), tmp_path / "E2", overrides=ok)["ft_acc"] == trained["ft_acc"]
    # what would evaluate something else is refused, naming the key
    bad = [*tiny, "finetune.classes=[1,2]", f"run_dir={tmp_path / 'R'}"]
    with pytest.raises(MixcdError, match=r"finetune.classes=\[1, 2\] differs"):
        run_eval(compose_cfg("eval", bad), tmp_path / "E3", overrides=bad)
    with pytest.raises(MixcdError, match="never into the run it evaluates"):
        run_eval(compose_cfg("eval", [*tiny, f"run_dir={tmp_path / 'R'}"]), tmp_path / "R", overrides=[])


def test_eval_reads_a_run_made_before_later_settings_existed(compose_cfg, tiny: list[str], tmp_path: Path) -> None:
    """A run folder written before rehearsal.pool, stages, logger or optimized_metric existed evaluates as it ran."""
    from omegaconf import OmegaConf

    trained = run_train(compose_cfg("train", [*tiny, "trainer.steps=10"]), tmp_path / "R")
    config = OmegaConf.load(tmp_path / "R" / "config.yaml")
    for key in ("rehearsal", "stages", "logger", "optimized_metric"):
        config.pop(key)
    OmegaConf.save(config, tmp_path / "R" / "config.yaml")
    paths = [o for o in tiny if o.startswith("paths.")]
    args = [*paths, f"run_dir={tmp_path / 'R'}"]
    ev = run_eval(compose_cfg("eval", args), tmp_path / "E", overrides=args)
    assert ev["pre_acc"] == trained["pre_acc"] and ev["ft_acc"] == trained["ft_acc"]
