"""Majority vote over equivalence classes of answers, per prompt.

Conventions (pinned by tests):
- Groups are explicit: `group_ids[i]` names the prompt of sample i; order is never assumed.
- Only samples with `voters[i]` True and an extracted answer vote. A sample with no answer never
  votes and never agrees with a label.
- Answers are clustered into equivalence classes: distinct normalised answers are sorted, and each
  joins the first earlier class whose representative it is equivalent to (representative =
  the class's smallest normalised string). Sorting first makes the result independent of the
  order of samples, even when the equivalence is not perfectly transitive.
- Ties between classes with the most votes break to the class whose representative is smallest
  in string order: deterministic and permutation-invariant.
- `min_vote_share`: a prompt whose winning class holds a smaller share of the votes cast gets no
  label (every sample then gets reward 0, so its GRPO advantage is 0).

Departure from the authors' code and SRT's reference: they count raw strings, splitting
``\\frac{1}{2}``, ``1/2`` and ``0.5`` into three candidates. Here they are one.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from mgrpo.algos.answers import normalize_answer

Equivalence = Callable[[str, str], bool]


@dataclass(frozen=True)
class GroupVote:
    """The outcome of one prompt's vote."""

    label: Optional[str]
    """The winning class's representative answer; None when no votes or below min share."""
    vote_share: float
    """Votes of the winning class / votes cast (0.0 when no votes were cast)."""
    num_votes: int
    num_classes: int


@dataclass(frozen=True)
class VoteResult:
    groups: dict[int, GroupVote]
    """Per group id."""
    agrees: list[bool]
    """Per sample: its answer is in its group's winning class (False without a label or answer)."""


def cluster_answers(answers: Sequence[str], equivalent: Equivalence) -> dict[str, str]:
    """Map each distinct normalised answer to its class representative.

    Args:
        answers: answers of one group (any order, duplicates allowed).
        equivalent: equivalence test, called as equivalent(representative, candidate).
    Returns:
        normalised answer -> representative (the smallest normalised answer of its class).
    """
    distinct = sorted({normalize_answer(a) for a in answers})
    representatives: list[str] = []
    assignment: dict[str, str] = {}
    for candidate in distinct:
        for rep in representatives:
            if equivalent(rep, candidate):
                assignment[candidate] = rep
                break
        else:
            representatives.append(candidate)
            assignment[candidate] = candidate
    return assignment


def majority_vote(
    answers: Sequence[Optional[str]],
    group_ids: Sequence[int],
    equivalent: Equivalence,
    voters: Optional[Sequence[bool]] = None,
    min_vote_share: float = 0.0,
) -> VoteResult:
    """Per-group majority vote over equivalence classes.

    Args:
        answers: (B,) extracted answer per sample, None when there is none.
        group_ids: (B,) prompt id per sample.
        equivalent: answer equivalence, e.g. `AnswerEquivalence()`.
        voters: (B,) whether each sample may vote (e.g. survived the entropy filter);
            default all. Non-voters still get an agreement flag against the label.
        min_vote_share: below this winning share the group is unlabeled.
    Returns:
        VoteResult with one GroupVote per group id and a (B,) agreement list.
    """
    if len(answers) != len(group_ids):
        raise ValueError(f"answers ({len(answers)}) and group_ids ({len(group_ids)}) differ in length")
    if voters is None:
        voters = [True] * len(answers)
    if len(voters) != len(answers):
        raise ValueError(f"voters ({len(voters)}) and answers ({len(answers)}) differ in length")

    votes_by_group: dict[int, list[str]] = defaultdict(list)
    for answer, group, votes in zip(answers, group_ids, voters):
        votes_by_group.setdefault(group, [])
        if votes and answer is not None:
            votes_by_group[group].append(answer)

    groups: dict[int, GroupVote] = {}
    class_of: dict[int, dict[str, str]] = {}
    for group, group_answers in votes_by_group.items():
        assignment = cluster_answers(group_answers, equivalent)
        class_of[group] = assignment
        counts: dict[str, int] = defaultdict(int)
        for answer in group_answers:
            counts[assignment[normalize_answer(answer)]] += 1
        if not counts:
            groups[group] = GroupVote(None, 0.0, 0, 0)
            continue
        winner = min(counts, key=lambda rep: (-counts[rep], rep))
        share = counts[winner] / len(group_answers)
        label = _original_form(winner, group_answers) if share >= min_vote_share else None
        groups[group] = GroupVote(label, share, len(group_answers), len(counts))

    agrees = []
    for answer, group, votes in zip(answers, group_ids, voters):
        vote = groups[group]
        if answer is None or vote.label is None:
            agrees.append(False)
            continue
        normalised = normalize_answer(answer)
        rep = class_of[group].get(normalised) if votes else None
        if rep is None:
            agrees.append(equivalent(normalize_answer(vote.label), normalised))
        else:
            agrees.append(rep == normalize_answer(vote.label))
    return VoteResult(groups, agrees)


def _original_form(representative: str, answers: Sequence[str]) -> str:
    """The smallest original spelling whose normalised form is the representative."""
    return min(a for a in answers if normalize_answer(a) == representative)
