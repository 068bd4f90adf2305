"""Shared fixtures: small real studies on real SQLite files."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchscale import Study, StudyConfig

TINY_NQM = {
    "workload": "nqm",
    "optimizer": "momentum",
    "batch_sizes": (4, 16, 64),
    "trials": 4,
    "target": 1.0,
    "step_budget": 120,
    "engine": "reference",
    "device": "cpu",
}


@pytest.fixture
def tiny_config() -> StudyConfig:
    """A study on the noisy quadratic model that runs in about a second."""
    return StudyConfig(**TINY_NQM)


@pytest.fixture
def tiny_store(tmp_path: Path, tiny_config: StudyConfig) -> Path:
    """The path of a finished tiny study."""
    path = tmp_path / "tiny.sqlite"
    Study(tiny_config, path).run()
    return path
