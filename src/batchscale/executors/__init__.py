"""Where cohorts run: in this process (``local``) or on a Ray cluster (``ray``).

An executor takes the pending trials of every batch size (``CohortWork``) and hands each
finished trial back to the driver's ``on_result``, in the driver's process: only the driver
writes the store. ``local`` trains one batch size after another in process, storing each trial
as it finishes; ``ray`` runs cohorts as Ray tasks and hands their trials back as each cohort
finishes.
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Self

from batchscale.config import ConfigError
from batchscale.training.engine import Engine
from batchscale.training.trial import RaceBound, StopRules, TrialResult, TrialSpec
from batchscale.workloads.base import Workload

ExecutorName = Literal["local", "ray"]
EXECUTORS: tuple[ExecutorName, ...] = ("local", "ray")


@dataclass(frozen=True)
class CohortJob:
    """What every cohort of a study shares: the workload and how its trials are trained.

    ``device`` is the study's request (``auto``, ``cpu`` or ``cuda``), resolved where the
    cohort runs.
    """

    workload: Workload
    engine: Engine
    rules: StopRules
    race: bool
    device: str


@dataclass(frozen=True)
class CohortWork:
    """The pending trials of one batch size, with the best result already stored there."""

    batch_size: int
    specs: tuple[TrialSpec, ...]
    evaluation_steps: tuple[int, ...]
    bound: RaceBound | None = None


class Executor(ABC):
    """Runs cohorts somewhere; a context manager that holds its resources while open."""

    name: ExecutorName

    @abstractmethod
    def open(self) -> None:
        """Take hold of what ``run`` needs (``run`` does it anyway)."""

    @abstractmethod
    def run(
        self,
        job: CohortJob,
        work: list[CohortWork],
        on_result: Callable[[TrialResult], None],
        on_batch_size: Callable[[int], None],
    ) -> None:
        """Train every trial of ``work``; each finished trial goes to ``on_result`` (called in
        this process), and ``on_batch_size`` names the batch size whose trials come next."""

    @abstractmethod
    def close(self) -> None:
        """Release what the executor holds."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def get_executor(
    name: str, address: str | None = None, cohort_trials: int | None = None
) -> Executor:
    """The executor called ``name``.

    ``address`` (Ray only) is an existing cluster's address; without one a local Ray instance
    is started and stopped again by ``close``. ``cohort_trials`` (Ray only) caps the trials of
    one Ray task (by default, a batch size's trials are split so that every slot of the
    cluster has work).
    """
    if name == "local":
        if address is not None:
            raise ConfigError("--ray-address is for --executor ray; drop it or add --executor ray")
        from batchscale.executors.local import LocalExecutor

        return LocalExecutor()
    if name == "ray":
        if importlib.util.find_spec("ray") is None:
            raise ConfigError("--executor ray needs Ray: pip install 'batchscale[ray]'")
        from batchscale.executors.ray import RayExecutor

        return RayExecutor(address, cohort_trials=cohort_trials)
    raise ConfigError(f"unknown executor '{name}'; known executors: {', '.join(EXECUTORS)}")
