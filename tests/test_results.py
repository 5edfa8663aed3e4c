"""Typed results: round trips, today's and older run folders (tests/data/old_runs), required and unknown keys,
the metric accessor."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from mixcd_cli.artifacts import read_json
from mixcd_cli.errors import MixcdError
from mixcd_cli.metrics import Ledger, categories, forgetting_metrics, sequence_metrics
from mixcd_cli.results import (
    FORMAT,
    OPTIMIZABLE,
    REQUIRED,
    Cached,
    Categories,
    EvalResult,
    LedgerSummary,
    PretrainResult,
    Retention,
    RunResult,
    SequenceSummary,
    SignalQuality,
    SnapshotResult,
    StagePool,
    StageRecord,
    read_result,
    result_from_dict,
    with_deltas,
    write_result,
)

OLD_RUNS = Path(__file__).parent / "data" / "old_runs"
# Folders written by today's code (one level down); older formats live in before_*/ (see _older_runs).
TODAY = sorted(p for p in OLD_RUNS.glob("*/*.json"))
TODAY_METRICS = [p for p in TODAY if p.name == "metrics.json"]


def _raw(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _ledger(finetune: int, rehearsal: int) -> LedgerSummary:
    ledger = Ledger()
    ledger.add("finetune", finetune, finetune)
    ledger.add("rehearsal", rehearsal, rehearsal)
    ledger.add("eval", 100)
    return LedgerSummary.from_dict(ledger.summary())


def _stage(k: int, ledger: LedgerSummary, accuracy: list[float | None]) -> StageRecord:
    """A stage record built the way the producer builds one: from the measuring functions' own dicts."""
    before, after = torch.tensor([1, 1, 0, 1]), torch.tensor([1, 0, 0, 1])
    labels = torch.tensor([0, 1, 1, 0])
    return StageRecord(
        stage=k, name=f"s{k}", steps=30, lr=0.02, mix_ratio=0.25, rehearsal_batch=4,
        pool=StagePool(size=300, by_source={"0": 300}), accuracy=accuracy,
        categories_vs_previous=Categories.from_dict(categories(before, after)),
        categories_vs_theta0=Categories.from_dict(categories(before, after, labels)),
        signal=SignalQuality.from_dict({"hit_rate": 0.5, "signal_rate": 0.25, "signal_precision": None,
                                        "signal_recall": 1.0}),
        rehearsal_counts={"drawn": 120, "signal": 30, "audited": 12, "true": 6, "called": 0, "both": 0},
        final_loss=1.25, ledger=ledger, snapshot=f"/cache/snapshots/{k}", snapshot_cached=k == 1,
        resumed_from=None, sampler_final={"alpha": [0.5, 0.25]}, sampler_notes=["num_bins lowered"],
        telemetry_end=1000 * k, wall_time=0.5)


def two_stage_run() -> RunResult:
    """A two-stage train result, as `_train` would assemble it."""
    matrix: list[list[float | None]] = [[0.75, None, None], [0.5, 0.75, None], [0.25, 0.5, 1.0]]
    records = with_deltas([_stage(1, _ledger(480, 120), matrix[1][:2]),
                           _stage(2, _ledger(960, 240), matrix[2])])
    theta0, now, ft = torch.tensor([1, 1, 1, 0]), torch.tensor([1, 0, 0, 0]), torch.tensor([1, 1, 1, 1])
    metrics = forgetting_metrics(theta0, now, ft, torch.tensor([0, 1, 0, 1]))
    metrics["pool_categories"] = categories(theta0, now)
    return RunResult(
        experiment="tiny_seq", sampler="mixcd", mix_ratio=0.25, seed=3, steps=60, batch_size=16, rehearsal_batch=4,
        retention=Retention.from_dict(metrics), signal=SignalQuality(hit_rate=0.5, signal_rate=0.25),
        rehearsal_counts={"drawn": 240, "signal": 60, "audited": 24, "true": 12, "called": 0, "both": 0},
        final_loss=1.25, ledger=_ledger(960, 240), wall_time={"finetune": 1.0, "total": 2.5},
        peak_memory_mb=900.5, device="cpu", world_size=1, prior_checkpoint="/cache/prior/model.pt",
        snapshot="/cache/snapshots/1", cached=Cached(prior=True, snapshot=False),
        resumed_from={"stage": 2, "step": 10}, sampler_final={"alpha": [0.5, 0.25]},
        sampler_notes=["num_bins lowered"], num_stages=2, stage_names=["s1", "s2"], rehearsal_pool="all",
        accuracy_matrix=matrix, sequence=SequenceSummary.from_dict(sequence_metrics(matrix)), stages=records)


def test_run_result_round_trip_with_two_stages(tmp_path: Path) -> None:
    run = two_stage_run()
    path = write_result(run, tmp_path / "metrics.json")
    assert read_result(path) == run
    raw = _raw(path)
    # flat, with today's key names: the parts group keys in the type, never in the file
    assert raw["format"] == FORMAT and raw["stage"] == "train"
    assert {"pre_acc", "categories", "pool_categories", "hit_rate", "avg_acc", "forgetting_per_task"} <= set(raw)
    assert not {"retention", "signal", "sequence", "extra"} & set(raw)
    assert raw["stages"][1]["ledger_delta"]["forward"]["finetune"] == 480
    assert raw["stages"][1]["signal_rate"] == 0.25 and "cd_rate_by_class" not in raw["stages"][0][
        "categories_vs_previous"]  # measured without labels: the key is left out, as runs always did


def test_eval_pretrain_snapshot_round_trip(tmp_path: Path) -> None:
    run = two_stage_run()
    results = [
        EvalResult(run_dir="/runs/train/a", experiment="tiny", sampler="mixcd", mix_ratio=0.25, seed=3,
                   retention=run.retention, signal=run.signal, ledger=run.ledger, wall_time={"eval": 0.1}),
        EvalResult(sampler=None, mix_ratio=None, seed=None, ledger=None,  # a run folder without metrics.json
                   retention=Retention(pre_acc=0.5, forgetting=None, ft_acc=None)),
        PretrainResult(checkpoint="/cache/prior/model.pt", cached=False, pre_acc0=0.75, ledger=run.ledger,
                       wall_time={"pretrain": 3.0}),
        SnapshotResult(snapshot="/cache/snapshots/1", cached=True, pool_size=308, pool_acc0=0.7, test_acc0=None,
                       ledger=run.ledger),
    ]
    for i, result in enumerate(results):
        path = write_result(result, tmp_path / f"{i}.json")
        assert read_result(path) == result
        assert read_result(path, type(result)) == result
        assert _raw(path)["stage"] == result.STAGE


@pytest.mark.parametrize("path", TODAY, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_todays_run_folders_reserialise_unchanged(path: Path, tmp_path: Path) -> None:
    """Every key and value of a file written by today's code comes back, plus the format."""
    result = read_result(path)
    assert result.extra == {}  # today's files hold no key the types do not know
    assert result.to_dict() == {**_raw(path), "format": FORMAT}
    again = write_result(result, tmp_path / path.name)
    assert _raw(again) == {**_raw(path), "format": FORMAT}
    assert read_result(again) == result


def test_fixtures_cover_every_kind() -> None:
    kinds = {type(read_result(p)) for p in TODAY}
    assert kinds == {RunResult, EvalResult, PretrainResult, SnapshotResult}
    runs = [read_result(p, RunResult) for p in TODAY_METRICS if _raw(p)["stage"] == "train"]
    assert {r.num_stages for r in runs} >= {1, 2, 3}


def test_stage_resume_files_load_without_their_ledger_state() -> None:
    """stages/stageK.json (a finished stage of an unfinished run) holds ledger_state, which is ledger's
    counters: the record drops it, and ledger.state_dict() gives it back."""
    files = sorted(OLD_RUNS.glob("*/stages/stage*.json"))
    assert files
    for file in files:
        raw = read_json(file)
        record = StageRecord.from_dict(raw, str(file))
        assert record.extra == {} and record.ledger is not None
        assert record.ledger.state_dict() == raw["ledger_state"]
        assert record.to_dict() == {k: v for k, v in raw.items() if k != "ledger_state"}


def test_with_deltas_is_todays_ledger_delta() -> None:
    run = read_result(OLD_RUNS / "train_random_3stage" / "metrics.json", RunResult)
    assert with_deltas([dataclasses.replace(s, ledger_delta=None) for s in run.stages]) == run.stages


OLDER = sorted(OLD_RUNS.glob("before_*/*/metrics.json"))


@pytest.mark.parametrize("path", OLDER, ids=lambda p: f"{p.parent.parent.name}/{p.parent.name}")
def test_older_formats_load_keep_their_keys_and_read_as_one_stage(path: Path, tmp_path: Path) -> None:
    """Runs written by the code of earlier commits (before DDP, before the signal counters, before
    sequences): every key and value they have comes back; what they lack reads as those runs behaved."""
    raw = _raw(path)
    result = read_result(path)
    written = _raw(write_result(result, tmp_path / "metrics.json"))
    assert {k: written[k] for k in raw} == raw
    assert read_result(tmp_path / "metrics.json") == result
    if isinstance(result, RunResult):
        assert (result.num_stages, result.world_size, result.rehearsal_pool) == (1, 1, "all")
        assert result.sampler_notes == raw.get("sampler_notes", []) and len(result.stages) == 1
        assert result.accuracy_matrix == [[raw["pre_acc0"], None], [raw["pre_acc"], raw["ft_acc"]]]
        assert result.metric("avg_forgetting") == raw["forgetting"]


def test_older_formats_are_all_there() -> None:
    assert {p.parent.parent.name for p in OLDER} == {"before_ddp", "before_signal", "before_sequences"}
    assert "world_size" not in _raw(OLD_RUNS / "before_ddp" / "train_mixcd" / "metrics.json")


def test_a_run_before_sequences_reads_as_todays_one_stage_sequence() -> None:
    """The same configuration and seed, run by the code before sequences and by today's: the keys the old
    file lacks are filled with exactly what today's run wrote."""
    old = read_result(OLD_RUNS / "before_sequences" / "train_mixcd" / "metrics.json", RunResult)
    today = read_result(OLD_RUNS / "train_mixcd_1stage" / "metrics.json", RunResult)
    assert (old.num_stages, old.world_size, old.rehearsal_pool) == (1, 1, "all")
    assert old.accuracy_matrix == today.accuracy_matrix and old.sequence == today.sequence
    assert old.sequence.earlier_acc == old.retention.pre_acc  # as `mixcd report` read such runs
    assert len(old.stages) == 1
    unknowable = ("name", "lr", "pool", "telemetry_end")  # not in the old file; the rest are the run's own
    for key in unknowable:
        assert getattr(old.stages[0], key) is None
    machine = ("ledger", "ledger_delta", "snapshot", "snapshot_cached", "wall_time")  # cache, paths, timing
    same = [f.name for f in dataclasses.fields(StageRecord) if f.name not in unknowable + machine]
    assert {k: getattr(old.stages[0], k) for k in same} == {k: getattr(today.stages[0], k) for k in same}
    assert old.stages[0].ledger == old.ledger == old.stages[0].ledger_delta
    assert old.stages[0].wall_time == old.wall_time["finetune"]


def test_a_run_before_the_signal_counters_keeps_its_own_keys(tmp_path: Path) -> None:
    path = OLD_RUNS / "before_signal" / "train_mixcd" / "metrics.json"
    run = read_result(path, RunResult)
    raw = _raw(path)
    assert run.signal.hit_rate == raw["hit_rate"] and run.signal.signal_rate is None
    assert run.rehearsal_counts is None and run.metric("signal_rate") is None
    assert set(run.extra) == {"rehearsal_drawn", "rehearsal_hits"}  # its old counters, kept as they were
    written = _raw(write_result(run, tmp_path / "metrics.json"))
    assert {k: written[k] for k in raw} == raw  # every old key and value stays; only new keys are added
    evaluated = read_result(OLD_RUNS / "before_signal" / "eval_mixcd" / "metrics.json", EvalResult)
    assert evaluated.signal.signal_recall is None and evaluated.retention.pool_categories is None


def test_a_hand_made_minimal_run_loads_as_the_report_reads_it() -> None:
    """The keys `mixcd report` needs and nothing else (its tests make such files): a one-stage sequence."""
    minimal = {"stage": "train", "sampler": "random", "mix_ratio": 0.25, "seed": 0, "pre_acc0": 0.9,
               "pre_acc": 0.5, "forgetting": 0.4, "ft_acc": 0.9, "categories": {"cd_rate": 0.1},
               "ledger": {"forward": {"finetune": 10}, "backward": {"finetune": 10}, "training_passes": 20}}
    run = result_from_dict(minimal, "hand-made", RunResult)
    assert run.sequence.earlier_acc == 0.5 and run.num_stages == 1 and run.stages[0].accuracy == [0.5, 0.9]
    assert run.retention.categories == Categories(cd_rate=0.1) and run.ledger.rehearsal_budget is None


@pytest.mark.parametrize("key", REQUIRED)
def test_a_missing_required_key_names_the_key_and_the_file(key: str, tmp_path: Path) -> None:
    for name in ("train_mixcd_2stage", "eval_mixcd_2stage_pool"):
        raw = _raw(OLD_RUNS / name / "metrics.json")
        del raw[key]
        path = tmp_path / name / "metrics.json"
        path.parent.mkdir()
        path.write_text(json.dumps(raw))
        with pytest.raises(MixcdError, match=f"{path}.*'{key}'"):
            read_result(path)


def test_null_where_a_run_needs_a_value_and_values_of_the_wrong_type(tmp_path: Path) -> None:
    raw = _raw(OLD_RUNS / "train_mixcd_2stage" / "metrics.json")
    cases = {"sampler": None, "seed": "zero", "mix_ratio": True, "accuracy_matrix": "none"}
    for key, value in cases.items():
        with pytest.raises(MixcdError, match=f"'{key}'"):
            result_from_dict({**raw, key: value}, "bad.json")
    broken = copy.deepcopy(raw)
    broken["stages"][1]["pool"]["size"] = "big"
    with pytest.raises(MixcdError, match=r"bad.json .*'stages\[1\]\.pool\.size'"):
        result_from_dict(broken, "bad.json")
    # a producer's bug is caught at the writer, before anything is written
    run = dataclasses.replace(two_stage_run(), seed="3")
    with pytest.raises(TypeError, match="'seed'"):
        write_result(run, tmp_path / "metrics.json")
    assert not (tmp_path / "metrics.json").exists()


def test_unknown_keys_survive_a_round_trip(tmp_path: Path) -> None:
    """A file from a later version: what this one does not know is kept, at every level, and written back."""
    raw = _raw(OLD_RUNS / "train_mixcd_2stage" / "metrics.json")
    raw.update(format=FORMAT + 1, energy_kwh=0.25, per_task_loss=[1.0, 2.0])
    raw["categories"]["cd_rate_by_source"] = {"0": 0.5}
    raw["stages"][0]["grad_norm"] = 3.5
    raw["ledger"]["flops"] = 123
    source = tmp_path / "later.json"
    source.write_text(json.dumps(raw))
    run = read_result(source, RunResult)
    assert run.extra == {"energy_kwh": 0.25, "per_task_loss": [1.0, 2.0]}
    assert run.retention.categories is not None and run.retention.categories.extra == {"cd_rate_by_source": {"0": 0.5}}
    assert run.stages[0].extra == {"grad_norm": 3.5} and run.ledger.extra == {"flops": 123}
    written = _raw(write_result(run, tmp_path / "metrics.json"))
    assert written == {**raw, "format": FORMAT}
    assert read_result(tmp_path / "metrics.json") == run


def test_the_metric_accessor_reads_every_optimizable_name() -> None:
    for name in ("train_mixcd_2stage", "train_mixcd_1stage", "train_none_1stage"):
        raw = _raw(OLD_RUNS / name / "metrics.json")
        run = read_result(OLD_RUNS / name / "metrics.json", RunResult)
        for metric in OPTIMIZABLE:
            assert run.metric(metric) == raw[metric], (name, metric)
    raw = _raw(OLD_RUNS / "eval_mixcd_2stage_pool" / "metrics.json")
    evaluated = read_result(OLD_RUNS / "eval_mixcd_2stage_pool" / "metrics.json", EvalResult)
    for metric in OPTIMIZABLE:
        assert evaluated.metric(metric) == raw.get(metric), metric  # None for what eval does not measure
    assert isinstance(run.metric("pre_acc"), float)
    assert dataclasses.replace(run, final_loss=math.nan).metric("final_loss") is None  # as the file holds it
    with pytest.raises(MixcdError, match="did you mean 'ft_acc'"):
        run.metric("ft_ac")


def test_the_wrong_kind_of_file_is_one_clear_error(tmp_path: Path) -> None:
    pretrain = OLD_RUNS / "pretrain_tiny" / "pretrain.json"
    with pytest.raises(MixcdError, match=f"{pretrain} holds a `mixcd pretrain` result, not a `mixcd train` one"):
        read_result(pretrain, RunResult)
    with pytest.raises(MixcdError, match="not a `mixcd eval` one"):
        EvalResult.from_dict(_raw(OLD_RUNS / "train_mixcd_1stage" / "metrics.json"), "x")
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps({"stage": "deploy"}))
    with pytest.raises(MixcdError, match="stage 'deploy'"):
        read_result(odd)
    odd.write_text("[1, 2]")
    with pytest.raises(MixcdError, match="not a JSON object"):
        read_result(odd)
    with pytest.raises(MixcdError, match="not found"):
        read_result(tmp_path / "missing.json")
    with pytest.raises(MixcdError, match="Retention has no key"):
        Retention.from_dict({"pre_acc": 0.5, "forgetting": 0.1, "ft_acc": 0.9, "hit_rate": 0.2})
