"""Damaged shards (issue 12 item 4): refused at start by size or sha256, or named with the record when read.

The shards are written by the real `ipt tokenize`, damaged on disk, and read by the real grain
pipeline and `ipt train` (in-process, and as a subprocess where the error crosses threads).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from array_record.python.array_record_module import ArrayRecordReader
from test_train_loop import MODEL  # a step takes tens of milliseconds here

from ipt.data.integrity import ShardError, ShardReadError, check_sources, wants_checksums
from ipt.data.pipeline import DataConfig, make_batch_iterator
from ipt.data.records import read_manifest
from ipt.data.shard_writer import file_sha256
from ipt.data.tokenize import TokenizeConfig, tokenize
from ipt.train.run import main as train_main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory, bpe_tokenizer_dir, corpus_docs) -> Path:
    """300 documents of the built-in corpus, tokenized by `ipt tokenize` into a few shards."""
    root = tmp_path_factory.mktemp("tokenized")
    src = root / "in.jsonl"
    src.write_text("".join(json.dumps({"text": d["text"]}) + "\n" for d in corpus_docs[:300]))
    cfg = TokenizeConfig(
        input=str(src),
        output_dir=str(root / "shards"),
        tokenizer=str(bpe_tokenizer_dir),
        shard_chars=150_000,
        num_workers=1,
        progress=False,
    )
    tokenize(cfg)
    return root / "shards"


@pytest.fixture
def source(tokenized, tmp_path) -> Path:
    """A private copy of the shards, for one test to damage."""
    return Path(shutil.copytree(tokenized, tmp_path / "shards"))


def second_shard(directory: Path) -> Path:
    return directory / read_manifest(directory).shards[1].file


def flip_bytes_inside_a_record(shard: Path) -> int:
    """Flip 4 bytes inside a record's data, 10 kB into the shard (same size); return that record's index.

    Also checks the reproduction: array_record alone reports a bare hash mismatch, no file named.
    """
    data = bytearray(shard.read_bytes())
    for k in range(10_100, 10_104):
        data[k] ^= 0xFF
    shard.write_bytes(bytes(data))
    reader = ArrayRecordReader(str(shard))
    with pytest.raises(RuntimeError, match="chunk data hash mismatch") as raw:
        reader.read(list(range(reader.num_records())))
    assert shard.name not in str(raw.value)
    bad = []
    for i in range(reader.num_records()):
        try:
            reader.read([i])
        except RuntimeError:
            bad.append(i)
    reader.close()
    assert len(bad) == 1, bad
    return bad[0]


def write_config(path: Path, source: Path, run_dir: Path, **data) -> Path:
    cfg = {
        "run_dir": str(run_dir),
        "model": MODEL,
        "data": {
            "sources": [{"name": "corpus", "path": str(source)}],
            "seq_len": 32,
            "batch_size": 8,
            **data,
        },
        "steps": 20,
        "checkpoint": {"every": 5},
        "metrics": {"progress_bar": False, "tensorboard": False, "peak_flops": 1e11},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def assert_nothing_trained(run_dir: Path) -> None:
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "metrics.jsonl").exists()


def test_the_manifest_records_each_shards_size(tokenized):
    for shard in read_manifest(tokenized).shards:
        assert shard.bytes == (tokenized / shard.file).stat().st_size
    assert len(read_manifest(tokenized).shards) >= 3


def test_a_truncated_shard_is_refused_before_step_one(source, tmp_path, capsys):
    shard = second_shard(source)
    size = shard.stat().st_size
    shard.write_bytes(shard.read_bytes()[: size - 1000])
    run_dir = tmp_path / "run"
    assert train_main(["--config", str(write_config(tmp_path / "t.yaml", source, run_dir))]) == 2
    err = capsys.readouterr().err
    assert f"{shard}: {size - 1000:,} bytes, but manifest.json says {size:,}" in err
    assert f"ipt data inspect --verify {source}" in err and "Traceback" not in err
    assert_nothing_trained(run_dir)


def test_flipped_bytes_of_the_same_size_are_refused_by_the_default_sha256_check(source, tmp_path, capsys):
    shard = second_shard(source)
    expected = read_manifest(source).shards[1].sha256
    flip_bytes_inside_a_record(shard)
    run_dir = tmp_path / "run"
    assert train_main(["--config", str(write_config(tmp_path / "t.yaml", source, run_dir))]) == 2
    err = capsys.readouterr().err
    assert f"{shard}: sha256 {file_sha256(shard)}, but manifest.json says {expected}" in err
    assert "re-tokenize the source" in err and "Traceback" not in err
    assert_nothing_trained(run_dir)


@pytest.mark.parametrize("worker_count", [0, 1])
def test_unhashed_damage_is_reported_with_the_shard_and_record(source, worker_count):
    """verify_max_bytes below the source's size: auto skips the hash, and the read names the record,
    also when a grain worker process read it."""
    shard = second_shard(source)
    bad = flip_bytes_inside_a_record(shard)
    cfg = DataConfig(
        sources=[{"name": "corpus", "path": str(source)}],
        seq_len=32,
        batch_size=8,
        worker_count=worker_count,
        verify_max_bytes=1000,
    )
    check_sources(cfg)
    iterator = make_batch_iterator(cfg, process_index=0, process_count=1)
    with pytest.raises(ShardReadError) as error:
        next(iterator)
    iterator.close()
    assert f"{shard}: record {bad} (0-based) cannot be read (Corrupted Riegeli" in str(error.value)
    assert "chunk data hash mismatch" in str(error.value)


def test_the_sha256_check_covers_eval_sources_and_gates_the_iterator(source, tokenized):
    flip_bytes_inside_a_record(second_shard(source))
    cfg = DataConfig(
        sources=[{"name": "corpus", "path": str(tokenized)}],
        eval_sources=[{"name": "heldout", "path": str(source)}],
        seq_len=32,
        batch_size=8,
    )
    check_sources(cfg)
    with pytest.raises(ShardError, match=f"source 'heldout' \\({source}\\): shards differ"):
        make_batch_iterator(cfg, process_index=0, process_count=1)
    check_sources(cfg.model_copy(update={"verify_checksums": "never"}))
    make_batch_iterator(cfg, process_index=0, process_count=1).close()  # nothing hashed, nothing waited for


def test_auto_hashes_sources_up_to_the_threshold():
    assert wants_checksums("auto", 100, 100) and not wants_checksums("auto", 100, 101)
    assert wants_checksums("always", 0, 10**12) and not wants_checksums("never", 10**12, 1)


def test_without_checksums_ipt_train_names_the_shard_and_record(source, tmp_path):
    """The issue's reproduction as a process: before, it died with a bare `chunk data hash mismatch`."""
    shard = second_shard(source)
    bad = flip_bytes_inside_a_record(shard)
    run_dir = tmp_path / "run"
    cfg = write_config(tmp_path / "t.yaml", source, run_dir, verify_checksums="never")
    done = subprocess.run(
        [sys.executable, "-m", "ipt.cli", "train", "--config", str(cfg)],
        cwd=ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"{shard}: record {bad} (0-based) cannot be read" in done.stderr, done.stderr[-3000:]
    assert "chunk data hash mismatch" in done.stderr and "Traceback" not in done.stderr
