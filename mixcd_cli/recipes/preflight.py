"""Every check that reads a file, asked before anything is written (docs/design.md §6).

A refused command leaves nothing behind: no run folder, no cache entry, no lock, and not a byte of an
existing run folder changed. Hydra makes the run folder and writes `.hydra/` and `train.log` into it before a
stage's function runs, so whatever a stage would refuse after reading a file — the folder it would write,
the data, a checkpoint, a snapshot, the run to evaluate, a logger — is asked here, in the CLI's process,
before Hydra is called. The stage asks again when it runs (library callers come in there); by then the
answer is known to be yes. Nothing here writes, except the text cache of a tokenised experiment, made last,
once every other check has passed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .. import tracking
from ..artifacts import file_digest
from ..data import Experiment
from ..errors import MixcdError
from ..models import check_weights_file, load_model, model_spec, read_checkpoint
from ..snapshot import load_snapshot, snapshot_key
from .context import check_run_folder, encode_text, experiment_of, plain
from .evaluate import check_finished_run, eval_config
from .prior import NO_PRIOR, cached_prior_path, prior_model, prior_record, snapshot_source, stage_pools


def check_before_running(cfg: DictConfig, run_dir: Path | None, overrides: list[str]) -> None:
    """Refuse now what the stage of ``cfg`` would refuse once it had written something.

    ``run_dir``: the folder the run will write when it is known before Hydra runs (named with hydra.run.dir,
    or made fixed with MIXCD_RUN_STAMP); ``overrides``: the command line's (`mixcd eval` checks them against
    the configuration the run was trained with).
    """
    if str(cfg.stage) == "eval":
        cfg = _eval_source(cfg, run_dir, overrides)
    if run_dir is not None and run_dir.is_dir():
        check_run_folder(cfg, run_dir, OmegaConf.to_yaml(cfg, resolve=True))
    check_inputs(cfg)


def check_sweep_folder(sweep_dir: Path) -> None:
    """A sweep writes job folders 0, 1, ... in hydra.sweep.dir: one that holds an earlier sweep's runs is refused
    (its jobs' folders would be written into)."""
    if not sweep_dir.is_dir():
        return
    runs = sorted(p.parent.name for p in sweep_dir.glob("*/config.yaml"))
    if runs:
        raise MixcdError(f"hydra.sweep.dir={sweep_dir} holds the runs of an earlier sweep ({', '.join(runs[:5])}"
                         f"{', ...' if len(runs) > 5 else ''}); choose another folder")


def check_inputs(cfg: DictConfig) -> None:
    """The files a stage reads: a given θ0, the data, the model and task kinds, the sampler's needs, loggers, the
    cached θ0 a stage that does not train it needs, a given snapshot, and (eval) the fine-tuned model."""
    stage = str(cfg.stage)
    given = Path(str(cfg.prior_model.checkpoint)) if cfg.prior_model.checkpoint else None
    given_ckpt = _check_model_file(given, "prior_model.checkpoint", cfg) if given is not None else None
    training_source = stage == "train" and snapshot_source(cfg) == "training"
    if cfg.snapshot.path:
        folder = Path(str(cfg.snapshot.path))
        if not folder.exists():
            raise MixcdError(f"snapshot not found: {folder} (snapshot.path names a snapshot folder)")
        if not (folder / "meta.json").is_file():
            what = "a file" if not folder.is_dir() else "a folder without meta.json"
            raise MixcdError(f"snapshot.path={folder} is {what}; it names a snapshot folder (meta.json and its "
                             "columns, made by `mixcd snapshot`)")
    if cfg.model.get("weights"):
        check_weights_file(Path(str(cfg.model.weights)))
    if cfg.get("logger"):
        tracking.check_can_start(plain(cfg.logger))
    exp = experiment_of(cfg, encode=False)
    encode_text(cfg, exp)  # writes the text cache: only once every check that needs no tokens has passed
    if given is not None:
        prior_model(cfg, exp, given, given_ckpt)  # this experiment's prior head
    _check_subset(cfg, exp)
    # θ0 from the cache was made for this model and head (they are in its key): only whether it is there matters
    prior = given if given is not None else cached_prior_path(cfg, exp)
    # snapshot.source=training reads θ0's pretraining record: a given θ0 has none, nor does one cached by an earlier
    # mixcd, and a damaged one is refused too (a θ0 not cached yet is pretrained, and recorded, by the run)
    if training_source and prior.is_file():
        prior_record(cfg, exp, prior)
    if not prior.is_file():
        if stage in ("snapshot", "eval"):
            raise MixcdError(NO_PRIOR)
        prior = None
    if cfg.snapshot.path:
        _check_snapshot(Path(str(cfg.snapshot.path)), prior, exp, cfg)
    if stage == "eval":
        load_model(Path(str(cfg.run_dir)) / "model.pt", model_spec(plain(cfg.model)), exp.channels,
                   vocab_size=exp.vocab_size, lm=exp.lm)


def _eval_source(cfg: DictConfig, run_dir: Path | None, overrides: list[str]) -> DictConfig:
    """`mixcd eval`: the run it evaluates is finished and is not the folder it writes; the configuration it was
    trained with, less what only changes evaluation."""
    if not cfg.get("run_dir"):
        raise MixcdError("mixcd eval needs run_dir=PATH (a folder written by `mixcd train`)")
    source = Path(str(cfg.run_dir)).resolve()
    check_finished_run(source)
    if run_dir is not None and run_dir.resolve() == source:
        raise MixcdError(f"mixcd eval writes a folder of its own and never into the run it evaluates ({source}); "
                         "drop hydra.run.dir or choose another folder")
    return eval_config(cfg, source, overrides)


def _check_model_file(path: Path, key: str, cfg: DictConfig) -> dict[str, Any]:
    """A model file the user names: there, a file, a mixcd checkpoint made for this model. → its contents (its fit
    to this experiment's heads is checked once the data is read, from these, not from a second read)."""
    if path.is_dir():
        raise MixcdError(f"{key}={path} is a folder; it names a model file (model.pt)")
    if not path.is_file():
        raise MixcdError(f"{key} not found: {path}")
    return read_checkpoint(path, model_spec(plain(cfg.model)), yours=True)


def _check_snapshot(folder: Path, prior: Path | None, exp: Experiment, cfg: DictConfig) -> None:
    """A given snapshot: whole (checksums), of these samples, and — when θ0 exists — made by θ0 over this pool (its
    scored subset with snapshot.subset)."""
    _, scored = stage_pools(cfg, exp, 1)
    key = snapshot_key(file_digest(prior), scored, exp.tests_before(1), exp.transform,
                       exp.prior_head()) if prior is not None else None
    load_snapshot(folder, key, scored, exp.tests_before(1))


def _check_subset(cfg: DictConfig, exp: Experiment) -> None:
    """snapshot.subset scores N rows of every stage's pool: no more than the smallest of them holds."""
    subset = cfg.snapshot.get("subset")
    if subset is None:
        return
    mode = str(cfg.rehearsal.pool)
    for k in range(1, len(exp.stages) + 1):
        size = len(exp.pool_at(k, mode))
        if int(subset) > size:
            where = f"stage {k}'s pool (rehearsal.pool={mode}: {size} rows)" if len(exp.stages) > 1 else \
                f"the pool ({size} rows)"
            raise MixcdError(f"snapshot.subset={subset} is larger than {where}; give at most {size}, or "
                             "snapshot.subset=null to score the whole pool")
