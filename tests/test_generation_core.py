"""Generation kinds at the level of one batch: the token layout, the loss on target tokens only, the free signal
as the exact-match truth of greedy decoding, batched decoding, chrF, and the refusals of mismatched models."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mixcd_cli.errors import MixcdError  # noqa: E402
from mixcd_cli.generation.models import GenerationNet, build_lm  # noqa: E402
from mixcd_cli.generation.objectives import IGNORE, CausalLM, Seq2Seq  # noqa: E402
from mixcd_cli.generation.scoring import chrf_scores, decode_rows, exact_match  # noqa: E402
from mixcd_cli.generation.tasks import cipher, make_pairs  # noqa: E402
from mixcd_cli.generation.tokens import CharTokenizer, causal_layout, seq2seq_layout  # noqa: E402
from mixcd_cli.sources import PAD  # noqa: E402

GPT = {"model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": 64, "resid_pdrop": 0.0,
       "embd_pdrop": 0.0, "attn_pdrop": 0.0}
T5 = {"model_type": "t5", "d_model": 64, "d_ff": 128, "d_kv": 32, "num_layers": 2, "num_decoder_layers": 2,
      "num_heads": 2, "dropout_rate": 0.0}
NEAR_TIE = 1e-3  # top-two logit gap under which padding's rounding may flip an argmax
ALPHABET = "abcdefghijkl"


def layout(net: GenerationNet, prompts: list[list[int]], targets: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    if net.kind == "causal_lm":
        return causal_layout(prompts, targets, net.eos_id, net.bos_id)
    return seq2seq_layout(prompts, targets, net.eos_id, net.start_id)


def objective(net: GenerationNet) -> CausalLM | Seq2Seq:
    return CausalLM() if net.kind == "causal_lm" else Seq2Seq()


@pytest.fixture(scope="module")
def tokenizer() -> CharTokenizer:
    pairs = make_pairs("reverse", 50, 1, alphabet=ALPHABET)
    return CharTokenizer.build(pairs.prompts + pairs.targets + [ALPHABET])


def _trained(kind: str, tok: CharTokenizer, steps: int = 60) -> GenerationNet:
    """A tiny model trained a little on reversal: it ends its outputs and gets some rows right, some wrong."""
    torch.manual_seed(0)
    net = build_lm(kind, tok.vocab_size, tok.pad_id, tok.eos_id, tok.bos_id if kind == "causal_lm" else None,
                   config=GPT if kind == "causal_lm" else T5)
    pairs = make_pairs("reverse", 1000, 2, min_len=1, max_len=6, alphabet=ALPHABET)
    prompts, targets = [tok.encode(p) for p in pairs.prompts], [tok.encode(t) for t in pairs.targets]
    opt = torch.optim.AdamW(net.parameters(), lr=5e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        rows = torch.randint(0, len(prompts), (32,), generator=g).tolist()
        x, y = layout(net, [prompts[i] for i in rows], [targets[i] for i in rows])
        loss = objective(net).loss(net(x), y, "mean")
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


@pytest.fixture(scope="module", params=["causal_lm", "seq2seq"])
def trained(request, tokenizer) -> GenerationNet:
    return _trained(request.param, tokenizer)


# ---------------------------------------------------------------- layout and loss


def test_causal_layout_labels_the_token_after_each_position():
    x, y = causal_layout([[5, 6], [7]], [[8, 9], [10, 11, 12]], eos_id=2, bos_id=1)
    assert x.tolist() == [[1, 5, 6, 8, 9], [1, 7, 10, 11, 12]]
    # position t predicts input t + 1; the prompt's positions predict nothing, the last target token predicts </s>
    assert y.tolist() == [[IGNORE, IGNORE, 8, 9, 2], [IGNORE, 10, 11, 12, 2]]
    x, y = causal_layout([[5]], [[8]], eos_id=2, bos_id=None)
    assert x.tolist() == [[5, 8]] and y.tolist() == [[8, 2]]


def test_seq2seq_layout_pads_encoder_and_decoder_rows():
    x, y = seq2seq_layout([[5, 6, 7], [5]], [[8], [9, 10]], eos_id=2, start_id=0)
    assert x[:, 0].tolist() == [[5, 6, 7, 2], [5, 2, PAD, PAD]]
    assert x[:, 1].tolist() == [[0, 8, PAD, PAD], [0, 9, 10, PAD]]
    assert y.tolist() == [[8, 2, IGNORE, IGNORE], [9, 10, 2, IGNORE]]


def test_loss_reads_target_tokens_only():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[IGNORE, IGNORE, 3, 4, 2], [IGNORE, 1, 2, IGNORE, IGNORE]])
    obj = CausalLM()
    base = obj.loss(logits, labels)
    changed = logits.clone()
    changed[0, :2] += torch.randn(2, 7) * 5  # prompt positions
    changed[1, 3:] += torch.randn(2, 7) * 5  # padding positions
    assert torch.allclose(obj.loss(changed, labels), base)
    expected = -torch.log_softmax(logits[1, 1:3], -1)[[0, 1], [1, 2]].mean()
    assert obj.loss(logits, labels)[1].item() == pytest.approx(expected.item(), rel=1e-6)
    # every row weighs the same, whatever its length: the sum is over per-row means
    assert obj.loss(logits, labels, "sum").item() == pytest.approx(base.sum().item(), rel=1e-6)


def test_row_loss_is_the_same_alone_and_padded_in_a_batch(trained, tokenizer):
    tok = tokenizer
    prompts = [tok.encode("reverse abc="), tok.encode("reverse abcdefghijk="), tok.encode("reverse a=")]
    targets = [tok.encode("cba"), tok.encode("kjihgfedcba"), tok.encode("a")]
    obj = objective(trained)
    with torch.no_grad():
        together = obj.loss(trained(layout(trained, prompts, targets)[0]), layout(trained, prompts, targets)[1])
        for i in range(3):
            x, y = layout(trained, prompts[i:i + 1], targets[i:i + 1])
            assert obj.loss(trained(x), y).item() == pytest.approx(together[i].item(), abs=1e-5)


def test_decoding_stops_where_a_decoder_runs_out_of_positions(tokenizer):
    """A decoder of 12 positions and prompts of 3 to 11 tokens: decoding may run past the longest target by a
    margin, never past the model's positions; each row gets every token its own room allows, batched as alone
    (an untrained model does not stop by itself, so every row runs to its room)."""
    torch.manual_seed(0)
    net = build_lm("causal_lm", tokenizer.vocab_size, tokenizer.pad_id, tokenizer.eos_id, tokenizer.bos_id,
                   config={**GPT, "n_positions": 12}).eval()
    prompts = [tokenizer.encode("a" * n) for n in (2, 5, 10)]  # heads of 3, 6 and 11 tokens with [bos]
    with torch.no_grad():
        batched = net.greedy(prompts, 30)
        alone = [net.greedy([p], 30)[0] for p in prompts]
    assert batched == alone
    for head, out in zip((3, 6, 11), batched, strict=True):
        assert len(out) <= 12 - head + 1
        if tokenizer.eos_id not in out:
            assert len(out) == 12 - head + 1  # cut at its room, not before, and no end-of-sequence added


def test_confidence_rules():
    logits = torch.log(torch.tensor([[[0.5, 0.5, 0.0 + 1e-9], [0.1, 0.9, 1e-9]]]))
    labels = torch.tensor([[0, 1]])
    mean = CausalLM(confidence="mean").columns(logits, labels)["conf"].item()
    low = CausalLM(confidence="min").columns(logits, labels)["conf"].item()
    assert mean == pytest.approx((0.5 * 0.9) ** 0.5, rel=1e-4)
    assert low == pytest.approx(0.5, rel=1e-4)


def test_token_accuracy_rule():
    logits = torch.zeros(1, 4, 5)
    logits[0, torch.arange(4), torch.tensor([1, 2, 3, 0])] = 5.0  # argmax 1, 2, 3, 0
    labels = torch.tensor([[1, 2, 3, 4]])  # three of four right
    assert not CausalLM().correct(logits, labels).item()
    assert CausalLM(correct="token_accuracy", threshold=0.75).correct(logits, labels).item()
    assert not CausalLM(correct="token_accuracy", threshold=0.8).correct(logits, labels).item()
    assert CausalLM(correct="token_accuracy", threshold=0.75).wrong(logits, labels).item() is False
    with pytest.raises(MixcdError):
        CausalLM(correct="token_accuracy", threshold=0.0)


# ---------------------------------------------------------------- the free signal is exact match


def _near_tie(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    top2 = logits.float().topk(2, dim=-1).values
    close = (top2[..., 0] - top2[..., 1]) < NEAR_TIE
    return (close & (labels != IGNORE)).any(1)


MODES = st.sampled_from(["truth", "own", "cut", "swap"])
ROWS = st.lists(st.tuples(st.text(alphabet=ALPHABET, min_size=1, max_size=9), MODES), min_size=2, max_size=10)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=ROWS)
def test_teacher_forced_all_right_is_greedy_exact_match(trained, tokenizer, rows):
    """Targets are the task's truth, the model's own greedy output (so some rows are right), that output cut short
    or with one token swapped; prompts vary in length, so the teacher-forced batch is padded. The teacher-forced
    verdict must equal decoded exact match except on rows with a near tie, which are counted."""
    tok, net = tokenizer, trained
    prompts = [tok.encode(f"reverse {w}=") for w, _ in rows]
    own = net.greedy(prompts, 14)
    targets = []
    for (word, mode), out in zip(rows, own, strict=True):
        ended = out[:-1] if out and out[-1] == tok.eos_id else None
        if mode == "truth" or ended is None:
            targets.append(tok.encode(word[::-1]))
        elif mode == "own":
            targets.append(ended)
        elif mode == "cut":
            targets.append(ended[:-1] if ended else tok.encode(word[::-1]))
        else:
            swapped = list(ended) or tok.encode(word[::-1])
            swapped[0] = tok.encode("a")[0] if swapped[0] != tok.encode("a")[0] else tok.encode("b")[0]
            targets.append(swapped)
    x, y = layout(net, prompts, targets)
    with torch.no_grad():
        logits = net(x)
    forced = objective(net).correct(logits, y)
    decoded = exact_match(decode_rows(net.greedy, prompts, targets, tok.eos_id, batch_size=5), targets, tok.eos_id)
    differ = forced != decoded
    assert not (differ & ~_near_tie(logits, y)).any(), f"{int(differ.sum())} rows differ without a near tie"
    TALLY["rows"] += len(rows)
    TALLY["right"] += int(decoded.sum())
    TALLY["near_tie_differ"] += int(differ.sum())


TALLY = {"rows": 0, "right": 0, "near_tie_differ": 0}


def test_the_equivalence_saw_both_outcomes():
    """The property above is only worth its name if it met right and wrong rows (runs after it, in file order)."""
    if TALLY["rows"] == 0:
        pytest.skip("the equivalence property did not run in this session")
    print(f"equivalence property: {TALLY['rows']} rows, {TALLY['right']} decoded exactly, "
          f"{TALLY['near_tie_differ']} near-tie disagreements")  # the size quoted in docs/design.md §10
    assert 0 < TALLY["right"] < TALLY["rows"]
    assert TALLY["near_tie_differ"] <= TALLY["rows"] // 20


def test_a_mutant_signal_that_skips_end_of_sequence_disagrees(trained, tokenizer):
    """Exact match needs the stop: a signal reading target tokens but not the closing </s> calls right a row whose
    decoding runs on, so the equivalence above would fail for it."""
    tok, net = tokenizer, trained
    prompts = [tok.encode(f"reverse {w}=") for w in ("abc", "abcd", "ab", "bcdef", "kja", "lll")]
    own = net.greedy(prompts, 14)
    # a target that is the greedy output cut one token short: all its tokens are argmax, its </s> is not
    cut = [out[:-2] if len(out) >= 2 and out[-1] == tok.eos_id else out[:1] for out in own]
    x, y = layout(net, prompts, cut)
    with torch.no_grad():
        logits = net(x)
    no_eos = y.clone()
    no_eos[y == tok.eos_id] = IGNORE
    assert not objective(net).correct(logits, y).any()
    assert objective(net).correct(logits, no_eos).any()


# ---------------------------------------------------------------- decoding and scoring


def test_batched_decoding_equals_one_row_at_a_time(trained, tokenizer):
    tok, net = tokenizer, trained
    words = ["a", "abcdefgh", "kji", "bb", "cdefg", "l", "hgfedcbakj", "abc"]
    prompts = [tok.encode(f"reverse {w}=") for w in words]
    batched = net.greedy(prompts, 12)
    alone = [net.greedy([p], 12)[0] for p in prompts]
    assert batched == alone
    assert any(out and out[-1] == tok.eos_id for out in batched)


def test_decode_rows_keeps_row_order_and_limits_length(trained, tokenizer):
    tok, net = tokenizer, trained
    prompts = [tok.encode(f"reverse {w}=") for w in ("abcdefg", "a", "abc")]
    targets = [tok.encode(w) for w in ("gfedcba", "a", "cba")]
    out = decode_rows(net.greedy, prompts, targets, tok.eos_id, batch_size=2)
    assert out == [net.greedy([p], 16)[0][:len(out[i])] for i, p in enumerate(prompts)]
    assert all(len(o) <= 16 for o in out)
    assert all(len(o) <= 3 for o in decode_rows(net.greedy, prompts, targets, tok.eos_id, 2, max_new_tokens=3))


def test_exact_match_and_chrf():
    assert exact_match([[5, 6, 2], [5, 6], [5, 2]], [[5, 6], [5, 6], [5, 6]], eos_id=2).tolist() == [True, False,
                                                                                                       False]
    scores = chrf_scores(["abcdef", "abcxyz", "zzzzzz"], ["abcdef", "abcdef", "abcdef"])
    assert scores[0] == pytest.approx(100.0) and 0 < scores[1] < 100 and scores[2] == pytest.approx(0.0)


def test_char_tokenizer_round_trip_and_order():
    tok = CharTokenizer.build(["cab", "ba"])
    assert tok.chars == ["a", "b", "c"] and tok.vocab_size == 7
    assert tok.decode(tok.encode("abc") + [tok.eos_id] + tok.encode("a")) == "abc"
    assert tok.encode("z") == [tok.unk_id]
    assert CharTokenizer.build(["ba", "cab"]).fingerprint == tok.fingerprint


def test_generated_operations():
    pairs = make_pairs("reverse", 5, 3)
    assert all(t == p.split(" ", 1)[1][:-1][::-1] for p, t in zip(pairs.prompts, pairs.targets, strict=True))
    assert make_pairs("reverse", 5, 3).prompts == pairs.prompts
    assert make_pairs("reverse", 5, 3, split="test").prompts != pairs.prompts
    add = make_pairs("add", 20, 1)
    for p, t in zip(add.prompts, add.targets, strict=True):
        a, b = p.split(" ", 1)[1][:-1].split("+")
        assert int(t) == int(a) + int(b)
    assert cipher("abz", 1, "abcdefghijklmnopqrstuvwxyz") == "bca"
    assert make_pairs("cipher", 3, 1, shift=2).prompts[0].startswith("cipher2 ")
    with pytest.raises(MixcdError, match="copy, reverse"):
        make_pairs("sort", 3, 1)


# ---------------------------------------------------------------- refusals


def test_a_decoder_for_seq2seq_and_back_are_refused(tokenizer):
    tok = tokenizer
    with pytest.raises(MixcdError, match="decoder-only"):
        build_lm("seq2seq", tok.vocab_size, tok.pad_id, tok.eos_id, None, config=GPT)
    with pytest.raises(MixcdError, match="encoder-decoder"):
        build_lm("causal_lm", tok.vocab_size, tok.pad_id, tok.eos_id, tok.bos_id, config=T5)
    with pytest.raises(MixcdError, match="classification"):
        build_lm("classification", tok.vocab_size, tok.pad_id, tok.eos_id, None, config=GPT)
    with pytest.raises(MixcdError, match="exactly one"):
        build_lm("causal_lm", tok.vocab_size, tok.pad_id, tok.eos_id, None)
