"""Everything the report and ``show --json`` need from one study, computed once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from batchscale.analysis.budgets import (
    best_metric_under_example_budget,
    best_metric_under_step_budget,
    common_example_budget,
    common_step_budget,
)
from batchscale.analysis.checks import DesignWarning, collect_warnings, step_time_warnings
from batchscale.analysis.goals import GoalCurve, goal_curves
from batchscale.analysis.scaling import Regimes, ScalingFit, fit_measurements, regimes
from batchscale.analysis.steps_to_result import trials_reaching
from batchscale.analysis.winners import trial_outcomes, winners
from batchscale.search import SearchSpace
from batchscale.store import StudyStore


@dataclass
class StudyAnalysis:
    """One study's analysis: the curve, its winners, fit, regimes, goals and warnings.

    ``winners`` is indexed by batch size (see ``batchscale.analysis.winners``); ``reached``
    counts trials that reached the goal per batch size; ``outcomes`` labels every trial;
    ``best_under_steps`` and ``best_under_examples`` hold the best validation metric under
    the common step and example budgets (``step_budget``, ``example_budget``).
    """

    metric: str
    target: float
    maximize: bool
    winners: pd.DataFrame
    reached: pd.Series
    outcomes: pd.Series
    fit: ScalingFit | None
    regimes: Regimes
    goal_curves: list[GoalCurve]
    step_budget: int
    example_budget: int
    best_under_steps: pd.DataFrame
    best_under_examples: pd.DataFrame
    warnings: list[DesignWarning] = field(default_factory=list)

    @property
    def batch_sizes(self) -> list[int]:
        """Every batch size with measurements, ascending."""
        return [int(b) for b in self.winners.index]

    def json_summary(self) -> dict[str, Any]:
        """``fit`` (or ``None``), ``regimes``, ``goals`` and ``warnings``, ready for JSON."""
        return {
            "fit": None if self.fit is None else self.fit.as_dict(),
            "regimes": self.regimes.as_dict(),
            "goals": [curve.as_dict() for curve in self.goal_curves],
            "warnings": [warning.as_dict() for warning in self.warnings],
        }


def analyze(
    measurements: pd.DataFrame,
    trials: pd.DataFrame,
    metric: str,
    target: float,
    maximize: bool = False,
    *,
    search_space: SearchSpace | None = None,
    goals: Sequence[float] | None = None,
    stop_target: float | None = None,
    raced: bool = False,
    bootstrap_samples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    perfect_tolerance: float = 0.2,
    flat_tolerance: float = 0.15,
) -> StudyAnalysis:
    """Analyse a study given as its measurements and trials tables (from any source).

    ``metric`` is the validation column that defines the goal (``val/classification_error``,
    say). ``goals`` are compared with ``target`` for the fragile-goal check (default: 10%
    easier and harder); ``stop_target`` is the goal trials stopped at (harder goals are
    censored). The fit's interval is a bootstrap over trials with ``bootstrap_samples``
    resamples drawn from ``seed`` (0 samples: the least-squares interval). With ``raced``,
    trials were pruned once they could no longer win: how many reached the goal then says
    nothing about sensitivity (only "none reached" is flagged), and a resample without the
    winners has no steps to result (the pruned trials' would have come later, but unmeasured),
    so the interval is the least-squares one.
    """
    winning = winners(measurements, trials, metric, target, maximize)
    reached = trials_reaching(measurements, metric, target, maximize)
    fit = fit_measurements(
        measurements,
        metric,
        target,
        maximize,
        samples=0 if raced else bootstrap_samples,
        seed=seed,
        confidence=confidence,
    )
    curve_regimes = regimes(
        winning.index.to_numpy(dtype=float),
        winning["steps"].to_numpy(dtype=float, na_value=np.nan),
        perfect_tolerance=perfect_tolerance,
        flat_tolerance=flat_tolerance,
    )
    curves = goal_curves(measurements, metric, target, goals, maximize, stop_target)
    outcomes = trial_outcomes(measurements, trials, metric, target, maximize)
    budgets = trials["step_budget"] if "step_budget" in trials.columns else None
    step_budget = common_step_budget(measurements, budgets)
    example_budget = common_example_budget(measurements, budgets)
    return StudyAnalysis(
        metric=metric,
        target=target,
        maximize=maximize,
        winners=winning,
        reached=reached,
        outcomes=outcomes,
        fit=fit,
        regimes=curve_regimes,
        goal_curves=curves,
        step_budget=step_budget,
        example_budget=example_budget,
        best_under_steps=best_metric_under_step_budget(measurements, metric, step_budget, maximize),
        best_under_examples=best_metric_under_example_budget(
            measurements, metric, example_budget, maximize
        ),
        warnings=collect_warnings(
            winning,
            reached,
            fit,
            curves,
            search_space,
            outcomes,
            minimum_reached=1 if raced else 3,
        ),
    )


def store_search_space(store: StudyStore) -> SearchSpace | None:
    """The search space a store was run with, or ``None`` if it records none."""
    stored = store.metadata.get("search_space")
    return None if stored is None else SearchSpace.model_validate(stored)


@dataclass
class StoredStudy:
    """A study's tables and settings, read from its store once."""

    path: Path
    meta: dict[str, Any]
    measurements: pd.DataFrame
    trials: pd.DataFrame
    search_space: SearchSpace | None

    @classmethod
    def read(cls, store: StudyStore | Path | str) -> StoredStudy:
        """Read ``store`` (an open ``StudyStore``, or a path opened read-only and closed)."""
        opened = store if isinstance(store, StudyStore) else StudyStore.open(store, read_only=True)
        try:
            return cls(
                path=opened.path,
                meta=dict(opened.metadata),
                measurements=opened.measurements(),
                trials=opened.trials(),
                search_space=store_search_space(opened),
            )
        finally:
            if opened is not store:
                opened.close()

    def analyze(self, goals: Sequence[float] | None = None, **options: Any) -> StudyAnalysis:
        """``analyze`` with the study's own metric, goals, stop rule, mode and search space.

        ``options`` are passed on to ``analyze`` (``bootstrap_samples``, ``seed``, ...).
        """
        if self.measurements.empty:
            raise ValueError(f"{self.path} holds no measurements yet; run the study first")
        meta = self.meta
        analysis = analyze(
            self.measurements,
            self.trials,
            f"val/{meta['metric']}",
            float(meta["target"]),
            bool(meta["maximize"]),
            search_space=self.search_space,
            goals=goals if goals is not None else meta.get("goals"),
            stop_target=meta.get("stop_target"),
            raced=meta.get("mode") == "race",
            **options,
        )
        analysis.warnings += step_time_warnings(meta.get("step_times") or {})
        return analysis


def analyze_store(
    store: StudyStore | Path | str,
    goals: Sequence[float] | None = None,
    **options: Any,
) -> StudyAnalysis:
    """``analyze`` on a stored study (see ``StoredStudy.analyze``)."""
    return StoredStudy.read(store).analyze(goals, **options)


def fit_and_warnings(
    store: StudyStore | Path | str, goals: Sequence[float] | None = None
) -> dict[str, Any]:
    """What ``show --json`` adds: ``fit`` (or ``None``), ``regimes``, ``goals``, ``warnings``."""
    return analyze_store(store, goals).json_summary()
