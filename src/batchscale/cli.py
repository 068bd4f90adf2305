"""The ``batchscale`` command line."""

from __future__ import annotations

import json
import math
import os
import sqlite3
import sys
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress
from rich.table import Table

from batchscale.analysis.analyze import StoredStudy, StudyAnalysis
from batchscale.analysis.goals import stop_goal
from batchscale.analysis.scaling import no_fit_reason
from batchscale.config import (
    MAX_SEED,
    ConfigError,
    StudyConfig,
    build_config,
    parse_batch_sizes,
)
from batchscale.formatting import format_number, format_seconds
from batchscale.store import StoreError, StudyStore
from batchscale.study import Progress, Study, StudySummary, summarize
from batchscale.training.trial import TrialResult
from batchscale.workloads import DataUnavailableError, get_workload, workload_names
from batchscale.workloads.base import check_in_range

try:  # recent typer releases vendor click
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older typer depends on click itself
    from click import exceptions as click_errors  # type: ignore[no-redef]

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Measure steps to result against batch size, tuning every batch size separately.",
)
# No markup: printed text holds brackets of its own (intervals, "[min, max]", paths), which rich
# would read as style tags and drop.
console = Console(markup=False)
DEFAULT_STORE = Path("studies/default.sqlite")
# Output that is not a terminal (a log file, a pipe) is read later or by programs: rich would
# otherwise wrap it to 80 columns and cut table cells short ("metapara…").
PIPED_WIDTH = 10_000


class UserError(Exception):
    """A mistake in the user's input: reported as one line, exit code 2."""


class BarProgress(Progress):
    """A rich progress bar on stderr: trials done, the current batch size, and an ETA.

    The bar appears only once the study has started, so an early error prints alone.
    """

    def __init__(self) -> None:
        self.bar = RichProgress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("trials"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self.task = self.bar.add_task("starting", total=None)
        self.shown = False

    def start(self, total: int, done: int) -> None:
        """Show and size the bar."""
        self.bar.update(self.task, total=total, completed=done)
        self.bar.start()
        self.shown = True

    def stop(self) -> None:
        """Leave the bar's last state on screen (a bar never shown leaves nothing)."""
        if self.shown:
            self.bar.stop()

    def batch_size(self, batch_size: int) -> None:
        """Show the batch size now running."""
        self.bar.update(self.task, description=f"batch size {batch_size:>6}")

    def trial_done(self, result: TrialResult) -> None:
        """Advance by one trial."""
        self.bar.advance(self.task)


SHORT_NAMES = {
    "learning_rate": "lr",
    "momentum": "mom",
    "end_learning_rate_factor": "end",
    "decay_fraction": "decay",
    "label_smoothing": "ls",
}


def _format_params(params: dict[str, float] | None) -> str:
    if not params:
        return "-"
    return " ".join(f"{SHORT_NAMES.get(name, name)}={value:.3g}" for name, value in params.items())


def print_summary(summary: StudySummary, out: Console) -> None:
    """The summary table: steps to result per batch size with the winning trial."""
    direction = ">" if summary.maximize else "<"
    table = Table(
        title=(
            f"{summary.workload} / {summary.optimizer}: steps to val/{summary.metric} "
            f"{direction} {summary.target:g} (mode {summary.mode}, engine {summary.engine})"
        )
    )
    for column in ("batch size", "steps to result", "best trial", "metaparameters"):
        table.add_column(column, justify="right" if column != "metaparameters" else "left")
    # The report's outcome counts, in its order; "incomplete" only where imported data has it.
    outcomes = ["reached", "missed", "diverged", "pruned"]
    if any(row.incomplete for row in summary.batch_sizes):
        outcomes.append("incomplete")
    table.add_column(" / ".join(outcomes), justify="right")
    timed = any(row.step_time is not None for row in summary.batch_sizes)
    replicated = any(row.replicates for row in summary.batch_sizes)
    if timed:
        table.add_column("step time", justify="right")
        table.add_column("time to result", justify="right")
    if replicated:
        table.add_column("replicates: median [min, max]", justify="right")
    for row in summary.batch_sizes:
        cells = [
            str(row.batch_size),
            "-" if row.steps_to_result is None else str(row.steps_to_result),
            "-" if row.best_trial is None else str(row.best_trial),
            _format_params(row.best_params),
            " / ".join(str(getattr(row, outcome)) for outcome in outcomes),
        ]
        if timed:
            cells.append(format_seconds(row.step_time))
            cells.append(format_seconds(row.time_to_result))
        if replicated:
            cells.append(_format_replicates(row.replicates, row.replicate_median))
        table.add_row(*cells)
    out.print(table)


def _format_replicates(steps: list[int | None] | None, median: float | None) -> str:
    if not steps:
        return "-"
    reached = [s for s in steps if s is not None]
    middle = "never" if median is None else f"{median:g}"
    spread = f" [{min(reached)}, {max(reached)}]" if reached else ""
    missed = len(steps) - len(reached)
    return f"{middle}{spread}" + (f", {missed}/{len(steps)} missed" if missed else "")


@app.command()
def run(
    config: Annotated[
        Path | None, typer.Option("--config", help="TOML file with any of the settings below.")
    ] = None,
    workload: Annotated[
        str | None, typer.Option(help="Workload name (see 'batchscale workloads').")
    ] = None,
    optimizer: Annotated[str | None, typer.Option(help="sgd, momentum or nesterov.")] = None,
    batch_sizes: Annotated[
        str | None, typer.Option("--batch-sizes", help="Comma-separated, e.g. 16,32,64.")
    ] = None,
    trials: Annotated[int | None, typer.Option(help="Quasi-random trials per batch size.")] = None,
    target: Annotated[
        float | None, typer.Option(help="Goal on the validation metric (default: workload's).")
    ] = None,
    goals: Annotated[
        str | None,
        typer.Option(
            help="Further goals, comma-separated, to check that the curve's shape does not "
            "hinge on the chosen one (default: 10% easier and 10% harder). Trials run on to "
            "the hardest."
        ),
    ] = None,
    step_budget: Annotated[
        int | None, typer.Option("--step-budget", help="Steps per trial at every batch size.")
    ] = None,
    epoch_budget: Annotated[
        float | None,
        typer.Option(
            "--epoch-budget",
            help="Train every batch size for this many epochs, never stopping at the goal "
            "(a fixed example budget: compares the best metric reached; implies full mode).",
        ),
    ] = None,
    train_size: Annotated[
        float | None,
        typer.Option(
            "--train-size", help="Training examples to use: a fraction in (0, 1] or a count."
        ),
    ] = None,
    width: Annotated[
        int | None, typer.Option(help="Model width (hidden units or channels).")
    ] = None,
    data_dir: Annotated[
        str | None,
        typer.Option("--data-dir", help="Read real data sets from here, never downloading."),
    ] = None,
    store: Annotated[Path, typer.Option(help="SQLite file that holds the study.")] = DEFAULT_STORE,
    seed: Annotated[
        int | None, typer.Option(help="Study seed (search points, trial seeds).")
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
    mode: Annotated[
        str | None, typer.Option(help="race (stop trials that can no longer win) or full.")
    ] = None,
    engine: Annotated[str | None, typer.Option(help="cohort (batched) or reference.")] = None,
    eval_growth: Annotated[
        float | None,
        typer.Option("--eval-growth", help="Ratio between consecutive evaluation steps."),
    ] = None,
    report_dir: Annotated[
        Path | None,
        typer.Option("--report-dir", help="Where to write the report (default: beside the store)."),
    ] = None,
    report: Annotated[
        bool, typer.Option("--report/--no-report", help="Write the HTML report at the end.")
    ] = True,
    noise_scale: Annotated[
        bool | None,
        typer.Option(
            "--noise-scale/--no-noise-scale",
            help="Measure the gradient noise scale along each batch size's winner.",
        ),
    ] = None,
    executor: Annotated[
        str | None,
        typer.Option(
            help="local (in this process) or ray (cohorts as Ray tasks; a local Ray instance "
            "unless --ray-address is given)."
        ),
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option("--ray-address", help="Address of an existing Ray cluster, e.g. HOST:6379."),
    ] = None,
) -> None:
    """Run (or resume) a study and print its summary."""
    settings = build_config(
        config,
        workload=workload,
        optimizer=optimizer,
        batch_sizes=batch_sizes,
        trials=trials,
        target=target,
        goals=goals,
        step_budget=step_budget,
        epoch_budget=epoch_budget,
        train_size=train_size,
        width=width,
        data_dir=data_dir,
        seed=seed,
        device=device,
        mode=mode,
        engine=engine,
        eval_growth=eval_growth,
        noise_scale=noise_scale,
        executor=executor,
        ray_address=ray_address,
    )
    check_store_path(store, "--store")
    check_store_writable(store, "--store")
    # Before any training: a report folder that cannot be written would fail only at the end.
    if report:
        check_output_dir(
            report_dir or default_report_dir(store),
            "--report-dir" if report_dir else None,
            None if report_dir else "pass --report-dir DIR or --no-report",
        )
    settings, notes = resume_settings(settings, store)
    study = Study(settings, store)
    if notes:
        # Only once the store is known to hold this very study (else its one-line error).
        study.open_store().close()
        for note in notes:
            console.print(note, highlight=False)
    progress = BarProgress()
    try:
        summary = study.run(progress)
    finally:
        progress.stop()
    print_summary(summary, console)
    stored = StoredStudy.read(store)
    print_analysis(stored, analyze(stored, None))
    console.print(f"study stored in {store}")
    trials = sum(row.trials for row in summary.batch_sizes)
    if trials and sum(row.diverged for row in summary.batch_sizes) == trials:
        # A study with nothing to measure: said as an error, and no report of nothing.
        raise UserError(
            f"every trial diverged ({trials} of {trials}): the learning rates searched are too "
            "large; lower learning_rate's range under [search_space] in a --config file"
        )
    if report:
        from batchscale.report import write_report

        page = write_report(store, report_dir or default_report_dir(store))
        console.print(f"report written to {page}")


# Settings of a stored study that a resume takes from it where they are not given; a group is
# taken whole or not at all (a given step budget rules out the stored epoch budget).
RESUMED_SETTINGS = (
    ("workload",),
    ("optimizer",),
    ("target",),
    ("goals",),
    ("step_budget", "epoch_budget"),
    ("train_size",),
    ("width",),
    ("data_dir",),
    ("search_space",),
    ("seed",),
    ("mode",),
    ("engine",),
    ("eval_growth",),
    ("divergence_factor",),
    ("noise_scale",),
)


def resume_settings(settings: StudyConfig, store: Path) -> tuple[StudyConfig, list[str]]:
    """``settings`` for resuming ``store``, and notes that say what was taken from it.

    What is not given (by a flag or ``--config``) is the stored study's: its batch sizes, its
    trials per batch size and the settings of its last run (not where it ran: device and
    executor), so that a bare ``run --store FILE`` carries on the study in it.
    """
    notes: list[str] = []
    if not store.is_file():
        return settings, notes
    opened = StudyStore.open(store, read_only=True)
    try:
        metadata = opened.metadata
        counts: dict[int, int] = {}
        for batch_size, _ in opened.finished_trials():
            counts[batch_size] = counts.get(batch_size, 0) + 1
    finally:
        opened.close()
    given = settings.model_fields_set
    stored_config = metadata.get("config") or {}
    taken: dict[str, Any] = {}
    for group in RESUMED_SETTINGS:
        if not given & set(group) and all(key in stored_config for key in group):
            taken.update({key: stored_config[key] for key in group})
    if "trials" not in given and metadata.get("trials"):
        taken["trials"] = int(metadata["trials"])
    # Re-running to resume must not quietly train the default batch sizes the store lacks.
    planned = tuple(sorted(int(b) for b in metadata.get("batch_sizes", [])))
    if "batch_sizes" not in given and planned:
        taken["batch_sizes"] = planned
    try:
        resumed = StudyConfig(**{**settings.model_dump(exclude_unset=True), **taken})
    except ValidationError as error:
        raise ConfigError(
            f"the settings stored in {store} are not valid here ({error.errors()[0]['msg']}); "
            "give them as flags or use another --store"
        ) from None
    changed = [key for key in taken if getattr(resumed, key) != getattr(settings, key)]
    if "batch_sizes" in changed:
        # Said only where it differs from what would otherwise run.
        notes.append(
            f"note: resuming {store} at its batch sizes {_join(planned)} "
            "(give --batch-sizes to add others)"
        )
    others = [key for key in changed if key != "batch_sizes"]
    if others:
        shown = ", ".join(f"{key}={_setting(getattr(resumed, key))}" for key in others)
        notes.append(
            f"note: resuming {store} with its settings {shown} (give a flag to change one)"
        )
    most = max((counts.get(b, 0) for b in resumed.batch_sizes), default=0)
    if most > resumed.trials:
        notes.append(
            f"note: {store} already holds up to {most} trials per batch size, more than the "
            f"{resumed.trials} asked for; every stored trial is used"
        )
    return resumed, notes


def _setting(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(f"{item:g}" if isinstance(item, float) else str(item) for item in value)
    if isinstance(value, dict):
        return "(as stored)"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _join(numbers: list[int] | tuple[int, ...]) -> str:
    return ", ".join(str(number) for number in numbers)


def check_store_path(store: Path, flag: str | None = None) -> None:
    """Refuse a folder where a study file is expected, with the study files it holds."""
    if not store.is_dir():
        return
    name = f"{flag} {store}" if flag else str(store)
    inside = sorted(path.name for path in store.glob("*.sqlite"))
    example = store / (inside[0] if inside else "study.sqlite")
    raise UserError(f"{name} is a folder, not a study file; pass a study file such as {example}")


def check_store_writable(store: Path, flag: str | None = None) -> None:
    """Refuse, before any work, a study file that cannot be written, or a folder where it
    (or the lock file kept beside it) cannot be created."""
    name = f"{flag} {store}" if flag else str(store)
    fix = f"make it writable or pass another {'file' if flag is None else flag}"
    if store.exists() and not os.access(store, os.W_OK):
        raise UserError(f"{name} is read-only; {fix}")
    folder = next(parent for parent in [store.parent, *store.parent.parents] if parent.exists())
    if folder.is_dir() and not os.access(folder, os.W_OK):
        raise UserError(f"{name} cannot be written: its folder {folder} is read-only; {fix}")


def check_output_dir(path: Path, flag: str | None, fix: str | None = None) -> None:
    """Refuse an output folder that is a file or cannot be created, before any work.

    ``flag`` names the option that gave ``path``; ``None`` for a default folder, which
    ``fix`` then says how to avoid.
    """
    name = f"{flag} {path}" if flag else f"the report folder {path} (beside the store)"
    fix = fix or "give a folder (it is created if missing)"
    if path.exists() and not path.is_dir():
        raise UserError(f"{name} is a file, not a folder; {fix}")
    # The nearest part of the path that exists must be a folder that can be written.
    existing = next(parent for parent in path.parents if parent.exists())
    if not existing.is_dir():
        raise UserError(f"{name} cannot be created: {existing} is a file; {fix}")
    writable = path if path.is_dir() else existing
    if not os.access(writable, os.W_OK):
        raise UserError(f"{name} cannot be written: {writable} is read-only; {fix}")


def default_report_dir(store: Path) -> Path:
    """``studies/x.sqlite`` -> ``studies/x-report``."""
    return store.with_name(store.stem + "-report")


def parse_goals(text: str | None) -> list[float] | None:
    """``"0.1,0.08"`` -> ``[0.1, 0.08]``; a clear error for anything else."""
    if text is None:
        return None
    try:
        goals = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--goals '{text}' must be comma-separated numbers") from None
    if not goals:
        raise UserError("--goals needs at least one number")
    return goals


def check_goals(meta: dict[str, Any], goals: list[float] | None) -> None:
    """Refuse goals outside a stored study's metric range (``meta``): a built-in workload's, or
    the range an import stored."""
    if not goals:
        return
    try:
        metric = get_workload(meta["workload"]).metric
        low, high = metric.low, metric.high
    except ValueError:
        if "metric_range" not in meta:
            return  # a user's own workload: its range is not recorded
        stored_low, stored_high = meta["metric_range"]
        low = -math.inf if stored_low is None else stored_low
        high = math.inf if stored_high is None else stored_high
    edge = high if meta["maximize"] else low
    for goal in goals:
        try:
            check_in_range(goal, meta["metric"], low, high, "goal")
        except ValueError as error:
            raise UserError(str(error)) from None
        if goal == edge:
            raise UserError(
                f"goal {goal:g} can never be reached: {meta['metric']} cannot be "
                f"{'above' if meta['maximize'] else 'below'} {edge:g}; choose a goal inside "
                "its range"
            )


def analyze(study: StoredStudy, goals: list[float] | None) -> StudyAnalysis | None:
    """The stored study's analysis, as ``show --json`` and the report compute it (the same
    bootstrap, so the same intervals); ``None`` while nothing is measured."""
    try:
        return study.analyze(goals)
    except ValueError:
        return None  # nothing measured yet: the summary table already says so


def print_analysis(study: StoredStudy, analysis: StudyAnalysis | None) -> None:
    """The fit, the regimes, the curve at every goal and every design warning."""
    if analysis is None:
        return
    if analysis.fit is not None:
        console.print(analysis.fit.describe(), highlight=False)
    console.print(analysis.regimes.describe())
    stop = stop_goal(
        study.meta, study.measurements, analysis.metric, analysis.target, analysis.maximize
    )
    print_goals(analysis, stop, console)
    for warning in analysis.warnings:
        console.print(f"warning: {warning.message}", style="yellow", highlight=False)


def print_goals(analysis: StudyAnalysis, stop: float | None, out: Console) -> None:
    """The curve recomputed at every goal (what ``show --json`` lists as ``goals``), with the
    report's notes; ``stop`` is the goal trials stopped at."""
    sign = ">" if analysis.maximize else "<"
    table = Table(title="steps to result at each goal, from the same trials")
    for column in ("goal", "batch sizes reaching it", "S_min", "B_crit", "note"):
        table.add_column(column, justify="left" if column in ("goal", "note") else "right")
    for curve in analysis.goal_curves:
        reaching = [
            int(b) for b, s in zip(curve.batch_sizes, curve.steps, strict=True) if math.isfinite(s)
        ]
        notes = curve.notes(analysis.target, analysis.maximize, stop)
        if curve.fit is None and not curve.censored:
            notes.append(f"no fit: {no_fit_reason(curve.batch_sizes, curve.steps)}")
        b_crit = "-" if curve.fit is None else curve.fit.b_crit_text()
        if curve.exact_fit:
            b_crit += " (2 points: exact fit)"
        table.add_row(
            f"{sign} {curve.goal:g}",
            f"{curve.reached} of {len(curve.batch_sizes)}"
            + (f" ({_join(reaching)})" if reaching and not curve.censored else ""),
            "-" if curve.fit is None else format_number(curve.fit.s_min),
            # No interval: the JSON and the report give none per goal (least squares only).
            b_crit,
            "; ".join(notes),
        )
    out.print(table)


def unfinished_trials(meta: dict[str, Any], summary: StudySummary) -> dict[str, Any] | None:
    """How far an interrupted study got: ``planned`` trials per batch size, ``stored`` and
    ``total`` trials, and ``short`` (batch size -> trials stored) for the batch sizes with fewer
    than the last ``run`` planned; ``None`` for a finished study or one without stored settings.
    """
    config = meta.get("config")
    if not config:
        return None  # an imported study: nothing was planned here
    planned = int(config.get("trials", 0))
    sizes = [int(b) for b in config.get("batch_sizes", [])]
    stored = {row.batch_size: min(row.trials, planned) for row in summary.batch_sizes}
    short = {b: stored.get(b, 0) for b in sizes if stored.get(b, 0) < planned}
    if not short:
        return None
    return {
        "planned": planned,
        "stored": sum(stored.get(b, 0) for b in sizes),
        "total": planned * len(sizes),
        "short": short,
    }


def incomplete_note(unfinished: dict[str, Any]) -> str:
    """``unfinished_trials`` in one line, with how to resume."""
    short: dict[int, int] = unfinished["short"]
    none = [b for b, count in short.items() if count == 0]
    details = [f"{b} has {count}" for b, count in short.items() if count]
    if none:
        details.append(f"{_join(none)} {'have' if len(none) > 1 else 'has'} none")
    return (
        f"incomplete: {unfinished['stored']} of {unfinished['total']} trials stored "
        f"({unfinished['planned']} per batch size planned; {'; '.join(details)}); "
        "run the same command again to resume"
    )


@app.command()
def show(
    store: Annotated[Path, typer.Argument(help="A study file written by 'batchscale run'.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    goals: Annotated[
        str | None,
        typer.Option(help="Goals to recompute the curve at, comma-separated (default: stored)."),
    ] = None,
) -> None:
    """Print a stored study's steps to result per batch size, its fit and its warnings."""
    goal_list = parse_goals(goals)
    check_store_path(store)
    opened = StudyStore.open(store, read_only=True)
    try:
        check_goals(opened.metadata, goal_list)
        summary = summarize(opened, opened.metadata["metric"])
        study = StoredStudy.read(opened)
    finally:
        opened.close()
    # One analysis for both forms, so the table and the JSON cannot disagree.
    analysis = analyze(study, goal_list)
    unfinished = unfinished_trials(study.meta, summary)
    if as_json:
        extra = (
            analysis.json_summary()
            if analysis is not None
            else {"fit": None, "regimes": None, "goals": [], "warnings": []}
        )
        typer.echo(json.dumps({**summary.as_dict(), **extra, "incomplete": unfinished}, indent=2))
    else:
        print_summary(summary, console)
        if unfinished is not None:
            console.print(incomplete_note(unfinished), style="yellow", highlight=False)
        print_analysis(study, analysis)


@app.command("report")
def report_command(
    store: Annotated[Path, typer.Argument(help="A study file.")],
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default: beside the store).")
    ] = None,
    goals: Annotated[
        str | None, typer.Option(help="Goals for the fragile-goal check, comma-separated.")
    ] = None,
    devices: Annotated[
        int, typer.Option(min=1, help="Devices to project time to result onto.")
    ] = 8,
    bandwidth_gbps: Annotated[
        float, typer.Option("--bandwidth-gbps", min=1e-6, help="All-reduce link, GB/s.")
    ] = 10.0,
    latency_us: Annotated[
        float, typer.Option("--latency-us", min=0.0, help="All-reduce message latency, µs.")
    ] = 10.0,
) -> None:
    """Write a self-contained HTML report with every figure as PNG and SVG."""
    from batchscale.report import write_report

    goal_list = parse_goals(goals)
    check_store_path(store)
    opened = StudyStore.open(store, read_only=True)
    opened.close()
    check_goals(opened.metadata, goal_list)
    check_output_dir(
        out or default_report_dir(store),
        "--out" if out else None,
        None if out else "pass --out DIR",
    )
    try:
        page = write_report(
            store,
            out or default_report_dir(store),
            goal_list,
            devices=devices,
            bandwidth=bandwidth_gbps * 1e9,
            latency=latency_us * 1e-6,
        )
    except ValueError as error:
        raise UserError(str(error)) from None
    console.print(f"report written to {page}")


@app.command()
def compare(
    stores: Annotated[list[Path], typer.Argument(help="Two or more study files.")],
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("reports/comparison"),
    labels: Annotated[
        str | None, typer.Option(help="Comma-separated labels, one per study.")
    ] = None,
) -> None:
    """Overlay several studies' curves, raw and normalised, on one page."""
    from batchscale.report import write_comparison

    label_list = None if labels is None else [part.strip() for part in labels.split(",")]
    if len(stores) < 2:
        raise UserError("compare needs two or more study files; for one study use 'report'")
    if len({path.resolve() for path in stores}) < len(stores):
        raise UserError("a study file is given twice; pass each study once")
    if label_list is not None and len(label_list) != len(stores):
        raise UserError(f"--labels names {len(label_list)} studies but {len(stores)} were given")
    if label_list is not None and (not all(label_list) or len(set(label_list)) < len(label_list)):
        raise UserError("--labels must be distinct and non-empty, one per study")
    for path in stores:
        check_store_path(path)
        StudyStore.open(path, read_only=True).close()
    check_output_dir(out, "--out")
    try:
        page = write_comparison(stores, out, label_list)
    except ValueError as error:
        raise UserError(str(error)) from None
    console.print(f"comparison written to {page}")


@app.command()
def workloads(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
) -> None:
    """List the built-in workloads with their metric, goal and data size."""
    rows: list[dict[str, Any]] = []
    for name in workload_names():
        workload = get_workload(name)
        rows.append(
            {
                "name": name,
                "description": workload.description,
                "metric": workload.metric.name,
                "direction": workload.metric.direction,
                "target": workload.default_target,
                "data": workload.data_sizes(),
            }
        )
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="workloads")
    for column in ("name", "metric", "goal", "train / val / test", "description"):
        table.add_column(column)
    for row in rows:
        sizes = row["data"]
        comparison = "<" if row["direction"] == "minimize" else ">"
        train = str(sizes["train"]) if sizes["train"] else "unlimited"
        table.add_row(
            row["name"],
            row["metric"],
            f"val {comparison} {row['target']:g}",
            f"{train} / {sizes['validation']} / {sizes['test']}",
            row["description"],
        )
    console.print(table)


@app.command("import-batch-science")
def import_batch_science_command(
    source: Annotated[
        Path,
        typer.Argument(
            help="A workload directory dataset/model/optimizer of the paper's released data, "
            "or the archive root together with --workload."
        ),
    ],
    store: Annotated[Path, typer.Option(help="The study file to create.")],
    workload: Annotated[
        str | None,
        typer.Option(
            help="dataset/model/optimizer under the archive root, e.g. "
            "mnist/simple_cnn_base/nesterov_momentum."
        ),
    ] = None,
    metric: Annotated[
        str | None,
        typer.Option(help="Validation column that defines the goal (default: the paper's)."),
    ] = None,
    target: Annotated[
        float | None, typer.Option(help="Goal on that column (default: the paper's).")
    ] = None,
    maximize: Annotated[
        bool | None,
        typer.Option("--maximize/--minimize", help="Direction of a metric without a default."),
    ] = None,
    include_statuses: Annotated[
        str,
        typer.Option(
            "--include-statuses",
            help="Comma-separated statuses whose measurements count (the paper's loader: "
            "COMPLETE only).",
        ),
    ] = "COMPLETE",
    max_trials: Annotated[
        int | None,
        typer.Option("--max-trials", min=1, help="Keep the first N counted trials per batch size."),
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing study file.")] = False,
) -> None:
    """Import one workload of the paper's released data (Shallue et al. 2019) into a study."""
    from batchscale.importers import import_batch_science

    check_store_path(store, "--store")
    check_store_writable(store, "--store")
    statuses = [part.strip().upper() for part in include_statuses.split(",") if part.strip()]
    summary = import_batch_science(
        source,
        store,
        workload=workload,
        metric=metric,
        target=target,
        maximize=maximize,
        include_statuses=statuses,
        max_trials=max_trials,
        force=force,
    )
    for warning in summary.warnings:
        console.print(f"warning: {warning}", style="yellow")
    console.print(
        f"imported {summary.measured_trials} trials ({summary.rows} measurements) of "
        f"{summary.workload} / {summary.optimizer} into {summary.store} in "
        f"{summary.seconds:.1f} s"
    )
    opened = StudyStore.open(store, read_only=True)
    try:
        print_summary(summarize(opened, opened.metadata["metric"]), console)
    finally:
        opened.close()


@app.command()
def replicate(
    store: Annotated[Path, typer.Argument(help="A study file written by 'batchscale run'.")],
    seeds: Annotated[int, typer.Option(min=1, help="New seeds per batch size's winner.")] = 5,
    report: Annotated[
        bool, typer.Option("--report/--no-report", help="Rewrite the report at the end.")
    ] = True,
) -> None:
    """Re-run every winner with new seeds: the spread of steps to result (winner's curse)."""
    check_store_path(store)
    check_store_writable(store)
    if report:
        check_output_dir(default_report_dir(store), None, "move it away or pass --no-report")
    try:
        study = Study.from_store(store)
    except ConfigError as error:
        python = f"Study.from_store('{store}', workload=my_workload).replicate({seeds})"
        raise UserError(_custom_workload_hint(str(error), store, python)) from None
    progress = BarProgress()
    try:
        replicated = study.replicate(seeds, progress)
    finally:
        progress.stop()
    if not replicated:
        console.print(
            f"note: no batch size of {store} reached the goal, so there is no winner to replicate",
            highlight=False,
        )
    opened = StudyStore.open(store, read_only=True)
    try:
        print_summary(summarize(opened, opened.metadata["metric"]), console)
    finally:
        opened.close()
    if report:
        from batchscale.report import write_report

        console.print(f"report written to {write_report(store, default_report_dir(store))}")


@app.command()
def nqm(
    optimizer: Annotated[str, typer.Option(help="sgd or momentum (heavy ball).")] = "sgd",
    dims: Annotated[int, typer.Option(min=1, help="Dimensions d (h_i = 1/i).")] = 100,
    gamma: Annotated[
        float, typer.Option(min=0.0, help="Preconditioning P = H^-gamma (0: none).")
    ] = 0.0,
    target: Annotated[float, typer.Option(help="Expected loss to reach.")] = 0.05,
    batch_sizes: Annotated[
        str, typer.Option("--batch-sizes", help="Comma-separated batch sizes.")
    ] = "1,4,16,64,256,1024,4096,16384",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    out: Annotated[
        Path | None, typer.Option(help="Write nqm.png and nqm.svg of the curve here.")
    ] = None,
) -> None:
    """Predict steps to result on the noisy quadratic model, in closed form."""
    from batchscale.analysis.nqm import NoisyQuadratic, predicted_curve

    if optimizer not in ("sgd", "momentum"):
        raise UserError(f"unknown optimizer '{optimizer}' for the NQM; known: sgd, momentum")
    try:
        initial = NoisyQuadratic(dims, gamma).initial_loss
    except ValueError as error:
        raise UserError(str(error)) from None
    # At or above the loss at step 0 the answer is "0 steps at any learning rate": meaningless.
    if target >= initial:
        raise UserError(
            f"--target {target:g} is not below the initial expected loss {initial:.4g} of the "
            f"{dims}-dimension NQM, so it is reached before training; choose a target below it"
        )
    try:
        sizes = list(parse_batch_sizes(batch_sizes))
    except ValueError as error:
        raise UserError(str(error)) from None
    try:
        prediction = predicted_curve(
            sizes,
            optimizer="sgd" if optimizer == "sgd" else "momentum",
            dims=dims,
            gamma=gamma,
            target=target,
        )
    except ValueError as error:
        raise UserError(str(error)) from None
    if out is not None:
        from batchscale.report.nqm_figures import nqm_figure

        out.mkdir(parents=True, exist_ok=True)
        figure = nqm_figure([prediction])
        for suffix in ("png", "svg"):
            figure.savefig(out / f"nqm.{suffix}", dpi=150)
    if as_json:
        typer.echo(json.dumps(prediction.to_dict(), indent=2))
        return
    # The console prints without markup, so the brackets need no escaping.
    table = Table(
        title=f"NQM ({dims} dims, gamma {gamma:g}), {optimizer}: steps to E[loss] < {target:g}"
    )
    for column in ("batch size", "steps to result", "learning rate", "momentum"):
        table.add_column(column, justify="right")
    for point in prediction.to_dict()["batch_sizes"]:
        steps = point["steps_to_result"]
        table.add_row(
            str(point["batch_size"]),
            "-" if steps is None else str(steps),
            f"{point['learning_rate']:.4g}",
            f"{point['momentum']:.4g}",
        )
    console.print(table)
    if out is not None:
        console.print(f"figure written to {out / 'nqm.png'}")


@app.command("noise-scale")
def noise_scale(
    workload: Annotated[str | None, typer.Option(help="Workload name.")] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size", min=2, help="Batch size to train at (the noise needs two examples)."
        ),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="TOML study config (workload, optimizer).")
    ] = None,
    study: Annotated[
        Path | None,
        typer.Option(help="Measure along this study's winning trial at --batch-size."),
    ] = None,
    optimizer: Annotated[str | None, typer.Option(help="sgd, momentum or nesterov.")] = None,
    learning_rate: Annotated[
        float | None,
        typer.Option("--learning-rate", min=0.0, help="Without --study (default: 0.05)."),
    ] = None,
    momentum: Annotated[
        float | None, typer.Option(min=0.0, max=0.9999, help="Without --study (default: 0.9).")
    ] = None,
    steps: Annotated[
        int | None, typer.Option(min=1, help="Without --study: updates to train (default: 1000).")
    ] = None,
    method: Annotated[
        str, typer.Option(help="auto, per_example (torch.func) or two_batch.")
    ] = "auto",
    seed: Annotated[int, typer.Option(min=0, max=MAX_SEED, help="Seed of the run.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    data_dir: Annotated[
        str | None,
        typer.Option("--data-dir", help="Read real data sets from here, never downloading."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Measure the gradient noise scale B_simple = tr(Sigma) / |G|^2 along a training run."""
    from batchscale.study import configured_workload, noise_scale_of_winner, resolve_device
    from batchscale.training.noise import measure_noise_scale

    if method not in ("auto", "per_example", "two_batch"):
        raise UserError(f"unknown method '{method}'; known: auto, per_example, two_batch")
    if study is not None:
        if batch_size is None:
            raise UserError("--study needs --batch-size: whose winner to follow")
        given = {
            "--workload": workload,
            "--config": config,
            "--optimizer": optimizer,
            "--learning-rate": learning_rate,
            "--momentum": momentum,
            "--steps": steps,
        }
        ignored = [flag for flag, value in given.items() if value is not None]
        if ignored:
            raise UserError(
                f"--study follows the winner with its own settings, so {', '.join(ignored)} "
                "would be ignored; leave them out, or leave out --study"
            )
        check_store_path(study, "--study")
        opened = StudyStore.open(study, read_only=True)
        try:
            measured = sorted({b for b, _ in opened.finished_trials()})
            imported = opened.metadata.get("imported")
        finally:
            opened.close()
        if imported:
            raise UserError(
                f"{study} holds released measurements, not a model to train; follow a "
                "winner of a study batchscale ran"
            )
        if not measured:
            raise UserError(f"the study {study} has no finished trials yet; run it first")
        if batch_size not in measured:
            raise UserError(
                f"batch size {batch_size} is not in the study {study}; its batch sizes are "
                f"{_join(measured) or 'none yet'}: choose one of them"
            )
        try:
            trace = noise_scale_of_winner(
                study, batch_size, method=method, device=device, data_dir=data_dir
            )
        except ValueError as error:
            python = (
                "batchscale.study.noise_scale_of_winner("
                f"'{study}', {batch_size}, workload=my_workload)"
            )
            raise UserError(_custom_workload_hint(str(error), study, python)) from None
    else:
        settings = build_config(
            config, workload=workload, optimizer=optimizer, device=device, data_dir=data_dir
        )
        chosen = configured_workload(settings)
        size = batch_size or settings.batch_sizes[0]
        if size < 2:
            raise UserError(f"batch size {size} is too small: give --batch-size 2 or more")
        params = {"learning_rate": 0.05 if learning_rate is None else learning_rate}
        if settings.optimizer != "sgd":
            params["momentum"] = 0.9 if momentum is None else momentum
        elif momentum is not None:
            raise UserError(
                "plain sgd has no momentum; drop --momentum, or pass --optimizer momentum "
                "or nesterov"
            )
        try:
            trace = measure_noise_scale(
                chosen,
                params,
                settings.optimizer,
                size,
                steps or 1000,
                seed=seed,
                device=resolve_device(settings.device),
                method=method,  # type: ignore[arg-type]
            )
        except ValueError as error:
            raise UserError(str(error)) from None
    if trace.diverged:
        last = trace.points[-1].step if trace.points else 0
        raise UserError(
            f"the run diverged (non-finite loss or gradient) after step {last}, so its noise "
            "scale means nothing; lower --learning-rate"
        )
    if as_json:
        typer.echo(json.dumps(trace.to_dict(), indent=2))
        return
    table = Table(title=f"gradient noise scale ({trace.method})")
    for column in ("step", "B_simple", "|G|^2", "tr(Sigma)", "train loss"):
        table.add_column(column, justify="right")
    for point in trace.points:
        table.add_row(
            str(point.step),
            f"{point.b_simple:.4g}",
            f"{point.grad_sq_norm:.4g}",
            f"{point.trace_sigma:.4g}",
            f"{point.train_loss:.4g}",
        )
    console.print(table)
    console.print(f"B_simple averaged over training: {trace.b_simple:.4g}")
    if trace.note:
        console.print(trace.note)


def _custom_workload_hint(message: str, store: Path, python: str) -> str:
    """``message``, plus how to reach a user's own workload, which only Python can build."""
    if not message.startswith("unknown workload"):
        return message
    return (
        f"{message.split(';')[0]} in {store}: a custom workload cannot be rebuilt from the "
        f"command line; run it from Python with the same CustomWorkload: {python}"
    )


LESS_MEMORY = "ask for less: smaller batch sizes, --width or --dims"


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def main(argv: list[str] | None = None) -> int:
    """Entry point: one line on stderr and exit code 2 for any mistake in the input."""
    global console
    command = typer.main.get_command(app)
    # Decided per call, not at import: the same process may print to a terminal and a pipe.
    # An explicit COLUMNS still wins, as rich reads it.
    piped = not console.is_terminal and "COLUMNS" not in os.environ
    console = Console(width=PIPED_WIDTH if piped else None, markup=False)
    interrupted = (
        "error: interrupted; finished trials are stored, run the same command again to resume"
    )
    try:
        code = command.main(args=argv, prog_name="batchscale", standalone_mode=False)
    except click_errors.NoArgsIsHelpError:
        return 0
    except click_errors.UsageError as error:
        context = error.ctx
        command_name = "" if context is None or context.parent is None else f" {context.info_name}"
        hint = f" (see 'batchscale{command_name} --help')"
        print(f"error: {error.format_message()}{hint}".replace("\n", " "), file=sys.stderr)
        return 2
    except (ConfigError, StoreError, UserError, DataUnavailableError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (sqlite3.DatabaseError, pd.errors.DatabaseError) as error:
        print(
            f"error: a study file cannot be read ({error}); it is damaged or not a study: "
            "restore it from a copy or pass another file",
            file=sys.stderr,
        )
        return 2
    except MemoryError as error:
        print(f"error: out of memory ({_first_line(error)}); {LESS_MEMORY}", file=sys.stderr)
        return 2
    except RuntimeError as error:
        # PyTorch reports a failed allocation (CPU or CUDA) as a RuntimeError.
        if "alloc" not in str(error) and "out of memory" not in str(error):
            raise
        print(f"error: out of memory ({_first_line(error)}); {LESS_MEMORY}", file=sys.stderr)
        return 2
    except OSError as error:
        where = f"{error.filename}: " if error.filename else ""
        print(f"error: {where}{error.strerror or error}; check the path", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
    if code == 130:  # typer turns Ctrl-C into this exit code when it does not exit itself
        print(interrupted, file=sys.stderr)
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
