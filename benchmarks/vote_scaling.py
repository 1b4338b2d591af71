"""Vote time per step on MATH-style answer pools, old (one math-verify round trip per pair,
serial clustering) vs new (fast paths, parse once, batched waves, junk guard).

    python benchmarks/vote_scaling.py [--data ../shared/data/math500.jsonl] [--steps 5]
        [--baseline-steps 2] [--baseline-junk-steps 1] [--distinct 4 9 16 32] [--workers 1] [--no-baseline]
    python benchmarks/vote_scaling.py --check-pairs 3000   # the grader against plain math-verify

A step is 8 prompts x 32 samples (the paper's batch). Each prompt gets a MATH-500 gold answer
and exactly `distinct` distinct (normalised) answers: the gold and some equivalent respellings
(spacing, ``\\dfrac``, ``\\left(..\\right)``, ``n.0``, decimal <-> fraction), plus distractors
of the same kind (other MATH-500 golds; near misses of numeric golds) and their respellings. Votes
are skewed towards the gold class, every distinct answer is cast at least once. The junk-heavy
pool replaces half the samples by a collapsing policy's outputs (``121E922011``, ``10^{99999}``,
runaway repetitions, 300-character strings); the junk-only pool all of them (no old timing: the
old vote spends minutes per step on such pools).

Every step uses a fresh `AnswerEquivalence` whose worker has started, and compared a few
unrelated pairs (`WARM_UP`), before the clock starts: caches are cold, as for a step whose
prompts are new, but one-time start-up costs are not counted. "prefetched vote" is the vote's
time when `AnswerEquivalence.prefetch(answers)` was called first (a trainer would call it right
after the rollout); "parse moved" is the worker time that prefetch took off the vote, which then
overlaps other phases. Old and new (and prefetched) must give identical votes (groups and
per-sample agreement) on the normal pools: the script checks it on every step it times both ways. Targets set by the team: at 16 distinct answers per prompt the vote takes <= 5%
of a step (~0.5 s for the tiny model on the CPU machine, so <= 25 ms); no step's vote on junk over 1 s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import multiprocessing as mp
import random
import re
import statistics
import threading
import time
from collections import OrderedDict, defaultdict
from fractions import Fraction
from pathlib import Path
from typing import Callable, Optional, Sequence

from mgrpo.algos.answers import normalize_answer
from mgrpo.algos.grader import AnswerEquivalence
from mgrpo.algos.voting import GroupVote, VoteResult, majority_vote

PROMPTS, SAMPLES = 8, 32
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "math500.jsonl"


# ---------------------------------------------------------------- pools

_INT = re.compile(r"-?\d+")
_DEC = re.compile(r"-?\d*\.\d+")
_FRAC = re.compile(r"(-?)\\[dt]?frac\{(\d+)\}\{(\d+)\}")


def _value(gold: str) -> Optional[Fraction]:
    s = normalize_answer(gold)
    if _INT.fullmatch(s) or _DEC.fullmatch(s):
        return Fraction(s)
    m = _FRAC.fullmatch(s)
    if m and int(m[3]):
        v = Fraction(int(m[2]), int(m[3]))
        return -v if m[1] else v
    return None


def _spell(v: Fraction) -> str:
    if v.denominator == 1:
        return str(v.numerator)
    sign = "-" if v < 0 else ""
    return f"{sign}\\frac{{{abs(v.numerator)}}}{{{v.denominator}}}"


def respellings(gold: str) -> list[str]:
    """Spellings of `gold` with the same meaning (some normalise identically, some don't)."""
    out = [" " + gold.replace(",", ", ").replace("+", " + ") + " ", gold.replace("\\frac", "\\dfrac")]
    if not re.search(r",|\\text|\\mbox|\\in|\\\$|=|<|>|\\le|\\ge|\\pm|\\cup|\\circ|\^\\circ", gold):
        out.append(f"\\left( {gold} \\right)")
    v = _value(gold)
    if v is not None:
        if v.denominator == 1:
            out += [f"{v.numerator}.0", f"{v.numerator}.00"]
        else:
            out.append(f"{v.numerator}/{v.denominator}")
            den = v.denominator
            while den % 2 == 0:
                den //= 2
            while den % 5 == 0:
                den //= 5
            if den == 1:
                out.append(str(float(v)))
        out.append(_spell(v))
    return [s for s in out if s.strip() and normalize_answer(s) != normalize_answer(gold)] or [gold + " "]


def junk_answers(rng: random.Random) -> list[str]:
    digits = lambda n: "".join(rng.choice("0123456789") for _ in range(n))  # noqa: E731
    return [
        f"{rng.randint(1, 999)}E{digits(6)}",
        f"{rng.randint(2, 99)}^{{{digits(5)}}}",
        f"1e{rng.randint(1000, 99999)}",
        "1" * rng.randint(40, 120),
        "\\frac{1}{2}" * rng.randint(8, 20),
        "x + " * rng.randint(60, 90) + "1",
        "".join(rng.choice("0123456789+-*/()^") for _ in range(rng.randint(201, 400))),
    ]


def prompt_pool(rng: random.Random, golds: Sequence[str], distinct: int, junk: float = 0.0) -> list[str]:
    """SAMPLES answers for one prompt with `distinct` distinct normalised answers."""
    gold = rng.choice(golds)
    literal = _value(gold) is not None
    same_kind = [g for g in golds if (_value(g) is not None) == literal]
    chosen: "OrderedDict[str, str]" = OrderedDict()  # normalised -> spelling
    classes: list[list[str]] = []

    def add_class(answer: str, extra: int) -> None:
        members = []
        for s in [answer] + rng.sample(respellings(answer), min(extra, len(respellings(answer)))):
            if normalize_answer(s) not in chosen and len(chosen) < distinct:
                chosen[normalize_answer(s)] = s
                members.append(s)
        if members:
            classes.append(members)

    add_class(gold, max(0, distinct // 4 - 1))
    while len(chosen) < distinct:
        if literal and rng.random() < 0.5:
            v = _value(gold) + rng.choice([1, -1, 2, Fraction(1, 7), Fraction(-1, 3), 10])
            add_class(_spell(v), rng.randint(0, 2))
        else:
            add_class(rng.choice(same_kind), rng.randint(0, 2))
    # Votes: every distinct answer once, the rest skewed towards the first (gold) class.
    answers = [s for members in classes for s in members][:SAMPLES]
    weights = [1.0 / (k + 1) ** 1.5 for k in range(len(classes))]
    while len(answers) < SAMPLES:
        members = rng.choices(classes, weights)[0]
        answers.append(rng.choice(members))
    if junk:
        bad = junk_answers(rng)
        for i in rng.sample(range(SAMPLES), round(SAMPLES * junk)):
            answers[i] = rng.choice(bad)
    rng.shuffle(answers)
    return answers


def make_step(rng: random.Random, golds: Sequence[str], distinct: int, junk: float = 0.0) -> tuple[list[str], list[int]]:
    answers, group_ids = [], []
    for p in range(PROMPTS):
        pool = prompt_pool(rng, golds, distinct, junk)
        answers += pool
        group_ids += [p] * len(pool)
    return answers, group_ids


# ---------------------------------------------------------------- BASELINE: the old implementation
# A copy of mgrpo.algos.grader.AnswerEquivalence and mgrpo.algos.voting.majority_vote as they
# were before the batched grader (git aa61b8d), kept here only as the comparison baseline:
# one math-verify round trip per pair in a killable worker, integer and identical-string fast
# paths, serial O(distinct^2) clustering.

_OLD_INT_RE = re.compile(r"[+-]?\d+")


def _old_verify_in_process(gold: str, pred: str) -> bool:
    from math_verify import parse, verify

    def wrap(s: str) -> str:
        return s if "$" in s else f"${s}$"

    gold_parsed = parse(wrap(gold), parsing_timeout=None)
    pred_parsed = parse(wrap(pred), parsing_timeout=None)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))


def _old_worker_loop(conn) -> None:
    import logging

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    import math_verify  # noqa: F401

    conn.send("ready")
    while True:
        try:
            gold, pred = conn.recv()
        except EOFError:
            return
        try:
            conn.send(_old_verify_in_process(gold, pred))
        except Exception:
            conn.send(False)


class BaselineEquivalence:
    """BASELINE (old code): math-verify one pair per round trip, 5 s timeout per pair."""

    def __init__(self, timeout: float = 5.0) -> None:
        self.timeout = timeout
        self._cache: dict[tuple[str, str], bool] = {}
        self._lock = threading.Lock()
        self._process = None
        self._conn = None

    def __call__(self, gold: str, pred: str) -> bool:
        a, b = normalize_answer(gold), normalize_answer(pred)
        if a == b:
            return True
        if _OLD_INT_RE.fullmatch(a) and _OLD_INT_RE.fullmatch(b):
            return int(a) == int(b)
        with self._lock:
            if (a, b) not in self._cache:
                self._cache[(a, b)] = self._verify_with_timeout(a, b)
            return self._cache[(a, b)]

    def _verify_with_timeout(self, gold: str, pred: str) -> bool:
        if self._process is None:
            self.start()
        try:
            self._conn.send((gold, pred))
            if self._conn.poll(self.timeout):
                return bool(self._conn.recv())
        except (EOFError, OSError):
            self.close()
            return False
        self.close()
        return False

    def start(self) -> None:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self._process = ctx.Process(target=_old_worker_loop, args=(child,), daemon=True)
        self._process.start()
        child.close()
        parent.poll(120)
        parent.recv()
        self._conn = parent

    def close(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.join()
            self._conn.close()
        self._process, self._conn = None, None


def baseline_majority_vote(
    answers: Sequence[Optional[str]], group_ids: Sequence[int], equivalent: Callable[[str, str], bool]
) -> VoteResult:
    """BASELINE (old code): serial clustering, one equivalent() call at a time (all voters)."""
    votes_by_group: dict[int, list[str]] = defaultdict(list)
    for answer, group in zip(answers, group_ids):
        votes_by_group.setdefault(group, [])
        if answer is not None:
            votes_by_group[group].append(answer)
    groups, class_of = {}, {}
    for group, group_answers in votes_by_group.items():
        reps: list[str] = []
        assignment: dict[str, str] = {}
        for candidate in sorted({normalize_answer(a) for a in group_answers}):
            assignment[candidate] = next((r for r in reps if equivalent(r, candidate)), candidate)
            if assignment[candidate] == candidate:
                reps.append(candidate)
        class_of[group] = assignment
        counts: dict[str, int] = defaultdict(int)
        for answer in group_answers:
            counts[assignment[normalize_answer(answer)]] += 1
        if not counts:
            groups[group] = GroupVote(None, 0.0, 0, 0)
            continue
        winner = min(counts, key=lambda rep: (-counts[rep], rep))
        label = min(a for a in group_answers if normalize_answer(a) == winner)
        groups[group] = GroupVote(label, counts[winner] / len(group_answers), len(group_answers), len(counts))
    agrees = [
        a is not None and groups[g].label is not None and class_of[g][normalize_answer(a)] == normalize_answer(groups[g].label)
        for a, g in zip(answers, group_ids)
    ]
    return VoteResult(groups, agrees)


# ---------------------------------------------------------------- timing


# Compared by each fresh worker before the clock starts: a trainer's worker lives for the whole
# run, so its one-time warm-up (imports, parser tables, sympy's lazily loaded simplify/solve/sets
# code: 0.2-0.9 s per path on first use) is not part of a step. None of these is in a pool.
WARM_UP = [
    ("\\sqrt{7}+w", "(7,\\frac{\\pi}{7})"),
    ("[7,8)", "w=7"),
    ("7.25", "\\{7,8\\}"),
    ("(7,8]\\cup(9,10)", "7w"),
    ("\\sqrt{7}+w", "w+2.64"),
    ("w=2v+7", "2v-w+7=0"),
    ("w^2-49", "(w-7)(w+7)"),
    ("(7,9)\\cup(10,11)", "[7,11]"),
    ("\\{7,9\\}", "(7,9)"),
]


def time_new(answers: list[str], group_ids: list[int], workers: int) -> tuple[float, VoteResult, AnswerEquivalence]:
    equiv = AnswerEquivalence(workers=workers)
    equiv.many(WARM_UP)
    equiv.verified = 0
    start = time.perf_counter()
    vote = majority_vote(answers, group_ids, equiv)
    elapsed = time.perf_counter() - start
    equiv.close()
    return elapsed, vote, equiv


def time_prefetched(answers: list[str], group_ids: list[int], workers: int) -> tuple[float, float, VoteResult]:
    """(background parse time, vote time): `prefetch` right after the rollout, the vote later
    (in a trainer, the entropy/score phases run in between, on the GPU or other cores)."""
    equiv = AnswerEquivalence(workers=workers)
    equiv.many(WARM_UP)
    start = time.perf_counter()
    equiv.prefetch(answers)
    equiv.many([("\\sqrt{11}+y", "y-\\sqrt{11}")])  # returns once the worker has parsed all
    parsed = time.perf_counter() - start
    start = time.perf_counter()
    vote = majority_vote(answers, group_ids, equiv)
    elapsed = time.perf_counter() - start
    equiv.close()
    return parsed, elapsed, vote


def time_old(answers: list[str], group_ids: list[int]) -> tuple[float, VoteResult]:
    equiv = BaselineEquivalence()
    for gold, pred in WARM_UP:
        equiv(gold, pred)
    equiv._cache.clear()
    start = time.perf_counter()
    vote = baseline_majority_vote(answers, group_ids, equiv)
    elapsed = time.perf_counter() - start
    equiv.close()
    return elapsed, vote


def check_pairs(golds: Sequence[str], n: int, seed: int) -> None:
    """`AnswerEquivalence` against plain math-verify (old semantics) on `n` random pairs plus
    every pair within each gold's family of respellings; prints each disagreement."""
    from math_verify import parse, verify

    rng = random.Random(seed)
    pool = sorted({s for g in golds for s in [g, *respellings(g), f"x = {g}", f"-({g})"] if s.strip()})
    pairs = {(rng.choice(pool), rng.choice(pool)) for _ in range(n)}
    for gold in rng.sample(list(golds), min(len(golds), n // 20)):
        family = [gold, *respellings(gold), f"x = {gold}"]
        pairs |= {(a, b) for a in family for b in family if a != b}
    pairs_list = sorted(pairs)
    equiv = AnswerEquivalence()
    start = time.perf_counter()
    got = equiv.many(pairs_list)
    new_time = time.perf_counter() - start
    equiv.close()
    disagreements = 0
    start = time.perf_counter()
    for (gold, pred), verdict in zip(pairs_list, got):
        a, b = normalize_answer(gold), normalize_answer(pred)
        ga, pb = parse(f"${a}$", parsing_timeout=None), parse(f"${b}$", parsing_timeout=None)
        expected = a == b or bool(ga and pb and verify(ga, pb, timeout_seconds=5))
        if verdict != expected:
            disagreements += 1
            print(f"DISAGREE {gold!r} vs {pred!r}: new {verdict}, math-verify {expected}")
    print(
        f"{len(pairs_list)} pairs, {sum(got)} equivalent; disagreements: {disagreements}; "
        f"new {new_time:.1f} s, plain math-verify {time.perf_counter() - start:.1f} s"
    )


def _same_vote(a: VoteResult, b: VoteResult) -> bool:
    strip = lambda v: {g: (x.label, x.vote_share, x.num_votes, x.num_classes) for g, x in v.groups.items()}  # noqa: E731
    return strip(a) == strip(b) and a.agrees == b.agrees


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--steps", type=int, default=5, help="steps timed with the new vote per setting")
    parser.add_argument("--baseline-steps", type=int, default=2, help="of those, steps also timed with the old vote")
    parser.add_argument("--baseline-junk-steps", type=int, default=1, help="the same for the junk-heavy pool (minutes each)")
    parser.add_argument("--distinct", type=int, nargs="+", default=[4, 9, 16, 32])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check-pairs", type=int, default=0, help="instead: check N pairs against plain math-verify")
    args = parser.parse_args()
    with args.data.open() as f:
        golds = [json.loads(line)["answer"] for line in f]
    if args.check_pairs:
        logging.getLogger("math_verify").setLevel(logging.ERROR)
        check_pairs(golds, args.check_pairs, args.seed)
        return
    rng = random.Random(args.seed)
    baseline_steps = 0 if args.no_baseline else args.baseline_steps

    print(f"{PROMPTS} prompts x {SAMPLES} samples per step; {args.steps} steps per row (fresh caches), workers={args.workers}")
    print("seconds per step: median (max); 'prefetched': the vote after AnswerEquivalence.prefetch, and the parsing it moved off the vote")
    print(
        f"{'pool':>12} | {'old':>8} | {'new':>15} | {'speedup':>7} | {'prefetched vote':>15} | {'parse moved':>11} | "
        f"{'math-verify pairs':>17} | same votes"
    )
    settings = [(f"{d} distinct", d, 0.0) for d in args.distinct] + [("junk-heavy", 9, 0.5), ("junk only", 9, 1.0)]
    for name, distinct, junk in settings:
        new_t, old_t, pre_t, moved_t, pairs, same = [], [], [], [], [], []
        for step in range(args.steps):
            answers, group_ids = make_step(rng, golds, distinct, junk)
            t, vote, equiv = time_new(answers, group_ids, args.workers)
            new_t.append(t)
            pairs.append(equiv.verified)
            moved, t_pre, pre_vote = time_prefetched(answers, group_ids, args.workers)
            pre_t.append(t_pre)
            moved_t.append(moved)
            same.append(_same_vote(vote, pre_vote))
            old_steps = baseline_steps if not junk else 0 if junk == 1.0 else min(baseline_steps, args.baseline_junk_steps)
            if step < old_steps:
                t_old, old_vote = time_old(answers, group_ids)
                old_t.append(t_old)
                if not junk:
                    same.append(_same_vote(vote, old_vote))
        old = f"{statistics.median(old_t):8.3f}" if old_t else f"{'-':>8}"
        speedup = f"{statistics.median(old_t) / statistics.median(new_t):7.1f}" if old_t else f"{'-':>7}"
        junk_note = " (junk does not vote now: old votes differ by design)" if junk and old_t else ""
        print(
            f"{name:>12} | {old} | {statistics.median(new_t):7.3f} ({max(new_t):5.3f}) | {speedup} | "
            f"{statistics.median(pre_t):7.3f} ({max(pre_t):5.3f}) | {statistics.median(moved_t):11.3f} | "
            f"{statistics.median(pairs):17.0f} | {'yes' if all(same) else 'NO'}{junk_note}",
            flush=True,
        )


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
