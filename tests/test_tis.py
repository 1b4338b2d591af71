"""Truncated importance sampling against the sampler (`algo.tis_cap`): its config check, the
update phase's use of it, and a short training run with it on."""

from __future__ import annotations

import pytest
import torch

from mgrpo import metric_names as names
from mgrpo.config import AlgoConfig, Config, ConfigError
from mgrpo.config_checks import validate
from mgrpo.models.scorer import ResponseScorer
from mgrpo.phases import LossSettings, plan_update, score_phase, update_phase
from mgrpo.rollout.hf import HFRolloutEngine
from tests.test_phases import PROMPTS, SETTINGS, ids
from tests.test_trainer import fast_overrides
from tests.trainer_helpers import metric_series, train

TIS = LossSettings(**{**SETTINGS.__dict__, "tis_cap": 2.0})


@pytest.mark.parametrize("cap", [0.5, 0.0, float("inf"), float("nan")])
def test_validate_rejects_a_cap_below_one_or_not_finite(cap):
    with pytest.raises(ConfigError, match=r"^algo\.tis_cap=.*>= 1"):
        validate(Config(algo=AlgoConfig(tis_cap=cap)))


@pytest.mark.parametrize("cap", [None, 1.0, 2.0])
def test_validate_accepts_null_and_caps_from_one(cap):
    validate(Config(algo=AlgoConfig(tis_cap=cap)))


@pytest.fixture
def batch(tiny):
    model, tokenizer = tiny
    ro = HFRolloutEngine(model, tokenizer).generate(ids(tokenizer, PROMPTS[:2]), 4, 1.0, 10, [51, 52])
    return model, ro, score_phase(ResponseScorer(model), ro, 1.0, 64).logprobs


def grads_and_metrics(model, rollouts, settings, old=None, micro_batch_size=3):
    """The update's gradients (lr 0: the model is unchanged) and metrics on all 8 samples."""
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    plan = plan_update(rollouts.response_mask, 1, 1, micro_batch_size, 0)
    metrics = update_phase(ResponseScorer(model), opt, rollouts, old, None, torch.linspace(-1, 1, 8), torch.ones(8, dtype=torch.bool), plan, settings)
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.load_state_dict(before)
    return grads, metrics


def test_without_sampler_logprobs_the_update_names_algo_tis_cap(batch):
    model, ro, _ = batch
    greedy_like = ro.select(torch.arange(len(ro)))
    greedy_like.sampler_logprobs = None
    with pytest.raises(ConfigError, match=r"^algo\.tis_cap=2\.0 .*algo\.tis_cap=null"):
        grads_and_metrics(model, greedy_like, TIS)


def test_agreeing_sampler_leaves_the_update_unchanged(batch):
    """The HF engine samples from the trainer's own weights: weights 1, nothing truncated."""
    model, ro, _ = batch
    plain, plain_metrics = grads_and_metrics(model, ro, SETTINGS)
    corrected, metrics = grads_and_metrics(model, ro, TIS)
    assert all(torch.allclose(plain[n], corrected[n], atol=1e-6) for n in plain)
    assert metrics["tis_weight_mean"] == pytest.approx(1.0, abs=1e-5)
    assert metrics["tis_clip_frac"] == 0.0
    assert "tis_weight_mean" not in plain_metrics


@pytest.mark.parametrize("micro_batch_size", [8, 3])
def test_mismatched_sampler_weights_the_update_and_its_metrics_are_the_step_token_means(batch, micro_batch_size):
    model, ro, old = batch
    shifted = ro.select(torch.arange(len(ro)))
    noise = 0.8 * torch.randn(old.shape, generator=torch.Generator().manual_seed(5))
    shifted.sampler_logprobs = (old + noise) * ro.response_mask
    plain, _ = grads_and_metrics(model, shifted, SETTINGS, old, micro_batch_size)
    corrected, metrics = grads_and_metrics(model, shifted, TIS, old, micro_batch_size)
    assert any(not torch.allclose(plain[n], corrected[n]) for n in plain), "the weights must change the gradient"
    mask = ro.response_mask
    ratio = torch.exp(old - shifted.sampler_logprobs)[mask]
    assert metrics["tis_weight_mean"] == pytest.approx(float(ratio.clamp(max=2.0).mean()), rel=1e-5)
    assert metrics["tis_clip_frac"] == pytest.approx(float((ratio > 2.0).float().mean()), rel=1e-5)
    assert 0 < metrics["tis_clip_frac"] < 1


def test_a_short_run_with_tis_logs_weights_and_mismatch(tiny_cache, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    train(fast_overrides(tiny_cache, uri, "tis", "algo.tis_cap=2.0", "trainer.total_steps=2"), tmp_path / "run")
    series = next(iter(metric_series(uri, "tis").values()))
    for key in (names.TIS_WEIGHT_MEAN, names.TIS_CLIP_FRAC, names.ROLLOUT_LOGPROB_DRIFT):
        assert [s for s, _ in series[key]] == [1, 2], key
    # One rank, HF engine on the trainer's own weights: sampler and trainer agree to float32 noise.
    assert all(v == pytest.approx(1.0, abs=1e-4) for _, v in series[names.TIS_WEIGHT_MEAN])
    assert all(v == 0.0 for _, v in series[names.TIS_CLIP_FRAC])
