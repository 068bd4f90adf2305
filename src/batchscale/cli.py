"""The ``batchscale`` command line."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress
from rich.table import Table

from batchscale.config import ConfigError, build_config, parse_batch_sizes
from batchscale.store import StoreError, StudyStore
from batchscale.study import Progress, Study, StudySummary, summarize
from batchscale.training.trial import TrialResult
from batchscale.workloads import DataUnavailableError, get_workload, workload_names

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
console = Console()
DEFAULT_STORE = Path("studies/default.sqlite")


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
    table.add_column("reached / diverged / pruned / total", justify="right")
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
            f"{row.reached} / {row.diverged} / {row.pruned} / {row.trials}",
        ]
        if timed:
            cells.append(_format_seconds(row.step_time))
            cells.append(_format_seconds(row.time_to_result))
        if replicated:
            cells.append(_format_replicates(row.replicates, row.replicate_median))
        table.add_row(*cells)
    out.print(table)


def _format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"


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
    study = Study(settings, store)
    progress = BarProgress()
    try:
        summary = study.run(progress)
    finally:
        progress.stop()
    print_summary(summary, console)
    print_analysis(store, None)
    console.print(f"study stored in {store}")
    if report:
        from batchscale.report import write_report

        page = write_report(store, report_dir or default_report_dir(store))
        console.print(f"report written to {page}")


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
    """Refuse goals outside a stored study's metric range (``meta``), where its workload is
    known."""
    if not goals:
        return
    try:
        metric = get_workload(meta["workload"]).metric
    except ValueError:
        return  # imported, or a user's own workload: the range is not recorded
    for goal in goals:
        try:
            metric.check_target(goal, "goal")
        except ValueError as error:
            raise UserError(str(error)) from None


def print_analysis(store: Path, goals: list[float] | None) -> None:
    """The fit, the regimes and every design warning of a stored study."""
    from batchscale.analysis import analyze_store

    try:
        analysis = analyze_store(store, goals, bootstrap_samples=200)
    except ValueError:
        return  # nothing measured yet: the summary table already says so
    if analysis.fit is not None:
        console.print(analysis.fit.describe())
    console.print(analysis.regimes.describe())
    for warning in analysis.warnings:
        console.print(f"warning: {warning.message}", style="yellow", highlight=False)


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
    opened = StudyStore.open(store, read_only=True)
    try:
        check_goals(opened.metadata, goal_list)
        summary = summarize(opened, opened.metadata["metric"])
    finally:
        opened.close()
    if as_json:
        from batchscale.analysis import fit_and_warnings

        try:
            extra = fit_and_warnings(store, goal_list)
        except ValueError:
            extra = {"fit": None, "regimes": None, "goals": [], "warnings": []}
        typer.echo(json.dumps({**summary.as_dict(), **extra}, indent=2))
    else:
        print_summary(summary, console)
        print_analysis(store, goal_list)


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
    opened = StudyStore.open(store, read_only=True)
    opened.close()
    check_goals(opened.metadata, goal_list)
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
    if label_list is not None and len(label_list) != len(stores):
        raise UserError(f"--labels names {len(label_list)} studies but {len(stores)} were given")
    for path in stores:
        StudyStore.open(path, read_only=True).close()
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
    study = Study.from_store(store)
    progress = BarProgress()
    try:
        study.replicate(seeds, progress)
    finally:
        progress.stop()
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
    from batchscale.analysis.nqm import predicted_curve

    if optimizer not in ("sgd", "momentum"):
        raise UserError(f"unknown optimizer '{optimizer}' for the NQM; known: sgd, momentum")
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
    table = Table(
        title=escape(
            f"NQM ({dims} dims, gamma {gamma:g}), {optimizer}: steps to E[loss] < {target:g}"
        )
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
        float, typer.Option("--learning-rate", min=0.0, help="Without --study.")
    ] = 0.05,
    momentum: Annotated[float, typer.Option(min=0.0, max=0.9999, help="Without --study.")] = 0.9,
    steps: Annotated[
        int | None, typer.Option(min=1, help="Updates to train (default: 1000).")
    ] = None,
    method: Annotated[
        str, typer.Option(help="auto, per_example (torch.func) or two_batch.")
    ] = "auto",
    seed: Annotated[int, typer.Option(help="Seed of the run.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Measure the gradient noise scale B_simple = tr(Sigma) / |G|^2 along a training run."""
    from batchscale.study import noise_scale_of_winner, resolve_device
    from batchscale.training.noise import measure_noise_scale

    if method not in ("auto", "per_example", "two_batch"):
        raise UserError(f"unknown method '{method}'; known: auto, per_example, two_batch")
    if study is not None:
        if batch_size is None:
            raise UserError("--study needs --batch-size: whose winner to follow")
        try:
            trace = noise_scale_of_winner(study, batch_size, method=method, device=device)
        except ValueError as error:
            raise UserError(str(error)) from None
    else:
        settings = build_config(config, workload=workload, optimizer=optimizer, device=device)
        try:
            chosen = get_workload(settings.workload)
        except ValueError as error:
            raise UserError(str(error)) from None
        size = batch_size or settings.batch_sizes[0]
        if size < 2:
            raise UserError(f"batch size {size} is too small: give --batch-size 2 or more")
        params = {"learning_rate": learning_rate}
        if settings.optimizer != "sgd":
            params["momentum"] = momentum
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


def main(argv: list[str] | None = None) -> int:
    """Entry point: one line on stderr and exit code 2 for any mistake in the input."""
    command = typer.main.get_command(app)
    interrupted = (
        "error: interrupted; finished trials are stored, run the same command again to resume"
    )
    try:
        code = command.main(args=argv, prog_name="batchscale", standalone_mode=False)
    except click_errors.NoArgsIsHelpError:
        return 0
    except click_errors.UsageError as error:
        hint = f" (see 'batchscale {error.ctx.info_name} --help')" if error.ctx else ""
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
