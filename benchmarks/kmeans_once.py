"""What partition=kmeans costs, once per snapshot: the feature pass plus the clustering, then a cached load.

    .venv/bin/python benchmarks/kmeans_once.py [experiment ...]   # default: fmnist fmnist_foundation

Works on a copy of each experiment's cached snapshot (made first if missing), so the cache is untouched.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from mixcd_cli.hydra_app import compose
from mixcd_cli.recipes import load_prior, prior_checkpoint, setup, snapshot_for
from mixcd_cli.snapshot import cluster_column


def main(experiments: list[str]) -> None:
    os.environ.setdefault("MIXCD_PROGRESS", "0")
    print(f"## k-means bins (K = 10, seed 0), {torch.get_num_threads()} torch threads")
    print(f"{'experiment':<20} {'pool rows':>10} {'first (s)':>10} {'cached (s)':>11}  cluster sizes")
    for exp in experiments:
        ctx = setup(compose("train", [f"experiment={exp}"]), run_dir=None)
        path, _ = prior_checkpoint(ctx)
        model = load_prior(ctx, path)
        snap, _ = snapshot_for(ctx, path, model, 1)
        copy = Path(tempfile.mkdtemp()) / snap.path.name
        shutil.copytree(snap.path, copy, ignore=shutil.ignore_patterns("kmeans-*"))
        args = (model, ctx.experiment.pool, ctx.experiment.transform, ctx.device, 1024, ctx.ledger, "auto", 10, 0)
        t0 = time.perf_counter()
        labels = cluster_column(copy, *args)
        t1 = time.perf_counter()
        cluster_column(copy, *args)
        t2 = time.perf_counter()
        shutil.rmtree(copy.parent)
        print(f"{exp:<20} {labels.numel():>10,} {t1 - t0:>10.2f} {t2 - t1:>11.4f}  {torch.bincount(labels).tolist()}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["fmnist", "fmnist_foundation"])
