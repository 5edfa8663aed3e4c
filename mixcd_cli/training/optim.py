"""Optimisers and learning-rate schedules, by name."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import MixcdError, unknown_choice

OPTIMIZERS = ("sgd", "adamw", "adam")
SCHEDULES = ("constant", "cosine", "linear")  # of the learning rate, after any warm-up


def create_optimizer(params: Any, name: str, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                     nesterov: bool = False) -> torch.optim.Optimizer:
    """SGD (with momentum), AdamW or Adam over ``params``."""
    if lr <= 0:
        raise MixcdError(f"learning rate must be > 0, got {lr}")
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise unknown_choice("optimizer", name, OPTIMIZERS)


def create_schedule(optimizer: torch.optim.Optimizer, name: str, total_steps: int,
                    warmup_steps: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then constant, cosine or linear decay to 0 at ``total_steps``."""
    if name not in SCHEDULES:
        raise unknown_choice("schedule", name, SCHEDULES)

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if name == "cosine":
            return 0.5 * (1 + math.cos(math.pi * t))
        if name == "linear":
            return 1.0 - t
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
