"""Fixtures shared across test modules."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The benchmark JSONL files (../shared/data from the repo root); never copied into the repo."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared benchmark data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    """A cache directory for tiny base models shared by the session's trainer tests: the first
    test builds the default base model (about a minute of CPU), the rest reuse it."""
    return tmp_path_factory.mktemp("tiny_cache")


@pytest.fixture(scope="module")
def tiny():
    """An untrained tiny model (seeded weights) and its tokenizer, for tests of scoring and sampling."""
    import torch

    from mgrpo.config import TinyModelConfig
    from mgrpo.models.tiny import build_tiny_model, build_tiny_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tiny_tokenizer()
    return build_tiny_model(TinyModelConfig(), tokenizer), tokenizer
