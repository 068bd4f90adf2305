"""SGD, heavy-ball momentum and Nesterov momentum as tensor operations over many trials.

The update is exactly ``torch.optim.SGD`` (dampening 0, no weight decay): the velocity starts
at the first gradient, ``v <- m v + g``, and the step is ``lr * v`` (heavy ball) or
``lr * (g + m v)`` (Nesterov). Here every tensor carries a leading trial dimension and the
learning rate and momentum are one value per trial, so a cohort updates in a few kernels.
"""

from __future__ import annotations

import torch
from torch import Tensor

from batchscale.workloads.base import Optimizer


def _per_trial(values: Tensor, like: Tensor) -> Tensor:
    return values.to(like.dtype).reshape((-1,) + (1,) * (like.dim() - 1))


@torch.no_grad()
def batched_sgd_step(
    params: list[Tensor],
    grads: list[Tensor],
    velocities: list[Tensor],
    learning_rates: Tensor,
    momenta: Tensor,
    optimizer: Optimizer,
) -> None:
    """Update ``params`` in place; ``velocities`` (zeros before the first step) likewise.

    Every tensor's first dimension is the trial; ``learning_rates`` and ``momenta`` have one
    entry per trial. Nesterov's step is formed in ``grads``, which are overwritten.

    Every operation is the one ``torch.optim.SGD`` applies to a single trial (its rounding
    included: ``addcmul_`` with a per-trial column rounds as ``add_`` with a scalar ``alpha``
    does), so each trial's parameters come out bit for bit as torch's would. All updates are in
    place: a cohort whose parameters sit in one buffer allocates nothing per step (fresh
    buffers of a megabyte or more cost page faults on every step on a CPU).
    """
    for param, grad, velocity in zip(params, grads, velocities, strict=True):
        lr = _per_trial(learning_rates, param)
        if optimizer == "sgd":
            param.addcmul_(grad, lr, value=-1)
            continue
        momentum = _per_trial(momenta, param)
        # Starting from zeros, the first update leaves v == g exactly, as torch.optim.SGD does.
        velocity.mul_(momentum).add_(grad)
        step = grad.addcmul_(velocity, momentum) if optimizer == "nesterov" else velocity
        param.addcmul_(step, lr, value=-1)


def torch_optimizer(
    parameters: list[Tensor], optimizer: Optimizer, learning_rate: float, momentum: float
) -> torch.optim.SGD:
    """The reference optimizer for one trial: ``torch.optim.SGD`` configured for ``optimizer``."""
    if optimizer == "sgd" or momentum == 0:
        # Momentum 0 is plain SGD however momentum would be applied (torch refuses Nesterov
        # without it, and a default search space can reach it: 1 - momentum up to 1).
        return torch.optim.SGD(parameters, lr=learning_rate)
    return torch.optim.SGD(
        parameters, lr=learning_rate, momentum=momentum, nesterov=optimizer == "nesterov"
    )
