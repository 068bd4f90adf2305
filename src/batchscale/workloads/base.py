"""The contract of a workload: data, model, loss, metric, goal, budgets and search space.

The training engine knows nothing about any particular workload; a workload only describes
itself through this interface.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any, Literal, Self

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from batchscale.search import SearchSpace, choice, loguniform, reverse_loguniform, uniform

Optimizer = Literal["sgd", "momentum", "nesterov"]
OPTIMIZERS: tuple[Optimizer, ...] = ("sgd", "momentum", "nesterov")

PerExampleMetric = Callable[[Tensor, Tensor], Tensor]

# A training-set size: a fraction of the available examples in (0, 1], or a count of them.
TrainSize = int | float

# Fixed seed of the draw that picks a reduced training set: a size always means the same examples.
SUBSET_SEED = 1_811_036


def classification_error(outputs: Tensor, targets: Tensor) -> Tensor:
    """1 where the arg-max class differs from the label, else 0 (one value per example)."""
    return (outputs.argmax(dim=-1) != targets).to(outputs.dtype)


def cross_entropy_per_example(outputs: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy of each example, without label smoothing."""
    return F.cross_entropy(outputs, targets, reduction="none")


@dataclass(frozen=True)
class Metric:
    """The held-out metric that defines the goal: its name, direction and valid range."""

    name: str
    per_example: PerExampleMetric
    direction: Literal["minimize", "maximize"] = "minimize"
    low: float = 0.0
    high: float = math.inf

    def reached(self, value: float, target: float) -> bool:
        """Whether ``value`` is strictly better than ``target`` (the paper's rule)."""
        return value < target if self.direction == "minimize" else value > target

    def contains(self, value: float) -> bool:
        """Whether ``value`` is a finite value inside the metric's range."""
        return math.isfinite(value) and self.low <= value <= self.high

    def check_target(self, target: float, what: str = "target") -> None:
        """Raise ``ValueError`` when ``target`` (a ``what``) lies outside the metric's range,
        or at the end of it that no value can strictly beat."""
        check_in_range(target, self.name, self.low, self.high, what)
        edge = self.low if self.direction == "minimize" else self.high
        if target == edge:
            raise ValueError(
                f"{what} {target:g} can never be reached: {self.name} cannot be "
                f"{'below' if self.direction == 'minimize' else 'above'} {edge:g}; "
                "choose a goal inside its range"
            )


def check_in_range(value: float, metric: str, low: float, high: float, what: str) -> None:
    """Raise ``ValueError`` unless ``value`` (a ``what``: target, goal) is finite and within
    ``metric``'s range [``low``, ``high``]."""
    if not (math.isfinite(value) and low <= value <= high):
        raise ValueError(
            f"{what} {value} is outside the range of {metric} [{low:g}, {high:g}]; "
            "choose a goal inside it"
        )


CLASSIFICATION_ERROR = Metric("classification_error", classification_error, "minimize", 0.0, 1.0)


@dataclass
class Split:
    """Inputs and targets of one split, as tensors with the example dimension first."""

    inputs: Tensor
    targets: Tensor

    def __post_init__(self) -> None:
        if len(self.inputs) != len(self.targets):
            raise ValueError(f"split has {len(self.inputs)} inputs but {len(self.targets)} targets")

    def __len__(self) -> int:
        return len(self.inputs)

    def to(self, device: torch.device | str) -> Split:
        """The same split on ``device``."""
        return Split(self.inputs.to(device), self.targets.to(device))


@dataclass
class Data:
    """The three splits a study needs: train, validation (selects winners) and test (reported)."""

    train: Split
    validation: Split
    test: Split

    def to(self, device: torch.device | str) -> Data:
        """The same data on ``device``."""
        return Data(self.train.to(device), self.validation.to(device), self.test.to(device))

    def fingerprint(self) -> str:
        """A short digest of every split's tensors: their dtypes, shapes and bytes."""
        digest = hashlib.blake2b(digest_size=8)
        for split in (self.train, self.validation, self.test):
            for tensor in (split.inputs, split.targets):
                flat = tensor.detach().cpu().contiguous().reshape(-1)
                digest.update(f"{flat.dtype}{tuple(tensor.shape)}".encode())
                digest.update(flat.view(torch.uint8).numpy().data)
        return digest.hexdigest()


class EpochSampler:
    """Shuffled passes over ``size`` examples, driven by one trial's own generator.

    Each pass is a fresh permutation; a batch never spans two passes (the tail is dropped), so
    every trial of a given seed sees the same batches whatever else runs beside it.
    """

    def __init__(self, size: int, batch_size: int, seed: int) -> None:
        if batch_size > size:
            raise ValueError(
                f"batch size {batch_size} exceeds the {size} training examples; "
                "choose smaller batch sizes or a larger training set"
            )
        self.size = size
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self._order = torch.randperm(size, generator=self.generator)
        self._position = 0

    def next_indices(self) -> Tensor:
        """The indices of the next batch (on the CPU)."""
        if self._position + self.batch_size > self.size:
            self._order = torch.randperm(self.size, generator=self.generator)
            self._position = 0
        batch = self._order[self._position : self._position + self.batch_size]
        self._position += self.batch_size
        return batch

    def next_block(self, steps: int) -> Tensor:
        """The next ``steps`` batches as one ``[steps, batch_size]`` tensor (on the CPU).

        The same batches in the same order as ``steps`` calls of ``next_indices``, cut from each
        permutation in one slice rather than one call per batch.
        """
        pieces = []
        while steps > 0:
            if self._position + self.batch_size > self.size:
                self._order = torch.randperm(self.size, generator=self.generator)
                self._position = 0
            take = min(steps, (self.size - self._position) // self.batch_size)
            end = self._position + take * self.batch_size
            pieces.append(self._order[self._position : end].view(take, self.batch_size))
            self._position = end
            steps -= take
        if not pieces:
            return torch.empty(0, self.batch_size, dtype=torch.long)
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


def resolve_train_size(train_size: TrainSize | None, available: int) -> int:
    """How many of ``available`` training examples ``train_size`` keeps.

    ``None`` keeps all; an integer is a count (1 to ``available``); a float is a fraction in
    (0, 1], rounded to the nearest count and at least one example.
    """
    if train_size is None:
        return available
    if isinstance(train_size, Integral) and not isinstance(train_size, bool):
        if not 1 <= int(train_size) <= available:
            raise ValueError(
                f"train_size {train_size} must be a count between 1 and the {available} "
                "training examples, or a fraction in (0, 1]"
            )
        return int(train_size)
    if isinstance(train_size, Real) and not isinstance(train_size, bool):
        if not 0.0 < float(train_size) <= 1.0:
            raise ValueError(
                f"train_size {train_size} must be a fraction in (0, 1], "
                f"or an integer count of at most {available} examples"
            )
        return max(1, round(float(train_size) * available))
    raise ValueError(f"train_size must be a fraction or a count of examples, got {train_size!r}")


def train_subset(split: Split, train_size: TrainSize | None, seed: int = SUBSET_SEED) -> Split:
    """The examples of ``split`` that ``train_size`` keeps: the same ones on every call.

    They are the first ``n`` of one fixed-seed permutation, so a smaller training set is
    contained in every larger one (a data-set-size sweep only ever adds examples), and they
    keep their original order, so the full size returns ``split`` itself.
    """
    count = resolve_train_size(train_size, len(split))
    if count == len(split):
        return split
    chosen = np.sort(np.random.default_rng(seed).permutation(len(split))[:count])
    index = torch.from_numpy(chosen)
    return Split(split.inputs[index], split.targets[index])


@dataclass
class Budget:
    """Default step budget as a function of batch size: an example budget, clamped to a range."""

    examples: int
    min_steps: int
    max_steps: int

    def steps(self, batch_size: int) -> int:
        """Steps allowed at ``batch_size``."""
        return int(min(self.max_steps, max(self.min_steps, math.ceil(self.examples / batch_size))))


@dataclass
class Workload(ABC):
    """Everything the engine needs to train and evaluate one task.

    Subclasses supply the data and the model; the goal, the default budget and the default
    search space are plain attributes so that a user's workload states them in one place.
    """

    name: str
    description: str
    metric: Metric
    default_target: float
    budget: Budget
    learning_rate_range: tuple[float, float] = (1e-3, 10.0)
    one_minus_momentum_range: tuple[float, float] = (1e-3, 0.5)
    label_smoothing_values: tuple[float, ...] = ()
    _data: Data | None = field(default=None, init=False, repr=False)

    @abstractmethod
    def load_data(self) -> Data:
        """Build or load the three splits (called once, then cached)."""

    @abstractmethod
    def make_model(self) -> nn.Module:
        """A freshly initialised model (the caller seeds the global generator around this)."""

    @property
    def overridable(self) -> frozenset[str]:
        """The settings ``with_overrides`` may change (none, unless a workload says otherwise)."""
        return frozenset()

    def with_overrides(self, **overrides: Any) -> Self:
        """A fresh copy with the given settings changed; settings given as ``None`` are ignored.

        Raises ``ValueError`` naming any setting this workload does not have.
        """
        given = {key: value for key, value in overrides.items() if value is not None}
        unsupported = sorted(set(given) - self.overridable)
        if unsupported:
            supported = ", ".join(sorted(self.overridable)) or "none"
            raise ValueError(
                f"workload '{self.name}' does not support {', '.join(unsupported)} "
                f"(settings it supports: {supported})"
            )
        return dataclasses.replace(self, **given)

    def data(self) -> Data:
        """The splits, loaded on first use."""
        if self._data is None:
            self._data = self.load_data()
        return self._data

    def data_fingerprint(self) -> str | None:
        """A digest of the data where the workload's name and settings do not fix them.

        None for the built-in workloads, whose data a name and settings determine; a study's
        store keeps the digest, so that a resume on other data is refused.
        """
        return None

    def loss(self, outputs: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
        """Mean training loss of a batch (cross-entropy by default)."""
        return F.cross_entropy(outputs, targets, label_smoothing=label_smoothing)

    def eval_loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Per-example loss recorded at evaluation (no label smoothing)."""
        return cross_entropy_per_example(outputs, targets)

    def train_sampler(self, seed: int, batch_size: int, train: Split) -> EpochSampler:
        """The trial's source of indices into ``train``, the training split it draws from."""
        return EpochSampler(len(train), batch_size, seed)

    def batches(self, seed: int, batch_size: int, data: Data) -> Iterator[tuple[Tensor, Tensor]]:
        """An endless stream of training batches for one trial, from ``data`` on its device."""
        sampler = self.train_sampler(seed, batch_size, data.train)
        device = data.train.inputs.device
        while True:
            indices = sampler.next_indices().to(device)
            yield data.train.inputs[indices], data.train.targets[indices]

    def default_search_space(self, optimizer: Optimizer) -> SearchSpace:
        """Learning rate (log), 1 - momentum (log), and the linear-decay schedule's two knobs."""
        lr_low, lr_high = self.learning_rate_range
        dimensions = [loguniform("learning_rate", lr_low, lr_high)]
        if optimizer != "sgd":
            low, high = self.one_minus_momentum_range
            dimensions.append(reverse_loguniform("momentum", 1 - high, 1 - low))
        dimensions.append(loguniform("end_learning_rate_factor", 1e-4, 1.0))
        dimensions.append(uniform("decay_fraction", 0.5, 1.0))
        if self.label_smoothing_values:
            dimensions.append(choice("label_smoothing", self.label_smoothing_values))
        return SearchSpace(dimensions=tuple(dimensions))

    def data_sizes(self) -> dict[str, int]:
        """Examples in each split."""
        data = self.data()
        return {
            "train": len(data.train),
            "validation": len(data.validation),
            "test": len(data.test),
        }
