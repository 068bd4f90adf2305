"""Analysis: pure functions over a measurements DataFrame indexed by (batch_size, trial_id, step).

The same functions serve a batchscale store and data imported from elsewhere (the paper's
release): the metric column, goal and direction are always arguments.
"""

from batchscale.analysis.analyze import (
    StudyAnalysis,
    analyze,
    analyze_store,
    fit_and_warnings,
    store_search_space,
)
from batchscale.analysis.budgets import (
    best_metric,
    best_metric_under_example_budget,
    best_metric_under_step_budget,
    common_example_budget,
    common_step_budget,
    step_budgets,
    stopped_within_budget,
)
from batchscale.analysis.checks import (
    DesignWarning,
    collect_warnings,
    design_checks,
    diverged_warnings,
    easy_goal_warnings,
    edge_warnings,
    few_reached_warnings,
    fit_warnings,
    goal_warnings,
    late_winner_warnings,
    step_time_warnings,
)
from batchscale.analysis.goals import (
    GoalCurve,
    goal_curves,
    neighbouring_goals,
    steps_at_goals,
    stop_goal,
    stops_at_goal,
)
from batchscale.analysis.scaling import (
    Regimes,
    ScalingFit,
    bootstrap_steps_to_result,
    fit_measurements,
    fit_steps_to_result,
    fittable,
    local_slopes,
    regimes,
)
from batchscale.analysis.steps_to_result import (
    apply_example_budget,
    apply_step_budget,
    examples_to_result,
    first_hit_steps,
    reached_goal,
    steps_to_result,
    trials_reaching,
)
from batchscale.analysis.winners import (
    effective_learning_rate,
    metaparameter_columns,
    trial_outcomes,
    winners,
)

__all__ = [
    "DesignWarning",
    "GoalCurve",
    "Regimes",
    "ScalingFit",
    "StudyAnalysis",
    "analyze",
    "analyze_store",
    "apply_example_budget",
    "apply_step_budget",
    "best_metric",
    "best_metric_under_example_budget",
    "best_metric_under_step_budget",
    "bootstrap_steps_to_result",
    "collect_warnings",
    "common_example_budget",
    "common_step_budget",
    "design_checks",
    "diverged_warnings",
    "easy_goal_warnings",
    "edge_warnings",
    "effective_learning_rate",
    "examples_to_result",
    "few_reached_warnings",
    "first_hit_steps",
    "fit_and_warnings",
    "fit_measurements",
    "fit_steps_to_result",
    "fit_warnings",
    "fittable",
    "goal_curves",
    "goal_warnings",
    "late_winner_warnings",
    "local_slopes",
    "metaparameter_columns",
    "neighbouring_goals",
    "reached_goal",
    "regimes",
    "step_budgets",
    "step_time_warnings",
    "steps_at_goals",
    "steps_to_result",
    "stop_goal",
    "stopped_within_budget",
    "stops_at_goal",
    "store_search_space",
    "trial_outcomes",
    "trials_reaching",
    "winners",
]
