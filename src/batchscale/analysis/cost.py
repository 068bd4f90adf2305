"""Time to result, measured on one device and projected onto N data-parallel devices.

Time to result at batch size B is steps to result times the measured step time. The
projection for N devices assumes synchronous data parallelism:

* each device computes the gradient of B / N examples; its time is interpolated (log-log)
  from the step times measured on one device, and extrapolated below the smallest measured
  batch size as constant (a step never gets cheaper than a tiny batch's overhead);
* the gradients are summed by a ring all-reduce of the parameters: 2 (N - 1) / N of the
  gradient's bytes pass each link at ``bandwidth`` bytes per second, in 2 (N - 1) messages of
  ``latency`` seconds each;
* computation and communication do not overlap, and every device is as fast as the one
  measured. Input pipelines, stragglers and evaluation are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray


@dataclass(frozen=True)
class DataParallelCost:
    """Assumptions of the projection: devices, link bandwidth and latency, gradient size."""

    devices: int
    parameters: int
    bandwidth: float = 10e9  # bytes per second per link
    latency: float = 10e-6  # seconds per message
    bytes_per_parameter: int = 4

    def __post_init__(self) -> None:
        if self.devices < 1:
            raise ValueError(f"devices must be at least 1, got {self.devices}")
        if self.bandwidth <= 0 or self.latency < 0:
            raise ValueError("bandwidth must be positive and latency non-negative")

    def allreduce_seconds(self) -> float:
        """Time of one ring all-reduce of the gradient (0 on one device)."""
        n = self.devices
        if n == 1:
            return 0.0
        volume = 2 * (n - 1) / n * self.parameters * self.bytes_per_parameter
        return volume / self.bandwidth + 2 * (n - 1) * self.latency

    def describe(self) -> str:
        """The assumptions in one line, for a caption."""
        return (
            f"{self.devices} devices, ring all-reduce of {self.parameters:,} parameters "
            f"({self.bytes_per_parameter} B each) at {self.bandwidth / 1e9:g} GB/s, "
            f"{self.latency * 1e6:g} µs per message; no overlap of compute and communication"
        )


def interpolate_step_time(
    measured_batch_sizes: ArrayLike, measured_seconds: ArrayLike, batch_sizes: ArrayLike
) -> NDArray[np.float64]:
    """Step time at ``batch_sizes``, log-log interpolated from measurements.

    Below the smallest measured batch size the smallest measurement is used; above the
    largest, time grows in proportion to the batch size (compute bound).
    """
    sizes = np.asarray(measured_batch_sizes, dtype=float)
    seconds = np.asarray(measured_seconds, dtype=float)
    order = np.argsort(sizes)
    sizes, seconds = sizes[order], seconds[order]
    wanted = np.asarray(batch_sizes, dtype=float)
    inside = np.exp(np.interp(np.log(wanted), np.log(sizes), np.log(seconds)))
    above = seconds[-1] * wanted / sizes[-1]
    return np.where(wanted > sizes[-1], above, inside)


def time_to_result(steps: ArrayLike, step_seconds: ArrayLike) -> NDArray[np.float64]:
    """Seconds to reach the goal: steps to result times seconds per step."""
    return np.asarray(steps, dtype=float) * np.asarray(step_seconds, dtype=float)


def projected_time_to_result(
    batch_sizes: ArrayLike,
    steps: ArrayLike,
    measured_batch_sizes: ArrayLike,
    measured_seconds: ArrayLike,
    cost: DataParallelCost,
) -> NDArray[np.float64]:
    """Time to result on ``cost.devices`` devices (NaN where B is smaller than the devices)."""
    sizes = np.asarray(batch_sizes, dtype=float)
    per_device = sizes / cost.devices
    compute = interpolate_step_time(measured_batch_sizes, measured_seconds, per_device)
    step_seconds = compute + cost.allreduce_seconds()
    projected = time_to_result(steps, step_seconds)
    return np.where(per_device >= 1, projected, np.nan)
