"""A learning-curve PNG from a `Trainer`'s `log_history`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


CURVES = (
    ("success_rate", "rollout success rate"),
    ("eval_success_rate", "greedy eval success rate"),
    ("reverse_kl", "KL(student || teacher) per token"),
    ("entropy", "student entropy (nats)"),
)


def learning_curve_series(
    log_history: Sequence[dict[str, Any]],
    x_key: str = "env_steps",
    eval_history: Sequence[dict[str, Any]] | None = None,
) -> dict[str, list[tuple[float, float]]]:
    """The `(x, value)` points of each curve in `CURVES`: x is the entry's `x_key` (the last one logged before it
    when the entry has none; the optimizer step while none was logged yet).

    `eval_history` (a rollout trainer's `eval_history`, whose entries carry the env steps they were taken at) is the
    source of the evaluation points when given: `log_history` loses an evaluation made before `train()`, since
    training starts a fresh `TrainerState`.
    """
    series: dict[str, list[tuple[float, float]]] = {}
    last_x = 0.0
    for entry in log_history:
        last_x = entry.get(x_key, last_x)
        x = last_x if x_key in entry or last_x else entry.get("step", 0)
        for key, _ in CURVES:
            if key == "eval_success_rate" and eval_history is not None:
                continue
            value = entry.get(key)
            if value is not None and math.isfinite(value):
                series.setdefault(key, []).append((x, value))
    for entry in eval_history or []:
        value = entry.get("eval_success_rate")
        if value is not None and math.isfinite(value):
            series.setdefault("eval_success_rate", []).append((entry.get(x_key, entry.get("step", 0)), value))
    return series


def plot_learning_curve(
    log_history: Sequence[dict[str, Any]],
    path: str,
    x_key: str = "env_steps",
    eval_history: Sequence[dict[str, Any]] | None = None,
) -> bool:
    """Plot the success, KL and entropy curves (`learning_curve_series`) against `x_key` (environment steps by
    default) to the PNG `path`. Returns `False`, writing nothing, when there is nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = learning_curve_series(log_history, x_key, eval_history)
    if not series:
        return False
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    panels = [("success_rate", "eval_success_rate"), ("reverse_kl",), ("entropy",)]
    for ax, keys in zip(axes, panels):
        for key in keys:
            if key in series:
                xs, ys = zip(*series[key])
                ax.plot(xs, ys, marker="o", markersize=3, label=dict(CURVES)[key])
        ax.set_xlabel("environment steps" if x_key == "env_steps" else x_key)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
