"""Winners, trial outcomes, budgets, goals and the whole-study analysis on hand-made data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from batchscale.analysis import (
    analyze,
    analyze_store,
    best_metric,
    best_metric_under_example_budget,
    best_metric_under_step_budget,
    common_example_budget,
    common_step_budget,
    effective_learning_rate,
    first_hit_steps,
    fit_and_warnings,
    goal_curves,
    neighbouring_goals,
    steps_at_goals,
    stops_at_goal,
    trial_outcomes,
    winners,
)
from batchscale.analysis.analyze import StoredStudy
from tests.synthetic_study import B_CRIT, S_MIN, TARGET
from tests.tables import measurements_table, trials_table


def frame(rows: list[tuple[int, int, int, float, float]]) -> pd.DataFrame:
    """Measurements from (batch size, trial, step, val/error, test/error) rows."""
    data = pd.DataFrame(rows, columns=["batch_size", "trial_id", "step", "val/error", "test/error"])
    return data.set_index(["batch_size", "trial_id", "step"])


MEASUREMENTS = frame(
    [
        # B=16: trial 0 reaches the goal at step 40 and keeps going; trial 1 at 30 (wins).
        (16, 0, 10, 0.5, 0.55),
        (16, 0, 40, 0.08, 0.09),
        (16, 0, 80, 0.03, 0.04),
        (16, 1, 10, 0.4, 0.45),
        (16, 1, 30, 0.09, 0.12),
        # B=64: trial 0 diverges, trial 1 never gets there, trial 2 is pruned.
        (64, 0, 10, 2.0, 2.0),
        (64, 1, 10, 0.6, 0.6),
        (64, 1, 80, 0.2, 0.21),
        (64, 2, 10, 0.7, 0.7),
    ]
)
TRIALS = pd.DataFrame(
    {
        "batch_size": [16, 16, 64, 64, 64],
        "trial_id": [0, 1, 0, 1, 2],
        "status": ["COMPLETE", "COMPLETE", "INFEASIBLE", "COMPLETE", "PRUNED"],
        "seed": [1, 2, 3, 4, 5],
        "step_budget": [80, 80, 80, 80, 80],
        "train_time": [1.0, 2.0, 0.1, 1.0, 0.2],
        "learning_rate": [0.1, 0.2, 5.0, 0.01, 0.3],
        "momentum": [0.9, 0.5, 0.9, 0.99, 0.0],
    }
).set_index(["batch_size", "trial_id"])


def test_effective_learning_rate() -> None:
    assert effective_learning_rate(0.1, 0.9) == pytest.approx(1.0)
    assert effective_learning_rate(0.3) == pytest.approx(0.3)
    series = effective_learning_rate(pd.Series([0.1, 0.2]), pd.Series([0.0, 0.5]))
    assert list(series) == pytest.approx([0.1, 0.4])


def test_winners_carry_the_winning_row_and_metaparameters() -> None:
    table = winners(MEASUREMENTS, TRIALS, "val/error", 0.1)
    row = table.loc[16]
    assert row["steps"] == 30 and row["trial_id"] == 1 and row["examples"] == 480
    assert row["validation"] == pytest.approx(0.09)
    assert row["test"] == pytest.approx(0.12)
    assert row["learning_rate"] == pytest.approx(0.2)
    assert row["effective_learning_rate"] == pytest.approx(0.4)
    assert row["step_budget"] == 80 and row["train_time"] == 2.0
    assert "seed" not in table.columns and "status" not in table.columns
    missing = table.loc[64]
    assert pd.isna(missing["steps"]) and pd.isna(missing["trial_id"])
    assert pd.isna(missing["learning_rate"]) and pd.isna(missing["test"])
    assert table["learning_rate"].dtype == float


def test_winners_without_momentum_or_test_column() -> None:
    plain = TRIALS.drop(columns=["momentum"])
    table = winners(MEASUREMENTS[["val/error"]], plain, "val/error", 0.1)
    assert table.loc[16, "effective_learning_rate"] == pytest.approx(0.2)
    assert "test" not in table.columns


def test_trial_outcomes() -> None:
    outcomes = trial_outcomes(MEASUREMENTS, TRIALS, "val/error", 0.1)
    assert outcomes.to_dict() == {
        (16, 0): "reached",
        (16, 1): "reached",
        (64, 0): "diverged",
        (64, 1): "missed",
        (64, 2): "pruned",
    }


def test_a_trial_that_reached_the_goal_counts_as_reached_whatever_its_status() -> None:
    trials = TRIALS.copy()
    trials.loc[(16, 0), "status"] = "INFEASIBLE"
    assert trial_outcomes(MEASUREMENTS, trials, "val/error", 0.1)[(16, 0)] == "reached"


def test_an_imported_trial_stopped_early_is_incomplete_not_missed() -> None:
    trials = TRIALS.copy()
    trials.loc[(64, 1), "status"] = "INCOMPLETE"
    trials.loc[(16, 1), "status"] = "INCOMPLETE"
    outcomes = trial_outcomes(MEASUREMENTS, trials, "val/error", 0.1)
    assert outcomes[(64, 1)] == "incomplete" and outcomes[(16, 1)] == "reached"


def test_first_hit_steps() -> None:
    hits = first_hit_steps(MEASUREMENTS, "val/error", 0.1)
    assert hits[(16, 0)] == 40 and hits[(16, 1)] == 30
    assert hits[[(64, 0), (64, 1), (64, 2)]].isna().all()


def test_best_metric_and_budgets() -> None:
    best = best_metric(MEASUREMENTS, "val/error")
    assert best.loc[16].tolist() == [pytest.approx(0.03), 0, 80]
    assert best.loc[64, "value"] == pytest.approx(0.2)
    under_steps = best_metric_under_step_budget(MEASUREMENTS, "val/error", 30)
    assert under_steps.loc[16, "value"] == pytest.approx(0.09)
    assert under_steps.loc[64, "value"] == pytest.approx(0.6)
    # 1,000 examples: 62 steps at B=16, 15 at B=64.
    under_examples = best_metric_under_example_budget(MEASUREMENTS, "val/error", 1000)
    assert under_examples.loc[16, "value"] == pytest.approx(0.08)
    assert under_examples.loc[64, "value"] == pytest.approx(0.6)
    tiny = best_metric_under_example_budget(MEASUREMENTS, "val/error", 100)
    assert list(tiny.index) == [16, 64] and tiny["value"].isna().all()
    maximal = best_metric(MEASUREMENTS, "val/error", maximize=True)
    assert maximal.loc[64, "value"] == pytest.approx(2.0)


def test_common_budgets() -> None:
    assert common_step_budget(MEASUREMENTS) == 80
    assert common_example_budget(MEASUREMENTS) == 80 * 16
    budgets = pd.Series([100, 200], index=pd.Index([16, 64], name="batch_size"), name="step_budget")
    assert common_step_budget(MEASUREMENTS, budgets) == 100
    assert common_example_budget(MEASUREMENTS, budgets) == 1600
    # The paper's time-budget studies record a step budget of 0: unknown, not zero.
    timed = pd.Series([0, 0], index=budgets.index, name="step_budget")
    assert common_step_budget(MEASUREMENTS, timed) == common_step_budget(MEASUREMENTS) == 80


def test_neighbouring_goals_run_easiest_first() -> None:
    assert neighbouring_goals(0.05) == [0.055, 0.05, 0.045]
    assert neighbouring_goals(0.3, maximize=True, relative=0.2) == [0.24, 0.3, 0.36]
    with pytest.raises(ValueError):
        neighbouring_goals(0.1, relative=1.5)


def test_steps_at_goals_and_censoring() -> None:
    table = steps_at_goals(MEASUREMENTS, "val/error", [0.05, 0.1, 0.5])
    assert list(table.columns) == [0.5, 0.1, 0.05]
    assert table.loc[16].tolist() == [10, 30, 80]
    # One of the two trials that reached 0.1 kept going: harder goals are still measured.
    assert not stops_at_goal(MEASUREMENTS, "val/error", 0.1)
    stopped = MEASUREMENTS.drop(index=(16, 0, 80))
    assert stops_at_goal(stopped, "val/error", 0.1)
    curves = goal_curves(stopped, "val/error", 0.1, [0.12, 0.05])
    assert [(c.goal, c.chosen, c.censored) for c in curves] == [
        (0.12, False, False),
        (0.1, True, False),
        (0.05, False, True),
    ]
    assert all(c.fit is None for c in curves)  # one batch size reaches: nothing to fit


def test_analyze_recovers_the_synthetic_law(synthetic_store: Path) -> None:
    analysis = analyze_store(synthetic_store, bootstrap_samples=100)
    assert analysis.fit is not None
    # Steps to result is the best of 16 trials, so it sits a little above the law; B_crit,
    # a ratio, is recovered better than S_min.
    assert analysis.fit.b_crit == pytest.approx(B_CRIT, rel=0.5)
    assert S_MIN <= analysis.fit.s_min <= 1.5 * S_MIN
    assert analysis.regimes.perfect_until is not None
    assert analysis.regimes.perfect_until < B_CRIT
    assert set(analysis.outcomes) == {"reached", "missed", "diverged", "pruned"}
    assert analysis.step_budget == 3000 and analysis.example_budget == 3000 * 8
    assert (analysis.reached >= 3).all()
    summary = json.loads(json.dumps(analysis.json_summary()))
    assert summary["fit"]["b_crit"] == pytest.approx(analysis.fit.b_crit)
    # Raced: a resample without the winners has no measured steps to result.
    assert summary["fit"]["interval"]["method"] == "least-squares covariance"
    study = StoredStudy.read(synthetic_store)
    full = analyze(
        study.measurements, study.trials, "val/classification_error", TARGET, bootstrap_samples=100
    )
    assert full.fit is not None and full.fit.b_crit == analysis.fit.b_crit
    # Three of 16 trials reach the goal at some batch sizes: 7 resamples of 100 lose it there,
    # and could lie on either side of a 95% interval.
    assert full.fit.interval_method == (
        "bootstrap over trials: 7 of 100 resamples miss the goal at a batch size where few "
        "trials reached it, too many for an interval"
    )
    assert full.fit.b_crit_interval is None and full.fit.s_min_interval is None
    assert [g["chosen"] for g in summary["goals"]] == [False, True, False]
    # Trials stop at the goal, so the harder goal is censored and not fitted.
    assert summary["goals"][2]["censored"] and summary["goals"][2]["b_crit"] is None


def test_fit_and_warnings_for_show_json(trained_store: Path) -> None:
    result = json.loads(json.dumps(fit_and_warnings(trained_store, goals=[0.6])))
    fit = analyze_store(trained_store).fit
    assert fit is not None
    assert result["fit"]["b_crit"] == pytest.approx(fit.b_crit)
    assert result["fit"]["e_min"] == pytest.approx(result["fit"]["s_min"] * fit.b_crit)
    # A raced study's pruned trials never measured their own steps to result, so resampling
    # trials cannot give an interval: it is the least-squares one.
    assert result["fit"]["interval"]["method"] == "least-squares covariance"
    assert all(set(w) == {"check", "batch_sizes", "message"} for w in result["warnings"])
    assert [g["goal"] for g in result["goals"]] == [0.6, 0.5]


def test_analyze_handles_imported_data_without_budgets_or_search_space() -> None:
    # The paper's release: INCOMPLETE trials, other metric names, no step budget.
    rows = []
    for size in (32, 64, 128, 256):
        for trial in range(3):
            hit = int(100 * (1 + 64 / size)) * (trial + 1)
            rows += [(size, trial, 0, 0.9), (size, trial, hit, 0.2), (size, trial, 2 * hit, 0.1)]
    measurements = measurements_table(rows, "val/classification_error")
    trials = trials_table(
        [
            (s, t, "INCOMPLETE" if t == 2 else "COMPLETE", 0.1 * (t + 1))
            for s in (32, 64, 128, 256)
            for t in range(3)
        ],
        ["status", "learning_rate"],
    )
    analysis = analyze(measurements, trials, "val/classification_error", 0.25, bootstrap_samples=0)
    assert analysis.fit is not None
    assert analysis.fit.b_crit == pytest.approx(64.0, rel=1e-3)
    assert analysis.fit.interval_method == "least-squares covariance"
    assert (analysis.winners["trial_id"] == 0).all()
    assert set(analysis.outcomes) == {"reached"}  # trial 2 is INCOMPLETE, but reached first
    assert "test" not in analysis.winners.columns
    assert not [w for w in analysis.warnings if w.check in {"edge", "late_winner"}]
    # Trials here ran past the goal, so the harder goal is measured and agrees.
    assert not any(c.censored for c in analysis.goal_curves)
    assert np.isfinite(analysis.goal_curves[-1].steps).all()


def test_a_neighbouring_goal_the_untrained_model_meets_gets_no_fit() -> None:
    # Initial error 0.5 beats the easier goal 0.528 (10% above 0.48) at step 0 everywhere.
    rows, trials = [], []
    for size in (8, 16, 32, 64):
        for trial in range(3):
            hit = 10 * (1 + 32 // size) + trial
            rows += [(size, trial, 0, 0.5), (size, trial, hit, 0.3), (size, trial, 400, 0.2)]
            trials.append((size, trial, "COMPLETE", 0.1))
    measurements = measurements_table(rows)
    table = trials_table(trials, ["status", "learning_rate"])
    analysis = analyze(measurements, table, "val/error", 0.48, bootstrap_samples=20)
    easier, chosen, _ = analysis.goal_curves
    assert easier.goal == pytest.approx(0.528) and easier.steps == (0.0, 0.0, 0.0, 0.0)
    assert easier.fit is None
    assert chosen.fit is not None and analysis.fit is not None


def test_stopped_within_budget_marks_batch_sizes_whose_trials_stopped_inside_it() -> None:
    from batchscale.analysis import stopped_within_budget

    index = pd.MultiIndex.from_tuples(
        [(16, 0), (16, 1), (64, 0), (64, 1), (256, 0)], names=["batch_size", "trial_id"]
    )
    trials = pd.DataFrame(
        {
            # 16: one trial stopped at the goal at 3,700 of 12,500 steps; 64: one diverged
            # early (it could not improve) and one ran its budget; 256: pruned at step 90.
            "status": ["COMPLETE", "PRUNED", "INFEASIBLE", "COMPLETE", "PRUNED"],
            "steps": [3700, 3700, 20, 3000, 90],
            "step_budget": [12500, 12500, 3000, 3000, 800],
        },
        index=index,
    )
    by_examples = stopped_within_budget(trials, max_examples=200_000)
    assert by_examples.to_dict() == {16: True, 64: False, 256: True}
    # Within 400 steps nothing had stopped at 16 yet; at 256 the pruned trial had.
    by_steps = stopped_within_budget(trials, max_steps=400)
    assert by_steps.to_dict() == {16: False, 64: False, 256: True}
    # Without the columns (an imported study) nothing counts as stopped.
    assert not stopped_within_budget(trials.drop(columns="steps")).any()
