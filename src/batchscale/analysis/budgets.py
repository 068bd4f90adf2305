"""The best metric each batch size reaches under a fixed step budget or a fixed example budget.

The two budgets answer different questions: a fixed step budget asks what a larger batch buys
when time per step is free, a fixed example (epoch) budget asks what it costs when data or
compute is the limit. Trials stop once they reach the goal, so values better than the goal
are truncated near it: read these curves for the batch sizes that fall short of the goal.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from batchscale.analysis.steps_to_result import apply_example_budget, apply_step_budget


def best_metric(measurements: pd.DataFrame, metric: str, maximize: bool = False) -> pd.DataFrame:
    """The best value of ``metric`` per batch size over all trials and steps, and where it was.

    Columns ``value``, ``trial_id``, ``step``; ties go to the earlier step, then the smaller
    trial id. Batch sizes without a finite value get ``NaN``.
    """
    batch_sizes = measurements.index.get_level_values("batch_size").unique().sort_values()
    rows = measurements[[metric]].dropna().reset_index()
    rows = rows.rename(columns={metric: "value"})
    rows = rows[np.isfinite(rows["value"].to_numpy(dtype=float))]
    ordered = rows.sort_values(
        ["batch_size", "value", "step", "trial_id"], ascending=[True, not maximize, True, True]
    )
    best = ordered.groupby("batch_size").first()
    result = pd.DataFrame(index=pd.Index(batch_sizes, name="batch_size"))
    result["value"] = best["value"].reindex(batch_sizes).astype(float)
    result["trial_id"] = best["trial_id"].reindex(batch_sizes).astype("Int64")
    result["step"] = best["step"].reindex(batch_sizes).astype("Int64")
    return result


def best_metric_under_step_budget(
    measurements: pd.DataFrame, metric: str, max_steps: int, maximize: bool = False
) -> pd.DataFrame:
    """``best_metric`` over the rows at or before ``max_steps``, for every batch size."""
    batch_sizes = measurements.index.get_level_values("batch_size").unique().sort_values()
    best = best_metric(apply_step_budget(measurements, max_steps), metric, maximize)
    return best.reindex(batch_sizes)


def best_metric_under_example_budget(
    measurements: pd.DataFrame, metric: str, max_examples: int, maximize: bool = False
) -> pd.DataFrame:
    """``best_metric`` over the rows that saw at most ``max_examples`` examples."""
    batch_sizes = measurements.index.get_level_values("batch_size").unique().sort_values()
    best = best_metric(apply_example_budget(measurements, max_examples), metric, maximize)
    return best.reindex(batch_sizes)


def _last_steps(measurements: pd.DataFrame, step_budgets: pd.Series | None) -> pd.Series:
    """Steps each batch size could run: its step budget where known, else its last step.

    A budget of 0 is unknown too: the paper's released studies record ``train_steps = 0``
    for a budget of time rather than steps.
    """
    last = measurements.index.to_frame(index=False).groupby("batch_size")["step"].max()
    if step_budgets is None:
        return last
    known = step_budgets.groupby(level="batch_size").max().reindex(last.index)
    return known.where(known > 0).fillna(last)


def common_step_budget(measurements: pd.DataFrame, step_budgets: pd.Series | None = None) -> int:
    """The largest step budget every batch size had: the minimum over batch sizes.

    ``step_budgets`` holds each trial's (or batch size's) step budget, indexed by a
    ``batch_size`` level; a trials table's ``step_budget`` column fits. Without it the last
    measured step stands in, which undercounts where every trial stopped at the goal.
    """
    return int(_last_steps(measurements, step_budgets).min())


def common_example_budget(measurements: pd.DataFrame, step_budgets: pd.Series | None = None) -> int:
    """The largest example budget every batch size had (its step budget times batch size)."""
    last = _last_steps(measurements, step_budgets)
    return int((last * last.index.to_numpy()).min())


def step_budgets(measurements: pd.DataFrame, trial_budgets: pd.Series | None = None) -> pd.Series:
    """Each batch size's step budget (its largest trial budget), indexed by batch size.

    ``trial_budgets`` is a trials table's ``step_budget`` column; where it is missing or 0
    (unknown), the last measured step stands in (see ``common_step_budget``).
    """
    return _last_steps(measurements, trial_budgets).astype(float)


def stopped_within_budget(
    trials: pd.DataFrame, *, max_steps: int | None = None, max_examples: int | None = None
) -> pd.Series:
    """Per batch size, whether some trial stopped early inside the budget's window.

    A trial stopped early when it ended before its own step budget without diverging: it
    reached the goal it stopped at, or racing pruned it. Where that happened before
    ``max_steps`` (or before ``max_examples`` examples), the best value within that budget is
    only a bound: the stopped trial might have got better with the steps it did not run.
    Needs the ``steps`` and ``step_budget`` columns; without them nothing counts as stopped.
    """
    batch_sizes = trials.index.get_level_values("batch_size")
    sizes = pd.Index(batch_sizes.unique().sort_values(), name="batch_size")
    if not {"steps", "step_budget"} <= set(trials.columns):
        return pd.Series(False, index=sizes, dtype=bool)
    run = trials["steps"].astype(float).to_numpy()
    budget = trials["step_budget"].astype(float).to_numpy()
    status = (
        trials["status"].astype(str).to_numpy()
        if "status" in trials.columns
        else np.full(len(trials), "COMPLETE")
    )
    # A budget of 0 is unknown (imported studies): such a trial cannot be said to have stopped.
    early = (budget > 0) & (run < budget) & (status != "INFEASIBLE")
    window = np.full(len(trials), np.inf)
    if max_steps is not None:
        window = np.minimum(window, float(max_steps))
    if max_examples is not None:
        window = np.minimum(window, max_examples / batch_sizes.to_numpy(dtype=float))
    inside = pd.Series(early & (run < window), index=batch_sizes)
    return inside.groupby(level=0).any().reindex(sizes, fill_value=False).astype(bool)
