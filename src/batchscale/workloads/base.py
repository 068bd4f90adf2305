"""The contract of a workload: data, model, loss, metric, goal, budgets and search space.

The training engine knows nothing about any particular workload; a workload only describes
itself through this interface.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from batchscale.search import SearchSpace, choice, loguniform, reverse_loguniform, uniform

Optimizer = Literal["sgd", "momentum", "nesterov"]
OPTIMIZERS: tuple[Optimizer, ...] = ("sgd", "momentum", "nesterov")

PerExampleMetric = Callable[[Tensor, Tensor], Tensor]


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

    def check_target(self, target: float) -> None:
        """Raise ``ValueError`` when ``target`` lies outside the metric's range."""
        if not math.isfinite(target) or not (self.low <= target <= self.high):
            raise ValueError(
                f"target {target} is outside the range of {self.name} "
                f"[{self.low:g}, {self.high:g}]; pass --target inside it"
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

    def data(self) -> Data:
        """The splits, loaded on first use."""
        if self._data is None:
            self._data = self.load_data()
        return self._data

    def loss(self, outputs: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
        """Mean training loss of a batch (cross-entropy by default)."""
        return F.cross_entropy(outputs, targets, label_smoothing=label_smoothing)

    def eval_loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Per-example loss recorded at evaluation (no label smoothing)."""
        return cross_entropy_per_example(outputs, targets)

    def train_sampler(self, seed: int, batch_size: int) -> EpochSampler:
        """The trial's source of training batch indices."""
        return EpochSampler(len(self.data().train), batch_size, seed)

    def batches(self, seed: int, batch_size: int, data: Data) -> Iterator[tuple[Tensor, Tensor]]:
        """An endless stream of training batches for one trial, from ``data`` on its device."""
        sampler = self.train_sampler(seed, batch_size)
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
        dimensions.append(loguniform("end_learning_rate_factor", 1e-3, 1.0))
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
