"""One compute unit (docs/design.md §11): the ledger charges the rehearsal rows each sampler really sends through
the model (rows, and non-padding tokens of token tasks), compute = forward + 2 × backward per purpose and in
total, and a run's metrics.json counts θ0's one-time artifacts whether they were made or read from the cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from as_json import run_train

from mixcd_cli.data import BatchTransform, Task, TokenTransform
from mixcd_cli.metrics import Artifact, Ledger
from mixcd_cli.models import create_model
from mixcd_cli.results import Compute, LedgerSummary
from mixcd_cli.samplers import SAMPLERS, PoolInfo, RehearsalSampler, create_sampler
from mixcd_cli.sources import PAD, ArraySource
from mixcd_cli.training import FineTuner, Rehearsal, TrainSettings

STEPS, B, SMALL_B = 9, 8, 3
# options that make a sampler do what it exists for within a few steps (oracle_cd: refresh before the end)
OPTIONS: dict[str, dict[str, Any]] = {"oracle_cd": {"refresh_every": 3}}


def _image_task(n: int = 64, classes: int = 3, seed: int = 0) -> Task:
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, 256, (n, 1, 6, 6), dtype=torch.uint8, generator=g)
    targets = torch.randint(0, classes, (n,), generator=g)
    return Task("t", ArraySource(data, targets, (0.5,), (0.25,)), torch.arange(n), targets, classes, {})


def _pool_info(task: Task) -> PoolInfo:
    """Snapshot-like columns: most rows prior-correct, varied losses, a class column, clusters on demand."""
    n = len(task)
    g = torch.Generator().manual_seed(1)
    return PoolInfo(correct0=torch.rand(n, generator=g) < 0.8, loss0=torch.rand(n, generator=g),
                    conf0=torch.rand(n, generator=g), classes=task.targets.clone(),
                    clusters=lambda k, seed: torch.arange(n) % k)


class RehearsalCounter:
    """A forward hook on the model counting, per training forward (the one call with ``splits``), the rows after
    the fine-tune slice, i.e. the rehearsal rows that really went through the backbone, and their tokens."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.rows: list[int] = []
        self.tokens: list[int] = []
        model.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        splits = kwargs.get("splits")
        if splits is None:  # eval-mode passes: audit, selection
            return
        x = args[0]
        n_ft = splits[0][2]
        self.rows.append(int(x.shape[0]) - n_ft)
        if x.ndim == 3 and not x.is_floating_point():
            self.tokens.append(int((x[n_ft:, 0] != PAD).sum()))


def _fine_tune(sampler: Any, task: Task, transform: Any, model: torch.nn.Module, b: int,
               correct0: torch.Tensor) -> tuple[Ledger, RehearsalCounter, Any]:
    ledger = Ledger()
    counter = RehearsalCounter(model)
    settings = TrainSettings(steps=STEPS, batch_size=B, rehearsal_batch=b, log_every=4, audit_every=4, lr=0.01)
    loop = FineTuner(model, task, "shared", transform, torch.device("cpu"), settings, ledger,
                     Rehearsal(sampler, task, "shared", correct0)).run()
    return ledger, counter, loop


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_every_sampler_is_charged_the_rehearsal_rows_it_sends_through_the_model(name: str) -> None:
    """The ledger's rehearsal rows are the rows the training forwards carried after the fine-tune slice, and
    every registered sampler sends exactly b a step (none: nothing) -- one that drew b + 1 would fail here."""
    task = _image_task()
    info = _pool_info(task)
    b = SMALL_B if SAMPLERS.spec(name).draws else 0
    sampler = create_sampler(name, info, b, seed=0, **OPTIONS.get(name, {}))
    torch.manual_seed(0)
    model = create_model("cnn", 1, {"shared": 3}, width=4)
    ledger, counter, loop = _fine_tune(sampler, task, BatchTransform((0.5,), (0.25,)), model, b, info.correct0)
    assert len(counter.rows) == STEPS  # one training forward a step
    assert counter.rows == [b] * STEPS
    assert ledger.forward["rehearsal"] == ledger.backward["rehearsal"] == sum(counter.rows)
    assert loop.counts["drawn"] == sum(counter.rows)
    assert ledger.forward["finetune"] == ledger.backward["finetune"] == STEPS * B
    assert not any(ledger.forward_tokens.values())  # images have no tokens
    if name in ("oracle_cd", "mir"):
        assert ledger.forward["selection"] > 0


class ShortSampler(RehearsalSampler):
    """Draws b rows on even steps and b − 2 on odd ones, as a sampler whose eligible set ran short might."""

    name, draws, wants_loss = "short", True, False

    def draw(self, step: int, ctx: Any = None) -> torch.Tensor:
        n = self.batch_size - (2 if step % 2 else 0)
        return torch.randint(len(self.pool), (n,), generator=self.generator)


def test_a_sampler_that_draws_fewer_rows_is_charged_fewer() -> None:
    task = _image_task()
    info = _pool_info(task)
    torch.manual_seed(0)
    model = create_model("cnn", 1, {"shared": 3}, width=4)
    ledger, counter, loop = _fine_tune(ShortSampler(info, SMALL_B, 0), task, BatchTransform((0.5,), (0.25,)),
                                       model, SMALL_B, info.correct0)
    drawn = [SMALL_B - (2 if step % 2 else 0) for step in range(STEPS)]
    assert counter.rows == drawn
    assert ledger.forward["rehearsal"] == ledger.backward["rehearsal"] == sum(drawn) < STEPS * SMALL_B
    assert loop.counts["drawn"] == sum(drawn)
    # the audit checks what was drawn on its steps (4, 8 and the last, 9): its rows are charged to audit
    assert ledger.forward["audit"] == drawn[3] + drawn[7] + drawn[8]


def _token_task(n: int = 48, vocab: int = 30, classes: int = 3) -> Task:
    from mixcd_cli.text import TokenSource

    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(2, 9, (n,), generator=g)  # rows of different lengths: batches carry padding
    offsets = torch.zeros(n + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(lengths, 0)
    ids = torch.randint(4, vocab, (int(offsets[-1]),), generator=g, dtype=torch.int32)
    targets = torch.randint(0, classes, (n,), generator=g)
    source = TokenSource(ids, torch.zeros_like(ids, dtype=torch.int8), offsets, targets, "fp")
    return Task("text", source, torch.arange(n), targets, classes, {})


def test_token_tasks_count_non_padding_tokens_apart_from_rows() -> None:
    """For a text task the ledger counts, beside rows, the non-padding tokens of the same passes: the hook's
    rehearsal tokens, and the fine-tune batches' (which the model receives padded to a common width)."""
    pytest.importorskip("transformers")
    task = _token_task()
    info = _pool_info(task)
    torch.manual_seed(0)
    config = {"model_type": "bert", "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
              "intermediate_size": 16, "max_position_embeddings": 16, "hidden_dropout_prob": 0.0,
              "attention_probs_dropout_prob": 0.0}
    model = create_model("hf", 0, {"shared": 3}, vocab_size=30, config=config)
    sampler = create_sampler("random", info, SMALL_B, seed=0)
    ledger, counter, _ = _fine_tune(sampler, task, TokenTransform(), model, SMALL_B, info.correct0)
    assert counter.rows == [SMALL_B] * STEPS and ledger.forward["rehearsal"] == STEPS * SMALL_B
    assert ledger.forward_tokens["rehearsal"] == ledger.backward_tokens["rehearsal"] == sum(counter.tokens)
    lengths = task.source.lengths()
    assert STEPS * SMALL_B * 2 <= sum(counter.tokens) <= STEPS * SMALL_B * 8  # tokens, not rows or padding
    # the fine-tune tokens are those of the rows the data order gave, whatever width they were padded to
    from mixcd_cli.training.batches import planned_rows

    settings = TrainSettings(steps=STEPS, batch_size=B)
    assert ledger.forward_tokens["finetune"] == sum(int(lengths[r].sum()) for r in planned_rows(len(task), settings))
    assert ledger.forward_tokens["audit"] > 0 and ledger.backward_tokens["audit"] == 0
    compute = ledger.compute()
    assert compute["tokens"]["by_purpose"]["rehearsal"] == 3 * ledger.forward_tokens["rehearsal"]


def test_compute_is_forward_plus_twice_backward_per_purpose_and_in_total() -> None:
    """A hand-made ledger: passes made, a stage-2 snapshot this process made, and θ0's pretraining and snapshot
    read from the cache (no pass made, yet compute)."""
    ledger = Ledger()
    ledger.add("finetune", 10, 10, forward_tokens=100, backward_tokens=100)
    ledger.add("rehearsal", 4, 4, forward_tokens=40, backward_tokens=40)
    ledger.add("selection", 6, 2)
    ledger.add("eval", 5)
    ledger.add("audit", 1)
    ledger.add("snapshot", 7, forward_tokens=70)  # stage 2's snapshot, made by this run
    ledger.need(Artifact("pretraining", "pretrain", "theta0", 0, one_time=True, forward=100, backward=100,
                         forward_tokens=1000, backward_tokens=1000))
    ledger.need(Artifact("snapshot", "snapshot", "theta0", 1, one_time=True, forward=30, forward_tokens=300))
    ledger.need(Artifact("snapshot", "snapshot", "theta1", 2, one_time=False, forward=7, forward_tokens=70))
    ledger.need(Artifact("snapshot of the test sets", "snapshot", "theta1", 2, one_time=False, forward=0,
                         needed=False))
    compute = ledger.compute()
    assert compute["by_purpose"] == {"pretrain": 100 + 2 * 100, "finetune": 10 + 2 * 10, "rehearsal": 4 + 2 * 4,
                                     "selection": 6 + 2 * 2, "snapshot": 7 + 30, "eval": 5, "audit": 1}
    assert compute["total"] == 300 + 30 + 12 + 10 + 37 + 5 + 1
    assert compute["training"] == 30 + 12 + 10
    assert compute["one_time"] == 300 + 30  # θ0's pretraining and snapshot; stage 2's is the run's own
    assert [(a["model"], a["stage"], a["one_time"], a["compute"]) for a in compute["artifacts"]] == [
        ("theta0", 0, True, 300), ("theta0", 1, True, 30), ("theta1", 2, False, 7), ("theta1", 2, False, 0)]
    # the sampler's own: rehearsal and selection, and the snapshots it reads (pretraining is every sampler's)
    assert compute["sampler"] == 12 + 10 + 30 + 7 and compute["sampler_one_time"] == 30
    tokens = compute["tokens"]
    assert tokens["by_purpose"]["finetune"] == 300 and tokens["by_purpose"]["snapshot"] == 70 + 300
    assert tokens["by_purpose"]["selection"] == 0 and tokens["one_time"] == 3000 + 300
    assert tokens["total"] == 3000 + 300 + 120 + 370
    # the typed result round-trips it, and a ledger read back from its summary computes the same
    assert Compute.from_dict(compute).to_dict() == compute
    again = Ledger()
    again.load_state_dict(LedgerSummary.from_dict(ledger.summary()).state_dict())
    assert again.compute() == compute


def test_a_ledger_without_tokens_or_artifacts_writes_what_it_always_did() -> None:
    ledger = Ledger()
    ledger.add("finetune", 8, 8)
    assert set(ledger.summary()) == {"forward", "backward", "training_passes", "rehearsal_budget"}
    assert "tokens" not in ledger.compute() and ledger.compute()["artifacts"] == []


def _artifacts(metrics: dict[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
    return {(a["what"], a["stage"]): a for a in metrics["compute"]["artifacts"]}


@pytest.mark.parametrize("sampler", ["random", "amr", "mixcd"])
def test_theta0_snapshot_is_one_time_and_counted_when_cached(sampler: str, compose_cfg, tiny: list[str],
                                                            tmp_path: Path) -> None:
    """Two runs on one cache: the second reads θ0 and its snapshot (amr: and its k-means clusters) from the
    cache and runs no pass for them, yet its compute, one-time part included, is the first's, to the key."""
    from mixcd_cli.recipes import experiment_of

    args = [*tiny, f"sampler={sampler}", "trainer.steps=4", "threads=1", "pretrain.epochs=2"]
    first = run_train(compose_cfg("train", args), tmp_path / "r1")
    second = run_train(compose_cfg("train", args), tmp_path / "r2")
    exp = experiment_of(compose_cfg("train", args))
    made, cached = _artifacts(first), _artifacts(second)
    snapshot, pretraining = made[("snapshot", 1)], made[("pretraining", 0)]
    assert snapshot["one_time"] and pretraining["one_time"] and snapshot["model"] == "theta0"
    assert first["cached"] == {"prior": False, "snapshot": False}
    assert second["cached"] == {"prior": True, "snapshot": True}
    # the first run made them: its passes are the artifacts', known from the pool and prior test sizes; the pool's
    # part is the sampler's only if it reads it (random and amr over the pool do not), the test sets' never
    tests = made[("snapshot of the test sets", 1)]
    assert snapshot["compute"] == len(exp.pool) and tests["compute"] == len(exp.prior_test)
    assert snapshot["needed"] is (sampler == "mixcd") and tests["needed"] is False and tests["one_time"]
    clusters = made.get(("clusters", 1))
    assert (clusters is not None) == (sampler == "amr")
    if clusters is not None:  # a feature pass over the pool, one-time like the snapshot it is of
        assert clusters["one_time"] and clusters["compute"] == len(exp.pool)
    assert first["ledger"]["forward"]["snapshot"] == first["compute"]["by_purpose"]["snapshot"] == snapshot[
        "compute"] + tests["compute"] + (clusters["compute"] if clusters else 0)
    assert pretraining["compute"] == first["ledger"]["forward"]["pretrain"] + 2 * first["ledger"]["backward"][
        "pretrain"]
    # the second made nothing, and counts the same
    assert second["ledger"]["forward"]["snapshot"] == second["ledger"]["forward"]["pretrain"] == 0
    assert cached[("snapshot", 1)] == snapshot
    assert second["compute"]["one_time"] == first["compute"]["one_time"] == snapshot["compute"] + tests[
        "compute"] + pretraining["compute"] + (clusters["compute"] if clusters else 0)
    assert second["compute"] == first["compute"]
    assert second["ledger"]["artifacts"] == first["ledger"]["artifacts"]
    c = first["compute"]
    assert c["total"] == sum(c["by_purpose"].values())
    assert c["training"] == 3 * (first["ledger"]["forward"]["finetune"] + first["ledger"]["forward"]["rehearsal"])
    # what the sampler adds: its rehearsal, and the one-time snapshot parts it reads (mixcd: the pool's; amr: the
    # clusters of θ0's features; random over the pool: none)
    reads = {"random": 0, "amr": clusters["compute"] if clusters else 0, "mixcd": snapshot["compute"]}[sampler]
    assert c["sampler"] == 3 * first["ledger"]["forward"]["rehearsal"] + reads and c["sampler_one_time"] == reads


def test_a_later_stage_snapshot_is_owned_by_the_run(compose_cfg, out_dir: Path, tmp_path: Path) -> None:
    """A two-stage sequence: stage 2's snapshot of θ1 over pool 2 is the run's own (not one-time), counted in
    its snapshot compute beside θ0's, and recorded in stage 2's ledger delta."""
    from mixcd_cli.recipes import experiment_of

    args = ["experiment=tiny_seq", f"paths.output_dir={out_dir}", f"paths.data_dir={out_dir.parent / 'data'}",
            "stages=[{name:s1,classes:[2,3]},{name:s2,classes:[4,5]}]", "trainer.steps=4", "threads=1",
            "pretrain.epochs=2"]
    m = run_train(compose_cfg("train", args), tmp_path / "seq")
    exp = experiment_of(compose_cfg("train", args))
    artifacts = _artifacts(m)
    theta0, theta1 = artifacts[("snapshot", 1)], artifacts[("snapshot", 2)]
    assert theta0["one_time"] and (theta1["model"], theta1["one_time"]) == ("theta1", False)
    assert m["stages"][1]["snapshot_cached"] is False  # made by this run, from its own θ1
    tests0, tests1 = artifacts[("snapshot of the test sets", 1)], artifacts[("snapshot of the test sets", 2)]
    assert theta1["compute"] == len(exp.pool_at(2, "all")) and tests1["compute"] == len(exp.tests_before(2))
    assert not tests1["one_time"] and not tests1["needed"]
    assert m["compute"]["by_purpose"]["snapshot"] == sum(a["compute"] for a in (theta0, theta1, tests0, tests1))
    assert m["compute"]["one_time"] == theta0["compute"] + tests0["compute"] + artifacts[("pretraining", 0)][
        "compute"]
    stage2 = m["stages"][1]["ledger_delta"]
    assert [(a["what"], a["stage"]) for a in stage2["artifacts"]] == [("snapshot", 2), ("snapshot of the test sets", 2)]
    assert stage2["forward"]["snapshot"] == theta1["compute"] + tests1["compute"]
