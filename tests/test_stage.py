"""The stage layer across synthesize, cook and tokenize: run identity, completion records,
directory inputs, outputs that would overwrite inputs, stale temps and orphaned workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ipt.cook.run import CookConfig, cook
from ipt.data.tokenize import TokenizeConfig, tokenize
from ipt.stage import BadInputError
from ipt.stage.files import atomic_write_text, remove_stale_temps
from ipt.stage.identity import COMPLETE_FILE, RUN_FILE, RunChangedError
from ipt.synth.run import SynthesizeConfig, synthesize


@pytest.fixture(autouse=True)
def _tokenizer_cache(mistral_tokenizer_dir):
    """Stages load `mistral-v1` through the same (test) cache as the fixture."""


@pytest.fixture
def texts(tmp_path, corpus_docs) -> Path:
    path = tmp_path / "in" / "docs.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps({"text": d["text"]}) + "\n" for d in corpus_docs[:60]))
    return path


def synth(inp, out, **kw) -> dict:
    inp = inp if isinstance(inp, list) else str(inp)
    return synthesize(SynthesizeConfig(input=inp, output_dir=str(out), engine="rules", progress=False, **kw))


def tok(inp, out, tokenizer, **kw):
    return tokenize(
        TokenizeConfig(input=str(inp), output_dir=str(out), tokenizer=str(tokenizer), progress=False, **kw)
    )


def edit_in_place(path: Path) -> None:
    """Change one character without changing the size (and keep the mtime from looking older)."""
    data = bytearray(path.read_bytes())
    i = data.index(b"the")
    data[i : i + 3] = b"THE"
    time.sleep(0.01)
    path.write_bytes(bytes(data))


def test_every_stage_sees_an_input_edited_in_place_at_the_same_size(tmp_path, texts, mistral_tokenizer_dir):
    synth(texts, tmp_path / "synth", chunk_texts=20)
    cook(CookConfig(input=str(tmp_path / "synth"), output_dir=str(tmp_path / "cook")))
    tok(tmp_path / "cook", tmp_path / "tok", mistral_tokenizer_dir)
    stages = {
        "synth": (texts, lambda: synth(texts, tmp_path / "synth", chunk_texts=20)),
        "cook": (
            tmp_path / "synth/chunk-000000.jsonl",
            lambda: cook(CookConfig(input=str(tmp_path / "synth"), output_dir=str(tmp_path / "cook"))),
        ),
        "tok": (
            tmp_path / "cook/chunk-000000.jsonl",
            lambda: tok(tmp_path / "cook", tmp_path / "tok", mistral_tokenizer_dir),
        ),
    }
    for source, rerun in stages.values():
        os.utime(source)  # touching without a change is no change: the rerun resumes (all done)
        rerun()
        size = source.stat().st_size
        edit_in_place(source)
        assert source.stat().st_size == size
        with pytest.raises(RunChangedError, match=rf"input {source}: content changed"):
            rerun()


def test_later_stages_read_a_directory_through_its_completion_record(tmp_path, texts, capsys):
    bad = tmp_path / "in" / "more.jsonl"
    bad.write_text('{"text": "fine"}\n' * 30 + "{not json\n")
    with pytest.raises(BadInputError, match=r"more\.jsonl:31"):
        synth([str(texts), str(bad)], tmp_path / "synth", chunk_texts=20)
    assert not (tmp_path / "synth" / COMPLETE_FILE).exists()
    with pytest.raises(BadInputError, match=r"unfinished `ipt synthesize` run \(no ipt_complete\.json\)"):
        cook(CookConfig(input=str(tmp_path / "synth"), output_dir=str(tmp_path / "cook")))
    assert not (tmp_path / "cook").exists()
    capsys.readouterr()
    glob = str(tmp_path / "synth" / "chunk-*.jsonl")  # naming the finished chunks is allowed, with a warning
    cook(CookConfig(input=glob, output_dir=str(tmp_path / "cook-glob")))
    assert "unfinished `ipt synthesize` run; using the files named anyway" in capsys.readouterr().err

    synth(texts, tmp_path / "done", chunk_texts=20)
    record = json.loads((tmp_path / "done" / COMPLETE_FILE).read_text())
    assert [o["path"] for o in record["outputs"]] == [f"chunk-00000{i}.jsonl" for i in range(3)]
    assert record["counts"]["texts"] == 60
    by_dir = cook(CookConfig(input=str(tmp_path / "done"), output_dir=str(tmp_path / "a")))
    by_glob = cook(CookConfig(input=str(tmp_path / "done" / "chunk-*.jsonl"), output_dir=str(tmp_path / "b")))
    assert by_dir == by_glob and by_dir["texts"] > 0

    with pytest.raises(BadInputError, match=r"is a directory with no ipt_run\.json"):
        cook(CookConfig(input=str(tmp_path / "in"), output_dir=str(tmp_path / "c")))


def test_a_stage_refuses_an_output_dir_that_holds_its_input(tmp_path, texts, mistral_tokenizer_dir):
    before = texts.read_bytes()
    synth(texts, tmp_path / "synth", chunk_texts=30)
    chunk = tmp_path / "synth" / "chunk-000000.jsonl"
    collections = chunk.read_bytes()
    with pytest.raises(
        BadInputError, match=r"holds the input .*chunk-000000\.jsonl: the stage would overwrite"
    ):
        cook(CookConfig(input=str(chunk), output_dir=str(tmp_path / "synth")))
    with pytest.raises(BadInputError, match="would overwrite its own input"):
        synth(texts, texts.parent)
    with pytest.raises(BadInputError, match="would overwrite its own input"):
        tok(texts, tmp_path, mistral_tokenizer_dir)
    assert texts.read_bytes() == before and chunk.read_bytes() == collections
    assert not (texts.parent / RUN_FILE).exists()


def test_a_directory_of_one_stage_is_refused_to_another(tmp_path, texts, mistral_tokenizer_dir):
    synth(texts, tmp_path / "out", chunk_texts=30)
    with pytest.raises(BadInputError, match=r"holds the output of `ipt synthesize`"):
        tok(texts, tmp_path / "out", mistral_tokenizer_dir)


def test_stale_temps_are_removed_only_for_the_outputs_a_run_owns(tmp_path):
    (tmp_path / "sub").mkdir()
    mine, theirs = tmp_path / "sub" / ".a.jsonl.x1y2z3.tmp", tmp_path / ".b.jsonl.q9w8e7.tmp"
    for p in (mine, theirs):
        p.write_text("half a file")
    keep = tmp_path / ".hidden.tmp"  # not a temp of this convention
    keep.write_text("x")
    assert remove_stale_temps(tmp_path, lambda target: target == Path("sub/a.jsonl")) == 1
    assert not mine.exists() and theirs.exists() and keep.exists()
    atomic_write_text(tmp_path / "sub" / "a.jsonl", "done\n")
    assert (tmp_path / "sub" / "a.jsonl").read_text() == "done\n"
    assert oct((tmp_path / "sub" / "a.jsonl").stat().st_mode & 0o777) != oct(0o600)


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_tokenize_workers_exit_when_only_the_main_process_is_killed(
    tmp_path, corpus_docs, mistral_tokenizer_dir
):
    """Each worker gets one long chunk; killed mid-chunk, the main process must not leave them running.

    The input is large enough (about 8M tokens) that an unloaded 2-core run lasts well past the kill.
    """
    body = "".join(json.dumps({"text": d["text"]}) + "\n" for d in corpus_docs) * 12
    for name in ("a", "b"):
        (tmp_path / f"{name}.jsonl").write_text(body)
    cmd = [sys.executable, "-m", "ipt.cli", "tokenize", f"input={tmp_path / '*.jsonl'}"]
    cmd += [
        f"output_dir={tmp_path / 'out'}",
        f"tokenizer={mistral_tokenizer_dir}",
        "num_workers=2",
        "progress=false",
    ]
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while len(_children(proc.pid)) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        time.sleep(1)  # the workers are inside their chunks now
        workers = _children(proc.pid)
        assert proc.poll() is None and len(workers) >= 2, "the run finished before its workers were seen"
        os.kill(proc.pid, signal.SIGKILL)  # the main process only, not its group
        proc.wait()
        deadline = time.monotonic() + 4
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(w) for w in workers), "workers outlived the killed tokenize"
        assert not list((tmp_path / "out").glob("shard-*.array_record"))
    finally:
        os.killpg(proc.pid, signal.SIGKILL)


def test_an_engine_only_key_under_another_engine_is_a_config_error(tmp_path, texts):
    proc = subprocess.run(
        [
            *(
                sys.executable,
                "-m",
                "ipt.cli",
                "synthesize",
                f"input={texts}",
                f"output_dir={tmp_path / 'o'}",
            ),
            *("engine=rules", "tensor_parallel_size=2"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "tensor_parallel_size is read only by engine=vllm; engine=rules does not use it" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "o").exists()
