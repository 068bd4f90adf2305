"""The real-data workloads, run on small files in the hub's own format that the tests write.

The files are what the Hugging Face Hub serves: parquet shards written by ``datasets`` with
PNG-encoded images and integer labels (MNIST, Fashion-MNIST, CIFAR-10) or rows of text
(WikiText-2), laid out as ``<root>/<name>/<config>/<split>-00000-of-00001.parquet``. The same
loading code that reads a user's downloaded files reads them here.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import huggingface_hub
import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Image, Value

from batchscale.cli import main
from batchscale.training.reference import train_reference
from batchscale.training.trial import StopRules, TrialSpec
from batchscale.workloads import DataUnavailableError, Split, Workload, get_workload
from batchscale.workloads.hub import HubDataset
from batchscale.workloads.mnist1d import mnist1d_mlp
from batchscale.workloads.nets import GhostBatchNorm, TransformerLM
from batchscale.workloads.text import WIKITEXT2, byte_windows
from batchscale.workloads.vision import (
    CIFAR10,
    FASHION_MNIST,
    MNIST,
    ImageClassificationWorkload,
    ImageSet,
)

TRAIN_IMAGES, TEST_IMAGES, VALIDATION = 240, 60, 40
TEXT_LINES = {"train": 300, "validation": 40, "test": 40}
# The cache the rest of the suite uses (MNIST-1D's generated arrays live there).
SUITE_CACHE = os.environ.get("BATCHSCALE_CACHE")


def learnable_images(image_set: ImageSet, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy images whose class is a square of a class-dependent brightness and place.

    Brightness lets globally pooled models (ResNet-8) tell the classes apart, place the rest.
    The noise makes every image unique, so splits can be told apart by their pixels.
    """
    channels, height, width = image_set.shape
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, image_set.classes, count)
    images = rng.integers(0, 60, (count, height, width, channels), dtype=np.uint8)
    for index, label in enumerate(labels):
        row, column = 4 * (label // 5) + 4, 4 * (label % 5) + 2
        images[index, row : row + 6, column : column + 6] = 120 + 13 * label
    return (images[..., 0] if channels == 1 else images), labels


def write_images(root: Path, image_set: ImageSet, split: str, count: int, seed: int) -> None:
    """One parquet shard of ``split`` as the hub stores it (PNG images, class labels)."""
    images, labels = learnable_images(image_set, count, seed)
    features = Features(
        {image_set.image_column: Image(), "label": ClassLabel(num_classes=image_set.classes)}
    )
    rows = {image_set.image_column: list(images), "label": labels.tolist()}
    folder = image_set.hub.folder(root)
    folder.mkdir(parents=True, exist_ok=True)
    Dataset.from_dict(rows, features=features).to_parquet(
        folder / f"{split}-00000-of-00001.parquet"
    )


def text_lines(count: int, seed: int) -> list[str]:
    """WikiText-like rows: headings, blank lines and sentences, with some non-ASCII text."""
    rng = np.random.default_rng(seed)
    words = ["the", "river", "café", "of", "a", "city", "—", "north", "was", "built", "in"]
    lines = []
    for index in range(count):
        if index % 10 == 0:
            lines.append(f" = Section {index // 10} = \n")
        elif index % 10 == 1:
            lines.append("")
        else:
            lines.append(" " + " ".join(rng.choice(words, 12)) + " . \n")
    return lines


def write_text(root: Path, hub: HubDataset, split: str, lines: list[str]) -> None:
    """One parquet shard of ``split`` with a ``text`` column, one row per line."""
    folder = hub.folder(root)
    folder.mkdir(parents=True, exist_ok=True)
    dataset = Dataset.from_dict({"text": lines}, features=Features({"text": Value("string")}))
    dataset.to_parquet(folder / f"{split}-00000-of-00001.parquet")


def write_all(root: Path) -> None:
    """Every data set's files under ``root``."""
    for offset, image_set in enumerate((MNIST, FASHION_MNIST, CIFAR10)):
        write_images(root, image_set, "train", TRAIN_IMAGES, seed=10 * offset)
        write_images(root, image_set, "test", TEST_IMAGES, seed=10 * offset + 1)
    for offset, (split, count) in enumerate(TEXT_LINES.items()):
        write_text(root, WIKITEXT2.hub, split, text_lines(count, seed=100 + offset))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory holding small files of every data set."""
    root = tmp_path_factory.mktemp("data")
    write_all(root)
    return root


@pytest.fixture(autouse=True)
def cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private cache: downloads and Arrow caches stay out of the user's home."""
    path = tmp_path_factory.getbasetemp() / "cache"
    monkeypatch.setenv("BATCHSCALE_CACHE", str(path))
    return path


@pytest.fixture
def no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything tries to reach the hub."""

    def refuse(*args: Any, **kwargs: Any) -> str:
        pytest.fail("the hub was contacted")  # not an Exception: the loader cannot swallow it

    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)


def tiny(name: str, data_dir: Path | None, **settings: Any) -> Workload:
    """A registered workload on the test files, small enough to train in a second."""
    workload = get_workload(name, data_dir=data_dir)
    if isinstance(workload, ImageClassificationWorkload):
        settings.setdefault("validation_size", VALIDATION)
    return dataclasses.replace(workload, **settings)


def rows(split: Split) -> set[bytes]:
    """Each example's inputs as bytes, to compare splits by content."""
    return {row.numpy().tobytes() for row in split.inputs}


def test_image_splits_have_the_right_sizes_types_and_ranges(data_dir: Path) -> None:
    data = tiny("mnist-cnn", data_dir).data()
    assert (len(data.train), len(data.validation), len(data.test)) == (
        TRAIN_IMAGES - VALIDATION,
        VALIDATION,
        TEST_IMAGES,
    )
    for split in (data.train, data.validation, data.test):
        assert split.inputs.dtype == torch.float32 and split.targets.dtype == torch.int64
        assert split.inputs.shape[1:] == (1, 28, 28)
        assert int(split.targets.min()) >= 0 and int(split.targets.max()) < 10
    # Standardised with the training pool's statistics; the bright squares stand out.
    assert abs(float(data.train.inputs.mean())) < 0.05
    assert abs(float(data.train.inputs.std()) - 1) < 0.05
    assert float(data.train.inputs.max()) > 3


def test_validation_is_carved_disjoint_and_reproducibly(data_dir: Path) -> None:
    first = tiny("mnist-cnn", data_dir).data()
    second = tiny("mnist-cnn", data_dir).data()
    train, validation = rows(first.train), rows(first.validation)
    assert len(train) == TRAIN_IMAGES - VALIDATION and len(validation) == VALIDATION
    assert not train & validation
    assert not (train | validation) & rows(first.test)
    assert torch.equal(first.validation.inputs, second.validation.inputs)
    assert torch.equal(first.train.targets, second.train.targets)


def test_labels_survive_the_round_trip(data_dir: Path) -> None:
    _, labels = learnable_images(MNIST, TEST_IMAGES, seed=1)
    data = tiny("mnist-cnn", data_dir).data()
    assert data.test.targets.tolist() == labels.tolist()


def test_cifar_images_are_channels_first_and_standardised_per_channel(data_dir: Path) -> None:
    data = tiny("cifar10-resnet8", data_dir).data()
    assert data.train.inputs.shape[1:] == (3, 32, 32)
    means = data.train.inputs.mean(dim=(0, 2, 3))
    stds = data.train.inputs.std(dim=(0, 2, 3))
    assert torch.allclose(means, torch.zeros(3), atol=0.05)
    assert torch.allclose(stds, torch.ones(3), atol=0.05)


def test_fully_connected_inputs_are_flat(data_dir: Path) -> None:
    data = tiny("mnist-fc", data_dir).data()
    assert data.train.inputs.shape == (TRAIN_IMAGES - VALIDATION, 784)


@pytest.mark.parametrize(
    ("column", "message"),
    [("img", "28x28x1, expected 32x32x3"), ("image", "has no 'img' column")],
)
def test_files_of_the_wrong_kind_are_refused_in_one_line(
    tmp_path: Path, column: str, message: str
) -> None:
    grey = dataclasses.replace(MNIST, hub=CIFAR10.hub, image_column=column)
    write_images(tmp_path, grey, "train", 50, seed=0)
    write_images(tmp_path, grey, "test", 10, seed=1)
    with pytest.raises(DataUnavailableError, match=message) as error:
        tiny("cifar10-resnet8", tmp_path).data()
    assert "\n" not in str(error.value)


def test_text_becomes_next_byte_windows(data_dir: Path) -> None:
    workload = tiny("wikitext2-transformer", data_dir, context=32)
    data = workload.data()
    text = "".join(text_lines(TEXT_LINES["train"], seed=100)).encode("utf-8")
    assert len(data.train) == (len(text) - 1) // 32
    assert data.train.inputs.shape == data.train.targets.shape == (len(data.train), 32)
    assert data.train.inputs.dtype == torch.int64
    assert bytes(data.train.inputs.flatten().tolist()) == text[: 32 * len(data.train)]
    assert torch.equal(data.train.inputs[:, 1:], data.train.targets[:, :-1])
    assert torch.equal(data.train.inputs[1:, 0], data.train.targets[:-1, -1])
    assert int(data.train.inputs.max()) > 127  # UTF-8 bytes of the non-ASCII words
    validation = "".join(text_lines(TEXT_LINES["validation"], seed=101)).encode("utf-8")
    assert len(data.validation) == (len(validation) - 1) // 32


def test_text_shorter_than_a_window_is_refused() -> None:
    with pytest.raises(DataUnavailableError, match="shorter than one window"):
        byte_windows("abc", 8)


@pytest.mark.usefixtures("no_download")
def test_missing_files_in_a_data_dir_are_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(DataUnavailableError) as error:
        get_workload("fashion-mnist-cnn", data_dir=tmp_path).data()
    message = str(error.value)
    assert "\n" not in message and "could not be downloaded" not in message
    assert str(tmp_path / "fashion-mnist" / "fashion_mnist") in message
    assert "train-*.parquet" in message and "test-*.parquet" in message
    assert "zalando-datasets/fashion_mnist" in message


def test_offline_without_data_dir_fails_fast_in_one_line(
    monkeypatch: pytest.MonkeyPatch, cache: Path
) -> None:
    def offline(*args: Any, **kwargs: Any) -> str:
        raise OSError("Cannot reach https://huggingface.co: [Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    started = time.perf_counter()
    with pytest.raises(DataUnavailableError) as error:
        get_workload("cifar10-vgg11").data()
    assert time.perf_counter() - started < 5
    message = str(error.value)
    assert "\n" not in message
    assert "could not be downloaded" in message and "Name or service not known" in message
    assert str(cache / "data" / "cifar10" / "plain_text") in message


def test_first_use_downloads_into_the_cache_then_reads_it(
    monkeypatch: pytest.MonkeyPatch, cache: Path
) -> None:
    calls: list[dict[str, Any]] = []

    def fake_hub(repo_id: str, **kwargs: Any) -> str:
        calls.append({"repo_id": repo_id, **kwargs})
        root = Path(kwargs["local_dir"]).parent
        write_images(root, MNIST, "train", TRAIN_IMAGES, seed=0)
        write_images(root, MNIST, "test", TEST_IMAGES, seed=1)
        return str(kwargs["local_dir"])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_hub)
    data = tiny("mnist-fc", None).data()
    assert len(data.test) == TEST_IMAGES
    assert calls == [
        {
            "repo_id": "ylecun/mnist",
            "repo_type": "dataset",
            "allow_patterns": "mnist/*.parquet",
            "local_dir": cache / "data" / "mnist",
            "etag_timeout": pytest.approx(10.0),
        }
    ]
    tiny("mnist-cnn", None).data()  # now on disk: no second download
    assert len(calls) == 1


@pytest.mark.parametrize("name", ["mnist-cnn", "cifar10-vgg11", "wikitext2-transformer"])
def test_train_size_draws_nested_reproducible_subsets(data_dir: Path, name: str) -> None:
    full = tiny(name, data_dir).data().train
    half = tiny(name, data_dir, train_size=0.5).data().train
    few = tiny(name, data_dir, train_size=20).data().train
    assert len(half) == round(len(full) / 2) and len(few) == 20
    assert rows(few) < rows(half) < rows(full)
    assert torch.equal(half.inputs, tiny(name, data_dir, train_size=0.5).data().train.inputs)
    assert torch.equal(tiny(name, data_dir, train_size=1.0).data().train.inputs, full.inputs)
    # Held-out splits do not change with the training-set size.
    assert torch.equal(
        tiny(name, data_dir, train_size=20).data().validation.inputs,
        tiny(name, data_dir).data().validation.inputs,
    )


@pytest.mark.parametrize("train_size", [0.0, 1.5, -3, 10**9, "half", True])
def test_bad_train_sizes_are_refused(train_size: Any) -> None:
    with pytest.raises(ValueError, match="train_size"):
        get_workload("mnist-cnn", train_size=train_size)


@pytest.mark.usefixtures("no_download")
def test_data_sizes_read_no_data(data_dir: Path, tmp_path: Path) -> None:
    for name in ("mnist-cnn", "cifar10-resnet8", "wikitext2-transformer"):
        workload = tiny(name, data_dir, train_size=0.5)
        sizes = workload.data_sizes()
        assert workload._data is None
        assert sizes == tiny(name, data_dir, train_size=0.5).data_sizes()
        workload.data()
        assert workload.data_sizes() == sizes
    # Before any file is on disk: the official sizes, and still nothing downloaded.
    assert get_workload("mnist-cnn", data_dir=tmp_path).data_sizes() == {
        "train": 55_000,
        "validation": 5_000,
        "test": 10_000,
    }
    assert get_workload("cifar10-resnet8", train_size=1000).data_sizes()["train"] == 1000
    assert get_workload("wikitext2-transformer").data_sizes()["train"] > 80_000


def test_overrides_change_the_workload(data_dir: Path) -> None:
    def parameters(workload: Workload) -> int:
        return sum(p.numel() for p in workload.make_model().parameters())

    for name in ("mnist-cnn", "mnist-fc", "cifar10-resnet8", "cifar10-vgg11"):
        assert parameters(get_workload(name, width=4)) < parameters(get_workload(name, width=8))
    narrow = get_workload("wikitext2-transformer", width=32).make_model()
    assert isinstance(narrow, TransformerLM) and narrow.tokens.embedding_dim == 32
    model = get_workload("cifar10-resnet8", ghost_batch_size=8).make_model()
    sizes = {m.ghost_batch_size for m in model.modules() if isinstance(m, GhostBatchNorm)}
    assert sizes == {8}
    local = get_workload("mnist-fc", data_dir=data_dir)
    assert isinstance(local, ImageClassificationWorkload) and local.data_dir == data_dir


@pytest.mark.parametrize(
    ("name", "settings", "message"),
    [
        ("mnist-cnn", {"ghost_batch_size": 8}, "'mnist-cnn' does not support ghost_batch_size"),
        ("nqm", {"width": 8}, "settings it supports: none"),
        ("mnist1d-mlp", {"data_dir": "/data"}, "supports: train_size, width"),
        ("cifar10-resnet8", {"width": 0}, "width must be at least 1"),
        ("cifar10-vgg11", {"ghost_batch_size": 0}, "ghost_batch_size must be at least 1"),
        ("wikitext2-transformer", {"width": 30}, "multiple of the 4 heads"),
        ("resnet-9000", {}, "unknown workload 'resnet-9000'"),
    ],
)
def test_unsupported_or_bad_overrides_are_refused(
    name: str, settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        get_workload(name, **settings)


def test_mnist1d_takes_a_training_set_size_and_a_width(monkeypatch: pytest.MonkeyPatch) -> None:
    # The suite's cache: the default pool is generated (and cached) for the cohort tests too.
    if SUITE_CACHE is None:
        monkeypatch.delenv("BATCHSCALE_CACHE")
    else:
        monkeypatch.setenv("BATCHSCALE_CACHE", SUITE_CACHE)
    full = mnist1d_mlp().data()
    smaller = get_workload("mnist1d-mlp", train_size=0.25, width=16)
    data = smaller.data()
    assert len(data.train) == len(full.train) // 4
    assert rows(data.train) < rows(full.train)
    assert torch.equal(data.validation.inputs, full.validation.inputs)
    first = smaller.make_model()[0]
    assert isinstance(first, torch.nn.Linear) and first.out_features == 16
    assert get_workload("mnist1d-cnn", width=8).make_model()[1].out_channels == 8


TINY_TRAINING = {
    "mnist-cnn": ({"width": 4}, 0.05),
    "mnist-fc": ({"width": 32, "depth": 1}, 0.05),
    "fashion-mnist-cnn": ({"width": 4}, 0.05),
    "cifar10-resnet8": ({"width": 4, "ghost_batch_size": 8}, 0.1),
    "cifar10-vgg11": ({"width": 2, "ghost_batch_size": 8}, 0.1),
    "wikitext2-transformer": ({"width": 16, "depth": 1, "context": 16}, 0.3),
}


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models train fastest on one thread, and much faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name", sorted(TINY_TRAINING))
def test_a_short_reference_run_lowers_the_loss(data_dir: Path, name: str) -> None:
    settings, learning_rate = TINY_TRAINING[name]
    workload = tiny(name, data_dir, **settings)
    spec = TrialSpec(
        batch_size=16,
        trial_id=0,
        params={"learning_rate": learning_rate, "momentum": 0.9},
        seed=3,
        step_budget=40,
        optimizer="momentum",
    )
    # A goal nothing reaches and no divergence check: the run goes its 40 steps.
    rules = StopRules(target=0.0, maximize=False, divergence_factor=1e9)
    result = train_reference(workload, workload.data(), spec, rules, [0, 40])
    first, last = result.measurements[0], result.measurements[-1]
    assert last["step"] == 40
    assert last["val/loss"] < 0.9 * first["val/loss"]
    assert last["train/loss"] < first["val/loss"]


@pytest.mark.usefixtures("no_download")
def test_a_run_without_its_data_files_is_one_line_and_leaves_no_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "studies" / "s.sqlite"
    args = ["run", "--workload", "mnist-cnn", "--data-dir", str(tmp_path / "none"),
            "--batch-sizes", "64", "--trials", "1", "--step-budget", "2",
            "--store", str(store)]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: MNIST is missing from") and len(err.splitlines()) == 1
    assert not store.parent.exists()
