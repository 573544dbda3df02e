"""The Ray executor against a single-process run: rules-engine texts/s with 1 and 2 engine actors.

    python benchmarks/synth_scaling.py [--repeats 3] [--copies 4] [--chunk-texts 128]

Input: the built-in corpus repeated `--copies` times, M=2, cut into chunks of `--chunk-texts`.
Candidates, each writing a fresh output directory, timed end to end (wall clock: `synthesize`
returns when every chunk file and marker is written): `executor=local` in this process, and
`executor=ray` with `ray.num_actors` 1 and 2 on a local Ray head (`ray start --head
--num-cpus=2`, started once, not timed). A Ray run's time includes connecting and starting its
actors, which import ipt and load the tokenizer as the local run does. Trials rotate the three
after a warm-up; medians are reported. Every run's chunk files are checked equal to the first
local run's. Last line: 1 actor / local and 2 actors / 1 actor (texts/s).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local head; no token file left in ~/.ray
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from ipt.synth.run import SynthesizeConfig, synthesize

CORPUS = Path(__file__).resolve().parents[1] / "ipt" / "assets" / "corpus.jsonl.gz"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_head(root: Path) -> tuple[subprocess.Popen, str]:
    """A Ray head with 2 CPUs in its own session (stopped by process group, not `ray stop`)."""
    port = free_port()
    ports = [
        "dashboard-port",
        "ray-client-server-port",
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "runtime-env-agent-port",
        "metrics-export-port",
    ]
    log = root / "head.log"
    cmd = [
        "ray",
        "start",
        "--head",
        "--block",
        f"--port={port}",
        "--num-cpus=2",
        "--include-dashboard=false",
        "--node-ip-address=127.0.0.1",
        "--object-store-memory=100000000",
        f"--temp-dir={root / 'ray'}",
        *(f"--{p}={free_port()}" for p in ports),
    ]
    with open(log, "w") as out:
        head = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    while "will now block" not in log.read_text():
        if head.poll() is not None:
            raise SystemExit(f"ray start failed:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    return head, f"127.0.0.1:{port}"


def steady_rate(out: Path) -> float:
    """Texts/s between the first and the last chunk's completion marker: start-up left out."""
    markers = sorted(out.glob("chunk-*.stats.json"), key=lambda m: m.stat().st_mtime)
    texts = sum(json.loads(m.read_text())["texts"] for m in markers[1:])
    return texts / (markers[-1].stat().st_mtime - markers[0].stat().st_mtime)


def chunk_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("chunk-*"))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--copies", type=int, default=4, help="passes over the built-in corpus")
    p.add_argument("--chunk-texts", type=int, default=128)
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ipt-scaling-", dir="/tmp"))
    with gzip.open(CORPUS, "rt", encoding="utf-8") as f:
        lines = f.readlines()
    inp = root / "in.jsonl"
    inp.write_text("".join(lines * args.copies), encoding="utf-8")
    n_texts = len(lines) * args.copies
    head, address = start_head(root)
    base = dict(input=str(inp), engine="rules", rounds=2, chunk_texts=args.chunk_texts, progress=False)
    runs = {
        "local": {},
        "ray, 1 actor": {"executor": "ray", "ray": {"address": address, "num_actors": 1}},
        "ray, 2 actors": {"executor": "ray", "ray": {"address": address, "num_actors": 2}},
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    steady: dict[str, list[float]] = {name: [] for name in runs}
    reference: dict[str, bytes] = {}
    try:
        for trial in range(args.repeats + 1):  # trial 0 warms up
            for name, extra in runs.items():
                out = root / f"out-{trial}-{name.replace(' ', '').replace(',', '-')}"
                t = time.perf_counter()
                synthesize(SynthesizeConfig(**base, **extra, output_dir=str(out)))
                dt = time.perf_counter() - t
                reference = reference or chunk_bytes(out)
                assert chunk_bytes(out) == reference, f"{name} wrote different bytes"
                if trial:
                    times[name].append(dt)
                    steady[name].append(steady_rate(out))
                shutil.rmtree(out)
    finally:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()
        shutil.rmtree(root, ignore_errors=True)
    rate = {name: n_texts / statistics.median(ts) for name, ts in times.items()}
    flow = {name: statistics.median(rs) for name, rs in steady.items()}
    chunks = -(-n_texts // args.chunk_texts)
    print(
        f"input: {n_texts} texts (built-in corpus x {args.copies}), M=2, {chunks} chunks of {args.chunk_texts}"
    )
    print(
        "end to end: wall from the call to the last marker; steady: texts/s from the first marker to the last"
    )
    for name, ts in times.items():
        runs_s = ", ".join(f"{t:.2f}" for t in ts)
        print(
            f"{name:14s} median wall {statistics.median(ts):6.2f} s -> {rate[name]:6.1f} texts/s end to end, "
            f"{flow[name]:6.1f} texts/s steady  (walls: {runs_s})"
        )
    one, two, local = "ray, 1 actor", "ray, 2 actors", "local"
    print(
        f"ratio ray 1 actor / local: end to end {rate[one] / rate[local]:.3f}, steady {flow[one] / flow[local]:.3f}; "
        f"2 actors / 1 actor: end to end {rate[two] / rate[one]:.3f}, steady {flow[two] / flow[one]:.3f}"
    )


if __name__ == "__main__":
    main()
