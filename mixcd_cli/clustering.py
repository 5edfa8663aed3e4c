"""Seeded k-means on feature rows: the learned partition of the pool (``partition=kmeans``)."""

from __future__ import annotations

import torch

from .errors import MixcdError

CHUNK = 65536  # rows per distance block: bounds memory at CHUNK × k floats for any pool size


def _nearest(x: torch.Tensor, centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(index of the nearest centre, squared distance to it) for every row, in blocks."""
    idx, dist = [], []
    c2 = (centres * centres).sum(1)
    for start in range(0, x.shape[0], CHUNK):
        block = x[start:start + CHUNK]
        d = (block * block).sum(1, keepdim=True) - 2 * block @ centres.T + c2
        m = d.min(1)
        idx.append(m.indices)
        dist.append(m.values.clamp_min(0))
    return torch.cat(idx), torch.cat(dist)


def kmeans(features: torch.Tensor, k: int, seed: int, iterations: int = 50,
           fit_rows: int = 50_000) -> tuple[torch.Tensor, dict[str, float]]:
    """Cluster id (0..k-1) of every row of ``features`` (N × D) and a summary of the fit.

    k-means++ seeding and Lloyd iterations in float64 on a seeded subsample of at most ``fit_rows`` rows
    (the whole pool is then assigned to the nearest centre), so the result depends on (features, k, seed)
    alone. Ties go to the lower centre index; a centre left empty is reseeded at the row farthest from
    its own centre.
    """
    n = features.shape[0]
    if k < 1:
        raise MixcdError(f"k-means needs k ≥ 1 clusters, got {k}")
    if n < k:
        raise MixcdError(f"k-means: {n} pool rows cannot make {k} clusters; lower sampler.num_bins")
    gen = torch.Generator().manual_seed(int(seed))
    x_all = features.double()
    fit = torch.randperm(n, generator=gen)[:fit_rows] if n > fit_rows else torch.arange(n)
    x = x_all[fit]
    centres = x[torch.randint(x.shape[0], (1,), generator=gen)]
    for _ in range(1, k):  # k-means++: next centre with probability ∝ squared distance to the nearest one
        _, d = _nearest(x, centres)
        pick = torch.multinomial(d / d.sum(), 1, generator=gen) if d.sum() > 0 else \
            torch.randint(x.shape[0], (1,), generator=gen)
        centres = torch.cat([centres, x[pick]])
    assign = torch.full((x.shape[0],), -1, dtype=torch.int64)
    done = 0
    while done < iterations:
        new, d = _nearest(x, centres)
        if torch.equal(new, assign):
            break
        done += 1
        assign = new
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k)
        for empty in torch.nonzero(counts == 0).flatten().tolist():
            far = int(torch.argmax(d))
            sums[empty], counts[empty], d[far] = x[far], 1, 0.0
        centres = sums / counts.unsqueeze(1).double()
    labels, dist = _nearest(x_all, centres)
    return labels, {"iterations": done, "inertia": float(dist.mean()), "fit_rows": int(x.shape[0])}
