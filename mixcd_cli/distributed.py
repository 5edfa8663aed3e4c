"""One fine-tuning over N processes (torchrun + DDP): the one rank API of mixcd.

Every collective of the package goes through this module. On CUDA the process group is
``cpu:gloo,cuda:nccl``: NCCL reduces CUDA tensors only, while the sampler's counts, the hit
counters and the ledger live on the host, so they travel over the gloo half of the same group
(docs/design.md §12). Nothing outside this module calls ``torch.distributed`` directly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from typing import Any

import torch

from .errors import MixcdError
from .runtime import resolve_device


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def backend_for(cuda: bool) -> str:
    """The process-group backend: gloo alone on CPU; on CUDA, gloo for host tensors and nccl for device ones."""
    return "cpu:gloo,cuda:nccl" if cuda else "gloo"


def served_devices(backend: str) -> set[str]:
    """Device types whose tensors a backend string can reduce ('nccl' alone serves only cuda)."""
    if ":" not in backend:
        return {"cuda"} if backend == "nccl" else {"cpu", "cuda"} if backend == "gloo" else {"cpu"}
    return {pair.split(":")[0] for pair in backend.split(",")}


def planned_device(device_name: str) -> torch.device:
    """The device a run with device=NAME computes on, known before any process group is joined: under torchrun
    this process's GPU (or the CPU), otherwise `resolve_device`'s choice."""
    if env_world_size() <= 1:
        return resolve_device(device_name)
    if device_name != "cpu" and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def init_from_env(device_name: str) -> torch.device | None:
    """Join the process group torchrun describes; None when not under torchrun."""
    if env_world_size() <= 1:
        return None
    import torch.distributed as dist

    device = planned_device(device_name)
    if not dist.is_initialized():
        dist.init_process_group(backend_for(device.type == "cuda"))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


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


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over ranks of a host or device tensor (in place; returned for chaining).

    A group that cannot reduce the tensor's device — NCCL alone, as accelerate and the Hugging Face Trainer set
    it up on GPUs, and a host tensor — reduces a copy on the current GPU and writes the sum back."""
    if world() > 1:
        backend = str(torch.distributed.get_backend())
        if values.device.type not in served_devices(backend) and torch.cuda.is_available():
            on_gpu = values.to(torch.device("cuda", torch.cuda.current_device()))
            torch.distributed.all_reduce(on_gpu)
            values.copy_(on_gpu.cpu())
        else:
            torch.distributed.all_reduce(values)
    return values


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's value of a picklable object, in rank order, on every rank."""
    if world() <= 1:
        return [obj]
    parts: list[Any] = [None] * world()
    torch.distributed.all_gather_object(parts, obj)
    return parts


def gather_rows(local: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Concatenate each rank's shard of per-sample columns, in rank order (shards are contiguous)."""
    if world() <= 1:
        return local
    parts = gather_objects({k: v.cpu() for k, v in local.items()})
    return {k: torch.cat([p[k] for p in parts]) for k in local}


def shard(n: int) -> tuple[int, int]:
    """This rank's contiguous [start, stop) of n rows."""
    per = -(-n // world())
    start = min(n, rank() * per)
    return start, min(n, start + per)


def all_reduce_ledger(ledger: Any) -> None:
    """Sum every rank's ledger into each (passes are counted where they were made)."""
    if world() <= 1:
        return
    keys = list(ledger.forward)
    t = torch.tensor([ledger.forward[k] for k in keys] + [ledger.backward[k] for k in keys], dtype=torch.float64)
    all_reduce_sum(t)
    for i, k in enumerate(keys):
        ledger.forward[k] = int(t[i])
        ledger.backward[k] = int(t[len(keys) + i])


def shutdown() -> None:
    """Leave the process group together: ranks other than 0 finish training first (rank 0 then evaluates
    and writes), and a rank that destroyed the group while another still used it could abort in gloo
    ("terminate called without an active exception"), failing the whole run. A rank that dies instead
    is not waited for: torchrun stops the others."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
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
