"""What is measured: the ledger, forgetting, downstream accuracy, the four categories (docs/design.md §6)."""

from __future__ import annotations

from typing import Any

import torch

# audit: eval-mode checks of drawn rows that measure the hit rate; like eval, never part of the training budget.
PURPOSES = ("pretrain", "finetune", "rehearsal", "selection", "snapshot", "eval", "audit")


class Ledger:
    """Sample forward and backward passes by purpose (docs/design.md §11): the currency of fair comparison."""

    def __init__(self) -> None:
        self.forward = dict.fromkeys(PURPOSES, 0)
        self.backward = dict.fromkeys(PURPOSES, 0)

    def add(self, purpose: str, forward: int = 0, backward: int = 0) -> None:
        self.forward[purpose] += int(forward)
        self.backward[purpose] += int(backward)

    def training_passes(self) -> int:
        """Forward + backward sample passes spent by fine-tuning (fine-tune, rehearsal, selection)."""
        return sum(self.forward[p] + self.backward[p] for p in ("finetune", "rehearsal", "selection"))

    def state_dict(self) -> dict[str, Any]:
        return {"forward": dict(self.forward), "backward": dict(self.backward)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.forward.update(state["forward"])
        self.backward.update(state["backward"])

    def summary(self) -> dict[str, Any]:
        return {"forward": dict(self.forward), "backward": dict(self.backward),
                "training_passes": self.training_passes(),
                "rehearsal_budget": self.forward["rehearsal"]}


def categories(correct0: torch.Tensor, correct_now: torch.Tensor, labels: torch.Tensor | None = None
               ) -> dict[str, Any]:
    """(prior correct?, now correct?) → retained, collateral damage, unlearned, gained; CD rate (the share of
    prior-correct samples now wrong), and with ``labels`` the CD rate of each class."""
    c0, c1 = correct0.bool(), correct_now.bool()
    retained = int((c0 & c1).sum())
    cd = int((c0 & ~c1).sum())
    unlearned = int((~c0 & ~c1).sum())
    gained = int((~c0 & c1).sum())
    prior_correct = retained + cd
    out: dict[str, Any] = {"retained": retained, "collateral_damage": cd, "unlearned": unlearned, "gained": gained,
                           "cd_rate": cd / prior_correct if prior_correct else None}
    if labels is not None:
        by_class = {}
        for label in labels.unique().tolist():
            eligible = c0 & (labels == label)
            n = int(eligible.sum())
            by_class[str(label)] = int((eligible & ~c1).sum()) / n if n else None
        out["cd_rate_by_class"] = by_class
    return out


def accuracy(correct: torch.Tensor) -> float | None:
    return float(correct.float().mean()) if correct.numel() else None


def forgetting_metrics(test_correct0: torch.Tensor, test_correct_now: torch.Tensor,
                       ft_correct: torch.Tensor, test_labels: torch.Tensor | None = None) -> dict[str, Any]:
    """pre_acc0, pre_acc, forgetting = pre_acc0 − pre_acc, ft_acc, and categories on the prior test set."""
    pre_acc0, pre_acc = accuracy(test_correct0), accuracy(test_correct_now)
    return {"pre_acc0": pre_acc0, "pre_acc": pre_acc,
            "forgetting": (pre_acc0 - pre_acc) if pre_acc0 is not None and pre_acc is not None else None,
            "ft_acc": accuracy(ft_correct), "categories": categories(test_correct0, test_correct_now, test_labels)}


def sequence_metrics(matrix: list[list[float | None]]) -> dict[str, Any]:
    """From the accuracy matrix A (A[k][i]: accuracy on task i after stage k; row 0 is θ0; None where task i
    was not seen yet), with S = the last stage (docs/design.md §9):

    avg_acc = mean_i A[S][i] over tasks 0..S; earlier_acc = mean over i < S; BWT = mean over i < S of
    A[S][i] − A[i][i]; forgetting of task i < S = max over i ≤ k < S of A[k][i] − A[S][i].
    """
    s = len(matrix) - 1
    final = matrix[s]
    earlier = list(range(s))
    forgetting = [max(matrix[k][i] - final[i] for k in range(i, s)) for i in earlier]

    def mean(values: list[float]) -> float | None:
        return sum(values) / len(values) if values else None

    return {"avg_acc": mean([final[i] for i in range(s + 1)]), "earlier_acc": mean([final[i] for i in earlier]),
            "bwt": mean([final[i] - matrix[i][i] for i in earlier]), "forgetting_per_task": forgetting,
            "avg_forgetting": mean(forgetting)}
