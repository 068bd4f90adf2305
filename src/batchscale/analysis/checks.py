"""Design checks: signs that a study's answer depends on choices it should not depend on.

Each check returns ``DesignWarning`` objects; ``show`` prints them and the report lists them.
None of them is an error: each says what the study could not rule out, and what to change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from batchscale.analysis.goals import GoalCurve, goal_curves
from batchscale.analysis.scaling import (
    ScalingFit,
    fit_steps_to_result,
    fittable,
    no_fit_reason,
    untrained_batch_sizes,
)
from batchscale.analysis.steps_to_result import trials_reaching
from batchscale.analysis.winners import trial_outcomes, winners
from batchscale.formatting import format_seconds
from batchscale.search import SearchSpace


@dataclass(frozen=True)
class DesignWarning:
    """One finding of a design check: which check, what it found, and at which batch sizes.

    ``batch_sizes`` is empty for findings about the whole study (the fit, the goal).
    """

    check: str
    message: str
    batch_sizes: tuple[int, ...] = ()

    def __str__(self) -> str:
        return self.message

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form (what ``show --json`` lists under ``warnings``)."""
        return {"check": self.check, "batch_sizes": list(self.batch_sizes), "message": self.message}


def _percent(fraction: float) -> str:
    return f"{100 * fraction:g}%"


def _listing(details: dict[int, str]) -> str:
    """``16 (1), 64 (2)``: batch sizes with a detail each, ascending."""
    return ", ".join(
        f"{size} ({detail})" if detail else f"{size}" for size, detail in details.items()
    )


def edge_warnings(
    winning: pd.DataFrame, search_space: SearchSpace, fraction: float = 0.1
) -> list[DesignWarning]:
    """Winners whose metaparameter lies within ``fraction`` of an edge of its range.

    Positions are measured in each dimension's own scale (log, reverse-log or linear), so
    "within 10% of the top" of a log range means within a tenth of its decades. Such a winner
    suggests the best value lies outside the range: widen it and rerun. One warning per
    dimension and edge, listing the batch sizes (and winning values) where it happens.
    """
    hits: dict[tuple[str, str], dict[int, str]] = {}
    for batch_size, row in winning.iterrows():
        if pd.isna(row["trial_id"]):
            continue
        point = {
            name: float(row[name])
            for name in search_space.names
            if name in row.index and not pd.isna(row[name])
        }
        for name, position in search_space.edge_positions(point).items():
            if fraction <= position <= 1.0 - fraction:
                continue
            side = "bottom" if position < fraction else "top"
            key = int(batch_size)
            hits.setdefault((name, side), {})[key] = f"{point[name]:.3g}"
    return [
        DesignWarning(
            check="edge",
            batch_sizes=tuple(details),
            message=(
                f"{name}: the winner lies within {_percent(fraction)} of the {side} of its range "
                f"{search_space[name].describe()} at batch size{'s' if len(details) > 1 else ''} "
                f"{_listing(details)}; the best value may lie outside the range: widen it"
            ),
        )
        # Dimensions in the search space's order, bottom before top, whatever the batch sizes.
        for (name, side), details in sorted(
            hits.items(), key=lambda item: (search_space.names.index(item[0][0]), item[0][1])
        )
    ]


def late_winner_warnings(winning: pd.DataFrame, fraction: float = 0.1) -> list[DesignWarning]:
    """Winners that reached the goal within the last ``fraction`` of their step budget.

    The learning-rate schedule stretches over the budget, so a goal reached only at its end
    may be reached sooner with a longer budget: steps to result there is budget-limited.
    Needs a ``step_budget`` column (imported data may have none; then nothing is checked).
    """
    if "step_budget" not in winning.columns:
        return []
    details = {}
    for batch_size, row in winning.iterrows():
        steps, budget = row["steps"], row["step_budget"]
        if pd.isna(steps) or pd.isna(budget) or budget <= 0:
            continue
        if steps > (1.0 - fraction) * budget:
            key = int(batch_size)
            details[key] = f"step {int(steps)} of {int(budget)}"
    if not details:
        return []
    return [
        DesignWarning(
            check="late_winner",
            batch_sizes=tuple(details),
            message=(
                f"the winner reached the goal in the last {_percent(fraction)} of its step budget "
                f"at batch size{'s' if len(details) > 1 else ''} {_listing(details)}; steps to "
                "result there may be limited by the budget: raise it"
            ),
        )
    ]


def diverged_warnings(outcomes: pd.Series) -> list[DesignWarning]:
    """Batch sizes where every trial diverged (see ``trial_outcomes``): the search space's
    learning rates are too large there, whatever the number of trials."""
    counts = outcomes.groupby(level="batch_size").value_counts().unstack(fill_value=0)
    if "diverged" not in counts.columns:
        return []
    every = [int(size) for size, row in counts.iterrows() if row["diverged"] == row.sum()]
    if not every:
        return []
    return [
        DesignWarning(
            check="all_diverged",
            batch_sizes=tuple(every),
            message=(
                f"every trial diverged at batch size{'s' if len(every) > 1 else ''} "
                f"{_listing(dict.fromkeys(every, ''))}: the learning rates searched are too "
                "large there; lower learning_rate's range in the search space"
            ),
        )
    ]


def few_reached_warnings(
    reached: pd.Series, minimum: int = 3, diverged: Sequence[int] = ()
) -> list[DesignWarning]:
    """Batch sizes where fewer than ``minimum`` trials reached the goal.

    With one or two successes, steps to result rests on luck; with none, the batch size has no
    result at all and drops out of the curve and the fit. Batch sizes in ``diverged``, where
    every trial diverged, are left to ``diverged_warnings``: more trials would not help there.
    """
    counts = {int(size): int(count) for size, count in reached.items()}
    none = {size: "" for size, count in counts.items() if count == 0 and size not in diverged}
    few = {size: str(count) for size, count in counts.items() if 0 < count < minimum}
    found = []
    if none:
        found.append(
            DesignWarning(
                check="few_reached",
                batch_sizes=tuple(none),
                message=(
                    f"no trial reached the goal at batch size{'s' if len(none) > 1 else ''} "
                    f"{_listing(none)}, so there is no steps to result there; add trials, raise "
                    "the budget or widen the search space"
                ),
            )
        )
    if few:
        found.append(
            DesignWarning(
                check="few_reached",
                batch_sizes=tuple(few),
                message=(
                    f"fewer than {minimum} trials reached the goal at batch "
                    f"size{'s' if len(few) > 1 else ''} {_listing(few)} (trials reached in "
                    "brackets); steps to result there rests on one or two lucky trials: add trials"
                ),
            )
        )
    return found


def easy_goal_warnings(winning: pd.DataFrame) -> list[DesignWarning]:
    """Batch sizes where the untrained model already meets the goal (steps to result 0).

    There the winner is whichever trial has the smallest id, and the batch size says nothing
    about scaling (it drops out of the fit).
    """
    easy = untrained_batch_sizes(winning.index, winning["steps"])
    if not easy:
        return []
    plural = "s" if len(easy) > 1 else ""
    return [
        DesignWarning(
            check="easy_goal",
            batch_sizes=tuple(easy),
            message=(
                f"the untrained model already meets the goal at batch size{plural} "
                f"{_listing(dict.fromkeys(easy, ''))} (steps to result 0), which then says "
                "nothing about scaling: choose a harder goal"
            ),
        )
    ]


def fit_warnings(
    fit: ScalingFit | None, winning: pd.DataFrame | None = None
) -> list[DesignWarning]:
    """No fit, or a critical batch size the batch sizes that reached the goal do not locate.

    ``winning`` (see ``winners``) says why there is no fit.
    """
    if fit is None:
        if winning is None:
            winning = pd.DataFrame({"steps": []})
        sizes, steps = winning.index, winning["steps"]
        fix = (
            "choose a harder goal"
            if untrained_batch_sizes(sizes, steps)
            else "add trials or batch sizes, or choose an easier goal"
        )
        return [
            DesignWarning(
                check="fit",
                message=(
                    f"the goal was {no_fit_reason(sizes, steps)}, so S(B) cannot be fitted; {fix}"
                ),
            )
        ]
    low, high = min(fit.batch_sizes), max(fit.batch_sizes)
    if fit.b_crit_at_bound:
        shape = "falls as 1/B" if fit.b_crit > high else "stays flat"
        return [
            DesignWarning(
                check="fit",
                message=(
                    f"steps to result {shape} across the batch sizes that reached the goal "
                    f"[{low:g}, {high:g}], so the critical batch size is not located: "
                    f"measure {'larger' if fit.b_crit > high else 'smaller'} batch sizes"
                ),
            )
        ]
    if not low <= fit.b_crit <= high:
        return [
            DesignWarning(
                check="fit",
                message=(
                    f"the fitted critical batch size {fit.b_crit:.3g} lies outside the batch "
                    f"sizes that reached the goal [{low:g}, {high:g}], so it is an extrapolation"
                ),
            )
        ]
    return []


def goal_warnings(curves: Sequence[GoalCurve], max_ratio: float = 2.0) -> list[DesignWarning]:
    """Goals near the chosen one whose curve disagrees with it: the result hangs on the goal.

    Flags a goal whose fitted B_crit differs from the chosen goal's by more than a factor
    ``max_ratio``, and a goal reached at fewer batch sizes than the chosen one (the chosen goal
    then sits at the edge of what the budget reaches at some batch sizes). Censored goals
    (harder than the goal trials stopped at) are not compared: they measure the stop rule.
    """
    chosen = next((c for c in curves if c.chosen), None)
    if chosen is None:
        return []
    found = []
    summary = ", ".join(
        f"{c.goal:g}: " + ("-" if c.fit is None else f"{c.fit.b_crit:.3g}")
        for c in curves
        if not c.censored
    )
    for curve in curves:
        if curve.chosen or curve.censored:
            continue
        if curve.reached < chosen.reached:
            found.append(
                DesignWarning(
                    check="fragile_goal",
                    message=(
                        f"goal {curve.goal:g} is reached at only {curve.reached} of the "
                        f"{chosen.reached} batch sizes that reach the chosen goal {chosen.goal:g}; "
                        "the chosen goal is close to what the budget allows"
                    ),
                )
            )
        elif curve.fit is not None and chosen.fit is not None:
            ratio = curve.fit.b_crit / chosen.fit.b_crit
            if max(ratio, 1.0 / ratio) > max_ratio:
                found.append(
                    DesignWarning(
                        check="fragile_goal",
                        message=(
                            f"B_crit at goal {curve.goal:g} is {curve.fit.b_crit:.3g}, "
                            f"{max(ratio, 1 / ratio):.2g}x "
                            f"{'above' if ratio > 1 else 'below'} the chosen goal's "
                            f"{chosen.fit.b_crit:.3g} (B_crit by goal: {summary}); the curve's "
                            "shape depends on the goal"
                        ),
                    )
                )
    return found


# Step times whose slowest repeat took this many times the fastest were taken on a busy machine.
NOISY_STEP_TIME = 1.5


def noisy_step_time(entry: Mapping[str, Any]) -> bool:
    """Whether a stored step time's slowest repeat took over ``NOISY_STEP_TIME`` times its
    fastest."""
    return bool(entry.get("low")) and entry["high"] > NOISY_STEP_TIME * entry["low"]


def step_time_warnings(step_times: Mapping[str, Mapping[str, Any]]) -> list[DesignWarning]:
    """Batch sizes whose step time varied more than ``NOISY_STEP_TIME``-fold between repeats.

    ``step_times`` is the store's entry: per batch size, ``median``, ``low`` and ``high``.
    """
    noisy = {
        int(size): f"{format_seconds(entry['low'])} to {format_seconds(entry['high'])}"
        for size, entry in step_times.items()
        if noisy_step_time(entry)
    }
    if not noisy:
        return []
    ordered = dict(sorted(noisy.items()))
    plural = "s" if len(ordered) > 1 else ""
    return [
        DesignWarning(
            check="step_time",
            batch_sizes=tuple(ordered),
            message=(
                f"the step time at batch size{plural} {_listing(ordered)} varied more than "
                f"{NOISY_STEP_TIME:g}-fold between repeats: the machine was busy, so time to "
                "result there is uncertain; resume the study on a quiet machine "
                "(batchscale run --store FILE) to measure it again"
            ),
        )
    ]


def collect_warnings(
    winning: pd.DataFrame,
    reached: pd.Series,
    fit: ScalingFit | None,
    curves: Sequence[GoalCurve],
    search_space: SearchSpace | None = None,
    outcomes: pd.Series | None = None,
    *,
    edge_fraction: float = 0.1,
    late_fraction: float = 0.1,
    minimum_reached: int = 3,
    max_b_crit_ratio: float = 2.0,
) -> list[DesignWarning]:
    """Every design check over precomputed parts (``winners``, ``trials_reaching``,
    ``trial_outcomes``, ...)."""
    found = diverged_warnings(outcomes) if outcomes is not None else []
    diverged = [size for warning in found for size in warning.batch_sizes]
    found += few_reached_warnings(reached, minimum_reached, diverged)
    found += easy_goal_warnings(winning)
    if search_space is not None:
        found += edge_warnings(winning, search_space, edge_fraction)
    found += late_winner_warnings(winning, late_fraction)
    found += fit_warnings(fit, winning)
    found += goal_warnings(curves, max_b_crit_ratio)
    return found


def design_checks(
    measurements: pd.DataFrame,
    trials: pd.DataFrame,
    metric: str,
    target: float,
    maximize: bool = False,
    *,
    search_space: SearchSpace | None = None,
    goals: Sequence[float] | None = None,
    edge_fraction: float = 0.1,
    late_fraction: float = 0.1,
    minimum_reached: int = 3,
    max_b_crit_ratio: float = 2.0,
) -> list[DesignWarning]:
    """Run every design check on a study's measurements and trials tables.

    Without ``search_space`` the edge check is skipped; ``goals`` are the goals compared with
    ``target`` (default: 10% easier and 10% harder).
    """
    winning = winners(measurements, trials, metric, target, maximize)
    reached = trials_reaching(measurements, metric, target, maximize)
    steps = winning["steps"].to_numpy(dtype=float, na_value=np.nan)
    sizes = winning.index.to_numpy(dtype=float)
    fit = fit_steps_to_result(sizes, steps) if fittable(sizes, steps) else None
    curves = goal_curves(measurements, metric, target, goals, maximize)
    return collect_warnings(
        winning,
        reached,
        fit,
        curves,
        search_space,
        trial_outcomes(measurements, trials, metric, target, maximize),
        edge_fraction=edge_fraction,
        late_fraction=late_fraction,
        minimum_reached=minimum_reached,
        max_b_crit_ratio=max_b_crit_ratio,
    )
