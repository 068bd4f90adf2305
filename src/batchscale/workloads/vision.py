"""Image classification on MNIST, Fashion-MNIST and CIFAR-10 with the paper's models.

Data come from the Hugging Face Hub (see ``hub``): the official test split is the test split,
and since none of these sets has a validation split, one is carved from the training split
with a fixed seed. Pixels are standardised per channel with the mean and standard deviation
of that carved training pool (the same whatever ``train_size``), and there is no data
augmentation, so batches are plain rows of the training split and every trial sees exactly
the data its seed says.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

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
from batchscale.workloads.hub import (
    DataUnavailableError,
    HubDataset,
    local_row_counts,
    locate,
    read_images,
)
from batchscale.workloads.nets import ResNet8, fully_connected, simple_cnn, vgg11

# Fixed seed of the draw that carves the validation split out of the training split.
VALIDATION_SEED = 20_191_811

Architecture = Literal["simple-cnn", "fc", "resnet8", "vgg11"]
BATCH_NORM_ARCHITECTURES = ("resnet8", "vgg11")


@dataclass(frozen=True)
class ImageSet:
    """An image data set: where it lives, its image shape and classes, its official sizes."""

    hub: HubDataset
    image_column: str
    shape: tuple[int, int, int]  # channels, height, width
    classes: int
    train_examples: int  # official sizes, reported before the files are on disk
    test_examples: int
    label_column: str = "label"


MNIST = ImageSet(
    HubDataset("mnist", "MNIST", "ylecun/mnist", "mnist", ("train", "test")),
    image_column="image",
    shape=(1, 28, 28),
    classes=10,
    train_examples=60_000,
    test_examples=10_000,
)
FASHION_MNIST = ImageSet(
    HubDataset(
        "fashion-mnist",
        "Fashion-MNIST",
        "zalando-datasets/fashion_mnist",
        "fashion_mnist",
        ("train", "test"),
    ),
    image_column="image",
    shape=(1, 28, 28),
    classes=10,
    train_examples=60_000,
    test_examples=10_000,
)
CIFAR10 = ImageSet(
    HubDataset("cifar10", "CIFAR-10", "uoft-cs/cifar10", "plain_text", ("train", "test")),
    image_column="img",
    shape=(3, 32, 32),
    classes=10,
    train_examples=50_000,
    test_examples=10_000,
)


def carve_validation(count: int, validation: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training and the validation examples among ``count``.

    ``validation`` examples drawn with a fixed seed, the rest for training; both in their
    original order.
    """
    if not 0 < validation < count:
        raise ValueError(
            f"cannot carve {validation} validation examples from {count} training examples"
        )
    order = np.random.default_rng(VALIDATION_SEED).permutation(count)
    return np.sort(order[validation:]), np.sort(order[:validation])


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-channel mean and standard deviation of ``[N, C, H, W]`` uint8 images.

    From a histogram of the 256 pixel values, so no float copy of the images is made.
    """
    values = np.arange(256, dtype=np.float64)
    means, stds = [], []
    for channel in range(images.shape[1]):
        counts = np.bincount(images[:, channel].ravel(), minlength=256).astype(np.float64)
        weights = counts / counts.sum()
        mean = float(weights @ values)
        means.append(mean)
        stds.append(max(float(np.sqrt(weights @ (values - mean) ** 2)), 1e-6))
    return np.array(means), np.array(stds)


@dataclass
class ImageClassificationWorkload(Workload):
    """A classifier of one ``ImageSet`` with one of the paper's architectures.

    ``width`` scales the model (simple CNN: first conv's channels; fc: hidden units; ResNet-8
    and VGG-11: first stage's channels); ``depth`` is the fc net's hidden layers;
    ``ghost_batch_size`` is the batch-norm slice size of ResNet-8 and VGG-11; ``train_size``
    (a fraction or a count) trains on that part of the training examples, drawn reproducibly;
    ``data_dir`` reads the files from there and never downloads.
    """

    images: ImageSet = MNIST
    architecture: Architecture = "simple-cnn"
    width: int = 32
    depth: int = 3
    ghost_batch_size: int = 32
    validation_size: int = 5_000
    train_size: TrainSize | None = None
    data_dir: str | Path | None = None

    def __post_init__(self) -> None:
        for setting in ("width", "depth", "ghost_batch_size", "validation_size"):
            if getattr(self, setting) < 1:
                raise ValueError(f"{setting} must be at least 1, got {getattr(self, setting)}")
        resolve_train_size(self.train_size, self.images.train_examples - self.validation_size)

    @property
    def overridable(self) -> frozenset[str]:
        """Training-set size, width, data directory and, with batch norm, its ghost size."""
        names = {"train_size", "width", "data_dir"}
        if self.architecture in BATCH_NORM_ARCHITECTURES:
            names.add("ghost_batch_size")
        return frozenset(names)

    def _read(self, files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
        images, labels = read_images(files, self.images.image_column, self.images.label_column)
        if images.ndim == 3:
            images = images[:, None]
        else:
            images = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
        if images.shape[1:] != self.images.shape:
            channels, height, width = self.images.shape
            raise DataUnavailableError(
                f"{self.images.hub.title} images in {files[0].parent} are "
                f"{images.shape[3]}x{images.shape[2]}x{images.shape[1]}, "
                f"expected {width}x{height}x{channels}"
            )
        if len(labels) and not (labels.min() >= 0 and labels.max() < self.images.classes):
            raise DataUnavailableError(
                f"{self.images.hub.title} labels in {files[0].parent} lie outside "
                f"0..{self.images.classes - 1}"
            )
        return images, labels

    def _prepare(self, split: Split, mean: np.ndarray, std: np.ndarray) -> Split:
        """Standardised float inputs (flat for the fully connected net)."""
        shift = torch.from_numpy(mean).float().view(1, -1, 1, 1)
        scale = torch.from_numpy(std).float().view(1, -1, 1, 1)
        # In place on the fresh float copy: CIFAR-10's training inputs alone take 0.5 GiB.
        inputs = split.inputs.float().sub_(shift).div_(scale)
        if self.architecture == "fc":
            inputs = inputs.flatten(1)
        return Split(inputs, split.targets)

    def load_data(self) -> Data:
        """Read (downloading first if needed) and split the images; see the module docstring."""
        files = locate(self.images.hub, self.data_dir)
        train_images, train_labels = self._read(files["train"])
        test_images, test_labels = self._read(files["test"])
        train_index, validation_index = carve_validation(len(train_images), self.validation_size)
        pool = train_images[train_index]
        mean, std = channel_stats(pool)
        train = train_subset(
            Split(torch.from_numpy(pool), torch.from_numpy(train_labels[train_index])),
            self.train_size,
        )
        validation = Split(
            torch.from_numpy(train_images[validation_index]),
            torch.from_numpy(train_labels[validation_index]),
        )
        test = Split(torch.from_numpy(test_images), torch.from_numpy(test_labels))
        return Data(
            self._prepare(train, mean, std),
            self._prepare(validation, mean, std),
            self._prepare(test, mean, std),
        )

    def data_sizes(self) -> dict[str, int]:
        """Split sizes without reading any image: from the parquet files' footers where they
        are on disk, else the data set's official sizes; exact once the data are loaded."""
        if self._data is not None:
            return super().data_sizes()
        counts = local_row_counts(self.images.hub, self.data_dir) or {
            "train": self.images.train_examples,
            "test": self.images.test_examples,
        }
        pool = counts["train"] - self.validation_size
        return {
            "train": resolve_train_size(self.train_size, pool),
            "validation": self.validation_size,
            "test": counts["test"],
        }

    def make_model(self) -> nn.Module:
        """The configured architecture at the configured width."""
        channels, size, _ = self.images.shape
        classes = self.images.classes
        if self.architecture == "simple-cnn":
            return simple_cnn(channels, size, classes, self.width)
        if self.architecture == "fc":
            return fully_connected(channels * size * size, self.width, self.depth, classes)
        if self.architecture == "resnet8":
            return ResNet8(channels, classes, self.width, self.ghost_batch_size)
        return vgg11(channels, size, classes, self.width, self.ghost_batch_size)


def mnist_cnn() -> ImageClassificationWorkload:
    """MNIST, simple CNN; the paper's goal: validation error below 0.01."""
    return ImageClassificationWorkload(
        name="mnist-cnn",
        description="MNIST, simple CNN (2 conv 5x5 + max-pool, 1024-unit dense layer)",
        metric=CLASSIFICATION_ERROR,
        default_target=0.01,
        budget=Budget(examples=1_650_000, min_steps=500, max_steps=50_000),
        learning_rate_range=(1e-3, 1.0),
        one_minus_momentum_range=(1e-2, 0.5),
        images=MNIST,
        architecture="simple-cnn",
        width=32,
    )


def mnist_fc() -> ImageClassificationWorkload:
    """MNIST, fully connected net of 3 hidden layers of 1024 units; goal: error below 0.03."""
    return ImageClassificationWorkload(
        name="mnist-fc",
        description="MNIST, fully connected net (3 hidden layers of 1024 ReLU units)",
        metric=CLASSIFICATION_ERROR,
        # No goal for this model in METHOD.md: 0.03 is well within reach of a tuned MLP
        # (about 0.015 without augmentation) yet needs many epochs at small learning rates.
        default_target=0.03,
        budget=Budget(examples=1_650_000, min_steps=500, max_steps=50_000),
        learning_rate_range=(1e-3, 1.0),
        one_minus_momentum_range=(1e-2, 0.5),
        images=MNIST,
        architecture="fc",
        width=1024,
        depth=3,
    )


def fashion_mnist_cnn() -> ImageClassificationWorkload:
    """Fashion-MNIST, simple CNN; the paper's goal: validation error below 0.1."""
    return ImageClassificationWorkload(
        name="fashion-mnist-cnn",
        description="Fashion-MNIST, simple CNN (2 conv 5x5 + max-pool, 1024-unit dense layer)",
        metric=CLASSIFICATION_ERROR,
        default_target=0.1,
        budget=Budget(examples=3_300_000, min_steps=500, max_steps=100_000),
        learning_rate_range=(1e-3, 1.0),
        one_minus_momentum_range=(1e-2, 0.5),
        images=FASHION_MNIST,
        architecture="simple-cnn",
        width=32,
    )


def cifar10_resnet8() -> ImageClassificationWorkload:
    """CIFAR-10, ResNet-8 with ghost batch norm; the paper's goal: validation error below 0.3."""
    return ImageClassificationWorkload(
        name="cifar10-resnet8",
        description="CIFAR-10, ResNet-8 (16/32/64 channels, ghost batch norm of 32)",
        metric=CLASSIFICATION_ERROR,
        default_target=0.3,
        budget=Budget(examples=4_500_000, min_steps=1_000, max_steps=100_000),
        learning_rate_range=(1e-3, 3.0),
        one_minus_momentum_range=(1e-2, 0.5),
        images=CIFAR10,
        architecture="resnet8",
        width=16,
        ghost_batch_size=32,
    )


def cifar10_vgg11() -> ImageClassificationWorkload:
    """CIFAR-10, VGG-11 with ghost batch norm; goal: validation error below 0.2."""
    return ImageClassificationWorkload(
        name="cifar10-vgg11",
        description="CIFAR-10, VGG-11 (64-512 channels, ghost batch norm of 32)",
        metric=CLASSIFICATION_ERROR,
        # METHOD.md gives VGG-11's goal on ImageNet only; without augmentation VGG-11 reaches
        # about 0.12-0.15 on CIFAR-10, so 0.2 is reachable but needs real training.
        default_target=0.2,
        budget=Budget(examples=4_500_000, min_steps=1_000, max_steps=100_000),
        learning_rate_range=(1e-3, 3.0),
        one_minus_momentum_range=(1e-2, 0.5),
        images=CIFAR10,
        architecture="vgg11",
        width=64,
        ghost_batch_size=32,
    )
