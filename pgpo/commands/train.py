"""``pgpo train --config FILE.yaml [--key value ...]``: TRL-style training with PGPO and its baselines.

Works unchanged under ``accelerate launch`` (DDP / DeepSpeed / FSDP configs), with TRL's vLLM options
(``--use_vllm --vllm_mode colocate|server``), PEFT/LoRA through ``ModelConfig``'s ``--use_peft --lora_r ...``
(or a ``peft:`` section in the YAML), and ``--resume_from_checkpoint``. ``--algorithm grpo|dapo|dr_grpo|vppo|pgpo``
applies a preset (:data:`pgpo.config.ALGORITHM_PRESETS`) before explicit options, so any field can still be overridden.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from pgpo.config import ALGORITHM_PRESETS, ALGORITHMS, PRESET_REWARDS, PGPOConfig
from pgpo.rewards import reward_functions


@dataclass
class PGPOScriptArguments:
    """Data, rewards and algorithm of a ``pgpo train`` run."""

    dataset: str = field(
        default="tasks",
        metadata={
            "help": "Training data: 'tasks' (pgpo's procedural visual tasks), 'easy_vqa', a folder saved with "
            "datasets' save_to_disk, a .jsonl file (with an image folder next to it), or a parquet/ViRL39K file."
        },
    )
    dataset_size: int = field(default=512, metadata={"help": "Samples drawn for 'tasks' / 'easy_vqa'."})
    dataset_split: str = field(default="train", metadata={"help": "Split to read from a saved DatasetDict."})
    prompt_template: str = field(
        default="think",
        metadata={
            "help": "For files: 'think' (the paper's think-then-\\boxed{} template) or 'plain' (the question as is)."
        },
    )
    reward_funcs: list[str] = field(
        default_factory=lambda: ["accuracy"],
        metadata={
            "help": "Reward functions: paper (the paper's 0.9 * mathruler accuracy + 0.1 * format), paper_accuracy, "
            "paper_format, accuracy (lenient, math-verify), format (lenient think + boxed), tasks (pgpo.tasks answers), "
            "or module.function."
        },
    )
    algorithm: str | None = field(
        default=None,
        metadata={"help": f"Preset applied before explicit options: one of {', '.join(ALGORITHMS)}."},
    )


def load_training_data(script_args: PGPOScriptArguments, seed: int):
    """The training dataset in TRL's conversational multimodal format (prompt, image(s), answer)."""
    source = script_args.dataset
    if source == "tasks":
        from pgpo.tasks import make_split, to_hf_dataset

        return to_hf_dataset(make_split("train", script_args.dataset_size, seed=seed))
    if source == "easy_vqa":
        from pgpo.tasks import load_easy_vqa, to_hf_dataset

        return to_hf_dataset(load_easy_vqa("train", script_args.dataset_size, seed=seed))
    from pgpo import data

    template = data.PAPER_PROMPT_TEMPLATE if script_args.prompt_template == "think" else "{question}"
    return data.load_rlvr_dataset(source, split=script_args.dataset_split, prompt_template=template)


PEFT_KEYS = {"r": "lora_r", "alpha": "lora_alpha", "dropout": "lora_dropout", "target_modules": "lora_target_modules"}


def _flatten_peft(config_path: str) -> str:
    """A YAML ``peft:`` section (r, alpha, dropout, target_modules, or any ``lora_*`` key) -> TRL ModelConfig keys."""
    import tempfile

    import yaml

    with open(config_path) as f:
        cfg = yaml.safe_load(f) or {}
    peft = cfg.pop("peft", None)
    if peft is None:
        return config_path
    if not isinstance(peft, dict):
        raise SystemExit(f"pgpo train: `peft:` in {config_path} must be a mapping, got {type(peft).__name__}")
    cfg["use_peft"] = True
    for key, value in peft.items():
        cfg[PEFT_KEYS.get(key, key if key.startswith(("lora_", "use_")) else f"lora_{key}")] = value
    out = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    yaml.safe_dump(cfg, out)
    out.close()
    return out.name


def _flag_values(value) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list | tuple) else [str(value)]


def preset_arguments(algorithm: str, given: set[str]) -> list[str]:
    """The preset of ``algorithm`` as command-line options, leaving out every key in ``given`` (the user's own,
    from flags or the YAML). The preset's reward functions come with its ``reward_weights``: a user who names their
    own reward functions does not get the preset's weights."""
    if algorithm not in ALGORITHM_PRESETS:
        raise SystemExit(f"pgpo train: --algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    preset = dict(ALGORITHM_PRESETS[algorithm])
    if "reward_funcs" in given:
        preset.pop("reward_weights", None)
    else:
        preset["reward_funcs"] = PRESET_REWARDS[algorithm]
    out = []
    for key, value in preset.items():
        if key not in given:
            out += [f"--{key}", *_flag_values(value)]
    return out


def _preprocess(argv: list[str]) -> tuple[list[str], str | None]:
    """Flatten a ``peft:`` section and turn ``--algorithm X`` (CLI or YAML) into preset options placed before the
    user's own (so explicit options still win). Returns the arguments and the algorithm."""
    import yaml

    argv = list(argv)
    algorithm = None
    cfg = {}
    if "--config" in argv:
        i = argv.index("--config") + 1
        argv[i] = _flatten_peft(argv[i])
        with open(argv[i]) as f:
            cfg = yaml.safe_load(f) or {}
        algorithm = cfg.get("algorithm")
    if "--algorithm" in argv:
        algorithm = argv[argv.index("--algorithm") + 1]
    if algorithm is None:
        return argv, None
    given = set(cfg) | {a[2:].split("=")[0].replace("-", "_") for a in argv if a.startswith("--")}
    return preset_arguments(algorithm, given) + argv, algorithm


def print_resolved(algorithm: str | None, script_args, training_args, out=print) -> None:
    """What the run will do, at start: the algorithm's preset keys with their resolved values (a user must see what
    ``--algorithm pgpo`` set) and the rewards."""
    keys = list(ALGORITHM_PRESETS.get(algorithm, {})) or ["advantage_shaping", "loss_type", "dynamic_sampling"]
    lines = [f"pgpo train: algorithm={algorithm or '(none: PGPOConfig defaults + your options)'}"]
    lines += [f"  {k} = {getattr(training_args, k)!r}" for k in keys]
    lines.append(f"  reward_funcs = {script_args.reward_funcs!r}, reward_weights = {training_args.reward_weights!r}")
    out("\n".join(lines))


def make_parser():
    from trl import ModelConfig, TrlParser

    return TrlParser((PGPOScriptArguments, PGPOConfig, ModelConfig), prog="pgpo train")


def _is_pgpo_vlm(path: str) -> bool:
    import json

    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        return False
    with open(config) as f:
        return json.load(f).get("model_type") == "pgpo_vlm"


def missing_model_folder(name: str) -> str | None:
    """The clear error for a model argument that is meant as a local folder and exists nowhere (else ``None``).

    Meant as a folder: it starts with ``.``, ``/`` or ``~``, or has more than one path separator (a hub id has one:
    ``org/name``). A name with one separator (``runs/tiny-qwen`` or ``Qwen/Qwen2.5-VL-3B-Instruct``) is a folder that
    exists nowhere when it is not a local folder, not a hub repo in the local hub cache, and either the folder before
    the separator exists here or the hub is offline (``HF_HUB_OFFLINE``). Anything else is left to the hub.
    """
    path = os.path.expanduser(name)
    if os.path.exists(path):
        return None if os.path.isdir(path) else f"model path is a file, not a model folder: {path}"
    found = f"model folder not found: {os.path.abspath(path)} (--model_name_or_path {name})"
    separators = name.count(os.sep) + (name.count(os.altsep) if os.altsep else 0)
    if name.startswith((".", "/", "~")) or separators > 1:
        return found
    if separators == 1 and not _cached(name):
        if os.path.isdir(os.path.dirname(path)):
            return found
        if _hub_offline():
            return f"{found}; nor is it a hub repo in the local cache (the hub is offline: HF_HUB_OFFLINE)"
    return None


def _cached(repo_id: str) -> bool:
    """Whether the local hub cache holds a config of ``repo_id`` (no network)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # not a valid repo id
        return False


def _hub_offline() -> bool:
    from huggingface_hub import constants

    flags = (os.environ.get(k, "").upper() for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return bool(constants.HF_HUB_OFFLINE) or any(f in ("1", "ON", "YES", "TRUE") for f in flags)


def build_trainer(script_args, training_args, model_args):
    """Model, processor, data, rewards and PEFT, then :class:`pgpo.trainer.PGPOTrainer`."""
    from trl import get_peft_config

    from pgpo.trainer import PGPOTrainer

    if not model_args.model_name_or_path:
        raise SystemExit("pgpo train: --model_name_or_path is required (a hub id or a local folder)")
    missing = missing_model_folder(model_args.model_name_or_path)
    if missing:
        raise SystemExit(f"pgpo train: {missing}")
    model_init_kwargs = dict(
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype,
    )
    model_init_kwargs = {k: v for k, v in model_init_kwargs.items() if v is not None}
    training_args.model_init_kwargs = {**model_init_kwargs, **(training_args.model_init_kwargs or {})}
    model = model_args.model_name_or_path
    processing_class = None
    if _is_pgpo_vlm(model):  # pgpo's own demo VLM is not a transformers class: load it explicitly
        from pgpo.vlm import load_pgpo_vlm

        model, processing_class = load_pgpo_vlm(model)
    dataset = load_training_data(script_args, seed=training_args.seed)
    return PGPOTrainer(
        model=model,
        reward_funcs=reward_functions(script_args.reward_funcs),
        args=training_args,
        train_dataset=dataset,
        processing_class=processing_class,
        peft_config=get_peft_config(model_args),
    )


def main(argv: list[str]) -> int:
    parser = make_parser()
    if any(a in ("-h", "--help") for a in argv):
        parser.parse_args_and_config(["--help"])
        return 0
    argv, algorithm = _preprocess(argv)
    script_args, training_args, model_args = parser.parse_args_and_config(argv)
    if training_args.process_index == 0:
        print_resolved(algorithm, script_args, training_args)
    trainer = build_trainer(script_args, training_args, model_args)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    trainer.accelerator.print(f"pgpo train: model saved to {training_args.output_dir}")
    if hasattr(trainer, "end"):
        trainer.end()
    return 0
