"""Training data sources: shard directories with mixture weights, checked against each other.

A weight is a share of *tokens*. Samplers draw documents, so `document_weights` converts each
token share into a document share using the mean document length from the manifests.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from ipt.config import Config
from ipt.data.records import Manifest, read_manifest


class SourceConfig(Config):
    name: str = Field(description="a short label used in logs and metrics")
    path: str = Field(description="a shard directory written by `ipt tokenize`")
    weight: float = Field(1.0, gt=0, description="share of training tokens (normalised over sources)")


def open_sources(sources: list[SourceConfig]) -> list[Manifest]:
    """Read every source's manifest and refuse a mix made with different tokenizers."""
    manifests = [read_manifest(Path(s.path)) for s in sources]
    first, ref = sources[0], manifests[0]
    for src, m in zip(sources[1:], manifests[1:], strict=True):
        if m.tokenizer.vocab_hash != ref.tokenizer.vocab_hash or m.dtype != ref.dtype:
            raise ValueError(
                f"source {src.name!r} ({src.path}) was tokenized with {m.tokenizer.name!r} "
                f"(vocab hash {m.tokenizer.vocab_hash[:12]}), but source {first.name!r} ({first.path}) "
                f"with {ref.tokenizer.name!r} (vocab hash {ref.tokenizer.vocab_hash[:12]}); "
                "re-tokenize them with one tokenizer"
            )
    for src, m in zip(sources, manifests, strict=True):
        if m.num_docs == 0:
            raise ValueError(f"source {src.name!r} ({src.path}) holds no documents")
    return manifests


def document_weights(sources: list[SourceConfig], manifests: list[Manifest]) -> list[float]:
    """Token shares -> document sampling probabilities (normalised)."""
    raw = [s.weight / (m.num_tokens / m.num_docs) for s, m in zip(sources, manifests, strict=True)]
    total = sum(raw)
    return [w / total for w in raw]
