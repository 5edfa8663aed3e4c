"""Each row's last training visit: what a training run's own forward passes say of every row it trained on,
kept as a snapshot made at no extra pass (snapshot.source=training, docs/design.md §11)."""

from __future__ import annotations

import torch


class VisitRecord:
    """Per row of one task, the columns (`Objective.columns`: loss, confidence, prediction, correct) of the row's
    latest training-mode forward, taken from the step's own outputs before its optimizer update, and that step
    (-1: never visited). What a snapshot of the weights as they were at each row's last visit says, at no
    extra pass (snapshot.source=training, docs/design.md §11). Kept on the training device, so recording
    waits for nothing; read back to the host only when saved or at the end."""

    def __init__(self, n: int, classes: bool, device: torch.device) -> None:
        self.loss = torch.zeros(n, dtype=torch.float32, device=device)
        self.conf = torch.zeros(n, dtype=torch.float32, device=device)
        self.correct = torch.zeros(n, dtype=torch.bool, device=device)
        self.pred = torch.full((n,), -1, dtype=torch.int64, device=device) if classes else None
        self.step = torch.full((n,), -1, dtype=torch.int64, device=device)

    def update(self, rows: torch.Tensor, cols: dict[str, torch.Tensor | None], step: int) -> None:
        """Rows ``rows`` (positions in the task) were visited at ``step`` with these columns: they replace what
        an earlier visit left. A row drawn twice in one step has the same outputs twice (per-row normalisation)."""
        at = rows.to(self.step.device, non_blocking=True)
        self.loss[at] = cols["loss"].detach().float()
        self.conf[at] = cols["conf"].detach().float()
        self.correct[at] = cols["correct"].detach().bool()
        if self.pred is not None and cols.get("pred") is not None:
            self.pred[at] = cols["pred"].detach().long()
        self.step[at] = step

    def columns(self) -> dict[str, torch.Tensor]:
        """The record on the host: ``loss``, ``conf``, ``correct``, ``step`` and, for kinds with classes, ``pred``."""
        out = {"loss": self.loss, "conf": self.conf, "correct": self.correct, "step": self.step,
               **({"pred": self.pred} if self.pred is not None else {})}
        return {k: v.cpu().clone() for k, v in out.items()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.columns()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name, value in state.items():
            mine = getattr(self, name)
            if mine is None or value.shape != mine.shape:
                raise ValueError(f"the record's column {name} does not fit this task")
            mine.copy_(value.to(mine.device))
