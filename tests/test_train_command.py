"""``pgpo train`` as a new user runs it: every preset on every model name it accepts, options read by the parser (any
spelling argparse takes), removed options named with what replaced them, and run folders that belong to one run
(:mod:`pgpo.run_folder`). ``docs/reliability.md`` lists each case with its test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pgpo.commands.train import main, parse_args
from pgpo.config import ALGORITHMS, REMOVED_OPTIONS

ROOT = Path(__file__).resolve().parents[1]
WORD_LM = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}


def moving_reward(completions, **kwargs):
    """Differs inside every group of two completions, so dynamic sampling keeps every group and advantages move."""
    return [float(i % 2) for i in range(len(completions))]


@pytest.fixture(scope="module")
def demo_vlm_folder(tmp_path_factory):
    """pgpo's demo VLM (the word-level LM, made small), saved as ``pgpo demo`` saves it."""
    from pgpo.vlm import load_pgpo_vlm

    folder = tmp_path_factory.mktemp("demo-vlm")
    model, processor = load_pgpo_vlm(language="words", lm_shape=WORD_LM, vision_blocks=4)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def small(out, *extra) -> list[str]:
    """One step of 2 prompts x 2 completions of 4 tokens: the preset's recipe, the sizes of a test."""
    return [
        "--output_dir",
        str(out),
        "--use_cpu",
        "true",
        "--max_steps",
        "1",
        "--per_device_train_batch_size",
        "2",
        "--num_generations",
        "2",
        "--max_completion_length",
        "4",
        "--dataset_size",
        "4",
        "--reward_funcs",
        "test_train_command.moving_reward",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        "--save_strategy",
        "no",
        *extra,
    ]


def weights(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model.safetensors"))


# ----------------------------------------------------------------------------------------- every preset, every model


@pytest.fixture(scope="module")
def tiny_qwen_folder(tmp_path_factory):
    """A transformers model folder (``pgpo make-tiny``): TRL loads it, and its reference model, from the path."""
    from pgpo.models.tiny_qwen import save_tiny_qwen25vl

    return save_tiny_qwen25vl(tmp_path_factory.mktemp("tiny-qwen"))


# A transformers folder differs from the in-memory tiny-qwen only in how TRL loads the policy and the reference model:
# the presets with a reference (grpo, pgpo_grpo) and the paper's pgpo cover it.
MATRIX = [(model, a) for model in ("tiny-qwen", "demo-vlm-folder") for a in ALGORITHMS]
MATRIX += [("tiny-qwen-folder", a) for a in ("grpo", "pgpo_grpo", "pgpo")]


@pytest.mark.parametrize(("model", "algorithm"), MATRIX)
def test_every_preset_trains_one_step_on_every_model(tmp_path, algorithm, model, request):
    """``grpo`` and ``pgpo_grpo`` (a reference model, beta 0.01) crashed at start on the demo VLM (TRL rebuilt the
    reference with transformers' auto classes: ``'PGPOVLMConfig' object has no attribute 'auto_map'``) and
    ``tiny-qwen``, a name ``pgpo eval`` and ``pgpo inspect`` take, ended in the hub's "couldn't connect"."""
    folders = {"demo-vlm-folder": "demo_vlm_folder", "tiny-qwen-folder": "tiny_qwen_folder"}
    name = str(request.getfixturevalue(folders[model])) if model in folders else model
    assert main(small(tmp_path / "out", "--model_name_or_path", name, "--algorithm", algorithm)) == 0
    saved = weights(tmp_path / "out")
    assert saved and all(torch.isfinite(t).all() for t in saved.values())
    run = json.loads((tmp_path / "out" / "pgpo_run.json").read_text())
    assert run["model"] == name and run["rewards"] == ["moving_reward"]


def test_the_demo_vlm_by_name_trains_with_a_reference_model(tmp_path):
    """``demo-vlm`` (built from the shipped parts, as ``pgpo eval --model demo-vlm``) under GRPO's reference KL."""
    assert main(small(tmp_path / "out", "--model_name_or_path", "demo-vlm", "--algorithm", "grpo")) == 0
    assert json.loads((tmp_path / "out" / "pgpo_run.json").read_text())["model"] == "demo-vlm"


def python_trainer(model, processor, out, **options):
    """``PGPOTrainer`` as a Python user builds it: a model instance, one reward function, 2 prompts."""
    from pgpo.config import PGPOConfig
    from pgpo.tasks import make_split, to_hf_dataset
    from pgpo.trainer import PGPOTrainer

    args = PGPOConfig(output_dir=str(out), use_cpu=True, per_device_train_batch_size=2, num_generations=2, **options)
    dataset = to_hf_dataset(make_split("train", 2, seed=0))
    return PGPOTrainer(
        model=model, reward_funcs=moving_reward, args=args, train_dataset=dataset, processing_class=processor
    )


def test_the_reference_model_is_a_copy_of_the_policy_as_passed(demo_vlm_folder, tmp_path):
    from pgpo.vlm import load_pgpo_vlm

    model, processor = load_pgpo_vlm(demo_vlm_folder)
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)  # changed after loading: the reference is this model, not the folder's
    trainer = python_trainer(model, processor, tmp_path, beta=0.01)
    assert trainer.ref_model is not None and trainer.ref_model is not trainer.model
    reference = dict(trainer.ref_model.named_parameters())
    for key, value in trainer.model.named_parameters():
        assert torch.equal(reference[key], value) and reference[key].data_ptr() != value.data_ptr()


# ----------------------------------------------------------------------------------------- options mean what they say


@pytest.mark.parametrize(
    "spelling", [["--algorithm", "dapo"], ["--algorithm=dapo"], ["--config=YAML"], ["--config", "YAML"]]
)
def test_algorithm_and_config_are_read_in_every_spelling(tmp_path, spelling):
    """``--algorithm=dapo`` trained PGPO's defaults without a word; ``--config=FILE`` was not read."""
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("algorithm: dapo\npgpo_tau: 0.3\n")
    argv = [a.replace("YAML", str(yaml_file)) for a in spelling]
    _, training_args, _, algorithm = parse_args(["--output_dir", str(tmp_path / "o"), "--use_cpu", "true", *argv])
    assert algorithm == "dapo"
    assert training_args.advantage_shaping == "none" and training_args.loss_type == "dapo"
    assert training_args.dynamic_sampling is True
    if "config" in spelling[0]:
        assert training_args.pgpo_tau == 0.3


def test_explicit_options_still_win_over_the_preset(tmp_path):
    _, training_args, _, _ = parse_args(
        ["--algorithm=dapo", "--learning_rate=3e-4", "--output_dir", str(tmp_path), "--use_cpu", "true"]
    )
    assert training_args.learning_rate == 3e-4 and training_args.loss_type == "dapo"


def test_algorithm_without_a_value_is_a_usage_error(tmp_path, capsys):
    """It was an ``IndexError``."""
    with pytest.raises(SystemExit) as exit_:
        parse_args(["--output_dir", str(tmp_path), "--algorithm"])
    assert exit_.value.code == 2
    assert "argument --algorithm: expected one argument" in capsys.readouterr().err


def test_an_unknown_algorithm_lists_the_presets(tmp_path):
    with pytest.raises(SystemExit, match=r"--algorithm must be one of grpo, dapo, .*got 'dappo'"):
        parse_args(["--output_dir", str(tmp_path), "--algorithm", "dappo"])


@pytest.mark.parametrize("where", ["cli", "yaml"])
@pytest.mark.parametrize("name", sorted(REMOVED_OPTIONS))
def test_a_removed_option_names_what_replaced_it(tmp_path, where, name):
    """They were refused with "not used by the HfArgumentParser" / "add them to the dataclass"."""
    argv = ["--output_dir", str(tmp_path)]
    if where == "cli":
        argv += [f"--{name}", "1"]
    else:
        (tmp_path / "c.yaml").write_text(f"{name}: 1\n")
        argv += ["--config", str(tmp_path / "c.yaml")]
    with pytest.raises(SystemExit) as exit_:
        parse_args(argv)
    message = str(exit_.value)
    assert message.startswith(f"pgpo train: error: {name} (") and "removed" in message
    replacement = {"pgpo_alpha": "pgpo_beta", "filter_zero_advantage": "dynamic_sampling", "pgpo_gate": "pgpo_tau"}
    assert replacement.get(name, "pgpo_tau" if "w_m" not in name else "Eq. 6") in message


@pytest.mark.parametrize("where", ["cli", "yaml"])
def test_an_unknown_option_is_named_with_a_close_match(tmp_path, where):
    argv = ["--output_dir", str(tmp_path)]
    if where == "cli":
        argv += ["--pgpo_tua", "0.3"]
    else:
        (tmp_path / "c.yaml").write_text("pgpo_tua: 0.3\n")
        argv += ["--config", str(tmp_path / "c.yaml")]
    with pytest.raises(SystemExit, match=r"unknown option pgpo_tua \(.*\); did you mean pgpo_tau\?"):
        parse_args(argv)


def test_a_value_the_config_refuses_is_an_error_line_not_a_traceback(tmp_path):
    with pytest.raises(SystemExit, match=r"^pgpo train: error: pgpo_tau"):
        parse_args(["--output_dir", str(tmp_path), "--use_cpu", "true", "--pgpo_tau", "nan"])


def test_resume_true_means_the_latest_checkpoint(tmp_path):
    for value, expected in [
        ("true", True),
        ("latest", True),
        ("false", None),
        ("ckpt/checkpoint-4", "ckpt/checkpoint-4"),
    ]:
        args = ["--output_dir", str(tmp_path), "--use_cpu", "true", "--resume_from_checkpoint", value]
        assert parse_args(args)[1].resume_from_checkpoint == expected


# ----------------------------------------------------------------------------------------- a run folder, one run


def test_a_folder_with_files_pgpo_did_not_write_is_refused_and_left_as_it_was(tmp_path):
    out = tmp_path / "theirs"
    (out / "checkpoint-1").mkdir(parents=True)
    files = {"README.md": "their notes", "config.json": "{}", "checkpoint-1/model.safetensors": "theirs"}
    for name, text in files.items():
        (out / name).write_text(text)
    with pytest.raises(SystemExit, match=r"output_dir .*theirs is not empty: it holds files pgpo did not write: "):
        main(small(out, "--model_name_or_path", "tiny-qwen"))
    # told to write into it, with a rotation that would delete their checkpoint: refused, naming it
    with pytest.raises(SystemExit, match=r"checkpoint folders pgpo did not write \(checkpoint-1\); with save_total"):
        main(
            small(out, "--model_name_or_path", "tiny-qwen", "--overwrite_output_dir", "true", "--save_total_limit", "1")
        )
    assert {name: (out / name).read_text() for name in files} == files
    # told, without rotation: pgpo writes its run and deletes nothing of theirs
    assert main(small(out, "--model_name_or_path", "tiny-qwen", "--overwrite_output_dir", "true")) == 0
    assert (out / "checkpoint-1" / "model.safetensors").read_text() == "theirs"
    assert (out / "pgpo_run.json").is_file() and (out / "model.safetensors").is_file()


def _two_checkpoints(out, *extra):
    return small(out, "--model_name_or_path", "tiny-qwen", "--max_steps", "2", "--save_strategy", "steps",
                 "--save_steps", "1", *extra)  # fmt: skip


def test_a_rerun_without_resume_into_an_earlier_run_is_refused_then_overwrite_starts_one_run(tmp_path):
    """The same command, rerun, started again from step 0 and left a folder that mixed two runs."""
    out = tmp_path / "run"
    assert main(_two_checkpoints(out, "--save_only_model", "true")) == 0
    first = json.loads((out / "pgpo_run.json").read_text())
    assert json.loads((out / "checkpoint-2" / "pgpo_run.json").read_text())["run_id"] == first["run_id"]
    with pytest.raises(SystemExit, match=r"holds the pgpo run started .* with 2 checkpoint\(s\) up to checkpoint-2"):
        main(_two_checkpoints(out))
    assert main(small(out, "--model_name_or_path", "tiny-qwen", "--overwrite_output_dir", "true")) == 0
    assert not list(out.glob("checkpoint-*"))  # the earlier run's checkpoints went with it
    assert json.loads((out / "pgpo_run.json").read_text())["run_id"] != first["run_id"]


def test_resuming_under_other_settings_is_refused_naming_each_difference(tmp_path):
    out = tmp_path / "run"
    assert main(_two_checkpoints(out)) == 0
    resume = ["--resume_from_checkpoint", str(out / "checkpoint-1")]
    with pytest.raises(SystemExit) as exit_:
        main(_two_checkpoints(out, *resume, "--pgpo_tau", "0.2", "--model_name_or_path", "demo-vlm"))
    message = str(exit_.value)
    assert "pgpo_tau: 0.4 -> 0.2" in message and "model: tiny-qwen -> demo-vlm" in message
    assert "new --output_dir" in message
    # the same settings (a longer run is not another run) resume
    run_id = json.loads((out / "pgpo_run.json").read_text())["run_id"]
    assert main(_two_checkpoints(out, "--resume_from_checkpoint", "true", "--max_steps", "3")) == 0
    assert json.loads((out / "pgpo_run.json").read_text())["run_id"] == run_id


def test_the_trainer_applies_the_rule_for_python_users(tmp_path, tiny_qwen):
    (tmp_path / "notes.txt").write_text("mine")
    trainer = python_trainer(*tiny_qwen, tmp_path)
    with pytest.raises(ValueError, match="files pgpo did not write: notes.txt"):
        trainer.train()


def test_a_config_as_typed_works_on_a_machine_without_a_bf16_gpu(tmp_path, monkeypatch):
    """TRL's bf16 default made ``PGPOConfig(output_dir=...)`` fail on the CPU ("Your setup doesn't support bf16/gpu")."""
    from pgpo.config import PGPOConfig

    monkeypatch.setattr("pgpo.config._bf16_gpu", lambda: False)
    assert PGPOConfig(output_dir=str(tmp_path)).bf16 is False
    assert PGPOConfig(output_dir=str(tmp_path), use_cpu=True).bf16 is True  # asked for the CPU: TRL's default stands


def test_one_lora_target_module_is_a_module_name(tmp_path, tiny_qwen):
    """``--lora_target_modules q_proj`` failed: TRL passes one name as a string, PEFT full-matches it as a regex."""
    import copy

    from peft import get_peft_model

    from pgpo.commands.train import peft_config

    for targets, expected in [(["q_proj"], {"q_proj"}), (["q_proj", "v_proj"], {"q_proj", "v_proj"})]:
        argv = ["--output_dir", str(tmp_path), "--use_cpu", "true", "--use_peft", "true"]
        config = peft_config(parse_args([*argv, "--lora_target_modules", *targets])[2])
        assert set(config.target_modules) == expected
        wrapped = get_peft_model(copy.deepcopy(tiny_qwen[0]), config)
        names = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in wrapped.named_parameters() if ".lora_A" in n}
        assert names == expected
    regex = peft_config(parse_args([*argv, "--lora_target_modules", r".*\.q_proj"])[2])
    assert regex.target_modules == r".*\.q_proj"  # a regex stays one
