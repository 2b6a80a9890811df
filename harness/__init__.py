"""Determinism and performance regression harness for LLM inference (Ascend NPU, CUDA, CPU)."""

__version__ = "0.1.0"
