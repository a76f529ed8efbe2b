"""A word-level tokenizer over the language of :mod:`pgpo.tasks` (~150 entries), for the demo's small word LM.

Built with Hugging Face ``tokenizers``: GPT-2's byte-level pre-tokenizer (words keep their leading space, ``Ġred``;
punctuation and digits are their own pieces) and a ``WordLevel`` model whose vocabulary is every piece of the tasks'
prompts, taught completions and captions (all families), so every text of the tasks encodes without ``<unk>`` and
decodes back to exactly itself. ``<think>`` / ``</think>`` are single (non-special) tokens; the chat markers
``<|im_start|>`` / ``<|im_end|>`` (the end of a turn, so the EOS) and ``<pad>`` / ``<unk>`` are special.

Text outside the tasks' language (say a free-form ``pgpo inspect --prompt``) still encodes, its unknown words as
``<unk>``. A 49k-entry vocabulary (SmolLM2's) costs a small LM more in its head than in its body
(``shared/design/demo-cost.md``); this one costs nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from pgpo.data import PAPER_SYSTEM_PROMPT

UNK, PAD, IM_START, IM_END = "<unk>", "<pad>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (UNK, PAD, IM_START, IM_END)
ADDED_TOKENS = ("<think>", "</think>")
# Samples per family drawn to collect the vocabulary (every word of every template appears far below this).
CORPUS_SAMPLES_PER_FAMILY = 300
CORPUS_SEED = 12345


def task_corpus(samples_per_family: int = CORPUS_SAMPLES_PER_FAMILY, seed: int = CORPUS_SEED) -> list[str]:
    """Every kind of text the tasks produce: chat roles, the system prompt, each family's prompts (paper and short
    templates), taught completions, captions and answers, over ``samples_per_family`` samples of every family."""
    from pgpo.tasks import FAMILIES, make_split
    from pgpo.tasks.hf import SHORT_PROMPT_TEMPLATE, prompt_text
    from pgpo.tasks.reasoning import describe, taught_completion

    texts = ["system\n", "user\n", "assistant\n", "\n", PAPER_SYSTEM_PROMPT, "Describe the image.", " empty"]
    families = tuple(FAMILIES)
    for s in make_split("train", samples_per_family * len(families), seed=seed, families=families, size=32):
        texts += [prompt_text(s), prompt_text(s, SHORT_PROMPT_TEMPLATE), taught_completion(s), describe(s)]
        texts += [s["answer"], " " + s["answer"], *(" " + c for c in s.get("choices") or [])]
    return texts


def _pieces(texts: Iterable[str], pre_tokenizer) -> set[str]:
    split = re.compile("(" + "|".join(map(re.escape, ADDED_TOKENS + SPECIAL_TOKENS)) + ")")
    found: set[str] = set()
    for text in texts:
        for chunk in split.split(text):
            if chunk and chunk not in ADDED_TOKENS + SPECIAL_TOKENS:
                found.update(piece for piece, _ in pre_tokenizer.pre_tokenize_str(chunk))
    return found


def build_word_tokenizer(texts: Iterable[str] | None = None):
    """A ``PreTrainedTokenizerFast`` whose vocabulary is the pieces of ``texts`` (default :func:`task_corpus`),
    sorted, after the special tokens; EOS ``<|im_end|>``, padding ``<pad>``, no BOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.ByteLevel(add_prefix_space=False)
    pieces = _pieces(task_corpus() if texts is None else texts, pre)
    vocab = {w: i for i, w in enumerate([*SPECIAL_TOKENS, *sorted(pieces - set(SPECIAL_TOKENS))])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tok.add_tokens(list(ADDED_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token=UNK, pad_token=PAD, eos_token=IM_END, padding_side="left"
    )
