"""mix-cd (arXiv 2402.08096) as docs/design.md §4, its variants, and ``loss_ema``: per-bin rates estimated for free.

The paper-faithful rule is the default of every option; each variant is one option away from it:
``estimate=thompson`` (a Beta posterior draw instead of its mean), ``memory=recent`` (a short queue of
rows seen as collateral damage, redrawn with priority), ``partition=kmeans`` (bins learned from the
snapshot model's features) and ``adaptive_bins`` (a loss bin whose rate stays far above its neighbours'
is split in two).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Optional  # noqa: UP035  (OmegaConf reads these annotations at run time)

import numpy as np
import torch

from .. import distributed
from ..errors import MixcdError, unknown_choice
from ..options import opt
from .base import BinnedIndex, PoolInfo, RehearsalSampler, RunFacts, SelectionContext, register_sampler

PARTITIONS = ("loss", "class", "class_loss", "aux", "aux_loss", "kmeans")
CLASS_PARTITIONS = ("class", "class_loss")  # bins by the pool's class column
LOSS_PARTITIONS = ("loss", "class_loss", "aux_loss")  # bins by θ0's loss (quantiles within each group)
ESTIMATES = ("mean", "thompson")  # the posterior mean α̂_k, or a draw from each bin's Beta posterior
MEMORIES = ("none", "recent")  # recent: a queue of rows seen as collateral damage, redrawn with priority


@dataclass
class PartitionOptions:
    """How a sampler splits its rows into bins (or arms): `partition_rows`."""

    partition: str = opt("loss", choices=PARTITIONS,
                         help="bins: loss quantiles, class, class × loss, aux column, aux × loss, or k-means")
    num_bins: int = opt(10, ge=1, help="K: quantile bins of the prior loss (or the number of k-means clusters)")
    aux_column: Optional[str] = opt(None, help="per-sample integer column for partition=aux / aux_loss")  # noqa: UP045
    kmeans_seed: int = opt(0, ge=0, help="seed of the k-means clustering (computed once per snapshot, cached)")

    def uses_classes(self) -> bool:
        """Whether the bins read the pool's class column."""
        return self.partition in CLASS_PARTITIONS

    def uses_loss(self) -> bool:
        """Whether the bins read θ0's per-sample loss."""
        return self.partition in LOSS_PARTITIONS

    def check(self, facts: RunFacts) -> None:
        """An aux partition names its column."""
        if self.partition.startswith("aux") and not self.aux_column:
            raise MixcdError(f"sampler.partition={self.partition} needs sampler.aux_column (a per-sample column "
                             "of the pool's dataset)")


@dataclass
class BinRateOptions(PartitionOptions):
    """mix-cd's machinery: bins of the eligible set, decayed per-bin counts, a Beta prior, a uniform floor."""

    tau: float = opt(0.0, ge=0, le=1, help="τ: eligible = prior-correct with confidence ≥ τ")
    decay: float = opt(0.99, gt=0, le=1, help="λ, per-step decay of the counts (forgets after ~1/(1-λ) steps)")
    prior_a: float = opt(1.0, gt=0, help="a of the Beta(a, b0) prior")
    prior_b: float = opt(1.0, gt=0, help="b0 of the Beta(a, b0) prior")
    epsilon: float = opt(0.05, ge=0, le=1, help="ε, the uniform floor")


@dataclass
class MixcdOptions(BinRateOptions):
    """mix-cd's options and its variants, each off by default (docs/concepts/samplers.md, "Beyond mix-cd")."""

    estimate: str = opt("mean", choices=ESTIMATES,
                        help="thompson: draw each bin's rate from its Beta posterior every step")
    memory: str = opt("none", choices=MEMORIES,
                      help="recent: rows seen as collateral damage wait in a queue and fill a share of the slots")
    memory_size: int = opt(64, ge=1, help="rows the recent-damage queue holds")
    memory_share: float = opt(0.25, ge=0, le=1, help="share of the slots drawn from the queue")
    memory_ttl: int = opt(100, ge=1, help="steps a row stays in the queue")
    adaptive_bins: bool = opt(False, help="split a loss bin whose α̂ stays ≥ split_ratio × its neighbours'")
    split_every: int = opt(50, ge=1, help="steps between split checks (two checks in a row split)")
    split_ratio: float = opt(1.5, gt=1, help="how far above its neighbours' α̂ a bin must be to split")
    max_bins: int = opt(0, ge=0, help="most bins splits may make (0: 4·K)")

    def check(self, facts: RunFacts) -> None:
        """The variants' needs, refused before any work."""
        super().check(facts)
        if self.adaptive_bins and self.partition != "loss":
            raise MixcdError(f"sampler.adaptive_bins=true splits loss bins (their neighbours are the bins of "
                             f"adjacent loss); it needs sampler.partition=loss, not {self.partition}")
        if self.estimate == "thompson" and facts.devices > 1:
            raise MixcdError("sampler.estimate=thompson draws each rank's rates from its own generator, so ranks "
                             "would sample from different distributions; use trainer.devices=1 or estimate=mean")


@dataclass
class MixcdPlusOptions(MixcdOptions):
    """mix-cd with the one variant the ablation kept (docs/results/ablations.md): the recent-damage memory."""

    memory: str = opt("recent", choices=MEMORIES,
                      help="recent: rows seen as collateral damage wait in a queue and fill a share of the slots")


# mix-cd's variants as loss_ema runs them: off, which is what their declared defaults are
VARIANTS_OFF = {f.name: f.default for f in fields(MixcdOptions)
                if f.name not in {g.name for g in fields(BinRateOptions)}}


def quantile_bins(groups: torch.Tensor, loss: torch.Tensor, k: int) -> torch.Tensor:
    """Equal-count loss bins within each group: bin = group·k + ⌊rank·k_g / n_g⌋, k_g = min(k, n_g).

    Ties in loss are broken by row order so the partition is a pure function of the snapshot.
    """
    n = loss.numel()
    if n == 0:
        return torch.empty(0, dtype=torch.int64)
    by_loss = torch.argsort(loss, stable=True)
    order = by_loss[torch.argsort(groups[by_loss], stable=True)]
    g_sorted = groups[order]
    _, counts = torch.unique_consecutive(g_sorted, return_counts=True)
    starts = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    sizes = torch.repeat_interleave(counts, counts)
    rank = torch.arange(n) - starts
    k_g = sizes.clamp_max(k)
    bins_sorted = g_sorted * k + torch.div(rank * k_g, sizes, rounding_mode="floor")
    bins = torch.empty_like(bins_sorted)
    bins[order] = bins_sorted
    return bins


def partition_rows(pool: PoolInfo, rows: torch.Tensor, partition: str, num_bins: int,
                   aux_column: str | None, kmeans_seed: int = 0) -> torch.Tensor:
    """Bin id (0..K'-1, no empty bins) for each of ``rows``; loss bins are numbered in ascending loss."""
    if partition not in PARTITIONS:
        raise unknown_choice("partition", partition, PARTITIONS)
    if num_bins < 1:
        raise MixcdError(f"num_bins must be ≥ 1, got {num_bins}")
    loss = pool.loss0[rows]
    zeros = torch.zeros(rows.numel(), dtype=torch.int64)
    if partition == "loss":  # reads no label: a task kind without classes can bin by loss
        label = zeros
    elif partition == "kmeans":
        if pool.clusters is None:
            raise MixcdError("partition=kmeans needs the snapshot model's features, which this pool does not carry")
        label = pool.clusters(int(num_bins), int(kmeans_seed))[rows].long()
    elif partition.startswith("aux"):
        if not aux_column:
            raise MixcdError(f"partition '{partition}' needs sampler.aux_column (one of: "
                             f"{', '.join(sorted(pool.aux)) or 'none in this dataset'})")
        if aux_column not in pool.aux:
            raise unknown_choice("aux column", aux_column, list(pool.aux) or ["(dataset has none)"])
        label = pool.aux[aux_column][rows].long()
    else:
        label = pool.class_column(f"partition={partition}", "partition=loss, aux (with aux_column) or kmeans")
        label = label[rows].long()
    if partition == "loss":
        raw = quantile_bins(zeros, loss, num_bins)
    elif partition in ("class", "aux", "kmeans"):
        raw = label
    else:
        _, groups = torch.unique(label, return_inverse=True)
        raw = quantile_bins(groups, loss, num_bins)
    _, compact = torch.unique(raw, return_inverse=True)
    return compact


def per_bin(bin_of: np.ndarray, rows: torch.Tensor, values: np.ndarray, num_bins: int) -> np.ndarray:
    """[seen per bin, Σ value per bin] over the rows that have a bin (bin −1, not in the support, is dropped)."""
    slot = bin_of[rows.numpy()].astype(np.int64) + 1
    seen = np.bincount(slot, minlength=num_bins + 1)[1:]
    total = np.bincount(slot, weights=values, minlength=num_bins + 1)[1:]
    return np.stack([seen, total]).astype(np.float64)


class _RecentMemory:
    """Rows observed as collateral damage, each kept ``ttl`` steps (or until seen recovered), at most ``size``."""

    def __init__(self, size: int, ttl: int) -> None:
        self.size, self.ttl = int(size), int(ttl)
        self.rows = np.empty(0, dtype=np.int64)
        self.expiry = np.empty(0, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.rows.size)

    def expire(self, step: int) -> None:
        keep = self.expiry > step
        self.rows, self.expiry = self.rows[keep], self.expiry[keep]

    def update(self, rows: np.ndarray, damaged: np.ndarray, recovered: np.ndarray, step: int) -> None:
        """Add (or refresh) the damaged rows, drop the recovered ones, then keep the ``size`` freshest."""
        gone = np.isin(self.rows, np.concatenate([rows[recovered], rows[damaged]]))
        fresh = np.unique(rows[damaged])
        self.rows = np.concatenate([self.rows[~gone], fresh])
        self.expiry = np.concatenate([self.expiry[~gone], np.full(fresh.size, step + self.ttl, dtype=np.int64)])
        if self.rows.size > self.size:  # oldest first out; ties by row id, so the queue is a pure function
            order = np.lexsort((self.rows, -self.expiry))[: self.size]
            self.rows, self.expiry = self.rows[order], self.expiry[order]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"rows": torch.from_numpy(self.rows.copy()), "expiry": torch.from_numpy(self.expiry.copy())}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.rows, self.expiry = state["rows"].numpy().copy(), state["expiry"].numpy().copy()


@register_sampler("mixcd", help="mix-cd: draw bins by estimated collateral-damage rate (docs/design.md §4); variants: "
                               "estimate=thompson, memory=recent, partition=kmeans, adaptive_bins=true",
                  options=MixcdOptions, needs_classes=PartitionOptions.uses_classes)
class MixCDSampler(RehearsalSampler):
    """Decayed per-bin counts m_k (seen) and s_k (CD) from the training forward pass.

    α̂_k = (s_k + a) / (m_k + a + b0);  p_k = (1-ε)·n_k α̂_k / Σ n_j α̂_j + ε·n_k/|E|.
    """

    def __init__(self, pool: PoolInfo, batch_size: int, seed: int, *, partition: str, num_bins: int, tau: float,
                 decay: float, prior_a: float, prior_b: float, epsilon: float, aux_column: str | None,
                 kmeans_seed: int, estimate: str, memory: str, memory_size: int, memory_share: float,
                 memory_ttl: int, adaptive_bins: bool, split_every: int, split_ratio: float, max_bins: int) -> None:
        super().__init__(pool, batch_size, seed)
        if not 0.0 <= epsilon <= 1.0:
            raise MixcdError(f"{self.name}: epsilon must be in [0, 1], got {epsilon}")
        if not 0.0 < decay <= 1.0:
            raise MixcdError(f"{self.name}: decay λ must be in (0, 1], got {decay}")
        if prior_a <= 0 or prior_b <= 0:
            raise MixcdError(f"{self.name}: prior_a and prior_b must be > 0, got {prior_a}, {prior_b}")
        if estimate not in ESTIMATES:
            raise unknown_choice(f"{self.name} estimate", estimate, ESTIMATES)
        if memory not in MEMORIES:
            raise unknown_choice(f"{self.name} memory", memory, MEMORIES)
        if adaptive_bins and partition != "loss":
            raise MixcdError(f"{self.name}: adaptive_bins splits loss bins (their neighbours are the bins of "
                             f"adjacent loss), so it needs partition=loss, not {partition}")
        rows = pool.eligible(tau)
        if rows.numel() == 0:
            raise MixcdError(f"{self.name}: no eligible pool samples (prior-correct with confidence ≥ τ={tau}); "
                             "lower sampler.tau or check the prior model")
        self.partition, self.tau, self.decay = partition, float(tau), float(decay)
        self.prior_a, self.prior_b, self.epsilon = float(prior_a), float(prior_b), float(epsilon)
        self.estimate = estimate
        bins = partition_rows(pool, rows, partition, int(num_bins), aux_column, kmeans_seed)
        self.num_bins = int(bins.max()) + 1
        if partition in ("loss", "kmeans") and self.num_bins < num_bins:
            self.notes.append(f"sampler.num_bins={num_bins} is more than this partition of the {rows.numel()} "
                              f"eligible samples allows: using {self.num_bins} bins")
        self._eligible = rows
        self._set_bins(bins)
        self.seen = np.zeros(self.num_bins)
        self.cd = np.zeros(self.num_bins)
        self.memory = memory
        self.recent = _RecentMemory(memory_size, memory_ttl) if memory == "recent" else None
        self.memory_share = float(memory_share)
        self._from_memory: torch.Tensor | None = None  # which slots of the last draw came from memory (None: none)
        self._step = 0
        self.adaptive = bool(adaptive_bins)
        self.split_every, self.split_ratio = int(split_every), float(split_ratio)
        self.bin_cap = int(max_bins) if max_bins else 4 * self.num_bins
        self.splits: list[int] = []  # bins split so far, in order: replayed on restore
        self.streak = np.zeros(self.num_bins, dtype=np.int64)

    # -------------------------------------------------------------- bins

    def _set_bins(self, bins: torch.Tensor) -> None:
        self.index = BinnedIndex(self._eligible, bins, self.num_bins)
        # The K-sized arithmetic runs in numpy: a torch op costs microseconds of dispatch, and this
        # runs every step on the host.
        self.sizes = self.index.sizes.double().numpy()
        self._uniform = self.sizes / self.sizes.sum()
        # Row → bin lookup (−1 = not eligible): the O(N) int32 state that makes observe O(b).
        self.bin_of = np.full(len(self.pool), -1, dtype=np.int32)
        self.bin_of[self._eligible.numpy()] = bins.numpy()

    def split(self, k: int) -> None:
        """Split loss bin k at its median prior loss: the lower half keeps k, the upper half becomes k+1 (later
        bins move up one, so bins stay in loss order); each half starts with half of k's counts."""
        bins = torch.from_numpy(self.bin_of[self._eligible.numpy()].astype(np.int64))
        members = torch.nonzero(bins == k).flatten()
        upper = members[torch.argsort(self.pool.loss0[self._eligible[members]], stable=True)][members.numel() // 2:]
        bins[bins > k] += 1
        bins[upper] = k + 1
        self.num_bins += 1
        for name in ("seen", "cd"):
            arr = getattr(self, name)
            arr[k] /= 2
            setattr(self, name, np.insert(arr, k + 1, arr[k]))
        self.streak = np.insert(self.streak, k + 1, 0)
        self.streak[k] = 0
        self._set_bins(bins)
        self.splits.append(int(k))

    def _maybe_split(self) -> None:
        """Every ``split_every`` steps: a bin whose α̂ is ≥ split_ratio × its neighbours' mean at two checks
        in a row (and has at least two rows) is split; at most one split a check, the most extreme."""
        if self.num_bins < 2 or self.num_bins >= self.bin_cap:
            return
        a = self.alpha()
        left, right = np.r_[np.nan, a[:-1]], np.r_[a[1:], np.nan]
        neighbours = np.nanmean(np.stack([left, right]), axis=0)
        ratio = a / np.maximum(neighbours, 1e-12)
        far = (ratio >= self.split_ratio) & (self.sizes >= 2)
        self.streak = np.where(far, self.streak + 1, 0)
        ready = np.nonzero(self.streak >= 2)[0]
        if ready.size:
            self.split(int(ready[np.argmax(ratio[ready])]))

    # -------------------------------------------------------------- estimate and draw

    def alpha(self) -> np.ndarray:
        """α̂_k, the Beta-smoothed collateral-damage rate of each bin (the posterior mean)."""
        return (self.cd + self.prior_a) / (self.seen + self.prior_a + self.prior_b)

    def rates(self) -> np.ndarray:
        """The rates the next draw uses: α̂ (estimate=mean) or one draw of each bin's Beta posterior (thompson),
        whose randomness comes from the sampler's generator so a seed fixes it."""
        if self.estimate == "mean":
            return self.alpha()
        rng = np.random.default_rng(int(torch.randint(2 ** 62, (1,), generator=self.generator)))
        return rng.beta(self.cd + self.prior_a, np.maximum(self.seen - self.cd, 0.0) + self.prior_b)

    def probs(self, rates: np.ndarray | None = None) -> np.ndarray:
        """p_k, the probability of drawing from bin k (from α̂ unless ``rates`` are given)."""
        mass = self.sizes * (self.alpha() if rates is None else rates)
        return (1.0 - self.epsilon) * mass / mass.sum() + self.epsilon * self._uniform

    def row_probs(self, p: np.ndarray | None = None) -> np.ndarray:
        """Probability of each pool row at one draw slot, memory included (what the draws must match)."""
        p = self.probs() if p is None else p
        out = np.zeros(len(self.pool))
        eligible = self.bin_of >= 0
        out[eligible] = p[self.bin_of[eligible]] / self.sizes[self.bin_of[eligible]]
        if self.recent is not None and len(self.recent):
            out *= 1.0 - self.memory_share
            np.add.at(out, self.recent.rows, self.memory_share / len(self.recent))
        return out

    def draw(self, step: int, ctx: SelectionContext | None = None) -> torch.Tensor:
        self._step = step
        if self.adaptive and step and step % self.split_every == 0:
            self._maybe_split()
        if self.recent is not None:
            self.recent.expire(step)
        p = torch.from_numpy(self.probs(self.rates()))
        if self.recent is None or not len(self.recent):
            self._from_memory = None
            bins = torch.multinomial(p, self.batch_size, replacement=True, generator=self.generator)
            return self.index.draw_within(bins, self.generator)
        from_memory = torch.rand(self.batch_size, generator=self.generator, dtype=torch.float64) < self.memory_share
        rows = torch.empty(self.batch_size, dtype=torch.int64)
        n_bins = int((~from_memory).sum())
        if n_bins:
            bins = torch.multinomial(p, n_bins, replacement=True, generator=self.generator)
            rows[~from_memory] = self.index.draw_within(bins, self.generator)
        picks = torch.randint(len(self.recent), (self.batch_size - n_bins,), generator=self.generator)
        rows[from_memory] = torch.from_numpy(self.recent.rows)[picks]
        self._from_memory = from_memory
        return rows

    # -------------------------------------------------------------- observe

    def _value(self, wrong: torch.Tensor, loss: torch.Tensor | None) -> np.ndarray:
        """What a drawn row adds to its bin's numerator: 1 if now wrong (mix-cd's collateral damage)."""
        return wrong.numpy().astype(np.float64)

    def observe(self, rows: torch.Tensor, wrong: torch.Tensor, loss: torch.Tensor | None = None) -> None:
        value = self._value(wrong, loss)
        binned, from_memory = rows, self._from_memory
        if from_memory is not None and from_memory.numel() == rows.numel():
            # Rows drawn from the memory are not a uniform draw within their bin: they would bias its rate.
            binned, value = rows[~from_memory], value[~from_memory.numpy()]
        new = per_bin(self.bin_of, binned, value, self.num_bins)
        if distributed.world() > 1:
            # Every rank must sample from the same p: sum the observations of all ranks (on the
            # host, over the group's gloo half when training runs on CUDA).
            new = distributed.all_reduce_sum(torch.from_numpy(new)).numpy()
        self.seen *= self.decay
        self.seen += new[0]
        self.cd *= self.decay
        self.cd += new[1]
        if self.recent is not None:
            r, wrong = rows.numpy(), wrong.numpy().astype(bool)
            eligible = self.bin_of[r] >= 0
            self.recent.update(r, eligible & wrong, eligible & ~wrong, self._step)

    # -------------------------------------------------------------- telemetry and state

    def telemetry(self) -> dict[str, Any]:
        out = {"alpha": [round(v, 5) for v in self.alpha().tolist()],
               "p": [round(v, 5) for v in self.probs().tolist()],
               "bin_sizes": self.index.sizes.tolist()}
        if self.recent is not None:
            out["memory_size"] = len(self.recent)
        if self.adaptive:
            out["splits"] = len(self.splits)
        return out

    def state_dict(self) -> dict[str, Any]:
        state = {**super().state_dict(), "seen": torch.from_numpy(self.seen.copy()),
                 "cd": torch.from_numpy(self.cd.copy())}
        if self.adaptive:
            state.update(splits=list(self.splits), streak=torch.from_numpy(self.streak.copy()))
        if self.recent is not None:
            state.update(memory=self.recent.state_dict(), step=self._step)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        for k in state.get("splits", []):  # the bins as they were: replay the splits on the first partition
            self.split(int(k))
        if state["seen"].shape != self.seen.shape:
            raise MixcdError("sampler state does not match this partition (different number of bins)")
        self.seen[:] = state["seen"].numpy()
        self.cd[:] = state["cd"].numpy()
        if self.adaptive:
            self.streak[:] = state["streak"].numpy()
        if self.recent is not None:
            self.recent.load_state_dict(state["memory"])
            self._step = int(state["step"])


@register_sampler("mixcd_plus", help="mix-cd with its recent-damage memory on (memory=recent): better than mix-cd "
                                    "beyond the seeds' noise on two of three experiments, never worse "
                                    "(docs/results/ablations.md)",
                  options=MixcdPlusOptions, needs_classes=PartitionOptions.uses_classes)
class MixCDPlusSampler(MixCDSampler):
    """mix-cd with ``memory=recent`` by default (MixcdPlusOptions); every option as mixcd's."""


@register_sampler("loss_ema", help="mix-cd's machinery observing the training loss of replayed rows (a decayed "
                                  "per-bin mean) instead of the 0/1 collateral-damage indicator",
                  options=BinRateOptions, needs_classes=PartitionOptions.uses_classes, observes_loss=True)
class LossEMASampler(MixCDSampler):
    """ℓ̂_k = (L_k + a) / (m_k + a + b0), L_k the decayed sum of replayed rows' training losses;
    p_k = (1-ε)·n_k ℓ̂_k / Σ n_j ℓ̂_j + ε·n_k/|E|. Telemetry's ``alpha`` holds ℓ̂_k."""

    def __init__(self, pool: PoolInfo, batch_size: int, seed: int, **options: Any) -> None:
        super().__init__(pool, batch_size, seed, **options, **VARIANTS_OFF)

    def _value(self, wrong: torch.Tensor, loss: torch.Tensor | None) -> np.ndarray:
        if loss is None:
            raise MixcdError("loss_ema observes per-sample training losses, and none were given")
        return loss.double().numpy()
