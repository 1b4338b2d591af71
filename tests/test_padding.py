"""No compute on padding: trimmed passes compute what untrimmed ones do, and grouping rows by
length into micro-batches leaves an update step as it was."""

from __future__ import annotations

import torch

from mgrpo.models.scorer import ResponseScorer
from mgrpo.padding import group_by_length, longest_first, pack_batch
from mgrpo.phases import LossSettings, plan_update, score_phase, take_pad_ratio, update_phase
from mgrpo.rollout.base import Rollouts, encode_prompts
from mgrpo.rollout.hf import HFRolloutEngine

PROMPTS = ["12+34+56=", "7+8=", "123+456+789+10=", "5="]
SETTINGS = LossSettings(
    temperature=1.0, clip_ratio=0.2, clip_ratio_dual=None, kl_coef=0.0, kl_estimator="low_var_kl",
    agg_mode="token-mean", norm_length=12.0, grad_clip=0.0,
)


def ragged_rollouts(model, tokenizer, left: int = 3, right: int = 4) -> Rollouts:
    """Samples of prompts of unequal lengths with responses cut to unequal lengths (an untrained
    model seldom stops by itself), laid out with `left` extra padding columns before the prompts
    and `right` after the responses, as a batch padded for longer rows elsewhere would be."""
    ro = HFRolloutEngine(model, tokenizer).generate(encode_prompts(tokenizer, PROMPTS, 512), 2, 1.0, 12, [1, 2, 3, 4])
    lengths = torch.tensor([12, 3, 7, 1, 12, 5, 2, 9])
    response = torch.arange(ro.response_mask.shape[1]) < lengths.unsqueeze(-1)
    pad = tokenizer.pad_token_id
    P = ro.prompt_length
    responses = torch.where(response, ro.sequences[:, P:], pad)
    b = len(ro)
    sequences = torch.cat([torch.full((b, left), pad), ro.sequences[:, :P], responses, torch.full((b, right), pad)], 1)
    attention = torch.cat([torch.zeros(b, left, dtype=torch.long), ro.attention_mask[:, :P], response.long(), torch.zeros(b, right, dtype=torch.long)], 1)
    response_mask = torch.cat([response, torch.zeros(b, right, dtype=torch.bool)], 1)
    return Rollouts(sequences, attention, response_mask, ro.group_ids, ro.texts)


def untrimmed_scores(model, ro: Rollouts, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, R) log-probs and entropies from one decoder pass over the whole padded (B, P + R)
    layout, the way the scorer ran before it packed rows: the reference the packed passes must match."""
    positions = (ro.attention_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        hidden = model.base_model(input_ids=ro.sequences, attention_mask=ro.attention_mask, position_ids=positions).last_hidden_state
        logp = torch.log_softmax(model.get_output_embeddings()(hidden[:, ro.prompt_length - 1 : -1]) / temperature, -1)
    logprobs = logp.gather(-1, ro.sequences[:, ro.prompt_length :].unsqueeze(-1)).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return logprobs * ro.response_mask, entropy * ro.response_mask


def test_pack_batch_hand_computed():
    # P = 3, R = 4; row 0: prompt of 2, response of 1; row 1: prompt of 1, response of 3.
    attention = torch.tensor([[0, 1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 1, 0]])
    response = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    sequences = torch.arange(14).reshape(2, 7)
    ids, mask, predicting = pack_batch(sequences, attention, response)
    assert ids.tolist() == [[1, 2, 3, 0], [9, 10, 11, 12]]
    assert mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert predicting.tolist() == [[False, True, False], [True, True, True]]
    assert ids[:, 1:][predicting].tolist() == sequences[:, 3:][response].tolist()
    # Nothing attended or counted: one prompt column stays, and nothing is predicted.
    ids, mask, predicting = pack_batch(sequences, torch.zeros(2, 7, dtype=torch.long), torch.zeros(2, 4, dtype=torch.bool))
    assert ids.tolist() == [[2], [9]] and mask.tolist() == [[0], [0]] and predicting.shape == (2, 0)


def test_grouping_keeps_the_rows_and_the_number_of_passes():
    lengths = torch.tensor([5, 9, 2, 9, 7, 1, 3])
    assert longest_first(lengths).tolist() == [1, 3, 4, 0, 6, 2, 5], "ties keep their order"
    rows = torch.tensor([6, 0, 3, 5, 1])
    groups = group_by_length(rows, lengths, 2)
    assert [g.tolist() for g in groups] == [[3, 1], [0, 6], [5]]
    assert len(groups) == len(rows.split(2))


def test_trimmed_scoring_equals_untrimmed_scoring(tiny):
    model, tokenizer = tiny
    ro = ragged_rollouts(model, tokenizer)
    expected_logprobs, expected_entropy = untrimmed_scores(model, ro, 1.3)
    scorer = ResponseScorer(model)
    for chunk in (1, 3, 64):
        scores = score_phase(scorer, ro, 1.3, chunk, "full")
        assert scores.logprobs.shape == ro.response_mask.shape
        # Other kernel shapes sum in another order: a few float32 ulps of |log p| < 10 (5e-7 measured).
        assert torch.allclose(scores.logprobs, expected_logprobs, atol=1e-5), chunk
        lengths = ro.response_mask.sum(-1)
        assert torch.allclose(scores.entropy, expected_entropy.sum(-1) / lengths, atol=1e-5), chunk


def test_pad_ratio_counts_the_positions_each_pass_ran_over(tiny):
    model, tokenizer = tiny
    ro = ragged_rollouts(model, tokenizer)
    scorer = ResponseScorer(model)
    real = int(ro.attention_mask.sum())
    score_phase(scorer, ro, 1.0, 1, "sampled")
    assert take_pad_ratio([scorer]) == (1.0, float(real)), "a pass of one row runs over its own tokens only"
    assert take_pad_ratio([scorer]) == (1.0, 0.0), "the counts start afresh"
    score_phase(scorer, ro, 1.0, 64, "sampled")
    longest = int(ro.attention_mask.sum(-1).max())
    assert take_pad_ratio([scorer]) == (len(ro) * longest / real, float(real)), "one pass over the longest row's width"


def test_a_step_grouped_by_length_equals_the_ungrouped_step(tiny):
    model, tokenizer = tiny
    ro = ragged_rollouts(model, tokenizer)
    scorer = ResponseScorer(model)
    old = score_phase(scorer, ro, 1.0, 64).logprobs
    advantages = torch.linspace(-1, 1, len(ro))
    members = torch.ones(len(ro), dtype=torch.bool)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def step(lengths):
        model.load_state_dict(before)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        plan = plan_update(ro.response_mask, 1, 2, 2, 7, lengths)
        metrics = update_phase(scorer, optimizer, ro, old, None, advantages, members, plan, SETTINGS)
        return plan, metrics, {k: v.clone() for k, v in model.state_dict().items()}

    lengths = ro.attention_mask.sum(-1)
    plain, plain_metrics, plain_weights = step(None)
    grouped, grouped_metrics, grouped_weights = step(lengths)
    for a, b in zip(plain.micro_batches, grouped.micro_batches):
        assert sorted(torch.cat(a).tolist()) == sorted(torch.cat(b).tolist()) and len(a) == len(b)
        assert [int(lengths[r].max()) for r in b] == sorted((int(lengths[r].max()) for r in b), reverse=True)
    assert grouped.num_tokens == plain.num_tokens and grouped.num_seqs == plain.num_seqs
    as_lists = lambda plan: [[rows.tolist() for rows in passes] for passes in plan.micro_batches]
    assert as_lists(plain) != as_lists(grouped), "the test must regroup some rows"
    # Only the order of float32 sums over the micro-batches changed: a few ulps of each gradient
    # entry (|lr * g| < 0.1 here, ulp ~1e-8), so the weights agree to 1e-6 (6e-8 measured).
    for name in plain_weights:
        assert torch.allclose(plain_weights[name], grouped_weights[name], rtol=0, atol=1e-6), name
    assert any(not torch.equal(before[k], plain_weights[k]) for k in before), "the step must move the weights"
    for key in ("loss", "pg_loss", "clip_frac"):
        assert abs(plain_metrics[key] - grouped_metrics[key]) < 1e-5, key
    model.load_state_dict(before)
