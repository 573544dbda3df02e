"""Domain tasks (AdaptLLM format): file checks, metrics by hand, and scoring through a real torch model.

The reference scorer below runs a tiny random `MistralForCausalLM` (the real Mistral v1 vocabulary)
in PyTorch; every number `evaluate_domain_task` produces is checked against a separate torch
computation that tokenizes the AdaptLLM way (`tokenizer(prompt + ' ' + option)` with special tokens).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import NamedTuple

import pytest

from ipt.eval import domain, domain_metrics, domain_tasks
from ipt.eval.domain_tasks import DomainTaskError

torch = pytest.importorskip("torch")
F = torch.nn.functional

NEWLINE = 13  # "<0x0A>" in the Mistral v1 vocabulary


class Score(NamedTuple):  # the fields of ipt.eval.scorer.Score
    logprob: float
    num_tokens: int
    greedy: bool


class TorchScorer:
    """The `TokenScorer` protocol over a Hugging Face torch model, one unpadded sequence at a time."""

    def __init__(self, model, eos_id: int):
        self.model, self.eos_id = model, eos_id

    @torch.no_grad()
    def loglikelihood(self, requests):
        scores = []
        for context, continuation in requests:
            ids = torch.tensor([[*context, *continuation]])
            logprobs = torch.log_softmax(self.model(ids).logits[0, :-1].float(), dim=-1)
            n = len(continuation)
            targets = ids[0, -n:]
            picked = logprobs[-n:].gather(-1, targets[:, None])[:, 0]
            greedy = bool((logprobs[-n:].argmax(-1) == targets).all())
            scores.append(Score(float(picked.sum()), n, greedy))
        return scores

    @torch.no_grad()
    def generate(self, prompts, max_new_tokens):
        out = []
        for prompt in prompts:
            ids = torch.tensor([list(prompt)])
            full = self.model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=self.eos_id,
                eos_token_id=self.eos_id,
            )
            new = full[0, ids.shape[1] :].tolist()
            out.append(new[: new.index(self.eos_id) + 1] if self.eos_id in new else new)
        return out


@pytest.fixture(scope="module")
def tokenizer(mistral_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(mistral_tokenizer_dir)


@pytest.fixture(scope="module")
def model():
    """Tiny random Mistral (vocab 32000, hidden 32, 2 layers), seeded; the newline logit row is
    doubled so that greedy answers often stop at a newline after a few tokens."""
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(
        vocab_size=32000,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    m = MistralForCausalLM(config).eval()
    with torch.no_grad():
        m.lm_head.weight[NEWLINE] *= 2.0
    return m


@pytest.fixture(scope="module")
def medqa_file(tmp_path_factory) -> Path:
    return domain_tasks.medqa_task_file(tmp_path_factory.mktemp("domain"))


def _write(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


# ----------------------------------------------------------------------------- metrics by hand


def test_accuracy_and_micro_f1():
    # golds 0 1 2 1, preds 0 2 2 1: 3 of 4 right -> 0.75; micro F1 pools TP=3, FP=FN=1: 6/(6+1+1) = 0.75
    assert domain_metrics.accuracy([0, 1, 2, 1], [0, 2, 2, 1]) == 0.75
    assert domain_metrics.micro_f1([0, 1, 2, 1], [0, 2, 2, 1]) == pytest.approx(0.75)


def test_weighted_f1():
    # golds 0 0 1 1 2, preds 0 1 1 1 0
    # label 0: TP 1, FP 1 (item 5), FN 1 (item 2) -> F1 2/(2+1+1) = 0.5, support 2
    # label 1: TP 2, FP 1 (item 2), FN 0           -> F1 4/5 = 0.8,        support 2
    # label 2: TP 0, FN 1                          -> F1 0,                support 1
    # weighted: (0.5*2 + 0.8*2 + 0*1) / 5 = 2.6 / 5 = 0.52
    assert domain_metrics.weighted_f1([0, 0, 1, 1, 2], [0, 1, 1, 1, 0]) == pytest.approx(0.52)


def test_headline_f1_averages_weighted_f1_per_question_type():
    # class 0: golds 1 0 1, preds 1 1 1 -> label 1: F1 4/5 (support 2), label 0: F1 0 (support 1)
    #          weighted (0.8*2 + 0) / 3 = 8/15
    # class 1: golds 0 1, preds 0 0 -> label 0: TP 1, FP 1 -> F1 2/3 (support 1), label 1: F1 0 (support 1)
    #          weighted (2/3) / 2 = 1/3
    # mean over the two classes: (8/15 + 5/15) / 2 = 13/30
    got = domain_metrics.headline_f1([1, 0, 1, 0, 1], [1, 1, 1, 0, 0], class_ids=[0, 0, 0, 1, 1])
    assert got == pytest.approx(13 / 30)


def test_ner_parse_and_entity_f1():
    # only the one word before "(type)" is the entity text
    assert domain_metrics.parse_ner_entities(" Bank of America (organization), Tim Cook (person)") == [
        ("America", "organization"),
        ("Cook", "person"),
    ]
    golds = ["Apple (organization) Cook (person)", "Bank (organization)", "Apple (organization)"]
    preds = ["Apple (organization) Cook (location) Paris (location)", "nothing", "Google (organization)"]
    # item 1: gold Apple/org -> first pred Apple/org matches text and type: +2
    #         gold Cook/person -> Apple/org no, Cook/location matches text only: +1
    #         correct 3, possible 2*2 = 4, actual 2*3 = 6: P 0.5, R 0.75, F1 2*0.375/1.25 = 0.6
    # item 2: no predicted entity: P = R = 0 -> F1 0
    # item 3: same type, both start at 0 so the texts "overlap": type match only, +1 of 2 -> F1 0.5
    # mean (0.6 + 0 + 0.5) / 3
    assert domain_metrics.ner_entity_f1(golds, preds) == pytest.approx(1.1 / 3)


def test_convfinqa_numbers_and_match():
    assert domain_metrics.extract_numbers("about 25% and 1,234.5\n99") == [0.25, 1234.5]
    assert domain_metrics.extract_numbers("007") == [
        math.inf
    ]  # Python rejects a leading zero, as their eval did
    golds = [" 25%", " 1,234.5", " 7", " 3.5"]
    preds = ["it is 0.1 or 0.255", "1234.5", "5", "\n3.5"]
    # 0.255 is within 0.01 of 0.25: right; 1234.5 == 1234.5: right; 5 vs 7: wrong;
    # the answer's first line is empty, so no number: wrong  -> 2/4
    assert domain_metrics.convfinqa_match(golds, preds) == 0.5


def test_exact_match():
    # " yes " matches "yes"; "no" is not among ["maybe", "n"] -> 1/2
    assert domain_metrics.exact_match([["yes"], ["maybe", "n"]], [" yes ", "no"]) == 0.5


def test_f1_metrics_agree_with_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    import numpy as np

    rng = np.random.default_rng(0)
    for _ in range(20):
        golds, preds = rng.integers(0, 4, 30).tolist(), rng.integers(0, 5, 30).tolist()
        assert domain_metrics.weighted_f1(golds, preds) == pytest.approx(
            metrics.f1_score(golds, preds, average="weighted", zero_division=0)
        )
        assert domain_metrics.micro_f1(golds, preds) == pytest.approx(
            metrics.f1_score(golds, preds, average="micro")
        )


def test_metric_registry(tmp_path):
    mc = _write(tmp_path / "x.jsonl", [{"input": "q", "options": ["a", "b"], "gold_index": 0}])
    gen = _write(tmp_path / "y.jsonl", [{"input": "q", "label": "a"}])
    expected = {
        "pubmedqa": "acc",
        "chemprot": "micro_f1",
        "mqp": "acc",
        "rct": "micro_f1",
        "usmle": "acc",
        "medqa_en": "acc",
        "fpb": "weighted_f1",
        "FiQA_SA": "weighted_f1",
        "headline": "headline_weighted_f1",
    }
    for name, metric in expected.items():
        assert domain_metrics.metric_for(domain_tasks.read_domain_tasks(mc, name=name)).name == metric
    for name, metric in {"ner": "entity_f1", "ConvFinQA": "convfinqa_em"}.items():
        assert domain_metrics.metric_for(domain_tasks.read_domain_tasks(gen, name=name)).name == metric
    assert domain_metrics.metric_for(domain_tasks.read_domain_tasks(mc)).name == "acc"  # unknown name
    assert domain_metrics.metric_for(domain_tasks.read_domain_tasks(gen)).name == "exact_match"
    with pytest.raises(DomainTaskError, match=r"'ner' is scored with entity_f1.*generation"):
        domain_metrics.metric_for(domain_tasks.read_domain_tasks(mc, name="ner"))


# ----------------------------------------------------------------------------- the decision rule


def test_choice_is_the_lowest_mean_not_summed_nll():
    # option 0: 3 tokens, logprob -6 -> sum 6, mean 2;  option 1: 1 token, logprob -4 -> sum 4, mean 4
    # the summed NLL prefers option 1, the mean (AdaptLLM) option 0
    assert domain.choose_option([Score(-6.0, 3, False), Score(-4.0, 1, False)]) == 0
    # ties go to the lowest index: means 2, 1, 1
    assert domain.choose_option([Score(-2.0, 1, False), Score(-2.0, 2, False), Score(-1.0, 1, False)]) == 1


def test_option_requests_tokenize_prompt_and_option_together(tokenizer):
    (context, continuation), _ = domain.option_requests(
        tokenizer, "Is it?\nAnswer:", ["yes", "no"], add_bos=True, max_length=2048
    )
    joint = tokenizer("Is it?\nAnswer: yes")["input_ids"]  # AdaptLLM: encode(prompt + ' ' + option)
    assert context + continuation == joint
    assert continuation == joint[len(tokenizer("Is it?\nAnswer:")["input_ids"]) :]
    assert tokenizer.convert_ids_to_tokens(continuation) == ["▁yes"]
    # no BOS when asked
    (context, _), _ = domain.option_requests(
        tokenizer, "Is it?", ["yes", "no"], add_bos=False, max_length=2048
    )
    assert context[0] != tokenizer.bos_token_id


def test_truncation_keeps_bos_and_the_end(tokenizer):
    prompt = " ".join(f"word{i}" for i in range(200))
    body = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = domain.generation_prompt(tokenizer, prompt, add_bos=True, budget=50)
    assert ids == [tokenizer.bos_token_id, *body[-49:]]
    (context, continuation), *_ = domain.option_requests(
        tokenizer, prompt, ["the end"], add_bos=True, max_length=60
    )
    assert len(context) + len(continuation) == 60 and context[0] == tokenizer.bos_token_id
    assert context[1:] == body[-(59 - len(continuation)) :]


# ----------------------------------------------------------------------------- a real model


def test_medqa_option_nlls_match_a_direct_torch_computation(medqa_file, tokenizer, model):
    task = domain_tasks.read_domain_tasks(medqa_file)
    result = domain.evaluate_domain_task(
        task, TorchScorer(model, tokenizer.eos_token_id), tokenizer, limit=20
    )
    assert result.metric == "acc" and result.num_items == 20 and len(result.samples) == 20
    disagree = 0
    with torch.no_grad():
        for item, sample in zip(task.items[:20], result.samples, strict=True):
            prompt_len = len(tokenizer(item.input)["input_ids"])  # with BOS, as AdaptLLM's add_bos_token=True
            means, sums = [], []
            for option in item.options:
                ids = torch.tensor([tokenizer(item.input + " " + option)["input_ids"]])
                logits = model(ids).logits[0]
                nll = F.cross_entropy(logits[prompt_len - 1 : -1], ids[0, prompt_len:], reduction="none")
                means.append(float(nll.mean()))
                sums.append(float(nll.sum()))
            assert sample["nll"] == pytest.approx(means, abs=1e-5)
            assert sample["prediction"] == min(range(len(means)), key=means.__getitem__)
            assert sample["gold"] == item.gold_index and sample["correct"] == (
                sample["prediction"] == item.gold_index
            )
            disagree += min(range(len(sums)), key=sums.__getitem__) != sample["prediction"]
    assert disagree > 0  # on real options the summed NLL would often choose differently
    assert result.score == pytest.approx(sum(s["correct"] for s in result.samples) / 20)
    json.dumps(result.samples)  # JSONL-ready


def test_generation_is_greedy_and_cut_at_the_first_newline(medqa_file, tokenizer, model, tmp_path):
    medqa = domain_tasks.read_domain_tasks(medqa_file)
    rows = [{"input": item.input, "label": item.options[item.gold_index]} for item in medqa.items[:8]]
    task = domain_tasks.read_domain_tasks(_write(tmp_path / "medqa_gen.jsonl", rows))
    assert task.kind == domain_tasks.GENERATION
    result = domain.evaluate_domain_task(
        task, TorchScorer(model, tokenizer.eos_token_id), tokenizer, max_new_tokens=16
    )
    assert result.metric == "exact_match"
    with torch.no_grad():
        for item, sample in zip(task.items, result.samples, strict=True):
            ids = tokenizer(item.input)["input_ids"]
            new: list[int] = []
            for _ in range(16):  # plain argmax decoding, independent of HF generate
                token = int(model(torch.tensor([ids + new])).logits[0, -1].argmax())
                new.append(token)
                if token == tokenizer.eos_token_id:
                    break
            raw = tokenizer.decode(new, skip_special_tokens=True)
            assert sample["raw"] == raw
            assert sample["prediction"] == raw.split("\n")[0].strip()
    cut = [s for s in result.samples if "\n" in s["raw"] and s["prediction"]]
    assert cut and any("\n" not in s["raw"] for s in result.samples)
    assert all("\n" not in s["prediction"] for s in result.samples)


def test_generation_prompt_is_left_truncated(tokenizer, model, tmp_path):
    prompt = " ".join(f"word{i}" for i in range(100))
    task = domain_tasks.read_domain_tasks(_write(tmp_path / "long.jsonl", [{"input": prompt, "label": "x"}]))
    result = domain.evaluate_domain_task(
        task, TorchScorer(model, tokenizer.eos_token_id), tokenizer, max_length=40, max_new_tokens=8
    )
    assert result.samples[0]["prompt_tokens"] == 32  # max_length - max_new_tokens
    assert result.samples[0]["new_tokens"] <= 8


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("lines", "line", "message"),
    [
        ([{"input": "q", "options": ["a", "b"], "gold_index": 0}, "{not json"], 2, "not valid JSON"),
        ([{"options": ["a", "b"], "gold_index": 0}], 1, "missing field `input`"),
        ([{"input": "q", "options": ["a", "b"]}], 1, "missing field `gold_index`"),
        ([{"input": "q", "gold_index": 0}], 1, "missing field `options`"),
        ([{"input": "q", "options": ["a", "b"], "gold_index": 2}], 1, "`gold_index` 2 is out of range for 2"),
        ([{"input": "q", "options": ["a", "b"], "gold_index": -1}], 1, "out of range"),
        ([{"input": "q", "options": ["a", "b"], "gold_index": "0"}], 1, "`gold_index` must be an integer"),
        (
            [{"input": "q", "options": "ab", "gold_index": 0}],
            1,
            "`options` must be a non-empty list of strings",
        ),
        (
            [{"input": "q", "options": ["a", 1], "gold_index": 0}],
            1,
            "`options` must be a non-empty list of strings",
        ),
        ([{"input": "q", "label": 3}], 1, "`label` must be a string"),
        ([{"input": 3, "label": "a"}], 1, "`input` must be a string"),
        ([{"input": "q"}], 1, "expected `options` and `gold_index`"),
        (["[1, 2]"], 1, "expected a JSON object"),
        (
            [{"input": "q", "options": ["a"], "gold_index": 0}, "", {"input": "q", "label": "a"}],
            3,
            "generation item in a multiple choice task \\(line 1 set the kind\\)",
        ),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, lines, line, message):
    path = _write(tmp_path / "bad.jsonl", lines)
    with pytest.raises(DomainTaskError, match=f"{path}:{line}: .*{message}"):
        domain_tasks.read_domain_tasks(path)


def test_empty_and_missing_files(tmp_path):
    for text in ("", "\n  \n"):
        (tmp_path / "empty.jsonl").write_text(text)
        with pytest.raises(DomainTaskError, match=f"{tmp_path / 'empty.jsonl'}: empty task file"):
            domain_tasks.read_domain_tasks(tmp_path / "empty.jsonl")
    with pytest.raises(DomainTaskError, match="not found"):
        domain_tasks.read_domain_tasks(tmp_path / "nope.jsonl")


def test_headline_without_class_id_names_the_line(tmp_path, tokenizer, model):
    rows = [{"input": "Gold up?", "options": ["No", "Yes"], "gold_index": 1, "class_id": 0}]
    rows.append({"input": "Gold down?", "options": ["No", "Yes"], "gold_index": 0})
    task = domain_tasks.read_domain_tasks(_write(tmp_path / "Headline.jsonl", rows))
    with pytest.raises(DomainTaskError, match=r"Headline.jsonl:2: missing field `class_id`"):
        domain.evaluate_domain_task(task, TorchScorer(model, tokenizer.eos_token_id), tokenizer)


# ----------------------------------------------------------------------------- MedQA-en offline


def test_medqa_conversion(medqa_file):
    task = domain_tasks.read_domain_tasks(medqa_file)
    assert task.name == "medqa_en" and task.kind == domain_tasks.MULTIPLE_CHOICE
    assert len(task.items) == domain_tasks.MEDQA_EN_TEST_DOCS == 1273
    assert all(len(item.options) == 5 and 0 <= item.gold_index < 5 for item in task.items)
    assert [item.extra["id"] for item in task.items] == list(range(1273))
    assert all(item.input == item.input.strip() and item.input for item in task.items)
    # a second call reuses the file
    before = medqa_file.stat().st_mtime_ns
    assert domain_tasks.medqa_task_file(medqa_file.parent) == medqa_file
    assert medqa_file.stat().st_mtime_ns == before


def test_medqa_incomplete_file_is_rewritten(tmp_path):
    partial = tmp_path / domain_tasks.MEDQA_EN_FILE
    partial.write_text('{"input": "q", "options": ["a"], "gold_index": 0}\n')
    assert domain_tasks.medqa_task_file(tmp_path) == partial
    assert len(domain_tasks.read_domain_tasks(partial).items) == 1273
    assert [p.name for p in tmp_path.iterdir()] == [domain_tasks.MEDQA_EN_FILE]  # no temp file left


def test_resolve_domain_task(tmp_path, monkeypatch):
    monkeypatch.setenv("IPT_CACHE", str(tmp_path / "cache"))
    path = domain_tasks.resolve_domain_task("medqa_en")
    assert path == tmp_path / "cache" / "eval_tasks" / "domain" / domain_tasks.MEDQA_EN_FILE
    assert len(path.read_text(encoding="utf-8").splitlines()) == 1273
    own = _write(tmp_path / "mine.jsonl", [{"input": "q", "label": "a"}])
    assert domain_tasks.resolve_domain_task(str(own)) == own
    missing = str(tmp_path / "nope.jsonl")
    with pytest.raises(DomainTaskError, match=rf"{missing}.*medqa_en"):
        domain_tasks.resolve_domain_task(missing)
