"""mix-cd in your own PyTorch loop, with nothing of mixcd but its public API (`mixcd_cli.api`).

    python examples/plain_loop.py --sampler mixcd --ratio 0.25
"""

from __future__ import annotations

import json

import torch
import toy

from mixcd_cli import api


def main(argv: list[str] | None = None) -> dict[str, float]:
    a = toy.options(__doc__.splitlines()[0], argv)
    torch.manual_seed(a.seed)
    tok = toy.tokenizer()
    collate = toy.pad_collator(tok)
    old, new = toy.tokenized(toy.pairs("copy", 2000), tok), toy.tokenized(toy.pairs("reverse", 1000), tok)
    model = toy.tiny_gpt2(tok, a.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    objective = api.objective("causal_lm")

    def batches(rows: list[dict], steps: int):  # noqa: ANN202 - a local generator
        g = torch.Generator().manual_seed(a.seed)
        for _ in range(steps):
            yield collate([rows[i] for i in torch.randint(len(rows), (a.batch_size,), generator=g).tolist()])

    def step(batch: dict[str, torch.Tensor]) -> torch.Tensor:  # one optimiser step; per-row losses back
        outputs, targets = api.hf_forward(model, batch, "causal_lm")
        per_row = objective.loss(outputs, targets)
        optimizer.zero_grad()
        per_row.mean().backward()
        optimizer.step()
        return objective.wrong(outputs.detach(), targets)

    for batch in batches(old, a.pretrain_steps):  # θ0: stand-in for the pretrained model you load
        step(batch)

    snapshot = api.compute_snapshot(model, old, collate, kind="causal_lm")  # θ0 over the pool, one pass
    b = api.rehearsal_batch(a.sampler, a.ratio, a.batch_size)
    sampler = api.create_sampler(a.sampler, snapshot, b, seed=a.seed)
    audit = api.HitAudit(snapshot.correct)
    for t, batch in enumerate(batches(new, a.steps)):
        rows = sampler.draw(t)
        drawn = collate([old[i] for i in rows.tolist()])
        width = max(batch["input_ids"].shape[1], drawn["input_ids"].shape[1])
        fill = {"input_ids": tok.pad_token_id, "attention_mask": 0, "labels": -100}
        joined = {k: torch.cat([torch.nn.functional.pad(x[k], (0, width - x[k].shape[1]), value=v)
                                for x in (batch, drawn)]) for k, v in fill.items()}
        wrong = step(joined)[a.batch_size:]  # the free signal: the same forward's predictions on the drawn rows
        sampler.observe(rows, wrong)
        audit.add(rows, wrong)

    after = api.compute_snapshot(model, old, collate, kind="causal_lm")
    result = {"copy_before": float(snapshot.correct.float().mean()), "copy_after": float(after.correct.float().mean()),
              "signal_rate": audit.quality()["signal_rate"]}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
