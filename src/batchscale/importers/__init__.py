"""Readers that turn results recorded elsewhere into batchscale study stores."""

from batchscale.importers.batch_science import (
    PAPER_GOALS,
    BatchScienceError,
    ImportSummary,
    PaperGoal,
    canonical_name,
    find_workloads,
    import_batch_science,
    metric_range,
    paper_goal,
    resolve_workload,
)

__all__ = [
    "PAPER_GOALS",
    "BatchScienceError",
    "ImportSummary",
    "PaperGoal",
    "canonical_name",
    "find_workloads",
    "import_batch_science",
    "metric_range",
    "paper_goal",
    "resolve_workload",
]
