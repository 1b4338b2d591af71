"""Fixtures shared across test modules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`-n 2 --dist loadgroup`, not the default), tests that share the one
    local SLURM cluster are meant to go to one worker: side by side they queue each other's jobs
    past their time limits. Measured: with xdist 3.8 they were still spread over two workers, so
    CI runs the suite in one process (see README)."""
    for item in items:
        if item.get_closest_marker("slurm"):
            item.add_marker(pytest.mark.xdist_group("slurm"))


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


@pytest.fixture(scope="module")
def equiv():
    """One grader per test module (its worker process starts once)."""
    from mgrpo.algos.grader import AnswerEquivalence

    eq = AnswerEquivalence(timeout=5.0)
    yield eq
    eq.close()


@pytest.fixture(scope="session")
def math500_golds() -> list[str]:
    """The gold answers of MATH-500 (../shared/data/math500.jsonl)."""
    path = SHARED_DATA / "math500.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} is not available")
    with path.open() as f:
        return [json.loads(line)["answer"] for line in f]
