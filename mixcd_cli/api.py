"""mixcd's public API: snapshots, samplers, the free signal, the ledger and the audit, for any training loop.

Everything named in ``__all__`` is stable: it changes only with a new major version of the package (semantic
versioning, from 0.2.0 on); anything else in ``mixcd_cli`` is internal. mixcd's own runner builds its samplers,
counts its hits and reads its per-row quantities through these names (docs/design.md §13).

The loop, in four calls — a snapshot of the model the stage starts from, a sampler on it, then per step
``draw`` before the forward pass and ``observe`` with that same pass's "wrong now":

>>> import torch
>>> from mixcd_cli import api
>>> snap = api.PoolSnapshot.from_columns(correct=torch.tensor([True, True, False, True]),
...                                      loss=torch.tensor([0.1, 0.9, 2.0, 0.4]))
>>> sampler = api.create_sampler("mixcd", snap, batch_size=2, seed=0, num_bins=2)
>>> rows = sampler.draw(step=0)
>>> rows.shape
torch.Size([2])
>>> sampler.observe(rows, wrong=torch.tensor([True, False]))
>>> audit = api.HitAudit(snap.correct)
>>> audit.add(rows, wrong=torch.tensor([True, False]), audit_wrong=torch.tensor([True, False]))
{'drawn': 2, 'signal': 1, 'audited': 2, 'true': 1, 'called': 1, 'both': 1}
>>> audit.quality()["hit_rate"]
0.5

A sampler's state carries the pool it was made for; loading it into a sampler of another pool is refused:

>>> other = api.create_sampler("mixcd", api.PoolSnapshot.from_columns(correct=torch.ones(5, dtype=torch.bool),
...                            loss=torch.rand(5)), batch_size=2, seed=0)
>>> other.load_state_dict(sampler.state_dict())  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
mixcd_cli.errors.MixcdError: this sampler state was saved for another pool (4 rows, ...); ...5 rows...
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .artifacts import config_digest, file_lock, read_json
from .errors import MixcdError
from .metrics import COUNTERS, HitAudit, Ledger, signal_quality
from .objectives import OBJECTIVES, Objective
from .samplers import SAMPLERS, PoolInfo, RehearsalSampler, SelectionContext, rehearsal_batch
from .samplers import create_sampler as _create_registered
from .snapshot import verify_checksums, write_snapshot

__all__ = ["COUNTERS", "HitAudit", "Ledger", "MixcdError", "Objective", "PoolSnapshot", "RehearsalSampler",
           "SelectionContext", "compute_snapshot", "create_sampler", "hf_aligned", "hf_forward", "load_snapshot",
           "model_digest", "objective", "pool_digest", "rehearsal_batch", "sampler_names", "signal_quality"]

IGNORE = -100  # Hugging Face's label for a position that is not predicted


# --------------------------------------------------------------------------------------------- per-row quantities


def objective(kind: str = "classification", **options: Any) -> Objective:
    """The per-row quantities of task kind ``kind`` (``classification``, ``causal_lm``, ``seq2seq``, ...): its
    ``loss(outputs, targets)``, ``wrong`` (the free signal), ``correct``, ``confidence`` and ``columns``.

    ``options`` go to the kind (generation kinds: ``correct="exact"|"token_accuracy"``, ``threshold``,
    ``confidence="mean"|"min"``). Outputs and targets are aligned row by row, position by position: for a Hugging
    Face causal LM pass them through `hf_aligned` first.

    >>> obj = objective("classification")
    >>> obj.wrong(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0])).tolist()
    [False, True]
    """
    return OBJECTIVES.get(kind)(**options)


def hf_aligned(logits: torch.Tensor, labels: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A Hugging Face model's logits and labels, aligned as `objective` reads them.

    A causal LM's ``labels`` repeat ``input_ids`` (−100 where not predicted) and position t's logits score token
    t+1, so both shift by one; a seq2seq model's logits already score ``labels`` position by position, and a
    classifier's are one row each.

    >>> out, y = hf_aligned(torch.zeros(1, 4, 3), torch.tensor([[-100, 2, 1, -100]]), "causal_lm")
    >>> out.shape, y.tolist()
    (torch.Size([1, 3, 3]), [[2, 1, -100]])
    """
    if kind == "causal_lm":
        return logits[:, :-1], labels[:, 1:]
    return logits, labels


MODEL_KEYS_DROPPED = ("labels", "completion_mask", "assistant_masks", "seq_lengths")


def hf_forward(model: nn.Module, batch: Mapping[str, torch.Tensor], kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass of a Hugging Face model over a collated batch → (outputs, targets) aligned for
    `objective`. Keys the model does not take (labels and the masks TRL's collators carry) stay out of the call."""
    if "labels" not in batch:
        raise MixcdError(f"the batch has no 'labels' (keys: {', '.join(sorted(batch))}); mixcd reads each row's "
                         "correctness from its labels")
    inputs = {k: v for k, v in batch.items() if k not in MODEL_KEYS_DROPPED}
    if kind == "causal_lm":
        inputs["use_cache"] = False
    if kind == "seq2seq" and "decoder_input_ids" not in inputs:
        # what the model itself does with labels: the decoder reads them shifted right behind its start token
        inner = getattr(model, "module", model)  # DDP wraps the model
        inner = inner.get_base_model() if callable(getattr(inner, "get_base_model", None)) else inner
        inputs["decoder_input_ids"] = inner.prepare_decoder_input_ids_from_labels(labels=batch["labels"])
    logits = model(**inputs).logits
    return hf_aligned(logits, batch["labels"], kind)


# --------------------------------------------------------------------------------------------- fingerprints


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: hash its bits
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def model_digest(model: nn.Module) -> str:
    """A fingerprint of a model's weights (names, shapes, dtypes and bytes).

    A ``peft`` model whose adapters change nothing yet (every LoRA B matrix zero, as peft creates them, and every
    ``modules_to_save`` copy equal to its original) has its base model's fingerprint, so a snapshot of the base
    model describes the adapted model at step 0; once an adapter has moved, the adapters are part of the
    fingerprint.
    """
    state = model.state_dict()
    adapters = {k for k in state if "lora_" in k}
    fresh = all(not bool(state[k].any()) for k in adapters if "lora_B" in k or "lora_embedding_B" in k)
    h = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        if fresh and name in adapters:
            continue
        if ".modules_to_save." in name:  # peft's trainable copy of a module: part of the model once it moved
            original = state.get(re.sub(r"\.modules_to_save\.[^.]+\.", ".original_module.", name))
            if original is not None and torch.equal(original, tensor):
                continue
        # peft's wrappers hold the same tensors under other names: read them as the base model names them
        for wrapper in ("base_model.model.", ".base_layer.", ".original_module."):
            name = name.replace(wrapper, "." if wrapper.startswith(".") else "")
        h.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        h.update(_tensor_bytes(tensor))
    return h.hexdigest()[:16]


def _value_bytes(value: Any) -> bytes:
    if isinstance(value, torch.Tensor):
        return _tensor_bytes(value)
    if isinstance(value, np.ndarray):
        return value.tobytes()
    return repr(value).encode()


def pool_digest(pool: Sequence[Any]) -> str:
    """A fingerprint of a pool's rows, in order: a sequence of feature dicts (a ``datasets.Dataset`` will do)."""
    h = hashlib.sha256(str(len(pool)).encode())
    for i in range(len(pool)):
        row = pool[i]
        if isinstance(row, Mapping):
            for key in sorted(row):
                h.update(key.encode())
                h.update(_value_bytes(row[key]))
        else:
            h.update(_value_bytes(row))
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------- snapshots


@dataclass
class PoolSnapshot:
    """Per pool row, under the model the stage starts from: correct, loss, confidence (and classes, where the
    kind has them), with the fingerprints of that model and that pool."""

    correct: torch.Tensor  # bool
    loss: torch.Tensor  # float32
    conf: torch.Tensor  # float32
    classes: torch.Tensor | None = None
    kind: str = "classification"
    model: str | None = None  # `model_digest` of the snapshot's model
    pool: str | None = None  # `pool_digest` of its pool
    aux: dict[str, torch.Tensor] = field(default_factory=dict)
    path: Path | None = None

    def __len__(self) -> int:
        return int(self.correct.numel())

    @classmethod
    def from_columns(cls, correct: torch.Tensor, loss: torch.Tensor, conf: torch.Tensor | None = None,
                     **facts: Any) -> PoolSnapshot:
        """A snapshot from columns you computed yourself (``conf`` defaults to exp(−loss))."""
        correct, loss = correct.bool().cpu(), loss.float().cpu()
        conf = (-loss).exp() if conf is None else conf.float().cpu()
        if not len(correct) == len(loss) == len(conf):
            raise MixcdError("snapshot columns have different lengths")
        return cls(correct, loss, conf, **facts)

    def info(self) -> PoolInfo:
        """What samplers read of the pool."""
        return PoolInfo(correct0=self.correct, loss0=self.loss, conf0=self.conf, classes=self.classes,
                        aux=dict(self.aux))

    def verify(self, model: nn.Module | None = None, pool: Sequence[Any] | None = None) -> None:
        """Refuse, in one `MixcdError`, a snapshot made for another model or another pool."""
        if pool is not None:
            if len(pool) != len(self):
                raise MixcdError(f"the snapshot covers {len(self)} pool rows, the pool has {len(pool)}; it was made "
                                 "for another pool: compute it again")
            if self.pool is not None and pool_digest(pool) != self.pool:
                raise MixcdError(f"the snapshot was made for another pool (fingerprint {self.pool} ≠ "
                                 f"{pool_digest(pool)}): same size, other rows or order; compute it again")
        if model is not None and self.model is not None and model_digest(model) != self.model:
            raise MixcdError(f"the snapshot was made for another model (fingerprint {self.model} ≠ "
                             f"{model_digest(model)}); compute it with the model training starts from")

    def save(self, folder: Path) -> None:
        """Write the snapshot as the runner writes its own (.npy columns, checksums in meta.json), atomically."""
        cols = {"loss": self.loss, "conf": self.conf, "correct": self.correct,
                "index": torch.arange(len(self), dtype=torch.int64)}
        if self.classes is not None:
            cols["target"] = self.classes
        write_snapshot(Path(folder), {"kind": self.kind, "model": self.model, "pool_fingerprint": self.pool,
                                      "rows": len(self), "api": 1}, cols, {})
        self.path = Path(folder)


def load_snapshot(folder: Path, model: nn.Module | None = None, pool: Sequence[Any] | None = None) -> PoolSnapshot:
    """Read a snapshot `PoolSnapshot.save` wrote, checking every column's checksum, then (given) the model and pool
    it must describe."""
    folder = Path(folder)
    meta = read_json(folder / "meta.json", what="snapshot metadata")
    if meta.get("api") != 1:
        raise MixcdError(f"{folder} is not a snapshot of mixcd's API (the runner's own live in its cache)")
    verify_checksums(folder, meta)
    cols = {name.removeprefix("pool_").removesuffix(".npy"): torch.from_numpy(np.load(folder / name))
            for name in meta["checksums"] if (folder / name).is_file()}
    if not {"loss", "conf", "correct"} <= set(cols):
        raise MixcdError(f"snapshot {folder} is incomplete; delete the folder to compute it again")
    snap = PoolSnapshot(cols["correct"].bool(), cols["loss"].float(), cols["conf"].float(),
                        cols["target"].long() if "target" in cols else None, str(meta.get("kind")),
                        meta.get("model"), meta.get("pool_fingerprint"), path=folder)
    snap.verify(model, pool)
    return snap


def compute_snapshot(model: nn.Module, pool: Sequence[Any], collate: Callable[[list[Any]], Mapping[str, Any]], *,
                     kind: str = "causal_lm", batch_size: int = 64, device: torch.device | str | None = None,
                     forward: Callable[..., tuple[torch.Tensor, torch.Tensor]] = hf_forward,
                     cache_dir: Path | None = None, ledger: Ledger | None = None,
                     **objective_options: Any) -> PoolSnapshot:
    """The snapshot of ``model`` over ``pool``: one eval-mode, no-grad pass, or read from ``cache_dir``.

    ``pool`` is a sequence of rows (feature dicts), ``collate`` turns a list of rows into the model's batch (your
    trainer's data collator), ``forward(model, batch, kind)`` returns (outputs, targets) aligned for
    `objective` (`hf_forward` for Hugging Face models). In ``cache_dir`` the snapshot is kept under a key of the
    model's weights, the pool's rows, the kind and its options, and verified on every read; parallel processes wait
    on a lock instead of computing it twice. The pass is charged to ``ledger`` under ``snapshot`` (rows, and
    tokens where the batch has an attention mask).
    """
    obj = objective(kind, **objective_options)
    fingerprints = {"model": model_digest(model), "pool": pool_digest(pool)}
    key = config_digest({**fingerprints, "kind": kind, "options": objective_options, "api": 1})
    if cache_dir is not None:
        folder = Path(cache_dir) / key
        with file_lock(folder.with_suffix(".lock")):
            if (folder / "meta.json").is_file():
                return load_snapshot(folder)
            snap = _snapshot_pass(model, pool, collate, obj, kind, batch_size, device, forward, ledger, fingerprints)
            snap.save(folder)
            return snap
    return _snapshot_pass(model, pool, collate, obj, kind, batch_size, device, forward, ledger, fingerprints)


def _snapshot_pass(model: nn.Module, pool: Sequence[Any], collate: Callable[[list[Any]], Mapping[str, Any]],
                   obj: Objective, kind: str, batch_size: int, device: torch.device | str | None,
                   forward: Callable[..., tuple[torch.Tensor, torch.Tensor]], ledger: Ledger | None,
                   fingerprints: dict[str, str]) -> PoolSnapshot:
    if len(pool) == 0:
        raise MixcdError("the rehearsal pool is empty")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    parts: list[dict[str, torch.Tensor | None]] = []
    classes: list[torch.Tensor] = []
    try:
        with torch.no_grad():
            for start in range(0, len(pool), batch_size):
                batch = collate([pool[i] for i in range(start, min(start + batch_size, len(pool)))])
                batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                outputs, targets = forward(model, batch, kind)
                parts.append(obj.columns(outputs, targets))
                if obj.has_classes:
                    classes.append(obj.classes(targets).cpu())
                if ledger is not None:
                    tokens = int(batch["attention_mask"].sum()) if "attention_mask" in batch else 0
                    ledger.add("snapshot", forward=len(targets), forward_tokens=tokens)
    finally:
        model.train(was_training)
    cat = {k: torch.cat([p[k].cpu() for p in parts]) for k in ("loss", "conf", "correct")}
    return PoolSnapshot(cat["correct"].bool(), cat["loss"].float(), cat["conf"].float(),
                        torch.cat(classes) if classes else None, kind, fingerprints["model"], fingerprints["pool"])


# --------------------------------------------------------------------------------------------- samplers


def sampler_names() -> list[str]:
    """Every registered sampler's name."""
    return SAMPLERS.names()


def create_sampler(name: str, snapshot: PoolSnapshot | PoolInfo, batch_size: int, seed: int,
                   **options: Any) -> RehearsalSampler:
    """Registered sampler ``name`` drawing ``batch_size`` rows a step from the pool ``snapshot`` describes.

    Per step: ``rows = sampler.draw(step)`` before the forward pass (samplers that spend extra passes, ``mir`` and
    ``oracle_cd``, also need a `SelectionContext`), then ``sampler.observe(rows, wrong, loss=None)`` with that pass's
    "wrong now" per drawn row, in the order drawn. ``state_dict()``/``load_state_dict()`` round-trip it; a state of
    another pool is refused. Unknown names and options are refused naming the valid ones.
    """
    info = snapshot.info() if isinstance(snapshot, PoolSnapshot) else snapshot
    sampler = _create_registered(name, info, batch_size, seed, **options)
    if isinstance(snapshot, PoolSnapshot):
        sampler.pool_digest = snapshot.pool
    return sampler
