"""Models: :func:`load_model` (the one loader of ``pgpo eval`` / ``pgpo inspect``) and offline builders (tests,
benchmarks, the embedded demo)."""

from pgpo.models.load import BUILTIN_MODELS, DEMO_VLM, TINY_QWEN, load_model

__all__ = ["BUILTIN_MODELS", "DEMO_VLM", "TINY_QWEN", "load_model"]
