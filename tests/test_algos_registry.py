"""Algorithm presets (mgrpo.algos.registry) and the invariants `mgrpo.config_checks.validate` enforces."""

from __future__ import annotations

import dataclasses
import re

import pytest

from mgrpo.algos.registry import ALGORITHM_PRESETS, REWARD_SOURCES
from mgrpo.algos.rewards import ground_truth_rewards, pseudo_label_rewards, self_certainty_rewards
from mgrpo.config import AlgoConfig, Config, ConfigError
from mgrpo.config_checks import validate


def _config(**algo: object) -> Config:
    return Config(algo=AlgoConfig(**algo))


def test_preset_names_and_reward_sources() -> None:
    assert set(ALGORITHM_PRESETS) == {"mgrpo", "srt", "gt_grpo", "ttrl", "intuitor"}
    assert REWARD_SOURCES == {
        "pseudo": pseudo_label_rewards, "ground_truth": ground_truth_rewards, "self_certainty": self_certainty_rewards,
    }
    for preset in ALGORITHM_PRESETS.values():
        assert preset.description
        assert set(preset.overrides) <= {f.name for f in dataclasses.fields(AlgoConfig)}


def test_mgrpo_preset() -> None:
    cfg = AlgoConfig(**ALGORITHM_PRESETS["mgrpo"].overrides)
    assert cfg.reward == "pseudo"
    assert cfg.num_momentum_rollouts is None
    assert cfg.iqr_k == 0.75
    assert cfg.momentum == 0.99
    # N = G // 4 (the paper's setting): G = 10 -> N = 2, M = 8; G = 32 -> N = 8, M = 24.
    assert cfg.resolved_num_momentum_rollouts() == 10 // 4 == 2
    assert cfg.num_policy_rollouts() == 8
    paper = AlgoConfig(**{**ALGORITHM_PRESETS["mgrpo"].overrides, "num_rollouts": 32})
    assert paper.resolved_num_momentum_rollouts() == 8
    assert paper.num_policy_rollouts() == 24
    small = AlgoConfig(**{**ALGORITHM_PRESETS["mgrpo"].overrides, "num_rollouts": 7})
    assert small.resolved_num_momentum_rollouts() == 1  # 7 // 4, rounded down


def test_srt_preset() -> None:
    cfg = AlgoConfig(**ALGORITHM_PRESETS["srt"].overrides)
    assert cfg.reward == "pseudo"
    assert cfg.num_momentum_rollouts == 0 and cfg.resolved_num_momentum_rollouts() == 0
    assert cfg.num_policy_rollouts() == cfg.num_rollouts
    assert cfg.iqr_k is None


def test_gt_grpo_preset() -> None:
    cfg = AlgoConfig(**ALGORITHM_PRESETS["gt_grpo"].overrides)
    assert cfg.reward == "ground_truth"
    assert cfg.resolved_num_momentum_rollouts() == 0
    assert cfg.iqr_k is None


def test_ttrl_preset_votes_over_all_and_trains_on_half() -> None:
    cfg = AlgoConfig(**ALGORITHM_PRESETS["ttrl"].overrides)
    assert cfg.reward == "pseudo" and cfg.resolved_num_momentum_rollouts() == 0 and cfg.iqr_k is None
    paper = AlgoConfig(**{**ALGORITHM_PRESETS["ttrl"].overrides, "num_rollouts": 64})
    assert (paper.num_policy_rollouts(), paper.num_trained_rollouts()) == (64, 32)  # TTRL: vote 64, train 32
    lab = AlgoConfig(**{**ALGORITHM_PRESETS["ttrl"].overrides, "num_rollouts": 11})
    assert lab.num_trained_rollouts() == 5  # floor(0.5 * 11)
    assert AlgoConfig(num_rollouts=10).num_trained_rollouts() == 8  # default: every policy sample (M = 8)


def test_intuitor_preset() -> None:
    cfg = AlgoConfig(**ALGORITHM_PRESETS["intuitor"].overrides)
    assert cfg.reward == "self_certainty"
    assert cfg.resolved_num_momentum_rollouts() == 0 and cfg.iqr_k is None
    assert cfg.num_trained_rollouts() == cfg.num_rollouts


@pytest.mark.parametrize("name", sorted(ALGORITHM_PRESETS))
def test_presets_validate(name: str) -> None:
    validate(_config(name=name, **ALGORITHM_PRESETS[name].overrides))


def test_default_config_validates() -> None:
    validate(Config())


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"momentum": 1.0}, "algo.momentum"),
        ({"momentum": 1.5}, "algo.momentum"),
        ({"momentum": -0.1}, "algo.momentum"),
        ({"iqr_k": -0.5}, "algo.iqr_k"),
        ({"iqr_k": float("inf")}, "algo.iqr_k"),
        ({"num_rollouts": 1}, "algo.num_rollouts"),
        ({"num_rollouts": 0}, "algo.num_rollouts"),
        ({"num_rollouts": 8, "num_momentum_rollouts": 8}, "algo.num_momentum_rollouts"),
        ({"num_rollouts": 8, "num_momentum_rollouts": 9}, "algo.num_momentum_rollouts"),
        ({"num_rollouts": 8, "num_momentum_rollouts": -1}, "algo.num_momentum_rollouts"),
        ({"num_rollouts": 4, "num_momentum_rollouts": 3}, "algo.num_rollouts"),  # one policy sample
        ({"name": "grpo_typo"}, "algo"),
        ({"reward": "gold"}, "algo.reward"),
        ({"min_vote_share": 1.5}, "algo.min_vote_share"),
        ({"clip_ratio": 0.0}, "algo.clip_ratio"),
        ({"clip_ratio_dual": 1.0}, "algo.clip_ratio_dual"),
        ({"kl_coef": -0.001}, "algo.kl_coef"),
        ({"kl_estimator": "k3"}, "algo.kl_estimator"),
        ({"loss_agg_mode": "sum"}, "algo.loss_agg_mode"),
        ({"adv_std": "biased"}, "algo.adv_std"),
        ({"adv_eps": -1e-6}, "algo.adv_eps"),
        ({"trained_fraction": 0.0}, "algo.trained_fraction"),
        ({"trained_fraction": 1.5}, "algo.trained_fraction"),
        ({"num_rollouts": 4, "num_momentum_rollouts": 0, "trained_fraction": 0.25}, "algo.trained_fraction"),  # 1 trained
        ({"reward": "self_certainty", "num_rollouts": 8}, "algo.num_momentum_rollouts"),  # N = G // 4 = 2
    ],
)
def test_validate_rejects_bad_algo_values(overrides: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=f"^{re.escape(key)}="):
        validate(_config(**overrides))


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan")])
def test_validate_rejects_bad_temperature(temperature: float) -> None:
    cfg = Config()
    cfg.rollout.temperature = temperature
    with pytest.raises(ConfigError, match="^rollout.temperature="):
        validate(cfg)


@pytest.mark.parametrize("lr", [0.0, -1e-6, float("inf")])
def test_validate_rejects_bad_lr(lr: float) -> None:
    cfg = Config()
    cfg.optim.lr = lr
    with pytest.raises(ConfigError, match="^optim.lr="):
        validate(cfg)


def test_error_says_how_to_fix() -> None:
    with pytest.raises(ConfigError) as info:
        validate(_config(momentum=1.0))
    message = str(info.value)
    assert "[0, 1)" in message and "algo.momentum=<value>" in message
