"""The rollout interface: generate n samples per prompt from one set of weights.

Prompts go in as token ids, encoded once by the trainer (`encode_prompts`), so every engine
samples from exactly the context the trainer later scores. Each prompt carries its own seed
(`sample_seed`: run seed, step, role and *global* prompt index), so a prompt's samples do not
depend on which rank holds it, on the other prompts of the batch, or on the engine's batching.

Every engine returns a `Rollouts`: token ids laid out as [left-padded prompt | right-padded
response], the masks, the response texts, and the log-probs the sampler drew each token with, at
the sampling temperature. The trainer compares those with its own forward pass and logs the gap
(`train/rollout_logprob_drift`); stale weights are caught by the hand-off itself
(`mgrpo.rollout.handoff`). Where a response ends is `mgrpo.rollout.stops.stop_token_ids`.

Weights: an engine either shares a model object with the trainer (the HF engine on one rank:
nothing to hand off) or keeps its own copy, which `load_weights` replaces from (name, full
tensor) pairs in Hugging Face naming, and which `weight_checksums` reads back (see
`mgrpo.rollout.handoff`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Protocol, Sequence

import numpy as np
import torch

ROLE_STREAMS = {"policy": 0, "momentum": 1, "eval": 2}
"""Random stream of each sampling role; stream 3 is the update's mini-batch shuffle."""


def sample_seed(seed: int, step: int, role: str, prompt_index: int) -> int:
    """The seed of one prompt's samples: a function of (run seed, step, role, global prompt index)
    only, so results are the same whatever the number of ranks or the batch layout."""
    return int(np.random.SeedSequence([seed, step, ROLE_STREAMS[role], prompt_index]).generate_state(1)[0])


def sample_seed_of(prompt_seed: int, sample: int) -> int:
    """The seed of sample `sample` of a prompt seeded `prompt_seed`: 63 bits of
    SeedSequence([prompt_seed, sample]), so prompts with nearby seeds share no samples (vLLM's own
    n > 1 would seed sample j with seed + j). Every engine seeds sample j of prompt i with it."""
    state = np.random.SeedSequence([int(prompt_seed), sample]).generate_state(1, np.uint64)[0]
    return int(state >> np.uint64(1))


@dataclass
class Rollouts:
    """A batch of B = len(prompts) * n samples."""

    sequences: torch.Tensor
    """(B, P + R) long: left-padded prompt tokens followed by right-padded response tokens."""
    attention_mask: torch.Tensor
    """(B, P + R) long: 1 on real prompt tokens and on response tokens up to and including the
    first stop token."""
    response_mask: torch.Tensor
    """(B, R) bool: the response tokens that count: up to and including the first stop token (the
    EOS, or another id of `mgrpo.rollout.stops.stop_token_ids`, e.g. the chat template's
    end-of-turn token)."""
    group_ids: torch.Tensor
    """(B,) long: index of each sample's prompt in the prompt list."""
    texts: list[str]
    """(B,) decoded responses without special tokens."""
    sampler_logprobs: Optional[torch.Tensor] = None
    """(B, R) float32 log-probs of the sampled tokens as the sampler drew them, at the sampling
    temperature (0 past the response); None for greedy decoding."""
    sampler_entropy: Optional[torch.Tensor] = None
    """(B, R) float32 entropy of each step's full next-token distribution at the sampling
    temperature, when the engine computes it (the HF engine does; vLLM does not); 0 past the
    response."""
    sampler_self_certainty: Optional[torch.Tensor] = None
    """(B, R) float32 KL(U || p) of each step's next-token distribution at the sampling
    temperature, U uniform over the tokenizer's vocabulary (`mgrpo.algos.self_certainty`), when
    the engine computes it (the HF engine does; vLLM does not); 0 past the response."""

    @property
    def prompt_length(self) -> int:
        """P: the response starts at this column of `sequences`."""
        return self.sequences.shape[1] - self.response_mask.shape[1]

    @property
    def response_lengths(self) -> torch.Tensor:
        """(B,) number of counted response tokens."""
        return self.response_mask.sum(-1)

    def __len__(self) -> int:
        return self.sequences.shape[0]

    def select(self, rows: torch.Tensor) -> "Rollouts":
        """The rows `rows` (a (b,) long tensor), in that order, with the same columns."""
        pick = lambda t: None if t is None else t[rows]
        return Rollouts(
            self.sequences[rows], self.attention_mask[rows], self.response_mask[rows], self.group_ids[rows],
            [self.texts[i] for i in rows.tolist()], pick(self.sampler_logprobs), pick(self.sampler_entropy),
            pick(self.sampler_self_certainty),
        )


class RolloutEngine(Protocol):
    """Samples responses. The trainer keeps one engine per weight set it must sample from."""

    shares_weights: bool
    """True when the engine samples from the trainer's own model object (no hand-off needed)."""

    checked_weights: dict[str, torch.dtype]
    """HF name -> dtype of the weights whose own copy the engine can read back bit for bit: what
    the stale-weight check after each hand-off compares (`mgrpo.rollout.handoff`)."""

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Replace the engine's weights with these (HF name, full tensor) pairs, consumed one at a
        time, and drop anything computed with the old weights (e.g. a prefix cache)."""

    def weight_checksums(self, names: Sequence[str]) -> dict[str, int]:
        """name -> `mgrpo.rollout.handoff.tensor_checksum` of the engine's own copy of each of these
        weights (names of `checked_weights`), as it holds them now."""

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        n: int,
        temperature: float,
        max_new_tokens: int,
        seeds: Sequence[int],
    ) -> Rollouts:
        """n samples for each prompt (temperature 0 = greedy). Prompt i's samples are drawn from
        `seeds[i]` alone. Sample j of prompt i is row i * n + j, and group_ids[i * n + j] = i."""


def encode_prompts(tokenizer, prompts: Sequence[str], max_prompt_tokens: int) -> list[list[int]]:
    """Token ids of each prompt as the model sees it (already templated, so no special tokens
    are added). Over-long prompts are dropped when the data is loaded (`mgrpo.tasks.prompts`),
    so one here is an error, never silently cut."""
    encoded = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    for ids in encoded:
        if len(ids) > max_prompt_tokens:
            raise ValueError(
                f"a prompt of {len(ids)} tokens exceeds rollout.max_prompt_tokens={max_prompt_tokens}; prompts "
                "longer than that should have been dropped when the data was loaded"
            )
    return [list(ids) for ids in encoded]


def left_pad(prompts: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, P) left-padded ids and their attention mask, P = the longest prompt (at least 1)."""
    width = max([len(p) for p in prompts] + [1])
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, prompt in enumerate(prompts):
        if len(prompt):
            ids[i, width - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
            mask[i, width - len(prompt) :] = 1
    return ids, mask


def response_mask_from_tokens(responses: torch.Tensor, stop_ids: int | Sequence[int]) -> torch.Tensor:
    """Tokens up to and including the first stop token (all tokens when there is none).

    Works when the pad token is a stop token, since it looks only at positions.

    Args:
        responses: (B, R) generated token ids.
        stop_ids: one stop id (EOS) or the set (`mgrpo.rollout.stops.stop_token_ids`).
    Returns:
        (B, R) bool.
    """
    ids = torch.tensor([stop_ids] if isinstance(stop_ids, int) else list(stop_ids), dtype=responses.dtype)
    is_stop = torch.isin(responses, ids).long()
    stops_before = torch.cumsum(is_stop, dim=-1) - is_stop
    return stops_before == 0


def cut_at_stop(tokens: Sequence[int], stop_ids: Sequence[int]) -> list[int]:
    """`tokens` up to and including the first stop id (all of them when there is none)."""
    stops = set(stop_ids)
    for i, token in enumerate(tokens):
        if token in stops:
            return list(tokens[: i + 1])
    return list(tokens)


def pad_responses(token_lists: list[list[int]], pad_token_id: int) -> torch.Tensor:
    """Right-pad ragged response token lists into a (B, R) tensor with R >= 1."""
    width = max([len(t) for t in token_lists] + [1])
    out = torch.full((len(token_lists), width), pad_token_id, dtype=torch.long)
    for i, tokens in enumerate(token_lists):
        out[i, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
    return out


def assemble_rollouts(
    prompts: Sequence[Sequence[int]],
    n: int,
    responses: list[list[int]],
    tokenizer,
    stop_ids: Sequence[int],
    sampler_logprobs: Optional[list[list[float]]] = None,
    sampler_entropy: Optional[list[list[float]]] = None,
    sampler_self_certainty: Optional[list[list[float]]] = None,
) -> Rollouts:
    """A `Rollouts` from each sample's response token ids (row i * n + j is sample j of prompt i),
    cut after the first of `stop_ids` (`mgrpo.rollout.stops.stop_token_ids`), which counts as a
    response token, as EOS always has. Every engine ends here, so all lay their batches out alike."""
    cut = [cut_at_stop(r, stop_ids) for r in responses]
    pad = tokenizer.pad_token_id
    response_ids = pad_responses(cut, pad)
    response_mask = pad_responses([[1] * len(r) for r in cut], 0).bool()
    prompt_ids, prompt_mask = left_pad(prompts, pad)
    prompt_ids = prompt_ids.repeat_interleave(n, dim=0)
    prompt_mask = prompt_mask.repeat_interleave(n, dim=0)
    lengths = response_mask.sum(-1).tolist()

    def per_token(rows: Optional[list[list[float]]]) -> Optional[torch.Tensor]:
        if rows is None:
            return None
        out = torch.zeros(response_ids.shape, dtype=torch.float32)
        for i, (row, length) in enumerate(zip(rows, lengths)):
            out[i, :length] = torch.tensor(row[:length], dtype=torch.float32)
        return out

    texts = tokenizer.batch_decode(cut, skip_special_tokens=True)
    return Rollouts(
        sequences=torch.cat([prompt_ids, response_ids], dim=1),
        attention_mask=torch.cat([prompt_mask, response_mask.long()], dim=1),
        response_mask=response_mask,
        group_ids=torch.arange(len(prompts)).repeat_interleave(n),
        texts=texts,
        sampler_logprobs=per_token(sampler_logprobs),
        sampler_entropy=per_token(sampler_entropy),
        sampler_self_certainty=per_token(sampler_self_certainty),
    )
