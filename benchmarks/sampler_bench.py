"""Sampler host cost and whole-step overhead: prints numbers and ratios (a benchmark, not a test).

    .venv/bin/python benchmarks/sampler_bench.py            # pools 1e4, 1e6, 1e7; b = 64, 256; step ratio
    .venv/bin/python benchmarks/sampler_bench.py --quick    # smaller, for a smoke check
    .venv/bin/python benchmarks/sampler_bench.py --variants # the rivals and mix-cd's variants, N = 1e6

Part 1 times draw + observe (the sampler's whole per-step host work) on synthetic snapshots.
Part 2 fine-tunes the default experiment with `random` and with `mixcd` at the same ratio,
alternating A/B/A/B in one process, and reports the ratio of mean step times.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time

import torch

from mixcd_cli.samplers import PoolInfo, create_sampler, sampler_options


def synthetic_pool(n: int, seed: int = 0) -> PoolInfo:
    g = torch.Generator().manual_seed(seed)
    # k-means ids stand in for the snapshot's clusters: the sampler's per-step cost does not depend on them
    return PoolInfo(classes=torch.randint(0, 10, (n,), generator=g), correct0=torch.rand(n, generator=g) < 0.85,
                    loss0=torch.rand(n, generator=g) * 3, conf0=torch.rand(n, generator=g),
                    clusters=lambda k, seed: torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(seed)))


def time_sampler(name: str, pool: PoolInfo, b: int, iters: int, **options) -> tuple[float, float]:
    """(µs per draw+observe, seconds to build)."""
    t0 = time.perf_counter()
    sampler = create_sampler(name, pool, b, seed=0, **options)
    build = time.perf_counter() - t0
    g = torch.Generator().manual_seed(1)
    wrong = [torch.rand(b, generator=g) < 0.3 for _ in range(16)]
    loss = [torch.rand(b, generator=g) * 2 for _ in range(16)]
    for step in range(20):  # warm-up
        sampler.observe(sampler.draw(step), wrong[step % 16], loss[step % 16])
    t0 = time.perf_counter()
    for step in range(iters):
        sampler.observe(sampler.draw(step), wrong[step % 16], loss[step % 16])
    return (time.perf_counter() - t0) / iters * 1e6, build


VARIANTS = [("random", {}), ("mixcd", {}), ("mixcd", {"estimate": "thompson"}), ("mixcd", {"memory": "recent"}),
            ("mixcd", {"adaptive_bins": True, "split_every": 50}), ("mixcd", {"partition": "kmeans"}),
            ("loss_ema", {}), ("amr", {})]


def variants(n: int, b: int, iters: int) -> None:
    """Per-step host cost of every rival and variant against random's, one pool, one run."""
    pool = synthetic_pool(n)
    print(f"## draw + observe per step (µs) of the rivals and mix-cd's variants: N = {n:,}, b = {b}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'sampler':<42} {'µs/step':>9} {'÷ random':>9} {'÷ mixcd':>9}")
    base: dict[str, float] = {}
    for name, options in VARIANTS:
        us, _ = time_sampler(name, pool, b, iters, **options)
        label = name + "".join(f" {k}={v}" for k, v in options.items())
        base.setdefault(label, us)
        print(f"{label:<42} {us:>9.1f} {us / base['random']:>9.2f} {us / base.get('mixcd', us):>9.2f}")


def part1(sizes: list[int], batches: list[int], iters: int) -> None:
    print(f"## draw + observe per step (µs), {torch.get_num_threads()} threads")
    print(f"{'pool N':>10} {'b':>5} {'random':>9} {'mixcd':>9} {'ratio':>7} {'mixcd build (s)':>16}")
    for n in sizes:
        pool = synthetic_pool(n)
        for b in batches:
            r, _ = time_sampler("random", pool, b, iters)
            m, build = time_sampler("mixcd", pool, b, iters)
            print(f"{n:>10,} {b:>5} {r:>9.1f} {m:>9.1f} {m / r:>7.2f} {build:>16.2f}")
        del pool
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB\n")


def part2(steps: int, rounds: int) -> None:
    from mixcd_cli.hydra_app import compose
    from mixcd_cli.recipes import (
        load_prior,
        plain,
        prior_checkpoint,
        settings_from,
        setup,
        snapshot_for,
    )
    from mixcd_cli.training import FineTuner, Rehearsal, TrainSettings

    os.environ.setdefault("MIXCD_PROGRESS", "0")
    cfg = compose("train", [])
    ctx = setup(cfg, run_dir=None)
    path, _ = prior_checkpoint(ctx)
    snap, _ = snapshot_for(ctx, path)
    exp = ctx.experiment
    b = round(float(cfg.trainer.mix_ratio) * int(cfg.trainer.batch_size))
    times: dict[str, list[float]] = {"random": [], "mixcd": []}
    for r in range(rounds):
        for name in ("random", "mixcd"):
            model = load_prior(ctx, path)
            options = sampler_options(plain(compose("train", [f"sampler={name}"]).sampler))
            sampler = create_sampler(name, snap.pool_info(exp.pool), b, seed=r, **options)
            settings: TrainSettings = settings_from(cfg.trainer, steps, r, "finetune", 1024,
                                                    rehearsal_batch=b)
            t0 = time.perf_counter()
            FineTuner(model, exp.ft_train, exp.ft_head(), exp.transform, ctx.device, settings, ctx.ledger,
                      Rehearsal(sampler, exp.pool, exp.prior_head(), snap.pool.correct.bool())).run()
            times[name].append((time.perf_counter() - t0) / steps * 1e3)
    rm, mm = statistics.median(times["random"]), statistics.median(times["mixcd"])
    paired = [m / r for m, r in zip(times["mixcd"], times["random"], strict=True)]
    print(f"## whole fine-tune step on the default experiment (B={cfg.trainer.batch_size}, b={b}, "
          f"{steps} steps × {rounds} rounds, alternating)")
    print(f"random: median {rm:.2f} ms/step {' '.join(f'{t:.2f}' for t in times['random'])}")
    print(f"mixcd : median {mm:.2f} ms/step {' '.join(f'{t:.2f}' for t in times['mixcd'])}")
    print(f"ratio mixcd/random: {mm / rm:.3f} (median of medians); per round: {' '.join(f'{x:.3f}' for x in paired)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip-step", action="store_true", help="only the sampler micro-benchmark")
    parser.add_argument("--step-only", action="store_true", help="only the whole-step ratio")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--variants", action="store_true", help="only the rivals' and variants' host cost")
    args = parser.parse_args()
    if args.variants:
        variants(1_000_000, 64, 2000)
        return
    if args.step_only:
        part2(200, args.rounds)
        return
    if args.quick:
        part1([10_000, 1_000_000], [64], 500)
        if not args.skip_step:
            part2(60, 2)
    else:
        part1([10_000, 1_000_000, 10_000_000], [64, 256], 2000)
        if not args.skip_step:
            part2(200, 5)


if __name__ == "__main__":
    main()
