"""Answer extraction and grading (the paper's mathruler grader, pgpo's lenient checker) and the TRL reward functions."""

from __future__ import annotations

import re

import pytest

from pgpo.answers import (
    answer_letter,
    answer_letters,
    boxed_contents,
    check_answer,
    extract_answer,
    last_boxed,
    normalize_tags,
    paper_extract,
    paper_grade,
    score_completion,
    unwrap_boxed,
)
from pgpo.rewards import (
    accuracy_reward,
    completion_text,
    format_reward,
    paper_accuracy_reward,
    paper_format_reward,
    paper_reward,
)

# ----------------------------------------------------------------------------------------------------------------------
# The paper's grader
# ----------------------------------------------------------------------------------------------------------------------

# (completion, gold, correct) written from the paper's protocol (PAPO-Eval ``compute_accuracy_boxed_math``: tags
# normalised, LAST \boxed{}, mathruler ``grade_answer``). Each row is checked against pgpo's grader AND against an
# oracle that calls mathruler directly the way PAPO-Eval does (``papo_oracle`` below).
PAPER_TABLE = [
    (r"<think>x=3</think> The answer is \boxed{3}.", "3", True),
    (r"<think>...</think>\boxed{4}", "3", False),
    (r"\boxed{3}", "3", True),  # no think block: the grader only reads the box
    ("The answer is 3.", "3", False),  # no box, never credited
    (r"<think>so it is \boxed{3}", "3", True),  # truncated <think>: a box inside it still counts (PAPO-Eval does)
    ("<think>the answer is 3", "3", False),  # truncated <think> without a box
    (r"<think>..</think> \boxed{3} then \boxed{4", "3", False),  # unclosed LAST box: the earlier box is not used
    (r"<think>..</think> \boxed{3", "3", False),  # unclosed box
    (r"<think>..</think> \boxed{\frac{1}{2}}", r"\frac{1}{2}", True),
    (r"<think>..</think> \boxed{\dfrac{1}{2}}", r"\frac{1}{2}", True),
    (r"<think>..</think> \boxed{1/2}", r"\frac{1}{2}", True),
    (r"<think>..</think> \boxed{0.5}", r"\frac{1}{2}", True),
    (r"<think>..</think> \boxed{\frac{2}{4}}", r"\frac{1}{2}", False),  # unreduced fraction
    (r"<think>..</think> \boxed{2\sqrt{3}}", r"2\sqrt{3}", True),
    (r"<think>..</think> \boxed{\sqrt{12}}", r"2\sqrt{3}", True),
    (r"<think>..</think> \boxed{3.46}", r"2\sqrt{3}", False),  # an approximation is wrong
    (r"<think>..</think> \boxed{60^\circ}", "60", True),
    (r"<think>..</think> \boxed{60^{\circ}}", "60", True),
    (r"<think>..</think> \boxed{60°}", "60", False),  # the unicode degree sign is not normalised
    (r"<think>..</think> \boxed{60 degrees}", "60", True),
    (r"<think>..</think> \boxed{60}", r"60^\circ", True),
    (r"<think>..</think> \boxed{5 cm}", "5", True),
    (r"<think>..</think> \boxed{5\text{ cm}}", "5", True),
    (r"<think>..</think> \boxed{B}", "B", True),
    (r"<think>..</think> \boxed{b}", "B", True),  # case-insensitive
    (r"<think>..</think> \boxed{(B)}", "B", True),  # MATH normalisation drops the parentheses
    (r"<think>..</think> \boxed{B. 40°}", "B", False),  # letter plus option text is not the letter
    (r"<think>..</think> \boxed{\text{B}}", "B", True),
    (r"<think>..</think> \boxed{C}", "B", False),
    (r"<think>..</think> \boxed{40°}", "B", False),  # the option text is not the letter
    (r"<think>..</think> \boxed{A, C}", "A, C", True),
    (r"<think>..</think> \boxed{C, A}", "A, C", False),  # order matters
    (r"<think>..</think> \boxed{J}", "J", True),  # MMMU-Pro has ten options
    (r"<think>..</think> \boxed{x=2}", "2", True),  # MATH normalisation drops a short "x="
    (r"<think>..</think> \boxed{2}", "2.0", True),
    (r"<think>..</think> \boxed{2.50}", "2.5", True),
    (r"<think>..</think> \boxed{1,000}", "1000", True),
    (r"<think>..</think> \boxed{50\%}", "50", True),
    (r"<think>..</think> \boxed{-3}", "3", False),
    (r"<think>..</think> \boxed{}", "3", False),
    (r"<think>..</think> \boxed{3} and finally \boxed{5}", "5", True),
    (r"<think>..</think> \boxed{3} and finally \boxed{5}", "3", False),  # the LAST box
    (r"< think >..< / think > \boxed{3}", "3", True),  # spaces around < > / removed first
    (r"<think>..</think> \boxed{\{1,2\}}", r"\{1,2\}", True),
    (r"<think>..</think> \boxed{(1,2)}", "(1,2)", True),
    (r"<think>..</think> \boxed{(2,1)}", "(1,2)", False),
    (r"<think>..</think> \boxed{\pi}", r"\pi", True),
    (r"<think>..</think> \boxed{3.14}", r"\pi", False),
    (r"<think>..</think> \fbox{3}", "3", False),  # only \boxed counts
    (r"<think>..</think> \boxed{ 3 }", "3", True),
    (r"<think>..</think> \boxed{0.5004}", "0.5", False),  # no float tolerance (DynaMath's 1e-3 is not used)
    (r"<think>..</think> \boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt{3}}{2}", True),
]


def papo_oracle(completion: str, gold: str) -> bool:
    """PAPO-Eval's ``compute_accuracy_boxed_math``, written out with mathruler's own functions."""
    from mathruler.grader import extract_boxed_content, grade_answer

    predict = re.sub(r"\s*(<|>|/)\s*", r"\1", completion)
    return bool(grade_answer(extract_boxed_content(predict), gold))


def test_paper_table_is_large_enough():
    assert len(PAPER_TABLE) >= 40
    assert sum(v for _, _, v in PAPER_TABLE) >= 15 and sum(not v for _, _, v in PAPER_TABLE) >= 15


@pytest.mark.parametrize("completion,gold,expected", PAPER_TABLE)
def test_paper_grader_table(completion, gold, expected):
    assert papo_oracle(completion, gold) is expected  # the table is the protocol's verdict
    assert paper_grade(completion, gold)[1] is expected  # and pgpo's grader gives it


def test_paper_grader_extraction():
    assert paper_extract(r"a \boxed{1} b \boxed{\frac{a}{\sqrt{b}}} c") == r"\frac{a}{\sqrt{b}}"
    assert paper_extract(r"\boxed{3} then \boxed{4") is None
    assert paper_extract("no box") is None
    assert paper_grade("no box", "None") == (None, False)  # mathruler's "None" string is not an answer here
    assert normalize_tags("< / think >x") == "</think>x"


@pytest.mark.parametrize("weird", [None, 5, [], "\\boxed{", "\\boxed{}" * 50, "}{" * 1000, "\\boxed{" + "{" * 500])
def test_paper_grader_never_raises(weird):
    assert paper_grade(weird, "3")[1] is False
    assert paper_grade("\\boxed{3}", weird)[1] is False


def test_unwrap_boxed():
    assert unwrap_boxed(r"\boxed{17^\circ}") == r"17^\circ"
    assert unwrap_boxed(r"\boxed{\frac{1}{2}}") == r"\frac{1}{2}"
    assert unwrap_boxed(" 5 ") == "5" and unwrap_boxed(None) == ""
    assert paper_grade(r"\boxed{17}", r"\boxed{17}")[1] is True  # ViRL39K-style gold


# ----------------------------------------------------------------------------------------------------------------------
# The lenient checker
# ----------------------------------------------------------------------------------------------------------------------

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
        (r"\boxed{3} then a truncated \boxed{4", ""),  # a truncated last box is no answer (the paper's rule too)
        ("<think>so the answer is 3", ""),  # reasoning that never closed is no answer
        (r"<think>so \boxed{3}", "3"),
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
    assert last_boxed(r"a \boxed{1} b \boxed{ {2} } c") == "{2}"
    assert last_boxed("no box") is None and last_boxed(None) is None
    assert boxed_contents(None) == []
    assert score_completion(r"\fbox{7}", "7")[1] is True  # the lenient checker unwraps \fbox


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
def test_lenient_never_raises(weird):
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


# ----------------------------------------------------------------------------------------------------------------------
# The paper's rewards
# ----------------------------------------------------------------------------------------------------------------------


def vppo_format_oracle(response: str) -> bool:
    """VPPO-RL / PAPO ``examples/reward_function/math.py`` format_reward, after ``compute_score``'s tag fix."""
    response = re.sub(r"\s*(<|>|/)\s*", r"\1", response)
    return re.fullmatch(re.compile(r"<think>.*</think>.*\\boxed\{.*\}.*", re.DOTALL), response) is not None


FORMAT_CASES = [
    (r"<think>reasoning</think> so \boxed{3}", True),
    ("<think>\nmulti\nline\n</think>\n\nThe answer is $\\boxed{\\frac{1}{2}}$.", True),
    (r"<think>x</think>\boxed{3", False),  # the paper's regex needs a closing brace somewhere after \boxed{
    (r"<think>x</think>\boxed{3 and later }", True),  # ... anywhere, not the box's own
    (r"preamble <think>x</think> \boxed{3}", False),  # fullmatch: nothing before <think>
    (r"<think>a</think><think>b</think> \boxed{3}", True),  # the paper's regex allows two think blocks
    (r"<think>\boxed{3}</think>", False),
    (r"< think >x< / think > \boxed{3}", True),
    (r"\boxed{3}", False),
    ("<think>unfinished", False),
]


@pytest.mark.parametrize("text,expected", FORMAT_CASES)
def test_paper_format_reward(text, expected):
    assert vppo_format_oracle(text) is expected
    assert paper_format_reward([text]) == [float(expected)]
    assert paper_format_reward([_conv(text)]) == [float(expected)]


def test_paper_accuracy_reward_is_the_eval_grader():
    completions = [c for c, _, _ in PAPER_TABLE]
    golds = [g for _, g, _ in PAPER_TABLE]
    expected = [1.0 if v else 0.0 for _, _, v in PAPER_TABLE]
    assert paper_accuracy_reward(completions, golds) == expected
    assert paper_accuracy_reward([_conv(c) for c in completions], answer=golds, image=[None] * len(golds)) == expected


def test_paper_reward_weights_accuracy_and_format():
    completions = [r"<think>a</think> \boxed{3}", r"\boxed{3}", r"<think>a</think> \boxed{4}", "3"]
    assert paper_reward(completions, ["3"] * 4) == pytest.approx([1.0, 0.9, 0.1, 0.0])
    with pytest.raises(ValueError, match="column named 'answer'"):
        paper_reward(completions, solution=["3"] * 4)
    assert paper_accuracy_reward(WEIRD_COMPLETIONS, ["1"] * len(WEIRD_COMPLETIONS)) == [0.0] * len(WEIRD_COMPLETIONS)


def test_paper_rewards_are_registered_by_name():
    from pgpo.rewards import REWARD_FUNCTIONS, reward_functions

    assert reward_functions(["paper", "paper_accuracy", "paper_format", "accuracy", "format"]) == [
        paper_reward,
        paper_accuracy_reward,
        paper_format_reward,
        accuracy_reward,
        format_reward,
    ]
    assert {"paper", "accuracy", "format", "tasks"} <= set(REWARD_FUNCTIONS)
