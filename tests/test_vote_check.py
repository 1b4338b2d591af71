"""The vote check (mgrpo.vote_check): the vote's pseudo-label against the policy's greedy answer
on the selection set, at step 0 and each evaluation; a labelled diagnostic nothing else reads."""

from __future__ import annotations

import pytest

from mgrpo.run_monitor import MONITORED
from mgrpo_analysis.vote_check import VOTE_CHECK_METRICS
from mgrpo_analysis.label_free import LABEL_FREE_INPUTS
from tests.trainer_helpers import metric_series, train


def test_no_training_or_selection_path_reads_the_vote_check():
    assert not set(VOTE_CHECK_METRICS) & set(MONITORED)
    assert not set(VOTE_CHECK_METRICS) & set(LABEL_FREE_INPUTS)


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["mgrpo", "srt"])
def test_vote_check_is_logged_at_step_0_and_each_evaluation(tmp_path, tiny_cache, algo):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    overrides = [
        f"algo={algo}", "trainer.total_steps=2", "trainer.eval_every=1", "trainer.eval_size=40", "trainer.vote_check_size=24",
        "trainer.prompts_per_step=4", "trainer.progress=false", "monitor.enabled=false", f"model.tiny.cache_dir={tiny_cache}",
        f"tracking.uri={uri}", "tracking.experiment=vote_check",
    ]
    train(overrides, tmp_path / "run")
    (series,) = metric_series(uri, "vote_check").values()
    for name in VOTE_CHECK_METRICS:
        assert [s for s, _ in series[name]] == [0, 1, 2], name
    label, greedy, diff, labelled = (dict(series[name]) for name in VOTE_CHECK_METRICS)
    for step in (0, 1, 2):
        assert diff[step] == pytest.approx(label[step] - greedy[step])
        assert 0 <= label[step] <= labelled[step] <= 1  # an unlabelled prompt counts as wrong
        # Accuracies over 24 problems are multiples of 1/24.
        assert (24 * greedy[step]) == pytest.approx(round(24 * greedy[step]))
    # The greedy answers at step 0 are the base model's, whatever the method.
    assert 0 < greedy[0] < 1


def test_vote_check_size_zero_turns_it_off_and_negative_is_refused(tmp_path):
    from mgrpo.config import ConfigError
    from mgrpo.train import compose_config
    from mgrpo.config_checks import validate

    with pytest.raises(ConfigError, match="trainer.vote_check_size"):
        validate(compose_config(["trainer.vote_check_size=-1"]))
    validate(compose_config(["trainer.vote_check_size=0"]))


def test_report_shows_the_vote_check_per_run(tmp_path, tiny_cache):
    """A run with the check in its curves gets a row in the report's table and vote_check.csv
    (first and last evaluation, label minus greedy)."""
    import pandas as pd

    from mgrpo_analysis import report
    from mgrpo_analysis.store import Selection, Store
    from mgrpo_analysis.vote_check import vote_check_summary

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    train(
        ["algo=srt", "trainer.total_steps=1", "trainer.eval_every=1", "trainer.eval_size=20", "trainer.vote_check_size=12",
         "trainer.prompts_per_step=4", "trainer.progress=false", "monitor.enabled=false", f"model.tiny.cache_dir={tiny_cache}",
         f"tracking.uri={uri}", "tracking.experiment=vote_check_report"],
        tmp_path / "run",
    )
    analysis = report.analyze(Store.open(uri), Selection(experiments=("vote_check_report",)))
    summary = vote_check_summary(analysis.results, analysis.curves)
    (row,) = summary.itertuples()
    assert (row.first_step, row.last_step) == (0, 1)
    assert row.gain_first == pytest.approx(row.label_first - row.greedy_first)
    path = report.write(analysis, tmp_path / "report")
    text = path.read_text()
    assert "Could the vote teach?" in text and f"{row.gain_last:+.3f}" in text
    assert len(pd.read_csv(tmp_path / "report" / "vote_check.csv")) == 1


@pytest.mark.slow
@pytest.mark.parametrize("eval_temperature", [0.0, 0.7])
def test_greedy_answers_come_from_a_greedy_evaluation_else_from_a_decode(tmp_path, tiny_cache, eval_temperature):
    """After a greedy selection-set evaluation the check reuses its answers (no second greedy
    decode of the same prompts); after a sampled one it decodes greedily itself."""
    from mgrpo.tracking import Tracker
    from mgrpo.train import compose_config
    from mgrpo.trainer import Trainer

    cfg = compose_config(
        ["algo=mgrpo", "trainer.eval_size=30", "trainer.vote_check_size=12", "trainer.progress=false", "tracking.enabled=false",
         f"rollout.eval_temperature={eval_temperature}", f"model.tiny.cache_dir={tiny_cache}"]
    )
    trainer = Trainer(cfg, tmp_path, Tracker("", "", None, enabled=False))
    sample, temperatures = trainer.sample, []
    trainer.sample = lambda role, prompts, n, temperature, seeds: temperatures.append(temperature) or sample(role, prompts, n, temperature, seeds)
    try:
        metrics = trainer.evaluate(0)
        evaluated = trainer.evaluator.greedy_answers(0)
    finally:
        trainer.close()
    greedy_accuracy = metrics["eval/vote_check/greedy_accuracy"]
    if eval_temperature == 0:
        assert 0.0 not in temperatures
        problems = trainer.evaluator.selection[:12]
        right = [a is not None and trainer.equivalent(p.answer, a) for p, a in zip(problems, evaluated)]
        assert greedy_accuracy == pytest.approx(sum(right) / 12)
        assert trainer.evaluator.greedy_answers(1) is None  # only the step that was evaluated
    else:
        assert evaluated is None and temperatures.count(0.0) == 1
    assert 0 <= greedy_accuracy <= 1
