"""Figures of the noisy quadratic model's predicted steps-to-result curves.

Like the report's other figures, ``plot_nqm_prediction`` draws on an Axes the caller owns and
``nqm_figure`` builds a ``matplotlib.figure.Figure`` directly (no pyplot, no global state).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from batchscale.analysis.nqm import NQMPrediction
from batchscale.report.figures import REFERENCE_COLOR


def plot_nqm_prediction(
    ax: Axes,
    predictions: Sequence[NQMPrediction],
    *,
    measured: Mapping[int, float] | None = None,
    measured_label: str = "measured",
) -> Axes:
    """Predicted steps to result against batch size, one line per prediction (log-log).

    A dotted line of slope -1 through each curve's smallest batch size marks perfect scaling.
    ``measured`` (batch size -> steps to result, e.g. a study on the ``nqm`` workload) is
    overlaid as points.
    """
    drawn_reference = False
    for prediction in predictions:
        pairs = [
            (p.batch_size, float(p.steps_to_result))
            for p in prediction.points
            if p.steps_to_result  # not None, and not 0 (met before training: off a log axis)
        ]
        if not pairs:
            continue
        sizes, steps = [size for size, _ in pairs], [step for _, step in pairs]
        label = prediction.optimizer + (
            f", P = H^-{prediction.gamma:g}" if prediction.gamma else ""
        )
        (line,) = ax.plot(sizes, steps, marker="o", markersize=3, label=f"{label} (predicted)")
        # Perfect scaling: the smallest batch size's examples, spread over larger batches.
        ideal = [steps[0] * sizes[0] / size for size in sizes]
        ax.plot(sizes, ideal, linestyle=":", color=line.get_color(), linewidth=1)
        drawn_reference = True
    if drawn_reference:
        # One entry in a neutral colour stands for every curve's own dotted line.
        ax.plot(
            [],
            [],
            linestyle=":",
            color=REFERENCE_COLOR,
            linewidth=1,
            label="perfect scaling (dotted, in each curve's colour)",
        )
    if measured:
        sizes = sorted(measured)
        ax.plot(
            sizes,
            [measured[size] for size in sizes],
            linestyle="none",
            marker="s",
            color="black",
            label=measured_label,
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("steps to result")
    if predictions:
        first = predictions[0]
        ax.set_title(
            f"Noisy quadratic model: d = {first.dims}, E[loss] < {first.target:g}", fontsize=10
        )
    ax.legend(fontsize=8)
    return ax


def nqm_figure(
    predictions: Sequence[NQMPrediction], *, measured: Mapping[int, float] | None = None
) -> Figure:
    """A one-panel figure of ``plot_nqm_prediction``."""
    figure = Figure(figsize=(5.5, 4.0), layout="constrained")
    plot_nqm_prediction(figure.add_subplot(), predictions, measured=measured)
    return figure
