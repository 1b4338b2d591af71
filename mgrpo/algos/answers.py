"""Final answers: extraction from a response, and the cheap, pure half of deciding equivalence.

Extraction takes the *last* final-answer marker of a response: ``\\boxed{...}`` (nested braces),
``\\boxed 5``, ``\\fbox{...}``, or the ``#### answer`` form of the synthetic task.

Equivalence means math-verify's verdict (gold/reference first), reached as cheaply as possible
(`mgrpo.algos.grader.AnswerEquivalence` runs the whole chain). Each pair goes through, in order:

1. **Identical** normalised strings (`normalize_answer`) are equal. The normal form keeps a space
   wherever math-verify would read the answer differently without it (``32, 349`` is a set,
   ``32,349`` a number; ``28 percent`` is ``28\\%``, ``28percent`` a product of letters), and
   drops the rest: spacing that cannot change math-verify's reading never makes answers differ.
2. **Junk guard** (`is_junk_answer`): an answer longer than `MAX_ANSWER_CHARS` (200) once
   normalised, with an absurd exponent (scientific notation with a 4+ digit exponent such as
   ``121E922011`` or ``1e5000``; a power with a 5+ digit exponent such as ``10^{99999}``), or a
   runaway repetition (a unit of at most 16 characters repeated 8+ times over 32+ characters,
   other than within the digits of one number: ``10^{40}`` written out, ``1,000,000,...``, or a
   repeating decimal ``0.142857142857...`` are answers, which math-verify compares quickly) is
   equivalent to nothing but itself. math-verify's parser alone takes 43 s on ``121E922011``.
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
4. **math-verify**, in a worker process (`mgrpo.algos.grader`), with shortcut rules for pairs it
   can only call "not equivalent" (`mgrpo.algos.verify_rules`).
5. **Hendrycks-style fallback** (`hendrycks_equivalent`): when math-verify cannot parse a side,
   when a comparison runs out of its time, or when a batch's deadline passes before the pair,
   the answers are equivalent iff their classic MATH normal forms (after Hendrycks et al.
   2021: no ``\\left``/``\\right``, spaces, units, ``^\\circ``, ``\\$``, ``\\%``;
   ``\\frac12`` braced; ``0.5`` as ``\\frac{1}{2}``; ...) are identical.

Departures: the authors' reward managers compare raw strings, so ``\\frac{1}{2}`` and ``0.5``
are different answers there; here they are one. Relative to plain math-verify: two answers of
which it cannot parse one used to be "not equivalent", and now their Hendrycks normal forms
decide; a junk answer is equivalent only to an identical string.
"""

from __future__ import annotations

import functools
import re
from fractions import Fraction
from typing import Optional

_BOX_COMMANDS = ("\\boxed", "\\fbox")

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


# LaTeX's control space "\ " (math-verify's own rule: not after another backslash) and "\!" with the
# whitespace after it (math-verify removes both so): "x = -5,\ p" is "x = -5, p".
_CONTROL_SPACE_RE = re.compile(r"(?<!\\)\\\s")
_NEGATIVE_SPACE_RE = re.compile(r"\\!\s*")
# A comma (or "{,}") between a digit and a group of exactly three digits, with the whitespace
# around it; else a run of whitespace. latex2sympy reads "32,349" (and "32{,}349") as 32349,
# but "32, 349" and "32 ,349" as the set {32, 349}.
_SPACING_RE = re.compile(r"(?<=\d)(?P<pre>\s*)(?P<sep>,|\{\s*,\s*\})(?P<post>\s*)(?=\d{3}(?!\d))|(?P<space>\s+)")
_TOKEN_CHAR_RE = re.compile(r"[\w.]")
# After "\frac" and "\sqrt", math-verify reads "\frac 59" as "\frac59" and "\sqrt 3" as "\sqrt3"
# (its `\frac\s?(\d)` and `\sqrt\s?(\d)` rules), so the space before a digit may go there; after
# another command it may not ("2\cdot 5" parses, "2\cdot5" does not).
_DIGIT_ARGUMENT_COMMAND_RE = re.compile(r"\\(?:frac|sqrt)$")


def _respace(match: re.Match) -> str:
    """The normal form of one `_SPACING_RE` match in `match.string` (see `normalize_answer`)."""
    if match["space"] is None:
        sep = "," if match["sep"] == "," else "{,}"
        return (" " if match["pre"] else "") + sep + (" " if match["post"] else "")
    text, start, end = match.string, match.start(), match.end()
    before, after = text[start - 1 : start], text[end : end + 1]
    if _TOKEN_CHAR_RE.match(before) and _TOKEN_CHAR_RE.match(after):
        return "" if after.isdigit() and _DIGIT_ARGUMENT_COMMAND_RE.search(text, 0, start) else " "
    return " " if before == "\\" and after.isalpha() else ""  # "\\ x" (a line break, x) is not "\\x"


@functools.lru_cache(maxsize=65536)
def normalize_answer(answer: str) -> str:
    """Canonical form of an answer, for the identical-string fast path and for math-verify (which
    is given this form): no ``$`` or ``\\$``, no ``\\left``/``\\right`` (whole commands only:
    ``\\leftarrow`` stays), no ``\\!``, ``\\dfrac``/``\\tfrac`` as ``\\frac``, the control space
    ``\\ `` as a space; then each run of whitespace is dropped, or kept as one space where it
    separates tokens that would otherwise merge (math-verify reads the two spellings differently):

    - between two of letters, digits, ``_`` and ``.``: ``28 percent`` (math-verify reads
      ``\\bpercent\\b`` as ``\\%``; ``28percent`` is a product of letters), ``\\pi r``, ``32 349``,
      ``\\text{no solution}``; except before a digit right after ``\\frac`` or ``\\sqrt``;
    - between a backslash and a letter: ``\\\\ x`` is not ``\\\\x``;
    - on either side of a comma between a digit and a group of exactly three digits: ``32, 349``
      and ``32 ,349`` are the set {32, 349}, ``32,349`` the number 32349.
    """
    s = re.sub(r"\\(?:left|right)(?![A-Za-z])", "", answer)
    s = _NEGATIVE_SPACE_RE.sub("", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\$", "").replace("$", "")
    s = _CONTROL_SPACE_RE.sub(" ", s).strip()
    return _SPACING_RE.sub(_respace, s)


# ---------------------------------------------------------------- junk guard

_HUGE_EXPONENT_RE = re.compile(r"\d\.?[eE][+-]?\d{4,}|\^\{?[+-]?\d{5,}")
_REPEAT_RE = re.compile(r"(.{1,16}?)\1{7,}")
_NUMBER_RE = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?|\.\d+")


def _inside_a_number(numbers: list[tuple[int, int]], start: int, end: int) -> bool:
    return any(lo <= start and end <= hi for lo, hi in numbers)


@functools.lru_cache(maxsize=65536)
def is_junk_normalised(normalised: str) -> bool:
    """`is_junk_answer` of a `normalize_answer` form. Its whitespace is ignored, so that no
    spacing turns junk ("121 E922011") into an answer or an answer into junk."""
    compact = re.sub(r"\s+", "", normalised)
    if len(compact) > MAX_ANSWER_CHARS:
        return True
    if _HUGE_EXPONENT_RE.search(compact):
        return True
    numbers = [m.span() for m in _NUMBER_RE.finditer(compact)]
    return any(
        m.end() - m.start() >= 32 and not _inside_a_number(numbers, m.start(), m.end()) for m in _REPEAT_RE.finditer(compact)
    )


def is_junk_answer(answer: str) -> bool:
    """True for an answer no comparison should spend time on (see the module docstring, rule 2):
    longer than `MAX_ANSWER_CHARS` once normalised, an absurd exponent, or a runaway repetition
    that is not the digits of one number."""
    return is_junk_normalised(normalize_answer(answer))


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
def literal_value(normalised: str) -> Optional[tuple[Fraction, str]]:
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
    la, lb = literal_value(a), literal_value(b)
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
    if is_junk_normalised(a) or is_junk_normalised(b):
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
