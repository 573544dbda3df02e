"""`ipt quickstart` end to end, as a user runs it: a real subprocess, then a resumed rerun."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_quickstart_runs_every_stage_and_resumes(tmp_path):
    run_dir = tmp_path / "qs"
    cmd = [sys.executable, "-m", "ipt.cli", "quickstart", f"run_dir={run_dir}", "steps=25", "eval_limit=2"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    report = (run_dir / "REPORT.md").read_text()
    for heading in ("## 1. Synthesis", "## 2. Cooking", "## 3. Tokens", "## 4. Training", "## 5. A sample"):
        assert heading in report
    pairs = int(re.search(r"-> (\d+) pairs", report).group(1))
    assert pairs > 1000
    start, end = map(float, re.search(r"25 steps, loss ([\d.]+) -> ([\d.]+)", report).groups())
    assert end < start - 1.0
    assert "<QUE>" not in report and "<CON>" not in report
    table = report.split("## 6. The paper's nine general tasks")[1]
    rows = [line for line in table.splitlines() if line.startswith("| paper_")]
    assert len(rows) == 9 and "paper_mmlu" in table and "**CORE**" in table
    assert (run_dir / "eval" / "results.md").exists()

    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "3 already done" in second.stderr
    assert "done earlier, skipped" in second.stderr
    assert "ipt train: done at step 25" in second.stderr + second.stdout
