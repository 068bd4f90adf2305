"""Real data sets from the Hugging Face Hub: downloaded once, cached, read offline.

Why Hugging Face ``datasets`` and not torchvision: torchvision's wheels are built for one exact
torch build, so installing it beside a CPU-only or otherwise custom torch pulls in a second,
multi-gigabyte CUDA torch; ``datasets`` and ``huggingface_hub`` are pure Python, work beside
any torch, and read the parquet files every data set here is published in. They come with the
``batchscale[data]`` extra, so the core install stays light.

Layout on disk: the parquet shards of each split, as the hub stores them, at
``<root>/<name>/<config>/<split>-*.parquet``; for MNIST ``<root>/mnist/mnist/train-00000-of-
00001.parquet`` and ``.../test-00000-of-00001.parquet``. ``hf download <repo> --repo-type
dataset --local-dir <root>/<name>`` produces exactly this. ``<root>`` is ``data_dir`` when
one is given, and then nothing is ever downloaded; otherwise it is ``$BATCHSCALE_CACHE/data``
(default ``~/.cache/batchscale/data``), where missing files are downloaded on first use.
Files that are missing and cannot be downloaded end in one ``DataUnavailableError`` whose
message says which files to put where.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from batchscale.workloads.mnist1d import cache_dir

# Seconds to wait for each answer of the hub: without network, a download fails, never hangs.
HUB_TIMEOUT_S = 10.0


class DataUnavailableError(ValueError):
    """A data set's files are not on disk and could not be downloaded."""


@dataclass(frozen=True)
class HubDataset:
    """One data set on the Hugging Face Hub and where its files lie under a data root."""

    name: str  # folder under the data root
    title: str  # how messages name it
    repo_id: str
    config: str  # the repository folder that holds the parquet shards
    splits: tuple[str, ...]

    def folder(self, root: Path) -> Path:
        """The folder holding the shards under ``root``."""
        return root / self.name / self.config

    def shards(self, root: Path, split: str) -> list[Path]:
        """The parquet shards of ``split`` under ``root``, in order (empty where missing)."""
        return sorted(self.folder(root).glob(f"{split}-*.parquet"))

    def missing(self, root: Path) -> list[str]:
        """The splits without any shard under ``root``."""
        return [split for split in self.splits if not self.shards(root, split)]


def data_root(data_dir: str | Path | None) -> Path:
    """``data_dir`` itself, or the download cache when none is given."""
    return Path(data_dir).expanduser() if data_dir is not None else cache_dir() / "data"


def _require(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DataUnavailableError(
            f"reading real data sets needs the '{module}' package: pip install 'batchscale[data]'"
        ) from None


def _where(dataset: HubDataset, root: Path, splits: list[str]) -> str:
    patterns = ", ".join(f"{split}-*.parquet" for split in splits)
    return (
        f"put its parquet files ({patterns}) in {dataset.folder(root)}, e.g. with "
        f"'hf download {dataset.repo_id} --repo-type dataset --local-dir {root / dataset.name}'"
    )


def _download(dataset: HubDataset, root: Path) -> None:
    hub = _require("huggingface_hub")
    try:
        hub.snapshot_download(
            dataset.repo_id,
            repo_type="dataset",
            allow_patterns=f"{dataset.config}/*.parquet",
            local_dir=root / dataset.name,
            etag_timeout=HUB_TIMEOUT_S,
        )
    except Exception as error:  # offline, refused, not found, disk full: all end the same way
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataUnavailableError(
            f"{dataset.title} is not in {dataset.folder(root)} and could not be downloaded from "
            f"the Hugging Face Hub ({reason}); "
            + _where(dataset, root, list(dataset.splits))
            + ", or give --data-dir (data_dir in Python) a folder laid out the same way"
        ) from None


def locate(dataset: HubDataset, data_dir: str | Path | None) -> dict[str, list[Path]]:
    """The shards of every split, downloading them first when ``data_dir`` is not given."""
    root = data_root(data_dir)
    if data_dir is None and dataset.missing(root):
        _download(dataset, root)
    missing = dataset.missing(root)
    if missing:
        raise DataUnavailableError(
            f"{dataset.title} is missing from {dataset.folder(root)} (no {', '.join(missing)} "
            "split); " + _where(dataset, root, missing)
        )
    return {split: dataset.shards(root, split) for split in dataset.splits}


def local_row_counts(dataset: HubDataset, data_dir: str | Path | None) -> dict[str, int] | None:
    """Rows of each split from the parquet footers alone; None unless all are on disk and read."""
    root = data_root(data_dir)
    if dataset.missing(root):
        return None
    try:
        parquet = importlib.import_module("pyarrow.parquet")
        counts = {}
        for split in dataset.splits:
            shards = dataset.shards(root, split)
            counts[split] = sum(parquet.ParquetFile(path).metadata.num_rows for path in shards)
        return counts
    except (ImportError, OSError, ValueError):  # no pyarrow, or a damaged file: loading will say
        return None


def local_text_bytes(
    dataset: HubDataset, data_dir: str | Path | None, column: str
) -> dict[str, int] | None:
    """UTF-8 bytes of each split's text ``column`` (rows joined) without decoding it to Python
    strings; None unless all splits are on disk and read."""
    root = data_root(data_dir)
    if dataset.missing(root):
        return None
    try:
        parquet = importlib.import_module("pyarrow.parquet")
        compute = importlib.import_module("pyarrow.compute")
        sizes = {}
        for split in dataset.splits:
            sizes[split] = 0
            for path in dataset.shards(root, split):
                text = parquet.read_table(path, columns=[column]).column(column)
                sizes[split] += compute.sum(compute.binary_length(text)).as_py() or 0
        return sizes
    except (ImportError, OSError, ValueError, KeyError):  # loading will say what is wrong
        return None


def _read(files: list[Path]) -> Any:
    datasets = _require("datasets")
    # Local files only: the parquet builder never goes to the network. Its Arrow cache stays
    # beside batchscale's other caches.
    return datasets.load_dataset(
        "parquet",
        data_files=[str(path) for path in files],
        split="train",
        cache_dir=str(cache_dir() / "hf-datasets"),
    )


def read_images(
    files: list[Path], image_column: str, label_column: str
) -> tuple[np.ndarray, np.ndarray]:
    """Decoded images ``[N, H, W]`` or ``[N, H, W, C]`` (uint8) and their integer labels."""
    datasets = _require("datasets")
    table = _read(files)
    for column in (image_column, label_column):
        if column not in table.column_names:
            raise DataUnavailableError(
                f"{files[0]} has no '{column}' column (it has: {', '.join(table.column_names)})"
            )
    # Hub files declare their image column; casting also reads files that only hold the
    # {bytes, path} structs.
    arrays = table.cast_column(image_column, datasets.Image()).with_format("numpy")[:]
    images, labels = arrays[image_column], arrays[label_column]
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise DataUnavailableError(
            f"the images in {files[0].parent} are not 8-bit images of one common size"
        )
    return images, np.asarray(labels).astype(np.int64)


def read_text(files: list[Path], column: str) -> str:
    """All rows of the text ``column``, concatenated in order."""
    table = _read(files)
    if column not in table.column_names:
        raise DataUnavailableError(
            f"{files[0]} has no '{column}' column (it has: {', '.join(table.column_names)})"
        )
    return "".join(table[column])
