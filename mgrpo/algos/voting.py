"""Majority vote over equivalence classes of answers, per prompt.

Conventions (pinned by tests):
- Groups are explicit: `group_ids[i]` names the prompt of sample i; order is never assumed.
- Only samples with `voters[i]` True and an extracted answer vote. A sample with no answer never
  votes and never agrees with a label. A *junk* answer (`mgrpo.algos.answers.is_junk_answer`:
  absurdly long, an absurd exponent, a runaway repetition) counts as no answer; `num_junk`
  counts such voters.
- Answers are clustered into equivalence classes: distinct normalised answers are sorted, and each
  joins the first earlier class whose representative it is equivalent to (representative =
  the class's smallest normalised string). Sorting first makes the result independent of the
  order of samples, even when the equivalence is not perfectly transitive.
- Ties between classes with the most votes break to the class whose representative is smallest
  in string order: deterministic and permutation-invariant.
- `min_vote_share`: a prompt whose winning class holds a smaller share of the votes cast gets no
  label (every sample then gets reward 0, so its GRPO advantage is 0).

Batching: the clustering above is sequential (a candidate needs its verdicts against the classes
formed before it), so it runs in *waves* over all groups of the call at once: each wave asks for
every verdict that is needed and not yet known, against the classes known so far, in one call of
`equivalent.many(pairs, deadline)` when the equivalence has one (`AnswerEquivalence` does; any
plain ``(gold, pred) -> bool`` also works, pair by pair). Waves <= the number of classes of the
largest group, and the verdicts asked for are those the one-by-one clustering asks for, plus at
most the pairs after a candidate's first match within one wave: the classes are identical.

Time: `time_budget` (seconds, default `DEFAULT_TIME_BUDGET`) bounds the math-verify work of one
call: pairs still undecided when it runs out take the Hendrycks-style fallback verdict (see
`mgrpo.algos.grader`). Only equivalences with a `many(pairs, deadline)` method are bounded.

Departure from the authors' code and SRT's reference: they count raw strings, splitting
``\\frac{1}{2}``, ``1/2`` and ``0.5`` into three candidates. Here they are one.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Hashable, Optional, Sequence

from mgrpo.algos.answers import is_junk_answer, normalize_answer

Equivalence = Callable[[str, str], bool]

DEFAULT_TIME_BUDGET = 30.0
"""Seconds one `majority_vote` call may spend in math-verify. A step of 8 prompts x 32 samples of
MATH answers takes 0.2-2 s with cold caches on a busy 2-core machine, tens of ms after
`AnswerEquivalence.prefetch` (benchmarks/vote_scaling.py), so the budget only binds when
math-verify meets many slow pairs; it is well above the 5 s a single comparison may take."""


@dataclass(frozen=True)
class GroupVote:
    """The outcome of one prompt's vote."""

    label: Optional[str]
    """The winning class's representative answer; None when no votes or below min share."""
    vote_share: float
    """Votes of the winning class / votes cast (0.0 when no votes were cast)."""
    num_votes: int
    num_classes: int
    num_junk: int = 0
    """Voters whose answer the junk guard rejected (they did not vote)."""


@dataclass(frozen=True)
class VoteResult:
    groups: dict[int, GroupVote]
    """Per group id."""
    agrees: list[bool]
    """Per sample: its answer is in its group's winning class (False without a label or answer)."""


def _verdicts(equivalent: Equivalence, pairs: list[tuple[str, str]], deadline: Optional[float]) -> list[bool]:
    """equivalent(gold, pred) for each pair, in one batch when the equivalence supports it."""
    if not pairs:
        return []
    many = getattr(equivalent, "many", None)
    if callable(many):
        return list(many(pairs, deadline=deadline))
    return [equivalent(gold, pred) for gold, pred in pairs]


@dataclass
class _Clustering:
    """The sequential clustering of one group's sorted distinct answers, decided lazily."""

    distinct: list[str]
    reps: list[int] = field(default_factory=list)
    assignment: dict[int, int] = field(default_factory=dict)
    known: dict[tuple[int, int], bool] = field(default_factory=dict)
    next: int = 0
    asked: dict[int, int] = field(default_factory=dict)
    """Per undecided candidate: how many of `reps` (a prefix) it has been compared with."""
    matched: set[int] = field(default_factory=set)
    """Undecided candidates with a known match: they need no more verdicts."""

    def advance(self) -> None:
        """Decide candidates in order for as long as the verdicts they need are known."""
        while self.next < len(self.distinct):
            m = self.next
            for r in self.reps:
                verdict = self.known.get((r, m))
                if verdict is None:
                    return
                if verdict:
                    self.assignment[m] = r
                    break
            else:
                self.reps.append(m)
                self.assignment[m] = m
            self.next += 1

    def needed(self) -> list[tuple[int, int]]:
        """Unknown verdicts (rep, candidate) for the undecided candidates without a known match,
        against the representatives formed since they were last asked about."""
        out = []
        for m in range(self.next, len(self.distinct)):
            if m not in self.matched:
                out.extend((r, m) for r in self.reps[self.asked.get(m, 0) :])
                self.asked[m] = len(self.reps)
        return out

    def learn(self, pair: tuple[int, int], verdict: bool) -> None:
        self.known[pair] = verdict
        if verdict:
            self.matched.add(pair[1])

    def result(self) -> dict[str, str]:
        return {self.distinct[m]: self.distinct[r] for m, r in self.assignment.items()}


def _cluster_groups(
    answers_by_group: dict[Hashable, list[str]], equivalent: Equivalence, deadline: Optional[float]
) -> dict[Hashable, dict[str, str]]:
    """`cluster_answers` for several groups at once, one batch of verdicts per wave."""
    clusterings = {g: _Clustering(sorted({normalize_answer(a) for a in answers})) for g, answers in answers_by_group.items()}
    while True:
        asked: list[tuple[_Clustering, tuple[int, int]]] = []
        for clustering in clusterings.values():
            clustering.advance()
            asked.extend((clustering, pair) for pair in clustering.needed())
        if not asked:
            return {g: c.result() for g, c in clusterings.items()}
        verdicts = _verdicts(equivalent, [(c.distinct[r], c.distinct[m]) for c, (r, m) in asked], deadline)
        for (clustering, pair), verdict in zip(asked, verdicts):
            clustering.learn(pair, bool(verdict))


def cluster_answers(answers: Sequence[str], equivalent: Equivalence) -> dict[str, str]:
    """Map each distinct normalised answer to its class representative.

    Args:
        answers: answers of one group (any order, duplicates allowed).
        equivalent: equivalence test, called as equivalent(representative, candidate).
    Returns:
        normalised answer -> representative (the smallest normalised answer of its class).
    """
    return _cluster_groups({0: list(answers)}, equivalent, None)[0]


def majority_vote(
    answers: Sequence[Optional[str]],
    group_ids: Sequence[int],
    equivalent: Equivalence,
    voters: Optional[Sequence[bool]] = None,
    min_vote_share: float = 0.0,
    time_budget: Optional[float] = DEFAULT_TIME_BUDGET,
) -> VoteResult:
    """Per-group majority vote over equivalence classes.

    Args:
        answers: (B,) extracted answer per sample, None when there is none.
        group_ids: (B,) prompt id per sample.
        equivalent: answer equivalence, e.g. `AnswerEquivalence()`.
        voters: (B,) whether each sample may vote (e.g. survived the entropy filter);
            default all. Non-voters still get an agreement flag against the label.
        min_vote_share: below this winning share the group is unlabeled.
        time_budget: seconds of math-verify work for the whole call (None: unbounded).
    Returns:
        VoteResult with one GroupVote per group id and a (B,) agreement list.
    """
    if len(answers) != len(group_ids):
        raise ValueError(f"answers ({len(answers)}) and group_ids ({len(group_ids)}) differ in length")
    if voters is None:
        voters = [True] * len(answers)
    if len(voters) != len(answers):
        raise ValueError(f"voters ({len(voters)}) and answers ({len(answers)}) differ in length")
    deadline = None if time_budget is None else time.monotonic() + time_budget
    usable = [a is not None and not is_junk_answer(a) for a in answers]

    votes_by_group: dict[int, list[str]] = defaultdict(list)
    junk: dict[int, int] = defaultdict(int)
    for answer, ok, group, votes in zip(answers, usable, group_ids, voters):
        votes_by_group.setdefault(group, [])
        if votes and ok and answer is not None:
            votes_by_group[group].append(answer)
        elif votes and answer is not None:
            junk[group] += 1

    class_of = _cluster_groups(votes_by_group, equivalent, deadline)
    groups: dict[int, GroupVote] = {}
    for group, group_answers in votes_by_group.items():
        assignment = class_of[group]
        counts: dict[str, int] = defaultdict(int)
        for answer in group_answers:
            counts[assignment[normalize_answer(answer)]] += 1
        if not counts:
            groups[group] = GroupVote(None, 0.0, 0, 0, junk[group])
            continue
        winner = min(counts, key=lambda rep: (-counts[rep], rep))
        share = counts[winner] / len(group_answers)
        label = _original_form(winner, group_answers) if share >= min_vote_share else None
        groups[group] = GroupVote(label, share, len(group_answers), len(counts), junk[group])

    # Voters agree through their class; non-voters are compared with the label (one batch).
    agrees = [False] * len(answers)
    asked: list[int] = []
    pairs: list[tuple[str, str]] = []
    for i, (answer, ok, group, votes) in enumerate(zip(answers, usable, group_ids, voters)):
        label = groups[group].label
        if answer is None or not ok or label is None:
            continue
        if votes:
            agrees[i] = class_of[group][normalize_answer(answer)] == normalize_answer(label)
        else:
            asked.append(i)
            pairs.append((normalize_answer(label), normalize_answer(answer)))
    for i, verdict in zip(asked, _verdicts(equivalent, pairs, deadline)):
        agrees[i] = bool(verdict)
    return VoteResult(groups, agrees)


def _original_form(representative: str, answers: Sequence[str]) -> str:
    """The smallest original spelling whose normalised form is the representative."""
    return min(a for a in answers if normalize_answer(a) == representative)
