"""Read the paper's released data (Shallue et al. 2019) into a batchscale study store.

``batch_science_data.tar.bz2`` unpacks to::

    dataset/model/optimizer/batch_size/study.json
    dataset/model/optimizer/batch_size/trial_id/metadata.json
    dataset/model/optimizer/batch_size/trial_id/measurements.csv

with three special groups one level deeper: ``mnist_subsets/``, ``imagenet_subsets/`` and
``solution_quality/`` (``mnist_subsets/mnist_13750/simple_cnn_base/nesterov_momentum``, say).
One workload directory, all its batch sizes, becomes one store that ``show``, ``report`` and
``compare`` read like any other.

Like the paper's own loader, only COMPLETE trials count by default. Every trial goes into the
trials table with its status, but measurements are imported only for the statuses in
``include_statuses``: the analysis pools every stored measurement, so a trial without rows
never counts towards steps to result.

Names are matched tolerantly (:func:`canonical_name`): case, ``_``, ``-`` and spaces are
ignored, and ``simple_cnn``, ``transformer``, ``open_images`` and ``nesterov`` stand for the
archive's ``simple_cnn_base``, ``transformer_base``, ``open_images_v4`` and
``nesterov_momentum``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pandas as pd

from batchscale.config import ConfigError
from batchscale.search import Dimension, Scale, SearchSpace
from batchscale.store import StoreError, StudyStore, study_lock
from batchscale.training.trial import Status, TrialResult, TrialSpec
from batchscale.workloads.base import Optimizer, check_in_range

STATUSES = ("COMPLETE", "INCOMPLETE", "INFEASIBLE")
SPECIAL_GROUPS = ("mnist_subsets", "imagenet_subsets", "solution_quality")
LAYOUT = (
    "expected the paper's layout dataset/model/optimizer/batch_size/study.json with "
    "trial_id/metadata.json and trial_id/measurements.csv beside it"
)

# Short names people use for the archive's directory names, after canonicalisation.
_ALIASES = {
    "simplecnn": "simplecnnbase",
    "transformer": "transformerbase",
    "openimages": "openimagesv4",
    "nesterov": "nesterovmomentum",
}
_OPTIMIZERS: dict[str, Optimizer] = {
    "sgd": "sgd",
    "momentum": "momentum",
    "nesterovmomentum": "nesterov",
}
# An empty scale is what the paper's study.json files give INTEGER parameters.
_SCALES: dict[str, Scale] = {
    "LOG_SCALE": "log",
    "LINEAR_SCALE": "linear",
    "REVERSE_LOG_SCALE": "reverse_log",
    "": "linear",
}
# Listed first in the stored search space, so summaries show them first.
_LEADING = ("learning_rate", "momentum")
# Words that give a metric's direction away when the caller does not state it.
_MINIMIZED = ("error", "loss", "entropy", "perplexity")
_MAXIMIZED = ("accuracy", "precision", "recall", "auc")


def metric_range(name: str) -> tuple[float, float]:
    """The values a metric can take, as far as its name tells: rates (error rates, accuracies,
    precisions, recalls, AUCs) in [0, 1], perplexities from 1 up, losses, entropies and other
    errors (the paper's ``cross_entropy_error``, a ``mean_squared_error``) from 0 up; any other
    name, anything finite."""
    rate = ("classification_error", "error_rate", *_MAXIMIZED)
    if any(word in name for word in rate) and "entropy" not in name:
        return 0.0, 1.0
    if "perplexity" in name:
        return 1.0, math.inf
    if any(word in name for word in ("loss", "entropy", "error")):
        return 0.0, math.inf
    return -math.inf, math.inf


class BatchScienceError(ConfigError):
    """Data that cannot be imported, or an import request that cannot be met (one line)."""


def canonical_name(name: str) -> str:
    """``name`` lower-cased without ``_``, ``-`` or spaces, with the short aliases expanded."""
    key = re.sub(r"[\s_\-]", "", name.lower())
    return _ALIASES.get(key, key)


@dataclass(frozen=True)
class PaperGoal:
    """The goal the paper set for a workload: a validation column, a target and a direction."""

    column: str
    target: float
    maximize: bool = False

    def describe(self) -> str:
        """``val/classification_error < 0.01``, say."""
        return f"{self.column} {'>' if self.maximize else '<'} {self.target:g}"


_ERROR = "val/classification_error"
_CROSS_ENTROPY = "val/cross_entropy_error"

PAPER_GOALS: dict[str, PaperGoal] = {
    "mnist/simple_cnn_base": PaperGoal(_ERROR, 0.01),
    "fashion_mnist/simple_cnn_base": PaperGoal(_ERROR, 0.1),
    "cifar_10/resnet_8": PaperGoal(_ERROR, 0.3),
    "imagenet/resnet_50": PaperGoal(_ERROR, 0.25),
    "imagenet/vgg_11": PaperGoal(_ERROR, 0.35),
    "open_images_v4/resnet_50": PaperGoal("val/average_precision", 0.31, maximize=True),
    "lm1b/transformer_base": PaperGoal(_CROSS_ENTROPY, 3.9),
    "lm1b/lstm": PaperGoal(_CROSS_ENTROPY, 3.9),
    "common_crawl/transformer_base": PaperGoal(_CROSS_ENTROPY, 3.9),
}


def _goal_key(dataset: str, model: str) -> str:
    return f"{canonical_name(dataset)}/{canonical_name(model)}"


_GOALS_BY_KEY = {_goal_key(*name.split("/")): goal for name, goal in PAPER_GOALS.items()}


def paper_goal(dataset: str, model: str) -> PaperGoal | None:
    """The paper's goal for ``dataset``/``model`` with any optimizer, where this module knows it."""
    return _GOALS_BY_KEY.get(_goal_key(dataset, model))


def _is_number(name: str) -> bool:
    return name.isascii() and name.isdigit()


def _subdirectories(directory: Path) -> list[Path]:
    return sorted(entry for entry in directory.iterdir() if entry.is_dir())


def _holds_batch_sizes(directory: Path) -> bool:
    return any(_is_number(entry.name) for entry in _subdirectories(directory))


def find_workloads(root: Path | str, max_depth: int = 4) -> list[str]:
    """Workload directories under ``root`` (those holding batch-size directories), relative.

    ``max_depth`` 4 reaches the special groups (``mnist_subsets/mnist_13750/model/optimizer``);
    batch-size directories are never entered, so this is quick even on the whole archive.
    """
    root = Path(root)
    found = []
    level = [root]
    for _ in range(max_depth + 1):
        deeper: list[Path] = []
        for directory in level:
            children = _subdirectories(directory)
            if any(_is_number(child.name) for child in children):
                found.append(directory.relative_to(root).as_posix())
            else:
                deeper.extend(c for c in children if not c.name.startswith("."))
        level = deeper
    return sorted(found)


def resolve_workload(root: Path | str, workload: str) -> Path:
    """The directory under ``root`` that ``workload`` (``dataset/model/optimizer``) names.

    Each part matches a directory whose :func:`canonical_name` is the same, so
    ``MNIST/simple-cnn/Nesterov`` finds ``mnist/simple_cnn_base/nesterov_momentum``.
    """
    root = Path(root)
    parts = [part for part in workload.split("/") if part]
    if not parts:
        raise BatchScienceError("--workload is empty; give dataset/model/optimizer")
    current = root
    for part in parts:
        matches = [
            child
            for child in _subdirectories(current)
            if canonical_name(child.name) == canonical_name(part)
        ]
        if len(matches) == 1:
            current = matches[0]
            continue
        if matches:
            found = ", ".join(m.name for m in matches)
            raise BatchScienceError(
                f"--workload {workload}: '{part}' matches {found}; spell it out"
            )
        known = ", ".join(find_workloads(root)) or "none"
        raise BatchScienceError(
            f"--workload {workload}: no directory like '{part}' in {current}; "
            f"workloads under {root}: {known}"
        )
    return current


@dataclass
class ImportSummary:
    """What an import wrote, and what it skipped or doubted (``warnings``, one line each).

    ``statuses`` counts the trials recorded per batch size and status; ``measured_trials``
    are those whose measurements were imported (the statuses asked for).
    """

    store: Path
    source: Path
    workload: str
    optimizer: str
    metric: str
    target: float
    maximize: bool
    statuses: dict[int, dict[str, int]]
    measured_trials: int
    rows: int
    seconds: float
    warnings: list[str] = field(default_factory=list)

    @property
    def batch_sizes(self) -> list[int]:
        """Imported batch sizes, ascending."""
        return sorted(self.statuses)

    @property
    def trials(self) -> int:
        """Trials recorded, whatever their status."""
        return sum(sum(counts.values()) for counts in self.statuses.values())


class _Warnings:
    """Warnings grouped by kind, so that thousands of alike trials make one line."""

    def __init__(self) -> None:
        self._places: dict[str, list[str]] = {}

    def add(self, kind: str, place: str) -> None:
        self._places.setdefault(kind, []).append(place.replace("\n", " "))

    def lines(self) -> list[str]:
        lines = []
        for kind, places in self._places.items():
            more = f" and {len(places) - 3} more" if len(places) > 3 else ""
            lines.append(f"{kind}: {', '.join(places[:3])}{more}")
        return lines


@dataclass
class _Trial:
    trial_id: int
    directory: Path
    status: Status
    params: dict[str, Any]
    steps: int | None
    measured: bool


@dataclass
class _Study:
    batch_size: int
    dataset: str
    model: str
    optimizer: str
    train_steps: int
    early_stopping: bool
    dimensions: list[Dimension]
    trials: list[_Trial]


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise BatchScienceError(f"{path} is missing; {LAYOUT}")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BatchScienceError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise BatchScienceError(f"{path} holds no JSON object; {LAYOUT}")
    return data


def _field(data: dict[str, Any], key: str, path: Path) -> Any:
    if key not in data:
        raise BatchScienceError(f"{path} has no '{key}'; {LAYOUT}")
    return data[key]


def _integer(value: Any, key: str, path: Path) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not number.is_integer():
        raise BatchScienceError(f"{path}: '{key}' must be an integer, got {value!r}")
    return int(number)


def _numbered(directory: Path, warnings: _Warnings, expected: str | None = None) -> list[Path]:
    """Integer-named subdirectories, in numeric order; anything else is reported and skipped."""
    numbered = []
    for entry in directory.iterdir():
        if entry.is_dir() and _is_number(entry.name):
            numbered.append(entry)
        elif entry.name != expected:
            warnings.add("skipped entries whose names are not integers", str(entry))
    return sorted(numbered, key=lambda entry: int(entry.name))


def _dimension(name: str, config: Any) -> Dimension:
    """One ``parameter_configs`` entry as a dimension; ValueError etc. where it is not numeric."""
    kind = str(config.get("type", "")).upper()
    if kind == "DISCRETE":
        values = tuple(float(v) for v in config["feasible_points"])
        return Dimension(name=name, scale="discrete", values=values)
    if kind not in ("DOUBLE", "INTEGER"):
        raise ValueError(f"type {kind!r} is not DOUBLE, INTEGER or DISCRETE")
    scale = str(config.get("scale") or "").upper()
    if scale not in _SCALES:
        raise ValueError(f"scale {scale!r} is not LOG_SCALE, LINEAR_SCALE or REVERSE_LOG_SCALE")
    low, high = float(config["min_value"]), float(config["max_value"])
    if low == high:
        # A fixed value: a range would be empty.
        return Dimension(name=name, scale="discrete", values=(low,))
    # Rounding matters for sampling only, which imported studies never do; a log scale has none.
    integer = kind == "INTEGER" and _SCALES[scale] == "linear"
    return Dimension(name=name, scale=_SCALES[scale], low=low, high=high, integer=integer)


def _bounds(dimension: Dimension) -> tuple[float, float]:
    if dimension.scale == "discrete":
        values = dimension.values or ()
        return min(values), max(values)
    assert dimension.low is not None and dimension.high is not None
    return dimension.low, dimension.high


def _widen(old: Dimension, new: Dimension) -> Dimension:
    """The smallest dimension holding both (ValueError where no scale can)."""
    if old.scale == "discrete" and new.scale == "discrete":
        values = tuple(sorted(set(old.values or ()) | set(new.values or ())))
        return Dimension(name=old.name, scale="discrete", values=values)
    continuous = old if old.scale != "discrete" else new
    (old_low, old_high), (new_low, new_high) = _bounds(old), _bounds(new)
    return Dimension(
        name=old.name,
        scale=continuous.scale,
        low=min(old_low, new_low),
        high=max(old_high, new_high),
        integer=old.integer and new.integer,
    )


def _hull(studies: list[_Study], warnings: _Warnings) -> SearchSpace:
    """One search space covering every batch size's (the paper tuned some ranges per size).

    A winner near an edge of this hull is near an edge of its own range too, so the edge check
    on it gives no false alarms, though it can miss a winner at the edge of a narrower range.
    """
    merged: dict[str, Dimension] = {}
    for study in studies:
        for dimension in study.dimensions:
            old = merged.get(dimension.name)
            scales = {dimension.scale} if old is None else {old.scale, dimension.scale}
            if len(scales - {"discrete"}) > 1:
                warnings.add(
                    "search space: scales differ between batch sizes (kept the first)",
                    f"{dimension.name} at batch size {study.batch_size}",
                )
            try:
                merged[dimension.name] = dimension if old is None else _widen(old, dimension)
            except ValueError as error:
                warnings.add(
                    "search space: could not widen a range to cover every batch size",
                    f"{dimension.name} at batch size {study.batch_size} ({error})",
                )
    names = [n for n in _LEADING if n in merged] + [n for n in merged if n not in _LEADING]
    if not names:
        raise BatchScienceError(
            "no study.json has a numeric parameter_configs entry, so there is no search space"
        )
    return SearchSpace(dimensions=tuple(merged[name] for name in names))


def _read_header(path: Path) -> list[str]:
    try:
        with path.open(newline="") as handle:
            return next(csv.reader(handle), [])
    except (UnicodeDecodeError, csv.Error) as error:
        raise BatchScienceError(f"{path} is not a readable CSV ({error})") from None


def _scan_study(
    directory: Path,
    include: frozenset[str],
    max_trials: int | None,
    columns: dict[str, None],
    warnings: _Warnings,
) -> _Study:
    """A batch size's study.json and trial metadata; headers of the CSVs to import."""
    path = directory / "study.json"
    info = _read_json(path)
    batch_size = _integer(_field(info, "batch_size", path), "batch_size", path)
    if batch_size != int(directory.name):
        warnings.add(
            "study.json's batch_size differs from its directory (kept study.json's)", str(path)
        )
    configs = _field(info, "parameter_configs", path)
    if not isinstance(configs, dict):
        raise BatchScienceError(f"{path}: 'parameter_configs' is not an object; {LAYOUT}")
    dimensions = []
    for name, config in configs.items():
        try:
            dimensions.append(_dimension(name, config))
        except (AttributeError, KeyError, TypeError, ValueError) as error:
            warnings.add(
                "search space: left out parameter configs that are not numeric",
                f"{name} in {path} ({error})",
            )
    trials: list[_Trial] = []
    seen: set[int] = set()
    measured = 0
    for trial_dir in _numbered(directory, warnings, expected="study.json"):
        # The paper's loader stops once it has num_trials trials of the statuses asked for.
        if max_trials is not None and measured >= max_trials:
            break
        meta_path = trial_dir / "metadata.json"
        meta = _read_json(meta_path)
        status = str(_field(meta, "status", meta_path)).upper()
        params = _field(meta, "parameters", meta_path)
        if not isinstance(params, dict):
            raise BatchScienceError(f"{meta_path}: 'parameters' is not an object; {LAYOUT}")
        for dimension in dimensions:
            value = params.get(dimension.name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                raise BatchScienceError(
                    f"{meta_path}: parameter '{dimension.name}' is {value!r}, not a number; "
                    f"{LAYOUT}"
                )
        trial_id = _integer(meta.get("trial_id", trial_dir.name), "trial_id", meta_path)
        steps = None if meta.get("steps") is None else _integer(meta["steps"], "steps", meta_path)
        if status not in STATUSES:
            warnings.add("skipped trials with an unknown status", f"{meta_path} ({status})")
            continue
        if trial_id in seen:
            warnings.add("skipped trials whose trial_id repeats another's", str(meta_path))
            continue
        seen.add(trial_id)
        is_measured = status in include
        if is_measured:
            csv_path = trial_dir / "measurements.csv"
            if not csv_path.is_file():
                raise BatchScienceError(f"{csv_path} is missing; {LAYOUT}")
            columns.update(dict.fromkeys(c for c in _read_header(csv_path) if c and c != "step"))
            measured += 1
        trials.append(_Trial(trial_id, trial_dir, Status(status), params, steps, is_measured))
    if max_trials is not None and measured < max_trials:
        # The paper's loader raises here; the trials there are still worth reading.
        warnings.add(
            f"fewer than the {max_trials} trials asked for (--max-trials) of the statuses imported",
            f"batch size {batch_size} ({measured})",
        )
    return _Study(
        batch_size=batch_size,
        dataset=str(_field(info, "dataset", path)),
        model=str(_field(info, "model", path)),
        optimizer=str(_field(info, "optimizer", path)),
        train_steps=_integer(_field(info, "train_steps", path), "train_steps", path),
        early_stopping=bool(info.get("early_stopping", False)),
        dimensions=dimensions,
        trials=trials,
    )


def _read_measurements(path: Path, warnings: _Warnings) -> list[dict[str, float]]:
    """A trial's rows: non-numbers become missing values, a repeated step keeps its last row."""
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        warnings.add("empty measurements.csv (trial kept without measurements)", str(path))
        return []
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        message = str(error).replace("\n", " ")
        raise BatchScienceError(f"{path} is not a readable CSV ({message})") from None
    if "step" not in frame.columns:
        raise BatchScienceError(f"{path} has no 'step' column; {LAYOUT}")
    try:
        values = frame.to_numpy(dtype=float)
    except (TypeError, ValueError):
        values = frame.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    # Plain Python rows: per-file pandas operations would cost more than the tiny files' data.
    columns = [str(column) for column in frame.columns]
    by_step: dict[int, dict[str, float]] = {}
    for numbers in values.tolist():
        row = dict(zip(columns, numbers, strict=True))
        if math.isfinite(row["step"]):
            by_step[int(row["step"])] = row
    if len(by_step) < len(values):
        warnings.add("rows without a step, or repeated steps (kept the last of each)", str(path))
    return list(by_step.values())


def _metric_column(metric: str) -> str:
    if "/" not in metric:
        return f"val/{metric}"
    if not metric.startswith("val/"):
        raise BatchScienceError(
            f"--metric {metric}: the goal must be a validation column (val/...), because "
            "show and report read val/<metric>"
        )
    return metric


def _maximized_by_name(name: str) -> bool | None:
    """What a metric's name says of its direction: an error is minimised, an accuracy
    maximised; None where the name says neither."""
    if any(word in name for word in _MINIMIZED):
        return False
    if any(word in name for word in _MAXIMIZED):
        return True
    return None


def _goal(
    where: str,
    default: PaperGoal | None,
    metric: str | None,
    target: float | None,
    maximize: bool | None,
    columns: list[str],
) -> tuple[str, float, bool]:
    """The goal column, target and direction: the caller's where given, else the paper's."""
    column: str | None = None
    if metric is not None:
        column = _metric_column(metric)
    elif default is not None:
        column = default.column
    same = default is not None and default.column == column
    if column is not None and column not in columns:
        found = ", ".join(c for c in columns if c.startswith("val/")) or "none"
        raise BatchScienceError(
            f"{column} is not a column of the imported measurements (val/ columns: {found})"
        )
    if column is None or (target is None and not same):
        known = "; ".join(f"{name}: {goal.describe()}" for name, goal in PAPER_GOALS.items())
        raise BatchScienceError(
            f"no default goal for {where}"
            + (f" with {column}" if column else "")
            + f"; pass --metric COLUMN and --target VALUE (the paper's goals: {known})"
        )
    if target is None:
        assert default is not None
        target = default.target
    name = column.removeprefix("val/")
    try:
        check_in_range(target, name, *metric_range(name), "target")
    except ValueError as error:
        raise BatchScienceError(str(error)) from None
    named = _maximized_by_name(name)
    if maximize is not None and named is not None and maximize != named:
        # The goal would be met by the worst trials: steps to result 0 everywhere.
        wanted, flag = ("maximised", "--maximize") if named else ("minimised", "--minimize")
        raise BatchScienceError(
            f"{column} is {wanted} by its name; pass {flag}, or leave the direction out"
        )
    if maximize is None and same:
        assert default is not None
        maximize = default.maximize
    if maximize is None:
        if named is None:
            raise BatchScienceError(f"cannot tell whether {column} is to be maximised; say so")
        maximize = named
    return column, float(target), maximize


def _source_name(directory: Path) -> tuple[str, bool]:
    """The workload's path in the archive, and whether it lies in a special group."""
    parts = directory.resolve().parts
    special = {canonical_name(group) for group in SPECIAL_GROUPS}
    starts = [i for i, part in enumerate(parts) if canonical_name(part) in special]
    if starts:
        return "/".join(parts[starts[-1] :]), True
    return "/".join(parts[-3:]), False


def _workload_dir(source: Path, workload: str | None) -> Path:
    if not source.is_dir():
        raise BatchScienceError(
            f"{source} is not a directory; pass a workload directory (dataset/model/optimizer) "
            "or the archive root with --workload"
        )
    directory = resolve_workload(source, workload) if workload else source
    if (directory / "study.json").is_file():
        raise BatchScienceError(
            f"{directory} is one batch size's study; pass the workload directory above it"
        )
    if not _holds_batch_sizes(directory):
        found = find_workloads(directory)
        if len(found) == 1:
            return resolve_workload(directory, found[0])
        if found:
            raise BatchScienceError(
                f"{directory} holds {len(found)} workloads; pass --workload with one of: "
                + ", ".join(found)
            )
        raise BatchScienceError(f"{directory}/<batch_size>/study.json is missing; {LAYOUT}")
    return directory


def _check_store(store: Path, force: bool) -> None:
    """Refuse an existing store unless ``force``; even then, replace only a study at rest.

    Only read: a study kept because the import fails later is left exactly as it was.
    """
    if not store.exists():
        return
    if not force:
        raise StoreError(
            f"{store} already exists; choose another --store, or pass --force to replace it"
        )
    try:
        StudyStore.open(store, read_only=True).close()
    except StoreError:
        raise StoreError(
            f"{store} exists and is not a batchscale study; --force replaces only studies"
        ) from None
    with study_lock(store):
        pass


def _replace(store: Path, finished: Path) -> None:
    """Move ``finished`` into place under the store's lock, with no old write-ahead log left
    beside the name to be applied to the new file."""
    with study_lock(store):
        for leftover in (Path(f"{store}-wal"), Path(f"{store}-shm")):
            leftover.unlink(missing_ok=True)
        os.replace(finished, store)


def _remove(path: Path) -> None:
    for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        leftover.unlink(missing_ok=True)


def _statuses(include_statuses: Collection[str]) -> frozenset[str]:
    include = frozenset(status.upper() for status in include_statuses)
    if not include or not include <= set(STATUSES):
        raise BatchScienceError(
            f"include_statuses must be some of {', '.join(STATUSES)}, got {sorted(include)}"
        )
    return include


def _scan(
    directory: Path, include: frozenset[str], max_trials: int | None, warnings: _Warnings
) -> tuple[list[_Study], list[str]]:
    """Every batch size's study in ascending order, and the union of the CSV columns to import."""
    studies: dict[int, _Study] = {}
    columns: dict[str, None] = {}
    for study_dir in _numbered(directory, warnings):
        study = _scan_study(study_dir, include, max_trials, columns, warnings)
        if study.batch_size in studies:
            warnings.add("skipped a second study of the same batch size", str(study_dir))
            continue
        studies[study.batch_size] = study
    ordered = [studies[size] for size in sorted(studies)]
    first = ordered[0]
    for study in ordered[1:]:
        if (study.dataset, study.model, study.optimizer) != (
            first.dataset,
            first.model,
            first.optimizer,
        ):
            raise BatchScienceError(
                f"{directory} mixes workloads: {first.dataset}/{first.model}/{first.optimizer} "
                f"at batch size {first.batch_size}, {study.dataset}/{study.model}/"
                f"{study.optimizer} at {study.batch_size}; import one workload directory"
            )
    if not any(trial.measured for study in ordered for trial in study.trials):
        raise BatchScienceError(
            f"no trial in {directory} has a status in {sorted(include)}; "
            "include other statuses or check the directory"
        )
    return ordered, list(columns)


def _write(
    store: StudyStore,
    studies: list[_Study],
    optimizer: str,
    warnings: _Warnings,
    progress: Callable[[int, int], None] | None,
) -> int:
    """Record every trial, reading the CSVs one at a time; the number of rows written."""
    total = sum(trial.measured for study in studies for trial in study.trials)
    rows = done = 0
    for study in studies:
        for trial in study.trials:
            measurements = (
                _read_measurements(trial.directory / "measurements.csv", warnings)
                if trial.measured
                else []
            )
            last = int(measurements[-1]["step"]) if measurements else 0
            spec = TrialSpec(
                batch_size=study.batch_size,
                trial_id=trial.trial_id,
                params=trial.params,
                # The release records no seeds: 0 stands for "unknown".
                seed=0,
                step_budget=study.train_steps,
                # The store never reads a trial's optimizer; the metadata names the study's.
                optimizer=cast(Optimizer, optimizer),
            )
            store.record(
                TrialResult(
                    spec=spec,
                    status=trial.status,
                    steps=trial.steps if trial.steps is not None else last,
                    measurements=measurements,
                )
            )
            rows += len(measurements)
            if trial.measured:
                done += 1
                if progress is not None:
                    progress(done, total)
    return rows


def _search_space_json(dimensions: list[Dimension]) -> dict[str, Any] | None:
    return SearchSpace(dimensions=tuple(dimensions)).model_dump(mode="json") if dimensions else None


def import_batch_science(
    source: Path | str,
    store: Path | str,
    *,
    workload: str | None = None,
    metric: str | None = None,
    target: float | None = None,
    maximize: bool | None = None,
    include_statuses: Collection[str] = ("COMPLETE",),
    max_trials: int | None = None,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> ImportSummary:
    """Import one workload of the paper's released data into a new study store.

    ``source`` is a workload directory (``dataset/model/optimizer``) or, with ``workload``,
    the archive root. ``metric`` (a ``val/`` column, the prefix optional) and ``target``
    default to the paper's goal for the workload (``PAPER_GOALS``); the special groups have
    none. ``maximize`` defaults to the paper's direction, else to what the name says.

    Every trial is recorded with its status; only trials whose status is in
    ``include_statuses`` bring their measurements, so only they count towards steps to
    result (the paper's default: COMPLETE only). ``max_trials`` keeps, per batch size, the
    first that many of those by trial id, as the paper's ``num_trials`` does. An existing
    ``store`` is refused unless ``force``; the new one appears only once complete.
    ``progress(done, total)`` follows the trials whose measurements are read.
    """
    started = time.perf_counter()
    source, store = Path(source), Path(store)
    include = _statuses(include_statuses)
    if max_trials is not None and max_trials < 1:
        raise BatchScienceError(f"max_trials must be at least 1, got {max_trials}")
    _check_store(store, force)
    directory = _workload_dir(source, workload)
    source_name, special = _source_name(directory)
    warnings = _Warnings()
    studies, columns = _scan(directory, include, max_trials, warnings)
    first = studies[0]
    # A special group holds subsets or longer runs: never label them as the full data set.
    name = source_name.rsplit("/", 1)[0] if special else f"{first.dataset}/{first.model}"
    default = None if special else paper_goal(first.dataset, first.model)
    column, goal_target, goal_maximize = _goal(name, default, metric, target, maximize, columns)
    optimizer = _OPTIMIZERS.get(canonical_name(first.optimizer), first.optimizer)
    statuses = {
        study.batch_size: dict(Counter(str(trial.status) for trial in study.trials))
        for study in studies
    }
    metadata = {
        "workload": name,
        "optimizer": optimizer,
        "target": goal_target,
        "metric": column.removeprefix("val/"),
        "maximize": goal_maximize,
        # JSON has no infinity: an open end is null.
        "metric_range": [
            bound if math.isfinite(bound) else None
            for bound in metric_range(column.removeprefix("val/"))
        ],
        "seed": 0,
        "mode": "imported",
        "engine": "imported",
        "search_space": _hull(studies, warnings).model_dump(mode="json"),
        "budget": {"train_steps": {str(s.batch_size): s.train_steps for s in studies}},
        "eval_growth": None,
        "divergence_factor": None,
        "batch_sizes": [study.batch_size for study in studies],
        "trials": max(len(study.trials) for study in studies),
        "imported": True,
        "source": str(directory.resolve()),
        "source_format": "batch_science",
        "source_workload": source_name,
        "source_optimizer": first.optimizer,
        "include_statuses": sorted(include),
        "max_trials": max_trials,
        "studies": {
            str(study.batch_size): {
                "train_steps": study.train_steps,
                "early_stopping": study.early_stopping,
                "search_space": _search_space_json(study.dimensions),
                "statuses": statuses[study.batch_size],
            }
            for study in studies
        },
    }
    partial = store.with_name(store.name + ".importing")
    _remove(partial)
    opened = StudyStore.create(partial, metadata, columns)
    try:
        rows = _write(opened, studies, optimizer, warnings, progress)
    except BaseException:
        opened.close()
        _remove(partial)
        raise
    opened.close()
    # The finished file is moved into place alone, so it must not depend on a write-ahead log.
    connection = sqlite3.connect(partial)
    try:
        connection.execute("PRAGMA journal_mode=DELETE")
    finally:
        connection.close()
    _replace(store, partial)
    return ImportSummary(
        store=store,
        source=directory,
        workload=name,
        optimizer=optimizer,
        metric=column.removeprefix("val/"),
        target=goal_target,
        maximize=goal_maximize,
        statuses=statuses,
        measured_trials=sum(trial.measured for study in studies for trial in study.trials),
        rows=rows,
        seconds=time.perf_counter() - started,
        warnings=warnings.lines(),
    )
