"""A 10^7-sample pool: write a synthetic snapshot, memory-map it, build mix-cd's bins, draw. Prints time and memory.

    .venv/bin/python benchmarks/huge_pool.py               # N = 10,000,000
    .venv/bin/python benchmarks/huge_pool.py --n 1000000

Each phase reports wall time and the process's peak resident memory so far (ru_maxrss). The
snapshot columns are the same .npy files `mixcd snapshot` writes (loss f32, pred i32, conf f32,
correct bool, target i32, index i64: 25 bytes per sample on disk).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mixcd_cli.samplers import PoolInfo, create_sampler


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10_000_000)
    parser.add_argument("--b", type=int, default=256)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--partition", default="class_loss")
    args = parser.parse_args()
    n = args.n
    print(f"pool N = {n:,}, b = {args.b}, partition = {args.partition}, {torch.get_num_threads()} threads")
    print(f"{'phase':<34} {'seconds':>9} {'peak RSS MiB':>13}")

    def report(phase: str, t0: float) -> None:
        print(f"{phase:<34} {time.perf_counter() - t0:>9.2f} {rss_mib():>13.0f}")

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        rng = np.random.default_rng(0)
        for name, make in (("target", lambda: rng.integers(0, 1000, n, dtype=np.int32)),
                           ("correct", lambda: rng.random(n, dtype=np.float32) < 0.8),
                           ("loss", lambda: rng.exponential(1.0, n).astype(np.float32)),
                           ("conf", lambda: rng.random(n, dtype=np.float32))):
            np.save(folder / f"pool_{name}.npy", make())
        report("write synthetic snapshot", t0)

        t0 = time.perf_counter()
        cols = {k: np.load(folder / f"pool_{k}.npy", mmap_mode="r") for k in ("target", "correct", "loss", "conf")}
        pool = PoolInfo(classes=torch.from_numpy(np.asarray(cols["target"], dtype=np.int64)),
                        correct0=torch.from_numpy(np.array(cols["correct"])),
                        loss0=torch.from_numpy(np.array(cols["loss"])), conf0=torch.from_numpy(np.array(cols["conf"])))
        report("load memory-mapped columns", t0)

        for name in ("random", "mixcd"):
            t0 = time.perf_counter()
            options = {"partition": args.partition} if name == "mixcd" else {}
            sampler = create_sampler(name, pool, args.b, seed=0, **options)
            report(f"build {name}" + (f" ({sampler.num_bins} bins)" if name == "mixcd" else ""), t0)
            wrong = torch.rand(args.b, generator=torch.Generator().manual_seed(1)) < 0.3
            t0 = time.perf_counter()
            for step in range(args.steps):
                sampler.observe(sampler.draw(step), wrong)
            elapsed = time.perf_counter() - t0
            print(f"{name + ' draw+observe':<34} {elapsed / args.steps * 1e6:>7.1f}µs {rss_mib():>13.0f}")


if __name__ == "__main__":
    main()
