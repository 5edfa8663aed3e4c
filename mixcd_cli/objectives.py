"""The objective seam: what a task kind means by loss, "wrong now", confidence and correctness.

The trainer, the audit, the snapshot, the selection passes (oracle_cd, MIR) and evaluation call a
task's `Objective` instead of cross-entropy and argmax, so a new task kind (a regression toy in the
tests, sequence generation next) plugs in by registering one class here or in its own module
(docs/design.md, "The objective seam"). Samplers never see targets: they get rows, losses,
correctness and confidence, and a class column only from kinds that have classes.

A dataset says which kind its samples are by a ``kind`` attribute on its source (classification
when absent).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .registry import Registry

OBJECTIVES: Registry = Registry("task kind")
DEFAULT_KIND = "classification"


@dataclass
class Batch:
    """Rows of one task on their way to the model: inputs, targets and an optional target mask.

    ``inputs`` are what the source returns (uint8 images, token ids) until a transform normalises
    them; ``targets`` have whatever shape the task kind gives a row; ``mask`` marks the target
    positions that count, for kinds whose targets are padded (None: all count).
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor | None = None
    tokens: int | None = None  # non-padding tokens a pass reads, where the inputs alone do not say (seq2seq)

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def pinned(self) -> Batch:
        """Host copies in page-locked memory, so a copy to the GPU can be asynchronous."""
        if self.inputs.device.type != "cpu":
            return self
        return Batch(self.inputs.pin_memory(), self.targets, self.mask, self.tokens)

    def to(self, device: torch.device) -> Batch:
        """The batch on ``device`` (non-blocking where the source memory allows)."""
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return Batch(self.inputs.to(device, non_blocking=True), self.targets.to(device, non_blocking=True),
                     move(self.mask), self.tokens)


class Objective:
    """One task kind's per-row quantities, all computed from the model's outputs for the rows.

    ``wrong`` is the free signal: it reads the *training* forward's outputs, so it must mean the
    same event as ``~correct`` on an eval-mode pass (up to dropout and normalisation statistics).
    """

    name = "base"
    has_classes = False  # whether targets are class ids (class-balanced sampling, per-class rates)

    def head_size(self, targets: torch.Tensor) -> int:
        """How many outputs a head needs for these targets."""
        raise NotImplementedError

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, reduction: str = "none") -> torch.Tensor:
        """Per-row loss (``none``), or their ``sum`` / ``mean``, in float32."""
        raise NotImplementedError

    def wrong(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-row bool: the outputs get the row wrong."""
        raise NotImplementedError

    def correct(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-row bool for evaluation and the snapshot: the same event as not ``wrong``."""
        return ~self.wrong(outputs, targets)

    def confidence(self, outputs: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Per-row confidence in [0, 1] (mix-cd's τ threshold reads it); kinds whose confidence is that of a
        target (generated sequences) read ``targets``."""
        raise NotImplementedError

    def prediction(self, outputs: torch.Tensor) -> torch.Tensor | None:
        """A per-row integer prediction worth keeping in the snapshot, or None."""
        return None

    def classes(self, targets: torch.Tensor) -> torch.Tensor | None:
        """The class column samplers and per-class rates may use; None where the kind has no classes."""
        return None

    def columns(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor | None]:
        """What one no-grad pass records per row: loss, confidence, prediction (or None), correct."""
        return {"loss": self.loss(outputs, targets), "conf": self.confidence(outputs, targets),
                "pred": self.prediction(outputs), "correct": self.correct(outputs, targets)}


@OBJECTIVES.register("classification", help="one label per row: cross-entropy, argmax, max softmax")
class Classification(Objective):
    """Labels are int64 class ids; a row is wrong when the argmax of its logits is not its label."""

    name = "classification"
    has_classes = True

    def head_size(self, targets: torch.Tensor) -> int:
        # data._class_task sizes a class task's head from its label map instead (a subset may miss the top label)
        return int(targets.max()) + 1 if targets.numel() else 0

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, reduction: str = "none") -> torch.Tensor:
        return F.cross_entropy(outputs.float(), targets, reduction=reduction)

    def wrong(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return outputs.argmax(1) != targets

    def confidence(self, outputs: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        return outputs.float().softmax(1).max(1).values

    def prediction(self, outputs: torch.Tensor) -> torch.Tensor:
        # the most probable class, as `columns` reads it (softmax and argmax agree up to exact ties)
        return outputs.float().softmax(1).max(1).indices

    def correct(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.prediction(outputs) == targets

    def classes(self, targets: torch.Tensor) -> torch.Tensor:
        return targets

    def columns(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor | None]:
        # one softmax gives confidence and prediction together, as snapshots have always been made
        logits = outputs.float()
        conf, pred = logits.softmax(1).max(1)
        return {"loss": F.cross_entropy(logits, targets, reduction="none"), "conf": conf, "pred": pred,
                "correct": pred == targets}


def objective_of(source: Any) -> Objective:
    """The objective of a source's task kind (its ``kind`` attribute; classification when it has none)."""
    return OBJECTIVES.get(getattr(source, "kind", DEFAULT_KIND))()

