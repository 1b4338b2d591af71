"""The grader behind `AnswerEquivalence` (mgrpo.algos.grader, with the rules of mgrpo.algos.answers
and mgrpo.algos.verify_rules): fast paths, junk guard, Hendrycks-style fallback, batches, time
limits, and agreement with plain math-verify.

Hand-computed cases first; then the real-data checks: the fast paths and the worker's
"surely not equivalent" shortcut must reproduce math-verify's verdict on every pair they settle
(math-verify called directly, in this process, as the reference).
"""

from __future__ import annotations

import logging
import random
import time
from fractions import Fraction
from typing import Optional

import pytest

from mgrpo.algos.answers import (
    MAX_ANSWER_CHARS,
    cheap_verdict,
    hendrycks_equivalent,
    hendrycks_normalize,
    is_junk_answer,
    literal_verdict,
    normalize_answer,
)
from mgrpo.algos.grader import AnswerEquivalence

PATHOLOGICAL = ("9^{9^{9^{9}}}", "5")  # math-verify runs > 20 s on it (see test_algos_answers)
JUNK = [
    "121E922011",
    "1e5000",
    "3.5E+12345",
    "10^{99999}",
    "2^{-123456}",
    "12+" * 12,
    "\\frac{1}{2}" * 10,
    "x + " * 60 + "1",
    "(" * 250,
    "1+" * 101,
]


LONGEST_ALLOWED = "+".join(f"x_{{{k}}}" for k in range(60))[:MAX_ANSWER_CHARS]
# Long but legitimate numbers (not junk): powers of ten written out, repunits, repeating decimals.
LONG_NUMBERS = [
    "1000000000000000",
    "1" + "0" * 40,
    "1,000,000,000,000,000,000,000,000,000",
    "1" * 40,
    "0.142857142857142857",
    "0." + "142857" * 8,
    "0." + "3" * 40,
]


def math_verify_reference(gold: str, pred: str) -> bool:
    """Plain math-verify on normalised strings, as the old grader called it (the reference)."""
    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    a, b = normalize_answer(gold), normalize_answer(pred)
    gp, pp = parse(f"${a}$", parsing_timeout=None), parse(f"${b}$", parsing_timeout=None)
    return bool(gp and pp and verify(gp, pp, timeout_seconds=5))


# ---------------------------------------------------------------- literal fast path, by hand


@pytest.mark.parametrize(
    "a, b, expected",
    [
        # integers: the same integer (sign and leading zeros do not matter)
        ("3", "3", True),
        ("3", "+3", True),
        ("007", "7", True),
        ("3", "-3", False),
        ("-0", "0", True),
        # exact values of decimals and fractions
        ("0.5", "\\frac{1}{2}", True),
        ("1/2", "\\frac12", True),
        (".5", "1/2", True),
        ("-0.5", "-\\frac{1}{2}", True),
        ("3", "3.0", True),
        ("2", "\\frac{4}{2}", True),
        ("\\frac{2}{4}", "0.5", True),
        ("(5)", "5", True),  # math-verify reads "(5)" as 5
        ("(-3)", "3", False),
        ("\\frac{1}{2}", "\\frac{1}{3}", False),  # rationals: sympy compares them exactly
        ("\\frac{14}{3}", "\\frac{3}{14}", False),
        ("0.1", "1/9", False),  # 0.1 vs 0.111...: apart by more than 1e-5
        ("3.5", "3", False),
        # where a naive exact compare would be wrong: math-verify rounds floats to 6 decimals,
        # so these near misses are left to it (it calls 0.333333 and 1/3 equivalent)
        ("0.333333", "\\frac{1}{3}", None),
        ("1.0000004", "1.0000006", None),
        ("0.0000001", "0", None),
        # decimals beyond float precision or magnitude are left to math-verify
        ("12345678901234567890.5", "12345678901234567891", None),
        ("1000000000.5", "2", None),
        # not literals
        ("1/0", "2", None),
        ("1,234", "1234", None),
        ("5.", "5", None),
        ("\\sqrt{4}", "2", None),
        ("1e5", "100000", None),  # math-verify reads "e" as Euler's number here
    ],
)
def test_literal_verdict(a: str, b: str, expected: Optional[bool]) -> None:
    assert literal_verdict(normalize_answer(a), normalize_answer(b)) is expected
    assert literal_verdict(normalize_answer(b), normalize_answer(a)) is expected


def test_near_misses_reach_math_verify(equiv: AnswerEquivalence) -> None:
    # A naive Fraction compare says False; math-verify (float rounding to 6 places) says True.
    assert equiv("\\frac{1}{3}", "0.333333") is True
    assert equiv("0.3333333", "1/3") is True
    assert equiv("0.1", "1/9") is False


# ---------------------------------------------------------------- the worker's shortcut, by hand


@pytest.mark.parametrize(
    "a, b, settled",
    [
        ("16\\sqrt{3}", "13", True),  # 27.71 vs 13 (sympy's simplify took 0.5 s on this pair)
        ("x=5", "6", True),  # math-verify compares an assignment's right-hand side
        ("x=5", "5", False),
        ("k=\\frac{1}{2}", "0.5", False),
        ("2x+1", "2x+2", True),  # values at the probe point differ
        ("x+x", "2x", False),
        ("\\sqrt{x^2}", "x", True),  # |x| vs x: not equal for math-verify either (no assumptions)
        ("6-5i", "6+5i", True),  # math-verify reads i as a symbol
        ("\\text{east}", "5", True),  # a bare symbol: math-verify's own cheap symbol test
        ("\\text{East}", "\\text{east}", False),
        ("abc", "\\text{abc}", False),
        ("(1,2,3)", "(1,2)", True),  # tuples of different lengths
        ("(1,2,3)", "(1,2,4)", True),
        ("(1,2,3)", "6", True),
        ("(1,2)", "(1,3)", True),  # open intervals, an endpoint differs
        ("(1,2)", "[1,2)", True),  # openness differs
        ("(1,2)", "1,3", True),  # open interval vs a 2-set: 3 matches no endpoint
        ("(1,2)", "1,2", False),  # ... math-verify matches {1, 2} with the endpoints
        ("(1,2)", "2,1", False),  # (math-verify: not equivalent; the shortcut does not know)
        ("1,2", "1,2,3", True),
        ("1,2", "2,1", False),
        ("3\\pm2\\sqrt{2}", "(-2,1)", True),
        ("3\\pm2\\sqrt{2}", "3+2\\sqrt{2},3-2\\sqrt{2}", False),
        ("(-\\infty,2)\\cup(3,\\infty)", "5", True),  # a union never matches a number
        ("(-\\infty,2)\\cup(3,\\infty)", "(-\\infty,3)\\cup(2,\\infty)", True),  # 2.5 is in one only
        ("(-\\infty,2)\\cup(3,\\infty)", "(-\\infty,2)\\cup(3,\\infty]", False),  # the same points
        # where a naive numeric compare would be wrong: math-verify rounds floats to 6 places,
        # and reads "50\\%" as 50
        ("0.333333", "\\frac{1}{3}", False),
        ("\\frac{\\pi}{2}", "1.5707963", False),
        ("50\\%", "50", False),
        ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "3", False),  # matrices: left to math-verify
        ("y=2x+3", "y=2x+4", False),  # two equations: left to math-verify (it solves them)
    ],
)
def test_worker_shortcut_by_hand(a: str, b: str, settled: bool) -> None:
    """`surely_not_equivalent` on math-verify's parses: True only where math-verify says False."""
    from math_verify import parse, verify

    from mgrpo.algos.verify_rules import surely_not_equivalent

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    gold = parse(f"${normalize_answer(a)}$", parsing_timeout=None)
    pred = parse(f"${normalize_answer(b)}$", parsing_timeout=None)
    assert surely_not_equivalent(gold, pred) is settled
    if settled:
        assert not verify(gold, pred, timeout_seconds=5)


def test_cheap_verdict_order() -> None:
    assert cheap_verdict("121E922011", "121E922011") is True  # identical first
    assert cheap_verdict("121E922011", "121") is False  # then the junk guard
    assert cheap_verdict("0.5", "\\frac{1}{2}") is True  # then literals
    assert cheap_verdict("\\sqrt{2}", "2") is None  # then math-verify


def test_fast_paths_do_not_reach_the_worker() -> None:
    eq = AnswerEquivalence()
    try:
        pairs = [("0.5", "\\frac{1}{2}"), ("3", "4"), ("\\dfrac{1}{4}", "0.25"), ("121E922011", "7"), ("x", " x ")]
        assert eq.many(pairs) == [True, False, True, False, True]
        assert eq.verified == 0 and eq._pool == []  # no worker was even started
    finally:
        eq.close()


# ---------------------------------------------------------------- junk guard


@pytest.mark.parametrize("answer", JUNK)
def test_junk(answer: str) -> None:
    assert is_junk_answer(answer)


@pytest.mark.parametrize(
    "answer",
    ["2^{2007}", "10^{9999}", "1000000", "11,111,111,100", "1.5e300", "0.\\overline{3}", LONGEST_ALLOWED, *LONG_NUMBERS],
)
def test_not_junk(answer: str) -> None:
    assert not is_junk_answer(answer)


def test_long_numbers_inside_junk_are_still_junk() -> None:
    # Only a repetition within the digits of one number is exempt.
    assert is_junk_answer("(" + "1," * 16 + "1)")
    assert is_junk_answer("x^{" + "1" * 40 + "}")  # an absurd exponent
    assert is_junk_answer("1" * (MAX_ANSWER_CHARS + 1))  # the length limit holds for numbers too
    assert is_junk_answer("121 E922011")  # spacing does not hide junk


def test_length_limit() -> None:
    assert len(LONGEST_ALLOWED) == MAX_ANSWER_CHARS
    assert is_junk_answer(LONGEST_ALLOWED + "1")


def test_no_math500_gold_is_junk(math500_golds: list[str]) -> None:
    assert len(math500_golds) == 500
    assert [g for g in math500_golds if is_junk_answer(g)] == []


def test_junk_is_rejected_without_math_verify(equiv: AnswerEquivalence) -> None:
    start = time.monotonic()
    for junk in JUNK:
        assert equiv(junk, "121") is False
        assert equiv("(1, 2)", junk) is False
    assert time.monotonic() - start < 0.5  # 20 comparisons, none sent to math-verify
    assert equiv(JUNK[0], JUNK[0]) is True  # identical strings are still equal


# ---------------------------------------------------------------- spacing: as math-verify reads it


def math_verify_as_written(gold: str, pred: str) -> bool:
    """Plain math-verify on the answers exactly as written (only wrapped in ``$...$``)."""
    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    gp, pp = parse(f"${gold}$", parsing_timeout=None), parse(f"${pred}$", parsing_timeout=None)
    return bool(gp and pp and verify(gp, pp, timeout_seconds=5))


SPACING_CASES = [
    # A space after a comma before three digits splits a number in two: a two-element answer
    # is not the concatenated number (stripping every space used to make "32, 349" = 32349).
    ("32, 349", "32349", False),
    ("32349", "32, 349", False),
    ("32 ,349", "32349", False),
    ("1, 234, 567", "1234567", False),
    ("32, 349", "349, 32", True),
    ("32, 349", "\\{32,349\\}", True),
    ("32,349", "32349", True),
    ("32{,}349", "32349", True),
    ("10,\\! 080", "10080", True),
    # Percent forms: "28 percent" is math-verify's "28\\%" ("28percent" was a product of letters).
    ("28\\%", "28 percent", True),
    ("28 percent", "28\\%", True),
    ("28%", "28 percent", True),
    ("28 percent", "0.28", True),
    ("28 percentage", "28\\%", True),
    ("28 pct", "28\\%", True),
    # LaTeX's control space "\\ " is a space ("\\p" was a command, and the pair a single -5).
    ("x = -5,\\ p = \\frac{14}{3}", "x=-5, p=\\frac{14}{3}", True),
    ("x = -5,\\ p = \\frac{14}{3}", "-5, \\frac{14}{3}", True),
    ("x=-5,p=\\frac{14}{3}", "x = -5,\\ p = \\frac{15}{3}", False),
    ("5\\ \\text{cm}", "5", True),
    ("\\pi r^2", "r^2\\pi", True),
    # Long but legitimate numbers are compared, not rejected as junk.
    ("1" + "0" * 40, "10^{40}", True),
    ("1" + "0" * 40, "10^{41}", False),
    ("1,000,000,000,000,000,000,000,000,000", "10^{27}", True),
    ("1" * 40, "\\frac{10^{40}-1}{9}", True),
    ("0." + "142857" * 8, "\\frac{1}{7}", True),
    ("0." + "3" * 40, "\\frac{1}{3}", True),
    ("1000000000000000", "10^{15}", True),
]


@pytest.mark.parametrize("gold, pred, expected", SPACING_CASES)
def test_spacing_as_math_verify_reads_it(equiv: AnswerEquivalence, gold: str, pred: str, expected: bool) -> None:
    """The grader's verdict is math-verify's on the answers as written (checked here)."""
    assert math_verify_as_written(gold, pred) is expected
    assert equiv(gold, pred) is expected


# ---------------------------------------------------------------- Hendrycks-style fallback


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
        ("5\\text{ cm}", "5"),
        ("5 \\text{ cm}^2", "5"),
        ("\\text{Evelyn}", "\\text{Evelyn}"),  # text alone is the answer, not a unit
        ("90^\\circ", "90"),
        ("90^{\\circ}", "90"),
        ("\\$18.90", "18.90"),
        ("50\\%", "50"),
        (".5", "\\frac{1}{2}"),
        ("0.5", "\\frac{1}{2}"),
        ("1/2", "\\frac{1}{2}"),
        ("\\dfrac{1}{2}", "\\frac{1}{2}"),
        ("\\frac12", "\\frac{1}{2}"),
        ("\\frac1{2}", "\\frac{1}{2}"),
        ("\\sqrt3", "\\sqrt{3}"),
        ("x = 5", "5"),
        ("k=\\frac12", "\\frac{1}{2}"),
        ("y = 2x + 3", "2x+3"),
        ("2x + y = 3", "2x+y=3"),  # not a short name on the left
        ("a=b=3", "a=b=3"),
        ("10.", "10"),
        ("10,\\!080", "10,080"),
    ],
)
def test_hendrycks_normalize(raw: str, expected: str) -> None:
    assert hendrycks_normalize(raw) == expected


def test_hendrycks_equivalent() -> None:
    assert hendrycks_equivalent("5\\text{ cm}", "5")
    assert hendrycks_equivalent("x = \\dfrac12", "1/2")
    assert not hendrycks_equivalent("0.5", "0.50")  # a string normal form, not a value
    assert not hendrycks_equivalent("", "")


def test_fallback_when_math_verify_cannot_parse(equiv: AnswerEquivalence) -> None:
    # math-verify parses "\\ldots" to nothing; the old grader answered False for any such pair.
    assert equiv("\\ldots", "\\ldots.") is True
    assert equiv("\\ldots", "\\cdots") is False


# ---------------------------------------------------------------- batches and time limits


def test_many_equals_one_by_one(equiv: AnswerEquivalence) -> None:
    pairs = [
        ("\\sqrt{4}", "2"),
        ("\\frac{\\pi}{2}", "\\frac{\\pi}{3}"),
        ("(1, 2)", "(2, 1)"),
        ("x \\in [-2,7]", "[-2,7]"),
        ("\\sqrt{4}", "2"),  # a duplicate is answered twice
        ("p-q", "(p-q)"),
        ("\\frac{1}{2}", "0.5"),
    ]
    batch = equiv.many(pairs)
    fresh = AnswerEquivalence()
    try:
        assert batch == [fresh(g, p) for g, p in pairs]
    finally:
        fresh.close()
    assert batch == [True, False, False, True, True, True, True]


def test_timeout_inside_a_batch_restarts_the_worker() -> None:
    eq = AnswerEquivalence(timeout=0.5)
    try:
        assert eq("\\sqrt{4}", "2") is True  # starts the worker outside the timed batch
        old_worker = eq._pool[0].process
        start = time.monotonic()
        result = eq.many([("\\sqrt{9}", "3"), PATHOLOGICAL, ("\\sqrt{16}", "4"), ("\\sqrt{2}", "\\sqrt{3}")])
        elapsed = time.monotonic() - start
        assert result == [True, False, True, False]
        assert eq.timeouts == 1
        assert eq._pool[0].process is not old_worker and not old_worker.is_alive()
        assert 0.5 <= elapsed < 30.0  # the restarted worker finished the pairs after the timeout
        # The timed-out pair is remembered; the next batch does not wait for it again.
        start = time.monotonic()
        assert eq.many([PATHOLOGICAL, ("\\sqrt{25}", "5")]) == [False, True]
        assert time.monotonic() - start < 0.5 + 5.0
        assert eq.timeouts == 1
    finally:
        eq.close()


def test_deadline_bounds_a_batch() -> None:
    eq = AnswerEquivalence(timeout=30.0)
    try:
        assert eq("\\sqrt{4}", "2") is True
        start = time.monotonic()
        result = eq.many([PATHOLOGICAL, ("\\sqrt{9}", "3"), ("5\\text{ cm}", "5")], deadline=time.monotonic() + 0.5)
        assert time.monotonic() - start < 2.0
        # Undecided pairs took the Hendrycks verdict: "\\sqrt{9}" vs "3" is not equal there.
        assert result == [False, False, True]
        assert eq.over_budget == 3 and eq.timeouts == 0
        # Over-budget verdicts are not cached: without a deadline math-verify decides.
        assert eq("\\sqrt{9}", "3") is True
    finally:
        eq.close()


def test_prefetch_returns_at_once_and_changes_no_verdict(equiv: AnswerEquivalence) -> None:
    answers = ["(-\\infty,2)\\cup(3,\\infty)", "[\\frac{\\pi^2}{8},\\frac{5\\pi^2}{4}]", "(3,\\frac{\\pi}{2})", "x=5", None, "7", "121E922011"]
    pairs = [(a, b) for a in answers[:4] for b in answers[:4] if a != b] + [("x=5", "5"), ("(3,\\frac{\\pi}{2})", "3")]
    eq = AnswerEquivalence()
    try:
        eq("\\sqrt{4}", "2")
        start = time.monotonic()
        eq.prefetch(answers)
        assert time.monotonic() - start < 0.2  # parsing happens in the worker, later
        assert eq.many(pairs) == equiv.many(pairs)
        eq.prefetch(answers)  # again: harmless
        assert eq.many(pairs) == equiv.many(pairs)
    finally:
        eq.close()


def test_prefetch_of_a_slow_answer_cannot_hang_a_batch() -> None:
    slow = "(" * 20 + "y" + ")" * 20  # about 1 s to parse (not junk: a run of 20 characters)
    eq = AnswerEquivalence(timeout=0.3)
    try:
        assert eq("\\sqrt{4}", "2") is True
        old_worker = eq._pool[0].process
        eq.prefetch([slow, "\\sqrt{7}"])
        start = time.monotonic()
        assert eq.many([("\\sqrt{9}", "3")]) == [True]
        assert time.monotonic() - start < 30.0
        # The prefetch ran over the 0.3 s limit: the worker was replaced, no pair timed out.
        assert eq._pool[0].process is not old_worker
        assert eq.timeouts == 0
    finally:
        eq.close()


def test_two_workers_agree_with_one(equiv: AnswerEquivalence, math500_golds: list[str]) -> None:
    rng = random.Random(3)
    pairs = [(rng.choice(math500_golds), rng.choice(math500_golds)) for _ in range(60)]
    pairs += [(g, f"\\left( {g} \\right)") for g in rng.sample(math500_golds, 20)]
    pool = AnswerEquivalence(workers=2)
    try:
        assert pool.many(pairs) == equiv.many(pairs)
        assert len(pool._pool) == 2
    finally:
        pool.close()


# ---------------------------------------------------------------- agreement with math-verify


def _respellings(gold: str) -> list[str]:
    """Spellings of a MATH-500 gold that may or may not be equivalent to it."""
    out = [f"\\left( {gold} \\right)", f"x = {gold}", f"-({gold})", gold.replace("\\frac", "\\dfrac") + " "]
    s = normalize_answer(gold)
    try:
        value = Fraction(s)
    except (ValueError, ZeroDivisionError):
        value = None
    if value is not None:
        out += [str(float(value)), f"{value.numerator}/{value.denominator}", str(float(value + Fraction(1, 7)))]
        out += [f"\\frac{{{(value + 1).numerator}}}{{{(value + 1).denominator}}}", f"{float(value) + 1e-7:.7f}"]
    return out


def test_agrees_with_math_verify_on_math500(math500_golds: list[str]) -> None:
    """Every verdict (fast path, worker shortcut or math-verify) equals plain math-verify's on
    pairs of MATH-500 answers and respellings, equivalent and not (the shortcut's risky side)."""
    rng = random.Random(0)
    sample = rng.sample(math500_golds, 40)
    pairs = []
    for gold in sample:
        family = [gold, *_respellings(gold)]
        pairs += [(a, b) for a in family for b in family if a != b and rng.random() < 0.35]
        pairs += [(gold, rng.choice(math500_golds)), (rng.choice(math500_golds), gold)]
    eq = AnswerEquivalence()
    try:
        got = eq.many(pairs)
    finally:
        eq.close()
    expected = [math_verify_reference(g, p) for g, p in pairs]
    mismatches = [(g, p, a, b) for (g, p), a, b in zip(pairs, got, expected) if a != b]
    assert mismatches == []
    assert len(pairs) >= 250 and sum(expected) >= 50  # both sides really exercised


def test_a_worker_killed_while_idle_is_replaced() -> None:
    """SLURM's SIGTERM on preemption reaches the grader's worker at any moment, also between
    batches: the next batch finds the pipe broken, starts a new worker and gets the same verdicts
    (a preempted sweep job failed with BrokenPipeError instead of living on to its requeue)."""
    eq = AnswerEquivalence()
    try:
        assert eq("\\sqrt{4}", "2") is True
        idle = eq._pool[0].process
        idle.terminate()
        idle.join()
        assert eq.many([("\\sqrt{9}", "3"), ("\\sqrt{2}", "\\sqrt{3}")]) == [True, False]
        assert eq._pool[0].process is not idle and eq._pool[0].ready
    finally:
        eq.close()


def test_a_worker_killed_as_it_starts_is_started_again(monkeypatch) -> None:
    """SLURM's SIGTERM on preemption reaches the grader's worker too, possibly as it starts: a
    worker that dies before it is ready is replaced, up to _START_ATTEMPTS starts in a row, so the
    job lives on to its requeue; a worker that cannot start at all still stops the run."""
    import mgrpo.algos.grader as grader

    eq = AnswerEquivalence()
    try:
        assert eq("\\sqrt{4}", "2") is True
        dying = grader._Worker()
        dying.process.kill()
        dying.process.join()
        eq._pool[0].kill()
        eq._pool[0] = dying
        assert eq.many([("\\sqrt{9}", "3"), ("\\sqrt{2}", "\\sqrt{3}")]) == [True, False]
        assert eq._pool[0].ready and eq._pool[0].attempt == 2
    finally:
        eq.close()

    class StillBorn(grader._Worker):
        def __init__(self, attempt: int = 1) -> None:
            super().__init__(attempt)
            self.process.kill()
            self.process.join()

    monkeypatch.setattr(grader, "_Worker", StillBorn)
    broken = AnswerEquivalence()
    with pytest.raises(RuntimeError, match="did not start"):
        broken.many([("\\sqrt{16}", "4")])
