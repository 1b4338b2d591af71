"""FSDP2 wrapping, mixed precision, and full-tensor access, in one place apart from the loop.

Precision: every trainable weight (the policy's master copy) and its AdamW state are float32;
`model.dtype` is only the *compute* dtype. On several ranks FSDP2's
`MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=float32)` casts the gathered weights for
the forward and reduces gradients in float32; on one rank `compute_context` autocasts instead.
The momentum is float32 too (sharded like the policy, so the EMA is shard-local); the frozen
reference is stored in the compute dtype and may be offloaded to CPU.

Sharding: `fully_shard` on each decoder layer, then on the `ResponseScorer` root, which keeps the
embeddings, the final norm and the LM head (tied or not) in one unit. Gradients are *summed*
over ranks (divide factor 1): the loss is already normalised by the global token count, so a
W-rank step equals a 1-rank step on the same samples.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Callable, Iterator, Optional

import torch

from mgrpo.models.scorer import ResponseScorer
from mgrpo.parallel import Ranks


def decoder_layers(lm: torch.nn.Module) -> torch.nn.ModuleList:
    """The transformer blocks of a Hugging Face causal LM (`base_model.layers`)."""
    layers = getattr(lm.base_model, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ValueError(
            f"{type(lm).__name__} has no `base_model.layers` list of decoder blocks to shard; "
            "multi-rank training supports Qwen/Llama-style Hugging Face models"
        )
    return layers


def shard(scorer: ResponseScorer, ranks: Ranks, param_dtype: Optional[torch.dtype], cpu_offload: bool = False) -> ResponseScorer:
    """Shard `scorer` over the ranks in place (no-op on one rank) and return it.

    Args:
        param_dtype: dtype the gathered weights are cast to for compute; None keeps them as stored.
        cpu_offload: keep the shards (and their gradients and optimizer state) in CPU memory.
    """
    if not ranks.distributed:
        return scorer
    from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    kwargs = {
        "mp_policy": MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32),
        "offload_policy": CPUOffloadPolicy() if cpu_offload else OffloadPolicy(),
    }
    for layer in decoder_layers(scorer.lm):
        fully_shard(layer, **kwargs)
    fully_shard(scorer, **kwargs)
    for module in scorer.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)  # plain SUM: gloo has no PREMUL_SUM
    return scorer


def reshard(scorer: torch.nn.Module) -> None:
    """Free the gathered root weights that a forward without backward leaves behind, so every
    parameter is a local shard again (the EMA and checkpoints read shards)."""
    reshard_fn = getattr(scorer, "reshard", None)
    if callable(reshard_fn):
        reshard_fn()


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor, or the tensor itself."""
    to_local = getattr(tensor, "to_local", None)
    return to_local() if callable(to_local) else tensor


def full_parameters(scorer: ResponseScorer, dtype: Optional[torch.dtype] = None) -> Iterator[tuple[str, torch.Tensor]]:
    """(Hugging Face name, full tensor) of each parameter, gathered one at a time.

    Every rank must consume the iterator to the end, in step: each DTensor's gather is a
    collective. Only one full parameter exists at a time, never the whole model.
    """
    reshard(scorer)
    for name, param in scorer.lm.named_parameters():
        full_tensor = getattr(param, "full_tensor", None)
        tensor = full_tensor() if callable(full_tensor) else param
        yield name, tensor.detach().to(dtype or tensor.dtype)


def compute_context(ranks: Ranks, dtype: torch.dtype) -> Callable[[], AbstractContextManager]:
    """A factory of the context every forward pass runs in: bf16 autocast over float32 weights
    on one rank; nothing on several ranks, where FSDP's mixed precision casts the weights."""
    if ranks.distributed or dtype == torch.float32:
        return nullcontext
    return lambda: torch.autocast(ranks.device.type, dtype=dtype)
