"""The same study read at several goals, to see whether the curve's shape hangs on the goal.

A well-chosen metric and goal give curves of the same shape at goals somewhat easier and
harder than the chosen one (the paper's check that a result is not an artefact of one goal).
Every goal is read from the same measurements, so no extra training is needed; a goal harder
than the chosen one is only visible where trials did not stop first: batchscale stops a trial
when it reaches its goal, so harder goals are read only from studies run to the hardest goal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from batchscale.analysis.scaling import ScalingFit, fit_steps_to_result, fittable
from batchscale.analysis.steps_to_result import first_hit_steps, steps_to_result


def neighbouring_goals(target: float, maximize: bool = False, relative: float = 0.1) -> list[float]:
    """The chosen goal with one ``relative`` step easier and one harder, easiest first."""
    if not 0.0 < relative < 1.0:
        raise ValueError(f"relative must lie in (0, 1), got {relative}")
    # Six significant digits keep 0.05 * 1.1 from printing as 0.05500000000000001.
    low, high = (float(f"{target * factor:.6g}") for factor in (1.0 - relative, 1.0 + relative))
    # For a metric to minimise a larger value is easier; for one to maximise, a smaller one.
    return [low, target, high] if maximize else [high, target, low]


def order_goals(goals: Sequence[float], maximize: bool = False) -> list[float]:
    """Distinct goals sorted easiest first."""
    return sorted(set(goals), reverse=not maximize)


def stops_at_goal(
    measurements: pd.DataFrame, metric: str, target: float, maximize: bool = False
) -> bool:
    """Whether most trials that reached ``target`` have no measurements after reaching it.

    Then goals harder than ``target`` are censored: a trial stopped before it could reach them,
    so their steps to result would be too high or missing for reasons unrelated to training.
    """
    hits = first_hit_steps(measurements, metric, target, maximize).dropna()
    if hits.empty:
        return False
    frame = measurements.index.to_frame(index=False)
    last = frame.groupby(["batch_size", "trial_id"])["step"].max().reindex(hits.index)
    return bool((last.to_numpy() == hits.to_numpy()).mean() > 0.5)


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
    """Steps to result at one goal, and its scaling fit where two or more batch sizes reach it.

    ``censored`` marks a goal harder than the one trials stopped at: its curve is not a
    measurement of that goal (see ``stops_at_goal``).
    """

    goal: float
    chosen: bool
    censored: bool
    batch_sizes: tuple[float, ...]
    steps: tuple[float, ...]
    fit: ScalingFit | None

    @property
    def reached(self) -> int:
        """Number of batch sizes where some trial reached this goal."""
        return int(np.isfinite(np.asarray(self.steps, dtype=float)).sum())

    @property
    def exact_fit(self) -> bool:
        """Whether the fit passes through two batch sizes: two parameters fit two points
        exactly whatever the curve's shape, so its B_crit says nothing of the fit's quality
        (unless B_crit is pinned at the edge of its range, where the fit does not pass through
        them)."""
        return (
            self.fit is not None and len(self.fit.batch_sizes) < 3 and not self.fit.b_crit_at_bound
        )

    def notes(self, target: float, maximize: bool, stop: float | None) -> list[str]:
        """What a goals table says beside this curve: whether it is the study's goal, and
        whether it cannot be measured because trials stopped at ``stop`` (see ``stop_goal``)."""
        notes = ["the study's goal"] if self.chosen else []
        if self.censored:
            if stop is None or stop == target:
                notes.append("not measurable: trials stop at the study's goal")
            else:
                notes.append(f"not measurable: trials stop at {'>' if maximize else '<'} {stop:g}")
        return notes

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {
            "goal": self.goal,
            "chosen": self.chosen,
            "censored": self.censored,
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
    stop_target: float | None = None,
) -> list[GoalCurve]:
    """Steps to result and the scaling fit at ``goals`` plus ``target``, easiest goal first.

    ``goals`` defaults to ``neighbouring_goals(target, maximize)``. ``stop_target`` is the goal
    at which trials stopped, where known: goals harder than it are censored. Without it,
    trials are taken to have stopped at ``target`` if most of them end there. Censored goals
    get no fit; the others use the least-squares interval (a bootstrap per goal would
    multiply the cost).
    """
    chosen = [*(goals if goals is not None else neighbouring_goals(target, maximize)), target]
    table = steps_at_goals(measurements, metric, chosen, maximize)
    if stop_target is None:
        stop_target = target if stops_at_goal(measurements, metric, target, maximize) else None
    sizes = table.index.to_numpy(dtype=float)
    curves = []
    for goal in table.columns:
        steps = table[goal].to_numpy(dtype=float, na_value=np.nan)
        censored = stop_target is not None and bool(
            goal > stop_target if maximize else goal < stop_target
        )
        # A censored curve measures the stop rule, not the goal: fitting it would mislead.
        usable = not censored and fittable(sizes, steps)
        curves.append(
            GoalCurve(
                goal=float(goal),
                chosen=bool(goal == target),
                censored=censored,
                batch_sizes=tuple(float(b) for b in sizes),
                steps=tuple(float(s) for s in steps),
                fit=fit_steps_to_result(sizes, steps) if usable else None,
            )
        )
    return curves


def stop_goal(
    meta: dict[str, Any], measurements: pd.DataFrame, metric: str, target: float, maximize: bool
) -> float | None:
    """The goal a stored study's trials stopped at, or ``None`` where they ran their budget.

    The store's metadata (``meta``) says so (``stop_target``: the hardest of the study's goals,
    ``None`` under an epoch budget); older and imported stores do not, and then trials count as
    stopped at ``target`` where most trials that reached it end there.
    """
    if "stop_target" in meta:
        return None if meta["stop_target"] is None else float(meta["stop_target"])
    if (meta.get("budget") or {}).get("epochs") is not None:
        return None
    return target if stops_at_goal(measurements, metric, target, maximize) else None
