"""mix-cd inside Hugging Face's Trainer and TRL's SFTTrainer (mixcd_cli.hf): no extra pass, draws per micro-batch,
resume, refusals, and the same rows and weights as mixcd's own loop."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

import toy  # noqa: E402
from transformers import Trainer, TrainerCallback, TrainingArguments  # noqa: E402

from mixcd_cli import api  # noqa: E402
from mixcd_cli.errors import MixcdError  # noqa: E402
from mixcd_cli.hf import MixcdTrainer, Rehearsal  # noqa: E402

B = 16


@pytest.fixture(scope="module")
def theta0() -> tuple[object, dict[str, torch.Tensor]]:
    """A tiny GPT-2 taught to copy for 150 steps: right on some pool rows, wrong on others."""
    tok = toy.tokenizer()
    model = toy.tiny_gpt2(tok)
    rows, collate = toy.tokenized(toy.pairs("copy", 400), tok), toy.pad_collator(tok)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        batch = collate([rows[i] for i in torch.randint(len(rows), (32,), generator=g).tolist()])
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return tok, copy.deepcopy(model.state_dict())


def _model(theta0):  # noqa: ANN001, ANN202
    tok, state = theta0
    model = toy.tiny_gpt2(tok)
    model.load_state_dict(state)
    return model


def _args(out: Path, steps: int, **extra: object) -> TrainingArguments:
    base = {"output_dir": str(out), "max_steps": steps, "per_device_train_batch_size": B, "learning_rate": 2e-3,
            "lr_scheduler_type": "constant", "weight_decay": 0.0, "max_grad_norm": 0.0, "seed": 3,
            "optim": "adamw_torch", "save_strategy": "no", "report_to": "none", "use_cpu": True,
            "disable_tqdm": True, "logging_steps": 1000}
    return TrainingArguments(**{**base, **extra})


def _data(theta0, n_old: int = 400, n_new: int = 200):  # noqa: ANN001, ANN202
    tok, _ = theta0
    return toy.tokenized(toy.pairs("copy", n_old), tok), toy.tokenized(toy.pairs("reverse", n_new), tok)


def _trainer(theta0, out: Path, steps: int, sampler: str = "mixcd", ratio: float = 0.25, cls: type = MixcdTrainer,
             model=None, args_extra: dict | None = None, eval_dataset=None, **plan: object):  # noqa: ANN001, ANN202
    old, new = _data(theta0)
    return cls(model=model if model is not None else _model(theta0), args=_args(out, steps, **(args_extra or {})),
               train_dataset=new, eval_dataset=eval_dataset, data_collator=toy.pad_collator(theta0[0]),
               rehearsal=Rehearsal(pool=old, sampler=sampler, ratio=ratio, record_draws=True, **plan))


class Forwards:
    """Counts the model's forward calls."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.n = 0
        model.register_forward_hook(self._count)

    def _count(self, *_: object) -> None:
        self.n += 1


@pytest.mark.parametrize("audit_every", [0, 1])
def test_one_forward_per_micro_batch_and_one_more_per_audit(theta0, tmp_path: Path, audit_every: int) -> None:
    model = _model(theta0)
    trainer = _trainer(theta0, tmp_path, 6, model=model, audit_every=audit_every)
    counter = Forwards(model)  # after init: the snapshot's pass is not a training forward
    trainer.train()
    assert len(trainer.mixcd.draws) == 6
    assert counter.n == 6 * (1 + audit_every)
    ledger = trainer.mixcd.ledger
    assert ledger.forward["rehearsal"] == ledger.backward["rehearsal"] == 6 * 4
    assert ledger.forward["finetune"] == 6 * B
    assert ledger.forward["audit"] == 6 * 4 * audit_every
    assert ledger.forward["snapshot"] == 400  # θ0's pass over the pool, charged where it was made
    # plain fine-tuning with the same trainer makes exactly as many forwards: the free signal costs none
    plain_model = _model(theta0)
    plain = Trainer(model=plain_model, args=_args(tmp_path / "plain", 6), train_dataset=_data(theta0)[1],
                    data_collator=toy.pad_collator(theta0[0]))
    plain_counter = Forwards(plain_model)
    plain.train()
    assert plain_counter.n == 6


def test_gradient_accumulation_draws_once_per_micro_batch(theta0, tmp_path: Path) -> None:
    trainer = _trainer(theta0, tmp_path, 3, args_extra={"gradient_accumulation_steps": 2})
    trainer.train()
    assert trainer.state.global_step == 3
    assert len(trainer.mixcd.draws) == 6 and trainer.mixcd.step == 6
    assert all(len(rows) == 4 for rows in trainer.mixcd.draws)


def test_accumulated_micro_batches_make_the_same_step_as_one_batch(theta0, tmp_path: Path) -> None:
    """Two accumulated micro-batches of 8 rows (+ 4 drawn each) take the same SGD step as one batch of 16 (+ 8
    drawn) over the same rows: each micro-batch's mean is divided by the accumulation steps. A missing or a
    double division moves the weights by twice or half as much."""
    rows = list(range(16))

    class Ordered(MixcdTrainer):
        def _get_train_sampler(self, train_dataset=None):  # noqa: ANN001, ANN202
            return FixedOrder(rows)

    moved = []
    for bs, accumulation in ((B, 1), (B // 2, 2)):
        model = _model(theta0)
        trainer = _trainer(theta0, tmp_path / f"ga{accumulation}", 1, sampler="random", ratio=0.5, model=model,
                           cls=Ordered, args_extra={"per_device_train_batch_size": bs, "learning_rate": 0.5,
                                                    "gradient_accumulation_steps": accumulation, "optim": "sgd"})
        trainer.train()
        if moved:  # the same rehearsal rows: the random sampler's generator gives 4 + 4 what it gives as 8
            assert torch.cat(trainer.mixcd.draws).tolist() == torch.cat(moved[0][1]).tolist()
        moved.append(({k: v - theta0[1][k] for k, v in model.state_dict().items()}, trainer.mixcd.draws))
    for key, delta in moved[0][0].items():
        torch.testing.assert_close(moved[1][0][key], delta, rtol=1e-4, atol=1e-6)
    assert max(float(d.abs().max()) for d in moved[0][0].values()) > 1e-3


def test_evaluation_draws_nothing_and_is_the_trainers_own(theta0, tmp_path: Path) -> None:
    old, new = _data(theta0)
    trainer = _trainer(theta0, tmp_path, 4, args_extra={"eval_strategy": "steps", "eval_steps": 2},
                       eval_dataset=new[:32])
    trainer.train()
    assert len(trainer.mixcd.draws) == 4 and trainer.mixcd.step == 4
    mine = trainer.evaluate()["eval_loss"]
    plain = Trainer(model=trainer.model, args=_args(tmp_path / "plain", 1), eval_dataset=new[:32],
                    data_collator=toy.pad_collator(theta0[0])).evaluate()["eval_loss"]
    assert mine == pytest.approx(plain, rel=1e-6)
    assert len(trainer.mixcd.draws) == 4


def test_resuming_with_a_snapshot_of_another_model_is_refused(theta0, tmp_path: Path) -> None:
    first = _trainer(theta0, tmp_path, 2, args_extra={"save_strategy": "steps", "save_steps": 2})
    first.train()
    later = _trainer(theta0, tmp_path, 4, model=first.model)  # the checkpoint's weights taken for θ0
    with pytest.raises(MixcdError, match="drawn with a snapshot of another model"):
        later.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))


def test_joining_keeps_the_collators_padding_side() -> None:
    from mixcd_cli.hf import join_batches

    left = {"input_ids": torch.tensor([[0, 5, 6]]), "attention_mask": torch.tensor([[0, 1, 1]]),
            "labels": torch.tensor([[-100, -100, 6]])}
    drawn = {"input_ids": torch.tensor([[7, 8, 9, 4]]), "attention_mask": torch.tensor([[1, 1, 1, 1]]),
             "labels": torch.tensor([[-100, 8, 9, 4]])}
    joined = join_batches(left, drawn, pad_id=0, left=True)
    assert joined["input_ids"].tolist() == [[0, 0, 5, 6], [7, 8, 9, 4]]
    assert joined["attention_mask"].tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]
    assert joined["labels"].tolist() == [[-100, -100, -100, 6], [-100, 8, 9, 4]]
    right = join_batches(drawn, {k: v[:, 1:] for k, v in drawn.items()}, pad_id=0)
    assert right["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]


class StopAt(TrainerCallback):
    """Kills the run after step ``at`` (an exception, as a SIGKILL would leave it: mid-run, nothing saved after)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
        if state.global_step == self.at:
            raise KeyboardInterrupt


def test_resume_from_checkpoint_gives_the_same_draws_and_weights(theta0, tmp_path: Path) -> None:
    save = {"save_strategy": "steps", "save_steps": 4}
    whole = _trainer(theta0, tmp_path / "whole", 8, args_extra=save, audit_every=1)
    whole.train()
    killed = _trainer(theta0, tmp_path / "killed", 8, args_extra=save, audit_every=1)
    killed.add_callback(StopAt(6))
    with pytest.raises(KeyboardInterrupt):
        killed.train()
    resumed = _trainer(theta0, tmp_path / "killed", 8, args_extra=save, audit_every=1)
    assert sorted(p.name for p in (tmp_path / "killed").glob("checkpoint-*")) == ["checkpoint-4"]
    resumed.train(resume_from_checkpoint=True)  # the newest checkpoint, as `--resume` scripts pass it
    assert resumed.mixcd.step == 8
    for a, b in zip(whole.mixcd.draws[4:], resumed.mixcd.draws, strict=True):
        assert torch.equal(a, b)
    assert whole.mixcd.audit.counts == resumed.mixcd.audit.counts
    assert whole.mixcd.ledger.counters() == resumed.mixcd.ledger.counters()
    for key, value in whole.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value)


def test_a_checkpoint_without_the_sampler_state_is_refused(theta0, tmp_path: Path) -> None:
    plain = Trainer(model=_model(theta0), args=_args(tmp_path, 2, save_strategy="steps", save_steps=2),
                    train_dataset=_data(theta0)[1], data_collator=toy.pad_collator(theta0[0]))
    plain.train()
    trainer = _trainer(theta0, tmp_path, 4)
    with pytest.raises(MixcdError, match=r"checkpoint-2 has no rehearsal state \(mixcd_rehearsal_rank0.pt"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))


def test_refusals(theta0, tmp_path: Path) -> None:
    old, new = _data(theta0)
    with pytest.raises(MixcdError, match="ratio=0.01 with batch_size=16 mixes in no sample"):
        _trainer(theta0, tmp_path, 2, ratio=0.01)
    with pytest.raises(MixcdError, match="sampler=mir spends extra selection passes"):
        _trainer(theta0, tmp_path, 2, sampler="mir")
    with pytest.raises(MixcdError, match="unknown sampler 'nope'"):
        _trainer(theta0, tmp_path, 2, sampler="nope")
    bad_pool = [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in old]  # no attention mask
    with pytest.raises(MixcdError, match="do not match the collator's format"):
        MixcdTrainer(model=_model(theta0), args=_args(tmp_path, 2), train_dataset=new,
                     data_collator=lambda rows: {k: torch.tensor([r[k] for r in rows]) for k in rows[0]},
                     rehearsal=Rehearsal(pool=bad_pool[:1] * 4, ratio=0.25))
    other = toy.tiny_gpt2(theta0[0], seed=5)
    snap_other_model = api.compute_snapshot(other, old, toy.pad_collator(theta0[0]), kind="causal_lm")
    with pytest.raises(MixcdError, match="snapshot was made for another model"):
        _trainer(theta0, tmp_path, 2, snapshot=snap_other_model)
    snap_other_pool = api.compute_snapshot(_model(theta0), old[::-1], toy.pad_collator(theta0[0]), kind="causal_lm")
    with pytest.raises(MixcdError, match="snapshot was made for another pool"):
        _trainer(theta0, tmp_path, 2, snapshot=snap_other_pool)


def test_a_sampler_state_of_another_pool_is_refused(theta0, tmp_path: Path) -> None:
    trainer = _trainer(theta0, tmp_path, 2)
    state = trainer.mixcd.sampler.state_dict()
    tok = theta0[0]
    smaller = toy.tokenized(toy.pairs("copy", 300), tok)
    snap = api.compute_snapshot(_model(theta0), smaller, toy.pad_collator(tok), kind="causal_lm")
    other = api.create_sampler("mixcd", snap, 4, 0)
    with pytest.raises(MixcdError, match=r"saved for another pool \(400 rows"):
        other.load_state_dict(state)
    same_size = toy.tokenized(toy.pairs("copy", 400, seed=99), tok)
    snap = api.compute_snapshot(_model(theta0), same_size, toy.pad_collator(tok), kind="causal_lm")
    with pytest.raises(MixcdError, match="saved for another pool"):
        api.create_sampler("mixcd", snap, 4, 0).load_state_dict(state)


def test_logs_carry_hit_rate_estimates_and_ledger(theta0, tmp_path: Path) -> None:
    seen: list[dict[str, float]] = []

    class Keep(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001, ANN201
            seen.append(dict(logs or {}))

    trainer = _trainer(theta0, tmp_path, 4, args_extra={"logging_steps": 2}, audit_every=1)
    trainer.add_callback(Keep())
    trainer.train()
    steps = [log for log in seen if "loss" in log]
    assert len(steps) == 2
    for log in steps:
        assert 0.0 <= log["mixcd/hit_rate"] <= 1.0
        assert any(k.startswith("mixcd/cd_estimate/bin") for k in log)
    assert steps[-1]["mixcd/rehearsal_rows"] == 4 * 4
    assert steps[-1]["mixcd/audit_rows"] == 4 * 4


def test_snapshot_cache_is_reused_and_verified(theta0, tmp_path: Path) -> None:
    old, _ = _data(theta0)
    collate = toy.pad_collator(theta0[0])
    first = api.compute_snapshot(_model(theta0), old, collate, kind="causal_lm", cache_dir=tmp_path)
    ledger = api.Ledger()
    again = api.compute_snapshot(_model(theta0), old, collate, kind="causal_lm", cache_dir=tmp_path, ledger=ledger)
    assert ledger.forward["snapshot"] == 0  # read, not recomputed
    assert torch.equal(first.correct, again.correct) and 0 < int(first.correct.sum()) < len(old)
    column = next(tmp_path.glob("*/pool_loss.npy"))
    column.write_bytes(column.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(MixcdError, match="does not match its checksum"):
        api.compute_snapshot(_model(theta0), old, collate, kind="causal_lm", cache_dir=tmp_path)


def test_lora_adapters_train_with_rehearsal(theta0, tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    base = _model(theta0)
    snap = api.compute_snapshot(base, _data(theta0)[0], toy.pad_collator(theta0[0]), kind="causal_lm")
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"],
                                                      fan_in_fan_out=True))
    before = {k: v.clone() for k, v in model.state_dict().items() if "lora_B" in k}
    trainer = _trainer(theta0, tmp_path, 3, model=model, snapshot=snap)  # θ0's snapshot fits the adapted model
    trainer.train()
    assert len(trainer.mixcd.draws) == 3
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items() if k in before)


# ----------------------------------------------------------------------------------------- equivalence


class FixedOrder(torch.utils.data.Sampler):
    """The rows of mixcd's own data order, handed to the Trainer (whose own order is its seeded RandomSampler)."""

    def __init__(self, rows: list[int]) -> None:
        self.rows = rows

    def __iter__(self):  # noqa: ANN204
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)


@pytest.mark.parametrize("sampler", ["random", "mixcd"])
def test_trainer_and_mixcd_loop_draw_the_same_rows_and_reach_the_same_weights(theta0, tmp_path: Path,
                                                                               sampler: str) -> None:
    from mixcd_cli.data import Task, TokenTransform
    from mixcd_cli.generation.data import GenTokenSource
    from mixcd_cli.generation.models import GenerationNet
    from mixcd_cli.generation.tokens import PAD
    from mixcd_cli.metrics import Ledger
    from mixcd_cli.runtime import derive_seed
    from mixcd_cli.training import FineTuner, TrainSettings
    from mixcd_cli.training import Rehearsal as LoopRehearsal
    from mixcd_cli.training.batches import BatchOrder, order_seed

    tok = theta0[0]
    old_pairs, new_pairs = toy.pairs("copy", 400), toy.pairs("reverse", 200)
    # SGD: Adam divides each gradient by its own size, so on weights whose gradient is zero but for rounding (GPT-2's
    # key biases: a bias added to every key shifts all of a query's scores alike) it turns 1e-10 of float noise into
    # steps of ±lr, and the two loops' weights part there after one step while agreeing everywhere else
    steps, b, seed, lr = 10, 4, 3, 0.2

    class OneWider(GenTokenSource):
        """mixcd's layout, one padding column wider: the width of the Trainer's rows, which carry ``</s>`` as an
        input too. Same widths, same matrix shapes, so both loops round alike (a near-tie that rounds the other way
        flips a row's "wrong now", and mix-cd's next draws follow it)."""

        def _layout(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            x, y = super()._layout(index)
            return (torch.nn.functional.pad(x, (0, 1), value=PAD),
                    torch.nn.functional.pad(y, (0, 1), value=-100))

    def task(pairs: list[dict[str, str]], name: str) -> Task:
        source = OneWider([tok.encode(p["prompt"]) for p in pairs], [tok.encode(p["completion"]) for p in pairs],
                                "causal_lm", tok.eos_token_id, tok.bos_token_id, tok.pad_token_id, name, name)
        return Task(name, source, torch.arange(len(source)), source.targets.clone(), 0, {"name": name})

    # mixcd's own loop
    lm = _model(theta0)
    snap = api.compute_snapshot(lm, toy.tokenized(old_pairs, tok), toy.pad_collator(tok), kind="causal_lm")
    loop_sampler = api.create_sampler(sampler, snap, b, derive_seed(seed, "sampler"))
    loop_draws: list[torch.Tensor] = []
    draw = loop_sampler.draw
    loop_sampler.draw = lambda step, ctx=None: loop_draws.append(draw(step, ctx)) or loop_draws[-1]
    settings = TrainSettings(steps=steps, batch_size=B, rehearsal_batch=b, optimizer="sgd", momentum=0.0, lr=lr,
                             schedule="constant", seed=seed, log_every=steps, audit_every=0, amp="off")
    net = GenerationNet(lm, "causal_lm", tok.pad_token_id, tok.eos_token_id, tok.bos_token_id)
    pool = task(old_pairs, "old")
    FineTuner(net, task(new_pairs, "new"), "new", TokenTransform(), torch.device("cpu"), settings, Ledger(),
              LoopRehearsal(loop_sampler, pool, "new", snap.correct)).run()

    # the Trainer, fed mixcd's data order
    order = BatchOrder(len(new_pairs), B, order_seed(settings))
    rows = [i for _ in range(steps) for i in order.next().tolist()]

    class Ordered(MixcdTrainer):
        def _get_train_sampler(self, train_dataset=None):  # noqa: ANN001, ANN202
            return FixedOrder(rows)

    # one snapshot for both: its loss column orders rows into mix-cd's bins, and a pass at another batch width rounds
    # near-equal losses the other way
    trainer = _trainer(theta0, tmp_path, steps, sampler=sampler, ratio=b / B, cls=Ordered, snapshot=snap,
                       args_extra={"learning_rate": lr, "seed": seed, "optim": "sgd", "dataloader_drop_last": True})
    trainer.train()
    assert len(trainer.mixcd.draws) == len(loop_draws) == steps
    for t, (a, c) in enumerate(zip(loop_draws, trainer.mixcd.draws, strict=True)):
        assert torch.equal(a, c), f"step {t}: {a.tolist()} ≠ {c.tolist()}"
    moved = 0.0
    for key, value in lm.state_dict().items():
        theirs = trainer.model.state_dict()[key]
        torch.testing.assert_close(theirs, value, rtol=1e-4, atol=1e-5)
        moved = max(moved, float((value - theta0[1][key]).abs().max()))
    assert moved > 1e-3  # both trained: equal weights are not two untouched copies


# ----------------------------------------------------------------------------------------- examples


def test_trainer_example_runs(tmp_path: Path) -> None:
    import hf_trainer

    result = hf_trainer.main(["--pretrain-steps", "60", "--steps", "12", "--out", str(tmp_path)])
    assert result["mixcd/rehearsal_rows"] == 12 * 8
    assert 0.0 <= result["mixcd/hit_rate_total"] <= 1.0


def test_sft_example_runs(tmp_path: Path) -> None:
    pytest.importorskip("trl")
    import sft_trainer

    result = sft_trainer.main(["--pretrain-steps", "60", "--steps", "12", "--out", str(tmp_path)])
    assert result["mixcd/rehearsal_rows"] == 12 * 8
    assert 0.0 <= result["mixcd/hit_rate_total"] <= 1.0


def test_plain_loop_example_runs_and_is_short() -> None:
    import plain_loop

    assert len((EXAMPLES / "plain_loop.py").read_text().splitlines()) < 80
    result = plain_loop.main(["--pretrain-steps", "60", "--steps", "12"])
    assert 0.0 <= result["signal_rate"] <= 1.0


def test_two_processes_share_the_estimates_and_sum_the_ledger(tmp_path: Path) -> None:
    """torchrun, two CPU ranks (gloo): each rank draws its own rows from the same per-bin estimates (observations
    summed over ranks, as in mixcd's DDP), and the logged ledger is the two ranks' sum."""
    import json
    import os
    import socket
    import subprocess

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(port), str(root / "tests" / "scripts" / "hf_two_ranks.py"), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 for r in ranks)
    assert ranks[0]["seen"] == ranks[1]["seen"] and ranks[0]["cd"] == ranks[1]["cd"]
    assert sum(ranks[0]["seen"]) > 5 * 2  # more than one rank's 5 draws of b = 2 rows (decayed by 0.99 a step)
    assert ranks[0]["draws"] != ranks[1]["draws"]
    last = ranks[0]["logs"][0]
    assert last["mixcd/rehearsal_rows"] == 2 * 5 * 2


def test_random_rehearsal_pays_for_no_snapshot_unless_audited(theta0, tmp_path: Path) -> None:
    plain = _trainer(theta0, tmp_path, 2, sampler="random")
    assert plain.mixcd.snapshot is None and plain.mixcd.ledger.forward["snapshot"] == 0
    plain.train()
    assert "mixcd/signal_rate" not in plain.mixcd.logs()  # no θ0 columns: nothing can be called a hit
    audited = _trainer(theta0, tmp_path, 2, sampler="random", audit_every=1)
    assert audited.mixcd.ledger.forward["snapshot"] == 400
    audited.train()
    assert "mixcd/hit_rate" in audited.mixcd.logs()
