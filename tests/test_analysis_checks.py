"""Design checks: each fires on the situation it names and stays quiet otherwise."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from batchscale.analysis import (
    DesignWarning,
    GoalCurve,
    design_checks,
    edge_warnings,
    few_reached_warnings,
    fit_steps_to_result,
    fit_warnings,
    goal_warnings,
    late_winner_warnings,
    step_time_warnings,
)
from batchscale.search import SearchSpace, choice, loguniform, reverse_loguniform, uniform
from tests.tables import measurements_table, trials_table

SPACE = SearchSpace(
    dimensions=(
        loguniform("learning_rate", 1e-3, 10.0),
        reverse_loguniform("momentum", 0.9, 0.999),
        uniform("decay_fraction", 0.5, 1.0),
        choice("label_smoothing", [0.0, 0.1]),
    )
)


def winning(rows: dict[int, dict[str, float]]) -> pd.DataFrame:
    """A winners table indexed by batch size."""
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "batch_size"
    return table


def test_edge_check_uses_each_dimensions_own_scale() -> None:
    table = winning(
        {
            # lr 5.0 sits at 92.5% of four decades; 1 - momentum = 0.0012 at 92%; both top.
            16: {"trial_id": 0, "learning_rate": 5.0, "momentum": 0.9988, "decay_fraction": 0.7},
            # lr 0.1 is mid-range; decay 0.52 is 4% into its linear range.
            32: {"trial_id": 3, "learning_rate": 0.1, "momentum": 0.99, "decay_fraction": 0.52},
            # Also at the top in lr, and label smoothing (discrete) is never an edge.
            64: {
                "trial_id": 1,
                "learning_rate": 8.0,
                "momentum": 0.99,
                "decay_fraction": 0.75,
                "label_smoothing": 0.1,
            },
            # No winner here: nothing to check.
            128: {"trial_id": np.nan, "learning_rate": np.nan},
        }
    )
    found = edge_warnings(table, SPACE)
    summary = [(w.check, w.batch_sizes, w.message.split(":")[0]) for w in found]
    assert summary == [
        ("edge", (16, 64), "learning_rate"),
        ("edge", (16,), "momentum"),
        ("edge", (32,), "decay_fraction"),
    ]
    assert "top of its range log[0.001, 10]" in found[0].message
    assert "16 (5), 64 (8)" in found[0].message
    assert "bottom" in found[2].message
    assert edge_warnings(table, SPACE, fraction=0.02) == []


def test_a_mid_range_winner_raises_no_edge_warning() -> None:
    table = winning({16: {"trial_id": 0, "learning_rate": 0.1, "momentum": 0.99}})
    assert edge_warnings(table, SPACE) == []


def test_late_winner_check() -> None:
    table = winning(
        {
            16: {"steps": 950.0, "step_budget": 1000.0},
            32: {"steps": 900.0, "step_budget": 1000.0},
            64: {"steps": np.nan, "step_budget": 1000.0},
        }
    )
    (found,) = late_winner_warnings(table)
    assert found.batch_sizes == (16,)
    assert "step 950 of 1000" in found.message
    assert late_winner_warnings(table.drop(columns=["step_budget"])) == []


def test_few_reached_check_separates_none_from_few() -> None:
    reached = pd.Series({8: 0, 16: 1, 32: 2, 64: 3, 128: 9})
    none, few = few_reached_warnings(reached)
    assert none.batch_sizes == (8,) and "no trial reached" in none.message
    assert few.batch_sizes == (16, 32) and "16 (1), 32 (2)" in few.message
    assert few_reached_warnings(reached, minimum=1) == [none]
    assert few_reached_warnings(pd.Series({8: 5})) == []


def test_fit_checks() -> None:
    sizes = [8.0, 16.0, 32.0, 64.0]
    assert "fewer than two" in fit_warnings(None)[0].message
    # Met before training at two of three: the fix is a harder goal, not more trials.
    untrained = pd.DataFrame({"steps": [12.0, 0.0, 0.0]}, index=[8, 16, 32])
    assert fit_warnings(None, untrained)[0].message == (
        "the goal was reached after training at fewer than two batch sizes (the untrained "
        "model meets it at 16, 32), so S(B) cannot be fitted; choose a harder goal"
    )
    perfect = fit_steps_to_result(sizes, [800.0, 400.0, 200.0, 100.0])
    assert "falls as 1/B" in fit_warnings(perfect)[0].message
    flat = fit_steps_to_result(sizes, [100.0, 100.0, 100.0, 100.0])
    assert "stays flat" in fit_warnings(flat)[0].message
    beyond = fit_steps_to_result(sizes, [10 * (1 + 200 / b) for b in sizes])
    assert "extrapolation" in fit_warnings(beyond)[0].message
    inside = fit_steps_to_result(sizes, [10 * (1 + 20 / b) for b in sizes])
    assert fit_warnings(inside) == []


def test_a_critical_batch_size_beyond_the_sizes_that_reached_the_goal_is_an_extrapolation() -> None:
    # Measured up to 1024, but only 8 to 64 reached the goal: B_crit = 300 is beyond the fit.
    sizes = [8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0]
    steps = [10 * (1 + 300 / b) for b in sizes[:4]] + [None] * 4
    fit = fit_steps_to_result(sizes, steps)
    assert fit.batch_sizes == (8.0, 16.0, 32.0, 64.0)
    assert fit.b_crit == pytest.approx(300, rel=1e-3)
    [warning] = fit_warnings(fit)
    assert "extrapolation" in warning.message and "[8, 64]" in warning.message


def curve(goal: float, b_crit: float, *, chosen: bool = False, reached: int = 4) -> GoalCurve:
    sizes = np.array([8.0, 16.0, 32.0, 64.0])
    steps = 10 * (1 + b_crit / sizes)
    steps[reached:] = np.nan
    return GoalCurve(
        goal=goal,
        chosen=chosen,
        censored=False,
        batch_sizes=tuple(sizes),
        steps=tuple(steps),
        fit=fit_steps_to_result(sizes, steps) if reached >= 2 else None,
    )


def test_goal_check_flags_a_b_crit_that_moves_with_the_goal() -> None:
    agreeing = [curve(0.12, 25.0), curve(0.1, 20.0, chosen=True), curve(0.08, 30.0)]
    assert goal_warnings(agreeing) == []
    moving = [curve(0.12, 5.0), curve(0.1, 20.0, chosen=True), curve(0.08, 30.0)]
    (found,) = goal_warnings(moving)
    assert found.check == "fragile_goal"
    assert "B_crit at goal 0.12 is 5" in found.message and "4x below" in found.message


def test_goal_check_flags_a_harder_goal_reached_at_fewer_batch_sizes() -> None:
    curves = [curve(0.1, 20.0, chosen=True), curve(0.08, 20.0, reached=2)]
    (found,) = goal_warnings(curves)
    assert "reached at only 2 of the 4" in found.message
    censored = GoalCurve(0.08, False, True, (8.0,), (np.nan,), None)
    assert goal_warnings([curves[0], censored]) == []


def test_design_warning_forms() -> None:
    warning = DesignWarning("edge", "momentum: at the edge", (16, 32))
    assert str(warning) == "momentum: at the edge"
    assert warning.as_dict() == {
        "check": "edge",
        "batch_sizes": [16, 32],
        "message": "momentum: at the edge",
    }


def test_design_checks_on_measurements() -> None:
    rows, trials = [], []
    for size in (16, 32, 64):
        for trial in range(3):
            # Trial 0 wins everywhere, at the very top of the learning-rate range.
            hit = 100 * (trial + 1) * 64 // size
            rows += [(size, trial, 1, 0.9), (size, trial, hit, 0.05)]
            trials.append((size, trial, 9.9 if trial == 0 else 0.1, hit * 1.05))
    measurements = measurements_table(rows)
    table = trials_table(trials, ["learning_rate", "step_budget"])
    space = SearchSpace(dimensions=(loguniform("learning_rate", 1e-3, 10.0),))
    found = design_checks(measurements, table, "val/error", 0.1, search_space=space)
    checks = sorted(w.check for w in found)
    # Every winner is at the lr edge and used 1/1.05 of its budget; perfect scaling throughout
    # leaves B_crit unlocated.
    assert checks == ["edge", "fit", "late_winner"]
    assert design_checks(measurements, table, "val/error", 0.1) != found
    with pytest.raises(KeyError):
        design_checks(measurements, table, "val/missing", 0.1)


def test_step_times_whose_repeats_disagree_are_flagged() -> None:
    steady = {"median": 1.0e-3, "low": 0.9e-3, "high": 1.2e-3}
    busy = {"median": 2.0e-3, "low": 1.21e-3, "high": 2.69e-3}
    assert step_time_warnings({"16": steady}) == []
    [warning] = step_time_warnings({"512": busy, "16": steady, "64": busy})
    assert warning.check == "step_time" and warning.batch_sizes == (64, 512)
    assert warning.message.startswith(
        "the step time at batch sizes 64 (1.21 ms to 2.69 ms), 512 (1.21 ms to 2.69 ms) varied"
    )
