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
import socket
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from ipt.stage import BadInputError

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


class TokenizerNotFoundError(BadInputError):
    """The tokenizer name is no directory, no built-in and no cached hub name, and the hub is out of reach."""


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub can be asked at all (offline mode, or no route to it: no)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def load_tokenizer(spec: str) -> PreTrainedTokenizerBase:
    """A built-in name, a local directory, or a hub name (from the cache first; the hub only if
    it can be reached, so an unknown name fails at once offline instead of after a minute of retries)."""
    name = resolve_tokenizer(spec)
    if Path(name).exists():
        return AutoTokenizer.from_pretrained(name)
    try:
        return AutoTokenizer.from_pretrained(name, local_files_only=True)
    except OSError:
        if not hub_reachable():
            raise TokenizerNotFoundError(
                f"tokenizer {spec!r} is neither a local directory, a built-in name "
                f"({', '.join(BUILTIN)}), nor a hub name in the local cache, and the Hugging Face hub "
                "cannot be reached from here"
            ) from None
    return AutoTokenizer.from_pretrained(name)


def vocab_hash(tok: PreTrainedTokenizerBase) -> str:
    """sha256 of the sorted (token, id) table: equal hashes mean interchangeable token ids."""
    items = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(items, ensure_ascii=False).encode()).hexdigest()
