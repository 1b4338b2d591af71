"""MATH data with a real tokenizer: the default prompt, the chat template, over-long prompts dropped
and counted, and local Parquet copies (and downloaded dataset directories) read with no network."""

from __future__ import annotations

import importlib.util
import json
import socket
from pathlib import Path

import pytest
import torch

from mgrpo.config import DataConfig, TinyBPEModelConfig
from mgrpo.models.bpe import ensure_tiny_bpe_model
from mgrpo.models.loading import load_tokenizer
from mgrpo.tasks import DataError, load_task, prepare_task
from mgrpo.tasks.benchmarks import load_benchmark
from mgrpo.tasks.prompts import MATH_PROMPT, prompt_lengths, render_benchmark_prompts, render_prompt

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory, shared_data_dir):
    path = ensure_tiny_bpe_model(
        TinyBPEModelConfig(corpus_path=str(shared_data_dir / "math4500.jsonl"), cache_dir=str(tmp_path_factory.mktemp("bpe"))), DataConfig()
    )
    return load_tokenizer(str(path))


def math_cfg(shared_data_dir: Path, **kw) -> DataConfig:
    return DataConfig(task="jsonl", train_path=str(shared_data_dir / "math4500.jsonl"), heldout_size=50, **kw)


def test_default_prompt_asks_for_steps_and_a_boxed_answer(shared_data_dir):
    assert DataConfig().resolved_prompt_template() == "{problem}", "the synthetic task keeps its bare prompt"
    for task in ("jsonl", "parquet", "hf"):
        assert DataConfig(task=task).resolved_prompt_template() == MATH_PROMPT
    assert "step by step" in MATH_PROMPT and "\\boxed{}" in MATH_PROMPT
    data = load_task(math_cfg(shared_data_dir))
    first = next(p for p in data.train if p.uid == "math4500.jsonl:1")
    assert first.prompt == MATH_PROMPT.replace("{problem}", "How many vertical asymptotes does the graph of $y=\\frac{2}{x^2+x-6}$ have?")
    assert first.answer == "2", "gold from the last \\boxed{} of the solution"


def test_chat_template_is_applied_and_long_prompts_dropped_and_counted(shared_data_dir, tokenizer):
    raw = load_task(math_cfg(shared_data_dir))
    limit = 128
    prepared = prepare_task(raw, tokenizer, chat_template=True, max_prompt_tokens=limit)
    rendered = {p.uid: render_prompt(tokenizer, p.prompt) for p in raw.train + raw.heldout}
    lengths = dict(zip(rendered, prompt_lengths(tokenizer, list(rendered.values()))))
    long_train = sum(lengths[p.uid] > limit for p in raw.train)
    long_selection = sum(lengths[p.uid] > limit for p in raw.heldout)
    assert 0 < long_train < len(raw.train), "the limit bites on part of MATH"
    assert (prepared.dropped_train, prepared.dropped_selection) == (long_train, long_selection)
    assert len(prepared.data.train) == len(raw.train) - long_train
    assert prepared.summary() == {
        "train_prompts": len(raw.train) - long_train,
        "dropped_train_prompts": long_train,
        "selection_prompts": len(raw.heldout) - long_selection,
        "dropped_selection_prompts": long_selection,
    }
    for p in prepared.data.train + prepared.data.heldout:
        assert p.prompt.startswith("<|im_start|>user\n") and p.prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")
        assert "Let's think step by step" in p.prompt
        assert len(tokenizer(p.prompt, add_special_tokens=False)["input_ids"]) <= limit, "nothing is cut: what is kept fits"
    kept = {p.uid for p in prepared.data.train}
    assert [p.uid for p in raw.train if p.uid in kept] == [p.uid for p in prepared.data.train], "order kept"
    by_uid = {p.uid: p for p in raw.train}
    assert all(p.answer == by_uid[p.uid].answer for p in prepared.data.train), "gold answers untouched"


def test_prompt_lengths_count_what_the_engines_encode(shared_data_dir, tokenizer):
    """The length check's fast path (the backend's batch encoder) counts exactly the ids that
    `encode_prompts` gives the engines, on chat-templated MATH prompts (BPE) and arithmetic ones,
    and is still taken after a padded, truncated call."""
    from mgrpo.models.tiny import build_tiny_tokenizer
    from mgrpo.rollout import encode_prompts

    raw = load_task(math_cfg(shared_data_dir))
    math_prompts = [render_prompt(tokenizer, p.prompt) for p in raw.train[:300]]
    arithmetic = [p.prompt for p in load_task(DataConfig(heldout_size=50)).heldout]
    for tok, prompts in ((tokenizer, math_prompts), (build_tiny_tokenizer(), arithmetic)):
        assert tok.is_fast
        expected = [len(ids) for ids in encode_prompts(tok, prompts, 10**6)]
        assert prompt_lengths(tok, prompts) == expected
        tok(prompts[:4], padding=True, truncation=True, max_length=8)  # leaves both set on the backend
        assert prompt_lengths(tok, prompts) == expected, "a padded call before must not change the counts"
        backend = tok.backend_tokenizer
        assert backend.padding is None and backend.truncation is None, "the first prompt's plain call resets them, so the backend counts"


def test_chat_template_can_be_turned_off(shared_data_dir, tokenizer):
    raw = load_task(math_cfg(shared_data_dir, max_train_problems=20))
    plain = prepare_task(raw, tokenizer, chat_template=False, max_prompt_tokens=4096)
    assert [p.prompt for p in plain.data.train] == [p.prompt for p in raw.train]
    assert plain.dropped_train == 0


def test_no_prompt_fitting_is_an_error_naming_the_setting(shared_data_dir, tokenizer):
    raw = load_task(math_cfg(shared_data_dir, max_train_problems=20))
    with pytest.raises(DataError, match=r"all 20 training prompts are longer than rollout.max_prompt_tokens=8"):
        prepare_task(raw, tokenizer, chat_template=True, max_prompt_tokens=8)


def test_benchmark_prompts_are_never_dropped(shared_data_dir, tokenizer):
    bench = load_benchmark("aime25", DataConfig(benchmarks_dir=str(shared_data_dir)))
    with pytest.raises(DataError, match=r"benchmark aime25: \d+ of 30 prompts are longer than rollout.max_prompt_tokens=200.*raise"):
        render_benchmark_prompts("aime25", bench.problems, tokenizer, True, 200)
    fitted = render_benchmark_prompts("aime25", bench.problems, tokenizer, True, 4096)
    assert len(fitted) == 30 and fitted[0].prompt.startswith("<|im_start|>user\n")


# ---- local Parquet copies, offline -----------------------------------------------------------------


@pytest.fixture
def offline(monkeypatch):
    """No network: the hub's offline switches, and any socket connection fails."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise OSError("network access in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def records(shared_data_dir: Path, count: int) -> list[dict]:
    with (shared_data_dir / "math4500.jsonl").open() as f:
        return [json.loads(next(f)) for _ in range(count)]


def test_parquet_copy_loads_like_the_jsonl_with_no_network(shared_data_dir, tmp_path, offline):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = records(shared_data_dir, 30)
    (tmp_path / "math.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "math.parquet")
    from_jsonl = load_task(DataConfig(task="jsonl", train_path=str(tmp_path / "math.jsonl"), heldout_size=5))
    from_parquet = load_task(DataConfig(task="parquet", train_path=str(tmp_path / "math.parquet"), heldout_size=5))
    strip = lambda ps: [(p.uid.split(":")[1], p.prompt, p.answer) for p in ps]  # noqa: E731
    assert strip(from_parquet.train) == strip(from_jsonl.train) and strip(from_parquet.heldout) == strip(from_jsonl.heldout)
    shards = tmp_path / "shards"
    shards.mkdir()
    pq.write_table(pa.Table.from_pylist(rows[:10]), shards / "part-0.parquet")
    pq.write_table(pa.Table.from_pylist(rows[10:]), shards / "part-1.parquet")
    from_dir = load_task(DataConfig(task="parquet", train_path=str(shards), heldout_size=5))
    assert strip(from_dir.train) == strip(from_parquet.train), "a directory of shards, in name order"


def test_downloaded_dataset_directory_loads_with_hf_offline(shared_data_dir, tmp_path, offline):
    """`hf download --repo-type dataset <name> --local-dir D` leaves D/data/<split>-*.parquet;
    data.task=hf data.train_path=D reads it through `datasets` without the hub."""
    pytest.importorskip("datasets")
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = records(shared_data_dir, 40)
    snapshot = tmp_path / "MATH-lighteval"
    (snapshot / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows[:30]), snapshot / "data" / "train-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(rows[30:]), snapshot / "data" / "test-00000-of-00001.parquet")
    cfg = DataConfig(task="hf", train_path=str(snapshot), split="train", eval_path=str(snapshot), eval_split="test", heldout_size=100)
    data = load_task(cfg)
    assert len(data.train) == 30 and len(data.heldout) == 10
    assert data.train[0].answer == "2" and data.train[0].prompt.startswith("How many vertical asymptotes")
    assert data.heldout[0].prompt.startswith(rows[30]["problem"])


def test_save_to_disk_directory_loads_offline(shared_data_dir, tmp_path, offline):
    datasets = pytest.importorskip("datasets")
    rows = records(shared_data_dir, 12)
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "saved"))
    data = load_task(DataConfig(task="hf", train_path=str(tmp_path / "saved"), heldout_size=2))
    assert len(data.train) == 10 and len(data.heldout) == 2


def test_offline_hub_name_failure_says_how_to_predownload(tmp_path, offline, monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_home" / "datasets"))
    with pytest.raises(DataError, match=r"hf download --repo-type dataset .* set data.train_path=<dir>"):
        load_task(DataConfig(task="hf", train_path="some-org/not-cached-anywhere"))


def test_paper_preset_needs_no_extra_install():
    """`pip install -e .` brings what `experiment=paper` needs: datasets and pyarrow are dependencies."""
    import tomllib

    deps = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {d.split(">")[0].split("=")[0].split("<")[0].strip() for d in deps}
    assert {"datasets", "pyarrow", "tokenizers"} <= names
    assert all(importlib.util.find_spec(name) for name in ("datasets", "pyarrow")), "installed with the package"


def test_downloaded_benchmark_directories_load_offline(shared_data_dir, tmp_path, offline):
    """Benchmarks from `hf download --repo-type dataset` copies: MATH-500's (test.jsonl at the
    top) and AIME 2024's (data/train-*.parquet), each at its hub split."""
    pytest.importorskip("datasets")
    import pyarrow as pa
    import pyarrow.parquet as pq

    math500 = tmp_path / "MATH-500"
    math500.mkdir()
    lines = (shared_data_dir / "math500.jsonl").read_text().splitlines()[:5]
    (math500 / "test.jsonl").write_text("\n".join(lines) + "\n")
    aime = tmp_path / "aime_2024"
    (aime / "data").mkdir(parents=True)
    rows = [json.loads(line) for line in (shared_data_dir / "aime24.jsonl").read_text().splitlines()[:4]]
    pq.write_table(pa.Table.from_pylist(rows), aime / "data" / "train-00000-of-00001.parquet")
    data = DataConfig(benchmark_paths={"math500": str(math500), "aime24": str(aime)})
    loaded = load_benchmark("math500", data)
    assert loaded.size == 5 and loaded.problems[0].answer == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert load_benchmark("aime24", data).problems[0].answer == str(rows[0]["answer"])
