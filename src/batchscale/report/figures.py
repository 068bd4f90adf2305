"""Figures of a study. Every ``plot_*`` function draws on an Axes the caller owns, so users can
compose them into their own figures; the ``*_figure`` functions compose them into the report's.

The report's figures are built on ``matplotlib.figure.Figure`` directly, never through pyplot,
so making a report changes no global matplotlib state and needs no display.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps, rc_context
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator
from matplotlib.transforms import blended_transform_factory
from matplotlib.typing import RcKeyType
from numpy.typing import ArrayLike, NDArray

from batchscale.analysis.analyze import StudyAnalysis
from batchscale.analysis.budgets import stopped_within_budget
from batchscale.analysis.scaling import Regimes, ScalingFit
from batchscale.analysis.winners import OUTCOMES
from batchscale.search import SearchSpace

# Print-friendly sizes: a figure is read at about the width of a column or a page.
STYLE: dict[RcKeyType, Any] = {
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 7.5,
    "legend.framealpha": 0.9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "grid.linewidth": 0.5,
    "lines.linewidth": 1.4,
    "lines.markersize": 5,
    "savefig.dpi": 200,
    # SVG element ids come from a hash; a fixed salt makes them the same on every run.
    "svg.hashsalt": "batchscale",
}

REGIME_COLORS = {
    "perfect scaling": "#d8ecd3",
    "diminishing returns": "#fbe7c6",
    "maximal data parallelism": "#e4def0",
}
OUTCOME_STYLES: dict[str, dict[str, Any]] = {
    "reached": {"marker": "o", "color": "#2166ac", "label": "reached goal"},
    "missed": {"marker": "o", "color": "#9e9e9e", "label": "missed goal", "facecolor": "none"},
    "diverged": {"marker": "x", "color": "#d6604d", "label": "diverged"},
    "pruned": {"marker": "^", "color": "#e08214", "label": "pruned", "facecolor": "none"},
    "incomplete": {
        "marker": "s",
        "color": "#9e9e9e",
        "label": "stopped early (incomplete)",
        "facecolor": "none",
    },
}
DATA_COLOR = "#1f3b73"
FIT_COLOR = "#c0392b"
REFERENCE_COLOR = "#555555"
UNREACHED_COLOR = "#c0392b"
# The legend entry for the perfect-scaling lines drawn in each curve's colour.
PERFECT_SCALING_EACH = "perfect scaling (dashed, each curve's colour)"


@contextmanager
def paper_style() -> Iterator[None]:
    """The report's matplotlib settings, for figures made inside the block."""
    with rc_context(STYLE):
        yield


def _power_of_two(value: float, _position: int) -> str:
    exponent = math.log2(value) if value > 0 else math.nan
    if math.isfinite(exponent) and abs(exponent - round(exponent)) < 1e-9:
        return f"$2^{{{round(exponent)}}}$"
    return ""


def _b_crit_label(fit: ScalingFit) -> str:
    if fit.b_crit_at_bound:
        return f"$B_{{crit}}$ {fit.b_crit_text()}"
    return f"$B_{{crit}}$={figure_number(fit.b_crit)}"


def format_batch_axis(ax: Axes, max_labels: int = 12) -> None:
    """A log2 batch-size x axis with ticks labelled 2^k, as in the paper's figures.

    ``max_labels`` bounds the number of labelled ticks (narrow panels want fewer).
    """
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(LogLocator(base=2, numticks=max_labels))
    ax.xaxis.set_major_formatter(FuncFormatter(_power_of_two))
    # Between powers of two, unlabelled minor ticks only clutter.
    ax.xaxis.set_minor_locator(NullLocator())


def figure_number(value: float) -> str:
    """A compact label: ``321``, ``0.0452``, or mathtext ``1.52\\times10^{4}`` far from 1."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    exponent = math.floor(math.log10(abs(value)))
    if 2 <= exponent < 4:
        return f"{value:.0f}"
    if -3 <= exponent < 2:
        return f"{value:.3g}"
    mantissa = value / 10**exponent
    return f"${mantissa:.3g}\\times10^{{{exponent}}}$"


def _plain(value: float, _position: int) -> str:
    if value <= 0:
        return ""
    return f"{value:,.0f}" if value >= 1 else f"{value:.2g}"


def format_value_axis(ax: Axes) -> None:
    """Plain numbers (``40``, ``200``) on a log y axis; minor ticks labelled on short ranges.

    Call after the limits are final. Where fewer than two powers of ten fall inside, the 2x and
    5x minor ticks get labels too; a range narrower than 2.5x is widened about its middle so
    that at least one of 1, 2 or 5 times a power of ten falls inside (two labels of a finer
    grid would round to the same text).
    """
    low, high = ax.get_ylim()
    if high / low < 2.5:
        middle = math.sqrt(low * high)
        low, high = middle / 1.6, middle * 1.6
        ax.set_ylim(low, high)
    ax.yaxis.set_major_formatter(FuncFormatter(_plain))
    powers_inside = math.floor(math.log10(high)) - math.ceil(math.log10(low)) + 1
    # Where the data run well past the last labelled tick, stretch the axis to the next one,
    # so that labels bracket every point (a point at 0.03 under a lowest label of 0.05 cannot
    # be read off the axis).
    steps, far = ((1.0, 2.0, 5.0), 1.5) if powers_inside < 2 else ((1.0,), 3.0)
    below = _labelled_tick(low, steps, down=True)
    above = _labelled_tick(high, steps, down=False)
    first = _labelled_tick(low, steps, down=False)
    last = _labelled_tick(high, steps, down=True)
    if first / low > far:
        low = below
    if high / last > far:
        high = above
    ax.set_ylim(low, high)
    if powers_inside < 2:
        ax.yaxis.set_minor_locator(LogLocator(base=10, subs=(2.0, 5.0)))
        ax.yaxis.set_minor_formatter(FuncFormatter(_plain))
    else:
        ax.yaxis.set_minor_formatter(NullFormatter())


def format_step_axis(ax: Axes) -> None:
    """A log step x axis labelled in plain numbers (``1``, ``10``, ``1,000``), not powers of ten.

    Steps are counts that readers compare with the tables' steps to result.
    """
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10))
    ax.xaxis.set_major_formatter(FuncFormatter(_plain))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _labelled_tick(value: float, steps: Sequence[float], *, down: bool) -> float:
    """The nearest value of the form s * 10^k (s in ``steps``) at or below (or above) ``value``."""
    exponent = math.floor(math.log10(value))
    candidates = sorted(
        step * 10.0**power for power in (exponent - 1, exponent, exponent + 1) for step in steps
    )
    if down:
        return max(c for c in candidates if c <= value * (1 + 1e-9))
    return min(c for c in candidates if c >= value * (1 - 1e-9))


def legend_columns(figure: Figure, handles: Sequence[Any]) -> int:
    """Columns for a legend below ``figure``: as many as fit its width, so none is cut off."""
    longest = max(len(str(handle.get_label())) for handle in handles)
    # About 0.065 in per character at the legend's size, plus the marker and the gaps.
    entry = 0.065 * longest + 0.5
    return max(1, min(len(handles), int(figure.get_figwidth() // entry)))


def _finite(
    batch_sizes: ArrayLike, values: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.bool_]]:
    """Batch sizes, values (missing as NaN) and which pairs are finite and positive."""
    sizes = np.asarray(batch_sizes, dtype=float)
    numbers = pd.Series(values, dtype="Float64").to_numpy(dtype=float, na_value=np.nan)
    keep = np.isfinite(sizes) & np.isfinite(numbers) & (numbers > 0)
    return sizes, numbers, keep


def shade_regimes(ax: Axes, regimes: Regimes) -> list[Patch]:
    """Shade the measured regimes, only across the batch sizes that reached the goal (nothing
    is known of the regime beyond them); returns legend handles."""
    if not regimes.slopes:
        return []
    start, end = regimes.batch_sizes[0], regimes.batch_sizes[-1]
    first = regimes.perfect_until if regimes.perfect_until is not None else start
    last = regimes.maximal_from if regimes.maximal_from is not None else end
    spans = []
    if regimes.perfect_until is not None:
        spans.append(("perfect scaling", start, regimes.perfect_until))
    if first < last:
        spans.append(("diminishing returns", first, last))
    if regimes.maximal_from is not None:
        spans.append(("maximal data parallelism", regimes.maximal_from, end))
    handles = []
    for name, start, stop in spans:
        ax.axvspan(start, stop, color=REGIME_COLORS[name], zorder=0, linewidth=0)
        handles.append(Patch(color=REGIME_COLORS[name], label=name))
    return handles


def _log_padded_limits(values: NDArray[np.float64], factor: float = 1.4) -> tuple[float, float]:
    return float(values.min()) / factor, float(values.max()) * factor


def plot_steps_to_result(
    ax: Axes,
    batch_sizes: ArrayLike,
    steps: ArrayLike,
    *,
    fit: ScalingFit | None = None,
    regimes: Regimes | None = None,
    perfect_scaling: bool = True,
    examples: bool = False,
    label: str = "measured",
    color: str = DATA_COLOR,
    legend: bool = True,
    budgets: ArrayLike | None = None,
) -> None:
    """Steps (or, with ``examples``, examples) to result against batch size on log-log axes.

    Draws the perfect-scaling reference through the smallest reached batch size, the fitted
    S(B) = S_min (1 + B_crit / B) (or E(B) = E_min (1 + B / B_crit)) with B_crit marked, and
    the measured regimes shaded. A batch size that never reached the goal gets an upward
    marker at its step budget where ``budgets`` (steps per batch size, aligned with
    ``batch_sizes``) gives it, else at the top of the axes.
    """
    sizes, counts, keep = _finite(batch_sizes, steps)
    values = counts * sizes if examples else counts
    format_batch_axis(ax)
    ax.set_yscale("log")
    low, high = _log_padded_limits(sizes, 1.25)
    ax.set_xlim(low, high)
    handles: list[Any] = []
    if keep.any():
        (line,) = ax.plot(
            sizes[keep], values[keep], "o-", color=color, label=label, zorder=3, markersize=4.5
        )
        handles.append(line)
    grid = np.geomspace(low, high, 200)
    if perfect_scaling and keep.any():
        anchor_b, anchor_s = sizes[keep][0], counts[keep][0]
        ideal = anchor_s * anchor_b / grid
        (reference,) = ax.plot(
            grid,
            ideal * grid if examples else ideal,
            linestyle=(0, (4, 3)),
            color=REFERENCE_COLOR,
            linewidth=1.0,
            label="perfect scaling",
            zorder=2,
        )
        handles.append(reference)
    if fit is not None:
        predicted = fit.predict(grid)
        (fitted,) = ax.plot(
            grid,
            predicted * grid if examples else predicted,
            color=FIT_COLOR,
            linewidth=1.2,
            label=(
                f"fit: $S_{{min}}$={figure_number(fit.s_min)}, {_b_crit_label(fit)}"
                if not examples
                else f"fit: $E_{{min}}$={figure_number(fit.e_min)}, {_b_crit_label(fit)}"
            ),
            zorder=2,
        )
        handles.append(fitted)
        if low <= fit.b_crit <= high:
            marker = ax.axvline(
                fit.b_crit,
                color=FIT_COLOR,
                linestyle=":",
                linewidth=1.0,
                zorder=1,
                label="$B_{crit}$",
            )
            handles.append(marker)
    unreached = ~keep & (values != 0)
    shown = values[keep]
    limit = None if budgets is None else np.asarray(budgets, dtype=float)
    if limit is not None and limit.shape == sizes.shape and np.isfinite(limit[unreached]).all():
        # At each batch size's budget, pointing up: the goal lies somewhere beyond it.
        ceiling = limit[unreached] * (sizes[unreached] if examples else 1.0)
        unit = "examples" if examples else "steps"
        same = len(set(ceiling.tolist())) == 1
        (drawn,) = ax.plot(
            sizes[unreached],
            ceiling,
            linestyle="none",
            marker="^",
            color=UNREACHED_COLOR,
            markerfacecolor="none",
            label=(
                f"goal not reached within {int(ceiling[0]):,} {unit}"
                if same and len(ceiling)
                else f"goal not reached within the budget (marked at each batch size's {unit})"
            ),
            zorder=4,
        )
        if len(ceiling):
            handles.append(drawn)
        shown = np.concatenate([shown, ceiling])
        unreached = np.zeros_like(unreached)
    # Batch sizes that have no place on the log axis, marked at its edge.
    edge = blended_transform_factory(ax.transData, ax.transAxes)
    for where, height, symbol, face, label in (
        (values == 0, 0.03, "^", "none", "met before training"),
        (unreached, 0.97, "v", UNREACHED_COLOR, "goal not reached"),
    ):
        off_axis = sizes[where]
        if len(off_axis):
            (drawn,) = ax.plot(
                off_axis,
                np.full(len(off_axis), height),
                linestyle="none",
                marker=symbol,
                color=UNREACHED_COLOR,
                markerfacecolor=face,
                transform=edge,
                clip_on=False,
                label=label,
                zorder=4,
            )
            handles.append(drawn)
    if regimes is not None:
        handles += shade_regimes(ax, regimes)
    if len(shown):
        # Room above and below the data, so the markers and the legend do not collide.
        ax.set_ylim(shown.min() / 2.5, shown.max() * 2.5)
    else:
        # Nothing measured: an axis with numbers would read as if a marker at its top were a
        # count of steps.
        ax.yaxis.set_major_formatter(NullFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
    if len(shown):
        format_value_axis(ax)
    ax.set_xlabel("Batch size")
    ax.set_ylabel("Examples to result" if examples else "Steps to result")
    if legend:
        # Beside the axes: inside, some study's points or the unreached markers end up under it.
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)


def plot_winner_metaparameter(
    ax: Axes,
    batch_sizes: ArrayLike,
    values: ArrayLike,
    *,
    ylabel: str,
    references: bool = True,
    color: str = DATA_COLOR,
) -> list[Line2D]:
    """One winning metaparameter against batch size (log-log), with scaling references.

    The references start at the smallest batch size with a winner: linear scaling (value
    proportional to B) and square-root scaling (proportional to sqrt B). Returns the lines
    drawn, for a shared legend.
    """
    sizes, numbers, keep = _finite(batch_sizes, values)
    format_batch_axis(ax, max_labels=7)
    ax.set_yscale("log")
    (line,) = ax.plot(sizes[keep], numbers[keep], "o-", color=color, label="winner", zorder=3)
    lines = [line]
    if references and keep.any():
        grid = np.geomspace(sizes[keep].min(), sizes[keep].max(), 100)
        anchor_b, anchor_v = sizes[keep][0], numbers[keep][0]
        (linear,) = ax.plot(
            grid,
            anchor_v * grid / anchor_b,
            linestyle=(0, (4, 3)),
            color=REFERENCE_COLOR,
            linewidth=1.0,
            label="linear scaling",
        )
        (root,) = ax.plot(
            grid,
            anchor_v * np.sqrt(grid / anchor_b),
            linestyle=":",
            color=REFERENCE_COLOR,
            linewidth=1.2,
            label="square-root scaling",
        )
        lines += [linear, root]
    ax.set_xlabel("Batch size")
    ax.set_ylabel(ylabel)
    format_value_axis(ax)
    return lines


def plot_trial_outcomes(
    ax: Axes,
    x: ArrayLike,
    y: ArrayLike,
    outcomes: Sequence[str],
    *,
    winner: int | None = None,
) -> None:
    """Trials of one batch size as points in (x, y), marked by outcome, the winner starred.

    ``winner`` is the position of the winning trial in ``x``/``y``. Outcomes are those of
    ``batchscale.analysis.trial_outcomes``.
    """
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    labels = np.asarray(outcomes)
    for outcome in OUTCOMES:
        style = OUTCOME_STYLES[outcome]
        mask = labels == outcome
        if not mask.any():
            continue
        # Unfilled markers ('x') take one colour; the others an edge and a face.
        colours = (
            {"color": style["color"]}
            if style["marker"] == "x"
            else {
                "facecolors": style.get("facecolor", style["color"]),
                "edgecolors": style["color"],
            }
        )
        ax.scatter(
            xs[mask],
            ys[mask],
            marker=style["marker"],
            s=18,
            linewidths=0.9,
            label=style["label"],
            zorder=3,
            **colours,
        )
    if winner is not None:
        ax.scatter(
            xs[winner],
            ys[winner],
            marker="*",
            s=130,
            facecolors="#ffd400",
            edgecolors="black",
            linewidths=0.7,
            zorder=4,
            label="winner",
        )


def plot_validation_curves(
    ax: Axes,
    curves: Mapping[int, tuple[ArrayLike, ArrayLike]],
    *,
    target: float,
    ylabel: str,
    colorbar: bool = True,
    stop_goal: float | None = None,
    stop_label: str = "goal trials stopped at",
) -> None:
    """Validation metric against step for each batch size's winner, coloured by batch size.

    ``curves`` maps a batch size to (steps, values). Step 0 is left out (log x axis).
    ``stop_goal``, where it differs from ``target``, is drawn as the line trials stopped at.
    Without curves the axes say so in words rather than show an empty frame.
    """
    sizes = sorted(curves)
    if not sizes:
        ax.text(
            0.5,
            0.5,
            "No trial reached the goal:\nno winner's curve to show",
            transform=ax.transAxes,
            ha="center",
            va="center",
            color=REFERENCE_COLOR,
        )
        ax.set_axis_off()
        return
    norm = LogNorm(vmin=min(sizes), vmax=max(sizes) if max(sizes) > min(sizes) else min(sizes) * 2)
    cmap = colormaps["viridis"]
    every: list[float] = []
    for size in sizes:
        steps, values = (np.asarray(v, dtype=float) for v in curves[size])
        keep = steps > 0
        every += list(values[keep])
        ax.plot(steps[keep], values[keep], color=cmap(norm(size)), linewidth=1.1)
    ax.axhline(target, color=FIT_COLOR, linestyle=(0, (4, 3)), linewidth=1.0, label="goal")
    if stop_goal is not None and stop_goal != target:
        ax.axhline(stop_goal, color=REFERENCE_COLOR, linestyle=":", linewidth=1.2, label=stop_label)
    if every:  # a log axis needs a point past step 0 (winners at step 0 have none)
        format_step_axis(ax)
    finite = np.asarray([v for v in every if math.isfinite(v) and v > 0])
    if len(finite) and finite.max() / max(finite.min(), 1e-300) > 10:
        ax.set_yscale("log")
    ax.set_xlabel("Step")
    ax.set_ylabel(ylabel)
    ax.legend(loc="upper right")
    if colorbar and ax.figure is not None:
        mappable = ScalarMappable(norm=norm, cmap=cmap)
        bar = ax.figure.colorbar(mappable, ax=ax, pad=0.02, aspect=30)
        bar.set_label("Batch size")
        bar.ax.yaxis.set_major_locator(LogLocator(base=2, numticks=30))
        bar.ax.yaxis.set_major_formatter(FuncFormatter(_power_of_two))
        # Tick marks at 20, 30, ... between the powers of two would read as batch sizes.
        bar.minorticks_off()


def plot_best_metric(
    ax: Axes,
    batch_sizes: ArrayLike,
    values: ArrayLike,
    *,
    target: float,
    ylabel: str,
    title: str,
    bounded: ArrayLike | None = None,
    stop_goal: float | None = None,
    goal_label: str = "goal",
    stop_label: str = "goal trials stopped at",
) -> None:
    """The best validation metric each batch size reached under one budget, with the goal.

    ``bounded`` marks the values that are only bounds because some trial stopped (at a goal,
    or pruned) inside the budget: drawn hollow. ``stop_goal``, where it differs from
    ``target``, is the goal trials stopped at, drawn as its own line.
    """
    sizes = np.asarray(batch_sizes, dtype=float)
    numbers = pd.Series(values, dtype="Float64").to_numpy(dtype=float, na_value=np.nan)
    keep = np.isfinite(numbers)
    hollow = (
        np.zeros(len(sizes), dtype=bool) if bounded is None else np.asarray(bounded, dtype=bool)
    )
    format_batch_axis(ax)
    ax.plot(sizes[keep], numbers[keep], "-", color=DATA_COLOR, zorder=2)
    for mask, face, label in (
        (keep & ~hollow, DATA_COLOR, "best trial"),
        (keep & hollow, "white", "bound: a trial stopped within the budget"),
    ):
        if mask.any():
            ax.plot(
                sizes[mask],
                numbers[mask],
                linestyle="none",
                marker="o",
                color=DATA_COLOR,
                markerfacecolor=face,
                label=label,
                zorder=3,
            )
    ax.axhline(target, color=FIT_COLOR, linestyle=(0, (4, 3)), linewidth=1.0, label=goal_label)
    if stop_goal is not None and stop_goal != target:
        ax.axhline(
            stop_goal,
            color=REFERENCE_COLOR,
            linestyle=":",
            linewidth=1.2,
            label=stop_label,
        )
    ax.set_xlabel("Batch size")
    ax.set_ylabel(ylabel)
    ax.set_title(title)


def common_start(curves: Mapping[str, tuple[ArrayLike, ArrayLike]]) -> float | None:
    """The smallest batch size at which every curve that reached the goal anywhere reached it,
    or ``None`` where they share none."""
    reached = []
    for batch_sizes, steps in curves.values():
        sizes, _, keep = _finite(batch_sizes, steps)
        if keep.any():
            reached.append(set(sizes[keep].tolist()))
    shared = set.intersection(*reached) if reached else set()
    return min(shared) if shared else None


def plot_comparison(
    ax: Axes,
    curves: Mapping[str, tuple[ArrayLike, ArrayLike]],
    *,
    normalise: bool = False,
    legend: bool = True,
) -> None:
    """Several studies' steps to result on one log-log plot, optionally normalised.

    ``curves`` maps a label to (batch sizes, steps). With ``normalise`` each curve is divided
    by its steps at the smallest batch size every curve reached (``common_start``), where all
    start at 1 and one perfect-scaling line serves them all. Where they share no such batch
    size, each is divided by its steps at its own smallest reached batch size, as the paper
    compares workloads, and perfect scaling is drawn from each curve's own start. A study that
    reached the goal nowhere is named in the legend as such.
    """
    cmap = colormaps["tab10"]
    markers = "osD^vP*Xh<>"
    common = common_start(curves) if normalise else None
    drawn_reference = False
    span: list[float] = []
    format_batch_axis(ax)
    ax.set_yscale("log")
    for index, (label, (batch_sizes, steps)) in enumerate(curves.items()):
        color = cmap(index % 10)
        sizes, counts, keep = _finite(batch_sizes, steps)
        if not keep.any():
            ax.plot([], [], linestyle="none", color=color, label=f"{label} (goal not reached)")
            continue
        reached, values = sizes[keep], counts[keep]
        span += [float(reached[0]), float(reached[-1])]
        if normalise:
            start = common if common is not None else reached[0]
            values = values / values[reached == start][0]
        ax.plot(
            reached,
            values,
            marker=markers[index % len(markers)],
            markersize=4,
            color=color,
            label=label,
        )
        if normalise and common is None and len(reached) > 1:
            grid = np.geomspace(reached[0], reached[-1], 50)
            ax.plot(
                grid,
                reached[0] / grid,
                linestyle=(0, (4, 3)),
                color=color,
                linewidth=0.8,
                alpha=0.7,
                label="_nolegend_",
            )
            drawn_reference = True
    if common is not None and min(span) < max(span):
        grid = np.geomspace(min(span), max(span), 50)
        ax.plot(
            grid,
            common / grid,
            linestyle=(0, (4, 3)),
            color=REFERENCE_COLOR,
            linewidth=0.8,
            label="perfect scaling",
        )
    if drawn_reference:
        # One entry in a neutral colour stands for every curve's own reference line.
        ax.plot(
            [],
            [],
            linestyle=(0, (4, 3)),
            color=REFERENCE_COLOR,
            linewidth=0.8,
            label=PERFECT_SCALING_EACH,
        )
    ax.set_xlabel("Batch size")
    if not normalise:
        ax.set_ylabel("Steps to result")
    elif common is not None:
        ax.set_ylabel(f"Steps relative to batch size {common:g}")
    else:
        ax.set_ylabel("Steps relative to each curve's first")
    format_value_axis(ax)
    if legend:
        ax.legend(loc="lower left")


# -- the report's figures ----------------------------------------------------------------------


def _metric_label(metric: str) -> str:
    split, _, name = metric.partition("/")
    split_name = {"val": "Validation", "test": "Test", "train": "Training"}.get(split, split)
    return f"{split_name} {name.replace('_', ' ')}" if name else metric


def steps_figure(
    analysis: StudyAnalysis, *, examples: bool = False, step_budgets: pd.Series | None = None
) -> Figure:
    """Steps (or examples) to result with the perfect-scaling line, the fit and the regimes.

    ``step_budgets`` (steps per batch size, see ``batchscale.analysis.step_budgets``) places
    the batch sizes that never reached the goal at their budget.
    """
    figure = Figure(figsize=(6.6, 3.5), layout="constrained")
    ax = figure.add_subplot()
    plot_steps_to_result(
        ax,
        analysis.winners.index.to_numpy(dtype=float),
        analysis.winners["steps"],
        fit=analysis.fit,
        regimes=analysis.regimes,
        examples=examples,
        budgets=None
        if step_budgets is None
        else step_budgets.reindex(analysis.winners.index).to_numpy(dtype=float),
    )
    return figure


def metaparameters_figure(analysis: StudyAnalysis) -> Figure:
    """The winners' learning rate, 1 - momentum and effective learning rate against B."""
    winners = analysis.winners
    panels = [("learning_rate", "Learning rate")]
    if "momentum" in winners.columns:
        panels.append(("one_minus_momentum", "1 − momentum"))
        panels.append(("effective_learning_rate", "Effective learning rate"))
    figure = Figure(figsize=(2.45 * len(panels) + 0.3, 2.9), layout="constrained")
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    sizes = winners.index.to_numpy(dtype=float)
    lines: list[Line2D] = []
    for ax, (column, label) in zip(axes, panels, strict=True):
        if column == "one_minus_momentum":
            values = 1.0 - winners["momentum"].astype(float)
            plot_winner_metaparameter(ax, sizes, values, ylabel=label, references=False)
        else:
            lines = plot_winner_metaparameter(ax, sizes, winners[column], ylabel=label)
    figure.legend(handles=lines, loc="outside lower center", ncols=legend_columns(figure, lines))
    return figure


def trial_outcomes_figure(
    analysis: StudyAnalysis,
    trials: pd.DataFrame,
    search_space: SearchSpace | None = None,
    best_values: pd.Series | None = None,
) -> Figure:
    """Small multiples: every trial of each batch size in (learning rate, 1 - momentum).

    Without a momentum column (plain SGD) the y axis is each trial's best validation metric
    from ``best_values`` (indexed by batch size and trial id). Axis limits follow the search
    space when given, so a winner at the edge of the range shows as one.
    """
    sizes = analysis.batch_sizes
    columns = min(5, len(sizes))
    rows = math.ceil(len(sizes) / columns)
    figure = Figure(figsize=(1.75 * columns + 0.4, 1.65 * rows + 0.6), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False, sharex=True, sharey=True)
    has_momentum = "momentum" in trials.columns
    log_y = has_momentum
    if not has_momentum:
        assert best_values is not None, "plain SGD needs best_values for the y axis"
        metric = best_values.to_numpy(dtype=float)
        metric = metric[np.isfinite(metric)]
        # A log axis only for positive values spread over a decade or more (an accuracy of
        # 0.9 to 0.99, or a log-likelihood below 0, would lose its ticks or its points).
        log_y = bool(len(metric)) and metric.min() > 0 and metric.max() >= 10 * metric.min()
    outcomes = analysis.outcomes
    for ax in axes.flat[len(sizes) :]:
        ax.set_visible(False)
    for ax, size in zip(axes.flat, sizes, strict=False):
        at_size = trials.xs(size, level="batch_size")
        x = at_size["learning_rate"].to_numpy(dtype=float)
        if has_momentum:
            y = 1.0 - at_size["momentum"].to_numpy(dtype=float)
        else:
            assert best_values is not None
            y = best_values.xs(size, level="batch_size").reindex(at_size.index).to_numpy(float)
        labels = outcomes.xs(size, level="batch_size").reindex(at_size.index).fillna("missed")
        winner_id = analysis.winners.loc[size, "trial_id"]
        winner = None if pd.isna(winner_id) else int(at_size.index.get_loc(int(winner_id)))
        plot_trial_outcomes(ax, x, y, list(labels), winner=winner)
        ax.set_title(f"B = {size}", pad=3)
        ax.set_xscale("log")
        ax.set_yscale("log" if log_y else "linear")
        ax.grid(False)
        # Minor ticks add nothing to a scatter of points and dominate the drawing time.
        ax.minorticks_off()
    first = axes[0, 0]
    if search_space is not None and "learning_rate" in search_space.names:
        dim = search_space["learning_rate"]
        if dim.low is not None and dim.high is not None:
            first.set_xlim(dim.low / 1.5, dim.high * 1.5)
    if has_momentum and search_space is not None and "momentum" in search_space.names:
        dim = search_space["momentum"]
        if dim.low is not None and dim.high is not None:
            first.set_ylim((1 - dim.high) / 1.5, (1 - dim.low) * 1.5)
    # The lowest visible panel of each column carries the x tick labels and the label: with
    # shared axes only the bottom row would, and its panels past the last batch size are hidden.
    for column in range(columns):
        shown_rows = [row for row in range(rows) if axes[row, column].get_visible()]
        if shown_rows:
            lowest = axes[shown_rows[-1], column]
            lowest.xaxis.set_tick_params(labelbottom=True)
            lowest.set_xlabel("Learning rate")
    metric_name = _metric_label(analysis.metric)
    # Wrapped: a panel is too short for "Best validation classification error" on one line.
    ylabel = (
        "1 − momentum"
        if has_momentum
        else textwrap.fill(f"Best {metric_name[0].lower()}{metric_name[1:]}", 22)
    )
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    handles = [
        Line2D(
            [],
            [],
            linestyle="none",
            marker=style["marker"],
            color=style["color"],
            markerfacecolor=style.get("facecolor", style["color"]),
            label=style["label"],
        )
        for outcome, style in OUTCOME_STYLES.items()
        # Diverged, pruned (never in full mode) and incomplete (only in imported data) are
        # named only where some trial ended so.
        if outcome in ("reached", "missed") or (outcomes == outcome).any()
    ]
    handles.append(
        Line2D(
            [],
            [],
            linestyle="none",
            marker="*",
            markersize=10,
            markerfacecolor="#ffd400",
            markeredgecolor="black",
            label="winner",
        )
    )
    figure.legend(
        handles=handles, loc="outside lower center", ncols=legend_columns(figure, handles)
    )
    return figure


def validation_curves_figure(
    analysis: StudyAnalysis, measurements: pd.DataFrame, *, stop_goal: float | None = None
) -> Figure:
    """The winners' validation curves, one per batch size, with the goal trials stopped at."""
    curves = {}
    for size, trial_id in analysis.winners["trial_id"].items():
        if pd.isna(trial_id):
            continue
        rows = measurements.loc[(size, int(trial_id))]
        curves[int(size)] = (
            rows.index.to_numpy(dtype=float),
            rows[analysis.metric].to_numpy(dtype=float),
        )
    figure = Figure(figsize=(5.2, 3.5), layout="constrained")
    ax = figure.add_subplot()
    sign = ">" if analysis.maximize else "<"
    plot_validation_curves(
        ax,
        curves,
        target=analysis.target,
        ylabel=_metric_label(analysis.metric),
        stop_goal=stop_goal,
        stop_label=f"trials stopped at {sign} {stop_goal:g}" if stop_goal is not None else "",
    )
    return figure


def budgets_figure(
    analysis: StudyAnalysis,
    trials: pd.DataFrame | None = None,
    stop_goal: float | None = None,
) -> Figure:
    """Best validation metric against batch size under a fixed example and a fixed step budget.

    With ``trials`` (a trials table with ``steps`` and ``step_budget``), a value is drawn
    hollow where some trial at that batch size stopped inside the budget (see
    ``stopped_within_budget``). ``stop_goal`` is the goal trials stopped at, if any.
    """
    figure = Figure(figsize=(6.4, 3.3), layout="constrained")
    left, right = figure.subplots(1, 2, sharey=True)
    sizes = analysis.winners.index.to_numpy(dtype=float)
    label = _metric_label(analysis.metric)
    sign = ">" if analysis.maximize else "<"
    bounds: list[NDArray[np.bool_] | None] = [None, None]
    if trials is not None:
        bounds = [
            stopped.reindex(analysis.winners.index, fill_value=False).to_numpy(dtype=bool)
            for stopped in (
                stopped_within_budget(trials, max_examples=analysis.example_budget),
                stopped_within_budget(trials, max_steps=analysis.step_budget),
            )
        ]
    for ax, values, title, ylabel, bounded in (
        (
            left,
            analysis.best_under_examples["value"],
            f"Fixed example budget ({analysis.example_budget:,} examples)",
            f"Best {label[0].lower()}{label[1:]}",
            bounds[0],
        ),
        (
            right,
            analysis.best_under_steps["value"],
            f"Fixed step budget ({analysis.step_budget:,} steps)",
            "",
            bounds[1],
        ),
    ):
        plot_best_metric(
            ax,
            sizes,
            values,
            target=analysis.target,
            ylabel=ylabel,
            title=title,
            bounded=bounded,
            stop_goal=stop_goal,
            goal_label=f"goal {sign} {analysis.target:g}",
            stop_label="" if stop_goal is None else f"trials stopped at {sign} {stop_goal:g}",
        )
    # One legend below both panels: inside, it would cover some batch size's point.
    handles: dict[str, Any] = {}
    for ax in (left, right):
        for handle, text in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(text, handle)
    figure.legend(
        list(handles.values()),
        list(handles),
        loc="outside lower center",
        ncols=legend_columns(figure, list(handles.values())),
    )
    return figure


def comparison_figure(curves: Mapping[str, tuple[ArrayLike, ArrayLike]]) -> Figure:
    """Several studies side by side: raw steps to result, and relative to the smallest B."""
    figure = Figure(figsize=(7.0, 3.5), layout="constrained")
    raw, relative = figure.subplots(1, 2)
    plot_comparison(raw, curves, legend=False)
    plot_comparison(relative, curves, normalise=True, legend=False)
    raw.set_title("Steps to result")
    common = common_start(curves)
    relative.set_title(
        "Normalised to each curve's start" if common is None else f"Normalised at B = {common:g}"
    )
    # One legend below both panels: inside either, it would cover some study's points.
    handles, labels = relative.get_legend_handles_labels()
    figure.legend(
        handles, labels, loc="outside lower center", ncols=legend_columns(figure, handles)
    )
    return figure
