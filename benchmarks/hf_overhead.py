"""What mix-cd costs inside a Hugging Face Trainer, against the same trainer with random rehearsal.

One process, one thread, the tiny GPT-2 of examples/toy.py on generated copy (pool) and reverse (fine-tuning)
rows: ``MixcdTrainer`` with ``sampler=random`` and with ``sampler=mixcd`` at the same ratio, and a plain
``Trainer`` without rehearsal, each ``--steps`` optimiser steps, in ``--repeats`` alternating rounds after an
untimed warm-up round. Prints tokens/s (fine-tune + rehearsal tokens the ledger counted, over the time of
``train()`` alone) and the ratio mixcd / random: the integration's own overhead, since both mix the same number
of rows through the same code and differ only in what the sampler does. The snapshot's time (one pass of θ0 over
the pool, at init) is printed beside, as a pass a run needs once.

    python benchmarks/hf_overhead.py --steps 200 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import toy  # noqa: E402
from transformers import Trainer, TrainingArguments  # noqa: E402

from mixcd_cli.hf import MixcdTrainer, Rehearsal  # noqa: E402


def args(out: str, steps: int) -> TrainingArguments:
    return TrainingArguments(output_dir=out, max_steps=steps, per_device_train_batch_size=32, learning_rate=1e-3,
                             lr_scheduler_type="constant", save_strategy="no", report_to="none", use_cpu=True,
                             disable_tqdm=True, logging_steps=10**9, seed=1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--ratio", type=float, default=0.25)
    a = p.parse_args()
    torch.set_num_threads(1)
    tok = toy.tokenizer()
    collate = toy.pad_collator(tok)
    old, new = toy.tokenized(toy.pairs("copy", 4000), tok), toy.tokenized(toy.pairs("reverse", 2000), tok)
    theta0 = toy.tiny_gpt2(tok)
    Trainer(model=theta0, args=args(tempfile.mkdtemp(), 300), train_dataset=old, data_collator=collate).train()
    state = {k: v.clone() for k, v in theta0.state_dict().items()}
    out = tempfile.mkdtemp(prefix="mixcd-hf-bench-")

    def run(kind: str) -> tuple[float, float, float]:
        """(tokens/s of train(), rows/s, snapshot seconds) of one fresh trainer of ``kind``."""
        model = toy.tiny_gpt2(tok)
        model.load_state_dict(state)
        t0 = time.perf_counter()
        if kind == "plain":
            trainer = Trainer(model=model, args=args(out, a.steps), train_dataset=new, data_collator=collate)
        else:
            trainer = MixcdTrainer(model=model, args=args(out, a.steps), train_dataset=new, data_collator=collate,
                                   rehearsal=Rehearsal(pool=old, sampler=kind, ratio=a.ratio))
        snapshot = time.perf_counter() - t0
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
        if kind == "plain":
            rows, tokens = a.steps * 32, None
        else:
            ledger = trainer.mixcd.ledger
            rows = ledger.forward["finetune"] + ledger.forward["rehearsal"]
            tokens = ledger.forward_tokens["finetune"] + ledger.forward_tokens["rehearsal"]
        return (tokens / seconds if tokens else float("nan")), rows / seconds, snapshot

    kinds = ("random", "mixcd", "plain")
    for kind in kinds:  # warm-up: first-call costs (allocations, imports) out of the timed rounds
        run(kind)
    got: dict[str, list[tuple[float, float, float]]] = {k: [] for k in kinds}
    for _ in range(a.repeats):
        for kind in kinds:
            got[kind].append(run(kind))
    med = {k: [statistics.median(x[i] for x in v) for i in range(3)] for k, v in got.items()}
    print(f"{a.steps} steps, B = 32, r = {a.ratio}, {a.repeats} alternating rounds, median; 1 thread")
    print(f"{'trainer':<22}{'tokens/s':>10}{'rows/s':>10}{'init (s)':>10}")
    for kind in kinds:
        tokens, rows, init = med[kind]
        print(f"{kind:<22}{tokens:>10.0f}{rows:>10.0f}{init:>10.2f}")
    ratios = [m[0] / r[0] for m, r in zip(got["mixcd"], got["random"], strict=True)]
    print(f"mixcd / random, tokens/s: {statistics.median(ratios):.3f} "
          f"(rounds: {', '.join(f'{x:.3f}' for x in ratios)})")
    print(f"trainer init: mixcd {med['mixcd'][2]:.2f} s (with its snapshot pass over {len(old)} pool rows), "
          f"random {med['random'][2]:.2f} s (no snapshot)")


if __name__ == "__main__":
    main()
