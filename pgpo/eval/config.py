"""``EvalConfig`` (every field is a ``pgpo eval`` flag), the protocols it resolves against, and the paper's Table 1.

A protocol is a named set of defaults for the settings left unset (None): ``paper`` is exactly the paper's evaluation
(Sec. 5.1 / App. J, which follows PAPO-Eval; sources in ``docs/eval.md``), ``quick`` is a cheap smoke setting. Any
flag given explicitly wins over the protocol. :meth:`EvalConfig.resolve` returns the :class:`EvalSettings` actually
used; they are printed at start and written to ``summary.json``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from pgpo.data import PAPER_SYSTEM_PROMPT, resolve_prompt_template
from pgpo.eval.generation import SamplingSettings

GRADERS = ("paper", "lenient")
NO_SYSTEM_PROMPT = "none"

PROTOCOLS: dict[str, dict[str, Any]] = {
    "paper": {
        "k": 8,
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": 50,
        "max_new_tokens": 2048,
        "max_pixels": 768 * 768,
        "min_pixels": 32 * 32,
        "prompt_template": "paper",
        "system_prompt": PAPER_SYSTEM_PROMPT,
        "grader": "paper",
    },
    "quick": {
        "k": 1,
        "temperature": 0.0,
        "top_p": 1.0,
        "top_k": 0,
        "max_new_tokens": 1024,
        "max_pixels": 768 * 768,
        "min_pixels": 32 * 32,
        "prompt_template": "paper",
        "system_prompt": PAPER_SYSTEM_PROMPT,
        "grader": "paper",
    },
}
"""``paper``: avg@8 at temperature 1.0, top-p 1.0 (the paper); top-k 50 and the 768x768 / 32x32 pixel caps
(PAPO-Eval's ``run_infer.py`` defaults, which its ``run_infer.sh`` does not override); 2,048 new tokens; the paper's
system message and prompt; the paper's grader. ``quick``: one greedy sample, 1,024 tokens, same prompt and grader."""

# Table 1 of the paper (avg@8 %, Qwen2.5-VL), columns in TABLE1_BENCHMARKS order, then Avg.
TABLE1: dict[str, dict[str, list[float]]] = {
    "qwen2.5-vl-7b": {
        "base": [37.29, 43.04, 38.36, 48.15, 17.58, 43.01, 26.67, 33.63, 35.97],
        "DAPO": [41.47, 78.74, 67.95, 55.96, 28.16, 47.85, 36.99, 64.38, 52.69],
        "VPPO": [44.38, 80.11, 70.95, 57.11, 28.27, 47.52, 38.75, 65.54, 54.08],
        "PGPO": [45.20, 80.83, 71.45, 57.71, 29.02, 47.93, 39.01, 66.41, 54.70],
    },
    "qwen2.5-vl-3b": {
        "base": [19.65, 37.37, 33.16, 32.88, 13.88, 30.17, 20.95, 30.31, 27.30],
        "GRPO": [32.19, 62.95, 58.39, 47.82, 25.59, 40.85, 28.02, 54.36, 43.77],
        "DAPO": [33.80, 63.36, 58.76, 45.86, 26.19, 40.63, 27.20, 54.89, 43.84],
        "PAPO": [35.11, 63.54, 60.81, 47.30, 26.37, 42.70, 28.76, 56.90, 45.19],
        "VPPO": [35.36, 63.76, 61.34, 47.75, 26.40, 42.03, 28.83, 57.02, 45.31],
        "PGPO": [36.11, 64.74, 62.06, 48.45, 26.90, 43.20, 29.33, 57.24, 46.00],
    },
}
_PAPER_MODEL_ALIASES = {"3b": "qwen2.5-vl-3b", "7b": "qwen2.5-vl-7b", "qwen25vl-3b": "qwen2.5-vl-3b"}
_PAPER_MODEL_ALIASES["qwen25vl-7b"] = "qwen2.5-vl-7b"


def paper_model_key(name: str) -> str:
    """``qwen2.5-vl-3b`` / ``qwen2.5-vl-7b`` (also ``3b``, ``7b``, any case); ``ValueError`` otherwise."""
    key = name.strip().lower()
    key = _PAPER_MODEL_ALIASES.get(key, key)
    if key not in TABLE1:
        raise ValueError(f"--compare_paper must be one of {', '.join(TABLE1)} (or 3b / 7b), not {name!r}")
    return key


@dataclass(frozen=True)
class EvalSettings:
    """The resolved settings of a run (what ``summary.json`` records under ``settings``)."""

    protocol: str
    k: int
    temperature: float
    top_p: float
    top_k: int
    max_new_tokens: int
    max_pixels: int | None
    min_pixels: int | None
    prompt_template: str  # the template text (a name is resolved)
    system_prompt: str | None
    grader: str

    @property
    def sampling(self) -> SamplingSettings:
        return SamplingSettings(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            max_new_tokens=self.max_new_tokens,
            max_pixels=self.max_pixels,
            min_pixels=self.min_pixels,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _help(text: str) -> dict[str, Any]:
    return {"help": text}


@dataclass
class EvalConfig:
    """Options of ``pgpo eval``. Settings left unset (None) come from ``protocol``."""

    model: str | None = field(
        default=None,
        metadata=_help(
            "Model: a local folder, a Hub id (from the local cache when offline), 'tiny-qwen' or 'demo-vlm'."
        ),
    )
    benchmark: list[str] = field(
        default_factory=lambda: ["all"],
        metadata=_help(
            "Benchmarks (repeatable or comma-separated): all (Table 1's eight: geo3k, mmk12, mathverse, dynamath, "
            "mathvision, logicvista, mmmu_pro, mathverse_v), or any of those plus mathvista, wemath."
        ),
    )
    data: list[str] | None = field(
        default=None,
        metadata=_help(
            "Benchmark data: one path per benchmark (in order), or one folder holding an entry per benchmark "
            "(data/mathverse/, data/MMMU_Pro/, data/geo3k.parquet, ...; MathVerse_V reads the MathVerse entry)."
        ),
    )
    out: str | None = field(default=None, metadata=_help("Output folder: <benchmark>.jsonl, summary.md, summary.json."))
    overwrite_out: bool = field(
        default=False,
        metadata=_help(
            "Start afresh in --out: remove what an earlier pgpo eval wrote there (its samples, summary and "
            "config.json; nothing else). Also allows an --out that holds other files (they are kept)."
        ),
    )
    protocol: str = field(
        default="paper",
        metadata=_help(
            "Defaults for unset settings: paper (k 8, temperature 1.0, top-p 1.0, top-k 50, 2048 new tokens, images "
            "capped at 768x768 pixels, the paper's system message, prompt and grader) or quick (1 greedy sample)."
        ),
    )
    k: int | None = field(default=None, metadata=_help("Samples per question (avg@k). paper: 8."))
    temperature: float | None = field(default=None, metadata=_help("Sampling temperature; 0 = greedy. paper: 1.0."))
    top_p: float | None = field(default=None, metadata=_help("Nucleus sampling top-p. paper: 1.0."))
    top_k: int | None = field(default=None, metadata=_help("Top-k sampling; 0 = off. paper: 50 (PAPO-Eval)."))
    max_new_tokens: int | None = field(default=None, metadata=_help("Generation budget per sample. paper: 2048."))
    max_pixels: int | None = field(
        default=None, metadata=_help("Downscale images above this many pixels (0 = no cap). paper: 589824 (768x768).")
    )
    min_pixels: int | None = field(
        default=None, metadata=_help("Upscale images below this many pixels (0 = none). paper: 1024 (32x32).")
    )
    prompt_template: str | None = field(
        default=None,
        metadata=_help("Prompt: a name (paper, easyr1, plain) or a template with a {question} field. paper: paper."),
    )
    system_prompt: str | None = field(
        default=None,
        metadata=_help(
            "System message text, or 'none' for no system message (the chat template's default). paper: "
            f"'{PAPER_SYSTEM_PROMPT}'"
        ),
    )
    grader: str | None = field(
        default=None,
        metadata=_help(
            "Main grader: paper (mathruler on the last \\boxed{}, PAPO-Eval) or lenient (pgpo's checker). The other "
            "is reported as a separate, labelled row. paper: paper."
        ),
    )
    backend: str = field(default="auto", metadata=_help("auto (vLLM when installed with a GPU, else hf), vllm or hf."))
    batch_size: int | None = field(
        default=None, metadata=_help("Prompts per generate call (default 8 with transformers, 512 with vLLM).")
    )
    limit: int | None = field(default=None, metadata=_help("Only the first N selected questions of each benchmark."))
    split: list[str] | None = field(
        default=None,
        metadata=_help(
            "Split override per benchmark, NAME=SPLIT (repeatable; comma-separated splits for several), e.g. "
            "dynamath=sample_variant1,sample_variant2. Default: each benchmark's protocol split."
        ),
    )
    compare_paper: str | None = field(
        default=None, metadata=_help("Print the paper's Table 1 rows for this model size beside yours: 3b or 7b.")
    )
    bootstrap: int = field(
        default=1000, metadata=_help("Bootstrap resamples (over questions) for the 95%% confidence intervals.")
    )
    seed: int = field(default=0, metadata=_help("Sampling and bootstrap seed."))
    num_shards: int | None = field(
        default=None,
        metadata=_help(
            "Split the questions over this many processes (default: WORLD_SIZE under accelerate launch / torchrun)."
        ),
    )
    shard_index: int | None = field(
        default=None, metadata=_help("This process's shard, 0-based (default: RANK under accelerate launch).")
    )
    vllm_tensor_parallel_size: int = field(default=1, metadata=_help("vLLM: GPUs one model is split over."))
    vllm_gpu_memory_utilization: float = field(default=0.9, metadata=_help("vLLM: share of GPU memory it may use."))
    no_progress: bool = field(default=False, metadata=_help("Hide the progress bar."))

    def resolve(self) -> EvalSettings:
        """The settings of this run: explicit fields, else the protocol's. ``ValueError`` on an invalid value."""
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"--protocol must be one of {', '.join(PROTOCOLS)}, not {self.protocol!r}")
        base = PROTOCOLS[self.protocol]
        values = {name: getattr(self, name) if getattr(self, name) is not None else base[name] for name in base}
        if values["k"] < 1:
            raise ValueError(f"--k must be >= 1, got {values['k']}")
        if values["temperature"] < 0:
            raise ValueError(f"--temperature must be >= 0, got {values['temperature']}")
        if not 0 < values["top_p"] <= 1:
            raise ValueError(f"--top_p must be in (0, 1], got {values['top_p']}")
        if values["top_k"] < 0 or values["max_new_tokens"] < 1:
            raise ValueError("--top_k must be >= 0 and --max_new_tokens >= 1")
        if values["grader"] not in GRADERS:
            raise ValueError(f"--grader must be one of {', '.join(GRADERS)}, not {values['grader']!r}")
        for key in ("max_pixels", "min_pixels"):
            values[key] = values[key] or None  # 0 = no cap
        system = values["system_prompt"]
        values["system_prompt"] = None if system is None or system.strip().lower() == NO_SYSTEM_PROMPT else system
        values["prompt_template"] = resolve_prompt_template(values["prompt_template"])
        return EvalSettings(protocol=self.protocol, **values)

    def shard(self) -> tuple[int, int]:
        """``(shard_index, num_shards)``: the explicit fields, else ``RANK`` / ``WORLD_SIZE`` from the launcher."""
        n = self.num_shards if self.num_shards is not None else int(os.environ.get("WORLD_SIZE", 1))
        i = self.shard_index if self.shard_index is not None else int(os.environ.get("RANK", 0))
        if n < 1 or not 0 <= i < n:
            raise ValueError(f"shard {i} of {n} is not a valid shard (0 <= shard_index < num_shards)")
        return i, n

    def split_for(self, benchmark: str) -> str | None:
        """The split override for ``benchmark`` from ``--split NAME=SPLIT`` (a bare ``SPLIT`` applies to all)."""
        from pgpo.eval.benchmarks import get_spec

        chosen = None
        for entry in self.split or []:
            name, sep, value = entry.partition("=")
            if not sep:
                chosen = entry
            elif get_spec(name).name == benchmark:
                return value
        return chosen


def config_fields() -> list[str]:
    """The flag names of :class:`EvalConfig` (for docs and tests)."""
    return [f.name for f in fields(EvalConfig)]
