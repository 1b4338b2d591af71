"""`AnswerEquivalence`: math-verify behind the cheap rules, batched, in killable worker processes.

Each pair goes through the rules of `mgrpo.algos.answers` (identical, junk, literals); what they
leave goes to math-verify in a worker process, which parses each distinct answer once (an LRU)
and applies the shortcut rules of `mgrpo.algos.verify_rules` before `verify`; what math-verify
cannot decide takes the Hendrycks-style fallback.

Batches and time: `AnswerEquivalence.many` sends all of its undecided pairs to a worker in one
message and reads each verdict as it comes (so a hang is pinned on the right pair).
math-verify's own timeouts use ``signal.alarm``, which works only in the main thread, so the
worker runs with them disabled and is killed and restarted when one item takes more than
`timeout` seconds; a pair that timed out takes the fallback's verdict (remembered). An optional
deadline bounds a whole batch (the vote's time budget). `prefetch` lets a caller start the
parsing early, e.g. right after the rollout. Nothing here can hang the trainer, and everything
works from any thread.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import threading
import time
from collections import OrderedDict, deque
from typing import Any, Callable, Iterable, Optional, Sequence, Union

from mgrpo.algos.answers import cheap_verdict, hendrycks_equivalent, is_junk_normalised, literal_value, normalize_answer
from mgrpo.algos.verify_rules import differs_from_literal, surely_not_equivalent

_WORKER_START_TIMEOUT = 120.0
_START_ATTEMPTS = 3
"""Starts a worker gets before the environment counts as broken. A signal meant for the job can
kill a worker as it starts: SLURM's SIGTERM on preemption reaches every process of the step, and
submitit lets the trainer itself carry on to its requeue."""
_MAX_PREFETCH_BACKLOG = 1024  # answers a worker may still have to parse before prefetch skips it


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
        gold_literal, pred_literal = literal_value(gold), literal_value(pred)
        if self.shortcuts and (gold_literal is None) != (pred_literal is None):
            # One side is a literal: if the other's parse settles it, skip parsing the literal.
            value = (gold_literal or pred_literal)[0]  # type: ignore[index]
            other = self.parsed(pred if gold_literal is not None else gold)
            if other and differs_from_literal(value, other):
                return False
        gold_parsed, pred_parsed = self.parsed(gold), self.parsed(pred)
        if not gold_parsed or not pred_parsed:
            return None
        if self.shortcuts and surely_not_equivalent(gold_parsed, pred_parsed):
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

    def __init__(self, attempt: int = 1) -> None:
        self.attempt = attempt  # the how-manieth start of this worker slot in a row
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
                if not is_junk_normalised(key) and literal_value(key) is None:
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
                    try:
                        worker.send_parse(chunk)
                    except OSError:  # died since the receive above: parsing is only an optimisation
                        self._restart(worker)

    # ---- the worker pool (called with the lock held)

    def _remember(self, key: tuple[str, str], verdict: bool) -> None:
        self._cache[key] = verdict
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _wait_until_ready(self) -> None:
        """Start missing workers and wait for all to import math-verify."""
        while len(self._pool) < self.workers:
            self._pool.append(_Worker())
        for k in range(len(self._pool)):
            while not self._pool[k].ready:
                worker = self._pool[k]
                try:
                    if worker.conn.poll(max(0.0, worker.started + _WORKER_START_TIMEOUT - time.monotonic())):
                        worker.receive()
                except (EOFError, OSError):
                    if worker.attempt < _START_ATTEMPTS:
                        self._restart(worker, worker.attempt + 1)
                        continue
                if not worker.ready:
                    self.close()
                    raise RuntimeError("the math-verify worker process did not start; is math-verify installed?")

    def _restart(self, worker: _Worker, attempt: int = 1) -> None:
        worker.kill()
        self._pool[self._pool.index(worker)] = _Worker(attempt)  # starts now, awaited when needed

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
                    batch = [todo.popleft() for _ in range(min(chunk, len(todo)))]
                    try:
                        worker.send(batch)
                    except OSError:  # it died idle after its last report (SLURM's SIGTERM reaches it too)
                        todo.extendleft(reversed(batch))
                        self._restart(worker)
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
                        if worker.attempt < _START_ATTEMPTS:
                            todo.extendleft(reversed(worker.pairs_in_flight()))
                            self._restart(worker, worker.attempt + 1)
                            continue
                        self.close()
                        raise RuntimeError(f"the math-verify worker process died while starting, {_START_ATTEMPTS} times in a row") from None
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
        try:
            self.close()
        except Exception:  # noqa: BLE001 - at interpreter exit, modules the workers use may be gone
            pass


_default: Optional[AnswerEquivalence] = None
_default_lock = threading.Lock()


def answers_equivalent(gold: str, pred: str) -> bool:
    """Module-level equivalence using one shared `AnswerEquivalence`."""
    global _default
    with _default_lock:
        if _default is None:
            _default = AnswerEquivalence()
    return _default(gold, pred)

