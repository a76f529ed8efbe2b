"""Restoring a training checkpoint exactly, or failing with an error that names the file.

``transformers.Trainer`` resumes a full fine-tuning run with ``model.load_state_dict(file, strict=False)`` on the raw
checkpoint keys and only *logs* missing / unexpected keys. ``save_pretrained`` writes the checkpoint in the model's
*original* key layout (it reverts the model's key conversion, e.g. Qwen2.5-VL's ``model.visual.*`` ->
``visual.*`` and ``model.language_model.*`` -> ``model.*``), so for every model with a key conversion only the keys
that the conversion leaves alone are loaded (the tiny Qwen2.5-VL: ``lm_head`` alone, 1 tensor of 57) and training
goes on from the base weights with the trained Adam moments (transformers#43701; the same in
``Trainer._load_best_model``). This module loads checkpoints
with the model's own conversion (the one ``from_pretrained`` applies) and refuses anything that would not restore
every tensor.

* :func:`load_checkpoint` -- weights of a checkpoint folder into the model, in place: a full model
  (``model.safetensors``, sharded or not, or ``pytorch_model.bin``) through :func:`to_model_keys`, or the active LoRA
  / PEFT adapter through PEFT's own loader. Any missing, unexpected or mis-shaped key raises
  :class:`CheckpointError` naming the folder and the first keys.
* :func:`check_checkpoint_files` -- before anything is loaded: every file a resume reads exists and can be read
  (JSON parsed, the CRC-32s of torch archives verified, safetensors headers checked against the file size); errors
  name the file and the previous checkpoint folder to try. A missing RNG state only warns (the run goes on, but
  does not sample what the uninterrupted run would have).
* :func:`restoring_optimizer`, :func:`restoring_rng` -- ``Trainer``'s own optimizer / scheduler and RNG loads, their
  failures turned into a :class:`CheckpointError` that names the files.
* :func:`write_pgpo_state`, :func:`read_pgpo_state` -- pgpo's running statistics and the dynamic-sampling refill
  position (``pgpo_state.json``); a checkpoint without them warns that the statistics restart.
* :func:`generation_period`, :func:`check_save_schedule`, :func:`check_resume_step` -- TRL generates one batch of
  completions every ``steps_per_generation * num_iterations`` micro-steps and keeps it in memory only; a checkpoint
  taken inside that period cannot be resumed on the same schedule, so such save settings are refused at start and
  such checkpoints at resume.

Nothing here depends on the trainer; :class:`pgpo.trainer.PGPOTrainer` wires it into ``Trainer``'s load methods.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
import zipfile
from contextlib import contextmanager
from copy import deepcopy

import torch

PGPO_STATE_FILE = "pgpo_state.json"
TRAINER_STATE_FILE = "trainer_state.json"
CONFIG_FILE = "config.json"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
RNG_FILE = "rng_state.pth"
SAFE_WEIGHTS_FILE = "model.safetensors"
SAFE_WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
WEIGHTS_FILE = "pytorch_model.bin"
WEIGHTS_INDEX_FILE = "pytorch_model.bin.index.json"
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")
SHOWN_KEYS = 5  # keys listed in an error message

_CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be restored exactly: an unreadable file, a key or shape mismatch, a misaligned step."""


class CheckpointWarning(UserWarning):
    """A checkpoint that resumes, but not bit for bit as the uninterrupted run would have gone on."""


# ----------------------------------------------------------------------------------------------------- messages
def previous_checkpoint(folder: str | os.PathLike) -> str | None:
    """The sibling ``checkpoint-N`` with the largest ``N`` below this folder's that holds a trainer state, or None."""
    folder = os.path.abspath(folder)
    parent, name = os.path.split(folder)
    match = _CHECKPOINT_DIR.match(name)
    if match is None or not os.path.isdir(parent):
        return None
    step = int(match.group(1))
    earlier = []
    for other in os.listdir(parent):
        m = _CHECKPOINT_DIR.match(other)
        if m and int(m.group(1)) < step and os.path.isfile(os.path.join(parent, other, TRAINER_STATE_FILE)):
            earlier.append((int(m.group(1)), os.path.join(parent, other)))
    return max(earlier)[1] if earlier else None


def unreadable(path: str | os.PathLike, reason: str) -> CheckpointError:
    """``CheckpointError`` for a file of a checkpoint folder: names the file and the previous checkpoint to try."""
    path = os.path.abspath(path)
    previous = previous_checkpoint(os.path.dirname(path))
    hint = (
        f"resume from the previous checkpoint instead: --resume_from_checkpoint {previous}"
        if previous
        else "there is no earlier checkpoint next to it"
    )
    return CheckpointError(f"checkpoint file {path}: {reason}; {hint}")


def _first(keys) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - SHOWN_KEYS} more)" if len(keys) > SHOWN_KEYS else ""
    return ", ".join(map(str, keys[:SHOWN_KEYS])) + more


def _key_error(folder, what: str, missing=(), unexpected=(), mismatched=()) -> CheckpointError:
    parts = [f"{len(missing)} missing: {_first(missing)}"] if missing else []
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected: {_first(unexpected)}")
    if mismatched:
        parts.append(f"{len(mismatched)} of another shape: {_first(mismatched)}")
    return CheckpointError(
        f"checkpoint {os.path.abspath(folder)}: the {what} does not match the model ({'; '.join(parts)}); nothing "
        "was resumed. Was it saved by a run with the same model and options (LoRA / PEFT settings included)?"
    )


# ----------------------------------------------------------------------------------------------------- reading files
def read_json(path: str | os.PathLike):
    """A JSON file of a checkpoint; ``CheckpointError`` naming it when it is missing or not valid JSON."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise unreadable(path, "missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise unreadable(path, f"not valid JSON ({e})") from e


def read_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a ``.safetensors`` or torch ``.bin`` weights file, on the CPU; errors name the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise unreadable(path, "missing")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path, device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors / pickle / zip errors have no common base class
        raise unreadable(path, f"cannot be read ({type(e).__name__}: {e})") from e


def _check_torch_archive(path: str) -> None:
    """A ``torch.save`` file is a zip archive whose members carry CRC-32s: check them all. ``torch.load`` does not,
    so a flipped byte would otherwise load as a wrong number; reading costs about a second per 2 GB."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise unreadable(path, f"not a readable torch.save archive ({e})") from e
    if bad is not None:
        raise unreadable(path, f"corrupt: the checksum of its member {bad!r} does not match")


def _check_safetensors(path: str) -> None:
    """The header must parse and the data it describes must fit in the file (catches truncation)."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            f.keys()
    except Exception as e:
        raise unreadable(path, f"not a readable safetensors file ({type(e).__name__}: {e})") from e


def weight_files(folder: str | os.PathLike) -> list[str]:
    """The weight files of a full-model checkpoint: one file, or the shards its index lists (index checked)."""
    for index_name in (SAFE_WEIGHTS_INDEX_FILE, WEIGHTS_INDEX_FILE):
        index = os.path.join(folder, index_name)
        if os.path.isfile(index):
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise unreadable(index, "has no weight_map")
            return [os.path.join(folder, shard) for shard in sorted(set(weight_map.values()))]
    for name in (SAFE_WEIGHTS_FILE, WEIGHTS_FILE):
        if os.path.isfile(os.path.join(folder, name)):
            return [os.path.join(folder, name)]
    return []


def adapter_file(folder: str | os.PathLike) -> str | None:
    """The PEFT adapter weights file of a checkpoint folder, or None."""
    for name in ADAPTER_FILES:
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    return None


def check_checkpoint_files(
    folder: str | os.PathLike, adapter: bool, process_index: int = 0, world_size: int = 1
) -> None:
    """Check, before anything is loaded, that every file a resume reads is there and readable.

    ``adapter``: the run trains a PEFT adapter (the weights are ``adapter_model.*``, not ``model.*``).
    Raises :class:`CheckpointError` naming the first bad file and the previous checkpoint; warns
    (:class:`CheckpointWarning`) when this process's RNG state is missing.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise CheckpointError(f"checkpoint folder not found: {os.path.abspath(folder)}")
    state = read_json(os.path.join(folder, TRAINER_STATE_FILE))
    if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
        raise unreadable(os.path.join(folder, TRAINER_STATE_FILE), "has no integer global_step")
    for name in (CONFIG_FILE, PGPO_STATE_FILE):
        if os.path.isfile(os.path.join(folder, name)):
            read_json(os.path.join(folder, name))
    files = ([adapter_file(folder)] if adapter_file(folder) else []) if adapter else weight_files(folder)
    if not files:
        other = weight_files(folder) if adapter else adapter_file(folder)
        if other:
            raise CheckpointError(
                f"checkpoint {os.path.abspath(folder)} holds "
                + (
                    "full model weights, but this run trains a PEFT adapter"
                    if adapter
                    else "a PEFT adapter, but this run trains the full model"
                )
                + ": resume with the options of the run that saved it (use_peft, lora_*)"
            )
        expected = ADAPTER_FILES[0] if adapter else SAFE_WEIGHTS_FILE
        raise unreadable(os.path.join(folder, expected), "missing: the checkpoint has no model weights")
    for path in files:
        if not os.path.isfile(path):
            raise unreadable(path, "missing (listed in the shard index)")
        if path.endswith(".safetensors"):
            _check_safetensors(path)
        else:
            _check_torch_archive(path)
    for name in (OPTIMIZER_FILE, SCHEDULER_FILE):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise unreadable(path, "missing: the optimizer / learning-rate schedule would restart silently")
        _check_torch_archive(path)
    rng = os.path.join(folder, RNG_FILE if world_size <= 1 else f"rng_state_{process_index}.pth")
    if os.path.isfile(rng):
        _check_torch_archive(rng)
    else:
        warnings.warn(
            f"checkpoint {os.path.abspath(folder)} has no {os.path.basename(rng)}: training resumes, but sampling "
            "after the resume will not repeat what the uninterrupted run would have drawn",
            CheckpointWarning,
            stacklevel=2,
        )


def save_failure(err: OSError, target, run_dir: str, step: int, save_strategy: str) -> OSError:
    """The ``OSError`` of a failed final save (a full disk, say), also saying where the last checkpoint is."""
    last = previous_checkpoint(os.path.join(run_dir, f"checkpoint-{step + 1}"))
    where = (
        f"the last checkpoint is {last} (step {last.rsplit('-', 1)[1]} of {step})"
        if last
        else f"there is no checkpoint in {run_dir} (save_strategy={save_strategy}): the trained weights are not on disk"
    )
    message = f"saving the model to {target or run_dir} failed: {err.strerror or err}; {where}"
    return OSError(err.errno, message) if err.errno is not None else OSError(message)


def resume_weights(model, folder: str, args, num_iterations: int) -> None:
    """A resume's weights, exactly: the files checked, the step checked against TRL's generation schedule
    (:func:`check_resume_step`), then :func:`load_checkpoint`. ``args``: the run's ``TrainingArguments``."""
    check_checkpoint_files(folder, is_peft_model(model), args.process_index, args.world_size)
    step = read_json(os.path.join(folder, TRAINER_STATE_FILE))["global_step"]
    check_resume_step(folder, step, args.gradient_accumulation_steps, args.steps_per_generation, num_iterations)
    load_checkpoint(model, folder)


@contextmanager
def restoring_optimizer(checkpoint: str):
    """Around ``Trainer._load_optimizer_and_scheduler``: any failure is a :class:`CheckpointError` naming both files."""
    try:
        yield
    except Exception as e:
        files = f"{os.path.join(checkpoint, 'optimizer.pt')} / {os.path.join(checkpoint, 'scheduler.pt')}"
        raise CheckpointError(
            f"checkpoint {checkpoint}: cannot restore the optimizer and schedule from {files}: {e}"
        ) from e


@contextmanager
def restoring_rng(checkpoint: str, world_size: int, process_index: int):
    """Around ``Trainer._load_rng_state``: any failure is a :class:`CheckpointError` naming this process's file."""
    try:
        yield
    except Exception as e:
        name = "rng_state.pth" if world_size <= 1 else f"rng_state_{process_index}.pth"
        raise unreadable(os.path.join(checkpoint, name), f"cannot be restored ({type(e).__name__}: {e})") from e


def write_pgpo_state(folder: str | os.PathLike, grad_norm_stats: dict, refill: dict | None = None) -> None:
    """``pgpo_state.json``: pgpo's running statistics and, with dynamic sampling, the refill stream's position."""
    state = {"grad_norm_stats": grad_norm_stats, **({"refill": refill} if refill is not None else {})}
    with open(os.path.join(folder, PGPO_STATE_FILE), "w") as f:
        json.dump(state, f)


def read_pgpo_state(folder: str | os.PathLike) -> dict | None:
    """What :func:`write_pgpo_state` saved with a checkpoint, or None with a :class:`CheckpointWarning` when the
    checkpoint has none (saved by an older pgpo, or killed before the file was written)."""
    path = os.path.join(folder, PGPO_STATE_FILE)
    if not os.path.exists(path):
        warnings.warn(
            f"checkpoint {os.path.abspath(folder)} has no {PGPO_STATE_FILE}: pgpo's running statistics "
            "(grad_norm/running_mean, grad_norm/running_var) restart from zero at this step",
            CheckpointWarning,
            stacklevel=2,
        )
        return None
    state = read_json(path)
    if not isinstance(state, dict):
        raise unreadable(path, f"holds a {type(state).__name__}, not an object")
    if not isinstance(state.get("grad_norm_stats"), dict):
        raise unreadable(path, "has no grad_norm_stats")
    return state


# ----------------------------------------------------------------------------------------------------- key conversion
def to_model_keys(model, state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Checkpoint tensors -> ``(tensors under the model's state_dict keys, checkpoint keys that match none)``.

    Applies the key conversion ``from_pretrained`` applies (``transformers.conversion_mapping.
    get_model_conversion_mapping``: renamings, then at most one converter per key, which may merge or split tensors),
    so a folder written by ``save_pretrained`` (which reverts that conversion) maps back onto the model exactly.
    """
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, dot_natural_key, rename_source_key

    transforms = get_model_conversion_mapping(model) if hasattr(model, "config") else []
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    by_pattern = {pattern: c for c in converters for pattern in c.source_patterns}
    expected = model.state_dict()
    prefix = getattr(model, "base_model_prefix", "") or None
    converted, pending, unmatched = {}, {}, []
    for key in sorted(state_dict, key=dot_natural_key):
        target, pattern = rename_source_key(key, renamings, converters, prefix, expected)
        if target not in expected and key in expected:  # as from_pretrained: a key already in the model's layout
            target, pattern = key, None
        if target not in expected:
            unmatched.append(key if target == key else f"{key} (as {target})")
        elif pattern is None:
            if target in converted:
                unmatched.append(f"{key} (a second tensor for {target})")
            converted[target] = state_dict[key]
        else:
            pending.setdefault(target, deepcopy(by_pattern[pattern])).add_tensor(target, key, pattern, state_dict[key])
    for first_target, converter in pending.items():
        for target, value in converter.convert(first_target, model=model, config=model.config).items():
            converted[target] = value[0] if isinstance(value, list) else value
    return converted, unmatched


def _restored_by_ties(model, missing: set[str], loaded: set[str]) -> set[str]:
    """Missing keys that share storage with a loaded key (tied weights, which ``save_pretrained`` writes once) or
    that the model never saves (``_keys_to_ignore_on_save``)."""
    storage = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if tensor.numel():  # empty tensors share the null pointer without being tied
            storage.setdefault((tensor.device, tensor.untyped_storage().data_ptr()), set()).add(name)
    restored = {k for names in storage.values() if names & loaded for k in names & missing}
    ignored = set(getattr(model, "_keys_to_ignore_on_save", None) or ())
    return restored | (missing & ignored)


def load_model_weights(model, folder: str | os.PathLike) -> None:
    """Load a full-model checkpoint into ``model`` in place (parameters keep their identity, ``requires_grad`` and
    ties), or raise :class:`CheckpointError` without touching the model when any key is missing, unexpected or of
    another shape."""
    files = weight_files(folder)
    if not files:
        raise unreadable(os.path.join(folder, SAFE_WEIGHTS_FILE), "missing: the checkpoint has no model weights")
    raw = {}
    for path in files:
        raw.update(read_tensors(path))
    converted, unexpected = to_model_keys(model, raw)
    del raw
    expected = model.state_dict()
    missing = set(expected) - set(converted)
    missing -= _restored_by_ties(model, missing, set(converted))
    mismatched = [
        f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}"
        for k, v in converted.items()
        if tuple(v.shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        raise _key_error(folder, "weights file", missing, unexpected, mismatched)
    result = model.load_state_dict(converted, strict=False)
    left = set(result.missing_keys) - _restored_by_ties(model, set(result.missing_keys), set(converted))
    if left or result.unexpected_keys:  # cannot happen after the checks above; never pass silently if it does
        raise _key_error(folder, "weights file", left, result.unexpected_keys)


def load_adapter_weights(model, folder: str | os.PathLike) -> None:
    """Load the active PEFT adapter of ``model`` (a ``PeftModel``) from a checkpoint folder with PEFT's own loader
    (it applies transformers' key conversion to adapter keys), or raise :class:`CheckpointError` when any adapter key
    is missing or unexpected."""
    folder = os.fspath(folder)
    path = adapter_file(folder)
    if path is None:
        raise unreadable(os.path.join(folder, ADAPTER_FILES[0]), "missing: the checkpoint has no adapter weights")
    nested = [
        d
        for d in sorted(os.listdir(folder))
        if os.path.isdir(os.path.join(folder, d)) and adapter_file(os.path.join(folder, d))
    ]
    if nested:
        raise CheckpointError(
            f"checkpoint {os.path.abspath(folder)} holds several adapters ({', '.join(nested)}); pgpo resumes runs "
            "that train one adapter"
        )
    read_tensors(path)  # a readable file, named in the error if not, before PEFT touches the model
    adapter = model.active_adapters[0] if hasattr(model, "active_adapters") else model.active_adapter
    try:
        result = model.load_adapter(folder, adapter, is_trainable=True)
    except (RuntimeError, ValueError, KeyError) as e:  # e.g. size mismatch (another LoRA rank)
        raise CheckpointError(f"checkpoint {os.path.abspath(folder)}: the adapter cannot be loaded: {e}") from e
    if result.missing_keys or result.unexpected_keys:
        raise _key_error(folder, "adapter", result.missing_keys, result.unexpected_keys)


def is_peft_model(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def load_checkpoint(model, folder: str | os.PathLike) -> None:
    """Restore the trained weights of a checkpoint folder into ``model`` exactly: the active adapter of a PEFT model,
    else every tensor of the model. Raises :class:`CheckpointError` on any missing, unexpected or unreadable part."""
    if is_peft_model(model):
        load_adapter_weights(model, folder)
    else:
        load_model_weights(model, folder)


# ----------------------------------------------------------------------------------------------------- schedule
def generation_period(gradient_accumulation_steps: int, steps_per_generation: int, num_iterations: int = 1) -> int:
    """Optimizer steps after which TRL's generation schedule and the optimizer steps line up again.

    TRL generates every ``steps_per_generation * num_iterations`` micro-steps; an optimizer step is
    ``gradient_accumulation_steps`` micro-steps; both meet every ``lcm`` micro-steps.
    """
    micro = steps_per_generation * num_iterations
    return micro // math.gcd(micro, gradient_accumulation_steps)


def _misaligned(steps: int, gradient_accumulation_steps, steps_per_generation, num_iterations) -> tuple[int, str]:
    """``(period, "")`` when ``steps`` optimizer steps end between generation batches, else ``(period, why not)``."""
    period = generation_period(gradient_accumulation_steps, steps_per_generation, num_iterations)
    why = (
        f"with steps_per_generation={steps_per_generation}, num_iterations={num_iterations} and "
        f"gradient_accumulation_steps={gradient_accumulation_steps} one generation batch spans {period} optimizer "
        "step(s), and TRL keeps its completions in memory only"
    )
    return period, why if steps % period else ""


def check_save_schedule(
    save_steps: int, gradient_accumulation_steps: int, steps_per_generation: int, num_iterations: int = 1
) -> None:
    """Refuse (``ValueError``) a ``save_steps`` that would put checkpoints inside a generation batch: such a checkpoint
    could not be resumed on the uninterrupted run's schedule."""
    period, why = _misaligned(save_steps, gradient_accumulation_steps, steps_per_generation, num_iterations)
    if why:
        raise ValueError(
            f"save_steps={save_steps} is not a multiple of {period}: {why}, so a checkpoint taken inside one would "
            f"resume on a shifted schedule. Use save_steps={math.ceil(save_steps / period) * period} (or any multiple "
            "of it), or set steps_per_generation to gradient_accumulation_steps."
        )


def check_resume_step(
    folder: str | os.PathLike,
    global_step: int,
    gradient_accumulation_steps: int,
    steps_per_generation: int,
    num_iterations: int = 1,
) -> None:
    """Refuse (:class:`CheckpointError`) to resume a checkpoint taken inside a generation batch."""
    period, why = _misaligned(global_step, gradient_accumulation_steps, steps_per_generation, num_iterations)
    if why:
        raise CheckpointError(
            f"checkpoint {os.path.abspath(folder)} was saved at step {global_step}, inside a generation batch: {why}, "
            f"so resuming here would shift the schedule. Resume from a checkpoint whose step is a multiple of {period}."
        )
