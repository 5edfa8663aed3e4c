"""Snapshots: per-sample facts about the prior pool (and prior test set) under θ0, cached and verified.

A snapshot is a folder of .npy columns (memory-mappable, ~13 bytes per sample) plus meta.json.
Its cache key is a fingerprint of the checkpoint bytes, the pool definition and the transform;
it stores the targets and index order it was made with, and loading checks them against the
task being run, so a snapshot can never silently describe other data or another model.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import distributed
from .artifacts import (
    atomic_torch_save,
    config_digest,
    file_digest,
    file_lock,
    honour_umask,
    read_json,
    safe_torch_load,
    write_json,
)
from .clustering import kmeans
from .data import BatchTransform, Task
from .errors import MixcdError
from .runtime import derive_seed
from .samplers.base import PoolInfo
from .training.inference import predict_task, task_features

COLUMNS = {"loss": np.float32, "pred": np.int32, "conf": np.float32, "correct": np.bool_, "target": np.int32,
           "index": np.int64}
# Kinds without classes have no integer prediction, and their targets need not be integers: their snapshots keep
# neither column (meta.json says so with class_columns=false); their targets are checked through the cache key,
# which holds the pool's fingerprint, targets included.
CLASS_ONLY = ("pred", "target")
FORMAT_VERSION = 2  # 2: meta.json holds a checksum of every column


@dataclass
class SnapshotPart:
    """Columns of one task (pool or prior test), as tensors."""

    loss: torch.Tensor
    conf: torch.Tensor
    correct: torch.Tensor
    index: torch.Tensor
    pred: torch.Tensor | None = None  # classification kinds only (CLASS_ONLY)
    target: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.loss.numel())


@dataclass
class Snapshot:
    path: Path
    meta: dict[str, Any]
    pool: SnapshotPart
    test: SnapshotPart

    def pool_info(self, task: Task) -> PoolInfo:
        """What samplers may read of the pool: θ's correctness, loss and confidence per row, the class column
        where the task kind has classes, and the pool's aux columns."""
        return PoolInfo(correct0=self.pool.correct.bool(), loss0=self.pool.loss.float(), conf0=self.pool.conf.float(),
                        classes=task.objective.classes(task.targets), aux=task.aux_columns())


def snapshot_key(checkpoint_digest: str, pool: Task, prior_test: Task, transform: BatchTransform,
                 head: str) -> str:
    return config_digest({"checkpoint": checkpoint_digest, "pool": pool.fingerprint(),
                          "test": prior_test.fingerprint(), "transform": transform.describe(), "head": head,
                          "format": FORMAT_VERSION})


def _write_part(folder: Path, prefix: str, cols: dict[str, torch.Tensor | None]) -> None:
    for name, dtype in COLUMNS.items():
        if cols.get(name) is None:
            continue
        np.save(folder / f"{prefix}_{name}.npy", cols[name].numpy().astype(dtype, copy=False))


def _read_part(folder: Path, prefix: str, class_columns: bool = True) -> SnapshotPart:
    cols = {}
    for name in COLUMNS:
        path = folder / f"{prefix}_{name}.npy"
        if name in CLASS_ONLY and not class_columns:
            continue
        try:
            arr = np.load(path, mmap_mode="r")
            cols[name] = torch.from_numpy(np.array(arr))
        except FileNotFoundError as exc:
            raise MixcdError(f"snapshot {folder} is incomplete: {path.name} is missing; delete it to recompute") \
                from exc
        except (ValueError, OSError, EOFError) as exc:
            raise MixcdError(f"snapshot {folder} is corrupt ({path.name}: {exc}); delete it to recompute") from exc
    lengths = {len(v) for v in cols.values()}
    if len(lengths) != 1:
        raise MixcdError(f"snapshot {folder} is corrupt: its {prefix} columns have different lengths")
    return SnapshotPart(**cols)


def write_snapshot(folder: Path, meta: dict[str, Any], pool: dict[str, torch.Tensor],
                   test: dict[str, torch.Tensor]) -> None:
    """Write into a temporary sibling and rename: readers never see a half-written snapshot."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    honour_umask(tmp, directory=True)
    try:
        _write_part(tmp, "pool", pool)
        _write_part(tmp, "test", test)
        # Checksums of every column: loading verifies contents, not only shapes.
        meta = {**meta, "checksums": {p.name: file_digest(p) for p in sorted(tmp.glob("*.npy"))}}
        write_json(meta, tmp / "meta.json")
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def verify_checksums(folder: Path, meta: dict[str, Any]) -> None:
    """Every column meta.json names matches its checksum (a column missing here is the reader's to name)."""
    for name, digest in (meta.get("checksums") or {}).items():
        column = folder / name
        if column.is_file() and file_digest(column) != digest:
            raise MixcdError(f"snapshot {folder} is corrupt: {name} does not match its checksum; "
                             "delete the folder to recompute it")
    if not meta.get("checksums"):
        raise MixcdError(f"snapshot {folder} has no checksums (made by an older mixcd); delete it to recompute")


def load_snapshot(folder: Path, expected_key: str | None, pool: Task, prior_test: Task) -> Snapshot:
    """Load and verify: key, then the stored targets and index order against the live tasks."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MixcdError(f"snapshot not found: {folder}")
    meta = read_json(folder / "meta.json", what="snapshot metadata")
    if expected_key is not None and meta.get("key") != expected_key:
        raise MixcdError(f"snapshot {folder} was made for another model, pool or transform "
                         f"(its key {meta.get('key')} ≠ {expected_key}); drop snapshot.path to recompute")
    verify_checksums(folder, meta)
    classes = meta.get("class_columns", True)  # snapshots made before task kinds were all classification
    snap = Snapshot(folder, meta, _read_part(folder, "pool", classes), _read_part(folder, "test", classes))
    for part, task, name in ((snap.pool, pool, "pool"), (snap.test, prior_test, "prior test set")):
        same_targets = torch.equal(part.target.long(), task.targets.long()) if classes else True
        if len(part) != len(task) or not torch.equal(part.index.long(), task.index.long()) or not same_targets:
            raise MixcdError(f"snapshot {folder} does not match the {name} being run (different samples, "
                             "order or labels); drop snapshot.path or delete it to recompute")
    return snap


def compute_part(model: Any, task: Task, head: str, transform: BatchTransform, device: torch.device,
                 batch_size: int, ledger: Any, amp: str, progress: Any = None) -> dict[str, torch.Tensor]:
    """θ0's columns on one task; under torchrun each rank infers a contiguous shard, then all gather."""
    start, stop = distributed.shard(len(task))
    p = predict_task(model, task, head, transform, device, batch_size, ledger, "snapshot", amp,
                     rows=torch.arange(start, stop), progress=progress)
    classes = task.objective.has_classes  # the integer columns only where the kind has classes (CLASS_ONLY)
    cols = distributed.gather_rows({"loss": p.loss, "conf": p.conf, "correct": p.correct,
                                    **({"pred": p.pred} if classes else {})})
    return {**cols, "target": task.targets if classes else None, "index": task.index}


def get_or_create_snapshot(cache_dir: Path, checkpoint: Path, model: Any, pool: Task, prior_test: Task,
                           head: str, transform: BatchTransform, device: torch.device, batch_size: int,
                           ledger: Any, amp: str = "auto", explicit: Path | None = None,
                           progress: Any = None) -> tuple[Snapshot, bool]:
    """Return (snapshot, was_cached). Parallel jobs wait on a lock instead of computing it twice."""
    key = snapshot_key(file_digest(checkpoint), pool, prior_test, transform, head)
    if explicit is not None:
        return load_snapshot(explicit, key, pool, prior_test), True
    folder = cache_dir / "snapshots" / key
    if distributed.world() > 1:
        # Every rank infers its shard; rank 0 writes; the others load what it wrote.
        cached = distributed.broadcast((folder / "meta.json").is_file() if distributed.rank() == 0 else None)
        if not cached:
            pool_cols = compute_part(model, pool, head, transform, device, batch_size, ledger, amp, progress)
            test_cols = compute_part(model, prior_test, head, transform, device, batch_size, ledger, amp, progress)
            if distributed.rank() == 0:
                with file_lock(cache_dir / "locks" / f"snapshot-{key}.lock", "paths.cache_dir"):
                    if not (folder / "meta.json").is_file():
                        write_snapshot(folder, _meta(key, checkpoint, pool, prior_test, transform, head, pool_cols,
                                                     test_cols), pool_cols, test_cols)
        distributed.barrier()
        return load_snapshot(folder, key, pool, prior_test), bool(cached)
    with file_lock(cache_dir / "locks" / f"snapshot-{key}.lock", "paths.cache_dir"):
        if (folder / "meta.json").is_file():
            return load_snapshot(folder, key, pool, prior_test), True
        pool_cols = compute_part(model, pool, head, transform, device, batch_size, ledger, amp, progress)
        test_cols = compute_part(model, prior_test, head, transform, device, batch_size, ledger, amp, progress)
        write_snapshot(folder, _meta(key, checkpoint, pool, prior_test, transform, head, pool_cols, test_cols),
                       pool_cols, test_cols)
        return load_snapshot(folder, key, pool, prior_test), False


def cluster_column(folder: Path, model: Any, pool: Task, transform: BatchTransform, device: torch.device,
                   batch_size: int, ledger: Any, amp: str, k: int, seed: int) -> torch.Tensor:
    """k-means cluster ids of the pool rows on the snapshot model's features, computed once per (snapshot,
    k, seed): the first caller runs one feature pass (charged to the ledger's ``snapshot`` purpose) and
    the clustering, and stores the ids beside the snapshot with a checksum; every later run loads them."""
    folder = Path(folder)
    name = f"kmeans-k{int(k)}-s{int(seed)}"
    column, meta_path = folder / f"{name}.npy", folder / f"{name}.json"
    with file_lock(folder.parent / f".{folder.name}-{name}.lock", "paths.cache_dir"):
        if meta_path.is_file():
            meta = read_json(meta_path, what="k-means clusters")
            if not column.is_file() or file_digest(column) != meta.get("checksum"):
                raise MixcdError(f"the k-means clusters {column} are missing or corrupt (checksum); delete "
                                 f"{column.name} and {meta_path.name} to recompute them")
            labels = torch.from_numpy(np.load(column).astype(np.int64))
            if labels.numel() != len(pool):
                raise MixcdError(f"the k-means clusters {column} have {labels.numel()} rows, the pool {len(pool)}; "
                                 "delete them to recompute")
            return labels
        feats = task_features(model, pool, transform, device, batch_size, ledger, "snapshot", amp)
        labels, info = kmeans(feats, int(k), int(seed))
        tmp = folder / f".{name}.tmp.npy"
        np.save(tmp, labels.numpy().astype(np.int32))
        tmp.rename(column)
        write_json({"k": int(k), "seed": int(seed), "feature_dim": int(feats.shape[1]), **info,
                    "checksum": file_digest(column)}, meta_path)
        return labels


def _meta(key: str, checkpoint: Path, pool: Task, prior_test: Task, transform: BatchTransform, head: str,
          pool_cols: dict[str, torch.Tensor], test_cols: dict[str, torch.Tensor]) -> dict[str, Any]:
    return {"key": key, "format": FORMAT_VERSION, "checkpoint": str(checkpoint), "pool": pool.definition,
            "prior_test": prior_test.definition, "transform": transform.describe(), "head": head,
            "pool_size": len(pool), "test_size": len(prior_test),
            **({} if pool.objective.has_classes else {"class_columns": False}),
            "pool_acc0": float(pool_cols["correct"].float().mean()) if len(pool) else None,
            "test_acc0": float(test_cols["correct"].float().mean()) if len(prior_test) else None}


# ----------------------------------------------------------------------------------- snapshot.subset


def subset_rows(n: int, size: int, seed: int, k: int) -> torch.Tensor:
    """The ``size`` rows of stage k's pool of ``n`` rows that a subset snapshot scores (snapshot.subset): drawn
    without replacement by a generator seeded from the run's seed and the stage, in pool order."""
    if not 1 <= size <= n:
        raise MixcdError(f"snapshot.subset={size} must lie between 1 and the pool size {n} (stage {k})")
    g = torch.Generator().manual_seed(derive_seed(int(seed), f"snapshot-subset-stage{k}"))
    return torch.randperm(n, generator=g)[:size].sort().values


def subset_task(task: Task, rows: torch.Tensor) -> Task:
    """The rows ``rows`` of ``task`` as a task of their own (the scored part of a pool): its fingerprint, and so a
    snapshot's cache key, names the pool and the rows."""
    return replace(task, name=f"{task.name}[subset]", index=task.index[rows], targets=task.targets[rows],
                   definition={"subset_of": task.fingerprint(), "rows": int(rows.numel())},
                   head_of=None if task.head_of is None else task.head_of[rows],
                   columns={name: column[rows] for name, column in task.columns.items()})


# ----------------------------------------------------------------------------------- snapshot.source=training
# A pool row is named across stages by (the task it came from, its position in that task): `row_ids`. Stage j's
# training rows are task j; the prior pool is task 0. Pool k is made of such tasks in order (Experiment.pool_at),
# each row carrying its task in the ``source`` column (a one-stage run's pool has none: every row is task 0's).
ROW_ID_STRIDE = 1 << 40


def row_ids(task: Task) -> torch.Tensor:
    """Every row's id (source task × `ROW_ID_STRIDE` + its position in that task), int64."""
    n = len(task)
    source = task.columns.get("source")
    if source is None:
        return torch.arange(n, dtype=torch.int64)
    ids = torch.empty(n, dtype=torch.int64)
    for s in source.unique().tolist():
        at = torch.nonzero(source == s).flatten()  # one contiguous part of the pool per source task
        ids[at] = s * ROW_ID_STRIDE + torch.arange(at.numel(), dtype=torch.int64)
    return ids


def stage_row_ids(k: int, n: int) -> torch.Tensor:
    """The ids of stage k's ``n`` training rows (task k)."""
    return k * ROW_ID_STRIDE + torch.arange(n, dtype=torch.int64)


RECORD_FLOATS, RECORD_BOOLS = ("loss", "conf"), ("correct",)


def merge_visits(ids: torch.Tensor, sources: list[tuple[torch.Tensor, dict[str, torch.Tensor]]],
                 classes: bool = True) -> dict[str, torch.Tensor]:
    """The training-time columns of the rows ``ids``: each row takes the values of its latest record among
    ``sources`` = (ids, columns with ``step``), where step −1 marks a row the source holds nothing for, and
    ``recorded`` = False where none holds anything (`fill_unrecorded` then gives the row its values).

    A source with a ``recorded`` column instead of ``step`` (an earlier stage's training-time columns) ranks
    below every visit: its recorded rows count as step −1, its unrecorded ones not at all. So at stage k, the
    rows stage k−1's training forwards visited take their last visit, every other row keeps what stage k−1's
    own columns held."""
    keys, ranks, where, part = [], [], [], []
    for i, (src_ids, cols) in enumerate(sources):
        if "step" in cols:
            step = cols["step"].long()
            held = step >= 0
        else:
            held = cols["recorded"].bool()
            step = torch.full_like(src_ids, -1)
        at = torch.nonzero(held).flatten()
        keys.append(src_ids[at])
        ranks.append(step[at])
        where.append(at)
        part.append(torch.full_like(at, i))
    n = ids.numel()
    out: dict[str, torch.Tensor] = {
        "loss": torch.zeros(n, dtype=torch.float32), "conf": torch.zeros(n, dtype=torch.float32),
        "correct": torch.zeros(n, dtype=torch.bool), "recorded": torch.zeros(n, dtype=torch.bool),
        **({"pred": torch.full((n,), -1, dtype=torch.int64)} if classes else {})}
    if keys and sum(k.numel() for k in keys):
        key, rank, row, src = (torch.cat(x).numpy() for x in (keys, ranks, where, part))
        order = np.lexsort((rank, key))  # by id, then by step: the last of each id is its latest record
        key, row, src = key[order], row[order], src[order]
        last = np.r_[key[1:] != key[:-1], True]
        key, row, src = key[last], row[last], src[last]
        wanted = ids.numpy()
        pos = np.searchsorted(key, wanted)
        hit = pos < key.size
        hit[hit] = key[pos[hit]] == wanted[hit]
        targets = np.nonzero(hit)[0]
        chosen_src, chosen_row = src[pos[hit]], row[pos[hit]]
        for i, (_, cols) in enumerate(sources):
            mine = chosen_src == i
            if not mine.any():
                continue
            into, rows = torch.from_numpy(targets[mine]), torch.from_numpy(chosen_row[mine])
            for name in (*RECORD_FLOATS, *RECORD_BOOLS, *(("pred",) if classes else ())):
                out[name][into] = cols[name][rows].to(out[name].dtype)
            out["recorded"][into] = True
    return fill_unrecorded(out)


def fill_unrecorded(cols: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A row no training forward ever visited has no record: it reads as not prior-correct (so no sampler takes
    it for collateral damage), with the largest recorded loss (a loss-weighted sampler sees it as hard, not
    easy) and confidence 0; the prediction, where kept, is −1. ``recorded`` says which rows these are."""
    recorded = cols["recorded"]
    missing = ~recorded
    if missing.any():
        cols["correct"][missing] = False
        cols["loss"][missing] = float(cols["loss"][recorded].max()) if recorded.any() else 0.0
        cols["conf"][missing] = 0.0
        if "pred" in cols:
            cols["pred"][missing] = -1
    return cols


@dataclass
class TrainingColumns:
    """A pool's snapshot columns as training recorded them (snapshot.source=training): each row's values as of its
    last training visit, ``recorded`` False where there was none (`fill_unrecorded`)."""

    part: SnapshotPart
    recorded: torch.Tensor

    def columns(self) -> dict[str, torch.Tensor]:
        """The columns `merge_visits` takes as an earlier stage's (and `save_columns` writes)."""
        out = {"loss": self.part.loss, "conf": self.part.conf, "correct": self.part.correct,
               "recorded": self.recorded}
        return {**out, **({"pred": self.part.pred} if self.part.pred is not None else {})}


def training_columns(task: Task, cols: dict[str, torch.Tensor]) -> TrainingColumns:
    """``cols`` (from `merge_visits`) as the pool part of a snapshot of ``task``."""
    classes = task.objective.has_classes
    if int(cols["loss"].numel()) != len(task):
        raise MixcdError(f"the training record has {cols['loss'].numel()} rows, the pool {len(task)}")
    part = SnapshotPart(loss=cols["loss"].float(), conf=cols["conf"].float(), correct=cols["correct"].bool(),
                        index=task.index, pred=cols["pred"].long() if classes else None,
                        target=task.targets if classes else None)
    return TrainingColumns(part, cols["recorded"].bool())


def fidelity(view: TrainingColumns, true: SnapshotPart) -> dict[str, Any]:
    """How far training-time columns are from a true eval-mode pass of the same model over the same rows:
    precision = P(truly correct | training says correct), recall = P(training says correct | truly correct),
    ``unvisited`` the share of rows with no record, ``loss_mae`` the mean absolute loss difference over recorded
    rows; None where undefined."""
    said, truth, recorded = view.part.correct.bool(), true.correct.bool(), view.recorded
    both = int((said & truth).sum())
    n_said, n_true = int(said.sum()), int(truth.sum())
    gap = (view.part.loss.float() - true.loss.float()).abs()[recorded]
    return {"precision": both / n_said if n_said else None, "recall": both / n_true if n_true else None,
            "unvisited": float((~recorded).float().mean()) if len(true) else None,
            "loss_mae": float(gap.mean()) if gap.numel() else None, "rows": len(true)}


RECORD_FORMAT = 1


def save_columns(path: Path, cols: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write columns (a training record) atomically to ``path`` (torch) with a sidecar ``.json``: ``meta``, the row
    count and the file's sha256. The sidecar comes last, so a record without one was never finished."""
    atomic_torch_save({"format": RECORD_FORMAT, "columns": {k: v.cpu() for k, v in cols.items()}}, path)
    write_json({**meta, "format": RECORD_FORMAT, "rows": int(next(iter(cols.values())).numel()),
                "checksum": file_digest(path)}, path.with_suffix(".json"))


def load_columns(path: Path, rows: int, what: str, expect: dict[str, Any] | None = None,
                 advice: str = "delete it to recompute") -> dict[str, torch.Tensor]:
    """Columns written by `save_columns`, verified: sidecar, checksum, row count and the ``expect``ed meta values;
    each refusal one line ending in ``advice`` (what makes the file again)."""
    side = path.with_suffix(".json")
    if not path.is_file() or not side.is_file():
        raise MixcdError(f"{what} not found: {path} (with {side.name}); {advice}")
    try:
        meta = read_json(side, what=what)
    except MixcdError as exc:
        raise MixcdError(f"{what} {side} is corrupt; {advice}") from exc
    if file_digest(path) != meta.get("checksum"):
        raise MixcdError(f"{what} {path} does not match its checksum; {advice}")
    for key, value in (expect or {}).items():
        if meta.get(key) != value:
            raise MixcdError(f"{what} {path} belongs to another {key} ({meta.get(key)} ≠ {value}); {advice}")
    data = safe_torch_load(path, what=what)
    cols = data.get("columns") if isinstance(data, dict) else None
    if not isinstance(cols, dict) or data.get("format") != RECORD_FORMAT or \
            any(int(v.numel()) != rows for v in cols.values()) or meta.get("rows") != rows:
        raise MixcdError(f"{what} {path} does not fit this pool of {rows} rows; {advice}")
    return cols
