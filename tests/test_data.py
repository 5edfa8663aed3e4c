"""Data: Fashion-MNIST prepared offline from the Debian layout, tasks and label maps, missing data."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from mixcd_cli.data import build_experiment, make_task
from mixcd_cli.errors import MixcdError
from mixcd_cli.sources import load_source, prepare_fashion_mnist


def _idx_images(n: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return struct.pack(">IIII", 2051, n, 28, 28) + rng.integers(0, 255, (n, 28, 28), dtype=np.uint8).tobytes()


def _idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes()


@pytest.fixture
def fake_debian(tmp_path: Path) -> Path:
    """The four .gz files laid out as the Debian package ships them, with 40 / 20 samples."""
    folder = tmp_path / "debian"
    folder.mkdir()
    files = {"train-images-idx3-ubyte": _idx_images(40, 0), "t10k-images-idx3-ubyte": _idx_images(20, 1),
             "train-labels-idx1-ubyte": _idx_labels(np.arange(40) % 10),
             "t10k-labels-idx1-ubyte": _idx_labels(np.arange(20) % 10)}
    for name, data in files.items():
        with gzip.open(folder / f"{name}.gz", "wb") as f:
            f.write(data)
    return folder


def test_prepare_from_debian_layout(fake_debian: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    raw = prepare_fashion_mnist(root, fake_debian)
    assert sorted(p.name for p in raw.iterdir()) == sorted(
        ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"])
    import torchvision

    ds = torchvision.datasets.FashionMNIST(str(root), train=True, download=False)
    assert len(ds) == 40 and int(ds.targets[13]) == 3


def test_missing_dataset_says_how_to_get_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("mixcd_cli.sources.DEBIAN_FASHION_MNIST", tmp_path / "absent")
    import mixcd_cli.sources as data

    monkeypatch.setattr(data, "prepare_fashion_mnist", lambda root, debian_dir=None: root)
    with pytest.raises(MixcdError, match="apt-get install dataset-fashion-mnist"):
        load_source("fashion_mnist", str(tmp_path / "empty"), train=True)


def test_task_class_subset_and_label_modes() -> None:
    opts = {"num_classes": 6, "n_train": 120, "n_test": 60}
    shared = make_task("a", "synthetic", "", "train", [3, 5], {5: 4}, "original", options=opts)
    assert set(shared.targets.tolist()) == {3, 4} and shared.head_size == 5
    src = shared.source
    assert torch.equal(src.targets[shared.index] == 5, shared.targets == 4)
    local = make_task("b", "synthetic", "", "train", [3, 5], None, "local", options=opts)
    assert set(local.targets.tolist()) == {0, 1} and local.head_size == 2
    with pytest.raises(MixcdError, match="do not occur"):
        make_task("c", "synthetic", "", "train", [9], None, "original", options=opts)


def test_experiment_head_sizes() -> None:
    prior = {"dataset": "synthetic", "classes": [0, 1, 2], "options": {"num_classes": 6}}
    ft = {"dataset": "synthetic", "classes": [3, 4, 5], "options": {"num_classes": 6}}
    assert build_experiment(prior, ft, "shared", "").head_sizes() == {"shared": 6}
    assert build_experiment(prior, ft, "multi", "").head_sizes() == {"prior": 3, "finetune": 3}
    with pytest.raises(MixcdError, match="head mode"):
        build_experiment(prior, ft, "both", "")


def test_fingerprint_changes_with_the_pool() -> None:
    opts = {"num_classes": 6}
    a = make_task("a", "synthetic", "", "train", [0, 1], None, "original", options=opts)
    b = make_task("a", "synthetic", "", "train", [0, 2], None, "original", options=opts)
    assert a.fingerprint() != b.fingerprint()
    assert a.fingerprint() == make_task("a", "synthetic", "", "train", [0, 1], None, "original",
                                        options=opts).fingerprint()


def _image_tree(root: Path, n_per_class: int = 12, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Write root/<split>/c<k>/<i>.png and return the train images/labels in ImageFolder's order."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    images, labels = [], []
    for split in ("train", "val"):
        for k in range(classes):
            folder = root / split / f"c{k}"
            folder.mkdir(parents=True)
            for i in range(n_per_class):
                img = torch.randint(0, 256, (3, 8, 8), generator=g, dtype=torch.uint8)
                Image.fromarray(img.permute(1, 2, 0).numpy()).save(folder / f"{i:03d}.png")
                if split == "train":
                    images.append(img)
                    labels.append(k)
    return torch.stack(images), torch.tensor(labels)


def test_imagefolder_decodes_in_threads_and_prefetch_changes_nothing(tmp_path: Path) -> None:
    from mixcd_cli.data import BatchTransform, Task
    from mixcd_cli.metrics import Ledger
    from mixcd_cli.models import create_model
    from mixcd_cli.sources import ArraySource
    from mixcd_cli.training import FineTuner, TrainSettings

    images, labels = _image_tree(tmp_path / "tree")
    folder = make_task("f", "imagefolder", str(tmp_path / "tree"), "train", None, None, "original",
                       options={"image_size": 8, "workers": 4})
    assert torch.equal(folder.inputs(torch.arange(len(folder))), images)
    assert torch.equal(folder.targets, labels)
    memory = Task("m", ArraySource(images, labels, (0.5,) * 3, (0.25,) * 3), torch.arange(len(labels)), labels, 3, {})
    transform = BatchTransform((0.5,) * 3, (0.25,) * 3)
    settings = TrainSettings(steps=9, batch_size=5, lr=0.1, log_every=100)
    losses = []
    for task in (folder, memory):  # the folder task prefetches the next batch in a thread; memory does not
        torch.manual_seed(0)
        model = create_model("cnn", 3, {"shared": 3}, width=4)
        losses.append(FineTuner(model, task, "shared", transform, torch.device("cpu"), settings, Ledger()).run()
                      .final_loss)
    assert losses[0] == losses[1]

    # resuming a prefetching loop continues with the right batch: 6 steps + resume to 9 == 9 steps
    ckpt = tmp_path / "ck.pt"
    const = {"schedule": "constant", "checkpoint_every": 3}
    torch.manual_seed(0)
    full = FineTuner(create_model("cnn", 3, {"shared": 3}, width=4), folder, "shared", transform,
                     torch.device("cpu"), TrainSettings(steps=9, batch_size=5, lr=0.1, **const), Ledger()).run()
    torch.manual_seed(0)
    model = create_model("cnn", 3, {"shared": 3}, width=4)
    FineTuner(model, folder, "shared", transform, torch.device("cpu"),
              TrainSettings(steps=6, batch_size=5, lr=0.1, **const), Ledger(), checkpoint_path=ckpt).run()
    resumed = FineTuner(create_model("cnn", 3, {"shared": 3}, width=4), folder, "shared", transform,
                        torch.device("cpu"), TrainSettings(steps=9, batch_size=5, lr=0.1, **const), Ledger(),
                        checkpoint_path=ckpt).run(resume=True)
    assert resumed.resumed_from == 6 and resumed.final_loss == full.final_loss


def test_placing_data_on_a_device_leaves_the_memoised_sources_alone(compose_cfg, tiny, monkeypatch) -> None:
    """A sweep worker reuses its process: the next job must find the cached sources as loaded."""
    from mixcd_cli import sources as data_mod
    from mixcd_cli.data import build_experiment
    from mixcd_cli.recipes import place_data, plain
    from mixcd_cli.sources import ArraySource

    cfg = compose_cfg("train", tiny)
    exp = build_experiment(plain(cfg.prior), plain(cfg.finetune), str(cfg.head), str(cfg.paths.data_dir),
                           cfg.image_size)
    cached = {key: (src, src.data) for key, src in data_mod._SOURCE_CACHE.items() if isinstance(src, ArraySource)}
    some = next(iter(cached.values()))[0]
    copy = some.on_device(torch.device("cpu"))
    assert copy is not some and some.data is cached[next(iter(cached))][1]  # a copy; the cached one keeps its data
    # No GPU here: stand in for the device copy with a host clone, and for the free-memory query.
    monkeypatch.setattr(ArraySource, "on_device", lambda self, device: data_mod.replace(self, data=self.data.clone()))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (2**40, 2**40))
    place_data(exp, torch.device("cuda"), "auto")
    tasks = (exp.pool, exp.prior_test, exp.ft_train, exp.ft_test)
    originals = {id(src) for src, _ in cached.values()}
    assert all(id(t.source) not in originals for t in tasks)  # the tasks point at the copies
    for key, (src, tensor) in cached.items():
        assert data_mod._SOURCE_CACHE[key] is src and src.data is tensor  # untouched


def test_offline_download_does_not_advise_downloading(tmp_path: Path, monkeypatch) -> None:
    import torchvision.datasets as tvd

    from mixcd_cli.errors import MixcdError
    from mixcd_cli.sources import _load_torchvision

    def offline(*args, **kwargs):
        if kwargs.get("download"):
            raise OSError("[Errno -3] Temporary failure in name resolution")
        raise RuntimeError("Dataset not found or corrupted.")

    monkeypatch.setattr(tvd, "MNIST", offline)
    with pytest.raises(MixcdError) as with_download:
        _load_torchvision("mnist", tmp_path, True, download=True)
    assert "could not be downloaded" in str(with_download.value) and "download=true" not in str(with_download.value)
    with pytest.raises(MixcdError) as without:
        _load_torchvision("mnist", tmp_path, True, download=False)
    assert "not found" in str(without.value) and "download=true" in str(without.value)


SYN = {"num_classes": 4, "image_size": 8, "n_train": 40, "n_test": 20, "noise": 0.5}


def test_domain_shifts_show_the_same_images_another_way() -> None:
    base = load_source("synthetic", "unused", True, options=SYN)
    inverted = load_source("synthetic", "unused", True, options={**SYN, "domain": "invert"})
    rotated = load_source("synthetic", "unused", True, options={**SYN, "domain": "rot90"})
    assert torch.equal(inverted.data, 255 - base.data)
    assert torch.equal(rotated.data, torch.rot90(base.data, 1, dims=(-2, -1)))
    assert not torch.equal(rotated.data, base.data)
    assert torch.equal(rotated.targets, base.targets)
    assert load_source("synthetic", "unused", True, options=SYN) is base  # the base split is untouched
    with pytest.raises(MixcdError, match="domain.*choose one of"):
        load_source("synthetic", "unused", True, options={**SYN, "domain": "sideways"})


def test_a_domain_shift_and_a_relabelling_make_another_task() -> None:
    plain = make_task("a", "synthetic", "unused", "train", None, None, "local", options=SYN)
    coarse = make_task("b", "synthetic", "unused", "train", None, {0: 0, 1: 0, 2: 1, 3: 1}, "local",
                       options={**SYN, "domain": "invert"})
    assert coarse.head_size == 2 and plain.head_size == 4
    assert torch.equal(coarse.targets, plain.targets // 2)  # label_map holds with one head per task too
    assert coarse.fingerprint() != plain.fingerprint()


def test_a_label_map_can_be_set_on_the_command_line(compose_cfg) -> None:
    """A mapping assigned to a task's null label_map from the shell composes and relabels (Hydra refuses that
    assignment to a key typed Optional[dict], hence the schema's Any plus its own check)."""
    from mixcd_cli.recipes import experiment_of, validate_config

    cfg = compose_cfg("train", ["experiment=tiny", "finetune.label_map={3: 0, 4: 1, 5: 2}", "head=multi"])
    validate_config(cfg)
    exp = experiment_of(cfg)
    assert sorted(exp.ft_train.targets.unique().tolist()) == [0, 1, 2]
    assert exp.ft_train.definition["label_map"] == {3: 0, 4: 1, 5: 2}
