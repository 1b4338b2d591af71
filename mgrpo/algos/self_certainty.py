"""Self-certainty: Intuitor's label-free reward (Zhao et al., "Learning to Reason without External
Rewards", 2025).

Per response token t, the self-certainty is the KL divergence from the uniform distribution U over
the vocabulary to the model's next-token distribution p_t:

    KL(U || p_t) = sum_j (1/V) log((1/V) / p_t(j)) = -log V - (1/V) sum_j log p_t(j)

which is 0 when p_t is uniform and grows as p_t concentrates (it is not bounded by log V: that is
KL(p_t || U), the other direction; here a token the model gives probability q contributes
-log(V q) / V, so a distribution whose top logit is L above the V - 1 others scores
log((e^L + V - 1) / V) - L / V, about L (1 - 1/V) - log V once e^L >> V). A response's self-certainty is its mean over the response tokens; Intuitor
uses it as the reward and normalises it per prompt with GRPO. No vote, no labels.

Choices (the two reference implementations differ; each is pinned by a test):
- **Temperature.** p_t is the distribution the sample was drawn from: softmax(logits / T) at the
  sampling temperature, as in verl-intuitor (its actor divides the logits by the temperature
  before computing log-probs, entropy and self-certainty). open-r1's version computes it from
  the raw logits (T = 1) whatever the sampling temperature. At T != 1 the two rank samples
  differently.
- **Constant.** verl-intuitor computes logsumexp(z) - mean(z) = KL(U || p) + log V; here the
  -log V is kept so that a uniform distribution gives exactly 0. The constant cancels in the
  GRPO normalisation, so rewards and advantages are unaffected.
- **Real vocabulary.** V is the tokenizer's vocabulary, not the LM head's width: heads are often
  padded past the tokenizer (Qwen3: 151,936 logits for 151,669 tokens), and the padded rows are
  never trained targets, so their logits sit far below the rest. Averaging log p over them would
  add a large term that measures nothing about the response. verl-intuitor averages over the
  whole (padded) head. We average over the first `vocab_size` entries only, with p still
  normalised over the whole head (the distribution the sampler drew from); the padded entries'
  tiny mass keeps the divergence >= 0 (a sub-normalised p only raises it).

Memory: the (rows x V) block is materialised `chunk_rows` rows at a time, in float32 (float64 for
float64 input).
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from mgrpo.algos.entropy import masked_mean


def token_self_certainty(
    logits: torch.Tensor,
    temperature: float = 1.0,
    vocab_size: Optional[int] = None,
    chunk_rows: int = 1024,
) -> torch.Tensor:
    """KL(U || softmax(logits / T)) per position, U uniform over the first `vocab_size` ids.

    Args:
        logits: (..., V_head) next-token logits.
        temperature: logits are divided by it before the softmax (the sampling temperature).
        vocab_size: the real vocabulary (tokenizer size); None or >= V_head means the whole head.
        chunk_rows: positions processed at once.
    Returns:
        (...) in nats, >= 0, float64 for float64 logits and float32 otherwise; 0 for a uniform
        distribution over the real vocabulary.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    head = logits.shape[-1]
    vocab = head if vocab_size is None else min(int(vocab_size), head)
    if vocab < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    dtype = _compute_dtype(logits)
    flat = logits.reshape(-1, head)
    out = torch.empty(flat.shape[0], dtype=dtype, device=logits.device)
    for start in range(0, flat.shape[0], chunk_rows):
        rows = slice(start, start + chunk_rows)
        out[rows] = _kl_from_uniform(flat[rows].to(dtype) / temperature, vocab)
    return out.view(logits.shape[:-1])


def self_certainty_from_log_probs(log_p: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """KL(U || p) from already normalised log-probs (..., V_head), U over the first `vocab_size`
    ids (what the HF sampler calls with the log-probs it samples from). The divergence does not
    change when every log-prob is shifted by one constant, so this is the logits' formula on
    log p; float64 for float64 input, float32 otherwise."""
    return _kl_from_uniform(log_p.to(_compute_dtype(log_p)), vocab_size)


_DIRECT_ABOVE = 30.0
"""Rows whose largest centred logit exceeds this use the direct form (no cancellation there: the
log-sum-exp is at least 30 and log V at most ~12); below it the expm1 form cannot overflow."""


def _compute_dtype(values: torch.Tensor) -> torch.dtype:
    return torch.float64 if values.dtype == torch.float64 else torch.float32


_SERIES_BELOW = 0.5
"""|w| below which e^w - 1 - w comes from its Taylor series: subtracting w from expm1(w) would lose
about log10(2 / |w|) digits there."""
_SERIES_TERMS = {torch.float32: 9, torch.float64: 17}
"""Terms w^n / n! up to this n, per compute dtype: for |w| < 0.5 the first one left out is below
4e-9 of the sum at n = 9 (a tenth of float32's rounding unit) and below 1e-19 at n = 17. Fewer
terms matter because the HF sampler evaluates the series over every row and token at each decode
step."""


def _expm1_minus_identity(w: torch.Tensor) -> torch.Tensor:
    """e^w - 1 - w, elementwise, to the dtype's relative accuracy for every w (small ones too)."""
    series = torch.ones_like(w)
    for n in range(_SERIES_TERMS[w.dtype], 2, -1):
        series.mul_(w).div_(n).add_(1)
    return torch.where(w.abs() < _SERIES_BELOW, 0.5 * w * w * series, torch.expm1(w) - w)


def _kl_from_uniform(z: torch.Tensor, vocab: int) -> torch.Tensor:
    """KL(U || softmax(z)) for (..., V_head) scores z, U over the first `vocab` entries.

    The textbook form logsumexp(z) - mean(z) - log V subtracts nearly equal numbers when p is
    nearly uniform (a gap of 1 over 1,000 tokens loses 3 digits in float32). Centring on the real
    vocabulary's mean c, w = z - c, gives exactly

        KL = log((1/V) sum_j e^{w_j}) - mean_real(w)
           = log1p(a + mu) - mu,   a = mean_real(e^w - 1 - w) + (1/V) sum_pad e^{w},

    with mu = mean_real(w) (zero up to rounding): every term of a is >= 0 and is computed without
    cancellation (e^w - 1 - w from its series for small w), so a nearly flat distribution keeps the input precision's relative accuracy.
    """
    real, padding = z[..., :vocab], z[..., vocab:]
    centre = real.mean(-1, keepdim=True)
    w, w_pad = real - centre, padding - centre
    mu = w.mean(-1)
    peak = torch.maximum(w.amax(-1), w_pad.amax(-1) if w_pad.shape[-1] else w.amax(-1))
    a = _expm1_minus_identity(w.clamp(max=_DIRECT_ABOVE)).mean(-1) + w_pad.clamp(max=_DIRECT_ABOVE).exp().sum(-1) / vocab
    stable = torch.log1p(a + mu) - mu
    direct = torch.logsumexp(torch.cat([w, w_pad], dim=-1), dim=-1) - math.log(vocab) - mu
    kl = torch.where(peak > _DIRECT_ABOVE, direct, stable)
    # A real token with probability 0 (a -inf logit) makes the divergence infinite.
    return torch.where(torch.isfinite(centre.squeeze(-1)), kl, torch.inf)


def trajectory_self_certainty(token_values: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """A response's self-certainty: the mean of its tokens' values over the response mask.

    Args:
        token_values: (B, T) from `token_self_certainty` (any value where the mask is off).
        response_mask: (B, T) true on counted response tokens (EOS included, padding excluded).
    Returns:
        (B,) float32; 0 for an empty response.
    """
    return masked_mean(token_values, response_mask)
