"""Fixtures shared across test modules."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`--dist loadgroup`, the default in pyproject.toml) the tests that share
    the one local SLURM cluster go to one worker: side by side they queue each other's jobs past
    their time limits."""
    for item in items:
        if item.get_closest_marker("slurm"):
            item.add_marker(pytest.mark.xdist_group("slurm"))


def pytest_configure(config):
    """xdist 3.8 groups tests by a suffix it writes to `item._nodeid`; from pytest 9.2 a node id is
    read from `_id`, so the groups would be ignored silently and the SLURM tests spread over
    workers. Refuse to run that way (the test extra pins pytest < 9.2)."""
    if config.getoption("dist", "no") != "loadgroup" or not config.getoption("numprocesses", None):
        return
    if _version(pytest.__version__) >= (9, 2) and _version(importlib.metadata.version("pytest-xdist")) <= (3, 8):
        raise pytest.UsageError(
            f"pytest {pytest.__version__} with pytest-xdist "
            f"{importlib.metadata.version('pytest-xdist')} ignores `--dist loadgroup`: install the "
            "test extra's pins (`pip install -e '.[test]'`) or run serially with `-n 0`"
        )


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:2])


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
