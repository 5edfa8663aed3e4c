"""mix-cd in a Hugging Face ``Trainer`` script: the lines marked ``# mixcd`` are all it adds.

θ0 is a tiny GPT-2 taught to copy strings (stand-in for the pretrained model you load); it is then fine-tuned
to reverse them, rehearsing copy rows with mix-cd. Prints exact match on both tasks, the audited hit rate and
the ledger. Runs offline on a CPU in about a minute:

    python examples/hf_trainer.py --sampler mixcd --ratio 0.25
"""

from __future__ import annotations

import json
import tempfile

import toy
from transformers import Trainer, TrainingArguments

from mixcd_cli.hf import MixcdTrainer, Rehearsal  # mixcd


def arguments(out: str, steps: int, seed: int, batch_size: int = 32, **extra: object) -> TrainingArguments:
    return TrainingArguments(output_dir=out, max_steps=steps, per_device_train_batch_size=batch_size,
                             learning_rate=3e-3, lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=0.0,
                             seed=seed, logging_steps=max(1, steps // 4), save_strategy="no", report_to="none",
                             use_cpu=True, disable_tqdm=True, **extra)


def main(argv: list[str] | None = None) -> dict[str, float]:
    a = toy.options(__doc__.splitlines()[0], argv)
    out = a.out or tempfile.mkdtemp(prefix="mixcd-hf-trainer-")
    tok = toy.tokenizer()
    collate = toy.pad_collator(tok)
    old, new = toy.tokenized(toy.pairs("copy", 2000), tok), toy.tokenized(toy.pairs("reverse", 1000), tok)
    old_test = toy.tokenized(toy.pairs("copy", 300, split="test"), tok)
    new_test = toy.tokenized(toy.pairs("reverse", 300, split="test"), tok)

    model = toy.tiny_gpt2(tok)
    Trainer(model=model, args=arguments(f"{out}/theta0", a.pretrain_steps, a.seed, a.batch_size), train_dataset=old,
            data_collator=collate).train()
    before = toy.exact_match(model, old_test, collate)

    args = arguments(f"{out}/finetune", a.steps, a.seed, a.batch_size)
    trainer = MixcdTrainer(model=model, args=args, train_dataset=new, data_collator=collate,
                           rehearsal=Rehearsal(pool=old, sampler=a.sampler, ratio=a.ratio, audit_every=1))  # mixcd
    trainer.train()
    result = {"copy_before": before, "copy_after": toy.exact_match(model, old_test, collate),
              "reverse_after": toy.exact_match(model, new_test, collate),
              **{k: v for k, v in trainer.mixcd.logs().items() if not k.startswith("mixcd/cd_estimate")}}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
