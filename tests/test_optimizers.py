"""The batched optimizer update against ``torch.optim.SGD``, one trial at a time."""

from __future__ import annotations

import pytest
import torch

from batchscale.training.optimizers import batched_sgd_step, torch_optimizer
from batchscale.workloads import OPTIMIZERS, Optimizer

LEARNING_RATES = [0.3, 0.05, 1e-3, 1.7]
MOMENTA = [0.9, 0.0, 0.99, 0.5]


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_batched_step_matches_torch_sgd_per_trial(optimizer: Optimizer) -> None:
    trials, steps = len(LEARNING_RATES), 6
    generator = torch.Generator().manual_seed(0)
    shapes = [(5, 3), (3,), ()]
    start = [torch.randn(trials, *shape, generator=generator) for shape in shapes]
    gradients = [
        [torch.randn(trials, *shape, generator=generator) for shape in shapes] for _ in range(steps)
    ]
    # The schedule changes the learning rate between steps, as a decaying schedule does.
    decay = [1.0, 0.8, 0.8, 0.5, 0.25, 0.1]

    params = [p.clone() for p in start]
    velocities = [torch.zeros_like(p) for p in params]
    momenta = torch.tensor(MOMENTA)
    for step in range(steps):
        rates = torch.tensor(LEARNING_RATES) * decay[step]
        grads = [g.clone() for g in gradients[step]]
        batched_sgd_step(params, grads, velocities, rates, momenta, optimizer)

    for trial in range(trials):
        if optimizer == "nesterov" and MOMENTA[trial] == 0.0:
            continue  # torch refuses Nesterov without momentum
        own = [p[trial].clone().requires_grad_() for p in start]
        reference = torch_optimizer(own, optimizer, LEARNING_RATES[trial], MOMENTA[trial])
        for step in range(steps):
            for group in reference.param_groups:
                group["lr"] = LEARNING_RATES[trial] * decay[step]
            for parameter, gradient in zip(own, gradients[step], strict=True):
                parameter.grad = gradient[trial].clone()
            reference.step()
        for mine, theirs in zip(params, own, strict=True):
            torch.testing.assert_close(mine[trial], theirs.detach(), rtol=1e-6, atol=1e-6)


def test_first_momentum_step_starts_the_velocity_at_the_gradient() -> None:
    param = torch.zeros(2, 3)
    velocity = torch.zeros(2, 3)
    grad = torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.25, -1.0]])
    batched_sgd_step(
        [param], [grad.clone()], [velocity], torch.ones(2), torch.tensor([0.9, 0.5]), "momentum"
    )
    assert torch.equal(velocity, grad)
    assert torch.equal(param, -grad)
