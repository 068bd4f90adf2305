"""Shared fixtures: small real studies on real SQLite files."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchscale import Study, StudyConfig
from batchscale.report import write_report
from tests.synthetic_study import build_synthetic_store

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


@pytest.fixture(scope="session")
def synthetic_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A study with a known S(B) (see ``synthetic_study``), written through the real store."""
    return build_synthetic_store(tmp_path_factory.mktemp("synthetic") / "synthetic.sqlite")


@pytest.fixture(scope="session")
def trained_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real trained study shared by the analysis and report tests (about five seconds).

    The noisy quadratic model at four batch sizes; racing prunes some trials, and the easy
    goal is reached at every batch size, so the fit, the figures and the checks all have data.
    """
    path = tmp_path_factory.mktemp("trained") / "trained.sqlite"
    config = StudyConfig(
        workload="nqm",
        optimizer="momentum",
        batch_sizes=(8, 32, 128, 512),
        trials=4,
        step_budget=100,
        target=0.5,
        engine="reference",
        mode="race",
        device="cpu",
    )
    Study(config, path).run()
    return path


@pytest.fixture(scope="session")
def synthetic_report(synthetic_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``report.html`` of the synthetic study, its figures beside it."""
    return write_report(synthetic_store, tmp_path_factory.mktemp("report"), bootstrap_samples=100)
