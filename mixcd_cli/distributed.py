"""One fine-tuning over N processes (torchrun + DDP): process group, rank helpers, self-launch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from typing import Any

import torch

from .errors import MixcdError


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env(device_name: str) -> torch.device | None:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA); None when not under torchrun."""
    if env_world_size() <= 1:
        return None
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device_name != "cpu" and torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def barrier() -> None:
    if world() > 1:
        torch.distributed.barrier()


def broadcast(obj: Any) -> Any:
    """Rank 0's value of a picklable object, on every rank."""
    if world() <= 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def gather_rows(local: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Concatenate each rank's shard of per-sample columns, in rank order (shards are contiguous)."""
    if world() <= 1:
        return local
    parts: list[Any] = [None] * world()
    torch.distributed.all_gather_object(parts, {k: v.cpu() for k, v in local.items()})
    return {k: torch.cat([p[k] for p in parts]) for k in local}


def shard(n: int) -> tuple[int, int]:
    """This rank's contiguous [start, stop) of n rows."""
    per = -(-n // world())
    start = min(n, rank() * per)
    return start, min(n, start + per)


def all_reduce_ledger(ledger: Any) -> None:
    if world() <= 1:
        return
    keys = list(ledger.forward)
    t = torch.tensor([ledger.forward[k] for k in keys] + [ledger.backward[k] for k in keys], dtype=torch.float64)
    torch.distributed.all_reduce(t)
    for i, k in enumerate(keys):
        ledger.forward[k] = int(t[i])
        ledger.backward[k] = int(t[len(keys) + i])


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def launch(stage: str, overrides: list[str], nproc: int) -> int:
    """Run this stage under torchrun with ``nproc`` processes; every rank gets the same run folder."""
    if shutil.which("torchrun") is None and not _has_torch_run():
        raise MixcdError("trainer.devices > 1 needs torch.distributed.run (torchrun), which is not available")
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S") + f"-ddp{os.getpid()}"
    env = {**os.environ, "MIXCD_RUN_STAMP": stamp}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "mixcd_cli.cli", stage, *overrides]
    return subprocess.call(cmd, env=env)


def _has_torch_run() -> bool:
    try:
        import torch.distributed.run  # noqa: F401
    except ImportError:
        return False
    return True
