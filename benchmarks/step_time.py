"""Per-phase time of a training step, M-GRPO vs SRT at equal G, and rollout overhead.

    python benchmarks/step_time.py [--steps 20] [--warmup 3] [overrides ...]

Prints, from one run on this machine (ratios, not absolute times, are the point):
- each phase's share of a step; target: the M-GRPO-specific phases (entropy = scoring the
  momentum samples, filter, vote, ema) take <= 10% of an M-GRPO step;
- the M-GRPO / SRT step-time ratio at equal pooled G;
- HF engine generation vs a bare `model.generate` on the same batch; target <= 1.5x.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mgrpo.metric_names import phase_time
from mgrpo.rollout import encode_prompts, sample_seed
from mgrpo.tracking import Tracker
from mgrpo.train import compose_config
from mgrpo.trainer import Trainer

PHASES = ("rollout", "score", "entropy", "filter", "vote", "advantages", "update", "ema")
MGRPO_SPECIFIC = ("entropy", "filter", "vote", "ema")


def phase_times(algo: str, steps: int, warmup: int, overrides: list[str], workdir: Path) -> tuple[Trainer, dict[str, float]]:
    cfg = compose_config([f"algo={algo}", "trainer.progress=false", "tracking.enabled=false", *overrides])
    trainer = Trainer(cfg, workdir / algo, Tracker("", "", None, enabled=False))
    for step in range(1, warmup + 1):
        trainer.train_step(step)
    samples: dict[str, list[float]] = {p: [] for p in PHASES}
    totals = []
    for step in range(warmup + 1, warmup + steps + 1):
        start = time.perf_counter()
        metrics = trainer.train_step(step)
        totals.append(time.perf_counter() - start)
        for p in PHASES:
            samples[p].append(metrics[phase_time(p)])
    result = {p: statistics.median(v) for p, v in samples.items()}
    result["step"] = statistics.median(totals)
    return trainer, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        trainer, mgrpo = phase_times("mgrpo", args.steps, args.warmup, args.overrides, Path(tmp))
        _, srt = phase_times("srt", args.steps, args.warmup, args.overrides, Path(tmp))

        print(f"median over {args.steps} steps (after {args.warmup} warm-up), G={trainer.cfg.algo.num_rollouts}, "
              f"{trainer.cfg.trainer.prompts_per_step} prompts/step")
        print(f"{'phase':<12}{'M-GRPO s':>10}{'share':>8}{'SRT s':>10}{'share':>8}")
        for p in PHASES:
            print(f"{p:<12}{mgrpo[p]:>10.4f}{mgrpo[p] / mgrpo['step']:>8.1%}{srt[p]:>10.4f}{srt[p] / srt['step']:>8.1%}")
        print(f"{'step':<12}{mgrpo['step']:>10.4f}{'':>8}{srt['step']:>10.4f}")
        specific = sum(mgrpo[p] for p in MGRPO_SPECIFIC) / mgrpo["step"]
        print(f"M-GRPO-specific phases (momentum entropy+filter+vote+ema): {specific:.1%} of a step (target <= 10%)")
        print(f"M-GRPO / SRT step time at equal G: {mgrpo['step'] / srt['step']:.2f}x")

        prompts = [p.prompt for p in trainer.batch_problems(1)]
        n, r = trainer.num_policy, trainer.cfg.rollout
        engine_times, bare_times = [], []
        tokenizer, model = trainer.tokenizer, trainer.policy.lm
        encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        prompt_ids = encode_prompts(tokenizer, prompts, r.max_prompt_tokens)
        engine = trainer.engines.engines["policy"]
        for i in range(5):
            start = time.perf_counter()
            seeds = [sample_seed(0, i, "policy", j) for j in range(len(prompts))]
            engine.generate(prompt_ids, n, r.temperature, r.max_new_tokens, seeds)
            engine_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            with torch.no_grad():
                torch.manual_seed(i)
                model.generate(
                    input_ids=encoded["input_ids"].repeat_interleave(n, 0),
                    attention_mask=encoded["attention_mask"].repeat_interleave(n, 0),
                    do_sample=True, temperature=r.temperature, top_k=0, top_p=1.0,
                    max_new_tokens=r.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
            bare_times.append(time.perf_counter() - start)
        ratio = statistics.median(engine_times) / statistics.median(bare_times)
        print(f"HF engine / bare model.generate on the same batch: {ratio:.2f}x (target <= 1.5x)")


if __name__ == "__main__":
    main()
