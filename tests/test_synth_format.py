"""Golden tests of the synthesizer's wire format: strings, token ids, and the parser."""

from __future__ import annotations

import pytest

from ipt.synth import format as wire

PAIRS = [{"Q": "Who ran?", "A": "A dog."}, {"Q": "Where?", "A": "In the park."}]


def test_reading_part_and_pairs_are_byte_exact():
    assert wire.reading_part("The cat sat.") == "<s> <CON> The cat sat. </CON>\n\n"
    assert (
        wire.format_pairs(PAIRS)
        == "<QUE> Who ran? <ANS> A dog. </END>\n\n<QUE> Where? <ANS> In the park. </END>"
    )
    assert (
        wire.example("A dog ran.", PAIRS[:1])
        == "<s> <CON> A dog ran. </CON>\n\n<QUE> Who ran? <ANS> A dog. </END></s>"
    )


def test_prompt_puts_examples_first_and_the_current_reading_part_last():
    p = wire.prompt("Third.", [("First.", PAIRS[:1]), ("Second.", PAIRS[1:])])
    assert p == (
        "<s> <CON> First. </CON>\n\n<QUE> Who ran? <ANS> A dog. </END></s>"
        "<s> <CON> Second. </CON>\n\n<QUE> Where? <ANS> In the park. </END></s>"
        "<s> <CON> Third. </CON>\n\n"
    )
    assert "</END></s><s> <CON> " in p
    assert wire.last_reading_text(p) == "Third."
    with pytest.raises(ValueError, match="not a synthesizer prompt"):
        wire.last_reading_text("<s> <CON> Third. </CON>")


def test_prompt_token_ids_with_the_real_mistral_v1_tokenizer(mistral_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(mistral_tokenizer_dir)
    p = wire.prompt("The cat sat.", [("A dog ran.", PAIRS[:1])])
    ids = tok(p, add_special_tokens=False)["input_ids"]
    assert ids == [
        1, 523, 3185, 28767, 330, 3914, 5591, 28723, 1867, 3185, 28767, 13, 13,  # <s> <CON> A dog ran. </CON>\n\n
        28789, 20749, 28767, 6526, 5591, 28804, 523, 1251, 28735, 28767, 330, 3914, 28723,  # <QUE> Who ran? <ANS> A dog.
        1867, 5000, 28767, 2,  # </END></s>
        1, 523, 3185, 28767, 415, 5255, 2495, 28723, 1867, 3185, 28767, 13, 13,  # <s> <CON> The cat sat. </CON>\n\n
    ]  # fmt: skip
    # the literal <s> and </s> are the single BOS/EOS ids, never spelled out as text pieces
    assert ids.count(tok.bos_token_id) == 2 and ids.count(tok.eos_token_id) == 1
    assert tok.bos_token_id == 1 and tok.eos_token_id == 2
    # adding special tokens would put a second BOS in front: prompts must not be encoded that way
    assert tok(p)["input_ids"][:2] == [1, 1]
    # pieces split at <s>...</s> tokenize independently, so chain token counts add up exactly
    pieces = [wire.example("A dog ran.", PAIRS[:1]), wire.reading_part("The cat sat.")]
    assert sum(len(tok(x, add_special_tokens=False)["input_ids"]) for x in pieces) == len(ids)


def test_parse_complete_output():
    out = wire.parse("<QUE> Who ran? <ANS> A dog. </END>\n\n<QUE> Where? <ANS> In the park. </END>")
    assert out.pairs == PAIRS
    assert (out.truncated, out.malformed, out.duplicates) == (False, 0, 0)


def test_parse_drops_the_truncated_last_piece():
    out = wire.parse("<QUE> Who ran? <ANS> A dog. </END>\n\n<QUE> Where? <ANS> In the pa")
    assert out.pairs == PAIRS[:1]
    assert out.truncated
    # a complete-looking last pair without </END> is still cut off (the model was stopped)
    assert wire.parse("<QUE> Who ran? <ANS> A dog.").pairs == []
    # trailing whitespace after the last </END> is not a truncated pair
    tail = wire.parse("<QUE> Who ran? <ANS> A dog. </END>\n\n")
    assert tail.pairs == PAIRS[:1] and not tail.truncated


@pytest.mark.parametrize(
    "piece",
    [
        "Who ran? <ANS> A dog.",  # no <QUE>
        "<QUE> Who ran? A dog.",  # no <ANS>
        "<QUE> Who ran? <ANS> A <ANS> dog.",  # two <ANS>
        "<QUE> Who ran? <ANS>   ",  # empty answer
        "text before <QUE> Who ran? <ANS> A dog.",  # question part does not start with <QUE>
    ],
)
def test_parse_skips_malformed_pieces(piece):
    out = wire.parse(f"{piece} </END>\n\n<QUE> Where? <ANS> In the park. </END>")
    assert out.pairs == PAIRS[1:]
    assert out.malformed == 1


def test_parse_deduplicates_questions_case_insensitively_keeping_the_first():
    out = wire.parse("<QUE> Who ran? <ANS> A dog. </END>\n\n<QUE> WHO RAN? <ANS> A cat. </END>")
    assert out.pairs == PAIRS[:1]
    assert out.duplicates == 1


def test_parse_keeps_multiple_choice_and_chain_of_thought_as_they_are():
    mc_q = wire.multiple_choice("Is the cat sitting?", ["yes", "no", "it is not possible to tell"])
    assert mc_q == "Is the cat sitting?\nOptions:\n- yes\n- no\n- it is not possible to tell"
    cot_q, cot_a = wire.chain_of_thought("Why did it sit?", "It was tired.", "rest")
    assert cot_q == "Why did it sit?\nLet's think step by step."
    assert cot_a == "It was tired.\nTherefore, the answer is rest"
    gen = wire.format_pairs([{"Q": mc_q, "A": "yes"}, {"Q": cot_q, "A": cot_a}])
    assert wire.parse(gen).pairs == [{"Q": mc_q, "A": "yes"}, {"Q": cot_q, "A": cot_a}]
