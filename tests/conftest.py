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
