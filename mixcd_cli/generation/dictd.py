"""Real generation data that installs offline: dictd dictionaries from Debian's packages.

A dictd database is a ``.index`` file (one line per headword: the headword, the entry's offset and length in
the data file written in dictd's base-64 digits, optionally the original spelling) and a ``.dict.dz`` data file
(dictzip: gzip with random-access chunks, readable as plain gzip). `read_dictd` gives the entries in the
index's own order (so splits made from positions are stable), skips the ``00database…`` header entries, and
refuses an index that points past the data or a data file that is truncated.

Two tasks are made from them (docs/design.md §10.1): translation from the FreeDict bilingual dictionaries
(``dict-freedict-eng-deu`` …; a language tag in the prompt, so one model serves several languages) and
closed-book question answering from V.E.R.A., the acronym dictionary (``dict-vera``: "What does X stand for?").
"""

from __future__ import annotations

import gzip
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import MixcdError, unknown_choice
from ..sources import DATASETS
from .data import PairSource, pair_source

DICTD_DIR = Path("/usr/share/dictd")
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_VALUE = {c: i for i, c in enumerate(B64)}
# FreeDict's metadata lines inside an entry (the sense lines are the others)
_LABEL = re.compile(r"^\s*(see|Synonyms?|Antonyms?|Note|Notes|Usage|Example|Examples)\s*:", re.IGNORECASE)
_SENSE_NUMBER = re.compile(r"^\s*\d+\.\s+")
_ANNOTATION = re.compile(r"<[^<>]*>|\[[^\[\]]*\]|\{[^{}]*\}")
_PARENS = re.compile(r"\([^()]*\)")


@dataclass(frozen=True)
class Entry:
    """One dictionary entry: its headword as the entry spells it, and its senses, each a list of renderings."""

    headword: str
    senses: tuple[tuple[str, ...], ...]


def b64_number(text: str, where: str) -> int:
    """A dictd index number (base 64, most significant digit first)."""
    value = 0
    for ch in text:
        if ch not in _B64_VALUE:
            raise MixcdError(f"{where}: '{text}' is not a dictd index number")
        value = value * 64 + _B64_VALUE[ch]
    return value


def package_files(name: str, package: str, directory: Path = DICTD_DIR) -> tuple[Path, Path]:
    """The index and data files of dictionary ``name`` (e.g. ``freedict-eng-deu``), or one line saying which
    Debian package brings them."""
    index, data = directory / f"{name}.index", directory / f"{name}.dict.dz"
    if not index.is_file() or not data.is_file():
        raise MixcdError(f"dictionary {name} is not installed ({index} missing): apt-get install -y {package}")
    return index, data


def read_dictd(index_path: Path, data_path: Path, keep: Any = None) -> list[tuple[str, str]]:
    """Every entry of a dictd database as (index headword, entry text), in index order, header entries skipped;
    an entry two headwords point to is given once, at its first headword. ``keep(headword)``, when given, skips
    the other entries before they are decoded (the English–German dictionary has 460,000)."""
    try:
        raw = data_path.read_bytes()
        data = gzip.decompress(raw) if data_path.suffix == ".dz" else raw
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise MixcdError(f"{data_path} is truncated or not a dictzip file ({exc}): reinstall its package") from exc
    except OSError as exc:
        raise MixcdError(f"cannot read {data_path}: {exc.strerror or exc}") from exc
    try:
        lines = index_path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise MixcdError(f"cannot read {index_path} as a dictd index: {exc}") from exc
    out: list[tuple[str, str]] = []
    seen: set[tuple[int, int]] = set()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        where = f"{index_path}:{number}"
        if len(fields) < 3:
            raise MixcdError(f"{where}: a dictd index line has a headword, an offset and a length, got {line!r}")
        headword = fields[0]
        if headword.startswith("00database") or headword.startswith("00-database"):
            continue
        offset, length = b64_number(fields[1], where), b64_number(fields[2], where)
        if offset + length > len(data):
            raise MixcdError(f"{where}: the entry '{headword}' ends at byte {offset + length}, past the "
                             f"{len(data)} bytes of {data_path}: the index does not belong to this data or the "
                             "data is truncated")
        if (offset, length) in seen or (keep is not None and not keep(headword)):
            continue
        seen.add((offset, length))
        out.append((headword, data[offset:offset + length].decode("utf-8", errors="replace")))
    return out


def _renderings(text: str) -> tuple[str, ...]:
    """A sense line's translations: annotations (<pl>, [chem.], {…}) and parenthesised words dropped, split on
    commas and semicolons."""
    text = _ANNOTATION.sub(" ", text)
    text = _PARENS.sub(" ", text)
    parts = (" ".join(p.split()) for p in re.split(r"[,;]", text))
    return tuple(p for p in parts if p)


def parse_freedict(text: str) -> Entry:
    """A FreeDict entry: the first line is the headword (with ``/pronunciation/`` and notes after it), each later
    line a sense (``1. …`` numbered or not) with its renderings; metadata lines (``see:``, ``Synonyms:``,
    ``Note:``) and indented quoted examples are skipped; any other indented line continues the sense above it."""
    lines = text.strip("\n").split("\n")
    head = lines[0].split(" /", 1)[0].strip()
    senses: list[str] = []
    for line in lines[1:]:
        if not line.strip() or _LABEL.match(line):
            continue
        indent = len(line) - len(line.lstrip())
        stripped = line.strip()
        if indent >= 2:
            if stripped.startswith('"') or not senses:
                continue  # an example sentence (with its translation after " - ")
            senses[-1] += " " + stripped
            continue
        senses.append(_SENSE_NUMBER.sub("", stripped))
    parsed = tuple(r for r in (_renderings(s) for s in senses) if r)
    return Entry(head, parsed)


def parse_vera(text: str) -> Entry:
    """A V.E.R.A. entry: the acronym, then its expansions, one paragraph each (a paragraph may wrap onto lines of
    any indent); related acronyms in parentheses and spelling variants in quotes are dropped, square brackets
    (implied words) kept as words."""
    lines = text.strip("\n").split("\n")
    head = lines[0].strip()
    paragraphs: list[list[str]] = [[]]
    for line in lines[1:]:
        if line.strip():
            paragraphs[-1].append(line.strip())
        elif paragraphs[-1]:
            paragraphs.append([])
    expansions = []
    for para in paragraphs:
        text = " ".join(para)
        text = re.sub(r'"[^"]*"', " ", text)
        while _PARENS.search(text):
            text = _PARENS.sub(" ", text)
        text = text.replace("[", "").replace("]", "")
        text = " ".join(text.split()).strip(" ,")
        if text:
            expansions.append((text,))
    return Entry(head, tuple(expansions))


# ---------------------------------------------------------------- the tasks


FREEDICT_PAIRS = ("eng-deu", "eng-fra", "eng-spa", "eng-ita", "eng-por", "eng-nld", "eng-swe", "eng-rus", "eng-pol",
                  "eng-hun", "eng-tur", "eng-ces", "eng-lit", "eng-fin", "eng-ell", "eng-jpn", "eng-ara", "eng-hin")
_WORD = re.compile(r"[^\W\d_]+(?:[-'][^\W\d_]+)*")


def language_tag(pair: str, tag: str | None = None) -> str:
    """The tag a FreeDict task's prompts carry: ``tag`` when given, else the pair's target language (``<deu>``)."""
    return tag or f"<{str(pair).split('-')[-1]}>"


def _words(text: str) -> int:
    return len(text.split())


def _is_word_text(text: str, max_words: int) -> bool:
    """Letters only (hyphens and apostrophes inside words allowed), at most ``max_words`` words."""
    parts = text.split()
    return 0 < len(parts) <= max_words and all(_WORD.fullmatch(p) for p in parts)


TEST_ROWS = ("heldout", "trained")


def _evenly(rows: list[int], cap: int | None) -> list[int]:
    """At most ``cap`` of ``rows``, evenly spaced over them (over the whole dictionary, not its first letters)."""
    if cap is None or not 0 < int(cap) < len(rows):
        return rows
    step = len(rows) / int(cap)
    return [rows[int(j * step)] for j in range(int(cap))]


def _split_rows(n: int, train: bool, test_every: int, n_train: int | None, n_test: int | None,
                test_rows: str = "heldout") -> list[int]:
    """Positions of a split in dictionary order: every ``test_every``-th eligible entry is held out, the rest are
    training rows. The test split is the held-out rows, or with ``test_rows=trained`` rows of the training split
    (what a task of memorised knowledge is learnt on is what its learning is measured on)."""
    if test_every < 2:
        raise MixcdError(f"options.test_every must be at least 2 (every k-th entry is a test row), got {test_every}")
    if test_rows not in TEST_ROWS:
        raise unknown_choice("options.test_rows", str(test_rows), TEST_ROWS)
    training = _evenly([i for i in range(n) if i % test_every != test_every - 1], n_train)
    if train:
        return training
    if test_rows == "trained":
        return _evenly(training, n_test)
    return _evenly([i for i in range(n) if i % test_every == test_every - 1], n_test)


def _source(pairs: list[tuple[str, str]], rows: list[int], kind: str, description: str) -> PairSource:
    if not rows:
        raise MixcdError(f"{description}: no entry passes the filters; loosen options.max_len / max_words")
    return pair_source([pairs[i][0] for i in rows], [pairs[i][1] for i in rows], kind, description)


_MEMO: dict[tuple[Any, ...], list[tuple[str, str]]] = {}


def freedict_pairs(pair: str, min_len: int, max_len: int, max_target_len: int, max_words: int,
                   directory: Path = DICTD_DIR) -> list[tuple[str, str]]:
    """(English headword, first rendering of its first sense) of every FreeDict entry that passes the filters, in
    dictionary order, one row per headword (its first entry: later entries of one headword are inflections or
    rarer senses, and two targets for one prompt could not both be exact)."""
    if pair not in FREEDICT_PAIRS:
        installed = sorted(p.name[len("freedict-"):-len(".index")] for p in directory.glob("freedict-*.index"))
        raise unknown_choice("FreeDict language pair (options.pair)", pair,
                             installed or list(FREEDICT_PAIRS))
    index, data = package_files(f"freedict-{pair}", f"dict-freedict-{pair}", directory)
    key = (str(index), index.stat().st_size, pair, min_len, max_len, max_target_len, max_words)
    if key in _MEMO:
        return _MEMO[key]

    def keep(headword: str) -> bool:  # the index's headword is folded (lower case, no punctuation): a pre-filter
        return min_len <= len(headword) <= max_len and _words(headword) <= max_words

    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for _, text in read_dictd(index, data, keep):
        entry = parse_freedict(text)
        if not entry.senses or entry.headword in seen:
            continue
        source, target = entry.headword, entry.senses[0][0]
        if not (min_len <= len(source) <= max_len and _is_word_text(source, max_words)):
            continue
        if not (1 <= len(target) <= max_target_len and _is_word_text(target, max_words)):
            continue
        seen.add(source)
        out.append((source, target))
    _MEMO[key] = out
    return out


@DATASETS.register("freedict", help="translation of English headwords from a FreeDict dictionary (Debian's "
                                     "dict-freedict-<pair>; options.pair, tag, filters, test_every, n_train, n_test)")
def load_freedict(root: str | None = None, train: bool = True, download: bool = False, pair: str = "eng-deu",
                  tag: str | None = None, kind: str = "causal_lm", min_len: int = 2, max_len: int = 12,
                  max_target_len: int = 12, max_words: int = 1, test_every: int = 10, n_train: int | None = None,
                  n_test: int | None = None, test_rows: str = "heldout", directory: str | None = None,
                  **unknown: Any) -> PairSource:
    """A split of a FreeDict dictionary: prompt ``<tag> word=`` (the tag names the target language, default the
    pair's second code), target the entry's first rendering. ``directory``: where the dictd files are (default
    Debian's /usr/share/dictd)."""
    if unknown:
        raise unknown_choice("option of freedict tasks", str(next(iter(unknown))),
                             ["pair", "tag", "kind", "min_len", "max_len", "max_target_len", "max_words", "test_every",
                              "n_train", "n_test", "test_rows", "directory"])
    pairs = freedict_pairs(str(pair), int(min_len), int(max_len), int(max_target_len), int(max_words),
                           Path(directory) if directory else DICTD_DIR)
    label = language_tag(str(pair), tag)
    tagged = [(f"{label} {src}=", tgt) for src, tgt in pairs]
    rows = _split_rows(len(tagged), train, int(test_every), n_train, n_test, str(test_rows))
    return _source(tagged, rows, kind, f"freedict {pair} {'train' if train else 'test'}")


def vera_pairs(max_answer_len: int, directory: Path = DICTD_DIR) -> list[tuple[str, str]]:
    """(acronym, first expansion) of every V.E.R.A. entry whose expansion fits, in dictionary order."""
    index, data = package_files("vera", "dict-vera", directory)
    key = (str(index), index.stat().st_size, "vera", max_answer_len)
    if key in _MEMO:
        return _MEMO[key]
    out = []
    for _, text in read_dictd(index, data):
        entry = parse_vera(text)
        if entry.senses and 1 <= len(entry.senses[0][0]) <= max_answer_len:
            out.append((entry.headword, entry.senses[0][0]))
    _MEMO[key] = out
    return out


@DATASETS.register("vera_qa", help="closed-book QA from the V.E.R.A. acronym dictionary (Debian's dict-vera): "
                                    "'What does X stand for?' (options.max_answer_len, test_every, n_train, n_test)")
def load_vera_qa(root: str | None = None, train: bool = True, download: bool = False, kind: str = "causal_lm",
                 max_answer_len: int = 24, template: str = "What does {x} stand for?", test_every: int = 10,
                 n_train: int | None = None, n_test: int | None = None, test_rows: str = "heldout",
                 directory: str | None = None, **unknown: Any) -> PairSource:
    """A split of the acronym questions. The answers are knowledge, not a rule a model can generalise: retention
    is measured on a probe of trained rows (`prior.probe`), the held-out split only says so."""
    if unknown:
        raise unknown_choice("option of vera_qa tasks", str(next(iter(unknown))),
                             ["kind", "max_answer_len", "template", "test_every", "n_train", "n_test", "test_rows",
                              "directory"])
    if "{x}" not in template:
        raise MixcdError(f"options.template must contain {{x}} (the acronym), got {template!r}")
    pairs = [(template.replace("{x}", a) + " ", e)
             for a, e in vera_pairs(int(max_answer_len), Path(directory) if directory else DICTD_DIR)]
    rows = _split_rows(len(pairs), train, int(test_every), n_train, n_test, str(test_rows))
    return _source(pairs, rows, kind, f"vera_qa {'train' if train else 'test'}")


def check_languages(tasks: list[tuple[str, dict[str, Any]]]) -> None:
    """Refuse a FreeDict task whose language tag an earlier task of the sequence already taught (``tasks``: (config
    key, task spec) in order, the prior task first): under one tag the model would be taught two renderings."""
    seen: dict[str, str] = {}
    for key, spec in tasks:
        if spec.get("dataset") != "freedict":
            continue
        options = spec.get("options") or {}
        pair = str(options.get("pair", "eng-deu"))
        tag = language_tag(pair, options.get("tag"))
        if tag in seen:
            raise MixcdError(f"{key}: language tag {tag} ({pair}) was already taught by {seen[tag]}; give each stage a "
                             "language of its own, or its own options.tag")
        seen[tag] = key
