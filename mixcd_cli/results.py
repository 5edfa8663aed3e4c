"""Typed results: what `mixcd train`, `eval`, `pretrain` and `snapshot` write, and how they are read back.

The files stay flat JSON with the key names runs have always had, so a run written before these types and one
written after compare key for key, plus ``"format": 2``. A file without ``format`` is format 1 and loads: keys
added since its run was made get the values that make an old single fine-tuning read as a sequence of one
stage, keys this version does not know are kept in ``extra`` and written back unchanged, and a missing
required key (`REQUIRED`) is one `MixcdError` naming the file and the key.

Field names are the JSON's keys. Parts marked flat (`Retention`, `SignalQuality`, `SequenceSummary`) group
top-level keys without nesting them in the file; the other parts are the JSON's own nested objects.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar, overload

from .artifacts import read_json, write_json
from .errors import MixcdError, unknown_choice
from .metrics import sequence_metrics
from .result_json import Part, decode, extra_keys, flat_part, omitted

FORMAT = 2
RP = TypeVar("RP", bound="_Result")
# What a train or eval result cannot be read without (a report skips such a run); every other key has a default.
REQUIRED = ("sampler", "mix_ratio", "seed", "pre_acc", "ft_acc", "forgetting", "ledger")
# What `mixcd train` can return to a sweeper (optimized_metric), each read by `RunResult.metric`.
OPTIMIZABLE = ("pre_acc", "forgetting", "ft_acc", "earlier_acc", "avg_acc", "bwt", "avg_forgetting", "hit_rate",
               "signal_rate", "final_loss")

# ------------------------------------------------------------------------------------ parts


@dataclass(kw_only=True)
class Categories(Part):
    """Test samples by (correct before?, correct after?), and the collateral-damage rate (metrics.categories)."""

    retained: int | None = None
    collateral_damage: int | None = None
    unlearned: int | None = None
    gained: int | None = None
    cd_rate: float | None = None
    cd_rate_by_class: dict[str, float | None] | None = omitted()  # only where labels mean one thing
    extra: dict[str, Any] = extra_keys()


@dataclass(kw_only=True)
class LedgerArtifact(Part):
    """Something a run needed that runs can share (metrics.Artifact): θ0's pretraining, a snapshot, its clusters,
    with what it costs to make, made now or cached, and whether it is one-time (shared by every run of θ0)."""

    what: str
    purpose: str
    model: str
    stage: int
    one_time: bool
    forward: int
    backward: int = 0
    forward_tokens: int | None = omitted()  # token tasks only
    backward_tokens: int | None = omitted()
    needed: bool = True  # the sampler reads it (False: made only to measure)
    source: str | None = omitted()  # a snapshot's: pass | training (snapshot.source); absent in older runs
    extra: dict[str, Any] = extra_keys()


@dataclass(kw_only=True)
class LedgerSummary(Part):
    """Sample passes by purpose (metrics.Ledger.summary): a run's ``ledger``, a stage's ``ledger_delta``.

    ``forward_tokens``/``backward_tokens`` (token tasks) and ``artifacts`` are absent from runs made before
    they were kept, and left out where there is nothing to say.
    """

    forward: dict[str, int] = field(default_factory=dict)
    backward: dict[str, int] = field(default_factory=dict)
    training_passes: int | None = None
    rehearsal_budget: int | None = None
    forward_tokens: dict[str, int] | None = omitted()
    backward_tokens: dict[str, int] | None = omitted()
    artifacts: list[LedgerArtifact] | None = omitted()
    extra: dict[str, Any] = extra_keys()

    def since(self, before: LedgerSummary | None) -> LedgerSummary:
        """What was spent after ``before`` (an earlier cumulative ledger; None: nothing) up to this one."""
        def minus(now: int | None, then: int | None) -> int | None:
            return None if now is None else now - (then or 0)

        def per_purpose(now: dict[str, int] | None, then: dict[str, int] | None) -> dict[str, int] | None:
            return None if now is None else {p: n - (then or {}).get(p, 0) for p, n in now.items()}

        earlier = before or LedgerSummary()
        # artifacts are only ever added: those after the earlier ledger's are this span's
        later = None if self.artifacts is None else self.artifacts[len(earlier.artifacts or []):] or None
        return LedgerSummary(
            forward=per_purpose(self.forward, earlier.forward) or {},
            backward=per_purpose(self.backward, earlier.backward) or {},
            training_passes=minus(self.training_passes, earlier.training_passes),
            rehearsal_budget=minus(self.rehearsal_budget, earlier.rehearsal_budget),
            forward_tokens=per_purpose(self.forward_tokens, earlier.forward_tokens),
            backward_tokens=per_purpose(self.backward_tokens, earlier.backward_tokens), artifacts=later)

    def state_dict(self) -> dict[str, Any]:
        """What metrics.Ledger.load_state_dict takes: a resumed run's ledger from a finished stage's record."""
        out: dict[str, Any] = {"forward": dict(self.forward), "backward": dict(self.backward)}
        for name in ("forward_tokens", "backward_tokens"):
            if getattr(self, name) is not None:
                out[name] = dict(getattr(self, name))
        if self.artifacts is not None:
            out["artifacts"] = [{k: v for k, v in a.to_dict().items() if k in ARTIFACT_FIELDS}
                                for a in self.artifacts]
        return out


ARTIFACT_FIELDS = tuple(f.name for f in dataclasses.fields(LedgerArtifact) if f.name != "extra")


@dataclass(kw_only=True)
class ComputeArtifact(Part):
    """One artifact's compute (forward + 2 × backward; ``compute_tokens`` for token tasks), one-time or the run's
    own, the same whether this run made it or read it from the cache (metrics.Ledger.compute)."""

    what: str
    model: str
    stage: int
    one_time: bool
    compute: int
    needed: bool = True
    compute_tokens: int | None = omitted()
    source: str | None = omitted()  # a snapshot's: pass | training (snapshot.source); absent in older runs
    extra: dict[str, Any] = extra_keys()


@dataclass(kw_only=True)
class ComputeTotals(Part):
    """Compute = forward + 2 × backward by purpose, in total, its training part (fine-tune, rehearsal,
    selection) and its one-time part (shared by every run of the same θ0), in rows or tokens."""

    by_purpose: dict[str, int] = field(default_factory=dict)
    total: int
    training: int
    one_time: int
    sampler: int | None = None  # rehearsal + selection + the snapshots the sampler reads: the total axis
    sampler_one_time: int | None = None  # of which one-time (θ0's snapshot): what --amortize spreads
    extra: dict[str, Any] = extra_keys()


@dataclass(kw_only=True)
class Compute(ComputeTotals):
    """A run's ``compute`` (metrics.Ledger.compute, docs/design.md §11): in rows, with every artifact the run
    needed, and the same totals in non-padding tokens for token tasks."""

    artifacts: list[ComputeArtifact] = field(default_factory=list)
    tokens: ComputeTotals | None = omitted()


@dataclass(kw_only=True)
class Retention(Part):
    """Flat: the prior task before and after, the last stage's accuracy, the categories
    (metrics.forgetting_metrics, plus ``pool_categories`` with eval.on_pool)."""

    pre_acc0: float | None = None
    pre_acc: float | None
    forgetting: float | None
    ft_acc: float | None
    categories: Categories | None = None
    pool_categories: Categories | None = omitted()


@dataclass(kw_only=True)
class Heldout(Part):
    """With a probe (`prior.probe`), the prior task's own held-out test split, which the probe replaced as the
    retention set: θ0's and the final model's accuracy on it (decoded exact match and chrF for generation)."""

    rows: int
    acc0: float | None
    acc: float | None
    chrf0: float | None = omitted()
    chrf: float | None = omitted()


@dataclass(kw_only=True)
class SignalQuality(Part):
    """Flat: the audited hit rate and the sampler's own collateral-damage signal (finetuner.signal_quality)."""

    hit_rate: float | None = None
    signal_rate: float | None = None
    signal_precision: float | None = None
    signal_recall: float | None = None


@dataclass(kw_only=True)
class SequenceSummary(Part):
    """Flat: the accuracy matrix summed up (metrics.sequence_metrics); a single fine-tuning has one too."""

    avg_acc: float | None = None
    earlier_acc: float | None = None
    bwt: float | None = None
    forgetting_per_task: list[float] | None = None
    avg_forgetting: float | None = None


@dataclass(kw_only=True)
class StagePool(Part):
    """The rehearsal pool a stage drew from: its size and its rows by source task."""

    size: int | None = None
    by_source: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = extra_keys()


@dataclass(kw_only=True)
class Cached(Part):
    """Whether θ0 and stage 1's snapshot came from the cache."""

    prior: bool | None = None
    snapshot: bool | None = None
    extra: dict[str, Any] = extra_keys()


@dataclass(kw_only=True)
class SnapshotFidelity(Part):
    """How far the pool columns training recorded (snapshot.source=training) are from the true eval-mode pass of
    the same model (snapshot.fidelity): precision and recall of the recorded ``correct`` against the true one,
    the share of rows never visited, the mean absolute loss difference over visited rows, the rows compared."""

    precision: float | None = None
    recall: float | None = None
    unvisited: float | None = None
    loss_mae: float | None = None
    rows: int | None = None
    extra: dict[str, Any] = extra_keys()


@dataclass(kw_only=True)
class StageRecord(Part):
    """One stage of a sequence: an entry of metrics.json's ``stages`` (and of a stage's resume file).

    ``ledger_state``, which resume files also hold, is dropped on reading: it is ``ledger.state_dict()``.
    Fields are None only in the record made up for a run written before sequences (`RunResult`).
    """

    SKIP: ClassVar[tuple[str, ...]] = ("ledger_state",)

    stage: int
    name: str | None = None
    steps: int | None = None
    lr: float | None = None
    mix_ratio: float | None = None
    rehearsal_batch: int | None = None
    pool: StagePool | None = None
    accuracy: list[float | None] = field(default_factory=list)
    chrf: list[float] | None = omitted()  # generation tasks: each test set's corpus chrF, decoded
    categories_vs_previous: Categories | None = None
    categories_vs_theta0: Categories | None = None
    signal: SignalQuality = flat_part(SignalQuality)
    rehearsal_counts: dict[str, int] | None = None
    final_loss: float | None = None
    ledger: LedgerSummary | None = None
    ledger_delta: LedgerSummary | None = omitted()  # set once every stage is done (`with_deltas`)
    snapshot: str | None = None
    snapshot_cached: bool | None = None
    resumed_from: int | None = None
    sampler_final: dict[str, Any] = field(default_factory=dict)
    sampler_notes: list[str] = field(default_factory=list)
    telemetry_end: int | None = None
    wall_time: float | None = None
    snapshot_fidelity: SnapshotFidelity | None = omitted()  # snapshot.source=training only
    extra: dict[str, Any] = extra_keys()


def with_deltas(records: list[StageRecord]) -> list[StageRecord]:
    """The records with each stage's ``ledger_delta``: its cumulative ledger less the stage before's."""
    out = []
    for i, record in enumerate(records):
        before = records[i - 1].ledger if i else None
        delta = record.ledger.since(before) if record.ledger is not None else None
        out.append(dataclasses.replace(record, ledger_delta=delta))
    return out


# ------------------------------------------------------------------------------------ results


class _Result(Part):
    """A whole result file: its ``stage`` says which kind, and older formats are brought up to date on reading."""

    STAGE: ClassVar[str]

    @classmethod
    def from_dict(cls: type[RP], data: dict[str, Any], source: str = "a result") -> RP:
        """Build from a whole result file's dict (any format); its ``stage`` must be this kind's."""
        stage = data.get("stage", "train")
        if stage != cls.STAGE:
            raise MixcdError(f"{source} holds a `mixcd {stage}` result, not a `mixcd {cls.STAGE}` one")
        body = {k: v for k, v in cls._upgrade(data).items() if k not in ("stage", "format")}
        return decode(cls, body, source, "")

    @classmethod
    def _upgrade(cls, data: dict[str, Any]) -> dict[str, Any]:
        return data

    def to_dict(self) -> dict[str, Any]:
        """The file's JSON object: flat, today's key names, ``stage`` and ``format``."""
        return {**super().to_dict(), "stage": self.STAGE, "format": FORMAT}


def _number(value: float | None) -> float | None:
    # a sweeper reads None as a failed trial; NaN is what the file holds as null
    return None if value is None or not math.isfinite(value) else float(value)


@dataclass(kw_only=True)
class RunResult(_Result):
    """A `mixcd train` result (metrics.json): a sequence of one or more stages of fine-tuning with rehearsal."""

    STAGE: ClassVar[str] = "train"

    experiment: str | None = None
    sampler: str
    mix_ratio: float
    seed: int
    steps: int | None = None
    batch_size: int | None = None
    rehearsal_batch: int | None = None
    retention: Retention = flat_part()
    signal: SignalQuality = flat_part(SignalQuality)
    rehearsal_counts: dict[str, int] | None = None
    final_loss: float | None = None
    ledger: LedgerSummary
    wall_time: dict[str, float] = field(default_factory=dict)
    peak_memory_mb: float | None = None
    device: str | None = None
    world_size: int = 1  # runs before DDP ran in one process
    prior_checkpoint: str | None = None
    snapshot: str | None = None
    cached: Cached | None = None
    resumed_from: int | dict[str, int] | None = None  # a step; in a sequence {"stage": k, "step": s}
    sampler_final: dict[str, Any] = field(default_factory=dict)
    sampler_notes: list[str] = field(default_factory=list)
    num_stages: int = 1
    stage_names: list[str] = field(default_factory=list)  # empty for a run written before sequences
    rehearsal_pool: str = "all"  # schema.INTRODUCED: what runs before rehearsal.pool drew from
    accuracy_matrix: list[list[float | None]] | None = None
    # generation tasks: their kind (causal_lm | seq2seq), whose budgets the report reads in tokens
    task_kind: str | None = omitted()
    # generation tasks: the accuracy matrix's chrF beside it (row 0, θ0 on the prior test set, decoded too)
    chrf_matrix: list[list[float | None]] | None = omitted()
    # with prior.probe: retention is read on the probe (the accuracy matrix's column 0); the held-out split beside it
    heldout: Heldout | None = omitted()
    sequence: SequenceSummary = flat_part(SequenceSummary)
    stages: list[StageRecord] = field(default_factory=list)
    compute: Compute | None = omitted()  # absent from runs made before compute was kept
    # snapshot.source=training only: the stages' fidelities, averaged (rows: summed)
    snapshot_fidelity: SnapshotFidelity | None = omitted()
    extra: dict[str, Any] = extra_keys()

    @classmethod
    def _upgrade(cls, data: dict[str, Any]) -> dict[str, Any]:
        return _as_sequence(data)

    def metric(self, name: str) -> float | None:
        """The number ``name`` (one of `OPTIMIZABLE`) for a sweeper or tracker; None where undefined."""
        return _metric(name, {**_common_metrics(self.retention, self.signal),
                              "earlier_acc": self.sequence.earlier_acc, "avg_acc": self.sequence.avg_acc,
                              "bwt": self.sequence.bwt, "avg_forgetting": self.sequence.avg_forgetting,
                              "final_loss": self.final_loss})


@dataclass(kw_only=True)
class EvalResult(_Result):
    """A `mixcd eval` result (metrics.json): a finished run evaluated again; what it was trained with is copied
    from that run's metrics.json (None when it had none)."""

    STAGE: ClassVar[str] = "eval"

    run_dir: str | None = None
    experiment: str | None = None
    sampler: str | None
    mix_ratio: float | None
    seed: int | None
    retention: Retention = flat_part()
    signal: SignalQuality = flat_part(SignalQuality)
    ledger: LedgerSummary | None
    wall_time: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = extra_keys()

    def metric(self, name: str) -> float | None:
        """The number ``name`` (one of `OPTIMIZABLE`); None for what an evaluation does not measure."""
        return _metric(name, _common_metrics(self.retention, self.signal))


@dataclass(kw_only=True)
class PretrainResult(_Result):
    """A `mixcd pretrain` result (pretrain.json): θ0's checkpoint and its prior-test accuracy."""

    STAGE: ClassVar[str] = "pretrain"

    checkpoint: str
    cached: bool
    pre_acc0: float | None
    ledger: LedgerSummary
    wall_time: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = extra_keys()


@dataclass(kw_only=True)
class SnapshotResult(_Result):
    """A `mixcd snapshot` result (snapshot.json): θ0's snapshot folder and its accuracies."""

    STAGE: ClassVar[str] = "snapshot"

    snapshot: str
    cached: bool
    pool_size: int
    pool_acc0: float | None
    test_acc0: float | None
    ledger: LedgerSummary
    extra: dict[str, Any] = extra_keys()


Result = RunResult | EvalResult | PretrainResult | SnapshotResult
R = TypeVar("R", RunResult, EvalResult, PretrainResult, SnapshotResult)
KINDS: dict[str, type[Result]] = {c.STAGE: c for c in (RunResult, EvalResult, PretrainResult, SnapshotResult)}


def _common_metrics(retention: Retention, signal: SignalQuality) -> dict[str, float | None]:
    return {"pre_acc": retention.pre_acc, "forgetting": retention.forgetting, "ft_acc": retention.ft_acc,
            "hit_rate": signal.hit_rate, "signal_rate": signal.signal_rate}


def _metric(name: str, values: dict[str, float | None]) -> float | None:
    if name not in OPTIMIZABLE:
        raise unknown_choice("metric", name, OPTIMIZABLE)
    return _number(values.get(name))


# ------------------------------------------------------------------------------------ files


def write_result(result: Result, path: Path | str) -> Path:
    """Write ``result`` to ``path`` as flat strict JSON with ``format``, atomically; returns ``path``.

    What is written is checked against the result's types first: a value of the wrong type (a bug of the
    code that built the result) raises TypeError and nothing is written.
    """
    path = Path(path)
    data = result.to_dict()
    try:
        type(result).from_dict(data, f"the {result.STAGE} result for {path}")
    except MixcdError as exc:
        raise TypeError(str(exc)) from exc
    write_json(data, path)
    return path


@overload
def read_result(path: Path | str) -> Result: ...


@overload
def read_result(path: Path | str, kind: type[R]) -> R: ...


def read_result(path: Path | str, kind: type[Result] | None = None) -> Result:
    """The result in ``path`` (metrics.json, pretrain.json, snapshot.json; any format), typed by its ``stage``.

    ``kind``: the result expected (e.g. RunResult); another kind is a MixcdError. So are a missing or
    corrupt file, a missing required key and a value of the wrong type, each naming the file.
    """
    return result_from_dict(read_json(Path(path), "result file"), str(path), kind)


def result_from_dict(data: Any, source: str, kind: type[Result] | None = None) -> Result:
    """`read_result` for JSON already parsed (``source`` names it in errors)."""
    if not isinstance(data, dict):
        raise MixcdError(f"{source} is not a mixcd result (not a JSON object)")
    stage = data.get("stage", "train")  # the first runs' readers took a result without one as train's
    cls = KINDS.get(stage) if isinstance(stage, str) else None
    if cls is None:
        raise MixcdError(f"{source} has stage {stage!r}; a mixcd result is one of: {', '.join(KINDS)}")
    if kind is not None and cls is not kind:
        raise MixcdError(f"{source} holds a `mixcd {stage}` result, not a `mixcd {kind.STAGE}` one")
    return cls.from_dict(data, source)


# ------------------------------------------------------------------------------------ older runs


def _as_sequence(data: dict[str, Any]) -> dict[str, Any]:
    """A train result with what a run written before sequences lacks, as that run was: a sequence of one stage
    whose matrix, summary and stage record follow from its own keys. Keys the file has are kept as they are."""
    out = dict(data)
    one_stage = (data.get("num_stages") or 1) == 1
    if "accuracy_matrix" not in out and one_stage:
        out["accuracy_matrix"] = [[data.get("pre_acc0"), None], [data.get("pre_acc"), data.get("ft_acc")]]
    for key, value in _summary_of(out.get("accuracy_matrix")).items():
        out.setdefault(key, value)
    if "stages" not in out and one_stage:
        out["stages"] = [_one_stage(out)]
    return out


def _summary_of(matrix: Any) -> dict[str, Any]:
    try:
        return sequence_metrics(matrix)
    except (TypeError, IndexError):  # an entry never measured (None), or no matrix: the summary stays unknown
        return {}


def _one_stage(data: dict[str, Any]) -> dict[str, Any]:
    """The stages entry today's code writes for a single fine-tuning, from the run's own keys; what the file
    cannot tell (the stage's name, lr, pool, telemetry offset) stays None."""
    rehearsal, batch = data.get("rehearsal_batch"), data.get("batch_size")
    ledger, cached = data.get("ledger"), data.get("cached")
    return {
        "stage": 1, "name": (data.get("stage_names") or [None])[0], "steps": data.get("steps"),
        "mix_ratio": rehearsal / batch if isinstance(rehearsal, int) and batch else None,
        "rehearsal_batch": rehearsal, "accuracy": [data.get("pre_acc"), data.get("ft_acc")],
        # stage 1 is measured against θ0 on the prior task: both category sets are the run's own
        "categories_vs_previous": data.get("categories"), "categories_vs_theta0": data.get("categories"),
        **{f.name: data.get(f.name) for f in dataclasses.fields(SignalQuality)},
        "rehearsal_counts": data.get("rehearsal_counts"), "final_loss": data.get("final_loss"),
        "ledger": ledger, "ledger_delta": ledger, "snapshot": data.get("snapshot"),
        "snapshot_cached": cached.get("snapshot") if isinstance(cached, dict) else None,
        "resumed_from": data.get("resumed_from"), "sampler_final": data.get("sampler_final") or {},
        "sampler_notes": data.get("sampler_notes", []),
        "wall_time": (data.get("wall_time") or {}).get("finetune"),
    }


