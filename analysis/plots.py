"""Figures of the report (PNG, drawn with matplotlib's Agg canvas, no pyplot state).

One panel per config (the values of a sweep's swept params), wrapped four to a row; one colour
per method; each seed a thin line and the mean over seeds a thick one. Training curves are
smoothed with the detectors' window, so what the reader sees is what was judged; held-out
accuracy is drawn raw. Detected collapse points are marked with a cross on the seed's line.

- `curves.png` (the paper's Figures 1, 4, 5): pseudo-reward above held-out accuracy.
- `entropy.png` (Figure 2): policy entropy.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from mgrpo.metric_names import is_eval_metric

from .detectors import ACCURACY, ENTROPY, PSEUDO_REWARD, Thresholds
from .tables import method_label, method_order

METHOD_COLORS = {"mgrpo": "#1f77b4", "srt": "#d62728", "gt_grpo": "#2ca02c"}
_OTHER_COLORS = ("#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")
_PANELS_PER_ROW = 4
_MAX_POINTS = 600


def method_colors(methods) -> dict[str, str]:
    """Fixed colours for the presets, the rest in order."""
    others = iter(_OTHER_COLORS * 3)
    return {m: METHOD_COLORS.get(m) or next(others) for m in method_order(methods)}


class _Curves:
    """Per (run, metric) curves from the long frame, smoothed when they are training curves."""

    def __init__(self, curves: pd.DataFrame, metrics: tuple[str, ...], window: int):
        wanted = curves[curves["metric"].isin(metrics)].dropna(subset=["value"])
        steps, values = wanted["step"].to_numpy(), wanted["value"].to_numpy()
        groups = wanted.groupby(["run_id", "metric"], observed=True, sort=False).indices
        self._window = window
        self._series = {
            (str(run_id), str(metric)): pd.Series(values[rows], index=steps[rows]).sort_index()
            for (run_id, metric), rows in groups.items()
        }

    def get(self, run_id: str, metric: str) -> Optional[pd.Series]:
        s = self._series.get((run_id, metric))
        if s is None or is_eval_metric(metric):
            return s
        return s.rolling(self._window, center=True, min_periods=1).mean()

    def has(self, metric: str) -> bool:
        return any(m == metric for _, m in self._series)


def _grid(n_configs: int, rows_per_config: int, height: float):
    nrows = math.ceil(n_configs / _PANELS_PER_ROW)
    ncols = math.ceil(n_configs / nrows)  # balanced: 5 configs as 3 + 2, not 4 + 1
    fig = Figure(figsize=(1.5 + 4.2 * ncols, 1.2 + height * rows_per_config * nrows), layout="constrained", dpi=110)
    axes = fig.subplots(rows_per_config * nrows, ncols, sharex=True, squeeze=False)
    panels = []
    for i in range(nrows * ncols):
        r, c = divmod(i, ncols)
        block = [axes[r * rows_per_config + k][c] for k in range(rows_per_config)]
        if i < n_configs:
            panels.append(block)
        else:
            for ax in block:
                ax.set_axis_off()
    for k in range(rows_per_config):  # share y across configs for each metric row
        first = panels[0][k]
        for block in panels[1:]:
            block[k].sharey(first)
    return fig, panels, ncols


def _thin(s: pd.Series) -> np.ndarray:
    """(x, y) rows of a curve, keeping about _MAX_POINTS: more cannot be seen at this size
    (training curves are already smoothed), and drawing them dominates the report's time."""
    every = max(1, math.ceil(len(s) / _MAX_POINTS))
    keep = np.r_[np.arange(0, len(s) - 1, every), len(s) - 1] if len(s) else np.zeros(0, int)
    return np.column_stack([s.index.to_numpy()[keep], s.to_numpy()[keep]])


def _draw(ax, res: pd.DataFrame, data: _Curves, metric: str, colors: dict[str, str],
          marks: Optional[str]) -> None:
    """Seeds thin, mean thick, one colour per method; a cross where detector `marks` fired."""
    for method in method_order(res["method"]):
        color = colors[method]
        series, crosses = {}, []
        for run in res[res["method"] == method].to_dict("records"):
            s = data.get(run["run_id"], metric)
            if s is None or s.empty:
                continue
            series[run["run_id"]] = s
            step = run.get(f"step_{marks}") if marks else None
            if step is not None and not pd.isna(step):
                crosses.append((step, s.iloc[s.index.get_indexer([int(step)], method="nearest")[0]]))
        if not series:
            continue
        ax.add_collection(LineCollection([_thin(s) for s in series.values()], colors=color, lw=0.7, alpha=0.35))
        mean = _thin(pd.concat(series, axis=1).mean(axis=1))
        ax.plot(mean[:, 0], mean[:, 1], color=color, lw=2.4, label=method_label(method))
        if crosses:
            x, y = zip(*crosses)
            ax.plot(x, y, marker="X", ms=8, color=color, mec="black", mew=0.8, ls="none", zorder=5)
    ax.autoscale_view()
    ax.grid(alpha=0.3, lw=0.5)
    ax.spines[["top", "right"]].set_visible(False)


def _legend(fig: Figure, colors: dict[str, str], marker_label: str) -> None:
    handles = [Line2D([], [], color=c, lw=2.4, label=f"{method_label(m)}, mean over seeds")
               for m, c in colors.items()]
    handles.append(Line2D([], [], color="grey", lw=0.7, alpha=0.6, label="one seed"))
    handles.append(Line2D([], [], color="grey", marker="X", ms=8, mec="black", ls="none", label=marker_label))
    # Two columns: a single row of four entries is wider than a one-panel figure.
    fig.legend(handles=handles, loc="outside lower center", ncol=min(2, len(handles)), frameon=False, fontsize=9)


def plot_curves(res: pd.DataFrame, curves: pd.DataFrame, path: Path, title: str,
                thresholds: Thresholds, metric: str = ACCURACY) -> Optional[Path]:
    """Pseudo-reward (top) and held-out accuracy (bottom) per config; None if neither was logged."""
    data = _Curves(curves, (PSEUDO_REWARD, metric), thresholds.train_smooth)
    if not (data.has(PSEUDO_REWARD) or data.has(metric)):
        return None
    configs = list(dict.fromkeys(res["config"]))
    colors = method_colors(res["method"])
    fig, panels, ncols = _grid(len(configs), 2, 2.6)
    for i, (config, (top, bottom)) in enumerate(zip(configs, panels)):
        group = res[res["config"] == config]
        _draw(top, group, data, PSEUDO_REWARD, colors, "reward_accuracy_divergence")
        _draw(bottom, group, data, metric, colors, "accuracy_collapse")
        top.set_title(config, fontsize=10)
        if i % ncols == 0:
            top.set_ylabel(f"pseudo-reward\n(mean of {thresholds.train_smooth} steps)")
            bottom.set_ylabel(f"held-out accuracy\n({metric})")
        if i + ncols >= len(configs):
            bottom.set_xlabel("optimizer step")
            bottom.xaxis.set_tick_params(labelbottom=True)
    _legend(fig, colors, "collapse detected")
    fig.suptitle(title, fontsize=12)
    fig.savefig(path)
    return path


def plot_entropy(res: pd.DataFrame, curves: pd.DataFrame, path: Path, title: str,
                 thresholds: Thresholds) -> Optional[Path]:
    """Policy entropy per config; None if no run logged it."""
    data = _Curves(curves, (ENTROPY,), thresholds.train_smooth)
    if not data.has(ENTROPY):
        return None
    configs = list(dict.fromkeys(res["config"]))
    colors = method_colors(res["method"])
    fig, panels, ncols = _grid(len(configs), 1, 2.8)
    for i, (config, (ax,)) in enumerate(zip(configs, panels)):
        _draw(ax, res[res["config"] == config], data, ENTROPY, colors, "entropy_collapse")
        ax.set_title(config, fontsize=10)
        if i % ncols == 0:
            ax.set_ylabel(f"policy entropy (nats/token)\n(mean of {thresholds.train_smooth} steps)")
        if i + ncols >= len(configs):
            ax.set_xlabel("optimizer step")
            ax.xaxis.set_tick_params(labelbottom=True)
    _legend(fig, colors, "entropy collapse detected")
    fig.suptitle(title, fontsize=12)
    fig.savefig(path)
    return path
