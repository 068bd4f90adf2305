"""Analysis: pure functions over a measurements DataFrame indexed by (batch_size, trial_id, step)."""

from batchscale.analysis.steps_to_result import (
    apply_example_budget,
    apply_step_budget,
    examples_to_result,
    reached_goal,
    steps_to_result,
    trials_reaching,
)

__all__ = [
    "apply_example_budget",
    "apply_step_budget",
    "examples_to_result",
    "reached_goal",
    "steps_to_result",
    "trials_reaching",
]
