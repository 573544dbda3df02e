"""ipt: Instruction Pre-Training (Cheng et al., 2024) on JAX/Flax."""

__version__ = "0.1.0"
