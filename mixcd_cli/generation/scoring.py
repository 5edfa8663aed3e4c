"""Evaluation of generation by decoding: batched greedy decoding, exact match and chrF.

Exact match compares token ids: the decoded tokens up to the first end-of-sequence equal the target's, the
same event the teacher-forced ``correct`` reads (so the snapshot, the free signal, the audit and evaluation
share one definition). chrF (sacrebleu, character 6-grams, β = 2) compares the decoded text with the target
text and gives partial credit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import MixcdError

DECODE_MARGIN = 8  # tokens past the longest reference that decoding may run before it is cut


@dataclass
class Decoded:
    """Per-row outcome of decoding a split."""

    tokens: list[list[int]]  # generated ids, the end-of-sequence included where reached
    exact: torch.Tensor  # bool per row
    hypotheses: list[str]  # the decoded text
    references: list[str]  # the targets' text

    def corpus_chrf(self) -> float:
        """sacrebleu's corpus chrF of the decoded text against the targets (0..100)."""
        return corpus_chrf(self.hypotheses, self.references)


def decode_rows(greedy: Callable[[list[list[int]], int], list[list[int]]], prompts: Sequence[Sequence[int]],
                targets: Sequence[Sequence[int]], eos_id: int, batch_size: int,
                max_new_tokens: int | None = None) -> list[list[int]]:
    """Greedy decoding of every row, ``batch_size`` prompts at a time, each batch allowed the longest target in
    it (end-of-sequence included) plus `DECODE_MARGIN` new tokens unless ``max_new_tokens`` is given. Prompts are
    sorted by length first so a batch pads little; the output is in the rows' order."""
    if batch_size < 1:
        raise MixcdError(f"decoding batch size must be at least 1, got {batch_size}")
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[int]] = [[] for _ in prompts]
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        limit = max_new_tokens or max(len(targets[i]) + 1 for i in rows) + DECODE_MARGIN
        for i, generated in zip(rows, greedy([list(prompts[i]) for i in rows], limit), strict=True):
            out[i] = generated
    return out


def exact_match(generated: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], eos_id: int) -> torch.Tensor:
    """Per row: the generated tokens are the target's followed by end-of-sequence."""
    return torch.tensor([list(g) == list(t) + [eos_id] for g, t in zip(generated, targets, strict=True)],
                        dtype=torch.bool)


def chrf_scores(hypotheses: Sequence[str], references: Sequence[str]) -> torch.Tensor:
    """sacrebleu's sentence chrF of each hypothesis against its reference (0..100)."""
    try:
        from sacrebleu.metrics import CHRF
    except ImportError as exc:
        raise MixcdError("chrF needs sacrebleu: pip install -e '.[text]'") from exc
    metric = CHRF()
    return torch.tensor([metric.sentence_score(h, [r]).score for h, r in zip(hypotheses, references, strict=True)],
                        dtype=torch.float32)


def corpus_chrf(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """sacrebleu's corpus chrF (statistics summed over rows, then the score)."""
    from sacrebleu.metrics import CHRF

    return float(CHRF().corpus_score(list(hypotheses), [list(references)]).score)


def decode_task(net: Any, source: Any, index: torch.Tensor, batch_size: int, tokenizer: Any) -> tuple[Decoded, int]:
    """Greedy decoding of the rows ``index`` of a tokenised generation split (`data.GenTokenSource`): exact match per
    row, and the decoded and target text for chrF. → (decoded, tokens read: every prompt token once and one token
    per generated step, the cache holding the rest)."""
    rows = index.tolist()
    prompts = [source.prompts[i] for i in rows]
    targets = [source.target_ids[i] for i in rows]
    was_training = net.training
    net.eval()
    try:
        generated = decode_rows(net.greedy, prompts, targets, source.eos_id, batch_size)
    finally:
        net.train(was_training)
    exact = exact_match(generated, targets, source.eos_id)
    decoded = Decoded(generated, exact, [tokenizer.decode(g) for g in generated],
                      [tokenizer.decode(t) for t in targets])
    extra = 1 if net.kind == "seq2seq" or net.bos_id is not None else 0  # </s> (encoder) or [bos] (decoder)
    return decoded, sum(len(p) + extra for p in prompts) + sum(len(g) for g in generated)
