"""The trainer's phases, called one by one on a small random model (no pretraining)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from mgrpo.algos.grader import AnswerEquivalence
from mgrpo.models.scorer import ResponseScorer
from mgrpo.phases import (
    LossSettings,
    UpdatePlan,
    compute_device,
    filter_phase,
    lr_lambda,
    pad_plan,
    plan_update,
    sampler_entropy,
    score_phase,
    update_phase,
    vote_phase,
)
from mgrpo.rollout.base import encode_prompts, pad_responses, response_mask_from_tokens, sample_seed
from mgrpo.rollout import hf as hf_engine
from mgrpo.rollout.hf import HFRolloutEngine

PROMPTS = ["12+34+56=", "7+8=", "123+456+789+10="]
SETTINGS = LossSettings(
    temperature=1.0, clip_ratio=0.2, clip_ratio_dual=None, kl_coef=0.0, kl_estimator="low_var_kl",
    agg_mode="token-mean", norm_length=10.0, grad_clip=0.0,
)


def ids(tokenizer, prompts=PROMPTS):
    return encode_prompts(tokenizer, prompts, 512)


def test_response_mask_stops_after_first_eos_even_when_pad_is_eos():
    eos = 1
    responses = torch.tensor([[5, 6, 1, 1, 1], [5, 1, 7, 1, 1], [5, 6, 7, 8, 9]])
    assert response_mask_from_tokens(responses, eos).tolist() == [
        [True, True, True, False, False],
        [True, True, False, False, False],
        [True, True, True, True, True],
    ]
    assert pad_responses([[3], [], [4, 5]], 0).tolist() == [[3, 0], [0, 0], [4, 5]]


def test_engine_layout_and_per_prompt_seeds(tiny):
    model, tokenizer = tiny
    engine = HFRolloutEngine(model, tokenizer)
    seeds = [sample_seed(0, 1, "policy", i) for i in range(3)]
    a = engine.generate(ids(tokenizer), 4, 1.0, 12, seeds)
    b = engine.generate(ids(tokenizer), 4, 1.0, 12, seeds)
    c = engine.generate(ids(tokenizer), 4, 1.0, 12, [sample_seed(0, 1, "momentum", i) for i in range(3)])
    assert a.group_ids.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert torch.equal(a.sequences, b.sequences) and a.texts == b.texts
    assert not torch.equal(a.sequences, c.sequences), "policy and momentum streams must differ"
    assert len(set(a.texts[:4])) > 1, "a prompt's samples must differ from each other"
    # Left-padded prompts: each row's prompt ends right before column P.
    prompt_part = a.sequences[:, : a.prompt_length]
    for i, prompt in enumerate(PROMPTS):
        expected = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        assert prompt_part[i * 4, -len(expected) :].tolist() == expected
    assert a.attention_mask[:, a.prompt_length :].bool().equal(a.response_mask)
    # A prompt's samples depend on its seed only: not on the other prompts or the batch size.
    alone = engine.generate(ids(tokenizer)[1:2], 4, 1.0, 12, seeds[1:2])
    assert alone.texts == a.texts[4:8]
    small_batches = HFRolloutEngine(model, tokenizer, batch_size=3).generate(ids(tokenizer), 4, 1.0, 12, seeds)
    assert small_batches.texts == a.texts


def test_sampler_draws_blocks_of_steps_that_equal_per_step_draws(tiny, monkeypatch):
    """Rows pre-draw their uniforms for several steps at once; the samples are those of one draw
    per row per step (a block of 1 step), and so do not depend on the memory bound."""
    model, tokenizer = tiny
    seeds = [sample_seed(0, 3, "policy", i) for i in range(3)]
    blocks = HFRolloutEngine(model, tokenizer).generate(ids(tokenizer), 4, 0.9, 14, seeds)
    monkeypatch.setattr(hf_engine, "NOISE_BLOCK_BYTES", 1)
    per_step = HFRolloutEngine(model, tokenizer).generate(ids(tokenizer), 4, 0.9, 14, seeds)
    assert torch.equal(blocks.sequences, per_step.sequences)
    assert torch.equal(blocks.sampler_logprobs, per_step.sampler_logprobs)


def test_sampler_logprobs_are_the_trainers_at_the_sampling_temperature(tiny):
    model, tokenizer = tiny
    ro = HFRolloutEngine(model, tokenizer).generate(ids(tokenizer), 3, 1.3, 10, [1, 2, 3])
    scores = score_phase(ResponseScorer(model), ro, 1.3, chunk_size=64)
    drift = ((scores.logprobs - ro.sampler_logprobs).abs() * ro.response_mask).max()
    assert drift < 1e-5
    greedy = HFRolloutEngine(model, tokenizer).generate(ids(tokenizer), 1, 0.0, 10, [0, 0, 0])
    assert greedy.sampler_logprobs is None


def test_scorer_matches_a_direct_forward_and_entropy_estimators(tiny):
    model, tokenizer = tiny
    ro = HFRolloutEngine(model, tokenizer).generate(ids(tokenizer, PROMPTS[:2]), 3, 1.3, 10, [5, 6])
    full = score_phase(ResponseScorer(model, chunk_tokens=7), ro, 1.3, chunk_size=2, entropy_estimator="full")
    sampled = score_phase(ResponseScorer(model), ro, 1.3, chunk_size=64, entropy_estimator="sampled")
    assert torch.allclose(full.logprobs, sampled.logprobs, atol=1e-5)
    # Direct computation without padding, for an unpadded row (0) and a left-padded one (3).
    P = ro.prompt_length
    for row in (0, 3):
        real = ro.attention_mask[row].bool()
        row_ids = ro.sequences[row][real]
        with torch.no_grad():
            logits = model(input_ids=row_ids.unsqueeze(0)).logits[0] / 1.3
        n_prompt = int(ro.attention_mask[row, :P].sum())
        logp = torch.log_softmax(logits, -1)
        response = row_ids[n_prompt:]
        expected = logp[n_prompt - 1 : -1].gather(-1, response.unsqueeze(-1)).squeeze(-1)
        got = full.logprobs[row][ro.response_mask[row]]
        assert torch.allclose(got, expected, atol=1e-4)
        assert (full.logprobs[row][~ro.response_mask[row]] == 0).all()
        token_entropy = -(logp.exp() * logp).sum(-1)[n_prompt - 1 : -1]
        assert math.isclose(float(full.entropy[row]), float(token_entropy.mean()), rel_tol=1e-4)
        assert math.isclose(float(sampled.entropy[row]), float(-expected.mean()), rel_tol=1e-4)
    assert int(ro.attention_mask[3, :P].sum()) < P, "row 3 should be left-padded"


def test_chunked_scorer_gradients_equal_one_chunk(tiny):
    """Chunking the LM head (recomputed in backward) changes neither values nor gradients."""
    model, tokenizer = tiny
    ro = HFRolloutEngine(model, tokenizer).generate(ids(tokenizer, PROMPTS[:2]), 2, 1.0, 10, [7, 8])
    grads = []
    for chunk in (3, 10_000):
        model.zero_grad(set_to_none=True)
        lp, _ = ResponseScorer(model, chunk_tokens=chunk)(ro.sequences, ro.attention_mask, ro.response_mask, 1.0)
        (lp * ro.response_mask).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    model.zero_grad(set_to_none=True)
    # Other head shapes sum in another order: a few float32 ulps of the largest entry (|g| ~ 12).
    assert all((grads[0][n] - grads[1][n]).abs().max() <= 1e-6 * grads[1][n].abs().max() for n in grads[0])


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


def test_plan_update_hand_computed():
    mask = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 0, 0], [1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    plan = plan_update(mask, epochs=1, mini_batches=1, micro_batch_size=2, shuffle_seed=0)
    assert [[r.tolist() for r in step] for step in plan.micro_batches] == [[[0, 2], [3, 4]]]
    assert plan.num_tokens == [7.0] and plan.num_seqs == [4.0]
    two = plan_update(mask, epochs=2, mini_batches=3, micro_batch_size=8, shuffle_seed=0)
    assert len(two.micro_batches) == 6 and sum(two.num_seqs) == 8
    for epoch in (two.micro_batches[:3], two.micro_batches[3:]):
        rows = sorted(r for step in epoch for rows in step for r in rows.tolist())
        assert rows == [0, 2, 3, 4], "each epoch trains every trainable row once"
    nothing = plan_update(torch.zeros(2, 3, dtype=torch.bool), 1, 1, 4, 0)
    assert nothing.micro_batches == [[]] and nothing.num_tokens == [0.0]
    padded = pad_plan(plan, [3])
    assert [r.numel() for r in padded.micro_batches[0]] == [2, 2, 0]


def test_update_phase_trains_only_on_kept_samples(tiny):
    model, tokenizer = tiny
    scorer = ResponseScorer(model)
    ro = HFRolloutEngine(model, tokenizer).generate(ids(tokenizer, PROMPTS[:2]), 4, 1.0, 10, [3, 4])
    old = score_phase(scorer, ro, 1.0, 64).logprobs
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5, 1.0, -1.0, 0.0, 0.0])
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def plan(members):
        return plan_update(ro.response_mask & members.unsqueeze(-1), 1, 1, 3, 0)

    def grads(members: torch.Tensor, adv: torch.Tensor) -> dict[str, torch.Tensor]:
        model.load_state_dict(before)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        update_phase(scorer, opt, ro, old, None, adv, members, plan(members), SETTINGS)
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    none = torch.zeros(8, dtype=torch.bool)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    metrics = update_phase(scorer, opt, ro, old, None, advantages, none, plan(none), SETTINGS)
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


def test_split_plans_with_global_counts_sum_to_the_whole_batch_gradient(tiny):
    """What makes a W-rank update equal a 1-rank one: two halves of the batch, each normalised by
    the global token count and padded to the same number of passes, sum to the whole's gradient."""
    model, tokenizer = tiny
    scorer = ResponseScorer(model)
    ro = HFRolloutEngine(model, tokenizer).generate(ids(tokenizer, PROMPTS[:2]), 4, 1.0, 10, [9, 10])
    old = score_phase(scorer, ro, 1.0, 64).logprobs
    advantages = torch.linspace(-1, 1, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.0)

    def grad_of(members: torch.Tensor, plan: UpdatePlan) -> dict[str, torch.Tensor]:
        model.load_state_dict(before)
        update_phase(scorer, opt, ro, old, None, advantages, members, plan, SETTINGS)
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    everyone = torch.ones(8, dtype=torch.bool)
    whole = grad_of(everyone, plan_update(ro.response_mask, 1, 1, 2, 0))
    total_tokens = float(ro.response_mask.sum())
    halves = []
    for part in (slice(0, 3), slice(3, 8)):
        members = torch.zeros(8, dtype=torch.bool)
        members[part] = True
        local = plan_update(ro.response_mask & members.unsqueeze(-1), 1, 1, 2, 0)
        local = pad_plan(UpdatePlan(local.micro_batches, [total_tokens], [8.0]), [3])
        halves.append(grad_of(members, local))
    for name in whole:
        assert torch.allclose(halves[0][name] + halves[1][name], whole[name], atol=1e-6), name
    model.load_state_dict(before)


def test_lr_schedule_warmup_then_cosine():
    assert lr_lambda(0, 100, 0.1, "cosine", 0.0) == pytest.approx(0.1)
    assert lr_lambda(9, 100, 0.1, "cosine", 0.0) == pytest.approx(1.0)
    assert lr_lambda(10, 100, 0.1, "cosine", 0.0) == pytest.approx(1.0)
    assert lr_lambda(55, 100, 0.1, "cosine", 0.0) == pytest.approx(0.5)
    assert lr_lambda(100, 100, 0.1, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_lambda(50, 100, 0.0, "constant", 0.0) == 1.0


@pytest.mark.parametrize("micro_batch_size", [8, 2])
def test_kl_metric_is_the_mini_batch_kl_whatever_the_micro_batches(tiny, micro_batch_size):
    """train/kl is the token-mean KL over the whole mini-batch, for 1 and 4 micro-batches."""
    from mgrpo.algos.losses import kl_penalty

    model, tokenizer = tiny
    scorer = ResponseScorer(model)
    ro = HFRolloutEngine(model, tokenizer).generate(ids(tokenizer, PROMPTS[:2]), 4, 1.0, 10, [11, 12])
    old = score_phase(scorer, ro, 1.0, 64).logprobs
    reference = old + 0.05 * torch.randn(old.shape, generator=torch.Generator().manual_seed(0))
    members = torch.ones(8, dtype=torch.bool)
    settings = LossSettings(**{**SETTINGS.__dict__, "kl_coef": 0.1})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    plan = plan_update(ro.response_mask, 1, 1, micro_batch_size, 0)
    assert len(plan.micro_batches[0]) == 8 // micro_batch_size
    metrics = update_phase(scorer, opt, ro, old, reference, torch.zeros(8), members, plan, settings)
    mask = ro.response_mask
    expected = float((kl_penalty(old, reference) * mask).sum() / mask.sum())
    assert metrics["kl"] == pytest.approx(expected, rel=1e-4)
    model.load_state_dict(before)


@pytest.mark.parametrize("estimator", ["full", "sampled"])
def test_sampler_entropy_equals_the_scoring_pass(tiny, estimator):
    """The entropy the HF sampler records while generating is the scoring pass's, so the IQR
    filter needs no forward pass."""
    model, tokenizer = tiny
    ro = HFRolloutEngine(model, tokenizer).generate(ids(tokenizer), 4, 0.8, 12, [21, 22, 23])
    scores = score_phase(ResponseScorer(model), ro, 0.8, 64, entropy_estimator=estimator)
    assert torch.allclose(sampler_entropy(ro, estimator), scores.entropy, atol=1e-5)
    no_entropy = ro.select(torch.arange(len(ro)))
    no_entropy.sampler_entropy = None
    assert sampler_entropy(no_entropy, "full") is None, "vLLM records no full entropy: a pass is needed"
    assert sampler_entropy(no_entropy, "sampled") is not None


def test_on_policy_update_without_old_logprobs_is_the_same_step(tiny):
    """old_logprobs=None (the pass's own detached log-probs) gives the gradient that log-probs
    from a separate scoring pass give, and the first step's log-probs reach the hook."""
    model, tokenizer = tiny
    scorer = ResponseScorer(model)
    ro = HFRolloutEngine(model, tokenizer).generate(ids(tokenizer, PROMPTS[:2]), 4, 1.0, 10, [31, 32])
    old = score_phase(scorer, ro, 1.0, 64).logprobs
    advantages = torch.linspace(-1, 1, 8)
    members = torch.ones(8, dtype=torch.bool)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    seen = {}

    def grads(old_logprobs):
        model.load_state_dict(before)
        hook = lambda logprobs, rows: seen.update(logprobs=logprobs, rows=rows)
        update_phase(scorer, opt, ro, old_logprobs, None, advantages, members, plan_update(ro.response_mask, 1, 1, 3, 0), SETTINGS, before_first_step=hook)
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    separate, own = grads(old), grads(None)
    assert all(torch.allclose(separate[n], own[n], atol=1e-7) for n in own)
    assert seen["rows"].all()
    assert torch.allclose(seen["logprobs"] * ro.response_mask, old * ro.response_mask, atol=1e-5)
    assert ((ro.sampler_logprobs - seen["logprobs"]).abs() * ro.response_mask).max() < 1e-5
    model.load_state_dict(before)


class _Shard:
    """A DTensor parameter's two devices as FSDP2 lays them out under CPUOffloadPolicy: its local
    shard on one (the CPU there) and its mesh, where FSDP gathers it and computes, on another."""

    grad = None

    def __init__(self, shard_device: str, mesh_device: str) -> None:
        self.device = torch.device(shard_device)
        self.device_mesh = SimpleNamespace(device_type=mesh_device)

    def to_local(self) -> torch.Tensor:
        return torch.empty(0, device=self.device)


class _Offloaded(torch.nn.Module):
    """Stands in for an FSDP2 scorer with offloaded shards, on a machine without a GPU: its
    parameters report shards on the `meta` device and a CPU mesh, and its forward computes on the
    CPU (with `scorer`'s weights). It takes its inputs only on the compute device, since what a
    phase puts elsewhere (FSDP moves the inputs, not the phase's own copies) ends up mixed with
    outputs on another device, as the response mask was with a CPU-offloaded reference."""

    def __init__(self, scorer: ResponseScorer) -> None:
        super().__init__()
        self.scorer = scorer
        self.shard = _Shard("meta", "cpu")

    def parameters(self, recurse: bool = True):
        yield self.shard
        yield from self.scorer.parameters()

    def forward(self, *args, **kwargs):
        devices = {a.device for a in args if isinstance(a, torch.Tensor)}
        assert devices == {torch.device("cpu")}, f"inputs on {devices}, not on the compute device"
        return self.scorer(*args, **kwargs)


def test_compute_device_is_the_mesh_device_not_the_offloaded_shards_one():
    assert compute_device(torch.nn.Linear(2, 2)) == torch.device("cpu")
    offloaded = torch.nn.Module()
    offloaded.parameters = lambda recurse=True: iter([_Shard("cpu", "cuda")])
    assert compute_device(offloaded) == torch.device("cuda")
    assert compute_device(_Offloaded(torch.nn.Linear(2, 2))) == torch.device("cpu")


@pytest.mark.parametrize("estimator", ["full", "sampled"])
def test_scoring_a_model_with_offloaded_shards_runs_on_its_compute_device(tiny, estimator):
    """Reference, momentum and policy scoring: masks go where the log-probs come from."""
    model, tokenizer = tiny
    ro = HFRolloutEngine(model, tokenizer).generate(ids(tokenizer, PROMPTS[:2]), 3, 1.0, 10, [41, 42])
    plain = score_phase(ResponseScorer(model), ro, 1.0, 2, estimator)
    offloaded = score_phase(_Offloaded(ResponseScorer(model)), ro, 1.0, 2, estimator)
    assert torch.equal(offloaded.logprobs, plain.logprobs) and torch.equal(offloaded.entropy, plain.entropy)


def test_update_of_a_model_with_offloaded_shards_runs_on_its_compute_device(tiny):
    model, tokenizer = tiny
    ro = HFRolloutEngine(model, tokenizer).generate(ids(tokenizer, PROMPTS[:2]), 4, 1.0, 10, [43, 44])
    old = score_phase(ResponseScorer(model), ro, 1.0, 64).logprobs
    reference = old + 0.05
    settings = LossSettings(**{**SETTINGS.__dict__, "kl_coef": 0.1, "tis_cap": 2.0})
    members = torch.ones(8, dtype=torch.bool)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    grads = []
    for scorer in (ResponseScorer(model), _Offloaded(ResponseScorer(model))):
        model.load_state_dict(before)
        update_phase(scorer, opt, ro, None, reference, torch.linspace(-1, 1, 8), members, plan_update(ro.response_mask, 1, 1, 3, 0), settings)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert all(torch.equal(grads[0][n], grads[1][n]) for n in grads[0])
    model.load_state_dict(before)
