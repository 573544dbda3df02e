"""`ipt synthesize executor=ray` on a real two-node Ray cluster on this machine.

The module starts a head and a worker node with `ray start --block` (1 CPU each, own temp
dirs and ports, each in its own session so it can be stopped by process group without `ray
stop`, which would stop every Ray on the machine). Two engine actors of 1 CPU therefore run
one on each node. Every run is compared byte for byte with a single-process run.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipt.synth.run import SynthesizeConfig, main, synthesize
from ipt.synth.tiny import build_tiny_mistral

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
ACTOR_TITLE = "ray::EngineActor"
CHUNKS = 62  # the built-in corpus's 1229 texts in chunks of 20
RULES = ["engine=rules", "rounds=2", "chunk_texts=20", "progress=false"]


_ports_given: set[int] = set()


def _free_port() -> int:
    """A free port not handed out before in this session (the kernel may offer one twice)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _ports_given:
            _ports_given.add(port)
            return port


# The `ray` of this interpreter (its venv's bin/, even when that venv is not activated): a `ray`
# from another Python on PATH would start nodes that this process cannot join.
RAY = shutil.which("ray", path=os.path.dirname(sys.executable)) or "ray"


class LocalCluster:
    """A Ray head and worker node on this machine, each `ray start --block` in its own session."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root, self.env = root, env
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.head = self._start(
            "head",
            [
                "--head",
                f"--port={self.port}",
                "--include-dashboard=false",
                f"--dashboard-port={_free_port()}",
                f"--ray-client-server-port={_free_port()}",
            ],
        )
        self.worker: subprocess.Popen | None = None
        self.workers_started = 0

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        ports = [
            f"--{flag}={_free_port()}"
            for flag in (
                "dashboard-agent-listen-port",
                "dashboard-agent-grpc-port",
                "runtime-env-agent-port",
                "metrics-export-port",
            )
        ]
        log = self.root / f"{name}.log"
        cmd = [
            RAY,
            "start",
            "--block",
            "--num-cpus=1",
            "--object-store-memory=80000000",
            "--node-ip-address=127.0.0.1",
            "--disable-usage-stats",
            f"--temp-dir={self.root / name}",
            *ports,
            *args,
        ]
        with open(log, "w") as out:
            proc = subprocess.Popen(
                cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 120
        while "will now block" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        return proc

    def ensure_worker(self) -> None:
        if self.worker is None or self.worker.poll() is not None:
            self.workers_started += 1
            self.worker = self._start(f"worker{self.workers_started}", [f"--address={self.address}"])

    def stop_worker(self) -> None:
        """The worker node's machine is gone: kill -9 its session and the Ray workers its raylet
        started (they lead their own process groups, and would otherwise serve a little longer)."""
        assert self.worker is not None
        session = self.worker.pid
        children = [pid for pid, parent in _parents().items() if _sid(parent) == session]
        _kill_group(self.worker)
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.worker = None

    def actor_pids(self, busy: bool, on_worker: bool = False) -> list[int]:
        """This cluster's engine actor processes (running a chunk, if `busy`; on the worker node,
        whose raylet is their parent, if `on_worker`)."""
        tag = f"IPT_TEST_RAY={self.root}".encode()
        pids = []
        for proc in Path("/proc").iterdir():
            try:
                title = (proc / "cmdline").read_bytes().split(b"\0")[0].decode().strip()
                mine = tag in (proc / "environ").read_bytes().split(b"\0")
                parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
                where = os.getsid(parent) if on_worker else None
            except (OSError, ValueError):
                continue
            if not (mine and title.startswith(ACTOR_TITLE)) or (busy and title != f"{ACTOR_TITLE}.run"):
                continue
            if not on_worker or (self.worker is not None and where == self.worker.pid):
                pids.append(int(proc.name))
        return pids

    def shutdown(self) -> None:
        for proc in (self.worker, self.head):
            if proc is not None:
                _kill_group(proc)
        for pid in self.actor_pids(busy=False):  # workers outlive their raylet for a moment
            os.kill(pid, signal.SIGKILL)


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process."""
    out = {}
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError):
            out[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    return out


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="module")
def cluster(mistral_tokenizer_dir) -> Iterator[LocalCluster]:
    """Token authentication off (a local cluster on 127.0.0.1): with it unset, a token file left in
    ~/.ray by any earlier local `ray.init` would switch the head to token mode but not the worker."""
    root = Path(tempfile.mkdtemp(prefix="ipt-ray-", dir="/tmp"))  # short: Ray's socket paths must fit
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "disabled")  # for the drivers run in this process too
        env = {
            **os.environ,
            "IPT_TEST_RAY": str(root),
            "RAY_USAGE_STATS_ENABLED": "0",
            "PYTHONPATH": str(REPO),
        }
        c = LocalCluster(root, env)  # IPT_CACHE (the tokenizer) is set by the fixture and reaches the actors
        try:
            c.ensure_worker()
            yield c
        finally:
            c.shutdown()
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, corpus_docs) -> Path:
    path = tmp_path_factory.mktemp("in") / "docs.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(d) + "\n" for d in corpus_docs)
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus) -> dict[str, bytes]:
    """Chunk files and markers of a single-process run of the built-in corpus (62 chunks of 20)."""
    out = tmp_path_factory.mktemp("ref")
    synthesize(
        SynthesizeConfig(
            input=str(corpus), output_dir=str(out), engine="rules", chunk_texts=20, progress=False
        )
    )
    return chunk_files(out)


def chunk_files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("chunk-*")) if ".tmp-" not in p.name}


def shard_stats(out: Path) -> dict:
    return json.loads((out / "stats.shard-00000-of-00001.json").read_text())


def ray_args(cluster: LocalCluster, inp: Path, out: Path) -> list[str]:
    return [
        f"input={inp}",
        f"output_dir={out}",
        "executor=ray",
        f"ray.address={cluster.address}",
        "ray.num_actors=2",
    ]


def start_driver(cluster: LocalCluster, inp: Path, out: Path) -> subprocess.Popen:
    """`ipt synthesize executor=ray` as its own process; its stderr goes to `out`.log."""
    cmd = [sys.executable, "-m", "ipt.cli", "synthesize", *ray_args(cluster, inp, out), *RULES]
    with open(out.with_suffix(".log"), "a") as log:
        return subprocess.Popen(cmd, env=cluster.env, stdout=subprocess.DEVNULL, stderr=log)


def wait_for_markers(out: Path, n: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 180
    while len(list(out.glob("chunk-*.stats.json"))) < n:
        assert proc.poll() is None, f"the driver ended early: {out.with_suffix('.log').read_text()[-3000:]}"
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.02)


def finish(proc: subprocess.Popen, out: Path) -> None:
    assert proc.wait(timeout=300) == 0, out.with_suffix(".log").read_text()[-3000:]


def test_ray_run_writes_the_bytes_of_a_single_process_run(cluster, corpus, reference, tmp_path):
    """Both nodes take chunks. (A static-shard run writes these bytes too: tests/test_synth_run.py.)"""
    cluster.ensure_worker()
    assert main([*ray_args(cluster, corpus, tmp_path / "ray"), *RULES]) == 0
    assert chunk_files(tmp_path / "ray") == reference and len(reference) == 2 * CHUNKS
    stats = shard_stats(tmp_path / "ray")
    assert (stats["ray_actors"], stats["ray_nodes"], stats["chunk_retries"]) == (2, 2, 0)
    assert (stats["chunks_done_now"], stats["texts"]) == (CHUNKS, 1229)
    local = sum(json.loads(v)["pairs"] for k, v in reference.items() if k.endswith(".stats.json"))
    assert stats["pairs"] == local


def test_ray_run_of_the_hf_engine_equals_a_single_process_run(cluster, corpus_docs, tmp_path):
    cluster.ensure_worker()
    model = build_tiny_mistral(tmp_path / "tiny")
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"text": d["text"]}) + "\n" for d in corpus_docs[:8]))
    hf = [
        f"model={model}",
        "engine=hf",
        "rounds=2",
        "chunk_texts=4",
        "max_new_tokens=8",
        "device=cpu",
        "progress=false",
    ]
    assert main([f"input={inp}", f"output_dir={tmp_path / 'one'}", *hf]) == 0
    assert main([*ray_args(cluster, inp, tmp_path / "ray"), *hf]) == 0
    assert chunk_files(tmp_path / "ray") == chunk_files(tmp_path / "one")
    assert len(chunk_files(tmp_path / "one")) == 4
    assert (
        shard_stats(tmp_path / "ray")["generated_tokens"]
        == shard_stats(tmp_path / "one")["generated_tokens"]
        > 0
    )


def test_an_actor_killed_mid_chunk_has_its_chunk_redone_elsewhere(cluster, corpus, reference, tmp_path):
    cluster.ensure_worker()
    out = tmp_path / "out"
    driver = start_driver(cluster, corpus, out)
    wait_for_markers(out, 2, driver)
    deadline = time.monotonic() + 60
    while not (busy := cluster.actor_pids(busy=True)):
        assert time.monotonic() < deadline and driver.poll() is None, "no actor was running a chunk"
        time.sleep(0.01)
    os.kill(busy[0], signal.SIGKILL)
    finish(driver, out)
    stats = shard_stats(out)
    assert stats["chunk_retries"] >= 1, "the killed actor's chunk was not handed out again"
    assert stats["chunks_done_now"] + stats["chunks_already_done"] == CHUNKS
    assert chunk_files(out) == reference


def test_the_driver_killed_and_started_again_resumes_from_complete_chunks(
    cluster, corpus, reference, tmp_path
):
    cluster.ensure_worker()
    out = tmp_path / "out"
    driver = start_driver(cluster, corpus, out)
    wait_for_markers(out, 3, driver)
    driver.kill()
    driver.wait()
    assert driver.returncode == -signal.SIGKILL
    done_before = len(list(out.glob("chunk-*.stats.json")))
    assert done_before < CHUNKS, "the run finished before it could be killed"
    finish(start_driver(cluster, corpus, out), out)
    stats = shard_stats(out)
    assert stats["chunks_already_done"] >= done_before and stats["chunks_done_now"] >= 1
    assert stats["chunks_already_done"] + stats["chunks_done_now"] == CHUNKS
    assert chunk_files(out) == reference


def test_bad_input_stops_the_job_naming_file_and_line_and_keeps_complete_chunks(
    cluster, corpus_docs, reference, tmp_path, capsys
):
    """A record without `text` fails inside an actor, a line that is no JSON object in the driver's
    reader: neither is retried, the run exits 2 with file:line, and the chunks before it stay."""
    cluster.ensure_worker()
    lines = [json.dumps(d) + "\n" for d in corpus_docs[:100]]
    for name, lineno, bad, message in [
        ("no-text.jsonl", 55, '{"body": "x"}\n', "no field 'text'"),
        ("not-json.jsonl", 75, "[1, 2]\n", "expected a JSON object"),
    ]:
        inp = tmp_path / name
        inp.write_text("".join([*lines[: lineno - 1], bad, *lines[lineno:]]))
        out = tmp_path / f"out-{name}"
        assert main([*ray_args(cluster, inp, out), *RULES]) == 2
        err = capsys.readouterr().err
        assert f"ipt synthesize: error: {inp}:{lineno}: {message}" in err and "Traceback" not in err
        bad_chunk = (lineno - 1) // 20
        kept = chunk_files(out)
        for c in range(bad_chunk):
            for suffix in (".jsonl", ".stats.json"):
                assert kept[f"chunk-{c:06d}{suffix}"] == reference[f"chunk-{c:06d}{suffix}"]
        assert f"chunk-{bad_chunk:06d}.stats.json" not in kept


def test_executor_ray_without_ray_installed_says_how_to_install_it(
    tmp_path, corpus_docs, monkeypatch, capsys
):
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps(corpus_docs[0]) + "\n")
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    monkeypatch.delitem(sys.modules, "ipt.synth.cluster", raising=False)
    assert main([f"input={inp}", f"output_dir={tmp_path / 'out'}", "executor=ray", *RULES]) == 2
    assert "executor=ray needs Ray: pip install 'ipt[ray]'" in capsys.readouterr().err


def test_a_node_stopped_mid_run_loses_nothing(cluster, corpus, reference, tmp_path):
    """Last in this module: it takes the worker node away (ensure_worker brings one back)."""
    cluster.ensure_worker()
    out = tmp_path / "out"
    driver = start_driver(cluster, corpus, out)
    deadline = time.monotonic() + 120
    while not cluster.actor_pids(busy=True, on_worker=True):
        assert time.monotonic() < deadline and driver.poll() is None, (
            "the worker node's actor never ran a chunk"
        )
        time.sleep(0.01)
    cluster.stop_worker()
    finish(driver, out)
    stats = shard_stats(out)
    assert stats["ray_nodes"] == 2 and stats["chunk_retries"] >= 1
    assert stats["chunks_done_now"] + stats["chunks_already_done"] == CHUNKS
    assert chunk_files(out) == reference
