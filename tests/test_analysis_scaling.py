"""The scaling fit, its intervals, the bootstrap over trials, and the regimes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from batchscale.analysis import (
    bootstrap_steps_to_result,
    fit_measurements,
    fit_steps_to_result,
    fittable,
    local_slopes,
    regimes,
)
from batchscale.analysis.goals import GoalCurve

SIZES = 2.0 ** np.arange(3, 15)


def law(sizes: np.ndarray, s_min: float, b_crit: float) -> np.ndarray:
    return s_min * (1.0 + b_crit / sizes)


def measurements(rows: list[tuple[int, int, int, float]]) -> pd.DataFrame:
    """A measurements frame from (batch size, trial, step, val/error) rows."""
    frame = pd.DataFrame(rows, columns=["batch_size", "trial_id", "step", "val/error"])
    return frame.set_index(["batch_size", "trial_id", "step"])


def test_fit_is_exact_on_the_law_itself() -> None:
    fit = fit_steps_to_result(SIZES, law(SIZES, 120.0, 300.0))
    assert fit.s_min == pytest.approx(120.0, rel=1e-6)
    assert fit.b_crit == pytest.approx(300.0, rel=1e-6)
    assert fit.e_min == pytest.approx(36_000.0, rel=1e-6)
    assert fit.rms_log_residual < 1e-8
    assert not fit.b_crit_at_bound
    assert fit.predict([300.0]) == pytest.approx([240.0])


@pytest.mark.parametrize(("s_min", "b_crit", "seed"), [(50.0, 64.0, 0), (800.0, 2000.0, 1)])
def test_fit_recovers_known_parameters_from_noisy_curves(
    s_min: float, b_crit: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    noisy = law(SIZES, s_min, b_crit) * np.exp(rng.normal(0.0, 0.1, len(SIZES)))
    fit = fit_steps_to_result(SIZES, noisy)
    assert fit.s_min == pytest.approx(s_min, rel=0.15)
    assert fit.b_crit == pytest.approx(b_crit, rel=0.3)
    assert fit.interval_method == "least-squares covariance"
    low, high = fit.b_crit_interval or (np.nan, np.nan)
    assert low < fit.b_crit < high


def test_least_squares_interval_covers_the_truth_about_as_often_as_it_says() -> None:
    rng = np.random.default_rng(7)
    covered = 0
    runs = 60
    for _ in range(runs):
        noisy = law(SIZES, 100.0, 500.0) * np.exp(rng.normal(0.0, 0.15, len(SIZES)))
        low, high = fit_steps_to_result(SIZES, noisy).b_crit_interval or (np.nan, np.nan)
        covered += low <= 500.0 <= high
    # Nominal 95%; the model is nonlinear, so allow some slack, but not a useless interval.
    assert 0.8 * runs <= covered <= runs


def test_missing_and_unreached_points_are_left_out() -> None:
    steps = pd.array([1000.0, None, 300.0, 200.0, np.nan, 120.0], dtype="Float64")
    sizes = [8, 16, 32, 64, 128, 256]
    fit = fit_steps_to_result(sizes, steps)
    assert fit.batch_sizes == (8.0, 32.0, 64.0, 256.0)
    assert fit.steps == (1000.0, 300.0, 200.0, 120.0)


def test_fit_needs_two_batch_sizes_and_matching_lengths() -> None:
    with pytest.raises(ValueError, match="two or more batch sizes"):
        fit_steps_to_result([8, 16], [100.0, None])
    with pytest.raises(ValueError, match="two or more batch sizes"):
        fit_steps_to_result([8, 8], [100.0, 90.0])
    with pytest.raises(ValueError, match="equal length"):
        fit_steps_to_result([8, 16, 32], [100.0, 90.0])
    with pytest.raises(ValueError, match="confidence"):
        fit_steps_to_result([8, 16], [100.0, 90.0], confidence=1.5)


def test_two_points_fit_exactly_without_an_interval() -> None:
    fit = fit_steps_to_result([16, 256], law(np.array([16.0, 256.0]), 10.0, 64.0))
    assert fit.b_crit == pytest.approx(64.0, rel=1e-5)
    assert fit.b_crit_interval is None
    assert fit.interval_method == "none"


def test_pure_perfect_scaling_and_flat_curves_leave_b_crit_unlocated() -> None:
    perfect = fit_steps_to_result(SIZES, 1e6 / SIZES)
    assert perfect.b_crit_at_bound and perfect.b_crit > SIZES.max() * 100
    assert perfect.e_min == pytest.approx(1e6, rel=1e-3)
    flat = fit_steps_to_result(SIZES, np.full(len(SIZES), 40.0))
    assert flat.b_crit_at_bound and flat.b_crit < SIZES.min() / 100
    assert flat.s_min == pytest.approx(40.0, rel=1e-3)
    # Tables say so rather than print the edge of the range searched as if it were measured.
    assert perfect.b_crit_text() == "unbounded" and "B_crit = unbounded" in perfect.describe()
    assert flat.b_crit_text() == "≈ 0" and "B_crit ≈ 0" in flat.describe()
    two = fit_steps_to_result([16, 64], [4000, 1000.0])
    assert two.b_crit_at_bound and two.b_crit_text() == "unbounded"
    assert not GoalCurve(0.3, True, False, (16.0, 64.0), (4000.0, 1000.0), two).exact_fit


def test_an_interval_wider_than_the_searched_range_is_not_given() -> None:
    # Flat and noisy: B_crit lands far below the data yet off its bound, and the linearised
    # interval of log B_crit spans more than the whole searched range (it used to overflow).
    fit = fit_steps_to_result([16, 64, 256], [1020, 1165, 951.0])
    assert not fit.b_crit_at_bound and fit.b_crit < 1
    assert fit.interval_method == "least-squares covariance"
    assert fit.b_crit_interval is None and fit.e_min_interval is None
    assert fit.s_min_interval is not None
    assert "B_crit = 0.0452 (no interval), E_min" in fit.describe()


def test_a_goal_met_before_training_is_not_fitted() -> None:
    # The untrained model beats the goal: steps to result 0 at every batch size says nothing.
    frame = measurements([(8, 0, 0, 0.5), (16, 0, 0, 0.5), (32, 0, 0, 0.5), (32, 0, 9, 0.1)])
    assert not fittable([8, 16, 32], [0, 0, 0])
    assert fittable([8, 16, 32], [0, 7, 5])
    assert fit_measurements(frame, "val/error", 0.6, samples=10) is None


def test_replicates_give_a_percentile_interval() -> None:
    steps = law(SIZES, 100.0, 500.0)
    identical = np.tile(steps, (20, 1))
    fit = fit_steps_to_result(SIZES, steps, replicates=identical)
    assert fit.interval_method.startswith("bootstrap over trials (20 of 20")
    assert fit.b_crit_interval == pytest.approx((500.0, 500.0), rel=1e-3)
    spread = identical * np.exp(np.random.default_rng(0).normal(0, 0.2, identical.shape))
    wide = fit_steps_to_result(SIZES, steps, replicates=spread)
    low, high = wide.b_crit_interval or (np.nan, np.nan)
    assert low < 500.0 < high and high / low > 1.2
    with pytest.raises(ValueError, match="shape"):
        fit_steps_to_result(SIZES, steps, replicates=identical[:, :3])


def test_resamples_that_lose_the_goal_widen_the_interval_to_either_side() -> None:
    steps = law(SIZES, 100.0, 500.0)
    rng = np.random.default_rng(1)
    spread = np.tile(steps, (1000, 1)) * np.exp(rng.normal(0, 0.2, (1000, len(SIZES))))
    whole = fit_steps_to_result(SIZES, steps, replicates=spread)
    # Ten resamples lose the goal at one batch size: each end moves ten places outwards.
    lossy = spread.copy()
    lossy[:10, 3] = np.nan
    some = fit_steps_to_result(SIZES, steps, replicates=lossy)
    assert some.interval_method == "bootstrap over trials (990 of 1000 resamples fitted)"
    fitted = np.sort(
        [fit_steps_to_result(SIZES, row).b_crit for row in lossy[10:]]  # the kept resamples
    )
    assert some.b_crit_interval == pytest.approx((fitted[24 - 10], fitted[975]), rel=0.02)
    low, high = whole.b_crit_interval or (np.nan, np.nan)
    assert some.b_crit_interval[0] <= low and some.b_crit_interval[1] >= high * 0.98
    # More than 2.5% lost: neither end can be placed.
    lossy[:30, 3] = np.nan
    none = fit_steps_to_result(SIZES, steps, replicates=lossy)
    assert none.b_crit_interval is None and none.s_min_interval is None
    assert none.interval_method.startswith("bootstrap over trials: 30 of 1000 resamples miss")
    assert "B_crit = 500 (no interval)" in none.describe()


def test_as_dict_carries_the_interval() -> None:
    data = fit_steps_to_result(SIZES, law(SIZES, 100.0, 500.0) * 1.01 ** np.arange(12))
    as_dict = data.as_dict()
    assert set(as_dict) >= {"s_min", "b_crit", "e_min", "interval"}
    assert as_dict["interval"]["confidence"] == 0.95
    assert len(as_dict["interval"]["b_crit"]) == 2


def test_bootstrap_resamples_trials_within_each_batch_size() -> None:
    # At B=8 trial 0 reaches the goal at step 10 and trial 1 at step 20: a resample of two
    # trials misses the faster one with probability 1/4. At B=16 nothing is ever reached.
    frame = measurements(
        [
            (8, 0, 10, 0.05),
            (8, 1, 10, 0.5),
            (8, 1, 20, 0.05),
            (16, 0, 5, 0.5),
        ]
    )
    sizes, samples = bootstrap_steps_to_result(frame, "val/error", 0.1, samples=4000, seed=3)
    assert list(sizes) == [8.0, 16.0]
    assert set(np.unique(samples[:, 0])) == {10.0, 20.0}
    assert np.mean(samples[:, 0] == 20.0) == pytest.approx(0.25, abs=0.03)
    assert np.isnan(samples[:, 1]).all()
    again = bootstrap_steps_to_result(frame, "val/error", 0.1, samples=4000, seed=3)[1]
    np.testing.assert_array_equal(samples, again)


def test_fit_measurements_needs_two_reached_batch_sizes() -> None:
    frame = measurements([(8, 0, 10, 0.05), (16, 0, 10, 0.5)])
    assert fit_measurements(frame, "val/error", 0.1, samples=10) is None


def test_fit_measurements_bootstraps_over_trials() -> None:
    rows = []
    for size in (8, 32, 128, 512):
        for trial in range(4):
            hit = int(law(np.array([float(size)]), 20.0, 64.0)[0] * (1 + 0.3 * trial))
            rows += [(size, trial, 1, 0.9), (size, trial, hit, 0.05)]
    fit = fit_measurements(measurements(rows), "val/error", 0.1, samples=200, seed=0)
    assert fit is not None
    assert fit.b_crit == pytest.approx(64.0, rel=0.05)
    assert fit.interval_method.startswith("bootstrap")
    for interval, estimate in ((fit.s_min_interval, fit.s_min), (fit.b_crit_interval, 64.0)):
        low, high = interval or (np.nan, np.nan)
        assert low < estimate < high


def test_local_slopes_skip_unreached_batch_sizes() -> None:
    slopes = local_slopes([8, 16, 32, 64], [800.0, np.nan, 200.0, 200.0])
    np.testing.assert_allclose(slopes, [-1.0, 0.0])


def test_regimes_from_local_slopes() -> None:
    sizes = [8, 16, 32, 64, 128, 256, 512]
    # Slopes: -1, -1, -0.9, -0.5, -0.1, 0.
    steps = [6400.0, 3200.0, 1600.0]
    for slope in (-0.9, -0.5, -0.1, 0.0):
        steps.append(steps[-1] * 2.0**slope)
    found = regimes(sizes, steps)
    np.testing.assert_allclose(found.slopes, [-1, -1, -0.9, -0.5, -0.1, 0.0], atol=1e-12)
    # -0.9 is within 0.2 of -1; from 128 on every slope is at least -0.15.
    assert found.perfect_until == 64.0
    assert found.maximal_from == 128.0
    assert found.regime_of(32) == "perfect scaling"
    assert found.regime_of(96) == "diminishing returns"
    assert found.regime_of(512) == "maximal data parallelism"
    assert found.regime_of(4) is None
    assert "up to batch size 64" in found.describe()
    assert "From batch size 128 on" in found.describe()
    strict = regimes(sizes, steps, perfect_tolerance=0.05, flat_tolerance=0.05)
    assert strict.perfect_until == 32.0 and strict.maximal_from == 256.0


def test_regimes_at_the_extremes() -> None:
    everywhere = regimes([8, 16, 32], [400.0, 200.0, 100.0])
    assert everywhere.perfect_until == 32.0 and everywhere.maximal_from is None
    assert "every batch size that reached the goal" in everywhere.describe()
    nowhere = regimes([8, 16, 32], [100.0, 100.0, 100.0])
    assert nowhere.perfect_until is None and nowhere.maximal_from == 8.0
    assert nowhere.regime_of(16) == "maximal data parallelism"
    single = regimes([8, 16], [100.0, np.nan])
    assert single.slopes == () and single.regime_of(8) is None
    assert "Too few" in single.describe()


def test_regime_tolerances_are_checked() -> None:
    with pytest.raises(ValueError, match="tolerances"):
        regimes([8, 16], [2.0, 1.0], perfect_tolerance=0.6, flat_tolerance=0.5)


def test_regimes_name_the_actual_step_between_batch_sizes() -> None:
    # 64 -> 256 -> 1024 is quadrupling: the text must not call it doubling.
    found = regimes([64, 256, 1024], [1000.0, 700.0, 600.0])
    text = found.describe()
    assert "from batch size 64 to 256, a 4-fold larger batch saves fewer steps" in text
    assert "doubling" not in text
    doubled = regimes([64, 128, 256], [1000.0, 700.0, 600.0]).describe()
    assert "from batch size 64 to 128, doubling the batch size saves fewer steps" in doubled
