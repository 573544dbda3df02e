#!/usr/bin/env bash
# Install ipt with its test extras (CPU PyTorch first, from the wheel on this machine's disk,
# so pip never pulls a CUDA build), lint, then run the whole test suite.
set -euo pipefail
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[test]"
ruff check .
set +e
python -m pytest -q tests
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "no tests were collected: failing" >&2; exit 1; fi
exit "$rc"
