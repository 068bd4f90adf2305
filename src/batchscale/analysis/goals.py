"""The same study read at several goals, to see whether the curve's shape hangs on the goal.

A well-chosen metric and goal give curves of the same shape at goals somewhat easier and
harder than the chosen one (the paper's check that a result is not an artefact of one goal).
Every goal is read from the same measurements, so no extra training is needed; a goal harder
than the chosen one is only visible where trials did not stop first (trials stop at the goal).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from batchscale.analysis.scaling import ScalingFit, fit_steps_to_result
from batchscale.analysis.steps_to_result import steps_to_result


def neighbouring_goals(target: float, maximize: bool = False, relative: float = 0.1) -> list[float]:
    """The chosen goal with one ``relative`` step easier and one harder, easiest first."""
    if not 0.0 < relative < 1.0:
        raise ValueError(f"relative must lie in (0, 1), got {relative}")
    low, high = target * (1.0 - relative), target * (1.0 + relative)
    # For a metric to minimise a larger value is easier; for one to maximise, a smaller one.
    return [low, target, high] if maximize else [high, target, low]


def order_goals(goals: Sequence[float], maximize: bool = False) -> list[float]:
    """Distinct goals sorted easiest first."""
    return sorted(set(goals), reverse=not maximize)


def steps_at_goals(
    measurements: pd.DataFrame, metric: str, goals: Sequence[float], maximize: bool = False
) -> pd.DataFrame:
    """Steps to result per batch size (rows) at each goal (columns, easiest first)."""
    columns = {
        goal: steps_to_result(measurements, metric, goal, maximize)["steps"]
        for goal in order_goals(goals, maximize)
    }
    frame = pd.DataFrame(columns)
    frame.columns.name = "goal"
    return frame


@dataclass(frozen=True)
class GoalCurve:
    """Steps to result at one goal, and its scaling fit where two or more batch sizes reach it."""

    goal: float
    chosen: bool
    batch_sizes: tuple[float, ...]
    steps: tuple[float, ...]
    fit: ScalingFit | None

    @property
    def reached(self) -> int:
        """Number of batch sizes where some trial reached this goal."""
        return int(np.isfinite(np.asarray(self.steps, dtype=float)).sum())

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {
            "goal": self.goal,
            "chosen": self.chosen,
            "reached": self.reached,
            "b_crit": None if self.fit is None else self.fit.b_crit,
            "s_min": None if self.fit is None else self.fit.s_min,
        }


def goal_curves(
    measurements: pd.DataFrame,
    metric: str,
    target: float,
    goals: Sequence[float] | None = None,
    maximize: bool = False,
) -> list[GoalCurve]:
    """Steps to result and the scaling fit at ``goals`` plus ``target``, easiest goal first.

    ``goals`` defaults to ``neighbouring_goals(target, maximize)``. The fits use the
    least-squares interval (a bootstrap per goal would multiply the cost for a check).
    """
    chosen = [*(goals if goals is not None else neighbouring_goals(target, maximize)), target]
    table = steps_at_goals(measurements, metric, chosen, maximize)
    sizes = table.index.to_numpy(dtype=float)
    curves = []
    for goal in table.columns:
        steps = table[goal].to_numpy(dtype=float, na_value=np.nan)
        fit = fit_steps_to_result(sizes, steps) if np.isfinite(steps).sum() >= 2 else None
        curves.append(
            GoalCurve(
                goal=float(goal),
                chosen=bool(goal == target),
                batch_sizes=tuple(float(b) for b in sizes),
                steps=tuple(float(s) for s in steps),
                fit=fit,
            )
        )
    return curves
