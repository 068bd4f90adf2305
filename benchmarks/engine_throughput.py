"""Trial-steps per second of the cohort engine against the reference loop, and the FLOP/s ceiling.

Trains K trials of a workload (``mnist1d-mlp`` by default, Nesterov) at each batch size with
both engines and prints trial-steps per second (training only: evaluation is excluded through
each trial's ``train_time``), the ratio, and what the cohort engine chose (kernels, trials per
kernel call, micro-batch, threads, or the reference fallback). The reference loop is timed
with one thread and with the process's default, and the faster is the baseline.

Then the machine's matrix-multiply FLOP/s, measured in the same run, and the fraction of it
the cohort engine reaches at the largest batch size (counting the matrix multiplies and
convolutions of the forward and backward passes, as ``torch.utils.flop_counter`` does). On a
shared host whose cores come and go, the ceiling is also timed beside each repeat at the
largest batch size, and the fraction is given against the highest ceiling seen anywhere in
the run (the cautious figure) and per repeat (the same spell of the host for both). The
ceiling is float32's; on CUDA, cuDNN runs convolutions on TF32 tensor cores by default
(PyTorch's setting), so a convolutional model can pass it.

    python benchmarks/engine_throughput.py [--trials 16] [--batch-sizes 16,128,1024] [--device cpu]
        [--workload mnist1d-mlp] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import platform
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from batchscale import Study, StudyConfig
from batchscale.training.cohort import CohortPlan, plan_cohort
from batchscale.training.engine import Engine, run_cohort
from batchscale.training.reference import intra_op_threads, train_reference
from batchscale.training.trial import TrialResult
from batchscale.workloads.base import Data

# Learning rates low enough that no trial diverges within the measured steps.
SEARCH_SPACE = {
    "learning_rate": {"scale": "log", "low": 1e-3, "high": 3e-2},
    "momentum": {"scale": "reverse_log", "low": 0.5, "high": 0.95},
}


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=16, help="K, trials per cohort")
    parser.add_argument("--batch-sizes", default="16,128,1024")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--workload", default="mnist1d-mlp", help="see `batchscale workloads`")
    parser.add_argument("--data-dir", help="where a real data set's files are (never downloads)")
    parser.add_argument(
        "--seconds", type=float, default=4.0, help="approximate training time per measurement"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="interleaved repeats; each rate is the best"
    )
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="also time every power-of-two number of trials per kernel call",
    )
    return parser.parse_args()


def make_study(args: argparse.Namespace, batch_size: int, trials: int, steps: int) -> Study:
    """A study whose trials train ``steps`` steps without reaching the (unreachable) goal."""
    config = StudyConfig(
        workload=args.workload,
        data_dir=args.data_dir,
        optimizer="nesterov",
        batch_sizes=(batch_size,),
        trials=trials,
        step_budget=steps,
        target=0.0,
        search_space=SEARCH_SPACE,
        device="cpu" if args.device == "cpu" else "cuda",
    )
    return Study(config, Path("unused.sqlite"))


def trial_steps_per_second(
    engine: Engine,
    study: Study,
    data: Data,
    batch_size: int,
    trials: int,
    plan: CohortPlan | None,
) -> float:
    """Training throughput of ``engine`` on the first ``trials`` trials of ``study``."""
    specs = study.trial_specs(batch_size)[:trials]
    results: list[TrialResult] = []
    steps = [0, specs[0].step_budget]
    if engine == "reference":
        # Under the caller's thread count (a study's reference runs on one thread).
        for spec in specs:
            results.append(
                train_reference(study.workload, data, spec, study.rules, steps, threads=None)
            )
    else:
        run_cohort(
            engine,
            study.workload,
            data,
            specs,
            study.rules,
            steps,
            False,
            None,
            results.append,
            plan,
        )
    return sum(r.steps for r in results) / sum(r.train_time for r in results)


def steps_for(seconds: float, trial_steps_per_second: float, trials: int) -> int:
    """Steps per trial for a measurement of about ``seconds``."""
    return max(10, int(seconds * trial_steps_per_second / trials))


def training_step_flops(study: Study, batch_size: int, data: Data) -> int:
    """FLOPs of one model's training step: matrix multiplies and convolutions, both passes."""
    model = study.workload.make_model().to(data.train.inputs.device)
    inputs, targets = next(study.workload.batches(0, batch_size, data))
    with FlopCounterMode(display=False) as counter:
        study.workload.loss(model(inputs), targets).backward()
    return int(counter.get_total_flops())


def matmul_flops_per_second(size: int, threads: int, device: torch.device) -> float:
    """Best of several ``size`` x ``size`` float32 matrix multiplies."""
    with intra_op_threads(threads if device.type == "cpu" else None):
        a = torch.randn(size, size, device=device)
        b = torch.randn(size, size, device=device)
        out = torch.empty(size, size, device=device)
        best = float("inf")
        for _ in range(5):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            started = time.perf_counter()
            repeats = 4
            for _ in range(repeats):
                torch.mm(a, b, out=out)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            best = min(best, (time.perf_counter() - started) / repeats)
    return 2 * size**3 / best


def describe(plan: CohortPlan | None) -> str:
    """What the cohort engine chose, in a few words."""
    if plan is None:
        return "fallback: reference loop"
    threads = "" if plan.threads is None else f", {plan.threads} intra-op thread(s)"
    workers = f", {plan.workers} workers" if plan.workers > 1 else ""
    return (
        f"{plan.kernels}, {plan.chunk_trials} trials/call, micro {plan.micro_batch}"
        f"{threads}{workers}, eval workers {plan.eval_workers}"
    )


def sweep(args: argparse.Namespace, batch_sizes: list[int], data: Data) -> None:
    """Trial-steps per second against trials per kernel call (the basis of CPU_CHUNK_ROWS)."""
    counts = [1 << i for i in range(args.trials.bit_length()) if 1 << i <= args.trials]
    print("\ntrial-steps per second against trials per kernel call (engine's threads)")
    print(f"{'batch':>6} " + " ".join(f"{c:>8}" for c in counts))
    for batch_size in batch_sizes:
        probe = make_study(args, batch_size, args.trials, 20)
        plan = plan_cohort(probe.workload, data, probe.trial_specs(batch_size))
        if plan is None:
            print(f"{batch_size:>6}  (the engine falls back to the reference loop)")
            continue
        rates = []
        for count in counts:
            chunked = replace(plan, chunk_trials=count)
            rough = trial_steps_per_second("cohort", probe, data, batch_size, args.trials, chunked)
            steps = steps_for(args.seconds / 2, rough, args.trials)
            study = make_study(args, batch_size, args.trials, steps)
            rate = trial_steps_per_second("cohort", study, data, batch_size, args.trials, chunked)
            rates.append(rate)
        print(f"{batch_size:>6} " + " ".join(f"{rate:>8.0f}" for rate in rates))


def main() -> None:
    """Measure and print the tables."""
    args = parse_args()
    device = torch.device(args.device)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    default_threads = torch.get_num_threads()
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} "
        f"threads by default, torch {torch.__version__}, device {device}"
    )
    print(f"workload {args.workload}, nesterov, K = {args.trials} trials\n")
    header = (
        f"{'batch':>6} {'reference 1 thr':>16} {f'reference {default_threads} thr':>16} "
        f"{'cohort':>10} {'ratio':>7}  cohort plan"
    )
    print("trial-steps per second (training only)")
    print(header)
    print("-" * len(header))
    largest: tuple[int, float, CohortPlan | None] | None = None
    data: Data | None = None
    # (cohort rate, 2-thread ceiling) of each repeat at the latest batch size.
    paired: list[tuple[float, float]] = []
    for batch_size in batch_sizes:
        probe = make_study(args, batch_size, args.trials, 20)
        # Read once: every study of the run has the same data.
        data = data or probe.workload.data().to(device)
        plan = plan_cohort(probe.workload, data, probe.trial_specs(batch_size))
        engine: Engine = "cohort" if plan is not None else "reference"
        thread_options = [1, default_threads] if device.type == "cpu" else [default_threads]
        runs: dict[int | str, tuple[Study, int, int | None]] = {}
        for threads in dict.fromkeys(thread_options):
            with intra_op_threads(threads):
                rough = trial_steps_per_second("reference", probe, data, batch_size, 1, None)
            steps = steps_for(args.seconds / args.repeats, rough, 2)
            runs[threads] = (make_study(args, batch_size, args.trials, steps), 2, threads)
        rough = trial_steps_per_second(engine, probe, data, batch_size, args.trials, plan)
        steps = steps_for(args.seconds / args.repeats, rough, args.trials)
        runs["cohort"] = (
            make_study(args, batch_size, args.trials, steps),
            args.trials,
            None,
        )
        # Interleaved repeats, best of each: a burst of other work on the machine hits all alike.
        rates: dict[int | str, float] = dict.fromkeys(runs, 0.0)
        paired.clear()
        for _ in range(args.repeats):
            ceiling = matmul_flops_per_second(1024, default_threads, device)
            for key, (study, trials, run_threads) in runs.items():
                with intra_op_threads(run_threads):
                    rate = trial_steps_per_second(
                        engine if key == "cohort" else "reference",
                        study,
                        data,
                        batch_size,
                        trials,
                        plan if key == "cohort" else None,
                    )
                rates[key] = max(rates[key], rate)
                if key == "cohort":
                    paired.append((rate, ceiling))
        cohort_rate = rates.pop("cohort")
        reference_rates = {int(key): rate for key, rate in rates.items()}
        baseline = max(reference_rates.values())
        # On a GPU the thread count does not apply, so there is no one-thread column.
        one = f"{reference_rates[1]:.0f}" if device.type == "cpu" else "-"
        print(
            f"{batch_size:>6} {one:>16} {reference_rates[default_threads]:>16.0f} "
            f"{cohort_rate:>10.0f} {cohort_rate / baseline:>6.2f}x  {describe(plan)}"
        )
        largest = (batch_size, cohort_rate, plan)

    assert largest is not None and data is not None
    if args.sweep:
        sweep(args, batch_sizes, data)

    batch_size, cohort_rate, plan = largest
    flops_per_step = training_step_flops(probe, batch_size, data)
    flops = flops_per_step * cohort_rate
    print("\nmatrix-multiply ceiling (float32, square matrices, best of 5)")
    thread_options = [1, default_threads] if device.type == "cpu" else [default_threads]
    peaks = {}
    for threads in dict.fromkeys(thread_options):
        peaks[threads] = max(matmul_flops_per_second(n, threads, device) for n in (512, 1024, 2048))
        print(f"  {threads} thread(s): {peaks[threads] / 1e9:8.1f} GFLOP/s")
    machine = max([*peaks.values(), *(ceiling for _, ceiling in paired)])
    same_spell = max(rate * flops_per_step / ceiling for rate, ceiling in paired)
    cores = default_threads
    if plan is not None and plan.threads is not None:
        cores = min(default_threads, plan.threads * max(plan.workers, 1))
    engine_name = "cohort engine" if plan is not None else "cohort engine (its reference fallback)"
    print(
        f"{engine_name} at batch size {batch_size}: {flops / 1e9:.1f} GFLOP/s = "
        f"{flops / machine:.0%} of the highest ceiling of the run, {machine / 1e9:.1f} GFLOP/s "
        f"({flops / peaks.get(cores, machine):.0%} of the final {cores}-thread figure, the "
        f"cores it used); {same_spell:.0%} at best against the ceiling timed beside the same "
        "repeat"
    )


if __name__ == "__main__":
    main()
