"""Real dictionaries as generation data: the dictd reader on hand-made databases (senses, pronunciations,
entries spanning lines, header entries, corrupt files), the translation and QA splits, and the probe that θ0
learns and no pool holds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from dictd_fixtures import acronym_dictionary, b64, word_dictionary, write_dictd

from mixcd_cli.data import build_experiment, split_probe
from mixcd_cli.errors import MixcdError
from mixcd_cli.generation.dictd import (
    b64_number,
    load_freedict,
    load_vera_qa,
    parse_freedict,
    parse_vera,
    read_dictd,
)

ENTRIES = [
    ("abide", "abide /əbaid/\n1. attendre\n2. soutenir, supporter\n3. perséverer\n"),
    ("acute", "acute /ɐkjˈuːt/ (´)\nAkut <masc>, Akut-Zeichen <neut> [print]\n"
              "      \"The word 'côte' has no acute.\"  - Das Wort 'côte' hat keinen Akut.\n"
              "   Synonym: {acute accent}\n\n see: {acutes}\n\n"),
    ("account", "account /əkaunt/\n1. facture\n2. faire-part,\n    renseignement\n"),  # a sense spanning two lines
    ("bread", "bread /brɛd/\npain (blanc)\n"),
    ("breadth", "bread /brɛd/\npain (blanc)\n"),  # a second headword pointing at the same entry: given once
]


def test_base64_numbers_round_trip() -> None:
    for n in (0, 1, 63, 64, 4095, 4096, 123456789):
        assert b64_number(b64(n), "x") == n
    assert b64_number("B", "x") == 1 and b64_number("BA", "x") == 64
    with pytest.raises(MixcdError, match="not a dictd index number"):
        b64_number("A*", "x")


def test_reader_skips_the_header_and_keeps_index_order(tmp_path: Path) -> None:
    index, data = write_dictd(tmp_path, "freedict-eng-fra", ENTRIES[:4])
    with open(index, "a", encoding="utf-8") as f:  # a duplicate pointer to bread's entry
        line = index.read_text(encoding="utf-8").splitlines()[-1]
        f.write("breadth\t" + "\t".join(line.split("\t")[1:]) + "\n")
    rows = read_dictd(index, data)
    assert [h for h, _ in rows] == ["abide", "acute", "account", "bread"]
    assert not any(text.startswith("This is a test") for _, text in rows)


def test_senses_pronunciations_annotations_and_wrapped_lines() -> None:
    abide = parse_freedict(ENTRIES[0][1])
    assert abide.headword == "abide"
    assert abide.senses == (("attendre",), ("soutenir", "supporter"), ("perséverer",))
    acute = parse_freedict(ENTRIES[1][1])
    assert acute.headword == "acute"
    assert acute.senses == (("Akut", "Akut-Zeichen"),)  # example, synonym and see: lines are not senses
    account = parse_freedict(ENTRIES[2][1])
    assert account.senses == (("facture",), ("faire-part", "renseignement"))
    assert parse_freedict(ENTRIES[3][1]).senses == (("pain",),)


def test_acronyms_wrap_and_lose_their_notes() -> None:
    entry = parse_vera('3GIP\n       3rd Generation . Internet Protocol (org., IP, GPRS, WLAN,\n'
                       'mobile-systems), "3G.IP"\n       \n')
    assert entry.headword == "3GIP"
    assert entry.senses == (("3rd Generation . Internet Protocol",),)
    assert parse_vera("4GT\n       4 GB [RAM] Tuning (RAM, GB)\n").senses == (("4 GB RAM Tuning",),)


def test_an_index_pointing_past_the_data_is_refused(tmp_path: Path) -> None:
    index, data = write_dictd(tmp_path, "freedict-eng-fra", ENTRIES[:2])
    lines = index.read_text(encoding="utf-8").splitlines()
    word, offset, _ = lines[-1].split("\t")
    lines[-1] = f"{word}\t{offset}\t{b64(10_000)}"
    index.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(MixcdError, match="past the .* bytes"):
        read_dictd(index, data)


def test_a_truncated_data_file_is_refused(tmp_path: Path) -> None:
    index, data = write_dictd(tmp_path, "freedict-eng-fra", ENTRIES[:4])
    data.write_bytes(data.read_bytes()[:-20])
    with pytest.raises(MixcdError, match="truncated"):
        read_dictd(index, data)


def test_a_dictionary_not_installed_names_its_package(tmp_path: Path) -> None:
    with pytest.raises(MixcdError, match="apt-get install -y dict-freedict-eng-fra"):
        load_freedict(pair="eng-fra", directory=str(tmp_path))
    with pytest.raises(MixcdError, match="apt-get install -y dict-vera"):
        load_vera_qa(directory=str(tmp_path))


def test_an_unknown_language_pair_names_the_installed_ones(tmp_path: Path) -> None:
    word_dictionary(tmp_path, "eng-fra", [("house", "maison")])
    with pytest.raises(MixcdError, match="eng-fra"):
        load_freedict(pair="eng-xxx", directory=str(tmp_path))


WORDS = [(f"w{c}{d}", f"t{d}{c}") for c in "abcdefghij" for d in "klmnopqrst"]  # 100 entries, words of 3 letters


def test_splits_follow_dictionary_order_and_never_overlap(tmp_path: Path) -> None:
    word_dictionary(tmp_path, "eng-fra", [(w.replace("w", "x"), t) for w, t in WORDS])  # letters only
    train = load_freedict(pair="eng-fra", directory=str(tmp_path), test_every=10)
    test = load_freedict(pair="eng-fra", train=False, directory=str(tmp_path), test_every=10)
    assert len(train) == 90 and len(test) == 10
    assert not set(train.prompts) & set(test.prompts)
    assert test.prompts[0] == "<fra> xat="  # the 10th entry in dictionary order
    capped = load_freedict(pair="eng-fra", directory=str(tmp_path), test_every=10, n_train=9)
    # evenly spaced over the whole dictionary, not its first letters
    assert [p.split()[1][1] for p in capped.prompts] == list("abcdefghij")[:9]
    again = load_freedict(pair="eng-fra", directory=str(tmp_path), test_every=10, n_train=9)
    assert again.fingerprint == capped.fingerprint
    tagged = load_freedict(pair="eng-fra", directory=str(tmp_path), tag="<fr>")
    assert tagged.prompts[0].startswith("<fr> ")


def test_filters_keep_single_words_of_the_given_lengths(tmp_path: Path) -> None:
    word_dictionary(tmp_path, "eng-fra", [("house", "maison"), ("go away", "partir"), ("tree", "arbre vert"),
                                          ("x", "ix"), ("lemon", "citron"), ("b2b", "bab"), ("hotel", "hôtel")])
    rows = load_freedict(pair="eng-fra", directory=str(tmp_path), test_every=100)
    assert rows.prompts == ["<fra> house=", "<fra> lemon=", "<fra> hotel="]
    assert rows.texts == ["maison", "citron", "hôtel"]


def test_trained_test_rows_are_training_rows(tmp_path: Path) -> None:
    word_dictionary(tmp_path, "eng-fra", [(w.replace("w", "x"), t) for w, t in WORDS])
    train = load_freedict(pair="eng-fra", directory=str(tmp_path), n_train=40)
    test = load_freedict(pair="eng-fra", train=False, directory=str(tmp_path), n_train=40, n_test=8,
                         test_rows="trained")
    assert len(test) == 8 and set(test.prompts) <= set(train.prompts)
    with pytest.raises(MixcdError, match="heldout, trained"):
        load_freedict(pair="eng-fra", directory=str(tmp_path), test_rows="both")


def test_acronym_questions(tmp_path: Path) -> None:
    acronym_dictionary(tmp_path, [("RAM", "Random Access Memory"), ("CPU", "Central Processing Unit (computer)"),
                                  ("X", "a very long expansion that does not fit in the answer")])
    qa = load_vera_qa(directory=str(tmp_path), test_every=100, max_answer_len=24)
    assert qa.prompts == ["What does RAM stand for? ", "What does CPU stand for? "]
    assert qa.texts == ["Random Access Memory", "Central Processing Unit"]


# ---------------------------------------------------------------- the probe


def _experiment(directory: Path, probe: float | None, stages: int = 2):
    word_dictionary(directory, "eng-deu", [(w.replace("w", "d"), t) for w, t in WORDS])
    word_dictionary(directory, "eng-fra", [(w.replace("w", "f"), t) for w, t in WORDS])
    word_dictionary(directory, "eng-spa", [(w.replace("w", "s"), t) for w, t in WORDS])

    def spec(pair: str) -> dict:
        return {"name": pair, "dataset": "freedict", "options": {"pair": pair, "directory": str(directory)}}

    prior = {**spec("eng-deu"), "probe": probe, "probe_seed": 3}
    pairs = ["eng-fra", "eng-spa"][:stages]
    return build_experiment(prior, spec("eng-fra"), "shared", str(directory),
                            stages=[{"name": p, "options": {"pair": p}} for p in pairs])


def test_the_probe_is_in_no_pool_and_theta0_learns_it(tmp_path: Path) -> None:
    exp = _experiment(tmp_path, 0.2)
    src = exp.pool.source
    probe = {src.prompts[i] for i in exp.prior_test.index.tolist()}
    assert len(probe) == 18 and exp.prior_test.source is src  # a fifth of the 90 training rows
    learnt = {src.prompts[i] for i in exp.prior_train.index.tolist()}
    assert probe <= learnt and len(learnt) == 90
    for k in (1, 2):
        for mode in ("all", "prior", "previous"):
            assert not probe & set(_prompts(exp.pool_at(k, mode))), (k, mode)
    assert exp.heldout is not None and len(exp.heldout) == 10
    # a seed and a fraction: the same probe every time, another seed another probe
    assert torch.equal(_experiment(tmp_path, 0.2).prior_test.index, exp.prior_test.index)


def _prompts(task) -> list[str]:
    """The prompt of every row of a task, a pool made of several tasks or not."""
    src = task.source
    if not hasattr(src, "parts"):
        return [src.prompts[i] for i in task.index.tolist()]
    part = torch.searchsorted(src.offsets[1:], task.index, right=True)
    return [_prompts(src.parts[p])[int(i - src.offsets[p])] for p, i in zip(part.tolist(), task.index, strict=True)]


def test_probe_fractions_outside_zero_one_are_refused(tmp_path: Path) -> None:
    exp = _experiment(tmp_path, None)
    for bad in (0.0, 1.0, -0.5, 1.5):
        with pytest.raises(MixcdError, match=r"fraction in \(0, 1\)"):
            split_probe(exp.pool, bad, 0)
    with pytest.raises(MixcdError, match="leaves no probe"):
        split_probe(exp.pool, 0.001, 0)
