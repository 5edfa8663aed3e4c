"""mix-cd inside Hugging Face's ``Trainer`` and TRL's ``SFTTrainer`` (the ``hf`` extra): a few lines in your script.

>>> from mixcd_cli.hf import MixcdSFTTrainer, Rehearsal                           # doctest: +SKIP
>>> trainer = MixcdSFTTrainer(model=model, args=args, train_dataset=new_task,    # doctest: +SKIP
...                           rehearsal=Rehearsal(pool=old_data, sampler="mixcd", ratio=0.25))
>>> trainer.train()                                                               # doctest: +SKIP

What it does, per micro-batch (docs/design.md §13): draw b = round(r·B) pool rows (B: the per-device batch size),
collate them with the trainer's own collator, join them to the batch, run one forward pass, take each rehearsal
row's "wrong now" from that pass's logits (the free signal: no second pass) and hand it to the sampler before the
next draw. The loss is mixcd's: (Σ fine-tune row losses + w·Σ rehearsal row losses) / (B + b), each row's loss the
mean over its target tokens (every row weighs the same, whatever its length), divided by the gradient-accumulation
steps as the Trainer divides any per-batch mean. With gradient accumulation, rows are drawn once per micro-batch.

A sampler that reads a snapshot (mix-cd, ...) starts from one of the model as you pass it in (θ0): computed at
init over the pool (one eval-mode pass, charged to the ledger as ``snapshot``; cached in ``Rehearsal.cache_dir``
when given) or passed in ``Rehearsal.snapshot`` and verified against the model and the pool. Random rehearsal gets
none unless ``audit_every`` asks which drawn rows were truly damage. The sampler's state is saved in every
trainer checkpoint (``mixcd_rehearsal_rank<r>.pt``) and restored by ``train(resume_from_checkpoint=...)``. The
audited hit rate (``audit_every``), the sampler's collateral-damage estimates per bin and the ledger go through
the trainer's own ``log``, so to whatever ``report_to`` names, under ``mixcd/``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import distributed
from .api import (
    HitAudit,
    Ledger,
    PoolSnapshot,
    compute_snapshot,
    create_sampler,
    hf_forward,
    objective,
    pool_digest,
    rehearsal_batch,
    signal_quality,
)
from .artifacts import atomic_torch_save, safe_torch_load
from .errors import MixcdError
from .metrics import COUNTERS
from .runtime import derive_seed
from .samplers import SAMPLERS

STATE_FILE = "mixcd_rehearsal_rank{rank}.pt"
STATE_FORMAT = 1
PAD_VALUES = {"labels": -100, "attention_mask": 0, "position_ids": 0, "token_type_ids": 0}


@dataclass
class Rehearsal:
    """What to rehearse and how: the pool, the sampler and its ratio.

    ``pool``: the earlier task's rows, in the format of your training set (an ``SFTTrainer`` prepares them as it
    prepares its training set: tokenised, labels built). ``sampler``: any registered sampler that needs no extra
    selection passes (``mixcd``, ``mixcd_plus``, ``random``, ...), with ``options``. ``ratio``: r, so
    b = round(r·per_device_train_batch_size). ``seed``: the sampler's (None: the trainer's ``args.seed``).
    ``kind``: ``causal_lm``, ``seq2seq`` or ``classification``. ``snapshot``: θ0's columns over the pool (None:
    computed at init). ``audit_every``: every N micro-batches an eval-mode pass over the drawn rows measures the
    true hit rate (an extra forward, charged to the ledger as ``audit``; 0: never). ``weight``: w, the rehearsal
    rows' weight in the loss.
    """

    pool: Sequence[Any]
    sampler: str = "mixcd"
    ratio: float = 0.25
    seed: int | None = None
    kind: str = "causal_lm"
    options: dict[str, Any] = field(default_factory=dict)
    snapshot: PoolSnapshot | None = None
    cache_dir: str | Path | None = None
    audit_every: int = 0
    weight: float = 1.0
    objective_options: dict[str, Any] = field(default_factory=dict)
    record_draws: bool = False  # keep every draw's rows in `draws` (tests, analysis)


def _keys(batch: Mapping[str, Any]) -> list[str]:
    return sorted(k for k, v in batch.items() if isinstance(v, torch.Tensor))


def join_batches(first: Mapping[str, torch.Tensor], second: Mapping[str, torch.Tensor], pad_id: int,
                 left: bool = False) -> dict[str, torch.Tensor]:
    """Two collated batches as one: rows of ``second`` after ``first``, sequences padded to the wider one
    (labels with −100, masks and positions with 0, token ids with ``pad_id``)."""
    if _keys(first) != _keys(second):
        raise MixcdError(f"the pool's rows do not match the collator's format: the training batch has "
                         f"{', '.join(_keys(first))}, the pool's collated rows {', '.join(_keys(second))}; "
                         "give the pool the training set's columns")
    joined: dict[str, torch.Tensor] = {}
    for key in _keys(first):
        a, b = first[key], second[key].to(first[key].device)
        if a.ndim >= 2 and a.shape[1] != b.shape[1]:
            width = max(a.shape[1], b.shape[1])
            fill = PAD_VALUES.get(key, pad_id if key.endswith("input_ids") else 0)
            a, b = (_pad(t, width, fill, left) for t in (a, b))
        joined[key] = torch.cat([a, b])
    return joined


def _pad(t: torch.Tensor, width: int, value: int, left: bool) -> torch.Tensor:
    if t.shape[1] == width:
        return t
    extra = torch.full((t.shape[0], width - t.shape[1], *t.shape[2:]), value, dtype=t.dtype, device=t.device)
    return torch.cat([extra, t] if left else [t, extra], dim=1)


class RehearsalEngine:
    """The rehearsal of one trainer: its pool, sampler, audit and ledger, and their checkpointed state."""

    def __init__(self, trainer: Any, plan: Rehearsal) -> None:
        args = trainer.args
        self.plan, self.trainer = plan, trainer
        spec = SAMPLERS.spec(plan.sampler)
        if spec.needs_selection:
            usable = [s.name for s in SAMPLERS.specs() if s.draws and not s.needs_selection]
            raise MixcdError(f"sampler={plan.sampler} spends extra selection passes that only mixcd's own loop "
                             f"makes; in a Trainer use one of: {', '.join(usable)}")
        if getattr(args, "packing", False) or getattr(args, "padding_free", False):
            raise MixcdError("rehearsal tracks rows one by one; packing and padding_free merge rows: turn them off")
        if getattr(args, "loss_type", "nll") not in (None, "nll") or getattr(trainer, "aux_loss_enabled", False):
            raise MixcdError(f"rehearsal computes the loss itself (every row's mean token loss); loss_type="
                             f"{getattr(args, 'loss_type', None)!r} and a router auxiliary loss are not it: use "
                             "loss_type='nll' without output_router_logits")
        # DataParallel (several GPUs in one process) puts n_gpu per-device batches in one: b follows it
        rows = int(args.per_device_train_batch_size) * max(1, int(getattr(args, "n_gpu", 1) or 1))
        self.b = rehearsal_batch(spec, float(plan.ratio), rows, key="ratio")
        self.objective = objective(plan.kind, **plan.objective_options)
        self.pool = self._prepared(plan.pool)
        self._check_format()
        self.ledger = Ledger()
        model = trainer.model
        # a sampler that reads no snapshot (random, ...) gets none unless the audit needs θ0's columns to name hits:
        # the comparison at equal compute charges the snapshot only to the samplers that need it
        self.snapshot: PoolSnapshot | None = None
        if plan.snapshot is None and (spec.needs_snapshot(plan.options) or plan.audit_every):
            self.snapshot = compute_snapshot(model, self.pool, self.collator, kind=plan.kind,
                                             batch_size=int(args.per_device_eval_batch_size), device=args.device,
                                             cache_dir=plan.cache_dir, ledger=self.ledger, **plan.objective_options)
        elif plan.snapshot is not None:
            plan.snapshot.verify(model, self.pool)
            self.snapshot = plan.snapshot
        self.rank, self.world = distributed.rank(), distributed.world()
        seed = int(args.seed if plan.seed is None else plan.seed)
        # one generator per rank, seeded as mixcd's runner seeds its own (recipes/train.py:stage_sampler)
        tag = "sampler" if self.world == 1 else f"sampler-rank{self.rank}"
        facts = self.snapshot if self.snapshot is not None else _unknown_pool(self.pool)
        self.sampler = create_sampler(plan.sampler, facts, self.b, derive_seed(seed, tag), **plan.options)
        # without a snapshot no drawn row can be called a hit: the audit counts rows drawn, nothing else
        self.audit = HitAudit(facts.correct)
        self.step = 0  # micro-batches trained so far: the sampler's step
        self.interval = dict.fromkeys(COUNTERS, 0)
        self.draws: list[torch.Tensor] = []
        tokenizer = getattr(trainer, "processing_class", None)
        self.pad_id = int(getattr(tokenizer, "pad_token_id", None) or getattr(trainer.data_collator, "pad_token_id",
                                                                              None) or 0)

    def _prepared(self, pool: Sequence[Any]) -> Sequence[Any]:
        """The pool as the trainer prepares its training set: an SFTTrainer tokenises and builds labels, a
        Trainer drops the columns the model does not take."""
        t = self.trainer
        if callable(getattr(t, "_prepare_dataset", None)) and not getattr(t, "_skip_prepare_dataset", True):
            pool = t._prepare_dataset(pool, t.processing_class, t.args, False, getattr(t, "_formatting_func", None),
                                      "rehearsal")
        # as the trainer's training dataloader does: a datasets.Dataset loses its columns, other pools go through a
        # collator that drops the keys the model does not take
        self.collator = t.data_collator
        if hasattr(pool, "column_names"):
            pool = t._remove_unused_columns(pool, description="rehearsal")
        else:
            self.collator = t._get_collator_with_removed_columns(t.data_collator, description="rehearsal")
        if len(pool) == 0:
            raise MixcdError("the rehearsal pool is empty")
        return pool

    def _check_format(self) -> None:
        """One training row and one pool row through the collator: their keys must agree, before any step."""
        t = self.trainer
        train = t.train_dataset
        if train is None or not hasattr(train, "__getitem__"):
            return
        collate = t.data_collator
        if hasattr(train, "column_names"):
            train = t._remove_unused_columns(train, description="training")
        else:
            collate = t._get_collator_with_removed_columns(t.data_collator, description="training")
        join_batches(collate([train[0]]), self.collator([self.pool[0]]), 0)

    # ------------------------------------------------------------------ one micro-batch

    def collate(self, rows: torch.Tensor, device: torch.device) -> tuple[dict[str, torch.Tensor], int]:
        """The drawn rows as the collator lays them out, on ``device``, and their non-padding tokens (counted on
        the host, before the copy: no device sync)."""
        batch = {k: v for k, v in self.collator([self.pool[i] for i in rows.tolist()]).items()
                 if isinstance(v, torch.Tensor)}
        return {k: v.to(device) for k, v in batch.items()}, _tokens(batch)

    def loss(self, model: torch.nn.Module, inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
        """One micro-batch: draw, (audit,) join, one forward, the loss, the free signal back to the sampler."""
        device = inputs["input_ids"].device if "input_ids" in inputs else next(model.parameters()).device
        rows = self.sampler.draw(self.step)
        if self.plan.record_draws:
            self.draws.append(rows.clone())
        drawn, reh_tokens = self.collate(rows, device)
        due = self.plan.audit_every and (self.step + 1) % self.plan.audit_every == 0
        audit_wrong = self._audit_pass(model, drawn, reh_tokens) if due else None
        n_ft = _rows_of(inputs)
        joined = join_batches({k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)}, drawn, self.pad_id,
                              _left_padded(inputs))
        outputs, targets = hf_forward(model, joined, self.plan.kind)
        per_row = self.objective.loss(outputs, targets)
        loss = (per_row[:n_ft].sum() + self.plan.weight * per_row[n_ft:].sum()) / per_row.numel()
        wrong = self.objective.wrong(outputs[n_ft:].detach(), targets[n_ft:]).cpu()
        row_loss = per_row[n_ft:].detach().float().cpu() if self.sampler.wants_loss else None
        self.sampler.observe(rows, wrong, row_loss)
        for key, value in self.audit.add(rows, wrong, audit_wrong).items():
            self.interval[key] += value
        ft_tokens = _tokens(inputs)
        self.ledger.add("finetune", forward=n_ft, backward=n_ft, forward_tokens=ft_tokens, backward_tokens=ft_tokens)
        self.ledger.add("rehearsal", forward=len(rows), backward=len(rows), forward_tokens=reh_tokens,
                        backward_tokens=reh_tokens)
        self.step += 1
        return loss, outputs

    def _audit_pass(self, model: torch.nn.Module, drawn: Mapping[str, torch.Tensor], tokens: int) -> torch.Tensor:
        """Which drawn rows the current weights truly get wrong: eval mode, no grad, before the training forward."""
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                outputs, targets = hf_forward(model, drawn, self.plan.kind)
                wrong = self.objective.wrong(outputs, targets).cpu()
        finally:
            model.train(was)
        self.ledger.add("audit", forward=len(targets), forward_tokens=tokens)
        return wrong

    # ------------------------------------------------------------------ logging and state

    def logs(self) -> dict[str, float]:
        """This log interval's signal and audited hit rate, the run's hit rate and ledger (all summed over ranks) and
        the sampler's collateral-damage estimate per bin, under ``mixcd/``; the interval starts again."""
        ledger = self.ledger
        spent = [ledger.forward["rehearsal"], ledger.forward_tokens["rehearsal"], ledger.training_passes(),
                 ledger.forward["audit"]]
        numbers = torch.tensor([self.interval[k] for k in COUNTERS] + [self.audit.counts[k] for k in COUNTERS] + spent,
                               dtype=torch.float64)
        if self.world > 1:  # every rank logs at the same steps: one collective, the numbers of the whole run
            numbers = distributed.all_reduce_sum(numbers)
        self.interval = dict.fromkeys(COUNTERS, 0)
        values = numbers.tolist()
        n = len(COUNTERS)
        out: dict[str, float] = {}
        for name, value in signal_quality(dict(zip(COUNTERS, values[:n], strict=True))).items():
            if value is not None and self.snapshot is not None:
                out[f"mixcd/{name}"] = value
        total_hit = signal_quality(dict(zip(COUNTERS, values[n:2 * n], strict=True)))["hit_rate"]
        if total_hit is not None and self.snapshot is not None:
            out["mixcd/hit_rate_total"] = total_hit
        for name, value in zip(("rehearsal_rows", "rehearsal_tokens", "training_passes", "audit_rows"),
                               values[2 * n:], strict=True):
            out[f"mixcd/{name}"] = value
        telemetry = self.sampler.telemetry()
        for i, value in enumerate(telemetry.get("alpha") or []):
            out[f"mixcd/cd_estimate/bin{i}"] = float(value)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "sampler_name": self.plan.sampler, "sampler": self.sampler.state_dict(),
                "audit": self.audit.state_dict(), "interval": dict(self.interval), "ledger": self.ledger.state_dict(),
                "step": self.step, "world": self.world,
                "snapshot": None if self.snapshot is None else self.snapshot.model}

    def load_state_dict(self, state: Mapping[str, Any], where: str) -> None:
        if state.get("format") != STATE_FORMAT or state.get("sampler_name") != self.plan.sampler:
            raise MixcdError(f"{where} holds the state of sampler '{state.get('sampler_name')}', this trainer "
                             f"rehearses with '{self.plan.sampler}'")
        if state.get("world") != self.world:
            raise MixcdError(f"{where} was saved by {state.get('world')} process(es), this run has {self.world}")
        mine = None if self.snapshot is None else self.snapshot.model
        if state.get("snapshot") != mine:
            raise MixcdError(f"{where} was drawn with a snapshot of another model (θ0 {state.get('snapshot')}, this "
                             f"trainer's {mine}): resume from the model training started from, or pass its "
                             "snapshot as Rehearsal(snapshot=...)")
        self.sampler.load_state_dict(state["sampler"])
        self.audit.load_state_dict(state["audit"])
        self.interval = {k: int(state["interval"].get(k, 0)) for k in COUNTERS}
        self.ledger.load_state_dict(state["ledger"])
        self.step = int(state["step"])

    def save(self, folder: str | Path) -> None:
        atomic_torch_save(self.state_dict(), Path(folder) / STATE_FILE.format(rank=self.rank))

    def load(self, folder: str | Path) -> None:
        path = Path(folder) / STATE_FILE.format(rank=self.rank)
        if not path.is_file():
            raise MixcdError(f"checkpoint {folder} has no rehearsal state ({path.name} is missing): it was saved by "
                             "a trainer without mixcd's rehearsal, or by fewer processes; resume with the trainer "
                             "that saved it, or train from the start")
        self.load_state_dict(safe_torch_load(path, what="rehearsal state", yours=True), str(path))


def _unknown_pool(pool: Sequence[Any]) -> PoolSnapshot:
    """The pool of a sampler that reads no snapshot: its size and fingerprint, no column anything reads."""
    n = len(pool)
    return PoolSnapshot(torch.zeros(n, dtype=torch.bool), torch.zeros(n), torch.zeros(n), pool=pool_digest(pool))


def _left_padded(batch: Mapping[str, Any]) -> bool:
    """Whether the collator pads on the left (a row whose first position is masked), whatever the tokenizer says:
    TRL's collators pad on the right whatever the tokenizer's side."""
    mask = batch.get("attention_mask")
    return isinstance(mask, torch.Tensor) and mask.ndim == 2 and bool((mask[:, 0] == 0).any())


def _rows_of(batch: Mapping[str, Any]) -> int:
    return int(next(v for v in batch.values() if isinstance(v, torch.Tensor)).shape[0])


def _tokens(batch: Mapping[str, torch.Tensor]) -> int:
    """Non-padding tokens a pass reads (0 for a batch without an attention mask)."""
    return int(batch["attention_mask"].sum()) if "attention_mask" in batch else 0


class RehearsalMixin:
    """Put before a ``transformers.Trainer`` subclass: ``class MyTrainer(RehearsalMixin, Trainer)``. Takes one
    more keyword, ``rehearsal`` (a `Rehearsal`); everything else is the trainer's own."""

    def __init__(self, *args: Any, rehearsal: Rehearsal, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # mixcd's loss is a per-micro-batch mean: the Trainer divides it by the accumulation steps
        self.loss_is_scaled_for_ga = False
        self.model_accepts_loss_kwargs = False
        self.mixcd = RehearsalEngine(self, rehearsal)

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        if not model.training:  # evaluation: the trainer's own loss, nothing mixed in
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        loss, outputs = self.mixcd.loss(model, inputs)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "loss" in logs and not any(k.startswith("eval_") for k in logs):
            logs = {**logs, **self.mixcd.logs()}
        super().log(logs, *args, **kwargs)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        # before the trainer's own files: every rank writes its state into a folder that may not exist yet, and a
        # checkpoint pushed to the hub at the end of the trainer's save carries it
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        os.makedirs(folder, exist_ok=True)
        self.mixcd.save(folder)
        super()._save_checkpoint(model, trial)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        if resume_from_checkpoint is True:
            from transformers.trainer_utils import get_last_checkpoint

            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise MixcdError(f"no checkpoint to resume from in {self.args.output_dir}")
        if resume_from_checkpoint:
            self.mixcd.load(resume_from_checkpoint)
        return super().train(resume_from_checkpoint, *args, **kwargs)


def __getattr__(name: str) -> Any:
    """``MixcdTrainer`` and ``MixcdSFTTrainer``, built on first use so importing this module needs neither
    transformers nor trl."""
    if name == "MixcdTrainer":
        from transformers import Trainer

        cls = type("MixcdTrainer", (RehearsalMixin, Trainer), {"__doc__": "transformers.Trainer with rehearsal."})
    elif name == "MixcdSFTTrainer":
        try:
            from trl import SFTTrainer
        except ImportError as exc:
            raise MixcdError("MixcdSFTTrainer needs TRL: pip install 'mixcd[hf]'") from exc
        cls = type("MixcdSFTTrainer", (RehearsalMixin, SFTTrainer), {"__doc__": "trl.SFTTrainer with rehearsal."})
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    cls.__module__ = __name__
    globals()[name] = cls
    return cls
