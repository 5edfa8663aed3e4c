"""The rivals (amr, loss_ema) and mix-cd's variants (thompson, recent memory, k-means bins, adaptive bins).

Each: seeded draws reproduce, draw frequencies match the stated probabilities (chi-square), state
survives a checkpoint, no extra pass is charged; plus the property each variant exists for.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from as_json import run_train
from test_resume import stable, start, telemetry

from mixcd_cli.clustering import kmeans
from mixcd_cli.errors import MixcdError
from mixcd_cli.samplers import PoolInfo, create_sampler


def chi2_pvalue(counts: np.ndarray, expected: np.ndarray) -> float:
    """Pearson's chi-square test of ``counts`` against ``expected`` (same total), as a p-value."""
    keep = expected > 0
    assert counts[~keep].sum() == 0, "draws where the stated probability is zero"
    stat = float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())
    dof = int(keep.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64),
                                         torch.tensor(stat / 2, dtype=torch.float64)))


def blob_pool(n: int = 6000, seed: int = 0) -> PoolInfo:
    """A pool whose 'features' are three well-separated blobs (row i in blob i % 3)."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, 4, (n,), generator=g)
    correct = torch.rand(n, generator=g) < 0.8
    loss = torch.rand(n, generator=g) * 3
    conf = torch.rand(n, generator=g)
    feats = torch.randn(n, 8, generator=g) * 0.1 + torch.arange(n).remainder(3).unsqueeze(1).float() * 5
    pool = PoolInfo(correct0=correct, loss0=loss, conf0=conf, classes=targets)
    pool.clusters = lambda k, s: kmeans(feats, k, s)[0]
    return pool


VARIANTS = {
    "thompson": ("mixcd", {"estimate": "thompson"}),
    "memory": ("mixcd", {"memory": "recent", "memory_size": 16, "memory_share": 0.5}),
    "adaptive": ("mixcd", {"adaptive_bins": True, "split_every": 5, "split_ratio": 1.3, "num_bins": 4}),
    "kmeans": ("mixcd", {"partition": "kmeans", "num_bins": 3}),
    "loss_ema": ("loss_ema", {}),
    "amr": ("amr", {"partition": "kmeans", "num_bins": 3, "temperature": 0.5}),
}


def feed(sampler, steps: int, seed: int = 1, start_step: int = 0) -> list[torch.Tensor]:
    """Draw and observe ``steps`` steps with a fixed-seed 'model': rows of blob 0 (id % 3 = 0) in the upper
    half of the loss range are wrong with probability 0.9, the rest 0.1; a wrong row has a larger loss."""
    g = torch.Generator().manual_seed(seed + start_step)
    pool, drawn = sampler.pool, []
    for step in range(start_step, start_step + steps):
        rows = sampler.draw(step)
        risky = (pool.loss0[rows] > 1.5) & (rows % 3 == 0)
        wrong = torch.rand(rows.numel(), generator=g) < torch.where(risky, 0.9, 0.1)
        loss = torch.where(wrong, 2.0, 0.2) + torch.rand(rows.numel(), generator=g)
        sampler.observe(rows, wrong, loss)
        drawn.append(rows)
    return drawn


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_seeded_draws_reproduce_and_the_seed_matters(variant: str) -> None:
    name, opts = VARIANTS[variant]
    runs = [feed(create_sampler(name, blob_pool(), 16, seed=s, **opts), 40) for s in (7, 7, 8)]
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(runs[0], runs[2], strict=True))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_state_survives_a_checkpoint(variant: str) -> None:
    """Save mid-way (after splits, with a full memory), restore into a fresh sampler: the same draws after."""
    name, opts = VARIANTS[variant]
    whole = create_sampler(name, blob_pool(), 16, seed=3, **opts)
    feed(whole, 30)
    state = whole.state_dict()
    rest = feed(whole, 30, start_step=30)
    fresh = create_sampler(name, blob_pool(), 16, seed=3, **opts)
    fresh.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(rest, feed(fresh, 30, start_step=30), strict=True))
    if variant == "adaptive":
        assert whole.splits, "the test should cover a restore across splits"


def slot_frequencies(sampler, draws: int, first_step: int) -> tuple[np.ndarray, np.ndarray]:
    """(observed draws per row, expected per row) over ``draws`` draws without learning in between."""
    counts = np.zeros(len(sampler.pool))
    expected = np.zeros(len(sampler.pool))
    for step in range(first_step, first_step + draws):
        if getattr(sampler, "recent", None) is not None:
            sampler.recent.expire(step)  # what draw() does first: the stated p is that of the live queue
        if sampler.name == "mixcd" and sampler.estimate == "thompson":
            state = sampler.generator.get_state()
            p = sampler.probs(sampler.rates())  # this draw's posterior sample, from the same generator state
            sampler.generator.set_state(state)
            expected += sampler.row_probs(p) * sampler.batch_size
        else:
            expected += sampler.row_probs() * sampler.batch_size
        np.add.at(counts, sampler.draw(step).numpy(), 1)
    return counts, expected


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_draw_frequencies_match_the_stated_probabilities(variant: str) -> None:
    """Chi-square over groups of rows (bins, arms, memory rows): fixed seeds, so p > 0.001 is a fixed
    outcome; a sampler drawing from the wrong p (say, ignoring the memory share or ε) fails it."""
    name, opts = VARIANTS[variant]
    s = create_sampler(name, blob_pool(), 256, seed=11, **opts)
    feed(s, 40)
    s.adaptive = False  # splits would move rows between groups mid-count; the split bins are what is tested
    counts, expected = slot_frequencies(s, 50, first_step=40)
    # group rows by what they share: the bin (or arm) they belong to, each memory row on its own
    group = (s.bin_of if hasattr(s, "bin_of") else s.arm_of).astype(np.int64)
    if getattr(s, "recent", None) is not None and len(s.recent):
        group = group.copy()
        group[s.recent.rows] = group.max() + 1 + np.arange(len(s.recent))
    member = group >= 0
    obs = np.bincount(group[member], weights=counts[member])
    exp = np.bincount(group[member], weights=expected[member])
    assert counts[~member].sum() == 0
    assert chi2_pvalue(obs, exp) > 1e-3, (obs, exp)
    # and it is not the uniform distribution over the same rows (the test can tell them apart)
    uniform = np.bincount(group[member]).astype(float) / member.sum() * counts.sum()
    assert chi2_pvalue(obs, uniform) < 1e-6


def test_thompson_mean_probability_converges_to_the_posterior_mean_rule() -> None:
    s = create_sampler("mixcd", blob_pool(), 16, seed=0, estimate="thompson", num_bins=5)
    rate = np.array([0.05, 0.1, 0.3, 0.6, 0.9])
    gaps = []
    for scale in (10, 100, 10_000):
        s.seen[:] = scale
        s.cd[:] = rate * scale
        mean_p = np.mean([s.probs(s.rates()) for _ in range(2000)], axis=0)
        gaps.append(np.abs(mean_p - s.probs()).max())
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 2e-3, gaps
    assert gaps[0] > 5e-3  # with few counts the posterior draws really do spread


def test_each_thompson_draw_follows_its_own_posterior_sample() -> None:
    """One large draw's bins follow the rates sampled for it, not the posterior mean (with few counts the
    two differ): a sampler that computed Thompson rates but drew from α̂ fails this."""
    s = create_sampler("mixcd", blob_pool(), 20_000, seed=5, estimate="thompson", num_bins=5, epsilon=0.0)
    s.seen[:] = 4.0
    s.cd[:] = 2.0
    state = s.generator.get_state()
    sampled = s.probs(s.rates())
    s.generator.set_state(state)
    counts = np.bincount(s.bin_of[s.draw(0).numpy()], minlength=5).astype(float)
    assert chi2_pvalue(counts, sampled * counts.sum()) > 1e-3
    assert chi2_pvalue(counts, s.probs() * counts.sum()) < 1e-6


def test_recent_memory_redraws_a_damaged_row_within_its_lifetime_and_forgets_it_after() -> None:
    pool = blob_pool()
    s = create_sampler("mixcd", pool, 8, seed=0, memory="recent", memory_size=4, memory_ttl=20, memory_share=0.5)
    rows = s.draw(0)
    target = int(rows[0])
    assert bool(pool.correct0[target]) and len(s.recent) == 0
    s.observe(rows, torch.arange(rows.numel()) == 0)  # only rows[0] is now wrong
    assert s.recent.rows.tolist() == [target]
    hits = sum(int((s.draw(step) == target).sum()) for step in range(1, 20))  # never observed again
    # alone in the queue with share 0.5 and 8 slots: ≈ 4 draws a step; uniform would give ≈ 0.002
    assert hits > 40
    s.draw(20)  # its lifetime is over
    assert len(s.recent) == 0
    # a queued row seen predicted right again leaves the queue at once
    s.observe(rows, torch.arange(rows.numel()) == 0)
    s.observe(rows, torch.zeros(rows.numel(), dtype=torch.bool))
    assert len(s.recent) == 0


def test_memory_draws_are_kept_out_of_the_bin_estimates() -> None:
    s = create_sampler("mixcd", blob_pool(), 64, seed=0, memory="recent", memory_share=1.0)
    rows = s.draw(0)
    s.observe(rows, torch.ones(rows.numel(), dtype=torch.bool))
    seen = s.seen.sum()
    rows = s.draw(1)  # every slot from the memory now
    assert bool(s._from_memory.all())
    s.observe(rows, torch.ones(rows.numel(), dtype=torch.bool))
    assert s.seen.sum() == pytest.approx(seen * s.decay)


def test_adaptive_bins_split_a_bin_that_stays_far_above_its_neighbours() -> None:
    pool = blob_pool()
    s = create_sampler("mixcd", pool, 64, seed=0, adaptive_bins=True, split_every=10, num_bins=4, decay=1.0)
    before = s.num_bins
    s.seen[:] = 100.0
    s.cd[:] = [5.0, 5.0, 80.0, 5.0]
    s.draw(10)  # first check: far above, once
    assert s.num_bins == before
    s.draw(20)  # second check in a row: split
    assert s.num_bins == before + 1 and s.splits == [2]
    # the two halves partition the old bin by loss, keep its rate, and share its counts
    low, high = (torch.from_numpy(np.nonzero(s.bin_of == k)[0]) for k in (2, 3))
    assert float(pool.loss0[low].max()) <= float(pool.loss0[high].min())
    assert s.seen[2] == s.seen[3] == 50.0 and s.alpha()[2] == pytest.approx(s.alpha()[3])
    # bins stay in loss order
    for k in range(s.num_bins - 1):
        a, b = (torch.from_numpy(np.nonzero(s.bin_of == j)[0]) for j in (k, k + 1))
        assert float(pool.loss0[a].max()) <= float(pool.loss0[b].min())


def test_adaptive_bins_leave_an_even_estimate_alone() -> None:
    s = create_sampler("mixcd", blob_pool(), 64, seed=0, adaptive_bins=True, split_every=1, num_bins=4)
    s.seen[:] = 100.0
    s.cd[:] = 30.0
    for step in range(1, 20):
        s.draw(step)
    assert s.splits == []


def test_adaptive_bins_need_loss_bins() -> None:
    with pytest.raises(MixcdError, match="partition=loss"):
        create_sampler("mixcd", blob_pool(), 8, seed=0, adaptive_bins=True, partition="class")


def test_kmeans_is_deterministic_for_a_seed_and_finds_separated_blobs() -> None:
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(3000, 5, generator=g) * 0.2 + torch.arange(3000).remainder(3).unsqueeze(1).float() * 4
    a, info = kmeans(feats, 3, seed=1)
    b, _ = kmeans(feats, 3, seed=1)
    assert torch.equal(a, b)
    truth = torch.arange(3000).remainder(3)
    # every cluster is exactly one blob
    assert all(torch.unique(truth[a == c]).numel() == 1 for c in range(3)) and torch.unique(a).numel() == 3
    assert info["iterations"] >= 1
    c, _ = kmeans(torch.randn(3000, 5, generator=g), 6, seed=1)
    d, _ = kmeans(torch.randn(3000, 5, generator=torch.Generator().manual_seed(9)), 6, seed=2)
    assert not torch.equal(c, d)


def test_rivals_need_the_training_loss() -> None:
    for name in ("amr", "loss_ema"):
        s = create_sampler(name, blob_pool(), 8, seed=0, partition="loss")
        with pytest.raises(MixcdError, match="losses"):
            s.observe(s.draw(0), torch.zeros(8, dtype=torch.bool))


def test_amr_prefers_the_arm_with_the_highest_training_loss() -> None:
    s = create_sampler("amr", blob_pool(), 32, seed=0, partition="loss", num_bins=5, temperature=0.5, decay=1.0)
    for step in range(50):
        rows = s.draw(step)
        arm = torch.from_numpy(s.arm_of[rows.numpy()]).long()
        s.observe(rows, torch.zeros(rows.numel(), dtype=torch.bool), torch.where(arm == 3, 2.0, 0.5))
    assert np.argmax(s.probs()) == 3 and s.values()[3] == pytest.approx(2.0)
    # p = softmax(Q / T): arm 3 against any other is e^{(2 − 0.5)/0.5} = e^3
    assert s.probs()[3] / s.probs()[0] == pytest.approx(np.exp(3.0), rel=1e-6)


def test_loss_ema_estimates_the_mean_training_loss_per_bin() -> None:
    s = create_sampler("loss_ema", blob_pool(), 64, seed=0, num_bins=4, decay=1.0, prior_a=1e-6, prior_b=1e-6)
    for step in range(100):
        rows = s.draw(step)
        b = torch.from_numpy(s.bin_of[rows.numpy()]).long()
        s.observe(rows, torch.zeros(rows.numel(), dtype=torch.bool), (b + 1).double())
    assert np.allclose(s.alpha(), [1, 2, 3, 4], atol=1e-4)


# --------------------------------------------------------------------------- through the trainer


RUN_VARIANTS = {
    "amr": ["sampler=amr"],
    "loss_ema": ["sampler=loss_ema"],
    "mixcd-variants": ["sampler=mixcd", "sampler.estimate=thompson", "sampler.memory=recent",
                       "sampler.adaptive_bins=true", "sampler.split_every=5", "sampler.split_ratio=1.2"],
    "kmeans": ["sampler=mixcd", "sampler.partition=kmeans", "sampler.num_bins=4"],
}


@pytest.mark.parametrize("variant", sorted(RUN_VARIANTS))
def test_no_extra_pass_is_charged(variant: str, compose_cfg, tiny: list[str], tmp_path: Path) -> None:
    args = [*tiny, *RUN_VARIANTS[variant], "trainer.steps=12"]
    m = run_train(compose_cfg("train", args), tmp_path / "a")
    fwd, bwd = m["ledger"]["forward"], m["ledger"]["backward"]
    b = m["rehearsal_batch"]
    assert fwd["selection"] == bwd["selection"] == 0
    assert fwd["rehearsal"] == bwd["rehearsal"] == 12 * b
    ref = run_train(compose_cfg("train", [*tiny, "sampler=random", "trainer.steps=12"]), tmp_path / "r")
    assert m["ledger"]["training_passes"] == ref["ledger"]["training_passes"]


def test_kmeans_clusters_are_computed_once_per_snapshot(compose_cfg, tiny: list[str], tmp_path: Path,
                                                        monkeypatch) -> None:
    import mixcd_cli.snapshot as snapshot

    calls = []
    real = snapshot.kmeans
    monkeypatch.setattr(snapshot, "kmeans", lambda *a, **k: calls.append(a[1:]) or real(*a, **k))
    args = [*tiny, "sampler=mixcd", "sampler.partition=kmeans", "sampler.num_bins=4", "trainer.steps=6"]
    first = run_train(compose_cfg("train", [*args, "seed=1"]), tmp_path / "a")
    second = run_train(compose_cfg("train", [*args, "seed=2"]), tmp_path / "b")
    amr = run_train(compose_cfg("train", [*tiny, "sampler=amr", "sampler.num_bins=4", "trainer.steps=6"]),
                    tmp_path / "c")
    assert calls == [(4, 0)]  # one clustering for the snapshot, whatever the run seed or sampler
    # the feature pass is charged once, to the snapshot, and only by the run that made the clusters
    pool = json.loads((Path(first["snapshot"]) / "meta.json").read_text())["pool_size"]
    assert first["ledger"]["forward"]["snapshot"] - (second["ledger"]["forward"]["snapshot"]) >= pool
    assert second["ledger"]["forward"]["snapshot"] == amr["ledger"]["forward"]["snapshot"] == 0
    assert first["sampler_final"]["bin_sizes"] == second["sampler_final"]["bin_sizes"]
    # a damaged cluster file is refused with one clear line
    column = next(Path(first["snapshot"]).glob("kmeans-k4-s0.npy"))
    column.write_bytes(column.read_bytes()[:-8] + b"\x01" * 8)
    with pytest.raises(MixcdError, match="k-means clusters .* corrupt"):
        run_train(compose_cfg("train", [*args, "seed=3"]), tmp_path / "d")


@pytest.mark.parametrize("variant", ["amr", "mixcd-variants"])
def test_killed_run_resumes_to_identical_metrics(variant: str, tiny: list[str], tmp_path: Path) -> None:
    args = [*tiny, *RUN_VARIANTS[variant], "trainer.steps=300", "trainer.checkpoint_every=7",
            "trainer.log_every=25"]
    ref = start([*args, f"hydra.run.dir={tmp_path / 'ref'}"])
    assert ref.wait() == 0, ref.stderr.read()
    cut = tmp_path / "cut"
    proc = start([*args, f"hydra.run.dir={cut}"])
    log = cut / "metrics.jsonl"
    deadline = time.time() + 120
    while (len(log.read_text().splitlines()) if log.is_file() else 0) < 4:  # killed at step ≥ 100 of 300
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline, "the run logged nothing in two minutes"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    again = start([*args, f"hydra.run.dir={cut}"])
    assert again.wait() == 0, again.stderr.read()
    ref_m, cut_m = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "ref", cut))
    assert cut_m["resumed_from"] and cut_m["resumed_from"] > 0
    assert stable(cut_m) == stable(ref_m)
    assert telemetry(cut) == telemetry(tmp_path / "ref")
    if variant == "mixcd-variants":
        assert ref_m["sampler_final"]["splits"] > 0 and ref_m["sampler_final"]["memory_size"] > 0


def test_observations_come_back_in_the_order_of_the_draw(compose_cfg, out_dir: Path, tmp_path: Path,
                                                         monkeypatch) -> None:
    """Under a head per task the trainer regroups drawn rows by head; the sampler must still get its
    observations slot by slot (memory=recent tells its slots apart), with each row's own outcome."""
    from mixcd_cli.samplers.mixcd import MixCDSampler

    log: list[tuple[str, torch.Tensor]] = []
    draw, observe = MixCDSampler.draw, MixCDSampler.observe
    monkeypatch.setattr(MixCDSampler, "draw", lambda self, *a: log.append(("draw", r := draw(self, *a))) or r)
    monkeypatch.setattr(MixCDSampler, "observe",
                        lambda self, rows, *a: log.append(("observe", rows)) or observe(self, rows, *a))
    args = ["experiment=tiny_seq", f"paths.output_dir={out_dir}", f"paths.data_dir={out_dir.parent / 'data'}",
            "head=multi", "sampler=mixcd", "sampler.memory=recent", "trainer.steps=8"]
    run_train(compose_cfg("train", args), tmp_path / "r")
    pairs = [(a[1], b[1]) for a, b in zip(log, log[1:], strict=False) if a[0] == "draw" and b[0] == "observe"]
    assert len(pairs) == 3 * 8
    assert all(torch.equal(drawn, seen) for drawn, seen in pairs)


def test_mixcd_plus_is_mixcd_with_the_recent_damage_memory(compose_cfg, tiny: list[str], tmp_path: Path) -> None:
    """The shipped sampler is exactly the ablation's `memory=recent` (same draws, same seeds), so the
    ablation's numbers are its numbers; any of mixcd's options still applies to it."""
    a, b = (feed(create_sampler(n, blob_pool(), 16, seed=4, **o), 30)
            for n, o in (("mixcd_plus", {}), ("mixcd", {"memory": "recent"})))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert create_sampler("mixcd_plus", blob_pool(), 16, seed=4, memory="none").recent is None
    args = [*tiny, "trainer.steps=12"]
    plus = run_train(compose_cfg("train", [*args, "sampler=mixcd_plus"]), tmp_path / "plus")
    mixcd = run_train(compose_cfg("train", [*args, "sampler=mixcd", "sampler.memory=recent"]), tmp_path / "m")
    assert stable(plus) == {**stable(mixcd), "sampler": "mixcd_plus"}
