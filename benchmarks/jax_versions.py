"""CPU speed of one JAX release against another: a matmul, and ipt train steps, with compile times.

Each interpreter given to `--pythons` (a virtual environment per JAX release) runs this same file
as a worker (`--worker`): it prints one JSON line of measurements. Rounds alternate the
interpreters (A, B, C, A, B, C, ...) so load from other jobs falls on all of them alike; the
summary takes, per interpreter, the median over rounds and the best round, and gives each
interpreter's ratio to the first one (>1: faster than the first).

Measured in each worker, on one CPU device, f32:
  matmul   best-of-5 `jnp.dot` of two 2048 x 2048 matrices (GFLOP/s), and 512 x 512 (small-kernel
           throughput, dominated by dispatch and threading), with the median process CPU time
           of one product (steadier than wall time when other jobs share the cores);
  tiny     the `tiny` preset model (2 layers, d 128, vocab 32000; what the tests train), train
           step (forward + backward + AdamW) at batch 8 x seq 128: tokens/s and compile s;
  small    the 58M Llama of benchmarks/model_throughput.py (d 512, 8 layers), batch 4 x seq 512:
           tokens/s and compile s.
Train steps also report process CPU s per step (median). Compile time is what dominates the
test suite (many small jitted programs); tokens/s is what dominates training.

    python benchmarks/jax_versions.py --pythons /tmp/venv-jax012/bin/python python --rounds 3
    python benchmarks/jax_versions.py --worker     # one interpreter, one JSON line
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def worker(steps: int) -> dict:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx
    from model_throughput import CONFIG as SMALL  # the same 8-layer model as that benchmark

    from ipt.model import ModelConfig, create_model, load_model_config

    out: dict = {"python": sys.version.split()[0], "jax": jax.__version__}
    import flax

    out["flax"] = flax.__version__

    def dot_gflops(n: int, repeats: int = 5) -> float:
        a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.float32)
        dot = jax.jit(jnp.dot)
        dot(a, a).block_until_ready()
        best, cpu = float("inf"), []
        for _ in range(repeats):
            c0, start = time.process_time(), time.perf_counter()
            dot(a, a).block_until_ready()
            best = min(best, time.perf_counter() - start)
            cpu.append(time.process_time() - c0)
        out[f"matmul_{n}_cpu_ms"] = 1e3 * statistics.median(cpu)
        return 2 * n**3 / best / 1e9

    out["matmul_2048_gflops"] = dot_gflops(2048)
    out["matmul_512_gflops"] = dot_gflops(512, repeats=20)

    tx = optax.adamw(1e-4, weight_decay=0.0)

    def train(config: ModelConfig, batch: int, seq: int, name: str) -> None:
        model = create_model(config, seed=0)
        graphdef, params = nnx.split(model, nnx.Param)

        @jax.jit
        def step(params, opt_state, ids, positions, segments):
            def loss_fn(p):
                logits = nnx.merge(graphdef, p)(ids, positions, segments)
                return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], ids[:, 1:]).mean()

            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        ids = jnp.asarray(np.random.default_rng(0).integers(0, config.vocab_size, (batch, seq)), jnp.int32)
        positions = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), ids.shape)
        segments = jnp.ones_like(ids)
        opt_state = tx.init(params)
        start = time.perf_counter()
        compiled = step.lower(params, opt_state, ids, positions, segments).compile()
        out[f"{name}_compile_s"] = time.perf_counter() - start
        params, opt_state, loss = compiled(params, opt_state, ids, positions, segments)  # warm-up
        loss.block_until_ready()
        times, cpu = [], []
        for _ in range(steps):
            c0, t0 = time.process_time(), time.perf_counter()
            params, opt_state, loss = compiled(params, opt_state, ids, positions, segments)
            loss.block_until_ready()
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        out[f"{name}_tokens_per_s"] = batch * seq / statistics.median(times)
        out[f"{name}_best_tokens_per_s"] = batch * seq / min(times)
        out[f"{name}_cpu_s_per_step"] = statistics.median(cpu)
        out[f"{name}_loss"] = float(loss)

    train(load_model_config("tiny").model_copy(update={"dtype": "float32"}), 8, 128, "tiny")
    train(SMALL, 4, 512, "small")
    return out


FASTER = {  # metric -> True when larger is better
    "matmul_2048_gflops": True,
    "matmul_2048_cpu_ms": False,
    "matmul_512_gflops": True,
    "matmul_512_cpu_ms": False,
    "tiny_tokens_per_s": True,
    "tiny_compile_s": False,
    "tiny_cpu_s_per_step": False,
    "small_tokens_per_s": True,
    "small_compile_s": False,
    "small_cpu_s_per_step": False,
}


def driver(pythons: list[str], rounds: int, steps: int) -> None:
    results: dict[str, list[dict]] = {p: [] for p in pythons}
    for r in range(rounds):
        for py in pythons:
            load = os.getloadavg()[0]
            proc = subprocess.run(
                [py, os.path.abspath(__file__), "--worker", "--steps", str(steps)],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode:
                raise SystemExit(f"{py} failed:\n{proc.stderr[-3000:]}")
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            row["load_before"] = load
            results[py].append(row)
            print(f"round {r} {py}: {json.dumps(row)}", flush=True)
    first = pythons[0]

    def median(py: str, key: str) -> float:
        return statistics.median(row[key] for row in results[py])

    def best(py: str, key: str) -> float:
        pick = max if FASTER[key] else min
        return pick(row[key] for row in results[py])

    print()
    for py in pythons:
        row = results[py][0]
        print(f"{py}: jax {row['jax']}, flax {row['flax']}, Python {row['python']}")
    for key, larger in FASTER.items():
        cells = []
        for py in pythons:
            ratio = median(py, key) / median(first, key)
            ratio = ratio if larger else 1 / ratio
            cells.append(
                f"jax {results[py][0]['jax']} {median(py, key):.2f} (best {best(py, key):.2f}) x{ratio:.2f}"
            )
        print(f"{key}: " + "; ".join(cells))
    print(f"(medians over {rounds} rounds; x = speed relative to jax {results[first][0]['jax']}, >1 faster)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--worker", action="store_true", help="measure in this interpreter, print JSON")
    parser.add_argument("--pythons", nargs="+", default=[sys.executable])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="timed train steps per model per round")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.steps)))
    else:
        driver(args.pythons, args.rounds, args.steps)


if __name__ == "__main__":
    main()
