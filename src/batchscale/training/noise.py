"""Measure the gradient noise scale B_simple along the training run of one configuration.

The run is the reference engine's trial of the same seed, step for step: the same
initialisation, data order, optimizer and learning-rate schedule, and the measurement neither
touches the model nor draws from its random generators. So measuring a study's winner shows the
noise scale along the very run that won.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from batchscale.analysis.noise_scale import (
    GradientNoiseScale,
    Method,
    gradient_norms,
    has_batch_norm,
    squared_norm,
)
from batchscale.training.evaluation import evaluate_split, evaluation_steps
from batchscale.training.optimizers import torch_optimizer
from batchscale.training.reference import initialised_model
from batchscale.training.schedules import linear_decay
from batchscale.training.trial import TrialSpec
from batchscale.workloads.base import Optimizer, Workload

MethodChoice = Literal["auto", "per_example", "two_batch"]


@dataclass(frozen=True)
class NoiseScalePoint:
    """The estimates after ``step`` updates, and the losses there.

    ``train_loss`` is the mean training loss since the previous point; ``val_loss`` is the
    validation loss at ``step``.
    """

    step: int
    b_simple: float
    grad_sq_norm: float
    trace_sigma: float
    train_loss: float
    val_loss: float


@dataclass
class NoiseScaleTrace:
    """B_simple along one training run, and its average over the run.

    ``b_simple`` is the mean over all measured updates of the running estimate (NaN where it is
    not yet defined is skipped); ``note`` says why ``auto`` chose the method it did.
    """

    workload: str
    optimizer: Optimizer
    batch_size: int
    params: dict[str, float]
    seed: int
    steps: int
    method: Method
    small_batch_size: float
    beta: float
    b_simple: float = math.nan
    diverged: bool = False
    note: str = ""
    points: list[NoiseScalePoint] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN and infinities become ``None``)."""
        return _json_safe(asdict(self))


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    return value


def _choose_method(model: torch.nn.Module, method: MethodChoice) -> tuple[Method, str]:
    if method != "auto":
        return method, ""
    if has_batch_norm(model):
        return "two_batch", "batch norm mixes the examples of a batch: per-example gradients differ"
    return "per_example", ""


def measure_noise_scale(
    workload: Workload,
    params: Mapping[str, float],
    optimizer: Optimizer,
    batch_size: int,
    steps: int,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    method: MethodChoice = "auto",
    chunks: int = 8,
    beta: float = 0.99,
    growth: float = 1.25,
    every: int = 1,
    step_budget: int | None = None,
) -> NoiseScaleTrace:
    """Train ``workload`` for ``steps`` updates and estimate B_simple along the way.

    ``params`` are a trial's metaparameters (``learning_rate``, and as the workload's search
    space has them ``momentum``, ``end_learning_rate_factor``, ``decay_fraction``,
    ``label_smoothing``); ``seed`` is the trial's seed and ``step_budget`` its budget (default
    ``steps``), which sets the length of the learning-rate decay: with both, the first ``steps``
    updates are exactly that trial's (e.g. a study's winner up to its steps to result). The
    estimate is updated with the gradient of every ``every``-th step and read out at
    geometrically spaced steps (ratio ``growth``). ``method``: ``per_example``
    (``torch.func``), ``two_batch`` (the batch cut into ``chunks`` parts), or ``auto``:
    per-example unless the model has batch norm or ``vmap`` cannot run it. A run whose loss or
    gradient stops being finite ends there with ``diverged`` set.
    """
    if "learning_rate" not in params:
        raise ValueError("params needs a 'learning_rate'")
    if batch_size < 2 or steps < 1 or every < 1:
        raise ValueError(
            f"need batch_size >= 2, steps >= 1 and every >= 1; got {batch_size}, {steps}, {every}"
        )
    spec = TrialSpec(batch_size, 0, dict(params), seed, step_budget or steps, optimizer)
    device = torch.device(device)
    data = workload.data().to(device)
    model = initialised_model(workload, spec.init_seed).to(device)
    model.train()
    torch_opt = torch_optimizer(
        list(model.parameters()), optimizer, spec.learning_rate, spec.momentum
    )
    batches = workload.batches(spec.data_seed, batch_size, data)
    chosen, note = _choose_method(model, method)

    def loss_fn(outputs: Tensor, targets: Tensor) -> Tensor:
        return workload.loss(outputs, targets, spec.label_smoothing)

    estimator = GradientNoiseScale(beta)
    trace = NoiseScaleTrace(
        workload.name, optimizer, batch_size, dict(params), seed, 0, chosen, 0.0, beta, note=note
    )
    record_at = set(evaluation_steps(steps, growth)[1:])
    value_sum, value_count = 0.0, 0
    loss_sum, losses = 0.0, 0
    for step in range(steps):
        for group in torch_opt.param_groups:
            group["lr"] = linear_decay(step, spec.learning_rate, spec.end_factor, spec.decay_steps)
        inputs, targets = next(batches)
        loss = loss_fn(model(inputs), targets)
        torch_opt.zero_grad(set_to_none=True)
        loss.backward()
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            trace.diverged = True
            break
        if step % every == 0:
            big = float(squared_norm(p.grad for p in model.parameters() if p.grad is not None))
            if not math.isfinite(big):
                trace.diverged = True
                break
            try:
                norms = gradient_norms(model, loss_fn, inputs, targets, trace.method, chunks, big)
            except RuntimeError as error:
                # Some operations have no vmap rule; under auto, fall back once and say why.
                if method != "auto" or trace.method != "per_example":
                    raise
                trace.method = "two_batch"
                trace.note = f"per-example gradients failed ({error}); fell back to two_batch"
                norms = gradient_norms(model, loss_fn, inputs, targets, trace.method, chunks, big)
            estimator.update(*norms)
            trace.small_batch_size = norms.small_batch_size
            if math.isfinite(estimator.value):
                value_sum += estimator.value
                value_count += 1
        torch_opt.step()
        loss_sum += loss_value
        losses += 1
        trace.steps = step + 1
        if trace.steps in record_at:
            val_loss, _ = evaluate_split(model, workload, data.validation)
            trace.points.append(
                NoiseScalePoint(
                    trace.steps,
                    estimator.value,
                    estimator.grad_sq_norm,
                    estimator.trace_sigma,
                    loss_sum / losses,
                    val_loss,
                )
            )
            loss_sum, losses = 0.0, 0
    trace.b_simple = value_sum / value_count if value_count else math.nan
    return trace
