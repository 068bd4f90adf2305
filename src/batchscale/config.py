"""Validated study settings: from a TOML file, from flags, or from Python.

Every mistake becomes one ``ConfigError`` whose message names the setting and how to fix it.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    field_validator,
)

from batchscale.search import Count, Number, SearchSpace
from batchscale.workloads import OPTIMIZERS, Optimizer

DEFAULT_BATCH_SIZES = (16, 32, 64, 128, 256, 512, 1024, 2048)


class ConfigError(ValueError):
    """A setting that cannot be used; the message says which and how to fix it."""


def parse_batch_sizes(value: Any) -> tuple[int, ...]:
    """Batch sizes from ``"16,32"`` or a list, sorted; ``ValueError`` unless positive integers."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]  # one batch size, as TOML's batch_sizes = 16
    if isinstance(value, str):
        parts = [part.strip() for part in value.split(",")]
        if any(not part for part in parts) and any(parts):
            raise ValueError(f"batch sizes '{value}' have an empty entry; e.g. 16,32,64")
        value = [part for part in parts if part]
    if not isinstance(value, list | tuple):
        raise ValueError(
            f"batch sizes {value!r} are not a list of positive integers, e.g. 16,32,64"
        )
    if not value:
        raise ValueError("give at least one batch size, e.g. 16,32,64")
    sizes = []
    for item in value:
        text = str(item).removeprefix("+")
        # isdecimal, not isdigit: '²' is a digit that int() refuses.
        if isinstance(item, bool) or not text.isdecimal() or int(text) <= 0:
            raise ValueError(f"batch size '{item}' is not a positive integer")
        sizes.append(int(text))
    if len(set(sizes)) != len(sizes):
        raise ValueError(f"batch sizes repeat: {sizes}")
    return tuple(sorted(sizes))


MAX_SEED = 2**63 - 1


class StudyConfig(BaseModel):
    """Everything that defines a study. Unknown keys are refused."""

    # Infinite or NaN settings are refused: an infinite epoch budget would be stored before
    # anything failed.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    workload: str = "mnist1d-mlp"
    optimizer: Optimizer = "nesterov"
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    trials: Count = Field(default=24, ge=1, le=100_000)
    target: Number | None = None
    goals: tuple[Number, ...] | None = None
    step_budget: Count | None = Field(default=None, ge=1)
    epoch_budget: Number | None = Field(default=None, gt=0)
    train_size: Number | None = Field(default=None, gt=0)
    width: Count | None = Field(default=None, ge=1)
    data_dir: str | None = None
    search_space: dict[str, dict[str, Any]] | None = None
    # Trial seeds derive from it; torch's generators take 64-bit seeds.
    seed: Count = Field(default=0, ge=0, le=MAX_SEED)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    mode: Literal["race", "full"] = "race"
    engine: Literal["cohort", "reference"] = "cohort"
    eval_growth: Number = Field(default=1.1, gt=1.0, le=4.0)
    divergence_factor: Number = Field(default=10.0, gt=1.0)
    noise_scale: StrictBool = False
    # Where cohorts run: not part of what a study measures, so a study may resume elsewhere.
    executor: Literal["local", "ray"] = "local"
    ray_address: str | None = None

    @field_validator("batch_sizes", mode="before")
    @classmethod
    def _parse_batch_sizes(cls, value: Any) -> Any:
        return parse_batch_sizes(value)

    @field_validator("data_dir")
    @classmethod
    def _check_data_dir(cls, value: str | None) -> str | None:
        if value is not None and Path(value).exists() and not Path(value).is_dir():
            raise ValueError(
                f"{value} is a file, not a folder; pass the folder that holds the data sets"
            )
        return value

    @field_validator("goals", mode="before")
    @classmethod
    def _parse_goals(cls, value: Any) -> Any:
        given = value
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = (value,)  # one goal, as TOML's goals = 0.3
        if isinstance(value, str):
            try:
                value = tuple(float(part) for part in value.split(",") if part.strip())
            except ValueError:
                raise ValueError(f"goals '{given}' are not comma-separated numbers") from None
        if value is not None and not isinstance(value, list | tuple):
            raise ValueError(f"goals {given!r} are not a list of numbers, e.g. [0.27, 0.3]")
        if value is not None and len(value) == 0:
            # Else the default goals would run in their place, unannounced.
            raise ValueError(f"goals {given!r} hold no goal; give numbers, or leave goals out")
        return value

    def resolved_search_space(self, default: SearchSpace) -> SearchSpace:
        """The configured search space, or the workload's default for this optimizer."""
        if self.search_space is None:
            return default
        return SearchSpace.from_mapping(self.search_space)


def _first_error(error: ValidationError) -> str:
    detail = error.errors()[0]
    location = ".".join(str(part) for part in detail["loc"]) or "config"
    message = detail["msg"].removeprefix("Value error, ")
    if detail["type"] == "extra_forbidden":
        known = ", ".join(StudyConfig.model_fields)
        return f"unknown setting '{location}'; known settings: {known}"
    if detail["type"] == "literal_error" and location == "optimizer":
        return f"unknown optimizer {detail['input']!r}; known optimizers: {', '.join(OPTIMIZERS)}"
    return f"invalid setting '{location}': {message}"


def build_config(file: Path | None = None, **overrides: Any) -> StudyConfig:
    """Settings from ``file`` (TOML) with ``overrides`` (flags; ``None`` means unset) on top."""
    values: dict[str, Any] = {}
    if file is not None:
        try:
            values = tomllib.loads(Path(file).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {file} does not exist") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise ConfigError(f"config file {file} is not valid TOML: {error}") from None
    values.update({key: value for key, value in overrides.items() if value is not None})
    try:
        config = StudyConfig(**values)
    except ValidationError as error:
        raise ConfigError(_first_error(error)) from None
    if config.search_space is not None:
        try:
            SearchSpace.from_mapping(config.search_space)
        except ValueError as error:
            raise ConfigError(f"search_space: {error}") from None
    return config
