"""The reference engine: one trial at a time in plain PyTorch with ``torch.optim.SGD``.

It is the oracle the batched cohort engine is tested against, and the fallback for models
that cannot be batched.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from batchscale.training.evaluation import evaluate_split
from batchscale.training.optimizers import torch_optimizer
from batchscale.training.race import RaceBoard, best_bound_of
from batchscale.training.schedules import linear_decay
from batchscale.training.trial import RaceBound, Status, StopRules, TrialResult, TrialSpec
from batchscale.workloads.base import Data, Workload


@contextmanager
def intra_op_threads(threads: int | None) -> Iterator[None]:
    """Run the body with ``threads`` intra-op CPU threads (None: as they are), then restore."""
    previous = torch.get_num_threads()
    if threads is not None and threads != previous:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


def initialised_model(workload: Workload, seed: int) -> torch.nn.Module:
    """``workload.make_model()`` under ``seed``, leaving the global generator untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return workload.make_model()


def train_reference(
    workload: Workload,
    data: Data,
    spec: TrialSpec,
    rules: StopRules,
    evaluation_steps: list[int],
    race: RaceBound | None = None,
    board: RaceBoard | None = None,
    threads: int | None = 1,
) -> TrialResult:
    """Train one trial to its goal, divergence, budget or (with ``race``) to where it can't win.

    ``board`` (racing only) is read at every evaluation for a bound found elsewhere. On a CPU
    the trial runs on ``threads`` intra-op threads (None: the process's setting). One by
    default: a matrix multiply split over more threads adds up in another order, and near the
    edge of stability such last-bit differences grow into another curve, so the numbers would
    depend on the machine's cores (and differ from the cohort engine's and a Ray worker's).
    """
    device = data.validation.inputs.device
    # A model that draws random numbers (dropout) draws them from the trial's own seed, so a
    # trial's curve depends on nothing else: not on the trials run before it in this process,
    # nor on a crash and resume between them.
    with (
        intra_op_threads(threads if device.type == "cpu" else None),
        torch.random.fork_rng(devices=[device] if device.type == "cuda" else []),
    ):
        torch.manual_seed(spec.noise_seed)
        return _train_reference(workload, data, spec, rules, evaluation_steps, race, board)


def _train_reference(
    workload: Workload,
    data: Data,
    spec: TrialSpec,
    rules: StopRules,
    evaluation_steps: list[int],
    race: RaceBound | None,
    board: RaceBoard | None,
) -> TrialResult:
    started = time.perf_counter()
    device = data.validation.inputs.device
    model = initialised_model(workload, spec.init_seed).to(device)
    model.train()
    optimizer = torch_optimizer(
        list(model.parameters()), spec.optimizer, spec.learning_rate, spec.momentum
    )
    batches = workload.batches(spec.data_seed, spec.batch_size, data)
    metric = workload.metric.name
    result = TrialResult(spec=spec, status=Status.COMPLETE, steps=0)
    last_useful = race.last_useful_step(spec.trial_id) if race else spec.step_budget
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    losses_since_eval = 0
    train_time = 0.0
    step = 0
    for eval_step in evaluation_steps:
        if board is not None:
            race = best_bound_of(race, board.current(spec.batch_size))
            last_useful = race.last_useful_step(spec.trial_id) if race else spec.step_budget
        if eval_step > last_useful:
            result.status = Status.PRUNED
            break
        segment_start = time.perf_counter()
        while step < eval_step:
            for group in optimizer.param_groups:
                group["lr"] = linear_decay(
                    step, spec.learning_rate, spec.end_factor, spec.decay_steps
                )
            inputs, targets = next(batches)
            loss = workload.loss(model(inputs), targets, spec.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach().double()
            losses_since_eval += 1
            step += 1
        train_time += time.perf_counter() - segment_start
        train_loss = float(loss_sum) / losses_since_eval if losses_since_eval else float("nan")
        loss_sum.zero_()
        losses_since_eval = 0
        val_loss, val_metric = evaluate_split(model, workload, data.validation)
        test_loss, test_metric = evaluate_split(model, workload, data.test)
        result.measurements.append(
            {
                "step": step,
                "train/loss": train_loss,
                "val/loss": val_loss,
                "test/loss": test_loss,
                f"val/{metric}": val_metric,
                f"test/{metric}": test_metric,
            }
        )
        result.steps = step
        ending = rules.ending(result, f"val/{metric}")
        if ending is not None:
            result.status = ending
            break
    result.wall_time = time.perf_counter() - started
    result.train_time = train_time
    return result
