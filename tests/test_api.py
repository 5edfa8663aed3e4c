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
