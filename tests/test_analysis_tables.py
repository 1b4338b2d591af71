"""Comparison tables on hand-made frames with hand-computed answers (no MLflow)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from mgrpo_analysis import tables
from mgrpo_analysis.cli import main


def runs_frame(rows, swept_tag=None):
    """A runs frame as Store.select builds it: rows of (method, seed, lr, iqr_k)."""
    out = pd.DataFrame([{
        "run_id": f"r{i}", "run_name": f"{m}-{lr}-{s}", "status": "FINISHED", "method": m, "seed": s,
        "sweep_id": "sw", "params.algo.name": m, "params.trainer.seed": str(s), "params.optim.lr": lr,
        "params.algo.iqr_k": k, "params.trainer.output_dir": f"/out/{i}",
    } for i, (m, s, lr, k) in enumerate(rows)])
    if swept_tag is not None:
        out["tags.mgrpo.swept_params"] = swept_tag
    return out


GRID = [(m, s, lr, "0.75" if m == "mgrpo" else "None")
        for lr in ("1e-05", "3e-05") for m in ("srt", "mgrpo") for s in (0, 1, 2)]


def verdicts_for(runs, peak, final, collapsed=None):
    return pd.DataFrame({
        "run_id": runs["run_id"], "peak": peak, "final": final, "drop": [p - f for p, f in zip(peak, final)],
        "collapsed": collapsed if collapsed is not None else [False] * len(runs),
        "collapse_step": pd.array([None] * len(runs), dtype="Int64"), "notes": "",
    })


def test_swept_params_from_the_tag_map_groups_and_drop_method_and_seed():
    runs = runs_frame(GRID, swept_tag="algo,optim.lr,trainer.seed,data.missing")
    swept, messages = tables.swept_params(runs)
    assert swept == {"sw": ["optim.lr"]}
    assert messages == ["sweep 'sw': swept param 'data.missing' is not a logged param"]


def test_swept_params_fallback_ignores_method_implied_params_and_paths():
    swept, _ = tables.swept_params(runs_frame(GRID))
    assert swept == {"sw": ["optim.lr"]}  # not algo.iqr_k (fixed per method), not output_dir


def test_best_vs_final_and_paired_differences_by_hand():
    runs = runs_frame(GRID)
    swept, _ = tables.swept_params(runs)
    # per lr: srt seeds, then mgrpo seeds
    peak = [0.50, 0.52, 0.54, 0.55, 0.55, 0.55] * 2
    final = [0.50, 0.52, 0.54, 0.55, 0.55, 0.55] + [0.10, 0.20, 0.30, 0.50, 0.52, 0.51]
    collapsed = [False] * 6 + [True] * 3 + [False] * 3
    res = tables.results(runs, verdicts_for(runs, peak, final, collapsed), swept)
    assert list(res["config"].unique()) == ["optim.lr=1e-05", "optim.lr=3e-05"]
    assert list(res["method"][:6]) == ["mgrpo"] * 3 + ["srt"] * 3  # M-GRPO first

    bvf = tables.best_vs_final(res).set_index(["config", "method"])
    srt = bvf.loc[("optim.lr=3e-05", "srt")]
    assert srt["n"] == 3 and srt["collapsed"] == 3
    assert srt["best_mean"] == pytest.approx(0.52) and srt["best_std"] == pytest.approx(0.02)
    assert srt["final_mean"] == pytest.approx(0.20) and srt["final_std"] == pytest.approx(0.10)
    table = tables.best_vs_final_table(tables.best_vs_final(res))
    assert list(table.columns) == ["config", "M-GRPO best", "M-GRPO final", "M-GRPO collapsed",
                                   "SRT best", "SRT final", "SRT collapsed"]
    assert table.iloc[1]["SRT final"] == "0.200 ± 0.100" and table.iloc[1]["SRT collapsed"] == "3/3"

    paired = tables.paired_differences(res).set_index("config").loc["optim.lr=3e-05"]
    assert (paired["a"], paired["b"], paired["n"], paired["a_higher"]) == ("mgrpo", "srt", 3, 3)
    assert paired["final_diff_mean"] == pytest.approx((0.40 + 0.32 + 0.21) / 3)
    assert paired["final_vs_best_mean"] == pytest.approx((0.00 + 0.00 - 0.03) / 3)
    assert paired["seeds"] == "0,1,2"

    pivot = tables.sweep_pivot(res, "sw", ["optim.lr"])
    assert list(pivot["optim.lr"]) == ["1e-05", "3e-05"]
    assert pivot.iloc[1]["SRT final"] == "0.200 ± 0.100" and pivot.iloc[1]["M-GRPO collapsed"] == "0/3"


def test_pairs_use_only_shared_seeds_and_single_seeds_have_no_std():
    runs = runs_frame([("srt", 0, "1e-05", "None"), ("srt", 1, "1e-05", "None"), ("mgrpo", 1, "1e-05", "0.75")])
    res = tables.results(runs, verdicts_for(runs, [0.5, 0.5, 0.6], [0.2, 0.3, 0.6]), {"sw": []})
    paired = tables.paired_differences(res)
    assert list(paired["n"]) == [1] and paired["final_diff_mean"].iloc[0] == pytest.approx(0.3)
    assert math.isnan(paired["final_diff_std"].iloc[0])
    assert tables.paired_table(paired)["final(a) − final(b)"].iloc[0] == "0.300"


def test_markdown_escapes_pipes_and_shows_empty_tables():
    text = tables.markdown(pd.DataFrame({"a|b": ["x|y"], "n": [1]}))
    assert text.splitlines() == ["| a\\|b | n |", "| --- | --- |", "| x\\|y | 1 |"]
    assert tables.markdown(pd.DataFrame()) == "_(none)_"


def test_cli_rejects_unknown_thresholds(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--experiment", "x", "--threshold", "noise_zz=3"])
    assert stop.value.code == 2 and "noise_zz" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--experiment", "x", "--threshold", "sustain_evals=two"])
