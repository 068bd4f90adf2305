"""The scaling law S(B) = S_min (1 + B_crit / B) and the regimes of a measured curve.

McCandlish et al. (2018) derive that steps S and examples E = B S trade off as
(S / S_min - 1)(E / E_min - 1) = 1, which gives S(B) = S_min (1 + B_crit / B) with the critical
batch size B_crit = E_min / S_min. The fit here is least squares on log steps, because steps to
result spans orders of magnitude and its error (the evaluation schedule's resolution, the luck
of the search) is relative, not absolute.

The regimes come from the measured curve itself, not from the fit: the local slope of log steps
against log batch size is -1 under perfect scaling and 0 once extra parallelism buys nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from scipy import optimize, special, stats

from batchscale.analysis.steps_to_result import first_hit_steps, steps_to_result
from batchscale.formatting import format_interval, format_number

# How far beyond the measured batch sizes B_crit may move, as a factor on each side: beyond
# it the curve is indistinguishable from pure 1/B (or from flat) over the measured range.
B_CRIT_RANGE_FACTOR = 1000.0
_GRID_POINTS = 400
_CHUNK = 256

FitQuantity = Literal["s_min", "b_crit", "e_min"]

# Steps to result per batch size: numbers, with None, NaN or pandas' NA where the goal was missed.
Steps = ArrayLike | Sequence[float | None]

Regime = Literal["perfect scaling", "diminishing returns", "maximal data parallelism"]


@dataclass(frozen=True)
class ScalingFit:
    """A fit of S(B) = S_min (1 + B_crit / B), with E_min = S_min B_crit.

    The intervals are ``(low, high)`` at ``confidence``, or ``None`` where they cannot be
    estimated (two points fit exactly; a B_crit pinned at its bound is not identified; a
    least-squares interval wider than the range B_crit was searched in bounds nothing).
    """

    s_min: float
    b_crit: float
    batch_sizes: tuple[float, ...]
    steps: tuple[float, ...]
    rms_log_residual: float
    b_crit_at_bound: bool
    confidence: float
    interval_method: str
    s_min_interval: tuple[float, float] | None = None
    b_crit_interval: tuple[float, float] | None = None
    e_min_interval: tuple[float, float] | None = None

    @property
    def e_min(self) -> float:
        """Fewest examples to reach the goal (the limit of infinitely small batches)."""
        return self.s_min * self.b_crit

    @property
    def b_crit_bounds(self) -> tuple[float, float]:
        """The range the fit searched B_crit in: the batch sizes widened 1000x each way."""
        return (
            min(self.batch_sizes) / B_CRIT_RANGE_FACTOR,
            max(self.batch_sizes) * B_CRIT_RANGE_FACTOR,
        )

    @property
    def located_b_crit(self) -> float | None:
        """B_crit, or None where it is pinned at the edge of the range it was searched in."""
        return None if self.b_crit_at_bound else self.b_crit

    def b_crit_text(self) -> str:
        """B_crit as the tables write it. Pinned at the top of its searched range, it reads
        ``unbounded`` (steps fell as 1/B throughout); at the bottom, ``≈ 0`` (they never fell)."""
        if not self.b_crit_at_bound:
            return format_number(self.b_crit)
        return "unbounded" if self.b_crit > max(self.batch_sizes) else "≈ 0"

    def predict(self, batch_sizes: ArrayLike) -> NDArray[np.float64]:
        """Steps the fitted curve predicts at ``batch_sizes``."""
        sizes = np.asarray(batch_sizes, dtype=float)
        return np.asarray(self.s_min * (1.0 + self.b_crit / sizes), dtype=float)

    def interval_text(self, quantity: FitQuantity) -> str:
        """The interval of ``quantity`` as ``[low, high]``, or ``""`` where it has none.

        An end of B_crit's interval at the bottom of its searched range reads ``≈ 0``, one at
        the top ``unbounded``; E_min = S_min B_crit follows B_crit's open ends.
        """
        if quantity == "s_min":
            return format_interval(self.s_min_interval)
        b_crit = format_interval(self.b_crit_interval, self.b_crit_bounds)
        if quantity == "b_crit":
            return b_crit
        e_min = format_interval(self.e_min_interval)
        if not e_min or not b_crit:
            return e_min
        low, high = e_min[1:-1].split(", ")
        b_low, b_high = b_crit[1:-1].split(", ")
        low = b_low if b_low == "≈ 0" else low
        high = b_high if b_high == "unbounded" else high
        return f"[{low}, {high}]"

    def describe(self) -> str:
        """One line: S_min, B_crit and E_min with their intervals, written as the report writes
        them (see ``b_crit_text`` and ``interval_text``)."""

        def quantity(name: str, shown: str, interval: str) -> str:
            named = f"{name} {shown}" if shown.startswith("≈") else f"{name} = {shown}"
            if not interval:
                # Where the other quantities have one, say so, as the report's "no interval".
                return named + (" (no interval)" if self.interval_method != "none" else "")
            return f"{named} {interval}"

        parts = [
            quantity("S_min", format_number(self.s_min), self.interval_text("s_min")),
            quantity("B_crit", self.b_crit_text(), self.interval_text("b_crit")),
            quantity("E_min", format_number(self.e_min), self.interval_text("e_min")),
        ]
        if self.interval_method == "none":
            how = (
                "no intervals: two batch sizes fit exactly, or B_crit sits at the edge of the "
                "range it was searched in"
            )
        else:
            how = f"{round(self.confidence * 100)}% intervals, {self.interval_method}"
        return f"fit S(B) = S_min (1 + B_crit / B): {', '.join(parts)} ({how})"

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form (what ``show --json`` prints as ``fit``)."""
        return {
            "s_min": self.s_min,
            "b_crit": self.b_crit,
            "e_min": self.e_min,
            "interval": {
                "confidence": self.confidence,
                "method": self.interval_method,
                "s_min": _pair(self.s_min_interval),
                "b_crit": _pair(self.b_crit_interval),
                "e_min": _pair(self.e_min_interval),
            },
            "batch_sizes": list(self.batch_sizes),
            "steps": list(self.steps),
            "rms_log_residual": self.rms_log_residual,
            "b_crit_at_bound": self.b_crit_at_bound,
        }


def _pair(interval: tuple[float, float] | None) -> list[float] | None:
    return None if interval is None else [interval[0], interval[1]]


def _usable(
    batch_sizes: ArrayLike, steps: Steps
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Batch sizes and steps as float arrays, keeping only finite, positive pairs."""
    sizes = np.asarray(batch_sizes, dtype=float)
    # Through a nullable Series so that None and pandas' NA (an unreached goal) become NaN.
    counts = pd.Series(steps, dtype="Float64").to_numpy(dtype=float, na_value=np.nan)
    if sizes.shape != counts.shape or sizes.ndim != 1:
        raise ValueError(
            f"batch_sizes and steps must be 1-D and of equal length, got shapes "
            f"{sizes.shape} and {counts.shape}"
        )
    keep = np.isfinite(sizes) & np.isfinite(counts) & (sizes > 0) & (counts > 0)
    return sizes[keep], counts[keep]


def fittable(batch_sizes: ArrayLike, steps: Steps) -> bool:
    """Whether the goal was reached after a positive number of steps at two or more batch sizes.

    A goal the untrained model already meets (steps to result 0) says nothing about scaling.
    """
    sizes, _ = _usable(batch_sizes, steps)
    return len(np.unique(sizes)) >= 2


def untrained_batch_sizes(batch_sizes: ArrayLike, steps: Steps) -> list[int]:
    """Batch sizes whose steps to result is 0: the untrained model already meets the goal."""
    counts = pd.Series(steps, dtype="Float64").to_numpy(dtype=float, na_value=np.nan)
    return [
        int(b) for b, s in zip(np.asarray(batch_sizes, dtype=float), counts, strict=True) if s == 0
    ]


def no_fit_reason(batch_sizes: ArrayLike, steps: Steps) -> str:
    """Why ``fittable`` is false, as the end of "the goal was ...".

    A goal the untrained model meets counts as reached, but not as a point of the curve: said
    so, since the fix is then a harder goal, not more trials.
    """
    untrained = untrained_batch_sizes(batch_sizes, steps)
    if not untrained:
        return "reached at fewer than two batch sizes"
    listed = ", ".join(str(b) for b in untrained)
    return (
        "reached after training at fewer than two batch sizes (the untrained model meets it "
        f"at {listed})"
    )


def _log_bounds(sizes: NDArray[np.float64]) -> tuple[float, float]:
    return (
        math.log(sizes.min() / B_CRIT_RANGE_FACTOR),
        math.log(sizes.max() * B_CRIT_RANGE_FACTOR),
    )


def _fit_log_space(
    log_b: NDArray[np.float64], log_s: NDArray[np.float64], bounds: tuple[float, float]
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Least squares on log S = log S_min + log(1 + B_crit / B) in (log S_min, log B_crit).

    Returns the parameters, the residuals and the Jacobian at the solution. For a fixed B_crit
    the best log S_min is a mean, so a grid over log B_crit finds the global basin first and
    the local solver only polishes it: the profile can be flat over decades, where a local
    solver started at a guess stalls.
    """
    low, high = bounds
    grid = np.linspace(low, high, _GRID_POINTS)
    shape = np.logaddexp(0.0, grid[:, None] - log_b[None, :])
    offsets = (log_s[None, :] - shape).mean(axis=1)
    errors = ((log_s[None, :] - shape - offsets[:, None]) ** 2).sum(axis=1)
    best = int(np.argmin(errors))
    # The solver needs a start strictly inside the bounds.
    margin = 1e-9 * (high - low)
    start = np.array([offsets[best], min(max(grid[best], low + margin), high - margin)])

    def residuals(theta: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.asarray(theta[0] + np.logaddexp(0.0, theta[1] - log_b) - log_s)

    def jacobian(theta: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.column_stack([np.ones_like(log_b), special.expit(theta[1] - log_b)])

    solution = optimize.least_squares(
        residuals, start, jac=jacobian, bounds=([-np.inf, low], [np.inf, high]), method="trf"
    )
    theta = np.asarray(solution.x, dtype=float)
    return theta, residuals(theta), jacobian(theta)


def fit_steps_to_result(
    batch_sizes: ArrayLike,
    steps: Steps,
    *,
    replicates: ArrayLike | None = None,
    confidence: float = 0.95,
) -> ScalingFit:
    """Fit S(B) = S_min (1 + B_crit / B) to any steps-to-result numbers.

    Pairs with a missing, zero or non-finite step count are left out (the goal was not reached
    there). ``replicates`` is an optional ``(samples, len(batch_sizes))`` array of resampled
    steps (for example from ``bootstrap_steps_to_result``): each row is refitted and the
    interval is the percentile interval of those fits. Without replicates, the interval comes
    from the least-squares covariance (a t interval in log space), which needs three or more
    points. Raises ``ValueError`` when fewer than two distinct batch sizes remain.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    sizes, counts = _usable(batch_sizes, steps)
    if len(np.unique(sizes)) < 2:
        raise ValueError(
            f"the fit needs steps to result at two or more batch sizes; got {len(np.unique(sizes))}"
        )
    log_b, log_s = np.log(sizes), np.log(counts)
    bounds = _log_bounds(sizes)
    theta, residual, jac = _fit_log_space(log_b, log_s, bounds)
    # Within 1% of the log range of a bound: the data do not locate B_crit.
    at_bound = min(theta[1] - bounds[0], bounds[1] - theta[1]) < 0.01 * (bounds[1] - bounds[0])
    fit = ScalingFit(
        s_min=float(math.exp(theta[0])),
        b_crit=float(math.exp(theta[1])),
        batch_sizes=tuple(float(b) for b in sizes),
        steps=tuple(float(s) for s in counts),
        rms_log_residual=float(np.sqrt(np.mean(residual**2))),
        b_crit_at_bound=bool(at_bound),
        confidence=confidence,
        interval_method="none",
    )
    if replicates is not None:
        return replace(fit, **_bootstrap_intervals(batch_sizes, steps, replicates, confidence))
    dof = len(sizes) - 2
    if dof < 1 or at_bound:
        return fit
    variance = float(residual @ residual) / dof
    covariance = variance * np.linalg.pinv(jac.T @ jac)
    quantile = float(stats.t.ppf(0.5 + confidence / 2.0, dof))

    def interval(log_value: float, log_variance: float) -> tuple[float, float] | None:
        half = quantile * math.sqrt(max(log_variance, 0.0))
        # Wider than the whole range B_crit was searched in: the data do not bound the
        # parameter (a curve flat or falling as 1/B throughout, short of the bound itself).
        if not half <= bounds[1] - bounds[0]:
            return None
        return math.exp(log_value - half), math.exp(log_value + half)

    return replace(
        fit,
        interval_method="least-squares covariance",
        s_min_interval=interval(theta[0], covariance[0, 0]),
        b_crit_interval=interval(theta[1], covariance[1, 1]),
        e_min_interval=interval(theta[0] + theta[1], float(covariance.sum())),
    )


def _fit_grid(
    log_b: NDArray[np.float64], log_s: NDArray[np.float64], bounds: tuple[float, float]
) -> NDArray[np.float64]:
    """``_fit_log_space`` for many curves at once, ``log_s`` of shape (curves, points).

    The profile over the log B_crit grid is refined by a parabola through the grid minimum and
    its neighbours instead of a solver per curve: a thousand bootstrap fits then cost one array
    operation, and the grid spacing (about 5% in B_crit) is far below any bootstrap spread.
    Returns (curves, 2) parameters (log S_min, log B_crit).
    """
    grid = np.linspace(bounds[0], bounds[1], _GRID_POINTS)
    step = grid[1] - grid[0]
    shape = np.logaddexp(0.0, grid[:, None] - log_b[None, :])
    residuals = log_s[:, None, :] - shape[None, :, :]
    errors = residuals.var(axis=2)
    best = np.argmin(errors, axis=1)
    inner = np.clip(best, 1, _GRID_POINTS - 2)
    rows = np.arange(len(log_s))
    before, at, after = (errors[rows, inner + k] for k in (-1, 0, 1))
    curvature = before - 2.0 * at + after
    safe = np.where(curvature > 0, curvature, 1.0)
    shift = np.where(curvature > 0, np.clip(0.5 * (before - after) / safe, -1.0, 1.0), 0.0)
    # A minimum on the grid's edge stays there: B_crit is at its bound, not between points.
    log_b_crit = np.where(best == inner, grid[inner] + shift * step, grid[best])
    log_s_min = (log_s - np.logaddexp(0.0, log_b_crit[:, None] - log_b[None, :])).mean(axis=1)
    return np.column_stack([log_s_min, log_b_crit])


def _bootstrap_intervals(
    batch_sizes: ArrayLike, steps: Steps, replicates: ArrayLike, confidence: float
) -> dict[str, Any]:
    sizes = np.asarray(batch_sizes, dtype=float)
    rows = np.asarray(replicates, dtype=float)
    if rows.ndim != 2 or rows.shape[1] != len(sizes):
        raise ValueError(f"replicates must have shape (samples, {len(sizes)}), got {rows.shape}")
    point = np.asarray(steps, dtype=float)
    reached = np.isfinite(point) & (point > 0) & np.isfinite(sizes) & (sizes > 0)
    # Only resamples that reach the goal at every batch size the estimate rests on are fitted:
    # pooling fits over other sets of batch sizes would mix different curves.
    complete = rows[(np.isfinite(rows[:, reached]) & (rows[:, reached] > 0)).all(axis=1)]
    kept = sizes[reached]
    estimates = [
        # In chunks, so the (curves, grid, points) array stays a few megabytes.
        _fit_grid(
            np.log(kept), np.log(complete[start : start + _CHUNK, reached]), _log_bounds(kept)
        )
        for start in range(0, len(complete), _CHUNK)
    ]
    lost = len(rows) - len(complete)
    method = f"bootstrap over trials ({len(complete)} of {len(rows)} resamples fitted)"
    values = np.exp(np.concatenate(estimates)) if estimates else np.empty((0, 2))
    intervals = {
        "s_min_interval": _worst_case_percentiles(values[:, 0], lost, confidence),
        "b_crit_interval": _worst_case_percentiles(values[:, 1], lost, confidence),
        "e_min_interval": _worst_case_percentiles(values[:, 0] * values[:, 1], lost, confidence),
    }
    if lost and intervals["s_min_interval"] is None:
        method = (
            f"bootstrap over trials: {lost} of {len(rows)} resamples miss the goal at a batch "
            "size where few trials reached it, too many for an interval"
        )
    return {"interval_method": method, **intervals}


def _worst_case_percentiles(
    fitted: NDArray[np.float64], lost: int, confidence: float
) -> tuple[float, float] | None:
    """The percentile interval over ``fitted`` and ``lost`` resamples that have no fit.

    A lost resample's fit could lie on either side, so each end is read as if every lost one
    lay beyond it; where that leaves an end outside the fitted values there is no interval.
    Without lost resamples these are the plain order-statistic percentiles.
    """
    total = len(fitted) + lost
    tail = (1.0 - confidence) / 2.0
    low = math.floor(tail * (total - 1)) - lost
    high = math.ceil((1.0 - tail) * (total - 1))
    if total == 0 or low < 0 or high >= len(fitted):
        return None
    ordered = np.sort(fitted)
    return float(ordered[low]), float(ordered[high])


def bootstrap_steps_to_result(
    measurements: pd.DataFrame,
    metric: str,
    target: float,
    maximize: bool = False,
    *,
    samples: int = 1000,
    seed: int = 0,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Steps to result recomputed on trials resampled with replacement within each batch size.

    Returns the sorted batch sizes and a ``(samples, batch sizes)`` array (``NaN`` where a
    resample has no trial that reached the goal). Steps to result is a minimum over trials, so
    a resample can only match or exceed the measured value: the resulting interval says how
    much the answer hangs on the luckiest few trials, and it sits above the estimate.
    """
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    hits = first_hit_steps(measurements, metric, target, maximize)
    rng = np.random.default_rng(seed)
    sizes = np.sort(hits.index.get_level_values("batch_size").unique().to_numpy(dtype=float))
    result = np.full((samples, len(sizes)), np.nan)
    for column, batch_size in enumerate(sizes):
        values = hits.xs(batch_size, level="batch_size").to_numpy(dtype=float)
        values = np.where(np.isnan(values), np.inf, values)
        draws = rng.integers(0, len(values), size=(samples, len(values)))
        best = values[draws].min(axis=1)
        result[:, column] = np.where(np.isinf(best), np.nan, best)
    return sizes, result


def fit_measurements(
    measurements: pd.DataFrame,
    metric: str,
    target: float,
    maximize: bool = False,
    *,
    samples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> ScalingFit | None:
    """The scaling fit of a study's steps to result, its interval bootstrapped over trials.

    ``None`` when the goal was reached at fewer than two batch sizes. ``samples=0`` skips the
    bootstrap and uses the least-squares interval instead.
    """
    curve = steps_to_result(measurements, metric, target, maximize)
    sizes = curve.index.to_numpy(dtype=float)
    steps = curve["steps"].to_numpy(dtype=float, na_value=np.nan)
    if not fittable(sizes, steps):
        return None
    replicates = None
    if samples > 0:
        boot_sizes, replicates = bootstrap_steps_to_result(
            measurements, metric, target, maximize, samples=samples, seed=seed
        )
        assert np.array_equal(boot_sizes, sizes)
    return fit_steps_to_result(sizes, steps, replicates=replicates, confidence=confidence)


@dataclass(frozen=True)
class Regimes:
    """The three regimes read off the measured curve's local slopes.

    ``slopes[i]`` is the slope of log steps against log batch size between ``batch_sizes[i]``
    and ``batch_sizes[i + 1]`` (batch sizes where the goal was reached, in order).
    ``perfect_until`` is the largest batch size up to which every slope from the smallest batch
    size stays at or below ``-1 + perfect_tolerance``; ``maximal_from`` is the smallest batch
    size from which every slope to the largest one stays at or above ``-flat_tolerance``.
    Either is ``None`` where the measured curve never shows that regime.
    """

    batch_sizes: tuple[float, ...]
    steps: tuple[float, ...]
    slopes: tuple[float, ...]
    perfect_until: float | None
    maximal_from: float | None
    perfect_tolerance: float
    flat_tolerance: float

    def regime_of(self, batch_size: float) -> Regime | None:
        """The regime ``batch_size`` falls in, or ``None`` outside the measured curve."""
        if not self.slopes or not self.batch_sizes[0] <= batch_size <= self.batch_sizes[-1]:
            return None
        if self.perfect_until is not None and batch_size <= self.perfect_until:
            return "perfect scaling"
        if self.maximal_from is not None and batch_size >= self.maximal_from:
            return "maximal data parallelism"
        return "diminishing returns"

    def describe(self) -> str:
        """One plain sentence for a report."""
        if not self.slopes:
            return "Too few batch sizes reached the goal to read the regimes off the curve."

        def size(value: float) -> str:
            return f"{value:g}"

        parts = []
        if self.perfect_until is None:
            first, second = self.batch_sizes[0], self.batch_sizes[1]
            # Named by the actual step between batch sizes: 64 to 256 is not a doubling.
            ratio = second / first
            growth = "doubling the batch size" if ratio == 2 else f"a {ratio:g}-fold larger batch"
            parts.append(
                f"Perfect scaling is not seen: already from batch size {size(first)} to "
                f"{size(second)}, {growth} saves fewer steps than perfect scaling would."
            )
        elif self.perfect_until == self.batch_sizes[-1]:
            parts.append(
                "Perfect scaling holds across every batch size that reached the goal, up to "
                f"{size(self.perfect_until)}."
            )
        else:
            parts.append(f"Perfect scaling holds up to batch size {size(self.perfect_until)}.")
        if self.maximal_from is None:
            parts.append(
                "Larger batches still save steps at the largest batch size that reached the "
                f"goal ({size(self.batch_sizes[-1])}): maximal data parallelism is not reached."
            )
        else:
            parts.append(
                f"From batch size {size(self.maximal_from)} on, more parallelism buys almost "
                "nothing (maximal data parallelism)."
            )
        parts.append(
            f"(Perfect scaling: local slope at most {-1 + self.perfect_tolerance:g}; "
            f"no gain: slope at least {-self.flat_tolerance:g}.)"
        )
        return " ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {
            "perfect_until": self.perfect_until,
            "maximal_from": self.maximal_from,
            "slopes": list(self.slopes),
            "batch_sizes": list(self.batch_sizes),
            "perfect_tolerance": self.perfect_tolerance,
            "flat_tolerance": self.flat_tolerance,
        }


def local_slopes(batch_sizes: ArrayLike, steps: Steps) -> NDArray[np.float64]:
    """Slopes of log steps against log batch size between consecutive reached batch sizes."""
    sizes, counts = _usable(batch_sizes, steps)
    order = np.argsort(sizes)
    log_b, log_s = np.log(sizes[order]), np.log(counts[order])
    return np.asarray(np.diff(log_s) / np.diff(log_b), dtype=float)


def regimes(
    batch_sizes: ArrayLike,
    steps: Steps,
    *,
    perfect_tolerance: float = 0.2,
    flat_tolerance: float = 0.15,
) -> Regimes:
    """Name the regimes of a measured steps-to-result curve from its local slopes.

    A segment scales perfectly when its slope is at most ``-1 + perfect_tolerance`` (steeper
    counts too: small-batch noise in the search can make a segment look super-linear). The
    default 0.2 means doubling the batch size cuts steps by at least 43% instead of 50%; a
    geometric evaluation schedule with growth 1.1 alone can move a slope over one doubling by
    about 0.14, so a tighter tolerance would mostly measure the schedule. A segment buys almost
    nothing when its slope is at least ``-flat_tolerance``: with 0.15, doubling the batch size
    saves less than 10% of the steps. Unreached batch sizes (missing steps) are skipped.
    """
    if perfect_tolerance < 0 or flat_tolerance < 0 or perfect_tolerance + flat_tolerance >= 1:
        raise ValueError(
            "tolerances must be non-negative with perfect_tolerance + flat_tolerance < 1, "
            f"got {perfect_tolerance} and {flat_tolerance}"
        )
    sizes, counts = _usable(batch_sizes, steps)
    order = np.argsort(sizes)
    sizes, counts = sizes[order], counts[order]
    slopes = local_slopes(sizes, counts)
    perfect_until = None
    for index, slope in enumerate(slopes):
        if slope > -1.0 + perfect_tolerance:
            break
        perfect_until = float(sizes[index + 1])
    maximal_from = None
    for index in range(len(slopes) - 1, -1, -1):
        if slopes[index] < -flat_tolerance:
            break
        maximal_from = float(sizes[index])
    return Regimes(
        batch_sizes=tuple(float(b) for b in sizes),
        steps=tuple(float(s) for s in counts),
        slopes=tuple(float(s) for s in slopes),
        perfect_until=perfect_until,
        maximal_from=maximal_from,
        perfect_tolerance=perfect_tolerance,
        flat_tolerance=flat_tolerance,
    )
