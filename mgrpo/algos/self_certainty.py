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

Memory: the (rows x V) float32 block is materialised `chunk_rows` rows at a time.
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
        chunk_rows: positions processed at once in float32.
    Returns:
        (...) float32 in nats, >= 0; 0 for a uniform distribution over the real vocabulary.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    head = logits.shape[-1]
    vocab = head if vocab_size is None else min(int(vocab_size), head)
    if vocab < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    flat = logits.reshape(-1, head)
    out = torch.empty(flat.shape[0], dtype=torch.float32, device=logits.device)
    for start in range(0, flat.shape[0], chunk_rows):
        rows = slice(start, start + chunk_rows)
        out[rows] = self_certainty_from_log_probs(torch.log_softmax(flat[rows].float() / temperature, dim=-1), vocab)
    return out.view(logits.shape[:-1])


def self_certainty_from_log_probs(log_p: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """KL(U || p) from already normalised log-probs (..., V_head), U over the first `vocab_size`
    ids (what the HF sampler calls with the log-probs it samples from)."""
    return -math.log(vocab_size) - log_p[..., :vocab_size].float().mean(-1)


def trajectory_self_certainty(token_values: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """A response's self-certainty: the mean of its tokens' values over the response mask.

    Args:
        token_values: (B, T) from `token_self_certainty` (any value where the mask is off).
        response_mask: (B, T) true on counted response tokens (EOS included, padding excluded).
    Returns:
        (B,) float32; 0 for an empty response.
    """
    return masked_mean(token_values, response_mask)
