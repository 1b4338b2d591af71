"""Majority vote over equivalence classes (mgrpo.algos.voting).

Most tests use `fraction_equiv`, a deterministic stand-in for math-verify that knows integers,
decimals, ``a/b`` and ``\\frac{a}{b}``; one test runs the real `AnswerEquivalence`.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mgrpo.algos.answers import AnswerEquivalence
from mgrpo.algos.voting import GroupVote, cluster_answers, majority_vote

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
