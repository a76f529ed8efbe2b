"""Checkpoints and resume: the trained weights come back exactly, or the resume fails naming what is wrong.

Every run here is ``pgpo train``'s own code path (``pgpo.commands.train.build_trainer`` on the tiny Qwen2.5-VL and
``configs/tiny.yaml``) with :func:`moving_reward`, which differs inside every group so that every step has non-zero
advantages and moves the weights (a reward that is constant on the random model, as ``tasks`` is, hides a resume that
restores nothing). An uninterrupted run of two steps saves ``checkpoint-1``; a second run resumes from it and must
hold the checkpoint's weights before its first step, then reach the uninterrupted run's weights, metrics and saved
model. Everything is compared for exact equality: the math is deterministic on the CPU (same thread count).
Damaged checkpoints and mismatched keys must fail before anything is loaded, naming the file (and the previous
checkpoint) or the keys. ``docs/reliability.md`` lists each case with its test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback

from pgpo.checkpoint import (
    CheckpointError,
    CheckpointWarning,
    check_checkpoint_files,
    generation_period,
    load_checkpoint,
    previous_checkpoint,
    to_model_keys,
)

ROOT = Path(__file__).resolve().parents[1]
METRICS = (
    "loss",
    "grad_norm",
    "reward",
    "dependency/mean",
    "shaping/gated_frac",
    "grad_norm/running_mean",
    "grad_norm/running_var",
    "learning_rate",
)
LORA = ["--use_peft", "true", "--lora_r", "4", "--lora_alpha", "8", "--lora_target_modules", "q_proj", "v_proj"]
VARIANTS = {
    "full": [],
    "lora": LORA,
    # steps_per_generation follows gradient_accumulation_steps (TRL's default): TRL's shared old-log-prob pass and its
    # generation buffer. On the adapter: full fine-tuning writes a 160 MB Adam state a checkpoint, which the "full"
    # variant already pays for, and what accumulation changes on resume (the batches skipped, the buffer) is the same.
    "lora_grad_accum_2": [*LORA, "--gradient_accumulation_steps", "2"],
}


def moving_reward(completions, **kwargs):
    """``i % 2`` differs inside every group of two completions (TRL puts a prompt's completions next to each other),
    so no group has zero advantage; the content term makes the logged reward depend on what was sampled."""
    return [i % 2 + (sum(map(ord, c[0]["content"])) % 5) / 10 for i, c in enumerate(completions)]


def train_argv(model_dir, out, *extra):
    return [
        "--config",
        str(ROOT / "configs" / "tiny.yaml"),
        "--model_name_or_path",
        str(model_dir),
        "--output_dir",
        str(out),
        "--dataset_size",
        "8",
        "--reward_funcs",
        "test_resume.moving_reward",
        "--per_device_train_batch_size",
        "2",
        "--num_generations",
        "2",
        "--max_steps",
        "2",
        "--save_steps",
        "1",
        "--learning_rate",
        "1e-2",
        "--disable_tqdm",
        "true",
        *extra,
    ]


def subprocess_env():
    # the same number of threads as this process, or the CPU's reductions (and so the last bits) could differ
    path = os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": str(torch.get_num_threads()),
        "PYTHONPATH": path,
    }


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class Snapshots(TrainerCallback):
    """The model's tensors before the first optimizer step of this run and after each step."""

    def __init__(self):
        self.before_first_step, self.after_step = None, {}

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if self.before_first_step is None:
            self.before_first_step = weights(model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.after_step[state.global_step] = weights(model)


_PROCESSORS = {}


@contextmanager
def shared_processor():
    """Parse the Qwen tokenizer (a 7 MB JSON, ~4 s on one core) once for all the runs of this module instead of once
    a trainer; everything else is ``pgpo train``'s path, and the killed subprocess loads it as usual."""
    import trl.trainer.grpo_trainer as grpo

    original = grpo.AutoProcessor.from_pretrained

    def cached(name, *args, **kwargs):
        key = (str(name), args, tuple(sorted(kwargs.items())))
        if key not in _PROCESSORS:
            _PROCESSORS[key] = original(name, *args, **kwargs)
        return _PROCESSORS[key]

    with mock.patch.object(grpo.AutoProcessor, "from_pretrained", cached):
        yield


class SaveOnlyTheFirstCheckpoint(TrainerCallback):
    """``checkpoint-1`` is all these tests resume from: skip writing the others (the optimizer state is 160 MB)."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step > 1:
            control.should_save = False


def build(argv):
    """``(trainer, training args)`` exactly as ``pgpo train ARGV`` builds them."""
    from pgpo.commands.train import build_trainer, parse_args

    script_args, training_args, model_args, _ = parse_args(argv)
    with shared_processor():
        return build_trainer(script_args, training_args, model_args), training_args


def train(argv):
    """Train as ``pgpo train ARGV`` does (``--resume_from_checkpoint`` included); returns (trainer, snapshots,
    weights before training)."""
    trainer, training_args = build(argv)
    snapshots = Snapshots()
    trainer.add_callback(snapshots)
    trainer.add_callback(SaveOnlyTheFirstCheckpoint())
    base = weights(trainer.model)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    return trainer, snapshots, base


def kill_after_first_checkpoint(model_dir, out, log_path) -> Path:
    """Run ``pgpo train`` in a subprocess and ``kill -9`` it as soon as ``checkpoint-1`` is complete (inside step 2);
    returns that checkpoint folder."""
    cmd = [sys.executable, "-m", "pgpo.cli", "train", *train_argv(model_dir, out)]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=subprocess_env(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        marker, deadline = out / "checkpoint-1" / "trainer_state.json", time.time() + 300
        while proc.poll() is None and time.time() < deadline:  # trainer_state.json: the last file of a checkpoint
            try:
                json.loads(marker.read_text())
                break
            except (OSError, ValueError):
                time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, Path(log_path).read_text()[-3000:]
    assert not (out / "checkpoint-2").exists() and not (out / "model.safetensors").exists()  # killed inside step 2
    return out / "checkpoint-1"


def logged(log_history) -> dict[int, dict]:
    return {h["step"]: h for h in log_history if "loss" in h}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from pgpo.models.tiny_qwen import save_tiny_qwen25vl

    return save_tiny_qwen25vl(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def uninterrupted(tiny_dir, tmp_path_factory):
    """variant -> (output dir, trainer, snapshots, base weights) of an uninterrupted two-step run, built on demand."""
    runs = {}

    def get(variant):
        if variant not in runs:
            out = tmp_path_factory.mktemp(f"uninterrupted-{variant}")
            runs[variant] = (out, *train(train_argv(tiny_dir, out, *VARIANTS[variant])))
        return runs[variant]

    return get


# ----------------------------------------------------------------------------------------------- exact resume
@pytest.mark.parametrize("variant", [pytest.param("full", marks=pytest.mark.slow), "lora", "lora_grad_accum_2"])
def test_resume_restores_the_checkpoint_then_continues_as_the_uninterrupted_run(
    variant, uninterrupted, tiny_dir, tmp_path
):
    """``full``: the checkpoint is the one a ``pgpo train`` subprocess left when killed with SIGKILL inside the next
    step, resumed into the same output_dir; the others resume from the uninterrupted run's own checkpoint."""
    out, reference, ref_snaps, base = uninterrupted(variant)
    trained = ref_snaps.after_step[1]  # the weights checkpoint-1 holds
    moved = [k for k in trained if not torch.equal(trained[k], base[k])]
    # the reward moves every weight (but LoRA's A: its first gradient is 0 because B starts at 0)
    trainable = {n for n, p in reference.model.named_parameters() if p.requires_grad and "lora_A" not in n}
    assert trainable and trainable <= set(moved), sorted(trainable - set(moved))[:5]

    if variant == "full":
        checkpoint = kill_after_first_checkpoint(tiny_dir, tmp_path / "killed", tmp_path / "killed.log")
        a, b = load_file(out / "checkpoint-1" / "model.safetensors"), load_file(checkpoint / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # same run, same checkpoint
        run_dir = checkpoint.parent
    else:
        checkpoint, run_dir = out / "checkpoint-1", tmp_path
    argv = train_argv(tiny_dir, run_dir, *VARIANTS[variant], "--resume_from_checkpoint", str(checkpoint))
    resumed, snaps, _ = train(argv)

    restored = snaps.before_first_step
    assert restored.keys() == trained.keys()
    wrong = [k for k in trained if not torch.equal(restored[k], trained[k])]
    assert not wrong, f"{len(wrong)} of {len(trained)} tensors differ from the checkpoint's, e.g. {wrong[:3]}"

    final, expected = snaps.after_step[2], ref_snaps.after_step[2]
    assert [k for k in expected if not torch.equal(final[k], expected[k])] == []
    a, b = logged(reference.state.log_history)[2], logged(resumed.state.log_history)[2]
    assert {k: b[k] for k in METRICS} == {k: a[k] for k in METRICS}
    name = "adapter_model.safetensors" if "--use_peft" in VARIANTS[variant] else "model.safetensors"
    a, b = load_file(out / name), load_file(run_dir / name)
    assert a.keys() == b.keys() and [k for k in a if not torch.equal(a[k], b[k])] == []  # and the model it saves


# ----------------------------------------------------------------------------------------------- strict loading
def test_qwen_checkpoint_keys_map_onto_the_model_and_transformers_plain_load_does_not(uninterrupted):
    """The layout save_pretrained writes (visual.*, model.*) is not the model's (model.visual.*,
    model.language_model.*): the model's own conversion maps every key; the raw keys match only lm_head."""
    out, trainer, snaps, _ = uninterrupted("full")
    raw = load_file(out / "checkpoint-1" / "model.safetensors")
    model = trainer.model
    plain = set(raw) & set(model.state_dict())
    assert plain == {"lm_head.weight"} and len(raw) == len(model.state_dict()) == 57
    converted, unmatched = to_model_keys(model, raw)
    assert unmatched == [] and converted.keys() == model.state_dict().keys()
    assert all(torch.equal(converted[k], snaps.after_step[1][k]) for k in converted)


def _rewrite(path, change):
    tensors = load_file(path)
    change(tensors)
    os.unlink(path)  # the folder may hold hard links to the fixture's files
    save_file(tensors, path, metadata={"format": "pt"})


def _linked_copy(src, dst):
    shutil.copytree(src, dst, copy_function=os.link)
    return dst


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda t: t.pop("visual.blocks.0.attn.qkv.weight"), "1 missing: model.visual.blocks.0.attn.qkv.weight"),
        (lambda t: t.update({"visual.extra.weight": torch.zeros(2)}), "1 unexpected: visual.extra.weight"),
        (lambda t: t.update({"model.norm.weight": torch.zeros(3)}), "model.language_model.norm.weight (3,) vs (64,)"),
    ],
    ids=["missing", "unexpected", "shape"],
)
def test_a_key_mismatch_fails_naming_the_folder_and_the_keys(uninterrupted, tmp_path, change, expected):
    out, trainer, _, _ = uninterrupted("full")
    folder = _linked_copy(out / "checkpoint-1", tmp_path / "checkpoint-1")
    _rewrite(folder / "model.safetensors", change)
    before = weights(trainer.model)
    with pytest.raises(CheckpointError, match="does not match the model") as error:
        load_checkpoint(trainer.model, folder)
    assert str(folder) in str(error.value) and expected in str(error.value)
    after = weights(trainer.model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing was loaded


def test_lora_adapter_key_mismatch_fails(uninterrupted, tmp_path):
    out, lora, _, _ = uninterrupted("lora")
    folder = _linked_copy(out / "checkpoint-1", tmp_path / "checkpoint-1")
    removed = []
    _rewrite(folder / "adapter_model.safetensors", lambda t: removed.append(t.pop(sorted(t)[0])))
    with pytest.raises(CheckpointError, match="1 missing: .*lora_A") as error:
        load_checkpoint(lora.model, folder)
    assert str(folder) in str(error.value)
    shutil.rmtree(folder)  # a full-model checkpoint where the run trains an adapter
    full_out, _, _, _ = uninterrupted("full")
    with pytest.raises(CheckpointError, match="full model weights, but this run trains a PEFT adapter"):
        check_checkpoint_files(_linked_copy(full_out / "checkpoint-1", folder), adapter=True)


def test_demo_vlm_checkpoint_round_trip_keeps_ties_and_frozen_tower(tmp_path):
    """pgpo.vlm (tied lm_head, frozen MobileNetV2 with BatchNorm statistics), small random text model."""
    pytest.importorskip("torchvision")
    from pgpo.vlm import PGPOVLMConfig, PGPOVLMForConditionalGeneration

    text = dict(model_type="llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1)
    text.update(num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    config = PGPOVLMConfig(text_config=text, image_token_id=61, vision_start_token_id=62, vision_end_token_id=63)

    def model(seed):
        torch.manual_seed(seed)
        return PGPOVLMForConditionalGeneration(config)

    trained = model(0)
    with torch.no_grad():
        for tensor in trained.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.rand_like(tensor))
    trained.save_pretrained(tmp_path)
    fresh = model(1)
    load_checkpoint(fresh, tmp_path)
    expected, got = trained.state_dict(), fresh.state_dict()
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    assert fresh.lm_head.weight is fresh.model.language_model.embed_tokens.weight
    assert not any(p.requires_grad for p in fresh.model.vision_tower.parameters())
    _rewrite(tmp_path / "model.safetensors", lambda t: t.pop("model.projector.fc1.bias"))
    with pytest.raises(CheckpointError, match="1 missing: model.projector.fc1.bias"):
        load_checkpoint(model(2), tmp_path)


def test_load_best_model_at_end_uses_the_strict_loader(uninterrupted):
    out, trainer, snaps, _ = uninterrupted("full")
    trainer.state.best_model_checkpoint = str(out / "checkpoint-1")
    try:
        trainer._load_best_model()
        got = weights(trainer.model)
        assert all(torch.equal(got[k], snaps.after_step[1][k]) for k in got)
    finally:
        trainer.model.load_state_dict(snaps.after_step[2])  # back to the end of the run for the other tests


# ----------------------------------------------------------------------------------------------- damaged files
def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.unlink()  # a hard link: never write through to the fixture's file
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        path.write_bytes(b"\x00not a checkpoint\xff" * 8)
    elif how == "flip":  # one byte in the middle of the payload: torch.load alone would load it as a wrong value
        data = bytearray(data)
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))


DAMAGES = [
    ("model.safetensors", "truncate", "not a readable safetensors file"),
    ("model.safetensors", "garbage", "not a readable safetensors file"),
    ("model.safetensors", "delete", "missing: the checkpoint has no model weights"),
    ("optimizer.pt", "truncate", "not a readable torch.save archive"),
    ("optimizer.pt", "flip", "checksum"),
    ("optimizer.pt", "delete", "missing: the optimizer"),
    ("scheduler.pt", "garbage", "not a readable torch.save archive"),
    ("rng_state.pth", "truncate", "not a readable torch.save archive"),
    ("trainer_state.json", "truncate", "not valid JSON"),
    ("trainer_state.json", "delete", "missing"),
    ("pgpo_state.json", "garbage", "not valid JSON"),
    ("config.json", "truncate", "not valid JSON"),
]


@pytest.mark.parametrize("name, how, reason", DAMAGES, ids=[f"{n}-{h}" for n, h, _ in DAMAGES])
def test_a_damaged_checkpoint_file_is_named_with_the_previous_checkpoint(uninterrupted, tmp_path, name, how, reason):
    out, _, _, _ = uninterrupted("full")
    previous = tmp_path / "run" / "checkpoint-0"  # an earlier checkpoint (its trainer state is what marks it one)
    previous.mkdir(parents=True)
    shutil.copy(out / "checkpoint-1" / "trainer_state.json", previous)
    folder = _linked_copy(out / "checkpoint-1", tmp_path / "run" / "checkpoint-1")
    _damage(folder / name, how)
    with pytest.raises(CheckpointError, match=reason) as error:
        check_checkpoint_files(folder, adapter=False)
    message = str(error.value)
    assert f"checkpoint file {folder / name}: " in message and str(previous) in message, message
    assert previous_checkpoint(folder) == str(previous)


def test_a_damaged_checkpoint_stops_train_before_any_step(uninterrupted, tiny_dir, tmp_path):
    out, _, _, _ = uninterrupted("full")
    folder = _linked_copy(out / "checkpoint-1", tmp_path / "run" / "checkpoint-1")
    _damage(folder / "model.safetensors", "truncate")
    trainer, _ = build(train_argv(tiny_dir, tmp_path / "out"))
    with pytest.raises(CheckpointError, match=f"{folder / 'model.safetensors'}: not a readable safetensors file"):
        trainer.train(resume_from_checkpoint=str(folder))
    assert trainer.state.global_step == 0


def test_checkpoint_without_pgpo_state_warns_that_statistics_restart(uninterrupted, tmp_path):
    out, trainer, _, _ = uninterrupted("full")
    saved = json.loads((out / "checkpoint-1" / "pgpo_state.json").read_text())["grad_norm_stats"]
    assert saved["n"] == 1
    trainer.create_optimizer_and_scheduler(num_training_steps=2)
    trainer._load_optimizer_and_scheduler(str(out / "checkpoint-1"))
    assert trainer._grad_norm_stats.state_dict() == saved
    folder = _linked_copy(out / "checkpoint-1", tmp_path / "checkpoint-1")
    (folder / "pgpo_state.json").unlink()
    with pytest.warns(CheckpointWarning, match="no pgpo_state.json: .*restart from zero"):
        trainer._load_optimizer_and_scheduler(str(folder))
    assert trainer._grad_norm_stats.state_dict() == {"n": 0, "mean": 0.0, "m2": 0.0}


def test_checkpoint_without_rng_state_warns_that_sampling_differs(uninterrupted, tmp_path):
    out, _, _, _ = uninterrupted("full")
    folder = _linked_copy(out / "checkpoint-1", tmp_path / "checkpoint-1")
    (folder / "rng_state.pth").unlink()
    with pytest.warns(CheckpointWarning, match="no rng_state.pth: training resumes, but sampling"):
        check_checkpoint_files(folder, adapter=False)


# ----------------------------------------------------------------------------------------------- generation schedule
@pytest.mark.parametrize(
    "grad_accum, steps_per_generation, num_iterations, period",
    [(1, 1, 1, 1), (1, 2, 1, 2), (2, 2, 1, 1), (2, 4, 1, 2), (4, 2, 1, 1), (1, 1, 2, 2), (3, 2, 1, 2)],
)
def test_generation_period(grad_accum, steps_per_generation, num_iterations, period):
    assert generation_period(grad_accum, steps_per_generation, num_iterations) == period


def test_save_steps_inside_a_generation_batch_are_refused_at_start(tmp_path):
    from pgpo.config import PGPOConfig

    common = dict(output_dir=str(tmp_path), use_cpu=True, per_device_train_batch_size=2, num_generations=2)
    with pytest.raises(ValueError, match="save_steps=3 is not a multiple of 2") as error:
        PGPOConfig(**common, steps_per_generation=2, save_steps=3)
    message = str(error.value)
    assert "steps_per_generation=2" in message and "gradient_accumulation_steps=1" in message
    assert "save_steps=4" in message  # the suggestion
    PGPOConfig(**common, steps_per_generation=2, save_steps=4)
    PGPOConfig(**common, steps_per_generation=2, save_steps=3, save_strategy="no")
    PGPOConfig(**common, steps_per_generation=2, gradient_accumulation_steps=2, save_steps=3)
    with pytest.raises(ValueError, match="save_steps=5 is not a multiple of 2"):  # a fraction of max_steps
        PGPOConfig(**common, steps_per_generation=2, max_steps=10, save_steps=0.5)


def test_a_checkpoint_inside_a_generation_batch_is_refused_at_resume(uninterrupted, tiny_dir, tmp_path):
    out, _, _, _ = uninterrupted("full")
    trainer, _ = build(train_argv(tiny_dir, tmp_path, "--steps_per_generation", "2", "--save_steps", "2"))
    with pytest.raises(CheckpointError, match="saved at step 1, inside a generation batch") as error:
        trainer.train(resume_from_checkpoint=str(out / "checkpoint-1"))
    assert "steps_per_generation=2" in str(error.value) and trainer.state.global_step == 0
