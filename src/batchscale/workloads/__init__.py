"""Built-in workloads, a registry to find them by name, and the pieces to write your own."""

from __future__ import annotations

from collections.abc import Callable

from batchscale.workloads.base import (
    CLASSIFICATION_ERROR,
    OPTIMIZERS,
    Budget,
    Data,
    Metric,
    Optimizer,
    Split,
    Workload,
)
from batchscale.workloads.custom import CustomWorkload
from batchscale.workloads.mnist1d import mnist1d_cnn, mnist1d_mlp
from batchscale.workloads.nqm import nqm

_REGISTRY: dict[str, Callable[[], Workload]] = {
    "mnist1d-mlp": mnist1d_mlp,
    "mnist1d-cnn": mnist1d_cnn,
    "nqm": nqm,
}


def workload_names() -> list[str]:
    """Names of the registered workloads."""
    return sorted(_REGISTRY)


def get_workload(name: str) -> Workload:
    """A fresh instance of the workload registered as ``name``."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        known = ", ".join(workload_names())
        raise ValueError(f"unknown workload '{name}'; known workloads: {known}") from None
    return factory()


def register_workload(name: str, factory: Callable[[], Workload]) -> None:
    """Make ``factory`` available under ``name`` (to the CLI and to stored studies)."""
    _REGISTRY[name] = factory


__all__ = [
    "CLASSIFICATION_ERROR",
    "OPTIMIZERS",
    "Budget",
    "CustomWorkload",
    "Data",
    "Metric",
    "Optimizer",
    "Split",
    "Workload",
    "get_workload",
    "register_workload",
    "workload_names",
]
