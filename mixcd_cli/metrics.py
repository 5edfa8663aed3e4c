"""What is measured: the ledger, forgetting, downstream accuracy, the four categories (docs/design.md §6)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch

# audit: eval-mode checks of drawn rows that measure the hit rate; like eval, never part of the training budget.
PURPOSES = ("pretrain", "finetune", "rehearsal", "selection", "snapshot", "eval", "audit")
# The passes that move the fine-tuned weights or choose the rows that do: a sampler's training budget.
TRAINING = ("finetune", "rehearsal", "selection")
# The passes a sampler makes beyond plain fine-tuning's (which every sampler makes alike, at equal steps); with the
# snapshots it reads (`Artifact.needed`), what the report's total axis counts (docs/design.md §11).
SAMPLER_PURPOSES = ("rehearsal", "selection")
# compute = FORWARD_COST·forward + BACKWARD_COST·backward (docs/design.md §11): a backward pass does about twice a
# forward's work (gradients with respect to activations and to weights, each a product the size of the forward's).
FORWARD_COST, BACKWARD_COST = 1, 2


# Purposes whose compute is that of the artifacts the run needed (`Artifact`), made now or read from the cache;
# the ledger's passes of these purposes say what this process ran.
ARTIFACT_PURPOSES = ("pretrain", "snapshot")


def compute_of(forward: int, backward: int) -> int:
    """The project's compute unit: forward + 2 × backward (rows, or tokens)."""
    return FORWARD_COST * int(forward) + BACKWARD_COST * int(backward)


@dataclass
class Artifact:
    """Something a run needed that runs can share (θ0, a snapshot, its k-means clusters), with what it costs to
    make, recorded whether it was made now or read from the cache: a comparison must count it whichever run
    happened to make it (docs/design.md §11). Whether it was cached is the run's `cached` and its stages'
    ``snapshot_cached``, never part of its cost.

    ``one_time``: shared by every fine-tuning of the same θ0 (θ0's pretraining; stage 1's snapshot of θ0 and its
    clusters), so a comparison counts it once, not once per run. Otherwise it is the run's own: a later
    stage's snapshot of θ(k−1), which only this run's weights give.

    ``needed``: the sampler reads it to choose rows (`SamplerSpec.needs_snapshot`), so it is part of what that
    sampler costs. A snapshot the run makes only to measure (random's, none's, and every run's pass over the
    test sets, which only the report's categories read) is recorded with ``needed=False``: counted in the
    run's total, never in a sampler's budget.
    """

    what: str  # pretraining, snapshot, clusters
    purpose: str  # the purpose it is compute of, and its passes are charged to when made: pretrain or snapshot
    model: str  # the model it is of: theta0, theta1, ...
    stage: int  # the stage it serves (0: θ0's pretraining; k: stage k's snapshot, of θ(k−1))
    one_time: bool
    forward: int
    backward: int = 0
    forward_tokens: int = 0
    backward_tokens: int = 0
    needed: bool = True
    # a snapshot's pool columns: "pass" (an eval-mode pass) or "training" (the training forwards' record, at no
    # pass: snapshot.source=training); None for artifacts that are not snapshots, and in runs made before
    source: str | None = None

    def compute(self) -> int:
        return compute_of(self.forward, self.backward)

    def compute_tokens(self) -> int:
        return compute_of(self.forward_tokens, self.backward_tokens)


class Ledger:
    """Sample forward and backward passes by purpose (docs/design.md §11): the currency of fair comparison.

    Rows are counted in ``forward``/``backward``; where a task's rows are token sequences, their non-padding
    tokens are counted too, in ``forward_tokens``/``backward_tokens`` (zero for tasks without tokens). These are
    the passes this process made. ``artifacts`` are the shareable things the run needed (`Artifact`).

    Compute = forward + 2 × backward (`compute_of`). For most purposes it is that of the passes made; for
    pretraining and snapshots (`ARTIFACT_PURPOSES`) it is that of the artifacts the run needed, whether made now
    (then equal to the passes) or read from the cache (then no pass was made), so that a run's compute does not
    depend on which run filled the cache.
    """

    def __init__(self) -> None:
        self.forward = dict.fromkeys(PURPOSES, 0)
        self.backward = dict.fromkeys(PURPOSES, 0)
        self.forward_tokens = dict.fromkeys(PURPOSES, 0)
        self.backward_tokens = dict.fromkeys(PURPOSES, 0)
        self.artifacts: list[Artifact] = []

    def add(self, purpose: str, forward: int = 0, backward: int = 0, forward_tokens: int = 0,
            backward_tokens: int = 0) -> None:
        """Charge passes of ``purpose``: rows forward and backward, and their non-padding tokens (token tasks)."""
        self.forward[purpose] += int(forward)
        self.backward[purpose] += int(backward)
        self.forward_tokens[purpose] += int(forward_tokens)
        self.backward_tokens[purpose] += int(backward_tokens)

    def need(self, artifact: Artifact) -> None:
        """Record an artifact the run needed (its passes, if it is made now, are charged by whoever makes it)."""
        self.artifacts.append(artifact)

    def has_tokens(self) -> bool:
        return any(self.forward_tokens.values()) or any(a.forward_tokens for a in self.artifacts)

    def training_passes(self) -> int:
        """Forward + backward sample passes spent by fine-tuning (fine-tune, rehearsal, selection), unweighted."""
        return sum(self.forward[p] + self.backward[p] for p in TRAINING)

    def counters(self) -> dict[str, dict[str, int]]:
        """Every pass counter by name and purpose (what is summed over ranks)."""
        return {"forward": self.forward, "backward": self.backward, "forward_tokens": self.forward_tokens,
                "backward_tokens": self.backward_tokens}

    def state_dict(self) -> dict[str, Any]:
        return {**{name: dict(c) for name, c in self.counters().items()},
                "artifacts": [asdict(a) for a in self.artifacts]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Counters from ``state``; one saved before tokens and artifacts were kept (a checkpoint or a stage
        record of an earlier version) leaves those as they are."""
        for name, counter in self.counters().items():
            counter.update(state.get(name) or {})
        if state.get("artifacts") is not None:
            self.artifacts = [Artifact(**a) for a in state["artifacts"]]

    def summary(self) -> dict[str, Any]:
        """Passes by purpose, the fine-tuning total, the rehearsal budget; token counters only for token tasks,
        artifacts only where some were needed."""
        out: dict[str, Any] = {"forward": dict(self.forward), "backward": dict(self.backward),
                               "training_passes": self.training_passes(),
                               "rehearsal_budget": self.forward["rehearsal"]}
        tokens = self.has_tokens()
        if tokens:
            out.update(forward_tokens=dict(self.forward_tokens), backward_tokens=dict(self.backward_tokens))
        if self.artifacts:  # token counts only where there are tokens (they read back as 0)
            out["artifacts"] = [{k: v for k, v in asdict(a).items() if tokens or not k.endswith("_tokens")}
                                for a in self.artifacts]
        return out

    def compute(self) -> dict[str, Any]:
        """Compute (forward + 2 × backward) by purpose and in total, its training part (fine-tune, rehearsal,
        selection) and its one-time part (θ0's pretraining and snapshot, shared by every run of that θ0), each
        artifact's own; the same in tokens for token tasks (docs/design.md §11)."""
        def totals(forward: dict[str, int], backward: dict[str, int], cost: Callable[[Artifact], int]
                   ) -> dict[str, Any]:
            by_purpose = {p: compute_of(forward[p], backward[p]) for p in PURPOSES if p not in ARTIFACT_PURPOSES}
            for p in ARTIFACT_PURPOSES:  # what was needed, made or cached, not what this process happened to run
                by_purpose[p] = sum(cost(a) for a in self.artifacts if a.purpose == p)
            by_purpose = {p: by_purpose[p] for p in PURPOSES}
            needed = [a for a in self.artifacts if a.needed and a.purpose == "snapshot"]
            return {"by_purpose": by_purpose, "total": sum(by_purpose.values()),
                    "training": sum(by_purpose[p] for p in TRAINING),
                    "one_time": sum(cost(a) for a in self.artifacts if a.one_time),
                    # what the sampler adds to plain fine-tuning: the report's total axis (before --amortize)
                    "sampler": sum(by_purpose[p] for p in SAMPLER_PURPOSES) + sum(cost(a) for a in needed),
                    "sampler_one_time": sum(cost(a) for a in needed if a.one_time)}

        out = totals(self.forward, self.backward, Artifact.compute)
        tokens = self.has_tokens()
        out["artifacts"] = [{"what": a.what, "model": a.model, "stage": a.stage, "one_time": a.one_time,
                             "needed": a.needed, "compute": a.compute(),
                             **({"compute_tokens": a.compute_tokens()} if tokens else {}),
                             **({"source": a.source} if a.source is not None else {})}
                            for a in self.artifacts]
        if tokens:
            out["tokens"] = totals(self.forward_tokens, self.backward_tokens, Artifact.compute_tokens)
        return out


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


# Rehearsal counters. drawn: rows drawn. signal: drawn rows the training forward called collateral damage
# (prior-correct, now wrong: what the sampler saw). audited: drawn rows an eval-mode pass of the same weights
# checked; true: of those, truly collateral damage; called: of those, called so by the signal; both: called and true.
COUNTERS = ("drawn", "signal", "audited", "true", "called", "both")


def signal_quality(counts: Mapping[str, float]) -> dict[str, float | None]:
    """hit_rate (audited: the true share of drawn rows that were collateral damage), signal_rate (the share
    the sampler saw as such) and the signal's precision and recall against the audit; None where undefined."""
    def ratio(a: str, b: str) -> float | None:
        return counts[a] / counts[b] if counts[b] else None

    return {"hit_rate": ratio("true", "audited"), "signal_rate": ratio("signal", "drawn"),
            "signal_precision": ratio("both", "called"), "signal_recall": ratio("both", "true")}


class HitAudit:
    """Counts what the drawn rows were: what the sampler's signal called them, and (on audited steps) the truth.

    ``correct0``: per pool row, prior-correct under the model the stage started from (a drawn row that is now wrong
    is a hit). ``signal0``: prior-correct as the sampler's snapshot says, where that differs (None: the same).
    """

    def __init__(self, correct0: torch.Tensor, signal0: torch.Tensor | None = None) -> None:
        self.correct0 = correct0.bool().cpu()
        self.signal0 = None if signal0 is None else signal0.bool().cpu()
        self.counts: dict[str, int] = dict.fromkeys(COUNTERS, 0)

    def add(self, rows: torch.Tensor, wrong: torch.Tensor, audit_wrong: torch.Tensor | None = None) -> dict[str, int]:
        """Count one step's drawn ``rows``: ``wrong`` from the training forward, ``audit_wrong`` from an eval-mode
        pass of the same weights (None on steps not audited). Returns this step's increments."""
        rows, wrong = rows.cpu(), wrong.bool().cpu()
        eligible = self.correct0[rows]
        called = (eligible if self.signal0 is None else self.signal0[rows]) & wrong
        add = {"drawn": int(rows.numel()), "signal": int(called.sum())}
        if audit_wrong is not None:
            true = eligible & audit_wrong.bool().cpu()
            add.update(audited=int(rows.numel()), true=int(true.sum()), called=add["signal"],
                       both=int((true & called).sum()))
        for key, value in add.items():
            self.counts[key] += value
        return add

    def quality(self) -> dict[str, float | None]:
        """`signal_quality` of everything counted so far."""
        return signal_quality(self.counts)

    def state_dict(self) -> dict[str, int]:
        return dict(self.counts)

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.counts = {k: int(state.get(k, 0)) for k in COUNTERS}
