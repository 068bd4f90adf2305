"""The noisy quadratic model's closed form against simulation, training and brute force."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from batchscale.analysis.nqm import (
    DEFAULT_DIMS,
    DEFAULT_TARGET,
    NoisyQuadratic,
    NQMPrediction,
    optimal_steps,
    predicted_curve,
)
from batchscale.report.nqm_figures import nqm_figure
from batchscale.training.engine import Engine, run_cohort
from batchscale.training.evaluation import evaluation_steps
from batchscale.training.reference import train_reference
from batchscale.training.trial import Status, StopRules, TrialResult, TrialSpec
from batchscale.workloads import get_workload


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """These tensors are tiny: on a shared machine, extra threads only contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def simulate(
    dims: int,
    gamma: float,
    learning_rate: float,
    batch_size: int,
    momentum: float,
    steps: list[int],
    runs: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error of the loss over independent runs, iterating x itself."""
    rng = np.random.default_rng(seed)
    h = 1.0 / np.arange(1, dims + 1)
    p = h**-gamma
    x = rng.standard_normal((runs, dims))
    v = np.zeros_like(x)
    means, errors = [], []
    for k in range(max(steps) + 1):
        if k in steps:
            loss = 0.5 * (h * x * x).sum(axis=1)
            means.append(loss.mean())
            errors.append(loss.std(ddof=1) / math.sqrt(runs))
        gradient = h * x + np.sqrt(h / batch_size) * rng.standard_normal((runs, dims))
        v = momentum * v + gradient
        x = x - learning_rate * p * v
    return np.array(means), np.array(errors)


@pytest.mark.parametrize(
    ("gamma", "learning_rate", "batch_size", "momentum"),
    [
        (0.0, 0.5, 4, 0.0),  # SGD
        (0.0, 1.9, 16, 0.0),  # SGD near the stability limit
        (0.0, 0.3, 2, 0.9),  # underdamped momentum
        (0.0, 0.05, 1, 0.99),  # heavy momentum, noise-dominated
        (0.5, 0.2, 8, 0.0),  # preconditioned SGD
        (0.5, 0.2, 8, 0.5),  # preconditioned momentum
    ],
)
def test_closed_form_matches_monte_carlo(
    gamma: float, learning_rate: float, batch_size: int, momentum: float
) -> None:
    steps = [0, 1, 7, 30, 100]
    model = NoisyQuadratic(dims=10, gamma=gamma)
    predicted = model.expected_loss(steps, learning_rate, batch_size, momentum)
    mean, error = simulate(10, gamma, learning_rate, batch_size, momentum, steps, 10_000, seed=1)
    assert np.all(np.abs(mean - predicted) < 4 * error), (mean, predicted, error)


def test_initial_loss_and_momentum_limit() -> None:
    model = NoisyQuadratic(dims=50)
    assert model.expected_loss(0, 0.1, 4) == pytest.approx(0.5 * np.sum(1.0 / np.arange(1, 51)))
    assert model.initial_loss == pytest.approx(float(model.expected_loss(0, 0.3, 8, 0.9)))
    # A rate of exactly 1 / h_1 (h_1 = 1) removes that dimension in one step, not before it.
    assert model.expected_loss(0, 1.0, 4) == pytest.approx(model.initial_loss)
    # Momentum tending to 0 is SGD, from the other formula.
    steps = np.array([1, 10, 100, 1000])
    np.testing.assert_allclose(
        model.expected_loss(steps, 0.7, 8, 1e-12), model.expected_loss(steps, 0.7, 8), rtol=1e-9
    )


def test_momentum_closed_form_is_continuous_through_critical_damping() -> None:
    # m = 0.81, learning rate 0.01: the first dimension (h = 1) has the repeated eigenvalue 0.9.
    model = NoisyQuadratic(dims=3)
    steps = np.array([1, 5, 50, 500])
    exact = model.expected_loss(steps, 0.01, 4, 0.81)
    for nudge in (1 - 1e-9, 1 + 1e-9):
        np.testing.assert_allclose(model.expected_loss(steps, 0.01 * nudge, 4, 0.81), exact, 1e-6)
    assert np.all(np.isfinite(exact))


def test_unstable_settings_have_infinite_loss() -> None:
    model = NoisyQuadratic(dims=5)
    assert model.max_learning_rate() == pytest.approx(2.0)
    assert math.isinf(model.expected_loss(10, 2.01, 4))
    assert math.isinf(model.expected_loss(10, 2.0 * 1.5 + 0.01, 4, 0.5))
    assert math.isfinite(model.expected_loss(10, 2.0 * 1.5 - 0.01, 4, 0.5))
    with pytest.raises(ValueError, match="momentum"):
        model.expected_loss(10, 0.1, 4, 1.0)
    with pytest.raises(ValueError, match="non-negative integers"):
        model.expected_loss(1.5, 0.1, 4)


@pytest.mark.parametrize(
    ("optimizer", "learning_rate", "momentum", "batch_size"),
    [("sgd", 0.3, 0.0, 4), ("momentum", 0.05, 0.9, 8)],
)
def test_trained_nqm_workload_matches_closed_form(
    optimizer: str, learning_rate: float, momentum: float, batch_size: int
) -> None:
    """The ``nqm`` workload trained by the reference engine has the predicted mean loss."""
    workload = get_workload("nqm")
    assert workload.dims == DEFAULT_DIMS  # type: ignore[attr-defined]
    assert workload.default_target == DEFAULT_TARGET
    data = workload.data()
    checkpoints = evaluation_steps(120, 2.0)
    rules = StopRules(target=0.0, maximize=False, divergence_factor=math.inf)
    params = {"learning_rate": learning_rate, "momentum": momentum}
    losses = []
    for seed in range(48):
        spec = TrialSpec(batch_size, seed, params, seed, 120, optimizer)  # type: ignore[arg-type]
        result = train_reference(workload, data, spec, rules, checkpoints)
        losses.append([row["val/loss"] for row in result.measurements])
    observed = np.array(losses)
    mean = observed.mean(axis=0)
    error = observed.std(axis=0, ddof=1) / math.sqrt(len(observed))
    predicted = NoisyQuadratic(DEFAULT_DIMS).expected_loss(
        checkpoints, learning_rate, batch_size, momentum
    )
    assert mean[0] == pytest.approx(predicted[0], abs=4 * error[0])  # E[L_0] = 1/2 sum h_i
    assert np.all(np.abs(mean - predicted) < 4 * error), (mean, predicted, error)


def brute_force_steps(
    batch_size: int, target: float, rates: np.ndarray, momenta: np.ndarray, max_steps: int
) -> int:
    """Fewest steps over a fine grid, iterating the second-moment recurrences step by step."""
    h = 1.0 / np.arange(1, DEFAULT_DIMS + 1)
    rate, momentum = (a.ravel()[:, None] for a in np.meshgrid(rates, momenta, indexing="ij"))
    xx = np.ones((len(rate), DEFAULT_DIMS))
    xv = np.zeros_like(xx)
    vv = np.zeros_like(xx)
    with np.errstate(over="ignore", invalid="ignore"):
        for k in range(1, max_steps + 1):
            # v' = m v + h x + xi, then x' = x - a v'.
            vv = momentum**2 * vv + 2 * momentum * h * xv + h * h * xx + h / batch_size
            x_v_new = momentum * xv + h * xx
            xx = xx - 2 * rate * x_v_new + rate**2 * vv
            xv = x_v_new - rate * vv
            if np.any(0.5 * (h * xx).sum(axis=1) < target):
                return k
    raise AssertionError("the brute force never reached the target")


@pytest.mark.parametrize(
    ("optimizer", "batch_size"),
    [("sgd", 16), ("sgd", 1024), ("momentum", 128), ("momentum", 2048)],
)
def test_search_matches_a_much_finer_brute_force_grid(optimizer: str, batch_size: int) -> None:
    """Grid plus zoom finds the optimum that a dense grid over the settings finds.

    The brute force iterates the raw recurrences (no closed form, no bisection) over a grid far
    denser than the search's coarse grid; at 2048 the loss has many basins over the settings.
    """
    if optimizer == "sgd":
        rates, momenta = np.geomspace(1e-3, 1.9999, 3000), np.array([0.0])
    else:
        rates, momenta = np.geomspace(1e-2, 3.99, 200), 1 - np.geomspace(1e-3, 0.9, 100)
    point = optimal_steps(batch_size, optimizer=optimizer)  # type: ignore[arg-type]
    assert point.steps_to_result is not None
    brute = brute_force_steps(batch_size, DEFAULT_TARGET, rates, momenta, point.steps_to_result + 2)
    assert point.steps_to_result <= brute
    assert point.steps_to_result >= 0.97 * brute - 1
    # The reported settings reach the target at the reported step and not one step before.
    model = NoisyQuadratic()
    at = model.expected_loss(point.steps_to_result, point.learning_rate, batch_size, point.momentum)
    assert at < DEFAULT_TARGET
    before = model.expected_loss(
        point.steps_to_result - 1, point.learning_rate, batch_size, point.momentum
    )
    assert before >= DEFAULT_TARGET
    assert at == pytest.approx(point.expected_loss)


def test_momentum_extends_perfect_scaling_to_larger_batch_sizes() -> None:
    batch_sizes = [1, 4, 16, 64, 256, 1024, 4096]
    sgd = predicted_curve(batch_sizes, optimizer="sgd")
    momentum = predicted_curve(batch_sizes, optimizer="momentum")
    steps = {
        name: np.array([p.steps_to_result for p in curve.points], dtype=float)
        for name, curve in (("sgd", sgd), ("momentum", momentum))
    }
    # Small batches: both in perfect scaling (slope -1) and about equally fast.
    for name in steps:
        slope = np.log(steps[name][1] / steps[name][0]) / np.log(4)
        assert slope == pytest.approx(-1.0, abs=0.03), name
    ratio = steps["momentum"] / steps["sgd"]
    assert np.all((ratio[:2] > 0.85) & (ratio[:2] <= 1.0))
    # Perfect scaling ends where examples to result exceed the smallest batch's by 25%.
    examples = {name: steps[name] * np.array(batch_sizes) for name in steps}
    end = {
        name: max(b for b, e in zip(batch_sizes, used, strict=True) if e <= 1.25 * used[0])
        for name, used in examples.items()
    }
    assert end["momentum"] >= 4 * end["sgd"]
    # Large batches: curvature dominates, where momentum needs far fewer steps.
    assert ratio[-1] < 0.5
    for curve in (sgd, momentum):
        assert all(p.learning_rate > 0 for p in curve.points)
    assert all(p.momentum == 0.0 for p in sgd.points)
    assert all(0 < p.momentum < 1 for p in momentum.points)


def test_preconditioning_helps_at_large_batch_sizes() -> None:
    plain = optimal_steps(4096, model=NoisyQuadratic(gamma=0.0))
    preconditioned = optimal_steps(4096, model=NoisyQuadratic(gamma=0.5))
    assert preconditioned.steps_to_result is not None and plain.steps_to_result is not None
    assert preconditioned.steps_to_result < 0.5 * plain.steps_to_result


def test_prediction_as_json() -> None:
    prediction = predicted_curve([8, 2, 8], optimizer="momentum", dims=20, target=0.1)
    assert isinstance(prediction, NQMPrediction)
    document = json.loads(json.dumps(prediction.to_dict()))
    assert [row["batch_size"] for row in document["batch_sizes"]] == [2, 8]
    assert set(document["batch_sizes"][0]) == {
        "batch_size",
        "steps_to_result",
        "learning_rate",
        "momentum",
        "expected_loss",
    }
    assert document["initial_loss"] == pytest.approx(NoisyQuadratic(20).initial_loss)


def test_unreachable_and_invalid_targets() -> None:
    point = optimal_steps(4, target=1e-3, max_steps=8)
    assert point.steps_to_result is None and point.expected_loss >= 1e-3
    assert optimal_steps(4, model=NoisyQuadratic(dims=2), target=10.0).steps_to_result == 0
    with pytest.raises(ValueError, match="positive"):
        optimal_steps(4, target=0.0)
    with pytest.raises(ValueError, match="unknown optimizer"):
        optimal_steps(4, optimizer="adam")  # type: ignore[arg-type]


def test_figure_of_predicted_curves(tmp_path: Path) -> None:
    predictions = [
        predicted_curve([1, 8, 64], optimizer=name, dims=20, target=0.1)
        for name in ("sgd", "momentum")
    ]
    figure = nqm_figure(predictions, measured={1: 200.0, 8: 30.0})
    axes = figure.axes[0]
    drawn = [line for line in axes.get_lines() if len(line.get_xdata())]
    assert len(drawn) == 5  # two curves, two perfect-scaling guides, measured points
    # One legend entry stands for both dotted guides.
    labels = [text.get_text() for text in axes.get_legend().get_texts()]
    assert sum("perfect scaling" in label for label in labels) == 1
    figure.savefig(tmp_path / "nqm.png")
    assert (tmp_path / "nqm.png").stat().st_size > 0


@pytest.mark.parametrize("engine", ["reference", "cohort"])
def test_noisy_minibatch_losses_of_a_stable_trial_are_not_divergence(engine: Engine) -> None:
    """At batch size 1 one minibatch's NQM loss can be near zero or negative, and the next
    ten times larger, while the trial (lr 1e-3) barely moves: divergence is judged against the
    validation loss at step 0, so none of these trials is INFEASIBLE."""
    workload = get_workload("nqm")
    data = workload.data()
    rules = StopRules(target=0.05, maximize=False)
    specs = [TrialSpec(1, seed, {"learning_rate": 1e-3}, seed, 50, "sgd") for seed in range(20)]
    results: list[TrialResult] = []
    run_cohort(
        engine, workload, data, specs, rules, evaluation_steps(50, 1.1), False, None, results.append
    )
    assert len(results) == 20
    assert {r.status for r in results} == {Status.COMPLETE}
    assert all(r.steps == 50 for r in results)
    # The minibatch losses the old rule compared did swing tenfold and more.
    first = [r.measurements[1]["train/loss"] for r in results]
    assert min(abs(loss) for loss in first) < 0.3
    assert max(row["train/loss"] for r in results for row in r.measurements[1:]) > 3
