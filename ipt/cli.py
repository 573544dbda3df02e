"""The `ipt` command: picks a stage and hands it the rest of the command line. No logic here.

Each entry names `module:function`; the function takes the remaining arguments and returns an
exit code. Config-driven stages parse `[--config FILE] [dotted.key=value ...]` with
`ipt.stage.run_stage`. Modules are imported only when their command runs, so `ipt --help`
stays fast and a stage's heavy dependencies (JAX, PyTorch) load only where needed.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

COMMANDS: dict[str, tuple[str, str]] = {
    "quickstart": ("ipt.quickstart:main", "the whole pipeline on the built-in corpus, on CPU"),
    "synthesize": ("ipt.synth.run:main", "raw text -> read collections (engine: vllm | hf | jax | rules)"),
    "cook": ("ipt.cook.run:main", "read collections -> instruction-augmented pre-training text"),
    "tuning-data": ("ipt.cook.tuning:main", "read collections by dataset -> synthesizer fine-tuning shards"),
    "tokenize": ("ipt.data.tokenize:main", "text (.jsonl/.parquet/.txt) -> ArrayRecord shards + manifest"),
    "data inspect": ("ipt.data.inspect:main", "print a shard directory's manifest and decode a few records"),
    "data plan": ("ipt.data.plan:main", "tokens drawn per source for a token budget, with epochs"),
    "model info": ("ipt.model.info:main", "parameter count and FLOPs per token of a model config"),
    "convert": ("ipt.model.convert:main", "Hugging Face <-> ipt checkpoints (import | export)"),
    "train": ("ipt.train.run:main", "train on a device mesh; resumes from the run directory"),
    "eval": (
        "ipt.eval.run:main",
        "score a model: lm-eval tasks (paper = the nine), domain tasks, bits-per-byte",
    ),
    "sweep": (
        "ipt.sweep.run:main",
        "one experiment over a grid of overrides: run or print the points, summarize",
    ),
    "compile": (
        "ipt.train.aot:main",
        "compile the train step for a TPU slice (AOT) and print its memory fit",
    ),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    rows = "\n".join(f"  ipt {name:<{width}}  {doc}" for name, (_, doc) in COMMANDS.items())
    return f"usage: ipt COMMAND [--config FILE] [dotted.key=value ...]\n\ncommands:\n{rows}\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0
    for n_words in (2, 1):
        name = " ".join(args[:n_words])
        if name in COMMANDS:
            module, func = COMMANDS[name][0].split(":")
            return getattr(importlib.import_module(module), func)(args[n_words:])
    print(f"ipt: unknown command {args[0]!r}\n\n{_usage()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
