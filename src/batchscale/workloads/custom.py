"""A user's own workload: any ``nn.Module`` factory, data as tensors or a ``Dataset``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from batchscale.workloads.base import CLASSIFICATION_ERROR, Budget, Data, Metric, Split, Workload

SplitLike = tuple[Tensor, Tensor] | list[Tensor] | Dataset


def as_split(source: SplitLike, what: str) -> Split:
    """Turn ``(inputs, targets)`` (a tuple or a list of two arrays) or a map-style ``Dataset``
    of pairs into a ``Split``."""
    if isinstance(source, tuple | list) and len(source) == 2 and hasattr(source[0], "shape"):
        inputs, targets = (torch.as_tensor(part) for part in source)
        return Split(inputs, targets)
    try:
        size = len(source)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"the {what} dataset must define __len__ (a map-style Dataset)") from None
    if size == 0:
        raise ValueError(f"the {what} dataset is empty")
    pairs = [source[i] for i in range(size)]
    inputs = torch.stack([torch.as_tensor(pair[0]) for pair in pairs])
    targets = torch.as_tensor([int(pair[1]) for pair in pairs])
    return Split(inputs, targets)


@dataclass
class CustomWorkload(Workload):
    """A workload assembled from a model factory and three splits.

    Example::

        workload = CustomWorkload.create(
            "my-mlp", model=lambda: nn.Sequential(...),
            train=(x_train, y_train), validation=(x_val, y_val), test=(x_test, y_test),
            target=0.1,
        )
    """

    model_factory: Callable[[], nn.Module] | None = None
    splits: Data | None = field(default=None, repr=False)
    _digest: str | None = field(default=None, init=False, repr=False)

    def load_data(self) -> Data:
        """The splits given at construction."""
        assert self.splits is not None
        return self.splits

    def make_model(self) -> nn.Module:
        """A fresh model from the user's factory."""
        assert self.model_factory is not None
        return self.model_factory()

    def data_fingerprint(self) -> str:
        """A digest of the splits given: a name alone does not tell one data set from another."""
        if self._digest is None:
            # Hashed once: the splits given never change.
            self._digest = self.data().fingerprint()
        return self._digest

    @classmethod
    def create(
        cls,
        name: str,
        model: Callable[[], nn.Module],
        train: SplitLike,
        validation: SplitLike,
        test: SplitLike,
        target: float,
        metric: Metric = CLASSIFICATION_ERROR,
        max_steps: int = 5_000,
        min_steps: int = 200,
        epochs: float = 20.0,
        learning_rate_range: tuple[float, float] = (1e-3, 10.0),
        one_minus_momentum_range: tuple[float, float] = (1e-3, 0.5),
        description: str = "",
    ) -> CustomWorkload:
        """Build a workload; the step budget at batch size B is ``epochs`` passes, clamped.

        Mistakes are refused here, with what to change, rather than deep inside training:
        ``model`` must build a fresh model each call and return one logit per class, the
        targets must be class indices, and ``name`` must not be a built-in workload's.
        """
        # Here, not at the top: the package's registry imports this module.
        from batchscale.workloads import BUILT_IN_WORKLOADS

        if isinstance(model, nn.Module) or not callable(model):
            raise TypeError(
                f"model must be a function that builds a fresh model, e.g. model=lambda: "
                f"MyNet(), not {type(model).__name__} (every trial starts from its own)"
            )
        if not isinstance(metric, Metric):
            raise TypeError(
                f"metric must be a batchscale Metric such as CLASSIFICATION_ERROR, not {metric!r}"
            )
        if not name.strip():
            raise ValueError("give the workload a name: it identifies the study's store")
        if name in BUILT_IN_WORKLOADS:
            raise ValueError(f"'{name}' is a built-in workload's name; give yours another")
        if min(min_steps, max_steps) < 1:
            raise ValueError(
                f"min_steps and max_steps must be at least 1, got {min_steps} and {max_steps}"
            )
        if not epochs > 0:
            raise ValueError(f"epochs must be positive, got {epochs}")
        metric.check_target(target)
        data = Data(
            as_split(train, "train"), as_split(validation, "validation"), as_split(test, "test")
        )
        _check_logits_and_targets(model, data)
        return cls(
            name=name,
            description=description or f"user workload '{name}'",
            metric=metric,
            default_target=target,
            budget=Budget(
                examples=int(epochs * len(data.train)), min_steps=min_steps, max_steps=max_steps
            ),
            learning_rate_range=learning_rate_range,
            one_minus_momentum_range=one_minus_momentum_range,
            model_factory=model,
            splits=data,
        )


def _check_logits_and_targets(model: Callable[[], nn.Module], data: Data) -> None:
    """Class-index targets, and a model whose output has one logit per class for each example."""
    splits = {"train": data.train, "validation": data.validation, "test": data.test}
    for what, split in splits.items():
        targets = split.targets
        if targets.dtype.is_floating_point or targets.dtype == torch.bool:
            raise TypeError(
                f"the {what} targets must be class indices (integers), not {targets.dtype}"
            )
        if len(targets) and int(targets.min()) < 0:
            raise ValueError(
                f"the {what} targets hold {int(targets.min())}: class indices start at 0"
            )
    examples = data.train.inputs[:2]
    # Under a forked generator: building a workload leaves the caller's random state alone.
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        probe = model()
        probe.eval()
        logits = probe(examples)
    if not isinstance(logits, Tensor) or logits.shape[:1] != (len(examples),) or logits.ndim != 2:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(
            "the model must return logits of shape (examples, classes); for "
            f"{len(examples)} examples it returned {shape}"
        )
    largest = max(int(split.targets.max()) for split in splits.values() if len(split.targets))
    if largest >= logits.shape[1]:
        raise ValueError(
            f"the targets go up to class {largest}, but the model gives {logits.shape[1]} "
            f"logits: make its last layer {largest + 1} wide"
        )
