"""Weight hand-off: which weights each rank's engines hold, pushing new ones before sampling,
and confirming that the engine holds what was pushed.

The trainer names a *role* (policy or momentum) and the version of that role's weights it wants
to sample from (bumped by every optimizer step, and by every EMA step). `EngineSlots.acquire`
hands the engine over, after loading that role's weights into it if it holds anything else:
after every optimizer step and every EMA step, before any generate, training and evaluation
alike. Engines that share the trainer's model object need nothing. With one engine for both
roles (`rollout.engine_weights=shared`) the weights are swapped between the two generate calls.

Under FSDP the weights are gathered one parameter at a time while the engine consumes them
(`mgrpo.sharding.full_parameters`); every rank acquires in the same order, so the gathers match.
On GPUs, engines that support it sleep during the update (`sleep_all`, level 2: the weights are
discarded, since the next acquire reloads them anyway) and wake up on acquire, the weights'
memory before the load and the KV cache after it.

Stale weights are caught by what they are, not by how far the samples' log-probs are from the
trainer's (that gap is logged, `train/rollout_logprob_drift`, never a reason to stop: engines in
bf16 on other kernels differ from the trainer by design). Each hand-off fingerprints the tensors
it streams (`tensor_checksum`, in the engine's dtype) and then asks the engine for the same
fingerprints of its own copies (`RolloutEngine.weight_checksums`); any difference, on any rank,
stops the run on every rank with `StaleWeightsError`. Which tensors an engine can read back is
its own business (`RolloutEngine.checked_weights`): the HF engine all of them; vLLM those it keeps
in checkpoint layout (see `mgrpo.rollout.vllm`).
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Optional

import torch

from mgrpo.rollout.base import RolloutEngine

CHECKSUM_MODULUS = 2**31 - 1
"""A prime: every partial sum stays far inside int64, so the fingerprint is exact integer math."""
_CHECKSUM_CHUNK = 1 << 22
"""Elements fingerprinted at once (a 32 MiB int64 temporary, whatever the tensor's size)."""
_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_MASKS = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF}


class StaleWeightsError(RuntimeError):
    """An engine holds weights other than the ones it was handed (the stale-weight check)."""


WeightSource = Callable[[], Iterable[tuple[str, torch.Tensor]]]


@torch.no_grad()
def tensor_checksum(tensor: torch.Tensor) -> int:
    """A fingerprint of a tensor's exact bits in their element order: the sum over
    elements of (bits mod p) * (position mod p + 1) mod p, p = `CHECKSUM_MODULUS`, in int64 on the
    tensor's own device. Integer arithmetic, so the same bits give the same number on any device
    and in any reduction order; one flipped bit changes it. Not a cryptographic hash: it tells a
    stale copy from a fresh one."""
    flat = tensor.detach().contiguous().reshape(-1)
    size = flat.element_size()
    bits = flat.view(_BITS[size])
    total = 0
    for start in range(0, bits.numel(), _CHECKSUM_CHUNK):
        chunk = bits[start : start + _CHECKSUM_CHUNK].to(torch.int64)
        if size in _MASKS:
            chunk = chunk & _MASKS[size]  # the unsigned bit pattern
        chunk = chunk % CHECKSUM_MODULUS
        weights = torch.arange(start, start + chunk.numel(), device=chunk.device, dtype=torch.int64) % CHECKSUM_MODULUS + 1
        total = (total + int(((chunk * weights) % CHECKSUM_MODULUS).sum())) % CHECKSUM_MODULUS
    return total


class HandoffRecord:
    """Fingerprints of the tensors a hand-off streams, taken as the engine consumes them: only of
    the names the engine can read back (`checked`: name -> the dtype its copy is kept in)."""

    def __init__(self, checked: dict[str, torch.dtype]) -> None:
        self.checked = checked
        self.checksums: dict[str, int] = {}

    def watch(self, weights: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in weights:
            dtype = self.checked.get(name)
            if dtype is not None:
                self.checksums[name] = tensor_checksum(tensor.detach().to(dtype))
            yield name, tensor


class EngineSlots:
    """The engine of each role on this rank and the (role, version) of the weights it holds."""

    def __init__(self, engines: dict[str, RolloutEngine], agree: Optional[Callable[[int], int]] = None) -> None:
        """
        Args:
            engines: role -> this rank's engine (one object for both roles when shared).
            agree: sums a count over all ranks (None on one rank), so that a stale engine on
                any rank stops every rank alike.
        """
        self.engines = engines
        self.agree = agree or (lambda count: count)
        self._holds: dict[int, tuple[str, int]] = {}
        self._asleep: set[int] = set()
        self.handoffs = 0

    def acquire(self, role: str, version: int, weights: WeightSource) -> RolloutEngine:
        """The engine for `role`, holding version `version` of its weights, checked.

        Raises:
            StaleWeightsError: on every rank, when an engine on any rank does not hold what it
                was handed.
        """
        engine = self.engines[role]
        key = id(engine)
        asleep = key in self._asleep
        if asleep:
            engine.wake_up(tags=("weights",))
        if not engine.shares_weights and self._holds.get(key) != (role, version):
            record = HandoffRecord(engine.checked_weights)
            engine.load_weights(record.watch(weights()))
            self._confirm(engine, role, version, record)
            self._holds[key] = (role, version)
            self.handoffs += 1
        if asleep:
            engine.wake_up(tags=("kv_cache",))
            self._asleep.discard(key)
        return engine

    def _confirm(self, engine: RolloutEngine, role: str, version: int, record: HandoffRecord) -> None:
        held = engine.weight_checksums(sorted(record.checksums))
        differ = sorted(name for name, checksum in record.checksums.items() if held.get(name) != checksum)
        unchecked = not record.checksums
        bad_ranks = self.agree(int(bool(differ) or unchecked))
        if bad_ranks:
            here = (
                f"here, {len(differ)} of the {len(record.checksums)} tensors it can read back differ from what was "
                f"handed (e.g. {', '.join(differ[:3])})" if differ else
                "here, the hand-off streamed none of the tensors the engine can read back" if unchecked else
                "this rank's engine matched"
            )
            raise StaleWeightsError(
                f"the rollout engine does not hold version {version} of the {role} weights on {bad_ranks} rank(s); {here}. "
                "The weight hand-off did not reach the engine (a failed or skipped load), so its samples would come from "
                "other weights; nothing was sampled from it. Rerunning resumes from the last checkpoint; if it recurs, "
                "report the vLLM version and rollout.engine / rollout.engine_weights."
            )

    def sleep_all(self) -> None:
        """Let engines that can free their memory (vLLM sleep mode on GPUs) do so until the next
        acquire, at level 2: their weights are discarded, not kept, since the next acquire reloads
        them anyway (the update changes them)."""
        for engine in {id(e): e for e in self.engines.values()}.values():
            sleep = getattr(engine, "sleep", None)
            if callable(sleep) and id(engine) not in self._asleep:
                sleep(level=2)
                self._asleep.add(id(engine))
                self._holds.pop(id(engine), None)

    def close(self) -> None:
        for engine in {id(e): e for e in self.engines.values()}.values():
            close = getattr(engine, "close", None)
            if callable(close):
                close()
