"""The dictionary experiments through the command line on small hand-made dictionaries: a two-stage translation
sequence and a QA run with mixcd and random, the probe never drawn by any sampler, and the refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")
pytest.importorskip("sacrebleu")

from dictd_fixtures import acronym_dictionary, word_dictionary  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

import mixcd_cli.recipes.context as context  # noqa: E402
import mixcd_cli.recipes.train as train_recipe  # noqa: E402
from mixcd_cli.cli import app  # noqa: E402
from mixcd_cli.samplers import SAMPLERS  # noqa: E402

runner = CliRunner()
LETTERS = "abcdefgh"


def words(first: str) -> list[tuple[str, str]]:
    """64 entries ``<first>xy`` → ``yx<first>``: distinct headwords in dictionary order, letters only."""
    return [(f"{first}{x}{y}", f"{y}{x}{first}") for x in LETTERS for y in LETTERS]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The dictionaries and one cache for the module (θ0 is pretrained once)."""
    root = tmp_path_factory.mktemp("dictd")
    for pair, first in (("eng-deu", "d"), ("eng-fra", "f"), ("eng-spa", "s")):
        word_dictionary(root / "dict", pair, words(first))
    acronym_dictionary(root / "dict", [(f"{a.upper()}{b.upper()}X", f"{a}nd {b}ext") for a in LETTERS for b in LETTERS])
    return root


def small(root: Path, shared: Path, experiment: str = "translate") -> list[str]:
    d = shared / "dict"
    stage = ("{{name: {p}, options: {{pair: {p}, n_train: 24, n_test: 8, test_rows: trained, directory: '"
             + str(d) + "'}}}}")
    args = [f"experiment={experiment}", f"paths.output_dir={root / 'outputs'}", f"paths.data_dir={root / 'data'}",
            f"paths.cache_dir={shared / 'cache'}", "model=lm_tiny", f"prior.options.directory={d}",
            "prior.options.n_train=50", "prior.options.n_test=6", "prior.probe=0.2", "pretrain.epochs=25",
            "pretrain.batch_size=10", "pretrain.warmup_steps=10", "trainer.steps=6", "trainer.log_every=3",
            "trainer.warmup_steps=0", "trainer.checkpoint_every=3", "eval.batch_size=64", "snapshot.batch_size=64"]
    if experiment == "translate":
        args.append("stages=[" + ",".join(stage.format(p=p) for p in ("eng-fra", "eng-spa")) + "]")
    else:
        args += [f"finetune.options.directory={d}", "finetune.options.n_train=24", "finetune.options.n_test=8"]
    return args


def said(result: Any) -> str:
    return result.output + ("" if result.exception is None else str(result.exception))


def train(args: list[str], run: Path) -> dict:
    result = runner.invoke(app, ["train", *args, f"hydra.run.dir={run}"])
    assert result.exit_code == 0, said(result)
    return json.loads((run / "metrics.json").read_text())


@pytest.mark.parametrize("sampler", ["random", "mixcd"])
def test_a_two_stage_translation_sequence(sampler: str, tmp_path: Path, shared: Path) -> None:
    m = train([*small(tmp_path, shared), f"sampler={sampler}", "trainer.mix_ratio=0.25"], tmp_path / "run")
    assert m["stage_names"] == ["eng-fra", "eng-spa"] and m["task_kind"] == "causal_lm"
    assert len(m["accuracy_matrix"]) == 3 and len(m["chrf_matrix"]) == 3
    # retention on the probe (10 of θ0's 50 training words; 64 entries, every 10th held out: 58 train rows → 50)
    held = m["heldout"]
    assert held["rows"] == 6 and 0.0 <= held["acc"] <= 1.0 and 0.0 <= held["chrf0"] <= 100.0
    assert m["ledger"]["forward"]["rehearsal"] == 2 * 6 * 8  # two stages, 6 steps, 8 rows at r = 1/4 of 32
    assert m["compute"]["tokens"] is not None


def test_qa_after_translation(tmp_path: Path, shared: Path) -> None:
    m = train([*small(tmp_path, shared, "qa"), "sampler=mixcd", "trainer.mix_ratio=0.25"], tmp_path / "run")
    assert m["stage_names"] == ["vera_qa"] and m["num_stages"] == 1
    assert m["heldout"]["rows"] == 6


SAMPLER_NAMES = [n for n in SAMPLERS.names() if n not in ("class_balanced", "none")]


@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_no_sampler_draws_the_probe(sampler: str, tmp_path: Path, shared: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Every row a sampler draws, in every stage, is a pool row of a source row outside the probe."""
    seen: dict[str, Any] = {}
    build = context.experiment_of

    def capture(*a: Any, **k: Any) -> Any:
        seen["exp"] = build(*a, **k)
        return seen["exp"]

    drawn: list[tuple[int, int]] = []
    original = train_recipe.Rehearsal

    def rehearsal(sampler_obj: Any, pool: Any, *a: Any, **k: Any) -> Any:
        draw = sampler_obj.draw

        def recorded(step: int, ctx: Any = None) -> Any:
            rows = draw(step, ctx)
            drawn.extend(source_rows(pool, rows))
            return rows

        sampler_obj.draw = recorded
        return original(sampler_obj, pool, *a, **k)

    monkeypatch.setattr(context, "experiment_of", capture)
    monkeypatch.setattr(train_recipe, "Rehearsal", rehearsal)
    train([*small(tmp_path, shared), f"sampler={sampler}", "trainer.mix_ratio=0.25"], tmp_path / "run")
    probe = seen["exp"].prior_test
    probe_rows = {(id(probe.source), int(i)) for i in probe.index}
    assert len(drawn) == 2 * 6 * 8
    assert not probe_rows & set(drawn)
    # the drawn rows do include the prior task's rows (the probe's source), so the check could have failed
    assert any(src == id(probe.source) for src, _ in drawn)


def source_rows(pool: Any, rows: Any) -> list[tuple[int, int]]:
    """(id of the source, row in it) of pool rows, through a pool made of several tasks."""
    import torch

    src = pool.source
    index = pool.index[rows.cpu()]
    if not hasattr(src, "parts"):
        return [(id(src), int(i)) for i in index]
    part = torch.searchsorted(src.offsets[1:], index, right=True)
    out = []
    for p, i in zip(part.tolist(), index.tolist(), strict=True):
        task = src.parts[p]
        out.extend(source_rows(task, torch.tensor([i - int(src.offsets[p])])))
    return out


def refused(args: list[str], tmp_path: Path, words_: str) -> None:
    """Exit 2, one line naming the problem, no run folder: as a user's shell sees it (a process of its own)."""
    env = {**os.environ, "MIXCD_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "mixcd_cli.cli", "train", *args, f"hydra.run.dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert words_ in lines[0], lines[0]
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_refusals(tmp_path: Path, shared: Path) -> None:
    base = small(tmp_path, shared)
    refused([*base, "prior.probe=1.5"], tmp_path, "prior.probe")
    refused([*base, "prior.options.pair=eng-xxx"], tmp_path, "eng-xxx")
    again = "stages=[{name: a, options: {pair: eng-fra, directory: '" + str(shared / "dict") + "'}}," \
            "{name: b, options: {pair: eng-fra, directory: '" + str(shared / "dict") + "'}}]"
    refused([*base, again], tmp_path, "already taught")
    refused([*base, f"prior.options.directory={tmp_path / 'none'}"], tmp_path,
            "apt-get install -y dict-freedict-eng-deu")
    refused([*base, "finetune.probe=0.1"], tmp_path, "set prior.probe instead")
