"""The stage layer: what every `ipt` stage shares about starting and failing.

`run_stage` is every config-driven command's entry: it parses `[--config FILE] [key=value
...]`, validates, runs the stage, and turns the errors a user can fix into one line
`ipt STAGE: error: ...` with status 2 and no traceback: an invalid config (`ConfigError`, which
names the key and file, whether the stage's own config or one it loads, such as a model
directory's), input that cannot be read (`BadInputError`, which names the file and line), an
output that already exists and is not overwritten, and a missing, unreadable or misplaced file
or directory (the OS error names the path; a `--config` that is a directory, too). Any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ipt.config import C, ConfigError, describe_keys, load_config


class BadInputError(ValueError):
    """Input that cannot be read or used; the message names the file (and line, record or key)."""


EXPECTED_ERRORS = (
    BadInputError,
    ConfigError,
    FileNotFoundError,
    FileExistsError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
)


def describe_error(error: BaseException) -> str:
    """One line for an expected error: its message, or for an OS error what happened to which path."""
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.filename}: {error.strerror or type(error).__name__}"
    return str(error)


def run_stage(schema: type[C], fn: Callable[[C], Any], argv: Sequence[str], prog: str) -> int:
    """Parse `[--config FILE] [dotted.key=value ...]`, validate, call `fn(config)`; print errors."""
    import argparse
    import sys

    doc = (schema.__doc__ or "").strip()
    parser = argparse.ArgumentParser(
        prog=prog,
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="keys (set in --config FILE or as dotted.key=value):\n  " + "\n  ".join(describe_keys(schema)),
    )
    parser.add_argument("--config", help="YAML config file (may name bases with `base:`)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(schema, args.config, args.overrides)
        result = fn(cfg)
    except EXPECTED_ERRORS as e:
        print(f"{prog}: error: {describe_error(e)}", file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0
