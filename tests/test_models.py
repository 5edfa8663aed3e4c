"""Models: the built-in CNN, timm by name with in_chans/num_classes adapted, local weights, offline."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from mixcd_cli.errors import MixcdError
from mixcd_cli.models import create_model, load_model, save_model


def test_cnn_shapes() -> None:
    model = create_model("cnn", 1, {"prior": 3, "finetune": 4})
    x = torch.randn(2, 1, 28, 28)
    assert model(x, "prior").shape == (2, 3) and model(x, "finetune").shape == (2, 4)


def test_timm_model_adapts_channels_and_classes() -> None:
    model = create_model("timm", 1, {"shared": 7}, name="resnet18")
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 7)


def test_unknown_timm_name() -> None:
    with pytest.raises(MixcdError, match="did you mean 'resnet18'"):
        create_model("timm", 1, {"shared": 2}, name="resnet1800")


def test_offline_pretrained_fails_fast(monkeypatch) -> None:
    monkeypatch.setattr("mixcd_cli.hub.hub_reachable", lambda *a, **k: False)
    start = time.perf_counter()
    with pytest.raises(MixcdError, match="model.weights"):
        create_model("timm", 3, {"shared": 2}, name="resnet18", pretrained=True)
    assert time.perf_counter() - start < 5


def test_local_weights_load_and_mismatch(tmp_path: Path) -> None:
    import timm

    src = timm.create_model("resnet18", num_classes=0, in_chans=1)
    torch.save(src.state_dict(), tmp_path / "w.pth")
    model = create_model("timm", 1, {"shared": 2}, name="resnet18", weights=str(tmp_path / "w.pth"))
    assert torch.equal(model.backbone.conv1.weight, src.conv1.weight)
    other = timm.create_model("resnet18", num_classes=0, in_chans=3)
    torch.save(other.state_dict(), tmp_path / "w3.pth")
    with pytest.raises(MixcdError, match="do not fit"):
        create_model("timm", 1, {"shared": 2}, name="resnet18", weights=str(tmp_path / "w3.pth"))


def test_checkpoint_for_other_model_is_refused(tmp_path: Path) -> None:
    model = create_model("cnn", 1, {"shared": 3}, width=8)
    save_model(model, tmp_path / "m.pt", {"backbone": "cnn", "width": 8})
    loaded, _ = load_model(tmp_path / "m.pt", {"backbone": "cnn", "width": 8}, 1)
    assert torch.equal(loaded.heads["shared"].weight, model.heads["shared"].weight)
    with pytest.raises(MixcdError, match="was made for model"):
        load_model(tmp_path / "m.pt", {"backbone": "cnn", "width": 16}, 1)
    (tmp_path / "bad.pt").write_bytes((tmp_path / "m.pt").read_bytes()[:100])
    with pytest.raises(MixcdError, match="corrupt or truncated"):
        load_model(tmp_path / "bad.pt", {"backbone": "cnn", "width": 8}, 1)
