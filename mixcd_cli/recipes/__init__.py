"""The stages as recipes, one small module each: the context every stage sets up (`context`), the prior
stages (`prior`: θ0 and snapshots), fine-tuning through a sequence (`train`), evaluation (`evaluate`) and
the assembly of what a run reports (`assemble`). This is the only package that reads config objects;
everything it calls takes plain arguments."""

from .context import Context, experiment_of, place_data, plain, settings_from, setup, validate_config
from .evaluate import check_finished_run, eval_config, run_eval
from .prior import load_prior, prior_checkpoint, run_pretrain, run_snapshot, snapshot_for
from .train import run_train

STAGES = {"pretrain": run_pretrain, "snapshot": run_snapshot, "train": run_train, "eval": run_eval}

__all__ = ["STAGES", "Context", "check_finished_run", "eval_config", "experiment_of", "load_prior", "place_data",
           "plain", "prior_checkpoint", "run_eval", "run_pretrain", "run_snapshot", "run_train", "settings_from",
           "setup", "snapshot_for", "validate_config"]
