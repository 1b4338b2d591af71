"""The weight hand-off (`mgrpo.rollout.handoff`) without vLLM: the stale-weight check by checksum,
sleep level 2 around it, and the config rules about engines and sleep mode. The same check against
a real vLLM is in tests/vllm."""

from __future__ import annotations

import pytest
import torch

from mgrpo.config import ConfigError
from mgrpo.config_checks import validate
from mgrpo.rollout.handoff import EngineSlots, StaleWeightsError, tensor_checksum
from mgrpo.rollout.hf import HFRolloutEngine
from tests.trainer_helpers import compose_config


def test_checksum_is_exact_and_order_sensitive():
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.int64, torch.uint8):
        t = (torch.randn(37, 11, generator=g) * 50).to(dtype)
        assert tensor_checksum(t) == tensor_checksum(t.clone())
        flipped = t.clone()
        flipped.view(-1).view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])[5] ^= 1
        assert tensor_checksum(flipped) != tensor_checksum(t), dtype
        assert tensor_checksum(t.flip(0)) != tensor_checksum(t)
    big = torch.randn((1 << 22) + 5, generator=g)  # more than one chunk
    assert tensor_checksum(big) == tensor_checksum(big.clone()) != tensor_checksum(big * 1.0000001)


class Skipping(HFRolloutEngine):
    """An engine whose hand-off consumes the stream and drops it (a load that never arrives)."""

    def load_weights(self, weights) -> None:
        for _ in weights:
            pass


class Sleepy(HFRolloutEngine):
    """Records the sleep-mode calls around hand-offs."""

    calls: list

    def sleep(self, level: int = 1) -> None:
        self.calls.append(("sleep", level))

    def wake_up(self, tags=None) -> None:
        self.calls.append(("wake_up", tuple(tags)))

    def load_weights(self, weights) -> None:
        self.calls.append("load")
        super().load_weights(weights)


def copies(tiny, engine_type=HFRolloutEngine):
    """The trainer's model, and an engine over a copy of it."""
    model, tokenizer = tiny
    copy = type(model)(model.config)
    copy.load_state_dict(model.state_dict())
    return model, engine_type(copy, tokenizer, shares_weights=False)


def test_a_handoff_is_confirmed_and_a_skipped_one_stops_the_run(tiny):
    model, engine = copies(tiny)
    slots = EngineSlots({"policy": engine})
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    assert slots.acquire("policy", 1, model.named_parameters) is engine and slots.handoffs == 1
    assert torch.equal(next(engine.model.parameters()), next(model.parameters()))

    model, broken = copies(tiny, Skipping)
    slots = EngineSlots({"momentum": broken})
    slots.acquire("momentum", 0, model.named_parameters)  # the same weights: nothing is stale yet
    with torch.no_grad():
        model.model.norm.weight.mul_(1.5)
    with pytest.raises(StaleWeightsError, match=r"version 1 of the momentum weights on 1 rank.*1 of the \d+ tensors.*model\.norm\.weight"):
        slots.acquire("momentum", 1, model.named_parameters)


def test_every_rank_stops_when_any_engine_is_stale(tiny):
    model, engine = copies(tiny)
    slots = EngineSlots({"policy": engine}, agree=lambda bad: bad + 1)  # another rank reports a stale engine
    with pytest.raises(StaleWeightsError, match="on 1 rank.*this rank's engine matched"):
        slots.acquire("policy", 1, model.named_parameters)


def test_sleep_discards_weights_and_waking_frames_the_reload(tiny):
    model, engine = copies(tiny, Sleepy)
    engine.calls = []
    slots = EngineSlots({"policy": engine, "momentum": engine})
    slots.acquire("policy", 0, model.named_parameters)
    slots.sleep_all()
    slots.sleep_all()  # already asleep: once
    slots.acquire("policy", 0, model.named_parameters)  # same version, but level 2 dropped the weights
    assert engine.calls == ["load", ("sleep", 2), ("wake_up", ("weights",)), "load", ("wake_up", ("kv_cache",))]


def test_vllm_engine_config_rules():
    validate(compose_config(["experiment=paper", "resources=h200x8"]))
    separate = ["rollout.engine=vllm", "rollout.engine_weights=separate"]
    with pytest.raises(ConfigError, match=r"rollout\.engine_weights='separate'.*one \(vLLM issue 18975\).*engine_weights=shared.*vllm_sleep_mode=false"):
        validate(compose_config(separate))
    validate(compose_config([*separate, "rollout.vllm_sleep_mode=false"]))
    validate(compose_config(["rollout.engine_weights=separate"]))  # the HF engine has no sleep mode
    with pytest.raises(ConfigError, match=r"rollout\.max_logprob_drift=0\.1: this setting was removed.*algo\.tis_cap"):
        validate(compose_config(["rollout.max_logprob_drift=0.1"]))
