"""Directories in the layout of the paper's released data (batch_science_data.tar.bz2).

``write_study`` writes one batch size of a workload exactly as the archive does; tests build
small workloads from hand-written trials, and ``write_synthetic_workload`` builds a large one
for timing the importer.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ERROR = "val/classification_error"
PAPER_COLUMNS = (
    "train/cross_entropy_error",
    "train/classification_error",
    "val/cross_entropy_error",
    "val/classification_error",
    "test/cross_entropy_error",
    "test/classification_error",
)
PARAMETER_CONFIGS: dict[str, dict[str, Any]] = {
    "end_learning_rate_factor": {
        "max_value": 0.1,
        "min_value": 0.0001,
        "scale": "LOG_SCALE",
        "type": "DOUBLE",
    },
    "label_smoothing": {"feasible_points": [0.0, 0.01, 0.1], "type": "DISCRETE"},
    "learning_rate": {
        "max_value": 10.0,
        "min_value": 0.0001,
        "scale": "LOG_SCALE",
        "type": "DOUBLE",
    },
    "learning_rate_decay_steps": {
        "max_value": 600,
        "min_value": 300,
        "scale": "",
        "type": "INTEGER",
    },
    "momentum": {
        "max_value": 0.9999,
        "min_value": 0.9,
        "scale": "REVERSE_LOG_SCALE",
        "type": "DOUBLE",
    },
}
PARAMETERS = {
    "end_learning_rate_factor": 0.001,
    "label_smoothing": 0.01,
    "learning_rate": 0.1,
    "learning_rate_decay_steps": 450,
    "momentum": 0.99,
}


@dataclass
class Trial:
    """One trial: its rows (each with ``step``), status and metaparameters."""

    trial_id: int
    rows: list[dict[str, float]]
    status: str = "COMPLETE"
    parameters: dict[str, float] = field(default_factory=lambda: dict(PARAMETERS))


def rows(
    steps: Sequence[int], values: Sequence[float], column: str = ERROR
) -> list[dict[str, float]]:
    """Rows with ``column`` at ``steps``, plus the other paper columns derived from it."""
    return [
        {
            "step": step,
            "train/cross_entropy_error": 2.0 * value,
            "train/classification_error": 0.9 * value,
            column: value,
            "test/classification_error": 1.1 * value,
        }
        for step, value in zip(steps, values, strict=True)
    ]


def write_csv(path: Path, table: Sequence[dict[str, float]]) -> None:
    """A measurements.csv: ``step`` first, then every column any row has, blank where missing."""
    columns = ["step"]
    for row in table:
        columns += [c for c in row if c not in columns]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in table:
            writer.writerow(["" if row.get(c) is None else row[c] for c in columns])


def write_study(
    workload_dir: Path,
    batch_size: int,
    trials: Sequence[Trial],
    *,
    dataset: str = "mnist",
    model: str = "simple_cnn_base",
    optimizer: str = "nesterov_momentum",
    train_steps: int = 1000,
    parameter_configs: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """``workload_dir/batch_size/`` with study.json and one directory per trial."""
    study_dir = workload_dir / str(batch_size)
    study_dir.mkdir(parents=True)
    study = {
        "batch_size": batch_size,
        "dataset": dataset,
        "early_stopping": False,
        "model": model,
        "optimizer": optimizer,
        "parameter_configs": parameter_configs or PARAMETER_CONFIGS,
        "train_steps": train_steps,
    }
    (study_dir / "study.json").write_text(json.dumps(study, indent=2))
    for trial in trials:
        trial_dir = study_dir / str(trial.trial_id)
        trial_dir.mkdir()
        metadata = {
            "_internal_study_name": f"{model}-bs{batch_size}",
            "_internal_trial_id": trial.trial_id + 1000,
            "parameters": trial.parameters,
            "status": trial.status,
            "steps": int(trial.rows[-1]["step"]) if trial.rows else 0,
            "trial_id": trial.trial_id,
        }
        (trial_dir / "metadata.json").write_text(json.dumps(metadata, indent=2))
        write_csv(trial_dir / "measurements.csv", trial.rows)
    return study_dir


def write_synthetic_workload(
    workload_dir: Path,
    batch_sizes: Sequence[int],
    trials: int,
    rows_per_trial: int,
    seed: int = 0,
) -> None:
    """A large workload with every paper column, uneven steps and the three statuses."""
    rng = np.random.default_rng(seed)
    for batch_size in batch_sizes:
        written = []
        for trial_id in range(trials):
            # Gaps that vary from 1 to 2,000 steps: evaluation steps are uneven in the archive.
            steps = np.cumsum(rng.integers(1, 2000, size=rows_per_trial))
            speed = math.exp(rng.normal())
            table = [
                {"step": int(step), **dict.fromkeys(PAPER_COLUMNS, min(0.9, 5.0 / (step * speed)))}
                for step in steps
            ]
            status = rng.choice(["COMPLETE", "INCOMPLETE", "INFEASIBLE"], p=[0.8, 0.1, 0.1])
            written.append(Trial(trial_id, table, status=str(status)))
        write_study(workload_dir, batch_size, written, train_steps=2000 * rows_per_trial)
