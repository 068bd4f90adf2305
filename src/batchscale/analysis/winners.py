"""Who won at each batch size, with what metaparameters, and how every other trial fared."""

from __future__ import annotations

from typing import Literal, overload

import pandas as pd

from batchscale.analysis.steps_to_result import first_hit_steps, steps_to_result

# Columns of a trials table that describe how a trial ran rather than what it tried.
BOOKKEEPING_COLUMNS = frozenset(
    {"seed", "status", "steps", "step_budget", "wall_time", "train_time", "finished_at"}
)

# Columns ``winners`` computes, as opposed to those it copies from the trials table.
DERIVED_COLUMNS = frozenset(
    {"steps", "examples", "trial_id", "validation", "test", "effective_learning_rate"}
)

Outcome = Literal["reached", "missed", "diverged", "pruned", "incomplete"]
OUTCOMES: tuple[Outcome, ...] = ("reached", "missed", "diverged", "pruned", "incomplete")


@overload
def effective_learning_rate(learning_rate: float, momentum: float = 0.0) -> float: ...
@overload
def effective_learning_rate(
    learning_rate: pd.Series, momentum: pd.Series | float = 0.0
) -> pd.Series: ...
def effective_learning_rate(
    learning_rate: pd.Series | float, momentum: pd.Series | float = 0.0
) -> pd.Series | float:
    """``learning_rate / (1 - momentum)``: the step size heavy-ball momentum amounts to."""
    return learning_rate / (1.0 - momentum)


def metaparameter_columns(trials: pd.DataFrame) -> list[str]:
    """The trials table's metaparameter columns (everything that is not bookkeeping)."""
    return [c for c in trials.columns if c not in BOOKKEEPING_COLUMNS]


def winner_metaparameters(winning: pd.DataFrame) -> list[str]:
    """The metaparameter columns of a ``winners`` table, in order."""
    return [c for c in winning.columns if c not in DERIVED_COLUMNS and c not in BOOKKEEPING_COLUMNS]


def matching_test_column(metric: str, columns: pd.Index) -> str | None:
    """The test split's column of a ``val/...`` metric, where the measurements have it."""
    if not metric.startswith("val/"):
        return None
    candidate = "test/" + metric.removeprefix("val/")
    return candidate if candidate in columns else None


def winners(
    measurements: pd.DataFrame,
    trials: pd.DataFrame,
    metric: str,
    target: float,
    maximize: bool = False,
    test_metric: str | None = None,
) -> pd.DataFrame:
    """Steps to result per batch size with the winning trial's metaparameters.

    Indexed by every batch size in ``measurements``. Columns: ``steps``, ``examples``,
    ``trial_id``, ``validation`` (the metric at the winning row), ``test`` (the test split's
    metric at the same row, beside it because picking the best of many trials on validation
    data flatters the validation number), the metaparameters, ``effective_learning_rate`` and,
    where the trials table has them, ``step_budget`` and ``train_time``. ``test_metric``
    defaults to the ``test/`` twin of a ``val/`` metric.
    """
    curve = steps_to_result(measurements, metric, target, maximize)
    result = curve.copy()
    result["examples"] = curve["steps"] * curve.index.to_numpy()
    test_metric = test_metric or matching_test_column(metric, measurements.columns)
    keys = [
        (int(b), int(t), int(s))
        for b, t, s in zip(curve.index, curve["trial_id"], curve["steps"], strict=True)
        if not pd.isna(t)
    ]
    rows = measurements.loc[keys] if keys else measurements.iloc[:0]
    rows = rows.droplevel("step").droplevel("trial_id")
    result["validation"] = rows[metric].reindex(curve.index).astype(float)
    if test_metric is not None:
        result["test"] = rows[test_metric].reindex(curve.index).astype(float)
    params = metaparameter_columns(trials)
    bookkeeping = [c for c in ("step_budget", "train_time") if c in trials.columns]
    # Trial id -1 never exists, so batch sizes without a winner get a row of NaN.
    winning = trials.reindex(
        pd.MultiIndex.from_tuples(
            [
                (int(b), -1 if pd.isna(t) else int(t))
                for b, t in zip(curve.index, curve["trial_id"], strict=True)
            ],
            names=["batch_size", "trial_id"],
        )
    )
    for column in [*params, *bookkeeping]:
        result[column] = winning[column].to_numpy()
    if "learning_rate" in params:
        momentum = result["momentum"].fillna(0.0) if "momentum" in params else 0.0
        result["effective_learning_rate"] = effective_learning_rate(
            result["learning_rate"].astype(float), momentum
        )
    return result


def trial_outcomes(
    measurements: pd.DataFrame,
    trials: pd.DataFrame,
    metric: str,
    target: float,
    maximize: bool = False,
) -> pd.Series:
    """Each trial's outcome: ``reached``, ``diverged``, ``pruned``, ``incomplete`` or ``missed``.

    A trial that reached the goal counts as ``reached`` whatever happened after, because its
    rows count towards steps to result. Otherwise ``INFEASIBLE`` is ``diverged``, ``PRUNED`` is
    ``pruned``, ``INCOMPLETE`` (stopped early for another reason, in imported data, whose rows
    are usually not imported) is ``incomplete``, and a trial that ran its budget is ``missed``.
    Indexed by (batch_size, trial_id) over the trials table and any trial that only appears in
    the measurements.
    """
    hits = first_hit_steps(measurements, metric, target, maximize)
    index = trials.index.union(hits.index)
    status = (
        trials["status"].reindex(index).astype(str)
        if "status" in trials.columns
        else pd.Series("COMPLETE", index=index)
    )
    outcome = pd.Series("missed", index=index, name="outcome")
    outcome[status == "INFEASIBLE"] = "diverged"
    outcome[status == "PRUNED"] = "pruned"
    outcome[status == "INCOMPLETE"] = "incomplete"
    outcome[hits.reindex(index).notna()] = "reached"
    return outcome
