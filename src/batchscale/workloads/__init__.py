"""Built-in workloads, a registry to find them by name, and the pieces to write your own."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from batchscale.workloads.base import (
    CLASSIFICATION_ERROR,
    OPTIMIZERS,
    Budget,
    Data,
    Metric,
    Optimizer,
    Split,
    TrainSize,
    Workload,
    resolve_train_size,
)
from batchscale.workloads.custom import CustomWorkload
from batchscale.workloads.hub import DataUnavailableError
from batchscale.workloads.mnist1d import mnist1d_cnn, mnist1d_mlp
from batchscale.workloads.nqm import nqm
from batchscale.workloads.text import wikitext2_transformer
from batchscale.workloads.vision import (
    cifar10_resnet8,
    cifar10_vgg11,
    fashion_mnist_cnn,
    mnist_cnn,
    mnist_fc,
)

_REGISTRY: dict[str, Callable[[], Workload]] = {
    "mnist1d-mlp": mnist1d_mlp,
    "mnist1d-cnn": mnist1d_cnn,
    "nqm": nqm,
    "mnist-cnn": mnist_cnn,
    "mnist-fc": mnist_fc,
    "fashion-mnist-cnn": fashion_mnist_cnn,
    "cifar10-resnet8": cifar10_resnet8,
    "cifar10-vgg11": cifar10_vgg11,
    "wikitext2-transformer": wikitext2_transformer,
}


BUILT_IN_WORKLOADS = frozenset(_REGISTRY)


def workload_names() -> list[str]:
    """Names of the registered workloads."""
    return sorted(_REGISTRY)


def get_workload(
    name: str,
    *,
    train_size: TrainSize | None = None,
    width: int | None = None,
    ghost_batch_size: int | None = None,
    data_dir: str | Path | None = None,
) -> Workload:
    """A fresh instance of the workload registered as ``name``, with any settings changed.

    ``train_size``: a fraction in (0, 1] or a count of the training examples, drawn
    reproducibly; ``width``: the model's width (units or channels, see each workload);
    ``ghost_batch_size``: the batch-norm slice size; ``data_dir``: read the data from there,
    never downloading. ``None`` keeps the workload's default. Raises ``ValueError`` for an
    unknown name, a setting the workload does not have, or a value out of range.
    """
    try:
        factory = _REGISTRY[name]
    except KeyError:
        known = ", ".join(workload_names())
        raise ValueError(f"unknown workload '{name}'; known workloads: {known}") from None
    return factory().with_overrides(
        train_size=train_size, width=width, ghost_batch_size=ghost_batch_size, data_dir=data_dir
    )


def register_workload(name: str, factory: Callable[[], Workload]) -> None:
    """Make ``factory`` available under ``name`` to ``get_workload`` in this process.

    ``Study.from_store`` and ``noise_scale_of_winner`` then rebuild a stored study of that
    workload; the ``batchscale`` command, another process, does not see it. Registering a
    name again replaces the factory; a built-in workload's name is refused.
    """
    if not callable(factory):
        raise TypeError(f"factory must be a function that returns a Workload, not {factory!r}")
    if name in BUILT_IN_WORKLOADS:
        raise ValueError(f"'{name}' is a built-in workload's name; register yours under another")
    _REGISTRY[name] = factory


__all__ = [
    "BUILT_IN_WORKLOADS",
    "CLASSIFICATION_ERROR",
    "OPTIMIZERS",
    "Budget",
    "CustomWorkload",
    "Data",
    "DataUnavailableError",
    "Metric",
    "Optimizer",
    "Split",
    "TrainSize",
    "Workload",
    "get_workload",
    "register_workload",
    "resolve_train_size",
    "workload_names",
]
