"""Our step time vs TRL's GRPOTrainer on the same work: same tiny model, prompts, G, lengths, KL.

    python3 -m venv .venv-bench && .venv-bench/bin/pip install torch==2.13.0 \\
        && .venv-bench/bin/pip install -e '.[bench]'
    .venv-bench/bin/python benchmarks/vs_trl.py [--rounds 5] [--steps 20]

The work of one step, on both sides: 16 arithmetic prompts (the same ones, in the same order),
G = 8 samples each at temperature 0.7 with no top-k/top-p, up to 32 new tokens with natural EOS,
the SRT reward (1 when a sample's answer is its prompt's majority answer, by our vote), group-
normalised advantages, one on-policy AdamW step over all 128 samples in one micro-batch, and
KL to the frozen base model off (beta 0) or on (beta 0.005, k3). M-GRPO runs at G = 10 (8 policy
+ 2 momentum samples) against TRL at G = 8: the momentum's extra samples should cost no more
than the pass we removed.

Rounds alternate the two sides (ours, then TRL's), each starting from the base model, one thread,
so both see the same machine load and the same completion lengths; the first step of each round
is a warm-up and not timed. Prints, per configuration, each round's median step-time ratio,
the median over rounds, each side's mean completion length, and a phase breakdown: ours from the
trainer's `train/time/*` metrics; TRL's split into generation + scoring
(`_generate_and_score_completions`: sampling, rewards, reference and old log-probs) and the rest
of the step (forward, backward, optimizer). Targets (information, not asserted): SRT <= 0.8x TRL with KL off and on; M-GRPO at
G = 10 <= 1.0x TRL at G = 8.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mgrpo import metric_names as names
from mgrpo.algos.answers import extract_answer
from mgrpo.algos.grader import AnswerEquivalence
from mgrpo.algos.voting import majority_vote
from mgrpo.tracking import Tracker
from mgrpo.train import compose_config
from mgrpo.trainer import Trainer

PROMPTS_PER_STEP = 16
TEMPERATURE = 0.7
MAX_NEW_TOKENS = 32
LR = 1e-5


def ours(algo: str, kl: float, steps: int, workdir: Path) -> tuple[list[float], dict[str, float], float]:
    """Per-step seconds (steps 2..), median phase seconds, and mean completion length."""
    cfg = compose_config([
        f"algo={algo}", f"algo.num_rollouts={10 if algo == 'mgrpo' else 8}", f"algo.kl_coef={kl}",
        f"trainer.prompts_per_step={PROMPTS_PER_STEP}", f"rollout.temperature={TEMPERATURE}",
        f"rollout.max_new_tokens={MAX_NEW_TOKENS}", f"optim.lr={LR}", "optim.micro_batch_size=128",
        "trainer.progress=false", "tracking.enabled=false",
    ])
    trainer = Trainer(cfg, workdir, Tracker("", "", None, enabled=False))
    times, phases, lengths = [], {}, []
    for step in range(1, steps + 1):
        start = time.perf_counter()
        metrics = trainer.train_step(step)
        if step > 1:
            times.append(time.perf_counter() - start)
            lengths.append(metrics[names.RESPONSE_LENGTH])
            for key, value in metrics.items():
                if key.startswith(names.TIME + "/"):
                    phases.setdefault(key.removeprefix(names.TIME + "/"), []).append(value)
    trainer.close()
    return times, {k: statistics.median(v) for k, v in phases.items()}, statistics.mean(lengths)


def trl(model_dir: str, prompts: list[str], kl: float, steps: int, workdir: Path) -> tuple[list[float], dict[str, float], float]:
    """The same for TRL's GRPOTrainer with the SRT reward."""
    from datasets import Dataset
    from transformers import AutoTokenizer, PrinterCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    equivalent = AnswerEquivalence()
    generations = 8

    def srt_reward(prompts, completions, **kwargs):
        answers = [extract_answer(c) for c in completions]
        groups = [i // generations for i in range(len(completions))]
        return [1.0 if agree else 0.0 for agree in majority_vote(answers, groups, equivalent).agrees]

    class StepTimes(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.start = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self.start)

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = GRPOConfig(
        output_dir=str(workdir / "trl"), num_generations=generations, per_device_train_batch_size=PROMPTS_PER_STEP * generations,
        gradient_accumulation_steps=1, max_completion_length=MAX_NEW_TOKENS, temperature=TEMPERATURE, top_k=0, top_p=1.0,
        beta=kl, learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, max_steps=steps, logging_steps=1,
        report_to=[], save_strategy="no", use_cpu=True, bf16=False, shuffle_dataset=False, seed=0,
        disable_tqdm=True, log_completions=False, dataloader_num_workers=0,
    )
    callback = StepTimes()
    trainer = GRPOTrainer(
        model=model_dir, reward_funcs=srt_reward, args=config, processing_class=tokenizer,
        train_dataset=Dataset.from_dict({"prompt": prompts}), callbacks=[callback],
    )
    trainer.remove_callback(PrinterCallback)  # its per-step log lines would bury the results; log_history keeps them
    generation = []
    original = trainer._generate_and_score_completions

    def timed_generation(*args, **kwargs):
        start = time.perf_counter()
        out = original(*args, **kwargs)
        generation.append(time.perf_counter() - start)
        return out

    trainer._generate_and_score_completions = timed_generation
    trainer.train()
    equivalent.close()
    lengths = [e["completions/mean_length"] for e in trainer.state.log_history if "completions/mean_length" in e]
    steps_t, gen_t = callback.times[1:], generation[1:]
    phases = {"generate+score": statistics.median(gen_t), "rest": statistics.median([s - g for s, g in zip(steps_t, gen_t)])}
    return steps_t, phases, statistics.mean(lengths[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="steps per side per round (the first is a warm-up)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    configs = [("SRT, KL off", "srt", 0.0), ("SRT, KL 0.005", "srt", 0.005), ("M-GRPO G=10 vs TRL G=8, KL off", "mgrpo", 0.0)]
    with tempfile.TemporaryDirectory() as tmp:
        probe = Trainer(compose_config(["tracking.enabled=false", f"trainer.prompts_per_step={PROMPTS_PER_STEP}"]), Path(tmp) / "probe", Tracker("", "", None, enabled=False))
        model_dir = probe.model_path
        prompts = [p.prompt for step in range(1, args.steps + 1) for p in probe.batch_problems(step)]
        probe.close()
        for title, algo, kl in configs:
            ratios, mine_phases, their_phases, mine_len, their_len = [], [], [], [], []
            for r in range(args.rounds):
                mine, phases_mine, length_mine = ours(algo, kl, args.steps, Path(tmp) / f"ours{r}")
                theirs, phases_theirs, length_theirs = trl(model_dir, prompts, kl, args.steps, Path(tmp) / f"trl{r}")
                ratios.append(statistics.median(mine) / statistics.median(theirs))
                mine_phases.append(phases_mine)
                their_phases.append(phases_theirs)
                mine_len.append(length_mine)
                their_len.append(length_theirs)
                print(f"{title}: round {r + 1}: ours {statistics.median(mine):.3f} s, TRL {statistics.median(theirs):.3f} s, ratio {ratios[-1]:.2f}", flush=True)
            print(f"== {title}: median ratio ours/TRL {statistics.median(ratios):.2f} over {args.rounds} rounds; "
                  f"completion tokens ours {statistics.mean(mine_len):.1f}, TRL {statistics.mean(their_len):.1f}")
            for name, phases in (("ours", mine_phases), ("TRL", their_phases)):
                keys = sorted(phases[0])
                print(f"   {name:5s} " + ", ".join(f"{k} {statistics.median(p[k] for p in phases):.3f}" for k in keys))


if __name__ == "__main__":
    main()
