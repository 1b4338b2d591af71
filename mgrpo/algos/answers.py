"""Final answers: extraction from a response, and mathematical equivalence between two answers.

Extraction takes the *last* final-answer marker of a response: ``\\boxed{...}`` (nested braces),
``\\boxed 5``, ``\\fbox{...}``, or the ``#### answer`` form of the synthetic task.

Equivalence is decided by math-verify (gold/reference first), behind two fast paths:
identical normalised strings are equal, and two integers are equal only if they are the same
integer. math-verify's own timeouts use ``signal.alarm``, which works only in the main thread,
so it runs here with its timeouts disabled inside a worker process that is killed and restarted
when a comparison exceeds its time budget. A comparison that times out counts as "not
equivalent": it can never hang the trainer, and it works from any thread.

Departure from the authors' code: their reward managers compare raw strings, so ``\\frac{1}{2}``
and ``0.5`` are different answers there. Here they are one answer.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import re
import threading
from collections import OrderedDict
from typing import Optional

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_INT_RE = re.compile(r"[+-]?\d+")
_WORKER_START_TIMEOUT = 120.0


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
    an empty answer is None.
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


def normalize_answer(answer: str) -> str:
    """Cheap canonical form for the identical-string fast path: no whitespace, no ``$`` or
    ``\\$``, no ``\\left``/``\\right`` (whole commands only: ``\\leftarrow`` stays),
    ``\\dfrac``/``\\tfrac`` as ``\\frac``."""
    s = re.sub(r"\\(?:left|right)(?![A-Za-z])", "", answer).replace("\\!", "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\$", "").replace("$", "")
    return re.sub(r"\s+", "", s)


def _verify_in_process(gold: str, pred: str) -> bool:
    from math_verify import parse, verify

    def wrap(s: str) -> str:
        return s if "$" in s else f"${s}$"

    gold_parsed = parse(wrap(gold), parsing_timeout=None)
    pred_parsed = parse(wrap(pred), parsing_timeout=None)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))


def _worker_loop(conn) -> None:  # pragma: no cover - runs in the child process
    import logging

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    import math_verify  # noqa: F401  (imported before "ready" so start-up is not timed as a comparison)

    conn.send("ready")
    while True:
        try:
            gold, pred = conn.recv()
        except EOFError:
            return
        try:
            conn.send(_verify_in_process(gold, pred))
        except Exception:
            conn.send(False)


class AnswerEquivalence:
    """Thread-safe, cached equivalence of answers with a hard time limit per comparison.

    `timeout` is the wall-clock budget of one math-verify comparison in the worker process.
    The cache is an LRU keyed by the ordered (gold, pred) pair.
    """

    def __init__(self, timeout: float = 5.0, cache_size: int = 100_000) -> None:
        self.timeout = timeout
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, str], bool] = OrderedDict()
        self._lock = threading.Lock()
        self._process: Optional[mp.process.BaseProcess] = None
        self._conn = None
        self.timeouts = 0

    def __call__(self, gold: str, pred: str) -> bool:
        """True when `pred` is mathematically equivalent to `gold` (gold first, as math-verify expects)."""
        a, b = normalize_answer(gold), normalize_answer(pred)
        if a == b:
            return True
        if _INT_RE.fullmatch(a) and _INT_RE.fullmatch(b):
            return int(a) == int(b)
        key = (a, b)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            result = self._verify_with_timeout(a, b)  # the cache key's strings: same key, same answer
            self._cache[key] = result
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
            return result

    def _verify_with_timeout(self, gold: str, pred: str) -> bool:
        if self._process is None or not self._process.is_alive():
            self._start_worker()
        assert self._conn is not None
        try:
            self._conn.send((gold, pred))
            if self._conn.poll(self.timeout):
                return bool(self._conn.recv())
        except (EOFError, OSError):
            # The worker died mid-comparison: count it as "not equivalent" and start afresh.
            self.close()
            return False
        self.timeouts += 1
        self.close()
        return False

    def _start_worker(self) -> None:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self._process = ctx.Process(target=_worker_loop, args=(child,), daemon=True)
        self._process.start()
        child.close()
        try:
            ready = parent.poll(_WORKER_START_TIMEOUT) and parent.recv() == "ready"
        except (EOFError, OSError):
            ready = False
        if not ready:
            self._process.kill()
            raise RuntimeError("the math-verify worker process did not start; is math-verify installed?")
        self._conn = parent

    def close(self) -> None:
        """Stop the worker process (a new one starts on the next slow-path comparison)."""
        if self._process is not None:
            self._process.kill()
            self._process.join()
        if self._conn is not None:
            self._conn.close()
        self._process, self._conn = None, None

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
