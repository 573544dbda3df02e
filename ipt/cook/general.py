"""General instruction data (e.g. OpenOrca) -> pre-training text, as the paper's continual recipe uses it.

Each `{question, response}` record becomes `QUESTION RESPONSE` joined by one space (PAPER.md
section 5). With `loss_on="response"` the text is written as loss-mask segments,
`[{"text": QUESTION, "train": false}, {"text": " " + RESPONSE, "train": true}]`, the input form
`ipt tokenize` turns into a per-token loss mask; the segments concatenate to the same string.
The space goes with the response so a SentencePiece tokenizer sees the word boundary there.
"""

from __future__ import annotations

from typing import Any, Literal

from ipt.cook.pairs import strip_markers
from ipt.data.readers import Document, get_field
from ipt.stage import BadInputError

LossOn = Literal["all", "response"]


def format_instruction(
    doc: Document, question_field: str, response_field: str, loss_on: LossOn
) -> str | list[dict[str, Any]] | None:
    """The text (or loss-mask segments) of one record; None when question or response is blank."""
    question, response = get_field(doc, question_field), get_field(doc, response_field)
    for key, value in ((question_field, question), (response_field, response)):
        if not isinstance(value, str):
            raise BadInputError(f"{doc.where}: `{key}` must be a string, got {type(value).__name__}")
    question, response = strip_markers(question.strip())[0], strip_markers(response.strip())[0]
    if not question or not response:
        return None
    if loss_on == "all":
        return f"{question} {response}"
    return [{"text": question, "train": False}, {"text": " " + response, "train": True}]
