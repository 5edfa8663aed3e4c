"""The tiny, offline pieces the examples share: a character tokenizer, generated string tasks and a small GPT-2.

Nothing here is mix-cd: it stands in for the model folder and the datasets a real script loads. A model you bring
replaces `tiny_gpt2` and its tokenizer (`AutoModelForCausalLM.from_pretrained(folder)`), and your own data
replaces `pairs`.
"""

from __future__ import annotations

import argparse
import string

import torch
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from mixcd_cli.generation.tasks import make_pairs

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


def tokenizer() -> PreTrainedTokenizerFast:
    """One token per character (letters, digits, punctuation, space) and four special tokens."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    chars = sorted(set(string.ascii_letters + string.digits + string.punctuation + " "))
    vocab = {tok: i for i, tok in enumerate(SPECIALS + chars)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def pairs(operation: str, n: int, seed: int = 1234, split: str = "train", max_len: int = 4) -> list[dict[str, str]]:
    """``n`` generated prompt/completion pairs of ``operation`` (copy, reverse, cipher, add) over strings of 1 to
    ``max_len`` of six letters."""
    made = make_pairs(operation, n, seed, split, 1, max_len, "abcdef", 1, 2, None)
    return [{"prompt": p, "completion": t} for p, t in zip(made.prompts, made.targets, strict=True)]


def tokenized(rows: list[dict[str, str]], tok: PreTrainedTokenizerFast, bos: bool = True
              ) -> list[dict[str, list[int]]]:
    """Rows as a causal LM trains on them: ``<s> prompt completion </s>``, the loss on the completion and ``</s>``
    (``bos=False``: without ``<s>``, as TRL's SFTTrainer lays out prompt–completion rows with this tokenizer)."""
    out = []
    for row in rows:
        head = [tok.bos_token_id] * bos + tok.encode(row["prompt"])
        tail = tok.encode(row["completion"]) + [tok.eos_token_id]
        out.append({"input_ids": head + tail, "attention_mask": [1] * (len(head) + len(tail)),
                    "labels": [-100] * len(head) + tail})
    return out


def tiny_gpt2(tok: PreTrainedTokenizerFast, seed: int = 0) -> GPT2LMHeadModel:
    """A random 2-layer GPT-2 (n_embd 64), no dropout, so a run depends on its seed alone."""
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=64, n_layer=2, n_head=4, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                        pad_token_id=tok.pad_token_id)
    return GPT2LMHeadModel(config)


def pad_collator(tok: PreTrainedTokenizerFast):  # noqa: ANN201 - a plain function, typed where it is defined
    """Right-pads ``input_ids``/``attention_mask``/``labels`` rows into tensors."""
    def collate(rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        fill = {"input_ids": tok.pad_token_id, "attention_mask": 0, "labels": -100}
        return {k: torch.tensor([r[k] + [v] * (width - len(r[k])) for r in rows]) for k, v in fill.items()}

    return collate


def exact_match(model: GPT2LMHeadModel, rows: list[dict[str, list[int]]], collate) -> float:  # noqa: ANN001
    """Share of rows whose every completion token (and ``</s>``) is the teacher-forced argmax: for greedy
    decoding, the same event as exact match."""
    from mixcd_cli import api

    obj = api.objective("causal_lm")
    model.eval()
    with torch.no_grad():
        batch = collate(rows)
        outputs, targets = api.hf_forward(model, batch, "causal_lm")
        right = obj.correct(outputs, targets)
    model.train()
    return float(right.float().mean())


def options(description: str, argv: list[str] | None) -> argparse.Namespace:
    """The examples' command line: sampler, ratio, θ0's steps, the fine-tuning's steps, seed, output folder."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--sampler", default="mixcd")
    p.add_argument("--ratio", type=float, default=0.25)
    p.add_argument("--pretrain-steps", type=int, default=400)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default=None)
    return p.parse_args(argv)
