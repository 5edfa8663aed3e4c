"""Evaluation: every task seen so far after a stage, the final model against θ0, and `mixcd eval` of a finished run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from .. import console
from ..errors import MixcdError, phase
from ..generation.scoring import decode_task
from ..metrics import categories, forgetting_metrics
from ..models import MixcdNet, load_model, model_spec
from ..results import EvalResult, Retention, RunResult, SignalQuality, read_result, write_result
from ..schema import INTRODUCED, drop_retired, flatten
from ..snapshot import Snapshot
from ..training import predict_task
from .context import Context, plain, run_dir_of, setup
from .prior import prior_checkpoint, snapshot_for


class AccuracyRow(list):
    """Per-sample correctness on each test set of a row of the accuracy matrix; for generation tasks also each
    test set's corpus chrF (``chrf``; None for classification)."""

    chrf: list[float] | None = None


def accuracy_row(ctx: Context, model: MixcdNet, k: int) -> AccuracyRow:
    """Per-sample correctness on the test set of every task seen up to stage k: the prior task, stages 1..k.
    Generation tasks are decoded (greedy, key-value cache): correct is decoded exact match, and chrF is kept."""
    cfg, exp = ctx.cfg, ctx.experiment
    bs, amp = int(cfg.eval.batch_size), str(cfg.trainer.amp)
    tasks = [(exp.prior_test, exp.prior_head())] + [(s.test, s.head) for s in exp.stages[:k]]
    if exp.lm is not None:
        return decoded_row(ctx, model, [task for task, _ in tasks])
    return AccuracyRow(predict_task(model, task, head, exp.transform, ctx.device, bs, ctx.ledger, "eval", amp).correct
                       for task, head in tasks)


def decoded_row(ctx: Context, model: Any, tasks: list[Any]) -> AccuracyRow:
    """Each generation test set decoded: exact match per row, corpus chrF per set; decoding charged to ``eval``."""
    row, scores = AccuracyRow(), []
    for task in tasks:
        decoded, tokens = decode_task(model, task.source, task.index, int(ctx.cfg.eval.batch_size),
                                      ctx.experiment.lm.tokenizer)
        ctx.ledger.add("eval", forward=len(task), forward_tokens=tokens)
        row.append(decoded.exact)
        scores.append(decoded.corpus_chrf())
    row.chrf = scores
    return row


def heldout_scores(ctx: Context, model: Any) -> tuple[float, float | None]:
    """Accuracy (decoded exact match for generation) and chrF (generation only) on the prior task's held-out split,
    which a probe replaced as the retention set; charged to ``eval``."""
    exp = ctx.experiment
    if exp.lm is not None:
        row = decoded_row(ctx, model, [exp.heldout])
        return float(row[0].float().mean()), float(row.chrf[0]) if row.chrf else None
    correct = predict_task(model, exp.heldout, exp.prior_head(), exp.transform, ctx.device,
                           int(ctx.cfg.eval.batch_size), ctx.ledger, "eval", str(ctx.cfg.trainer.amp)).correct
    return float(correct.float().mean()), None


def evaluate(ctx: Context, model: MixcdNet, snap0: Snapshot, row: list[torch.Tensor] | None = None
             ) -> dict[str, Any]:
    """The final model against θ0 (``snap0``: stage 1's snapshot): prior-task accuracy before and after,
    forgetting, the last stage's accuracy, the four categories; ``row``: the final accuracy row if known."""
    cfg, exp = ctx.cfg, ctx.experiment
    t0 = time.perf_counter()
    row = accuracy_row(ctx, model, len(exp.stages)) if row is None else row
    out = forgetting_metrics(snap0.test.correct, row[0], row[-1], exp.objective.classes(exp.prior_test.targets))
    if cfg.eval.on_pool:
        preds = predict_task(model, exp.pool, exp.prior_head(), exp.transform, ctx.device, int(cfg.eval.batch_size),
                             ctx.ledger, "eval", str(cfg.trainer.amp))
        out["pool_categories"] = categories(snap0.pool.correct, preds.correct, exp.objective.classes(exp.pool.targets))
    if exp.heldout is not None and ctx.theta0_heldout is not None:
        acc, chrf = heldout_scores(ctx, model)
        acc0, chrf0 = ctx.theta0_heldout
        out["heldout"] = {"rows": len(exp.heldout), "acc0": acc0, "acc": acc, "chrf0": chrf0, "chrf": chrf}
    ctx.timings["eval"] = ctx.timings.get("eval", 0.0) + time.perf_counter() - t0
    return out


# What `mixcd eval` may change of the configuration a run was trained with: how and where it
# evaluates, never what was trained or on which data.
EVAL_ONLY = ("eval", "device", "threads", "paths", "snapshot.batch_size", "trainer.amp", "run_dir", "stage", "resume",
             "hydra")


def _eval_only(path: str) -> bool:
    return any(path == key or path.startswith(key + ".") for key in EVAL_ONLY)


# A group choice on `mixcd eval`'s command line is checked by the node it fills (experiment: by name).
GROUP_NODES = {"experiment": "experiment_name", "sampler": "sampler", "model": "model", "trainer": "trainer",
               "pretrain": "pretrain", "task@prior": "prior", "task@finetune": "finetune"}


def check_finished_run(source: Path) -> None:
    """``source`` must be a folder written by a finished `mixcd train` (model.pt and config.yaml)."""
    if not source.is_dir():
        raise MixcdError(f"run_dir={source} does not exist")
    if not (source / "model.pt").is_file() or not (source / "config.yaml").is_file():
        raise MixcdError(f"{source} holds no finished `mixcd train` run (model.pt and config.yaml)")


def eval_config(cfg: DictConfig, source: Path, overrides: list[str]) -> DictConfig:
    """The configuration ``source`` was trained with, plus what only changes evaluation.

    An override that would evaluate something else (another experiment, other classes, another
    model) is refused, naming the first key that differs from the run's own configuration.
    """
    check_finished_run(source)
    trained = OmegaConf.create(drop_retired(OmegaConf.to_container(OmegaConf.load(source / "config.yaml"))))
    if trained.get("stage") != "train":
        raise MixcdError(f"{source} was written by `mixcd {trained.get('stage')}`, not `mixcd train`")
    for key, value in INTRODUCED.items():  # a run made before a setting existed ran as its "as before" value
        if OmegaConf.select(trained, key, default="__missing__") == "__missing__":
            OmegaConf.update(trained, key, value, force_add=True)
    given, have = flatten(plain(cfg)), flatten(plain(trained))
    named = [o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o]
    plain_keys = {k for k in named if k not in GROUP_NODES}
    checked: set[str] = set()
    for key in named:
        node = GROUP_NODES.get(key, key)
        # a group's node, less what is overridden key by key (checked on its own)
        checked |= {k for k in given if (k == node or k.startswith(node + ".")) and (key in plain_keys
                                                                                     or k not in plain_keys)}
    for key in sorted(checked):
        if not _eval_only(key) and given.get(key) != have.get(key):
            raise MixcdError(f"mixcd eval uses the configuration {source} was trained with, and {key}="
                             f"{given.get(key)!r} differs from it ({have.get(key)!r}); drop that override "
                             "(only eval.*, device, threads, paths.*, snapshot.batch_size, trainer.amp may change)")
    OmegaConf.set_struct(trained, False)
    for key in sorted(checked):
        if _eval_only(key) and not key.startswith("hydra") and key in given:
            OmegaConf.update(trained, key, given[key], force_add=True)
    trained.stage, trained.run_dir = "eval", str(source)
    return trained


def run_eval(cfg: DictConfig, run_dir: Path | None = None, overrides: list[str] | None = None) -> EvalResult:
    """Evaluate a finished fine-tune run with the configuration it was trained with; write a folder of its own."""
    if not cfg.get("run_dir"):
        raise MixcdError("mixcd eval needs run_dir=PATH (a folder written by `mixcd train`)")
    source = Path(str(cfg.run_dir)).resolve()
    check_finished_run(source)
    if overrides is None:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    target = run_dir_of(cfg, run_dir)
    if target.resolve() == source:
        raise MixcdError(f"mixcd eval writes a folder of its own and never into the run it evaluates ({source}); "
                         "drop hydra.run.dir or choose another folder")
    cfg = eval_config(cfg, source, overrides)
    ctx = setup(cfg, target)
    prior_path, _ = prior_checkpoint(ctx, allow_train=False)
    snap, _ = snapshot_for(ctx, prior_path)
    model, _ = load_model(source / "model.pt", model_spec(plain(cfg.model)), ctx.experiment.channels,
                          vocab_size=ctx.experiment.vocab_size, lm=ctx.experiment.lm)
    model.to(ctx.device)
    with phase("evaluation", "nothing of this evaluation was written; rerun to evaluate again"):
        metrics = evaluate(ctx, model, snap)
    result = eval_result(source, metrics, ctx.timings)
    write_result(result, ctx.run_dir / "metrics.json")
    console.print_run(result, ctx.run_dir)
    return result


def eval_result(source: Path, metrics: dict[str, Any], timings: dict[str, float]) -> EvalResult:
    """The evaluation's numbers beside what ``source`` was trained with (from its metrics.json, when it has one)."""
    path = source / "metrics.json"
    trained = read_result(path, RunResult) if path.is_file() else None
    return EvalResult(run_dir=str(source), experiment=trained.experiment if trained else None,
                      sampler=trained.sampler if trained else None, mix_ratio=trained.mix_ratio if trained else None,
                      seed=trained.seed if trained else None,
                      signal=trained.signal if trained else SignalQuality(),
                      ledger=trained.ledger if trained else None, retention=Retention.from_dict(metrics),
                      wall_time=dict(timings))
