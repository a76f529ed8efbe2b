"""Benchmark evaluation: generate k samples per question, score them, write per-sample JSONL and an accuracy table.

Generation goes through vLLM when ``vllm`` is importable and CUDA is available, else through transformers'
``generate`` (batched, left padding). Every sample is appended to ``OUT/<benchmark>.jsonl`` and flushed as soon as it
is scored, so an interrupted run loses at most the batch in flight; rerunning the same command skips every
``(id, sample_index)`` pair already in the file (a torn last line is dropped first).

Metrics, per benchmark: ``accuracy`` = accuracy@k, the mean correctness over the k samples of every question (the
"avg@k" that RLVR papers report); ``pass_at_k`` = fraction of questions with at least one correct sample. ``overall``
is the mean of the benchmarks' accuracies (macro), ``overall_micro`` the mean over all samples.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from pgpo.benchmarks import BenchmarkRecord, get_spec, load_benchmark
from pgpo.data import PGPO_PROMPT_TEMPLATE, build_messages
from pgpo.scoring import score_completion

logger = logging.getLogger(__name__)

DEFAULT_HF_BATCH_SIZE = 8
DEFAULT_VLLM_BATCH_SIZE = 512
SUMMARY_MD, SUMMARY_JSON, CONFIG_JSON = "summary.md", "summary.json", "config.json"


@dataclass
class GenerationRequest:
    """One prompt to complete: chat ``messages`` (with ``{"type": "image"}`` entries) and its ``images`` in order."""

    messages: list[dict[str, Any]]
    images: list[Image.Image]


class Generator(Protocol):
    """Anything that completes a batch of requests (one completion string per request, same order)."""

    def generate(self, requests: Sequence[GenerationRequest]) -> list[str]: ...


# ----------------------------------------------------------------------------------------------------------------------
# Generators
# ----------------------------------------------------------------------------------------------------------------------


class HFGenerator:
    """transformers ``generate``: batched, left-padded, greedy at ``temperature == 0`` else plain sampling.

    The sampling settings are exactly the given ones (``top_p``, no top-k, no repetition penalty): the model's own
    ``generation_config`` defaults (e.g. Qwen's ``top_k=1``) are not applied.
    """

    def __init__(self, model, processor, temperature: float = 0.0, max_new_tokens: int = 1024, top_p: float = 1.0):
        import torch
        from transformers import GenerationConfig

        self.model, self.processor = model, processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        eos = model.generation_config.eos_token_id
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        sample = temperature > 0
        self.generation_config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=sample,
            temperature=temperature if sample else None,
            top_p=top_p if sample else None,
            top_k=0 if sample else None,
            repetition_penalty=1.0,
            eos_token_id=eos,
            pad_token_id=pad[0] if isinstance(pad, list) else pad,
        )
        self._torch = torch

    @classmethod
    def from_pretrained(cls, model_path: str | Path, device: str | None = None, **kwargs: Any) -> HFGenerator:
        """Load an image-text-to-text model and its processor from a local folder."""
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        model = AutoModelForImageTextToText.from_pretrained(str(model_path), dtype=dtype).to(device).eval()
        processor = AutoProcessor.from_pretrained(str(model_path))
        return cls(model, processor, **kwargs)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[str]:
        if not requests:
            return []
        texts = [
            self.processor.apply_chat_template(r.messages, tokenize=False, add_generation_prompt=True) for r in requests
        ]
        images = [img for r in requests for img in r.images]
        old_side = self.tokenizer.padding_side
        self.tokenizer.padding_side = "left"
        try:
            inputs = self.processor(text=texts, images=images or None, padding=True, return_tensors="pt")
        finally:
            self.tokenizer.padding_side = old_side
        inputs = inputs.to(self.model.device)
        with self._torch.inference_mode():
            out = self.model.generate(**inputs, generation_config=self.generation_config)
        new_tokens = out[:, inputs["input_ids"].shape[1] :]
        return self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)


class VLLMGenerator:  # pragma: no cover - needs a GPU and vllm
    """vLLM offline generation (one request per sample; vLLM batches and caches shared prefixes itself)."""

    def __init__(
        self,
        model_path: str | Path,
        temperature: float = 0.0,
        max_new_tokens: int = 1024,
        top_p: float = 1.0,
        seed: int = 0,
        max_images: int = 8,
        **llm_kwargs: Any,
    ):
        from transformers import AutoProcessor
        from vllm import LLM, SamplingParams

        self.processor = AutoProcessor.from_pretrained(str(model_path))
        self.llm = LLM(model=str(model_path), seed=seed, limit_mm_per_prompt={"image": max_images}, **llm_kwargs)
        # No per-request seed: identical prompts in one batch (the k samples) must not share a random stream.
        self.params = SamplingParams(
            temperature=temperature, top_p=top_p if temperature > 0 else 1.0, max_tokens=max_new_tokens
        )

    def generate(self, requests: Sequence[GenerationRequest]) -> list[str]:
        inputs = []
        for r in requests:
            prompt = self.processor.apply_chat_template(r.messages, tokenize=False, add_generation_prompt=True)
            item: dict[str, Any] = {"prompt": prompt}
            if r.images:
                item["multi_modal_data"] = {"image": r.images if len(r.images) > 1 else r.images[0]}
            inputs.append(item)
        outputs = self.llm.generate(inputs, self.params, use_tqdm=False)
        return [o.outputs[0].text for o in outputs]


def vllm_available() -> bool:
    """True when ``vllm`` is importable and a CUDA device is visible."""
    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()


def make_generator(
    model_path: str | Path,
    backend: str = "auto",
    temperature: float = 0.0,
    max_new_tokens: int = 1024,
    top_p: float = 1.0,
    seed: int = 0,
) -> tuple[Generator, str]:
    """``(generator, backend name)``: vLLM when available (``backend="auto"``), else transformers."""
    if backend not in ("auto", "vllm", "hf"):
        raise ValueError(f"backend must be 'auto', 'vllm' or 'hf', not {backend!r}")
    if backend == "vllm" or (backend == "auto" and vllm_available()):
        if not vllm_available():
            raise ValueError("backend 'vllm' needs the vllm package and a CUDA device")
        return VLLMGenerator(model_path, temperature, max_new_tokens, top_p, seed), "vllm"
    import torch

    torch.manual_seed(seed)
    return HFGenerator.from_pretrained(
        model_path, temperature=temperature, max_new_tokens=max_new_tokens, top_p=top_p
    ), "hf"


# ----------------------------------------------------------------------------------------------------------------------
# Resumable JSONL
# ----------------------------------------------------------------------------------------------------------------------


def read_samples(path: Path) -> list[dict[str, Any]]:
    """The valid sample lines of a results JSONL. A torn or invalid line (an interrupted write) is dropped and the
    file rewritten without it, so that appending can continue safely."""
    if not path.exists():
        return []
    raw = path.read_text(encoding="utf-8")
    good: list[dict[str, Any]] = []
    bad = 0
    for line in raw.splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(obj, dict) and "id" in obj and "sample_index" in obj:
            good.append(obj)
        else:
            bad += 1
    if bad or (raw and not raw.endswith("\n")):
        if bad:
            logger.warning("%s: dropped %d unreadable line(s) left by an interrupted run", path, bad)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text("".join(json.dumps(o, ensure_ascii=False) + "\n" for o in good), encoding="utf-8")
        os.replace(tmp, path)
    return good


def _requests(batch: Sequence[tuple[BenchmarkRecord, int]], prompt_template: str) -> list[GenerationRequest]:
    """One request per (record, sample) pair; a record's images are decoded once per batch."""
    cache: dict[str, list[Image.Image]] = {}
    out = []
    for record, _ in batch:
        if record.id not in cache:
            cache[record.id] = record.load_images()
        images = cache[record.id]
        out.append(GenerationRequest(build_messages(record.question, len(images), prompt_template), images))
    return out


def run_benchmark(
    name: str,
    records: Sequence[BenchmarkRecord],
    generator: Generator,
    out_path: str | Path,
    k: int = 1,
    batch_size: int = DEFAULT_HF_BATCH_SIZE,
    prompt_template: str = PGPO_PROMPT_TEMPLATE,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate and score the ``(record, sample)`` pairs not yet in ``out_path``; return the benchmark's metrics."""
    from tqdm.auto import tqdm

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    done = {(str(s["id"]), int(s["sample_index"])) for s in read_samples(out_path)}
    todo = [(rec, s) for rec in records for s in range(k) if (rec.id, s) not in done]
    if todo:
        with (
            open(out_path, "a", encoding="utf-8") as f,
            tqdm(total=len(todo), desc=name, unit="sample", disable=not progress) as bar,
        ):
            for start in range(0, len(todo), max(1, batch_size)):
                batch = todo[start : start + max(1, batch_size)]
                requests = _requests(batch, prompt_template)
                completions = generator.generate(requests)
                if len(completions) != len(batch):
                    raise RuntimeError(f"generator returned {len(completions)} completions for {len(batch)} prompts")
                for (rec, s), completion in zip(batch, completions):
                    pred, ok = score_completion(completion, rec.answer, rec.choices, rec.answer_type, rec.precision)
                    line = {
                        "id": rec.id,
                        "sample_index": s,
                        "completion": completion,
                        "extracted_answer": pred,
                        "gold": rec.answer,
                        "correct": bool(ok),
                    }
                    f.write(json.dumps(line, ensure_ascii=False) + "\n")
                    f.flush()
                    bar.update(1)
    return summarize_samples(read_samples(out_path), [r.id for r in records], k)


def summarize_samples(samples: Sequence[Mapping[str, Any]], ids: Sequence[str], k: int) -> dict[str, Any]:
    """accuracy@k and pass@k over ``ids`` from sample lines (samples with ``sample_index >= k`` are ignored)."""
    wanted = set(ids)
    per_id: dict[str, dict[int, bool]] = {}
    for s in samples:
        sid, idx = str(s["id"]), int(s["sample_index"])
        if sid in wanted and idx < k:
            per_id.setdefault(sid, {})[idx] = bool(s.get("correct"))
    complete = [v for v in per_id.values() if len(v) == k]
    n_samples = sum(len(v) for v in complete)
    correct = sum(sum(v.values()) for v in complete)
    return {
        "n": len(complete),
        "k": k,
        "samples": n_samples,
        "correct": correct,
        "accuracy": correct / n_samples if n_samples else 0.0,
        "pass_at_k": sum(any(v.values()) for v in complete) / len(complete) if complete else 0.0,
        "missing": len(wanted) - len(complete),
    }


# ----------------------------------------------------------------------------------------------------------------------
# Summary
# ----------------------------------------------------------------------------------------------------------------------


def overall(results: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Macro mean of the benchmarks' accuracy@k (``accuracy``) and the mean over all samples (``accuracy_micro``)."""
    accs = [r["accuracy"] for r in results.values() if r["samples"]]
    samples = sum(r["samples"] for r in results.values())
    return {
        "accuracy": sum(accs) / len(accs) if accs else 0.0,
        "accuracy_micro": sum(r["correct"] for r in results.values()) / samples if samples else 0.0,
        "pass_at_k": (sum(r["pass_at_k"] for r in results.values() if r["samples"]) / len(accs)) if accs else 0.0,
        "n": sum(r["n"] for r in results.values()),
        "samples": samples,
    }


def summary_markdown(summary: Mapping[str, Any]) -> str:
    """The summary as a Markdown table (accuracies in percent)."""
    k = summary["k"]
    lines = [
        f"# Evaluation: {summary['model']}",
        "",
        f"k={k}, temperature={summary['temperature']}, max_new_tokens={summary['max_new_tokens']}, "
        f"backend={summary['backend']}",
        "",
        f"| benchmark | questions | samples | accuracy@{k} (%) | pass@{k} (%) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in summary["benchmarks"].items():
        lines.append(f"| {name} | {r['n']} | {r['samples']} | {100 * r['accuracy']:.2f} | {100 * r['pass_at_k']:.2f} |")
    o = summary["overall"]
    lines.append(
        f"| **overall (mean of benchmarks)** | {o['n']} | {o['samples']} | {100 * o['accuracy']:.2f} | "
        f"{100 * o['pass_at_k']:.2f} |"
    )
    lines += ["", f"Mean over all samples (micro): {100 * o['accuracy_micro']:.2f}%", ""]
    return "\n".join(lines)


def print_summary(summary: Mapping[str, Any]) -> None:
    """Print the summary table with rich."""
    from rich.console import Console
    from rich.table import Table

    k = summary["k"]
    table = Table(title=f"{summary['model']}  (k={k}, T={summary['temperature']})")
    for col, justify in (
        ("benchmark", "left"),
        ("questions", "right"),
        ("samples", "right"),
        (f"acc@{k} %", "right"),
        (f"pass@{k} %", "right"),
    ):
        table.add_column(col, justify=justify)
    for name, r in summary["benchmarks"].items():
        table.add_row(name, str(r["n"]), str(r["samples"]), f"{100 * r['accuracy']:.2f}", f"{100 * r['pass_at_k']:.2f}")
    o = summary["overall"]
    table.add_row(
        "overall", str(o["n"]), str(o["samples"]), f"{100 * o['accuracy']:.2f}", f"{100 * o['pass_at_k']:.2f}"
    )
    Console().print(table)


def _check_config(out_dir: Path, config: dict[str, Any]) -> None:
    path = out_dir / CONFIG_JSON
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            old = {}
        changed = {key: (old.get(key), config[key]) for key in config if key != "k" and old.get(key) != config[key]}
        if changed:
            logger.warning("%s: resuming with different settings %s; old samples are kept", out_dir, changed)
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")


def evaluate(
    model: str | Path,
    benchmarks: Sequence[tuple[str, str | Path]],
    out_dir: str | Path,
    k: int = 1,
    temperature: float = 0.0,
    max_new_tokens: int = 1024,
    limit: int | None = None,
    batch_size: int | None = None,
    split: str | None = None,
    backend: str = "auto",
    seed: int = 0,
    prompt_template: str = PGPO_PROMPT_TEMPLATE,
    generator: Generator | None = None,
    progress: bool = True,
    print_table: bool = True,
) -> dict[str, Any]:
    """Evaluate ``model`` (a local folder) on ``benchmarks`` (``(name, data path)`` pairs); return the summary.

    Writes ``out_dir/<name>.jsonl`` per benchmark and ``summary.md`` / ``summary.json``. Every benchmark's data is
    read and checked before any generation starts. Pass ``generator`` to reuse an already built one (the model path
    is then only recorded).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    loaded = []
    for name, path in benchmarks:
        spec = get_spec(name)
        loaded.append((spec.name, load_benchmark(spec.name, path, split=split, limit=limit)))
    names = [n for n, _ in loaded]
    if len(set(names)) != len(names):
        raise ValueError(f"benchmark listed twice: {names}")
    backend_name = "custom"
    if generator is None:
        generator, backend_name = make_generator(model, backend, temperature, max_new_tokens, seed=seed)
    elif isinstance(generator, HFGenerator):
        backend_name = "hf"
    if batch_size is None:
        batch_size = DEFAULT_VLLM_BATCH_SIZE if backend_name == "vllm" else DEFAULT_HF_BATCH_SIZE
    config = {
        "model": str(model),
        "k": k,
        "temperature": temperature,
        "max_new_tokens": max_new_tokens,
        "prompt_template": prompt_template,
    }
    _check_config(out, config)
    results = {}
    for name, records in loaded:
        results[name] = run_benchmark(
            name, records, generator, out / f"{name}.jsonl", k, batch_size, prompt_template, progress
        )
    summary = {
        "model": str(model),
        "k": k,
        "temperature": temperature,
        "max_new_tokens": max_new_tokens,
        "backend": backend_name,
        "benchmarks": results,
        "overall": overall(results),
    }
    (out / SUMMARY_JSON).write_text(json.dumps(summary, indent=2), encoding="utf-8")
    (out / SUMMARY_MD).write_text(summary_markdown(summary), encoding="utf-8")
    if print_table:
        print_summary(summary)
    return summary
