"""`mgrpo-eval`: evaluate a checkpoint on benchmarks, with the code training's evaluation runs.

    mgrpo-eval outputs/paper/algo=mgrpo                       # a run: its latest checkpoint's policy
    mgrpo-eval outputs/.../checkpoints/step_000100            # one checkpoint of a run
    mgrpo-eval /models/Qwen3-4B-Base --benchmarks math500,aime24 \\
        rollout.eval_temperature=0.8 rollout.max_new_tokens=3072 rollout.engine=vllm
    mgrpo-eval RUN_DIR --tracking-uri sqlite:///mlflow.db      # also into the run's MLflow run

What is evaluated: any Hugging Face checkpoint directory (or hub name), a checkpoint of a run
(`<output_dir>/checkpoints/step_NNNNNN`, its `policy/`), or a run's output directory (its latest
complete checkpoint). One process, the HF or vLLM engine (`rollout.engine`).

Settings: a run's own `config.yaml` (so its prompt format, chat template, evaluation temperature
and lengths, benchmark files and seed are reused), else the defaults of `conf/config.yaml`; then
`key=value` overrides of the same schema (`mgrpo/config.py`), e.g. `rollout.eval_temperature=0.8`,
`+data.benchmark_paths.gpqa_diamond=/data/gpqa_diamond.csv`, `trainer.device=cpu` (group
selections such as `experiment=paper` apply to plain checkpoints). The flags `--benchmarks`,
`--limit` and `--samples` set `trainer.eval_benchmarks`, `trainer.eval_benchmark_limit` and
`trainer.eval_benchmark_samples`.

Outputs (in `--out`, by default `<run>/eval/step_NNNNNN/` or `./eval/<checkpoint name>/`): a
table on stdout, `results.json`, `results.csv` (one row per benchmark) and `completions.jsonl`
(every sample). With `--tracking-uri`, the metrics go to MLflow as `val/<benchmark>/mean_at_<n>`,
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
import csv
import json
import logging
import math
import re
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from mgrpo import checkpoint as ckpt
from mgrpo.config import Config, ConfigError, validate_benchmarks
from mgrpo.evaluation import BenchmarkResult, EvalSamples, eval_seeds, prepare_benchmarks, sample_answers, score_benchmark
from mgrpo.models.loading import ModelLoadError
from mgrpo.tasks.base import DataError
from mgrpo.tasks.benchmarks import Benchmark, benchmark_source, samples_for

log = logging.getLogger("mgrpo.eval")

DEFAULT_BENCHMARKS = ("math500", "aime24", "aime25", "amc23")
"""Evaluated when neither --benchmarks nor the config's trainer.eval_benchmarks names any."""


class EvalError(RuntimeError):
    """mgrpo-eval cannot go on; the message says what to change."""


@dataclass
class CheckpointInfo:
    """What is evaluated and where it came from."""

    model_path: str
    """The HF checkpoint directory (or hub name) given to the engine."""
    step: int
    """The training step of the checkpoint (0 for a checkpoint from elsewhere)."""
    run_dir: Optional[Path]
    """The run's output directory, when the checkpoint belongs to a run."""
    run_id: Optional[str]
    """The MLflow run that wrote the checkpoint, when known."""

    @property
    def label(self) -> str:
        if self.run_dir is not None:
            return f"{self.run_dir.name}/step_{self.step:06d}"
        return Path(self.model_path).name or self.model_path


def _hub_name(value: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.\-]*/[\w.\-]+", value))


def _from_step_dir(step_dir: Path, model_dir: Optional[Path] = None) -> CheckpointInfo:
    if not (step_dir / ckpt.MARKER).exists():
        raise EvalError(f"checkpoint {step_dir} is incomplete (no {ckpt.MARKER} marker); evaluate another checkpoint")
    try:
        state = json.loads((step_dir / ckpt.STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise EvalError(f"checkpoint {step_dir}: cannot read {ckpt.STATE_FILE} ({e})") from e
    model = model_dir or step_dir / "policy"
    if not (model / "config.json").exists():
        raise EvalError(f"checkpoint {step_dir} has no Hugging Face model in {model.name}/ (no config.json)")
    run_dir = step_dir.parent.parent
    run_id = (state.get("tracking") or {}).get("run_id")
    if not run_id and (run_dir / "mlflow_run_id").exists():
        run_id = (run_dir / "mlflow_run_id").read_text().strip() or None
    return CheckpointInfo(str(model.resolve()), int(state["step"]), run_dir.resolve(), run_id)


def locate_checkpoint(path: str) -> CheckpointInfo:
    """Resolve PATH: a run's output dir (latest complete checkpoint), a checkpoint dir
    (`step_NNNNNN`), a model dir inside one (`policy/`, `momentum/`), any HF checkpoint dir, or
    a hub name."""
    p = Path(path).expanduser()
    if not p.exists():
        if _hub_name(path) and not path.startswith((".", "/", "~")):
            return CheckpointInfo(path, 0, None, None)
        raise EvalError(f"{path}: no such checkpoint, run directory or model directory")
    if (p / ckpt.STATE_FILE).exists() and (p / "policy").is_dir():
        return _from_step_dir(p)
    if (p / "config.json").exists():
        if (p.parent / ckpt.STATE_FILE).exists():
            return _from_step_dir(p.parent, p)
        return CheckpointInfo(str(p.resolve()), 0, None, None)
    if ckpt.checkpoint_root(p).is_dir():
        try:
            found = ckpt.latest_checkpoint(p)
        except ckpt.CheckpointError as e:
            raise EvalError(str(e)) from e
        if found is None:
            raise EvalError(f"run directory {p} has no checkpoint yet")
        return _from_step_dir(found.path)
    raise EvalError(
        f"{path} is neither a run's output directory (no checkpoints/), a checkpoint (no {ckpt.STATE_FILE} and "
        "policy/) nor a Hugging Face model directory (no config.json)"
    )


# ---- configuration ------------------------------------------------------------------------------


def load_config(info: CheckpointInfo, overrides: Sequence[str]) -> Config:
    """The run's config.yaml (if the checkpoint has one) or the root config, with overrides."""
    from omegaconf import OmegaConf

    from mgrpo.train import compose_config

    saved = info.run_dir / "config.yaml" if info.run_dir is not None else None
    try:
        if saved is None or not saved.exists():
            return compose_config(list(overrides))
        groups = [o for o in overrides if "=" in o and "." not in o.split("=", 1)[0].lstrip("+~")]
        if groups:
            raise EvalError(
                f"{', '.join(groups)}: config group selections apply to checkpoints from elsewhere; a run's checkpoint "
                "is evaluated with the run's own config.yaml plus key=value overrides"
            )
        base = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(saved))
        dotlist = [o.lstrip("+") for o in overrides]
        return OmegaConf.to_object(OmegaConf.merge(base, OmegaConf.from_dotlist(dotlist)))
    except EvalError:
        raise
    except Exception as e:  # Hydra and OmegaConf errors: say which override
        raise EvalError(f"invalid overrides {list(overrides)}: {str(e).splitlines()[0]}") from e


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


def check_config(cfg: Config) -> None:
    """The settings evaluation uses (the training ones are not checked: their files may be elsewhere)."""
    r = cfg.rollout
    if r.engine not in ("hf", "vllm"):
        raise ConfigError(f"rollout.engine={r.engine!r} is invalid: allowed values are hf, vllm")
    if not r.eval_temperature >= 0:
        raise ConfigError(f"rollout.eval_temperature={r.eval_temperature} must be >= 0 (0 = greedy)")
    for key in ("max_new_tokens", "max_prompt_tokens", "eval_batch_size"):
        if getattr(r, key) < 1:
            raise ConfigError(f"rollout.{key}={getattr(r, key)} must be >= 1")
    validate_benchmarks(cfg)


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
    return build_engines(cfg.rollout, ranks, {"policy": model}, tokenizer, model_path, dtype, context, t.seed)


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


# ---- outputs ------------------------------------------------------------------------------------


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.4f}"


def results_table(results: Sequence[BenchmarkResult], sizes: dict[str, int]) -> str:
    """An aligned text table: one row per benchmark."""
    header = ["benchmark", "problems", "n", "mean@n", "± se", "maj@n", "pass@k (k=1,2,4,..,n)", "no answer", "resp. tokens"]
    rows = []
    for res in results:
        m, n = res.metrics, res.n
        problems = f"{res.num_problems}" + (f"/{sizes[res.name]}" if sizes[res.name] != res.num_problems else "")
        passes = " ".join(f"{k.split('@')[1]}:{_fmt(v)}" for k, v in m.items() if k.startswith("pass@"))
        rows.append([
            res.name, problems, str(n), _fmt(m[f"mean@{n}"]), _fmt(m[f"mean@{n}_se"]), _fmt(m[f"maj@{n}"]),
            passes, _fmt(m["no_answer_frac"]), f"{m['response_length']:.1f}",
        ])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_outputs(out_dir: Path, info: CheckpointInfo, cfg: Config, results: Sequence[BenchmarkResult], benchmarks: Sequence[Benchmark]) -> dict[str, Path]:
    """results.json, results.csv and completions.jsonl in `out_dir`; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    by_name = {b.name: b for b in benchmarks}
    r = cfg.rollout
    summary = {
        "checkpoint": info.model_path,
        "step": info.step,
        "run_dir": str(info.run_dir) if info.run_dir else None,
        "run_id": info.run_id,
        "settings": {
            "engine": r.engine,
            "dtype": cfg.model.dtype,
            "eval_temperature": r.eval_temperature,
            "max_new_tokens": r.max_new_tokens,
            "max_prompt_tokens": r.max_prompt_tokens,
            "seed": cfg.trainer.seed,
            "chat_template": cfg.data.chat_template,
            "prompt_template": cfg.data.resolved_prompt_template(),
        },
        "benchmarks": {
            res.name: {
                "source": by_name[res.name].source,
                "kind": by_name[res.name].kind,
                "n": res.n,
                "problems": res.num_problems,
                "size": by_name[res.name].size,
                "metrics": res.metrics,
            }
            for res in results
        },
    }
    paths = {"json": out_dir / "results.json", "csv": out_dir / "results.csv", "completions": out_dir / "completions.jsonl"}
    paths["json"].write_text(json.dumps(summary, indent=1, default=str))
    columns = ["benchmark", "problems", "size", "n"]
    for res in results:
        columns += [k for k in res.metrics if k not in columns]
    with paths["csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for res in results:
            writer.writerow({"benchmark": res.name, "problems": res.num_problems, "size": by_name[res.name].size, "n": res.n, **res.metrics})
    with paths["completions"].open("w") as f:
        for res in results:
            for row in res.completions:
                f.write(json.dumps(row) + "\n")
    return paths


def default_out_dir(info: CheckpointInfo) -> Path:
    if info.run_dir is not None:
        return info.run_dir / "eval" / f"step_{info.step:06d}"
    return Path("eval") / re.sub(r"[^\w.\-]+", "_", Path(info.model_path).name or info.model_path)


def log_to_mlflow(args: argparse.Namespace, info: CheckpointInfo, cfg: Config, results: Sequence[BenchmarkResult], paths: dict[str, Path]) -> str:
    """Metrics at the checkpoint's step and the output files as artifacts, in the checkpoint's run
    (or a new one); returns the run id. The existing run's status is restored."""
    from mlflow import MlflowClient

    from mgrpo.tracking import Tracker, resolve_tracking_uri, sanitize_key

    uri = resolve_tracking_uri(args.tracking_uri, Path.cwd())
    step = info.step if args.step is None else args.step
    metrics = {k: v for res in results for k, v in res.tracking_metrics().items() if not math.isnan(v)}
    client = MlflowClient(tracking_uri=uri)
    run_id = None if args.new_run else info.run_id
    status = None
    if run_id is not None:
        try:
            run = client.get_run(run_id)
        except Exception as e:
            raise EvalError(
                f"the checkpoint's MLflow run {run_id} is not in {uri} ({str(e).splitlines()[0][:200]}); pass the "
                "tracking URI the run used (--tracking-uri), or --new-run to log into a new run"
            ) from e
        status = run.info.status
        existing = [k for k in metrics if sanitize_key(k) in run.data.metrics and any(p.step == step for p in client.get_metric_history(run_id, sanitize_key(k)))]
        if existing:
            print(
                f"[mgrpo-eval] {len(existing)} metrics already logged at step {step} in run {run_id} are kept, not "
                f"overwritten (e.g. {existing[0]}); use --new-run for a separate record",
                file=sys.stderr,
            )
    tracker = Tracker(uri, args.experiment, args.run_name or f"eval-{info.label}", enabled=True)
    tracker.run_id = run_id
    if run_id is None:
        r = cfg.rollout
        tracker.log_params(
            {
                "eval.checkpoint": info.model_path,
                "eval.step": step,
                "eval.benchmarks": ",".join(res.name for res in results),
                "eval.engine": r.engine,
                "eval.temperature": r.eval_temperature,
                "eval.max_new_tokens": r.max_new_tokens,
                "eval.seed": cfg.trainer.seed,
                "eval.dtype": cfg.model.dtype,
            }
        )
        tracker.set_tags({"mgrpo.eval_of": info.model_path, "mgrpo.source_run_id": info.run_id})
    tracker.log_metrics(metrics, step)
    for path in paths.values():
        tracker.log_artifact(path, f"eval/step_{step:06d}")
    if run_id is None:
        if not tracker.finish("FINISHED", wait_seconds=30.0):
            raise EvalError(f"MLflow store {uri} unreachable; the results are in {paths['json'].parent}")
        return tracker.run_id
    if not tracker.flush():
        raise EvalError(f"MLflow store {uri} unreachable; the results are in {paths['json'].parent}")
    if status is not None and status != "RUNNING":
        client.update_run(run_id, status=status)
    return run_id


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

    from mgrpo.algos.answers import AnswerEquivalence
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
    tokenizer = load_tokenizer(info.model_path)
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
