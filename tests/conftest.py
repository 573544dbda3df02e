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
