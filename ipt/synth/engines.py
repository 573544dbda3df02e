"""Synthesis engines behind one small interface: prompt strings in, generated texts out.

`vllm` is the production path (offline `vllm.LLM`, one `generate` call per round-batch so vLLM
schedules continuous batching itself); `hf` runs `transformers` + PyTorch `generate` with left
padding, for debugging and small runs; `jax` runs ipt's own model and KV-cache decoder (a model
ipt trained, or any HF Llama/Mistral); `rules` (ipt.synth.rules) mines pairs without an LM.
Engines import their framework when built, so the synthesis package itself needs none.
Every engine tokenizes prompts itself *without* adding special tokens (the prompt carries a
literal `<s>`), and exposes the same tokenizer for the chains' length guard.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Sampling:
    """Decoding settings; the reference is greedy with at most 400 new tokens."""

    max_new_tokens: int = 400
    temperature: float = 0.0
    seed: int = 0


@dataclass(frozen=True)
class Generation:
    """One output. `prompt_tokens` is None where the engine does not tokenize the prompt."""

    text: str
    prompt_tokens: int | None
    generated_tokens: int
    token_ids: tuple[int, ...] = ()


@runtime_checkable
class Engine(Protocol):
    """What the chain logic needs from a synthesizer."""

    max_model_len: int

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Token counts of prompt pieces, tokenized as prompts are (no special tokens added)."""
        ...

    def generate(self, prompts: Sequence[str], sampling: Sampling) -> list[Generation]: ...

    def close(self) -> None: ...


class TokenCounter:
    """Counting and truncating with a Hugging Face tokenizer, never adding special tokens."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        return self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(ids) for ids in self.encode(texts)]

    def _generation(self, prompt_tokens: int, new_ids: list[int]) -> Generation:
        """New token ids up to (not including) the first eos, decoded as every LM engine decodes."""
        eos = self.tokenizer.eos_token_id
        row = new_ids[: new_ids.index(eos)] if eos in new_ids else new_ids
        text = self.tokenizer.decode(row, skip_special_tokens=True)
        return Generation(text, prompt_tokens, len(row), tuple(row))

    def truncate(self, text: str, max_tokens: int) -> str:
        """The longest prefix of `text` (cut at a token boundary) of at most `max_tokens` tokens."""
        ids = self.encode([text])[0]
        if len(ids) <= max_tokens:
            return text
        cut = self.tokenizer.decode(ids[: max(max_tokens, 0)], skip_special_tokens=False)
        while cut and self.count_tokens([cut])[0] > max_tokens:  # decode/encode need not round-trip
            cut = cut[:-1]
        return cut.rstrip()


def _padding_tokenizer(name: str) -> Any:
    """The HF tokenizer of `name`, padding on the left (prompts end where generation starts)."""
    from ipt.data.tokenizer import load_tokenizer

    tok = load_tokenizer(name)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token or tok.eos_token
    return tok


def _by_length(ids: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    """Prompt indices in batches of similar length (longest first), so padding stays small."""
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


class HFEngine(TokenCounter):
    """`transformers` generate, batched with left padding, greedy unless temperature > 0."""

    def __init__(
        self,
        model: str,
        tokenizer: str | None = None,
        *,
        max_model_len: int = 4096,
        batch_size: int = 8,
        device: str = "auto",
        dtype: str = "auto",
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        super().__init__(_padding_tokenizer(tokenizer or model))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype).to(device).eval()
        self.device = device
        self.max_model_len = max_model_len
        self.batch_size = batch_size

    def generate(self, prompts: Sequence[str], sampling: Sampling) -> list[Generation]:
        import torch

        ids = self.encode(prompts)
        out: list[Generation | None] = [None] * len(ids)
        eos = self.tokenizer.eos_token_id
        for batch in _by_length(ids, self.batch_size):
            enc = self.tokenizer.pad({"input_ids": [ids[i] for i in batch]}, return_tensors="pt")
            torch.manual_seed(sampling.seed)
            with torch.inference_mode():
                gen = self.model.generate(
                    input_ids=enc["input_ids"].to(self.device),
                    attention_mask=enc["attention_mask"].to(self.device),
                    max_new_tokens=sampling.max_new_tokens,
                    do_sample=sampling.temperature > 0,
                    temperature=sampling.temperature if sampling.temperature > 0 else None,
                    top_p=None,
                    top_k=None,
                    eos_token_id=eos,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            new = gen[:, enc["input_ids"].shape[1] :].tolist()
            for i, row in zip(batch, new, strict=True):
                out[i] = self._generation(len(ids[i]), row)
        return out  # type: ignore[return-value]

    def close(self) -> None:
        self.model = None


class JAXEngine(TokenCounter):
    """ipt's model and jit-compiled KV-cache decoder (`ipt.model.generate`), batched, left-padded.

    `model` is an ipt model directory (`config.yaml` + `params/`, e.g. from `ipt convert` or a
    training run's export) or a Hugging Face Llama/Mistral directory, imported on load."""

    def __init__(
        self,
        model: str,
        tokenizer: str | None = None,
        *,
        max_model_len: int = 4096,
        batch_size: int = 8,
        pad_to_multiple: int = 64,
    ) -> None:
        from pathlib import Path

        from ipt.model.store import CONFIG_FILE, load_model

        super().__init__(_padding_tokenizer(tokenizer or model))
        if (Path(model) / CONFIG_FILE).exists():
            self.model = load_model(model)
        else:
            import json

            from ipt.model.hf import config_from_hf, import_params
            from ipt.model.store import model_from_params

            config_path = Path(model) / "config.json"
            if not config_path.exists():
                raise FileNotFoundError(f"{model}: neither an ipt model directory nor a Hugging Face one")
            config = config_from_hf(json.loads(config_path.read_text()), str(config_path))
            self.model = model_from_params(config, import_params(model, config))
        self.max_model_len = max_model_len
        self.batch_size = batch_size
        self.pad_to_multiple = pad_to_multiple  # fewer distinct prompt widths, fewer compiles

    def generate(self, prompts: Sequence[str], sampling: Sampling) -> list[Generation]:
        from ipt.model.generate import generate

        ids = self.encode(prompts)
        out: list[Generation | None] = [None] * len(ids)
        eos = self.tokenizer.eos_token_id
        for batch in _by_length(ids, self.batch_size):
            rows = generate(
                self.model,
                [ids[i] for i in batch],
                sampling.max_new_tokens,
                temperature=sampling.temperature,
                seed=sampling.seed,
                eos_ids=(eos,),
                pad_id=self.tokenizer.pad_token_id,
                pad_to_multiple=self.pad_to_multiple,
            )
            for i, row in zip(batch, rows, strict=True):
                out[i] = self._generation(len(ids[i]), row)
        return out  # type: ignore[return-value]

    def close(self) -> None:
        self.model = None


class VLLMEngine(TokenCounter):
    """Offline `vllm.LLM`. vLLM is imported here only: the rest of ipt never needs it."""

    def __init__(
        self,
        model: str,
        tokenizer: str | None = None,
        *,
        max_model_len: int = 4096,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.9,
        enable_prefix_caching: bool = True,
        seed: int = 0,
        extra: dict[str, Any] | None = None,
    ) -> None:
        from vllm import LLM

        from ipt.data.tokenizer import resolve_tokenizer

        tok_name = resolve_tokenizer(tokenizer) if tokenizer else model
        self.llm = LLM(
            model=model,
            tokenizer=tok_name,
            max_model_len=max_model_len,
            tensor_parallel_size=tensor_parallel_size,
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            enable_prefix_caching=enable_prefix_caching,
            seed=seed,
            **(extra or {}),
        )
        super().__init__(self.llm.get_tokenizer())
        self.max_model_len = max_model_len

    def generate(self, prompts: Sequence[str], sampling: Sampling) -> list[Generation]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        ids = self.encode(prompts)
        params = SamplingParams(
            temperature=sampling.temperature,
            max_tokens=sampling.max_new_tokens,
            seed=sampling.seed if sampling.temperature > 0 else None,
            detokenize=False,  # decoded below exactly as the hf engine decodes
        )
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in ids], params, use_tqdm=False)
        eos = self.tokenizer.eos_token_id
        new = [list(o.outputs[0].token_ids) for o in outs]
        new = [row[:-1] if row and row[-1] == eos else row for row in new]
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return [
            Generation(text, len(p), len(row), tuple(row))
            for p, row, text in zip(ids, new, texts, strict=True)
        ]

    def close(self) -> None:
        self.llm = None
