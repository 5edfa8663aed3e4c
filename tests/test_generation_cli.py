"""Generation tasks through the command line: every stage for both kinds, every sampler, a two-stage sequence and
its report in tokens, the token ledger against what the model really read, resume after SIGKILL (LoRA too), and
the refusals of bad input."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("sacrebleu")

from test_resume import stable, start, wait_for_checkpoint  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from mixcd_cli.cli import app  # noqa: E402
from mixcd_cli.errors import MixcdError  # noqa: E402
from mixcd_cli.generation.models import GenerationNet  # noqa: E402
from mixcd_cli.generation.tokens import HFTokenizer  # noqa: E402
from mixcd_cli.samplers import SAMPLERS  # noqa: E402
from mixcd_cli.sources import PAD  # noqa: E402

runner = CliRunner()
KINDS = {"causal_lm": "experiment=gen_tiny", "seq2seq": "experiment=gen_tiny_seq2seq"}


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the module: each kind's θ0 is pretrained once."""
    return tmp_path_factory.mktemp("gen")


def paths(root: Path, shared: Path) -> list[str]:
    return [f"paths.output_dir={root / 'outputs'}", f"paths.data_dir={root / 'data'}",
            f"paths.cache_dir={shared / 'cache'}"]


def said(result) -> str:
    return result.output + ("" if result.exception is None else str(result.exception))


def train(args: list[str], run: Path) -> dict:
    result = runner.invoke(app, ["train", *args, f"hydra.run.dir={run}"])
    assert result.exit_code == 0, said(result)
    return json.loads((run / "metrics.json").read_text())


@pytest.mark.parametrize("kind", KINDS)
def test_both_kinds_run_every_stage_through_the_cli(kind: str, tmp_path: Path, shared: Path) -> None:
    base = [KINDS[kind], *paths(tmp_path, shared)]
    for stage in ("pretrain", "snapshot"):
        result = runner.invoke(app, [stage, *base, f"hydra.run.dir={tmp_path / stage}"])
        assert result.exit_code == 0, said(result)
    run = tmp_path / "run"
    metrics = train([*base, "sampler=mixcd", "trainer.mix_ratio=0.25", "trainer.audit_every=1"], run)
    assert metrics["task_kind"] == kind and metrics["steps"] == 20
    assert metrics["ledger"]["forward"]["rehearsal"] == 20 * 4
    assert metrics["pre_acc0"] > 0.0  # θ0 learned to copy some strings: mix-cd has rows to protect
    # no dropout: the training forward's "wrong" is the eval-mode truth, row for row
    if metrics["signal_precision"] is not None:
        assert metrics["signal_precision"] == 1.0 and metrics["signal_recall"] == 1.0
    assert len(metrics["chrf_matrix"]) == 2 and all(0 <= v <= 100 for v in metrics["chrf_matrix"][1])
    assert metrics["compute"]["tokens"]["by_purpose"]["rehearsal"] > 3 * 20 * 4  # tokens, more than one a row
    evaluated = runner.invoke(app, ["eval", *base, "sampler=mixcd", f"run_dir={run}",
                                    f"hydra.run.dir={tmp_path / 'eval'}"])
    assert evaluated.exit_code == 0, said(evaluated)
    again = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert again["pre_acc"] == pytest.approx(metrics["pre_acc"]) and again["ft_acc"] == pytest.approx(metrics["ft_acc"])


SAMPLER_NAMES = [n for n in SAMPLERS.names() if n not in ("class_balanced",)]


@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_every_sampler_fine_tunes_a_decoder(sampler: str, tmp_path: Path, shared: Path) -> None:
    ratio = "0.0" if sampler == "none" else "0.25"
    metrics = train([KINDS["causal_lm"], *paths(tmp_path, shared), f"sampler={sampler}", f"trainer.mix_ratio={ratio}",
                     "trainer.steps=6", "trainer.log_every=3"], tmp_path / "run")
    assert metrics["ledger"]["forward"]["rehearsal"] == (0 if sampler == "none" else 6 * 4)


@pytest.mark.parametrize("sampler", ["random", "mir", "oracle_cd", "amr"])
def test_samplers_fine_tune_an_encoder_decoder(sampler: str, tmp_path: Path, shared: Path) -> None:
    metrics = train([KINDS["seq2seq"], *paths(tmp_path, shared), f"sampler={sampler}", "trainer.mix_ratio=0.25",
                     "trainer.steps=6", "trainer.log_every=3"], tmp_path / "run")
    assert metrics["ledger"]["forward"]["rehearsal"] == 6 * 4


class TokenHook:
    """Counts the non-padding tokens of every forward of the language model wrapper (training forwards, audits,
    selection passes, snapshots), both id rows of an encoder-decoder batch."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tokens = 0
        original = GenerationNet.forward

        def counted(net: GenerationNet, x: torch.Tensor, *args, **kwargs):
            self.tokens += int((x != PAD).sum())
            return original(net, x, *args, **kwargs)

        monkeypatch.setattr(GenerationNet, "forward", counted)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("sampler", ["none", "random", "mixcd", "mir", "oracle_cd"])
def test_the_token_ledger_counts_what_the_model_read(kind: str, sampler: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Every forward's tokens, summed by a hook, equal the ledger's forward tokens of every purpose but evaluation
    (which decodes through the cache, not this forward). A fresh cache: θ0's pretraining and snapshot run here."""
    hook = TokenHook(monkeypatch)
    ratio = "0.0" if sampler == "none" else "0.25"
    metrics = train([KINDS[kind], *paths(tmp_path, tmp_path), f"sampler={sampler}", f"trainer.mix_ratio={ratio}",
                     "trainer.steps=6", "trainer.log_every=3", "trainer.audit_every=2", "pretrain.epochs=1",
                     "sampler.refresh_every=3" if sampler == "oracle_cd" else "trainer.checkpoint_every=6"],
                    tmp_path / "run")
    counted = metrics["ledger"]["forward_tokens"]
    assert hook.tokens == sum(v for p, v in counted.items() if p != "eval")
    assert counted["rehearsal"] == metrics["ledger"]["backward_tokens"]["rehearsal"]
    if sampler in ("mir", "oracle_cd"):
        assert counted["selection"] > 0


def test_a_two_stage_sequence_and_its_report_in_tokens(tmp_path: Path, shared: Path) -> None:
    opts = "n_train: 200, n_test: 50, min_len: 1, max_len: 4, alphabet: abcdef, kind: causal_lm, operation: cipher"
    stages = f"stages=[{{name: c1, options: {{{opts}, shift: 1}}}}, {{name: c2, options: {{{opts}, shift: 2}}}}]"
    sweep = tmp_path / "sweep"
    for sampler in ("random", "mixcd"):
        metrics = train([KINDS["causal_lm"], *paths(tmp_path, shared), stages, f"sampler={sampler}",
                         "trainer.mix_ratio=0.25", "trainer.steps=8"], sweep / sampler)
        assert [len(r) for r in metrics["chrf_matrix"]] == [3, 3, 3]
        assert metrics["stages"][1]["pool"]["size"] == 400 + 200  # the prior pool and stage 1's rows
    result = runner.invoke(app, ["report", str(sweep), "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, said(result)
    summary = json.loads((tmp_path / "report" / "report.json").read_text())
    assert summary["budget_unit"] == "tokens" and "in tokens" in summary["budget"]


def test_a_report_refuses_to_mix_tokens_and_rows(tmp_path: Path, shared: Path) -> None:
    train([KINDS["causal_lm"], *paths(tmp_path, shared), "sampler=random", "trainer.mix_ratio=0.25",
           "trainer.steps=4"], tmp_path / "runs" / "gen")
    train(["experiment=tiny", *paths(tmp_path, shared), "sampler=random", "trainer.mix_ratio=0.25",
           "trainer.steps=4"], tmp_path / "runs" / "img")
    result = runner.invoke(app, ["report", str(tmp_path / "runs"), "--out", str(tmp_path / "report")])
    assert result.exit_code != 0 and "do not compare" in said(result)
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize("lora", [False, True])
def test_sigkill_during_fine_tuning_then_rerun_gives_identical_metrics(lora: bool, tmp_path: Path,
                                                                       shared: Path) -> None:
    args = [KINDS["causal_lm"], *paths(tmp_path, shared), "sampler=mixcd", "trainer.mix_ratio=0.25",
            "trainer.steps=120", "trainer.checkpoint_every=5", "trainer.log_every=20",
            *(["model.lora.rank=4"] if lora else [])]
    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    ref = start([*args, f"hydra.run.dir={ref_dir}"])
    assert ref.wait() == 0, ref.stderr.read()
    proc = start([*args, f"hydra.run.dir={cut_dir}"])
    wait_for_checkpoint(proc, cut_dir / "checkpoints" / "last.pt", 30)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    again = start([*args, f"hydra.run.dir={cut_dir}"])
    assert again.wait() == 0, again.stderr.read()
    ref_m = json.loads((ref_dir / "metrics.json").read_text())
    cut_m = json.loads((cut_dir / "metrics.json").read_text())
    assert cut_m["resumed_from"] and cut_m["resumed_from"] > 0
    assert stable(cut_m) == stable(ref_m)
    if lora:  # the checkpoint holds the adapters; the saved model has them folded in
        checkpoint = torch.load(cut_dir / "checkpoints" / "last.pt", weights_only=False)
        state = checkpoint["shared"]["model"]
        assert any("lora_" in k for k in state)
        assert not any("lora_" in k for k in torch.load(cut_dir / "model.pt", weights_only=False)["model"])


# ---------------------------------------------------------------- refusals

def refused(args: list[str], tmp_path: Path, shared: Path, words: str) -> None:
    result = runner.invoke(app, ["train", *args, *paths(tmp_path, shared), f"hydra.run.dir={tmp_path / 'r'}"])
    assert result.exit_code != 0, result.output
    assert words in said(result) and "Traceback" not in said(result), said(result)
    assert not (tmp_path / "r" / "metrics.json").exists()


@pytest.mark.parametrize(("args", "words"), [
    (["experiment=gen_tiny", "model=cnn"], "need a language model (model=lm"),
    (["experiment=tiny", "model=lm_tiny"], "model=lm generates text"),
    (["experiment=gen_tiny", "model=t5_tiny"], "is an encoder-decoder model"),
    (["experiment=gen_tiny_seq2seq", "model=lm_tiny"], "is a decoder-only model"),
    (["experiment=gen_tiny", "sampler=class_balanced", "trainer.mix_ratio=0.25"], "needs a class column"),
    (["experiment=gen_tiny", "sampler=mixcd", "sampler.partition=class", "trainer.mix_ratio=0.25"],
     "needs a class column"),
    (["experiment=gen_tiny", "model.lora.rank=2", "model.lora.target_modules=[q_proj]"],
     "has no module 'q_proj'; it has c_attn"),
    (["experiment=gen_tiny", "model.max_length=4"], "targets do not fit the context of 4 tokens"),
])
def test_bad_generation_input_is_one_line(args: list[str], words: str, tmp_path: Path, shared: Path) -> None:
    refused(args, tmp_path, shared, words)


def pair_files(root: Path, rows: list[dict]) -> list[str]:
    data = root / "data" / "pairs"
    data.mkdir(parents=True, exist_ok=True)
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (data / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))
    # gen_tiny sizes its generated prior task; a file task has no such options: they are dropped (~)
    return ["experiment=gen_tiny", "task@prior=gen_pairs", "prior.options.train_path=pairs/train.jsonl",
            "prior.options.test_path=pairs/test.jsonl",
            *(f"~prior.options.{k}" for k in ("n_train", "n_test", "min_len", "max_len", "alphabet"))]


def test_pair_files_with_other_fields_and_empty_targets_are_refused(tmp_path: Path, shared: Path) -> None:
    args = pair_files(tmp_path, [{"src": "ab", "tgt": "ba"}] * 8)
    refused(args, tmp_path, shared, "has no prompt field 'prompt' (fields: src, tgt)")
    args = pair_files(tmp_path, [{"prompt": "ab", "target": "ba"}] * 7 + [{"prompt": "ab", "target": ""}])
    refused(args, tmp_path, shared, "1 rows have an empty target")


def test_pair_files_train_and_long_prompts_lose_their_oldest_tokens(tmp_path: Path, shared: Path) -> None:
    rows = [{"prompt": "abcdef" * 3, "target": "fa"}] * 12 + [{"prompt": "ab", "target": "ba"}] * 20
    args = pair_files(tmp_path, rows)
    result = runner.invoke(app, ["train", *args, *paths(tmp_path, shared), "model.max_length=12", "trainer.steps=4",
                                 f"hydra.run.dir={tmp_path / 'run'}"])
    assert result.exit_code == 0, said(result)
    assert "12 of 32 prompts" in said(result) and "lost their oldest tokens" in said(result)


def test_a_tokenizer_without_end_of_sequence_is_refused() -> None:
    class NoEnd:
        eos_token_id = None
        pad_token_id = 0
        bos_token_id = None
        unk_token_id = 1

    with pytest.raises(MixcdError, match="no end-of-sequence token"):
        HFTokenizer(NoEnd(), "x", "folder /m")

    class NoPad(NoEnd):
        eos_token_id = 5
        pad_token_id = None

    assert HFTokenizer(NoPad(), "x", "folder /m").pad_id == 5  # padding is masked: end-of-sequence serves


def test_two_processes_train_on_token_batches(tmp_path: Path, shared: Path) -> None:
    """DDP (gloo, two CPU processes) over generation batches: each rank draws its rows, the ledger sums both
    ranks' rows and tokens, evaluation decodes once."""
    import os
    import subprocess
    import sys

    args = [KINDS["causal_lm"], *paths(tmp_path, shared), "sampler=mixcd", "trainer.mix_ratio=0.25",
            "trainer.steps=8", "threads=1"]
    one = train(args, tmp_path / "one")
    proc = subprocess.run([sys.executable, "-m", "mixcd_cli.cli", "train", *args, "trainer.devices=2",
                           f"hydra.run.dir={tmp_path / 'two'}"], capture_output=True, text=True,
                          env={**os.environ, "MIXCD_PROGRESS": "0"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["world_size"] == 2 and two["ledger"]["forward"]["rehearsal"] == 8 * 4 * 2
    tokens = two["ledger"]["forward_tokens"]
    assert tokens["rehearsal"] == two["ledger"]["backward_tokens"]["rehearsal"] > 8 * 4 * 2 * 4
    # both ranks' fine-tune shards are counted: about twice one process's tokens at the same steps
    assert 1.7 < tokens["finetune"] / one["ledger"]["forward_tokens"]["finetune"] < 2.3
    assert len(two["chrf_matrix"]) == 2
