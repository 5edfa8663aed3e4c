"""What loss, "wrong now", confidence and correctness mean for a generated sequence.

A generation batch's targets are token labels aligned with the model's output positions (`GenerationNet`
returns, at position t, the distribution of ``targets[:, t]``), ``IGNORE`` where nothing is predicted: prompt
positions and padding. A row's target tokens end with the end-of-sequence token, so "every target token is the
argmax under teacher forcing" is exactly "greedy decoding from the prompt reproduces the target and stops"
(up to exact ties): the free signal and the audit read the same event that decoded exact match measures.
"""

from __future__ import annotations

import torch

from ..errors import MixcdError, unknown_choice
from ..objectives import OBJECTIVES, Objective

IGNORE = -100  # a label that is not predicted (prompt, padding); never a token id
GENERATION_KINDS = ("causal_lm", "seq2seq")
CORRECT_RULES = ("exact", "token_accuracy")
CONFIDENCES = ("mean", "min")


class TokenObjective(Objective):
    """Per-row quantities of a token-labelled row, from the logits of its target positions.

    ``correct``: ``exact`` (every target token, end of sequence included, is the argmax) or ``token_accuracy``
    (the share of right target tokens is at least ``threshold``). ``confidence``: ``mean`` = exp(−loss), the
    geometric mean of the target tokens' probabilities, or ``min``, the least probable target token's
    probability; mix-cd's τ reads it.
    """

    has_classes = False

    def __init__(self, correct: str = "exact", threshold: float = 1.0, confidence: str = "mean") -> None:
        if correct not in CORRECT_RULES:
            raise unknown_choice("generation correct rule", correct, CORRECT_RULES)
        if confidence not in CONFIDENCES:
            raise unknown_choice("generation confidence", confidence, CONFIDENCES)
        if not 0.0 < float(threshold) <= 1.0:
            raise MixcdError(f"generation threshold must be in (0, 1], got {threshold}")
        self.rule, self.threshold, self.conf_rule = correct, float(threshold), confidence

    def head_size(self, targets: torch.Tensor) -> int:
        return 0  # the language model's own output layer, no classification head

    @staticmethod
    def _aligned(outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Outputs and labels of one width: rows trained in a batch joined with wider rows have outputs past their
        own labels (padding positions, dropped); labels past the outputs would be padding too."""
        width = min(outputs.shape[1], targets.shape[1])
        return outputs[:, :width], targets[:, :width]

    @classmethod
    def _token_logp(cls, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probability of each target token (0 where ignored) and the mask of target positions."""
        outputs, targets = cls._aligned(outputs, targets)
        valid = targets != IGNORE
        logp = torch.log_softmax(outputs.float(), dim=-1)
        picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return picked * valid, valid

    @classmethod
    def _hits(cls, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row: right target tokens (argmax equals label) and target tokens."""
        outputs, targets = cls._aligned(outputs, targets)
        valid = targets != IGNORE
        right = (outputs.argmax(-1) == targets) & valid
        return right.sum(1), valid.sum(1)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, reduction: str = "none") -> torch.Tensor:
        """Mean negative log-likelihood of each row's target tokens (every row weighs the same, whatever its
        length); ``sum``/``mean`` over rows."""
        picked, valid = self._token_logp(outputs, targets)
        per_row = -picked.sum(1) / valid.sum(1).clamp(min=1)
        if reduction == "sum":
            return per_row.sum()
        if reduction == "mean":
            return per_row.mean()
        return per_row

    def _correct_from(self, right: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
        if self.rule == "exact":
            return right == total
        return right.float() >= self.threshold * total.float() - 1e-6

    def wrong(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return ~self._correct_from(*self._hits(outputs, targets))

    def correct(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self._correct_from(*self._hits(outputs, targets))

    def confidence(self, outputs: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        if targets is None:
            raise ValueError("a generated row's confidence is that of its target tokens: pass the targets")
        return self.columns(outputs, targets)["conf"]

    def columns(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor | None]:
        picked, valid = self._token_logp(outputs, targets)
        count = valid.sum(1)
        mean_logp = picked.sum(1) / count.clamp(min=1)
        if self.conf_rule == "mean":
            conf = mean_logp.exp()
        else:
            conf = picked.exp().masked_fill(~valid, 1.0).min(1).values
        right, total = self._hits(outputs, targets)
        return {"loss": -mean_logp, "conf": conf, "pred": None, "correct": self._correct_from(right, total)}


@OBJECTIVES.register("causal_lm", help="decoder-only generation: prompt and target in one sequence, loss on the "
                                       "target tokens; correct = greedy decoding reproduces the target")
class CausalLM(TokenObjective):
    """Decoder-only generation (prompt and target in one sequence)."""

    name = "causal_lm"


@OBJECTIVES.register("seq2seq", help="encoder-decoder generation: prompt in, target out; correct = greedy "
                                     "decoding reproduces the target")
class Seq2Seq(TokenObjective):
    """Encoder–decoder generation (prompt to the encoder, target from the decoder)."""

    name = "seq2seq"
