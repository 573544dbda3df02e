"""Cooking: read collections -> instruction-augmented pre-training text (PAPER.md section 4).

`pools` loads the phrasing (YAML under `pools/`), `pairs` parses and re-renders one pair,
`render` lays out a whole collection (read through `ipt.collection`), `general` formats
general instruction data, and `run` is the `ipt cook` driver.
"""
