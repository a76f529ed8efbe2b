"""``evaluate(EvalConfig)``: generate k samples per question, grade them, write per-sample JSONL and the Table-1 row.

Generation goes through vLLM when ``vllm`` is importable and CUDA is available, else through transformers'
``generate`` (batched, left padding). Every sample is appended to ``OUT/<benchmark>.jsonl`` and flushed as soon as it
is graded, so an interrupted run loses at most the batch in flight; rerunning the same command skips every
``(id, sample_index)`` pair already written (a torn last line is dropped first). ``OUT/config.json`` records what the
samples were generated with (the model, the backend and the sampling / prompt settings, :func:`sample_settings`):
resuming under another model or other settings, or into a non-empty folder pgpo eval did not write, is refused
(:func:`prepare_out`); ``--overwrite_out`` removes what pgpo eval wrote there, and nothing else.

Each sample is graded by both graders (:func:`pgpo.answers.paper_grade` and the lenient
:func:`pgpo.answers.score_completion`) and both verdicts are stored; the summary reports the main one (``--grader``)
as the Table-1 row and the other as a separate, labelled row -- never mixed.

Data parallel: with ``num_shards`` > 1 (or under ``accelerate launch`` / ``torchrun``, from ``WORLD_SIZE`` / ``RANK``)
each process takes every ``num_shards``-th question and writes ``OUT/<benchmark>.shard<i>-of-<n>.jsonl``; the summary
reads every file of a benchmark, so resuming with another number of processes works. Under a launcher the processes
wait for each other and shard 0 writes the summary; with manual shards, rerun once without them at the end.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from pgpo.answers import paper_grade, score_completion
from pgpo.data import DATA_SUFFIXES, build_messages
from pgpo.eval.benchmarks import BENCHMARKS, BenchmarkRecord, expand_benchmarks, get_spec, load_benchmark
from pgpo.eval.config import GRADERS, EvalConfig, EvalSettings, paper_model_key
from pgpo.eval.generation import (
    Completion,
    GenerationRequest,
    Generator,
    HFGenerator,
    make_generator,
    resolve_backend,
)
from pgpo.eval.report import per_question, print_settings, print_summary, summarize, summary_markdown

logger = logging.getLogger(__name__)

DEFAULT_HF_BATCH_SIZE = 8
DEFAULT_VLLM_BATCH_SIZE = 512
SUMMARY_MD, SUMMARY_JSON, CONFIG_JSON = "summary.md", "summary.json", "config.json"


# ----------------------------------------------------------------------------------------------------------------------
# Data paths
# ----------------------------------------------------------------------------------------------------------------------


def _entry_names(name: str) -> list[str]:
    """Folder / file names a benchmark's data may have: its name, its Hub repo name (any case, ``org_repo`` as
    PAPO-Eval writes it), and the names of the other benchmarks that read the same Hub dataset (MathVerse_V)."""
    spec = get_spec(name)
    repo = spec.hf_id.split("/")[-1]
    names = [spec.name, repo, repo.lower(), spec.hf_id.replace("/", "_")]
    names += [other.name for other in BENCHMARKS.values() if other.hf_id == spec.hf_id and other.name != spec.name]
    return list(dict.fromkeys(names))


def _entry(root: Path, name: str) -> Path | None:
    for cand in _entry_names(name):
        for suffix in ("", *DATA_SUFFIXES):
            path = root / (cand + suffix)
            if path.exists():
                return path
    return None


def resolve_data(benchmarks: Sequence[str], data: Sequence[str | Path]) -> list[tuple[str, Path]]:
    """Pair each benchmark with its data: one path per benchmark (in order), or one folder with an entry each."""
    names = expand_benchmarks(benchmarks)
    paths = [Path(d).expanduser() for d in data]
    if not paths:
        raise ValueError("no --data given: one path per benchmark, or one folder holding an entry per benchmark")
    if len(paths) == len(names) and not (len(paths) == 1 and _entry(paths[0], names[0]) is not None):
        return list(zip(names, paths))
    if len(paths) != 1:
        raise ValueError(f"got {len(names)} benchmarks and {len(paths)} --data; give one --data per benchmark or one")
    root = paths[0]
    pairs = []
    for name in names:
        entry = _entry(root, name)
        if entry is None:
            tried = ", ".join(str(root / n) + "[.parquet|.jsonl|.json]" for n in _entry_names(name))
            raise ValueError(f"no data for {name} under {root} (tried {tried})")
        pairs.append((name, entry))
    return pairs


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


def sample_files(out_dir: Path, name: str) -> list[Path]:
    """``<name>.jsonl`` and every ``<name>.shard*-of-*.jsonl`` in ``out_dir``."""
    return sorted(p for p in [out_dir / f"{name}.jsonl", *out_dir.glob(f"{name}.shard*-of-*.jsonl")] if p.exists())


def read_benchmark_samples(out_dir: Path, name: str) -> list[dict[str, Any]]:
    """All sample lines of a benchmark over its files; the first line of each ``(id, sample_index)`` wins."""
    seen: set[tuple[str, int]] = set()
    out = []
    for path in sample_files(out_dir, name):
        for s in read_samples(path):
            key = (str(s["id"]), int(s["sample_index"]))
            if key not in seen:
                seen.add(key)
                out.append(s)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Grading
# ----------------------------------------------------------------------------------------------------------------------


def grade(completion: str, record: BenchmarkRecord) -> dict[str, Any]:
    """Both graders' verdicts on one completion: ``paper_answer``, ``paper_correct``, ``lenient_answer``,
    ``lenient_correct``."""
    paper_answer, paper_ok = paper_grade(completion, record.answer)
    lenient_answer, lenient_ok = score_completion(
        completion, record.answer, record.choices, record.answer_type, record.precision
    )
    return {
        "paper_answer": paper_answer,
        "paper_correct": bool(paper_ok),
        "lenient_answer": lenient_answer,
        "lenient_correct": bool(lenient_ok),
    }


def _regrade_missing(samples: list[dict[str, Any]], records: Sequence[BenchmarkRecord]) -> None:
    """Grade, in place, sample lines written without a verdict of some grader (older pgpo versions)."""
    by_id = {r.id: r for r in records}
    for s in samples:
        if any(f"{g}_correct" not in s for g in GRADERS) and str(s["id"]) in by_id:
            s.update(grade(str(s.get("completion", "")), by_id[str(s["id"])]))


# ----------------------------------------------------------------------------------------------------------------------
# Running one benchmark
# ----------------------------------------------------------------------------------------------------------------------


def _requests(
    batch: Sequence[tuple[BenchmarkRecord, int]], settings: EvalSettings, cache: dict[str, list[Image.Image]]
) -> list[GenerationRequest]:
    """One request per (record, sample) pair; a record's images are decoded once."""
    out = []
    for record, _ in batch:
        if record.id not in cache:
            cache.clear()  # keep only the current question's images
            cache[record.id] = record.load_images()
        images = cache[record.id]
        messages = build_messages(record.question, len(images), settings.prompt_template, settings.system_prompt)
        out.append(GenerationRequest(messages, images))
    return out


def run_benchmark(
    name: str,
    records: Sequence[BenchmarkRecord],
    generator: Generator,
    out_dir: Path,
    settings: EvalSettings,
    batch_size: int = DEFAULT_HF_BATCH_SIZE,
    shard: tuple[int, int] = (0, 1),
    progress: bool = True,
) -> int:
    """Generate and grade this shard's ``(record, sample)`` pairs not yet written; returns how many were generated."""
    from tqdm.auto import tqdm

    index, n_shards = shard
    out_path = out_dir / (f"{name}.jsonl" if n_shards == 1 else f"{name}.shard{index}-of-{n_shards}.jsonl")
    done = {(str(s["id"]), int(s["sample_index"])) for s in read_benchmark_samples(out_dir, name)}
    k = settings.k
    mine = [rec for j, rec in enumerate(records) if j % n_shards == index]
    todo = [(rec, s) for rec in mine for s in range(k) if (rec.id, s) not in done]
    if not todo:
        return 0
    size = max(1, batch_size)
    cache: dict[str, list[Image.Image]] = {}
    with (
        open(out_path, "a", encoding="utf-8") as f,
        tqdm(
            total=len(todo) / k,
            desc=name,
            unit="q",
            disable=not progress,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} questions "
            "[{elapsed}<{remaining}, {rate_fmt}]",
        ) as bar,
    ):
        for start in range(0, len(todo), size):
            batch = todo[start : start + size]
            completions = generator.generate(_requests(batch, settings, cache))
            if len(completions) != len(batch):
                raise RuntimeError(f"generator returned {len(completions)} completions for {len(batch)} prompts")
            for (rec, s), completion in zip(batch, completions):
                line = {
                    "id": rec.id,
                    "sample_index": s,
                    "completion": str(completion),
                    "truncated": completion.truncated if isinstance(completion, Completion) else None,
                    "num_tokens": completion.num_tokens if isinstance(completion, Completion) else None,
                    "gold": rec.answer,
                    **grade(str(completion), rec),
                }
                f.write(json.dumps(line, ensure_ascii=False) + "\n")
            f.flush()
            bar.update(len(batch) / k)
    return len(todo)


# ----------------------------------------------------------------------------------------------------------------------
# The whole run
# ----------------------------------------------------------------------------------------------------------------------


SAMPLE_SETTINGS = (
    "temperature",
    "top_p",
    "top_k",
    "max_new_tokens",
    "max_pixels",
    "min_pixels",
    "prompt_template",
    "system_prompt",
)
"""The settings that change the samples (with the model and the backend). Not ``k`` (raising it adds samples), the
grader (every sample stores both graders' verdicts) or the protocol's name (its values are these)."""
WRITTEN_BY = "pgpo eval"
_MARKER_TMP = f".{CONFIG_JSON}.tmp"


def _model_id(model: str) -> str:
    """A local model folder as its absolute path (however it is spelled), anything else as given."""
    folder = Path(model).expanduser()
    return str(folder.resolve()) if folder.is_dir() else model


def sample_settings(model: str, backend: str, settings: EvalSettings) -> dict[str, Any]:
    """What the samples of a run are generated with: the model, the backend and :data:`SAMPLE_SETTINGS`."""
    values = settings.to_dict()
    return {"model": _model_id(model), "backend": backend, **{key: values[key] for key in SAMPLE_SETTINGS}}


def written_files(out_dir: Path) -> list[Path]:
    """The files in ``out_dir`` named like those pgpo eval writes: config.json, the summary, every sample file."""
    named = [p for p in (out_dir / n for n in (CONFIG_JSON, SUMMARY_MD, SUMMARY_JSON)) if p.exists()]
    return named + [p for name in BENCHMARKS for p in sample_files(out_dir, name)]


def _read_marker(out_dir: Path) -> dict[str, Any] | None:
    """``out_dir``'s config.json when pgpo eval wrote it (an older pgpo's has no ``written_by``), else None."""
    try:
        data = json.loads((out_dir / CONFIG_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    held = {"model", "backend", *SAMPLE_SETTINGS}
    ours = isinstance(data, dict) and (data.get("written_by") == WRITTEN_BY or held <= data.keys())
    return data if ours else None


def prepare_out(out_dir: Path, held: Mapping[str, Any], overwrite: bool = False, shard: tuple[int, int] = (0, 1)):
    """Make ``out_dir`` the folder of samples generated with ``held`` (:func:`sample_settings`), or raise ValueError.

    A folder pgpo eval wrote (its config.json says so) is resumed when it holds the same, else refused naming each
    difference. A non-empty folder it did not write is refused unless ``overwrite``; files named like pgpo eval's in
    it are refused in any case (they would be read as samples, or overwritten). ``overwrite`` first removes what pgpo
    eval wrote (:func:`written_files` of a folder it wrote, nothing else): shard 0 does, the other processes of a
    launcher wait for it. Every process checks; the one that finds no config.json writes it (atomically).
    """
    if overwrite:
        if shard[1] > 1 and int(os.environ.get("WORLD_SIZE", 1)) <= 1:
            raise ValueError(
                "--overwrite_out with shards started by hand (--num_shards): one shard could remove the samples of "
                "another; give the sharded run a new --out instead"
            )
        if shard[0] == 0 and _read_marker(out_dir) is not None:
            for path in written_files(out_dir):
                path.unlink()
        _barrier(shard[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    # list before reading config.json: a file another process writes after its config.json is then never foreign
    present = sorted(p.name for p in out_dir.iterdir() if not p.name.startswith(_MARKER_TMP))
    named = [p.name for p in written_files(out_dir)]
    old = _read_marker(out_dir)
    if old is None:
        not_ours = f"was not written by pgpo eval (it has no {CONFIG_JSON} of pgpo eval)"
        if named:
            raise ValueError(
                f"--out {out_dir} holds {', '.join(named)}, named like pgpo eval's files, but {not_ours}: they would "
                "be read as samples or overwritten; move them away or choose a new --out"
            )
        if present and not overwrite:
            shown = ", ".join(present[:3]) + (", ..." if len(present) > 3 else "")
            raise ValueError(
                f"--out {out_dir} is not empty ({shown}) and {not_ours}: choose a new or empty --out, or pass "
                "--overwrite_out to write beside those files (pgpo eval removes only files it wrote)"
            )
        tmp = out_dir / f"{_MARKER_TMP}{os.getpid()}"
        tmp.write_text(json.dumps({"written_by": WRITTEN_BY, **held}, indent=2), encoding="utf-8")
        os.replace(tmp, out_dir / CONFIG_JSON)
        return
    old["model"] = _model_id(str(old.get("model")))  # an older pgpo wrote the folder as it was given
    changed = [f"{key}: {old.get(key)!r} there, {value!r} now" for key, value in held.items() if old.get(key) != value]
    if changed:
        raise ValueError(
            f"--out {out_dir} holds samples generated otherwise ({'; '.join(changed)}); they are not mixed with this "
            "run's. Choose a new --out, or pass --overwrite_out to remove what pgpo eval wrote there and start afresh"
        )


def _barrier(n_shards: int) -> bool:
    """Wait for the other processes when started by a launcher (``WORLD_SIZE`` > 1); False when there is none."""
    if n_shards <= 1 or int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return False
    from accelerate import PartialState

    PartialState().wait_for_everyone()
    return True


def build_summary(
    model: str,
    loaded: Sequence[tuple[str, Sequence[BenchmarkRecord]]],
    out_dir: Path,
    settings: EvalSettings,
    backend: str,
    compare_paper: str | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The summary over everything in ``out_dir`` for the current questions: both graders, the Table-1 row."""
    samples: dict[str, list[dict[str, Any]]] = {}
    for name, records in loaded:
        samples[name] = read_benchmark_samples(out_dir, name)
        _regrade_missing(samples[name], records)
    n_questions = {name: len(records) for name, records in loaded}
    order = [settings.grader] + [g for g in GRADERS if g != settings.grader]
    graders = {}
    for g in order:
        per_bench = {
            name: per_question(samples[name], [r.id for r in records], settings.k, g) for name, records in loaded
        }
        graders[g] = summarize(per_bench, samples, n_questions, settings.k, bootstrap=bootstrap, seed=seed)
    return {
        "model": model,
        "backend": backend,
        "settings": settings.to_dict(),
        "compare_paper": compare_paper,
        "graders": graders,
    }


def evaluate(config: EvalConfig, generator: Generator | None = None, print_table: bool = True) -> dict[str, Any]:
    """Run ``config`` (see :class:`pgpo.eval.config.EvalConfig`); return the summary (also written to ``out``).

    Every benchmark's data is read and checked before anything is generated. Pass ``generator`` to use an already
    built one (``config.model`` is then only recorded).
    """
    settings = config.resolve()
    if not config.model:
        raise ValueError("--model is required (a local folder, a Hub id, 'tiny-qwen' or 'demo-vlm')")
    if not config.out:
        raise ValueError("--out is required (the output folder)")
    compare = paper_model_key(config.compare_paper) if config.compare_paper else None
    shard = config.shard()
    out = Path(config.out).expanduser()
    pairs = resolve_data(config.benchmark, config.data or [])
    loaded = [
        (name, load_benchmark(name, path, split=config.split_for(name), limit=config.limit)) for name, path in pairs
    ]
    if generator is None:
        backend = resolve_backend(config.model, config.backend)
    else:
        backend = "hf" if isinstance(generator, HFGenerator) else "custom"
    prepare_out(out, sample_settings(config.model, backend, settings), config.overwrite_out, shard)
    if print_table and shard[0] == 0:
        print_settings(settings.to_dict(), {"model": config.model, "benchmarks": ", ".join(n for n, _ in loaded)})
    if generator is None:
        generator, _ = make_generator(
            config.model,
            settings.sampling,
            config.backend,
            seed=config.seed + shard[0],
            tensor_parallel_size=config.vllm_tensor_parallel_size,
            gpu_memory_utilization=config.vllm_gpu_memory_utilization,
        )
    batch_size = config.batch_size or (DEFAULT_VLLM_BATCH_SIZE if backend == "vllm" else DEFAULT_HF_BATCH_SIZE)
    for name, records in loaded:
        run_benchmark(name, records, generator, out, settings, batch_size, shard, progress=not config.no_progress)
    _barrier(shard[1])
    summary = build_summary(
        config.model, loaded, out, settings, backend, compare, bootstrap=config.bootstrap, seed=config.seed
    )
    if shard[0] == 0:
        (out / SUMMARY_JSON).write_text(json.dumps(summary, indent=2), encoding="utf-8")
        (out / SUMMARY_MD).write_text(summary_markdown(summary), encoding="utf-8")
        if print_table:
            print_summary(summary)
    return summary


def summary_paths(out_dir: str | Path) -> Mapping[str, Path]:
    """Where :func:`evaluate` writes its summary."""
    out = Path(out_dir)
    return {"md": out / SUMMARY_MD, "json": out / SUMMARY_JSON}
