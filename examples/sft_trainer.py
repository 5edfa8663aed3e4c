"""mix-cd in a TRL ``SFTTrainer`` script: the lines marked ``# mixcd`` are all it adds.

Prompt–completion data, as SFT scripts use it: a tiny GPT-2 (stand-in for the model folder you load) is first
taught to copy strings with a plain ``SFTTrainer``, then fine-tuned to reverse them with ``MixcdSFTTrainer``,
which prepares the rehearsal pool as it prepares the training set and mixes mix-cd's rows into every batch.
Runs offline on a CPU in about a minute:

    python examples/sft_trainer.py --sampler mixcd --ratio 0.25
"""

from __future__ import annotations

import json
import tempfile

import toy
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from mixcd_cli.hf import MixcdSFTTrainer, Rehearsal  # mixcd


def config(out: str, steps: int, seed: int, batch_size: int = 32) -> SFTConfig:
    return SFTConfig(output_dir=out, max_steps=steps, per_device_train_batch_size=batch_size, learning_rate=3e-3,
                     lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=0.0, seed=seed, max_length=64,
                     logging_steps=max(1, steps // 4), save_strategy="no", report_to="none", use_cpu=True,
                     disable_tqdm=True)


def main(argv: list[str] | None = None) -> dict[str, float]:
    a = toy.options(__doc__.splitlines()[0], argv)
    out = a.out or tempfile.mkdtemp(prefix="mixcd-sft-")
    tok = toy.tokenizer()
    old, new = Dataset.from_list(toy.pairs("copy", 2000)), Dataset.from_list(toy.pairs("reverse", 1000))

    model = toy.tiny_gpt2(tok)
    SFTTrainer(model=model, args=config(f"{out}/theta0", a.pretrain_steps, a.seed, a.batch_size), train_dataset=old,
               processing_class=tok).train()

    args = config(f"{out}/finetune", a.steps, a.seed, a.batch_size)
    trainer = MixcdSFTTrainer(model=model, args=args, train_dataset=new, processing_class=tok,
                              rehearsal=Rehearsal(pool=old, sampler=a.sampler, ratio=a.ratio, audit_every=1))  # mixcd
    before = float(trainer.mixcd.snapshot.correct.float().mean())  # θ0's exact match on the pool, from the snapshot
    trainer.train()
    collate = toy.pad_collator(tok)
    test = {op: toy.tokenized(toy.pairs(op, 300, split="test"), tok, bos=False) for op in ("copy", "reverse")}
    result = {"copy_pool_before": before, "copy_after": toy.exact_match(model, test["copy"], collate),
              "reverse_after": toy.exact_match(model, test["reverse"], collate),
              **{k: v for k, v in trainer.mixcd.logs().items() if not k.startswith("mixcd/cd_estimate")}}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
