"""Launch an experiment on GPUs: one machine (one process drives all its GPUs) or several over ssh.

    python launch/gpu.py --config configs/experiments/quickstart.yaml                # this machine
    python launch/gpu.py --config X.yaml --hosts gpu0,gpu1,gpu2,gpu3 --repo-dir ~/ipt  # 4 nodes

One JAX process per node; node 0 is the coordinator. Each process gets
`JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` and runs `ipt train ...
distributed=on`, which calls `jax.distributed.initialize()` with them. Prints the commands;
`--execute` runs them (all nodes at once, waiting for all).
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys

HOST = re.compile(
    r"([A-Za-z0-9_][A-Za-z0-9_.-]*@)?[A-Za-z0-9_][A-Za-z0-9_.-]*"
)  # [user@]host, never an option

GPU_ENV = {
    "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.92",  # leave room for NCCL and cuDNN workspaces
    "NCCL_NVLS_ENABLE": "0",
}


def train_args(config: str, overrides: list[str], distributed: bool) -> list[str]:
    return ["ipt", "train", "--config", config, *(["distributed=on"] if distributed else []), *overrides]


def local_command(config: str, overrides: list[str]) -> list[str]:
    env = [f"{k}={v}" for k, v in GPU_ENV.items()]
    return ["env", *env, *train_args(config, overrides, distributed=False)]


def node_commands(
    config: str, overrides: list[str], hosts: list[str], repo_dir: str, port: int = 8476
) -> list[list[str]]:
    """One `ssh HOST 'cd REPO && env ... ipt train ...'` per node."""
    env = {**GPU_ENV, "JAX_COORDINATOR_ADDRESS": f"{hosts[0]}:{port}", "JAX_NUM_PROCESSES": str(len(hosts))}
    out = []
    for i, host in enumerate(hosts):
        node_env = " ".join(f"{k}={shlex.quote(v)}" for k, v in {**env, "JAX_PROCESS_ID": str(i)}.items())
        train = shlex.join(train_args(config, overrides, distributed=True))
        out.append(["ssh", "--", host, f"cd {shlex.quote(repo_dir)} && env {node_env} {train}"])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="launch/gpu.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", required=True)
    p.add_argument("--hosts", help="comma-separated node names for a multi-node run (first = coordinator)")
    p.add_argument("--repo-dir", default="ipt", help="the repository on every node (multi-node)")
    p.add_argument("--port", type=int, default=8476, help="coordinator port on the first host")
    p.add_argument("--execute", action="store_true", help="run the commands (default: print them)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="passed to ipt train")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    bad = [h for h in (a.hosts or "").split(",") if a.hosts and not HOST.fullmatch(h)]
    if bad:
        p.error(
            f"--hosts: {bad[0]!r} is not a host name (letters, digits, '.', '-', '_', user@, no leading '-')"
        )
    if a.hosts:
        commands = node_commands(a.config, a.overrides, a.hosts.split(","), a.repo_dir, a.port)
    else:
        commands = [local_command(a.config, a.overrides)]
    for cmd in commands:
        print(shlex.join(cmd), flush=True)
    if not a.execute:
        return 0
    procs = [subprocess.Popen(cmd) for cmd in commands]
    codes = [proc.wait() for proc in procs]
    return max(codes, key=abs)


if __name__ == "__main__":
    sys.exit(main())
