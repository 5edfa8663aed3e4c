"""Process-level runtime: seeds, devices, autocast, Ctrl-C handling, memory readings."""

from __future__ import annotations

import hashlib
import resource
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch

from .errors import MixcdError, unknown_choice

AMP_MODES = ("auto", "bf16", "off")  # mixed precision on a GPU: bf16 where supported (auto), always, or never


def derive_seed(seed: int, purpose: str) -> int:
    """Independent, reproducible seeds per purpose (model init, data order, sampler, ...)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{purpose}".encode()).digest()[:4], "little") & 0x7FFFFFFF


# torch's own thread count, read before any run of this process set one: a run with threads=null computes with it,
# not with what an earlier run of a Hydra sweep in the same process asked for
DEFAULT_THREADS = torch.get_num_threads()


def run_threads(threads: int | None) -> int:
    """The CPU threads a run computes with: ``threads``, or torch's default when it is null (or 0)."""
    return int(threads) if threads else DEFAULT_THREADS


def numerics(device: torch.device, threads: int) -> dict[str, Any]:
    """Besides the inputs and seeds, what sets a trained model's floats: the kind of device, and on a CPU the thread
    count (it sets the order in which sums are reduced). A model cached under one of these is not another's."""
    if device.type == "cuda":
        return {"device": "cuda", "name": torch.cuda.get_device_name(device)}
    return {"device": device.type, "threads": threads}


def resolve_device(name: str) -> torch.device:
    """'auto' → CUDA when present, else CPU; asking for CUDA without one is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MixcdError(f"device={name} requested but no CUDA device is available; use device=cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise MixcdError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N") from exc


def autocast_for(device: torch.device, amp: str) -> Any:
    """bf16 autocast on CUDA when supported (amp=auto|bf16); fp32 on CPU keeps runs bit-reproducible."""
    if amp not in AMP_MODES:
        raise unknown_choice("amp mode", amp, AMP_MODES)
    if device.type == "cuda" and amp != "off" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


@contextmanager
def stop_on_sigint() -> Iterator[dict[str, bool]]:
    """Turn Ctrl-C into a flag checked between steps, so the checkpoint written is consistent."""
    flag = {"stop": False}
    # A process started with SIGINT ignored (a background job of a shell) ignores it in every phase alike,
    # fine-tuning included: a terminal's Ctrl-C is not meant for it.
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        if flag["stop"]:  # second Ctrl-C: the user insists
            raise KeyboardInterrupt
        flag["stop"] = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated on CUDA, peak resident set size of the process on the host."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
