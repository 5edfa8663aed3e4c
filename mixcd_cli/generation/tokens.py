"""Tokenizers of generation tasks and the token layout of a generated row.

A random model gets a character-level tokenizer built on the experiment's own text (every character seen, in
code-point order after four specials), so the same text always gives the same ids; a model folder brings its
own Hugging Face tokenizer, wrapped to the same small interface. Token batches use `sources.PAD` (−1) where a
row is shorter than the batch's longest, and `objectives.IGNORE` where a label is not predicted.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import MixcdError
from ..sources import PAD
from .objectives import IGNORE

SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")


class CharTokenizer:
    """One id per character: ``<pad>`` 0, ``<s>`` 1, ``</s>`` 2, ``<unk>`` 3, then the corpus's characters."""

    def __init__(self, chars: Sequence[str]) -> None:
        self.chars = list(chars)
        self._ids = {c: len(SPECIALS) + i for i, c in enumerate(self.chars)}
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = 0, 1, 2, 3
        self.fingerprint = hashlib.sha256(json.dumps(["char", self.chars]).encode()).hexdigest()[:16]
        self.origin = "character-level, built on the experiment's text"

    @classmethod
    def build(cls, texts: Iterable[str]) -> CharTokenizer:
        """The tokenizer of every character in ``texts``, ordered by code point."""
        seen: set[str] = set()
        for text in texts:
            seen.update(text)
        return cls(sorted(seen))

    @property
    def vocab_size(self) -> int:
        return len(SPECIALS) + len(self.chars)

    def encode(self, text: str) -> list[int]:
        return [self._ids.get(c, self.unk_id) for c in text]

    def decode(self, ids: Iterable[int]) -> str:
        out = []
        for i in ids:
            if i == self.eos_id:
                break
            if i >= len(SPECIALS):
                out.append(self.chars[i - len(SPECIALS)])
        return "".join(out)


class HFTokenizer:
    """A Hugging Face tokenizer behind `CharTokenizer`'s interface. A tokenizer without an end-of-sequence token
    cannot mark where a target stops and is refused; one without a padding token pads with end-of-sequence
    (padding is masked, so its id never reaches a loss)."""

    def __init__(self, tokenizer: Any, fingerprint: str, origin: str) -> None:
        if tokenizer.eos_token_id is None:
            raise MixcdError(f"the tokenizer of {origin} has no end-of-sequence token: a generated target could not "
                             "say where it stops; give a tokenizer that has one (tokenizer.eos_token)")
        self.tokenizer, self.fingerprint, self.origin = tokenizer, fingerprint, origin
        self.eos_id = int(tokenizer.eos_token_id)
        self.pad_id = int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else self.eos_id
        self.bos_id = None if tokenizer.bos_token_id is None else int(tokenizer.bos_token_id)
        self.unk_id = tokenizer.unk_token_id

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Iterable[int]) -> str:
        kept = []
        for i in ids:
            if i == self.eos_id:
                break
            kept.append(int(i))
        return self.tokenizer.decode(kept, skip_special_tokens=True)


@dataclass
class EncodedRows:
    """The prompts and targets of a split as token lists (targets without end-of-sequence)."""

    prompts: list[list[int]]
    targets: list[list[int]]

    def __len__(self) -> int:
        return len(self.prompts)


def causal_layout(prompts: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], eos_id: int,
                  bos_id: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder-only teacher forcing, right-padded: inputs ``[bos] prompt target`` (PAD after) and labels, where
    position t holds the token that follows it when that token is a target token or the closing
    end-of-sequence, IGNORE elsewhere. → (inputs (n, L), labels (n, L))."""
    rows = []
    for p, t in zip(prompts, targets, strict=True):
        head = ([bos_id] if bos_id is not None else []) + list(p)
        if not head:
            raise MixcdError("a decoder-only row needs a prompt or a beginning-of-sequence token to predict from")
        rows.append((head, list(t)))
    width = max((len(h) + len(t) for h, t in rows), default=1)
    inputs = torch.full((len(rows), width), PAD, dtype=torch.int64)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.int64)
    for i, (head, target) in enumerate(rows):
        seq = head + target
        inputs[i, :len(seq)] = torch.tensor(seq, dtype=torch.int64)
        follow = target + [eos_id]
        start = len(head) - 1
        labels[i, start:start + len(follow)] = torch.tensor(follow, dtype=torch.int64)
    return inputs, labels


def seq2seq_layout(prompts: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], eos_id: int,
                   start_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder–decoder teacher forcing: inputs (n, 2, L) — the encoder's ``prompt </s>`` and the decoder's
    ``<start> target``, each PAD-padded to the batch's widest — and labels ``target </s>`` (IGNORE after).
    → (inputs, labels (n, L))."""
    enc = [list(p) + [eos_id] for p in prompts]
    dec = [[start_id] + list(t) for t in targets]
    width = max([len(e) for e in enc] + [len(d) for d in dec] + [1])
    inputs = torch.full((len(enc), 2, width), PAD, dtype=torch.int64)
    labels = torch.full((len(enc), width), IGNORE, dtype=torch.int64)
    for i, (e, d, t) in enumerate(zip(enc, dec, targets, strict=True)):
        inputs[i, 0, :len(e)] = torch.tensor(e, dtype=torch.int64)
        inputs[i, 1, :len(d)] = torch.tensor(d, dtype=torch.int64)
        labels[i, :len(d)] = torch.tensor(list(t) + [eos_id], dtype=torch.int64)
    return inputs, labels
