"""Small hand-made dictd databases for tests: the index with dictd's base-64 offsets, the data gzip-compressed as
dictzip files are (a dictzip file is a gzip file; its random-access table is an extra header field we do not need).
"""

from __future__ import annotations

import gzip
from pathlib import Path

from mixcd_cli.generation.dictd import B64

HEADER = [("00-database-info", "00databaseinfo", "This is a test dictionary.\n  It has a header.\n"),
          ("00-database-short", "00databaseshort", "Test dictionary\n")]


def b64(n: int) -> str:
    """dictd's base-64 number: most significant digit first, no padding."""
    if n == 0:
        return B64[0]
    out = ""
    while n:
        out = B64[n % 64] + out
        n //= 64
    return out


def write_dictd(directory: Path, name: str, entries: list[tuple[str, str]]) -> tuple[Path, Path]:
    """``entries``: (index headword, entry text) in index order, after two header entries; → (index, data)."""
    directory.mkdir(parents=True, exist_ok=True)
    data, lines = b"", []
    for _, key, text in HEADER:
        lines.append((key, len(data), len(text.encode())))
        data += text.encode()
    for key, text in entries:
        raw = text.encode()
        lines.append((key, len(data), len(raw)))
        data += raw
    index = directory / f"{name}.index"
    index.write_text("".join(f"{k}\t{b64(o)}\t{b64(n)}\n" for k, o, n in lines), encoding="utf-8")
    dz = directory / f"{name}.dict.dz"
    dz.write_bytes(gzip.compress(data))
    return index, dz


def word_dictionary(directory: Path, pair: str, words: list[tuple[str, str]]) -> None:
    """A FreeDict-style dictionary of one-sense entries, with a pronunciation on each headword line."""
    write_dictd(directory, f"freedict-{pair}", [(w, f"{w} /{w}/\n{t}\n") for w, t in words])


def acronym_dictionary(directory: Path, rows: list[tuple[str, str]]) -> None:
    """A V.E.R.A.-style dictionary: the acronym, then its expansion indented."""
    write_dictd(directory, "vera", [(a.lower(), f"{a}\n       {e}\n       \n") for a, e in rows])
