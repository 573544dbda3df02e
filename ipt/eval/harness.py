"""ipt's model inside lm-evaluation-harness: the `ipt` model class (`lm_eval --model ipt`).

It subclasses lm-eval's `TemplateLM`, so the context/continuation split, the empty-context
prefix token and trailing-space handling are lm-eval's own; tokenization mirrors lm-eval's
`hf` model (the tokenizer's own BOS unless `add_bos_token` says otherwise, left truncation to
`max_length`), so the two score the same token windows. Scoring and generation run on
`ipt.eval.scorer.Scorer`; rolling windows and stop-sequence handling are lm-eval's helpers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import (
    handle_stop_sequences,
    has_bos_prefix,
    normalize_gen_kwargs,
    postprocess_generated_text,
)
from tqdm import tqdm

from ipt.eval.rows import window
from ipt.eval.scorer import Scorer


@register_model("ipt")
class IptLM(TemplateLM):
    """lm-eval model on a `Scorer`; build it with `from_pretrained` (what `lm_eval` calls) or
    directly from a scorer and a tokenizer (what `ipt eval` does)."""

    def __init__(
        self,
        scorer: Scorer,
        tokenizer: Any,
        *,
        add_bos_token: bool | None = None,
        max_gen_toks: int = 256,
        model_name: str = "ipt",
    ):
        super().__init__()
        self.scorer = scorer
        self.tokenizer = tokenizer
        self.add_bos_token = add_bos_token
        self.max_gen_toks = max_gen_toks
        self.model_name = model_name
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no eos token; lm-eval needs one as end-of-text")

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> IptLM:
        """`lm_eval --model ipt --model_args pretrained=DIR,step=N,tokenizer=T,max_length=L`."""
        from ipt.eval.run import EvalConfig, build_lm

        args = {**arg_dict, **{k: v for k, v in (additional_config or {}).items() if v is not None}}
        args["model"] = args.pop("pretrained")
        args.pop("device", None)  # the mesh decides where scoring runs
        args.pop("max_batch_size", None)
        batch = args.pop("batch_size", None)
        if batch not in (None, "auto"):
            args["batch_rows"] = int(batch)
        return build_lm(EvalConfig(tasks=["none"], **args))

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> IptLM:
        return cls.create_from_arg_obj(lm_utils.simple_parse_args_string(arg_string), additional_config)

    # ------------------------------------------------------------------ tokens

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.eot_token_id

    @property
    def max_length(self) -> int:
        return self.scorer.cfg.max_length

    def tok_encode(
        self,
        string: str,
        add_special_tokens: bool | None = None,
        left_truncate_len: int | None = None,
        **kwargs,
    ) -> list[int]:
        flag = add_special_tokens if add_special_tokens is not None else self.add_bos_token
        if add_special_tokens is None and has_bos_prefix(string, self.tokenizer.decode(self.prefix_token_id)):
            flag = False  # the string carries its own BOS
        ids = self.tokenizer.encode(string, **({} if flag is None else {"add_special_tokens": flag}))
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, tokens: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

    # ------------------------------------------------------------------ requests

    def _bar(self, kind: str, total: int, disable: bool) -> tqdm:
        """A progress bar over requests: tqdm's rate reads requests/s."""
        return tqdm(total=total, desc=f"ipt {kind}", unit="req", disable=disable or self.rank != 0)

    def _loglikelihood_tokens(
        self, requests: list, disable_tqdm: bool = False, **kwargs
    ) -> list[tuple[float, bool]]:
        bar = self._bar("loglikelihood", len(requests), disable_tqdm)
        scores = self.scorer.loglikelihood([(ctx, cont) for _, ctx, cont in requests], progress=bar.update)
        bar.close()
        out = []
        for (key, _, _), score in zip(requests, scores, strict=True):
            answer = (score.logprob, score.greedy)
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, answer)
            out.append(answer)
        return out

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        """Whole-text log-likelihood from disjoint windows of `max_length` (as lm-eval's `hf`)."""
        per_request, windows = [], []
        for (string,) in (req.args for req in requests):
            parts = [
                lm_utils.make_disjoint_window(w)
                for w in lm_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length,
                    context_len=1,
                )
            ]
            per_request.append(len(parts))
            windows.extend(window(ctx, cont, self.max_length) for ctx, cont in parts)
        bar = self._bar("loglikelihood_rolling", len(windows), disable_tqdm)
        scores = self.scorer.score_windows(windows, progress=bar.update)
        bar.close()
        out, at = [], 0
        for req, n in zip(requests, per_request, strict=True):
            total = sum(s.logprob for s in scores[at : at + n])
            at += n
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
            out.append(total)
        return out

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        """Greedy generation, grouped by generation kwargs; text cut at the first stop sequence."""
        eos = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(repr(sorted(req.args[1].items())), []).append(i)
        out: list[str] = [""] * len(requests)
        bar = self._bar("generate_until", len(requests), disable_tqdm)
        for members in groups.values():
            kwargs = normalize_gen_kwargs(requests[members[0]].args[1], self.max_gen_toks)
            if kwargs.get("do_sample") or kwargs.get("temperature", 0.0) > 0:
                raise ValueError("the ipt model generates greedily; the task asks for sampling")
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            max_new = kwargs.pop("max_gen_toks")
            if max_new >= self.max_length:
                raise ValueError(f"max_gen_toks={max_new} must be below max_length={self.max_length}")
            prompts = [
                self.tok_encode(requests[i].args[0], left_truncate_len=self.max_length - max_new)
                for i in members
            ]
            for i, new in zip(members, self.scorer.generate(prompts, max_new), strict=True):
                text = postprocess_generated_text(
                    generation=self.tok_decode(new), stop=until, think_end_token=None
                )
                out[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
            bar.update(len(members))
        bar.close()
        return out
