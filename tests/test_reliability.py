"""Fault injection: non-finite training, mixed image / text-only batches, and bad input refused at start.

Each case of docs/reliability.md ("Training numerics", "Mixed batches", "Checked at start") is a test here. A bad input
must fail when the trainer is built (or, for rewards, at the first reward call), naming the row / function / option /
folder, and before any optimizer step: ``trainer.state.global_step == 0`` and the weights unchanged.
"""

import io
import math
import os

import pytest
import torch
from datasets import Dataset
from PIL import Image
from reference.trainers import tiny_preset

from pgpo.trainer import PGPOTrainer
from pgpo.validation import check_for_processor, named_reward, validate_dataset

PROMPT = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}]


@pytest.fixture(scope="module")
def processor():
    from pgpo.models.tiny_qwen import build_tiny_qwen25vl_processor

    return build_tiny_qwen25vl_processor()


def tiny_model(processor):
    from pgpo.models.tiny_qwen import build_tiny_qwen25vl

    return build_tiny_qwen25vl(seed=0, processor=processor)[0]


def png(colour=(255, 0, 0), size=(56, 56)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def dataset(n=4, **columns):
    """``n`` rows of :data:`PROMPT` with one red image each, then ``columns`` (lists of ``n``) added or replaced."""
    data = {"prompt": [PROMPT] * n, "image": [Image.new("RGB", (56, 56), (255, 0, 0))] * n}
    data.update(columns)
    return Dataset.from_dict(data)


def length_reward(completions, **kwargs):
    return [float(sum(map(ord, c[0]["content"])) % 5) for c in completions]


def config(tmp_path, algorithm="pgpo", **overrides):
    # beta 0: no reference model (TRL would rebuild it from a path, without the hooks these tests install)
    return tiny_preset(tmp_path / "out", algorithm, **{"shuffle_dataset": False, "beta": 0.0, **overrides})


def trainer(tmp_path, processor, train_dataset, algorithm="pgpo", model=None, reward=length_reward, **overrides):
    return PGPOTrainer(
        model=model if model is not None else tiny_model(processor),
        reward_funcs=reward,
        args=config(tmp_path, algorithm, **overrides),
        train_dataset=train_dataset,
        processing_class=processor,
    )


def weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_untouched(t, before):
    """No optimizer step ran: the step counter is 0 and every weight equals its value before ``train()``."""
    assert t.state.global_step == 0
    after = weights(t.model)
    assert all(torch.equal(before[n], after[n]) for n in before), "the optimizer applied the step"


# ----------------------------------------------------------------------------------------------- item 5: numerics


def nan_logits(model):
    """The training forward's hidden states (hence logits and log-probs) become NaN; generation (no grad) is fine."""

    def hook(module, args, out):
        return out * float("nan") if torch.is_grad_enabled() else out

    return model.model.language_model.norm.register_forward_hook(hook)


def nan_gradients(model):
    """The loss stays finite; the backward pass writes NaN into the gradients (an inf * 0 somewhere, say)."""

    def hook(module, args, out):
        if torch.is_grad_enabled():
            out.register_hook(lambda grad: torch.full_like(grad, float("nan")))

    return model.model.language_model.norm.register_forward_hook(hook)


# The loss check catches NaN logits under GRPO / Dr.GRPO; under DAPO's preset every 4-token completion is truncated
# and masked out, so the loss is 0 and only the gradient norm is NaN (the "loss logs 0": without the check all
# 57 tensors become NaN at step 1). Under PGPO the k3 estimator refuses the NaN log-probs of the training forward first.
@pytest.mark.parametrize(
    "algorithm, error, message",
    [
        pytest.param("grpo", FloatingPointError, r"non-finite loss \(nan\) at step 1", id="grpo"),
        pytest.param("dapo", FloatingPointError, r"non-finite loss \(nan\) at step 1", id="dapo"),
        pytest.param("dr_grpo", FloatingPointError, r"non-finite loss \(nan\) at step 1", id="dr_grpo"),
        pytest.param(
            "pgpo",
            ValueError,
            r"k3_dependency: non-finite log-probabilities \(NaN or inf\) on valid completion tokens",
            id="pgpo",
        ),
    ],
)
def test_nan_logits_stop_the_run_before_the_optimizer_step(tmp_path, processor, algorithm, error, message):
    model = tiny_model(processor)
    nan_logits(model)
    t = trainer(tmp_path, processor, dataset(), algorithm, model=model)
    before = weights(t.model)
    with pytest.raises(error, match=message):
        t.train()
    assert_untouched(t, before)
    assert not os.path.exists(os.path.join(t.args.output_dir, "model.safetensors"))


@pytest.mark.parametrize("algorithm", ["grpo", "pgpo"])
def test_nan_gradient_with_a_finite_loss_is_refused_before_the_optimizer_step(tmp_path, processor, algorithm):
    model = tiny_model(processor)
    nan_gradients(model)
    t = trainer(tmp_path, processor, dataset(), algorithm, model=model)
    before = weights(t.model)
    with pytest.raises(
        FloatingPointError,
        match=r"non-finite gradient norm \(nan\) at step 1: the backward pass produced NaN/inf gradients; the optimizer "
        r"has not applied it: the weights are those before this step",
    ):
        t.train()
    assert_untouched(t, before)


# ----------------------------------------------------------------------------------------------- item 6: mixed


def test_mixed_image_and_text_only_rows_train_with_zero_dependency_on_text_rows(tmp_path, processor):
    """pgpo.data's text_only="keep" rows. Rows 0 and 3 have no image; the first generation batch is rows 0 and 1 and
    TRL's old-log-prob pass (steps_per_generation=2) scores it in 2-sequence chunks, in order: the first chunk has no
    image at all. TRL alone fails
    with ``TypeError: only a single or a list of entries is supported`` in its processor call, then with an empty
    ``torch.cat`` in Qwen-VL's vision tower."""
    from pgpo.data import records_to_dataset

    records = [{"question": f"q{i}", "answer": "1", "images": [png()] if i in (1, 2) else []} for i in range(4)]
    ds = records_to_dataset(records, text_only="keep", prompt_template="{question}")
    assert [len(x) for x in ds["images"]] == [0, 1, 1, 0]
    t = trainer(
        tmp_path, processor, ds, "pgpo", per_device_train_batch_size=2, num_generations=2, steps_per_generation=2
    )
    assert t.dependency_source == "trl_old_logps"
    seen = []
    log_dependency = t._log_dependency

    def spy(scores, mask, mode):
        seen.append((scores.detach().clone(), mask.clone()))
        return log_dependency(scores, mask, mode)

    t._log_dependency = spy
    before = weights(t.model)
    t.train()
    assert t.state.global_step == 1
    (scores, mask), *_ = seen
    # The generation batch (4 = 2 rows x 2 generations, in order): text, text, image, image.
    text_rows, image_rows = torch.tensor([0, 1]), torch.tensor([2, 3])
    assert scores.shape[0] == 4
    assert torch.equal(scores[text_rows], torch.zeros_like(scores[text_rows]))  # exactly 0, not float noise
    assert (scores[image_rows] * mask[image_rows]).sum() > 0
    logs = [h for h in t.state.log_history if "loss" in h]
    assert math.isfinite(logs[0]["loss"]) and math.isfinite(logs[0]["grad_norm"])
    assert any(not torch.equal(before[n], p) for n, p in t.model.named_parameters())


# ----------------------------------------------------------------------------------------------- item 7: at start


def truncated_jpeg() -> bytes:
    buf = io.BytesIO()
    noise = torch.randint(0, 255, (64, 64, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    Image.fromarray(noise.numpy()).save(buf, format="JPEG")
    data = buf.getvalue()[: len(buf.getvalue()) // 2]
    with Image.open(io.BytesIO(data)) as img:
        img.verify()  # the header check passes: only a full decode finds it
    return data


def bad_rows(tmp_path):
    """name -> (dataset, the start of the error)."""
    jpeg = tmp_path / "truncated.jpg"
    jpeg.write_bytes(truncated_jpeg())
    good = tmp_path / "good.png"
    good.write_bytes(png())
    two = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Which?"}]}]

    def text(question):
        return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]

    return {
        "truncated_image": (
            dataset(image=[str(good), str(good), str(jpeg), str(good)]),
            r"row 2: image .*truncated\.jpg cannot be read as an image: OSError: image file is truncated",
        ),
        "aspect_ratio_over_200": (
            dataset(image=[Image.new("RGB", (56, 56))] + [Image.new("RGB", (450, 2))] * 3),
            r"row 1: image \(450x2 pixels\) is refused by the image processor \(Qwen2VLImageProcessor\): "
            r"absolute aspect ratio must be smaller than 200, got 225",
        ),
        "two_placeholders_one_image": (
            dataset(prompt=[PROMPT] * 3 + [two]),
            r"row 3: 1 image\(s\) in image but 2 image placeholder\(s\)",
        ),
        "image_pad_typed_in_the_text": (
            dataset(prompt=[PROMPT, PROMPT, text("What is <|image_pad|>?"), PROMPT]),
            r"row 2: the prompt text contains '<\|image_pad\|>', a vision special token",
        ),
        "vision_start_typed_in_the_text": (
            dataset(prompt=[PROMPT, text("Is <|vision_start|> a token?"), PROMPT, PROMPT]),
            r"row 1: the prompt text contains '<\|vision_start\|>'",
        ),
        "empty_dataset": (
            Dataset.from_dict({"prompt": [], "image": []}),
            r"the training dataset is empty \(0 rows\)",
        ),
    }


BAD_ROWS = [
    "truncated_image",
    "aspect_ratio_over_200",
    "two_placeholders_one_image",
    "image_pad_typed_in_the_text",
    "vision_start_typed_in_the_text",
    "empty_dataset",
]


@pytest.mark.parametrize("case", BAD_ROWS)
def test_bad_rows_are_refused_when_the_trainer_is_built(tmp_path, processor, case):
    ds, message = bad_rows(tmp_path)[case]
    with pytest.raises(ValueError, match=message):
        trainer(tmp_path, processor, ds)


def test_the_aspect_ratio_rule_is_the_processors_own(processor):
    """Qwen2-VL's smart_resize refuses max(h, w) / min(h, w) > 200: 200 exactly passes, 201 does not."""
    validate_dataset(dataset(n=1, image=[Image.new("RGB", (400, 2))]), processor=processor)
    with pytest.raises(ValueError, match=r"row 0: image \(2x402 pixels\).*got 201"):
        validate_dataset(dataset(n=1, image=[Image.new("RGB", (2, 402))]), processor=processor)
    # The same rule checked after the trainer loaded its own processor (headers only).
    with pytest.raises(ValueError, match=r"row 0: image \(2x402 pixels\)"):
        check_for_processor(dataset(n=1, image=[Image.new("RGB", (2, 402))]), processor)


def test_text_only_rows_pass_the_placeholder_check(processor):
    from pgpo.data import records_to_dataset

    records = [{"question": "q", "answer": "1", "images": [png()] if i else []} for i in range(2)]
    validate_dataset(records_to_dataset(records, text_only="keep"), processor=processor)


def test_images_wins_over_image_as_in_trl(processor):
    """With both columns a row's images are its ``images`` (TRL's order, pgpo.data.IMAGE_COLUMNS): the check counts
    those against the placeholders and never reads ``image``."""
    rows = {"prompt": [PROMPT, PROMPT], "images": [[png()], [png()]], "image": [None, Image.new("RGB", (2, 402))]}
    validate_dataset(Dataset.from_dict(rows), processor=processor)
    rows["images"] = [[png()], []]
    with pytest.raises(ValueError, match=r"row 1: 0 image\(s\) in images but 1 image placeholder"):
        validate_dataset(Dataset.from_dict(rows), processor=processor)


def test_placeholders_without_an_image_column_and_empty_image_entries_name_the_row():
    with pytest.raises(ValueError, match=r"row 0: 0 image\(s\) in the row but 1 image placeholder\(s\)"):
        validate_dataset(Dataset.from_dict({"prompt": [PROMPT]}))
    rows = {"prompt": [PROMPT, PROMPT], "images": [[png()], [None]]}
    with pytest.raises(ValueError, match=r"row 1: images\[0\] is None"):
        validate_dataset(Dataset.from_dict(rows))


def test_a_read_only_output_dir_is_refused_before_the_model_is_built(tmp_path, processor, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    read_only(monkeypatch, out)
    try:
        with pytest.raises(
            ValueError, match=rf"output_dir {out} is not writable \(PermissionError: Permission denied\)"
        ):
            PGPOTrainer(model=None, reward_funcs=length_reward, args=config(tmp_path), train_dataset=dataset())
    finally:
        out.chmod(0o755)


def test_an_output_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "out").write_text("not a folder")
    with pytest.raises(ValueError, match=r"output_dir .*out is a file, not a folder"):
        PGPOTrainer(model=None, reward_funcs=length_reward, args=config(tmp_path), train_dataset=dataset())


# Rewards: checked on the first reward call, which comes before the first optimizer step.

PROMPTS = [[{"role": "user", "content": f"question {i}"}] for i in range(4)]
COMPLETIONS = [[{"role": "assistant", "content": "x"}]] * 4
IDS = [f"q{i}" for i in range(4)]


@pytest.mark.parametrize(
    "returned, error, message",
    [
        pytest.param(
            [1.0, math.inf, 0.0, 1.0],
            ValueError,
            r"'bad' returned inf at batch position 1 \(id='q1'.*must be finite",
            id="inf",
        ),
        pytest.param(
            [0.0, 1.0, -math.inf, 1.0], ValueError, r"'bad' returned -inf at batch position 2 \(id='q2'", id="-inf"
        ),
        pytest.param(
            [1.0, "1.0", 0.0, 1.0],
            TypeError,
            r"'bad' returned '1.0' \(str\) at batch position 1 .*must be a number",
            id="str",
        ),
        pytest.param(
            [1.0, [1.0], 0.0, 1.0], TypeError, r"'bad' returned \[1.0\] \(list\) at batch position 1", id="list"
        ),
        pytest.param([1.0, 0.0, 1.0], ValueError, r"'bad' returned 3 rewards for 4 completions", id="short"),
        pytest.param(1.0, TypeError, r"'bad' returned float, not a list of 4 rewards", id="scalar"),
        pytest.param(None, TypeError, r"'bad' returned NoneType, not a list of 4 rewards", id="None"),
    ],
)
def test_bad_reward_values_name_the_function_and_the_sample(returned, error, message):
    reward = named_reward(lambda prompts, completions, **kw: returned, "bad")
    with pytest.raises(error, match=message):
        reward(prompts=PROMPTS, completions=COMPLETIONS, id=IDS)


def test_good_reward_values_pass_as_floats_with_nan_unscorable():
    import numpy as np

    returned = [True, np.float32(0.5), torch.tensor(2.0), float("nan")]
    reward = named_reward(lambda prompts, completions, **kw: returned, "ok")
    assert reward(prompts=PROMPTS, completions=COMPLETIONS, id=IDS) == [1.0, 0.5, 2.0, None]


def test_an_infinite_reward_stops_the_run_before_the_optimizer_step(tmp_path, processor):
    def explodes(completions, **kwargs):
        return [math.inf] + [1.0] * (len(completions) - 1)

    t = trainer(tmp_path, processor, dataset(id=IDS), "grpo", reward=explodes)
    before = weights(t.model)
    with pytest.raises(ValueError, match=r"reward function 'explodes' returned inf at batch position 0 \(id='q0'"):
        t.train()
    assert_untouched(t, before)


# pgpo train: a model folder that does not exist


@pytest.mark.parametrize(
    "name", ["./no-such-model", "{tmp}/no-such-model", "~/no-such-model-9f3", "runs/missing", "runs/tiny-qwen"]
)
def test_pgpo_train_names_a_missing_model_folder(tmp_path, monkeypatch, name):
    """``runs/missing`` next to a ``runs`` folder; ``runs/tiny-qwen`` (configs/tiny.yaml before make-tiny) with no
    ``runs`` folder, offline (the tests run with HF_HUB_OFFLINE=1)."""
    from pgpo.commands.train import main

    monkeypatch.chdir(tmp_path)
    if name == "runs/missing":
        (tmp_path / "runs").mkdir()
    name = name.format(tmp=tmp_path)
    with pytest.raises(SystemExit, match=r"pgpo train: model folder not found: /\S+[ ;].*\(--model_name_or_path "):
        main(["--model_name_or_path", name, "--output_dir", str(tmp_path / "out"), "--use_cpu", "true"])


def test_hub_ids_are_left_to_the_hub(tmp_path, monkeypatch):
    from pgpo.models.load import missing_model as missing_model_folder

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    assert missing_model_folder("Qwen/Qwen2.5-VL-3B-Instruct") is None  # online: the hub answers for it
    assert missing_model_folder("gpt2") is None
    assert missing_model_folder(str(tmp_path)) is None
    (tmp_path / "weights.bin").write_text("")
    assert missing_model_folder("weights.bin") == "model path is a file, not a model folder: weights.bin"


# ----------------------------------------------------------------------------------------------- nothing silent


@pytest.mark.parametrize(
    "reward_weights, message",
    [
        pytest.param([0.9, math.nan], r"reward_weights\[1\] must be finite, got nan", id="nan"),
        pytest.param([math.inf, 0.1], r"reward_weights\[0\] must be finite, got inf", id="inf"),
        pytest.param([0.0, 0.0], r"reward_weights are all 0 .*every advantage is 0", id="all_zero"),
    ],
)
def test_non_finite_or_all_zero_reward_weights_are_refused_by_the_config(tmp_path, reward_weights, message):
    with pytest.raises(ValueError, match=message):
        config(tmp_path, reward_weights=reward_weights)


def test_negative_reward_weights_are_accepted(tmp_path):
    """A penalty (a negative weight) is a legitimate reward design."""
    assert config(tmp_path, reward_weights=[1.0, -0.5]).reward_weights == [1.0, -0.5]


@pytest.mark.parametrize(
    "rewards, message",
    [  # [1e38, -1e38]: the std squares 1e38 (inf in float32), every advantage r / inf = 0
        pytest.param([1e38, -1e38], r"std inf\).*'huge' gave \[1e\+38, -1e\+38\]", id="std"),
        # [3e38, 3e38]: the group's sum overflows, the mean is inf, every advantage inf - inf = NaN, which TRL sets to 0
        pytest.param([3e38, 3e38], r"mean inf.*'huge' gave \[3e\+38, 3e\+38\]", id="mean"),
    ],
)
def test_rewards_that_overflow_the_group_statistics_stop_the_run_before_the_optimizer_step(
    tmp_path, processor, rewards, message
):
    def huge(completions, **kwargs):
        return rewards * (len(completions) // 2)

    t = trainer(tmp_path, processor, dataset(), "grpo", reward=huge)
    before = weights(t.model)
    with pytest.raises(FloatingPointError, match=r"rewards of group 0 overflow float32 .*" + message):
        t.train()
    assert_untouched(t, before)


# ----------------------------------------------------------------------------------------------- nothing lost at the end


def with_free_space(monkeypatch, free):
    """``shutil.disk_usage`` reports ``free`` bytes (no disk is filled)."""
    import shutil

    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=free))


@pytest.mark.parametrize(
    "overrides, checkpoints, moments, total",
    [
        pytest.param({}, 4, True, "1.02 GB", id="every_checkpoint_kept"),
        # transformers writes a checkpoint before it deletes the oldest one beyond the limit: 2 at once for limit 1
        pytest.param({"save_total_limit": 1}, 2, True, "548.0 MB", id="save_total_limit"),
        pytest.param({"save_only_model": True}, 4, False, "391.4 MB", id="save_only_model"),
    ],
)
def test_too_little_free_disk_for_the_run_is_refused_at_start(
    tmp_path, processor, monkeypatch, overrides, checkpoints, moments, total
):
    """4 steps, a checkpoint each: the final model plus the checkpoints on disk at once, each the weights and (unless
    save_only_model) AdamW's 2 moments per trainable parameter (the tiny model: 78.3 MB of float32, all trainable)."""
    model = tiny_model(processor)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    need = params + checkpoints * params * (3 if moments else 1)
    settings = dict(save_strategy="steps", save_steps=1, max_steps=4, **overrides)
    with_free_space(monkeypatch, 10_000_000)
    with pytest.raises(
        ValueError,
        match=rf"output_dir {tmp_path / 'out'} has 10.0 MB free, but this run writes about {total} there: the final "
        rf"model \({params / 1e6:.1f} MB\) and {checkpoints} checkpoint\(s\) .*--save_total_limit.*--save_only_model"
        r".*another --output_dir",
    ):
        trainer(tmp_path, processor, dataset(), model=model, **settings)
    with_free_space(monkeypatch, need - 1)
    with pytest.raises(ValueError, match="free, but this run writes about"):
        trainer(tmp_path, processor, dataset(), model=model, **settings)
    with_free_space(monkeypatch, need)
    trainer(tmp_path, processor, dataset(), model=model, **settings)  # just enough: it builds


@pytest.mark.parametrize("checkpointed", [True, False], ids=["after_a_checkpoint", "without_checkpoints"])
def test_a_failed_final_save_says_where_the_last_checkpoint_is(tmp_path, processor, monkeypatch, checkpointed):
    """The disk fills up at ``pgpo train``'s final ``save_model`` (after the checkpoint of step 1, or with none)."""
    import errno

    settings = dict(save_strategy="steps", save_steps=1) if checkpointed else {}
    t = trainer(tmp_path, processor, dataset(), **settings)
    if checkpointed:
        t.train()

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(t.model, "save_pretrained", disk_full)
    out = t.args.output_dir
    where = (
        rf"the last checkpoint is {out}/checkpoint-1 \(step 1 of 1\)"
        if checkpointed
        else rf"there is no checkpoint in {out} \(save_strategy=no\): the trained weights are not on disk"
    )
    with pytest.raises(
        OSError, match=rf"\[Errno 28\] saving the model to {out} failed: No space left on device; {where}"
    ):
        t.save_model(out)


def read_only(monkeypatch, folder):
    """``folder`` read-only; run as root (which writes anyway), creating a file in it raises the EACCES it would."""
    folder.chmod(0o555)
    if os.geteuid() == 0:
        real_open = os.open

        def refuse(path, *args, **kwargs):
            if os.path.dirname(os.fspath(path)) == str(folder):
                raise PermissionError(13, "Permission denied", os.fspath(path))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(os, "open", refuse)


@pytest.mark.parametrize("kind", ["read_only", "file"])
def test_an_unwritable_pgpo_cache_is_refused_before_the_warm_start_trains(tmp_path, monkeypatch, kind):
    from pgpo.demo import warmstart

    cache = tmp_path / "cache"
    if kind == "file":
        cache.write_text("not a folder")
    else:
        cache.mkdir()
        read_only(monkeypatch, cache)
    monkeypatch.setenv("PGPO_CACHE", str(cache))
    monkeypatch.setattr(warmstart, "train_warm_start", lambda *a, **k: pytest.fail("trained before checking the cache"))
    reason = "Permission denied" if kind == "read_only" else "a file, not a folder"
    try:
        with pytest.raises(
            OSError, match=rf"the pgpo cache {cache} is not writable \({reason}\): set \$PGPO_CACHE \(now {cache}\)"
        ):
            warmstart.warm_start(warmstart.WarmStartConfig(), log=lambda m: None)
    finally:
        cache.chmod(0o755)


def test_a_warm_start_the_cache_cannot_take_at_the_end_is_kept_elsewhere(tmp_path, monkeypatch):
    """The start check passes, then the disk under ``$PGPO_CACHE`` fills up during the minutes of training."""
    import errno
    import json
    import tempfile
    from pathlib import Path

    from pgpo.demo import warmstart

    cache, elsewhere = tmp_path / "cache", tmp_path / "tmp"
    elsewhere.mkdir()
    monkeypatch.setenv("PGPO_CACHE", str(cache))
    monkeypatch.setattr(tempfile, "tempdir", str(elsewhere))

    class Trained:  # the trained model and processor: save_pretrained fails under the cache only
        def save_pretrained(self, folder):
            if Path(folder).is_relative_to(cache):
                raise OSError(errno.ENOSPC, "No space left on device")
            (Path(folder) / "config.json").write_text("{}")

    stats = {"final_loss": 0.25, "wall_seconds": 600.0}
    monkeypatch.setattr(warmstart, "train_warm_start", lambda cfg, log: (Trained(), Trained(), stats))
    logs = []
    path = warmstart.warm_start(warmstart.WarmStartConfig(), log=logs.append)
    assert path.parent == elsewhere and (path / "config.json").is_file()
    assert json.loads((path / "warmstart.json").read_text())["final_loss"] == 0.25
    assert any(f"kept the trained warm start in {path}" in m and "No space left on device" in m for m in logs), logs
    assert not any(cache.iterdir())  # nothing half-written in the cache
