"""How long one training step takes at a batch size, on the device a study runs on.

Steps are not time: a step at a larger batch costs more. The step time here is that of one
model trained alone, as in a real run (not of a cohort of trials), measured without
evaluation, after a warm-up, over several repeats; the median is reported. On a CPU it runs on
one intra-op thread, as every trial of a study does: several threads on small kernels spend
most of a step waiting on each other, and any other work on the machine then inflates their
time many times over.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from batchscale.training.optimizers import torch_optimizer
from batchscale.training.reference import initialised_model, intra_op_threads
from batchscale.workloads.base import Data, Optimizer, Workload


@dataclass(frozen=True)
class StepTime:
    """Seconds per training step at one batch size: the median and the spread of repeats."""

    batch_size: int
    median: float
    low: float
    high: float
    repeats: int
    steps_per_repeat: int
    device: str
    # Intra-op CPU threads the step ran on (None on a GPU).
    threads: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return asdict(self)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_time_threads(device: torch.device) -> int | None:
    """The intra-op threads a step is timed on: one on a CPU (as trials train), None on a GPU."""
    return 1 if device.type == "cpu" else None


def measure_step_time(
    workload: Workload,
    data: Data,
    batch_size: int,
    optimizer: Optimizer,
    *,
    warmup: int = 5,
    repeats: int = 5,
    min_seconds: float = 0.05,
    seed: int = 0,
) -> StepTime:
    """Median wall time of one forward, backward and optimizer step at ``batch_size``.

    Each repeat runs enough steps to last at least ``min_seconds`` (so the timer's resolution
    does not matter), after ``warmup`` untimed steps; on a CPU, on one intra-op thread.
    """
    device = data.validation.inputs.device
    model = initialised_model(workload, seed).to(device)
    model.train()
    step_optimizer = torch_optimizer(list(model.parameters()), optimizer, 1e-6, 0.9)
    batches = workload.batches(seed, batch_size, data)

    def step() -> None:
        inputs, targets = next(batches)
        loss = workload.loss(model(inputs), targets)
        step_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        step_optimizer.step()

    threads = step_time_threads(device)
    with intra_op_threads(threads):
        for _ in range(warmup):
            step()
        _synchronize(device)
        started = time.perf_counter()
        step()
        _synchronize(device)
        one = max(time.perf_counter() - started, 1e-6)
        steps_per_repeat = max(1, round(min_seconds / one))
        samples = []
        for _ in range(repeats):
            started = time.perf_counter()
            for _ in range(steps_per_repeat):
                step()
            _synchronize(device)
            samples.append((time.perf_counter() - started) / steps_per_repeat)
    return StepTime(
        batch_size=batch_size,
        median=statistics.median(samples),
        low=min(samples),
        high=max(samples),
        repeats=repeats,
        steps_per_repeat=steps_per_repeat,
        device=str(device),
        threads=threads,
    )
