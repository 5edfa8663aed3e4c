"""DDP on CPU (gloo, 2 processes): ranks hold identical α̂, equal to one process seeing all observations."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mixcd_cli.samplers import PoolInfo, create_sampler


def _pool() -> PoolInfo:
    g = torch.Generator().manual_seed(0)
    n = 5000
    return PoolInfo(classes=torch.randint(0, 5, (n,), generator=g), correct0=torch.rand(n, generator=g) < 0.8,
                    loss0=torch.rand(n, generator=g), conf0=torch.rand(n, generator=g))


def _wrong(rows: torch.Tensor, step: int) -> torch.Tensor:
    return (rows * 7 + step) % 5 < (rows % 4)  # a fixed rule, different per row and step


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    sampler = create_sampler("mixcd", _pool(), 32, seed=100 + rank, num_bins=8, decay=0.95)
    alphas, draws = [], []
    for step in range(25):
        rows = sampler.draw(step)
        sampler.observe(rows, _wrong(rows, step))  # all-reduces the counts
        gathered = [torch.empty_like(rows) for _ in range(world)]
        dist.all_gather(gathered, rows)
        draws.append(torch.cat(gathered))
        alphas.append(torch.from_numpy(sampler.alpha().copy()))
    torch.save({"alpha": torch.stack(alphas), "draws": draws}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_all_reduced_alpha_is_identical_and_equals_single_process(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert torch.equal(r0["alpha"], r1["alpha"])
    single = create_sampler("mixcd", _pool(), 64, seed=0, num_bins=8, decay=0.95)
    for step, rows in enumerate(r0["draws"]):
        single.observe(rows, _wrong(rows, step))  # one process seeing both ranks' observations
        assert np.allclose(single.alpha(), r0["alpha"][step].numpy(), rtol=0, atol=1e-12)
    # the ranks drew different rows (own generators) from the same distribution
    assert not torch.equal(r0["draws"][0][:32], r0["draws"][0][32:])


def test_train_over_two_processes(tiny: list[str], tmp_path: Path) -> None:
    run_dir = tmp_path / "ddp"
    env = {**os.environ, "MIXCD_PROGRESS": "0"}
    proc = subprocess.run([sys.executable, "-m", "mixcd_cli.cli", "train", *tiny, "sampler=mixcd",
                           "trainer.devices=2", "trainer.steps=12", "threads=1", f"hydra.run.dir={run_dir}"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["world_size"] == 2
    assert m["ledger"]["forward"]["finetune"] == 12 * 16 * 2  # both ranks' shards counted
    assert m["ledger"]["forward"]["rehearsal"] == 12 * 4 * 2
    assert m["rehearsal_counts"]["drawn"] == 12 * 4 * 2
    assert m["rehearsal_counts"]["audited"] == m["ledger"]["forward"]["audit"] > 0  # audit totals summed over ranks
    assert not (tmp_path / "outputs" / "runs").exists()  # every rank wrote into the one run folder


def test_two_process_run_killed_and_resumed_reports_what_an_uninterrupted_one_does(tiny: list[str],
                                                                                   tmp_path: Path) -> None:
    """Per-rank state (ledger, hit counters, sampler) is saved for each rank and restored to its own rank."""
    import signal
    import time

    from test_resume import stable

    args = [sys.executable, "-m", "mixcd_cli.cli", "train", *tiny, "sampler=mixcd", "trainer.devices=2",
            "trainer.steps=300", "trainer.checkpoint_every=5", "trainer.log_every=50", "threads=1"]
    env = {**os.environ, "MIXCD_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    ref = subprocess.run([*args, f"hydra.run.dir={ref_dir}"], capture_output=True, text=True, env=env, timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]

    proc = subprocess.Popen([*args, f"hydra.run.dir={cut_dir}"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    ckpt, deadline = cut_dir / "checkpoints" / "last.pt", time.time() + 300
    while True:
        assert proc.poll() is None and time.time() < deadline, "run ended before it could be killed"
        try:
            if ckpt.is_file() and torch.load(ckpt, weights_only=False)["step"] >= 40:
                break
        except Exception:  # a rename may race the read
            pass
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher ...
    proc.wait()
    # ... and both ranks, which torchrun starts in sessions of their own (as a lost node would lose them)
    subprocess.run(["pkill", "-KILL", "-f", f"hydra.run.dir={cut_dir}"], check=False)
    time.sleep(0.5)
    assert not (cut_dir / "metrics.json").exists()
    resumed = subprocess.run([*args, f"hydra.run.dir={cut_dir}"], capture_output=True, text=True, env=env,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    want = json.loads((ref_dir / "metrics.json").read_text())
    got = json.loads((cut_dir / "metrics.json").read_text())
    assert got["resumed_from"] >= 40
    assert stable(got) == stable(want)
