"""Answer extraction, answer checking (math-verify + multiple choice) and the TRL reward functions."""

from __future__ import annotations

import pytest

from pgpo.rewards import accuracy_reward, completion_text, format_reward
from pgpo.scoring import (
    answer_letter,
    answer_letters,
    boxed_contents,
    check_answer,
    extract_answer,
    last_boxed,
    score_completion,
)

# (prediction as extracted, gold, choices, answer_type, precision, expected). Each row is a decision; the ones that
# could go either way are commented.
CHECK_TABLE = [
    # math-verify equivalences
    (r"\frac{1}{2}", "0.5", None, None, None, True),
    ("0.5", r"\frac{1}{2}", None, None, None, True),
    (r"\dfrac{3}{4}", "3/4", None, None, None, True),
    (r"2\sqrt{3}", r"\sqrt{12}", None, None, None, True),
    ("x=2", "2", None, None, None, True),
    ("2", "x=2", None, None, None, True),
    ("3.0", "3", None, None, None, True),
    ("1.50", "1.5", None, None, None, True),
    (r"\{2,1\}", r"\{1,2\}", None, None, None, True),
    ("3", "4", None, None, None, False),
    ("-3", "3", None, None, None, False),
    ("", "3", None, None, None, False),
    ("3", "", None, None, None, False),
    # units are ignored (decision)
    ("5 cm", "5", None, None, None, True),
    ("5", r"5 \text{ cm}", None, None, None, True),
    ("12.0 cm^2", "12", None, None, None, True),
    ("60°", "60", None, None, None, True),
    (r"60^\circ", "60", None, None, None, True),
    (r"17", r"\boxed{17^\circ}", None, None, None, True),  # ViRL39K's own example: gold is boxed
    ("6 m", "7", None, None, None, False),
    # percent on one side only is ignored (decision)
    ("50", r"50\%", None, None, None, True),
    ("0.5", "50%", None, None, None, True),
    # sqrt(2) vs a 4-decimal approximation: math-verify rounds to 6 decimals, so this is WRONG (decision)
    (r"\sqrt{2}", "1.4142", None, None, None, False),
    ("1.4142", r"\sqrt{2}", None, None, None, False),
    ("1.414214", r"\sqrt{2}", None, None, None, True),
    (r"\frac{\pi}{2}", "1.5708", None, None, None, False),
    # float rules: DynaMath (abs tolerance 1e-3) and MathVista (round to `precision` decimals)
    ("0.5004", "0.5", None, "float", None, True),
    ("0.502", "0.5", None, "float", None, False),
    ("1.23", "1.2345", None, "float", 2, True),
    ("1.24", "1.2345", None, "float", 2, False),
    ("1.2", "1.25", None, "float", 1, True),  # round(1.25, 1) == 1.2 in binary floating point
    # plain strings
    ("Yes", "yes", None, None, None, True),
    ("no", "yes", None, None, None, False),
    # multiple choice, gold is a letter
    ("B", "B", None, None, None, True),
    ("(B) 3", "B", None, None, None, True),
    ("B.", "B", None, None, None, True),
    ("B: 3", "B", None, None, None, True),
    ("b", "B", None, None, None, True),
    (r"\text{B}", "B", None, None, None, True),
    ("Option B", "B", None, None, None, True),
    ("The correct option is (B)", "B", None, None, None, True),
    ("C", "B", None, None, None, False),
    ("A triangle", "A", None, None, None, False),  # a word, not the letter A
    ("3", "B", ["1", "3", "5"], None, None, True),  # the option text itself
    ("5", "B", ["1", "3", "5"], None, None, False),
    ("(C) 5", "B", ["1", "3", "5"], None, None, False),
    ("E", "B", ["1", "3", "5"], None, None, False),  # no option E
    ("3", "B", None, None, None, False),  # option text without the options: cannot tell
    # multiple choice, several letters (LogicVista)
    ("A, C", "A, C", None, None, None, True),
    ("C, A", "A, C", None, None, None, True),
    ("A and C", "A, C", None, None, None, True),
    ("A", "A, C", None, None, None, False),
    # multiple choice, gold is the option text (MathVista)
    ("B", "green", ["red", "green", "blue"], None, None, True),
    ("(B) green", "green", ["red", "green", "blue"], None, None, True),
    ("green", "green", ["red", "green", "blue"], None, None, True),
    ("A", "green", ["red", "green", "blue"], None, None, False),
]


@pytest.mark.parametrize("pred,gold,choices,answer_type,precision,expected", CHECK_TABLE)
def test_check_answer_table(pred, gold, choices, answer_type, precision, expected):
    assert check_answer(pred, gold, choices, answer_type, precision) is expected


@pytest.mark.parametrize(
    "completion,expected",
    [
        (r"<think>so x=1</think> The answer is \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),
        (r"\boxed{1} first, then \boxed{\frac{a}{\sqrt{b}}}", r"\frac{a}{\sqrt{b}}"),  # last box, nested braces
        (r"\boxed{3} then a truncated \boxed{4", "3"),  # an unclosed box is skipped
        (r"\fbox{7}", "7"),
        ("<answer> 42 </answer>", "42"),
        ("<answer>x</answer> and <answer>y</answer>", "y"),
        ("Thinking...\nThe answer is 42.", "42"),
        ("blah\nFinal answer: $3$", "3"),
        ("first line\nlast line 9.", "last line 9"),
        ("<think>The answer is 3</think>", ""),  # nothing after the reasoning
        ("", ""),
        ("   \n ", ""),
    ],
)
def test_extract_answer(completion, expected):
    assert extract_answer(completion) == expected


def test_boxed_helpers():
    assert boxed_contents(r"a \boxed{1} b \boxed{ {2} } c") == ["1", " {2} "]
    assert last_boxed("no box") is None
    assert boxed_contents(None) == []


@pytest.mark.parametrize(
    "text,letter",
    [
        ("B", "B"),
        ("(B)", "B"),
        ("B.", "B"),
        ("(B) 3", "B"),
        ("B) 3", "B"),
        ("**B**", "B"),
        ("$B$", "B"),
        ("A cat", None),
    ],
)
def test_answer_letter(text, letter):
    assert answer_letter(text) == letter


def test_answer_letter_respects_number_of_choices():
    assert answer_letter("D", n_choices=3) is None
    assert answer_letters("A, D", n_choices=3) is None
    assert answer_letters("A, C") == frozenset("AC")


@pytest.mark.parametrize("weird", [None, 5, 3.5, [], {}, object(), "\\boxed{", "\\boxed{}" * 50, "}{" * 1000])
def test_scoring_never_raises(weird):
    assert check_answer(weird, "3") is False
    assert check_answer("3", weird) is False
    assert isinstance(extract_answer(weird), str)


def test_score_completion():
    assert score_completion(r"<think>..</think> \boxed{B}", "B", ["1", "2"]) == ("B", True)
    assert score_completion("I think it is 4", "3") == ("I think it is 4", False)


# ----------------------------------------------------------------------------------------------------------------------
# Rewards
# ----------------------------------------------------------------------------------------------------------------------


def _conv(text):
    return [{"role": "assistant", "content": text}]


def test_accuracy_reward_conversational_and_plain():
    completions = [
        _conv(r"<think>half</think> \boxed{\frac{1}{2}}"),
        _conv(r"<think>..</think> \boxed{3}"),
        r"plain string \boxed{0.5}",
        [{"role": "assistant", "content": [{"type": "text", "text": r"\boxed{(B) 3}"}]}],  # content parts
        _conv("no answer at all"),
    ]
    answers = ["0.5", "4", r"\boxed{\frac{1}{2}}", "B", "7"]
    assert accuracy_reward(completions, answers) == [1.0, 0.0, 1.0, 1.0, 0.0]


def test_accuracy_reward_uses_choices_column():
    completions = [_conv(r"\boxed{green}"), _conv(r"\boxed{B}"), _conv(r"\boxed{C}")]
    choices = [["red", "green"], ["red", "green"], None]
    assert accuracy_reward(completions, answer=["B", "green", "C"], choices=choices) == [1.0, 1.0, 1.0]


def test_accuracy_reward_accepts_trainer_kwargs():
    rewards = accuracy_reward(
        completions=[_conv(r"\boxed{2}")],
        answer=["2"],
        prompts=[[{"role": "user", "content": "q"}]],
        completion_ids=[[1, 2]],
        image=[None],
        trainer_state=None,
        log_extra=None,
        log_metric=None,
    )
    assert rewards == [1.0]


def test_accuracy_reward_missing_answer_column_is_a_clear_error():
    with pytest.raises(ValueError, match="column named 'answer'"):
        accuracy_reward([_conv(r"\boxed{2}")], solution=["2"])


def test_accuracy_reward_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="'answer' has 1 values for 2 completions"):
        accuracy_reward([_conv("a"), _conv("b")], ["1"])


WEIRD_COMPLETIONS = [None, 7, "", [], [{}], [{"role": "assistant"}], [{"content": None}], {"content": 3}, [[1, 2]]]


def test_rewards_never_raise_on_weird_completions():
    n = len(WEIRD_COMPLETIONS)
    assert accuracy_reward(WEIRD_COMPLETIONS, ["1"] * n) == [0.0] * n
    assert format_reward(WEIRD_COMPLETIONS) == [0.0] * n


@pytest.mark.parametrize(
    "text,expected",
    [
        (r"<think>reasoning</think> so \boxed{3}", 1.0),
        ("<think>\nmulti\nline\n</think>\n\nThe answer is $\\boxed{\\frac{1}{2}}$.", 1.0),
        (r"  <think>x</think>\boxed{3}  ", 1.0),
        (r"<think>reasoning</think> the answer is 3", 0.0),  # no box
        (r"<think>\boxed{3}</think>", 0.0),  # box inside the reasoning only
        (r"\boxed{3}", 0.0),  # no reasoning
        (r"preamble <think>x</think> \boxed{3}", 0.0),  # text before <think>
        (r"<think>a</think><think>b</think> \boxed{3}", 0.0),  # two reasoning blocks
        (r"<think>x</think> \boxed{3", 0.0),  # unbalanced box
    ],
)
def test_format_reward(text, expected):
    assert format_reward([_conv(text)]) == [expected]
    assert format_reward([text]) == [expected]


def test_completion_text_forms():
    assert completion_text("s") == "s"
    assert completion_text([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]) == "a"
    assert completion_text({"role": "assistant", "content": [{"type": "text", "text": "x"}, "y"]}) == "xy"
