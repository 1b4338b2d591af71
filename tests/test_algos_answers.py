"""Answer extraction and mathematical equivalence (mgrpo.algos.answers).

Expected values are written out by hand. The math-verify slow path runs in a worker process
(one per `AnswerEquivalence`), so the equivalence objects here are module-scoped and the real-data
slow-path checks use a seeded sample of MATH-500.
"""

from __future__ import annotations

import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from typing import Optional

import pytest

from mgrpo.algos.answers import extract_answer, normalize_answer
from mgrpo.algos.grader import AnswerEquivalence, answers_equivalent


# An expression whose math-verify comparison does not finish (sympy evaluates 9^(9^(9^9))):
# checked by hand to run for more than 20 s with math-verify's own timeouts disabled.
PATHOLOGICAL = ("9^{9^{9^{9}}}", "5")


# ---------------------------------------------------------------- extraction


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so the answer is $\\boxed{5}$.", "5"),
        ("nested: \\boxed{\\frac{1}{\\sqrt{2}}}", "\\frac{1}{\\sqrt{2}}"),
        ("deep: \\boxed{\\left\\{1, \\{2\\}\\right\\}}", "\\left\\{1, \\{2\\}\\right\\}"),
        ("first \\boxed{1}, then \\boxed{2}", "2"),
        ("unbraced \\boxed 5", "5"),
        # Regression: LaTeX allows spaces before the brace group; it used to give "{x".
        ("spaced brace \\boxed {x + 1}", "x + 1"),
        ("spaced nested \\fbox  {\\frac{1}{2}}", "\\frac{1}{2}"),
        ("unbraced with period \\boxed 5.", "5"),
        ("unbraced in math $\\boxed 7$", "7"),
        ("fbox \\fbox{12}", "12"),
        ("boxed then fbox: \\boxed{3} and \\fbox{4}", "4"),
        ("fbox then boxed: \\fbox{4} and \\boxed{3}", "3"),
        ("#### 203", "203"),
        ("work\n#### 1,234\nmore text", "1,234"),
        ("#### 5 then the later box wins \\boxed{6}", "6"),
        ("\\boxed{6} then the later hash wins\n#### 5", "5"),
        ("padded \\boxed{  42  }", "42"),
        ("trailing period inside \\boxed{42.}", "42"),
    ],
)
def test_extract_answer(text: str, expected: str) -> None:
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "no answer here",
        "",
        "empty \\boxed{}",
        "blank \\boxed{   }",
        "unbalanced \\boxed{\\frac{1}{2}",
        "unbalanced \\boxed{3",
        "bare \\boxed",
        "hash with nothing ####",
        "hash with spaces ####   \nnext line",
        "the later marker is empty: #### 5 \\boxed{}",
    ],
)
def test_extract_answer_none(text: str) -> None:
    assert extract_answer(text) is None


# ---------------------------------------------------------------- normalisation


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("\\dfrac{1}{2}", "\\frac{1}{2}"),
        ("\\tfrac{1}{2}", "\\frac{1}{2}"),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
        ("$ 1 + 2 $", "1+2"),
        ("10,\\!080", "10,080"),
        # Regression: "\\left"/"\\right" are removed only as whole commands, not as the prefix
        # of \\leftarrow / \\rightarrow (which used to both normalise to "arrow").
        ("x \\rightarrow \\infty", "x\\rightarrow\\infty"),
        ("\\leftarrow", "\\leftarrow"),
        # Regression: an escaped dollar (MATH's currency golds, e.g. "\\$36") is dropped whole;
        # removing only "$" used to leave a stray backslash ("\\36").
        ("\\$36", "36"),
        ("\\$ 18.90", "18.90"),
        # Spaces that keep tokens apart stay (one space); the rest go.
        ("32, 349", "32, 349"),  # the set {32, 349}; "32,349" is the number 32349
        ("32 ,349", "32 ,349"),
        ("32 , 349", "32 , 349"),
        ("32,349", "32,349"),
        ("10,\\! 080", "10,080"),  # math-verify drops "\\!" and the spaces after it
        ("10 {,} 080", "10 {,} 080"),
        ("(1, 2)", "(1,2)"),  # no three-digit group after the comma: nothing can merge
        ("(1, 2000)", "(1,2000)"),
        ("28 percent", "28 percent"),  # not the product "28percent"
        ("28 \\%", "28\\%"),
        ("\\pi  r^2", "\\pi r^2"),  # not the command "\\pir"
        ("x = -5,\\ p = \\frac{14}{3}", "x=-5,p=\\frac{14}{3}"),  # "\\ " is a space, not "\\p"
        ("1 \\\\ x", "1\\\\ x"),  # a line break and x, not "\\x"
        ("\\text{no  solution}", "\\text{no solution}"),
        ("2\\cdot 5", "2\\cdot 5"),
        ("\\frac 59", "\\frac59"),  # math-verify reads both as 5/9
        ("\\sqrt 3", "\\sqrt3"),
        ("1 .5", "1 .5"),
        ("x = .5", "x=.5"),
    ],
)
def test_normalize_answer(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


# ---------------------------------------------------------------- equivalence


@pytest.mark.parametrize(
    "gold, pred",
    [
        ("\\frac{1}{2}", "1/2"),
        ("\\frac{1}{2}", "0.5"),
        ("1/2", "0.5"),
        ("0.5", "\\dfrac{1}{2}"),
        ("3", "3"),
        ("3", " 3 "),
        ("3", "+3"),
        ("3", "3.0"),
        ("\\sqrt{4}", "2"),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
        ("\\$36", "36"),
        ("\\$18.90", "18.9"),
    ],
)
def test_equivalent(equiv: AnswerEquivalence, gold: str, pred: str) -> None:
    assert equiv(gold, pred) is True


@pytest.mark.parametrize(
    "gold, pred",
    [
        ("3", "4"),
        ("3", "-3"),
        ("\\frac{1}{2}", "0.25"),
        ("\\frac{1}{2}", "\\frac{1}{3}"),
        ("\\sqrt{2}", "2"),
        ("\\leftarrow", "\\rightarrow"),
        ("\\$36", "\\$37"),
        ("(1, 2)", "(2, 1)"),
    ],
)
def test_not_equivalent(equiv: AnswerEquivalence, gold: str, pred: str) -> None:
    assert equiv(gold, pred) is False


def test_result_does_not_depend_on_call_history() -> None:
    """Regression: the cache was keyed by the normalised pair while math-verify was fed the raw
    strings, so a pair's answer depended on which spelling of it was asked first.
    math-verify itself answers ("p-q", "(p-q)") True but the spaced spelling
    ("p - q", "\\left( p - q \\right)") False; both normalise to ("p-q", "(p-q)")."""
    spaced = ("p - q", "\\left( p - q \\right)")
    compact = ("p-q", "(p-q)")
    first, second = AnswerEquivalence(), AnswerEquivalence()
    try:
        a = (first(*spaced), first(*compact))
        b = (second(*compact), second(*spaced))
    finally:
        first.close()
        second.close()
    assert a == (b[1], b[0])
    assert a == (True, True)


def test_module_level_function() -> None:
    assert answers_equivalent("\\frac{1}{2}", "0.5") is True
    assert answers_equivalent("3", "4") is False


def test_from_worker_thread(equiv: AnswerEquivalence) -> None:
    results: list[bool] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.append(equiv("\\frac{2}{4}", "0.5"))
            results.append(equiv("\\frac{2}{4}", "0.6"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert errors == []
    assert results == [True, False]


def test_from_thread_pool(equiv: AnswerEquivalence) -> None:
    pairs = [("1/4", "0.25"), ("3", "4"), ("\\sqrt{9}", "3"), ("2", "\\sqrt{5}"), ("\\frac{3}{4}", "0.75"), ("0.1", "1/9")]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda p: equiv(*p), pairs))
    assert results == [True, False, True, False, True, False]


def test_timeout_returns_false_and_recovers() -> None:
    eq = AnswerEquivalence(timeout=0.5)
    try:
        assert eq("\\sqrt{4}", "2") is True  # starts the worker outside the timed call (not a literal)
        assert eq.timeouts == 0
        start = time.monotonic()
        assert eq(*PATHOLOGICAL) is False
        elapsed = time.monotonic() - start
        # `timeouts` only moves when the worker did not answer within 0.5 s: the comparison
        # really was slow, and the call still came back.
        assert eq.timeouts == 1
        assert 0.5 <= elapsed < 5.0
        # The stuck worker was replaced: normal comparisons work again.
        assert eq("\\sqrt{9}", "3") is True
        assert eq("\\sqrt{9}", "\\sqrt{8}") is False
        assert eq.timeouts == 1
        # A timed-out pair is remembered as "not equivalent" and not recomputed.
        start = time.monotonic()
        assert eq(*PATHOLOGICAL) is False
        assert time.monotonic() - start < 0.5
        assert eq.timeouts == 1
    finally:
        eq.close()


# ---------------------------------------------------------------- real data: MATH-500

_FRAC_RE = re.compile(r"(-?)\\[dt]?frac(\d|\{\d+\})(\d|\{\d+\})")
_DECIMAL_RE = re.compile(r"-?\d*\.\d+")
_INT_RE = re.compile(r"-?\d+")


def _value(gold: str) -> Optional[Fraction]:
    """The exact value of an integer, decimal or integer-fraction gold; None otherwise."""
    if _INT_RE.fullmatch(gold) or _DECIMAL_RE.fullmatch(gold):
        return Fraction(gold)
    match = _FRAC_RE.fullmatch(gold)
    if match:
        sign, num, den = match.groups()
        value = Fraction(int(num.strip("{}")), int(den.strip("{}")))
        return -value if sign else value
    return None


def _terminating_decimal(value: Fraction) -> Optional[str]:
    """Exact decimal spelling of `value` when its denominator is 2^a 5^b, else None."""
    den = value.denominator
    for p in (2, 5):
        while den % p == 0:
            den //= p
    if den != 1:
        return None
    digits = 0
    while (value * 10**digits).denominator != 1:
        digits += 1
    scaled = abs(value.numerator * 10**digits // value.denominator)
    text = str(scaled).rjust(digits + 1, "0")
    body = text if digits == 0 else f"{text[:-digits]}.{text[-digits:]}"
    return ("-" if value < 0 else "") + body


def test_value_helpers_by_hand() -> None:
    assert _value("\\frac{3}{8}") == Fraction(3, 8)
    assert _value("-\\frac{24}{25}") == Fraction(-24, 25)
    assert _value("\\frac9{19}") == Fraction(9, 19)
    assert _value("\\frac43") == Fraction(4, 3)
    assert _value(".35625") == Fraction(57, 160)
    assert _terminating_decimal(Fraction(3, 8)) == "0.375"
    assert _terminating_decimal(Fraction(-24, 25)) == "-0.96"
    assert _terminating_decimal(Fraction(448, 15625)) == "0.028672"
    assert _terminating_decimal(Fraction(1997, 2)) == "998.5"
    assert _terminating_decimal(Fraction(1, 3)) is None


def _spaced(gold: str) -> str:
    """`gold` with spaces that change nothing: not after a thousands separator ("10,\\!080" is
    10080, "10, \\!080" the set {10, 80})."""
    spaced = re.sub(r",(?!(?:\\!)?\s*\d{3}(?!\d))", ", ", gold)
    return " " + spaced.replace("+", " + ").replace("=", " = ") + " "


def test_math500_boxed_round_trip(math500_golds: list[str]) -> None:
    assert len(math500_golds) == 500
    for gold in math500_golds:
        assert extract_answer(f"Therefore the answer is $\\boxed{{{gold}}}$.") == gold, gold
        assert extract_answer(f"Final: \\boxed{{{gold}}}\nDone.") == gold, gold
        if "\n" not in gold:
            assert extract_answer(f"work\n#### {gold}") == gold, gold


def test_math500_cheap_variants(equiv: AnswerEquivalence, math500_golds: list[str]) -> None:
    """Every gold equals its spacing, \\dfrac and \\left(...\\right) respellings (fast path)."""
    for gold in math500_golds:
        assert equiv(gold, gold), gold
        assert equiv(gold, _spaced(gold)), gold
        assert equiv(gold, gold.replace("\\frac", "\\dfrac")), gold
        assert equiv(gold.replace("\\dfrac", "\\frac"), gold), gold
        if "(" in gold and "\\left(" not in gold:
            assert equiv(gold, gold.replace("(", "\\left( ").replace(")", " \\right)")), gold


def _wrap_preserves_meaning(gold: str) -> bool:
    """Parenthesising a single expression keeps its meaning; a list, tuple, relation or
    text with units does not ('(10,080)' is a tuple, '(x \\in [1,2])' is not an interval)."""
    return not re.search(r",|\\text|\\mbox|\\in|\\\$|=|<|>|\\le|\\ge|\\pm|\\cup|\\circ|\^\\circ", gold)


@pytest.fixture(scope="module")
def math500_sample(math500_golds: list[str]) -> list[str]:
    return random.Random(0).sample(math500_golds, 100)


def test_math500_slow_path_variants(equiv: AnswerEquivalence, math500_sample: list[str]) -> None:
    """Respellings that normalise differently, so the literal fast path or math-verify decides them."""
    checked = 0
    for gold in math500_sample:
        variants = []
        if _wrap_preserves_meaning(gold):
            variants.append(f"\\left( {gold} \\right)")
        value = _value(gold)
        if value is not None:
            if value.denominator == 1:
                variants += [f"{value.numerator}.0", f"{value.numerator}.00"]
            decimal = _terminating_decimal(value)
            if decimal is not None and decimal != gold:
                variants.append(decimal)
            if not _FRAC_RE.fullmatch(gold) and value.denominator != 1:
                sign = "-" if value < 0 else ""
                variants.append(f"{sign}\\frac{{{abs(value.numerator)}}}{{{value.denominator}}}")
        for variant in variants:
            assert normalize_answer(variant) != normalize_answer(gold)
            assert equiv(gold, variant), (gold, variant)
            checked += 1
    assert checked >= 100  # the sample really exercised the slow path


def test_math500_distinct_values_not_equivalent(equiv: AnswerEquivalence, math500_sample: list[str]) -> None:
    numeric = [(g, _value(g)) for g in math500_sample if _value(g) is not None]
    rng = random.Random(1)
    pairs = 0
    for gold, value in numeric:
        other, other_value = rng.choice(numeric)
        if other_value != value:
            assert not equiv(gold, other), (gold, other)
            pairs += 1
        # gold and gold + 1/7 (never the same number)
        shifted = value + Fraction(1, 7)
        assert not equiv(gold, f"\\frac{{{shifted.numerator}}}{{{shifted.denominator}}}"), gold
    assert pairs >= 40
    # A few hand-picked distinct MATH-style answers.
    assert not equiv("\\left( 3, \\frac{\\pi}{2} \\right)", "\\left( 3, \\frac{\\pi}{3} \\right)")
    assert not equiv("p - q", "q - p")
    assert not equiv("x \\in [-2,7]", "x \\in [-2,8]")
    assert not equiv("\\frac{14}{3}", "\\frac{3}{14}")
