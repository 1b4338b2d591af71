"""Weight hand-off: which weights each rank's engines hold, and pushing new ones before sampling.

The trainer names a *role* (policy or momentum) and the version of that role's weights it wants
to sample from (bumped by every optimizer step, and by every EMA step). `EngineSlots.acquire`
hands the engine over, after loading that role's weights into it if it holds anything else:
after every optimizer step and every EMA step, before any generate, training and evaluation
alike. Engines that share the trainer's model object need nothing. With one engine for both
roles (`rollout.engine_weights=shared`) the weights are swapped between the two generate calls.

Under FSDP the weights are gathered one parameter at a time while the engine consumes them
(`mgrpo.sharding.full_parameters`); every rank acquires in the same order, so the gathers match.
On GPUs, engines that support it sleep during the update (`sleep_all`) and wake up on acquire.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch

from mgrpo.rollout.base import RolloutEngine



class StaleWeightsError(RuntimeError):
    """An engine sampled with weights other than the trainer's (the stale-weight guard)."""


WeightSource = Callable[[], Iterable[tuple[str, torch.Tensor]]]


class EngineSlots:
    """The engine of each role on this rank and the (role, version) of the weights it holds."""

    def __init__(self, engines: dict[str, RolloutEngine]) -> None:
        self.engines = engines
        self._holds: dict[int, tuple[str, int]] = {}
        self._asleep: set[int] = set()
        self.handoffs = 0

    def acquire(self, role: str, version: int, weights: WeightSource) -> RolloutEngine:
        """The engine for `role`, holding version `version` of its weights."""
        engine = self.engines[role]
        key = id(engine)
        if key in self._asleep:
            engine.wake_up()
            self._asleep.discard(key)
        if not engine.shares_weights and self._holds.get(key) != (role, version):
            engine.load_weights(weights())
            self._holds[key] = (role, version)
            self.handoffs += 1
        return engine

    def sleep_all(self) -> None:
        """Let engines that can free their memory (vLLM sleep mode on GPUs) do so until the next
        acquire; their weights are reloaded then, since the update changes them anyway."""
        for engine in {id(e): e for e in self.engines.values()}.values():
            sleep = getattr(engine, "sleep", None)
            if callable(sleep) and id(engine) not in self._asleep:
                sleep()
                self._asleep.add(id(engine))
                self._holds.pop(id(engine), None)

    def close(self) -> None:
        for engine in {id(e): e for e in self.engines.values()}.values():
            close = getattr(engine, "close", None)
            if callable(close):
                close()
