"""The demo's warm start (pgpo.demo.warmstart): taught completions, collator, cache key and reuse, LoRA merge."""

import dataclasses
import json

import pytest
import torch

pytest.importorskip("torchvision")
pytest.importorskip("gguf")

from pgpo.demo.warmstart import (  # noqa: E402
    MAX_NEW_TOKENS,
    SFTCollator,
    WarmStartConfig,
    evaluate_warm_start,
    taught,
    warm_start,
)
from pgpo.tasks import DEFAULT_FAMILIES, FAMILIES, check, make_split  # noqa: E402


@pytest.fixture(scope="module")
def vlm():
    from pgpo.vlm import load_pgpo_vlm

    return load_pgpo_vlm(image_size=64, vision_grid=2)


def _other(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, tuple):
        return value[:-1]
    if value is None:
        return "a system prompt"
    return value + " {answer}" if "{answer}" not in value else value + "!"


def test_cache_key_changes_with_every_setting():
    base = WarmStartConfig()
    assert WarmStartConfig().key() == base.key()
    keys = {base.key()}
    for f in dataclasses.fields(WarmStartConfig):
        value = getattr(base, f.name)
        other = ("projector" if value == "lora" else "lora") if f.name == "train" else _other(value)
        keys.add(dataclasses.replace(base, **{f.name: other}).key())
    assert len(keys) == len(dataclasses.fields(WarmStartConfig)) + 1
    with pytest.raises(ValueError, match="train"):
        WarmStartConfig(train="everything")


def test_taught_completions_are_long_enough_and_fit_the_generation_budget(vlm):
    _, processor = vlm
    tok = processor.tokenizer
    for family in sorted(FAMILIES):
        lengths = [
            len(tok(taught(s) + tok.eos_token, add_special_tokens=False)["input_ids"])
            for s in make_split("train", 64, seed=1, families=(family,), size=32)
        ]
        assert max(lengths) < MAX_NEW_TOKENS, family
    lengths = [len(tok(taught(s))["input_ids"]) for s in make_split("train", 256, seed=1, families=DEFAULT_FAMILIES)]
    assert sum(lengths) / len(lengths) >= 16


def test_collator_teaches_the_completion_in_the_configured_format(vlm):
    _, processor = vlm
    samples = make_split("train", 4, seed=0, families=("count", "bars"), size=64)
    for fmt in ("<think>{reasoning}</think> \\boxed{{{answer}}}", "\\boxed{{{answer}}}"):
        collate = SFTCollator(processor, "Q: {question}", "Be brief.", fmt)
        batch = collate(samples)
        assert batch["pixel_values"].shape == (4, 3, 64, 64)
        for i, s in enumerate(samples):
            labels = batch["labels"][i][batch["labels"][i] != -100]
            taught_text = processor.tokenizer.decode(labels)
            assert taught_text == taught(s, fmt) + "<|im_end|>"
            assert check(s, taught_text)
            prompt = processor.tokenizer.decode(batch["input_ids"][i][batch["attention_mask"][i] == 1])
            assert prompt.startswith("<|im_start|>system\nBe brief.<|im_end|>") and f"Q: {s['question']}" in prompt
            assert int((batch["input_ids"][i] == processor.image_token_id).sum()) == 4
    assert "</think>" not in processor.tokenizer.decode(batch["labels"][0][batch["labels"][0] != -100])


def test_evaluate_warm_start_reports_greedy_and_sampled_accuracy(vlm):
    model, processor = vlm
    samples = make_split("test", 3, seed=0, families=("count", "exists"), size=64)
    res = evaluate_warm_start(model, processor, samples, WarmStartConfig(), k=2, n_sampled=2, max_new_tokens=4)
    assert (res["n"], res["k"], res["n_sampled"]) == (3, 2, 2)
    assert set(res["per_family"]) == {"count", "exists"} and len(res["examples"]) == 3
    for key in ("accuracy", "chance", "format_ok", "sampled_accuracy", "pass_at_k", "spread"):
        assert 0.0 <= res[key] <= 1.0, key
    assert 0 < res["completion_tokens"] <= 4


def test_lora_merge_keeps_the_function(vlm):
    import copy

    from pgpo.demo.warmstart import _merge_lora, _trainable, completion_loss

    model, processor = vlm
    model = copy.deepcopy(model)
    cfg = WarmStartConfig(train="lora", lora_rank=4)
    groups = _trainable(model, cfg)
    with torch.no_grad():
        for p in groups[1]["params"]:
            p.normal_(std=0.02)  # LoRA's B starts at zero: make the adapters do something
    batch = SFTCollator(processor)(make_split("train", 2, seed=0, size=64))
    model.eval()
    with torch.no_grad():
        before = completion_loss(model, batch)
        _merge_lora(model)
        after = completion_loss(model, batch)
    assert not any("lora" in n for n, _ in model.named_parameters())
    torch.testing.assert_close(before, after, atol=1e-4, rtol=1e-4)


def test_warm_start_is_cached_by_its_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("PGPO_CACHE", str(tmp_path))
    from pgpo.paths import smollm2_dir

    # Reuse the developer's dequantised SmolLM2 instead of dequantising again: link it into the temporary root.
    monkeypatch.delenv("PGPO_CACHE")
    real = smollm2_dir()
    monkeypatch.setenv("PGPO_CACHE", str(tmp_path))
    if real.is_dir():
        smollm2_dir().symlink_to(real, target_is_directory=True)
    small = dict(image_size=64, vision_grid=2, vision_blocks=19)  # not the demo's defaults: a cheaper model
    cfg = WarmStartConfig(
        n_samples=4, steps=1, batch_size=2, train="lora", lora_rank=2, families=("count", "clock"), align_samples=8,
        **small,
    )  # fmt: skip
    logs: list[str] = []
    path = warm_start(cfg, log=logs.append)
    assert path == tmp_path / f"warmstart-{cfg.key()}"
    saved = json.loads((path / "warmstart.json").read_text())
    assert saved["train"] == "lora" and saved["families"] == ["count", "clock"] and "align_loss" in saved
    config = json.loads((path / "config.json").read_text())
    assert (config["image_size"], config["vision_grid"], config["vision_blocks"]) == (64, 2, 19)
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    again: list[str] = []
    assert warm_start(cfg, log=again.append) == path
    assert any("cached" in m for m in again) and (path / "model.safetensors").stat().st_mtime_ns == stamp
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp folders left
    # pgpo warm-start with the same settings (kebab-case flags too) reuses it, then measures it.
    from pgpo.commands.warm_start import main

    argv = ["--model", "smollm2", "--n_samples", "4", "--steps", "1", "--batch-size", "2", "--train", "lora"]
    argv += ["--lora_rank", "2"]
    argv += ["--families", "count,clock", "--align-samples", "8", "--n_eval", "2", "--n_sampled", "1", "--k", "2"]
    argv += ["--image_size", "64", "--vision_grid", "2", "--vision_blocks", "19"]
    assert main([*argv, "--json", str(tmp_path / "measured.json")]) == 0
    res = json.loads((tmp_path / "measured.json").read_text())
    assert res["path"] == str(path) and res["n"] == 2 and res["n_sampled"] == 1 and res["split"] == "val"
    assert res["warm_start"]["final_loss"] == saved["final_loss"]


def test_the_held_out_split_is_the_demos_test_split_whatever_the_seed():
    from pgpo.demo.run import DemoConfig, samples
    from pgpo.demo.warmstart import held_out_split, validation_split
    from pgpo.tasks.generate import image_digest

    def keys(split):
        return [(image_digest(s["image"]), s["question"]) for s in split]

    held_out = keys(held_out_split(6, WarmStartConfig()))
    assert keys(samples("test", 6, DemoConfig(seed=0))) == held_out == keys(samples("test", 6, DemoConfig(seed=3)))
    assert not set(held_out) & set(keys(validation_split(6, WarmStartConfig())))


def test_warm_start_flags_are_its_fields():
    """pgpo warm-start exposes every WarmStartConfig field (its prompts aside) with the same default;
    snake_case or kebab-case flags, families as a comma or a space list."""
    from pgpo.commands.parsing import parse_config
    from pgpo.demo.warmstart import DEMO_WARM_STARTS, WarmStartEvalConfig

    hidden = {"prompt_template", "system_prompt", "answer_format"}
    exposed = {f.name for f in dataclasses.fields(WarmStartEvalConfig)}
    assert {f.name for f in dataclasses.fields(WarmStartConfig)} - hidden <= exposed
    assert parse_config(WarmStartEvalConfig, [], "warmstart").warm_start_config() == DEMO_WARM_STARTS["words"]
    smol = parse_config(WarmStartEvalConfig, ["--model", "smollm2"], "warmstart").warm_start_config()
    assert smol == DEMO_WARM_STARTS["smollm2"] == WarmStartConfig()
    expected = dataclasses.replace(
        WarmStartConfig(), vision_blocks=19, image_size=64, train="projector", steps=30, families=("count", "clock")
    )
    for families in (["count,clock"], ["count", "clock"]):
        argv = ["--model", "smollm2", "--vision-blocks", "19", "--image_size", "64", "--train", "projector"]
        argv += ["--steps", "30", "--families"]
        cfg = parse_config(WarmStartEvalConfig, [*argv, *families, "--n-eval", "96"], "warmstart")
        assert cfg.warm_start_config() == expected and cfg.warm_start_config().key() == expected.key()
        assert cfg.n_eval == 96
    with pytest.raises(SystemExit):
        parse_config(WarmStartEvalConfig, ["--train", "everything"], "warmstart")
    with pytest.raises(SystemExit):  # the word LM starts from random weights: it trains whole
        parse_config(WarmStartEvalConfig, ["--train", "lora"], "warmstart")
    with pytest.raises(SystemExit):
        parse_config(WarmStartEvalConfig, ["--families", "count,nope"], "warmstart")
