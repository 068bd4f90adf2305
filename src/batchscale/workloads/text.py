"""A byte-level language model of WikiText-2 (raw) with a small causal Transformer.

The corpus: WikiText-2 raw (Merity et al. 2016, ``Salesforce/wikitext`` on the hub) is kept
there as parquet with official train, validation and test splits, and its 11 MB of training
text fit in memory as one tensor while still giving about 85,000 training sequences.

The tokens are the text's UTF-8 bytes (a vocabulary of 256): no tokenizer to download, nothing
out of vocabulary, and the loss is in nats per byte. Each split's rows are joined in order and
cut into non-overlapping windows of ``context`` bytes; an example's targets are its inputs
shifted by one byte, so every position predicts the next byte.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from batchscale.workloads.base import (
    Budget,
    Data,
    Metric,
    Split,
    TrainSize,
    Workload,
    resolve_train_size,
    train_subset,
)
from batchscale.workloads.hub import (
    DataUnavailableError,
    HubDataset,
    local_text_bytes,
    locate,
    read_text,
)
from batchscale.workloads.nets import TransformerLM

VOCABULARY = 256


def sequence_cross_entropy(outputs: Tensor, targets: Tensor) -> Tensor:
    """Mean next-token cross-entropy (nats) of each sequence: ``[N, T, V]``, ``[N, T]`` to ``[N]``.

    Every sequence has the same length, so the mean over sequences is the mean per token.
    """
    return F.cross_entropy(outputs.movedim(-1, 1), targets, reduction="none").mean(dim=-1)


CROSS_ENTROPY = Metric("cross_entropy", sequence_cross_entropy, "minimize", 0.0, math.inf)


@dataclass(frozen=True)
class TextCorpus:
    """A text data set: where it lives, its text column, and its approximate size in bytes."""

    hub: HubDataset
    text_column: str
    # UTF-8 bytes of the train, validation and test splits, reported before the files are on disk.
    approximate_bytes: tuple[int, int, int]


WIKITEXT2 = TextCorpus(
    HubDataset(
        "wikitext-2",
        "WikiText-2 (raw)",
        "Salesforce/wikitext",
        "wikitext-2-raw-v1",
        ("train", "validation", "test"),
    ),
    text_column="text",
    # The dataset card's Arrow sizes less 4 bytes of offset per row: within a few bytes.
    approximate_bytes=(10_914_841, 1_144_244, 1_287_652),
)


def byte_windows(text: str, context: int) -> Split:
    """Non-overlapping ``context``-byte windows of ``text`` and their next-byte targets."""
    encoded = text.encode("utf-8")
    count = (len(encoded) - 1) // context
    if count < 1:
        raise DataUnavailableError(
            f"a text split of {len(encoded)} bytes is shorter than one window of {context + 1}"
        )
    tokens = torch.frombuffer(bytearray(encoded[: count * context + 1]), dtype=torch.uint8)
    inputs = tokens[:-1].view(count, context).long()
    targets = tokens[1:].view(count, context).long()
    return Split(inputs, targets)


@dataclass
class LanguageModelWorkload(Workload):
    """Next-byte prediction on a ``TextCorpus`` with a ``TransformerLM``.

    ``width`` is the model width (a multiple of ``heads``); ``train_size`` (a fraction or a
    count of windows) trains on that part of the training windows, drawn reproducibly;
    ``data_dir`` reads the files from there and never downloads.
    """

    corpus: TextCorpus = WIKITEXT2
    context: int = 128
    width: int = 128
    depth: int = 4
    heads: int = 4
    train_size: TrainSize | None = None
    data_dir: str | Path | None = None

    def __post_init__(self) -> None:
        for setting in ("context", "width", "depth", "heads"):
            if getattr(self, setting) < 1:
                raise ValueError(f"{setting} must be at least 1, got {getattr(self, setting)}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be a multiple of the {self.heads} heads")
        resolve_train_size(self.train_size, self._windows(self.corpus.approximate_bytes[0]))

    @property
    def overridable(self) -> frozenset[str]:
        """Training-set size, width and data directory."""
        return frozenset({"train_size", "width", "data_dir"})

    def _windows(self, size_bytes: int) -> int:
        return max(0, (size_bytes - 1) // self.context)

    def load_data(self) -> Data:
        """Read (downloading first if needed) the three official splits as byte windows."""
        files = locate(self.corpus.hub, self.data_dir)
        column = self.corpus.text_column
        train, validation, test = (
            byte_windows(read_text(files[split], column), self.context)
            for split in self.corpus.hub.splits
        )
        return Data(train_subset(train, self.train_size), validation, test)

    def data_sizes(self) -> dict[str, int]:
        """Windows per split without tokenising: exact where the files are on disk (from the
        text's byte length), else from the corpus's approximate size; exact once loaded."""
        if self._data is not None:
            return super().data_sizes()
        sizes = local_text_bytes(self.corpus.hub, self.data_dir, self.corpus.text_column)
        train, validation, test = (
            [sizes[split] for split in self.corpus.hub.splits]
            if sizes is not None
            else self.corpus.approximate_bytes
        )
        return {
            "train": resolve_train_size(self.train_size, self._windows(train)),
            "validation": self._windows(validation),
            "test": self._windows(test),
        }

    def make_model(self) -> nn.Module:
        """A causal Transformer over the byte vocabulary."""
        return TransformerLM(VOCABULARY, self.context, self.width, self.depth, self.heads)

    def loss(self, outputs: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
        """Mean next-byte cross-entropy over every position of the batch."""
        return F.cross_entropy(
            outputs.reshape(-1, outputs.shape[-1]),
            targets.reshape(-1),
            label_smoothing=label_smoothing,
        )

    def eval_loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Each sequence's mean next-byte cross-entropy."""
        return sequence_cross_entropy(outputs, targets)


def wikitext2_transformer() -> LanguageModelWorkload:
    """WikiText-2 bytes, 4-layer Transformer; goal: validation cross-entropy below 1.6 nats."""
    return LanguageModelWorkload(
        name="wikitext2-transformer",
        description="WikiText-2 (raw), byte-level causal Transformer (4 layers, width 128)",
        metric=CROSS_ENTROPY,
        # METHOD.md's 3.9 is per LM1B word-piece and does not carry over to bytes. 1.6 nats
        # (2.3 bits) per byte lies well below what byte statistics alone give (about 2.4
        # nats for bigrams), so the model must have learned words, and above the 1.3-1.4 that
        # a model of this size reaches with long training, so tuned trials reach it within
        # the budget. Not yet calibrated by a run on the real data.
        default_target=1.6,
        budget=Budget(examples=1_000_000, min_steps=1_000, max_steps=50_000),
        learning_rate_range=(1e-2, 3.0),
        one_minus_momentum_range=(1e-2, 0.5),
    )
