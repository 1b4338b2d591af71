"""Token log-probabilities and trajectory entropy.

Trajectory entropy H(y) is the mean, over the response tokens of y, of the entropy of the full
next-token distribution of the model that generated y, at the sampling temperature. The paper
does not say which distribution or temperature; we take the one the sample was drawn from,
because that is the distribution whose confidence the IQR filter is meant to judge.

A cheaper estimate, -mean log p(sampled token), needs no pass over the vocabulary; its
expectation is the same quantity, but it is noisy per sample.

Memory: a (rows x vocab) float32 block is materialised only `chunk_rows` rows at a time; for
Qwen3's 151k vocabulary, 1,024 rows are 620 MB, never batch x length x vocab at once.
"""

from __future__ import annotations

import torch


def logprobs_and_entropy(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    temperature: float = 1.0,
    chunk_rows: int = 1024,
    with_entropy: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probability of each token and the entropy of its distribution, at a temperature.

    Args:
        logits: (B, T, V) next-token logits aligned with `tokens` (logits[:, t] predicts tokens[:, t]).
        tokens: (B, T) token ids.
        temperature: logits are divided by it before the softmax.
        chunk_rows: rows of B*T processed at once in float32.
        with_entropy: skip the entropy when False (saves a pass over V).
    Returns:
        logprobs: (B, T) float32.
        entropy: (B, T) float32 in nats, or None when `with_entropy` is False.
    """
    if logits.shape[:2] != tokens.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match tokens {tuple(tokens.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    batch, length, vocab = logits.shape
    flat_logits = logits.reshape(-1, vocab)
    flat_tokens = tokens.reshape(-1)
    logprobs = torch.empty(flat_tokens.shape, dtype=torch.float32, device=logits.device)
    entropy = torch.empty_like(logprobs) if with_entropy else None
    for start in range(0, flat_logits.shape[0], chunk_rows):
        rows = slice(start, start + chunk_rows)
        log_p = torch.log_softmax(flat_logits[rows].float() / temperature, dim=-1)
        logprobs[rows] = log_p.gather(-1, flat_tokens[rows].unsqueeze(-1)).squeeze(-1)
        if entropy is not None:
            # xlogy-style: a token with probability 0 (a -inf logit) contributes 0, not NaN.
            entropy[rows] = -torch.where(log_p > -torch.inf, log_p.exp() * log_p, 0.0).sum(-1)
    return logprobs.view(batch, length), None if entropy is None else entropy.view(batch, length)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Mean of `values` where `mask` is true along `dim`; 0 where the mask is empty.

    Args:
        values: (..., T) any float.
        mask: (..., T) bool or {0, 1}.
    Returns:
        (...) float32.
    """
    mask = mask.to(torch.float32)
    total = (values.float() * mask).sum(dim)
    count = mask.sum(dim)
    return torch.where(count > 0, total / count.clamp(min=1.0), torch.zeros_like(total))


def trajectory_entropy(token_entropy: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """H(y): mean full-distribution token entropy over the response.

    Args:
        token_entropy: (B, T) from `logprobs_and_entropy`.
        response_mask: (B, T) true on response tokens (EOS included, padding excluded).
    Returns:
        (B,) float32; 0 for an empty response.
    """
    return masked_mean(token_entropy, response_mask)


def sampled_entropy_estimate(token_logprobs: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """The cheap estimate of H(y): -mean log p of the sampled response tokens.

    Args:
        token_logprobs: (B, T) log-probabilities of the sampled tokens at the sampling temperature.
        response_mask: (B, T).
    Returns:
        (B,) float32.
    """
    return -masked_mean(token_logprobs, response_mask)
