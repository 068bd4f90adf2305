"""The local executor: every cohort in this process, one batch size after another."""

from __future__ import annotations

from collections.abc import Callable

from batchscale.executors import CohortJob, CohortWork, Executor, ExecutorName
from batchscale.training.engine import run_cohort
from batchscale.training.trial import TrialResult


class LocalExecutor(Executor):
    """Trains in process; each trial reaches ``on_result`` as soon as it finishes."""

    name: ExecutorName = "local"

    def open(self) -> None:
        """Nothing to take hold of: everything runs in this process."""

    def run(
        self,
        job: CohortJob,
        work: list[CohortWork],
        on_result: Callable[[TrialResult], None],
        on_batch_size: Callable[[int], None],
    ) -> None:
        """See ``Executor.run``."""
        # Imported here: the study module imports the executors.
        from batchscale.study import resolve_device

        data = job.workload.data().to(resolve_device(job.device))
        for item in work:
            on_batch_size(item.batch_size)
            run_cohort(
                engine=job.engine,
                workload=job.workload,
                data=data,
                specs=list(item.specs),
                rules=job.rules,
                evaluation_steps=list(item.evaluation_steps),
                race=job.race,
                bound=item.bound,
                on_result=on_result,
            )

    def close(self) -> None:
        """Nothing to release: everything ran in this process."""
