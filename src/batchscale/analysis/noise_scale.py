"""The gradient noise scale B_simple = tr(Sigma) / |G|^2 (McCandlish et al. 2018).

G is the true gradient and Sigma the covariance of one example's gradient. A batch of b examples
has E|G_b|^2 = |G|^2 + tr(Sigma) / b, so squared gradient norms at two batch sizes
b_small < b_big give unbiased estimates of both quantities:

    |G|^2     ~ (b_big |G_big|^2 - b_small |G_small|^2) / (b_big - b_small)
    tr(Sigma) ~ (|G_small|^2 - |G_big|^2) / (1 / b_small - 1 / b_big)

Their ratio is not unbiased (and is wild when |G|^2 is small), so each is averaged on its own
with a bias-corrected exponential moving average and the ratio is taken after averaging.

Two ways to get |G_small|^2 from one training batch of b examples, each with b_big = b:

* ``per_example``: every example's gradient through ``torch.func`` (``vmap`` over ``grad`` of a
  ``functional_call``), so b_small = 1; then the tr(Sigma) estimate is exactly the unbiased
  sample variance of the per-example gradients. It needs a model whose examples do not interact
  (no batch norm) and whose operations ``vmap`` supports.
* ``two_batch``: the batch cut into ``chunks`` near-equal parts, each part's gradient a small
  batch. With part sizes b_j, the mean of |G_j|^2 estimates |G|^2 + tr(Sigma) / b_small with
  b_small the harmonic mean of the b_j, so unequal parts stay unbiased.

Neither touches the model's parameters, gradients or buffers (batch-norm statistics), nor the
random number generators, so measuring leaves a training run exactly as it would have been.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

Method = Literal["per_example", "two_batch"]
LossFunction = Callable[[Tensor, Tensor], Tensor]

# Per-example gradients are taken for this many parameter values at a time, to bound memory.
PER_EXAMPLE_ELEMENTS = 2**24


class GradientNoiseScale:
    """Running estimate of B_simple from squared gradient norms at two batch sizes.

    Example::

        scale = GradientNoiseScale()
        for inputs, targets in batches:
            scale.update(*gradient_norms(model, loss, inputs, targets))
        scale.value  # B_simple
    """

    def __init__(self, beta: float = 0.99) -> None:
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"the moving-average decay beta must lie in [0, 1), got {beta}")
        self.beta = beta
        self.updates = 0
        self._grad_sq_norm = 0.0
        self._trace = 0.0

    def update(
        self,
        small_sq_norm: float,
        big_sq_norm: float,
        small_batch_size: float,
        big_batch_size: float,
    ) -> None:
        """Fold in one pair of squared gradient norms, |G_small|^2 and |G_big|^2."""
        if not 0 < small_batch_size < big_batch_size:
            raise ValueError(
                "need 0 < small batch size < big batch size, got "
                f"{small_batch_size} and {big_batch_size}"
            )
        grad_sq_norm = (big_batch_size * big_sq_norm - small_batch_size * small_sq_norm) / (
            big_batch_size - small_batch_size
        )
        trace = (small_sq_norm - big_sq_norm) / (1.0 / small_batch_size - 1.0 / big_batch_size)
        self._grad_sq_norm = self.beta * self._grad_sq_norm + (1.0 - self.beta) * grad_sq_norm
        self._trace = self.beta * self._trace + (1.0 - self.beta) * trace
        self.updates += 1

    def _debiased(self, average: float) -> float:
        if self.updates == 0:
            return math.nan
        return average / (1.0 - self.beta**self.updates)

    @property
    def grad_sq_norm(self) -> float:
        """The averaged estimate of |G|^2 (NaN before the first update)."""
        return self._debiased(self._grad_sq_norm)

    @property
    def trace_sigma(self) -> float:
        """The averaged estimate of tr(Sigma) (NaN before the first update)."""
        return self._debiased(self._trace)

    @property
    def value(self) -> float:
        """B_simple = tr(Sigma) / |G|^2 of the averages.

        NaN before the first update, and while the averaged |G|^2 is not positive: then the
        gradient is not yet told apart from its noise (average over more updates).
        """
        signal = self.grad_sq_norm
        if not signal > 0:
            return math.nan
        return self.trace_sigma / signal

    def state_dict(self) -> dict[str, float]:
        """The estimator's whole state, to resume it with ``load_state_dict``."""
        return {
            "beta": self.beta,
            "updates": self.updates,
            "grad_sq_norm_average": self._grad_sq_norm,
            "trace_sigma_average": self._trace,
        }

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        """Restore a state from ``state_dict``."""
        self.beta = float(state["beta"])
        self.updates = int(state["updates"])
        self._grad_sq_norm = float(state["grad_sq_norm_average"])
        self._trace = float(state["trace_sigma_average"])


class GradientNorms(NamedTuple):
    """Squared gradient norms at two batch sizes: the arguments of ``GradientNoiseScale.update``."""

    small_sq_norm: float
    big_sq_norm: float
    small_batch_size: float
    big_batch_size: float


def has_batch_norm(model: nn.Module) -> bool:
    """Whether any module mixes the examples of a batch (batch norm)."""
    return any(isinstance(module, nn.modules.batchnorm._BatchNorm) for module in model.modules())


Buffers = dict[str, Tensor]
FunctionalLoss = Callable[[dict[str, Tensor], Buffers, Tensor, Tensor], Tensor]


def _functional_loss(
    model: nn.Module, loss_fn: LossFunction
) -> tuple[dict[str, Tensor], Buffers, FunctionalLoss]:
    """The trainable parameters (detached), copies of the buffers, and the loss of them.

    The buffers are an explicit argument, and copies, because batch norm updates its running
    statistics in place: ``torch.func`` only allows that on inputs, and the model's own
    statistics must stay as training left them.
    """
    params = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}

    def loss(
        params: dict[str, Tensor], buffers: Buffers, inputs: Tensor, targets: Tensor
    ) -> Tensor:
        return loss_fn(functional_call(model, (params, buffers), (inputs,)), targets)

    return params, buffers, loss


def squared_norm(tensors: Iterable[Tensor]) -> Tensor:
    """Sum of squares of all entries, as a float64 scalar.

    Each tensor is summed in its own precision (converting a batch of per-example gradients to
    float64 first would cost more than the gradients themselves); the parts add up in float64.
    """
    return torch.stack([torch.sum(t * t) for t in tensors]).double().sum()


def _per_example_sq_norm(
    model: nn.Module, loss_fn: LossFunction, inputs: Tensor, targets: Tensor
) -> float:
    """Mean over examples of each example's squared gradient norm."""
    params, buffers, loss = _functional_loss(model, loss_fn)

    def example_sq_norm(params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        example_grads = grad(loss)(params, buffers, x.unsqueeze(0), y.unsqueeze(0))
        return squared_norm(example_grads.values())

    # randomness="different": dropout draws its own mask for every example, as in a batch.
    batched = vmap(example_sq_norm, in_dims=(None, 0, 0), randomness="different")
    size = sum(p.numel() for p in params.values())
    chunk = max(1, PER_EXAMPLE_ELEMENTS // max(size, 1))
    total = torch.zeros((), dtype=torch.float64, device=inputs.device)
    for start in range(0, len(inputs), chunk):
        total += batched(
            params, inputs[start : start + chunk], targets[start : start + chunk]
        ).sum()
    return float(total) / len(inputs)


def _chunked_sq_norm(
    model: nn.Module, loss_fn: LossFunction, inputs: Tensor, targets: Tensor, chunks: int
) -> tuple[float, float]:
    """Mean squared gradient norm over ``chunks`` parts of the batch, and their harmonic size."""
    params, buffers, loss = _functional_loss(model, loss_fn)
    gradient = grad(loss)
    parts = torch.arange(len(inputs), device=inputs.device).tensor_split(chunks)
    total = torch.zeros((), dtype=torch.float64, device=inputs.device)
    for part in parts:
        total += squared_norm(gradient(params, buffers, inputs[part], targets[part]).values())
    harmonic = len(parts) / sum(1.0 / len(part) for part in parts)
    return float(total) / len(parts), harmonic


def _rng_devices(device: torch.device) -> list[torch.device]:
    return [device] if device.type == "cuda" else []


def gradient_norms(
    model: nn.Module,
    loss_fn: LossFunction,
    inputs: Tensor,
    targets: Tensor,
    method: Method = "per_example",
    chunks: int = 8,
    big_sq_norm: float | None = None,
) -> GradientNorms:
    """Squared gradient norms of one batch, at the batch size and at a smaller one.

    ``loss_fn(outputs, targets)`` is the batch's mean loss. ``big_sq_norm`` is |G_big|^2 when the
    caller already has the batch's gradient (a training step); otherwise it is computed here.
    ``method`` and ``chunks`` are as in the module's docstring.
    """
    batch_size = len(inputs)
    if batch_size < 2:
        raise ValueError("the noise scale needs batches of at least 2 examples")
    with torch.random.fork_rng(devices=_rng_devices(inputs.device)):
        if big_sq_norm is None:
            params, buffers, loss = _functional_loss(model, loss_fn)
            big_sq_norm = float(squared_norm(grad(loss)(params, buffers, inputs, targets).values()))
        if method == "per_example":
            small_sq_norm = _per_example_sq_norm(model, loss_fn, inputs, targets)
            small_batch_size = 1.0
        elif method == "two_batch":
            if chunks < 2:
                raise ValueError(f"two_batch needs at least 2 chunks, got {chunks}")
            small_sq_norm, small_batch_size = _chunked_sq_norm(
                model, loss_fn, inputs, targets, min(chunks, batch_size)
            )
        else:
            raise ValueError(f"unknown method '{method}'; use per_example or two_batch")
    return GradientNorms(small_sq_norm, big_sq_norm, small_batch_size, float(batch_size))
