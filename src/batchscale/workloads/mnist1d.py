"""MNIST-1D (Greydanus 2020): a 40-feature, 10-class task generated offline in seconds.

The official test split (1,000 examples of the default generator, seed 42) stays the test split.
The training pool is the official training split plus extra examples from the same generator
under another seed, so that small batch sizes sit in the variance-dominated regime; the
validation split is carved from that pool. The generated arrays are cached on disk.
``train_size`` trains on a reproducible subset of the rest of the pool (for data-set-size sweeps).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from batchscale.workloads.base import (
    CLASSIFICATION_ERROR,
    Budget,
    Data,
    Split,
    TrainSize,
    Workload,
    resolve_train_size,
    train_subset,
)

OFFICIAL_SEED = 42
EXTRA_SEED = 1_000_003
CARVE_SEED = 20_191_811


def cache_dir() -> Path:
    """Where generated data sets are kept (``$BATCHSCALE_CACHE`` or ``~/.cache/batchscale``)."""
    root = os.environ.get("BATCHSCALE_CACHE") or Path.home() / ".cache" / "batchscale"
    return Path(root)


def _generate(num_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = seed
    # The generator reseeds numpy's and Python's global generators; leave them as they were.
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
    return data["x"], data["y"], data["x_test"], data["y_test"]


def generate_mnist1d(train_pool: int, validation: int) -> dict[str, np.ndarray]:
    """Arrays for a pool of ``train_pool`` examples (validation carved from it) and the test set."""
    path = cache_dir() / f"mnist1d_pool{train_pool}_val{validation}.npz"
    if path.exists():
        with np.load(path) as cached:
            return {name: cached[name] for name in cached.files}
    x_train, y_train, x_test, y_test = _generate(5000, OFFICIAL_SEED)
    extra = train_pool - len(x_train)
    if extra > 0:
        # Generate a little more than needed: the generator drops a remainder per class.
        xe, ye, xe_test, ye_test = _generate(extra + 20, EXTRA_SEED)
        x_extra = np.concatenate([xe, xe_test])[:extra]
        y_extra = np.concatenate([ye, ye_test])[:extra]
        x_train = np.concatenate([x_train, x_extra])
        y_train = np.concatenate([y_train, y_extra])
    x_train, y_train = x_train[:train_pool], y_train[:train_pool]
    order = np.random.default_rng(CARVE_SEED).permutation(len(x_train))
    x_train, y_train = x_train[order], y_train[order]
    arrays: dict[str, np.ndarray] = {
        "x_train": x_train[validation:].astype(np.float32),
        "y_train": y_train[validation:].astype(np.int64),
        "x_val": x_train[:validation].astype(np.float32),
        "y_val": y_train[:validation].astype(np.int64),
        "x_test": x_test.astype(np.float32),
        "y_test": y_test.astype(np.int64),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npz")
    np.savez(partial, **arrays)  # type: ignore[arg-type]
    partial.replace(path)
    return arrays


@dataclass
class Mnist1dWorkload(Workload):
    """An MNIST-1D classifier; ``architecture`` is ``mlp`` or ``cnn``.

    ``width`` is the hidden units of the MLP or the channels of the CNN; ``train_size`` (a
    fraction or a count) trains on that part of the training examples, drawn reproducibly.
    """

    architecture: str = "mlp"
    width: int = 100
    train_pool: int = 40_000
    validation_size: int = 4_000
    train_size: TrainSize | None = None

    def __post_init__(self) -> None:
        if self.width < 1:
            raise ValueError(f"width must be a positive number of units, got {self.width}")
        resolve_train_size(self.train_size, self.train_pool - self.validation_size)

    @property
    def overridable(self) -> frozenset[str]:
        """Training-set size and width."""
        return frozenset({"train_size", "width"})

    def load_data(self) -> Data:
        """Generate (or read from the cache) the training, validation and test splits."""
        arrays = generate_mnist1d(self.train_pool, self.validation_size)
        train = Split(torch.from_numpy(arrays["x_train"]), torch.from_numpy(arrays["y_train"]))
        return Data(
            train=train_subset(train, self.train_size),
            validation=Split(torch.from_numpy(arrays["x_val"]), torch.from_numpy(arrays["y_val"])),
            test=Split(torch.from_numpy(arrays["x_test"]), torch.from_numpy(arrays["y_test"])),
        )

    def make_model(self) -> nn.Module:
        """A two-hidden-layer ReLU MLP, or a three-layer 1-D convolutional net."""
        if self.architecture == "mlp":
            return nn.Sequential(
                nn.Linear(40, self.width),
                nn.ReLU(),
                nn.Linear(self.width, self.width),
                nn.ReLU(),
                nn.Linear(self.width, 10),
            )
        channels = self.width
        return nn.Sequential(
            nn.Unflatten(1, (1, 40)),
            nn.Conv1d(1, channels, 5, stride=2, padding=2),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(channels * 5, 10),
        )


def mnist1d_mlp() -> Mnist1dWorkload:
    """MNIST-1D with a 40-100-100-10 ReLU MLP."""
    return Mnist1dWorkload(
        name="mnist1d-mlp",
        description="MNIST-1D, 2-hidden-layer MLP (100 units)",
        metric=CLASSIFICATION_ERROR,
        default_target=0.3,
        budget=Budget(examples=200_000, min_steps=400, max_steps=20_000),
        learning_rate_range=(1e-2, 3.0),
        one_minus_momentum_range=(3e-3, 1.0),
        architecture="mlp",
        width=100,
    )


def mnist1d_cnn() -> Mnist1dWorkload:
    """MNIST-1D with a small three-layer 1-D CNN."""
    return Mnist1dWorkload(
        name="mnist1d-cnn",
        description="MNIST-1D, 3-layer 1-D CNN (32 channels)",
        metric=CLASSIFICATION_ERROR,
        default_target=0.2,
        budget=Budget(examples=200_000, min_steps=400, max_steps=20_000),
        learning_rate_range=(1e-2, 3.0),
        one_minus_momentum_range=(3e-3, 1.0),
        architecture="cnn",
        width=32,
    )
