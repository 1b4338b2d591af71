"""`mgrpo-eval`: evaluate a checkpoint on benchmarks, with the code training's evaluation runs.

    mgrpo-eval outputs/paper/algo=mgrpo                       # a run: its latest checkpoint's policy
    mgrpo-eval outputs/.../checkpoints/step_000100            # one checkpoint of a run
    mgrpo-eval /models/Qwen3-4B-Base --benchmarks math500,aime24 \\
        rollout.eval_temperature=0.8 rollout.max_new_tokens=3072 rollout.engine=vllm
    mgrpo-eval RUN_DIR --tracking-uri sqlite:///mlflow.db      # also into the run's MLflow run

What is evaluated: any Hugging Face checkpoint directory (or hub name), a checkpoint of a run
(`<output_dir>/checkpoints/step_NNNNNN`), an export of one (`<output_dir>/exports/step_NNNNNN`),
or a run's output directory (its latest complete checkpoint). A run's checkpoint is evaluated
through its export; one without (`trainer.export_every` did not ask for that step) has its DCP
policy exported first, into the run's `exports/`, where the next evaluation finds it. One process,
the HF or vLLM engine (`rollout.engine`).

Settings: a run's own `config.yaml` (so its prompt format, chat template, evaluation temperature
and lengths, benchmark files and seed are reused), else the defaults of `conf/config.yaml`; then
`key=value` overrides of the same schema (`mgrpo/config.py`), e.g. `rollout.eval_temperature=0.8`,
`+data.benchmark_paths.gpqa_diamond=/data/gpqa_diamond.csv`, `trainer.device=cpu` (group
selections such as `experiment=paper` apply to plain checkpoints). The flags `--benchmarks`,
`--limit` and `--samples` set `trainer.eval_benchmarks`, `trainer.eval_benchmark_limit` and
`trainer.eval_benchmark_samples`.

Outputs (in `--out`, by default `<run>/eval/step_NNNNNN/` or `./eval/<checkpoint name>/`): a
table on stdout, `results.json`, `results.csv` (one row per benchmark) and `completions.jsonl`
(every sample). With `--tracking-uri`, the metrics go to MLflow as `eval/<benchmark>/mean_at_<n>`,
`mean_at_<n>_se`, `maj_at_<n>`, `pass_at_<k>` at the checkpoint's step, in the run that wrote the
checkpoint (its id is in the checkpoint's trainer_state.json) or, with `--new-run` or for a
checkpoint from elsewhere, in a new run of `--experiment`; the completions and results are
attached as artifacts. Points already logged at that step are kept, not overwritten (a warning
names them). The run's status is left as it was.

Sampling uses the seeds training's evaluation uses (run seed, step, benchmark, problem), so on
the same engine and dtype the numbers equal the ones logged in training at that step.
"""

from __future__ import annotations

import argparse
import logging
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Optional, Sequence

from mgrpo import checkpoint as ckpt
from mgrpo.config import Config, ConfigError
from mgrpo.eval_inputs import EvalError, check_config, load_config, locate_checkpoint, materialize
from mgrpo.eval_outputs import default_out_dir, log_to_mlflow, results_table, write_outputs
from mgrpo.evaluation import BenchmarkResult, EvalSamples, eval_seeds, prepare_benchmarks, sample_answers, score_benchmark
from mgrpo.models.loading import ModelLoadError
from mgrpo.tasks.base import DataError
from mgrpo.tasks.benchmarks import Benchmark, benchmark_source, samples_for

log = logging.getLogger("mgrpo.eval")

DEFAULT_BENCHMARKS = ("math500", "aime24", "aime25", "amc23")
"""Evaluated when neither --benchmarks nor the config's trainer.eval_benchmarks names any."""


def apply_flags(args: argparse.Namespace) -> list[str]:
    """The flags as config overrides (the flags only set config fields)."""
    out = list(args.overrides)
    if args.benchmarks:
        out.append(f"trainer.eval_benchmarks=[{','.join(b.strip() for b in args.benchmarks.split(',') if b.strip())}]")
    if args.limit is not None:
        out.append(f"trainer.eval_benchmark_limit={args.limit}")
    if args.samples is not None:
        out.append(f"trainer.eval_benchmark_samples={args.samples}")
    return out


# ---- engine -------------------------------------------------------------------------------------


def build_engine(cfg: Config, model_path: str, tokenizer):
    """One engine over the checkpoint (`rollout.engine`), through the trainer's engine factory.

    HF: the model is loaded in float32 and run in the compute dtype (`model.dtype`) as the trainer
    runs it on one rank. vLLM: the engine loads the checkpoint itself in the compute dtype.
    """
    import torch

    from mgrpo.parallel import Ranks
    from mgrpo.rollout import build_engines
    from mgrpo.sharding import compute_context

    t = cfg.trainer
    device = torch.device("cuda" if t.device == "cuda" or (t.device == "auto" and torch.cuda.is_available()) else "cpu")
    ranks = Ranks(device=device)
    dtype = getattr(torch, cfg.model.dtype)
    if cfg.rollout.engine == "hf":
        from mgrpo.models.loading import load_causal_lm

        model = load_causal_lm(model_path, torch.float32, device).requires_grad_(False)
        context = compute_context(ranks, dtype)
    else:
        model = torch.nn.Module()  # vLLM loads model_path itself; the slot only needs to be non-empty
        context = nullcontext
    return build_engines(cfg.rollout, ranks, {"policy": model}, tokenizer, model_path, dtype, context, t.seed, chat_template=cfg.data.chat_template)


def run_benchmark(engine, tokenizer, benchmark: Benchmark, cfg: Config, step: int, equivalence, progress) -> BenchmarkResult:
    """Sample and score one benchmark, in chunks of prompts (for the progress bar; a prompt's
    samples depend only on its seed, so chunking changes nothing)."""
    from mgrpo.rollout import encode_prompts

    r = cfg.rollout
    n = samples_for(benchmark, cfg.trainer.eval_benchmark_samples, r.eval_temperature)
    extract, equivalent = benchmark.grader(equivalence)
    chunk = max(1, r.eval_batch_size // n)
    samples = EvalSamples([], [], [], [])
    indices = list(range(len(benchmark.problems)))
    for start in range(0, len(indices), chunk):
        part = indices[start : start + chunk]
        prompts = encode_prompts(tokenizer, [benchmark.problems[i].prompt for i in part], r.max_prompt_tokens)
        seeds = eval_seeds(cfg.trainer.seed, step, part, benchmark.name)
        samples.extend(sample_answers(engine, prompts, part, n, r.eval_temperature, r.max_new_tokens, seeds, extract))
        progress.update(len(part))
    return score_benchmark(benchmark.name, samples, benchmark.problems, n, equivalent)


# ---- entry point --------------------------------------------------------------------------------


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="mgrpo-eval",
        description="Evaluate a checkpoint on benchmarks: mean@n (± standard error), maj@n and unbiased pass@k.",
        epilog="Trailing key=value arguments override the config (mgrpo/config.py), e.g. rollout.eval_temperature=0.8.",
    )
    p.add_argument("checkpoint", help="a run's output dir, a checkpoint dir (step_NNNNNN), an HF model dir, or a hub name")
    p.add_argument("overrides", nargs="*", help="config overrides, key=value")
    p.add_argument("--benchmarks", help=f"comma-separated names (default: trainer.eval_benchmarks, else {','.join(DEFAULT_BENCHMARKS)})")
    p.add_argument("--limit", type=int, help="only the first N problems of each benchmark (a quick check, not the benchmark)")
    p.add_argument("--samples", type=int, help="n samples per problem for every benchmark (default: each benchmark's own)")
    p.add_argument("--out", type=Path, help="output directory (default: <run>/eval/step_NNNNNN or ./eval/<checkpoint>)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI: log metrics and artifacts there")
    p.add_argument("--experiment", default="mgrpo-eval", help="MLflow experiment of a new run (default: mgrpo-eval)")
    p.add_argument("--run-name", help="name of a new MLflow run")
    p.add_argument("--new-run", action="store_true", help="log into a new MLflow run even when the checkpoint's run is known")
    p.add_argument("--step", type=int, help="MLflow step to log at (default: the checkpoint's step, 0 outside a run)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_intermixed_args(argv)


def evaluate(args: argparse.Namespace) -> list[BenchmarkResult]:
    import torch
    import transformers
    from tqdm.auto import tqdm

    from mgrpo.algos.grader import AnswerEquivalence
    from mgrpo.models.loading import load_tokenizer

    info = locate_checkpoint(args.checkpoint)
    cfg = load_config(info, apply_flags(args))
    if not cfg.trainer.eval_benchmarks:
        cfg.trainer.eval_benchmarks = list(DEFAULT_BENCHMARKS)
    check_config(cfg)
    for name in cfg.trainer.eval_benchmarks:
        benchmark_source(name, cfg.data)  # a missing file is reported before the model loads
    torch.set_num_threads(cfg.trainer.num_threads)
    transformers.utils.logging.disable_progress_bar()
    tokenizer = load_tokenizer(materialize(info, cfg))
    t, r = cfg.trainer, cfg.rollout
    benchmarks = prepare_benchmarks(t.eval_benchmarks, cfg.data, tokenizer, r.max_prompt_tokens, t.eval_benchmark_limit)
    print(
        f"[mgrpo-eval] {info.model_path} (step {info.step}): {', '.join(f'{b.name} ({len(b.problems)})' for b in benchmarks)}; "
        f"engine {r.engine}, temperature {r.eval_temperature}, max_new_tokens {r.max_new_tokens}",
        file=sys.stderr,
    )
    engines = build_engine(cfg, info.model_path, tokenizer)
    equivalence = AnswerEquivalence()
    results = []
    try:
        engine = engines.engines["policy"]
        with tqdm(total=sum(len(b.problems) for b in benchmarks), unit="problem", disable=args.no_progress, dynamic_ncols=True) as bar:
            for benchmark in benchmarks:
                bar.set_description(benchmark.name)
                results.append(run_benchmark(engine, tokenizer, benchmark, cfg, info.step, equivalence, bar))
    finally:
        engines.close()
        equivalence.close()
    out_dir = args.out or default_out_dir(info)
    paths = write_outputs(out_dir, info, cfg, results, benchmarks)
    print(results_table(results, {b.name: b.size for b in benchmarks}))
    print(f"[mgrpo-eval] results in {out_dir}", file=sys.stderr)
    if args.tracking_uri:
        run_id = log_to_mlflow(args, info, cfg, results, paths)
        print(f"[mgrpo-eval] logged to MLflow run {run_id} at step {info.step if args.step is None else args.step}", file=sys.stderr)
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        evaluate(args)
    except (EvalError, ConfigError, DataError, ModelLoadError, FileNotFoundError, ImportError, ckpt.CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
