"""Steps to result and budgets: pure functions over a measurements DataFrame.

The frame is indexed by (batch_size, trial_id, step), one column per metric, exactly as
``StudyStore.measurements()`` returns it or as the paper's released data load.
"""

from __future__ import annotations

import pandas as pd


def reached_goal(
    measurements: pd.DataFrame, metric: str, target: float, maximize: bool = False
) -> pd.Series:
    """Boolean mask of rows whose ``metric`` is strictly better than ``target``."""
    values = measurements[metric]
    return values > target if maximize else values < target


def steps_to_result(
    measurements: pd.DataFrame, metric: str, target: float, maximize: bool = False
) -> pd.DataFrame:
    """Fewest steps to reach ``target`` at each batch size, and the trial that got there first.

    Pools the rows of all trials at a batch size, keeps those strictly better than the target,
    and takes the smallest step; ties go to the smallest trial id. Batch sizes where no row
    reaches the target get ``NaN`` steps and trial id. Columns: ``steps``, ``trial_id``.
    """
    batch_sizes = measurements.index.get_level_values("batch_size").unique().sort_values()
    hits = measurements.index[reached_goal(measurements, metric, target, maximize).to_numpy()]
    best = (
        hits.to_frame(index=False)
        .sort_values(["batch_size", "step", "trial_id"])
        .groupby("batch_size")
        .first()
    )
    result = pd.DataFrame(index=pd.Index(batch_sizes, name="batch_size"))
    result["steps"] = best["step"].reindex(batch_sizes).astype(float)
    result["trial_id"] = best["trial_id"].reindex(batch_sizes).astype("Int64")
    return result


def examples_to_result(steps: pd.DataFrame) -> pd.Series:
    """Examples consumed to reach the goal (steps x batch size), from ``steps_to_result``."""
    return steps["steps"] * steps.index.get_level_values("batch_size")


def apply_step_budget(measurements: pd.DataFrame, max_steps: int) -> pd.DataFrame:
    """Only the rows at or before step ``max_steps``."""
    return measurements[measurements.index.get_level_values("step") <= max_steps]


def apply_example_budget(measurements: pd.DataFrame, max_examples: int) -> pd.DataFrame:
    """Only the rows whose examples seen (step x batch size) are within ``max_examples``."""
    steps = measurements.index.get_level_values("step")
    batch_sizes = measurements.index.get_level_values("batch_size")
    return measurements[steps * batch_sizes <= max_examples]


def trials_reaching(
    measurements: pd.DataFrame, metric: str, target: float, maximize: bool = False
) -> pd.Series:
    """Number of distinct trials per batch size with at least one row better than the target."""
    hits = measurements.index[reached_goal(measurements, metric, target, maximize).to_numpy()]
    batch_sizes = measurements.index.get_level_values("batch_size").unique().sort_values()
    frame = hits.to_frame(index=False)
    counts = frame.drop_duplicates(["batch_size", "trial_id"]).groupby("batch_size").size()
    return counts.reindex(batch_sizes, fill_value=0).rename("reached")


def first_hit_steps(
    measurements: pd.DataFrame, metric: str, target: float, maximize: bool = False
) -> pd.Series:
    """Each trial's first step strictly better than the target (``NaN`` where it never got there).

    Indexed by (batch_size, trial_id) over every trial in ``measurements``. Steps to result at
    a batch size is the minimum of this over its trials, which is what makes a bootstrap over
    trials cheap: resample these numbers instead of the measurement rows.
    """
    mask = reached_goal(measurements, metric, target, maximize).to_numpy()
    frame = measurements.index.to_frame(index=False)
    steps = frame["step"].astype(float).where(mask)
    first = steps.groupby([frame["batch_size"], frame["trial_id"]]).min()
    return first.rename("first_hit")
