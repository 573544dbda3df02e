"""The data plane: raw text readers, tokenization into ArrayRecord shards, the grain pipeline."""
