"""Wall time of a whole study: the reference loop in full mode against the cohort engine racing.

Runs the default study (``StudyConfig()``: its workload, optimizer, batch sizes, trials,
budgets and goal) twice into temporary stores, once with ``engine="reference", mode="full"``
and once with ``engine="cohort", mode="race"``, and prints both wall times, their ratio, and
steps to result at every batch size from both runs, checking that they are identical. On a
CPU the reference loop, as in any study, runs on one intra-op thread (its numbers would
otherwise depend on the machine's cores), and the cohort engine reproduces it bit for bit.
The reference run takes a long time on a small CPU; ``--quick`` runs a reduced study (fewer
batch sizes, trials and steps) to check the script. On a GPU the reference loop is bound by
kernel launches, and its run of the default study outlasts a short lease: ``--cohort-only``
times the cohort engine alone and prints its steps to result.

    python benchmarks/study_wall_time.py [--quick] [--cohort-only] [--device cpu]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from batchscale import Study, StudyConfig, StudySummary
from batchscale.study import BatchSizeSummary

QUICK: dict[str, Any] = {"batch_sizes": (32, 256), "trials": 6, "step_budget": 1500}


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a reduced study, to check the script")
    parser.add_argument(
        "--cohort-only", action="store_true", help="time the cohort engine racing, nothing else"
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    return parser.parse_args()


def result(row: BatchSizeSummary) -> str:
    """Steps to result and the winning trial, or "not reached"."""
    if row.steps_to_result is None:
        return "not reached"
    return f"{row.steps_to_result} ({row.best_trial})"


def timed_run(config: StudyConfig, store: Path) -> tuple[float, StudySummary]:
    """Run ``config`` into a fresh ``store``; the wall time and the summary."""
    started = time.perf_counter()
    summary = Study(config, store).run()
    return time.perf_counter() - started, summary


def main() -> None:
    """Run both studies and print the table."""
    args = parse_args()
    base = StudyConfig(device=args.device).model_copy(update=QUICK if args.quick else {})
    print(
        f"machine: {platform.machine()}, {torch.get_num_threads()} threads by default, "
        f"torch {torch.__version__}, device {args.device}"
    )
    print(
        f"study: {base.workload}, {base.optimizer}, batch sizes {list(base.batch_sizes)}, "
        f"{base.trials} trials each{' (quick)' if args.quick else ''}\n"
    )
    cohort_config = base.model_copy(update={"engine": "cohort", "mode": "race"})
    if args.cohort_only:
        with tempfile.TemporaryDirectory() as folder:
            cohort_time, cohort = timed_run(cohort_config, Path(folder) / "cohort.sqlite")
        print(f"{'batch':>6} {'cohort+race':>12} {'pruned':>7}")
        for raced in cohort.batch_sizes:
            print(f"{raced.batch_size:>6} {result(raced):>12} {raced.pruned:>7}")
        print(f"\nwall time: cohort + race {cohort_time:.1f} s")
        return
    with tempfile.TemporaryDirectory() as folder:
        reference_time, reference = timed_run(
            base.model_copy(update={"engine": "reference", "mode": "full"}),
            Path(folder) / "reference.sqlite",
        )
        cohort_time, cohort = timed_run(cohort_config, Path(folder) / "cohort.sqlite")
    header = f"{'batch':>6} {'reference+full':>15} {'cohort+race':>12} {'pruned':>7}  same"
    print("steps to result (winning trial)")
    print(header)
    print("-" * len(header))
    identical = True
    for full, raced in zip(reference.batch_sizes, cohort.batch_sizes, strict=True):
        same = (full.steps_to_result, full.best_trial) == (raced.steps_to_result, raced.best_trial)
        identical &= same
        print(
            f"{full.batch_size:>6} {result(full):>15} {result(raced):>12} {raced.pruned:>7}  "
            f"{'yes' if same else 'NO'}"
        )
    print(
        f"\nwall time: reference + full {reference_time:.1f} s, cohort + race {cohort_time:.1f} s"
    )
    print(f"speed-up: {reference_time / cohort_time:.1f}x")
    print(f"steps to result identical at every batch size: {'yes' if identical else 'NO'}")


if __name__ == "__main__":
    main()
