"""Tests of the procedural visual reasoning tasks (pgpo.tasks)."""

from __future__ import annotations

import re
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from pgpo.tasks import (
    DEFAULT_FAMILIES,
    DEFAULT_PROMPT_TEMPLATE,
    FAMILIES,
    chance_report,
    check,
    correctness_reward,
    generate,
    generate_one,
    get_family,
    load_easy_vqa,
    make_split,
    split_of_image,
    to_hf_dataset,
)
from pgpo.tasks.check import NUMBER_WORDS
from pgpo.tasks.generate import image_digest

ALL = sorted(FAMILIES)
FAST = settings(max_examples=15, deadline=None)


def _key(sample) -> tuple:
    return image_digest(sample["image"]), sample["question"], sample["answer"], tuple(sample["choices"])


@pytest.mark.parametrize("family", ALL)
def test_answers_verify_and_wrong_choices_fail(family):
    for s in generate(family, len(get_family(family).targets()), seed=3, size=64):
        assert set(s) == {"image", "question", "answer", "family", "choices", "scene"}
        assert s["family"] == family
        assert s["answer"] in s["choices"]
        assert check(s, s["answer"]), (s["question"], s["answer"])
        assert check(s, f"\\boxed{{{s['answer']}}}")
        assert check(s, f"The answer is {s['answer']}.")
        assert check(family, s["answer"], answer=s["answer"])
        for wrong in s["choices"]:
            if wrong != s["answer"]:
                assert not check(s, wrong), (s["question"], s["answer"], wrong)
                assert not check(s, f"\\boxed{{{wrong}}}")


@pytest.mark.parametrize("family", ALL)
def test_images_are_rgb_of_the_configured_size(family):
    for size in (64, 96):
        for s in generate(family, 3, seed=0, size=size):
            assert isinstance(s["image"], Image.Image)
            assert s["image"].mode == "RGB" and s["image"].size == (size, size)
            # Not blank: something was drawn on the background.
            assert len(s["image"].getcolors(maxcolors=size * size)) > 5


@FAST
@given(size=st.integers(32, 160), family=st.sampled_from(ALL), index=st.integers(0, 50))
def test_any_size(size, family, index):
    s = generate_one(family, index, seed=1, size=size)
    assert s["image"].size == (size, size) and s["image"].mode == "RGB"


@pytest.mark.parametrize("family", ALL)
def test_deterministic_by_seed_and_prefix_stable(family):
    a = generate(family, 6, seed=7, size=48)
    b = generate(family, 6, seed=7, size=48)
    assert [_key(s) for s in a] == [_key(s) for s in b]
    assert [_key(s) for s in generate(family, 3, seed=7, size=48)] == [_key(s) for s in a[:3]]
    c = generate(family, 6, seed=8, size=48)
    assert [_key(s) for s in a] != [_key(s) for s in c]


@pytest.mark.parametrize("family", ALL)
def test_answers_balanced(family):
    fam = get_family(family)
    blocks = 3
    samples = generate(family, blocks * len(fam.targets()), seed=11, size=32)
    counts = Counter(s["answer"] for s in samples)
    assert set(counts) == set(fam.vocabulary)
    assert len(set(counts.values())) == 1, counts  # every answer equally often


@FAST
@given(n=st.integers(1, 40), seed=st.integers(0, 10**6))
def test_balance_within_one_block(n, seed):
    """Any prefix is balanced up to one unfinished block."""
    fam = get_family("count")
    counts = Counter(s["answer"] for s in generate(fam, n, seed=seed, size=32))
    full = n // len(fam.targets())
    assert all(full <= counts[a] <= full + 1 for a in fam.vocabulary)


def test_train_test_disjoint():
    train = make_split("train", 160, seed=0, size=48)
    test = make_split("test", 160, seed=0, size=48)
    test_other_seed = make_split("test", 80, seed=1, size=48)
    assert all(split_of_image(s["image"]) == "train" for s in train)
    assert all(split_of_image(s["image"]) == "test" for s in test + test_other_seed)
    train_imgs = {image_digest(s["image"]) for s in train}
    assert not train_imgs & {image_digest(s["image"]) for s in test + test_other_seed}


def test_make_split_spreads_over_families_and_is_seeded():
    samples = make_split("train", 2 * len(DEFAULT_FAMILIES) + 3, seed=5, size=32)
    counts = Counter(s["family"] for s in samples)
    assert set(counts) == set(DEFAULT_FAMILIES)
    assert sorted(counts.values(), reverse=True) == [3] * 3 + [2] * (len(DEFAULT_FAMILIES) - 3)
    again = make_split("train", 2 * len(DEFAULT_FAMILIES) + 3, seed=5, size=32)
    assert [_key(s) for s in samples] == [_key(s) for s in again]
    with pytest.raises(ValueError):
        make_split("val", 4)


@pytest.mark.parametrize(
    "reply",
    ["3", " 3 ", "\\boxed{3}", "$\\boxed{3}$", "3 shapes", "three", "Three.", "There are three red shapes.",
     "<answer>3</answer>", "The answer is: 3", "3.0", "I count 2... no, \\boxed{three}"],
)  # fmt: skip
def test_number_matching_accepts(reply):
    assert check("count", reply, answer="3")
    assert check({"family": "count", "answer": "3", "choices": ["1", "2", "3", "4"]}, reply)


@pytest.mark.parametrize("reply", ["4", "\\boxed{4}", "four", "", "none", "\\boxed{3} ... \\boxed{4}", "30"])
def test_number_matching_rejects(reply):
    assert not check("count", reply, answer="3")


@FAST
@given(n=st.integers(0, 20), upper=st.booleans(), pad=st.sampled_from(["", " ", "\n", "  "]))
def test_number_words(n, upper, pad):
    word = {int(v): k for k, v in NUMBER_WORDS.items()}[n]
    word = word.upper() if upper else word
    assert check("count", f"{pad}{word}{pad}", answer=str(n))
    assert check("clock12", f"It shows {word} o'clock.", answer=str(n))
    assert not check("count", word, answer=str(n + 1))


@pytest.mark.parametrize(
    ("family", "gold", "reply", "ok"),
    [
        ("compare", "red", "Red.", True),
        ("compare", "red", "  RED ", True),
        ("compare", "red", "\\boxed{red}", True),
        ("compare", "red", "There are more reds.", True),
        ("compare", "red", "red or blue", False),
        ("compare", "red", "blue", False),
        ("compare", "red", "reddish", False),
        ("spatial", "above", "It is on top.", True),
        ("spatial", "below", "under the square", True),
        ("spatial", "left", "The circle is to the left of the square.", True),
        ("spatial", "left", "right", False),
        ("exists", "no", "No, there isn't.", True),
        ("exists", "no", "yes", False),
        ("exists", "yes", "Yes", True),
        ("shape", "circle", "a circle", True),
        ("shape", "circle", "circles", True),
        ("shape", "circle", "square", False),
        ("bars", "B", "B", True),
        ("bars", "B", "b", True),
        ("bars", "B", "Bar B is the tallest.", True),
        ("bars", "B", "bar b", True),
        ("bars", "B", "\\boxed{B}", True),
        ("bars", "B", "A", False),
        ("bars", "B", "A or B", False),
        ("bars", "A", "a bar", False),
    ],
)
def test_word_and_letter_matching(family, gold, reply, ok):
    assert check(family, reply, answer=gold) is ok


def test_check_needs_answer_with_family_name():
    with pytest.raises(ValueError):
        check("count", "3")


def test_correctness_reward_trl_signature():
    completions = [
        [{"role": "assistant", "content": "\\boxed{2}"}],
        [{"role": "assistant", "content": [{"type": "text", "text": "blue"}]}],
        "left",
    ]
    rewards = correctness_reward(
        completions,
        answer=["2", "red", "left"],
        family=["count", "compare", "spatial"],
        choices=[None] * 3,
        foo=[1] * 3,
    )
    assert rewards == [1.0, 0.0, 1.0]


def test_to_hf_dataset_format():
    samples = make_split("train", 8, seed=0, size=48)
    ds = to_hf_dataset(samples)
    assert set(ds.column_names) == {"prompt", "image", "answer", "family", "choices"}
    assert len(ds) == 8
    row = ds[0]
    system, msg = row["prompt"]
    assert system["role"] == "system" and system["content"][0]["text"] == "You are a helpful assistant."
    assert msg["role"] == "user"
    assert [p["type"] for p in msg["content"]] == ["image", "text"]
    assert msg["content"][1]["text"] == DEFAULT_PROMPT_TEMPLATE.format(question=samples[0]["question"])
    assert msg["content"][1]["text"] == (  # the paper's wording
        f"{samples[0]['question']}\n\nYou first think through the reasoning process as an internal monologue, enclosed "
        "within <think> </think> tags. Then, provide your final answer enclosed within \\boxed{}."
    )
    (only_user,) = to_hf_dataset(samples[:1], system_prompt=None)[0]["prompt"]
    assert only_user["role"] == "user"
    assert isinstance(row["image"], Image.Image) and row["image"].mode == "RGB" and row["image"].size == (48, 48)
    assert row["answer"] == samples[0]["answer"] and row["family"] == samples[0]["family"]
    assert row["choices"] == samples[0]["choices"]
    assert check(row, row["answer"])
    custom = to_hf_dataset(samples[:2], prompt_template="Q: {question} Options: {choices}.")
    text = custom[0]["prompt"][-1]["content"][1]["text"]
    assert text == f"Q: {samples[0]['question']} Options: {', '.join(samples[0]['choices'])}."


def test_text_only_predictor_does_not_beat_chance():
    train = make_split("train", 1200, seed=0, size=32)
    test = make_split("test", 600, seed=0, size=32)
    report = chance_report(train, test)
    assert set(report) == set(DEFAULT_FAMILIES)
    for row in report.values():
        assert row.chance == pytest.approx(1 / row.n_choices)
        assert not row.beats_chance, row


def test_chance_report_detects_a_text_leak():
    # A leaky "family" whose question gives the answer away must be flagged.
    leaky = [
        {"family": "leak", "question": f"Is it {a}?", "answer": a, "choices": ["x", "y"]}
        for a in "xy" * 50
        for _ in "ab"
    ]
    (row,) = chance_report(leaky).values()
    assert row.text_only == 1.0 and row.beats_chance


def test_easy_vqa_adapter():
    samples = load_easy_vqa("test", 30, seed=0, size=48)
    assert len(samples) == 30
    counts = Counter(s["family"] for s in samples)
    assert counts == {"easyvqa_yesno": 10, "easyvqa_shape": 10, "easyvqa_color": 10}
    for s in samples:
        assert s["image"].mode == "RGB" and s["image"].size == (48, 48)
        assert s["answer"] in s["choices"]
        assert check(s, s["answer"]) and check(s["family"], s["answer"].upper(), answer=s["answer"])
        assert not check(s, next(c for c in s["choices"] if c != s["answer"]))
    yesno = Counter(s["answer"] for s in samples if s["family"] == "easyvqa_yesno")
    assert yesno == {"yes": 5, "no": 5}
    # Yes/no come in pairs per question text, so the wording does not give the answer away.
    per_question = Counter((s["question"], s["answer"]) for s in samples if s["family"] == "easyvqa_yesno")
    assert all(per_question[(q, "yes")] == per_question[(q, "no")] for q, _ in per_question)
    assert [s["question"] for s in load_easy_vqa("test", 30, seed=0, size=48)] == [s["question"] for s in samples]


def _blobs(image: Image.Image, rgb, tol: float = 60.0, min_area: int = 12) -> list[int]:
    """Areas of the 4-connected blobs of pixels within ``tol`` of colour ``rgb`` (a tiny flood fill, no scipy)."""
    w, h = image.size
    px = image.load()
    inside = {
        (x, y)
        for y in range(h)
        for x in range(w)
        if sum((a - b) ** 2 for a, b in zip(px[x, y], rgb, strict=True)) <= tol * tol
    }
    areas = []
    while inside:
        stack, area = [inside.pop()], 0
        while stack:
            x, y = stack.pop()
            area += 1
            for nb in ((x + 1, y), (x - 1, y), (x, y + 1), (x, y - 1)):
                if nb in inside:
                    inside.remove(nb)
                    stack.append(nb)
        if area >= min_area:
            areas.append(area)
    return areas


def test_pictures_match_answers():
    """The drawn scenes really show the answer: blob counts for count/compare, blob sizes for largest."""
    from pgpo.tasks.draw import COLOURS

    for s in generate("count", 8, seed=2, size=96):
        colour = s["question"].split()[2]
        assert len(_blobs(s["image"], COLOURS[colour])) == int(s["answer"]), s["question"]
    for s in generate("compare", 8, seed=2, size=96):
        a, b = s["choices"]
        na, nb = len(_blobs(s["image"], COLOURS[a])), len(_blobs(s["image"], COLOURS[b]))
        assert na != nb and s["answer"] == (a if na > nb else b)
    for s in generate("largest", 4, seed=2, size=96):
        biggest = {c: max(_blobs(s["image"], rgb), default=0) for c, rgb in COLOURS.items()}
        assert max(biggest, key=biggest.get) == s["answer"]


def _centre(image: Image.Image, rgb, tol: float = 60.0) -> tuple[float, float]:
    """Centroid (unit coordinates) of the pixels within ``tol`` of ``rgb``."""
    w, h = image.size
    px = image.load()
    pts = [(x, y) for y in range(h) for x in range(w) if sum((a - b) ** 2 for a, b in zip(px[x, y], rgb)) <= tol**2]
    return sum(x for x, _ in pts) / len(pts) / w, sum(y for _, y in pts) / len(pts) / h


@pytest.mark.parametrize("family", ALL)
def test_taught_completion_is_in_the_paper_format_and_right(family):
    from pgpo.rewards import has_think_then_box
    from pgpo.tasks.reasoning import taught_completion

    for s in generate(family, 2 * len(get_family(family).targets()), seed=4, size=64):
        text = taught_completion(s)
        assert text.startswith("<think>") and text.endswith(f"</think> \\boxed{{{s['answer']}}}"), text
        assert has_think_then_box(text)
        assert check(s, text), text
        for wrong in s["choices"]:
            if wrong != s["answer"]:  # the checker reads the last box, not the chain's words
                assert not check(s, text.replace(f"\\boxed{{{s['answer']}}}", f"\\boxed{{{wrong}}}"))


def test_taught_reasoning_states_what_the_image_shows():
    """The chains' colours, counts, sizes and positions agree with the pixels (not only with the recorded scene)."""
    from pgpo.tasks.draw import COLOURS, SHAPES
    from pgpo.tasks.reasoning import reasoning

    def said(text, word):
        return len(re.findall(rf"\b{word}\b", text))

    for s in generate("count", 12, seed=5, size=96):
        colour, text = s["question"].split()[2], reasoning(s)
        n = len(_blobs(s["image"], COLOURS[colour]))
        assert sum(said(text, shape) for shape in SHAPES) == n == int(s["answer"]), text
        assert text.endswith(f"so there {'is' if n == 1 else 'are'} {n}."), text
    for s in generate("compare", 12, seed=5, size=96):
        a, b = s["choices"]
        text = reasoning(s)
        na, nb = len(_blobs(s["image"], COLOURS[a])), len(_blobs(s["image"], COLOURS[b]))
        assert text.startswith(f"I count {na} {a} shape") and f" and {nb} {b} shape" in text, text
    for s in generate("largest", 8, seed=5, size=96):
        biggest = max(COLOURS, key=lambda c: max(_blobs(s["image"], COLOURS[c]), default=0))
        assert reasoning(s).startswith(f"The big shape is a {biggest} "), reasoning(s)
    for family in ("exists", "shape"):
        for s in generate(family, 12, seed=5, size=96):
            text = reasoning(s)
            for colour, rgb in COLOURS.items():
                listed = said(text.split(".")[0].split(", so")[0], colour)  # what was seen, before the verdict
                assert listed == len(_blobs(s["image"], rgb)), (text, colour)
    for s in generate("spatial", 12, seed=5, size=96):
        text = reasoning(s)
        (subject, reference) = (o["shape"] for o in s["scene"]["objects"])
        c1, c2 = (_centre(s["image"], COLOURS[o["colour"]]) for o in s["scene"]["objects"])
        if s["scene"]["objects"][0]["colour"] != s["scene"]["objects"][1]["colour"]:
            axis = 0 if s["answer"] in ("left", "right") else 1
            first = c1[axis] < c2[axis]
            assert first == (s["answer"] in ("left", "above")), (text, c1, c2)
        assert text.startswith(f"The {subject} is ") and f" and the {reference} is " in text
    for s in generate("clock", 8, seed=5, size=64):
        assert f"at the {s['answer']}." in reasoning(s)
    for s in generate("bars", 8, seed=5, size=64):
        ranked = [b["label"] for b in sorted(s["scene"]["bars"], key=lambda b: -b["height"])]
        assert s["answer"] == (ranked[0] if "tallest" in s["question"] else ranked[-1])
        assert ", ".join(ranked[:-1]) + " and " + ranked[-1] in reasoning(s)


def test_reasoning_needs_a_scene():
    from pgpo.tasks.reasoning import reasoning

    s = generate_one("count", 0, size=32)
    with pytest.raises(ValueError, match="scene"):
        reasoning({**s, "scene": {}})
    with pytest.raises(ValueError, match="template"):
        reasoning({**s, "family": "easyvqa_color"})


# ----------------------------------------------------------------------------------------------- pgpo tasks
def test_pgpo_tasks_help_lists_the_snake_case_flags(capsys):
    from pgpo.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["tasks", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: pgpo tasks")
    assert all(f"--{flag}" in out for flag in ("n_train", "n_test", "seed", "size", "families", "easy_vqa"))


def _chance_table(out: str) -> str:
    """The printed chance table, the heading with its timing aside."""
    return out[out.index("# Chance table") :].split("\n", 1)[1]


def test_pgpo_tasks_prints_the_chance_table_and_saves_examples(tmp_path, capsys):
    from pgpo.commands.tasks import main

    argv = ["--n_train", "20", "--n_test", "10", "--size", "32", "--save_examples", str(tmp_path)]
    assert main([*argv, "--families", "count,clock"]) == 0
    out = capsys.readouterr().out
    assert "# Chance table: 20 train / 10 test, seed 0, 32px" in out
    rows = [line.split(" | ")[0].strip("| ") for line in out.splitlines() if re.match(r"\| (count|clock) \|", line)]
    assert rows == ["clock", "count"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tasks_clock.png", "tasks_count.png"]
    assert main([*argv, "--families", "count", "clock"]) == 0  # a space list parses as the comma list
    assert _chance_table(capsys.readouterr().out) == _chance_table(out)
    assert main(["--n-train", "20", "--n-test", "10", "--size", "32", "--families", "count,clock"]) == 0  # kebab-case
    assert _chance_table(capsys.readouterr().out) == _chance_table(out)


def test_python_m_pgpo_tasks_is_pgpo_tasks():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-m", "pgpo", "tasks", "--help"], cwd=root, capture_output=True, text=True, check=True
    ).stdout
    assert out.startswith("usage: pgpo tasks") and "--n_train" in out


def test_pgpo_tasks_refuses_an_unknown_family(capsys):
    from pgpo.commands.tasks import main

    with pytest.raises(SystemExit) as exit_:
        main(["--families", "count,nope"])
    assert exit_.value.code == 2
    assert "unknown ['nope']" in capsys.readouterr().err
