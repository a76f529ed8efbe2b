"""Ground truth of the perception tokens: labelled spans of the taught chains, token labels, the statistics, and the
teacher-forced measurement on the tiny Qwen2.5-VL."""

import itertools
import math

import pytest
import torch

from pgpo.inspection.groundtruth import auroc, measure_perception, perception_stats, token_labels
from pgpo.tasks import FAMILIES, make_split
from pgpo.tasks.reasoning import (
    COMPLETION_FORMAT,
    LABELS,
    completion_spans,
    reasoning,
    reasoning_spans,
    taught_completion,
)

T, IM, Q, D = "template", "image", "question", "derived"


def _obj(colour, shape, x, y, r=0.1):
    return {"colour": colour, "shape": shape, "x": x, "y": y, "r": r}


# A hand-made count sample: two red shapes (listed in reading order: top-left circle first) and a blue distractor.
COUNT = {
    "family": "count",
    "question": "How many red shapes are there?",
    "answer": "2",
    "choices": ["1", "2", "3", "4"],
    "scene": {
        "objects": [
            _obj("red", "triangle", 0.8, 0.2),
            _obj("blue", "square", 0.5, 0.5),
            _obj("red", "circle", 0.2, 0.2),
        ]
    },
}
COUNT_SPANS = [
    ("The ", T),
    ("red", Q),
    (" shapes are a ", T),
    ("circle", IM),
    (" and a ", T),
    ("triangle", IM),
    (", so there are ", T),
    ("2", D),
    (".", T),
]
COMPARE = {
    "family": "compare",
    "question": "Are there more yellow or red shapes?",
    "answer": "yellow",
    "choices": ["yellow", "red"],
    "scene": {
        "objects": [
            _obj("yellow", "circle", 0.2, 0.2),
            _obj("red", "square", 0.5, 0.2),
            _obj("yellow", "square", 0.8, 0.5),
            _obj("green", "triangle", 0.2, 0.8),
            _obj("yellow", "triangle", 0.5, 0.8),
        ]
    },
}
COMPARE_SPANS = [
    ("I count ", T),
    ("3", IM),
    (" ", T),
    ("yellow", Q),
    (" shapes and ", T),
    ("1", IM),
    (" ", T),
    ("red", Q),
    (" shape, so there are more ", T),
    ("yellow", D),
    (" shapes.", T),
]


@pytest.fixture(scope="module")
def samples():
    families = tuple(FAMILIES)
    return make_split("train", 40 * len(families), seed=3, families=families, size=16)


# ----------------------------------------------------------------------------------------------- spans
def test_spans_join_to_the_reasoning_for_every_family(samples):
    seen = set()
    for s in samples:
        spans = reasoning_spans(s)
        assert "".join(t for t, _ in spans) == reasoning(s)
        assert all(text and label in LABELS for text, label in spans)
        assert all(a[1] != b[1] for a, b in itertools.pairwise(spans)), spans  # canonical: neighbours merged
        assert any(label == IM for _, label in spans), (s["family"], spans)
        for text, label in spans:
            if label != T:  # content spans carry no outer whitespace
                assert text == text.strip(), spans
            if label == Q:
                assert text in s["question"].rstrip("?").split(), (text, s["question"])
        full = completion_spans(s)
        assert "".join(t for t, _ in full) == taught_completion(s)
        assert full[0] == ("<think>", T) or full[0][0].startswith("<think>")
        assert full[-2:] == [(s["answer"], D), ("}", T)]
        seen.add(s["family"])
    assert seen == set(FAMILIES)


def test_hand_written_spans():
    assert reasoning(COUNT) == "The red shapes are a circle and a triangle, so there are 2."
    assert reasoning_spans(COUNT) == COUNT_SPANS
    assert reasoning(COMPARE) == "I count 3 yellow shapes and 1 red shape, so there are more yellow shapes."
    assert reasoning_spans(COMPARE) == COMPARE_SPANS
    one = {**COUNT, "answer": "1", "scene": {"objects": COUNT["scene"]["objects"][:2]}}
    assert reasoning_spans(one) == [
        ("The ", T),
        ("only", IM),
        (" ", T),
        ("red", Q),
        (" shape is a ", T),
        ("triangle", IM),
        (", so there is ", T),
        ("1", D),
        (".", T),
    ]
    assert completion_spans(COUNT) == [
        ("<think>The ", T),
        *COUNT_SPANS[1:-1],
        (".</think> \\boxed{", T),
        ("2", D),
        ("}", T),
    ]


def test_entailed_colours_letters_and_hours_are_derived():
    shape = {
        "family": "shape",
        "question": "Which shape is green?",
        "answer": "triangle",
        "scene": {
            "objects": [
                _obj("blue", "circle", 0.2, 0.2),
                _obj("red", "square", 0.5, 0.2),
                _obj("green", "triangle", 0.8, 0.8),
            ]
        },
    }
    # The first two colours are not green, so the triangle's must be: entailed.
    assert [(t, lab) for t, lab in reasoning_spans(shape) if lab != T] == [
        ("blue", IM),
        ("red", IM),
        ("green", D),
        ("green", Q),
        ("triangle", D),
    ]
    asked_first = {**shape, "question": "Which shape is blue?", "answer": "circle"}
    assert [lab for _, lab in reasoning_spans(asked_first) if lab != T] == [IM, IM, IM, Q, D]
    bars = {
        "family": "bars",
        "question": "Which bar is the shortest?",
        "answer": "A",
        "scene": {
            "bars": [{"label": "A", "height": 0.2}, {"label": "B", "height": 0.6}, {"label": "C", "height": 0.4}]
        },
    }
    assert [(t, lab) for t, lab in reasoning_spans(bars) if lab != T] == [
        ("B", IM),
        ("C", IM),
        ("A", D),
        ("shortest", Q),
        ("A", D),
    ]
    clock = {"family": "clock", "question": "What hour does the clock show?", "answer": "3", "scene": {"hour": 3}}
    assert reasoning_spans(clock) == [
        ("The hour hand points to the ", T),
        ("right", IM),
        (", at the ", T),
        ("3", D),
        (".", T),
    ]
    seven = {**clock, "family": "clock12", "answer": "7", "scene": {"hour": 7}}
    assert reasoning_spans(seven) == [("The hour hand points at the ", T), ("7", IM), (".", T)]


def test_completion_spans_follow_the_answer_format():
    assert completion_spans(COUNT, "\\boxed{{{answer}}}") == [("\\boxed{", T), ("2", D), ("}", T)]
    fmt = "<think>{reasoning}</think> Answer: {answer}"
    spans = completion_spans(COUNT, fmt)
    assert "".join(t for t, _ in spans) == fmt.format(reasoning=reasoning(COUNT), answer="2")
    assert COMPLETION_FORMAT.format(reasoning=reasoning(COUNT), answer="2") == "".join(
        t for t, _ in completion_spans(COUNT)
    )
    with pytest.raises(ValueError, match="unknown field"):
        completion_spans(COUNT, "{reasoning} {final}")


# ----------------------------------------------------------------------------------------------- token labels
HAND_TEXT = "<think>The red shapes are a circle and a triangle, so there are 2.</think> \\boxed{2}<|im_end|>"
HAND_SPANS = [*completion_spans(COUNT), ("<|im_end|>", T)]
HEAD = [("<think>", T), ("The", T), (" red", Q), (" shapes", T), (" are", T), (" a", T), (" circle", IM), (" and", T)]
HEAD += [(" a", T), (" triangle", IM), (",", T), (" so", T), (" there", T), (" are", T)]
TAIL = [(".", T), ("</think>", T), (" \\", T), ("boxed", T), ("{", T), ("2", D), ("}", T), ("<|im_end|>", T)]


def _check_offsets(tok, text):
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    pieces = [text[a:b] for a, b in enc["offset_mapping"]]
    assert pieces == [tok.decode([i]) for i in enc["input_ids"]]  # the offsets are where each token's text is
    assert "".join(pieces) == text
    return pieces


def test_token_labels_with_the_qwen_tokenizer():
    from transformers import AutoTokenizer

    from pgpo.models.tiny_qwen import qwen_tokenizer_dir

    tok = AutoTokenizer.from_pretrained(str(qwen_tokenizer_dir()))
    assert "".join(t for t, _ in HAND_SPANS) == HAND_TEXT
    pieces = _check_offsets(tok, HAND_TEXT)
    # Qwen splits " 2" into a lone space and the digit: the space goes with its template span.
    assert list(zip(pieces, token_labels(tok, HAND_TEXT, HAND_SPANS))) == [*HEAD, (" ", T), ("2", D), *TAIL]
    # A token overlapping an image span is image; otherwise the span holding most of its (non-space) characters.
    assert token_labels(tok, "a circle", [("a cir", T), ("cle", IM)]) == [T, IM]
    assert token_labels(tok, "a circle", [("a ", T), ("circ", Q), ("le", D)]) == [T, Q]
    with pytest.raises(ValueError, match="join"):
        token_labels(tok, "a circle", [("a", T)])


def test_token_labels_with_the_word_tokenizer():
    from pgpo.vlm.words import build_word_tokenizer, task_corpus

    tok = build_word_tokenizer([*task_corpus(samples_per_family=3), HAND_TEXT])
    pieces = _check_offsets(tok, HAND_TEXT)
    assert tok.unk_token_id not in tok(HAND_TEXT, add_special_tokens=False)["input_ids"]
    assert list(zip(pieces, token_labels(tok, HAND_TEXT, HAND_SPANS))) == [*HEAD, (" 2", D), *TAIL]


# ----------------------------------------------------------------------------------------------- statistics
def _brute_auroc(scores, positives):
    pos = [s for s, p in zip(scores, positives) if p]
    neg = [s for s, p in zip(scores, positives) if not p]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


def test_auroc_is_the_pairwise_probability_with_ties_half():
    g = torch.Generator().manual_seed(0)
    for n in (2, 7, 50, 300):
        scores = torch.randint(0, 6, (n,), generator=g).double() / 4  # many ties
        positives = torch.rand(n, generator=g) < 0.3
        positives[0], positives[1] = True, False
        assert auroc(scores, positives) == pytest.approx(_brute_auroc(scores.tolist(), positives.tolist()), abs=1e-12)
    assert auroc([0.1, 0.2, 0.9, 0.8], [False, False, True, True]) == 1.0
    assert auroc([0.1, 0.2, 0.9, 0.8], [True, True, False, False]) == 0.0
    assert auroc([0.3] * 5, [True, False, True, False, False]) == 0.5
    assert math.isnan(auroc([0.1, 0.2], [True, True]))


def test_perception_stats_by_hand():
    S = torch.tensor([[0.0, 0.5, 0.1, 0.2], [0.3, 0.3, 0.0, 99.0]])  # the second response has 3 tokens + padding
    Imp = torch.tensor([[0.0, 1.0, 0.3, 0.5], [1.0, 1.0, 0.0, 99.0]])
    w = [[0.0, 2.0, 0.9, 1.1], [1.5, 1.5, 0.0, 99.0]]
    labels = [[T, IM, IM, D], [Q, IM, T]]
    st = perception_stats(S, Imp, w, labels, tau=0.4)
    assert (st["n_responses"], st["n_tokens"], st["n_image"]) == (2, 7, 3)
    # S: image .5, .1, .3 vs rest 0, .2, .3, 0 -> wins 4 + 2 + (3 + 1/2) = 9.5 of 12 pairs.
    assert st["auroc"] == pytest.approx(9.5 / 12)
    # I: image 1, .3, 1 vs rest 0, .5, 1, 0 -> 3.5 + 2 + 3.5 = 9 of 12.
    assert st["auroc_importance"] == pytest.approx(9 / 12)
    # Gate I >= .4: tokens 2, 4 (response 1) and 1, 2 (response 2); image among them: 2.
    assert st["gate_precision"] == pytest.approx(2 / 4)
    assert st["gate_recall"] == pytest.approx(2 / 3)
    assert st["gated_share"] == pytest.approx(4 / 7)
    assert st["image_weight_share"] == pytest.approx((2.0 + 0.9 + 1.5) / 7.0)
    assert st["image_token_share"] == pytest.approx(3 / 7)
    assert st["n_by_label"] == {IM: 3, Q: 1, D: 1, T: 2}
    assert st["mean_S"] == pytest.approx({IM: 0.3, Q: 0.3, D: 0.2, T: 0.0})
    assert st["mean_weight"] == pytest.approx({IM: 4.4 / 3, Q: 1.5, D: 1.1, T: 0.0})
    no_image = perception_stats([[0.1, 0.2]], [[0.0, 1.0]], [[0.0, 2.0]], [[T, D]])
    assert math.isnan(no_image["auroc"]) and math.isnan(no_image["gate_recall"]) and no_image["gate_precision"] == 0


# ----------------------------------------------------------------------------------------------- the measurement
def test_measure_perception_on_the_tiny_qwen():
    from pgpo.inspection import score_tokens
    from pgpo.models import load_model
    from pgpo.tasks.hf import DEFAULT_SYSTEM_PROMPT, prompt_text

    model, processor = load_model("tiny-qwen", device="cpu")
    tok = processor.tokenizer
    families = tuple(FAMILIES)
    samples = make_split("test", len(families), seed=1, families=families, size=64)
    result = measure_perception(model, processor, samples, batch_size=4)  # 3 batches, the last one short

    lengths = [len(tok(taught_completion(s) + tok.eos_token, add_special_tokens=False)["input_ids"]) for s in samples]
    labels = [token_labels(tok, taught_completion(s), completion_spans(s)) + [T] for s in samples]
    overall = result["overall"]
    assert result["n_samples"] == len(samples) and overall["n_responses"] == len(samples)
    assert overall["n_tokens"] == sum(lengths)
    assert overall["n_image"] == sum(row.count(IM) for row in labels) > 0
    assert set(result["families"]) == {s["family"] for s in samples}
    assert sum(f["n_tokens"] for f in result["families"].values()) == sum(lengths)
    for key in ("auroc", "auroc_importance", "gate_recall", "image_weight_share", "image_token_share"):
        assert math.isfinite(overall[key]), key
    assert all(math.isfinite(v) for v in overall["mean_S"].values())
    for s, r, n, lab in zip(samples, result["responses"], lengths, labels):
        assert r["family"] == s["family"] and r["labels"] == lab and len(r["S"]) == len(r["I"]) == len(r["w"]) == n
        assert "".join(r["tokens"]) == taught_completion(s) + tok.eos_token
        assert all(math.isfinite(x) and x >= 0 for x in r["S"])
        assert sum(r["w"]) == pytest.approx(n)  # Eq. 7 within each response

    # An independent path: one unpadded sample through pgpo inspect's scorer gives the same S, I and w~.
    s, r = samples[-1], result["responses"][-1]
    ref = score_tokens(
        model, processor, [s["image"]], prompt_text(s), taught_completion(s), system_prompt=DEFAULT_SYSTEM_PROMPT
    )
    assert ref.token_ids == r["token_ids"]
    assert r["S"] == pytest.approx(ref.scores, rel=1e-3, abs=1e-7)
    assert r["w"] == pytest.approx(ref.weights, rel=1e-3, abs=1e-4)
