"""Comparison tables over per-run verdicts: best vs final (Table 2), sweep pivots (Tables 1
and 3), and differences paired by seed.

All functions take the *results* frame built by `results`: one row per run with its method,
seed, sweep, config (the values of the sweep's swept params other than method and seed, the
unit that seeds replicate) and its verdict numbers.
"""

from __future__ import annotations

import re
from itertools import combinations
from typing import Iterable

import numpy as np
import pandas as pd

from mgrpo.metric_names import ENTROPY, FILTERED_FRAC, PSEUDO_REWARD

from .store import METHOD_PARAM, SEED_PARAM, SWEPT_TAG

METHOD_LABELS = {"mgrpo": "M-GRPO", "srt": "SRT", "gt_grpo": "GT-GRPO", "ttrl": "TTRL", "intuitor": "Intuitor"}
"""Display names of the presets; other `algo.name` values are shown as they are."""
_METHOD_ORDER = ("mgrpo", "srt", "gt_grpo", "ttrl", "intuitor")
_RUN_SPECIFIC = re.compile(r"(^|[._])(output_dir|run_name|cache_dir|checkpoint_dir)$|_(dir|path)$")
"""Params that differ per run without being swept (paths, names), ignored by the fallback."""


def method_label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def method_order(methods: Iterable[str]) -> list[str]:
    """Presets first (M-GRPO, SRT, GT-GRPO, TTRL, Intuitor), then the rest alphabetically."""
    present = set(methods)
    return [m for m in _METHOD_ORDER if m in present] + sorted(present - set(_METHOD_ORDER))


def swept_params(runs: pd.DataFrame) -> tuple[dict[str, list[str]], list[str]]:
    """Per sweep id: the param keys that define a config (method and seed excluded).

    From tag `mgrpo.swept_params` (the union over the sweep's runs) when present. A listed key
    that names a config group (`algo`) stands for its `name` field. Otherwise, the params that
    vary within one method across the sweep's runs, so that settings implied by the method
    (SRT's `iqr_k`) are not mistaken for swept ones. Returns the mapping and messages about
    listed keys that are not params.
    """
    out, messages = {}, []
    replicate = {METHOD_PARAM, SEED_PARAM}
    for sweep_id, group in runs.groupby("sweep_id", sort=True):
        tag_col = f"tags.{SWEPT_TAG}"
        listed = (group[tag_col].dropna() if tag_col in group else pd.Series(dtype=str))
        keys: list[str] = []
        if not listed.empty:
            for key in sorted({k.strip() for v in listed for k in str(v).split(",") if k.strip()}):
                if f"params.{key}" not in group and f"params.{key}.name" in group:
                    key = f"{key}.name"
                if key in replicate:
                    continue
                if f"params.{key}" in group:
                    keys.append(key)
                else:
                    messages.append(f"sweep {sweep_id!r}: swept param {key!r} is not a logged param")
        else:
            params = [c for c in group.columns if c.startswith("params.")]
            for col in params:
                key = col.removeprefix("params.")
                if key in replicate or _RUN_SPECIFIC.search(key):
                    continue
                if (group.groupby("method")[col].nunique(dropna=False) > 1).any():
                    keys.append(key)
        out[sweep_id] = keys
    return out, messages


def _sort_key(values: pd.Series) -> pd.Series:
    numeric = pd.to_numeric(values, errors="coerce")
    return numeric if numeric.notna().all() else values.astype(str)


def results(runs: pd.DataFrame, verdicts: pd.DataFrame, swept: dict[str, list[str]]) -> pd.DataFrame:
    """Runs joined with their verdicts, plus `config`: a label such as "optim.lr=1e-05"
    (prefixed by the sweep id when several sweeps are selected). Sorted by config, method,
    seed."""
    base = runs[["run_id", "run_name", "status", "method", "seed", "sweep_id"]].copy()
    base["run_name"] = base["run_name"].fillna(base["run_id"].str[:8])
    several = runs["sweep_id"].nunique() > 1
    labels = []
    for run in runs.to_dict("records"):
        keys = swept.get(run["sweep_id"], [])
        label = ", ".join(f"{k}={run.get(f'params.{k}')}" for k in keys)
        if several:
            name = run["sweep_id"] or "(no sweep)"
            label = f"{name}: {label}" if label else name
        elif not label:
            label = run["sweep_id"] or "all runs"
        labels.append(label)
    base["config"] = labels
    for keys in swept.values():
        for k in keys:
            base[k] = runs[f"params.{k}"]
    out = base.merge(verdicts, on="run_id", how="left")
    out["_m"] = out["method"].map({m: i for i, m in enumerate(method_order(out["method"]))})
    order_by = ["sweep_id", *sorted({k for v in swept.values() for k in v}), "config"]
    config_rank = out.drop_duplicates("config").sort_values(order_by, key=_sort_key)
    out["_c"] = out["config"].map({c: i for i, c in enumerate(config_rank["config"])})
    return out.sort_values(["_c", "_m", "seed"]).drop(columns=["_c", "_m"]).reset_index(drop=True)


def _pm(mean: float, std: float, digits: int = 3) -> str:
    if pd.isna(mean):
        return "–"
    if pd.isna(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def best_vs_final(res: pd.DataFrame) -> pd.DataFrame:
    """Per config and method, across seeds: n, best (peak) and final accuracy as mean and
    sample std, the mean drop, and how many runs collapsed. Runs without an accuracy curve
    are left out of n."""
    have = res[res["final"].notna()]
    if have.empty:
        return pd.DataFrame(columns=["config", "method", "n", "best_mean", "best_std", "final_mean",
                                     "final_std", "drop_mean", "collapsed"])
    g = have.groupby(["config", "method"], sort=False)
    out = g.agg(
        n=("run_id", "size"), best_mean=("peak", "mean"), best_std=("peak", "std"),
        final_mean=("final", "mean"), final_std=("final", "std"), drop_mean=("drop", "mean"),
        collapsed=("collapsed", "sum"),
    ).reset_index()
    return out


def best_vs_final_table(bvf: pd.DataFrame) -> pd.DataFrame:
    """`best_vs_final` laid out as the paper's Table 2: one row per config, and for each method
    "best" and "final" as mean ± std, with n and collapsed runs."""
    if bvf.empty:
        return pd.DataFrame()
    table = pd.DataFrame(index=pd.Index(bvf["config"].unique(), name="config"))
    for method in method_order(bvf["method"]):
        rows = bvf[bvf["method"] == method].set_index("config")
        label = method_label(method)
        table[f"{label} best"] = pd.Series(map(_pm, rows["best_mean"], rows["best_std"]), rows.index)
        table[f"{label} final"] = pd.Series(map(_pm, rows["final_mean"], rows["final_std"]), rows.index)
        table[f"{label} collapsed"] = rows["collapsed"].astype(int).astype(str) + "/" + rows["n"].astype(str)
    return table.fillna("–").reset_index()


def sweep_pivot(res: pd.DataFrame, sweep_id: str, keys: list[str]) -> pd.DataFrame:
    """Tables 1 and 3: for one sweep, rows are the swept params' values, and for each method
    the final accuracy (mean ± std over seeds) and collapsed/n."""
    runs = res[(res["sweep_id"] == sweep_id) & res["final"].notna()]
    if runs.empty:
        return pd.DataFrame()
    index = keys or ["config"]
    g = runs.groupby(index + ["method"], sort=False)
    stats = g.agg(mean=("final", "mean"), std=("final", "std"), n=("run_id", "size"),
                  collapsed=("collapsed", "sum")).reset_index()
    stats["final"] = [_pm(m, s) for m, s in zip(stats["mean"], stats["std"])]
    stats["collapsed"] = [f"{int(c)}/{int(n)}" for c, n in zip(stats["collapsed"], stats["n"])]
    wide = stats.pivot(index=index, columns="method", values=["final", "collapsed"])
    columns = []
    for method in method_order(stats["method"]):
        for what in ("final", "collapsed"):
            columns.append((what, method))
    wide = wide[columns]
    wide.columns = [f"{method_label(m)} {what}" for what, m in columns]
    return wide.fillna("–").reset_index()


def paired_differences(res: pd.DataFrame) -> pd.DataFrame:
    """Differences between two methods on the same seeds, per config: final(a) - final(b) and
    final(a) - best(b) (the paper's M-GRPO-final vs SRT-best), mean and std over the shared
    seeds, and on how many seeds a ended above b. Pairs follow `method_order`."""
    have = res[res["final"].notna() & res["seed"].notna()]
    rows = []
    for config, group in have.groupby("config", sort=False):
        per_method = {m: g.drop_duplicates("seed").set_index("seed") for m, g in group.groupby("method")}
        for a, b in combinations(method_order(per_method), 2):
            seeds = per_method[a].index.intersection(per_method[b].index)
            if seeds.empty:
                continue
            final_a = per_method[a].loc[seeds, "final"]
            d_final = final_a - per_method[b].loc[seeds, "final"]
            d_best = final_a - per_method[b].loc[seeds, "peak"]
            rows.append({
                "config": config, "a": a, "b": b, "n": len(seeds),
                "final_diff_mean": d_final.mean(), "final_diff_std": d_final.std(),
                "final_vs_best_mean": d_best.mean(), "final_vs_best_std": d_best.std(),
                "a_higher": int((d_final > 0).sum()),
                "seeds": ",".join(_seed_str(s) for s in sorted(seeds)),
            })
    columns = ["config", "a", "b", "n", "final_diff_mean", "final_diff_std", "final_vs_best_mean",
               "final_vs_best_std", "a_higher", "seeds"]
    return pd.DataFrame(rows, columns=columns)


def _seed_str(seed: object) -> str:
    return "" if pd.isna(seed) else str(int(seed)) if float(seed).is_integer() else str(seed)


def paired_table(paired: pd.DataFrame) -> pd.DataFrame:
    """`paired_differences` for display, with differences as mean ± std over seeds."""
    return pd.DataFrame({
        "config": paired["config"],
        "a − b": [f"{method_label(a)} − {method_label(b)}" for a, b in zip(paired["a"], paired["b"])],
        "n seeds": paired["n"],
        "final(a) − final(b)": list(map(_pm, paired["final_diff_mean"], paired["final_diff_std"])),
        "final(a) − best(b)": list(map(_pm, paired["final_vs_best_mean"], paired["final_vs_best_std"])),
        "a ended higher": [f"{h}/{n}" for h, n in zip(paired["a_higher"], paired["n"])],
        "seeds": paired["seeds"],
    })


def verdict_table(res: pd.DataFrame) -> pd.DataFrame:
    """The per-run verdicts for display: runs x collapsed/step/peak/final/drop/detectors."""
    out = pd.DataFrame({
        "run": res["run_name"],
        "method": res["method"].map(method_label),
        "seed": res["seed"].map(_seed_str),
        "config": res["config"],
        "collapsed": res["collapsed"].map({True: "yes", False: "no"}),
        "step": res["collapse_step"].astype("string").fillna(""),
        "peak": res["peak"].map(lambda v: "" if pd.isna(v) else f"{v:.3f}"),
        "peak step": res["peak_step"].astype("string").fillna(""),
        "final": res["final"].map(lambda v: "" if pd.isna(v) else f"{v:.3f}"),
        "drop": res["drop"].map(lambda v: "" if pd.isna(v) else f"{v:.3f}"),
        "detectors": res["detectors"].fillna(""),
    })
    if out["config"].nunique() <= 1:
        out = out.drop(columns="config")
    if (res["status"] != "FINISHED").any():  # running, failed or killed runs are worth seeing
        out.insert(1, "status", res["status"])
    return out


def markdown(df: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown pipe table (pandas' to_markdown needs tabulate)."""
    if df.empty:
        return "_(none)_"

    def cell(v: object) -> str:
        return "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v).replace("|", "\\|")

    head = "| " + " | ".join(cell(c) for c in df.columns) + " |"
    rule = "| " + " | ".join("---" for _ in df.columns) + " |"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body])


ARM_SIGNALS = {
    PSEUDO_REWARD: "pseudo-reward",
    ENTROPY: "policy entropy",
    FILTERED_FRAC: "filtered",
}
"""The training signals `arm_summary` shows per arm, early -> late, with their display names."""


def arm_summary(res: pd.DataFrame, curves: pd.DataFrame, window: float = 0.25) -> pd.DataFrame:
    """The arms side by side (an arm: one config and method, e.g. the ablation's "M-GRPO,
    algo.iqr_k=null"): over its seeds, held-out accuracy (peak and final, mean and sample std)
    and each `ARM_SIGNALS` signal as the mean over the run's first and last `window` of its
    training steps (then averaged over seeds).

    Args:
        res: `results` frame (one row per run, with `peak` and `final`).
        curves: long frame run_id, step, metric, value.
    Returns:
        One row per arm: config, method, n, peak_mean, peak_std, final_mean, final_std, and
        `<signal> early` / `<signal> late` for each signal logged by any of the arm's runs.
    """
    have = res[res["final"].notna()]
    if have.empty:
        return pd.DataFrame(columns=["config", "method", "n", "peak_mean", "peak_std", "final_mean", "final_std"])
    wanted = curves[curves["metric"].isin(list(ARM_SIGNALS))].dropna(subset=["value"])
    per_run: dict[str, dict[str, float]] = {}
    for (run_id, metric), g in wanted.groupby(["run_id", "metric"], observed=True, sort=False):
        g = g[g["step"] > 0].sort_values("step")
        if g.empty:
            continue
        last = g["step"].max()
        early = g[g["step"] <= window * last]["value"]
        late = g[g["step"] >= (1 - window) * last]["value"]
        name = ARM_SIGNALS[str(metric)]
        per_run.setdefault(str(run_id), {})[f"{name} early"] = early.mean() if not early.empty else np.nan
        per_run[str(run_id)][f"{name} late"] = late.mean()
    signals = pd.DataFrame.from_dict(per_run, orient="index")
    signals.index.name = "run_id"
    merged = have.merge(signals.reset_index(), on="run_id", how="left") if not signals.empty else have.copy()
    signal_cols = [f"{n} {w}" for n in ARM_SIGNALS.values() for w in ("early", "late") if f"{n} {w}" in merged]
    g = merged.groupby(["config", "method"], sort=False)
    out = g.agg(n=("run_id", "size"), peak_mean=("peak", "mean"), peak_std=("peak", "std"),
                final_mean=("final", "mean"), final_std=("final", "std")).reset_index()
    if signal_cols:
        out = out.merge(g[signal_cols].mean().reset_index(), on=["config", "method"])
    return out


def arm_table(summary: pd.DataFrame) -> pd.DataFrame:
    """`arm_summary` for display: one row per arm, accuracy as mean ± std, signals early → late."""
    if summary.empty:
        return pd.DataFrame()
    several = summary["config"].nunique() > 1
    out = pd.DataFrame({
        "arm": [f"{method_label(m)}, {c}" if several else method_label(m) for c, m in zip(summary["config"], summary["method"])],
        "n seeds": summary["n"],
        "held-out peak": list(map(_pm, summary["peak_mean"], summary["peak_std"])),
        "held-out final": list(map(_pm, summary["final_mean"], summary["final_std"])),
    })
    for name in ARM_SIGNALS.values():
        if f"{name} early" in summary:
            out[f"{name} (early → late)"] = [
                "–" if pd.isna(a) and pd.isna(b) else f"{a:.3f} → {b:.3f}"
                for a, b in zip(summary[f"{name} early"], summary[f"{name} late"])
            ]
    return out
