"""Evaluation: scoring ipt models on general (lm-eval) and domain-specific (AdaptLLM) tasks."""
