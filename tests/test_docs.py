"""The documentation site builds with --strict, its runnable how-to blocks run, and README stays short."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARK = "<!-- runnable -->"


def runnable_blocks() -> list[tuple[str, str]]:
    """(page, bash block) for every fenced block that follows a ``<!-- runnable -->`` line in the how-to guides."""
    blocks = []
    for page in sorted((ROOT / "docs" / "howto").glob("*.md")):
        text = page.read_text()
        for m in re.finditer(re.escape(MARK) + r"\s*\n```bash\n(.*?)```", text, re.S):
            blocks.append((page.name, m.group(1)))
    return blocks


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    site = tmp_path / "site"
    assert (site / "reference" / "api" / "index.html").read_text().count("compute_snapshot") >= 2
    assert (site / "results" / "fmnist" / "report" / "index.html").is_file()  # the committed reports go along


def test_there_are_runnable_blocks() -> None:
    pages = {page for page, _ in runnable_blocks()}
    assert {"hf-trainer.md", "plain-loop.md"} <= pages


@pytest.mark.parametrize("page,block", runnable_blocks(), ids=lambda v: v if v.endswith(".md") else "")
def test_runnable_block_runs(page: str, block: str) -> None:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, f"{page}:\n{block}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"


def test_readme_is_what_a_newcomer_needs_first() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 250
    for command in ("make demo", "make test", "make docs"):
        assert command in readme
    for link in re.findall(r"\]\(((?:docs/)[^)#]+)", readme):
        assert (ROOT / link).is_file(), link
