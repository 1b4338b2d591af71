"""The per-prompt IQR entropy filter (mgrpo.algos.filtering).

Quartiles: linear interpolation between order statistics, Q(p) = h_j + f (h_{j+1} - h_j) with
j + f = p (n - 1) over the sorted entropies h_0..h_{n-1} of one prompt.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mgrpo.algos.filtering import iqr_keep_mask, iqr_threshold

# Group 0 (n = 5), sorted [0.2, 1.0, 1.2, 1.4, 3.0]:
#   Q1 at p(n-1) = 1 -> 1.0; Q3 at 3 -> 1.4; IQR = 0.4.
# Group 1 (n = 6), sorted [0.1, 0.9, 1.0, 1.1, 1.3, 1.5]:
#   Q1 at 1.25 -> 0.9 + 0.25 * 0.1 = 0.925; Q3 at 3.75 -> 1.1 + 0.75 * 0.2 = 1.25; IQR = 0.325.
# Group 2 (n = 1): always kept.
ENTROPY = [1.5, 1.2, 0.1, 0.2, 1.1, 3.0, 0.9, 1.0, 7.0, 1.3, 1.4, 1.0]
GROUPS = [1, 0, 1, 0, 1, 0, 1, 0, 2, 1, 0, 1]


@pytest.mark.parametrize(
    "k, dropped",
    [
        # group 0: T = 1.0 - 0.75*0.4 = 0.7; group 1: T = 0.925 - 0.75*0.325 = 0.68125
        (0.75, [0.2, 0.1]),
        # k = 0: T = Q1. group 0: 1.0 (the sample equal to Q1 stays); group 1: 0.925
        (0.0, [0.2, 0.1, 0.9]),
        # group 0: T = 1.0 - 1.0 = 0.0; group 1: T = 0.925 - 0.8125 = 0.1125 > 0.1
        (2.5, [0.1]),
        # group 0: T = 1.0 - 1.2 = -0.2; group 1: T = 0.925 - 0.975 = -0.05
        (3.0, []),
    ],
)
def test_hand_case(k: float, dropped: list[float]) -> None:
    keep = iqr_keep_mask(torch.tensor(ENTROPY), torch.tensor(GROUPS), k)
    assert keep.dtype == torch.bool
    expected = [not any(abs(h - d) < 1e-9 for d in dropped) for h in ENTROPY]
    assert keep.tolist() == expected


def test_threshold_hand_values() -> None:
    assert iqr_threshold(torch.tensor([1.2, 0.2, 3.0, 1.0, 1.4]), 0.75).item() == pytest.approx(0.7, abs=1e-6)
    assert iqr_threshold(torch.tensor([1.5, 0.1, 1.1, 0.9, 1.3, 1.0]), 0.75).item() == pytest.approx(0.68125, abs=1e-6)
    assert iqr_threshold(torch.tensor([1.5, 0.1, 1.1, 0.9, 1.3, 1.0]), 0.0).item() == pytest.approx(0.925, abs=1e-6)
    assert iqr_threshold(torch.tensor([2.0]), 0.75).item() == 2.0


def test_threshold_follows_the_input_device() -> None:
    """Regression: the quantile levels were built on the CPU, which torch.quantile rejects for a
    CUDA input ("q tensor must be on the same device"). The meta device shows it without a GPU."""
    threshold = iqr_threshold(torch.zeros(5, device="meta"), 0.75)
    assert threshold.device.type == "meta"


def _numpy_keep(entropy: list[float], groups: list[int], k: float) -> list[bool]:
    values = np.asarray(entropy, dtype=np.float64)
    ids = np.asarray(groups)
    keep = np.ones(len(values), dtype=bool)
    for g in np.unique(ids):
        sel = ids == g
        q1, q3 = np.percentile(values[sel], [25, 75], method="linear")
        keep[sel] = values[sel] >= q1 - k * (q3 - q1)
    return keep.tolist()


def test_hand_case_matches_numpy_reference() -> None:
    for k in (0.0, 0.75, 2.5, 3.0):
        assert iqr_keep_mask(torch.tensor(ENTROPY), torch.tensor(GROUPS), k).tolist() == _numpy_keep(ENTROPY, GROUPS, k)


# Entropies on a 1/8 grid and k in multiples of 1/4: every quartile and threshold is exact in
# float32 and float64, so the torch and numpy masks must agree exactly, boundaries included.
grid_samples = st.lists(st.tuples(st.integers(0, 80), st.integers(0, 3)), min_size=1, max_size=30)
ks = st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 3.0])


@settings(max_examples=80, deadline=None)
@given(samples=grid_samples, k=ks)
def test_matches_numpy_percentile_on_exact_grid(samples, k) -> None:
    entropy = [v / 8 for v, _ in samples]
    groups = [g for _, g in samples]
    keep = iqr_keep_mask(torch.tensor(entropy), torch.tensor(groups), k)
    assert keep.tolist() == _numpy_keep(entropy, groups, k)


@pytest.mark.parametrize("seed", range(5))
def test_matches_numpy_percentile_random(seed: int) -> None:
    rng = np.random.default_rng(seed)
    entropy = rng.gamma(2.0, 0.5, size=64).astype(np.float32)
    groups = rng.integers(0, 6, size=64)
    for k in (0.0, 0.5, 0.75, 1.5):
        keep = iqr_keep_mask(torch.from_numpy(entropy), torch.from_numpy(groups), k).numpy()
        ref = np.asarray(_numpy_keep(entropy.astype(np.float64).tolist(), groups.tolist(), k))
        # Only samples within float32 rounding of their threshold may differ.
        near = np.zeros_like(ref)
        for g in np.unique(groups):
            sel = groups == g
            q1, q3 = np.percentile(entropy[sel].astype(np.float64), [25, 75])
            near[sel] = np.abs(entropy[sel] - (q1 - k * (q3 - q1))) < 1e-5
        assert np.array_equal(keep[~near], ref[~near])


def test_k_none_keeps_everything() -> None:
    keep = iqr_keep_mask(torch.tensor(ENTROPY), torch.tensor(GROUPS), None)
    assert keep.tolist() == [True] * len(ENTROPY)


def test_negative_k_and_bad_shapes_raise() -> None:
    with pytest.raises(ValueError, match="k"):
        iqr_keep_mask(torch.tensor(ENTROPY), torch.tensor(GROUPS), -0.1)
    with pytest.raises(ValueError, match="shapes"):
        iqr_keep_mask(torch.zeros(3), torch.zeros(4, dtype=torch.long), 0.75)
    with pytest.raises(ValueError, match="shapes"):
        iqr_keep_mask(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long), 0.75)


def test_group_of_one_is_kept() -> None:
    for k in (0.0, 0.75, 100.0):
        assert iqr_keep_mask(torch.tensor([0.001, 5.0]), torch.tensor([4, 9]), k).tolist() == [True, True]


def test_ties() -> None:
    # All equal: IQR = 0, T = Q1 = h: everything kept.
    assert iqr_keep_mask(torch.tensor([1.0, 1.0, 1.0]), torch.zeros(3, dtype=torch.long), 0.75).tolist() == [True] * 3
    # Sorted [0.5, 1, 1, 1, 1]: Q1 = h_1 = 1, Q3 = h_3 = 1, IQR = 0 -> T = 1 for any k: 0.5 goes.
    for k in (0.0, 0.75, 10.0):
        keep = iqr_keep_mask(torch.tensor([1.0, 1.0, 0.5, 1.0, 1.0]), torch.zeros(5, dtype=torch.long), k)
        assert keep.tolist() == [True, True, False, True, True]


float_samples = st.lists(
    st.tuples(st.floats(0.0, 20.0, width=32, allow_nan=False), st.integers(0, 3)), min_size=1, max_size=40
)


@settings(max_examples=80, deadline=None)
@given(samples=float_samples, k=st.floats(0.0, 5.0, allow_nan=False))
def test_at_or_above_q1_survives_and_keep_count_bound(samples, k) -> None:
    entropy = torch.tensor([v for v, _ in samples], dtype=torch.float32)
    groups = torch.tensor([g for _, g in samples])
    keep = iqr_keep_mask(entropy, groups, k)
    for g in torch.unique(groups):
        sel = groups == g
        values, kept = entropy[sel], keep[sel]
        q1 = iqr_threshold(values, 0.0)
        assert bool(kept[values >= q1].all())
        n = int(sel.sum())
        assert int(kept.sum()) >= n - math.ceil((n - 1) / 4)


@settings(max_examples=60, deadline=None)
@given(samples=float_samples, k=ks, seed=st.integers(0, 2**16))
def test_permutation_invariance(samples, k, seed) -> None:
    entropy = torch.tensor([v for v, _ in samples], dtype=torch.float32)
    groups = torch.tensor([g for _, g in samples])
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    perm = torch.tensor(order)
    keep = iqr_keep_mask(entropy, groups, k)
    assert torch.equal(iqr_keep_mask(entropy[perm], groups[perm], k), keep[perm])
