"""Shortcut rules of the grader's worker: pairs of parsed answers that math-verify could only
call "not equivalent", settled without running its `verify` (rule 4 of `mgrpo.algos.answers`).

A pair is settled when the parsed forms' values at a fixed positive point differ by more than
max(1e-5, 1e-6 |value|) (numbers, expressions, tuples, element by element), when intervals or
unions hold different points, or when the objects are of kinds math-verify never matches (a
number against an interval, an assignment's right-hand side, a bare symbol). Every rule follows
one of math-verify 0.9's paths to "False" (``16\\sqrt{3}`` vs ``13`` took 0.5 s in sympy's
`simplify` before), so the worker switches them off under any other math-verify version. On
~20,000 pairs of MATH-500 answers, respellings and near misses they settle, they agree with
math-verify on every one (tests/test_algos_grader.py keeps a sample;
`python benchmarks/vote_scaling.py --check-pairs N` reruns it). Runs in the worker process.
"""

from __future__ import annotations

import functools
import math
import zlib
from fractions import Fraction
from typing import Any, Optional, Sequence

from mgrpo.algos.answers import literal_value, normalize_answer


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


def surely_not_equivalent(gold: list[Any], pred: list[Any]) -> bool:
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


def differs_from_literal(value: Fraction, parsed: list[Any]) -> bool:
    """True only if math-verify must find a literal of exact `value` (whose own parse is that
    number: tested) not equivalent to an answer parsed as `parsed`, whatever the other side."""
    from sympy import Rational

    if any(literal_value(normalize_answer(p)) is not None for p in parsed if isinstance(p, str)):
        return False  # the other side reads as a literal string: let math-verify compare
    number = Rational(value.numerator, value.denominator)
    objects = [p for p in parsed if not isinstance(p, str)]
    try:
        return all(_values_differ(number, p) for p in objects)
    except Exception:
        return False

