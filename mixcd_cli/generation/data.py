"""Generation data: raw prompt/target splits (generated, or read from the files text tasks read) and their
tokenised form, whose batches carry the teacher-forcing layout of the task kind.

A raw split (`PairSource`) is read when the experiment is built; once the model's tokenizer is known, every
split of the experiment is encoded (`encode_generation`) into a `GenTokenSource` in place, as text
classification tasks are (`text.encode_experiment`). A task's targets are then each row's target length in
tokens, end-of-sequence included: what a teacher-forced pass predicts for it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..console import note
from ..errors import MixcdError, unknown_choice
from ..hub import hf_location
from ..objectives import Batch
from ..sources import DATASETS, PAD
from ..text import folder_tokenizer, read_table
from .objectives import GENERATION_KINDS, IGNORE
from .tasks import LETTERS, OPERATIONS, make_pairs
from .tokens import CharTokenizer, HFTokenizer, causal_layout, seq2seq_layout

GENERATION_DATASETS = ("generated", "pairs")


@dataclass
class PairSource:
    """One raw split of a generation task: prompt and target strings."""

    prompts: list[str]
    texts: list[str]  # the targets
    kind: str
    description: str
    fingerprint: str
    aux: dict[str, torch.Tensor] = field(default_factory=dict)
    channels: int = 0  # not images (data.is_text): the experiment reads tokens
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    @property
    def targets(self) -> torch.Tensor:
        return torch.tensor([len(t) for t in self.texts], dtype=torch.int64)

    def inputs(self, index: torch.Tensor) -> torch.Tensor:
        raise MixcdError(f"generation split {self.description} was not tokenised: generation tasks need model=lm")

    def __len__(self) -> int:
        return len(self.prompts)


def _fingerprint(kind: str, prompts: list[str], targets: list[str]) -> str:
    h = hashlib.sha256(kind.encode())
    for p, t in zip(prompts, targets, strict=True):
        h.update(p.encode() + b"\x1f" + t.encode() + b"\x1e")
    return h.hexdigest()[:16]


def _check_kind(kind: str) -> str:
    if kind not in GENERATION_KINDS:
        raise unknown_choice("generation task kind (options.kind)", str(kind), GENERATION_KINDS)
    return kind


def pair_source(prompts: list[str], targets: list[str], kind: str, description: str,
                template: str | None = None) -> PairSource:
    """A raw split from prompt and target strings; ``template`` (with ``{prompt}``) formats every prompt. An
    empty target is refused (nothing to predict but the end)."""
    _check_kind(kind)
    if template is not None:
        if "{prompt}" not in template:
            raise MixcdError(f"options.template must contain {{prompt}}, got {template!r}")
        prompts = [template.replace("{prompt}", p) for p in prompts]
    empty = [i for i, t in enumerate(targets) if not t]
    if empty:
        raise MixcdError(f"{description}: {len(empty)} rows have an empty target (first: row {empty[0]}); a "
                         "generation row must have something to generate")
    return PairSource(prompts, targets, kind, description, _fingerprint(kind, prompts, targets))


@DATASETS.register("generated", help="generated generation pairs: copy, reverse, a letter cipher or addition "
                                      "(options.operation, kind=causal_lm|seq2seq, n_train, n_test, lengths)")
def load_generated(root: str | None = None, train: bool = True, download: bool = False, operation: str = "copy",
                   kind: str = "causal_lm", n_train: int = 4000, n_test: int = 500, min_len: int = 3,
                   max_len: int = 8, alphabet: str = LETTERS[:12], shift: int = 1, digits: int = 2,
                   template: str | None = None, data_seed: int = 1234, **unknown: Any) -> PairSource:
    """A seeded split of ``operation`` (`tasks.make_pairs`); ``template`` with ``{op}`` and ``{x}``."""
    if unknown:
        raise unknown_choice("option of generated tasks", str(next(iter(unknown))),
                             ["operation", "kind", "n_train", "n_test", "min_len", "max_len", "alphabet", "shift",
                              "digits", "template", "data_seed"])
    if operation not in OPERATIONS:
        raise unknown_choice("generated operation", str(operation), OPERATIONS)
    split = "train" if train else "test"
    pairs = make_pairs(operation, int(n_train if train else n_test), int(data_seed), split, int(min_len),
                       int(max_len), str(alphabet), int(shift), int(digits), template)
    return pair_source(pairs.prompts, pairs.targets, _check_kind(kind), pairs.description)


@DATASETS.register("pairs", help="prompt/target pairs from JSONL/CSV/Parquet, a saved datasets folder or "
                                  "hub:<name> (options.train_path/test_path, prompt, target, template, kind)")
def load_pairs(root: str, train: bool, download: bool = False, train_path: str | None = None,
               test_path: str | None = None, prompt: str = "prompt", target: str = "target",
               template: str | None = None, kind: str = "causal_lm", train_split: str = "train",
               test_split: str = "test", hub_config: str | None = None, **unknown: Any) -> PairSource:
    """One split of a prompt/target dataset, read as text classification tasks read theirs (`text.read_table`)."""
    if unknown:
        raise unknown_choice("option of pairs tasks", str(next(iter(unknown))),
                             ["train_path", "test_path", "prompt", "target", "template", "kind", "train_split",
                              "test_split", "hub_config"])
    location = train_path if train else test_path
    if not location:
        raise MixcdError(f"pairs task needs options.{'train' if train else 'test'}_path: a JSONL/CSV/Parquet file, "
                         "a saved datasets folder, or hub:<name>")
    columns, where = read_table(str(location), Path(root), train_split if train else test_split, hub_config)
    n = len(next(iter(columns.values()), []))
    if n == 0:
        raise MixcdError(f"{where} is empty: no rows to read")
    for name, key in ((prompt, "prompt"), (target, "target")):
        if name not in columns:
            raise MixcdError(f"{where} has no {key} field '{name}' (fields: {', '.join(map(str, columns))}); set "
                             f"options.{key}")
    prompts = ["" if v is None else str(v) for v in columns[prompt]]
    targets = ["" if v is None else str(v) for v in columns[target]]
    return pair_source(prompts, targets, _check_kind(kind), where, template)


# ---------------------------------------------------------------- tokenised


class GenTokenSource:
    """A tokenised generation split. ``batch(index)`` gives the kind's teacher-forcing layout: inputs (n, 1, L)
    for a decoder (``[bos] prompt target``), (n, 2, L) for an encoder–decoder (``prompt </s>``, ``<start>
    target``), labels (n, L), and the batch's non-padding tokens (both rows of an encoder–decoder)."""

    laid_out = True  # `data.Task.batch` asks the source for the batch: labels depend on prompt and target
    label_pad = IGNORE

    def __init__(self, prompts: list[list[int]], targets: list[list[int]], kind: str, eos_id: int,
                 bos_id: int | None, start_id: int, fingerprint: str, description: str) -> None:
        self.prompts, self.target_ids, self.kind = prompts, targets, kind
        self.eos_id, self.bos_id, self.start_id = eos_id, bos_id, start_id
        self.fingerprint, self.description = fingerprint, description
        self.targets = torch.tensor([len(t) + 1 for t in targets], dtype=torch.int64)
        self.channels = 0
        self.mean: tuple[float, ...] = ()
        self.std: tuple[float, ...] = ()
        self.aux: dict[str, torch.Tensor] = {}

    def _layout(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = index.cpu().tolist()
        prompts, targets = [self.prompts[i] for i in rows], [self.target_ids[i] for i in rows]
        if not rows:
            width = 1
            return torch.full((0, 1 if self.kind == "causal_lm" else 2, width), PAD), torch.full((0, width), IGNORE)
        if self.kind == "causal_lm":
            x, y = causal_layout(prompts, targets, self.eos_id, self.bos_id)
            return x.unsqueeze(1), y
        return seq2seq_layout(prompts, targets, self.eos_id, self.start_id)

    def inputs(self, index: torch.Tensor) -> torch.Tensor:
        return self._layout(index)[0]

    def batch(self, index: torch.Tensor) -> Batch:
        x, y = self._layout(index)
        return Batch(x, y, tokens=int((x != PAD).sum()))

    def __len__(self) -> int:
        return len(self.prompts)


@dataclass
class LMTokens:
    """What the model needs from the experiment's tokenizer."""

    kind: str
    vocab_size: int
    pad_id: int
    eos_id: int
    bos_id: int | None
    tokenizer: Any


def generation_tokenizer(name: str | None, tokenizer: str | None, corpus: list[str]) -> CharTokenizer | HFTokenizer:
    """``tokenizer`` (a folder) if given, else the one in the model folder ``name``, else — a randomly
    initialised model — a character-level one built on ``corpus``."""
    if tokenizer or name:
        where = Path(str(tokenizer or name)).expanduser()
        if not where.is_dir():
            hf_location(str(tokenizer or name))  # a hub name: one line when offline
            from transformers import AutoTokenizer

            try:
                tok = AutoTokenizer.from_pretrained(str(tokenizer or name), use_fast=True)
            except (OSError, ValueError) as exc:
                raise MixcdError(f"no tokenizer for '{tokenizer or name}': {str(exc).splitlines()[0]}") from exc
            digest = hashlib.sha256(tok.backend_tokenizer.to_str().encode()).hexdigest()[:16]
            return HFTokenizer(tok, digest, f"hub {tokenizer or name}")
        tok, digest = folder_tokenizer(where)
        return HFTokenizer(tok, digest, f"folder {where}")
    return CharTokenizer.build(corpus)


def encode_generation(exp: Any, kind: str, name: str | None, tokenizer: str | None, max_length: int,
                      model_max: int | None) -> LMTokens:
    """Tokenise every split of a generation experiment in place and record each split's token fingerprint in its
    task definition (θ0's and the snapshots' cache keys follow the tokens). A prompt that does not fit the context
    (``max_length``, and the model's own limit) loses its oldest tokens, with one note saying how many rows; a
    target that does not fit is refused: it could never be generated whole."""
    tasks = exp.tasks()  # one kind for all: build_experiment refuses a mix
    sources = {id(t.source): t.source for t in tasks}
    train_sources = {id(t.source): t.source for t in (exp.pool, *(s.train for s in exp.stages))}
    corpus = [s for src in train_sources.values() for s in (*src.prompts, *src.texts)]
    tok = generation_tokenizer(name, tokenizer, corpus)
    limit = min(max_length, model_max) if model_max else max_length
    start_id = tok.pad_id
    encoded: dict[int, GenTokenSource] = {}
    for key, src in sources.items():
        prompts = [tok.encode(p) for p in src.prompts]
        targets = [tok.encode(t) for t in src.texts]
        # a decoder reads [bos] prompt target, an encoder prompt </s> and its decoder <start> target: either way a
        # target fits when one token more does (the decoder's at least one token of context before it)
        own = (1 if tok.bos_id is not None else 0) if kind == "causal_lm" else 1
        too_long = [i for i, t in enumerate(targets) if len(t) + 1 > limit]
        if too_long:
            i = too_long[0]
            raise MixcdError(f"{src.description}: {len(too_long)} targets do not fit the context of {limit} tokens "
                             f"(row {i}: {len(targets[i])} tokens); raise model.max_length if the model can position "
                             "them, or drop those rows")
        cut = 0
        for i, (p, t) in enumerate(zip(prompts, targets, strict=True)):
            room = limit - own - (len(t) if kind == "causal_lm" else 0)
            if len(p) > room:
                prompts[i] = p[len(p) - room:] if room > 0 else []
                cut += 1
        if cut:
            note(f"{cut} of {len(src)} prompts of {src.description} are longer than the context of {limit} tokens "
                 "and lost their oldest tokens (model.max_length, or the model's own limit); targets are never cut")
        if kind == "causal_lm" and tok.bos_id is None and any(not p for p in prompts):
            raise MixcdError(f"{src.description}: a row has an empty prompt and the tokenizer has no "
                             "beginning-of-sequence token, so a decoder has nothing to predict its first token from")
        digest = hashlib.sha256(json.dumps([src.fingerprint, tok.fingerprint, limit, kind]).encode()).hexdigest()[:16]
        encoded[key] = GenTokenSource(prompts, targets, kind, tok.eos_id, tok.bos_id if kind == "causal_lm" else None,
                                      start_id, digest, src.description)

    def swap(task: Any) -> Any:
        tokens = encoded[id(task.source)]
        return replace(task, source=tokens, targets=tokens.targets[task.index],
                       definition={**task.definition, "tokens": tokens.fingerprint})

    exp.map_tasks(swap)
    lm = LMTokens(kind, tok.vocab_size, tok.pad_id, tok.eos_id, tok.bos_id if kind == "causal_lm" else None, tok)
    exp.vocab_size = tok.vocab_size
    exp.lm = lm
    return lm
