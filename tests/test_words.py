"""The demo's word-level language model: its tokenizer over the tasks' language, and the VLM built on it."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("torchvision")

from pgpo.tasks import FAMILIES, make_split  # noqa: E402
from pgpo.tasks.hf import SHORT_PROMPT_TEMPLATE, prompt_text, to_messages  # noqa: E402
from pgpo.tasks.reasoning import describe, taught_completion  # noqa: E402
from pgpo.vlm.words import ADDED_TOKENS, SPECIAL_TOKENS, build_word_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def tok():
    return build_word_tokenizer()


def _texts(samples):
    for s in samples:
        yield from (prompt_text(s), prompt_text(s, SHORT_PROMPT_TEMPLATE), taught_completion(s), describe(s))


def test_every_task_text_encodes_without_unk_and_decodes_to_itself(tok):
    # other seeds and the other image split than the corpus the vocabulary was collected from
    samples = make_split("test", 40 * len(FAMILIES), seed=99, families=tuple(FAMILIES), size=32)
    for text in _texts(samples):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids, text
        assert tok.decode(ids) == text


def test_vocabulary_is_small_and_the_markers_are_single_tokens(tok):
    assert 100 < len(tok) < 300
    for marker in (*SPECIAL_TOKENS, *ADDED_TOKENS):
        assert len(tok(marker, add_special_tokens=False)["input_ids"]) == 1, marker
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<pad>" and tok.bos_token is None
    # a completion is a few dozen words: "<think>" one token, each word one token, punctuation its own
    completion = "<think>The only red shape is a circle, so there is 1.</think> \\boxed{1}"
    pieces = tok.convert_ids_to_tokens(tok(completion, add_special_tokens=False)["input_ids"])
    assert pieces[:4] == ["<think>", "The", "Ġonly", "Ġred"] and "</think>" in pieces
    # the EOS is skipped by skip_special_tokens, <think> is kept (it is text the graders read)
    ids = tok(completion + tok.eos_token, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == completion


def test_unknown_words_become_unk_rather_than_failing(tok):
    ids = tok("How many zebras are there?", add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id in ids and len(ids) == 6


@pytest.fixture(scope="module")
def word_vlm():
    from pgpo.vlm import load_pgpo_vlm

    shape = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128}
    return load_pgpo_vlm(image_size=64, vision_grid=2, language="words", lm_shape=shape, seed=3)


def test_word_vlm_is_a_small_tied_llama_over_the_word_vocabulary(word_vlm):
    model, processor = word_vlm
    tc = model.config.text_config
    assert tc.model_type == "llama" and tc.hidden_size == 64 and tc.num_hidden_layers == 2
    assert tc.vocab_size == len(processor.tokenizer) == model.get_input_embeddings().weight.shape[0]
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert model.generation_config.eos_token_id == processor.tokenizer.eos_token_id
    n_lm = sum(p.numel() for p in model.model.language_model.parameters())
    assert n_lm < 200_000


def test_word_vlm_default_shape_has_a_few_million_parameters():
    from pgpo.vlm.build import word_lm

    lm, tok = word_lm(seed=0)
    assert 2e6 < sum(p.numel() for p in lm.parameters()) < 8e6
    # the seed decides the weights
    again, _ = word_lm(seed=0)
    other, _ = word_lm(seed=1)
    w = lm.model.layers[0].mlp.up_proj.weight
    assert torch.equal(w, again.model.layers[0].mlp.up_proj.weight)
    assert not torch.equal(w, other.model.layers[0].mlp.up_proj.weight)


def test_word_vlm_generates_saves_and_loads(word_vlm, tmp_path):
    from pgpo.vlm import load_pgpo_vlm

    model, processor = word_vlm
    sample = make_split("test", 1, seed=1, families=("count",), size=64)[0]
    prompt = processor.apply_chat_template(to_messages(sample), add_generation_prompt=True)
    batch = processor(images=[[sample["image"]]], text=[prompt], return_tensors="pt")
    assert int((batch["input_ids"] == model.config.image_token_id).sum()) == 4
    assert processor.tokenizer.unk_token_id not in batch["input_ids"][0].tolist()
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=5, do_sample=False)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded, loaded_processor = load_pgpo_vlm(tmp_path)
    again = loaded_processor(images=[[sample["image"]]], text=[prompt], return_tensors="pt")
    assert torch.equal(again["input_ids"], batch["input_ids"])
    with torch.no_grad():
        assert torch.equal(loaded.generate(**again, max_new_tokens=5, do_sample=False), out)


def test_the_word_lm_must_train_whole_in_the_warm_start():
    from pgpo.demo.warmstart import WarmStartConfig

    with pytest.raises(ValueError, match="train must be 'lm'"):
        WarmStartConfig(language="words", train="lora")
    with pytest.raises(ValueError, match="language must be one of"):
        from pgpo.vlm import build_pgpo_vlm

        build_pgpo_vlm(language="klingon")
