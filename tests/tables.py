"""Small hand-made measurements and trials tables, in the analysis layer's shape."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd


def measurements_table(
    rows: Sequence[tuple[int, int, int, float]], metric: str = "val/error"
) -> pd.DataFrame:
    """(batch size, trial id, step, metric value) rows, indexed as the store gives them."""
    frame = pd.DataFrame(list(rows), columns=["batch_size", "trial_id", "step", metric])
    return frame.set_index(["batch_size", "trial_id", "step"])


def trials_table(rows: Sequence[tuple[object, ...]], columns: Sequence[str]) -> pd.DataFrame:
    """(batch size, trial id, *columns) rows, indexed by batch size and trial id."""
    frame = pd.DataFrame(list(rows), columns=["batch_size", "trial_id", *columns])
    return frame.set_index(["batch_size", "trial_id"])
