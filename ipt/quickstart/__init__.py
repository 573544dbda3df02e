"""`ipt quickstart`: the paper's comparison at toy scale, every stage of the pipeline, on CPU, offline.

The built-in corpus is split by document into training and held-out text; both are synthesized
(rules engine, M=2), and the held-out pairs become the held-out tasks. Two tiny models train with
the same token budget and seed: vanilla on raw text, instruct on the paper's mixture of raw and
instruction-augmented text. `ipt eval` scores both (held-out response loss in the cooked and in a
plain Q/A format, bits-per-byte on held-out raw text, the nine general tasks), and REPORT.md
compares them, with both loss curves in `loss_curves.png` and the command behind every number.
Each stage is called exactly as its command would be, so the quickstart doubles as a worked example.
"""

from ipt.quickstart.run import QuickstartConfig, main, quickstart

__all__ = ["QuickstartConfig", "main", "quickstart"]
