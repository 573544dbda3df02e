"""Test helper: real shard directories (ArrayRecord files + manifest.json) written through records.py.

Tests that need training data but not `ipt tokenize` itself build sources here: the built-in
corpus tokenized with a real tokenizer, split into small shards exactly as the format says.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from ipt.data.records import (
    SHARD_SUFFIX,
    WRITER_OPTIONS,
    Manifest,
    ShardInfo,
    TokenizerInfo,
    encode_record,
    token_dtype,
    write_manifest,
)
from ipt.data.tokenizer import vocab_hash


def tokenize(tok: PreTrainedTokenizerBase, texts: Sequence[str], *, add_eos: bool = True) -> list[np.ndarray]:
    """Token ids per text with bos (if the tokenizer has one) and, with `add_eos`, eos appended."""
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    eos = [tok.eos_token_id] if add_eos else []
    encoded = tok(list(texts), add_special_tokens=False)["input_ids"]
    return [np.array([*bos, *ids, *eos], dtype=np.int64) for ids in encoded]


def write_shards(
    directory: Path,
    tok: PreTrainedTokenizerBase,
    docs: Sequence[np.ndarray],
    *,
    masks: Sequence[np.ndarray] | None = None,
    docs_per_shard: int = 200,
    tokenizer_name: str = "test",
    add_eos: bool = True,
) -> Manifest:
    """Write `docs` (token id arrays from `tokenize`) as a shard directory; return its manifest."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(len(tok))
    shards = []
    for start in range(0, len(docs), docs_per_shard):
        name = f"shard-{start // docs_per_shard:05d}{SHARD_SUFFIX}"
        writer = ArrayRecordWriter(str(directory / name), WRITER_OPTIONS)
        chunk = range(start, min(start + docs_per_shard, len(docs)))
        for i in chunk:
            writer.write(encode_record(docs[i], dtype, None if masks is None else masks[i]))
        writer.close()
        digest = hashlib.sha256((directory / name).read_bytes()).hexdigest()
        n_tokens = sum(len(docs[i]) for i in chunk)
        shards.append(ShardInfo(file=name, num_docs=len(chunk), num_tokens=n_tokens, sha256=digest))
    manifest = Manifest(
        tokenizer=TokenizerInfo(
            name=tokenizer_name,
            vocab_size=len(tok),
            vocab_hash=vocab_hash(tok),
            bos_id=tok.bos_token_id,
            eos_id=tok.eos_token_id,
        ),
        add_bos=tok.bos_token_id is not None,
        add_eos=add_eos,
        dtype=dtype.name,
        has_loss_mask=masks is not None,
        shards=shards,
        num_docs=sum(s.num_docs for s in shards),
        num_tokens=sum(s.num_tokens for s in shards),
    )
    write_manifest(directory, manifest)
    return manifest


def write_corpus_source(
    directory: Path,
    tokenizer_dir: Path,
    texts: Sequence[str],
    *,
    with_masks: bool = False,
    docs_per_shard: int = 200,
    add_eos: bool = True,
) -> list[np.ndarray]:
    """Tokenize `texts` with the tokenizer in `tokenizer_dir` into a shard directory.

    With `with_masks`, every document gets a loss mask that is 0 on its first third (like a
    prompt) and 1 after. Returns the documents' token ids in record order.
    """
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    docs = tokenize(tok, texts, add_eos=add_eos)
    masks = None
    if with_masks:
        masks = [(np.arange(len(d)) >= len(d) // 3).astype(np.uint8) for d in docs]
    write_shards(
        directory,
        tok,
        docs,
        masks=masks,
        docs_per_shard=docs_per_shard,
        tokenizer_name=str(tokenizer_dir),
        add_eos=add_eos,
    )
    return docs
