"""Run the trials of one batch size (a cohort) with the chosen engine, racing if asked."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from batchscale.training.reference import train_reference
from batchscale.training.trial import RaceBound, StopRules, TrialResult, TrialSpec
from batchscale.workloads.base import Data, Workload

Engine = Literal["cohort", "reference"]


def first_reaching_step(result: TrialResult, metric: str, rules: StopRules) -> int | None:
    """The first evaluation step at which ``result`` beat the target, if any."""
    for row in result.measurements:
        value = row.get(metric)
        if value is not None and rules.reached(value):
            return int(row["step"])
    return None


def tighten(
    bound: RaceBound | None, result: TrialResult, metric: str, rules: StopRules
) -> RaceBound | None:
    """The race bound after ``result``: unchanged unless it reached the goal sooner."""
    step = first_reaching_step(result, metric, rules)
    if step is None:
        return bound
    if bound is None or bound.improved_by(step, result.spec.trial_id):
        return RaceBound(step=step, trial_id=result.spec.trial_id)
    return bound


def run_cohort(
    engine: Engine,
    workload: Workload,
    data: Data,
    specs: list[TrialSpec],
    rules: StopRules,
    evaluation_steps: list[int],
    race: bool,
    bound: RaceBound | None,
    on_result: Callable[[TrialResult], None],
) -> RaceBound | None:
    """Train ``specs`` (all of one batch size) and hand each finished trial to ``on_result``.

    With ``race``, trials stop once they can no longer change steps to result; ``bound`` is
    the best already known. Returns the final bound.
    """
    metric = f"val/{workload.metric.name}"
    for spec in sorted(specs, key=lambda s: s.trial_id):
        result = train_reference(
            workload, data, spec, rules, evaluation_steps, bound if race else None
        )
        on_result(result)
        bound = tighten(bound, result, metric, rules)
    return bound
