"""The IQR entropy filter: drop low-entropy outliers within each prompt's pooled samples.

For each prompt, over its G pooled samples (policy and momentum together), with Q1 and Q3 the
quartiles of their trajectory entropies, a sample is kept when H >= Q1 - k * (Q3 - Q1).

Quartiles use linear interpolation between order statistics (numpy's default "linear" method,
which `torch.quantile` also uses): for sorted h_0..h_{n-1}, Q(p) = h_j + f (h_{j+1} - h_j) with
j + f = p (n - 1). Consequence, pinned by a test: every sample at or above Q1 survives for any
k >= 0, and Q1 <= h_{ceil((n-1)/4)}, so at least n - ceil((n-1)/4) of n samples are kept.

A group of one sample is always kept (its IQR is 0 and H >= Q1 = H). k = None disables the
filter. The filter is one-sided by design (the paper's): confident outliers are suspected of
collapse; uncertain ones are kept.
"""

from __future__ import annotations

from typing import Optional

import torch


def iqr_threshold(entropy: torch.Tensor, k: float) -> torch.Tensor:
    """T = Q1 - k * (Q3 - Q1) of one group's entropies.

    Args:
        entropy: (n,) trajectory entropies of one prompt's pooled samples, n >= 1.
        k: IQR multiplier, >= 0.
    Returns:
        () the threshold, float32.
    """
    quartiles = torch.quantile(entropy.float(), torch.tensor([0.25, 0.75], device=entropy.device), interpolation="linear")
    q1, q3 = quartiles[0], quartiles[1]
    return q1 - k * (q3 - q1)


def iqr_keep_mask(entropy: torch.Tensor, group_ids: torch.Tensor, k: Optional[float]) -> torch.Tensor:
    """Which samples survive the per-prompt IQR filter.

    Args:
        entropy: (B,) trajectory entropy per sample.
        group_ids: (B,) integer prompt id per sample (any order).
        k: IQR multiplier (>= 0), or None to keep everything.
    Returns:
        (B,) bool, True = kept.
    """
    if entropy.shape != group_ids.shape or entropy.dim() != 1:
        raise ValueError(f"entropy {tuple(entropy.shape)} and group_ids {tuple(group_ids.shape)} must be equal 1-D shapes")
    keep = torch.ones_like(entropy, dtype=torch.bool)
    if k is None:
        return keep
    if k < 0:
        raise ValueError(f"iqr k must be >= 0, got {k}")
    for group in torch.unique(group_ids):
        members = group_ids == group
        values = entropy[members].float()
        keep[members] = values >= iqr_threshold(values, k)
    return keep
