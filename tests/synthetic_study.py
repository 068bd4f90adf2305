"""A study store with a known answer, written through the real ``StudyStore`` in a second.

Every trial's first step below the goal follows S(B) = S_MIN (1 + B_CRIT / B), stretched by how
far its effective learning rate and momentum sit from the best ones at its batch size, with
lognormal noise. The best effective learning rate grows linearly with B up to B_CRIT (the
classic linear-scaling rule) and levels off beyond. Trials stop at the goal, diverge when the
effective learning rate is far too high, and the last few per batch size are raced (pruned),
so every outcome a real study produces appears.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from batchscale.search import SearchSpace, derive_seed, loguniform, reverse_loguniform, uniform
from batchscale.store import StudyStore
from batchscale.training.evaluation import evaluation_steps
from batchscale.training.trial import Status, TrialResult, TrialSpec

S_MIN = 40.0
B_CRIT = 256.0
TARGET = 0.1
BATCH_SIZES = (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
STEP_BUDGET = 3000
METRIC_COLUMNS = [
    "train/loss",
    "val/loss",
    "test/loss",
    "val/classification_error",
    "test/classification_error",
]
SPACE = SearchSpace(
    dimensions=(
        loguniform("learning_rate", 1e-3, 10.0),
        reverse_loguniform("momentum", 0.5, 0.999),
        loguniform("end_learning_rate_factor", 1e-3, 1.0),
        uniform("decay_fraction", 0.5, 1.0),
    )
)


def best_effective_learning_rate(batch_size: float) -> float:
    """The synthetic optimum: linear in B below B_CRIT, flat above."""
    return 2.0 * batch_size / (batch_size + B_CRIT)


def _first_hit(batch_size: int, params: dict[str, float], rng: np.random.Generator) -> float:
    effective = params["learning_rate"] / (1.0 - params["momentum"])
    lr_miss = math.log(effective / best_effective_learning_rate(batch_size)) / 1.2
    momentum_miss = math.log((1.0 - params["momentum"]) / 0.05) / 2.5
    stretch = math.exp(0.5 * (lr_miss**2 + momentum_miss**2))
    return S_MIN * (1.0 + B_CRIT / batch_size) * stretch * math.exp(rng.normal(0.0, 0.05))


def _row(step: int, error: float) -> dict[str, float]:
    return {
        "step": step,
        "train/loss": 2.3 * error * 0.9,
        "val/loss": 2.3 * error,
        "test/loss": 2.3 * error * 1.05,
        "val/classification_error": error,
        "test/classification_error": min(1.0, error * 1.05),
    }


def _result(spec: TrialSpec, hit: float, bound: float | None, diverges: bool) -> TrialResult:
    """Measurements at the study's evaluation steps until goal, divergence, prune or budget."""
    result = TrialResult(spec=spec, status=Status.COMPLETE, steps=0)
    for step in evaluation_steps(spec.step_budget, 1.1):
        if bound is not None and step > bound:
            result.status = Status.PRUNED
            break
        # Error falls as a power of steps and crosses the goal exactly at ``hit``.
        error = min(0.9, TARGET * ((hit + 0.1 * hit) / (step + 0.1 * hit)) ** 0.8)
        if diverges and step >= 3:
            result.measurements.append({**_row(step, 0.9), "train/loss": float("nan")})
            result.status = Status.INFEASIBLE
            result.steps = step
            break
        result.measurements.append(_row(step, error))
        result.steps = step
        if error < TARGET:
            break
    result.train_time = result.steps * spec.batch_size * 2e-6
    result.wall_time = result.train_time * 1.3
    return result


def build_synthetic_store(
    path: Path,
    *,
    batch_sizes: tuple[int, ...] = BATCH_SIZES,
    trials: int = 16,
    raced: int = 4,
    seed: int = 0,
) -> Path:
    """Write a synthetic momentum study to ``path``; the last ``raced`` trials per B race."""
    store = StudyStore.create(
        path,
        {
            "workload": "synthetic",
            "optimizer": "momentum",
            "target": TARGET,
            "metric": "classification_error",
            "maximize": False,
            "seed": seed,
            "mode": "race",
            "search_space": SPACE.model_dump(mode="json"),
            "budget": {"steps": STEP_BUDGET},
            "eval_growth": 1.1,
            "divergence_factor": 10.0,
            "batch_sizes": list(batch_sizes),
            "trials": trials,
            "engine": "synthetic",
        },
        METRIC_COLUMNS,
    )
    try:
        for batch_size in batch_sizes:
            rng = np.random.default_rng(derive_seed(seed, batch_size, 7))
            points = SPACE.points(trials, derive_seed(seed, batch_size))
            best: float | None = None
            for trial_id, params in enumerate(points):
                spec = TrialSpec(
                    batch_size=batch_size,
                    trial_id=trial_id,
                    params=params,
                    seed=derive_seed(seed, batch_size, trial_id, 1),
                    step_budget=STEP_BUDGET,
                    optimizer="momentum",
                )
                effective = params["learning_rate"] / (1.0 - params["momentum"])
                diverges = effective > 30.0 * best_effective_learning_rate(batch_size)
                hit = _first_hit(batch_size, params, rng)
                raced_trial = trial_id >= trials - raced
                result = _result(spec, hit, best if raced_trial else None, diverges)
                store.record(result)
                reached = result.measurements[-1]["val/classification_error"] < TARGET
                if result.status == Status.COMPLETE and reached:
                    best = result.steps if best is None else min(best, result.steps)
    finally:
        store.close()
    return path
