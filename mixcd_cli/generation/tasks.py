"""Generated generation tasks: copy, reverse, a letter cipher and addition, each a seeded function of its
options, so tests and the quick demo need no download. A task's prompt carries its operation's name by default
(``template``), so several operations over the same strings stay solvable in one model."""

from __future__ import annotations

import string
from dataclasses import dataclass

import numpy as np

from ..errors import MixcdError, unknown_choice

OPERATIONS = ("copy", "reverse", "cipher", "add")
LETTERS = string.ascii_lowercase


@dataclass
class GeneratedPairs:
    """Prompt and target strings of one generated split."""

    prompts: list[str]
    targets: list[str]
    description: str


def _word(rng: np.random.Generator, alphabet: str, lo: int, hi: int) -> str:
    return "".join(alphabet[int(i)] for i in rng.integers(0, len(alphabet), size=int(rng.integers(lo, hi + 1))))


def cipher(text: str, shift: int, alphabet: str = LETTERS) -> str:
    """Each letter of ``alphabet`` moved ``shift`` places along it (others kept)."""
    where = {c: i for i, c in enumerate(alphabet)}
    return "".join(alphabet[(where[c] + shift) % len(alphabet)] if c in where else c for c in text)


def make_pairs(operation: str, n: int, seed: int, split: str = "train", min_len: int = 3, max_len: int = 8,
               alphabet: str = LETTERS[:12], shift: int = 1, digits: int = 2, template: str | None = None
               ) -> GeneratedPairs:
    """``n`` seeded rows of ``operation`` on random strings of ``min_len``..``max_len`` letters of ``alphabet``
    (``add``: two numbers of up to ``digits`` digits). The split name is part of the seed, so train and test
    differ; ``template`` formats the prompt (``{op}`` and ``{x}``; default ``"{op} {x}="``)."""
    if operation not in OPERATIONS:
        raise unknown_choice("generated operation", operation, OPERATIONS)
    if not 1 <= min_len <= max_len:
        raise MixcdError(f"generated strings need 1 <= min_len <= max_len, got {min_len}..{max_len}")
    if n < 1:
        raise MixcdError(f"a generated split needs at least one row, got n={n}")
    rng = np.random.default_rng([int(seed), OPERATIONS.index(operation), 0 if split == "train" else 1])
    template = template or "{op} {x}="
    name = f"{operation}{shift}" if operation == "cipher" else operation
    prompts, targets = [], []
    for _ in range(n):
        if operation == "add":
            a, b = (int(v) for v in rng.integers(0, 10 ** digits, size=2))
            x, y = f"{a}+{b}", str(a + b)
        else:
            x = _word(rng, alphabet, min_len, max_len)
            y = {"copy": x, "reverse": x[::-1]}.get(operation) or cipher(x, shift, alphabet)
        prompts.append(template.format(op=name, x=x))
        targets.append(y)
    return GeneratedPairs(prompts, targets, f"generated {name}/{split}")
