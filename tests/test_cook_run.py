"""`ipt cook` end to end: released-corpus lines, golden texts, shards, resume, bad input, instructions."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ipt.collection import iter_collections
from ipt.cook.pools import default_pools
from ipt.cook.render import cook_collection
from ipt.cook.run import MANIFEST, CookConfig, cook, main
from ipt.cook.synthetic import synthetic_collections
from ipt.stage import BadInputError
from ipt.stage.identity import RunChangedError

GOLDEN = Path(__file__).parent / "golden"
RELEASED = GOLDEN / "released_corpus_lines.jsonl"
# (line of the released-corpus fixture, seed): one case per layout, found by searching seeds.
GOLDEN_CASES = [(0, 0), (1, 1), (0, 3), (1, 3), (0, 19), (1, 13)]
MARKERS = ("<CON>", "</CON>", "<QUE>", "<ANS>", "</END>", "<s>", "</s>")


def _read_texts(path: Path) -> list:
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()]


def test_released_corpus_lines_cook_into_clean_texts(tmp_path):
    assert main([f"input={RELEASED}", f"output_dir={tmp_path}", "seed=3"]) == 0
    texts = _read_texts(tmp_path / "released_corpus_lines.jsonl")
    # line 1: one few-shot text for the linked pair of entries, the pairless entry raw; line 2: one text
    assert len(texts) == 3
    assert texts[1].startswith("Chronic kidney disease affects")
    assert "412 residents of 18 care homes." in texts[0] and "Twelve weeks." in texts[0]
    assert "adherence" not in texts[0]  # the MC pair whose answer matches no option is dropped
    assert "The passage states that chlorophyll absorbs red and blue light" in texts[2]
    assert not [m for t in texts for m in MARKERS if m in t]
    stats = json.loads((tmp_path / MANIFEST).read_text())["counts"]
    assert stats["pairs_in"] == 11 and stats["pairs_out"] == 10 and stats["dropped_mc_no_match"] == 1
    assert stats["collections"] == 2 and stats["texts"] == 3 and stats["raw_texts"] == 1


def _golden_text() -> str:
    lines = list(iter_collections(RELEASED))
    parts = []
    for line, seed in GOLDEN_CASES:
        cooked = cook_collection(lines[line][1], seed, default_pools())
        for layout, text in zip(cooked.layouts, cooked.texts, strict=True):
            parts.append(f"===== line {line + 1}, seed {seed}: {layout} =====\n{text}\n")
    return "".join(parts)


def test_golden_rendered_texts():
    """Catches accidental changes to templates or draw order. Regenerate after a deliberate one with
    IPT_UPDATE_GOLDEN=1 pytest tests/test_cook_run.py -k golden, and review the diff."""
    path = GOLDEN / "cook_layouts.txt"
    text = _golden_text()
    if os.environ.get("IPT_UPDATE_GOLDEN"):
        path.write_text(text, encoding="utf-8")
    expected = path.read_text(encoding="utf-8")
    assert text == expected
    for layout in ("classic", "dialog", "numbered", "inline", "next_turn", "classic+inversion"):
        assert f": {layout} =====" in expected


def _write_collections(path: Path, collections: list) -> None:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        for c in collections:
            f.write(json.dumps(c) + "\n")


@pytest.fixture(scope="module")
def collections(corpus_docs) -> list:
    return list(synthetic_collections((d["text"] for d in corpus_docs[:180]), seed=5, per_collection=3))


def test_same_seed_same_bytes_across_shards_files_and_workers(tmp_path, collections):
    whole = tmp_path / "whole"
    _write_collections(tmp_path / "all.jsonl", collections)
    cook(CookConfig(input=str(tmp_path / "all.jsonl"), output_dir=str(whole), seed=11))
    reference = (whole / "all.jsonl").read_bytes()
    assert reference.count(b"\n") >= len(collections)

    parts = tmp_path / "parts"
    (parts / "sub").mkdir(parents=True)
    names = ["p0.jsonl", "p1.jsonl.gz", "sub/p2.jsonl"]
    for k, name in enumerate(names):
        _write_collections(parts / name, collections[k * 20 : (k + 1) * 20])
    sharded = tmp_path / "sharded"
    for shard in range(2):
        cfg = dict(input=str(parts / "**/*.jsonl*"), output_dir=str(sharded), seed=11, num_shards=2)
        cook(CookConfig(**cfg, shard=shard, num_workers=2 if shard == 0 else 1))
        assert (sharded / MANIFEST).exists() == (shard == 1)  # written once every shard is done
    outputs = ["p0.jsonl", "p1.jsonl", "sub/p2.jsonl"]
    assert b"".join((sharded / n).read_bytes() for n in outputs) == reference

    other = tmp_path / "other"
    cook(CookConfig(input=str(tmp_path / "all.jsonl"), output_dir=str(other), seed=12))
    assert (other / "all.jsonl").read_bytes() != reference


def test_rerun_skips_finished_files_and_refuses_or_redoes_changed_settings(tmp_path, collections, capsys):
    _write_collections(tmp_path / "in.jsonl", collections[:10])
    cfg = CookConfig(input=str(tmp_path / "in.jsonl"), output_dir=str(tmp_path / "out"))
    cook(cfg)
    first = (tmp_path / "out/in.jsonl").read_bytes()
    capsys.readouterr()
    assert cook(cfg) == {}
    assert "done earlier, skipped" in capsys.readouterr().err
    with pytest.raises(RunChangedError, match=r"seed: 0 -> 1"):
        cook(cfg.model_copy(update={"seed": 1}))
    assert (tmp_path / "out/in.jsonl").read_bytes() == first
    cook(cfg.model_copy(update={"seed": 1, "on_change": "redo"}))
    cook(cfg.model_copy(update={"seed": 1, "output_dir": str(tmp_path / "fresh")}))
    assert (tmp_path / "out/in.jsonl").read_bytes() == (tmp_path / "fresh/in.jsonl").read_bytes() != first
    assert not list((tmp_path / "out").glob(".*.tmp"))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            '{"context": "x"}',
            r"bad\.jsonl:2: expected a read collection \(a JSON list of entries\), got dict",
        ),
        ('[{"context": "x"}]', r"bad\.jsonl:2: entry 0: missing \['QA_list'\]"),
        ('[{"context": "x", "QA_list": [{"Q": "q"}]}]', r"entry 0: `QA_list\[0\]` must be"),
        (
            '[{"context": "x", "QA_list": []}, {"context": "y", "QA_list": [], "inherit_from_prev": "yes"}]',
            r"bad\.jsonl:2: entry 1: `inherit_from_prev` must be true or false",
        ),
        ('[{"context": "x", "QA_list": [{"Q": "q", "A": 3}]}]', r"`QA_list\[0\]\.A` must be a string"),
        ("[{", r"bad\.jsonl:2: not valid JSON"),
    ],
)
def test_bad_lines_are_named_by_file_line_and_key(tmp_path, line, message):
    good = json.dumps([{"context": "fine", "QA_list": [], "inherit_from_prev": False}])
    (tmp_path / "bad.jsonl").write_text(good + "\n" + line + "\n")
    out = tmp_path / "out"
    with pytest.raises(BadInputError, match=message):
        cook(CookConfig(input=str(tmp_path / "bad.jsonl"), output_dir=str(out)))
    assert not (out / "bad.jsonl").exists() and not list(out.glob(".*.tmp"))
    totals = cook(CookConfig(input=str(tmp_path / "bad.jsonl"), output_dir=str(out), skip_bad=True))
    assert totals["bad_lines"] == 1 and totals["texts"] == 1


def test_general_instructions_are_question_space_response(tmp_path):
    records = [
        {"system_prompt": "be nice", "question": "What is 2+2?", "response": "4"},
        {"system_prompt": "", "question": "  Name a colour. ", "response": "Blue."},
        {"system_prompt": "", "question": "Blank response", "response": "  "},
    ]
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "orca.parquet")
    out = tmp_path / "out"
    assert main([f"input={tmp_path / 'orca.parquet'}", f"output_dir={out}", "format=instructions"]) == 0
    assert _read_texts(out / "orca.jsonl") == ["What is 2+2? 4", "Name a colour. Blue."]

    masked = tmp_path / "masked"
    main(
        [
            f"input={tmp_path / 'orca.parquet'}",
            f"output_dir={masked}",
            "format=instructions",
            "loss_on=response",
        ]
    )
    segments = _read_texts(masked / "orca.jsonl")
    assert segments[0] == [{"text": "What is 2+2?", "train": False}, {"text": " 4", "train": True}]
    assert ["".join(s["text"] for s in seg) for seg in segments] == ["What is 2+2? 4", "Name a colour. Blue."]
    stats = json.loads((masked / MANIFEST).read_text())["counts"]
    assert stats["records"] == 3 and stats["dropped_blank"] == 1


def test_missing_instruction_field_is_named(tmp_path):
    (tmp_path / "x.jsonl").write_text(json.dumps({"prompt": "q", "response": "r"}) + "\n")
    with pytest.raises(
        BadInputError, match=r"x\.jsonl:1: no field 'question'; the record has: prompt, response"
    ):
        cook(
            CookConfig(input=str(tmp_path / "x.jsonl"), output_dir=str(tmp_path / "o"), format="instructions")
        )


def test_shard_must_be_below_num_shards(capsys):
    assert main(["input=x", "output_dir=y", "num_shards=2", "shard=2"]) == 2
    assert "shard=2 must be below num_shards=2" in capsys.readouterr().err


def test_synthesize_cook_tokenize_end_to_end(tmp_path, corpus_docs, mistral_tokenizer_dir):
    """Rules-engine collections cook into texts that `ipt tokenize` stores token for token."""
    from array_record.python.array_record_module import ArrayRecordReader
    from transformers import AutoTokenizer

    from ipt.data.records import decode_record, read_manifest
    from ipt.data.tokenize import TokenizeConfig, tokenize
    from ipt.synth.run import SynthesizeConfig, synthesize

    raw = tmp_path / "raw.jsonl"
    raw.write_text("".join(json.dumps({"text": d["text"]}) + "\n" for d in corpus_docs[:24]))
    synth = tmp_path / "synth"
    synthesize(
        SynthesizeConfig(input=str(raw), output_dir=str(synth), engine="rules", rounds=2, progress=False)
    )
    cooked = tmp_path / "cooked"
    totals = cook(CookConfig(input=str(synth / "chunk-*.jsonl"), output_dir=str(cooked)))
    assert totals["pairs_out"] > 24 and totals["pairs_out"] == totals["pairs_in"]
    texts = [t for p in sorted(cooked.glob("*.jsonl")) for t in _read_texts(p)]
    tokens = tmp_path / "tokens"
    tokenize(
        TokenizeConfig(
            input=str(cooked / "*.jsonl"),
            output_dir=str(tokens),
            tokenizer=str(mistral_tokenizer_dir),
            progress=False,
        )
    )
    manifest = read_manifest(tokens)
    assert manifest.num_docs == len(texts)
    tok = AutoTokenizer.from_pretrained(mistral_tokenizer_dir)
    reader = ArrayRecordReader(str(tokens / manifest.shards[0].file))
    ids, _ = decode_record(reader.read([0])[0], manifest.dtype, manifest.has_loss_mask)
    reader.close()
    assert tok.decode(ids, skip_special_tokens=True) == tok.decode(
        tok(texts[0]).input_ids, skip_special_tokens=True
    )


def test_response_only_loss_mask_reaches_the_shards(tmp_path, mistral_tokenizer_dir):
    from array_record.python.array_record_module import ArrayRecordReader
    from transformers import AutoTokenizer

    from ipt.data.records import decode_record, read_manifest
    from ipt.data.tokenize import TokenizeConfig, tokenize

    (tmp_path / "orca.jsonl").write_text(
        json.dumps({"question": "Name a primary colour.", "response": "Blue"}) + "\n"
    )
    cooked = tmp_path / "cooked"
    cook(
        CookConfig(
            input=str(tmp_path / "orca.jsonl"),
            output_dir=str(cooked),
            format="instructions",
            loss_on="response",
        )
    )
    tokens = tmp_path / "tokens"
    tokenize(
        TokenizeConfig(
            input=str(cooked / "orca.jsonl"),
            output_dir=str(tokens),
            tokenizer=str(mistral_tokenizer_dir),
            loss_mask=True,
            progress=False,
        )
    )
    manifest = read_manifest(tokens)
    reader = ArrayRecordReader(str(tokens / manifest.shards[0].file))
    ids, mask = decode_record(reader.read([0])[0], manifest.dtype, manifest.has_loss_mask)
    reader.close()
    tok = AutoTokenizer.from_pretrained(mistral_tokenizer_dir)
    trained = tok.decode([i for i, m in zip(ids, mask, strict=True) if m], skip_special_tokens=True)
    untrained = tok.decode([i for i, m in zip(ids, mask, strict=True) if not m], skip_special_tokens=True)
    assert trained.strip() == "Blue"
    assert untrained == "Name a primary colour."


def test_lone_surrogates_and_empty_raw_texts_do_not_break_the_output(tmp_path):
    lines = [
        '[{"context": "broken \\ud800 text", "QA_list": [], "inherit_from_prev": false}]',
        '[{"context": "  ", "QA_list": [], "inherit_from_prev": false}]',
    ]
    (tmp_path / "x.jsonl").write_text("\n".join(lines) + "\n")
    totals = cook(CookConfig(input=str(tmp_path / "x.jsonl"), output_dir=str(tmp_path / "o")))
    assert _read_texts(tmp_path / "o/x.jsonl") == ["broken ? text"]
    assert totals["texts_with_invalid_unicode"] == 1 and totals["empty_texts_skipped"] == 1
