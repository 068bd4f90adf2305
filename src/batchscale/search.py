"""Search spaces and the quasi-random points that tune each batch size.

A search space is data: a list of dimensions, each with a scale. Points come from a scrambled
Sobol sequence (Bousquet et al. 2017) whose seed depends only on the study seed and the batch
size, so trial ``i`` at a batch size is always the same point and asking for more trials later
extends the same sequence.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    StrictBool,
    ValidationError,
    model_validator,
)
from scipy.stats import qmc

Scale = Literal["log", "linear", "reverse_log", "discrete"]


def _refuse_truth_values(value: Any) -> Any:
    # pydantic would read true as 1: a typo in a config must not become a setting.
    if isinstance(value, bool):
        raise ValueError(f"{str(value).lower()} is a truth value, not a number")
    return value


Number = Annotated[float, BeforeValidator(_refuse_truth_values)]
Count = Annotated[int, BeforeValidator(_refuse_truth_values)]


class Dimension(BaseModel):
    """One metaparameter: a range on a log, linear or reverse-log scale, or a set of values.

    ``reverse_log`` makes ``1 - value`` log-uniform (the paper's momentum scale), so its range
    must lie below 1.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    scale: Scale
    low: Number | None = None
    high: Number | None = None
    values: tuple[Number, ...] | None = None
    integer: StrictBool = False

    @model_validator(mode="after")
    def _check_range(self) -> Dimension:
        if self.integer and self.scale != "linear":
            raise ValueError(
                f"dimension '{self.name}' is {self.scale}: only a linear dimension takes "
                "'integer = true'"
            )
        if self.scale == "discrete":
            if not self.values:
                raise ValueError(
                    f"discrete dimension '{self.name}' needs a non-empty 'values' list"
                )
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"dimension '{self.name}' needs both 'low' and 'high'")
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError(f"dimension '{self.name}' has a non-finite bound")
        if self.low >= self.high:
            raise ValueError(
                f"dimension '{self.name}' has an empty or inverted range "
                f"[{self.low}, {self.high}]: 'low' must be below 'high'"
            )
        if self.integer and not (float(self.low).is_integer() and float(self.high).is_integer()):
            raise ValueError(
                f"integer dimension '{self.name}' needs whole-number bounds (rounded values "
                f"would leave [{self.low}, {self.high}])"
            )
        if self.scale == "log" and self.low <= 0:
            raise ValueError(
                f"log dimension '{self.name}' needs positive bounds, got low={self.low}"
            )
        if self.scale == "reverse_log" and self.high >= 1:
            raise ValueError(
                f"reverse-log dimension '{self.name}' needs high < 1 (1 - value is log-uniform), "
                f"got high={self.high}"
            )
        return self

    @property
    def extremes(self) -> tuple[float, float]:
        """The smallest and the largest value the dimension can take."""
        if self.values is not None:
            return min(self.values), max(self.values)
        assert self.low is not None and self.high is not None
        return self.low, self.high

    def from_unit(self, u: float) -> float:
        """Map a coordinate in [0, 1) to a value of this dimension on its own scale."""
        if self.scale == "discrete":
            assert self.values is not None
            return float(self.values[min(int(u * len(self.values)), len(self.values) - 1)])
        assert self.low is not None and self.high is not None
        if self.scale == "linear":
            value = self.low + u * (self.high - self.low)
        elif self.scale == "log":
            value = math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
        else:
            top, bottom = math.log(1 - self.low), math.log(1 - self.high)
            value = 1 - math.exp(top + u * (bottom - top))
        return float(round(value)) if self.integer else value

    def to_unit(self, value: float) -> float:
        """Where ``value`` lies in this dimension's range, in its own scale (0 = low, 1 = high)."""
        if self.scale == "discrete":
            assert self.values is not None
            if len(self.values) == 1:
                return 0.5
            return sorted(self.values).index(value) / (len(self.values) - 1)
        assert self.low is not None and self.high is not None
        if self.scale == "linear":
            return (value - self.low) / (self.high - self.low)
        if self.scale == "log":
            return math.log(value / self.low) / math.log(self.high / self.low)
        return math.log((1 - value) / (1 - self.low)) / math.log((1 - self.high) / (1 - self.low))

    def describe(self) -> str:
        """A short human-readable form, e.g. ``log[0.001, 10]``."""
        if self.scale == "discrete":
            return "{" + ", ".join(f"{v:g}" for v in self.values or ()) + "}"
        return f"{self.scale}[{self.low:g}, {self.high:g}]"


class SearchSpace(BaseModel):
    """An ordered set of dimensions; the order fixes which Sobol coordinate drives which one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dimensions: tuple[Dimension, ...]

    @model_validator(mode="after")
    def _unique_names(self) -> SearchSpace:
        names = [d.name for d in self.dimensions]
        if len(set(names)) != len(names):
            raise ValueError(f"search space names a dimension twice: {names}")
        if not names:
            raise ValueError("search space has no dimensions")
        return self

    @property
    def names(self) -> list[str]:
        """The dimension names, in order."""
        return [d.name for d in self.dimensions]

    def __getitem__(self, name: str) -> Dimension:
        for dimension in self.dimensions:
            if dimension.name == name:
                return dimension
        raise KeyError(name)

    def points(self, count: int, seed: int) -> list[dict[str, float]]:
        """The first ``count`` quasi-random points for ``seed``; more points extend fewer."""
        if count <= 0:
            return []
        sampler = qmc.Sobol(d=len(self.dimensions), scramble=True, rng=seed)
        with warnings.catch_warnings():
            # Sobol balance is only exact at powers of two; any prefix is still a fine design.
            warnings.simplefilter("ignore", UserWarning)
            units = sampler.random(count)
        return [
            {d.name: d.from_unit(float(u)) for d, u in zip(self.dimensions, row, strict=True)}
            for row in units
        ]

    def edge_positions(self, point: dict[str, float]) -> dict[str, float]:
        """Each continuous dimension's position of ``point`` in [0, 1] on the dimension's scale."""
        return {
            d.name: d.to_unit(point[d.name])
            for d in self.dimensions
            if d.scale != "discrete" and d.name in point
        }

    @classmethod
    def from_mapping(cls, spec: dict[str, Any]) -> SearchSpace:
        """Build a space from ``{name: {"scale": ..., "low": ..., "high": ...}}`` (as in TOML).

        Raises ``ValueError`` with one line that names the dimension at fault.
        """
        dimensions = []
        for name, body in spec.items():
            if not isinstance(body, dict):
                raise ValueError(f"dimension '{name}' must be a table of {_DIMENSION_KEYS}")
            if "name" in body:
                # The table's own name is the dimension's: a second one is a mistake.
                raise ValueError(
                    f"dimension '{name}' has an unknown key 'name'; it takes {_DIMENSION_KEYS}"
                )
            try:
                dimensions.append(Dimension(name=name, **body))
            except ValidationError as error:
                raise ValueError(_dimension_error(name, error)) from None
        return cls(dimensions=tuple(dimensions))


_DIMENSION_KEYS = ", ".join(key for key in Dimension.model_fields if key != "name")


def _dimension_error(name: str, error: ValidationError) -> str:
    """The first problem of dimension ``name``, in one line."""
    detail = error.errors()[0]
    key = ".".join(str(part) for part in detail["loc"])
    if detail["type"] == "extra_forbidden":
        return f"dimension '{name}' has an unknown key '{key}'; it takes {_DIMENSION_KEYS}"
    message = detail["msg"].removeprefix("Value error, ")
    if not key:
        return message  # the range checks name the dimension themselves
    return f"dimension '{name}': '{key}' {message[0].lower()}{message[1:]}"


def loguniform(name: str, low: float, high: float) -> Dimension:
    """A dimension whose logarithm is uniform on [log low, log high]."""
    return Dimension(name=name, scale="log", low=low, high=high)


def uniform(name: str, low: float, high: float, integer: bool = False) -> Dimension:
    """A dimension uniform on [low, high]."""
    return Dimension(name=name, scale="linear", low=low, high=high, integer=integer)


def reverse_loguniform(name: str, low: float, high: float) -> Dimension:
    """A dimension where ``1 - value`` is log-uniform (momentum in [0.9, 0.9999], say)."""
    return Dimension(name=name, scale="reverse_log", low=low, high=high)


def choice(name: str, values: Sequence[float]) -> Dimension:
    """A dimension that takes one of ``values``."""
    return Dimension(name=name, scale="discrete", values=tuple(float(v) for v in values))


def derive_seed(*parts: int) -> int:
    """A reproducible 62-bit seed from integers (study seed, batch size, trial id, ...)."""
    state = np.random.SeedSequence(list(parts)).generate_state(2, np.uint32)
    return (int(state[0]) << 30) ^ int(state[1])
