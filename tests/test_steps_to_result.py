import math

import pandas as pd
import pytest

from batchscale.analysis import (
    apply_example_budget,
    apply_step_budget,
    examples_to_result,
    steps_to_result,
    trials_reaching,
)


def frame(rows: list[tuple[int, int, int, float]], column: str = "val/error") -> pd.DataFrame:
    data = pd.DataFrame(rows, columns=["batch_size", "trial_id", "step", column])
    return data.set_index(["batch_size", "trial_id", "step"])


MEASUREMENTS = frame(
    [
        # batch size 16: trial 0 reaches at 300, trial 1 at 200, trial 2 exactly equals the goal
        (16, 0, 100, 0.5),
        (16, 0, 300, 0.05),
        (16, 1, 100, 0.4),
        (16, 1, 200, 0.09),
        (16, 2, 100, 0.1),
        (16, 2, 150, 0.1),
        # batch size 32: two trials tie at step 50; the smaller id wins
        (32, 4, 50, 0.01),
        (32, 3, 50, 0.02),
        (32, 3, 80, 0.0),
        # batch size 64: nobody gets there
        (64, 0, 10, 0.2),
    ]
)


def test_smallest_step_strictly_better_than_goal_with_ties_by_trial_id() -> None:
    result = steps_to_result(MEASUREMENTS, "val/error", target=0.1)
    assert result.loc[16, "steps"] == 200 and result.loc[16, "trial_id"] == 1
    assert result.loc[32, "steps"] == 50 and result.loc[32, "trial_id"] == 3
    assert pd.isna(result.loc[64, "steps"]) and pd.isna(result.loc[64, "trial_id"])
    assert list(result.index) == [16, 32, 64]


def test_equal_to_goal_is_not_reached() -> None:
    only_trial_2 = MEASUREMENTS.xs(2, level="trial_id", drop_level=False)
    assert pd.isna(steps_to_result(only_trial_2, "val/error", 0.1).loc[16, "steps"])


def test_maximised_metric() -> None:
    accuracy = frame([(8, 0, 10, 0.5), (8, 0, 20, 0.8), (8, 1, 15, 0.81)], "val/ap")
    result = steps_to_result(accuracy, "val/ap", target=0.8, maximize=True)
    assert result.loc[8, "steps"] == 15 and result.loc[8, "trial_id"] == 1


def test_step_budget_drops_later_rows() -> None:
    result = steps_to_result(apply_step_budget(MEASUREMENTS, 199), "val/error", 0.1)
    assert pd.isna(result.loc[16, "steps"])
    assert result.loc[32, "steps"] == 50


def test_example_budget_depends_on_batch_size() -> None:
    budgeted = apply_example_budget(MEASUREMENTS, 3200)
    assert steps_to_result(budgeted, "val/error", 0.1).loc[16, "steps"] == 200
    tight = steps_to_result(apply_example_budget(MEASUREMENTS, 1600), "val/error", 0.1)
    assert pd.isna(tight.loc[16, "steps"]) and tight.loc[32, "steps"] == 50
    assert set(apply_example_budget(MEASUREMENTS, 1599).index.get_level_values(0)) == {64}


def test_examples_and_reaching_counts() -> None:
    result = steps_to_result(MEASUREMENTS, "val/error", 0.1)
    examples = examples_to_result(result)
    assert examples[16] == 3200 and examples[32] == 1600 and math.isnan(examples[64])
    reached = trials_reaching(MEASUREMENTS, "val/error", 0.1)
    assert reached.to_dict() == {16: 2, 32: 2, 64: 0}


@pytest.mark.parametrize("target", [0.0, -1.0])
def test_unreachable_goal_gives_no_result(target: float) -> None:
    assert steps_to_result(MEASUREMENTS, "val/error", target)["steps"].isna().all()
