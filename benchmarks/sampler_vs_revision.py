"""The default mixcd's host work per step against the same sampler at an earlier git revision, alternating
in one process (a regression check for the per-step path; a benchmark, not a test).

    .venv/bin/python benchmarks/sampler_vs_revision.py REV [REV ...]    # e.g. 7ec76db HEAD

Each revision's mixcd_cli/samplers/mixcd.py is loaded beside the working tree's and timed on the same
synthetic 10^6-sample pool at b = 64, 2,000 draw + observe steps a round, 5 rounds, one torch thread.
"""

from __future__ import annotations

import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import mixcd_cli.samplers.mixcd as tree
from mixcd_cli.samplers import base
from mixcd_cli.samplers.base import PoolInfo

ROOT = Path(__file__).resolve().parent.parent
OPTIONS = {"partition": "loss", "num_bins": 10, "tau": 0.0, "decay": 0.99, "prior_a": 1.0, "prior_b": 1.0,
           "epsilon": 0.05, "aux_column": None}


def sampler_at(rev: str) -> type:
    """MixCDSampler as ``rev`` wrote it (its registrations kept out of the live registry)."""
    source = subprocess.run(["git", "show", f"{rev}:mixcd_cli/samplers/mixcd.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "mixcd_at_rev.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"mixcd_cli.samplers._at_{rev}", path)
    module = importlib.util.module_from_spec(spec)
    saved = dict(base.SAMPLERS._items)
    base.SAMPLERS._items.clear()
    try:
        spec.loader.exec_module(module)
    finally:
        base.SAMPLERS._items.clear()
        base.SAMPLERS._items.update(saved)
    return module.MixCDSampler


def main(revs: list[str]) -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    n = 1_000_000
    labels = torch.randint(0, 10, (n,), generator=g)
    pool = PoolInfo(classes=labels, correct0=torch.rand(n, generator=g) < 0.85, loss0=torch.rand(n, generator=g) * 3,
                    conf0=torch.rand(n, generator=g))
    pool.targets = labels  # revisions before the objective seam read the class column as `targets`
    wrong = [torch.rand(64, generator=g) < 0.3 for _ in range(16)]
    classes = {**{rev: sampler_at(rev) for rev in revs}, "working tree": tree.MixCDSampler}
    times: dict[str, list[float]] = {name: [] for name in classes}
    for _ in range(5):
        for name, cls in classes.items():
            sampler = cls(pool, 64, 0, **OPTIONS)
            for step in range(50):
                sampler.observe(sampler.draw(step), wrong[step % 16])
            t0 = time.perf_counter()
            for step in range(2000):
                sampler.observe(sampler.draw(step), wrong[step % 16])
            times[name].append((time.perf_counter() - t0) / 2000 * 1e6)
    first = statistics.median(times[revs[0]]) if revs else None
    print("## default mixcd, draw + observe per step (µs), N = 1,000,000, b = 64, 1 thread, 5 rounds")
    for name, values in times.items():
        ratio = f"  ÷ {revs[0]}: {statistics.median(values) / first:.2f}" if first else ""
        rounds = " ".join(f"{v:.1f}" for v in values)
        print(f"{name:<14} median {statistics.median(values):6.1f}  rounds {rounds}{ratio}")


if __name__ == "__main__":
    main(sys.argv[1:])
