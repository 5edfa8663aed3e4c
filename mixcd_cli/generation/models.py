"""Language models for generation tasks: a Hugging Face decoder (`AutoModelForCausalLM`) or encoder–decoder
(`AutoModelForSeq2SeqLM`) from a local folder or hub name, or randomly initialised from ``model.config``,
wrapped so that its forward pass gives, at every label position, the distribution of that label."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from .. import hub
from ..errors import MixcdError
from ..sources import PAD

KINDS = ("causal_lm", "seq2seq")


class GenerationNet(nn.Module):
    """A language model fed mixcd's token batches (`tokens.causal_layout` / `tokens.seq2seq_layout`).

    ``forward(x)`` returns logits (n, L, V) aligned with the batch's labels: for a decoder, position t scores the
    token after input t; for an encoder–decoder, decoder position t scores target token t. It has no
    classification heads; ``head`` is accepted and ignored so the trainer calls it as it calls classifiers.
    """

    def __init__(self, lm: nn.Module, kind: str, pad_id: int, eos_id: int, bos_id: int | None,
                 start_id: int | None = None) -> None:
        super().__init__()
        if kind not in KINDS:
            raise MixcdError(f"generation kind must be one of {', '.join(KINDS)}, got '{kind}'")
        self.lm, self.kind = lm, kind
        self.pad_id, self.eos_id, self.bos_id = int(pad_id), int(eos_id), bos_id
        self.start_id = int(pad_id if start_id is None else start_id)
        self.heads = nn.ModuleDict()  # none: the language model's own output layer predicts tokens
        # transformers 5 renamed the key-value cache argument `past_key_values` to `cache`
        self._cache_kw = "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"

    def freeze_batchnorm(self) -> int:
        return 0  # transformers normalise per token (LayerNorm/RMSNorm): nothing to hold

    def positions(self) -> int | None:
        """How many positions a decoder can embed (GPT-2's ``n_positions``, else ``max_position_embeddings``);
        None for an encoder–decoder or a model without absolute positions."""
        if self.kind != "causal_lm":
            return None
        config = self.lm.config
        for key in ("n_positions", "max_position_embeddings"):
            value = getattr(config, key, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    def _ids(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = ids != PAD
        return torch.where(mask, ids, torch.full_like(ids, self.pad_id)), mask.long()

    def forward(self, x: torch.Tensor, head: str | None = None,
                splits: list[tuple[str, int, int]] | None = None) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Logits aligned with the labels; with ``splits`` = [(head, start, stop), ...], one pass over a mixed batch
        and each row range's logits (what DDP must see as one forward)."""
        logits = self._logits(x)
        if splits is not None:
            return tuple(logits[a:b] for _, a, b in splits)
        return logits

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "causal_lm":
            ids, mask = self._ids(x[:, 0] if x.ndim == 3 else x)
            return self.lm(input_ids=ids, attention_mask=mask, use_cache=False).logits
        enc, enc_mask = self._ids(x[:, 0])
        dec, dec_mask = self._ids(x[:, 1])
        return self.lm(input_ids=enc, attention_mask=enc_mask, decoder_input_ids=dec,
                       decoder_attention_mask=dec_mask, use_cache=False).logits

    @property
    def num_features(self) -> int:
        return int(self.lm.get_input_embeddings().embedding_dim)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """A row's feature (k-means partitions, AMR's arms): the mean last hidden state over its real tokens, the
        decoder's over prompt and target, or the encoder's over the prompt."""
        if self.kind == "causal_lm":
            ids, mask = self._ids(x[:, 0] if x.ndim == 3 else x)
            hidden = self.lm(input_ids=ids, attention_mask=mask, use_cache=False,
                             output_hidden_states=True).hidden_states[-1]
        else:
            ids, mask = self._ids(x[:, 0])
            hidden = self.lm.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)

    @property
    def has_adapters(self) -> bool:
        return hasattr(self.lm, "peft_config")

    def add_adapters(self, rank: int, alpha: float, target_modules: list[str] | None, dropout: float = 0.0) -> int:
        """LoRA adapters (peft) of ``rank`` on ``target_modules`` (None: peft's default for the model type); every
        other weight is frozen. → trainable parameters. Modules the model lacks are refused, naming those it has."""
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError as exc:
            raise MixcdError("model.lora needs peft: pip install -e '.[text]'") from exc
        check_lora_targets(self.lm, target_modules)
        config = LoraConfig(r=int(rank), lora_alpha=float(alpha), lora_dropout=float(dropout),
                            target_modules=list(target_modules) if target_modules else None,
                            task_type="CAUSAL_LM" if self.kind == "causal_lm" else "SEQ_2_SEQ_LM")
        try:
            self.lm = get_peft_model(self.lm, config)
        except ValueError as exc:  # no default targets for this model type
            raise MixcdError(f"model.lora: {str(exc).splitlines()[0]}; name model.lora.target_modules (this model "
                             f"has {', '.join(lora_candidates(self.lm))})") from exc
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def merge_adapters(self) -> None:
        """Fold trained adapters into the weights they adapt (the model is then a plain one again, as saved)."""
        if self.has_adapters:
            self.lm = self.lm.merge_and_unload()

    def add_head(self, name: str, num_classes: int) -> None:
        """Nothing to add: every task of a generation experiment is read by the language model's own output."""

    @torch.no_grad()
    def greedy(self, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        """Greedy decoding of a batch of prompts with the key-value cache; each row's tokens up to and including
        its first end-of-sequence (or ``max_new_tokens`` of them). A decoder's prompts are ``[bos] prompt``,
        left-padded with positions counted from each row's first real token; an encoder's are ``prompt </s>``.
        A decoder row stops at the last position the model embeds, without an end-of-sequence."""
        n = len(prompts)
        if n == 0:
            return []
        start = self._decoder_start if self.kind == "causal_lm" else self._encoder_start
        out, step, mask, pos, room = start(prompts, next(self.parameters()).device)
        produced = torch.empty((n, 0), dtype=torch.int64, device=mask.device)
        done = torch.zeros(n, dtype=torch.bool, device=mask.device)
        cut_at = torch.full((n,), -1, dtype=torch.int64, device=mask.device)  # tokens a row had when out of room
        for t in range(max_new_tokens):
            tok = out.logits[:, -1].argmax(-1)
            tok = torch.where(done, torch.full_like(tok, self.eos_id), tok)
            produced = torch.cat([produced, tok[:, None]], 1)
            done |= tok == self.eos_id
            if room is not None:
                full = ~done & (t + 1 >= room)
                cut_at = torch.where(full, torch.full_like(cut_at, t + 1), cut_at)
                done |= full
            if bool(done.all()) or t + 1 == max_new_tokens:
                break
            if pos is not None:
                mask = torch.cat([mask, mask.new_ones((n, 1))], 1)
                pos = pos[:, -1:] + 1
                if room is not None:  # finished rows are fed on; their outputs are not read
                    pos = pos.clamp(max=self.positions() - 1)
            out = step(tok[:, None], _cache_of(out), mask, pos)
        rows = []
        for row, cut in zip(produced.tolist(), cut_at.tolist(), strict=True):
            if cut >= 0:
                rows.append(row[:cut])
            else:
                rows.append(row[:row.index(self.eos_id) + 1] if self.eos_id in row else row)
        return rows

    def _decoder_start(self, prompts: list[list[int]], device: torch.device) -> tuple[Any, ...]:
        """A decoder's first pass over ``[bos] prompt`` (left-padded): (output, step, mask, positions, room); room:
        per row the tokens it may produce before it runs past the model's positions (None: no limit), so a batch
        decodes what each row would alone (a row's target always fits: one cut there is wrong either way)."""
        heads = [([self.bos_id] if self.bos_id is not None else []) + list(p) for p in prompts]
        ids, mask = _padded(heads, self.pad_id, left=True, device=device)
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        limit = self.positions()
        # one token from its last head position, one from each position left free
        room = None if limit is None else limit - mask.sum(1) + 1
        out = self.lm(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)

        def step(tok: torch.Tensor, cache: Any, mask: torch.Tensor, pos: torch.Tensor) -> Any:
            return self.lm(input_ids=tok, attention_mask=mask, position_ids=pos, **{self._cache_kw: cache},
                           use_cache=True)

        return out, step, mask, pos, room

    def _encoder_start(self, prompts: list[list[int]], device: torch.device) -> tuple[Any, ...]:
        """An encoder–decoder's encoding of ``prompt </s>`` and first decoder step; relative positions, no room."""
        ids, mask = _padded([list(p) + [self.eos_id] for p in prompts], self.pad_id, left=False, device=device)
        encoded = self.lm.get_encoder()(input_ids=ids, attention_mask=mask)
        start = torch.full((len(prompts), 1), self.start_id, dtype=torch.int64, device=device)
        out = self.lm(encoder_outputs=encoded, attention_mask=mask, decoder_input_ids=start, use_cache=True)

        def step(tok: torch.Tensor, cache: Any, mask: torch.Tensor, pos: None) -> Any:
            return self.lm(encoder_outputs=encoded, attention_mask=mask, decoder_input_ids=tok,
                           **{self._cache_kw: cache}, use_cache=True)

        return out, step, mask, None, None


def _padded(rows: list[list[int]], pad_id: int, left: bool, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows as one (n, width) id tensor padded with ``pad_id`` on the left or right, and its attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(rows), width), dtype=torch.int64)
    for i, r in enumerate(rows):
        at = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, at] = torch.tensor(r, dtype=torch.int64)
        mask[i, at] = 1
    return ids.to(device), mask.to(device)


def lora_candidates(lm: nn.Module) -> list[str]:
    """The names (last part) of the modules LoRA can adapt: linear layers and GPT-2's Conv1D projections."""
    names = {name.rsplit(".", 1)[-1] for name, m in lm.named_modules()
             if isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"}
    return sorted(names)


def check_lora_targets(lm: nn.Module, target_modules: list[str] | None) -> None:
    """Refuse target modules the model lacks, naming those it has."""
    if not target_modules:
        return
    have = lora_candidates(lm)
    missing = [t for t in target_modules if t not in have]
    if missing:
        raise MixcdError(f"model.lora.target_modules: this model has no module {', '.join(map(repr, missing))}; it "
                         f"has {', '.join(have)}")


def _cache_of(out: Any) -> Any:
    """The key-value cache a forward returned, under either name transformers has given it."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _check_kind(kind: str, config: Any, where: str) -> None:
    is_seq2seq = bool(getattr(config, "is_encoder_decoder", False))
    if is_seq2seq and kind == "causal_lm":
        raise MixcdError(f"{where} is an encoder-decoder model: use it with a seq2seq task (task kind "
                         "seq2seq), or give a decoder-only model for causal_lm")
    if not is_seq2seq and kind == "seq2seq":
        raise MixcdError(f"{where} is a decoder-only model: use it with a causal_lm task, or give an "
                         "encoder-decoder model (T5, BART, ...) for seq2seq")


def _model_config(kind: str, name: str | None, config: dict[str, Any] | None) -> tuple[Any, str]:
    """The Hugging Face config a model would be built from, and where it came from (for messages)."""
    from transformers import AutoConfig

    if config is not None:
        settings = dict(config)
        model_type = settings.pop("model_type", "gpt2" if kind == "causal_lm" else "t5")
        try:
            return AutoConfig.for_model(model_type, **settings), f"model.config (model_type {model_type})"
        except (ValueError, TypeError, KeyError) as exc:
            raise MixcdError(f"model.config does not make a Hugging Face model: {str(exc).splitlines()[0]}") from exc
    where, _local = hub.hf_location(str(name))
    try:
        return AutoConfig.from_pretrained(where), where
    except (OSError, ValueError) as exc:
        raise MixcdError(f"{where} holds no Hugging Face model config (config.json): "
                         f"{str(exc).splitlines()[0]}") from exc


def check_lm(kind: str, name: str | None, config: dict[str, Any] | None,
             lora_targets: list[str] | None = None) -> int | None:
    """Before any work: the model fits the task kind (a decoder for causal_lm, an encoder–decoder for seq2seq),
    and has the LoRA target modules named, from its configuration alone (the modules are laid out on the meta
    device: no weights). → how many positions it can read, when it says (None: relative positions)."""
    hub.require_text_extra("generation models")
    if (name is None) == (config is None):
        raise MixcdError("model=lm needs exactly one of model.name (a folder or hub name of a pretrained language "
                         "model) and model.config (the configuration of a randomly initialised one)")
    cfg, where = _model_config(kind, name, config)
    _check_kind(kind, cfg, where)
    if lora_targets:
        from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

        auto = AutoModelForCausalLM if kind == "causal_lm" else AutoModelForSeq2SeqLM
        with torch.device("meta"):
            check_lora_targets(auto.from_config(cfg), lora_targets)
    limit = getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)
    return int(limit) if limit else None


def build_lm(kind: str, vocab_size: int, pad_id: int, eos_id: int, bos_id: int | None,
             name: str | None = None, config: dict[str, Any] | None = None) -> GenerationNet:
    """The task kind's language model: from ``name`` (a folder, or a hub name when online) or randomly initialised
    from ``config`` (a Hugging Face config as a dict with ``model_type``), its embeddings sized to the
    tokenizer's ``vocab_size``. A decoder named for ``seq2seq``, or the other way round, is refused."""
    hub.require_text_extra("generation models")
    if kind not in KINDS:
        raise MixcdError(f"model=lm reads generation tasks (causal_lm or seq2seq), not '{kind}': use a "
                         "classification model (cnn, timm, hf) for classification tasks")
    if (name is None) == (config is None):
        raise MixcdError("model=lm needs exactly one of model.name (a folder or hub name of a pretrained language "
                         "model) and model.config (the configuration of a randomly initialised one)")
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    auto = AutoModelForCausalLM if kind == "causal_lm" else AutoModelForSeq2SeqLM
    cfg, where = _model_config(kind, name, config)
    _check_kind(kind, cfg, where)
    if config is not None:
        cfg.vocab_size = vocab_size
        cfg.pad_token_id, cfg.eos_token_id, cfg.bos_token_id = pad_id, eos_id, bos_id
        if kind == "seq2seq":
            cfg.decoder_start_token_id = pad_id
        lm = auto.from_config(cfg)
        start = pad_id
    else:
        try:
            lm = auto.from_pretrained(where)
        except (OSError, ValueError) as exc:
            raise MixcdError(f"could not load the language model {where}: {str(exc).splitlines()[0]}") from exc
        if vocab_size > lm.get_input_embeddings().num_embeddings:
            raise MixcdError(f"the tokenizer has {vocab_size} tokens but {where} embeds only "
                             f"{lm.get_input_embeddings().num_embeddings}: give the model's own tokenizer")
        start = getattr(lm.config, "decoder_start_token_id", None)
        start = pad_id if start is None else int(start)
    return GenerationNet(lm, kind, pad_id, eos_id, bos_id, start)
