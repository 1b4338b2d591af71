"""Binary rewards and GRPO advantages (mgrpo.algos.rewards)."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mgrpo.algos.registry import REWARD_SOURCES
from mgrpo.algos.rewards import (
    binary_rewards,
    first_per_group,
    grpo_advantages,
    grpo_advantages_reference,
    ground_truth_rewards,
    pseudo_label_rewards,
    self_certainty_rewards,
)
from mgrpo.algos.voting import majority_vote


def simple_equiv(a: str, b: str) -> bool:
    aliases = {"1/2": "0.5", "\\frac{1}{2}": "0.5"}
    return aliases.get(a, a) == aliases.get(b, b)


class Poison(Sequence):
    """A sequence that fails the test if anything reads it."""

    def __getitem__(self, index):
        raise AssertionError("gold answers were read")

    def __len__(self):
        raise AssertionError("gold answers were read")

    def __iter__(self):
        raise AssertionError("gold answers were read")


def poison_equiv(a: str, b: str) -> bool:
    raise AssertionError("pseudo-label rewards must not re-judge answers")


# ---------------------------------------------------------------- rewards


def test_binary_rewards_hand_case() -> None:
    answers = ["3", None, "4", "0.5", "1/2", "7"]
    references = ["3", "3", None, "1/2", "\\frac{1}{2}", "8"]
    rewards = binary_rewards(answers, references, simple_equiv)
    assert rewards.dtype == torch.float32
    assert rewards.tolist() == [1.0, 0.0, 0.0, 1.0, 1.0, 0.0]


def test_binary_rewards_reference_first() -> None:
    calls = []

    def recording(a: str, b: str) -> bool:
        calls.append((a, b))
        return True

    binary_rewards(["pred"], ["ref"], recording)
    assert calls == [("ref", "pred")]
    with pytest.raises(ValueError, match="differ in length"):
        binary_rewards(["1"], [], simple_equiv)


def test_pseudo_label_rewards_never_read_gold() -> None:
    answers = ["3", "3", "4", None, "0.5", "1/2", "0.5"]
    group_ids = [0, 0, 0, 0, 1, 1, 1]
    vote = majority_vote(answers, group_ids, simple_equiv)
    rewards = pseudo_label_rewards(answers, group_ids, vote, Poison(), poison_equiv)
    assert rewards.tolist() == [1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    # Any gold gives the same rewards: right, wrong, garbage, missing.
    for gold in (["3"] * 4 + ["0.5"] * 3, ["4"] * 7, ["garbage"] * 7, [None] * 7):
        assert pseudo_label_rewards(answers, group_ids, vote, gold, simple_equiv).tolist() == rewards.tolist()


def test_label_free_pipeline_is_independent_of_gold() -> None:
    """vote -> pseudo rewards -> advantages, run with correct and with wrong hidden labels."""
    answers = ["5", "5", "6", "5", "2", "3", "3", None]
    group_ids = [0, 0, 0, 0, 1, 1, 1, 1]
    reward_fn = REWARD_SOURCES["pseudo"]
    outputs = []
    for gold in (["6"] * 4 + ["2"] * 4, ["5"] * 4 + ["3"] * 4, Poison()):
        vote = majority_vote(answers, group_ids, simple_equiv)
        rewards = reward_fn(answers, group_ids, vote, gold, simple_equiv)
        advantages, _ = grpo_advantages(rewards, torch.tensor(group_ids))
        outputs.append(advantages)
    assert torch.equal(outputs[0], outputs[1]) and torch.equal(outputs[0], outputs[2])


def test_ground_truth_rewards_use_gold_not_the_vote() -> None:
    answers = ["5", "5", "6", None]
    group_ids = [0, 0, 0, 0]
    vote = majority_vote(answers, group_ids, simple_equiv)  # would elect "5"
    gold = ["6", "6", "6", "6"]
    assert ground_truth_rewards(answers, group_ids, vote, gold, simple_equiv).tolist() == [0.0, 0.0, 1.0, 0.0]
    assert REWARD_SOURCES["ground_truth"](answers, group_ids, vote, gold, simple_equiv).tolist() == [0.0, 0.0, 1.0, 0.0]


def test_self_certainty_rewards_read_only_the_self_certainty() -> None:
    """Intuitor's reward is each sample's self-certainty: no gold, no vote, no answers, no judge."""
    certainty = torch.tensor([0.5, 1.5, 0.25, 2.0], dtype=torch.float64)
    rewards = self_certainty_rewards(Poison(), [0, 0, 1, 1], None, Poison(), poison_equiv, self_certainty=certainty)
    assert rewards.dtype == torch.float32 and rewards.tolist() == [0.5, 1.5, 0.25, 2.0]
    assert REWARD_SOURCES["self_certainty"] is self_certainty_rewards
    advantages, _ = grpo_advantages(rewards, torch.tensor([0, 0, 1, 1]))
    s = math.sqrt(0.5)  # a pair's advantages are -+1/sqrt(2) (unbiased std), whatever its gap
    assert torch.allclose(advantages, torch.tensor([-s, s, -s, s]), atol=1e-5)
    with pytest.raises(ValueError, match="self-certainty"):
        self_certainty_rewards(["1"], [0], None, ["1"], simple_equiv)
    with pytest.raises(ValueError, match="shape"):
        self_certainty_rewards(["1", "2"], [0, 0], None, ["1", "1"], simple_equiv, self_certainty=torch.zeros(3))


def test_binary_sources_ignore_self_certainty() -> None:
    answers, group_ids = ["5", "5", "6"], [0, 0, 0]
    vote = majority_vote(answers, group_ids, simple_equiv)
    for name in ("pseudo", "ground_truth"):
        plain = REWARD_SOURCES[name](answers, group_ids, vote, ["6"] * 3, simple_equiv)
        given = REWARD_SOURCES[name](answers, group_ids, vote, ["6"] * 3, simple_equiv, self_certainty=torch.ones(3))
        assert plain.tolist() == given.tolist()


def test_first_per_group_by_hand() -> None:
    group_ids = torch.tensor([2, 0, 2, 2, 0, 7, 0, 2, 7])
    assert first_per_group(group_ids, 2).tolist() == [True, True, True, False, True, True, False, False, True]
    assert first_per_group(group_ids, 1).tolist() == [True, True, False, False, False, True, False, False, False]
    assert first_per_group(group_ids, None).all() and first_per_group(group_ids, 10).all()
    assert first_per_group(torch.zeros(0, dtype=torch.long), 2).tolist() == []
    # The trainer's layout (row i * n + j is sample j of prompt i): the first k of each prompt.
    layout = torch.arange(3).repeat_interleave(4)
    assert first_per_group(layout, 2).view(3, 4).tolist() == [[True, True, False, False]] * 3


# ---------------------------------------------------------------- advantages: hand cases


@pytest.mark.parametrize(
    "std_mode, expected",
    [
        # rewards [1, 0, 0]: mean 1/3, centred [2/3, -1/3, -1/3], sum of squares 6/9.
        # unbiased: var = (6/9) / 2 = 1/3, std = 0.5773503 -> [1.1547005, -0.5773503, -0.5773503]
        ("unbiased", [1.1547005, -0.5773503, -0.5773503]),
        # population: var = (6/9) / 3 = 2/9, std = 0.4714045 -> [1.4142136, -0.7071068, -0.7071068]
        ("population", [1.4142136, -0.7071068, -0.7071068]),
    ],
)
def test_hand_case_binary(std_mode: str, expected: list[float]) -> None:
    adv, _ = grpo_advantages(torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0, 0, 0]), eps=0.0, std_mode=std_mode)
    torch.testing.assert_close(adv, torch.tensor(expected))


def test_default_std_mode_is_unbiased_and_eps_is_1e_6() -> None:
    adv, _ = grpo_advantages(torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0, 0, 0]))
    # 0.6666667 / (0.5773503 + 1e-6) = 1.1546985 (not 1.4142 of the population std)
    assert adv[0].item() == pytest.approx(1.1546985, abs=2e-7)
    assert adv[1].item() == pytest.approx(-0.5773493, abs=2e-7)


@pytest.mark.parametrize(
    "std_mode, expected",
    [
        # rewards [2, 0, 1, 1]: mean 1, centred [1, -1, 0, 0], sum of squares 2.
        ("unbiased", [1.2247449, -1.2247449, 0.0, 0.0]),  # std = sqrt(2/3) = 0.8164966
        ("population", [1.4142136, -1.4142136, 0.0, 0.0]),  # std = sqrt(2/4) = 0.7071068
    ],
)
def test_hand_case_non_binary(std_mode: str, expected: list[float]) -> None:
    adv, _ = grpo_advantages(torch.tensor([2.0, 0.0, 1.0, 1.0]), torch.tensor([3, 3, 3, 3]), eps=0.0, std_mode=std_mode)
    torch.testing.assert_close(adv, torch.tensor(expected))


@pytest.mark.parametrize(
    "std_mode, expected",
    [
        # rewards [1, 0], eps = 1 added to the std (not the variance):
        ("unbiased", 0.29289322),  # 0.5 / (sqrt(0.5) + 1) = 0.5 / 1.7071068
        ("population", 0.33333333),  # 0.5 / (0.5 + 1)
    ],
)
def test_eps_is_added_to_the_std(std_mode: str, expected: float) -> None:
    adv, _ = grpo_advantages(torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), eps=1.0, std_mode=std_mode)
    torch.testing.assert_close(adv, torch.tensor([expected, -expected]))


def test_zero_variance_and_single_member_groups_are_exactly_zero() -> None:
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 1.0, 0.0, 0.0])
    groups = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 2, 3, 3])
    for mode in ("unbiased", "population"):
        adv, metrics = grpo_advantages(rewards, groups, std_mode=mode)
        # 0.1 is not exact in float32: a naive (r - mean) / (std + eps) would be rounding noise / eps.
        assert adv.tolist() == [0.0] * 13
        assert metrics["zero_std_frac"] == 1.0


def test_non_members_get_zero_and_do_not_shape_the_group() -> None:
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0])
    groups = torch.tensor([0, 0, 0, 1, 1])
    members = torch.tensor([True, True, False, False, False])
    adv, metrics = grpo_advantages(rewards, groups, members, eps=0.0)
    # Group 0 over members [1, 0]: mean 0.5, unbiased std sqrt(0.5) = 0.7071068 -> +-0.7071068.
    # With the third sample it would be [1, 0, 1] instead. Group 1 has no members.
    torch.testing.assert_close(adv, torch.tensor([0.7071068, -0.7071068, 0.0, 0.0, 0.0]))
    assert metrics["zero_std_frac"] == 0.0


def test_zero_std_frac_hand_case() -> None:
    # g0 [1, 0] varies; g1 [1, 1] constant; g2 [0] single (constant); g3 has no members (ignored).
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0])
    groups = torch.tensor([0, 0, 1, 1, 2, 3, 3])
    members = torch.tensor([True, True, True, True, True, False, False])
    for mode in ("unbiased", "population"):
        adv, metrics = grpo_advantages(rewards, groups, members, std_mode=mode)
        assert metrics["zero_std_frac"] == pytest.approx(2 / 3)
        assert adv[2:].tolist() == [0.0] * 5


def test_interleaved_and_sparse_group_ids() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0])
    groups = torch.tensor([900, 5, 900, 5, 900, 5])
    adv, _ = grpo_advantages(rewards, groups, eps=0.0)
    # each group is [1, 0, 0] in some order: 1.1547005 for the 1, -0.5773503 for the 0s
    torch.testing.assert_close(adv, torch.tensor([1.1547005, -0.5773503, -0.5773503, 1.1547005, -0.5773503, -0.5773503]))


def test_empty_batch_and_bad_mode() -> None:
    adv, metrics = grpo_advantages(torch.zeros(0), torch.zeros(0, dtype=torch.long))
    assert adv.shape == (0,) and metrics["zero_std_frac"] == 0.0
    with pytest.raises(ValueError, match="std_mode"):
        grpo_advantages(torch.zeros(2), torch.zeros(2, dtype=torch.long), std_mode="biased")


# ---------------------------------------------------------------- advantages: properties

batches = st.lists(
    st.tuples(
        # binary rewards, or any reward on a 1/4 grid (exact in float32: the loop reference in
        # float64 and the float32 vectorised version then see the same groups as constant)
        st.one_of(st.sampled_from([0.0, 1.0]), st.integers(-20, 20).map(lambda i: i / 4)),
        st.integers(0, 4),
        st.booleans(),
    ),
    min_size=0,
    max_size=24,
)
modes = st.sampled_from(["unbiased", "population"])


def _unpack(batch):
    rewards = torch.tensor([b[0] for b in batch], dtype=torch.float32)
    groups = torch.tensor([b[1] for b in batch], dtype=torch.long)
    members = torch.tensor([b[2] for b in batch], dtype=torch.bool)
    return rewards, groups, members


@settings(max_examples=80, deadline=None)
@given(batch=batches, mode=modes)
def test_no_nan_and_member_sums_are_zero(batch, mode) -> None:
    rewards, groups, members = _unpack(batch)
    adv, metrics = grpo_advantages(rewards, groups, members, std_mode=mode)
    assert adv.shape == rewards.shape
    assert bool(torch.isfinite(adv).all())
    assert math.isfinite(metrics["zero_std_frac"]) and 0.0 <= metrics["zero_std_frac"] <= 1.0
    assert adv[~members].tolist() == [0.0] * int((~members).sum())
    for g in groups.unique():
        sel = (groups == g) & members
        assert abs(float(adv[sel].double().sum())) < 1e-4 * max(1, int(sel.sum()))


@settings(max_examples=60, deadline=None)
@given(batch=batches, mode=modes, seed=st.integers(0, 2**16))
def test_permutation_invariance(batch, mode, seed) -> None:
    rewards, groups, members = _unpack(batch)
    order = list(range(len(batch)))
    random.Random(seed).shuffle(order)
    perm = torch.tensor(order, dtype=torch.long)
    adv, metrics = grpo_advantages(rewards, groups, members, std_mode=mode)
    adv_p, metrics_p = grpo_advantages(rewards[perm], groups[perm], members[perm], std_mode=mode)
    torch.testing.assert_close(adv_p, adv[perm], rtol=1e-5, atol=1e-5)
    assert metrics_p == metrics


@settings(max_examples=80, deadline=None)
@given(batch=batches, mode=modes, eps=st.sampled_from([0.0, 1e-6, 0.1]))
def test_vectorised_equals_loop_reference(batch, mode, eps) -> None:
    rewards, groups, members = _unpack(batch)
    adv, _ = grpo_advantages(rewards, groups, members, eps=eps, std_mode=mode)
    ref = grpo_advantages_reference(rewards.tolist(), groups.tolist(), members.tolist(), eps=eps, std_mode=mode)
    torch.testing.assert_close(adv, torch.tensor(ref, dtype=torch.float32), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("mode", ["unbiased", "population"])
def test_vectorised_equals_loop_reference_seeded(seed: int, mode: str) -> None:
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.randint(0, 2, (64,), generator=gen).float()
    groups = torch.randint(0, 8, (64,), generator=gen)
    members = torch.rand(64, generator=gen) > 0.3
    adv, _ = grpo_advantages(rewards, groups, members, std_mode=mode)
    ref = grpo_advantages_reference(rewards.tolist(), groups.tolist(), members.tolist(), std_mode=mode)
    torch.testing.assert_close(adv, torch.tensor(ref, dtype=torch.float32), rtol=1e-5, atol=1e-6)
