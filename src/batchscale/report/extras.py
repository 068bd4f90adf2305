"""Figures and sections a report gains once a study holds more than its trials: step times
(time to result, projected onto N devices), replicated winners, gradient noise scales, and, on
the ``nqm`` workload, the closed-form prediction.

Each ``plot_*`` function draws on an Axes the caller owns; each ``*_figure`` builds a figure
from a study's stored metadata and returns ``None`` when the study holds no such data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

from batchscale.analysis.analyze import StudyAnalysis
from batchscale.analysis.cost import DataParallelCost, projected_time_to_result, time_to_result
from batchscale.report.figures import (
    DATA_COLOR,
    FIT_COLOR,
    REFERENCE_COLOR,
    format_batch_axis,
    format_step_axis,
    format_value_axis,
)


def _sorted_sizes(entries: Mapping[str, Any]) -> list[int]:
    return sorted(int(size) for size in entries)


def _log_batch_axes(ax: Axes, ylabel: str) -> None:
    """Log-log axes with batch size (powers of two) across and ``ylabel`` up."""
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    format_batch_axis(ax)
    format_value_axis(ax)
    ax.set_xlabel("Batch size")
    ax.set_ylabel(ylabel)


def plot_time_to_result(
    ax: Axes,
    batch_sizes: ArrayLike,
    seconds: ArrayLike,
    projected: ArrayLike | None = None,
    projected_label: str = "",
) -> Axes:
    """Measured time to result against batch size, and optionally a projection."""
    sizes = np.asarray(batch_sizes, dtype=float)
    measured = np.asarray(seconds, dtype=float)
    ax.plot(sizes, measured, marker="o", color=DATA_COLOR, label="1 device (measured)")
    if projected is not None:
        ax.plot(
            sizes,
            np.asarray(projected, dtype=float),
            marker="s",
            markersize=4,
            linestyle="--",
            color=FIT_COLOR,
            label=projected_label,
        )
    _log_batch_axes(ax, "Time to result (s)")
    ax.legend(loc="upper right")
    return ax


def plot_step_time(ax: Axes, batch_sizes: ArrayLike, seconds: ArrayLike) -> Axes:
    """Seconds per training step against batch size, with the linear-in-B reference."""
    sizes = np.asarray(batch_sizes, dtype=float)
    values = np.asarray(seconds, dtype=float) * 1e3
    ax.plot(sizes, values, marker="o", color=DATA_COLOR, label="measured (median)")
    ax.plot(
        sizes,
        values[-1] * sizes / sizes[-1],
        linestyle=":",
        color=REFERENCE_COLOR,
        label="proportional to batch size",
    )
    _log_batch_axes(ax, "Step time (ms)")
    ax.legend(loc="upper left")
    return ax


def time_figure(
    analysis: StudyAnalysis, meta: Mapping[str, Any], cost: DataParallelCost
) -> Figure | None:
    """Step time and time to result, measured and projected onto ``cost.devices`` devices."""
    times = meta.get("step_times") or {}
    steps = analysis.winners["steps"]
    # Reached after a positive number of steps: a goal met before training has no time.
    sizes = [b for b in _sorted_sizes(times) if b in steps.index and steps[b] > 0]
    if not sizes:
        return None
    all_sizes = _sorted_sizes(times)
    all_seconds = [times[str(b)]["median"] for b in all_sizes]
    seconds = [times[str(b)]["median"] for b in sizes]
    reached = [float(steps[b]) for b in sizes]
    figure = Figure(figsize=(7.2, 3.4), layout="constrained")
    left, right = figure.subplots(1, 2)
    plot_step_time(left, all_sizes, all_seconds)
    projected = projected_time_to_result(sizes, reached, all_sizes, all_seconds, cost)
    plot_time_to_result(
        right,
        sizes,
        time_to_result(reached, seconds),
        projected,
        f"{cost.devices} devices (projected)",
    )
    return figure


def plot_replicates(
    ax: Axes,
    batch_sizes: ArrayLike,
    raw_steps: ArrayLike,
    median: ArrayLike,
    low: ArrayLike,
    high: ArrayLike,
    seeds: int,
) -> Axes:
    """The raw curve (best of many trials) beside the winners' replicated median and range."""
    sizes = np.asarray(batch_sizes, dtype=float)
    ax.fill_between(
        sizes,
        np.asarray(low, dtype=float),
        np.asarray(high, dtype=float),
        color=FIT_COLOR,
        alpha=0.18,
        linewidth=0,
        label=f"replicates: min to max ({seeds} seeds)",
    )
    ax.plot(sizes, np.asarray(median, dtype=float), marker="s", color=FIT_COLOR,
            markersize=4, label="replicates: median")  # fmt: skip
    ax.plot(sizes, np.asarray(raw_steps, dtype=float), marker="o", color=DATA_COLOR,
            label="best trial of the search")  # fmt: skip
    _log_batch_axes(ax, "Steps to result")
    ax.legend(loc="upper right")
    return ax


def replicate_summary(meta: Mapping[str, Any]) -> dict[int, tuple[float, float, float, int]]:
    """Per batch size: median, min and max steps of the replicates that reached, and seeds."""
    summary = {}
    for size in _sorted_sizes(meta.get("replicates") or {}):
        steps = meta["replicates"][str(size)].get("steps", [])
        reached = [float(s) for s in steps if s is not None]
        if not reached:
            continue
        padded = sorted(reached + [math.inf] * (len(steps) - len(reached)))
        middle = len(padded) // 2
        median = padded[middle] if len(padded) % 2 else (padded[middle - 1] + padded[middle]) / 2
        summary[size] = (median, min(reached), max(reached), len(steps))
    return summary


def replicates_figure(analysis: StudyAnalysis, meta: Mapping[str, Any]) -> Figure | None:
    """The replicated curve with its band beside the raw one."""
    summary = {b: v for b, v in replicate_summary(meta).items() if math.isfinite(v[0])}
    if not summary:
        return None
    sizes = sorted(summary)
    steps = analysis.winners["steps"]
    figure = Figure(figsize=(6.0, 3.4), layout="constrained")
    plot_replicates(
        figure.add_subplot(),
        sizes,
        [float(steps[b]) for b in sizes],
        [summary[b][0] for b in sizes],
        [summary[b][1] for b in sizes],
        [summary[b][2] for b in sizes],
        max(v[3] for v in summary.values()),
    )
    return figure


def noise_scale_table(
    meta: Mapping[str, Any], b_crit: float | None
) -> list[tuple[int, float, float | None]]:
    """Per batch size: B_simple averaged over the winner's run, and its ratio to B_crit."""
    rows = []
    for size in _sorted_sizes(meta.get("noise_scale") or {}):
        value = meta["noise_scale"][str(size)].get("b_simple")
        if value is None:
            continue
        ratio = None if b_crit is None else float(value) / b_crit
        rows.append((size, float(value), ratio))
    return rows


def noise_scale_figure(analysis: StudyAnalysis, meta: Mapping[str, Any]) -> Figure | None:
    """B_simple over each winner's training run, and its average beside the fitted B_crit."""
    traces = meta.get("noise_scale") or {}
    # A B_crit pinned at the edge of its searched range is no value to compare with.
    b_crit = None if analysis.fit is None else analysis.fit.located_b_crit
    rows = noise_scale_table(meta, b_crit)
    if not rows:
        return None
    figure = Figure(figsize=(7.2, 3.4), layout="constrained")
    left, right = figure.subplots(1, 2)
    for size in _sorted_sizes(traces):
        points = [p for p in traces[str(size)]["points"] if p.get("b_simple") is not None]
        if points:
            left.plot([max(p["step"], 1) for p in points], [p["b_simple"] for p in points],
                      label=f"B = {size}")  # fmt: skip
    format_step_axis(left)
    left.set_yscale("log")
    format_value_axis(left)
    left.set_xlabel("Step")
    left.set_ylabel("B_simple (examples, running estimate)")
    # Below the axes: inside, the legend hides part of some curve.
    left.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=3, fontsize=6.5)
    sizes = [row[0] for row in rows]
    right.plot(sizes, [row[1] for row in rows], marker="o", color=DATA_COLOR,
               label="B_simple, averaged over training")  # fmt: skip
    if b_crit is not None:
        right.axhline(b_crit, color=FIT_COLOR, linestyle="--",
                      label=f"fitted B_crit = {b_crit:.3g}")  # fmt: skip
    right.set_xscale("log", base=2)
    right.set_yscale("log")
    format_batch_axis(right)
    # Plain numbers on the log axis, minor ticks labelled only where few powers of ten show.
    format_value_axis(right)
    right.set_xlabel("Batch size of the winner measured")
    right.set_ylabel("B_simple and B_crit (examples)")
    right.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=1)
    return figure


def nqm_overlay_figure(analysis: StudyAnalysis, meta: Mapping[str, Any]) -> Figure | None:
    """On the ``nqm`` workload: the closed-form prediction with the measured curve on top."""
    if meta.get("workload") != "nqm":
        return None
    from batchscale.analysis.nqm import predicted_curve
    from batchscale.report.nqm_figures import plot_nqm_prediction

    steps = analysis.winners["steps"].dropna()
    steps = steps[steps > 0]  # a goal met before training is off the log axes
    if steps.empty:
        return None
    optimizer: Literal["sgd", "momentum"] = "sgd" if meta.get("optimizer") == "sgd" else "momentum"
    prediction = predicted_curve(
        [int(b) for b in analysis.winners.index], optimizer=optimizer, target=analysis.target
    )
    figure = Figure(figsize=(6.0, 3.6), layout="constrained")
    plot_nqm_prediction(
        figure.add_subplot(),
        [prediction],
        measured={int(b): float(s) for b, s in steps.items()},
        measured_label=f"measured ({meta.get('optimizer')})",
    )
    return figure
