"""The trainer's phases, called one by one on a small random model (no pretraining)."""

from __future__ import annotations

import math

import pytest
import torch

from mgrpo.config import Config, TinyModelConfig
from mgrpo.models.tiny import build_tiny_model, build_tiny_tokenizer
from mgrpo.rollout.base import pad_responses, response_mask_from_tokens
from mgrpo.rollout.hf import HFRolloutEngine
from mgrpo.trainer import filter_phase, lr_lambda, score_phase, stream_seed, update_phase, vote_phase
from mgrpo.algos.answers import AnswerEquivalence

PROMPTS = ["12+34+56=", "7+8=", "123+456+789+10="]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(TinyModelConfig(), tokenizer)
    return model, tokenizer


def test_response_mask_stops_after_first_eos_even_when_pad_is_eos():
    eos = 1
    responses = torch.tensor([[5, 6, 1, 1, 1], [5, 1, 7, 1, 1], [5, 6, 7, 8, 9]])
    assert response_mask_from_tokens(responses, eos).tolist() == [
        [True, True, True, False, False],
        [True, True, False, False, False],
        [True, True, True, True, True],
    ]
    assert pad_responses([[3], [], [4, 5]], 0).tolist() == [[3, 0], [0, 0], [4, 5]]


def test_engine_layout_seeds_and_streams(tiny):
    model, tokenizer = tiny
    engine = HFRolloutEngine(model, tokenizer)
    a = engine.generate(PROMPTS, 4, 1.0, 12, seed=stream_seed(0, 1, 0))
    b = engine.generate(PROMPTS, 4, 1.0, 12, seed=stream_seed(0, 1, 0))
    c = engine.generate(PROMPTS, 4, 1.0, 12, seed=stream_seed(0, 1, 1))
    assert a.group_ids.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert torch.equal(a.sequences, b.sequences) and a.texts == b.texts
    assert not torch.equal(a.sequences, c.sequences), "policy and momentum streams must differ"
    # Left-padded prompts: each row's prompt ends right before column P.
    prompt_part = a.sequences[:, : a.prompt_length]
    for i, prompt in enumerate(PROMPTS):
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        assert prompt_part[i * 4, -len(ids) :].tolist() == ids
    assert a.attention_mask[:, a.prompt_length :].bool().equal(a.response_mask)


def test_score_phase_matches_a_direct_forward_and_entropy_estimators(tiny):
    model, tokenizer = tiny
    ro = HFRolloutEngine(model, tokenizer).generate(PROMPTS[:2], 3, 1.3, 10, seed=5)
    full = score_phase(model, ro, 1.3, chunk_size=2, entropy_estimator="full")
    sampled = score_phase(model, ro, 1.3, chunk_size=64, entropy_estimator="sampled")
    assert torch.allclose(full.logprobs, sampled.logprobs, atol=1e-5)
    # Direct computation without padding, for an unpadded row (0) and a left-padded one (3).
    P = ro.prompt_length
    for row in (0, 3):
        real = ro.attention_mask[row].bool()
        ids = ro.sequences[row][real]
        with torch.no_grad():
            logits = model(input_ids=ids.unsqueeze(0)).logits[0] / 1.3
        n_prompt = int(ro.attention_mask[row, :P].sum())
        logp = torch.log_softmax(logits, -1)
        response = ids[n_prompt:]
        expected = logp[n_prompt - 1 : -1].gather(-1, response.unsqueeze(-1)).squeeze(-1)
        got = full.logprobs[row][ro.response_mask[row]]
        assert torch.allclose(got, expected, atol=1e-4)
        token_entropy = -(logp.exp() * logp).sum(-1)[n_prompt - 1 : -1]
        assert math.isclose(float(full.entropy[row]), float(token_entropy.mean()), rel_tol=1e-4)
        assert math.isclose(float(sampled.entropy[row]), float(-expected.mean()), rel_tol=1e-4)
    assert int(ro.attention_mask[3, :P].sum()) < P, "row 3 should be left-padded"


def test_filter_and_vote_phases_use_pooled_groups():
    entropy = torch.tensor([1.0, 1.1, 1.2, 0.01, 2.0, 2.0, 2.0, 2.0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    keep = filter_phase(entropy, groups, 0.75)
    assert keep.tolist() == [True, True, True, False, True, True, True, True]
    assert filter_phase(entropy, groups, None).all()
    texts = ["a####5", "b####5", "c####7", "d####9", "####1/2", "####0.5", "####3", "no answer"]
    answers, vote = vote_phase(texts, groups, keep, AnswerEquivalence(), 0.0)
    assert answers[:4] == ["5", "5", "7", "9"] and answers[7] is None
    assert vote.groups[0].label == "5" and vote.groups[0].num_votes == 3  # the filtered '9' did not vote
    assert vote.groups[1].label in ("0.5", "1/2") and vote.groups[1].vote_share == pytest.approx(2 / 3)
    assert vote.agrees == [True, True, False, False, True, True, False, False]


def test_update_phase_trains_only_on_kept_samples(tiny):
    model, tokenizer = tiny
    cfg = Config()
    cfg.algo.kl_coef = 0.0
    ro = HFRolloutEngine(model, tokenizer).generate(PROMPTS[:2], 4, 1.0, 10, seed=3)
    old = score_phase(model, ro, 1.0, 64).logprobs
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5, 1.0, -1.0, 0.0, 0.0])
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def grads(members: torch.Tensor, adv: torch.Tensor) -> dict[str, torch.Tensor]:
        model.load_state_dict(before)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        update_phase(model, opt, ro, old, None, adv, members, cfg)
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    none = torch.zeros(8, dtype=torch.bool)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    metrics = update_phase(model, opt, ro, old, None, advantages, none, cfg)
    assert metrics["trained_samples"] == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    members = torch.tensor([True, True, True, False, True, True, True, True])
    g1 = grads(members, advantages)
    changed = advantages.clone()
    changed[3] = 100.0  # a filtered-out sample's advantage must not matter
    g2 = grads(members, changed)
    assert g1.keys() == g2.keys() and all(torch.allclose(g1[k], g2[k]) for k in g1)
    assert any(v.abs().sum() > 0 for v in g1.values())
    model.load_state_dict(before)


def test_lr_schedule_warmup_then_cosine():
    assert lr_lambda(0, 100, 0.1, "cosine", 0.0) == pytest.approx(0.1)
    assert lr_lambda(9, 100, 0.1, "cosine", 0.0) == pytest.approx(1.0)
    assert lr_lambda(10, 100, 0.1, "cosine", 0.0) == pytest.approx(1.0)
    assert lr_lambda(55, 100, 0.1, "cosine", 0.0) == pytest.approx(0.5)
    assert lr_lambda(100, 100, 0.1, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_lambda(50, 100, 0.0, "constant", 0.0) == 1.0
