"""The report's figures and pages: files, contents, and figures free of overlapping text."""

from __future__ import annotations

import base64
import itertools
import xml.etree.ElementTree as ElementTree
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.transforms import Bbox

from batchscale.analysis import analyze_store, fit_steps_to_result, regimes, store_search_space
from batchscale.report import figures, write_comparison, write_report
from batchscale.store import StudyStore
from tests.synthetic_study import build_synthetic_store
from tests.tables import measurements_table

FIGURES = (
    "steps_to_result",
    "examples_to_result",
    "winner_metaparameters",
    "trial_outcomes",
    "validation_curves",
    "budgets",
)


class Images(HTMLParser):
    """Collects <img> sources and any reference that would need a network or a script."""

    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "img":
            self.sources.append(values.get("src") or "")
        if tag in {"script", "link", "iframe"}:
            self.external.append(tag)
        for name in ("src", "href"):
            if (values.get(name) or "").startswith(("http:", "https:", "//")):
                self.external.append(values[name] or "")


def drawn_text_boxes(figure: Figure) -> tuple[list[Bbox], list[tuple[Legend, Axes | None]]]:
    """Window extents of every drawn label, tick label and title, and the figure's legends."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    renderer = canvas.get_renderer()
    boxes = []
    legends: list[tuple[Legend, Axes | None]] = [(lg, None) for lg in figure.legends]
    for ax in figure.axes:
        if not ax.get_visible():
            continue
        if ax.get_legend() is not None:
            legends.append((ax.get_legend(), ax))
        for axis, ticks_of in ((ax.xaxis, ax.get_xticklabels), (ax.yaxis, ax.get_yticklabels)):
            low, high = sorted(axis.get_view_interval())
            for which in ("major", "minor"):
                locations = (
                    axis.get_majorticklocs() if which == "major" else axis.get_minorticklocs()
                )
                for location, label in zip(locations, ticks_of(which=which), strict=False):
                    inside = low * (1 - 1e-9) <= location <= high * (1 + 1e-9)
                    if inside and label.get_visible() and label.get_text().strip():
                        boxes.append(label.get_window_extent(renderer))
        for text in (ax.xaxis.label, ax.yaxis.label, ax.title):
            if text.get_visible() and text.get_text().strip():
                boxes.append(text.get_window_extent(renderer))
    return boxes, legends


def assert_readable(figure: Figure) -> None:
    """No two labels overlap, nothing is cut off, and no legend hides a data marker."""
    boxes, legends = drawn_text_boxes(figure)
    canvas_box = figure.bbox
    legend_boxes = [lg.get_window_extent() for lg, _ in legends]
    for box in boxes + legend_boxes:
        assert box.x0 >= canvas_box.x0 - 1 and box.x1 <= canvas_box.x1 + 1, box
        assert box.y0 >= canvas_box.y0 - 1 and box.y1 <= canvas_box.y1 + 1, box
    for first, second in itertools.combinations(boxes + legend_boxes, 2):
        overlap = Bbox.intersection(first, second)
        assert overlap is None or overlap.width * overlap.height < 2.0, (first, second)
    for legend, ax in legends:
        frame = legend.get_window_extent()
        for ax_ in [ax] if ax is not None else figure.axes:
            for line in ax_.get_lines():
                if line.get_marker() in (None, "None", "", " ") or not line.get_visible():
                    continue
                points = line.get_transform().transform(np.asarray(line.get_xydata()))
                assert not any(frame.contains(x, y) for x, y in points), line.get_label()


def test_report_writes_every_figure_as_png_and_svg(synthetic_report: Path) -> None:
    assert synthetic_report.name == "report.html"
    for name in FIGURES:
        png = (synthetic_report.parent / f"{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
        root = ElementTree.parse(synthetic_report.parent / f"{name}.svg").getroot()
        assert root.tag.endswith("svg")


def test_report_page_is_self_contained(synthetic_report: Path) -> None:
    page = synthetic_report.read_text(encoding="utf-8")
    parser = Images()
    parser.feed(page)
    assert parser.external == []
    assert len(parser.sources) == len(FIGURES)
    for name, source in zip(FIGURES, parser.sources, strict=True):
        prefix = "data:image/png;base64,"
        assert source.startswith(prefix)
        embedded = base64.b64decode(source.removeprefix(prefix))
        assert embedded == (synthetic_report.parent / f"{name}.png").read_bytes()


def test_report_page_says_what_the_study_found(synthetic_report: Path) -> None:
    page = synthetic_report.read_text(encoding="utf-8")
    for heading in (
        "The scaling fit",
        "Regimes",
        "Design checks",
        "Steps to result per batch size",
        "Goals",
        "Study settings",
        "Software",
    ):
        assert f">{heading}" in page
    assert "synthetic / momentum: steps to val/classification_error &lt; 0.1" in page
    # A raced study: the interval is the least-squares one, and the page says so.
    assert "Intervals: 95%, least-squares covariance. Racing stopped the trials" in page
    assert "not measurable: trials stop at the study&#x27;s goal" in page
    assert "reverse_log" in page and "matplotlib" in page
    # One summary row per batch size, with its steps to result.
    for size in (8, 16, 1024, 4096):
        assert f"<td>{size:,}</td>" in page


def test_report_on_a_trained_study(trained_store: Path, tmp_path: Path) -> None:
    page = write_report(trained_store, tmp_path, goals=[0.6, 0.4], bootstrap_samples=50)
    text = page.read_text(encoding="utf-8")
    assert "nqm / momentum: steps to val/loss &lt; 0.5" in text
    assert "&lt; 0.6" in text and "&lt; 0.4" in text
    assert all((tmp_path / f"{name}.svg").exists() for name in FIGURES)


def test_report_when_no_batch_size_reaches_the_goal(tmp_path: Path) -> None:
    store = build_synthetic_store(tmp_path / "hard.sqlite", batch_sizes=(8, 64), trials=4)
    opened = StudyStore.open(store)
    opened.set_metadata("target", 0.001)
    opened.close()
    page = write_report(store, tmp_path / "out", bootstrap_samples=10)
    text = page.read_text(encoding="utf-8")
    assert "No fit: the goal was reached at fewer than two batch sizes" in text
    assert "no trial reached the goal at batch sizes 8, 64" in text
    assert all((tmp_path / "out" / f"{name}.png").exists() for name in FIGURES)


def test_report_refuses_an_empty_study(tmp_path: Path) -> None:
    empty = StudyStore.create(
        tmp_path / "empty.sqlite",
        {"workload": "w", "metric": "error", "target": 0.1, "maximize": False},
        ["val/error"],
    )
    empty.close()
    with pytest.raises(ValueError, match="no measurements"):
        write_report(tmp_path / "empty.sqlite", tmp_path / "out")


def test_comparison_page(synthetic_store: Path, trained_store: Path, tmp_path: Path) -> None:
    page = write_comparison(
        [synthetic_store, trained_store, synthetic_store], tmp_path, bootstrap_samples=20
    )
    assert page.name == "comparison.html"
    text = page.read_text(encoding="utf-8")
    # The same study twice gets the file name to tell the rows apart.
    assert text.count("synthetic / momentum (synthetic)") >= 2
    assert "nqm / momentum" in text
    parser = Images()
    parser.feed(text)
    assert len(parser.sources) == 1 and parser.external == []
    assert (tmp_path / "comparison.svg").exists()
    with pytest.raises(ValueError, match="labels"):
        write_comparison([synthetic_store], tmp_path, labels=["a", "b"])


@pytest.mark.parametrize("store", ["synthetic_store", "trained_store"])
def test_report_figures_have_no_overlapping_text(
    store: str, request: pytest.FixtureRequest
) -> None:
    path = request.getfixturevalue(store)
    analysis = analyze_store(path, bootstrap_samples=0)
    opened = StudyStore.open(path, read_only=True)
    try:
        measurements, trials = opened.measurements(), opened.trials()
        space = store_search_space(opened)
    finally:
        opened.close()
    with figures.paper_style():
        built = [
            figures.steps_figure(analysis),
            figures.steps_figure(analysis, examples=True),
            figures.metaparameters_figure(analysis),
            figures.trial_outcomes_figure(analysis, trials, space),
            figures.validation_curves_figure(analysis, measurements),
            figures.budgets_figure(analysis),
            figures.comparison_figure(
                {
                    "a much longer label for the first study": (
                        analysis.winners.index,
                        analysis.winners["steps"],
                    ),
                    "second": (analysis.winners.index, analysis.winners["steps"] * 3),
                }
            ),
        ]
    for figure in built:
        assert_readable(figure)


def test_trial_outcomes_for_plain_sgd(synthetic_store: Path) -> None:
    analysis = analyze_store(synthetic_store, bootstrap_samples=0)
    opened = StudyStore.open(synthetic_store, read_only=True)
    try:
        measurements, trials = opened.measurements(), opened.trials()
    finally:
        opened.close()
    best = measurements["val/classification_error"].groupby(["batch_size", "trial_id"]).min()
    with figures.paper_style():
        figure = figures.trial_outcomes_figure(
            analysis, trials.drop(columns=["momentum"]), None, best
        )
    # The metric's own name, not a generic "metric".
    assert figure.axes[0].get_ylabel() == "Best validation\nclassification error"
    assert_readable(figure)


def test_readability_check_catches_crowded_labels_and_hidden_points() -> None:
    crowded = Figure(figsize=(3, 2), layout="constrained")
    ax = crowded.add_subplot()
    ax.set_xticks(np.linspace(0, 1, 40))
    with pytest.raises(AssertionError):
        assert_readable(crowded)
    hidden = Figure(figsize=(3, 2), layout="constrained")
    ax = hidden.add_subplot()
    ax.plot([0.0, 0.5, 1.0], [0.0, 0.5, 1.0], "o", label="data")
    ax.legend(loc="center")
    with pytest.raises(AssertionError, match="data"):
        assert_readable(hidden)


def test_plot_steps_to_result_draws_on_the_callers_axes() -> None:
    sizes = np.array([8.0, 16.0, 32.0, 64.0, 128.0])
    steps = pd.array([800.0, 400.0, 210.0, 130.0, None], dtype="Float64")
    fit = fit_steps_to_result(sizes, steps)
    figure = Figure()
    ax = figure.add_subplot()
    figures.plot_steps_to_result(ax, sizes, steps, fit=fit, regimes=regimes(sizes, steps))
    lines = {line.get_label(): line for line in ax.get_lines()}
    measured = lines["measured"]
    assert list(measured.get_xdata()) == [8.0, 16.0, 32.0, 64.0]
    reference = lines["perfect scaling"]
    x, y = np.asarray(reference.get_xdata()), np.asarray(reference.get_ydata())
    np.testing.assert_allclose(x * y, 800.0 * 8.0)
    assert any(label.startswith("fit: $S_{min}$=") for label in lines)
    assert list(lines["goal not reached"].get_xdata()) == [128.0]
    legend_labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "perfect scaling" in legend_labels and "diminishing returns" in legend_labels
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    # The regimes are shaded across the reached batch sizes only, 8 to 64.
    spans = [patch.get_x() for patch in ax.patches] + [
        patch.get_x() + patch.get_width() for patch in ax.patches
    ]
    assert min(spans) == 8.0 and max(spans) == 64.0


def test_a_curve_scaling_perfectly_throughout_has_no_other_regime_shaded() -> None:
    sizes = np.array([16.0, 32.0, 64.0, 128.0])
    steps = 12800 / sizes
    figure = Figure()
    ax = figure.add_subplot()
    figures.plot_steps_to_result(ax, sizes, steps, regimes=regimes(sizes, steps))
    legend_labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "perfect scaling" in legend_labels and "diminishing returns" not in legend_labels


def test_plot_trial_outcomes_stars_the_winner() -> None:
    figure = Figure()
    ax = figure.add_subplot()
    figures.plot_trial_outcomes(
        ax,
        [0.1, 0.2, 0.3, 0.4],
        [0.1, 0.01, 0.05, 0.2],
        ["reached", "missed", "diverged", "pruned"],
        winner=0,
    )
    collections = {c.get_label(): c for c in ax.collections}
    assert set(collections) == {"reached goal", "missed goal", "diverged", "pruned", "winner"}
    np.testing.assert_allclose(collections["winner"].get_offsets(), [[0.1, 0.1]])


def test_plot_winner_metaparameter_references() -> None:
    figure = Figure()
    ax = figure.add_subplot()
    lines = figures.plot_winner_metaparameter(
        ax, [16, 64, 256], [0.1, 0.4, 1.6], ylabel="Learning rate"
    )
    by_label = {line.get_label(): line for line in lines}
    linear, root = by_label["linear scaling"], by_label["square-root scaling"]
    assert linear.get_ydata()[-1] == pytest.approx(1.6)
    assert root.get_ydata()[-1] == pytest.approx(0.4)


def test_a_goal_met_before_any_training_still_gets_a_report(tmp_path: Path) -> None:
    from batchscale import Study, StudyConfig
    from tests.conftest import TINY_NQM

    store = tmp_path / "s.sqlite"
    # The untrained NQM's loss (about 2.6) already beats this goal: steps to result is 0.
    summary = Study(StudyConfig(**{**TINY_NQM, "target": 1e6}), store).run()
    assert {row.steps_to_result for row in summary.batch_sizes} == {0}
    page = write_report(store, tmp_path / "report", bootstrap_samples=0).read_text()
    assert "validation_curves.png" in page
    analysis = analyze_store(store)
    assert analysis.fit is None
    [easy] = [w for w in analysis.warnings if w.check == "easy_goal"]
    assert easy.batch_sizes == (4, 16, 64) and "choose a harder goal" in page
    figure = figures.steps_figure(analysis)
    labels = [h.get_label() for h in figure.axes[0].get_legend().legend_handles]
    assert "met before training" in labels and "goal not reached" not in labels


def test_normalised_comparison_draws_perfect_scaling_from_each_curve_s_start() -> None:
    figure = Figure()
    ax = figure.add_subplot()
    curves = {
        "a": ([4, 16, 64], [800.0, 200.0, 50.0]),  # perfect scaling from 4
        "b": ([8, 32, 128], [400.0, 100.0, 25.0]),  # perfect scaling from 8
        "c": ([8, 32], [None, None]),  # never reached the goal
    }
    figures.plot_comparison(ax, curves, normalise=True)
    lines = ax.get_lines()
    data = {line.get_label(): line for line in lines if line.get_marker() not in ("None", "")}
    references = [line for line in lines if line.get_linestyle() == "--" and len(line.get_xdata())]
    assert len(references) == 2
    for label, reference in zip(("a", "b"), references, strict=True):
        sizes, shown = data[label].get_data()
        grid, ideal = reference.get_data()
        assert grid[0] == sizes[0] and ideal[0] == 1.0
        # a perfectly scaling curve lies on its own reference line
        np.testing.assert_allclose(shown, sizes[0] / np.asarray(sizes, dtype=float))
        assert reference.get_color() == data[label].get_color()
    legend = ax.get_legend()
    texts = [text.get_text() for text in legend.get_texts()]
    # One entry, in a neutral colour, stands for every curve's own reference line.
    assert texts.count(figures.PERFECT_SCALING_EACH) == 1 and "c (goal not reached)" in texts
    [entry] = [
        h for h, t in zip(legend.legend_handles, texts, strict=True) if t.startswith("perfect")
    ]
    assert entry.get_color() == figures.REFERENCE_COLOR


def test_table_numbers_never_round_onto_a_whole_number() -> None:
    from batchscale.formatting import format_number

    assert format_number(0.9996) == "0.9996"  # a momentum, not 1
    # Rounded, not exact: the zeros say so, rather than digits of a fit's round-off.
    assert format_number(1.9996) == "2.00" and format_number(76.0000001) == "76.0"
    assert format_number(61.99999997) == "62.0" and format_number(895.9999998) == "896"
    assert format_number(0.29975, distinct_from=[0.3]) == "0.2998"  # not the goal it beat
    assert format_number(0.123456) == "0.123" and format_number(1500.3) == "1,500"
    assert format_number(3.0) == "3" and format_number(999.96) == "1,000"
    assert format_number(None) == "-"


def test_plain_sgd_outcomes_use_a_log_axis_only_for_a_metric_spread_over_decades(
    trained_store: Path,
) -> None:
    analysis = analyze_store(trained_store, bootstrap_samples=0)
    opened = StudyStore.open(trained_store, read_only=True)
    try:
        trials = opened.trials().drop(columns="momentum")  # as a plain-SGD study stores them
    finally:
        opened.close()
    index = trials.index
    for values, scale in (
        (np.linspace(0.90, 0.99, len(index)), "linear"),  # an accuracy: no decade to span
        (-np.linspace(1.0, 3.0, len(index)), "linear"),  # a log-likelihood: below 0
        (np.geomspace(0.01, 1.0, len(index)), "log"),
    ):
        best = pd.Series(values, index=index)
        figure = figures.trial_outcomes_figure(analysis, trials, None, best)
        assert figure.axes[0].get_yscale() == scale


@pytest.mark.parametrize(("low", "high"), [(0.11, 0.12), (0.001, 0.04), (40.0, 900.0)])
def test_a_log_value_axis_shows_two_or_more_distinct_labels(low: float, high: float) -> None:
    figure = Figure()
    ax = figure.add_subplot()
    ax.plot([1, 2], [low, high])
    ax.set_yscale("log")
    ax.set_ylim(low, high)
    figures.format_value_axis(ax)
    FigureCanvasAgg(figure).draw()
    bottom, top = ax.get_ylim()
    shown = [
        tick.label1.get_text()
        for tick in [*ax.yaxis.get_major_ticks(), *ax.yaxis.get_minor_ticks()]
        if tick.label1.get_visible() and tick.label1.get_text() and bottom <= tick.get_loc() <= top
    ]
    assert len(shown) >= 2 or (high / low < 2.5 and len(shown) == 1), shown
    assert len(set(shown)) == len(shown), shown


def test_a_log_step_axis_reads_in_plain_numbers_not_powers_of_ten() -> None:
    figure = Figure()
    ax = figure.add_subplot()
    ax.plot([1, 3041], [0.9, 0.3])
    figures.format_step_axis(ax)
    FigureCanvasAgg(figure).draw()
    left, right = ax.get_xlim()
    shown = [
        tick.label1.get_text()
        for tick in ax.xaxis.get_major_ticks()
        if tick.label1.get_visible() and left <= tick.get_loc() <= right
    ]
    assert ax.get_xscale() == "log"
    assert shown == ["1", "10", "100", "1,000"]
    assert not any(label.get_text() for label in ax.xaxis.get_minorticklabels())


def test_legends_below_narrow_figures_wrap_rather_than_run_off_the_edge(
    trained_store: Path,
) -> None:
    from batchscale.analysis import analyze

    opened = StudyStore.open(trained_store, read_only=True)
    try:
        measurements, trials = opened.measurements(), opened.trials()
    finally:
        opened.close()
    # One batch size: the outcome panels are a single narrow column.
    one = 8
    analysis = analyze(
        measurements.xs(one, level="batch_size", drop_level=False),
        trials.xs(one, level="batch_size", drop_level=False),
        "val/loss",
        0.5,
        bootstrap_samples=0,
    )
    subset = trials.xs(one, level="batch_size", drop_level=False)
    with figures.paper_style():
        outcomes = figures.trial_outcomes_figure(analysis, subset, None)
        FigureCanvasAgg(outcomes).draw()
        assert_readable(outcomes)
        # Plain SGD: one metaparameter panel, three reference lines in its legend.
        sgd = analyze(
            measurements, trials.drop(columns="momentum"), "val/loss", 0.5, bootstrap_samples=0
        )
        panel = figures.metaparameters_figure(sgd)
        FigureCanvasAgg(panel).draw()
        assert_readable(panel)


def _hand_made_study(stopped: bool) -> tuple[object, pd.DataFrame]:
    """Two batch sizes, one trial each; at 16 the trial stops at the goal 0.27 long before
    its 1,000-step budget (when ``stopped``), at 64 it runs its budget without reaching it."""
    from batchscale.analysis import analyze

    rows = [(16, 0, s, e) for s, e in ((0, 0.9), (100, 0.5), (300, 0.26))]
    rows += [(64, 0, s, e) for s, e in ((0, 0.9), (100, 0.6), (250, 0.4))]
    measurements = measurements_table(rows)
    trials = pd.DataFrame(
        {
            "status": ["COMPLETE", "COMPLETE"],
            "steps": [300 if stopped else 1000, 250],
            "step_budget": [1000, 250],
        },
        index=pd.MultiIndex.from_tuples([(16, 0), (64, 0)], names=["batch_size", "trial_id"]),
    )
    return analyze(measurements, trials, "val/error", 0.3, bootstrap_samples=0), trials


def test_budgets_figure_marks_values_cut_short_by_stopping_as_bounds() -> None:
    analysis, trials = _hand_made_study(stopped=True)
    with figures.paper_style():
        figure = figures.budgets_figure(analysis, trials, stop_goal=0.27)  # type: ignore[arg-type]
    left = figure.axes[0]
    lines = {line.get_label(): line for line in left.get_lines()}
    # B=16 stopped at the goal inside the example budget: drawn hollow, as a bound.
    hollow = lines["bound: a trial stopped within the budget"]
    assert (
        np.asarray(hollow.get_xdata()).tolist() == [16.0]
        and hollow.get_markerfacecolor() == "white"
    )
    assert np.asarray(lines["best trial"].get_xdata()).tolist() == [64.0]
    # Both the study's goal and the goal trials actually stopped at are drawn.
    assert np.asarray(lines["goal < 0.3"].get_ydata()).tolist() == [0.3, 0.3]
    assert np.asarray(lines["trials stopped at < 0.27"].get_ydata()).tolist() == [0.27, 0.27]
    assert_readable(figure)
    # Trials that ran their budget: nothing is a bound.
    analysis, trials = _hand_made_study(stopped=False)
    figure = figures.budgets_figure(analysis, trials)  # type: ignore[arg-type]
    labels = [line.get_label() for line in figure.axes[0].get_lines()]
    assert "bound: a trial stopped within the budget" not in labels


def _variant(tmp_path: Path, name: str, **meta: object) -> Path:
    store = build_synthetic_store(tmp_path / f"{name}.sqlite", batch_sizes=(8, 64), trials=4)
    opened = StudyStore.open(store)
    for key, value in meta.items():
        opened.set_metadata(key, value)
    opened.close()
    return store


def test_captions_say_which_goal_trials_stopped_at(tmp_path: Path) -> None:
    # Trials of a raced study run on to the hardest goal, 0.09, past the study's 0.1.
    store = _variant(tmp_path, "race", stop_target=0.09, goals=[0.11, 0.1, 0.09])
    text = write_report(store, tmp_path / "race", bootstrap_samples=0).read_text()
    assert "hardest of the study&#x27;s goals, val/classification_error &lt; 0.09" in text
    assert "Trials stop once they reach the goal." not in text
    assert "Racing also stopped (pruned)" in text and "Hollow markers" in text
    # An epoch-budget study never stops at the goal, and 1 epoch is singular.
    store = _variant(
        tmp_path,
        "epoch",
        stop_target=None,
        mode="full",
        budget={"epochs": 1, "train_examples": 5000},
    )
    text = write_report(store, tmp_path / "epoch", bootstrap_samples=0).read_text()
    assert "for 1 epoch (5,000 examples)" in text and "1 epochs" not in text
    assert "Trials ran their whole epoch budget; none stopped at the goal." in text
    assert "stop once they reach" not in text


def test_an_unreached_goal_is_drawn_at_the_step_budget_not_as_a_count(tmp_path: Path) -> None:
    store = _variant(tmp_path, "hard", target=0.001)
    analysis = analyze_store(store, bootstrap_samples=0)
    opened = StudyStore.open(store, read_only=True)
    measurements = opened.measurements()
    opened.close()
    with figures.paper_style():
        figure = figures.steps_figure(analysis, step_budgets=pd.Series({8: 3000.0, 64: 3000.0}))
        ax = figure.axes[0]
        [marker] = [line for line in ax.get_lines() if str(line.get_label()).startswith("goal not")]
        assert marker.get_label() == "goal not reached within 3,000 steps"
        assert np.asarray(marker.get_ydata()).tolist() == [3000.0, 3000.0]
        assert ax.get_ylim()[0] < 3000.0 < ax.get_ylim()[1]
        # No budgets known: the markers sit at the top, and the axis carries no numbers.
        bare_figure = figures.steps_figure(analysis)
        FigureCanvasAgg(bare_figure).draw()
        bare = bare_figure.axes[0]
        assert not any(label.get_text() for label in bare.get_yticklabels())
        curves = figures.validation_curves_figure(analysis, measurements)
    [ax] = curves.axes
    assert not ax.axison and "No trial reached the goal" in ax.texts[0].get_text()
    text = write_report(store, tmp_path / "out", bootstrap_samples=0).read_text()
    assert "so there is no winner whose curve could be shown" in text


def test_noise_scale_figure_is_labelled_and_keeps_its_legend_off_the_data() -> None:
    from batchscale.report import extras

    analysis, _ = _hand_made_study(stopped=True)
    meta = {
        "noise_scale": {
            str(b): {
                "b_simple": value,
                "points": [{"step": s, "b_simple": value * f} for s, f in ((1, 1.2), (50, 0.9))],
            }
            for b, value in ((64, 268.0), (256, 254.0), (1024, 121.0))
        }
    }
    with figures.paper_style():
        figure = extras.noise_scale_figure(analysis, meta)  # type: ignore[arg-type]
        assert figure is not None
        FigureCanvasAgg(figure).draw()
        assert_readable(figure)
    right = figure.axes[1]
    assert "B_simple" in right.get_ylabel() and "examples" in right.get_ylabel()
    labels = [t.get_text() for t in right.get_yticklabels(which="both") if t.get_text()]
    assert labels and not any("times" in label for label in labels)


def test_numbers_compared_with_a_goal_never_print_as_the_goal() -> None:
    from batchscale.formatting import column_cells, format_number

    assert format_number(0.29975, distinct_from=[0.3]) not in ("0.3", "0.300")
    assert float(format_number(0.29975, distinct_from=[0.3])) < 0.3
    # One precision per column: 15.0 beside 12.0 and 2.08, not 15.004 beside 11.98.
    assert column_cells([15.004, 11.98, 2.08]) == ["15.0", "12.0", "2.08"]
    # A value that would read as the goal, or as 1, gets the digits it needs, alone.
    assert column_cells([0.29975, 0.2812], distinct_from=[0.3]) == ["0.2998", "0.281"]
    assert column_cells([0.9996, 0.9]) == ["0.9996", "0.900"]
    assert column_cells([1.0000004, 0.5]) == ["1.0000004", "0.500"]
    assert column_cells([None, 3.0, 1500.3, 999.96]) == ["-", "3", "1,500", "1,000"]


def test_summary_table_fits_the_page(synthetic_report: Path) -> None:
    page = synthetic_report.read_text(encoding="utf-8")
    # Compact type, and the regime wraps instead of widening the table.
    assert '<table class="compact">' in page
    assert '<td class="text">perfect scaling</td>' in page
    assert "table.compact" in page


def test_trial_outcome_panels_above_empty_ones_show_their_ticks(
    synthetic_store: Path,
) -> None:
    analysis = analyze_store(synthetic_store, bootstrap_samples=0)
    opened = StudyStore.open(synthetic_store, read_only=True)
    trials, space = opened.trials(), store_search_space(opened)
    opened.close()
    with figures.paper_style():
        figure = figures.trial_outcomes_figure(analysis, trials, space)
        FigureCanvasAgg(figure).draw()
    grid = [ax for ax in figure.axes if ax.get_visible()]
    # Ten batch sizes in rows of five: every panel of the bottom row has data. Drop two.
    assert len(grid) == 10
    subset = trials.drop(index=[2048, 4096], level="batch_size")
    from batchscale.analysis import analyze

    opened = StudyStore.open(synthetic_store, read_only=True)
    measurements = opened.measurements().drop(index=[2048, 4096], level="batch_size")
    opened.close()
    eight = analyze(measurements, subset, "val/classification_error", 0.1, bootstrap_samples=0)
    with figures.paper_style():
        figure = figures.trial_outcomes_figure(eight, subset, space)
        FigureCanvasAgg(figure).draw()
    panels = [ax for ax in figure.axes if ax.get_visible()]
    assert len(panels) == 8
    # Rows of five: the fourth and fifth panels have no panel below them any more.
    assert [ax.get_title() for ax in panels[3:5]] == ["B = 64", "B = 128"]
    for ax in panels[3:5]:
        assert any(t.get_text() for t in ax.get_xticklabels()), ax.get_title()
        assert ax.get_xlabel() == "Learning rate"


def test_a_log_value_axis_labels_a_tick_below_its_lowest_point() -> None:
    figure = Figure()
    ax = figure.add_subplot()
    figures.plot_winner_metaparameter(
        ax, [16, 64, 256, 1024], [0.5, 0.2, 0.03, 0.027], ylabel="1 − momentum", references=False
    )
    FigureCanvasAgg(figure).draw()
    bottom, top = ax.get_ylim()
    labelled = [
        tick.get_loc()
        for tick in [*ax.yaxis.get_major_ticks(), *ax.yaxis.get_minor_ticks()]
        if tick.label1.get_text() and bottom <= tick.get_loc() <= top
    ]
    assert min(labelled) <= 0.027 and max(labelled) >= 0.5


def test_nqm_legend_names_the_perfect_scaling_lines() -> None:
    from batchscale.analysis.nqm import NQMPoint, NQMPrediction
    from batchscale.report.nqm_figures import nqm_figure

    points = tuple(NQMPoint(b, 6400 // b, 0.1, 0.9, 0.5) for b in (4, 16, 64))
    figure = nqm_figure([NQMPrediction("sgd", 100, 1.0, 0.5, points)])
    legend = figure.axes[0].get_legend()
    assert legend is not None
    texts = [t.get_text() for t in legend.get_texts()]
    assert any(text.startswith("perfect scaling (dotted") for text in texts)


def test_comparison_normalises_at_the_first_batch_size_all_studies_reached(
    synthetic_store: Path, tmp_path: Path
) -> None:
    # The synthetic study starts at batch size 8, the other at 32: both are divided at 32.
    later = build_synthetic_store(tmp_path / "later.sqlite", batch_sizes=(32, 128), trials=4)
    page = write_comparison([synthetic_store, later], tmp_path, bootstrap_samples=0)
    text = page.read_text(encoding="utf-8")
    assert "divided by its steps at batch size 32, the smallest that every study" in text
    assert ">budget</th>" in text and ">3,000 steps</td>" in text
    # With no batch size in common, each curve starts at its own, and the caption says so.
    apart = build_synthetic_store(tmp_path / "apart.sqlite", batch_sizes=(8, 16))
    page = write_comparison([later, apart], tmp_path / "apart", bootstrap_samples=0)
    assert "at its own smallest reached batch size, since no batch size" in page.read_text()


def test_normalised_comparison_shares_one_start_where_the_curves_have_one() -> None:
    figure = Figure()
    ax = figure.add_subplot()
    curves = {
        "a": ([4, 16, 64], [800.0, 200.0, 50.0]),
        "b": ([16, 64, 256], [300.0, 75.0, 60.0]),
        "c": ([16], [None]),  # never reached the goal: does not hold the start back
    }
    figures.plot_comparison(ax, curves, normalise=True)
    data = {line.get_label(): line.get_data() for line in ax.get_lines()}
    np.testing.assert_allclose(data["a"][1], [4.0, 1.0, 0.25])
    np.testing.assert_allclose(data["b"][1], [1.0, 0.25, 0.2])
    grid, ideal = data["perfect scaling"]
    assert grid[0] == 4 and grid[-1] == 256 and ideal[0] == 4.0 and ideal[-1] == 16 / 256
    assert ax.get_ylabel() == "Steps relative to batch size 16"


def test_goals_table_marks_a_fit_through_two_batch_sizes(
    tmp_path: Path, synthetic_report: Path
) -> None:
    store = build_synthetic_store(tmp_path / "two.sqlite", batch_sizes=(8, 64))
    text = write_report(store, tmp_path / "two-report", bootstrap_samples=0).read_text()
    # Two parameters through two points: marked, and the caption says why.
    assert "(2 points: exact fit)" in text
    assert "says nothing of the fit's quality" in text
    # With ten batch sizes no goal's fit is exact.
    assert "exact fit" not in synthetic_report.read_text(encoding="utf-8")


def test_a_budget_reads_as_steps_examples_or_a_range() -> None:
    from batchscale.report.html import budget_text

    index = pd.MultiIndex.from_tuples(
        [(16, 0), (16, 1), (32, 0), (64, 0)], names=["batch_size", "trial_id"]
    )

    def text(budgets: list[int]) -> str:
        return budget_text(pd.DataFrame({"step_budget": budgets}, index=index))

    assert text([100, 100, 100, 100]) == "100 steps"
    # 4,000 examples: 250, 125 and 62.5 steps, the last rounded up.
    assert text([250, 250, 125, 63]) == "4,000 examples"
    assert text([250, 250, 200, 63]) == "63 to 250 steps"
