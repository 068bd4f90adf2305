"""Numbers as tables and one-line summaries print them: the report's and the CLI's alike.

Free of plotting imports, so the command line reads as fast as it starts.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import pandas as pd


def _reads_as_another_value(text: str, number: float, distinct_from: Collection[float]) -> bool:
    """Whether ``text`` reads as a value ``number`` is not: 1 or -1 (``1.00`` for a momentum
    of 0.9996), or a goal in ``distinct_from`` (``0.3`` for an error of 0.29975 that beat it)."""
    shown = float(text)
    if shown == number:
        return False
    return abs(shown) == 1.0 or any(shown == float(goal) for goal in distinct_from)


def _significant(number: float, digits: int) -> str:
    """``number`` to ``digits`` significant digits, keeping the trailing zeros that tell a
    rounded value from an exact whole number (``76.0`` for 76.0000001, ``2.00`` for 1.9996)."""
    return f"{number:#.{digits}g}".rstrip(".")


def format_number(value: Any, digits: int = 3, distinct_from: Collection[float] = ()) -> str:
    """A table cell: ``-`` when missing, counts exact, other numbers to ``digits`` digits.

    Trailing zeros stay where the rounded text would otherwise read as a whole number, and
    more digits are given where it would read as 1 or as one of ``distinct_from`` (the goals a
    value is compared with).
    """
    if value is None or pd.isna(value):
        return "-"
    number = float(value)
    if number.is_integer():
        return f"{int(number):,}"
    rounded = float(f"{number:.{digits}g}")
    if abs(rounded) >= 1000:
        # Three significant digits, written out: 15,000 reads faster than 1.5e+04.
        return f"{rounded:,.0f}"
    text = f"{number:.{digits}g}"
    if "." not in text and "e" not in text:
        text = _significant(number, digits)
    while _reads_as_another_value(text, number, distinct_from) and digits < 12:
        digits += 1
        text = f"{number:.{digits}g}"
    return text


def column_cells(
    values: Sequence[Any], digits: int = 3, distinct_from: Collection[float] = ()
) -> list[str]:
    """One table column's cells, fractional values to ``digits`` significant digits.

    Trailing zeros are kept (15.0 beside 11.9 and 2.08), so a column reads at one precision; a
    value that would read as 1 or as one of ``distinct_from`` gets the digits it needs, alone.
    Missing values, counts and values that round to 1000 or more are written as
    ``format_number`` writes them.
    """
    cells = []
    for value in values:
        if value is None or pd.isna(value) or float(value).is_integer():
            cells.append(format_number(value, digits, distinct_from))
            continue
        number, places = float(value), digits
        text = _significant(number, places)
        while places < 12 and _reads_as_another_value(text, number, distinct_from):
            places += 1
            text = _significant(number, places)
        cells.append(format_number(value, digits, distinct_from) if "e" in text else text)
    return cells


def format_interval(
    interval: tuple[float, float] | None, bounds: tuple[float, float] | None = None
) -> str:
    """``[low, high]``; for B_crit, an end at the bottom of the range it is searched in reads
    ``≈ 0`` and one at the top ``unbounded``, as ``ScalingFit.b_crit_text`` does."""
    if interval is None:
        return ""
    low, high = format_number(interval[0]), format_number(interval[1])
    if bounds is not None:
        low = "≈ 0" if interval[0] <= bounds[0] * 1.01 else low
        high = "unbounded" if interval[1] >= bounds[1] / 1.01 else high
    return f"[{low}, {high}]"


def format_seconds(seconds: float | None) -> str:
    """``0.375 ms`` below a second, ``1.23 s`` above; ``-`` for none."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"
