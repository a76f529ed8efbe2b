"""A run folder belongs to one run.

``pgpo train`` (and :class:`pgpo.trainer.PGPOTrainer`) writes checkpoints and the final model into ``output_dir``.
Without a rule a second run into the same folder overwrites the first one's model, mixes two runs' checkpoints (a
later "resume from the latest" would pick the other run's) and, with ``save_total_limit``, transformers' rotation
deletes checkpoint folders it did not write. The rule:

* pgpo marks every folder it trains into with :data:`MARKER` (``pgpo_run.json``): the model, the reward functions and
  the settings that make the run what it is (:func:`run_settings`);
* a fresh run (no resume) goes into a new or empty folder. A folder with anything else in it is refused, naming what is
  there, unless ``overwrite_output_dir=True`` (transformers' old name for it). Overwriting a folder of an earlier pgpo
  run removes that run's checkpoint folders (pgpo wrote them) so that the folder holds one run; the files of a folder
  pgpo did not create are never deleted;
* a resume goes into a folder of the same run: any difference of model, rewards or settings is refused, naming each
  one (old -> new) and the two ways out;
* ``save_total_limit`` would delete checkpoint folders pgpo did not write (pgpo marks each checkpoint it writes with the
  same marker): refused.

:func:`check_run_folder` decides (reads only); :func:`claim_run_folder` decides, then acts (writes the marker, removes
the earlier run's checkpoints). ``pgpo train`` checks before it loads anything, the trainer claims when training starts.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgpo.checkpoint import PGPO_STATE_FILE

MARKER = "pgpo_run.json"
CHECKPOINT_PREFIX = "checkpoint-"
# Fields of TRL's GRPOConfig / transformers' TrainingArguments that make a run what it is (besides every field of
# PGPOConfig's own and every key of a preset). Resuming under another value of one of them mixes two runs.
RUN_DEFINING = (
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "generation_batch_size",
    "steps_per_generation",
    "num_iterations",
    "max_prompt_length",
    "seed",
    "optim",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "max_grad_norm",
    "warmup_steps",
    "warmup_ratio",
    "top_k",
    "min_p",
    "repetition_penalty",
    "mask_truncated_completions",
    "delta",
    "scale_rewards",
    "loss_type",
    "importance_sampling_level",
)
# PGPOConfig's own fields that do not change what is trained (memory, logging, this rule itself).
NOT_RUN_DEFINING = ("overwrite_output_dir", "dependency_chunk_size", "log_visual_dependency")


def run_settings(args) -> dict[str, Any]:
    """The settings of ``args`` (a :class:`pgpo.config.PGPOConfig`) that make a run what it is, JSON-ready."""
    from trl import GRPOConfig

    from pgpo.config import ALGORITHM_PRESETS

    trl_fields = {f.name for f in dataclasses.fields(GRPOConfig)}
    own = [f.name for f in dataclasses.fields(args) if f.name not in trl_fields and f.name not in NOT_RUN_DEFINING]
    preset_keys = {key for preset in ALGORITHM_PRESETS.values() for key in preset}
    names = sorted(set(own) | preset_keys | set(RUN_DEFINING))
    values = args.to_dict()
    return {name: values[name] for name in names if name in values}


def model_name(model) -> str:
    """What a run's model is called: the path or hub id given, else the name it was loaded from, else its class."""
    if isinstance(model, str | os.PathLike):
        return str(model)
    config = getattr(model, "config", None)
    return getattr(config, "_name_or_path", "") or type(model).__name__


@dataclass
class Run:
    """What a run folder holds: the model, the reward functions and the settings (:func:`run_settings`)."""

    model: str
    rewards: list[str] | None  # None: not known (not compared)
    settings: dict[str, Any]
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created: str = field(default_factory=lambda: datetime.datetime.now().isoformat(timespec="seconds"))

    def differences(self, earlier: Run) -> list[str]:
        """``key: earlier -> this`` for every difference (keys only one of the two knows are not compared)."""
        out = []
        if _same_model(earlier.model, self.model) is False:
            out.append(f"model: {earlier.model} -> {self.model}")
        if None not in (earlier.rewards, self.rewards) and earlier.rewards != self.rewards:
            out.append(f"reward functions: {earlier.rewards} -> {self.rewards}")
        for key in sorted(set(earlier.settings) & set(self.settings)):
            if _normal(earlier.settings[key]) != _normal(self.settings[key]):
                out.append(f"{key}: {earlier.settings[key]!r} -> {self.settings[key]!r}")
        return out


def _normal(value):
    return json.loads(json.dumps(value, default=str))  # as the marker stores it


def _same_model(a: str, b: str) -> bool:
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return a == b


def read_run(folder: str | os.PathLike) -> Run | None:
    """The run recorded in ``folder``'s marker; ``None`` when there is none (or it is unreadable)."""
    try:
        data = json.loads((Path(folder) / MARKER).read_text(encoding="utf-8"))
        return Run(**{f.name: data[f.name] for f in dataclasses.fields(Run)})
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _checkpoints(folder: Path) -> list[Path]:
    found = [
        p for p in folder.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and p.name[len(CHECKPOINT_PREFIX) :].isdigit()
    ]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def _written_by_pgpo(checkpoint: Path) -> bool:
    """pgpo marks its checkpoints (:func:`mark_checkpoint`); older ones carry its running statistics."""
    return (checkpoint / MARKER).is_file() or (checkpoint / PGPO_STATE_FILE).is_file()


def mark_checkpoint(folder: str | os.PathLike, run: Run) -> None:
    """Mark a checkpoint folder as written by pgpo for ``run`` (after transformers wrote it)."""
    _write_json(Path(folder) / MARKER, dataclasses.asdict(run))


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _listing(paths: list[Path], limit: int = 5) -> str:
    names = sorted(p.name for p in paths)
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


@dataclass
class Plan:
    """What :func:`claim_run_folder` will do in a folder that passed :func:`check_run_folder`."""

    folder: Path
    run: Run
    remove: list[Path]  # the earlier pgpo run's checkpoint folders (overwrite_output_dir)


def check_run_folder(folder, run: Run, resume, overwrite: bool, save_total_limit: int | None = None) -> Plan:
    """Is ``folder`` a place for ``run``? ``resume``: the run resumes a checkpoint (truthy) or starts fresh.

    Raises ``ValueError`` naming what is in the folder and the ways out; reads only."""
    folder = Path(folder)
    entries = [p for p in folder.iterdir() if p.name != MARKER] if folder.is_dir() else []
    earlier = read_run(folder)
    remove: list[Path] = []
    if resume:
        if earlier is not None:
            diff = run.differences(earlier)
            if diff:
                raise ValueError(
                    f"output_dir {folder} holds the run started {earlier.created}; resuming it with other settings "
                    "would mix two runs in one folder. Differences (that run -> this one):\n  "
                    + "\n  ".join(diff)
                    + "\nEither resume with that run's settings, or start this one in a new --output_dir "
                    "(from the checkpoint: --resume_from_checkpoint PATH --output_dir NEW)."
                )
            run.run_id, run.created = earlier.run_id, earlier.created  # the same run, continued
    elif entries:
        checkpoints = _checkpoints(folder)
        if not overwrite:
            if earlier is not None:
                what = f"the pgpo run started {earlier.created} (model {earlier.model})"
                if checkpoints:
                    what += f", with {len(checkpoints)} checkpoint(s) up to {checkpoints[-1].name}"
                ways = (
                    "resume it (--resume_from_checkpoint true, or a checkpoint's path), start again in it with "
                    "--overwrite_output_dir (its checkpoint folders are removed so the folder holds one run), or "
                    "choose another --output_dir"
                )
            else:
                what = f"files pgpo did not write: {_listing(entries)}"
                ways = (
                    "choose a new or empty --output_dir, or pass --overwrite_output_dir to write into it anyway "
                    "(pgpo overwrites files of the same names, such as config.json and model.safetensors, and deletes "
                    "none of the others)"
                )
            raise ValueError(f"output_dir {folder} is not empty: it holds {what}. A new run would mix with it: {ways}.")
        if earlier is not None:
            remove = [c for c in checkpoints if _written_by_pgpo(c)]
    if save_total_limit:
        foreign = [c for c in _checkpoints(folder) if not _written_by_pgpo(c)]
        if foreign:
            raise ValueError(
                f"output_dir {folder} holds checkpoint folders pgpo did not write ({_listing(foreign)}); with "
                f"save_total_limit={save_total_limit} transformers' checkpoint rotation would delete them. Move them "
                "away, choose another --output_dir, or leave save_total_limit unset."
            )
    return Plan(folder, run, remove)


def claim_run_folder(folder, run: Run, resume, overwrite: bool, save_total_limit: int | None = None) -> Run:
    """:func:`check_run_folder`, then make the folder ``run``'s: remove an overwritten pgpo run's checkpoints, write
    the marker. Returns the run as recorded (a resumed run keeps its first id and start time)."""
    plan = check_run_folder(folder, run, resume, overwrite, save_total_limit)
    plan.folder.mkdir(parents=True, exist_ok=True)
    for checkpoint in plan.remove:
        shutil.rmtree(checkpoint)
    _write_json(plan.folder / MARKER, dataclasses.asdict(plan.run))
    return plan.run
