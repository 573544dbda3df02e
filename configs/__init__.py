"""Config presets, shipped inside ipt as the data package `ipt.configs` (see ipt/resources.py).

This file only makes `configs/` a regular package, so that an editable install can import it too.
"""
