r"""Answer extraction and grading: the ONE home of both, shared by evaluation, rewards, data and the tasks checker.

Two graders, never mixed in one number:

* **paper** (the default everywhere a number is compared with the paper): exactly PAPO-Eval's
  ``compute_accuracy_boxed_math`` (``papo_eval/eval_utils.py`` in xhguo7/PAPO-Eval, which the PGPO paper, VPPO and PAPO
  report with) -- whitespace around ``<``, ``>`` and ``/`` removed (:func:`normalize_tags`), the content of the LAST
  ``\boxed{`` (:func:`last_boxed`), compared with ``mathruler.grader.grade_answer(answer, gold)``. An unclosed last
  ``\boxed{`` (a truncated completion) is never credited, even when an earlier box was closed. A completion without a
  box is never credited (PAPO-Eval passes mathruler's ``"None"`` string on; pgpo does not, so a gold answer that is
  literally "None" is not matched by an unboxed completion -- the only difference, see ``docs/eval.md``).
  :func:`paper_grade` / :func:`paper_extract`.
* **lenient** (pgpo's own checker, a second labelled column): :func:`extract_answer` narrows a completion to its final
  answer -- the last ``\boxed{...}`` (:func:`last_boxed`; a truncated last box gives ``""``), else the last
  ``<answer>...</answer>``, else the text after the last "answer is" / "Answer:", else the last non-empty line; text
  before a closing ``</think>`` is ignored by the fallbacks and a completion whose ``<think>`` never closes gives ``""``.
  :func:`check_answer` then compares with the gold answer:

  * **Multiple choice, gold is a letter** (MathVerse, MathVision, We-Math, LogicVista, DynaMath, MMK12, MMMU-Pro):
    the prediction's letter is read from ``B``, ``(B)``, ``B.``, ``B: 3``, ``(B) 3``, ``\text{B}``, ``Option B``; when
    the choices are known, the option text itself ("3") also counts. LogicVista-style multi-letter golds (``A, C``)
    need the same set of letters.
  * **Multiple choice, gold is the option text** (MathVista): a predicted letter is mapped to its option first.
  * **Everything else**: normalised string equality, then math-verify (``parse`` with LaTeX + expression
    extraction on ``\boxed{answer}``, then ``verify(gold, pred)`` -- gold first, the function is not symmetric).

Lenient decisions worth knowing (all pinned by ``tests/test_answers.py``):

* Units are ignored: ``5 cm`` == ``5``, ``12.0 cm^2`` == ``12``, ``60°`` == ``60^\circ`` == ``60``.
* A percent sign is ignored when only one side has it: ``50\%`` == ``50`` (MathVista writes bare numbers).
* math-verify compares numbers after rounding to 6 decimals, so ``\sqrt{2}`` == ``1.414214`` but
  ``\sqrt{2}`` != ``1.4142``: a 4-digit approximation of an exact answer is *wrong*. Benchmarks that ask for a rounded
  float say so: ``answer_type="float"`` with a ``precision`` (MathVista: round both to that many decimals) or without
  one (DynaMath: absolute tolerance 1e-3, DynaMath's own rule).
* An empty or missing prediction is wrong; so is an empty gold.

Every function here is total: it never raises on odd input (a comparison error counts as wrong).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Sequence

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
MAX_ANSWER_CHARS = 1000  # longer "answers" are not answers; keeps math-verify fast
DYNAMATH_FLOAT_TOLERANCE = 1e-3
_EXTRACTION_CONFIG = (LatexExtractionConfig(), ExprExtractionConfig())

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_ANSWER_TAG_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_ANSWER_IS_RE = re.compile(
    r"(?:final\s+answer|answer)\s*(?:is\s*[:：]?|[:：])\s*(.+)",
    re.IGNORECASE,
)
_WRAPPER_RE = re.compile(r"\\(?:text|textbf|mathrm|mathbf|textit|mbox|operatorname|fbox)\s*\{([^{}]*)\}")
_UNIT_RE = re.compile(
    r"\s*(?:square\s+|sq\.?\s*|cubic\s+)?"
    r"(?:cm|mm|km|m|dm|in|inch(?:es)?|ft|feet|foot|yd|yards?|meters?|metres?|centimeters?|millimeters?|kilometers?|"
    r"miles?|units?|degrees?|deg|°|kg|g|mg|l|ml|s|sec|seconds?|min|minutes?|h|hours?|days?|years?|"
    r"dollars?|cents?|yuan|people|persons?)"
    r"(?:\s*\^\s*\{?\s*[23]\s*\}?|²|³)?\s*\.?\s*$",
    re.IGNORECASE,
)
_NUMBER_START_RE = re.compile(r"^\s*[-+]?\s*(?:\d|\.\d|\\frac|\\dfrac|\\sqrt)")
_FLOAT_RE = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$")
_MULTI_LETTER_RE = re.compile(r"^\(?([A-Z])\)?(?:\s*(?:,|、|and|&)\s*\(?([A-Z])\)?)+$")

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------------------
# The last \boxed{} (one rule for the whole package)
# ----------------------------------------------------------------------------------------------------------------------

_BOXED_OPEN = "\\boxed{"
_TAG_SPACE_RE = re.compile(r"\s*(<|>|/)\s*")


def last_boxed(text: str) -> str | None:
    r"""Content of the LAST ``\boxed{`` in ``text`` (nested braces allowed, surrounding whitespace stripped), or None.

    None when there is no ``\boxed{`` or when the last one is never closed (a truncated completion): an earlier,
    closed box is *not* used instead. This is the rule of mathruler's ``extract_boxed_content`` (PAPO-Eval, VPPO,
    EasyR1), which returns the string ``"None"`` where this returns None.
    """
    if not isinstance(text, str):
        return None
    start = text.rfind(_BOXED_OPEN)
    if start < 0:
        return None
    depth = 0
    begin = start + len(_BOXED_OPEN)
    for i in range(begin, len(text)):
        char = text[i]
        if char == "{":
            depth += 1
        elif char == "}":
            if depth == 0:
                return text[begin:i].strip()
            depth -= 1
    return None


def boxed_contents(text: str) -> list[str]:
    r"""Contents of every balanced ``\boxed{...}`` / ``\fbox{...}`` in ``text``, in order (nested braces allowed).

    ``\boxed 5`` (no braces) yields ``5``; an unclosed box is skipped. Used by the lenient format check; the final
    answer is always :func:`last_boxed`.
    """
    if not isinstance(text, str):
        return []
    out: list[str] = []
    pos = 0
    while True:
        hits = [(text.find(cmd, pos), cmd) for cmd in _BOX_COMMANDS]
        hits = [(i, cmd) for i, cmd in hits if i >= 0]
        if not hits:
            return out
        start, cmd = min(hits)
        i = start + len(cmd)
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            depth, j = 0, i
            while j < len(text):
                if text[j] == "{":
                    depth += 1
                elif text[j] == "}":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            if depth == 0 and j < len(text):
                out.append(text[i + 1 : j])
                pos = j + 1
                continue
            pos = i + 1  # unbalanced: skip this one
        elif i > start + len(cmd) and i < len(text):  # "\boxed 5"
            m = re.match(r"[^\s$]+", text[i:])
            if m:
                out.append(m.group(0))
            pos = i + 1
        else:
            pos = i


def unwrap_boxed(answer: object) -> str:
    r"""A gold answer as a string without one outer ``\boxed{...}`` (ViRL39K stores ``\boxed{17}``); else unchanged."""
    text = "" if answer is None else str(answer).strip()
    if text.startswith(_BOXED_OPEN):
        inner = last_boxed(text)
        if inner is not None and text.endswith("}"):
            return inner
    return text


# ----------------------------------------------------------------------------------------------------------------------
# The paper's grader (PAPO-Eval / VPPO: mathruler on the last \boxed{})
# ----------------------------------------------------------------------------------------------------------------------


def normalize_tags(text: str) -> str:
    """PAPO-Eval's first step: whitespace around ``<``, ``>`` and ``/`` removed (``< / think >`` -> ``</think>``)."""
    return _TAG_SPACE_RE.sub(r"\1", text) if isinstance(text, str) else ""


def paper_extract(completion: str) -> str | None:
    r"""The answer the paper's grader reads: :func:`last_boxed` of the tag-normalised completion (None: no answer)."""
    return last_boxed(normalize_tags(completion))


def paper_grade(completion: str, gold: str) -> tuple[str | None, bool]:
    r"""``(extracted answer or None, correct)`` under the paper's protocol: ``grade_answer(last \boxed{}, gold)``.

    ``gold`` is compared as given (benchmark answers are bare; one outer ``\boxed{}`` is removed, see
    :func:`unwrap_boxed`). A completion without a closed last box is wrong. Never raises.
    """
    pred = paper_extract(completion)
    if pred is None:
        return None, False
    gold_text = unwrap_boxed(gold)
    try:
        from mathruler.grader import grade_answer

        return pred, bool(grade_answer(pred, gold_text))
    except Exception:  # mathruler guards sympy itself; anything else is a wrong answer, not a crash
        logger.debug("mathruler failed on pred=%r gold=%r", pred, gold_text, exc_info=True)
        return pred, False


# ----------------------------------------------------------------------------------------------------------------------
# The lenient checker: extraction
# ----------------------------------------------------------------------------------------------------------------------


def extract_answer(completion: str) -> str:
    """The final answer in a completion for the lenient checker (see the module docstring); ``""`` if there is none."""
    if not isinstance(completion, str) or not completion.strip():
        return ""
    text = completion.strip()
    if _BOXED_OPEN in text:
        boxed = last_boxed(text)
        return "" if boxed is None else boxed[:MAX_ANSWER_CHARS]  # a truncated last box is not an answer
    if "<think>" in text and "</think>" not in text:
        return ""  # reasoning that never finished: nothing in it is an answer
    tags = _ANSWER_TAG_RE.findall(text)
    if tags and tags[-1].strip():
        return tags[-1].strip()[:MAX_ANSWER_CHARS]
    tail = text.rsplit("</think>", 1)[-1].strip()
    if not tail:
        return ""
    matches = list(_ANSWER_IS_RE.finditer(tail))
    if matches:
        found = matches[-1].group(1).strip().splitlines()[0] if matches[-1].group(1).strip() else ""
        if found:
            return _strip_sentence(found)[:MAX_ANSWER_CHARS]
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    return _strip_sentence(lines[-1])[:MAX_ANSWER_CHARS] if lines else ""


def _strip_sentence(s: str) -> str:
    s = s.strip().strip("*").strip()
    if s.startswith("$") and s.endswith("$") and len(s) > 1:
        s = s.strip("$").strip()
    return s.rstrip(".").strip()


# ----------------------------------------------------------------------------------------------------------------------
# Letters
# ----------------------------------------------------------------------------------------------------------------------


def _unwrap(s: str) -> str:
    """Drop ``$``, ``**``, ``\\text{...}``-style wrappers and surrounding whitespace."""
    s = s.strip()
    for _ in range(3):
        s = _WRAPPER_RE.sub(r"\1", s)
    s = s.replace("$", "").replace("**", "").strip()
    s = re.sub(r"^\\\(|\\\)$", "", s).strip()
    return s


def answer_letter(answer: str, n_choices: int | None = None) -> str | None:
    """The option letter an answer names (``B``, ``(B)``, ``B.``, ``B) 3``, ``(B) 3``, ``B: 3``, ``Option B``), or None.

    "A triangle" is *not* the letter A (a letter followed by a word needs ``.``/``:``/``)`` or parentheses). A lone
    lower-case letter counts. With ``n_choices``, letters past the last option are rejected.
    """
    if not isinstance(answer, str):
        return None
    s = _unwrap(answer)
    s = re.sub(r"^(?:the\s+)?(?:correct\s+)?(?:option|choice|answer)\s*(?:is\s*)?[:：]?\s*", "", s, flags=re.I)
    s = s.strip()
    letter = None
    m = re.fullmatch(r"\(?\s*([A-Za-z])\s*\)?\s*\.?", s)
    if m and (m.group(1).isupper() or len(s) == 1):
        letter = m.group(1).upper()
    else:
        m = re.match(r"^\(\s*([A-Z])\s*\)", s) or re.match(r"^([A-Z])\s*[.:：)]", s)
        if m:
            letter = m.group(1)
    if letter is None:
        return None
    if n_choices is not None and LETTERS.index(letter) >= n_choices:
        return None
    return letter


def answer_letters(answer: str, n_choices: int | None = None) -> frozenset[str] | None:
    """A set of letters: one (see :func:`answer_letter`) or several (``A, C`` / ``(A) and (C)``); None if neither."""
    one = answer_letter(answer, n_choices)
    if one is not None:
        return frozenset(one)
    if not isinstance(answer, str):
        return None
    s = _unwrap(answer)
    if not _MULTI_LETTER_RE.match(s):
        return None
    letters = frozenset(re.findall(r"[A-Z]", re.sub(r"\band\b", "", s)))
    if n_choices is not None and any(LETTERS.index(c) >= n_choices for c in letters):
        return None
    return letters


# ----------------------------------------------------------------------------------------------------------------------
# Values
# ----------------------------------------------------------------------------------------------------------------------


def normalize_text(s: str) -> str:
    """Lower-case, no wrappers, no spaces, no trailing full stop: the string-equality form of an answer."""
    s = _unwrap(str(s))
    s = s.replace("\\left", "").replace("\\right", "").replace("\\!", "").replace("\\,", "").replace("\\;", "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = re.sub(r"\s+", "", s).lower()
    return s.rstrip(".")


def strip_units(s: str) -> str:
    """``12.0 cm^2`` -> ``12.0``, ``60°`` -> ``60``: trailing unit words after a number are dropped."""
    s = s.strip()
    if not _NUMBER_START_RE.match(s):
        return s
    for _ in range(2):
        new = _UNIT_RE.sub("", s).strip()
        if not new:
            return s
        s = new
    return s


def _strip_percent(s: str) -> str:
    return re.sub(r"\\?%\s*$", "", s.strip()).strip()


def _as_float(s: str) -> float | None:
    s = _unwrap(s).replace(",", "").replace(" ", "")
    return float(s) if _FLOAT_RE.match(s) else None


class _TimeoutOffOnPurpose(logging.Filter):
    """math-verify warns that its timeout is off; :func:`math_equal` turns it off on purpose off the main thread
    (signal.alarm works on the main thread only), so the notice says nothing to a user: dropped, nothing else."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.grader", "math_verify.parser"):
    logging.getLogger(_name).addFilter(_TimeoutOffOnPurpose())


def math_equal(gold: str, pred: str) -> bool:
    r"""math-verify equivalence of two bare answers (each parsed as ``\boxed{answer}``). Never raises."""
    if not gold or not pred:
        return False
    main = threading.current_thread() is threading.main_thread()
    parse_timeout = 5 if main else None  # math-verify's timeout uses signal.alarm: main thread only
    verify_timeout = 5 if main else None
    try:
        gold_parsed = parse("\\boxed{" + gold + "}", _EXTRACTION_CONFIG, parsing_timeout=parse_timeout)
        if not gold_parsed:
            return False
        pred_parsed = parse("\\boxed{" + pred + "}", _EXTRACTION_CONFIG, parsing_timeout=parse_timeout)
        if not pred_parsed:
            return False
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=verify_timeout))
    except Exception:  # math-verify / sympy can raise on odd input; a wrong answer, not a crash
        logger.debug("math-verify failed on gold=%r pred=%r", gold, pred, exc_info=True)
        return False


def values_match(pred: str, gold: str, answer_type: str | None = None, precision: float | None = None) -> bool:
    """Free-form comparison: string equality, float rules for ``answer_type="float"``, then math-verify."""
    pred, gold = str(pred).strip(), str(gold).strip()
    if not pred or not gold:
        return False
    if normalize_text(pred) == normalize_text(gold):
        return True
    pred_u, gold_u = strip_units(pred), strip_units(gold)
    if normalize_text(pred_u) == normalize_text(gold_u):
        return True
    if answer_type == "float":
        p, g = _as_float(_strip_percent(pred_u)), _as_float(_strip_percent(gold_u))
        if p is not None and g is not None:
            if precision is not None and precision == precision:  # not NaN
                digits = int(precision)
                return round(p, digits) == round(g, digits)
            return abs(p - g) <= DYNAMATH_FLOAT_TOLERANCE
    if math_equal(gold_u, pred_u):
        return True
    if ("%" in pred_u) != ("%" in gold_u):
        return math_equal(_strip_percent(gold_u), _strip_percent(pred_u))
    return False


def _gold_letters(gold: str, choices: Sequence[str] | None) -> frozenset[str] | None:
    s = _unwrap(gold)
    if choices and any(normalize_text(s) == normalize_text(c) for c in choices) and len(s) > 1:
        return None  # the gold is an option's text (MathVista)
    if re.fullmatch(r"\(?[A-Z]\)?\.?", s):
        return frozenset(re.findall(r"[A-Z]", s))
    if _MULTI_LETTER_RE.match(s):
        return frozenset(re.findall(r"[A-Z]", re.sub(r"\band\b", "", s)))
    return None


def check_answer(
    pred: str,
    gold: str,
    choices: Sequence[str] | None = None,
    answer_type: str | None = None,
    precision: float | None = None,
) -> bool:
    r"""Is the extracted answer ``pred`` the gold answer? Never raises (a comparison error counts as wrong).

    ``gold`` may itself be wrapped in ``\boxed{}`` (ViRL39K). ``choices`` are the option texts in letter order, when
    the benchmark gives them; ``answer_type="float"`` with an optional ``precision`` selects the float rule.
    """
    try:
        if pred is None or gold is None:
            return False
        pred, gold = str(pred).strip(), str(gold).strip()
        gold = unwrap_boxed(gold)
        if not pred or not gold:
            return False
        choices = [str(c) for c in choices] if choices else None
        n = len(choices) if choices else None
        gold_letters = _gold_letters(gold, choices)
        if gold_letters is not None:
            pred_letters = answer_letters(pred, n)
            if pred_letters is not None:
                return pred_letters == gold_letters
            if choices and len(gold_letters) == 1:
                index = LETTERS.index(next(iter(gold_letters)))
                if index < len(choices):
                    return values_match(pred, choices[index])
            return False
        if choices:
            letter = answer_letter(pred, n)
            if letter is not None:
                pred = choices[LETTERS.index(letter)]
        return values_match(pred, gold, answer_type, precision)
    except Exception:
        logger.debug("check_answer failed on pred=%r gold=%r", pred, gold, exc_info=True)
        return False


def score_completion(
    completion: str,
    gold: str,
    choices: Sequence[str] | None = None,
    answer_type: str | None = None,
    precision: float | None = None,
) -> tuple[str, bool]:
    """``(extracted answer, correct)`` for a raw completion."""
    pred = extract_answer(completion)
    return pred, check_answer(pred, gold, choices, answer_type, precision)
