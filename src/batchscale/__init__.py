"""batchscale: measure how far data parallelism speeds up neural network training.

The public API::

    from batchscale import Study, StudyConfig, CustomWorkload
    study = Study(StudyConfig(workload="mnist1d-mlp", batch_sizes=(16, 64, 256)), "s.sqlite")
    summary = study.run()
"""

from batchscale.config import ConfigError, StudyConfig, build_config
from batchscale.search import SearchSpace, choice, loguniform, reverse_loguniform, uniform
from batchscale.store import StoreError, StudyStore
from batchscale.study import Progress, Study, StudySummary, summarize
from batchscale.workloads import (
    CustomWorkload,
    Metric,
    Workload,
    get_workload,
    register_workload,
    workload_names,
)


def load_study(path: str) -> StudyStore:
    """Open a stored study read-only; ``.measurements()`` and ``.trials()`` give DataFrames."""
    return StudyStore.open(path, read_only=True)


__all__ = [
    "ConfigError",
    "CustomWorkload",
    "Metric",
    "Progress",
    "SearchSpace",
    "StoreError",
    "Study",
    "StudyConfig",
    "StudyStore",
    "StudySummary",
    "Workload",
    "build_config",
    "choice",
    "get_workload",
    "load_study",
    "loguniform",
    "register_workload",
    "reverse_loguniform",
    "summarize",
    "uniform",
    "workload_names",
]
