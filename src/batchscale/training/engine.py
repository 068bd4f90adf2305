"""Run the trials of one batch size (a cohort) with the chosen engine, racing if asked."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from batchscale.training.cohort import CohortPlan, plan_cohort, train_cohort
from batchscale.training.race import RaceBoard
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
    plan: CohortPlan | None = None,
    board: RaceBoard | None = None,
) -> RaceBound | None:
    """Train ``specs`` (all of one batch size) and hand each finished trial to ``on_result``.

    With ``race``, trials stop once they can no longer change steps to result; ``bound`` is
    the best already known, and ``board`` (if any) shares bounds with cohorts of the same
    batch size running elsewhere. Returns the final bound.

    The ``cohort`` engine trains the trials in lockstep as batched computations (``plan``, or
    one chosen for the device and batch size); where the model cannot be batched, or batching
    is slower than one trial at a time, it runs the reference loop instead.
    """
    ordered = sorted(specs, key=lambda s: s.trial_id)
    if engine == "cohort" and plan is None:
        plan = plan_cohort(workload, data, ordered)
    board = board if race else None
    if engine == "cohort" and plan is not None:
        for start in range(0, len(ordered), plan.cohort_size):
            cohort = ordered[start : start + plan.cohort_size]
            bound = train_cohort(
                workload,
                data,
                cohort,
                rules,
                evaluation_steps,
                race,
                bound,
                on_result,
                plan,
                board=board,
            )
        return bound
    metric = f"val/{workload.metric.name}"
    for spec in ordered:
        result = train_reference(
            workload, data, spec, rules, evaluation_steps, bound if race else None, board
        )
        on_result(result)
        tightened = tighten(bound, result, metric, rules)
        if board is not None and tightened is not None and tightened != bound:
            board.offer(spec.batch_size, tightened.step, tightened.trial_id)
        bound = tightened
    return bound
