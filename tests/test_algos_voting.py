"""Majority vote over equivalence classes (mgrpo.algos.voting).

Most tests use `fraction_equiv`, a deterministic stand-in for math-verify that knows integers,
decimals, ``a/b`` and ``\\frac{a}{b}``; the batched-vote and timing tests run the real
`AnswerEquivalence` on MATH-500 answers.
"""

from __future__ import annotations

import json
import random
import re
import time
from fractions import Fraction
from pathlib import Path
from typing import Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mgrpo.algos.answers import is_junk_answer, normalize_answer
from mgrpo.algos.grader import AnswerEquivalence
from mgrpo.algos.voting import GroupVote, VoteResult, cluster_answers, majority_vote

_FRAC = re.compile(r"\\frac\{(-?\d+)\}\{(\d+)\}")


def _value(answer: str) -> Optional[Fraction]:
    s = answer.replace(" ", "")
    match = _FRAC.fullmatch(s)
    try:
        return Fraction(int(match.group(1)), int(match.group(2))) if match else Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def fraction_equiv(a: str, b: str) -> bool:
    va, vb = _value(a), _value(b)
    return a == b if va is None or vb is None else va == vb


def test_fraction_equiv_stand_in() -> None:
    assert fraction_equiv("\\frac{1}{2}", "0.5") and fraction_equiv("1/2", "0.5")
    assert not fraction_equiv("3", "4") and fraction_equiv("x", "x") and not fraction_equiv("x", "y")


# ---------------------------------------------------------------- hand cases


def test_simple_majority() -> None:
    result = majority_vote(["3", "4", "3", "5", "3"], [0, 0, 0, 0, 0], fraction_equiv)
    assert result.groups == {0: GroupVote(label="3", vote_share=0.6, num_votes=5, num_classes=3)}
    assert result.agrees == [True, False, True, False, True]


def test_equivalent_spellings_vote_together() -> None:
    # Raw-string counting would elect "7" (2 votes vs 1 + 1 + 1); as one class, 1/2 has 3 votes.
    answers = ["\\frac{1}{2}", "7", "1/2", "7", "0.5"]
    result = majority_vote(answers, [0] * 5, fraction_equiv)
    vote = result.groups[0]
    # class {"0.5", "1/2", "\\frac{1}{2}"}: representative = smallest normalised string "0.5".
    assert vote == GroupVote(label="0.5", vote_share=0.6, num_votes=5, num_classes=2)
    assert result.agrees == [True, False, True, False, True]


def test_equivalent_spellings_vote_together_with_math_verify() -> None:
    equiv = AnswerEquivalence()
    try:
        answers = ["\\frac{1}{2}", "7", "1/2", "7", "0.5", "\\dfrac{1}{2}"]
        result = majority_vote(answers, [0] * 6, equiv)
    finally:
        equiv.close()
    assert result.groups[0] == GroupVote(label="0.5", vote_share=4 / 6, num_votes=6, num_classes=2)
    assert result.agrees == [True, False, True, False, True, True]


def test_no_answer_does_not_vote_or_agree() -> None:
    result = majority_vote(["3", None, None, "4", "3"], [0] * 5, fraction_equiv)
    # 3 votes cast: "3" twice, "4" once.
    assert result.groups[0] == GroupVote(label="3", vote_share=2 / 3, num_votes=3, num_classes=2)
    assert result.agrees == [True, False, False, False, True]


def test_group_without_votes_is_unlabeled() -> None:
    result = majority_vote([None, None, "5"], [0, 0, 1], fraction_equiv)
    assert result.groups[0] == GroupVote(label=None, vote_share=0.0, num_votes=0, num_classes=0)
    assert result.groups[1] == GroupVote(label="5", vote_share=1.0, num_votes=1, num_classes=1)
    assert result.agrees == [False, False, True]


def test_tie_breaks_to_smallest_representative() -> None:
    # Two classes with 2 votes each: {"\\frac{1}{2}", "1/2"} (representative "1/2") and {"3"}.
    # "1/2" < "3" in string order, so the fraction wins, whatever the sample order.
    for answers in (["\\frac{1}{2}", "1/2", "3", "3"], ["3", "3", "1/2", "\\frac{1}{2}"]):
        result = majority_vote(answers, [0] * 4, fraction_equiv)
        assert result.groups[0] == GroupVote(label="1/2", vote_share=0.5, num_votes=4, num_classes=2)
    # Plain strings: "10" < "9" in string order (not numeric order).
    result = majority_vote(["9", "10"], [0, 0], fraction_equiv)
    assert result.groups[0].label == "10"
    assert result.agrees == [False, True]


def test_label_is_smallest_original_spelling_of_the_representative() -> None:
    # "1 / 2" and "1/2 " both normalise to "1/2"; the label is the smaller raw spelling
    # (" " sorts before "/").
    result = majority_vote(["1/2 ", "1 / 2", "5"], [0, 0, 0], fraction_equiv)
    assert result.groups[0].label == "1 / 2"
    assert result.agrees == [True, True, False]


def test_min_vote_share_leaves_group_unlabeled() -> None:
    answers = ["3", "3", "4"]  # winning share 2/3
    labeled = majority_vote(answers, [0, 0, 0], fraction_equiv, min_vote_share=0.6)
    assert labeled.groups[0].label == "3"
    exact = majority_vote(answers, [0, 0, 0], fraction_equiv, min_vote_share=2 / 3)
    assert exact.groups[0].label == "3"  # share >= min keeps the label
    unlabeled = majority_vote(answers, [0, 0, 0], fraction_equiv, min_vote_share=0.7)
    assert unlabeled.groups[0] == GroupVote(label=None, vote_share=2 / 3, num_votes=3, num_classes=2)
    assert unlabeled.agrees == [False, False, False]


def test_voters_mask_excludes_votes_but_not_agreement() -> None:
    # Votes: "5" x2 (voters), "7" x1 (voter); the two non-voting "7"s would have made "7" win.
    answers = ["5", "5", "7", "7", "7", "0.5e1", None]
    voters = [True, True, True, False, False, False, False]
    result = majority_vote(answers, [0] * 7, fraction_equiv, voters=voters)
    assert result.groups[0] == GroupVote(label="5", vote_share=2 / 3, num_votes=3, num_classes=2)
    # Non-voters still get flags: "7" disagrees, "0.5e1" (== 5) agrees, None never agrees.
    assert result.agrees == [True, True, False, False, False, True, False]


def test_interleaved_group_ids() -> None:
    answers = ["1", "a", "2", "b", "1", "b", "2", "2"]
    group_ids = [7, 3, 7, 3, 7, 3, 7, 7]
    result = majority_vote(answers, group_ids, fraction_equiv)
    assert result.groups == {
        7: GroupVote(label="2", vote_share=0.6, num_votes=5, num_classes=2),
        3: GroupVote(label="b", vote_share=2 / 3, num_votes=3, num_classes=2),
    }
    assert result.agrees == [False, False, True, True, False, True, True, True]


def test_length_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="group_ids"):
        majority_vote(["1", "2"], [0], fraction_equiv)
    with pytest.raises(ValueError, match="voters"):
        majority_vote(["1", "2"], [0, 0], fraction_equiv, voters=[True])


def test_cluster_answers_representatives() -> None:
    assignment = cluster_answers(["\\frac{1}{2}", "0.5", "3", "1/2", "3.0", "x"], fraction_equiv)
    assert assignment == {"0.5": "0.5", "1/2": "0.5", "\\frac{1}{2}": "0.5", "3": "3", "3.0": "3", "x": "x"}


# ---------------------------------------------------------------- properties

ANSWER_POOL = ["1/2", "0.5", "\\frac{1}{2}", "3", "3.0", "4", "x", None]

samples = st.lists(
    st.tuples(st.sampled_from(ANSWER_POOL), st.integers(0, 3), st.booleans()),
    min_size=0,
    max_size=14,
)


@settings(max_examples=60, deadline=None)
@given(samples=samples, seed=st.randoms(use_true_random=False), min_share=st.sampled_from([0.0, 0.4, 0.5, 0.75]))
def test_permutation_invariance(samples, seed, min_share) -> None:
    answers = [s[0] for s in samples]
    groups = [s[1] for s in samples]
    voters = [s[2] for s in samples]
    base = majority_vote(answers, groups, fraction_equiv, voters=voters, min_vote_share=min_share)

    order = list(range(len(samples)))
    seed.shuffle(order)  # moves samples within and between positions of all groups
    permuted = majority_vote(
        [answers[i] for i in order],
        [groups[i] for i in order],
        fraction_equiv,
        voters=[voters[i] for i in order],
        min_vote_share=min_share,
    )
    assert permuted.groups == base.groups
    assert permuted.agrees == [base.agrees[i] for i in order]


@settings(max_examples=60, deadline=None)
@given(samples=samples, min_share=st.sampled_from([0.0, 0.4, 0.5, 0.75, 1.0]))
def test_label_none_iff_no_votes_or_low_share(samples, min_share) -> None:
    answers = [s[0] for s in samples]
    groups = [s[1] for s in samples]
    voters = [s[2] for s in samples]
    result = majority_vote(answers, groups, fraction_equiv, voters=voters, min_vote_share=min_share)
    assert set(result.groups) == set(groups)
    for group, vote in result.groups.items():
        cast = [a for a, g, v in zip(answers, groups, voters) if g == group and v and a is not None]
        assert vote.num_votes == len(cast)
        assert (vote.label is None) == (len(cast) == 0 or vote.vote_share < min_share)
        if cast:
            # The winner has at least as many votes as any class (brute force over the pool).
            best = max(sum(fraction_equiv(c, a) for a in cast) for c in cast)
            assert vote.vote_share == pytest.approx(best / len(cast))
    for answer, group, agrees in zip(answers, groups, result.agrees):
        label = result.groups[group].label
        assert agrees == (answer is not None and label is not None and fraction_equiv(label, answer))


# ---------------------------------------------------------------- junk answers


def test_junk_answers_do_not_vote() -> None:
    # A collapsing policy's junk (an absurd exponent, a runaway repetition) counts as no answer.
    answers = ["121E922011", "121E922011", "12+" * 12, "5", "5", None]
    result = majority_vote(answers, [0] * 6, fraction_equiv)
    assert result.groups[0] == GroupVote(label="5", vote_share=1.0, num_votes=2, num_classes=1, num_junk=3)
    assert result.agrees == [False, False, False, True, True, False]
    # A junk non-voter never agrees either; only voters count towards num_junk.
    result = majority_vote(["5", "121E922011"], [0, 0], fraction_equiv, voters=[True, False])
    assert result.groups[0].num_junk == 0 and result.agrees == [True, False]


def test_long_numbers_vote(real_equiv) -> None:
    # A power of ten written out is an answer, not junk: it votes, and it wins here.
    ten_to_40 = "1" + "0" * 40
    result = majority_vote([ten_to_40, ten_to_40, "10^{40}", "5", "5"], [0] * 5, real_equiv)
    assert result.groups[0] == GroupVote(label=ten_to_40, vote_share=0.6, num_votes=5, num_classes=2, num_junk=0)
    assert result.agrees == [True, True, True, False, False]


def test_spacing_that_splits_an_answer_splits_its_class(real_equiv) -> None:
    # "32, 349" is the two-element answer {32, 349}, not the number 32349 (math-verify's
    # reading): they are two classes, and the spellings of each class stay together.
    answers = ["32, 349", "349, 32", "32349", "32,349", "28 percent", "28\\%"]
    result = majority_vote(answers, [0, 0, 0, 0, 1, 1], real_equiv)
    assert result.groups[0] == GroupVote(label="32, 349", vote_share=0.5, num_votes=4, num_classes=2)
    assert result.agrees[:4] == [True, True, False, False]
    assert result.groups[1] == GroupVote(label="28 percent", vote_share=1.0, num_votes=2, num_classes=1)


# ---------------------------------------------------------------- batched clustering


def serial_cluster(answers: list[str], equivalent) -> dict[str, str]:
    """The one-pair-at-a-time clustering (the reference): each sorted candidate joins the first
    representative it is equivalent to."""
    reps: list[str] = []
    assignment: dict[str, str] = {}
    for candidate in sorted({normalize_answer(a) for a in answers}):
        assignment[candidate] = next((r for r in reps if equivalent(r, candidate)), candidate)
        if assignment[candidate] == candidate:
            reps.append(candidate)
    return assignment


def serial_vote(answers, group_ids, equivalent, voters, min_share) -> VoteResult:
    """`majority_vote` with `serial_cluster` and one equivalent() call per non-voter."""
    cast: dict[int, list[str]] = {}
    for a, g, v in zip(answers, group_ids, voters):
        cast.setdefault(g, [])
        if v and a is not None and not is_junk_answer(a):
            cast[g].append(a)
    groups, classes = {}, {}
    for g, group_answers in cast.items():
        classes[g] = serial_cluster(group_answers, equivalent)
        counts: dict[str, int] = {}
        for a in group_answers:
            rep = classes[g][normalize_answer(a)]
            counts[rep] = counts.get(rep, 0) + 1
        if not counts:
            groups[g] = GroupVote(None, 0.0, 0, 0)
            continue
        winner = min(counts, key=lambda r: (-counts[r], r))
        share = counts[winner] / len(group_answers)
        label = min(a for a in group_answers if normalize_answer(a) == winner) if share >= min_share else None
        groups[g] = GroupVote(label, share, len(group_answers), len(counts))
    agrees = []
    for a, g, v in zip(answers, group_ids, voters):
        label = groups[g].label
        if a is None or label is None or is_junk_answer(a):
            agrees.append(False)
        elif v:
            agrees.append(classes[g][normalize_answer(a)] == normalize_answer(label))
        else:
            agrees.append(equivalent(normalize_answer(label), normalize_answer(a)))
    return VoteResult(groups, agrees)


class RecordingEquivalence:
    """A plain relation with a batch interface that records each batch."""

    def __init__(self, relation) -> None:
        self.relation = relation
        self.batches: list[list[tuple[str, str]]] = []

    def __call__(self, a: str, b: str) -> bool:
        return self.relation(a, b)

    def many(self, pairs, deadline=None) -> list[bool]:
        self.batches.append(list(pairs))
        return [self.relation(a, b) for a, b in pairs]


@settings(max_examples=80, deadline=None)
@given(
    words=st.lists(st.sampled_from("abcdefgh"), min_size=0, max_size=12),
    edges=st.sets(st.tuples(st.sampled_from("abcdefgh"), st.sampled_from("abcdefgh"))),
)
def test_waves_equal_serial_clustering_for_any_relation(words, edges) -> None:
    # An arbitrary relation (not symmetric, not transitive): the batched waves must still
    # reproduce the serial clustering exactly, with or without a batch interface.
    relation = lambda a, b: (a, b) in edges  # noqa: E731
    expected = serial_cluster(words, relation)
    assert cluster_answers(words, relation) == expected
    recording = RecordingEquivalence(relation)
    assert cluster_answers(words, recording) == expected
    # At most one batch per class, and never a pair asked twice.
    asked = [pair for batch in recording.batches for pair in batch]
    assert len(recording.batches) <= len(set(expected.values()))
    assert len(asked) == len(set(asked))


def test_one_batch_per_wave_across_groups() -> None:
    # 3 groups, each with the sorted answers "0.5", "1", "1/2", "3", "x" (4 classes): wave 1
    # asks "0.5" against the other four answers; "1" then founds a class, so wave 2 asks "1"
    # against "3" and "x"; wave 3 asks "3" against "x". Three batches, however many groups.
    recording = RecordingEquivalence(fraction_equiv)
    answers = ["1", "0.5", "1/2", "3", "x"] * 3
    result = majority_vote(answers, [0] * 5 + [1] * 5 + [2] * 5, recording)
    assert [v.num_classes for v in result.groups.values()] == [4, 4, 4]
    assert len(recording.batches) == 3
    assert len(recording.batches[0]) == 3 * 4  # the first class against every other answer


MATH500 = Path(__file__).resolve().parents[2] / "shared" / "data" / "math500.jsonl"


def _math500_candidates() -> list[str]:
    if not MATH500.is_file():
        return []
    with MATH500.open() as f:
        golds = [json.loads(line)["answer"] for line in f]
    rng = random.Random(0)
    out: list[str] = []
    for gold in rng.sample(golds, 25):
        out += [gold, f"\\left( {gold} \\right)", gold.replace("\\frac", "\\dfrac"), f" {gold} "]
        value = _value(gold)
        if value is not None:
            out += [str(float(value)), f"{value.numerator}/{value.denominator}", str(value + 1)]
    return out + ["121E922011", "12+" * 12]


MATH500_CANDIDATES = _math500_candidates()


@pytest.fixture(scope="module")
def real_equiv():
    equiv = AnswerEquivalence()
    yield equiv
    equiv.close()


@pytest.mark.skipif(not MATH500_CANDIDATES, reason="MATH-500 data is not available")
@settings(max_examples=25, deadline=None)
@given(
    samples=st.lists(
        st.tuples(st.sampled_from(MATH500_CANDIDATES or ["0"]), st.integers(0, 2), st.booleans()), min_size=1, max_size=24
    ),
    min_share=st.sampled_from([0.0, 0.5]),
)
def test_batched_vote_equals_pairwise_vote_on_math500(real_equiv, samples, min_share) -> None:
    """The batched vote (waves of `AnswerEquivalence.many`) and the serial vote (one
    `AnswerEquivalence.__call__` per pair) give identical classes, labels and agreement."""
    answers = [s[0] for s in samples]
    groups = [s[1] for s in samples]
    voters = [s[2] for s in samples]
    batched = majority_vote(answers, groups, real_equiv, voters=voters, min_vote_share=min_share)
    pairwise = serial_vote(answers, groups, lambda a, b: real_equiv(a, b), voters, min_share)
    strip = lambda r: {g: (v.label, v.vote_share, v.num_votes, v.num_classes) for g, v in r.groups.items()}  # noqa: E731
    assert strip(batched) == strip(pairwise)
    assert batched.agrees == pairwise.agrees


# ---------------------------------------------------------------- time


def test_junk_heavy_step_is_fast(real_equiv) -> None:
    """8 prompts x 32 samples, half of them junk: the vote returns at once (the benchmark,
    benchmarks/vote_scaling.py, measures it; this is only a sanity bound)."""
    rng = random.Random(1)
    junk = ["121E922011", "7E922011", "10^{99999}", "1e5000", "12+" * 20, "\\frac{1}{2}" * 12, "x+" * 120]
    normal = ["5", "\\frac{1}{2}", "0.5", "\\sqrt{2}", "(1,2)", "7"]
    answers = [rng.choice(junk) if rng.random() < 0.5 else rng.choice(normal) for _ in range(256)]
    real_equiv("\\sqrt{2}", "\\sqrt{3}")  # the worker is running before the clock starts
    start = time.monotonic()
    result = majority_vote(answers, [i // 32 for i in range(256)], real_equiv)
    assert time.monotonic() - start < 2.0
    assert sum(v.num_junk for v in result.groups.values()) == sum(a in junk for a in answers)


def test_time_budget_bounds_the_vote() -> None:
    # A pair that math-verify cannot finish (9^(9^(9^9))) with a 30 s per-pair timeout: the
    # vote's budget stops it, the pair counts as not equivalent (the fallback's verdict).
    equiv = AnswerEquivalence(timeout=30.0)
    try:
        equiv("\\sqrt{2}", "\\sqrt{3}")
        start = time.monotonic()
        result = majority_vote(["5", "5", "9^{9^{9^{9}}}"], [0, 0, 0], equiv, time_budget=0.5)
        assert time.monotonic() - start < 3.0
        assert result.groups[0] == GroupVote(label="5", vote_share=2 / 3, num_votes=3, num_classes=2)
        assert equiv.over_budget == 1
    finally:
        equiv.close()
