"""Synthesis: raw texts -> read collections of instruction-response pairs (no JAX here)."""
