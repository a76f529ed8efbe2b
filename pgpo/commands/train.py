"""``pgpo train --config FILE.yaml [--key value ...]``: TRL-style training with PGPO and its baselines.

Works unchanged under ``accelerate launch`` (DDP / DeepSpeed / FSDP configs), with TRL's vLLM options
(``--use_vllm --vllm_mode colocate|server``), PEFT/LoRA through ``ModelConfig``'s ``--use_peft --lora_r ...``
(or a ``peft:`` section in the YAML), and ``--resume_from_checkpoint``. ``--algorithm grpo|dapo|dr_grpo|vppo|pgpo``
applies a preset (:data:`pgpo.config.ALGORITHM_PRESETS`) before explicit options, so any field can still be overridden.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pgpo.config import ALGORITHM_PRESETS, ALGORITHMS, PRESET_REWARDS, REMOVED_OPTIONS, PGPOConfig
from pgpo.models.load import load_pgpo_model
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
        raise SystemExit(f"pgpo train: error: --algorithm must be one of {', '.join(ALGORITHMS)}, got {algorithm!r}")
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


def _option_names(parser) -> set[str]:
    """Every option name of ``pgpo train`` (the fields of its three dataclasses)."""
    return {action.dest for action in parser._actions} | {"config", "env", "peft"}


def _refuse_unknown(names, known: set[str], where: str) -> None:
    """``SystemExit`` for a removed option (naming what replaced it) or an unknown one (with a close match)."""
    import difflib

    for name in names:
        if name in REMOVED_OPTIONS:
            raise SystemExit(f"pgpo train: error: {name} ({where}) is {REMOVED_OPTIONS[name]}")
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise SystemExit(f"pgpo train: error: unknown option {name} ({where}){hint}")


def parse_args(argv: list[str], parser=None):
    """``pgpo train ARGV`` -> ``(script_args, training_args, model_args, algorithm)``.

    ``--config FILE`` and ``--algorithm NAME`` are read by a parser first (any spelling argparse accepts: ``=`` or a
    separate value); the YAML's ``peft:`` section is flattened; the algorithm's preset (CLI before YAML) goes in
    before the user's own options, so that those still win. Removed and unknown options are refused by name; a value
    a config refuses exits with ``pgpo train: error: ...`` (status 2)."""
    import argparse

    import yaml

    parser = parser or make_parser()
    pre = argparse.ArgumentParser(prog="pgpo train", add_help=False, allow_abbrev=False)
    pre.add_argument("--config")
    pre.add_argument("--algorithm")
    first, rest = pre.parse_known_args(argv)
    known = _option_names(parser)
    flags = [a[2:].split("=")[0].replace("-", "_") for a in rest if a.startswith("--")]
    _refuse_unknown([f for f in flags if not (f.startswith("no_") and f[3:] in known)], known, "on the command line")
    cfg, config_args = {}, []
    if first.config is not None:
        path = _flatten_peft(first.config)
        with open(path) as f:
            cfg = yaml.safe_load(f) or {}
        if not isinstance(cfg, dict):
            raise SystemExit(f"pgpo train: error: {first.config} must hold a YAML mapping of options")
        _refuse_unknown(cfg, known, f"in {first.config}")
        config_args = ["--config", path]
    algorithm = first.algorithm or cfg.get("algorithm")
    preset = []
    if algorithm is not None:
        preset = preset_arguments(algorithm, set(cfg) | set(flags)) + ["--algorithm", algorithm]
    try:
        script_args, training_args, model_args = parser.parse_args_and_config(preset + config_args + rest)
    except ValueError as err:
        raise SystemExit(f"pgpo train: error: {err}") from None
    resume = training_args.resume_from_checkpoint  # true / latest: the newest checkpoint in output_dir (transformers)
    if isinstance(resume, str) and resume.lower() in ("true", "latest", "false", "none", ""):
        training_args.resume_from_checkpoint = True if resume.lower() in ("true", "latest") else None
    return script_args, training_args, model_args, algorithm


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


def _torch_dtype(name):
    """``--dtype`` (ModelConfig: auto, bfloat16, float16, float32 or None) as a torch dtype for pgpo's own models."""
    import torch

    return None if name in (None, "auto") else getattr(torch, name)


def peft_config(model_args):
    """TRL's LoRA config of ``model_args``, with one ``--lora_target_modules`` name kept a name: TRL turns a one-item
    list into a string (for ``all-linear``), which PEFT reads as a regex the whole module path must match, so
    ``--lora_target_modules q_proj`` found no module. A string with regex characters stays a regex."""
    import re

    from trl import get_peft_config

    config = get_peft_config(model_args)
    targets = getattr(config, "target_modules", None)
    if isinstance(targets, str) and targets != "all-linear" and re.fullmatch(r"[\w.]+", targets):
        config.target_modules = {targets}
    return config


def check_output_folder(script_args, training_args, model_args) -> None:
    """The run-folder rule (:mod:`pgpo.run_folder`) before anything is loaded (the trainer applies it again, and
    writes the folder's marker, when training starts)."""
    from pgpo.run_folder import Run, check_run_folder, run_settings
    from pgpo.validation import check_output_dir

    if training_args.process_index != 0:
        return
    try:
        check_output_dir(training_args.output_dir)
        run = Run(model_args.model_name_or_path, None, run_settings(training_args))
        check_run_folder(
            training_args.output_dir,
            run,
            resume=training_args.resume_from_checkpoint,
            overwrite=training_args.overwrite_output_dir,
            save_total_limit=training_args.save_total_limit,
        )
    except ValueError as err:
        raise SystemExit(f"pgpo train: error: {err}") from None


def build_trainer(script_args, training_args, model_args):
    """Model, processor, data, rewards and PEFT, then :class:`pgpo.trainer.PGPOTrainer`."""
    from pgpo.trainer import PGPOTrainer

    if not model_args.model_name_or_path:
        raise SystemExit("pgpo train: --model_name_or_path is required (a hub id or a local folder)")
    model, processing_class = model_args.model_name_or_path, None
    try:  # pgpo's own models (tiny-qwen, demo-vlm, a demo VLM folder) are not transformers classes: built here
        own = load_pgpo_model(model, dtype=_torch_dtype(model_args.dtype))
    except ValueError as err:
        raise SystemExit(f"pgpo train: {err} (--model_name_or_path {model})") from None
    if own is not None:
        model, processing_class = own
    else:  # TRL loads it from the path or hub id, with ModelConfig's options
        model_init_kwargs = dict(
            revision=model_args.model_revision,
            trust_remote_code=training_args.trust_remote_code,
            attn_implementation=model_args.attn_implementation,
            dtype=model_args.dtype,
        )
        model_init_kwargs = {k: v for k, v in model_init_kwargs.items() if v is not None}
        training_args.model_init_kwargs = {**model_init_kwargs, **(training_args.model_init_kwargs or {})}
    dataset = load_training_data(script_args, seed=training_args.seed)
    return PGPOTrainer(
        model=model,
        reward_funcs=reward_functions(script_args.reward_funcs),
        args=training_args,
        train_dataset=dataset,
        processing_class=processing_class,
        peft_config=peft_config(model_args),
    )


def main(argv: list[str]) -> int:
    parser = make_parser()
    if any(a in ("-h", "--help") for a in argv):
        parser.parse_args_and_config(["--help"])
        return 0
    script_args, training_args, model_args, algorithm = parse_args(argv, parser)
    if training_args.process_index == 0:
        print_resolved(algorithm, script_args, training_args)
    check_output_folder(script_args, training_args, model_args)
    trainer = build_trainer(script_args, training_args, model_args)
    dropout = f" (the policy applies dropout in {len(trainer.dropout_sites)} modules)" if trainer.dropout_sites else ""
    trainer.accelerator.print(f"  log p_image for the dependency from: {trainer.dependency_source}{dropout}")
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    trainer.accelerator.print(f"pgpo train: model saved to {training_args.output_dir}")
    if hasattr(trainer, "end"):
        trainer.end()
    return 0
