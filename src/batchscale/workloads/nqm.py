"""The noisy quadratic model (Zhang et al. 2019) as a trainable workload.

Loss 1/2 x^T H x with H = diag(1/i), x0 ~ N(0, I). Each example is a standard normal vector z;
its loss 1/2 x^T H x + x . (sqrt(h) * z) has gradient H x + sqrt(h) * z, so a batch of B
examples has gradient noise of covariance H / B, exactly the model's assumption. Training
data are drawn fresh at every step; validation and test evaluate the noiseless loss (z = 0).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from batchscale.workloads.base import Budget, Data, Metric, Split, Workload


def _identity(outputs: Tensor, targets: Tensor) -> Tensor:
    return outputs


QUADRATIC_LOSS = Metric("loss", _identity, "minimize", 0.0, float("inf"))


class QuadraticModel(nn.Module):
    """The NQM's parameters x; ``forward(z)`` returns each example's loss."""

    def __init__(self, dims: int) -> None:
        super().__init__()
        curvature = 1.0 / torch.arange(1, dims + 1, dtype=torch.float32)
        self.register_buffer("curvature", curvature)
        self.register_buffer("noise_scale", curvature.sqrt())
        self.x = nn.Parameter(torch.randn(dims))

    def forward(self, z: Tensor) -> Tensor:
        """Per-example loss 1/2 x^T H x + x . (sqrt(h) * z)."""
        curvature: Tensor = self.curvature  # type: ignore[assignment]
        noise_scale: Tensor = self.noise_scale  # type: ignore[assignment]
        deterministic = 0.5 * (curvature * self.x * self.x).sum()
        return deterministic + (z * noise_scale) @ self.x


@dataclass
class NoisyQuadraticWorkload(Workload):
    """The NQM of METHOD.md with ``dims`` dimensions."""

    dims: int = 100

    def load_data(self) -> Data:
        """No stored training data; held-out splits are one noiseless example each."""
        noiseless = Split(torch.zeros(1, self.dims), torch.zeros(1))
        return Data(train=noiseless, validation=noiseless, test=noiseless)

    def make_model(self) -> nn.Module:
        """x0 drawn from N(0, I) with the caller's seeded generator."""
        return QuadraticModel(self.dims)

    def loss(self, outputs: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
        """The batch's mean loss."""
        return outputs.mean()

    def eval_loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """The loss itself."""
        return outputs

    def batches(self, seed: int, batch_size: int, data: Data) -> Iterator[tuple[Tensor, Tensor]]:
        """Fresh standard normal examples from the trial's own generator, forever."""
        generator = torch.Generator().manual_seed(seed)
        device = data.validation.inputs.device
        targets = torch.zeros(batch_size, device=device)
        while True:
            noise = torch.randn(batch_size, self.dims, generator=generator)
            yield noise.to(device), targets

    def data_sizes(self) -> dict[str, int]:
        """Training data are unlimited (drawn fresh), held-out splits are exact."""
        return {"train": 0, "validation": 1, "test": 1}


def nqm() -> NoisyQuadraticWorkload:
    """The 100-dimensional NQM, goal: loss below 0.05."""
    return NoisyQuadraticWorkload(
        name="nqm",
        description="Noisy quadratic model, 100 dims, h_i = 1/i, noise covariance H/B",
        metric=QUADRATIC_LOSS,
        default_target=0.05,
        budget=Budget(examples=2_000_000, min_steps=500, max_steps=20_000),
        learning_rate_range=(1e-3, 2.0),
        one_minus_momentum_range=(1e-3, 0.5),
    )
