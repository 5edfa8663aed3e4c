"""Text tasks: raw text splits, tokenizers, and token sources read by index like image sources.

A text split is read into a `TextSource` (the segments of each row — one, or two for a sentence pair
— and integer labels). Once the experiment's tokenizer is known (it belongs to the model: a pretrained
encoder's own, or a word-level one built on the experiment's training text), each split is encoded
once into a `TokenSource`, cached on disk by fingerprint. A batch of a token source is a (n, 2, L)
int64 tensor: token ids and segment ids, padded to the batch's longest row with `PAD` (-1), which the
text backbone turns into its attention mask. Nothing here needs the ``text`` extra until a tokenizer
is built or a Parquet file, a saved ``datasets`` folder or a hub dataset is read.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import hub
from .artifacts import atomic_path, atomic_torch_save, file_lock
from .console import note
from .errors import MixcdError, unknown_choice
from .hub import TEXT_EXTRA, hf_location, require_text_extra
from .sources import DATASETS, PAD

CACHE_KEY = "paths.cache_dir"  # what chooses the folder of the token and vocabulary caches, for write errors
TEXT_DATASETS = ("text", "topic_text")  # the registered datasets that hold text (sources.DATASETS)
FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")


# ---------------------------------------------------------------- raw text


@dataclass
class TextSource:
    """One split of a text dataset: each row's segments (1 or 2 strings) and its integer label."""

    texts: list[tuple[str, ...]]
    targets: torch.Tensor
    description: str  # where it came from, for messages
    fingerprint: str  # hash of the content (segments and labels), the token cache's key
    aux: dict[str, torch.Tensor] = field(default_factory=dict)
    channels: int = 0  # not images: experiments check that all their tasks are of one kind
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def inputs(self, index: torch.Tensor) -> torch.Tensor:
        raise MixcdError(f"text split {self.description} was not tokenised: text tasks need model=hf")

    def __len__(self) -> int:
        return int(self.targets.shape[0])


def content_fingerprint(texts: Sequence[tuple[str, ...]], targets: torch.Tensor) -> str:
    h = hashlib.sha256()
    for row in texts:
        h.update("\x1f".join(row).encode())
        h.update(b"\x1e")
    h.update(targets.numpy().astype(np.int64).tobytes())
    return h.hexdigest()[:16]


# utf-8-sig: a byte-order mark (Excel and Notepad write one) is dropped, not glued to the first field name,
# where it would make the header 'label' unequal to options.label=label although both print the same.
TEXT_ENCODING = "utf-8-sig"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding=TEXT_ENCODING)
    if text.lstrip().startswith("["):  # a .json file holding one list of records
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MixcdError(f"{path} is not valid JSON ({exc.msg}, line {exc.lineno})") from exc
        return [r for r in rows if isinstance(r, dict)]
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise MixcdError(f"{path} line {i} is not a JSON object ({exc.msg})") from exc
    return rows


def _columns_of_rows(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    names = list(dict.fromkeys(k for r in rows[:100] for k in r))
    return {k: [r.get(k) for r in rows] for k in names}


def _read_file(path: Path) -> dict[str, list[Any]]:
    suffix = path.suffix.lower()
    try:
        if suffix in (".jsonl", ".json"):
            return _columns_of_rows(_read_jsonl(path))
        if suffix in (".csv", ".tsv"):
            with open(path, newline="", encoding=TEXT_ENCODING) as f:
                return _columns_of_rows(list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")))
    except UnicodeDecodeError as exc:
        raise MixcdError(f"{path} is not UTF-8 text (byte {exc.start}: {exc.object[exc.start:exc.start + 1]!r}); "
                         "save it as UTF-8") from exc
    except csv.Error as exc:  # e.g. a NUL byte, or a field past csv's size limit
        raise MixcdError(f"{path} is not a readable {suffix[1:].upper()} file ({exc})") from exc
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise MixcdError(f"reading {path} needs pyarrow: {TEXT_EXTRA}") from exc
        try:
            return pq.read_table(path).to_pydict()
        except Exception as exc:  # a damaged or foreign file
            raise MixcdError(f"{path} is not a readable Parquet file ({type(exc).__name__})") from exc
    raise MixcdError(f"{path}: unknown text file type '{suffix}' (use one of {', '.join(FILE_SUFFIXES)}, a folder "
                     "saved by datasets.save_to_disk, or hub:<dataset name>)")


def _from_datasets(ds: Any, split: str, where: str) -> dict[str, list[Any]]:
    if isinstance(getattr(ds, "column_names", None), dict):  # a DatasetDict: one split of it
        if split not in ds:
            raise MixcdError(f"{where} has splits {sorted(ds.keys())}, not '{split}': set the task's "
                             "options.train_split / options.test_split")
        ds = ds[split]
    return ds.to_dict()


def read_table(location: str, root: Path, split: str, hub_config: str | None = None) -> tuple[dict[str, list], str]:
    """Columns of a text split: a JSONL/JSON/CSV/TSV/Parquet file or a ``datasets.save_to_disk`` folder
    (relative paths are under ``root``), or ``hub:<name>`` (a hub dataset, needs internet). → (columns, where)."""
    if location.startswith("hub:"):
        name = location[4:]
        require_text_extra(f"hub dataset '{name}'")
        if not hub.hub_reachable():
            raise MixcdError(f"hub dataset '{name}' needs the Hugging Face hub, which is unreachable: download it "
                             "elsewhere (datasets.load_dataset(...).save_to_disk(DIR) or to JSONL) and point the task "
                             "at the folder or file")
        import datasets

        try:
            return _from_datasets(datasets.load_dataset(name, hub_config, split=split), split, location), location
        except Exception as exc:  # unknown name, configuration or split, or the hub failing midway: all user-facing
            raise MixcdError(f"hub dataset '{name}' ({hub_config or 'default'}, split {split}) could not be "
                             f"loaded: {str(exc).splitlines()[0]}") from exc
    path = Path(location).expanduser()
    path = path if path.is_absolute() else root / path
    if path.is_dir():
        require_text_extra(f"the saved dataset {path}")
        import datasets

        try:
            ds = datasets.load_from_disk(str(path))
        except FileNotFoundError as exc:
            raise MixcdError(f"{path} is not a folder written by datasets' save_to_disk "
                             f"({str(exc).splitlines()[0]})") from exc
        return _from_datasets(ds, split, str(path)), str(path)
    if not path.is_file():
        raise MixcdError(f"text file not found: {path}" + ("" if Path(location).is_absolute() else
                                                          f" (relative paths are read under {root})"))
    return _read_file(path), str(path)


def label_ids(values: list[Any], labels: list[Any] | None, where: str) -> torch.Tensor:
    """Integer labels: positions in ``labels`` (the class list) when given, else the values themselves
    (which must then be non-negative integers). A value outside the class list is an error."""
    if labels is not None:
        lookup = {str(v): i for i, v in enumerate(labels)}
        ids = []
        for row, v in enumerate(values):
            if str(v) not in lookup:
                raise MixcdError(f"{where}: row {row} has label {v!r}, which is not in the class list "
                                 f"options.labels={list(labels)}")
            ids.append(lookup[str(v)])
        return torch.tensor(ids, dtype=torch.int64)
    out = []
    for row, v in enumerate(values):
        if isinstance(v, str) and v.strip().lstrip("-").isdigit():
            v = int(v)  # CSV cells are strings
        if isinstance(v, bool) or not isinstance(v, int | np.integer):
            found = sorted({str(x) for x in values})[:10]
            raise MixcdError(f"{where}: labels are not integers (row {row}: {v!r}); list the classes in order as "
                             f"options.labels=[...] (values found: {', '.join(found)})")
        if v < 0:
            raise MixcdError(f"{where}: row {row} has label {v}, outside the class list (unlabelled rows, as in "
                             "GLUE test splits, must be dropped; or list the classes as options.labels)")
        out.append(int(v))
    return torch.tensor(out, dtype=torch.int64)


def load_text_source(root: str, train: bool, train_path: str | None = None, test_path: str | None = None,
                     text: str | Sequence[str] = "text", label: str = "label", labels: list[Any] | None = None,
                     train_split: str = "train", test_split: str = "test", hub_config: str | None = None,
                     **unknown: Any) -> TextSource:
    """One split of a text dataset from the task's options (``train``/``test`` locations, ``text`` field or
    two fields for sentence pairs, ``label`` field, optional class list ``labels``)."""
    if unknown:
        raise unknown_choice("option of text tasks", str(next(iter(unknown))),
                             ["train_path", "test_path", "text", "label", "labels", "train_split", "test_split",
                              "hub_config"])
    location = train_path if train else test_path
    split = train_split if train else test_split
    if not location:
        raise MixcdError(f"text task needs options.{'train' if train else 'test'}_path: a JSONL/CSV/Parquet file, "
                         "a saved datasets folder, or hub:<name>")
    columns, where = read_table(str(location), Path(root), split, hub_config)
    fields = [text] if isinstance(text, str) else list(text)
    if not 1 <= len(fields) <= 2:
        raise MixcdError(f"options.text names one field, or two for sentence pairs; got {fields}")
    n = len(next(iter(columns.values()), []))
    if n == 0:
        raise MixcdError(f"{where} is empty: no rows to read")
    for name in (*fields, label):
        if name not in columns:
            raise MixcdError(f"{where} has no field '{name}' (fields: {', '.join(map(str, columns))}); set "
                             "options.text / options.label")
    segments = [[("" if v is None else str(v)) for v in columns[f]] for f in fields]
    rows = list(zip(*segments, strict=True))
    targets = label_ids(columns[label], labels, where)
    return TextSource(rows, targets, where, content_fingerprint(rows, targets))


# ---------------------------------------------------------------- generated corpus

@DATASETS.register("text", help="text classification from JSONL/CSV/Parquet, a saved datasets folder or hub:<name> "
                                 "(options.train_path/test_path, text, label; needs the text extra)")
def _load_text(**kwargs: Any) -> Any:
    return load_text_source(**{k: v for k, v in kwargs.items() if k != "download"})


@DATASETS.register("topic_text", help="generated text: sentences from topic vocabularies, related topics sharing "
                                       "words (the shipped text experiment; needs the text extra to tokenise)")
def _load_topic_text(**kwargs: Any) -> Any:
    return make_topic_text(**kwargs)


_SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "sa", "ti", "po", "de", "fu", "ga", "hi", "jo", "be", "vu", "zo",
              "ar", "el", "on", "is")


def _pseudo_words(n: int, rng: np.random.Generator, taken: set[str]) -> list[str]:
    words: list[str] = []
    while len(words) < n:
        w = "".join(rng.choice(_SYLLABLES, size=int(rng.integers(2, 4))))
        if w not in taken:
            taken.add(w)
            words.append(w)
    return words


def make_topic_text(root: str | None = None, train: bool = True, num_topics: int = 4, topic_words: int = 40,
                    shared: float = 0.5, filler_words: int = 300, topic_rate: float = 0.3, min_len: int = 8,
                    max_len: int = 16, n_train: int = 8000, n_test: int = 2000, data_seed: int = 1234,
                    **_: Any) -> TextSource:
    """A generated corpus of 2·num_topics classes: class j < num_topics draws its topic words from its own
    vocabulary; class j + num_topics is a *related* topic that reuses a ``shared`` fraction of class j's
    words and adds its own. Each sentence mixes topic words (rate ``topic_rate``) into common filler words,
    so a prior task on the first topics and a fine-tune task on the related ones share words: learning
    the new meaning of a shared word is what makes the old classes forgotten."""
    rng = np.random.default_rng(int(data_seed))
    taken: set[str] = set()
    filler = _pseudo_words(filler_words, rng, taken)
    vocab = [_pseudo_words(topic_words, rng, taken) for _ in range(num_topics)]
    n_shared = int(round(shared * topic_words))
    for j in range(num_topics):
        vocab.append(list(rng.choice(vocab[j], size=n_shared, replace=False)) +
                     _pseudo_words(topic_words - n_shared, rng, taken))
    split_rng = np.random.default_rng([int(data_seed), 1 if train else 2])
    n = n_train if train else n_test
    labels = split_rng.integers(0, 2 * num_topics, size=n)
    rows = []
    for y in labels:
        length = int(split_rng.integers(min_len, max_len + 1))
        from_topic = split_rng.random(length) < topic_rate
        words = [vocab[y][int(split_rng.integers(len(vocab[y])))] if t else filler[int(split_rng.integers(len(filler)))]
                 for t in from_topic]
        rows.append((" ".join(words),))
    targets = torch.as_tensor(labels, dtype=torch.int64)
    return TextSource(rows, targets, f"topic_text/{'train' if train else 'test'}", content_fingerprint(rows, targets))


def write_text_file(source: TextSource, path: Path, fields: Sequence[str] = ("text",), label: str = "label") -> None:
    """Write a text split as JSONL, CSV/TSV or Parquet by suffix (for tests, and to hand a corpus to other tools)."""
    records = [{**dict(zip(fields, row, strict=True)), label: int(y)} for row, y in
               zip(source.texts, source.targets.tolist(), strict=True)]
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), path)
    elif path.suffix in (".csv", ".tsv"):
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, [*fields, label], delimiter="\t" if path.suffix == ".tsv" else ",")
            writer.writeheader()
            writer.writerows(records)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


# ---------------------------------------------------------------- tokenizers


@dataclass
class TextEncoder:
    """A Hugging Face fast tokenizer with what the model needs from it."""

    tokenizer: Any  # transformers.PreTrainedTokenizerFast
    fingerprint: str
    max_length: int
    origin: str  # "folder <path>", "hub <name>" or "word-level, built on the experiment's training text"

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def encode(self, texts: Sequence[tuple[str, ...]], batch: int = 4096) -> tuple[np.ndarray, np.ndarray,
                                                                                np.ndarray, int]:
        """Token ids, segment ids (flat int32 / int8), row offsets, and how many rows were truncated."""
        ids: list[list[int]] = []
        types: list[list[int]] = []
        truncated = 0
        for start in range(0, len(texts), batch):
            chunk = texts[start:start + batch]
            pair = len(chunk[0]) == 2 if chunk else False
            args = ([r[0] for r in chunk], [r[1] for r in chunk]) if pair else ([r[0] for r in chunk],)
            full = self.tokenizer(*args, truncation=False, return_token_type_ids=True, verbose=False)
            long_rows = [i for i, x in enumerate(full["input_ids"]) if len(x) > self.max_length]
            if long_rows:  # encoded again with the tokenizer's own truncation (longest segment first for pairs)
                truncated += len(long_rows)
                cut = self.tokenizer(*([a[i] for i in long_rows] for a in args), truncation=True,
                                     max_length=self.max_length, return_token_type_ids=True)
                for k, i in enumerate(long_rows):
                    full["input_ids"][i] = cut["input_ids"][k]
                    full["token_type_ids"][i] = cut["token_type_ids"][k]
            ids += full["input_ids"]
            types += full["token_type_ids"]
        offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(x) for x in ids])
        flat_ids = np.fromiter((t for x in ids for t in x), dtype=np.int32, count=int(offsets[-1]))
        flat_types = np.fromiter((t for x in types for t in x), dtype=np.int8, count=int(offsets[-1]))
        return flat_ids, flat_types, offsets, truncated


_WORDS = re.compile(r"\w+|[^\w\s]")


def word_level_tokenizer(corpus: Callable[[], list[tuple[str, ...]]], lowercase: bool = True,
                         min_count: int = 1, vocab_file: Path | None = None) -> tuple[Any, str]:
    """A word-level tokenizer (``tokenizers`` WordLevel, [CLS] a [SEP] b [SEP] template) whose vocabulary is
    every word of ``corpus`` seen ``min_count`` times, ordered by count then spelling, so the same text
    always gives the same ids (the library's trainer breaks count ties in hash order). Counting reads the whole
    corpus, so the word list is kept in ``vocab_file`` (named by the corpus's fingerprint) and read from there
    next time. → (tokenizer, digest)."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    norm = normalizers.Sequence([normalizers.NFKC(), *([normalizers.Lowercase()] if lowercase else [])])
    split = pre_tokenizers.Whitespace()
    words = _cached_words(vocab_file)
    if words is None:
        counts: Counter[str] = Counter()
        for row in corpus():
            for segment in row:
                counts.update(w for w, _ in split.pre_tokenize_str(norm.normalize_str(segment)))
        words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        if vocab_file is not None:
            with atomic_path(vocab_file, CACHE_KEY) as tmp:  # makes the folder, or says which key to change
                tmp.write_text(json.dumps(words))
    vocab = {s: i for i, s in enumerate(SPECIALS)} | {w: len(SPECIALS) + i for i, w in enumerate(words)}
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = norm
    tok.pre_tokenizer = split
    cls_id, sep_id = vocab["[CLS]"], vocab["[SEP]"]
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id),
                                                                                      ("[SEP]", sep_id)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]")
    digest = hashlib.sha256(json.dumps([lowercase, words]).encode()).hexdigest()[:16]
    return fast, digest


def _cached_words(vocab_file: Path | None) -> list[str] | None:
    if vocab_file is None or not vocab_file.is_file():
        return None
    try:
        words = json.loads(vocab_file.read_text())
    except (OSError, ValueError):  # a damaged entry is counted again
        return None
    return words if isinstance(words, list) and all(isinstance(w, str) for w in words) else None


TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer.model", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model")


def folder_tokenizer(folder: Path) -> tuple[Any, str]:
    """The tokenizer saved in a model folder (AutoTokenizer); → (tokenizer, digest of its files)."""
    present = [f for f in TOKENIZER_FILES if (folder / f).is_file()]
    if not present:
        raise MixcdError(f"model folder {folder} holds no tokenizer ({', '.join(TOKENIZER_FILES[:4])}, ...): a "
                         "pretrained encoder's embeddings only make sense with its own tokenizer; save it there "
                         "(AutoTokenizer.from_pretrained(name).save_pretrained(folder)) or give model.tokenizer=PATH")
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(folder), use_fast=True)
    except (OSError, ValueError) as exc:
        raise MixcdError(f"could not load the tokenizer in {folder}: {str(exc).splitlines()[0]}") from exc
    if not getattr(tok, "is_fast", False):
        raise MixcdError(f"the tokenizer in {folder} has no fast (Rust) version; mixcd encodes with fast tokenizers")
    h = hashlib.sha256()
    for f in sorted(present):
        h.update((folder / f).read_bytes())
    return tok, h.hexdigest()[:16]


def model_position_limit(name: str | None, config: dict[str, Any] | None) -> int | None:
    """How many positions the encoder can read (``max_position_embeddings``), when it says."""
    if config is not None:
        return int(config.get("max_position_embeddings", 512))
    if not name:
        return None
    from transformers import AutoConfig

    where, _ = hf_location(name)
    try:
        return getattr(AutoConfig.from_pretrained(where), "max_position_embeddings", None)
    except (OSError, ValueError) as exc:
        raise MixcdError(f"{where} holds no Hugging Face model config (config.json): "
                         f"{str(exc).splitlines()[0]}") from exc


def make_encoder(name: str | None, tokenizer: str | None, max_length: int, model_max: int | None,
                 corpus: Callable[[], list[tuple[str, ...]]], lowercase: bool = True,
                 vocab_file: Path | None = None) -> TextEncoder:
    """The experiment's tokenizer: ``tokenizer`` (a folder) if given, else the one in the model folder
    ``name`` (or the hub model's), else — a randomly initialised model — a word-level one built on ``corpus``.
    Rows are cut at ``max_length`` tokens, and never beyond what the model can position (``model_max``)."""
    require_text_extra("text tasks")
    limit = min(max_length, model_max) if model_max else max_length
    if tokenizer:
        tok, digest = folder_tokenizer(Path(tokenizer).expanduser())
        origin = f"folder {tokenizer}"
    elif name and hf_location(name)[1]:
        tok, digest = folder_tokenizer(Path(name).expanduser())
        origin = f"folder {name}"
    elif name:
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(name, use_fast=True)
        except (OSError, ValueError) as exc:  # no such repository, or no tokenizer in it
            raise MixcdError(f"no tokenizer for hub model '{name}': {str(exc).splitlines()[0]}") from exc
        digest = hashlib.sha256(tok.backend_tokenizer.to_str().encode()).hexdigest()[:16]
        origin = f"hub {name}"
    else:
        tok, digest = word_level_tokenizer(corpus, lowercase, vocab_file=vocab_file)
        origin = "word-level, built on the experiment's training text"
    own_max = getattr(tok, "model_max_length", None)
    if own_max and own_max < 1_000_000:
        limit = min(limit, int(own_max))
    return TextEncoder(tok, digest, limit, origin)


# ---------------------------------------------------------------- token sources


class TokenSource:
    """A tokenised split: `images(index)` returns (n, 2, L) int64 token and segment ids, padded with PAD to
    the longest of those rows (not of the split), so a batch of short sentences stays short."""

    def __init__(self, ids: torch.Tensor, types: torch.Tensor, offsets: torch.Tensor, targets: torch.Tensor,
                 fingerprint: str) -> None:
        self.ids, self.types, self.offsets, self.targets = ids, types, offsets, targets
        self.fingerprint = fingerprint
        self.channels = 0
        self.mean: tuple[float, ...] = ()
        self.std: tuple[float, ...] = ()
        self.aux: dict[str, torch.Tensor] = {}

    def inputs(self, index: torch.Tensor) -> torch.Tensor:
        index = index.cpu()
        start = self.offsets[index]
        length = self.offsets[index + 1] - start
        width = max(1, int(length.max())) if index.numel() else 1
        pos = torch.arange(width)
        inside = pos[None, :] < length[:, None]
        at = (start[:, None] + pos[None, :]).clamp_(max=max(0, self.ids.numel() - 1))
        out = torch.full((index.numel(), 2, width), PAD, dtype=torch.int64)
        if self.ids.numel():
            out[:, 0] = torch.where(inside, self.ids[at].long(), PAD)
            out[:, 1] = torch.where(inside, self.types[at].long(), PAD)
        return out

    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def __len__(self) -> int:
        return int(self.targets.shape[0])


def _arrays_digest(ids: torch.Tensor, types: torch.Tensor, offsets: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in (ids, types, offsets):
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def tokenise(source: TextSource, encoder: TextEncoder, cache_dir: Path | None,
             note: Callable[[str], None] | None = None) -> tuple[TokenSource, bool]:
    """``source`` encoded by ``encoder``, from the token cache when an entry for the same text, tokenizer and
    length limit exists and its arrays hash to what was recorded (a damaged entry is re-encoded with a note).
    → (tokens, from cache)."""
    key = hashlib.sha256(f"{source.fingerprint}|{encoder.fingerprint}|{encoder.max_length}".encode()).hexdigest()[:16]
    if cache_dir is None:
        entry, cached = _encoded(source, encoder, key), False
    else:
        path = cache_dir / "tokens" / f"{key}.pt"
        with file_lock(path.with_suffix(".lock"), CACHE_KEY):
            entry = _read_token_cache(path, key, note)
            cached = entry is not None
            if entry is None:
                entry = _encoded(source, encoder, key)
                atomic_torch_save(entry, path, CACHE_KEY)
    if entry["truncated"] and note is not None:
        note(f"{entry['truncated']} of {len(source)} rows of {source.description} are longer than "
             f"{encoder.max_length} tokens and were truncated (model.max_length, or the model's own limit)")
    return TokenSource(entry["ids"], entry["types"], entry["offsets"], source.targets, key), cached


def _encoded(source: TextSource, encoder: TextEncoder, key: str) -> dict[str, Any]:
    """A token cache entry: the encoded arrays, how many rows were cut, and the digest that verifies them."""
    ids, types, offsets, truncated = encoder.encode(source.texts)
    arrays = (torch.from_numpy(ids), torch.from_numpy(types), torch.from_numpy(offsets))
    return {"key": key, "ids": arrays[0], "types": arrays[1], "offsets": arrays[2], "truncated": truncated,
            "digest": _arrays_digest(*arrays), "encoder": encoder.origin}


def _read_token_cache(path: Path, key: str, note: Callable[[str], None] | None) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
        ok = entry["key"] == key and entry["digest"] == _arrays_digest(entry["ids"], entry["types"], entry["offsets"])
    except Exception:  # truncated, foreign or missing fields: the cache can always be remade
        ok = False
    if not ok:
        if note is not None:
            note(f"token cache {path} is damaged; encoding the split again")
        return None
    return entry


# ---------------------------------------------------------------- experiments


def encode_experiment(exp: Any, name: str | None, tokenizer: str | None, max_length: int, model_max: int | None,
                      cache_dir: Path | None, lowercase: bool = True) -> TextEncoder:
    """Tokenise every split of a text experiment in place (one encoder for all, each split once) and record
    each split's token fingerprint in its task definition, so θ0's and the snapshots' cache keys follow the
    tokens. A word-level vocabulary is built on the training splits of every task of the experiment."""
    from dataclasses import replace

    tasks = exp.tasks()
    sources = {id(t.source): t.source for t in tasks}
    train_sources = {id(t.source): t.source for t in (exp.pool, *(s.train for s in exp.stages))}

    def corpus() -> list[tuple[str, ...]]:
        return [row for s in train_sources.values() for row in s.texts]

    corpus_key = hashlib.sha256(json.dumps([lowercase, *(s.fingerprint for s in train_sources.values())]).encode())
    vocab_file = cache_dir / "vocab" / f"{corpus_key.hexdigest()[:16]}.json" if cache_dir is not None else None
    encoder = make_encoder(name, tokenizer, max_length, model_max, corpus, lowercase, vocab_file)
    encoded = {key: tokenise(s, encoder, cache_dir, note)[0] for key, s in sources.items()}

    def swap(task: Any) -> Any:
        tokens = encoded[id(task.source)]
        return replace(task, source=tokens, definition={**task.definition, "tokens": tokens.fingerprint})

    exp.map_tasks(swap)
    exp.vocab_size = encoder.vocab_size
    return encoder
