"""Collectives are device-safe: on a CUDA run the group serves host tensors too (cpu:gloo,cuda:nccl).

No GPU here, so the CUDA run is emulated: two gloo processes believe CUDA is present, the process
group is created exactly as `distributed.init_from_env` asks for it on CUDA, and every tensor
collective is checked against the device types that backend string can reduce. NCCL alone refuses
CPU tensors; with that backend the mix-cd counts, hit totals and ledger all fail here.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mixcd_cli import distributed


def test_backend_strings() -> None:
    assert distributed.backend_for(cuda=False) == "gloo"
    assert distributed.served_devices(distributed.backend_for(cuda=True)) == {"cpu", "cuda"}
    assert distributed.served_devices("nccl") == {"cuda"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _checked(fn, requested: dict):
    def wrapper(tensor, *args, **kwargs):
        served = distributed.served_devices(requested["backend"])
        tensors = tensor if isinstance(tensor, list) else [tensor]
        for t in tensors:
            if t.device.type not in served:
                raise RuntimeError(f"backend {requested['backend']} cannot reduce a {t.device.type} tensor")
        return fn(tensor, *args, **kwargs)

    return wrapper


def _worker(rank: int, world: int, port: int, out: str) -> None:
    from mixcd_cli.data import BatchTransform, Task
    from mixcd_cli.metrics import Ledger
    from mixcd_cli.models import create_model
    from mixcd_cli.samplers import PoolInfo, create_sampler
    from mixcd_cli.sources import ArraySource
    from mixcd_cli.training import FineTuner, Rehearsal, TrainSettings

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    requested: dict = {}
    real_init = dist.init_process_group

    def init(backend, *args, **kwargs):  # record what a CUDA run asks for; run on gloo
        requested["backend"] = backend
        # a file store, not a TCP port another test could take between choosing and binding it
        return real_init("gloo", init_method=f"file://{out}/store", rank=rank, world_size=world)

    dist.init_process_group = init
    torch.cuda.is_available = lambda: True
    torch.cuda.set_device = lambda device: None
    for name in ("all_reduce", "all_gather", "broadcast", "reduce"):
        setattr(dist, name, _checked(getattr(dist, name), requested))
    try:
        assert distributed.init_from_env("auto").type == "cuda"
        torch.cuda.is_available = lambda: False  # from here on the work itself runs on the host
        g = torch.Generator().manual_seed(0)
        data = torch.randint(0, 256, (96, 1, 6, 6), dtype=torch.uint8, generator=g)
        targets = torch.randint(0, 3, (96,), generator=g)
        task = Task("t", ArraySource(data, targets, (0.5,), (0.25,)), torch.arange(96), targets, 3, {})
        info = PoolInfo(classes=targets, correct0=torch.rand(96, generator=g) < 0.8, loss0=torch.rand(96, generator=g),
                        conf0=torch.ones(96))
        sampler = create_sampler("mixcd", info, 4, seed=rank, num_bins=3)
        torch.manual_seed(0)
        model = create_model("cnn", 1, {"shared": 3}, width=4)
        ledger = Ledger()
        settings = TrainSettings(steps=6, batch_size=8, rehearsal_batch=4, checkpoint_every=3, log_every=3)
        # observe() all-reduces the counts, save() gathers per-rank state, run() sums the hit totals
        result = FineTuner(model, task, "shared", BatchTransform((0.5,), (0.25,)), torch.device("cpu"), settings,
                           ledger, Rehearsal(sampler, task, "shared", info.correct0),
                           checkpoint_path=Path(out) / "last.pt").run()
        distributed.all_reduce_ledger(ledger)
        Path(out, f"rank{rank}.txt").write_text(f"{requested['backend']} {result.counts['drawn']} "
                                                f"{ledger.forward['rehearsal']}")
    finally:
        if dist.is_initialized():
            dist.barrier()  # neither rank tears the group down while the other still uses it
            dist.destroy_process_group()


def test_a_cuda_style_group_serves_every_collective_of_a_run(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        backend, drawn, rehearsal = (tmp_path / f"rank{rank}.txt").read_text().split()
        assert backend == "cpu:gloo,cuda:nccl"
        assert int(drawn) == 2 * 6 * 4 and int(rehearsal) == 2 * 6 * 4  # summed over both ranks
    assert (tmp_path / "last.pt").is_file()


def test_no_collective_outside_the_rank_api() -> None:
    """Every collective goes through distributed.py, where the backend choice is made."""
    package = Path(__file__).resolve().parent.parent / "mixcd_cli"
    pattern = re.compile(r"(torch\.distributed|\bdist)\.(all_reduce|all_gather|broadcast|reduce|barrier|"
                         r"all_gather_object|broadcast_object_list|init_process_group)\b")
    offenders = [f"{p.relative_to(package)}:{i}" for p in package.rglob("*.py") if p.name != "distributed.py"
                 for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []
