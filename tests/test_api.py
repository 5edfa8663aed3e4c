"""The public API (mixcd_cli.api): its documented examples, fingerprints, and the names it promises."""

from __future__ import annotations

import doctest

import pytest
import torch

from mixcd_cli import api
from mixcd_cli.errors import MixcdError


def test_the_documented_examples_run() -> None:
    result = doctest.testmod(api, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 15 and result.failed == 0


def test_every_promised_name_is_there() -> None:
    assert all(hasattr(api, name) for name in api.__all__)


def test_pool_digest_sees_order_and_content() -> None:
    rows = [{"input_ids": [1, 2], "labels": [-100, 2]}, {"input_ids": [3], "labels": [3]}]
    assert api.pool_digest(rows) == api.pool_digest([dict(r) for r in rows])
    assert api.pool_digest(rows) != api.pool_digest(rows[::-1])
    assert api.pool_digest(rows) != api.pool_digest([rows[0], {"input_ids": [3], "labels": [-100]}])


def test_model_digest_sees_every_weight_and_ignores_fresh_adapters() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    digest = api.model_digest(model)
    with torch.no_grad():
        model[1].bias[0] += 1e-6
    assert api.model_digest(model) != digest
    peft = pytest.importorskip("peft")
    adapted = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["0"]))
    assert api.model_digest(adapted) == api.model_digest(model)


def test_hit_audit_counts_only_prior_correct_rows_as_hits() -> None:
    audit = api.HitAudit(torch.tensor([True, False, True]))
    audit.add(torch.tensor([0, 1, 2]), wrong=torch.tensor([True, True, False]),
              audit_wrong=torch.tensor([True, True, True]))
    assert audit.counts == {"drawn": 3, "signal": 1, "audited": 3, "true": 2, "called": 1, "both": 1}
    assert audit.quality() == {"hit_rate": 2 / 3, "signal_rate": 1 / 3, "signal_precision": 1.0,
                               "signal_recall": 0.5}


def test_snapshot_from_columns_checks_lengths_and_unknown_kinds() -> None:
    with pytest.raises(MixcdError, match="different lengths"):
        api.PoolSnapshot.from_columns(correct=torch.ones(3, dtype=torch.bool), loss=torch.zeros(2))
    with pytest.raises(MixcdError, match="unknown task kind 'nope'"):
        api.objective("nope")


def test_snapshots_of_every_kind_from_hugging_face_models() -> None:
    """A seq2seq model (decoder inputs from the labels, as the model makes them) and a sequence classifier: one
    pass each, their rows' correctness the same event as the kind's objective on the model's own loss."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    t5 = transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=20, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2, decoder_start_token_id=0,
        pad_token_id=0, eos_token_id=1, dropout_rate=0.0))
    rows = [{"input_ids": [3, 4, 1], "attention_mask": [1, 1, 1], "labels": [5, 6, 1]},
            {"input_ids": [7, 1], "attention_mask": [1, 1], "labels": [8, 1]}]

    def collate(batch: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in batch)
        fill = {"input_ids": 0, "attention_mask": 0, "labels": -100}
        return {k: torch.tensor([r[k] + [v] * (width - len(r[k])) for r in batch]) for k, v in fill.items()}

    snap = api.compute_snapshot(t5, rows, collate, kind="seq2seq")
    with torch.no_grad():
        own = [float(t5(**collate([r])).loss) for r in rows]  # the model's mean token loss, one row at a time
    torch.testing.assert_close(snap.loss, torch.tensor(own), rtol=1e-5, atol=1e-6)
    bert = transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=20, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        num_labels=3))
    labelled = [{"input_ids": [2, 3, 4], "attention_mask": [1, 1, 1], "labels": 2},
                {"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": 0}]
    snap = api.compute_snapshot(bert, labelled, lambda b: {k: torch.tensor([r[k] for r in b]) for k in b[0]},
                                kind="classification")
    assert snap.classes.tolist() == [2, 0] and len(snap) == 2


def test_a_trained_adapter_changes_the_digest() -> None:
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    base = api.model_digest(model)
    adapted = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["0"]))
    assert api.model_digest(adapted) == base
    with torch.no_grad():
        next(p for n, p in adapted.named_parameters() if "lora_B" in n).add_(0.1)
    assert api.model_digest(adapted) != base
    torch.manual_seed(0)
    kept = peft.get_peft_model(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)),
                               peft.LoraConfig(r=2, target_modules=["0"], modules_to_save=["1"]))
    assert api.model_digest(kept) == base  # a copied module to train, unchanged yet
