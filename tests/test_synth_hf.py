"""The `hf` engine on a tiny random Mistral with the real v1 tokenizer, and `ipt synthesize engine=hf`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ipt.synth import format as wire
from ipt.synth.engines import HFEngine, Sampling
from ipt.synth.run import main
from ipt.synth.tiny import build_tiny_mistral


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, mistral_tokenizer_dir) -> Path:
    return build_tiny_mistral(tmp_path_factory.mktemp("tiny") / "mistral")


def test_batched_left_padded_generation_equals_one_prompt_at_a_time(tiny_model, corpus_docs):
    prompts = [wire.reading_part(d["text"][: 40 + 90 * i]) for i, d in enumerate(corpus_docs[:5])]
    sampling = Sampling(max_new_tokens=12)
    batched = HFEngine(str(tiny_model), batch_size=5, device="cpu").generate(prompts, sampling)
    single = HFEngine(str(tiny_model), batch_size=1, device="cpu").generate(prompts, sampling)
    assert len({g.prompt_tokens for g in batched}) == 5  # really different lengths, so really padded
    assert [g.token_ids for g in batched] == [g.token_ids for g in single]
    engine = HFEngine(str(tiny_model), device="cpu")
    for p, g in zip(prompts, batched, strict=True):
        assert g.prompt_tokens == engine.count_tokens([p])[0]
        assert g.generated_tokens == len(g.token_ids) <= 12
        assert g.text == engine.tokenizer.decode(list(g.token_ids), skip_special_tokens=True)


def test_synthesize_engine_hf_two_rounds_end_to_end(tmp_path, tiny_model, corpus_docs):
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"text": d["text"]}) + "\n" for d in corpus_docs[:8]))
    out = tmp_path / "out"
    args = [f"input={inp}", f"output_dir={out}", "engine=hf", f"model={tiny_model}", "rounds=2"]
    assert main([*args, "max_new_tokens=16", "batch_size=4", "progress=false"]) == 0
    lines = (out / "chunk-000000.jsonl").read_text().splitlines()
    assert len(lines) == 4
    contexts = []
    for line in lines:
        coll = json.loads(line)
        assert [set(e) for e in coll] == [{"context", "QA_list", "inherit_from_prev", "followed_by_next"}] * 2
        contexts += [e["context"] for e in coll]
    assert sorted(contexts) == sorted(d["text"].strip() for d in corpus_docs[:8])
    stats = json.loads((out / "stats.shard-00000-of-00001.json").read_text())
    assert stats["texts"] == 8 and stats["collections"] == 4
    assert 8 <= stats["generated_tokens"] <= 8 * 16
    assert stats["prompt_tokens"] > 8 * 50
    # a random model writes no `</END>`-terminated pair: every text is zero-pair, every link breaks
    assert (stats["pairs"], stats["zero_pair_texts"], stats["inherited_entries"]) == (0, 8, 0)
    assert stats["chains_broken_by_zero_pairs"] == 4
    assert stats["truncated_generations"] == 8  # each output was cut at max_new_tokens without `</END>`


def test_jax_engine_generates_the_hf_engines_tokens(tiny_model, corpus_docs, tmp_path):
    """ipt's own model and decoder run the synthesizer's prompt format: from the HF directory
    directly and from an imported ipt model directory, greedy tokens equal the hf engine's."""
    from ipt.model.hf import import_hf
    from ipt.synth.engines import JAXEngine

    prompts = [wire.reading_part(d["text"][: 40 + 90 * i]) for i, d in enumerate(corpus_docs[:5])]
    sampling = Sampling(max_new_tokens=12)
    want = HFEngine(str(tiny_model), batch_size=5, device="cpu").generate(prompts, sampling)
    ipt_dir = import_hf(tiny_model, tmp_path / "ipt-model")
    for source in (str(tiny_model), str(ipt_dir)):
        engine = JAXEngine(source, str(tiny_model), batch_size=3)
        got = engine.generate(prompts, sampling)
        assert [g.token_ids for g in got] == [g.token_ids for g in want]
        assert [(g.text, g.prompt_tokens, g.generated_tokens) for g in got] == [
            (g.text, g.prompt_tokens, g.generated_tokens) for g in want
        ]


def test_synthesize_engine_jax_writes_what_engine_hf_writes(tmp_path, tiny_model, corpus_docs):
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"text": d["text"]}) + "\n" for d in corpus_docs[:6]))
    outputs = {}
    for engine in ("hf", "jax"):
        out = tmp_path / engine
        args = [f"input={inp}", f"output_dir={out}", f"engine={engine}", f"model={tiny_model}", "rounds=2"]
        assert main([*args, "max_new_tokens=10", "batch_size=4", "progress=false"]) == 0
        outputs[engine] = (out / "chunk-000000.jsonl").read_bytes()
    assert outputs["jax"] == outputs["hf"]
