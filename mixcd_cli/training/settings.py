"""The plain settings of one training run, shared by the loop and by what plans its data order."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainSettings:
    """Plain settings of one training run (fine-tune or pretrain)."""

    steps: int
    batch_size: int
    rehearsal_batch: int = 0
    rehearsal_weight: float = 1.0
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup_steps: int = 0
    seed: int = 0
    log_every: int = 50
    audit_every: int = 0  # every N steps an eval-mode check of the drawn rows (0: never)
    checkpoint_every: int = 0
    eval_batch_size: int = 1024
    amp: str = "auto"
    channels_last: bool = False
    compile: bool = False
    distributed: bool = True  # False: train on this process alone even inside a process group
    purpose: str = "finetune"
    stage: int = 0  # the stage of a sequence this run is (1, 2, ...); 0: not a stage (pretraining)
    stages: int = 1  # how many stages the sequence has (an interrupt names the stage when there are several)
    telemetry_start: int = 0  # the telemetry file's length when this stage began (earlier stages' records stay)
