"""Generation tasks on this machine, tiny decoder and encoder-decoder (model=lm_tiny, t5_tiny): what mix-cd costs
per fine-tuning token against random, the snapshot against plain teacher-forced inference, batched greedy
decoding against one row at a time, and the token ledger against tokens counted by a forward hook.

Each pair is run once untimed (the allocator's and the kernels' first-call costs), then timed in one process,
alternating, --repeats times; printed: medians and the ratio (one run's ratios are the numbers to quote, not
absolute times). Targets (issue 26): mixcd/random tokens/s >= 0.98,
snapshot/plain >= 0.9.

    python benchmarks/generation_bench.py [--steps 300] [--repeats 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from mixcd_cli.data import Task, TokenTransform
from mixcd_cli.generation.data import encode_generation, load_generated
from mixcd_cli.generation.models import GenerationNet, build_lm
from mixcd_cli.generation.scoring import DECODE_MARGIN, decode_rows
from mixcd_cli.metrics import Ledger
from mixcd_cli.samplers import PoolInfo, create_sampler
from mixcd_cli.sources import PAD
from mixcd_cli.training import FineTuner, Rehearsal, TrainSettings, predict_task

GPT = {"model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": 64, "resid_pdrop": 0.0,
       "embd_pdrop": 0.0, "attn_pdrop": 0.0}
T5 = {"model_type": "t5", "d_model": 64, "d_ff": 128, "d_kv": 32, "num_layers": 2, "num_decoder_layers": 2,
      "num_heads": 2, "dropout_rate": 0.0}


class _Experiment:
    """The two tasks `encode_generation` encodes in place: a prior pool and one fine-tune stage."""

    def __init__(self, kind: str) -> None:
        def task(name: str, operation: str, train: bool) -> Task:
            src = load_generated(operation=operation, kind=kind, train=train, n_train=4000, n_test=500)
            return Task(name, src, torch.arange(len(src)), src.targets, 0, {"name": name})

        self.pool, self.prior_test = task("prior", "copy", True), task("prior", "copy", False)
        stage = type("Stage", (), {})()
        stage.train, stage.test = task("ft", "reverse", True), task("ft", "reverse", False)
        self.stages = [stage]

    def tasks(self) -> list[Task]:
        return [self.pool, self.prior_test, self.stages[0].train, self.stages[0].test]


def setup(kind: str, device: torch.device) -> tuple[_Experiment, GenerationNet]:
    exp = _Experiment(kind)
    lm = encode_generation(exp, kind, None, None, 64, 64)
    torch.manual_seed(0)
    net = build_lm(kind, lm.vocab_size, lm.pad_id, lm.eos_id, lm.bos_id, config=GPT if kind == "causal_lm" else T5)
    return exp, net.to(device)


def pool_info(exp: _Experiment, net: GenerationNet, device: torch.device) -> PoolInfo:
    preds = predict_task(net, exp.pool, "shared", TokenTransform(), device, 256)
    # a random model gets nothing right: call the lower-loss half "prior-correct" so mix-cd has rows to bin
    correct = preds.loss <= preds.loss.median()
    return PoolInfo(correct0=correct, loss0=preds.loss, conf0=preds.conf, classes=None,
                    clusters=lambda k, seed: torch.arange(len(exp.pool)) % k)


def fine_tune(exp: _Experiment, net: GenerationNet, sampler: str, info: PoolInfo, steps: int,
              device: torch.device) -> tuple[float, Ledger]:
    """Seconds of a fine-tuning of ``steps`` at r = 1/4 (fresh weights each time) and its ledger."""
    state = {k: v.clone() for k, v in net.state_dict().items()}
    ledger = Ledger()
    settings = TrainSettings(steps=steps, batch_size=32, rehearsal_batch=8, log_every=steps, lr=1e-3,
                             optimizer="adamw")
    s = create_sampler(sampler, info, 8, seed=0)
    t0 = time.perf_counter()
    FineTuner(net, exp.stages[0].train, "shared", TokenTransform(), device, settings, ledger,
              Rehearsal(s, exp.pool, "shared", info.correct0)).run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    net.load_state_dict(state)
    return seconds, ledger


@torch.no_grad()
def plain_inference(net: GenerationNet, task: Task, batch: int, device: torch.device) -> None:
    net.eval()
    for start in range(0, len(task), batch):
        b = task.batch(torch.arange(start, min(start + batch, len(task))))
        net(b.inputs.to(device)).float().log_softmax(-1)
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--decode-rows", type=int, default=64)
    args = parser.parse_args()
    for kind in ("causal_lm", "seq2seq"):
        bench_kind(kind, args, torch.device(args.device))


def bench_kind(kind: str, args: argparse.Namespace, device: torch.device) -> None:
    """Every measurement for one task kind, printed as it is made."""
    exp, net = setup(kind, device)
    info = pool_info(exp, net, device)
    times: dict[str, list[float]] = {"random": [], "mixcd": []}
    tokens: dict[str, int] = {}
    for sampler in times:
        fine_tune(exp, net, sampler, info, 5, device)  # warm-up, untimed
    for _ in range(args.repeats):
        for sampler in ("random", "mixcd"):
            seconds, ledger = fine_tune(exp, net, sampler, info, args.steps, device)
            times[sampler].append(seconds)
            tokens[sampler] = ledger.forward_tokens["finetune"] + ledger.forward_tokens["rehearsal"]
    rate = {s: tokens[s] / statistics.median(times[s]) for s in times}
    print(f"{kind}: fine-tuning tokens/s random {rate['random']:,.0f}, mixcd {rate['mixcd']:,.0f}, "
          f"ratio mixcd/random {rate['mixcd'] / rate['random']:.3f} (median of {args.repeats}, {args.steps} "
          "steps, r = 1/4)")

    snap, plain = [], []
    predict_task(net, exp.pool, "shared", TokenTransform(), device, 256)  # warm-up, untimed
    plain_inference(net, exp.pool, 256, device)
    for _ in range(args.repeats):
        snap.append(timed(lambda: predict_task(net, exp.pool, "shared", TokenTransform(), device, 256)))
        plain.append(timed(lambda: plain_inference(net, exp.pool, 256, device)))
    print(f"{kind}: snapshot pass {statistics.median(snap):.2f} s, plain teacher-forced inference "
          f"{statistics.median(plain):.2f} s, speed ratio snapshot/plain "
          f"{statistics.median(plain) / statistics.median(snap):.3f}")

    src = exp.prior_test.source
    rows = list(range(min(args.decode_rows, len(src))))
    prompts = [src.prompts[i] for i in rows]
    targets = [src.target_ids[i] for i in rows]
    net.eval()
    # one limit for every row: by default a batch may run to its own longest target, so an untrained model that
    # never stops would give rows of other lengths alone than batched
    limit = max(len(t) for t in targets) + 1 + DECODE_MARGIN
    batched, single = [], []
    decode_rows(net.greedy, prompts, targets, src.eos_id, 64, limit)  # warm-up, untimed
    for _ in range(args.repeats):
        batched.append(timed(lambda: decode_rows(net.greedy, prompts, targets, src.eos_id, 64, limit)))
        single.append(timed(lambda: decode_rows(net.greedy, prompts, targets, src.eos_id, 1, limit)))
    differ = sum(a != b for a, b in zip(decode_rows(net.greedy, prompts, targets, src.eos_id, 64, limit),
                                        decode_rows(net.greedy, prompts, targets, src.eos_id, 1, limit),
                                        strict=True))
    speed_up = statistics.median(single) / statistics.median(batched)
    print(f"{kind}: greedy decoding of {len(rows)} rows batched {statistics.median(batched):.2f} s, one at a time "
          f"{statistics.median(single):.2f} s, speed-up {speed_up:.1f}x ({differ} of them decoded differently; "
          "near-ties of an untrained model under another padding are the only way they may)")

    counted = {"tokens": 0}
    original = GenerationNet.forward

    def hooked(self: GenerationNet, x: torch.Tensor, *a: Any, **k: Any) -> Any:
        counted["tokens"] += int((x != PAD).sum())
        return original(self, x, *a, **k)

    GenerationNet.forward = hooked  # type: ignore[method-assign]
    try:
        _, ledger = fine_tune(exp, net, "mixcd", info, 10, device)
    finally:
        GenerationNet.forward = original  # type: ignore[method-assign]
    charged = sum(ledger.forward_tokens.values())
    print(f"{kind}: token ledger {charged:,} forward tokens, forward hook {counted['tokens']:,} "
          f"(equal: {charged == counted['tokens']})")


if __name__ == "__main__":
    main()
