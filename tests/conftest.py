import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_qwen():
    """(model, processor): the tiny random Qwen2.5-VL with the real Qwen tokenizer."""
    from pgpo.models.tiny_qwen import build_tiny_qwen25vl

    return build_tiny_qwen25vl(seed=0)
