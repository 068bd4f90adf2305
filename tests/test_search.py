import math

import numpy as np
import pytest
from pydantic import ValidationError

from batchscale.search import (
    Dimension,
    SearchSpace,
    choice,
    derive_seed,
    loguniform,
    reverse_loguniform,
    uniform,
)

SPACE = SearchSpace(
    dimensions=(
        loguniform("learning_rate", 1e-4, 10.0),
        reverse_loguniform("momentum", 0.9, 0.9999),
        uniform("decay_steps", 300, 600, integer=True),
        choice("label_smoothing", [0.0, 0.01, 0.1]),
    )
)


def test_points_are_reproducible_and_extend_the_same_sequence() -> None:
    first = SPACE.points(10, seed=7)
    assert SPACE.points(10, seed=7) == first
    longer = SPACE.points(37, seed=7)
    assert longer[:10] == first
    assert SPACE.points(10, seed=8) != first


def test_points_respect_each_scale() -> None:
    points = SPACE.points(256, seed=3)
    lrs = np.array([p["learning_rate"] for p in points])
    momenta = np.array([p["momentum"] for p in points])
    decay = np.array([p["decay_steps"] for p in points])
    assert lrs.min() >= 1e-4 and lrs.max() <= 10
    # log-uniform: a quarter of the points in each quarter of the decades
    quarter = np.mean(np.log10(lrs) < -4 + 5 / 4)
    assert abs(quarter - 0.25) < 0.03
    # reverse log: 1 - momentum is log-uniform on [1e-4, 0.1]
    assert momenta.min() >= 0.9 and momenta.max() <= 0.9999
    assert abs(np.mean(np.log10(1 - momenta) < -2.5) - 0.5) < 0.03
    assert set(decay) <= set(range(300, 601)) and np.all(decay == np.round(decay))
    assert {p["label_smoothing"] for p in points} == {0.0, 0.01, 0.1}


def test_to_unit_inverts_from_unit() -> None:
    for dimension in SPACE.dimensions[:2]:
        for u in (0.0, 0.1, 0.5, 0.93):
            assert math.isclose(dimension.to_unit(dimension.from_unit(u)), u, abs_tol=1e-9)
    assert SPACE.edge_positions({"learning_rate": 1e-4, "momentum": 0.9999}) == pytest.approx(
        {"learning_rate": 0.0, "momentum": 1.0}
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scale": "log", "low": 1.0, "high": 1.0}, "empty or inverted"),
        ({"scale": "linear", "low": 2.0, "high": 1.0}, "empty or inverted"),
        ({"scale": "log", "low": 0.0, "high": 1.0}, "positive"),
        ({"scale": "log", "low": -1.0, "high": 1.0}, "positive"),
        ({"scale": "reverse_log", "low": 0.5, "high": 1.0}, "high < 1"),
        ({"scale": "discrete", "values": ()}, "non-empty"),
        ({"scale": "linear", "low": 1.0}, "both"),
    ],
)
def test_bad_dimensions_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Dimension(name="x", **kwargs)


def test_from_mapping_reads_toml_style_tables() -> None:
    space = SearchSpace.from_mapping({"learning_rate": {"scale": "log", "low": 0.01, "high": 1.0}})
    assert space.names == ["learning_rate"]
    assert space["learning_rate"].describe() == "log[0.01, 1]"


def test_derived_seeds_differ_by_every_part() -> None:
    seeds = {derive_seed(0, b, t) for b in (16, 32) for t in range(50)}
    assert len(seeds) == 100
    assert derive_seed(1, 16, 0) == derive_seed(1, 16, 0)
