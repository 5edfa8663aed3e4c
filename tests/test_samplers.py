"""Samplers, tested statistically: estimates converge, draws follow p, edge cases, baselines, state."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mixcd_cli.errors import MixcdError
from mixcd_cli.samplers import PoolInfo, SelectionContext, create_sampler
from mixcd_cli.samplers.mixcd import quantile_bins

# Upper 0.1% points of chi-square, so a correct sampler fails a fixed-seed test with p < 0.001.
CHI2_999 = {4: 18.47, 9: 27.88}


def make_pool(n: int = 10_000, classes: int = 5, correct_frac: float = 0.8, seed: int = 0) -> PoolInfo:
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, classes, (n,), generator=g)
    correct = torch.rand(n, generator=g) < correct_frac
    loss = torch.rand(n, generator=g) * 3
    conf = torch.rand(n, generator=g)
    style = torch.randint(0, 3, (n,), generator=g)
    return PoolInfo(correct0=correct, loss0=loss, conf0=conf, classes=targets, aux={"style": style})


def simulate(sampler, true_rate: torch.Tensor, bin_of: torch.Tensor, steps: int, seed: int = 1) -> None:
    """Feed the sampler predictions that are wrong with each bin's true CD probability."""
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        rows = sampler.draw(step)
        wrong = torch.rand(rows.numel(), generator=g) < true_rate[bin_of[rows]]
        sampler.observe(rows, wrong)


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def test_quantile_bins_are_equal_count() -> None:
    loss = torch.rand(1003)
    bins = quantile_bins(torch.zeros(1003, dtype=torch.long), loss, 10)
    sizes = torch.bincount(bins)
    assert sizes.numel() == 10 and int(sizes.max() - sizes.min()) <= 1
    # bins are ordered by loss
    assert all(loss[bins == k].max() <= loss[bins == k + 1].min() for k in range(9))


def test_first_draw_is_uniform_over_eligible() -> None:
    pool = make_pool()
    s = create_sampler("mixcd", pool, 64, seed=0)
    elig = pool.correct0.sum().item()
    assert np.allclose(s.probs(), s.sizes / elig)
    rows = s.draw(0)
    assert bool(pool.correct0[rows].all())


def test_alpha_converges_to_true_rates() -> None:
    pool = make_pool()
    s = create_sampler("mixcd", pool, 64, seed=0, num_bins=5, decay=1.0, epsilon=0.2)
    true_rate = torch.tensor([0.05, 0.1, 0.3, 0.6, 0.9])
    bin_of = torch.from_numpy(s.bin_of).long().clamp_min(0)
    simulate(s, true_rate, bin_of, steps=600)
    alpha = s.alpha()
    # ≥ 0.2·0.2·38400 = 1536 observations per bin: 4σ of a rate is under 0.051
    assert np.allclose(alpha, true_rate.numpy(), atol=0.05), alpha
    # high-CD bins get more of the budget than their share of E
    share = s.sizes / s.sizes.sum()
    assert s.probs()[4] > 2 * share[4] and s.probs()[0] < share[0]


def test_draw_frequencies_match_p() -> None:
    pool = make_pool()
    s = create_sampler("mixcd", pool, 200_000, seed=3, num_bins=10)
    s.seen += np.linspace(10, 100, 10)
    s.cd += np.linspace(1, 90, 10)
    rows = s.draw(0)
    counts = torch.bincount(torch.from_numpy(s.bin_of[rows.numpy()]).long(), minlength=10).double()
    assert chi_square(counts, torch.from_numpy(s.probs())) < CHI2_999[9]


def test_uniform_within_bin() -> None:
    pool = make_pool(n=2000)
    s = create_sampler("mixcd", pool, 100_000, seed=5, partition="class")
    rows = s.draw(0)
    in_bin0 = rows[torch.from_numpy(s.bin_of[rows.numpy()] == 0)]
    members = s.index.rows[s.index.offsets[0]:s.index.offsets[1]]
    counts = torch.stack([(in_bin0 == r).sum() for r in members]).double()
    probs = torch.full((members.numel(),), 1.0 / members.numel(), dtype=torch.float64)
    stat = chi_square(counts, probs)
    df = members.numel() - 1
    assert stat < df + 4.5 * (2 * df) ** 0.5  # ~ the 0.1% tail for this many degrees of freedom


def test_zero_cd_bin_keeps_being_observed() -> None:
    pool = make_pool()
    s = create_sampler("mixcd", pool, 64, seed=0, num_bins=5, epsilon=0.05, decay=1.0)
    true_rate = torch.tensor([0.0, 0.5, 0.5, 0.5, 0.5])
    bin_of = torch.from_numpy(s.bin_of).long().clamp_min(0)
    before = float(s.seen[0])
    simulate(s, true_rate, bin_of, steps=400)
    floor = s.epsilon * s.sizes[0] / s.sizes.sum()
    assert s.probs()[0] >= floor - 1e-12
    assert float(s.seen[0]) - before > 0.5 * floor * 64 * 400


def test_edge_cases() -> None:
    empty = make_pool(correct_frac=0.0)
    with pytest.raises(MixcdError, match="no eligible"):
        create_sampler("mixcd", empty, 8, seed=0)
    small = make_pool(n=40, correct_frac=0.2)
    s = create_sampler("mixcd", small, 8, seed=0, num_bins=1000)  # K > |E|: one sample per bin
    assert s.num_bins == int(small.correct0.sum())
    one_class = make_pool(classes=1)
    s = create_sampler("mixcd", one_class, 8, seed=0, partition="class")
    assert s.num_bins == 1 and s.draw(0).numel() == 8
    with pytest.raises(MixcdError, match="num_bins"):
        create_sampler("mixcd", small, 8, seed=0, num_bins=0)
    with pytest.raises(MixcdError, match="choose one of"):
        create_sampler("mixcd", small, 8, seed=0, partition="nosuch")
    with pytest.raises(MixcdError, match="choose one of"):
        create_sampler("mixcd", small, 8, seed=0, bogus=1)


@pytest.mark.parametrize("partition,expected", [("class", 5), ("class_loss", 50), ("aux", 3), ("aux_loss", 30)])
def test_partitions(partition: str, expected: int) -> None:
    pool = make_pool()
    s = create_sampler("mixcd", pool, 16, seed=0, partition=partition, num_bins=10, aux_column="style")
    assert s.num_bins == expected
    elig = pool.eligible()
    for k in range(s.num_bins):  # every bin is pure in its label
        members = s.index.rows[s.index.offsets[k]:s.index.offsets[k + 1]]
        column = pool.classes if partition.startswith("class") else pool.aux["style"]
        assert column[members].unique().numel() == 1
    assert int(s.sizes.sum()) == elig.numel()


def test_tau_restricts_eligible_set() -> None:
    pool = make_pool()
    s = create_sampler("mixcd", pool, 4096, seed=0, tau=0.5)
    rows = s.draw(0)
    assert bool((pool.conf0[rows] >= 0.5).all() and pool.correct0[rows].all())


def test_same_seed_same_draws_and_state_round_trip() -> None:
    pool = make_pool()
    for name in ("random", "class_balanced", "loss_high", "loss_low", "mixcd"):
        a, b = create_sampler(name, pool, 32, seed=7), create_sampler(name, pool, 32, seed=7)
        assert torch.equal(a.draw(0), b.draw(0))
        a.observe(a.draw(1), torch.ones(32, dtype=torch.bool))
        state = a.state_dict()
        expected = [a.draw(s) for s in range(2, 5)]
        c = create_sampler(name, pool, 32, seed=99)
        c.load_state_dict(state)
        assert all(torch.equal(e, c.draw(s)) for e, s in zip(expected, range(2, 5), strict=True)), name


def test_static_baselines_follow_their_weights() -> None:
    pool = make_pool()
    hi = create_sampler("loss_high", pool, 50_000, seed=0).draw(0)
    lo = create_sampler("loss_low", pool, 50_000, seed=0).draw(0)
    assert pool.loss0[hi].mean() > pool.loss0.mean() + 0.3 > pool.loss0[lo].mean() + 0.6
    cb = create_sampler("class_balanced", make_pool(classes=5), 100_000, seed=0)
    counts = torch.bincount(pool.classes[cb.draw(0)], minlength=5).double()
    assert chi_square(counts, torch.full((5,), 0.2, dtype=torch.float64)) < CHI2_999[4]
    elig = create_sampler("random", pool, 4096, seed=0, over="eligible").draw(0)
    assert bool(pool.correct0[elig].all())
    assert create_sampler("none", pool, 0, seed=0).draw(0).numel() == 0


class FakeContext(SelectionContext):
    """Says which rows the live model gets wrong from a fixed table; counts the passes asked of it."""

    def __init__(self, wrong: torch.Tensor) -> None:
        self.table, self.calls = wrong, 0

    def wrong(self, rows: torch.Tensor) -> torch.Tensor:
        self.calls += rows.numel()
        return self.table[rows]


def test_oracle_draws_only_true_cd_and_refreshes_every_m() -> None:
    pool = make_pool(n=3000)
    cd_rows = pool.eligible()[::7]
    wrong = torch.zeros(len(pool), dtype=torch.bool)
    wrong[cd_rows] = True
    ctx = FakeContext(wrong)
    s = create_sampler("oracle_cd", pool, 64, seed=0, refresh_every=10)
    early = torch.cat([s.draw(step, ctx) for step in range(10)])
    # no refresh before step M: at step 0 the model is θ0 and has no collateral damage to find
    assert ctx.calls == 0 and s.refreshes == 0 and bool(pool.correct0[early].all())
    assert not bool(torch.isin(early, cd_rows).all())  # uniform over E, not yet the CD set
    drawn = torch.cat([s.draw(step, ctx) for step in range(10, 25)])
    assert bool(torch.isin(drawn, cd_rows).all())
    assert s.refreshes == 2 and ctx.calls == 2 * pool.eligible().numel()  # steps 10 and 20
    sub = create_sampler("oracle_cd", pool, 64, seed=0, refresh_every=10, subset=500)
    ctx2 = FakeContext(wrong)
    sub.draw(0, ctx2)
    assert ctx2.calls == 0
    sub.draw(10, ctx2)
    assert ctx2.calls == 500


def test_distinct_rows_without_replacement_and_uniform() -> None:
    from mixcd_cli.samplers.base import distinct_rows

    g = torch.Generator().manual_seed(0)
    rows = torch.arange(100, 1100)
    counts = torch.zeros(1000, dtype=torch.float64)
    for _ in range(2000):
        pick = distinct_rows(rows, 64, g)  # 4k < n: the draw-and-drop-repeats path
        assert pick.unique().numel() == 64 and bool(((pick >= 100) & (pick < 1100)).all())
        counts[pick - 100] += 1
    stat = chi_square(counts, torch.full((1000,), 1e-3, dtype=torch.float64))
    assert stat < 999 + 4.5 * (2 * 999) ** 0.5
    small = distinct_rows(torch.arange(10), 10, g)  # the permutation path
    assert sorted(small.tolist()) == list(range(10))
    with pytest.raises(MixcdError, match="distinct"):
        distinct_rows(torch.arange(5), 6, g)


def test_mir_candidates_are_distinct() -> None:
    class Recording(SelectionContext):
        def __init__(self) -> None:
            self.rows: list[torch.Tensor] = []

        def pool_losses(self, rows, params):
            self.rows.append(rows)
            return torch.rand(rows.numel())

        def virtual_params(self):
            return {}

    pool = make_pool(n=300)
    ctx = Recording()
    s = create_sampler("mir", pool, 16, seed=0, candidates=64)
    for step in range(50):
        chosen = s.draw(step, ctx)
        assert chosen.unique().numel() == 16
    assert all(r.unique().numel() == 64 for r in ctx.rows)
    with pytest.raises(MixcdError, match="exceed"):
        create_sampler("mir", make_pool(n=30), 8, seed=0, candidates=40)


def test_mir_picks_largest_loss_increase_by_hand() -> None:
    """A linear model where the virtual SGD step is computed by hand."""
    from mixcd_cli.data import BatchTransform, Task
    from mixcd_cli.metrics import Ledger
    from mixcd_cli.models import MixcdNet
    from mixcd_cli.objectives import Batch
    from mixcd_cli.sources import ArraySource
    from mixcd_cli.training import ModelSelection

    torch.manual_seed(0)
    n, d, classes = 40, 4, 3
    data = torch.randint(0, 256, (n, 1, 2, 2), dtype=torch.uint8)
    targets = torch.randint(0, classes, (n,))
    task = Task("pool", ArraySource(data, targets, (0.0,), (1.0,)), torch.arange(n), targets, classes, {})
    transform = BatchTransform((0.0,), (1.0,))
    model = MixcdNet(nn.Flatten(), d, {"shared": classes})
    ledger = Ledger()
    lr = 0.5
    ctx = ModelSelection(model, task, transform, torch.device("cpu"), "shared", "shared", ledger, lr)
    ft_x, ft_y = torch.randn(8, 1, 2, 2), torch.randint(0, classes, (8,))
    ctx.ft_batch = Batch(ft_x, ft_y)

    pool_info = PoolInfo(correct0=torch.ones(n, dtype=torch.bool), loss0=torch.zeros(n), conf0=torch.ones(n))
    s = create_sampler("mir", pool_info, 5, seed=0, candidates=20)
    gen_state = s.generator.get_state()
    chosen = s.draw(0, ctx)

    # by hand: same candidates, W' = W - lr·∇W CE(ft), b' likewise, loss increase, top-5
    g = torch.Generator()
    g.set_state(gen_state)
    cands = torch.arange(n)[torch.randperm(n, generator=g)[:20]]  # 20 distinct of 40
    W, b = model.heads["shared"].weight.detach(), model.heads["shared"].bias.detach()
    x = ft_x.flatten(1)
    p = torch.softmax(x @ W.T + b, 1)
    onehot = torch.nn.functional.one_hot(ft_y, classes).float()
    gW, gb = (p - onehot).T @ x / 8, (p - onehot).mean(0)
    xc, yc = transform(data[cands]).flatten(1), targets[cands]

    def losses(Wm: torch.Tensor, bm: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(xc @ Wm.T + bm, yc, reduction="none")

    increase = losses(W - lr * gW, b - lr * gb) - losses(W, b)
    expected = cands[torch.topk(increase, 5).indices]
    assert sorted(chosen.tolist()) == sorted(expected.tolist())
    # 2·C candidate forwards + the virtual step's forward and backward on the fine-tune batch
    assert ledger.forward["selection"] == 2 * 20 + 8 and ledger.backward["selection"] == 8


@pytest.mark.filterwarnings("ignore:Full backward hook")
@pytest.mark.parametrize("name", ["random", "mixcd", "oracle_cd", "mir"])
def test_ledger_matches_passes_counted_by_hooks(name: str, compose_cfg, tiny, tmp_path, monkeypatch) -> None:
    """Count every sample through the backbone (forward and backward) and compare with the ledger."""
    from as_json import run_train

    from mixcd_cli.training import FineTuner

    seen = {"forward": 0, "backward": 0}
    original = FineTuner.setup

    def counting_setup(self, resume=False):
        if self.rehearsal is not None:  # the fine-tune loop, not pretraining
            self.model.backbone.register_forward_hook(
                lambda m, i, o: seen.__setitem__("forward", seen["forward"] + o.shape[0]))
            self.model.backbone.register_full_backward_hook(
                lambda m, gi, go: seen.__setitem__("backward", seen["backward"] + go[0].shape[0]))
        return original(self, resume)

    monkeypatch.setattr(FineTuner, "setup", counting_setup)
    res = run_train(compose_cfg("train", [*tiny, f"sampler={name}", "trainer.steps=7"]
                                + (["sampler.refresh_every=3"] if name == "oracle_cd" else [])), tmp_path / "r")
    fwd, bwd = res["ledger"]["forward"], res["ledger"]["backward"]
    counted_fwd = fwd["finetune"] + fwd["rehearsal"] + fwd["selection"] + fwd["eval"] + fwd["audit"]
    assert fwd["audit"] > 0  # the last step is audited (audit_every = log_every), and counted
    assert seen["forward"] == counted_fwd
    assert seen["backward"] == bwd["finetune"] + bwd["rehearsal"] + bwd["selection"]
    if name in ("oracle_cd", "mir"):
        assert fwd["selection"] > 0
    else:
        assert fwd["selection"] == 0


def test_probabilities_match_an_independent_computation_with_decay_and_prior() -> None:
    """λ < 1 and a ≠ b0, over many steps: decay applied once per step, both prior terms, the ε floor.

    Fails for a sampler that ignores decay, decays twice, drops b0 or a, or mixes ε wrongly.
    """
    pool = make_pool(n=4000)
    lam, a, b0, eps = 0.9, 2.0, 3.0, 0.1
    s = create_sampler("mixcd", pool, 32, seed=3, num_bins=6, decay=lam, prior_a=a, prior_b=b0, epsilon=eps)
    k = s.num_bins
    bin_of = torch.from_numpy(s.bin_of).long()
    n_k = torch.bincount(bin_of[bin_of >= 0], minlength=k).double()
    m = torch.zeros(k, dtype=torch.float64)
    c = torch.zeros(k, dtype=torch.float64)
    g = torch.Generator().manual_seed(11)
    true_rate = torch.linspace(0.05, 0.9, k, dtype=torch.float64)
    for step in range(60):
        alpha = (c + a) / (m + a + b0)
        expected = (1 - eps) * n_k * alpha / (n_k * alpha).sum() + eps * n_k / n_k.sum()
        assert torch.allclose(torch.from_numpy(s.probs()), expected, rtol=0, atol=1e-12), step
        rows = s.draw(step)
        # rows outside E are ignored by observe; mix some in to check that too
        rows = torch.cat([rows, torch.nonzero(~pool.correct0).flatten()[:5]])
        bins = bin_of[rows]
        wrong = torch.rand(rows.numel(), generator=g, dtype=torch.float64) < true_rate[bins.clamp_min(0)]
        s.observe(rows, wrong)
        keep = bins >= 0
        seen_now = torch.bincount(bins[keep], minlength=k).double()
        cd_now = torch.bincount(bins[keep], weights=wrong[keep].double(), minlength=k)
        m, c = lam * m + seen_now, lam * c + cd_now
    assert torch.allclose(torch.from_numpy(s.alpha()), (c + a) / (m + a + b0), rtol=0, atol=1e-12)


def test_every_member_of_every_bin_is_drawn_and_draws_stay_in_their_bin() -> None:
    """Tiny bins (1 to 4 rows): an off-by-one in the within-bin draw skips the last member or leaks."""
    targets = torch.tensor([0] * 1 + [1] * 2 + [2] * 3 + [3] * 4)
    n = targets.numel()
    pool = PoolInfo(correct0=torch.ones(n, dtype=torch.bool), loss0=torch.rand(n), conf0=torch.ones(n),
                    classes=targets)
    s = create_sampler("mixcd", pool, 20_000, seed=0, partition="class")
    rows = s.draw(0)
    assert sorted(rows.unique().tolist()) == list(range(n))
    members = {k: set(s.index.rows[s.index.offsets[k]:s.index.offsets[k + 1]].tolist()) for k in range(4)}
    bins = torch.multinomial(torch.from_numpy(s.probs()), 4000, replacement=True, generator=torch.Generator())
    drawn = s.index.draw_within(bins, torch.Generator().manual_seed(1))
    assert all(int(r) in members[int(b)] for b, r in zip(bins, drawn, strict=True))


def test_oracle_uses_no_label_only_what_the_context_says_is_wrong() -> None:
    """No class column at all: oracle_cd's CD set is exactly the rows ``ctx.wrong`` names, never a label."""
    pool = make_pool(n=600)
    pool.classes = None
    wrong = torch.zeros(len(pool), dtype=torch.bool)
    wrong[pool.eligible()[:5]] = True
    s = create_sampler("oracle_cd", pool, 256, seed=0, refresh_every=1)
    drawn = s.draw(1, FakeContext(wrong))
    assert set(drawn.tolist()) == set(pool.eligible()[:5].tolist())


@pytest.mark.parametrize("name,options", [("class_balanced", {}), ("mixcd", {"partition": "class"}),
                                          ("mixcd", {"partition": "class_loss"}),
                                          ("amr", {"partition": "class"})])
def test_class_samplers_refuse_a_pool_without_classes(name: str, options: dict) -> None:
    pool = make_pool(n=500)
    pool.classes = None
    with pytest.raises(MixcdError, match="needs a class column, and this task kind has none; use"):
        create_sampler(name, pool, 8, seed=0, **options)


@pytest.mark.parametrize("name,options", [("random", {}), ("mixcd", {}), ("mixcd", {"partition": "aux",
                                                                                    "aux_column": "style"}),
                                          ("loss_high", {}), ("oracle_cd", {}), ("amr", {"partition": "loss"})])
def test_samplers_that_read_no_class_run_without_one(name: str, options: dict) -> None:
    pool = make_pool(n=500)
    pool.classes = None
    sampler = create_sampler(name, pool, 8, seed=0, **options)
    assert sampler.draw(0, FakeContext(torch.zeros(500, dtype=torch.bool))).numel() == 8
