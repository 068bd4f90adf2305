import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from batchscale import Study, StudyConfig, load_study
from batchscale.analysis import analyze_store
from batchscale.analysis.cost import (
    DataParallelCost,
    interpolate_step_time,
    projected_time_to_result,
    time_to_result,
)
from batchscale.analysis.steps_to_result import steps_to_result
from batchscale.cli import main
from batchscale.formatting import format_seconds
from batchscale.report import write_report
from batchscale.store import StudyStore
from batchscale.study import noise_scale_of_winner
from batchscale.training.noise import measure_noise_scale
from batchscale.training.timing import measure_step_time
from batchscale.workloads import get_workload

from .conftest import TINY_NQM


def test_allreduce_cost_follows_the_ring_formula() -> None:
    one = DataParallelCost(devices=1, parameters=1_000_000)
    assert one.allreduce_seconds() == 0.0
    eight = DataParallelCost(devices=8, parameters=1_000_000, bandwidth=1e9, latency=1e-5)
    expected = 2 * 7 / 8 * 4e6 / 1e9 + 14 * 1e-5
    assert eight.allreduce_seconds() == pytest.approx(expected)
    assert "8 devices" in eight.describe()
    with pytest.raises(ValueError):
        DataParallelCost(devices=0, parameters=1)


def test_step_time_interpolation_and_projection() -> None:
    sizes, seconds = [16, 64, 256], [1e-3, 2e-3, 8e-3]
    assert interpolate_step_time(sizes, seconds, [64])[0] == pytest.approx(2e-3)
    assert interpolate_step_time(sizes, seconds, [32])[0] == pytest.approx(math.sqrt(2) * 1e-3)
    assert interpolate_step_time(sizes, seconds, [4])[0] == pytest.approx(1e-3)  # floor
    assert interpolate_step_time(sizes, seconds, [512])[0] == pytest.approx(16e-3)  # linear
    np.testing.assert_allclose(time_to_result([100, 10], [1e-3, 8e-3]), [0.1, 0.08])
    cost = DataParallelCost(devices=4, parameters=0, latency=0.0)
    # 4 devices at B = 256 each compute B = 64: 2 ms per step, nothing to communicate
    projected = projected_time_to_result([256, 2], [50, 100], sizes, seconds, cost)
    assert projected[0] == pytest.approx(50 * 2e-3)
    assert math.isnan(projected[1])  # fewer examples than devices


def test_measured_step_time_grows_with_batch_size() -> None:
    workload = get_workload("nqm")
    data = workload.data()
    small = measure_step_time(workload, data, 2, "sgd", repeats=3, min_seconds=0.01)
    large = measure_step_time(workload, data, 16384, "sgd", repeats=3, min_seconds=0.01)
    assert small.low <= small.median <= small.high
    assert large.median > small.median
    assert small.device == "cpu"


def test_step_time_on_a_cpu_runs_on_one_thread_like_every_trial(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    workload = get_workload("nqm")
    data = workload.data()
    batches = workload.batches
    threads_seen: set[int] = set()

    def watched(*args: Any) -> Iterator[Any]:
        for batch in batches(*args):
            threads_seen.add(torch.get_num_threads())
            yield batch

    monkeypatch.setattr(workload, "batches", watched)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        timed = measure_step_time(workload, data, 8, "sgd", repeats=2, min_seconds=0.005)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)
    assert threads_seen == {1}
    assert timed.threads == 1 and timed.as_dict()["threads"] == 1


def _timed_study(tmp_path: Path) -> tuple[StudyConfig, Path, dict[str, Any]]:
    """A tiny study at batch sizes 8 and 16, its store, and the step times it stored."""
    store = tmp_path / "s.sqlite"
    config = StudyConfig(**{**TINY_NQM, "batch_sizes": (8, 16)})
    Study(config, store).run()
    return config, store, load_study(str(store)).metadata["step_times"]


def _store_step_times(store: Path, times: dict[str, Any]) -> None:
    opened = StudyStore.open(store)
    try:
        opened.set_metadata("step_times", times)
    finally:
        opened.close()


def test_a_step_time_taken_on_all_threads_is_measured_again_on_resume(tmp_path: Path) -> None:
    config, store, times = _timed_study(tmp_path)
    assert {entry["threads"] for entry in times.values()} == {1}
    # As a store written before step times ran on one thread holds them.
    old = {size: {**entry, "median": 9.0} for size, entry in times.items()}
    for entry in old.values():
        del entry["threads"]
    old["16"]["threads"] = 1
    _store_step_times(store, old)
    summary = Study(config, store).run()
    steps = {row.batch_size: row.step_time for row in summary.batch_sizes}
    assert steps[8] is not None and steps[8] < 9.0
    assert steps[16] == 9.0  # already on one thread: kept


def test_a_step_time_whose_repeats_disagree_is_flagged_and_measured_again_on_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, store, times = _timed_study(tmp_path)
    # As a busy machine leaves it: the slowest repeat took 3.5 times the fastest.
    busy = {**times["16"], "low": 1e-4, "median": 2e-4, "high": 3.5e-4}
    _store_step_times(store, {**times, "16": busy})
    [warning] = [w for w in analyze_store(store).warnings if w.check == "step_time"]
    assert warning.batch_sizes == (16,)
    assert warning.message.startswith(
        "the step time at batch size 16 (0.1 ms to 0.35 ms) varied more than 1.5-fold between "
        "repeats: the machine was busy"
    )
    assert main(["show", str(store)]) == 0
    assert "warning: the step time at batch size 16" in capsys.readouterr().out
    Study(config, store).run()
    again = load_study(str(store)).metadata["step_times"]
    assert again["8"] == times["8"]  # its repeats agreed: kept
    assert again["16"]["high"] / again["16"]["low"] < 3.5


def test_show_counts_outcomes_as_the_report_does(
    trained_store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    analysis = analyze_store(trained_store, bootstrap_samples=0)
    counts = analysis.outcomes.groupby(level="batch_size").value_counts().unstack(fill_value=0)
    assert main(["show", str(trained_store), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["batch_sizes"]
    for row in rows:
        tally = counts.loc[row["batch_size"]]
        for outcome in ("reached", "missed", "diverged", "pruned"):
            assert row[outcome] == tally.get(outcome, 0)
        assert sum(row[o] for o in ("reached", "missed", "diverged", "pruned")) == row["trials"]
    assert main(["show", str(trained_store)]) == 0
    assert "reached / missed / diverged / pruned" in capsys.readouterr().out


def test_study_stores_step_times_and_replicates(tmp_path: Path) -> None:
    store = tmp_path / "s.sqlite"
    config = StudyConfig(**{**TINY_NQM, "noise_scale": True})
    summary = Study(config, store).run()
    assert all(row.step_time and row.step_time > 0 for row in summary.batch_sizes)
    for row in summary.batch_sizes:
        if row.steps_to_result is not None:
            assert row.time_to_result == pytest.approx(row.step_time * row.steps_to_result)
    meta = load_study(str(store)).metadata
    reached = [str(r.batch_size) for r in summary.batch_sizes if r.steps_to_result is not None]
    assert sorted(meta["noise_scale"]) == sorted(reached)
    assert all(meta["noise_scale"][b]["b_simple"] > 0 for b in reached)
    replicates = Study.from_store(store).replicate(seeds=3)
    assert sorted(replicates) == sorted(reached)
    for entry in replicates.values():
        assert len(entry["steps"]) == 3
    # more seeds extend the sequence; the first three are kept as they were
    more = Study.from_store(store).replicate(seeds=4)
    for size, entry in more.items():
        assert entry["steps"][:3] == replicates[size]["steps"]
    page = write_report(store, tmp_path / "report", bootstrap_samples=50)
    html = page.read_text()
    for section in ("Time to result", "Replicated winners", "Gradient noise scale",
                    "Closed-form prediction"):  # fmt: skip
        assert section in html
    # The projection's assumptions are on the page, not drawn off the figure's edge.
    assert "8 devices, ring all-reduce of" in html and "10 GB/s" in html
    # Step times with their repeats' spread, and time to result in the main table too.
    first = summary.batch_sizes[0]
    low, high = (meta["step_times"][str(first.batch_size)][k] for k in ("low", "high"))
    assert "fastest to slowest repeat" in html
    assert f"{format_seconds(low)} to {format_seconds(high)}" in html
    if first.time_to_result is not None:
        assert html.count(f">{format_seconds(first.time_to_result)}<") == 2
    for name in ("time_to_result", "replicates", "noise_scale", "nqm_prediction"):
        assert (tmp_path / "report" / f"{name}.png").is_file()


def test_replicate_command(tiny_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replicate", str(tiny_store), "--seeds", "2", "--no-report"]) == 0
    capsys.readouterr()
    assert main(["show", str(tiny_store), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["batch_sizes"]
    assert any(row["replicates"] and len(row["replicates"]) == 2 for row in rows)


def test_replicating_a_study_without_winners_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "s.sqlite"
    # A goal no trial reaches within 20 steps.
    Study(StudyConfig(**{**TINY_NQM, "target": 1e-6, "step_budget": 20}), store).run()
    capsys.readouterr()
    assert main(["replicate", str(store), "--seeds", "2", "--no-report"]) == 0
    out = capsys.readouterr().out
    assert f"note: no batch size of {store} reached the goal, so there is no winner" in out
    code = main(["noise-scale", "--study", str(store), "--batch-size", "16"])
    err = capsys.readouterr().err
    assert code == 2 and "no batch size did, so there is no winner to follow" in err
    # Settings of a run of its own do not mix with following a stored winner.
    code = main(["noise-scale", "--study", str(store), "--batch-size", "16",
                 "--learning-rate", "0.1", "--steps", "5"])  # fmt: skip
    assert code == 2 and capsys.readouterr().err == (
        "error: --study follows the winner with its own settings, so --learning-rate, --steps "
        "would be ignored; leave them out, or leave out --study\n"
    )


def test_more_trials_that_change_the_winner_retire_its_replicates_and_noise_trace(
    tmp_path: Path,
) -> None:
    store = tmp_path / "s.sqlite"
    base = {**TINY_NQM, "batch_sizes": (16,), "target": 1.0, "step_budget": 150}
    first = Study(StudyConfig(**{**base, "trials": 2, "noise_scale": True}), store).run()
    old_winner = first.batch_sizes[0].best_trial
    old_trace = load_study(str(store)).metadata["noise_scale"]["16"]
    assert Study.from_store(store).replicate(seeds=2)["16"]["trial_id"] == old_winner
    # Trial 2 of the same sequence wins with more trials (seed 0 of TINY_NQM, checked here).
    second = Study(StudyConfig(**{**base, "trials": 12, "noise_scale": True}), store).run()
    new_winner = second.batch_sizes[0].best_trial
    assert new_winner != old_winner
    assert second.batch_sizes[0].replicates is None  # not the old winner's steps
    meta = load_study(str(store)).metadata
    assert "16" not in meta["replicates"]
    assert meta["noise_scale"]["16"]["seed"] != old_trace["seed"]
    assert meta["noise_scale"]["16"]["params"] == second.batch_sizes[0].best_params
    replicated = Study.from_store(store).replicate(seeds=2)["16"]
    assert replicated["trial_id"] == new_winner and len(replicated["steps"]) == 2


def test_noise_scale_skips_batch_size_one(tmp_path: Path) -> None:
    config = StudyConfig(**{**TINY_NQM, "batch_sizes": (1, 16), "noise_scale": True})
    summary = Study(config, tmp_path / "s.sqlite").run()
    assert [row.steps_to_result is not None for row in summary.batch_sizes] == [True, True]
    assert sorted(load_study(str(tmp_path / "s.sqlite")).metadata["noise_scale"]) == ["16"]


def test_noise_scale_runs_on_the_configured_model_not_the_default_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = {"workload": "mnist1d-mlp", "width": 8, "train_size": 512, "device": "cpu"}
    config_file = tmp_path / "narrow.toml"
    config_file.write_text('workload = "mnist1d-mlp"\nwidth = 8\ntrain_size = 512\n')
    flags = ["--batch-size", "32", "--steps", "10", "--device", "cpu", "--json"]

    def measured(*given: str) -> float:
        assert main(["noise-scale", *given, *flags]) == 0
        return float(json.loads(capsys.readouterr().out)["b_simple"])

    narrow = measured("--config", str(config_file))
    assert narrow != measured("--workload", "mnist1d-mlp")
    study = Study(
        StudyConfig(**settings, batch_sizes=(32,), trials=2, target=0.95, step_budget=10),
        tmp_path / "narrow.sqlite",
    )
    study.run()
    followed = noise_scale_of_winner(tmp_path / "narrow.sqlite", 32, device="cpu")
    opened = StudyStore.open(tmp_path / "narrow.sqlite", read_only=True)
    try:
        result = steps_to_result(opened.measurements(), "val/classification_error", 0.95)
    finally:
        opened.close()
    winner = study.trial_specs(32)[int(result.loc[32, "trial_id"])]
    assert followed.points and followed.batch_size == 32
    # The same run on the study's own narrow model, built here by hand.
    again = measure_noise_scale(
        get_workload("mnist1d-mlp", width=8, train_size=512),
        winner.params,
        "nesterov",
        32,
        followed.points[-1].step,
        seed=winner.seed,
        device=torch.device("cpu"),
        step_budget=10,
    )
    assert followed.b_simple == pytest.approx(again.b_simple)
