"""The report: one self-contained HTML page per study (or per comparison), plus every figure
as PNG and SVG beside it.

Figures are embedded as base64 PNG, styles inline, and nothing is fetched, so the page opens
offline and survives being mailed around on its own.
"""

from __future__ import annotations

import base64
import html
import platform
import shutil
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata, resources
from io import BytesIO
from pathlib import Path
from string import Template
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from batchscale.analysis.analyze import StoredStudy, StudyAnalysis
from batchscale.analysis.budgets import step_budgets, stopped_within_budget
from batchscale.analysis.cost import DataParallelCost
from batchscale.analysis.goals import stop_goal
from batchscale.analysis.scaling import FitQuantity, no_fit_reason
from batchscale.analysis.winners import OUTCOMES, winner_metaparameters
from batchscale.formatting import column_cells, format_number, format_seconds
from batchscale.report import extras, figures
from batchscale.search import SearchSpace

REPORT_FILE = "report.html"
COMPARISON_FILE = "comparison.html"
PACKAGES = ("batchscale", "numpy", "scipy", "pandas", "matplotlib", "torch", "pydantic")
PARAMETER_NAMES = {
    "learning_rate": "learning rate",
    "momentum": "momentum",
    "effective_learning_rate": "effective lr",
    "end_learning_rate_factor": "end lr factor",
    "decay_fraction": "decay fraction",
    "label_smoothing": "label smoothing",
}


@dataclass
class RenderedFigure:
    """A figure saved as PNG and SVG, with what the page says about it."""

    name: str
    title: str
    caption: str
    png: bytes
    width_inches: float


def _template(name: str) -> str:
    return (resources.files("batchscale.report") / "templates" / name).read_text("utf-8")


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    text: Collection[int] = (),
    css_class: str = "",
) -> str:
    """An HTML table of already-escaped cells; columns in ``text`` are left-aligned prose.

    ``css_class`` names the table's class (``compact``: smaller type for wide tables).
    """

    def cell(tag: str, index: int, value: Any) -> str:
        kind = ' class="text"' if index in text else ""
        return f"<{tag}{kind}>{value}</{tag}>"

    head = "".join(cell("th", i, _esc(h)) for i, h in enumerate(headers))
    body = "".join(
        "<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>" for row in rows
    )
    kind = f' class="{_esc(css_class)}"' if css_class else ""
    table = f"<table{kind}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f'<div class="scroll">{table}</div>'


def save_figure(
    figure: Figure, out_dir: Path, name: str, title: str, caption: str
) -> RenderedFigure:
    """Write ``name.png`` and ``name.svg`` into ``out_dir`` and keep the PNG for embedding."""
    buffer = BytesIO()
    figure.savefig(buffer, format="png", dpi=figures.STYLE["savefig.dpi"])
    png = buffer.getvalue()
    (out_dir / f"{name}.png").write_bytes(png)
    # Without a date (and with the style's fixed hash salt) the SVG is the same on every run.
    figure.savefig(out_dir / f"{name}.svg", format="svg", metadata={"Date": None})
    return RenderedFigure(name, title, caption, png, float(figure.get_figwidth()))


def _figure_html(rendered: RenderedFigure) -> str:
    encoded = base64.b64encode(rendered.png).decode("ascii")
    # Shown at about the size it would print, never wider than the page.
    width = round(rendered.width_inches * 125)
    return (
        f'<figure id="{_esc(rendered.name)}"><img src="data:image/png;base64,{encoded}" '
        f'alt="{_esc(rendered.title)}" style="width: {width}px">'
        f"<figcaption><strong>{_esc(rendered.title)}.</strong> {_esc(rendered.caption)} "
        f'Files: <a href="{_esc(rendered.name)}.svg">SVG</a>, '
        f'<a href="{_esc(rendered.name)}.png">PNG</a>.</figcaption></figure>'
    )


def software_versions() -> dict[str, str]:
    """Python, the platform and the versions of the packages the results depend on."""
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _page(title: str, body: str) -> str:
    return Template(_template("page.html")).substitute(
        title=_esc(title),
        style=_template("style.css"),
        body=body,
        version=_esc(software_versions()["batchscale"]),
    )


def _sign(maximize: bool) -> str:
    """The comparison a trial must pass: strictly above or below the goal."""
    return ">" if maximize else "<"


def _fit_headline(analysis: StudyAnalysis, raced: bool) -> str:
    fit = analysis.fit
    if fit is None:
        reason = no_fit_reason(analysis.winners.index, analysis.winners["steps"])
        return f"<p>No fit: the goal was {_esc(reason)}. See the warnings below.</p>"
    cards: list[tuple[str, str, FitQuantity]] = [
        ("S<sub>min</sub> (fewest steps)", format_number(fit.s_min), "s_min"),
        ("B<sub>crit</sub> (critical batch size)", fit.b_crit_text(), "b_crit"),
        (
            "E<sub>min</sub> = S<sub>min</sub> B<sub>crit</sub> (fewest examples)",
            format_number(fit.e_min),
            "e_min",
        ),
    ]
    blocks = "".join(
        f'<div><div class="name">{name}</div><div class="value">{value}</div>'
        f'<div class="interval">{fit.interval_text(quantity) or "no interval"}</div></div>'
        for name, value, quantity in cards
    )
    note = (
        f"Fit of S(B) = S<sub>min</sub> (1 + B<sub>crit</sub> / B) by least squares on log steps "
        f"over {len(fit.batch_sizes)} batch sizes (rms log residual "
        f"{fit.rms_log_residual:.3f}). "
    )
    if fit.interval_method == "none":
        note += (
            "No intervals: two batch sizes fit exactly, or B<sub>crit</sub> sits at the edge of "
            "the range it was searched in (the data do not locate it)."
        )
    else:
        note += f"Intervals: {round(fit.confidence * 100)}%, {_esc(fit.interval_method)}."
    if fit.interval_method.startswith("bootstrap"):
        note += (
            " Steps to result is a minimum over trials, so resampled trials can only match or "
            "exceed it: the interval shows how much the answer rests on the best few trials."
        )
    elif raced and fit.interval_method != "none":
        note += (
            " Racing stopped the trials that could no longer win before they reached the goal, "
            "so trials cannot be resampled: the interval reflects how far the points scatter "
            "about the fitted curve (a study in full mode gets a bootstrap over trials)."
        )
    return f'<div class="headline">{blocks}</div><p>{note}</p>'


def _summary_table(analysis: StudyAnalysis, step_times: dict[str, Any]) -> str:
    """The main table, compact so that all its columns fit the page without scrolling."""
    headers, rows = _summary_rows(analysis, step_times)
    # The regime ("maximal data parallelism") wraps rather than widens the table.
    return _table(headers, rows, text={headers.index("regime")}, css_class="compact")


def _summary_rows(
    analysis: StudyAnalysis, step_times: dict[str, Any]
) -> tuple[list[str], list[list[str]]]:
    """The main table's rows; ``step_times`` is the store's entry (imported studies have none)."""
    winners = analysis.winners
    params = winner_metaparameters(winners)
    if "effective_learning_rate" in winners.columns:
        params.append("effective_learning_rate")
    counts = analysis.outcomes.groupby(level="batch_size").value_counts().unstack(fill_value=0)
    # Only imported studies have trials that stopped early for another reason.
    shown = [o for o in OUTCOMES if o != "incomplete" or o in counts.columns]
    headers = [
        "batch size",
        "steps to result",
        "examples to result",
        "winner",
        "validation",
        "test",
        *[PARAMETER_NAMES.get(p, p) for p in params],
        "regime",
        " / ".join(shown),
    ]
    timed = bool(step_times)
    if timed:
        headers += ["step time", "time to result"]
    goals = _goals(analysis)
    # Each column at one precision; values compared with a goal never print as the goal.
    columns = {
        name: column_cells(
            list(winners[name]) if name in winners.columns else [None] * len(winners),
            distinct_from=goals if name in ("validation", "test") else (),
        )
        for name in ("validation", "test", *params)
    }
    rows = []
    for position, size in enumerate(winners.index):
        row = winners.loc[size]
        tally = counts.loc[size] if size in counts.index else pd.Series(dtype=int)
        regime = None if pd.isna(row["steps"]) else analysis.regimes.regime_of(float(size))
        cells = [
            format_number(size),
            format_number(row["steps"]),
            format_number(row["examples"]),
            "-" if pd.isna(row["trial_id"]) else str(int(row["trial_id"])),
            columns["validation"][position],
            columns["test"][position],
            *[columns[p][position] for p in params],
            regime or "-",
            " / ".join(str(int(tally.get(o, 0))) for o in shown),
        ]
        if timed:
            seconds = (step_times.get(str(size)) or {}).get("median")
            cells.append(format_seconds(seconds))
            if seconds is None or pd.isna(row["steps"]):
                cells.append("-")
            else:
                cells.append(format_seconds(seconds * float(row["steps"])))
        rows.append(cells)
    return headers, rows


def _goals(analysis: StudyAnalysis) -> list[float]:
    """The study's goal and every goal it was read at."""
    return [analysis.target, *(curve.goal for curve in analysis.goal_curves)]


def _regimes_html(analysis: StudyAnalysis) -> str:
    regimes = analysis.regimes
    rows = [
        [
            " → ".join(format_number(size) for size in regimes.batch_sizes[i : i + 2]),
            f"{slope:.2f}",
            f"{2.0**slope:.2f}",
        ]
        for i, slope in enumerate(regimes.slopes)
    ]
    table = (
        _table(["batch sizes", "local slope", "steps ratio per doubling"], rows, text={0})
        if rows
        else ""
    )
    return f"<p>{_esc(regimes.describe())}</p>{table}"


def _goals_html(analysis: StudyAnalysis, stop: float | None = None) -> str:
    """The curve's fit at each goal; a fit through two batch sizes is marked as exact.

    ``stop`` is the goal trials stopped at (see ``stop_goal``), named where goals past it are
    censored.
    """
    sign = _sign(analysis.maximize)
    rows = []
    exact = False
    for curve in analysis.goal_curves:
        notes = curve.notes(analysis.target, analysis.maximize, stop)
        b_crit = "-" if curve.fit is None else curve.fit.b_crit_text()
        if curve.exact_fit:
            exact = True
            b_crit += " (2 points: exact fit)"
        rows.append(
            [
                _esc(f"{sign} {curve.goal:g}"),
                f"{curve.reached} of {len(curve.batch_sizes)}",
                "-" if curve.fit is None else format_number(curve.fit.s_min),
                b_crit,
                _esc("; ".join(notes)),
            ]
        )
    note = (
        " A fit through only two batch sizes is marked <em>2 points: exact fit</em>: two "
        "parameters pass exactly through two points whatever the curve's shape, so its "
        "B<sub>crit</sub> says nothing of the fit's quality; compare it with care."
        if exact
        else ""
    )
    return (
        "<p>Steps to result recomputed from the same measurements at goals around the chosen "
        "one. Curves of the same shape (similar B<sub>crit</sub>) mean the result does not hang "
        f"on the exact goal.{note}</p>"
        + _table(["goal", "batch sizes reaching it", "S_min", "B_crit", "note"], rows, text={0, 4})
    )


def _warnings_html(analysis: StudyAnalysis) -> str:
    if not analysis.warnings:
        return '<p class="ok">No design check raised a warning.</p>'
    items = "".join(
        f'<li><span class="badge">{_esc(w.check.replace("_", " "))}</span>{_esc(w.message)}</li>'
        for w in analysis.warnings
    )
    return f'<ul class="warnings">{items}</ul>'


def _setting(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{key} = {item}" for key, item in value.items())
    return str(value)


def _settings_html(meta: dict[str, Any], store_path: Path) -> str:
    shown = [
        ("store", str(store_path)),
        ("workload", meta.get("workload")),
        ("optimizer", meta.get("optimizer")),
        (
            "metric",
            f"val/{meta.get('metric')} ({'maximize' if meta.get('maximize') else 'minimize'})",
        ),
        ("goal", meta.get("target")),
        ("batch sizes", ", ".join(str(b) for b in meta.get("batch_sizes", []))),
        ("trials per batch size", meta.get("trials")),
        ("budget", meta.get("budget")),
        ("mode", meta.get("mode")),
        ("engine", meta.get("engine")),
        ("seed", meta.get("seed")),
        ("evaluation growth", meta.get("eval_growth")),
        ("divergence factor", meta.get("divergence_factor")),
        ("store schema version", meta.get("schema_version")),
    ]
    settings = _table(
        ["setting", "value"],
        [[_esc(k), _esc(_setting(v))] for k, v in shown],
        text={0, 1},
    )
    space = meta.get("search_space")
    if space is None:
        return settings
    rows = [
        [
            _esc(d["name"]),
            _esc(d["scale"]),
            _esc(
                "{" + ", ".join(f"{v:g}" for v in d["values"]) + "}"
                if d["scale"] == "discrete"
                else f"[{d['low']:g}, {d['high']:g}]"
            ),
        ]
        for d in space["dimensions"]
    ]
    return (
        settings
        + "<h3>Search space</h3>"
        + _table(["metaparameter", "scale", "range"], rows, text={0, 1, 2})
    )


def _versions_html() -> str:
    return _table(
        ["software", "version"],
        [[_esc(k), _esc(v)] for k, v in software_versions().items()],
        text={0, 1},
    )


def extra_sections(
    analysis: StudyAnalysis, meta: dict[str, Any], out_dir: Path, cost: DataParallelCost
) -> str:
    """Sections for what a study holds beyond its trials: time, replicates, noise, NQM."""
    sections = [_budgets_html(analysis, meta)]
    with figures.paper_style():
        timing = extras.time_figure(analysis, meta, cost)
        if timing is not None:
            rendered = save_figure(
                timing,
                out_dir,
                "time_to_result",
                "Time to result",
                "Left: one model's training step time at each batch size on "
                f"{_esc(_step_time_device(meta))} (median of repeats, after warm-up, without "
                "evaluation). Right: steps to result times step time, measured on one device, "
                f"and projected onto {cost.devices} data-parallel devices by a cost model "
                f"(batchscale.analysis.cost): {_esc(cost.describe())}.",
            )
            sections.append(
                "<h2>Time to result</h2>"
                + _figure_html(rendered)
                + _step_time_table(analysis, meta)
            )
        replicated = extras.replicates_figure(analysis, meta)
        if replicated is not None:
            rows = [
                [str(b), format_number(m), format_number(lo), format_number(hi), str(n)]
                for b, (m, lo, hi, n) in extras.replicate_summary(meta).items()
            ]
            rendered = save_figure(
                replicated,
                out_dir,
                "replicates",
                "The winner's curse",
                "Steps to result is the minimum over many trials, so it is optimistic. Each "
                "batch size's winning metaparameters were re-run with new seeds; the band spans "
                "the replicates that reached the goal, the line is their median (a replicate "
                "that never reached counts as slowest).",
            )
            sections.append(
                "<h2>Replicated winners</h2>"
                + _table(["batch size", "median", "min", "max", "seeds"], rows)
                + _figure_html(rendered)
            )
        noise = extras.noise_scale_figure(analysis, meta)
        if noise is not None:
            b_crit = None if analysis.fit is None else analysis.fit.located_b_crit
            rows = [
                [str(b), format_number(value), "-" if ratio is None else format_number(ratio)]
                for b, value, ratio in extras.noise_scale_table(meta, b_crit)
            ]
            rendered = save_figure(
                noise,
                out_dir,
                "noise_scale",
                "Gradient noise scale",
                "B_simple = tr(Sigma) / |G|^2 along each winner's run (McCandlish et al. 2018), "
                "and its average over training beside the fitted critical batch size.",
            )
            sections.append(
                "<h2>Gradient noise scale</h2>"
                + _table(["batch size", "mean B_simple", "B_simple / B_crit"], rows)
                + _figure_html(rendered)
            )
        predicted = extras.nqm_overlay_figure(analysis, meta)
        if predicted is not None:
            rendered = save_figure(
                predicted,
                out_dir,
                "nqm_prediction",
                "Noisy quadratic model: prediction and measurement",
                "Lines: steps to reach the expected loss goal in closed form, minimised over a "
                "constant learning rate (and momentum). Squares: this study. The study keeps "
                "its best single trial and may decay the learning rate, so it tends to need "
                "somewhat fewer steps than the expectation predicts.",
            )
            sections.append("<h2>Closed-form prediction</h2>" + _figure_html(rendered))
    return "".join(sections)


def _budgets_html(analysis: StudyAnalysis, meta: dict[str, Any]) -> str:
    """What the fixed step and fixed epoch views answer, and this study's epoch-budget table."""
    budget = meta.get("budget") or {}
    explanation = (
        "<p>A <strong>fixed step budget</strong> asks how good a model gets in a given number of "
        "steps (wall time on enough devices): larger batches see more examples per step, so "
        "they look better. A <strong>fixed epoch (example) budget</strong> asks how good a "
        "model gets from a given amount of data (compute): smaller batches take more steps "
        "from the same examples, so they look better. Neither answers how much data "
        "parallelism speeds training up; steps to result does. The figure of the best result "
        "under fixed budgets shows both views side by side.</p>"
    )
    if "epochs" not in budget:
        return "<h2>Fixed step and fixed epoch budgets</h2>" + explanation
    epochs = budget["epochs"]
    best = analysis.best_under_examples
    values = column_cells(list(best["value"]), distinct_from=_goals(analysis))
    rows = [
        [str(b), value, str(row["trial_id"]), str(row["step"])]
        for value, (b, row) in zip(values, best.iterrows(), strict=True)
    ]
    return (
        "<h2>Fixed step and fixed epoch budgets</h2>"
        + explanation
        + f"<p>This study trained every batch size for {epochs:g} "
        f"{'epoch' if epochs == 1 else 'epochs'} "
        f"({budget.get('train_examples', 0) * epochs:,.0f} examples) without stopping at the "
        f"goal: the best {_esc(analysis.metric)} each batch size reached within that budget:</p>"
        + _table(["batch size", f"best {analysis.metric}", "trial", "step"], rows)
    )


def _step_time_table(analysis: StudyAnalysis, meta: dict[str, Any]) -> str:
    """Each batch size's step time with the spread of its repeats, and its time to result."""
    times = meta.get("step_times") or {}
    steps = analysis.winners["steps"]
    rows = []
    for size in sorted(times, key=int):
        entry = times[size]
        reached = int(size) in steps.index and not pd.isna(steps[int(size)])
        rows.append(
            [
                size,
                format_seconds(entry["median"]),
                f"{format_seconds(entry['low'])} to {format_seconds(entry['high'])}",
                format_seconds(entry["median"] * float(steps[int(size)])) if reached else "-",
            ]
        )
    return _table(
        ["batch size", "step time (median)", "fastest to slowest repeat", "time to result"],
        rows,
        text={2},
    )


def _step_time_device(meta: dict[str, Any]) -> str:
    devices = {
        entry["device"] + (" (one thread)" if entry.get("threads") == 1 else "")
        for entry in (meta.get("step_times") or {}).values()
    }
    return ", ".join(sorted(devices)) or "the study's device"


def _stop_sentence(analysis: StudyAnalysis, meta: dict[str, Any], stop: float | None) -> str:
    """How trials stopped, in one sentence: at which goal, or not at all."""
    sign = _sign(analysis.maximize)
    if stop is None:
        if (meta.get("budget") or {}).get("epochs") is not None:
            return "Trials ran their whole epoch budget; none stopped at the goal."
        return "Trials were not stopped at the goal."
    if stop == analysis.target:
        return "Trials stop once they reach the goal."
    return (
        f"Trials stop once they reach the hardest of the study's goals, {analysis.metric} "
        f"{sign} {stop:g}, so they run on past the goal {sign} {analysis.target:g}."
    )


def _budgets_caption(
    analysis: StudyAnalysis, meta: dict[str, Any], trials: pd.DataFrame, stop: float | None
) -> str:
    """What the budgets figure shows, with what stopping did to its values."""
    caption = (
        "Best validation metric over all trials within the largest example budget (left) and "
        "step budget (right) that every batch size had. "
    )
    raced = meta.get("mode") == "race"
    bounded = bool(
        stopped_within_budget(trials, max_examples=analysis.example_budget).any()
        or stopped_within_budget(trials, max_steps=analysis.step_budget).any()
    )
    if stop is None and not raced:
        return (
            caption
            + _stop_sentence(analysis, meta, stop)
            + " Each value is the best within its budget."
        )
    how = _stop_sentence(analysis, meta, stop)
    if raced:
        how += " Racing also stopped (pruned) the trials that could no longer win."
    if not bounded:
        return (
            caption
            + how
            + " No trial stopped inside either budget, so each value is the best within it."
        )
    return (
        caption
        + how
        + " Hollow markers: some trial at that batch size stopped inside the budget, so the "
        "value shows where trials stopped, not the best the batch size gets within the "
        "budget (it is a bound: the true best is at least this good). Filled markers: no trial "
        "stopped inside the budget, so the value is the best within it."
    )


def study_figures(
    analysis: StudyAnalysis,
    measurements: pd.DataFrame,
    trials: pd.DataFrame,
    out_dir: Path,
    search_space: SearchSpace | None = None,
    meta: dict[str, Any] | None = None,
) -> list[RenderedFigure]:
    """Build, save and return the report's figures for one study.

    ``meta`` (the store's metadata) says how trials stopped; without it that is read off the
    measurements.
    """
    meta = meta or {}
    best_values = None
    if "momentum" not in trials.columns:
        grouped = measurements[analysis.metric].groupby(level=["batch_size", "trial_id"])
        best_values = grouped.max() if analysis.maximize else grouped.min()
    goal = f"{_sign(analysis.maximize)} {analysis.target:g}"
    stop = stop_goal(meta, measurements, analysis.metric, analysis.target, analysis.maximize)
    budgets = step_budgets(
        measurements, trials["step_budget"] if "step_budget" in trials.columns else None
    )
    reached_somewhere = bool(analysis.winners["trial_id"].notna().any())
    if reached_somewhere:
        curves_caption = (
            "Validation metric of each batch size's winner against step. "
            + _stop_sentence(analysis, meta, stop)
        )
    else:
        curves_caption = (
            f"No trial reached {analysis.metric} {goal} at any batch size, so there is no "
            "winner whose curve could be shown."
        )
    specs = [
        (
            "steps_to_result",
            "Steps to result",
            lambda: figures.steps_figure(analysis, step_budgets=budgets),
            f"Fewest steps to reach {analysis.metric} {goal} at each batch size, each batch size "
            "tuned separately. Dashed: perfect scaling from the smallest batch size; red: the "
            "fitted S(B); shading: the regimes read off the measured local slopes.",
        ),
        (
            "examples_to_result",
            "Examples to result",
            lambda: figures.steps_figure(analysis, examples=True, step_budgets=budgets),
            "Examples consumed to reach the goal (steps times batch size). Flat means perfect "
            "scaling: larger batches cost no extra data.",
        ),
        (
            "winner_metaparameters",
            "Winning metaparameters",
            lambda: figures.metaparameters_figure(analysis),
            "The winning trial's learning rate, 1 − momentum and effective learning rate "
            "(learning rate / (1 − momentum)) at each batch size, against linear and square-root "
            "scaling from the smallest batch size.",
        ),
        (
            "trial_outcomes",
            "Every trial",
            lambda: figures.trial_outcomes_figure(analysis, trials, search_space, best_values),
            "All trials of each batch size by outcome, the winner starred; axes span the search "
            "space, so a star at the border means the range was too narrow. How many points "
            "reach the goal shows how sensitive each batch size is to its metaparameters.",
        ),
        (
            "validation_curves",
            "Winners' validation curves",
            lambda: figures.validation_curves_figure(analysis, measurements, stop_goal=stop),
            curves_caption,
        ),
        (
            "budgets",
            "Best result under fixed budgets",
            lambda: figures.budgets_figure(analysis, trials, stop_goal=stop),
            _budgets_caption(analysis, meta, trials, stop),
        ),
    ]
    rendered = []
    with figures.paper_style():
        for name, title, build, caption in specs:
            rendered.append(save_figure(build(), out_dir, name, title, caption))
    return rendered


def write_report(
    store_path: Path | str,
    out_dir: Path | str,
    goals: Sequence[float] | None = None,
    *,
    bootstrap_samples: int = 1000,
    seed: int = 0,
    devices: int = 8,
    bandwidth: float = 10e9,
    latency: float = 10e-6,
) -> Path:
    """Write ``out_dir/report.html`` and every figure as PNG and SVG; return the page's path.

    ``goals`` are extra goals for the fragile-goal check (default: 10% easier and harder than
    the study's goal). ``devices``, ``bandwidth`` (bytes/s) and ``latency`` (s) set the cost
    model that projects time to result onto data-parallel devices. Raises ``StoreError`` for
    a path that is not a study and ``ValueError`` for a study without measurements.
    """
    study = StoredStudy.read(store_path)
    analysis = study.analyze(goals, bootstrap_samples=bootstrap_samples, seed=seed)
    with _output_folder(Path(out_dir)) as out:
        return _write_report(study, analysis, Path(store_path), out, devices, bandwidth, latency)


@contextmanager
def _output_folder(out: Path) -> Iterator[Path]:
    """Create ``out`` for the body to fill; remove it again if the body fails and it was new."""
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        yield out
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise


def _write_report(
    study: StoredStudy,
    analysis: StudyAnalysis,
    store_path: Path,
    out: Path,
    devices: int,
    bandwidth: float,
    latency: float,
) -> Path:
    meta, measurements, trials = study.meta, study.measurements, study.trials
    search_space = study.search_space
    rendered = study_figures(analysis, measurements, trials, out, search_space, meta)
    stop = stop_goal(meta, measurements, analysis.metric, analysis.target, analysis.maximize)
    cost = DataParallelCost(
        devices=devices,
        parameters=int(meta.get("parameters", 0)),
        bandwidth=bandwidth,
        latency=latency,
    )
    more = extra_sections(analysis, meta, out, cost)
    goal = f"{analysis.metric} {_sign(analysis.maximize)} {analysis.target:g}"
    title = f"{meta.get('workload')} / {meta.get('optimizer')}: steps to {goal}"
    body = "".join(
        [
            f"<h1>{_esc(title)}</h1>",
            f'<p class="lead">{len(trials)} trials over {len(analysis.batch_sizes)} batch sizes. '
            "Steps to result: the fewest steps any trial at a batch size needed to get "
            f"{_esc(goal)}.</p>",
            "<h2>The scaling fit</h2>",
            _fit_headline(analysis, raced=meta.get("mode") == "race"),
            "<h2>Regimes</h2>",
            _regimes_html(analysis),
            f"<h2>Design checks ({len(analysis.warnings)} "
            f"warning{'' if len(analysis.warnings) == 1 else 's'})</h2>",
            _warnings_html(analysis),
            "<h2>Steps to result per batch size</h2>",
            _summary_table(analysis, meta.get("step_times") or {}),
            f"<p>Validation and test: the winner's {_esc(analysis.metric.partition('/')[2])} "
            "on each split at the step it reached the goal; the test value is the honest one, "
            "since the winner was picked on validation data.</p>",
            "<h2>Figures</h2>",
            "".join(_figure_html(r) for r in rendered),
            more,
            "<h2>Goals</h2>",
            _goals_html(analysis, stop),
            "<h2>Study settings</h2>",
            _settings_html(meta, Path(store_path)),
            "<h2>Software</h2>",
            _versions_html(),
            f"<footer>Written by batchscale on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.</footer>",
        ]
    )
    page = out / REPORT_FILE
    page.write_text(_page(title, body), encoding="utf-8")
    return page


def _study_label(meta: dict[str, Any]) -> str:
    label = f"{meta.get('workload')} / {meta.get('optimizer')}"
    variants = [
        f"{name} {meta[key]:g}"
        for key, name in (("train_size", "train size"), ("width", "width"))
        if meta.get(key) is not None
    ]
    return label + (f" ({', '.join(variants)})" if variants else "")


def write_comparison(
    store_paths: Sequence[Path | str],
    out_dir: Path | str,
    labels: Sequence[str] | None = None,
    *,
    bootstrap_samples: int = 1000,
    seed: int = 0,
) -> Path:
    """Overlay several studies' steps to result and write ``out_dir/comparison.html``.

    The figure shows the raw curves and the curves divided by their steps at the smallest
    batch size every study reached (or, with none in common, at each study's own smallest: the
    paper's way of comparing workloads of different lengths). ``labels`` default to
    "workload / optimizer", with the file name added where two studies would share a label.
    Returns the page's path.
    """
    if not store_paths:
        raise ValueError("compare needs at least one study")
    if labels is not None and len(labels) != len(store_paths):
        raise ValueError(f"got {len(labels)} labels for {len(store_paths)} studies")
    studies = []
    for path in store_paths:
        study = StoredStudy.read(path)
        analysis = study.analyze(bootstrap_samples=bootstrap_samples, seed=seed)
        studies.append((Path(path), study.meta, analysis, budget_text(study.trials)))
    with _output_folder(Path(out_dir)) as out:
        return _write_comparison(studies, labels, out)


def budget_text(trials: pd.DataFrame) -> str:
    """A study's budget in words: the same steps at every batch size, the same examples, or a
    range of steps; ``-`` where the trials record none."""
    if "step_budget" not in trials.columns:
        return "-"
    budgets = trials["step_budget"].groupby(level="batch_size").max().dropna()
    budgets = budgets[budgets > 0]
    if budgets.empty:
        return "-"
    if budgets.nunique() == 1:
        return f"{int(budgets.iloc[0]):,} steps"
    examples = budgets * budgets.index.to_numpy()
    # An example budget is rounded up to whole steps: within one batch of the same number.
    if examples.max() - examples.min() < budgets.index.max():
        return f"{int(examples.min()):,} examples"
    return f"{int(budgets.min()):,} to {int(budgets.max()):,} steps"


def _write_comparison(
    studies: list[tuple[Path, dict[str, Any], StudyAnalysis, str]],
    labels: Sequence[str] | None,
    out: Path,
) -> Path:
    names = list(labels) if labels is not None else [_study_label(m) for _, m, _, _ in studies]
    if labels is None:
        shared = {name for name in names if names.count(name) > 1}
        names = [
            f"{name} ({path.stem})" if name in shared else name
            for name, (path, _, _, _) in zip(names, studies, strict=True)
        ]
    curves = {
        name: (
            analysis.winners.index.to_numpy(dtype=float),
            analysis.winners["steps"].to_numpy(dtype=float, na_value=np.nan),
        )
        for name, (_, _, analysis, _) in zip(names, studies, strict=True)
    }
    common = figures.common_start(curves)
    if common is not None:
        caption = (
            "Left: steps to result of each study. Right: each curve divided by its steps at "
            f"batch size {format_number(common)}, the smallest that every study reached the goal "
            "at; the dashed line is perfect scaling from there."
        )
    else:
        caption = (
            "Left: steps to result of each study. Right: each curve divided by its steps at "
            "its own smallest reached batch size, since no batch size reached the goal in every "
            "study; each dashed line, in its curve's colour, is perfect scaling from that "
            "curve's start."
        )
    with figures.paper_style():
        rendered = save_figure(
            figures.comparison_figure(curves),
            out,
            "comparison",
            "Steps to result, compared",
            caption,
        )
    rows = []
    for name, (path, _, analysis, budget) in zip(names, studies, strict=True):
        fit = analysis.fit
        regimes = analysis.regimes
        rows.append(
            [
                _esc(name),
                _esc(path),
                _esc(f"{analysis.metric} {_sign(analysis.maximize)} {analysis.target:g}"),
                budget,
                f"{int(analysis.winners['steps'].notna().sum())} of {len(analysis.batch_sizes)}",
                "-" if fit is None else f"{format_number(fit.s_min)} {fit.interval_text('s_min')}",
                "-" if fit is None else f"{fit.b_crit_text()} {fit.interval_text('b_crit')}",
                "-" if fit is None else format_number(fit.e_min),
                format_number(regimes.perfect_until),
                format_number(regimes.maximal_from),
                str(len(analysis.warnings)),
            ]
        )
    table = _table(
        [
            "study",
            "store",
            "goal",
            "budget",
            "batch sizes reaching it",
            "S_min",
            "B_crit",
            "E_min",
            "perfect scaling up to",
            "no gain from",
            "warnings",
        ],
        rows,
        text={0, 1, 2, 3},
    )
    title = "Comparison: " + ", ".join(names)
    body = "".join(
        [
            f"<h1>{_esc(title)}</h1>",
            f'<p class="lead">{len(studies)} studies; intervals in brackets (95%). Each '
            "study's own report lists its design warnings.</p>",
            table,
            _figure_html(rendered),
            "<h2>Software</h2>",
            _versions_html(),
            f"<footer>Written by batchscale on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.</footer>",
        ]
    )
    page = out / COMPARISON_FILE
    page.write_text(_page(title, body), encoding="utf-8")
    return page
