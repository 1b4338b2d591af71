"""The trainer with rollout.engine=vllm in a process of its own (an in-process vLLM engine owns
torch.distributed state, so each trainer gets a fresh process):
`python -m tests.vllm.trainer_worker CHECK OUT.json OUTPUT_DIR OVERRIDES...`.

- stale: the hand-off is broken on purpose (after the first, loads are consumed and dropped, so
  the engine keeps its first weights); the run must stop with the stale-weight check's error;
- perturbed: the hand-off is correct but the sampler's numerics are not the trainer's (a
  bfloat16 engine under a float32 trainer, and every sampler log-prob shifted by
  LOGPROB_SHIFT, more than the 0.1 nats at which the old numeric guard stopped runs); the run
  must finish, logging the gap;
- eval-fresh: one training step, then an evaluation; its greedy answers must be the updated
  policy's (an HF greedy decode of the trainer's own weights), not the step-0 weights'.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

LOGPROB_SHIFT = 0.25
"""Nats added to every sampler log-prob in the perturbed check."""


def stale(output_dir: Path, overrides: list[str]) -> dict:
    from mgrpo.rollout.handoff import StaleWeightsError
    from mgrpo.rollout.vllm import VLLMRolloutEngine
    from tests.trainer_helpers import train

    original = VLLMRolloutEngine.load_weights
    loads = {"count": 0}

    def first_load_only(self, weights):
        loads["count"] += 1
        if loads["count"] == 1:
            return original(self, weights)
        for _ in weights:  # consume the stream as a real hand-off would, then drop it
            pass

    VLLMRolloutEngine.load_weights = first_load_only
    try:
        train(overrides, output_dir)
    except StaleWeightsError as err:
        return {"error": str(err), "loads": loads["count"]}
    return {"error": None, "loads": loads["count"]}


def perturbed(output_dir: Path, overrides: list[str]) -> dict:
    from mgrpo.rollout.vllm import VLLMRolloutEngine
    from tests.trainer_helpers import train

    build, generate = VLLMRolloutEngine.__init__, VLLMRolloutEngine.generate
    dtypes = []

    def bfloat16_engine(self, *args, **kwargs):
        build(self, *args, **{**kwargs, "dtype": torch.bfloat16})
        dtypes.append(str(self.dtype))

    def shifted(self, *args, **kwargs):
        rollouts = generate(self, *args, **kwargs)
        if rollouts.sampler_logprobs is not None:
            rollouts.sampler_logprobs = torch.where(rollouts.response_mask, rollouts.sampler_logprobs + LOGPROB_SHIFT, 0.0)
        return rollouts

    VLLMRolloutEngine.__init__, VLLMRolloutEngine.generate = bfloat16_engine, shifted
    train(overrides, output_dir)
    return {"engine_dtypes": dtypes}


def eval_fresh(output_dir: Path, overrides: list[str]) -> dict:
    from mgrpo.rollout import encode_prompts
    from mgrpo.rollout.hf import HFRolloutEngine
    from mgrpo.tracking import Tracker
    from mgrpo.train import compose_config
    from mgrpo.trainer import Trainer

    cfg = compose_config(overrides)
    trainer = Trainer(cfg, output_dir, Tracker("", "", None, enabled=False))
    try:
        heldout = trainer.data.heldout[: cfg.trainer.log_completions]
        prompts = encode_prompts(trainer.tokenizer, [p.prompt for p in heldout], cfg.rollout.max_prompt_tokens)

        def hf_greedy() -> list[str]:
            engine = HFRolloutEngine(trainer.policy.lm, trainer.tokenizer)
            return list(engine.generate(prompts, 1, 0.0, cfg.rollout.max_new_tokens, [0] * len(prompts)).texts)

        before = hf_greedy()
        trainer.evaluate(0)
        trainer.train_step(1)
        trainer.evaluate(1)
        read = lambda step: [c["response"] for c in json.loads((output_dir / "completions" / f"step_{step:06d}.json").read_text())]
        return {"engine_before": read(0), "hf_before": before, "engine_after": read(1), "hf_after": hf_greedy()}
    finally:
        trainer.close()


def main() -> None:
    check, out, output_dir, overrides = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:]
    torch.set_num_threads(1)
    result = {"stale": stale, "perturbed": perturbed, "eval-fresh": eval_fresh}[check](output_dir, overrides)
    out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
