"""batchscale: measure how far data parallelism speeds up neural network training.

The public API::

    from batchscale import Study, StudyConfig, CustomWorkload
    study = Study(StudyConfig(workload="mnist1d-mlp", batch_sizes=(16, 64, 256)), "s.sqlite")
    summary = study.run()

The names load on first use: ``import batchscale`` itself does not load PyTorch, so the
command line is ready to answer Ctrl-C before it does.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_HOMES = {
    "ConfigError": "batchscale.config",
    "StudyConfig": "batchscale.config",
    "build_config": "batchscale.config",
    "SearchSpace": "batchscale.search",
    "choice": "batchscale.search",
    "loguniform": "batchscale.search",
    "reverse_loguniform": "batchscale.search",
    "uniform": "batchscale.search",
    "StoreError": "batchscale.store",
    "StudyStore": "batchscale.store",
    "Progress": "batchscale.study",
    "Study": "batchscale.study",
    "StudySummary": "batchscale.study",
    "summarize": "batchscale.study",
    "CustomWorkload": "batchscale.workloads",
    "Metric": "batchscale.workloads",
    "Workload": "batchscale.workloads",
    "get_workload": "batchscale.workloads",
    "register_workload": "batchscale.workloads",
    "workload_names": "batchscale.workloads",
}


def __getattr__(name: str) -> Any:
    """A public name, imported from its module the first time it is asked for."""
    if name not in _HOMES:
        raise AttributeError(f"module 'batchscale' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def load_study(path: str) -> StudyStore:
    """Open a stored study read-only; ``.measurements()`` and ``.trials()`` give DataFrames."""
    from batchscale.store import StudyStore

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
