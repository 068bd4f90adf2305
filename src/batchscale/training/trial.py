"""What one trial is, how it ends, and what it hands back: shared by every engine."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from batchscale.search import derive_seed
from batchscale.training.schedules import decay_steps_for
from batchscale.workloads.base import Optimizer

# The search-space dimensions a trial reads, each with the values that make sense for it; any
# other name would be searched and then ignored.
METAPARAMETERS: dict[str, tuple[str, Callable[[float], bool]]] = {
    "learning_rate": ("above 0", lambda v: v > 0),
    "momentum": ("in [0, 1)", lambda v: 0 <= v < 1),
    "end_learning_rate_factor": ("at least 0", lambda v: v >= 0),
    "decay_fraction": ("above 0", lambda v: v > 0),
    "learning_rate_decay_steps": ("at least 1", lambda v: v >= 1),
    "label_smoothing": ("in [0, 1)", lambda v: 0 <= v < 1),
}


class Status(StrEnum):
    """How a trial ended (the paper's statuses, plus PRUNED for racing)."""

    COMPLETE = "COMPLETE"  # reached the goal, or ran its whole budget
    INFEASIBLE = "INFEASIBLE"  # diverged: non-finite or exploding loss
    INCOMPLETE = "INCOMPLETE"  # stopped for another reason (imported data only)
    PRUNED = "PRUNED"  # stopped by racing: it could no longer change steps to result


@dataclass(frozen=True)
class TrialSpec:
    """One point of metaparameters at one batch size, with its own seed and budget."""

    batch_size: int
    trial_id: int
    params: dict[str, float]
    seed: int
    step_budget: int
    optimizer: Optimizer

    @property
    def init_seed(self) -> int:
        """Seed of the model's initialisation."""
        return derive_seed(self.seed, 0)

    @property
    def data_seed(self) -> int:
        """Seed of the trial's data order."""
        return derive_seed(self.seed, 1)

    @property
    def noise_seed(self) -> int:
        """Seed of the random numbers the model itself draws in training (dropout masks)."""
        return derive_seed(self.seed, 2)

    @property
    def learning_rate(self) -> float:
        """Initial learning rate."""
        return self.params["learning_rate"]

    @property
    def momentum(self) -> float:
        """Momentum (0 for plain SGD)."""
        return 0.0 if self.optimizer == "sgd" else self.params.get("momentum", 0.0)

    @property
    def end_factor(self) -> float:
        """Final learning rate as a fraction of the initial one (1 = constant)."""
        return self.params.get("end_learning_rate_factor", 1.0)

    @property
    def decay_steps(self) -> int:
        """Updates over which the learning rate decays linearly.

        The paper's ``learning_rate_decay_steps`` (a count) where searched, else
        ``decay_fraction`` of the step budget (all of it by default).
        """
        if "learning_rate_decay_steps" in self.params:
            return max(1, round(self.params["learning_rate_decay_steps"]))
        return decay_steps_for(self.params.get("decay_fraction", 1.0), self.step_budget)

    @property
    def label_smoothing(self) -> float:
        """Label smoothing of the training loss."""
        return self.params.get("label_smoothing", 0.0)


@dataclass
class TrialResult:
    """A finished trial: its status, the steps it ran, and one row per evaluation."""

    spec: TrialSpec
    status: Status
    steps: int
    measurements: list[dict[str, float]] = field(default_factory=list)
    wall_time: float = 0.0
    train_time: float = 0.0


@dataclass(frozen=True)
class RaceBound:
    """The best (step, trial id) that reached the goal so far at a batch size.

    A trial can still change steps to result only with a row at a step below ``step``, or at
    ``step`` itself when its id is smaller (ties go to the smaller trial id).
    """

    step: int
    trial_id: int

    def last_useful_step(self, trial_id: int) -> int:
        """The last evaluation step at which ``trial_id`` could still win."""
        return self.step if trial_id < self.trial_id else self.step - 1

    def improved_by(self, step: int, trial_id: int) -> bool:
        """Whether reaching the goal at ``step`` by ``trial_id`` beats this bound."""
        return (step, trial_id) < (self.step, self.trial_id)


@dataclass(frozen=True)
class StopRules:
    """When a trial ends, besides its step budget."""

    target: float
    maximize: bool
    divergence_factor: float = 10.0

    def reached(self, value: float) -> bool:
        """Strictly better than the target."""
        return value > self.target if self.maximize else value < self.target

    def diverged(self, train_loss: float, initial_val_loss: float, val_loss: float) -> bool:
        """Non-finite losses, or a training loss far above the validation loss at step 0.

        The reference is a whole held-out split's loss, not the first minibatch's: at small
        batch sizes one minibatch's loss is noisy enough (near zero, or signed) that a stable
        trial's next minibatch could exceed it tenfold.
        """
        if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
            return True
        return train_loss > self.divergence_factor * max(abs(initial_val_loss), 1e-12)

    def ending(self, result: TrialResult, metric: str) -> Status | None:
        """How ``result`` ends at its latest row: INFEASIBLE if it diverged, COMPLETE if its
        ``metric`` column reached the goal, or None if it trains on."""
        row = result.measurements[-1]
        initial_val_loss = result.measurements[0]["val/loss"]
        if row["step"] > 0 and self.diverged(row["train/loss"], initial_val_loss, row["val/loss"]):
            return Status.INFEASIBLE
        return Status.COMPLETE if self.reached(row[metric]) else None
