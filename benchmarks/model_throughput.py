"""Training-step tokens/s of the ipt model against a bare-JAX step and PyTorch `transformers`.

One CPU device, f32, a 58M-parameter Llama (vocab 32000, d 512, 8 layers of 8 heads, SwiGLU
1376), batch 8 x seq 512. Every step is forward + backward + AdamW update:
  ipt   the NNX model with its defaults (stacked layers run by lax.scan, `remat:
        save_all_dots`), `nnx.split` state + `jax.jit`;
  ipt_loop  the same with `scan_layers: false, remat: none` (a Python loop over the stacked
        layers, everything saved: the bare step's structure);
  bare  the same architecture as plain functions on a dict of arrays (Python loop over layers,
        no NNX, no scan, no remat), same parameters, same attention masking;
  torch `transformers.LlamaForCausalLM` (eager, sdpa attention), `torch.optim.AdamW`.
After one warm-up step each, trials alternate ipt, ipt_loop, bare, torch; medians are reported (wall time,
and process CPU time, which is steadier on a shared machine), with the
achieved FLOP/s (ipt.model.flops) as a fraction of a measured `jnp.dot` f32 peak. The last line
is ipt / bare tokens/s.

    python benchmarks/model_throughput.py [--trials 3] [--batch 8] [--seq-len 512]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ipt.model import ModelConfig, create_model
from ipt.model.flops import flops_per_token
from ipt.model.rope import inverse_frequencies

CONFIG = ModelConfig(
    vocab_size=32000,
    hidden_size=512,
    intermediate_size=1376,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=8,
    max_position_embeddings=2048,
    rms_norm_eps=1e-5,
    dtype="float32",
)
OPTIMIZER = optax.adamw(1e-4, weight_decay=0.0)


def loss_from_logits(logits: jax.Array, ids: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], ids[:, 1:]).mean()


# ------------------------------------------------------------------ ipt


def ipt_step_fn(model):
    graphdef, params = nnx.split(model, nnx.Param)

    @jax.jit
    def step(params, opt_state, ids, positions, segments):
        def loss_fn(p):
            return loss_from_logits(nnx.merge(graphdef, p)(ids, positions, segments), ids)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = OPTIMIZER.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step, params


# ------------------------------------------------------------------ bare JAX


def rms_norm(x, w, eps):
    return w * (x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps))


def rotate(x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos + jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1) * sin


def bare_forward(p, ids, positions, segments, c: ModelConfig):
    b, s = ids.shape
    h, d = c.num_attention_heads, c.head_dim
    freqs = positions[..., None].astype(jnp.float32) * inverse_frequencies(c)
    angles = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    idx = jnp.arange(s)
    mask = (idx[None, :, None] >= idx[None, None, :]) & (segments[:, :, None] == segments[:, None, :])
    x = p["embed"][ids]
    for layer in p["layers"]:
        y = rms_norm(x, layer["ln1"], c.rms_norm_eps)
        q = rotate((y @ layer["wq"]).reshape(b, s, h, d), cos, sin)
        k = rotate((y @ layer["wk"]).reshape(b, s, h, d), cos, sin)
        v = (y @ layer["wv"]).reshape(b, s, h, d)
        scores = jnp.einsum("bshd,bthd->bhst", q, k) * d**-0.5
        scores = jnp.where(mask[:, None], scores, -1e30)
        attn = jnp.einsum("bhst,bthd->bshd", jax.nn.softmax(scores, axis=-1), v).reshape(b, s, h * d)
        x = x + attn @ layer["wo"]
        y = rms_norm(x, layer["ln2"], c.rms_norm_eps)
        x = x + (jax.nn.silu(y @ layer["wg"]) * (y @ layer["wu"])) @ layer["wd"]
    return rms_norm(x, p["norm"], c.rms_norm_eps) @ p["lm_head"]


def bare_params(ipt_params: nnx.State, c: ModelConfig) -> dict:
    """The ipt parameters re-laid-out as plain matrices, so both steps start from equal weights."""
    t = nnx.to_pure_dict(ipt_params)
    e, hd = c.hidden_size, c.num_attention_heads * c.head_dim
    L = t["layers"]
    layers = [
        {
            "ln1": L["input_layernorm"]["weight"][i],
            "ln2": L["post_attention_layernorm"]["weight"][i],
            "wq": L["self_attn"]["q_proj"]["weight"][i].reshape(e, hd),
            "wk": L["self_attn"]["k_proj"]["weight"][i].reshape(e, hd),
            "wv": L["self_attn"]["v_proj"]["weight"][i].reshape(e, hd),
            "wo": L["self_attn"]["o_proj"]["weight"][i].reshape(hd, e),
            "wg": L["mlp"]["gate_proj"]["weight"][i],
            "wu": L["mlp"]["up_proj"]["weight"][i],
            "wd": L["mlp"]["down_proj"]["weight"][i],
        }
        for i in range(c.num_hidden_layers)
    ]
    return {
        "embed": t["embed_tokens"]["weight"],
        "layers": layers,
        "norm": t["norm"]["weight"],
        "lm_head": t["lm_head"]["weight"],
    }


@jax.jit
def bare_step(params, opt_state, ids, positions, segments):
    def loss_fn(p):
        return loss_from_logits(bare_forward(p, ids, positions, segments, CONFIG), ids)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = OPTIMIZER.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


# ------------------------------------------------------------------ PyTorch


def torch_runner(c: ModelConfig, ids: np.ndarray):
    import torch
    import transformers

    from ipt.model.hf import hf_config_dict

    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf_config_dict(c, "float32"))).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    batch = torch.as_tensor(ids, dtype=torch.long)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


# ------------------------------------------------------------------ main


def dot_peak_runner(n: int = 2048, repeats: int = 5):
    """Best-of-`repeats` f32 `jnp.dot` FLOP/s; run inside the alternation so load hits it too."""
    a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.float32)
    dot = jax.jit(jnp.dot)
    dot(a, a).block_until_ready()

    def measure() -> float:
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            dot(a, a).block_until_ready()
            best = min(best, time.perf_counter() - start)
        return 2 * n**3 / best

    return measure


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    ids_np = rng.integers(0, CONFIG.vocab_size, size=(args.batch, args.seq_len)).astype(np.int32)
    ids = jnp.asarray(ids_np)
    positions = jnp.broadcast_to(jnp.arange(args.seq_len, dtype=jnp.int32), ids.shape)
    segments = jnp.ones_like(ids)

    ipt_step, ipt_state = ipt_step_fn(create_model(CONFIG, seed=0))
    loop_step, loop_state = ipt_step_fn(
        create_model(CONFIG.model_copy(update={"scan_layers": False, "remat": "none"}), seed=0)
    )
    bare_state = bare_params(ipt_state, CONFIG)
    states = {
        "ipt": [ipt_state, OPTIMIZER.init(ipt_state)],
        "ipt_loop": [loop_state, OPTIMIZER.init(loop_state)],
        "bare": [bare_state, OPTIMIZER.init(bare_state)],
    }
    steps = {"ipt": ipt_step, "ipt_loop": loop_step, "bare": bare_step}
    losses: dict[str, float] = {}

    def run_jax(name: str) -> float:
        params, opt_state = states[name]
        start = time.perf_counter()
        params, opt_state, loss = steps[name](params, opt_state, ids, positions, segments)
        loss.block_until_ready()
        elapsed = time.perf_counter() - start
        states[name] = [params, opt_state]
        losses[name] = float(loss)
        return elapsed

    runners = {name: functools.partial(run_jax, name) for name in steps}
    if not args.no_torch:
        torch_step = torch_runner(CONFIG, ids_np)

        def run_torch() -> float:
            start = time.perf_counter()
            torch_step()
            return time.perf_counter() - start

        runners["torch"] = run_torch

    for name, run in runners.items():
        print(f"warm-up {name}: {run():.2f} s (includes compilation)", flush=True)
    if max(abs(losses[name] - losses["bare"]) for name in steps) > 1e-4:
        raise SystemExit(f"the JAX steps disagree on the loss: {losses}")
    measure_peak = dot_peak_runner()
    peaks: list[float] = []
    times: dict[str, list[float]] = {name: [] for name in runners}
    cpu_times: dict[str, list[float]] = {name: [] for name in runners}
    for trial in range(args.trials):
        for name, run in runners.items():
            cpu_start = time.process_time()
            times[name].append(run())
            cpu_times[name].append(time.process_time() - cpu_start)
        peaks.append(measure_peak())
        print(f"trial {trial}: " + ", ".join(f"{n} {t[-1]:.2f} s" for n, t in times.items()), flush=True)

    tokens = args.batch * args.seq_len
    peak = statistics.median(peaks)
    flops = flops_per_token(CONFIG, args.seq_len) * tokens
    n_params = sum(int(x.size) for x in jax.tree.leaves(ipt_state))
    print(
        f"model: {n_params / 1e6:.1f}M parameters, batch {args.batch} x seq {args.seq_len}, f32, 1 CPU device"
    )
    print(
        f"jnp.dot f32 peak (2048^3, median of trials): {peak / 1e9:.1f} GFLOP/s; model FLOPs/step {flops / 1e9:.1f} G"
    )
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, med in medians.items():
        achieved = flops / med
        print(
            f"{name:>8}: median {med:.2f} s/step ({statistics.median(cpu_times[name]):.2f} CPU s), "
            f"{tokens / med:.0f} tokens/s, "
            f"{achieved / 1e9:.1f} GFLOP/s = {achieved / peak:.0%} of peak"
        )
    best = {name: min(t) for name, t in times.items()}
    print(
        "fastest trial (least disturbed by other load): "
        + ", ".join(f"{n} {t:.2f} s" for n, t in best.items())
    )
    print(f"ipt / bare tokens/s, fastest trials: {best['bare'] / best['ipt']:.3f}")
    if "torch" in medians:
        print(f"ipt / torch tokens/s: {medians['torch'] / medians['ipt']:.3f}")
    print(f"ipt_loop / bare tokens/s: {medians['bare'] / medians['ipt_loop']:.3f}")
    print(f"ipt / bare tokens/s: {medians['bare'] / medians['ipt']:.3f}")


if __name__ == "__main__":
    main()
