"""Shared fixtures. Tests see 8 fake CPU devices, so sharding code runs as on a real mesh."""

from __future__ import annotations

import gzip
import json
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest

for _offline in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_offline, "1")  # every test runs without the hub

CORPUS = Path(__file__).resolve().parents[1] / "ipt" / "assets" / "corpus.jsonl.gz"


@pytest.fixture(scope="session")
def corpus_docs() -> list[dict]:
    """The built-in corpus: ~1200 sections of the Python documentation, `{id, title, text}`."""
    with gzip.open(CORPUS, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="session")
def mistral_tokenizer_dir(tmp_path_factory) -> Path:
    """The real Mistral v1 tokenizer (32000 SentencePiece pieces) as a Hugging Face directory."""
    from ipt.data import tokenizer

    os.environ.setdefault("IPT_CACHE", str(tmp_path_factory.mktemp("ipt-cache")))
    return tokenizer.builtin_tokenizer_dir("mistral-v1")


@pytest.fixture(scope="session")
def bpe_tokenizer_dir(tmp_path_factory, corpus_docs) -> Path:
    """A small byte-level BPE (vocab 4096) trained on the built-in corpus, as a HF directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=4096,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator((d["text"] for d in corpus_docs), trainer=trainer)
    out = tmp_path_factory.mktemp("bpe")
    PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    ).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory, mistral_tokenizer_dir, corpus_docs) -> dict[str, Path]:
    """The tiny Mistral briefly trained (40 steps) on the built-in corpus, with the Mistral v1
    tokenizer: its run directory, held-out shards, and its final step as an ipt model directory
    and as a Hugging Face export (tokenizer included). Shared by the evaluation tests."""
    import yaml
    from shards import write_corpus_source

    from ipt.config import load_config
    from ipt.model import hf
    from ipt.model.store import save_model_dir
    from ipt.train.config import TrainConfig
    from ipt.train.run import main as train_main

    root = tmp_path_factory.mktemp("trained-tiny")
    texts = [d["text"] for d in corpus_docs]
    write_corpus_source(root / "train", mistral_tokenizer_dir, texts[:400])
    write_corpus_source(root / "heldout", mistral_tokenizer_dir, texts[-30:])
    repo = Path(__file__).resolve().parents[1]
    cfg = {
        "run_dir": str(root / "run"),
        "model": {"base": str(repo / "configs" / "model" / "tiny.yaml")},
        "data": {
            "sources": [{"name": "corpus", "path": str(root / "train")}],
            "seq_len": 128,
            "batch_size": 8,
        },
        "steps": 40,
        "optimizer": {"schedule": {"kind": "cosine", "peak_lr": 3.0e-3, "warmup_steps": 5}},
        "checkpoint": {"every": 20, "keep": 3},
        "metrics": {"progress_bar": False, "tensorboard": False},
    }
    (root / "train.yaml").write_text(yaml.safe_dump(cfg))
    assert train_main(["--config", str(root / "train.yaml")]) == 0
    import jax

    from ipt.eval.load import load_for_eval
    from ipt.train.mesh import LogicalRules, MeshConfig, make_mesh

    mesh_cfg = MeshConfig(axes={"data": 1, "fsdp": 1, "tensor": 1})
    rules = LogicalRules(mesh_cfg.rules, make_mesh(mesh_cfg, jax.devices()[:1]))
    loaded = load_for_eval(root / "run", rules)
    config = load_config(TrainConfig, root / "train.yaml").model
    save_model_dir(root / "model", config, loaded.params)
    hf.export_hf(config, loaded.params, root / "hf", dtype="float32", tokenizer_dir=mistral_tokenizer_dir)
    return {
        "run": root / "run",
        "train_config": root / "train.yaml",
        "train": root / "train",
        "model": root / "model",
        "hf": root / "hf",
        "heldout": root / "heldout",
        "tokenizer": mistral_tokenizer_dir,
    }
