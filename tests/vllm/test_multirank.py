"""Two torch.distributed ranks (gloo), each with its own colocated engines (external_launcher).

What the trainer relies on: each rank samples its own prompts, independently (no lock-step), the
hand-off works per rank, and a prompt's samples are the same on any rank as on one process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mgrpo.rollout.base import encode_prompts
from mgrpo.rollout.vllm import VLLMRolloutEngine
from tests.vllm import multirank_worker as worker
from tests.vllm.helpers import perturb, response_tokens

pytestmark = pytest.mark.vllm
REPO = Path(__file__).resolve().parents[2]


def test_two_ranks_each_with_an_engine(tmp_path, checkpoint, engine: VLLMRolloutEngine, synced_hf, tokenizer) -> None:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "tests.vllm.multirank_worker", str(checkpoint), str(tmp_path),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in results] == [2, 2]
    # Closing the engines tore down torch.distributed cleanly: nothing left for exit to trip on.
    assert not any(r["initialized_after_close"] for r in results)
    assert "Traceback" not in done.stderr + done.stdout

    # The same prompts and seeds on this process's engine, with the same weights.
    perturb(synced_hf, seed=worker.WEIGHT_SEED)
    engine.load_weights(synced_hf.named_parameters())
    prompts = encode_prompts(tokenizer, worker.PROMPTS, max_prompt_tokens=64)
    single = engine.generate(prompts, worker.N, worker.TEMPERATURE, worker.MAX_NEW_TOKENS, worker.SEEDS)
    for result in results:
        assert result["drift"] <= 1e-4
        rows = [i * worker.N + j for i in result["share"] for j in range(worker.N)]
        expected = response_tokens(single, rows)
        assert result["responses"] == expected
