"""Loading tokenizers by name, including the synthesizer's own tokenizer without a hub.

`mistral-v1` names the 32000-token SentencePiece tokenizer of Mistral-7B-v0.1 (the base of
the instruction synthesizer). It ships inside the `mistral-common` package; the first use
converts it once into a Hugging Face tokenizer directory under the ipt cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

BUILTIN = {"mistral-v1": "tokenizer.model.v1"}


def cache_dir() -> Path:
    return Path(os.environ.get("IPT_CACHE", Path.home() / ".cache" / "ipt"))


def builtin_tokenizer_dir(name: str) -> Path:
    """Materialise a built-in tokenizer as a Hugging Face directory (atomically, once)."""
    import mistral_common

    target = cache_dir() / "tokenizers" / name
    if (target / "tokenizer_config.json").exists():
        return target
    source = Path(mistral_common.__file__).parent / "data" / BUILTIN[name]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}-"))
    shutil.copy(source, tmp / "tokenizer.model")
    (tmp / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "LlamaTokenizer",
                "legacy": True,
                "add_bos_token": True,
                "add_eos_token": False,
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "model_max_length": 32768,
            }
        )
    )
    tok = AutoTokenizer.from_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.copy(source, tmp / "tokenizer.model")
    try:
        tmp.rename(target)
    except OSError:  # another process won the race; its copy is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_tokenizer(spec: str) -> str:
    """A built-in name, a local directory or a hub name -> what `from_pretrained` accepts."""
    return str(builtin_tokenizer_dir(spec)) if spec in BUILTIN else spec


def load_tokenizer(spec: str) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(resolve_tokenizer(spec))


def vocab_hash(tok: PreTrainedTokenizerBase) -> str:
    """sha256 of the sorted (token, id) table: equal hashes mean interchangeable token ids."""
    items = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(items, ensure_ascii=False).encode()).hexdigest()
