"""Final answers: extraction from a response, and mathematical equivalence between answers.

Extraction takes the *last* final-answer marker of a response: ``\\boxed{...}`` (nested braces),
``\\boxed 5``, ``\\fbox{...}``, or the ``#### answer`` form of the synthetic task.

Equivalence means math-verify's verdict (gold/reference first), reached as cheaply as possible.
Each pair goes through, in order:

1. **Identical** normalised strings (`normalize_answer`) are equal.
2. **Junk guard** (`is_junk_answer`): an answer longer than `MAX_ANSWER_CHARS` (200) once
   normalised, with an absurd exponent (scientific notation with a 4+ digit exponent such as
   ``121E922011`` or ``1e5000``; a power with a 5+ digit exponent such as ``10^{99999}``), or a
   runaway repetition (a unit of at most 16 characters repeated 8+ times over 32+ characters)
   is equivalent to nothing but itself. math-verify's parser alone takes 43 s on ``121E922011``.
   The vote goes further and counts a junk answer as *no answer* (`mgrpo.algos.voting`).
   Extraction has no guard (gold answers go through it), and no MATH-500 gold is junk (tested
   on all 500: the longest has 47 characters; the largest exponent in MATH's test set is 2007).
3. **Literals** (`literal_verdict`), compared by exact value with `fractions.Fraction`: integers,
   decimals, ``a/b``, ``\\frac{a}{b}``, ``\\frac ab``, with an optional sign, optionally in one
   pair of parentheses. Two integers: equal iff the same integer. Otherwise equal values are
   equivalent, and different values are not when neither is a decimal (sympy compares rationals
   exactly) or when they differ by more than 1e-5: math-verify rounds floats to 6 decimals, so
   it calls ``0.333333`` and ``\\frac{1}{3}`` equivalent, and such near misses go to it. So does
   any decimal of 1e9 or more, or with more than 15 significant digits.
4. **math-verify**, in a worker process. Each distinct answer is parsed once (a per-worker LRU);
   before `verify`, a pair whose parsed forms settle it cheaply is "not equivalent" without it
   (`_values_differ`): numbers, expressions or tuples whose values at a fixed positive point
   differ by more than max(1e-5, 1e-6 |value|), intervals or unions holding different points,
   objects of kinds that math-verify never matches (a number against an interval), and so on.
   Every rule follows one of math-verify 0.9's paths to "False" (``16\\sqrt{3}`` vs ``13`` took
   0.5 s in sympy's `simplify` before). A literal against a parsed answer that settles it is
   decided without parsing the literal.
5. **Hendrycks-style fallback** (`hendrycks_equivalent`): when math-verify cannot parse a side,
   when a comparison runs out of its `timeout`, or when a batch's deadline passes before the
   pair, the answers are equivalent iff their classic MATH normal forms (after Hendrycks et al.
   2021: no ``\\left``/``\\right``, spaces, units, ``^\\circ``, ``\\$``, ``\\%``; ``\\frac12``
   braced; ``0.5`` as ``\\frac{1}{2}``; ...) are identical.

Rules 3 and 4 never change a verdict: on ~20,000 pairs of MATH-500 answers, respellings and near
misses that they settle, they agree with math-verify on every one (tests/test_algos_grader.py
keeps a sample; `python benchmarks/vote_scaling.py --check-pairs N` reruns it). Rule 4 reads
math-verify 0.9's code paths, so it is switched off under any other math-verify version.

Batches and time: `AnswerEquivalence.many` sends all of its undecided pairs to a worker in one
message and reads each verdict as it comes (so a hang is pinned on the right pair).
math-verify's own timeouts use ``signal.alarm``, which works only in the main thread, so the
worker runs with them disabled and is killed and restarted when one item takes more than
`timeout` seconds; a pair that timed out takes the fallback's verdict (remembered, as before).
An optional deadline bounds a whole batch (the vote's time budget). `prefetch` lets a caller
start the parsing early, e.g. right after the rollout. Nothing here can hang the trainer, and
everything works from any thread.

Departures: the authors' reward managers compare raw strings, so ``\\frac{1}{2}`` and ``0.5``
are different answers there; here they are one. Relative to plain math-verify: two answers of
which it cannot parse one used to be "not equivalent", and now their Hendrycks normal forms
decide; a junk answer is equivalent only to an identical string.
"""

from __future__ import annotations

import contextlib
import functools
import math
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import re
import threading
import time
import zlib
from collections import OrderedDict, deque
from fractions import Fraction
from typing import Any, Callable, Iterable, Optional, Sequence, Union

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_WORKER_START_TIMEOUT = 120.0
_MAX_PREFETCH_BACKLOG = 1024  # answers a worker may still have to parse before prefetch skips it

MAX_ANSWER_CHARS = 200
"""A normalised answer longer than this is junk (MATH's longest gold answer is 73 characters)."""


# ---------------------------------------------------------------- extraction


def _brace_group(text: str, open_index: int) -> Optional[str]:
    """Content of the brace group whose '{' is at `open_index`, or None if unbalanced."""
    depth = 0
    for i in range(open_index, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[open_index + 1 : i]
    return None


def _last_boxed(text: str) -> tuple[int, Optional[str]]:
    """(position, content) of the last \\boxed / \\fbox in `text`; position -1 when none."""
    best_pos, best = -1, None
    for command in _BOX_COMMANDS:
        pos = text.rfind(command)
        while pos != -1:
            rest = pos + len(command)
            brace = len(text) - len(text[rest:].lstrip(" "))  # "\\boxed {x}" is "\\boxed{x}"
            if brace < len(text) and text[brace] == "{":
                content = _brace_group(text, brace)
            elif rest < len(text) and text[rest] == " ":
                match = re.match(r" +([^\s$]+)", text[rest:])
                content = match.group(1) if match else None
            else:
                content = None
            if content is not None:
                if pos > best_pos:
                    best_pos, best = pos, content
                break
            pos = text.rfind(command, 0, pos)
    return best_pos, best


def extract_answer(text: str) -> Optional[str]:
    """The final answer of a response, or None when it states none.

    The last marker wins: ``\\boxed{..}``/``\\fbox{..}`` (nested braces), ``\\boxed x``, or
    ``#### x`` (the rest of that line). Surrounding whitespace and a trailing period are removed;
    an empty answer is None. No junk guard here: gold answers come through this function too.
    """
    box_pos, boxed = _last_boxed(text)
    hash_pos = text.rfind("####")
    if hash_pos > box_pos:
        answer: Optional[str] = text[hash_pos + 4 :].split("\n", 1)[0]
    else:
        answer = boxed
    if answer is None:
        return None
    answer = answer.strip().rstrip(".").strip()
    return answer or None


@functools.lru_cache(maxsize=65536)
def normalize_answer(answer: str) -> str:
    """Cheap canonical form for the identical-string fast path: no whitespace, no ``$`` or
    ``\\$``, no ``\\left``/``\\right`` (whole commands only: ``\\leftarrow`` stays),
    ``\\dfrac``/``\\tfrac`` as ``\\frac``."""
    s = re.sub(r"\\(?:left|right)(?![A-Za-z])", "", answer).replace("\\!", "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\$", "").replace("$", "")
    return re.sub(r"\s+", "", s)


# ---------------------------------------------------------------- junk guard

_HUGE_EXPONENT_RE = re.compile(r"\d\.?[eE][+-]?\d{4,}|\^\{?[+-]?\d{5,}")
_REPEAT_RE = re.compile(r"(.{1,16}?)\1{7,}")


@functools.lru_cache(maxsize=65536)
def _is_junk(normalised: str) -> bool:
    if len(normalised) > MAX_ANSWER_CHARS:
        return True
    if _HUGE_EXPONENT_RE.search(normalised):
        return True
    return any(m.end() - m.start() >= 32 for m in _REPEAT_RE.finditer(normalised))


def is_junk_answer(answer: str) -> bool:
    """True for an answer no comparison should spend time on (see the module docstring, rule 2):
    longer than `MAX_ANSWER_CHARS` once normalised, an absurd exponent, or a runaway repetition."""
    return _is_junk(normalize_answer(answer))


# ---------------------------------------------------------------- literals

_LITERAL_RE = re.compile(
    r"(?P<sign>[+-]?)(?:"
    r"(?P<int>\d+)"
    r"|(?P<dec>\d*\.\d+)"
    r"|(?P<num>\d+)/(?P<den>\d+)"
    r"|\\frac(?:\{(?P<fnum>\d+)\}|(?P<fnum1>\d))(?:\{(?P<fden>\d+)\}|(?P<fden1>\d))"
    r")"
)
_MAX_DECIMAL_DIGITS = 15
_MAX_DECIMAL_MAGNITUDE = 10**9


@functools.lru_cache(maxsize=65536)
def _literal(normalised: str) -> Optional[tuple[Fraction, str]]:
    """(exact value, kind) of a normalised literal, kind in {"int", "decimal", "fraction"};
    None when `normalised` is not a literal (or is a fraction over zero)."""
    match = _LITERAL_RE.fullmatch(normalised)
    if match is None and normalised.startswith("(") and normalised.endswith(")"):
        match = _LITERAL_RE.fullmatch(normalised[1:-1])  # "(5)": math-verify reads it as 5
    if match is None:
        return None
    sign = -1 if match["sign"] == "-" else 1
    if match["int"] is not None:
        return sign * Fraction(int(match["int"])), "int"
    if match["dec"] is not None:
        return sign * Fraction(match["dec"]), "decimal"
    num = match["num"] or match["fnum"] or match["fnum1"]
    den = match["den"] or match["fden"] or match["fden1"]
    if int(den) == 0:
        return None
    return sign * Fraction(int(num), int(den)), "fraction"


def _decimal_in_safe_range(normalised: str, value: Fraction) -> bool:
    digits = re.sub(r"\D", "", normalised).lstrip("0")
    return len(digits) <= _MAX_DECIMAL_DIGITS and abs(value) < _MAX_DECIMAL_MAGNITUDE


def literal_verdict(a: str, b: str) -> Optional[bool]:
    """Equivalence of two normalised literals by exact value; None when either is not a literal
    or math-verify's float rounding could decide otherwise (module docstring, rule 3)."""
    la, lb = _literal(a), _literal(b)
    if la is None or lb is None:
        return None
    (va, ka), (vb, kb) = la, lb
    if ka == kb == "int":
        return va == vb
    if (ka == "decimal" and not _decimal_in_safe_range(a, va)) or (
        kb == "decimal" and not _decimal_in_safe_range(b, vb)
    ):
        return None
    if va == vb:
        return True
    if "decimal" not in (ka, kb):
        return False
    return False if abs(va - vb) > Fraction(1, 100_000) else None


def cheap_verdict(a: str, b: str) -> Optional[bool]:
    """The verdict of rules 1-3 for two normalised answers, or None when math-verify must decide."""
    if a == b:
        return True
    if _is_junk(a) or _is_junk(b):
        return False
    return literal_verdict(a, b)


# ---------------------------------------------------------------- Hendrycks-style fallback

_UNIT_RE = re.compile(r"(?<=\S)\s*\\(?:text|mbox|mathrm)\{\s*[A-Za-z][A-Za-z\s]*\}(?:\^\{?\d\}?)?$")
_SHORT_NAME_RE = re.compile(r"[A-Za-z](?:_?\w)?")


def hendrycks_normalize(answer: str) -> str:
    """The classic MATH normal form (after Hendrycks et al. 2021's ``is_equiv``): no line
    breaks, ``\\!``, ``\\left``/``\\right``, degrees, dollars, percent signs, trailing units
    (``5\\text{ cm}``), spaces or trailing period; ``\\dfrac``/``\\tfrac`` as ``\\frac``;
    ``\\frac12`` and ``\\sqrt3`` braced; a leading ``.5`` as ``0.5``; ``0.5`` as ``\\frac{1}{2}``;
    ``a/b`` of integers as ``\\frac{a}{b}``; ``x = 5`` (a name of at most 2 characters) as ``5``."""
    s = answer.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = s.replace("\\tfrac", "\\frac").replace("\\dfrac", "\\frac")
    s = re.sub(r"\\(?:left|right)(?![A-Za-z])", "", s)
    s = s.replace("^{\\circ}", "").replace("^\\circ", "")
    s = s.replace("\\$", "").replace("$", "").strip()
    s = _UNIT_RE.sub("", s)
    s = s.replace("\\%", "").replace("%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if s.startswith("."):
        s = "0" + s
    left, eq, right = s.partition("=")
    if eq and "=" not in right and _SHORT_NAME_RE.fullmatch(left.strip()):
        s = right
    s = re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)
    s = re.sub(r"\s+", "", s)
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac(\d)\{", r"\\frac{\1}{", s)
    s = re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", s)
    s = s.rstrip(".")
    if s == "0.5":
        s = "\\frac{1}{2}"
    slash = re.fullmatch(r"(-?\d+)/(\d+)", s)
    if slash:
        s = f"\\frac{{{slash[1]}}}{{{slash[2]}}}"
    return s


def hendrycks_equivalent(a: str, b: str) -> bool:
    """True when the Hendrycks-style normal forms of `a` and `b` are identical and non-empty."""
    na = hendrycks_normalize(a)
    return bool(na) and na == hendrycks_normalize(b)


# ---------------------------------------------------------------- the worker process


def _probe_value(name: str) -> float:
    """The positive number a free symbol called `name` takes at the probe point."""
    return 0.5 + (zlib.crc32(name.encode()) % 1000) / 617.0


def _scalar(expr: Any) -> Optional[complex]:
    """The value of a parsed scalar at the probe point: a finite number, ±oo, or an expression in
    free symbols (each set to `_probe_value` of its name); None for anything else (a bare symbol,
    a percent marker, a matrix, a relation, a set, a value that does not evaluate)."""
    from sympy import S, Expr, Symbol
    from sympy.matrices.expressions import MatrixExpr

    if expr is S.Infinity or expr is S.NegativeInfinity:
        return complex(float(expr), 0.0)
    if not isinstance(expr, Expr) or isinstance(expr, (MatrixExpr, Symbol)):
        return None  # (mutable matrices are not Expr, and not hashable for the cache below)
    return _scalar_value(expr)


@functools.lru_cache(maxsize=16384)
def _scalar_value(expr: Any) -> Optional[complex]:
    from sympy import UnevaluatedExpr

    if expr.has(UnevaluatedExpr):
        return None
    point = {s: _probe_value(str(s)) for s in expr.free_symbols}
    try:
        value = complex(expr.evalf(30, subs=point) if point else expr.evalf(30))
    except (TypeError, ValueError, OverflowError, AttributeError):
        return None
    if not (math.isfinite(value.real) and math.isfinite(value.imag)):
        return None
    return value


def _far(a: complex, b: complex) -> bool:
    if math.isinf(abs(a)) or math.isinf(abs(b)):
        return a != b
    return abs(a - b) > max(1e-5, 1e-6 * max(abs(a), abs(b)))


def _kind(obj: Any) -> str:
    """How math-verify compares a parsed object: "N" a number (or ±oo), "E" an expression in free
    symbols (not a bare symbol), "S" a bare symbol, "T" a tuple, "I" an interval with numeric endpoints, "U" a union
    of such intervals, "F" a finite set of 2+ numbers pairwise far apart, "?" anything else."""
    from sympy import FiniteSet, Interval, Symbol, Tuple, Union

    if type(obj) is Tuple:
        return "T"
    if isinstance(obj, Symbol):
        return "S"
    if isinstance(obj, Interval):
        return "I" if _kind(obj.start) == _kind(obj.end) == "N" else "?"
    if isinstance(obj, Union):
        return "U" if all(_kind(a) == "I" for a in obj.args) else "?"
    if isinstance(obj, FiniteSet):
        values = [_scalar(a) if _kind(a) == "N" else None for a in obj.args]
        if len(values) < 2 or any(v is None for v in values):
            return "?"
        distinct = all(_far(a, b) for i, a in enumerate(values) for b in values[i + 1 :])  # type: ignore[arg-type]
        return "F" if distinct else "?"
    value = _scalar(obj)
    if value is None:
        return "?"
    return "E" if getattr(obj, "free_symbols", None) else "N"


def _point_sets_differ(a: Any, b: Any) -> bool:
    """True if the intervals/unions `a` and `b` (numeric endpoints) surely hold different points:
    some point far from every endpoint lies in one and not the other."""
    from sympy import Union

    def spans(obj: Any) -> list[tuple[float, float]]:
        parts = obj.args if isinstance(obj, Union) else (obj,)
        return [(_scalar(p.start).real, _scalar(p.end).real) for p in parts]  # type: ignore[union-attr]

    sa, sb = spans(a), spans(b)
    ends = sorted({x for lo, hi in sa + sb for x in (lo, hi) if math.isfinite(x)})
    if any(not _far(x, y) for x, y in zip(ends, ends[1:])):
        return False  # endpoints too close to pick a clean witness
    probes = [(x + y) / 2 for x, y in zip(ends, ends[1:])] + ([ends[0] - 1, ends[-1] + 1] if ends else [0.0])
    inside = lambda spans_, x: any(lo < x < hi for lo, hi in spans_)  # noqa: E731
    return any(inside(sa, x) != inside(sb, x) for x in probes)


def _unmatched_item(a: Sequence[Any], b: Sequence[Any]) -> bool:
    """True if some scalar of `a` is far from every scalar of `b` or the reverse: then no pairing
    of the items (math-verify sorts set elements, keeps tuple order) makes all pairs equal."""
    va, vb = [_scalar(x) for x in a], [_scalar(x) for x in b]
    if any(v is None for v in va + vb):
        return False
    return any(all(_far(x, y) for y in vb) for x in va) or any(all(_far(y, x) for x in va) for y in vb)  # type: ignore[arg-type]


def _values_differ(gold: Any, pred: Any) -> bool:
    """True only if math-verify 0.9's `sympy_expr_eq(gold, pred)` must be False; False means
    "don't know". Each case follows `sympy_expr_eq` (strict) through `sympy_numeric_eq`,
    `sympy_symbolic_eq` and `sympy_compare_sets`:
    - an equation against a non-equation, or an assignment (``x = 5``) against a non-equation:
      math-verify compares the last right-hand side, and so does this;
    - scalars (N, E): their values at the probe point are far apart (then a - b is not zero, so
      neither rounding, evalf nor simplify can make them equal; positive probe values respect any
      positivity assumption on the symbols);
    - a bare symbol against a scalar: math-verify's own cheap `sympy_compare_symbols` decides;
    - tuples: different lengths, or some element pair differs; a scalar against a tuple of 2+;
    - intervals: different openness or a differing endpoint; intervals/unions holding different
      points; an interval or union against a scalar, an interval against a tuple or finite set
      unless it is open and they have two items (then the endpoints are compared with the items);
    - finite sets (F): against a scalar or union; against a tuple or finite set of another
      length, or with an item far from all of the other's items (whatever order math-verify
      pairs them in); the same against the endpoints of an open interval.
    """
    from math_verify.grader import is_assignment_relation, is_equation, sympy_compare_symbols, take_last_relation
    from sympy import Expr, Symbol

    gold_equation, pred_equation = is_equation(gold), is_equation(pred)
    if pred_equation and not gold_equation:
        return _values_differ(gold, take_last_relation(pred).rhs)
    if is_assignment_relation(gold) and not pred_equation:
        return _values_differ(take_last_relation(gold).rhs, pred)
    if gold == pred:  # math-verify's first test; also spares evaluating e.g. 9^{9^{9^9}} twice
        return False
    if isinstance(gold, Expr) and isinstance(pred, Expr) and (isinstance(gold, Symbol) or isinstance(pred, Symbol)):
        return not sympy_compare_symbols(gold, pred)  # no evaluation needed
    kg, kp = _kind(gold), _kind(pred)
    kinds = {kg, kp}
    if "?" in kinds:
        return False
    if kinds in ({"S", "T"}, {"N", "T"}, {"E", "T"}):
        return len(gold if kg == "T" else pred) != 1
    if kinds <= {"N", "E"}:
        return _far(_scalar(gold), _scalar(pred))  # type: ignore[arg-type]
    if kinds == {"T"}:
        return len(gold) != len(pred) or any(_values_differ(g, p) for g, p in zip(gold.args, pred.args))
    if kinds == {"I"}:
        return (
            gold.left_open != pred.left_open
            or gold.right_open != pred.right_open
            or _values_differ(gold.start, pred.start)
            or _values_differ(gold.end, pred.end)
        )
    if kinds <= {"I", "U"}:
        return _point_sets_differ(gold, pred)
    if kinds in ({"T", "F"}, {"F"}):
        return len(gold) != len(pred) or _unmatched_item(gold.args, pred.args)
    if kinds in ({"I", "T"}, {"I", "F"}):
        interval, items = (gold, pred) if kg == "I" else (pred, gold)
        if not (interval.is_open and len(items) == 2):
            return True
        if kinds == {"I", "F"}:
            return _unmatched_item((interval.start, interval.end), items.args)
        return _values_differ(interval.start, items.args[0]) or _values_differ(interval.end, items.args[1])
    # Left: a scalar (N, E, S) against I, U or F; a union against T or F.
    return True


def _surely_not_equivalent(gold: list[Any], pred: list[Any]) -> bool:
    """True only if `math_verify.verify(gold, pred)` must be False (module docstring, rule 4).
    verify is True iff some (gold item, pred item) pair matches: two strings when equal after
    strip, two sympy objects by `sympy_expr_eq`, a string and an object never."""
    gold_strings = [g.strip() for g in gold if isinstance(g, str)]
    pred_strings = [p.strip() for p in pred if isinstance(p, str)]
    if any(g and g == p for g in gold_strings for p in pred_strings):
        return False
    gold_objects = [g for g in gold if not isinstance(g, str)]
    pred_objects = [p for p in pred if not isinstance(p, str)]
    try:
        return all(_values_differ(g, p) for g in gold_objects for p in pred_objects)
    except Exception:  # anything unexpected: don't know, let math-verify decide
        return False


def _differs_from_literal(value: Fraction, parsed: list[Any]) -> bool:
    """True only if math-verify must find a literal of exact `value` (whose own parse is that
    number: tested) not equivalent to an answer parsed as `parsed`, whatever the other side."""
    from sympy import Rational

    if any(_literal(normalize_answer(p)) is not None for p in parsed if isinstance(p, str)):
        return False  # the other side reads as a literal string: let math-verify compare
    number = Rational(value.numerator, value.denominator)
    objects = [p for p in parsed if not isinstance(p, str)]
    try:
        return all(_values_differ(number, p) for p in objects)
    except Exception:
        return False


class _Verifier:  # pragma: no cover - runs in the worker process
    """math-verify with each distinct answer parsed once (an LRU of parsed forms)."""

    def __init__(self, cache_size: int = 8192) -> None:
        from importlib.metadata import version

        from math_verify import parse, verify

        self._parse, self._verify = parse, verify
        self.shortcuts = version("math-verify").startswith("0.9.")  # rule 4 reads 0.9's code paths
        self._parsed: OrderedDict[str, list[Any]] = OrderedDict()
        self._cache_size = cache_size

    def parsed(self, answer: str) -> list[Any]:
        hit = self._parsed.get(answer)
        if hit is not None:
            self._parsed.move_to_end(answer)
            return hit
        # `answer` is normalised, so it holds no "$": wrap it as inline math.
        value = self._parse(f"${answer}$", parsing_timeout=None)
        self._parsed[answer] = value
        if len(self._parsed) > self._cache_size:
            self._parsed.popitem(last=False)
        return value

    def forget(self) -> None:
        self._parsed.clear()

    def decide(self, gold: str, pred: str) -> Optional[bool]:
        """math-verify's verdict; None when it cannot parse a side (the caller falls back)."""
        gold_literal, pred_literal = _literal(gold), _literal(pred)
        if self.shortcuts and (gold_literal is None) != (pred_literal is None):
            # One side is a literal: if the other's parse settles it, skip parsing the literal.
            value = (gold_literal or pred_literal)[0]  # type: ignore[index]
            other = self.parsed(pred if gold_literal is not None else gold)
            if other and _differs_from_literal(value, other):
                return False
        gold_parsed, pred_parsed = self.parsed(gold), self.parsed(pred)
        if not gold_parsed or not pred_parsed:
            return None
        if self.shortcuts and _surely_not_equivalent(gold_parsed, pred_parsed):
            return False
        return bool(self._verify(gold_parsed, pred_parsed, timeout_seconds=None))


def _worker_loop(conn) -> None:  # pragma: no cover - runs in the child process
    import logging

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    verifier = _Verifier()  # imports math-verify before "ready": start-up is not timed as a comparison
    verifier.decide("\\frac{1}{2}+x", "(1,\\sqrt{2})")  # and warms the parser (lazy set-up)
    verifier.forget()
    conn.send("ready")
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if isinstance(message, tuple):  # ("parse", answers): `AnswerEquivalence.prefetch`
            for answer in message[1]:
                with contextlib.suppress(Exception):
                    verifier.parsed(answer)
                conn.send("parsed")
            continue
        for gold, pred in message:
            # Each verdict is sent at once: when a later pair hangs, the parent must know which
            # (a pure-C computation can hold the GIL, so no helper thread could report for it).
            try:
                verdict = verifier.decide(gold, pred)
            except Exception:
                verdict = False
            conn.send(verdict)


class _Worker:
    """One worker process and the work sent to it that it has not reported yet, in order:
    (gold, pred) pairs awaiting a verdict, and answers (str) awaiting "parsed"."""

    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_loop, args=(child,), daemon=True)
        self.process.start()
        child.close()
        self.conn = parent
        self.ready = False
        self.started = time.monotonic()
        self.in_flight: deque[Union[tuple[str, str], str]] = deque()
        self.pairs = 0  # (gold, pred) pairs among in_flight
        self.progress = self.started  # when the last message arrived (or work was sent to an idle worker)

    def send(self, pairs: list[tuple[str, str]]) -> None:
        self._sent(pairs)
        self.conn.send(pairs)

    def send_parse(self, answers: list[str]) -> None:
        self._sent(answers)
        self.conn.send(("parse", answers))

    def _sent(self, work: Sequence[Union[tuple[str, str], str]]) -> None:
        if not self.in_flight:
            self.progress = time.monotonic()
        self.in_flight.extend(work)
        self.pairs += sum(isinstance(item, tuple) for item in work)

    def pairs_in_flight(self) -> list[tuple[str, str]]:
        return [item for item in self.in_flight if isinstance(item, tuple)]

    def receive(self) -> list[tuple[tuple[str, str], Optional[bool]]]:
        """Verdicts that have arrived, in order; raises EOFError/OSError if the worker died."""
        out = []
        while self.conn.poll():
            message = self.conn.recv()
            self.progress = time.monotonic()
            if message == "ready":
                self.ready = True
                continue
            item = self.in_flight.popleft()
            if message != "parsed":
                self.pairs -= 1
                out.append((item, message))
        return out

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.conn.close()


class AnswerEquivalence:
    """Thread-safe, cached, batched equivalence of answers with hard time limits.

    Args:
        timeout: wall-clock budget in seconds of one math-verify comparison in a worker.
        cache_size: LRU size of the verdict cache, keyed by the ordered normalised pair.
        workers: math-verify worker processes; a batch's pairs are shared between them. 1 by
            default: on the 2-core development machine, 2 workers made a vote 2x slower (each
            parses the answers of its pairs again, and the cores are shared with the trainer).

    `timeouts` counts comparisons that ran out of `timeout`; `over_budget` counts pairs that a
    batch's deadline left to the fallback; `verified` counts pairs sent to math-verify.
    """

    def __init__(self, timeout: float = 5.0, cache_size: int = 100_000, workers: int = 1) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.timeout = timeout
        self.cache_size = cache_size
        self.workers = workers
        self._cache: OrderedDict[tuple[str, str], bool] = OrderedDict()
        self._lock = threading.Lock()
        self._pool: list[_Worker] = []
        self.timeouts = 0
        self.over_budget = 0
        self.verified = 0

    def __call__(self, gold: str, pred: str) -> bool:
        """True when `pred` is mathematically equivalent to `gold` (gold first, as math-verify expects)."""
        return self.many([(gold, pred)])[0]

    def many(self, pairs: Sequence[tuple[str, str]], deadline: Optional[float] = None) -> list[bool]:
        """Verdicts of (gold, pred) pairs; the undecided ones go to math-verify in one batch.

        Args:
            pairs: (gold, pred) answers, any spelling.
            deadline: a `time.monotonic()` instant; pairs math-verify has not decided by then get
                the Hendrycks fallback's verdict (and are not cached). None: no deadline.
        """
        keys = [(normalize_answer(g), normalize_answer(p)) for g, p in pairs]
        out: list[Optional[bool]] = [None] * len(keys)
        undecided: dict[tuple[str, str], list[int]] = {}
        with self._lock:
            for i, key in enumerate(keys):
                verdict = cheap_verdict(*key)
                if verdict is None and key in self._cache:
                    self._cache.move_to_end(key)
                    verdict = self._cache[key]
                if verdict is None:
                    undecided.setdefault(key, []).append(i)
                else:
                    out[i] = verdict
            if undecided:
                for key, verdict in self._verify_batch(list(undecided), deadline).items():
                    for i in undecided[key]:
                        out[i] = verdict
        return [bool(v) for v in out]

    def prefetch(self, answers: Iterable[Optional[str]]) -> None:
        """Start parsing `answers` in the worker(s) and return at once, so that a vote issued
        later (e.g. after the entropy phase) finds them parsed. Literals, junk and None are
        skipped. Only an optimisation: every verdict is the same with or without it."""
        todo: dict[str, None] = {}
        for answer in answers:
            if answer is not None:
                key = normalize_answer(answer)
                if not _is_junk(key) and _literal(key) is None:
                    todo[key] = None
        if not todo:
            return
        with self._lock:
            while len(self._pool) < self.workers:
                self._pool.append(_Worker())
            for worker in list(self._pool):
                try:
                    worker.receive()  # drops "parsed" reports of earlier prefetches
                except (EOFError, OSError):
                    self._restart(worker)
            strings = list(todo)
            for k, worker in enumerate(self._pool):
                chunk = strings[k :: len(self._pool)][: max(0, _MAX_PREFETCH_BACKLOG - len(worker.in_flight))]
                if chunk:
                    worker.send_parse(chunk)

    # ---- the worker pool (called with the lock held)

    def _remember(self, key: tuple[str, str], verdict: bool) -> None:
        self._cache[key] = verdict
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _wait_until_ready(self) -> None:
        """Start missing workers and wait for all to import math-verify."""
        while len(self._pool) < self.workers:
            self._pool.append(_Worker())
        for worker in self._pool:
            if worker.ready:
                continue
            try:
                if worker.conn.poll(max(0.0, worker.started + _WORKER_START_TIMEOUT - time.monotonic())):
                    worker.receive()
            except (EOFError, OSError):
                pass
            if not worker.ready:
                self.close()
                raise RuntimeError("the math-verify worker process did not start; is math-verify installed?")

    def _restart(self, worker: _Worker) -> None:
        worker.kill()
        self._pool[self._pool.index(worker)] = _Worker()  # starts now, awaited when needed

    def _give_up_on_head(self, worker: _Worker, todo: deque, settle: Callable, timed_out: bool) -> None:
        """The worker hung or died on its oldest item: a pair falls back (Hendrycks), an answer
        being prefetched is dropped; the worker is replaced and its other pairs go back to `todo`."""
        if worker.in_flight:
            head = worker.in_flight.popleft()
            if isinstance(head, tuple):
                self.timeouts += int(timed_out)
                settle(head, None)
        todo.extendleft(reversed(worker.pairs_in_flight()))
        self._restart(worker)

    def _verify_batch(self, keys: list[tuple[str, str]], deadline: Optional[float]) -> dict[tuple[str, str], bool]:
        started = time.monotonic()
        self._wait_until_ready()
        if deadline is not None:
            deadline += time.monotonic() - started  # starting the workers is not charged
        self.verified += len(keys)
        results: dict[tuple[str, str], bool] = {}
        todo = deque(keys)
        chunk = len(keys) if self.workers == 1 else max(1, min(32, math.ceil(len(keys) / (2 * self.workers))))

        def settle(key: tuple[str, str], verdict: Optional[bool]) -> None:
            results[key] = hendrycks_equivalent(*key) if verdict is None else verdict
            self._remember(key, results[key])

        while todo or any(w.pairs for w in self._pool):
            for worker in self._pool:
                # Only to an idle worker (a prefetch may still run): a send to a busy one could
                # block on a full pipe, and then no timeout could be enforced.
                if worker.ready and not worker.in_flight and todo:
                    worker.send([todo.popleft() for _ in range(min(chunk, len(todo)))])
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                for worker in list(self._pool):
                    if worker.pairs:
                        todo.extendleft(reversed(worker.pairs_in_flight()))
                        self._restart(worker)
                for key in todo:
                    results[key] = hendrycks_equivalent(*key)
                self.over_budget += len(todo)
                break
            wake = [w.progress + self.timeout for w in self._pool if w.in_flight]
            wake += [w.started + _WORKER_START_TIMEOUT for w in self._pool if not w.ready]
            if deadline is not None:
                wake.append(deadline)
            listening = [w.conn for w in self._pool if w.in_flight or not w.ready]
            mp_connection.wait(listening, timeout=max(0.0, min(wake) - now))
            for worker in list(self._pool):
                try:
                    for key, verdict in worker.receive():
                        settle(key, verdict)
                except (EOFError, OSError):
                    if not worker.ready:
                        self.close()
                        raise RuntimeError("the math-verify worker process died while starting") from None
                    # The worker died mid-comparison: that pair counts as timed out.
                    self._give_up_on_head(worker, todo, settle, timed_out=False)
                    continue
                if worker.in_flight and time.monotonic() - worker.progress > self.timeout:
                    self._give_up_on_head(worker, todo, settle, timed_out=True)
                elif not worker.ready and now - worker.started > _WORKER_START_TIMEOUT:
                    self.close()
                    raise RuntimeError("the math-verify worker process did not restart")
        return results

    def close(self) -> None:
        """Stop the worker processes (new ones start on the next math-verify comparison)."""
        for worker in self._pool:
            worker.kill()
        self._pool = []

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit, modules may already be gone
            self.close()


_default: Optional[AnswerEquivalence] = None
_default_lock = threading.Lock()


def answers_equivalent(gold: str, pred: str) -> bool:
    """Module-level equivalence using one shared `AnswerEquivalence`."""
    global _default
    with _default_lock:
        if _default is None:
            _default = AnswerEquivalence()
    return _default(gold, pred)
