"""One rank of a two-process MixcdTrainer run (torchrun, gloo on CPU): writes what its sampler drew and believes."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))

import torch  # noqa: E402
import toy  # noqa: E402
from transformers import TrainerCallback, TrainingArguments  # noqa: E402

from mixcd_cli.hf import MixcdTrainer, Rehearsal  # noqa: E402

out = Path(sys.argv[1])
tok = toy.tokenizer()
model = toy.tiny_gpt2(tok)
old, new = toy.tokenized(toy.pairs("copy", 200), tok), toy.tokenized(toy.pairs("reverse", 200), tok)
collate = toy.pad_collator(tok)
torch.manual_seed(0)  # θ0: the same 120 copy steps on both ranks, so some pool rows are right
opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
for i in range(120):
    loss = model(**collate([old[(i * 32 + j) % len(old)] for j in range(32)])).loss
    opt.zero_grad()
    loss.backward()
    opt.step()
args = TrainingArguments(output_dir=str(out), max_steps=5, per_device_train_batch_size=8, learning_rate=1e-3,
                         save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True, logging_steps=5)
trainer = MixcdTrainer(model=model, args=args, train_dataset=new, data_collator=toy.pad_collator(tok),
                       rehearsal=Rehearsal(pool=old, sampler="mixcd", ratio=0.25, record_draws=True))
kept: list[dict] = []


class Keep(TrainerCallback):
    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001, ANN201
        kept.append(dict(logs or {}))


trainer.add_callback(Keep())
trainer.train()
rank = int(os.environ["RANK"])
(out / f"rank{rank}.json").write_text(json.dumps({
    "draws": [d.tolist() for d in trainer.mixcd.draws], "seen": trainer.mixcd.sampler.seen.tolist(),
    "cd": trainer.mixcd.sampler.cd.tolist(), "logs": kept, "world": trainer.mixcd.world}))
