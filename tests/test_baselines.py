"""The baselines on the one code path: Intuitor (self-certainty reward), TTRL (a vote over a larger
pool than the loss), and the collapse lab's ablation and baseline presets, run a few steps each."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from mgrpo import metric_names as names
from mgrpo.models.scorer import ResponseScorer
from mgrpo.phases import sampler_self_certainty, score_phase
from mgrpo.rollout.base import encode_prompts
from mgrpo.rollout.hf import HFRolloutEngine
from mgrpo.tasks import TaskData
from tests.test_sweeps import _sweep_points, compose_root
from tests.trainer_helpers import metric_series, train

PROMPTS = ["12+34+56=", "7+8=", "123+456+789+10="]


def fast_overrides(tiny_cache: Path, uri: str, experiment: str, *extra: str) -> list[str]:
    return [
        f"model.tiny.cache_dir={tiny_cache}",
        f"tracking.uri={uri}",
        f"tracking.experiment={experiment}",
        "data.heldout_size=32",
        "trainer.total_steps=2",
        "trainer.prompts_per_step=4",
        "trainer.eval_every=2",
        "trainer.checkpoint_every=2",
        "trainer.progress=false",
        "algo.num_rollouts=8",
        *extra,
    ]


# ---- self-certainty: the sampler's record, the scoring pass and a direct forward agree -----------
def test_sampler_self_certainty_equals_the_scoring_pass_and_a_direct_forward(tiny):
    model, tokenizer = tiny
    vocab = len(tokenizer)
    ro = HFRolloutEngine(model, tokenizer).generate(encode_prompts(tokenizer, PROMPTS, 512), 3, 1.3, 10, [4, 5, 6])
    recorded = sampler_self_certainty(ro)
    assert recorded is not None and recorded.shape == (9,)
    scored = score_phase(ResponseScorer(model, chunk_tokens=5), ro, 1.3, chunk_size=4, self_certainty_vocab=vocab)
    assert torch.allclose(recorded, scored.self_certainty, atol=1e-4)
    assert score_phase(ResponseScorer(model), ro, 1.3, chunk_size=64).self_certainty is None
    # By hand for one row: KL(U || softmax(z / T)) = -log V - mean_j log p_j, averaged over the response.
    row = 4
    real = ro.attention_mask[row].bool()
    row_ids = ro.sequences[row][real]
    n_prompt = int(ro.attention_mask[row, : ro.prompt_length].sum())
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=row_ids.unsqueeze(0)).logits[0] / 1.3, -1)
    per_token = -math.log(vocab) - logp[n_prompt - 1 : -1, :vocab].mean(-1)
    assert math.isclose(float(recorded[row]), float(per_token.mean()), rel_tol=1e-4)
    # Past the response the record is 0, like the sampler's other per-token records.
    assert (ro.sampler_self_certainty[~ro.response_mask] == 0).all()
    greedy = HFRolloutEngine(model, tokenizer).generate(encode_prompts(tokenizer, PROMPTS, 512), 1, 0.0, 10, [0, 0, 0])
    assert sampler_self_certainty(greedy) is None


def test_intuitor_without_the_samplers_record_scores_self_certainty_in_a_pass(tiny_cache, tmp_path, monkeypatch):
    """An engine that records no self-certainty (vLLM) gets it from a scoring pass of the policy:
    the same rewards, so the same run."""
    from dataclasses import replace

    def run(name: str) -> dict:
        uri = f"sqlite:///{tmp_path}/{name}.db"
        train(fast_overrides(tiny_cache, uri, "intuitor", "algo=intuitor"), tmp_path / name)
        return next(iter(metric_series(uri, "intuitor").values()))

    recorded = run("recorded")
    generate = HFRolloutEngine.generate
    monkeypatch.setattr(HFRolloutEngine, "generate", lambda self, *a, **k: replace(generate(self, *a, **k), sampler_self_certainty=None))
    scored = run("scored")
    # (train/loss is ~0 by construction, the mean of zero-mean advantages: compare its parts instead.)
    for key in (names.REWARD, names.SELF_CERTAINTY, names.ADVANTAGE_ABS_MEAN, names.GRAD_NORM):
        assert [s for s, _ in scored[key]] == [1, 2]
        for (_, a), (_, b) in zip(recorded[key], scored[key]):
            assert math.isclose(a, b, rel_tol=1e-4), key
    assert recorded[names.SELECTION_ACCURACY] == scored[names.SELECTION_ACCURACY]


# ---- TTRL: the vote sees the whole pool, the loss only the trained samples ------------------------
def test_ttrl_votes_over_the_pool_and_trains_on_the_first_half(tiny_cache, tmp_path, monkeypatch):
    import mgrpo.trainer as trainer_module

    seen: dict[str, list] = {"voters": [], "members": [], "advantages": [], "groups": []}
    vote_phase, update_phase = trainer_module.vote_phase, trainer_module.update_phase

    def recording_vote(texts, group_ids, keep, *args, **kwargs):
        seen["voters"].append((group_ids.clone(), keep.clone()))
        return vote_phase(texts, group_ids, keep, *args, **kwargs)

    def recording_update(scorer, optimizer, rollouts, old_logprobs, ref_logprobs, advantages, members, *args, **kwargs):
        seen["members"].append(members.clone())
        seen["advantages"].append(advantages.clone())
        seen["groups"].append(rollouts.group_ids.clone())
        return update_phase(scorer, optimizer, rollouts, old_logprobs, ref_logprobs, advantages, members, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "vote_phase", recording_vote)
    monkeypatch.setattr(trainer_module, "update_phase", recording_update)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    train(fast_overrides(tiny_cache, uri, "ttrl", "algo=ttrl"), tmp_path / "run")

    assert len(seen["voters"]) == 2
    for (group_ids, keep), members, advantages, groups in zip(seen["voters"], seen["members"], seen["advantages"], seen["groups"]):
        assert torch.bincount(group_ids).tolist() == [8] * 4 and keep.all(), "all 8 samples of each prompt vote"
        assert members.view(4, 8).tolist() == [[True] * 4 + [False] * 4] * 4, "the first 4 of each prompt are trained"
        assert (advantages[~members] == 0).all()
        assert torch.equal(groups, torch.arange(4).repeat_interleave(8))
    series = next(iter(metric_series(uri, "ttrl").values()))
    assert all(v <= 16 for _, v in series[names.TRAINED_SAMPLES])


# ---- the label-free baselines never read the hidden labels ---------------------------------------
@pytest.mark.parametrize("algo", ["intuitor", "ttrl"])
def test_label_free_baselines_never_read_training_labels(algo, tiny_cache, tmp_path, monkeypatch):
    import mgrpo.trainer as trainer_module

    original = trainer_module.load_task

    def run_with(labels: str) -> dict:
        def patched(cfg):
            data = original(cfg)
            if labels == "corrupt":
                data = TaskData(train=[type(p)(uid=p.uid, prompt=p.prompt, answer="999999") for p in data.train], heldout=data.heldout)
            return data

        monkeypatch.setattr(trainer_module, "load_task", patched)
        uri = f"sqlite:///{tmp_path}/{labels}.db"
        train(fast_overrides(tiny_cache, uri, "leak", f"algo={algo}", "trainer.total_steps=3"), tmp_path / labels)
        return next(iter(metric_series(uri, "leak").values()))

    clean, corrupt = run_with("clean"), run_with("corrupt")
    diagnostics = {names.LABEL_ACCURACY, names.TRUE_ACCURACY}
    compared = [k for k in clean if not k.startswith(names.TIME + "/") and k not in diagnostics]
    assert names.LOSS in compared and names.SELECTION_ACCURACY in compared
    for key in compared:
        assert clean[key] == corrupt[key], f"{algo}: {key} changed when only the hidden labels changed"
    assert clean[names.TRUE_ACCURACY] != corrupt[names.TRUE_ACCURACY], "the diagnostics should see the corrupted labels"


# ---- the new presets: every arm composes and runs a few steps ------------------------------------
NEW_PRESETS = ("collapse_lab_ablation", "collapse_lab_baselines")


def _arms(name: str) -> list[list[str]]:
    """The preset's sweep points on one seed and base (seeds and bases only replicate an arm)."""
    from omegaconf import OmegaConf

    params = OmegaConf.to_container(compose_root([f"experiment={name}"]).hydra.sweeper.params)
    params.pop("trainer.seed")
    params.pop("model.tiny.seed")
    return _sweep_points(params)


def test_the_ablation_is_the_two_by_two_and_the_baselines_add_the_ceiling():
    from omegaconf import OmegaConf

    assert sorted(map(tuple, _arms("collapse_lab_ablation"))) == [
        ("algo=mgrpo", "algo.iqr_k=0.75"), ("algo=mgrpo", "algo.iqr_k=null"),
        ("algo=srt", "algo.iqr_k=0.75"), ("algo=srt", "algo.iqr_k=null"),
    ]
    assert sorted(map(tuple, _arms("collapse_lab_baselines"))) == [("algo=gt_grpo",), ("algo=intuitor",), ("algo=ttrl",)]
    lab = compose_root(["experiment=collapse_lab"])
    shared = ["algo.num_rollouts", "algo.momentum", "algo.kl_coef", "rollout.temperature", "optim.lr", "trainer.total_steps",
              "trainer.prompts_per_step", "trainer.eval_every"]
    for name in NEW_PRESETS:
        cfg = compose_root([f"experiment={name}"])
        assert cfg.tracking.experiment == name
        for key in shared:
            assert OmegaConf.select(cfg, key) == OmegaConf.select(lab, key), f"{name}: {key} differs from collapse_lab"
        assert cfg.hydra.sweeper.params["trainer.seed"] == lab.hydra.sweeper.params["trainer.seed"]


@pytest.mark.parametrize("name,arm", [(n, arm) for n in NEW_PRESETS for arm in _arms(n)], ids=lambda v: ",".join(v) if isinstance(v, list) else v)
def test_new_preset_arms_run_a_few_steps(name, arm, tiny_cache, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    overrides = [f"experiment={name}", *arm, *fast_overrides(tiny_cache, uri, name)]
    train(overrides, tmp_path / "run")
    series = next(iter(metric_series(uri, name).values()))
    assert [s for s, _ in series[names.LOSS]] == [1, 2]
    for key in (names.SELECTION_ACCURACY, names.PSEUDO_REWARD, names.ENTROPY, names.FILTERED_FRAC, names.SELF_CERTAINTY):
        assert key in series, f"{name} {arm}: {key} not logged"
    if "algo.iqr_k=null" in arm or name == "collapse_lab_baselines":
        assert all(v == 0 for _, v in series[names.FILTERED_FRAC]), "no filter, nothing filtered"


# ---- the analysis report: the arms side by side ---------------------------------------------------
def test_arm_summary_puts_the_four_arms_side_by_side():
    import pandas as pd

    from mgrpo_analysis import tables

    rows, points = [], []
    arms = [("mgrpo", "algo.iqr_k=0.75"), ("mgrpo", "algo.iqr_k=null"), ("srt", "algo.iqr_k=0.75"), ("srt", "algo.iqr_k=null")]
    for a, (method, config) in enumerate(arms):
        for seed in (0, 1):
            run_id = f"{method}-{config}-{seed}"
            rows.append({"run_id": run_id, "method": method, "config": config, "seed": seed,
                         "peak": 0.4 + 0.01 * a, "final": 0.3 + 0.01 * a + 0.02 * seed})
            for step in range(0, 101):  # step 0 (the initial evaluation) is not a training step
                points.append((run_id, step, names.PSEUDO_REWARD, 0.4 if step <= 25 else 0.6))
                points.append((run_id, step, names.ENTROPY, 0.1 + 0.001 * seed))
                points.append((run_id, step, names.FILTERED_FRAC, 0.07 if "0.75" in config else 0.0))
    res = pd.DataFrame(rows)
    curves = pd.DataFrame(points, columns=["run_id", "step", "metric", "value"])
    summary = tables.arm_summary(res, curves)
    assert len(summary) == 4 and summary["n"].tolist() == [2] * 4
    first = summary.iloc[0]
    assert (first["method"], first["config"]) == ("mgrpo", "algo.iqr_k=0.75")
    assert first["final_mean"] == pytest.approx(0.31) and first["peak_mean"] == pytest.approx(0.4)
    assert first["pseudo-reward early"] == pytest.approx(0.4) and first["pseudo-reward late"] == pytest.approx(0.6)
    assert first["policy entropy late"] == pytest.approx(0.1005)
    assert summary.set_index("config").loc["algo.iqr_k=null", "filtered late"].tolist() == [0.0, 0.0]
    table = tables.arm_table(summary)
    assert table["arm"].tolist()[:2] == ["M-GRPO, algo.iqr_k=0.75", "M-GRPO, algo.iqr_k=null"]
    assert table.columns.tolist() == ["arm", "n seeds", "held-out peak", "held-out final", "pseudo-reward (early → late)",
                                      "policy entropy (early → late)", "filtered (early → late)"]
    assert table.iloc[0]["pseudo-reward (early → late)"] == "0.400 → 0.600"
