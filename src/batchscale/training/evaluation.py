"""When to evaluate, and what an evaluation records."""

from __future__ import annotations

import math

import torch
from torch import nn

from batchscale.workloads.base import Split, Workload

EVAL_CHUNK = 8192


def evaluation_steps(step_budget: int, growth: float) -> list[int]:
    """Geometrically spaced steps 0, 1, 2, ..., up to and including ``step_budget``.

    Consecutive steps differ by a factor of about ``growth`` (and by at least one), giving a
    constant relative resolution of steps to result on log axes.
    """
    if growth <= 1.0:
        raise ValueError(f"evaluation growth must exceed 1, got {growth}")
    steps = [0]
    while steps[-1] < step_budget:
        steps.append(min(step_budget, max(steps[-1] + 1, math.ceil(steps[-1] * growth))))
    return steps


def metric_columns(workload: Workload) -> list[str]:
    """Measurement columns for ``workload``, in a fixed order."""
    columns = ["train/loss", "val/loss", "test/loss"]
    for split in ("val", "test"):
        column = f"{split}/{workload.metric.name}"
        if column not in columns:
            columns.append(column)
    return columns


@torch.no_grad()
def evaluate_split(model: nn.Module, workload: Workload, split: Split) -> tuple[float, float]:
    """Mean evaluation loss and mean metric of ``model`` over ``split``."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=split.inputs.device)
    metric_sum = torch.zeros_like(loss_sum)
    for start in range(0, len(split), EVAL_CHUNK):
        inputs = split.inputs[start : start + EVAL_CHUNK]
        targets = split.targets[start : start + EVAL_CHUNK]
        outputs = model(inputs)
        loss_sum += workload.eval_loss(outputs, targets).sum().double()
        metric_sum += workload.metric.per_example(outputs, targets).sum().double()
    model.train(was_training)
    return float(loss_sum) / len(split), float(metric_sum) / len(split)
