"""Kill `ipt tokenize` (SIGKILL, a real subprocess) mid-run, resume it, and compare bytes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ipt.data.tokenize import STATE_DIR, TokenizeConfig, tokenize


def _dir_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def test_killed_and_resumed_run_is_byte_identical(tmp_path, bpe_tokenizer_dir, corpus_docs):
    inputs = []
    for i in range(3):
        path = tmp_path / f"part-{i}.jsonl"
        path.write_text("".join(json.dumps(d) + "\n" for d in corpus_docs))
        inputs.append(str(path))
    keys = [f"input=[{','.join(inputs)}]", f"tokenizer={bpe_tokenizer_dir}", "shard_chars=20000"]
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "ipt.cli", "tokenize", *keys, f"output_dir={killed}", "num_workers=1"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    markers: list[Path] = []
    while len(markers) < 10 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
        markers = list((killed / STATE_DIR).glob("shard-*.json")) if (killed / STATE_DIR).exists() else []
    os.killpg(proc.pid, signal.SIGKILL)  # the main process and its workers, as a crash would
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it was killed: {err.decode()[-2000:]}"
    assert not (killed / "manifest.json").exists()
    done_at_kill = len(list((killed / STATE_DIR).glob("shard-*.json")))
    assert done_at_kill >= 10

    resumed = subprocess.run(
        [sys.executable, "-m", "ipt.cli", "tokenize", *keys, f"output_dir={killed}", "progress=false"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    reference = tmp_path / "reference"
    tokenize(
        TokenizeConfig(
            input=inputs,
            output_dir=str(reference),
            tokenizer=str(bpe_tokenizer_dir),
            shard_chars=20_000,
            num_workers=2,
            progress=False,
        )
    )
    got, want = _dir_bytes(killed), _dir_bytes(reference)
    assert sorted(got) == sorted(want)
    assert got == want
    assert len(want) - 1 > done_at_kill, "the kill left shards for the resumed run to write"
