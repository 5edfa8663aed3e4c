"""Text tasks: file formats, field and label mapping, the token cache, pair encoding, text models through the
CLI, and the snapshot of a text task against a direct computation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
pytest.importorskip("datasets")

from typer.testing import CliRunner  # noqa: E402

from mixcd_cli import text as text_mod  # noqa: E402
from mixcd_cli.cli import app  # noqa: E402
from mixcd_cli.data import ConcatSource, join_batches, make_task  # noqa: E402
from mixcd_cli.errors import MixcdError  # noqa: E402
from mixcd_cli.text import (  # noqa: E402
    PAD,
    TokenSource,
    load_text_source,
    make_encoder,
    make_topic_text,
    tokenise,
    word_level_tokenizer,
    write_text_file,
)

runner = CliRunner()
SMALL = {"n_train": 200, "n_test": 80, "num_topics": 2, "topic_words": 10, "filler_words": 40}


def small_corpus(train: bool = True):
    return make_topic_text(train=train, **SMALL)


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".tsv", ".parquet", "saved"])
def test_each_format_loads_the_same_rows(tmp_path: Path, suffix: str) -> None:
    src = small_corpus()
    if suffix == "saved":
        import datasets

        records = {"text": [r[0] for r in src.texts], "label": src.targets.tolist()}
        datasets.DatasetDict({"train": datasets.Dataset.from_dict(records)}).save_to_disk(str(tmp_path / "folder"))
        location = "folder"
    elif suffix == ".json":  # one JSON list rather than lines
        (tmp_path / "d.json").write_text(json.dumps([{"text": r[0], "label": int(y)} for r, y in
                                                     zip(src.texts, src.targets.tolist(), strict=True)]))
        location = "d.json"
    else:
        write_text_file(src, tmp_path / f"d{suffix}")
        location = f"d{suffix}"
    got = load_text_source(str(tmp_path), True, train_path=location)  # relative: read under the root
    assert got.texts == src.texts
    assert torch.equal(got.targets, src.targets)
    assert got.fingerprint == src.fingerprint


def test_fields_and_string_labels_map_through_the_class_list(tmp_path: Path) -> None:
    rows = [{"premise": f"p{i}", "hypothesis": f"h{i}", "gold": g, "extra": 1}
            for i, g in enumerate(["neutral", "entailment", "contradiction", "entailment"])]
    (tmp_path / "nli.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    labels = ["entailment", "neutral", "contradiction"]
    src = load_text_source(str(tmp_path), True, train_path="nli.jsonl", text=["premise", "hypothesis"],
                           label="gold", labels=labels)
    assert src.texts[0] == ("p0", "h0")
    assert src.targets.tolist() == [1, 0, 2, 0]
    with pytest.raises(MixcdError, match="not in the class list"):
        load_text_source(str(tmp_path), True, train_path="nli.jsonl", text=["premise", "hypothesis"], label="gold",
                         labels=["entailment", "neutral"])
    with pytest.raises(MixcdError, match=r"labels are not integers.*contradiction, entailment, neutral"):
        load_text_source(str(tmp_path), True, train_path="nli.jsonl", text="premise", label="gold")
    with pytest.raises(MixcdError, match=r"no field 'sentence' \(fields: premise, hypothesis, gold, extra\)"):
        load_text_source(str(tmp_path), True, train_path="nli.jsonl", text="sentence", label="gold")


def test_bad_files_get_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(MixcdError, match="text file not found: .*missing.jsonl"):
        load_text_source(str(tmp_path), True, train_path="missing.jsonl")
    (tmp_path / "empty.csv").write_text("text,label\n")
    with pytest.raises(MixcdError, match="is empty"):
        load_text_source(str(tmp_path), True, train_path="empty.csv")
    (tmp_path / "neg.jsonl").write_text('{"text": "a", "label": -1}\n')
    with pytest.raises(MixcdError, match="label -1, outside the class list"):
        load_text_source(str(tmp_path), True, train_path="neg.jsonl")
    monkeypatch.setattr("mixcd_cli.hub.hub_reachable", lambda *a, **k: False)
    with pytest.raises(MixcdError, match="hub dataset 'nyu-mll/glue' needs the Hugging Face hub, which is unreachable"):
        load_text_source(str(tmp_path), True, train_path="hub:nyu-mll/glue", hub_config="mnli")
    with pytest.raises(MixcdError, match="not a local folder and the Hugging Face hub is unreachable"):
        make_encoder("bert-base-uncased", None, 128, None, lambda: [])


def test_classes_and_label_map_select_and_relabel_text_rows(tmp_path: Path) -> None:
    write_text_file(make_topic_text(train=True, **{**SMALL, "num_topics": 2}), tmp_path / "t.jsonl")
    options = {"train_path": "t.jsonl", "test_path": "t.jsonl"}
    task = make_task("t", "text", str(tmp_path), "train", [1, 3], {1: 0, 3: 1}, "original", options=options)
    labels = load_text_source(str(tmp_path), True, train_path="t.jsonl").targets
    assert torch.equal(task.index, torch.nonzero((labels == 1) | (labels == 3)).flatten())
    assert torch.equal(task.targets, (labels[task.index] == 3).long())


def test_pairs_are_encoded_as_pairs_in_order() -> None:
    tok, _ = word_level_tokenizer(lambda: [("the cat sat", "a dog ran")])
    encoder = text_mod.TextEncoder(tok, "x", 32, "test")
    ids, types, offsets, truncated = encoder.encode([("the cat sat", "a dog ran"), ("a dog ran", "the cat")])
    first = tok.convert_ids_to_tokens(ids[offsets[0]:offsets[1]].tolist())
    assert first == ["[CLS]", "the", "cat", "sat", "[SEP]", "a", "dog", "ran", "[SEP]"]
    assert types[offsets[0]:offsets[1]].tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1]
    second = tok.convert_ids_to_tokens(ids[offsets[1]:offsets[2]].tolist())
    assert second == ["[CLS]", "a", "dog", "ran", "[SEP]", "the", "cat", "[SEP]"]
    assert truncated == 0
    # a batch pads every row to its longest one, with PAD in both channels
    source = TokenSource(torch.from_numpy(ids), torch.from_numpy(types), torch.from_numpy(offsets),
                         torch.zeros(2, dtype=torch.int64), "fp")
    batch = source.inputs(torch.tensor([1, 0]))
    assert batch.shape == (2, 2, 9)
    assert batch[0, 0, -1] == PAD and batch[0, 1, -1] == PAD and (batch[1] != PAD).all()
    assert batch[1, 0].tolist() == ids[offsets[0]:offsets[1]].tolist()


def test_long_rows_are_truncated_and_said_once() -> None:
    rows = [(" ".join(["word"] * 50),), ("short one",), (" ".join(["word"] * 40),)]
    encoder = make_encoder(None, None, 16, 64, lambda: rows)
    notes: list[str] = []
    src = text_mod.TextSource(rows, torch.zeros(3, dtype=torch.int64), "long.jsonl", "fp-long")
    tokens, _ = tokenise(src, encoder, None, notes.append)
    assert tokens.lengths().tolist() == [16, 4, 16]
    assert len(notes) == 1 and "2 of 3 rows of long.jsonl" in notes[0]
    assert make_encoder(None, None, 128, 32, lambda: rows).max_length == 32  # the model's positions cap it


def test_token_cache_is_reused_and_verified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = small_corpus()
    encoder = make_encoder(None, None, 64, None, lambda: src.texts)
    first, cached = tokenise(src, encoder, tmp_path, None)
    assert not cached
    monkeypatch.setattr(text_mod.TextEncoder, "encode", lambda *a, **k: pytest.fail("re-encoded a cached split"))
    again, cached = tokenise(src, encoder, tmp_path, None)
    assert cached and torch.equal(again.ids, first.ids) and torch.equal(again.offsets, first.offsets)
    monkeypatch.undo()
    (entry,) = (tmp_path / "tokens").glob("*.pt")
    data = torch.load(entry, weights_only=True)
    data["ids"][3] += 1  # a damaged entry: the arrays no longer hash to what was recorded
    torch.save(data, entry)
    notes: list[str] = []
    fixed, cached = tokenise(src, encoder, tmp_path, notes.append)
    assert not cached and torch.equal(fixed.ids, first.ids)
    assert any("damaged" in n for n in notes)
    other = make_encoder(None, None, 8, None, lambda: src.texts)  # another length limit: another entry
    assert tokenise(src, other, tmp_path, None)[0].fingerprint != first.fingerprint


def test_word_level_vocabulary_is_counted_once_per_corpus(tmp_path: Path) -> None:
    rows = small_corpus().texts
    vocab_file = tmp_path / "vocab" / "corpus.json"
    first, digest = word_level_tokenizer(lambda: rows, vocab_file=vocab_file)
    assert vocab_file.is_file()
    again, again_digest = word_level_tokenizer(lambda: pytest.fail("counted the corpus again"), vocab_file=vocab_file)
    assert again_digest == digest and again.get_vocab() == first.get_vocab()
    vocab_file.write_text("{not json")  # damaged: counted again
    assert word_level_tokenizer(lambda: rows, vocab_file=vocab_file)[1] == digest


def test_word_level_vocabulary_is_deterministic() -> None:
    rows = small_corpus().texts
    (a, da), (b, db) = word_level_tokenizer(lambda: rows), word_level_tokenizer(lambda: list(reversed(rows)))
    assert da == db and a.get_vocab() == b.get_vocab()


def test_token_batches_of_different_widths_join() -> None:
    short = torch.tensor([[[5, 6], [0, 0]]])
    long = torch.tensor([[[7, 8, 9], [0, 0, 1]]])
    joined = join_batches([short, long])
    assert joined.shape == (2, 2, 3) and joined[0, 0].tolist() == [5, 6, PAD] and joined[0, 1].tolist() == [0, 0, PAD]


def test_a_pool_of_two_text_tasks_reads_rows_of_both(tmp_path: Path) -> None:
    a = TokenSource(torch.tensor([1, 2, 3, 4, 5], dtype=torch.int32), torch.zeros(5, dtype=torch.int8),
                    torch.tensor([0, 2, 5]), torch.tensor([0, 1]), "a")
    b = TokenSource(torch.tensor([9], dtype=torch.int32), torch.zeros(1, dtype=torch.int8), torch.tensor([0, 1]),
                    torch.tensor([2]), "b")
    from mixcd_cli.data import Task

    tasks = [Task(n, s, torch.arange(len(s)), s.targets, 3, {"name": n}) for n, s in (("a", a), ("b", b))]
    batch = ConcatSource(tasks).inputs(torch.tensor([2, 1, 0]))
    assert batch[:, 0].tolist() == [[9, PAD, PAD], [3, 4, 5], [1, 2, PAD]]


# ---------------------------------------------------------------- through the CLI

CORPUS = {"n_train": 400, "n_test": 120, "topic_words": 12, "filler_words": 60}
TINY_TEXT = ["experiment=text_topics", *(f"+{task}.options.{k}={v}" for task in ("prior", "finetune")
                                         for k, v in CORPUS.items()), "pretrain.epochs=6", "pretrain.batch_size=16",
             "trainer.steps=20", "trainer.log_every=10", "trainer.batch_size=16", "model.config.hidden_size=32",
             "model.config.intermediate_size=64"]


def paths(tmp_path: Path) -> list[str]:
    return [f"paths.output_dir={tmp_path / 'outputs'}", f"paths.data_dir={tmp_path / 'data'}"]


def test_tiny_transformer_runs_the_whole_chain_through_the_cli(tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", *TINY_TEXT, *paths(tmp_path), "sampler=mixcd", "trainer.mix_ratio=0.25",
                                 "trainer.audit_every=1", f"hydra.run.dir={run}"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["sampler"] == "mixcd" and metrics["steps"] == 20
    assert metrics["ledger"]["forward"]["rehearsal"] == 20 * 4
    assert metrics["pre_acc0"] > 0.5  # θ0 learned the prior topics
    # LayerNorm and no dropout: the training pass's "now wrong" is the eval-mode truth (docs/design.md §4.6)
    assert metrics["signal_precision"] == 1.0 and metrics["signal_recall"] == 1.0
    evaluated = runner.invoke(app, ["eval", *TINY_TEXT, *paths(tmp_path), "sampler=mixcd", f"run_dir={run}",
                                    f"hydra.run.dir={tmp_path / 'eval'}"])
    assert evaluated.exit_code == 0, evaluated.output
    again = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert again["pre_acc"] == pytest.approx(metrics["pre_acc"]) and again["ft_acc"] == pytest.approx(metrics["ft_acc"])


def test_text_snapshot_equals_a_direct_computation(tmp_path: Path, compose_cfg) -> None:
    from mixcd_cli.models import load_model, model_spec
    from mixcd_cli.recipes import experiment_of, plain
    from mixcd_cli.snapshot import load_snapshot

    run = tmp_path / "run"
    result = runner.invoke(app, ["train", *TINY_TEXT, *paths(tmp_path), "sampler=none", f"hydra.run.dir={run}"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "metrics.json").read_text())
    cfg = compose_cfg("train", [*TINY_TEXT, *paths(tmp_path)])
    exp = experiment_of(cfg)
    model, _ = load_model(Path(metrics["prior_checkpoint"]), model_spec(plain(cfg.model)), exp.channels,
                          vocab_size=exp.vocab_size)
    model.eval()
    snap = load_snapshot(Path(metrics["snapshot"]), None, exp.pool, exp.prior_test)
    for task, part in ((exp.pool, snap.pool), (exp.prior_test, snap.test)):
        with torch.no_grad():  # one row at a time: no padding, no batch
            logits = torch.cat([model(task.inputs(torch.tensor([i])), "shared") for i in range(len(task))])
        loss = torch.nn.functional.cross_entropy(logits, task.targets, reduction="none")
        assert torch.allclose(part.loss, loss, atol=1e-4)
        assert torch.equal(part.correct.bool(), logits.argmax(1) == task.targets)


@pytest.fixture
def nli_files(tmp_path: Path) -> Path:
    """Sentence pairs as an NLI dataset would come (string labels), and a 'downloaded' encoder folder: a tiny BERT
    saved with its tokenizer."""
    from transformers import BertConfig, BertModel

    src = make_topic_text(train=True, **{**SMALL, "n_train": 240})
    names = ["entailment", "neutral", "contradiction"]
    rows = [{"premise": a[0], "hypothesis": b[0], "label": names[(int(ya) + int(yb)) % 3]}
            for a, b, ya, yb in zip(src.texts, src.texts[1:], src.targets, src.targets[1:], strict=False)]
    data = tmp_path / "data" / "nli"
    data.mkdir(parents=True)
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:180]))
    (data / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[180:]))
    tok, _ = word_level_tokenizer(lambda: [(r["premise"], r["hypothesis"]) for r in rows])
    encoder = tmp_path / "encoder"
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(str(encoder))
    return tmp_path


def nli_overrides(root: Path) -> list[str]:
    task = ("options={train_path: nli/train.jsonl, test_path: nli/dev.jsonl, text: [premise, hypothesis], "
            "label: label, labels: [entailment, neutral, contradiction], train_split: train, test_split: test, "
            "hub_config: null}")
    return ["experiment=text_topics", "task@prior=text", "task@finetune=text", f"prior.{task}", f"finetune.{task}",
            "prior.classes=[0,1]", "finetune.classes=[2]", "model=hf", f"model.name={root / 'encoder'}",
            "pretrain.epochs=1", "trainer.steps=6", "trainer.batch_size=8", "trainer.log_every=3", *paths(root)]


def test_nli_files_with_a_local_encoder_folder(nli_files: Path) -> None:
    from transformers import AutoTokenizer

    run = nli_files / "run"
    args = ["train", *nli_overrides(nli_files), "sampler=random", f"hydra.run.dir={run}"]
    result = runner.invoke(app, args)
    assert result.exit_code != 0, result.output  # the folder has no tokenizer yet
    assert "holds no tokenizer" in said(result) and "Traceback" not in said(result)
    tok, _ = word_level_tokenizer(lambda: [("x",)])
    tok.save_pretrained(str(nli_files / "encoder"))
    assert AutoTokenizer.from_pretrained(str(nli_files / "encoder")).is_fast
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 6 and metrics["ledger"]["forward"]["rehearsal"] == 6 * 2


def said(result) -> str:
    """What a user saw: the printed line, or the one-line error main() prints for a MixcdError."""
    return result.output + ("" if result.exception is None else str(result.exception))


def test_a_text_task_needs_a_text_model_and_back(tmp_path: Path) -> None:
    text_task = [*TINY_TEXT[:-2], *paths(tmp_path)]  # without the hf model's own keys
    result = runner.invoke(app, ["train", *text_task, "model=cnn", f"hydra.run.dir={tmp_path / 'r'}"])
    assert result.exit_code != 0 and "text tasks need a text model (model=hf)" in said(result)
    result = runner.invoke(app, ["train", "experiment=tiny", "model=hf_tiny", *paths(tmp_path),
                                 f"hydra.run.dir={tmp_path / 'r2'}"])
    assert result.exit_code != 0 and "model=hf reads text tasks only" in said(result)
    assert not (tmp_path / "outputs" / "cache" / "prior").exists()  # refused before any work


def test_ls_shows_text_entries_only_with_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    shown = runner.invoke(app, ["ls", "tasks"]).output
    assert "topics_prior" in shown and "text" in shown
    monkeypatch.setattr("mixcd_cli.hub.text_extra_installed", lambda: False)
    for kind, hidden in (("tasks", "topics_prior"), ("models", "hf_tiny"), ("experiments", "text_topics"),
                         ("datasets", "topic_text")):
        out = runner.invoke(app, ["ls", kind]).output
        assert hidden not in out and "pip install -e '.[text]'" in out, out
    assert "fmnist_0to4" in runner.invoke(app, ["ls", "tasks"]).output


def test_a_text_sequence_rehearses_rows_of_earlier_stages(tmp_path: Path) -> None:
    """Two text stages on one head each: stage 2's pool joins the prior pool and stage 1's rows, whose token
    batches have their own widths."""
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", *TINY_TEXT, *paths(tmp_path), "head=multi", "sampler=random",
                                 "trainer.mix_ratio=0.5",
                                 "stages=[{name: a, classes: [4, 5]}, {name: b, classes: [6, 7]}]",
                                 f"hydra.run.dir={run}"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["stage_names"] == ["a", "b"]
    pool = metrics["stages"][1]["pool"]
    assert set(pool["by_source"]) == {"0", "1"} and pool["by_source"]["1"] > 0  # stage 1's rows are in the pool
    assert metrics["ledger"]["forward"]["rehearsal"] == 2 * 20 * 8
    assert len(metrics["stages"][1]["accuracy"]) == 3  # prior, a, b: every earlier text task evaluated
