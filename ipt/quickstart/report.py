"""REPORT.md: the toy comparison (vanilla vs instruction pre-training), then how each number was made.

Every number is formatted from `ModelResults` (read back from the run's files), and the table rows
have fixed labels (`ROWS`) so a test can find each one and recompute it from the same files.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ipt.quickstart.results import FINAL_LOSS_STEPS, ModelResults

# label -> (how to read it from a model's results, True when lower is better (None: the values do
# not rank the models), decimals shown)
ROWS: dict[str, tuple[Callable[[ModelResults], float], bool | None, int]] = {
    "held-out response loss, cooked format (nats/answer token)": (lambda r: r.response_cooked, True, 4),
    "held-out response loss, plain Q/A format (nats/answer token)": (lambda r: r.response_plain, True, 4),
    "bits per byte, held-out raw text": (lambda r: r.bits_per_byte, True, 4),
    f"final training loss (mean of last {FINAL_LOSS_STEPS} steps, own data)": (
        lambda r: r.final_loss,
        None,
        4,
    ),
    "CORE, nine tasks (centered accuracy; chance = 0)": (
        lambda r: r.core["core"] if r.core else math.nan,
        False,
        4,
    ),
    "training throughput (tokens/s, median step)": (lambda r: r.tokens_per_s, False, 0),
}


@dataclass(frozen=True)
class ReportInputs:
    """Everything the report shows besides the models' results."""

    run_dir: str
    documents: Mapping[str, int]  # per part of the split
    heldout_every: int
    synthesis: Mapping[str, Mapping[str, float]]  # per part: texts, pairs, collections
    cooked_texts: int
    first_cooked_text: str
    tokens: Mapping[str, tuple[int, int]]  # shard directory -> (documents, tokens)
    sources: Mapping[str, str]  # model -> its training mixture, in words
    budget: str  # steps x batch x seq_len, in words
    responses: Mapping[str, Mapping[str, float]]  # per format: texts, answers, tokens
    samples: Mapping[str, str]  # model -> greedy continuation of the prompt
    commands: Sequence[tuple[str, str]]  # (what it makes, shell command)
    eval_limit: int


def fmt(value: float, decimals: int = 4) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{decimals}f}"


def comparison_table(results: Mapping[str, ModelResults]) -> list[str]:
    names = list(results)
    lines = [f"| | {' | '.join(names)} | better |", "|---|" + "---:|" * len(names) + "---|"]
    for label, (read, lower_better, decimals) in ROWS.items():
        values = [read(results[n]) for n in names]
        ranked = lower_better is not None and not any(math.isnan(v) for v in values) and len(set(values)) > 1
        best = names[values.index(min(values) if lower_better else max(values))] if ranked else ""
        lines.append(f"| {label} | {' | '.join(fmt(v, decimals) for v in values)} | {best} |")
    return lines


def verdict(vanilla: ModelResults, instruct: ModelResults) -> str:
    """Plain words on the question the comparison asks: does instruct predict held-out answers better?"""
    parts = []
    for label, a, b in (
        ("cooked format", vanilla.response_cooked, instruct.response_cooked),
        ("plain Q/A format (seen by neither model)", vanilla.response_plain, instruct.response_plain),
    ):
        if b < a:
            parts.append(
                f"in the {label} the instruct model's loss is lower, {fmt(b)} vs {fmt(a)} ({fmt(a - b)} less)"
            )
        else:
            parts.append(
                f"in the {label} the instruct model does NOT beat vanilla: {fmt(b)} vs {fmt(a)} "
                f"({fmt(b - a)} more)"
            )
    bpb = f"{fmt(instruct.bits_per_byte)} vs {fmt(vanilla.bits_per_byte)}"
    if instruct.bits_per_byte < vanilla.bits_per_byte:
        raw = f"the instruct model's bits per byte is lower too ({bpb})"
    else:
        raw = (
            f"the instruct model's bits per byte is not lower ({bpb}): it read less raw text, having "
            "spent part of the same token budget on instruction-augmented text"
        )
    return "On answers to held-out instructions, " + "; ".join(parts) + f". On held-out raw text, {raw}."


def nine_task_table(results: Mapping[str, ModelResults], eval_limit: int) -> list[str]:
    if not eval_limit or any(r.core is None for r in results.values()):
        return ["Skipped (eval_limit=0)."]
    names = list(results)
    tasks = next(iter(results.values())).core["tasks"]
    lines = [
        f"Zero-shot, the first {eval_limit} documents of each task (of each MMLU subject), scored by "
        "`ipt eval` through lm-eval. Models this small, trained for minutes, score near chance "
        "(centered accuracy near 0; below 0 where a model leans to one wrong answer over a few "
        "documents): this table shows that the pipeline works end to end; it cannot separate the two "
        "models, and differences here are noise.",
        "",
        f"| task | metric | chance | {' | '.join(f'{n} accuracy' for n in names)} |",
        "|---|---|---:|" + "---:|" * len(names),
    ]
    for task, row in tasks.items():
        accs = " | ".join(f"{results[n].core['tasks'][task]['accuracy']:.3f}" for n in names)
        lines.append(f"| {task} | {row['metric']} | {row['chance']:.3f} | {accs} |")
    cores = " | ".join(f"**{results[n].core['core']:+.3f}**" for n in names)
    return [*lines, f"| **CORE** (mean centered) | | | {cores} |"]


def _data_section(inp: ReportInputs) -> list[str]:
    synth = inp.synthesis
    return [
        "## 4. The data",
        "",
        f"- Split: {inp.documents['train']} training and {inp.documents['heldout']} held-out documents "
        f"(a document is held out when the SHA-256 of its id is divisible by {inp.heldout_every}).",
        *(
            f"- Synthesis ({part}, rules engine): {int(s['texts'])} texts -> {int(s['pairs'])} pairs "
            f"({s['pairs_per_text']} per text) in {int(s['collections'])} read collections"
            for part, s in synth.items()
        ),
        f"- Cooking: the training collections -> {inp.cooked_texts} instruction-augmented texts.",
        *(
            f"- Tokens `{name}`: {docs:,} documents, {tokens:,} tokens"
            for name, (docs, tokens) in inp.tokens.items()
        ),
        *(f"- Training mixture, {model}: {words}" for model, words in inp.sources.items()),
        f"- Budget, the same for both: {inp.budget}.",
        "",
        "The first instruction-augmented text (what the instruct model reads):",
        "",
        "```text",
        inp.first_cooked_text[:1500],
        "```",
    ]


def _response_note(inp: ReportInputs) -> str:
    counts = "; ".join(
        f"{name}: {int(c['answers'])} answers, {int(c['tokens'])} answer tokens in {int(c['texts'])} texts"
        for name, c in inp.responses.items()
    )
    return (
        "Held-out response loss: every held-out document's synthesized pairs are the held-out tasks. "
        "Each held-out text with its pairs is rendered in the cooked format (exactly as `ipt cook` "
        "renders it) and in a plain `Q: ... A: ...` format that neither model saw; only the answer "
        f"tokens are scored, each given the text and the pairs before it ({counts})."
    )


def render_report(inp: ReportInputs, results: Mapping[str, ModelResults]) -> str:
    vanilla, instruct = results["vanilla"], results["instruct"]
    return "\n".join(
        [
            "# ipt quickstart: Instruction Pre-Training vs vanilla pre-training, at toy scale",
            "",
            "Two tiny Mistral models (configs/model/tiny.yaml) trained from scratch on the built-in corpus "
            "(sections of the Python documentation) with the same token budget and seed: **vanilla** on "
            "raw text only, **instruct** on the paper's mixture of raw and instruction-augmented text. "
            f"Outputs under `{inp.run_dir}`.",
            "",
            "## 1. The comparison",
            "",
            *comparison_table(results),
            "",
            verdict(vanilla, instruct),
            "",
            _response_note(inp),
            "The training losses are on each model's own data (raw vs mixture), so they do not compare "
            "the models; they show that both trained.",
            "",
            "## 2. Loss curves",
            "",
            "![training loss of both models](loss_curves.png)",
            "",
            "## 3. The paper's nine general tasks",
            "",
            *nine_task_table(results, inp.eval_limit),
            "",
            *_data_section(inp),
            "",
            "## 5. Samples (greedy, from the final checkpoints)",
            "",
            *(
                line
                for model, text in inp.samples.items()
                for line in (f"{model}:", "", "```text", text, "```", "")
            ),
            "## 6. Reproduce every number",
            "",
            "Each command below is exactly what the quickstart ran (in this order, from any directory); "
            "`ipt quickstart` reruns them all and skips what is finished.",
            "",
            *(
                line
                for what, command in inp.commands
                for line in (f"{what}:", "", "```bash", command, "```", "")
            ),
        ]
    )
