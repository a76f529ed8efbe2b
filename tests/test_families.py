"""Every VLM family of :data:`pgpo.models.tiny.FAMILIES`, end to end on its tiny random model (real processor).

Per family: ``pgpo make-tiny --arch`` saves a folder that transformers' auto classes and ``pgpo.models.load_model``
load; the blind pass equals the literal masked forward (tests/reference/masked.py) and does not see the image; one
PGPOTrainer step under the ``pgpo`` preset (generation through TRL, scoring, shaping, an update that moves the
weights) and a resume from its checkpoint that restores every weight; ``pgpo inspect`` and ``pgpo eval`` on the saved
folder. A family pgpo refuses is refused at start with its reason. The README's support matrix is the one
:func:`pgpo.models.tiny.support_matrix` generates.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from PIL import Image
from reference.masked import COLOURS, literal_masked_logps, make_batch
from transformers import TrainerCallback

from pgpo.cli import main as cli_main
from pgpo.dependency import sampled_token_logps
from pgpo.models.tiny import FAMILIES, support_matrix
from pgpo.text_only import IMAGE_KEYS, blind_batch, image_pass_position_ids, image_token_spec

ROOT = Path(__file__).resolve().parents[1]
ARCHS = list(FAMILIES)
_spec = importlib.util.spec_from_file_location("make_fixtures", ROOT / "tests" / "fixtures" / "make_fixtures.py")
fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixtures)
SUPPORTED = [a for a in ARCHS if FAMILIES[a].refused is None]
REFUSED = [a for a in ARCHS if FAMILIES[a].refused is not None]
pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROWS = [(1, "How many red circles are there?"), (1, "Colour?")]
COMPLETIONS = ["There are three circles.", "Red"]


_BUILT: dict[str, tuple] = {}


def tiny(arch):
    """``(model, processor)`` of ``arch``, built once per session; callers that change the model copy it."""
    if arch not in _BUILT:
        _BUILT[arch] = FAMILIES[arch].build(seed=0)
    return _BUILT[arch]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """``arch -> folder`` written by ``pgpo make-tiny DIR --arch ARCH`` (once per family)."""
    folders: dict[str, Path] = {}

    def get(arch):
        if arch not in folders:
            folder = tmp_path_factory.mktemp(arch) / "model"
            assert cli_main(["make-tiny", str(folder), "--arch", arch]) == 0
            folders[arch] = folder
        return folders[arch]

    return get


# ----------------------------------------------------------------------------------------------- make-tiny


@pytest.mark.parametrize("arch", ARCHS)
def test_make_tiny_saves_a_model_the_auto_classes_and_load_model_load(arch, saved):
    from transformers import AutoModelForImageTextToText

    from pgpo.models.load import load_model

    folder = saved(arch)
    assert json.loads((folder / "config.json").read_text())["model_type"] == arch
    model, processor = load_model(str(folder), device="cpu")  # AutoModelForImageTextToText + AutoProcessor
    assert type(model) is AutoModelForImageTextToText._model_mapping[type(model.config)] and not model.training
    assert type(model) is type(tiny(arch)[0]) and type(processor) is type(tiny(arch)[1])
    built = tiny(arch)[0].state_dict()
    assert all(torch.equal(v, built[k]) for k, v in model.state_dict().items())
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}],
        add_generation_prompt=True,
        tokenize=False,
    )
    enc = processor(images=[[Image.new("RGB", (56, 56), COLOURS[0])]], text=[text], return_tensors="pt")
    assert (enc["input_ids"] == image_token_spec(model.config).image_token_id).sum() > 0  # the image is expanded
    with torch.no_grad():
        assert torch.isfinite(model(**enc).logits).all()


def test_make_tiny_default_is_qwen25vl_and_unknown_arch_is_refused(tmp_path, capsys):
    from pgpo.models.tiny import DEFAULT_ARCH

    assert DEFAULT_ARCH == "qwen2_5_vl"
    with pytest.raises(SystemExit):
        cli_main(["make-tiny", str(tmp_path / "x"), "--arch", "nope"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- the blind pass


def blind_logps(model, batch, T):
    spec = image_token_spec(model.config)
    blind = blind_batch(batch, T, spec, image_pass_position_ids(model, batch))
    assert not set(blind) & set(IMAGE_KEYS)  # the vision tower does not run
    assert not torch.isin(blind["input_ids"][:, :-T], torch.tensor(spec.hidden_ids())).any()
    assert torch.equal(blind["input_ids"][:, -T:], batch["input_ids"][:, -T:])
    with torch.no_grad():
        return sampled_token_logps(model, blind, T)


@pytest.mark.parametrize("arch", SUPPORTED)
def test_blind_pass_equals_the_literal_masked_forward_and_does_not_see_the_image(arch):
    model, processor = tiny(arch)
    model = copy.deepcopy(model)
    model.set_attn_implementation("eager")
    batch, T, cmask = make_batch(processor, ROWS, COMPLETIONS)
    hidden = torch.tensor(image_token_spec(model.config).hidden_ids())
    ref, captured = literal_masked_logps(model, batch, T, hidden)
    assert torch.equal(image_pass_position_ids(model, batch), captured.expand(*captured.shape[:-2], 2, -1))
    torch.testing.assert_close(blind_logps(model, batch, T) * cmask, ref * cmask, atol=1e-5, rtol=0)

    # another image of the same size: the same ids, the same blind log-probs, other image-conditioned ones
    noise = Image.fromarray((torch.rand(56, 56, 3, generator=torch.Generator().manual_seed(0)) * 255).byte().numpy())
    other, _, _ = make_batch(processor, ROWS, COMPLETIONS, images=[[noise], [noise]])
    assert torch.equal(other["input_ids"], batch["input_ids"])
    assert torch.equal(blind_logps(model, other, T), blind_logps(model, batch, T))
    with torch.no_grad():
        a, b = sampled_token_logps(model, batch, T), sampled_token_logps(model, other, T)
    assert not torch.allclose(a * cmask, b * cmask, atol=1e-4)


MIXED_ROWS = [(1, "How many red circles are there?"), (2, "Compare the two pictures."), (0, "What is 2+2?")]
MIXED_COMPLETIONS = ["There are three circles.", "The left one is red", "4"]


@pytest.mark.parametrize("arch", [a for a in SUPPORTED if FAMILIES[a].multi_image])
def test_blind_pass_with_two_images_in_a_question_and_a_text_only_row(arch):
    """One batch: a row with one image, one with two, one without; the blind pass is the literal masked forward,
    and the text-only row's blind log-probs are its image-pass log-probs (nothing to hide)."""
    model, processor = tiny(arch)
    model = copy.deepcopy(model)
    model.set_attn_implementation("eager")
    batch, T, cmask = make_batch(processor, MIXED_ROWS, MIXED_COMPLETIONS)
    spec = image_token_spec(model.config)
    per_row = torch.isin(batch["input_ids"], torch.tensor([spec.image_token_id])).sum(1)
    assert per_row[0] > 0 and per_row[1] > 0 and per_row[2] == 0  # (LLaVA-OneVision: anyres for one image only)
    ref, _ = literal_masked_logps(model, batch, T, torch.tensor(spec.hidden_ids()))
    blind = blind_logps(model, batch, T)
    torch.testing.assert_close(blind * cmask, ref * cmask, atol=1e-5, rtol=0)
    with torch.no_grad():
        image = sampled_token_logps(model, batch, T)
    torch.testing.assert_close(blind[2] * cmask[2], image[2] * cmask[2], atol=1e-5, rtol=0)
    assert not torch.allclose(blind[:2] * cmask[:2], image[:2] * cmask[:2], atol=1e-4)


# ----------------------------------------------------------------------------------------------- training


def colour_dataset(n=4):
    images = [Image.new("RGB", (56, 56), COLOURS[i % 4]) for i in range(n)]
    prompts = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}]] * n
    return Dataset.from_dict({"prompt": prompts, "image": images, "answer": ["x"] * n})


def moving_reward(completions, **kwargs):
    """Differs inside every group of two (TRL puts a prompt's completions next to each other): no group is filtered
    by dynamic sampling and every step has non-zero advantages."""
    return [i % 2 + (sum(map(ord, c[0]["content"])) % 5) / 10 for i, c in enumerate(completions)]


def make_trainer(arch, out, model, train_dataset=None, **overrides):
    from reference.trainers import tiny_preset

    from pgpo.trainer import PGPOTrainer

    return PGPOTrainer(
        model=model,
        reward_funcs=moving_reward,
        args=tiny_preset(out, "pgpo", **{"save_strategy": "steps", "save_steps": 1, **overrides}),
        train_dataset=colour_dataset() if train_dataset is None else train_dataset,
        processing_class=tiny(arch)[1],
    )


@pytest.mark.parametrize("arch", SUPPORTED)
def test_one_pgpo_step_moves_the_weights_and_resume_restores_every_weight(arch, tmp_path):
    trainer = make_trainer(arch, tmp_path, copy.deepcopy(tiny(arch)[0]))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 1 and math.isfinite(logs[0]["loss"]) and math.isfinite(logs[0]["grad_norm"])
    assert logs[0]["dependency/mean"] > 0 and 0 <= logs[0]["shaping/gated_frac"] <= 1
    after = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    assert all(torch.isfinite(p).all() for p in after.values())
    assert sum(not torch.equal(before[n], after[n]) for n in after) > len(after) // 2

    other = FAMILIES[arch].build(seed=1)[0]  # other weights everywhere: a resume that restores nothing shows
    resumed = make_trainer(arch, tmp_path, other, max_steps=2)
    first = FirstStepWeights()
    resumed.add_callback(first)
    with pytest.raises(FirstStepWeights.Stop):
        resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-1"))
    assert set(first.weights) == set(after) and all(torch.equal(first.weights[n], after[n]) for n in after)


class FirstStepWeights(TrainerCallback):
    """The weights a resumed run starts its first step from; the run stops there (step 2 is not needed)."""

    class Stop(Exception):
        pass

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self.weights = {n: p.detach().clone() for n, p in model.named_parameters()}
        raise self.Stop


# ----------------------------------------------------------------------------------------------- inspect, eval


@pytest.mark.parametrize("arch", SUPPORTED)
def test_inspect_and_eval_on_the_saved_model(arch, saved, tmp_path):
    folder = saved(arch)
    img = tmp_path / "img.png"
    Image.new("RGB", (56, 56), COLOURS[0]).save(img)
    argv = ["inspect", "--model", str(folder), "--image", str(img), "--prompt", "Colour?", "--completion", "Red"]
    assert cli_main([*argv, "--out", str(tmp_path / "inspect")]) == 0
    tokens = json.loads((tmp_path / "inspect" / "tokens.json").read_text())["tokens"]
    assert tokens and all(t["S"] >= 0 and math.isfinite(t["S"]) for t in tokens)

    fixtures.write_geo3k(tmp_path / "bench")  # two questions
    out = tmp_path / "eval"
    args = ["eval", "--model", str(folder), "--benchmark", "geo3k", "--data", str(tmp_path / "bench")]
    args += ["--protocol", "quick", "--k", "1", "--max-new-tokens", "3", "--out", str(out), "--backend", "hf"]
    assert cli_main([*args, "--batch_size", "2", "--no_progress"]) == 0
    assert len((out / "geo3k.jsonl").read_text().splitlines()) == 2
    assert json.loads((out / "summary.json").read_text())["model"] == str(folder)


# ----------------------------------------------------------------------------------------------- the matrix


def test_the_readme_support_matrix_is_the_one_generated_from_families():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert support_matrix() in readme
    assert (ROOT / "docs" / "families.md").read_text(encoding="utf-8").count(support_matrix()) == 1


def test_llava_onevision_refuses_two_images_in_a_question_at_start(tmp_path):
    """Training on them failed mid-run in the model's forward ('Image features and image tokens do not match')."""
    model, processor = tiny("llava_onevision")
    two = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Same?"}]}]
    one = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}]
    image = Image.new("RGB", (56, 56), "red")
    rows = Dataset.from_dict({"prompt": [one, two], "images": [[image], [image, image]], "answer": ["x", "y"]})
    with pytest.raises(ValueError, match=r"row 1: 2 images in one question: llava_onevision trains on at most 1 .*"
                       r"batch_num_images"):  # fmt: skip
        make_trainer("llava_onevision", tmp_path, model, train_dataset=rows)
