"""Learning-rate schedules: constant, and the paper's linear decay to a floor."""

from __future__ import annotations

from typing import TypeVar

import torch

Number = TypeVar("Number", float, torch.Tensor)


def linear_decay(
    step: int | torch.Tensor, initial: Number, end_factor: Number, decay_steps: Number
) -> Number:
    """Learning rate for update ``step`` (0 = the first update).

    Falls linearly from ``initial`` to ``initial * end_factor`` over ``decay_steps`` updates and
    stays there. Works elementwise on tensors, one entry per trial; with tensor metaparameters,
    ``step`` may be a tensor of update indices too, which broadcasts to a table of rates.
    """
    if isinstance(decay_steps, torch.Tensor):
        progress = torch.clamp(step / decay_steps.clamp(min=1), max=1.0)
    else:
        progress = min(float(step) / max(decay_steps, 1), 1.0)
    return initial * (1 - (1 - end_factor) * progress)


def decay_steps_for(decay_fraction: float, step_budget: int) -> int:
    """Decay length in updates for a fraction of the step budget (at least one update)."""
    return max(1, round(decay_fraction * step_budget))
