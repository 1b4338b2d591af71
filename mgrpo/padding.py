"""No decoder compute on padding: which columns of a batch the decoder must see, and which rows
share a forward pass.

A `Rollouts` batch is padded to the longest prompt (on the left) and the longest response (on the
right) of the whole call. `pack_batch` shifts each row left past its own prompt padding and cuts
the batch after the last counted response token of its longest row, so a pass runs over about
max(prompt + response) of its rows instead of the call's longest prompt + longest response. The
decoder computes the same at every real position (up to float summation order): the dropped
leading columns are masked out and add nothing to the position ids (the scorer counts them from
the attention mask), and the dropped trailing ones come after every counted token, which a causal
decoder never lets earlier positions see. Grouping rows of similar length into the same pass
(`group_by_length`) then leaves little padding inside it.
"""

from __future__ import annotations

import torch


def pack_batch(
    sequences: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The rows' tokens without their own leading prompt padding, cut after the last counted
    response token of any row.

    Row i drops its s_i leading unattended prompt columns (keeping at least one prompt column, the
    one that predicts the first response token) and keeps what follows through its last counted
    response token; shorter rows are padded on the right (attention 0).

    Args:
        sequences: (b, P + R) left-padded prompt then right-padded response.
        attention_mask: (b, P + R) 1 on real tokens.
        response_mask: (b, R) bool, the counted response tokens.
    Returns:
        ids: (b, L) long; attention: (b, L), 0 where the input's was and on the right padding;
        predicting: (b, L - 1) bool, the positions whose next token is a counted response token:
            `hidden[:, :-1][predicting]` and `ids[:, 1:][predicting]` line up one to one with
            `response_mask`'s true entries in row-major order.
    """
    width, response_width = sequences.shape[1], response_mask.shape[1]
    prompt_width = width - response_width
    shift = (attention_mask[:, :prompt_width].cumsum(-1) == 0).sum(-1).clamp(max=prompt_width - 1)
    counted = torch.arange(1, response_width + 1, device=response_mask.device) * response_mask
    end = prompt_width + counted.max(-1).values  # exclusive: one past the row's last counted token
    length = max(int((end - shift).max()), 1)
    columns = torch.arange(length, device=sequences.device) + shift.unsqueeze(-1)
    valid = columns < end.unsqueeze(-1)
    columns = columns.clamp(max=width - 1)
    ids = sequences.gather(1, columns) * valid
    attention = attention_mask.gather(1, columns) * valid
    target = columns[:, 1:] - prompt_width  # the response column each position predicts
    in_response = (target >= 0) & valid[:, 1:]
    predicting = in_response & response_mask.gather(1, target.clamp(min=0, max=response_width - 1))
    return ids, attention, predicting


def longest_first(lengths: torch.Tensor) -> torch.Tensor:
    """(n,) long: the positions of `lengths` ((n,) real-token counts), longest first, ties in their
    given order, so that consecutive slices of it form passes of similar length."""
    return torch.sort(lengths, descending=True, stable=True).indices


def group_by_length(rows: torch.Tensor, lengths: torch.Tensor, size: int) -> list[torch.Tensor]:
    """`rows` ((n,) long) split into ceil(n / size) passes of `size` rows (the last one shorter), the
    longest rows together; `lengths` ((B,)) holds each row's real-token count by row index. The
    same rows and the same number of passes as `rows.split(size)`, which the plan's per-rank pass
    counts rely on."""
    return list(rows[longest_first(lengths[rows])].split(size))
