"""MkDocs hook: publish the committed results (reports, plots, runs.csv) and BENCHMARKS.md with the site, at
``results/<experiment>/...`` and ``BENCHMARKS.md``, so the results pages link to them as the README does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = {".md", ".png", ".csv", ".json", ".html"}


def on_files(files: Files, config: Any) -> Files:
    """Add results/**/* and BENCHMARKS.md from the repository root to the site's files."""
    paths = [p for p in sorted((ROOT / "results").rglob("*")) if p.is_file() and p.suffix in PUBLISHED]
    for path in [*paths, ROOT / "BENCHMARKS.md"]:
        files.append(File(str(path.relative_to(ROOT)), src_dir=str(ROOT), dest_dir=config["site_dir"],
                          use_directory_urls=config["use_directory_urls"]))
    return files
