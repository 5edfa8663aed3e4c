"""Hydra callbacks named in conf/common.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

ERROR_FILE = "error.txt"


class SweepOutcome(Callback):
    """Hydra callback (conf/common.yaml): remembers, in the parent process, which folder a sweep writes.

    Launchers may run jobs in other processes (joblib, SLURM), so whether a job failed is decided
    afterwards from the job folders (each failed job leaves error.txt), never from state the jobs
    could only have set in their own process.
    """

    sweep_dir: Path | None = None

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        SweepOutcome.sweep_dir = Path(str(config.hydra.sweep.dir))
