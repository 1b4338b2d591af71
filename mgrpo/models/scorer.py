"""`ResponseScorer`: a causal LM that returns the log-probs and entropies of response tokens only.

The trainer never asks a model for its full logits. The decoder runs once over each row's
[prompt | response], without the batch's padding (`mgrpo.padding.pack_batch`); the hidden states
of the positions that predict counted response tokens are picked out (prompt positions and
padding are dropped before the LM head), and the LM head, the log-softmax and the entropy run
over them `chunk_tokens` at a time. With gradients on, each chunk
is recomputed in the backward pass instead of being stored, so a micro-batch never holds
tokens x vocab logits (Qwen3: 151,936 entries per token) beyond one chunk, in float32 or
otherwise.

The scorer is also the root module that FSDP shards (`mgrpo.sharding`): the decoder layers are
their own units and the root holds the embeddings, the final norm and the LM head, so tied
embeddings stay in one unit and the chunked LM head runs inside the root's forward.
Assumes logits = lm_head(final hidden state), as in Qwen, Llama and Mistral (no logit soft-capping).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch.utils.checkpoint import checkpoint

from mgrpo.algos.entropy import logprobs_and_entropy
from mgrpo.algos.self_certainty import token_self_certainty
from mgrpo.padding import pack_batch


class ResponseScorer(torch.nn.Module):
    """Wraps a Hugging Face causal LM (`self.lm`, parameter names prefixed 'lm.')."""

    def __init__(self, lm: torch.nn.Module, chunk_tokens: int = 1024) -> None:
        super().__init__()
        self.lm = lm
        self.chunk_tokens = chunk_tokens
        self.decoder_positions = 0
        """Positions the decoder has run over since the last `take_position_counts`."""
        self.real_tokens = 0
        """Real (attended) tokens among them."""

    def take_position_counts(self) -> tuple[int, int]:
        """(decoder positions, real tokens) since the last call, and start counting afresh."""
        counts = (self.decoder_positions, self.real_tokens)
        self.decoder_positions = self.real_tokens = 0
        return counts

    def forward(
        self,
        sequences: torch.Tensor,
        attention_mask: torch.Tensor,
        response_mask: torch.Tensor,
        temperature: float,
        with_entropy: bool = False,
        self_certainty_vocab: Optional[int] = None,
    ) -> tuple[torch.Tensor, ...]:
        """Log-probs (and entropies, and self-certainties) of the counted response tokens at
        `temperature`. The decoder runs over these rows' tokens only (`mgrpo.padding.pack_batch`).

        Args:
            sequences: (b, P + R) left-padded prompt then right-padded response.
            attention_mask: (b, P + R) 1 on real tokens.
            response_mask: (b, R) bool, the response tokens that count.
            self_certainty_vocab: when given, also return each token's self-certainty KL(U || p),
                U uniform over the first this-many ids (the tokenizer's vocabulary; see
                `mgrpo.algos.self_certainty`).
        Returns:
            logprobs: (b, R) float32, 0 where the mask is off.
            entropy: (b, R) float32 full-distribution entropy, or None when not asked for.
            self_certainty: (b, R) float32, 0 where the mask is off; a third element only when
                `self_certainty_vocab` is given.
        """
        ids, attention, predicts = pack_batch(sequences, attention_mask, response_mask)
        self.decoder_positions += ids.numel()
        self.real_tokens += int(attention.sum())
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        hidden = self.lm.base_model(input_ids=ids, attention_mask=attention, position_ids=positions).last_hidden_state
        # Position t predicts token t + 1.
        predicting = hidden[:, :-1][predicts]
        targets = ids[:, 1:][predicts]
        logprob_chunks, entropy_chunks, certainty_chunks = [], [], []
        for start in range(0, targets.shape[0], self.chunk_tokens):
            rows = slice(start, start + self.chunk_tokens)
            args = (predicting[rows], targets[rows], temperature, with_entropy, self_certainty_vocab)
            if torch.is_grad_enabled():
                lp, ent, certainty = checkpoint(self._head, *args, use_reentrant=False)
            else:
                lp, ent, certainty = self._head(*args)
            logprob_chunks.append(lp)
            if ent is not None:
                entropy_chunks.append(ent)
            if certainty is not None:
                certainty_chunks.append(certainty)
        logprobs = torch.zeros(response_mask.shape, dtype=torch.float32, device=sequences.device)
        if logprob_chunks:
            logprobs = logprobs.masked_scatter(response_mask, torch.cat(logprob_chunks))
        entropy = None
        if with_entropy:
            entropy = torch.zeros(response_mask.shape, dtype=torch.float32, device=sequences.device)
            if entropy_chunks:
                entropy = entropy.masked_scatter(response_mask, torch.cat(entropy_chunks))
        if self_certainty_vocab is None:
            return logprobs, entropy
        certainty = torch.zeros(response_mask.shape, dtype=torch.float32, device=sequences.device)
        if certainty_chunks:
            certainty = certainty.masked_scatter(response_mask, torch.cat(certainty_chunks))
        return logprobs, entropy, certainty

    def _head(
        self, hidden: torch.Tensor, targets: torch.Tensor, temperature: float, with_entropy: bool,
        self_certainty_vocab: Optional[int] = None,
    ) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """(n,) log-probs, entropies and self-certainties of n tokens from their (n, H) hidden states."""
        logits = self.lm.get_output_embeddings()(hidden)
        lp, ent = logprobs_and_entropy(logits.unsqueeze(0), targets.unsqueeze(0), temperature, with_entropy=with_entropy)
        certainty = None
        if self_certainty_vocab is not None:
            certainty = token_self_certainty(logits, temperature, self_certainty_vocab, chunk_rows=logits.shape[0] or 1)
        return lp.squeeze(0), None if ent is None else ent.squeeze(0), certainty
