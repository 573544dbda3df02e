"""Rebuild the built-in corpus (`corpus.jsonl.gz`) from the Python documentation sources.

The quickstart and the tests need real English prose that ships with the package, since no
dataset can be downloaded at run time. Debian's `python3.11-doc` package holds the reST
sources of the Python documentation (PSF licence); each section of tutorial, FAQ, HOWTO and
reference prose becomes one document. Run: `python -m ipt.assets.build_corpus`.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
from pathlib import Path

DOC_ROOT = Path("/usr/share/doc/python3.11/html/_sources")
PARTS = ("tutorial", "faq", "howto", "reference", "glossary.rst.txt", "library")
HEADING_CHARS = set("=-*^~#\"'+")
ROLE = re.compile(r":[a-z:]+:`!?~?([^`<]*?)(?:\s*<[^>]*>)?`")
LITERAL = re.compile(r"``([^`]*)``")
LINK = re.compile(r"`([^`<]+?)\s*(?:<[^>]*>)?`_+")


def _is_underline(line: str) -> bool:
    s = line.strip()
    return len(s) >= 3 and len(set(s)) == 1 and s[0] in HEADING_CHARS


def _clean_inline(text: str) -> str:
    text = ROLE.sub(r"\1", text)
    text = LITERAL.sub(r"\1", text)
    text = LINK.sub(r"\1", text)
    return text.replace("\\", "")


def sections(rst: str) -> list[tuple[str, str]]:
    """Split one reST file into (title, prose) sections, dropping code, directives and tables."""
    lines = rst.splitlines()
    out: list[tuple[str, str]] = []
    title, paras, cur = "", [], []
    skip_indent: int | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        indent = len(line) - len(line.lstrip())
        if skip_indent is not None:
            if line.strip() and indent <= skip_indent:
                skip_indent = None
            else:
                i += 1
                continue
        if i + 1 < len(lines) and line.strip() and _is_underline(lines[i + 1]) and not _is_underline(line):
            if cur:
                paras.append(" ".join(cur))
                cur = []
            if paras:
                out.append((title, "\n\n".join(paras)))
            title, paras = _clean_inline(line.strip()), []
            i += 2
            continue
        stripped = line.strip()
        if (
            _is_underline(line)
            or stripped.startswith(("..", "+-", "|", ">>>", "..."))
            or stripped.endswith("::")
        ):
            if cur:
                paras.append(" ".join(cur))
                cur = []
            if stripped.startswith("..") or stripped.endswith("::"):
                skip_indent = indent
            if stripped.endswith("::") and not stripped.startswith(".."):
                kept = stripped[:-2].rstrip()
                if kept:
                    paras.append(_clean_inline(kept + ":"))
            i += 1
            continue
        if not stripped:
            if cur:
                paras.append(" ".join(cur))
                cur = []
        elif indent <= 3 or cur:
            cur.append(_clean_inline(stripped))
        i += 1
    if cur:
        paras.append(" ".join(cur))
    if paras:
        out.append((title, "\n\n".join(paras)))
    return out


def build(root: Path, max_bytes: int, min_words: int = 60, max_words: int = 700) -> list[dict]:
    files: list[Path] = []
    for part in PARTS:
        p = root / part
        files.extend(sorted(p.rglob("*.rst.txt")) if p.is_dir() else [p])
    docs, total = [], 0
    for path in files:
        for title, text in sections(path.read_text(encoding="utf-8")):
            words = text.split()
            if len(words) < min_words:
                continue
            if len(words) > max_words:
                cut = text[: len(" ".join(words[:max_words]))]
                text = cut[: cut.rfind("\n\n")] if "\n\n" in cut else cut
            doc = {"id": f"{path.relative_to(root)}#{len(docs)}", "title": title, "text": text}
            total += len(text.encode())
            docs.append(doc)
            if total >= max_bytes:
                return docs
    return docs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=DOC_ROOT)
    ap.add_argument("--max-bytes", type=int, default=1_500_000)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("corpus.jsonl.gz"))
    args = ap.parse_args()
    docs = build(args.root, args.max_bytes)
    with gzip.GzipFile(args.out, "wb", mtime=0) as f:
        for d in docs:
            f.write((json.dumps(d, ensure_ascii=False) + "\n").encode())
    print(f"wrote {len(docs)} documents to {args.out}")


if __name__ == "__main__":
    main()
