"""The cohort engine against the reference loop: same rows, same statuses, same steps to result."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from batchscale import Study, StudyConfig
from batchscale.training import cohort as cohort_module
from batchscale.training.cohort import (
    CohortPlan,
    FunctionalKernels,
    MlpKernels,
    ParameterLayout,
    choose_kernels,
    class_major_log_softmax_is_exact,
    plan_cohort,
    train_cohort,
    worker_threads,
)
from batchscale.training.engine import Engine, first_reaching_step, run_cohort
from batchscale.training.evaluation import evaluation_steps
from batchscale.training.reference import initialised_model, intra_op_threads, train_reference
from batchscale.training.trial import RaceBound, Status, StopRules, TrialResult, TrialSpec
from batchscale.workloads import OPTIMIZERS, CustomWorkload, Optimizer, Workload, get_workload
from batchscale.workloads.base import Data, EpochSampler


@dataclass(frozen=True)
class Case:
    """A small study where some trials reach the goal and some do not, for every optimizer."""

    batch_size: int
    trials: int
    step_budget: int
    target: float
    growth: float


# The CNN's evaluations dominate its cost, so it is evaluated less often.
CASES = {
    "mnist1d-mlp": Case(batch_size=32, trials=4, step_budget=120, target=0.75, growth=1.3),
    "mnist1d-cnn": Case(batch_size=32, trials=3, step_budget=60, target=0.8, growth=1.6),
    "nqm": Case(batch_size=16, trials=4, step_budget=150, target=1.0, growth=1.3),
}
# Effective learning rates (lr / (1 - momentum)) below the edge of stability: above it, float
# rounding grows chaotically over a hundred steps and no tolerance compares two engines' curves.
SEARCH_SPACE = {
    "learning_rate": {"scale": "log", "low": 0.01, "high": 0.3},
    "momentum": {"scale": "reverse_log", "low": 0.5, "high": 0.9},
    "end_learning_rate_factor": {"scale": "log", "low": 0.001, "high": 1.0},
    "decay_fraction": {"scale": "linear", "low": 0.5, "high": 1.0},
}
GROWTH = 1.3


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: small kernels run faster so, and these tests stay quick."""
    with intra_op_threads(1):
        yield


def _study(workload: str, optimizer: Optimizer) -> Study:
    """A study that plans the case's trials (their seeds and metaparameters)."""
    case = CASES[workload]
    space = {k: v for k, v in SEARCH_SPACE.items() if optimizer != "sgd" or k != "momentum"}
    config = StudyConfig(
        workload=workload,
        optimizer=optimizer,
        batch_sizes=(case.batch_size,),
        trials=case.trials,
        step_budget=case.step_budget,
        search_space=space,
        device="cpu",
    )
    return Study(config, Path("unused.sqlite"))


def _rules(workload: str) -> StopRules:
    return StopRules(target=CASES[workload].target, maximize=False)


def _run(
    engine: Engine,
    workload: Workload,
    specs: list[TrialSpec],
    rules: StopRules,
    race: bool,
    plan: CohortPlan | None = None,
    growth: float = GROWTH,
    fallback: bool = False,
) -> list[TrialResult]:
    if engine == "cohort" and plan is None and not fallback:
        plan = plan_cohort(workload, workload.data(), specs, check_speed=False)
        assert plan is not None, "these models batch"
    results: list[TrialResult] = []
    steps = evaluation_steps(specs[0].step_budget, growth)
    run_cohort(
        engine, workload, workload.data(), specs, rules, steps, race, None, results.append, plan
    )
    return results


@cache
def _results(workload: str, optimizer: Optimizer, engine: Engine, race: bool) -> list[TrialResult]:
    study = _study(workload, optimizer)
    specs = study.trial_specs(CASES[workload].batch_size)
    return _run(
        engine, study.workload, specs, _rules(workload), race, growth=CASES[workload].growth
    )


def _by_id(results: list[TrialResult]) -> dict[int, TrialResult]:
    return {r.spec.trial_id: r for r in results}


def _steps_to_result(results: list[TrialResult], metric: str, rules: StopRules) -> tuple[int, int]:
    """(steps, trial id) of the earliest row beating the target; (-1, -1) when none does."""
    reached = [
        (step, r.spec.trial_id)
        for r in results
        if (step := first_reaching_step(r, metric, rules)) is not None
    ]
    return min(reached, default=(-1, -1))


def _assert_rows_close(
    ours: list[dict[str, float]], theirs: list[dict[str, float]], error_slack: float = 1e-3
) -> None:
    """Same steps, same columns; losses equal to float rounding, error rates to a few examples."""
    assert [row["step"] for row in ours] == [row["step"] for row in theirs]
    for mine, reference in zip(ours, theirs, strict=True):
        assert mine.keys() == reference.keys()
        for key, value in reference.items():
            # An example or so may land on the other side of a decision boundary.
            slack = 0.0 if key.endswith("/loss") else error_slack
            expected = pytest.approx(value, rel=1e-4, abs=max(slack, 1e-6), nan_ok=True)
            assert mine[key] == expected, (key, mine["step"])


def _metric(workload: str) -> str:
    return "val/loss" if workload == "nqm" else "val/classification_error"


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("workload", list(CASES))
def test_full_mode_matches_the_reference_loop(workload: str, optimizer: Optimizer) -> None:
    reference = _by_id(_results(workload, optimizer, "reference", False))
    cohort = _by_id(_results(workload, optimizer, "cohort", False))
    assert cohort.keys() == reference.keys()
    for trial_id, expected in reference.items():
        got = cohort[trial_id]
        assert got.status == expected.status, trial_id
        assert got.steps == expected.steps, trial_id
        _assert_rows_close(got.measurements, expected.measurements)
    rules = _rules(workload)
    expected_result = _steps_to_result(list(reference.values()), _metric(workload), rules)
    assert expected_result[0] > 0, "the case should have a trial reaching the goal"
    assert _steps_to_result(list(cohort.values()), _metric(workload), rules) == expected_result


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("workload", list(CASES))
def test_race_mode_prunes_without_changing_steps_to_result(
    workload: str, optimizer: Optimizer
) -> None:
    full = _by_id(_results(workload, optimizer, "reference", False))
    raced = _by_id(_results(workload, optimizer, "cohort", True))
    reference_raced = _results(workload, optimizer, "reference", True)
    rules = _rules(workload)
    metric = _metric(workload)
    expected = _steps_to_result(list(full.values()), metric, rules)
    assert _steps_to_result(list(raced.values()), metric, rules) == expected
    assert _steps_to_result(reference_raced, metric, rules) == expected
    for trial_id, got in raced.items():
        whole = full[trial_id]
        # A raced trial's rows are the start of the same trial's full run.
        _assert_rows_close(got.measurements, whole.measurements[: len(got.measurements)])
        if got.status == Status.PRUNED:
            # In lockstep a trial may share the winner's evaluation, never one after it.
            assert got.steps <= min(whole.steps, expected[0])
        else:
            assert (got.status, got.steps) == (whole.status, whole.steps)
    rows = sum(len(r.measurements) for r in raced.values())
    assert rows < sum(len(r.measurements) for r in full.values())


def test_lockstep_race_stops_everyone_behind_the_first_to_reach() -> None:
    raced = _results("nqm", "sgd", "cohort", True)
    full = _by_id(_results("nqm", "sgd", "reference", False))
    rules = _rules("nqm")
    step, winner = _steps_to_result(list(full.values()), "val/loss", rules)
    for result in raced:
        if result.spec.trial_id == winner:
            assert result.status == Status.COMPLETE
        elif result.status == Status.PRUNED:
            # Trials with a smaller id may still tie at the winning step; no one runs past it.
            assert result.steps <= step
    assert any(r.status == Status.PRUNED for r in raced)


def test_the_engine_plans_by_itself_and_matches_the_reference() -> None:
    study = _study("nqm", "momentum")
    specs = study.trial_specs(16)
    data = study.workload.data()
    plan = plan_cohort(study.workload, data, specs)
    assert plan is None or plan.threads is not None  # timed: batched with a thread count, or not
    results: list[TrialResult] = []
    steps = evaluation_steps(150, GROWTH)
    run_cohort(
        "cohort", study.workload, data, specs, _rules("nqm"), steps, False, None, results.append
    )
    reference = _by_id(_results("nqm", "momentum", "reference", False))
    for trial_id, result in _by_id(results).items():
        assert result.status == reference[trial_id].status
        _assert_rows_close(result.measurements, reference[trial_id].measurements)


def test_trials_are_handed_over_as_they_finish_with_their_share_of_time() -> None:
    results = _results("mnist1d-mlp", "nesterov", "cohort", False)
    steps = [r.steps for r in results]
    assert steps == sorted(steps), "a trial that finishes earlier is handed over earlier"
    assert steps[0] < steps[-1]
    for result in results:
        assert 0 < result.train_time < result.wall_time


def test_a_stored_bound_prunes_from_the_start() -> None:
    study = _study("nqm", "momentum")
    specs = study.trial_specs(16)
    steps = evaluation_steps(150, GROWTH)
    plan = plan_cohort(study.workload, study.workload.data(), specs, check_speed=False)
    assert plan is not None
    results: list[TrialResult] = []
    bound = RaceBound(step=steps[3], trial_id=1)
    final = train_cohort(
        study.workload,
        study.workload.data(),
        specs,
        _rules("nqm"),
        steps,
        True,
        bound,
        results.append,
        plan,
    )
    assert final is not None and not bound.improved_by(final.step, final.trial_id)
    for result in results:
        assert result.steps <= bound.last_useful_step(result.spec.trial_id)


@pytest.mark.parametrize("class_major", [True, False], ids=["class-major", "row-wise"])
def test_mlp_trials_follow_the_reference_bit_for_bit_even_where_training_is_chaotic(
    class_major: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if class_major and not class_major_log_softmax_is_exact(10, torch.float32):
        pytest.skip("this machine's log-softmax kernels differ between layouts")
    if not class_major:
        monkeypatch.setattr(cohort_module, "class_major_log_softmax_is_exact", lambda *_: False)
    study = _study("mnist1d-mlp", "nesterov")
    model = study.workload.make_model()
    assert isinstance(model, nn.Sequential)
    assert MlpKernels(model, ParameterLayout.of(model)).class_major == class_major
    specs = _chaotic_specs(study, trials=3, batch_size=32, steps=250)
    never = StopRules(target=0.0, maximize=False, divergence_factor=1e9)
    reference = _by_id(_run("reference", study.workload, specs, never, False))
    cohort = _by_id(_run("cohort", study.workload, specs, never, False))
    for trial_id, expected in reference.items():
        got = cohort[trial_id].measurements
        assert [r["step"] for r in got] == [r["step"] for r in expected.measurements]
        for key in ("val/classification_error", "test/classification_error"):
            assert [r[key] for r in got] == [r[key] for r in expected.measurements]
        _assert_rows_close(got, expected.measurements)


def test_divergence_is_found_at_the_same_evaluation() -> None:
    study = _study("mnist1d-mlp", "momentum")
    space = {
        "learning_rate": {"scale": "log", "low": 2.0, "high": 30.0},
        "momentum": {"scale": "reverse_log", "low": 0.5, "high": 0.99},
    }
    study = Study(study.config.model_copy(update={"search_space": space}), Path("unused.sqlite"))
    specs = study.trial_specs(32)
    reference = _by_id(_run("reference", study.workload, specs, _rules("mnist1d-mlp"), False))
    cohort = _by_id(_run("cohort", study.workload, specs, _rules("mnist1d-mlp"), False))
    assert any(r.status == Status.INFEASIBLE for r in reference.values())
    for trial_id, expected in reference.items():
        assert (cohort[trial_id].status, cohort[trial_id].steps) == (
            expected.status,
            expected.steps,
        )


# -- micro-batches and sizing -------------------------------------------------------------


def _kernel_setup(workload_name: str, batch_size: int) -> tuple[Workload, list[nn.Module], Study]:
    study = _study(workload_name, "nesterov")
    specs = study.trial_specs(batch_size)
    models = [initialised_model(study.workload, s.init_seed) for s in specs[:3]]
    return study.workload, models, study


@pytest.mark.parametrize("workload_name", ["mnist1d-mlp", "nqm", "mnist1d-cnn"])
def test_micro_batches_add_up_to_the_whole_batch_update(workload_name: str) -> None:
    workload, models, _ = _kernel_setup(workload_name, 24)
    layout = ParameterLayout.of(models[0])
    data = workload.data()
    kernels = (
        MlpKernels(models[0], layout)  # type: ignore[arg-type]
        if workload_name == "mnist1d-mlp"
        else FunctionalKernels(workload, models, layout, data.train.inputs[:1])
    )
    params = torch.stack([layout.flatten(m) for m in models])
    batches = [workload.batches(seed, 24, data) for seed in range(len(models))]
    pairs = [next(stream) for stream in batches]
    inputs = torch.stack([p[0] for p in pairs])
    targets = torch.stack([p[1] for p in pairs])
    rows = slice(0, len(models))
    whole = torch.empty_like(params)
    whole_loss = kernels.accumulate(params, rows, inputs, targets, 0.0, 24, whole, True)
    split = torch.empty_like(params)
    split_loss = sum(
        kernels.accumulate(
            params, rows, inputs[:, s : s + 10], targets[:, s : s + 10], 0.0, 24, split, s == 0
        )
        for s in range(0, 24, 10)
    )
    torch.testing.assert_close(split, whole, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(split_loss, whole_loss, rtol=1e-5, atol=1e-6)


def test_sizing_splits_a_batch_that_does_not_fit_and_stays_within_memory() -> None:
    study = _study("mnist1d-mlp", "momentum")
    specs = study.trial_specs(64)
    data = study.workload.data()
    roomy = plan_cohort(study.workload, data, specs, check_speed=False)
    assert roomy is not None
    assert (roomy.micro_batch, roomy.cohort_size) == (64, len(specs))
    model = initialised_model(study.workload, 0)
    state_bytes = 3 * 4 * sum(p.numel() for p in model.parameters())
    row_bytes = MlpKernels(model, ParameterLayout.of(model)).row_bytes()  # type: ignore[arg-type]
    memory = state_bytes + 40 * row_bytes
    tight = plan_cohort(study.workload, data, specs, memory_bytes=memory, check_speed=False)
    assert tight is not None
    assert tight.micro_batch < 64 and tight.cohort_size < len(specs)
    used = tight.cohort_size * state_bytes + tight.chunk_trials * tight.micro_batch * row_bytes
    assert used <= memory


@pytest.mark.parametrize("workload_name", ["mnist1d-mlp", "nqm"])
def test_micro_batched_training_is_step_for_step_the_same(workload_name: str) -> None:
    study = _study(workload_name, "momentum")
    specs = [replace(s, step_budget=12) for s in study.trial_specs(64)]
    data = study.workload.data()
    whole = plan_cohort(study.workload, data, specs, check_speed=False)
    assert whole is not None and whole.micro_batch == 64
    split = replace(whole, micro_batch=20)
    unreachable = StopRules(target=0.0, maximize=False)

    def run(engine: Engine, plan: CohortPlan | None) -> dict[int, TrialResult]:
        return _by_id(_run(engine, study.workload, specs, unreachable, False, plan, 1.01))

    ours, unsplit, reference = run("cohort", split), run("cohort", whole), run("reference", None)
    for trial_id, expected in unsplit.items():
        assert [r["step"] for r in expected.measurements] == list(range(13))
        for key in ("train/loss", "val/loss"):
            got = [r[key] for r in ours[trial_id].measurements]
            assert got == pytest.approx(
                [r[key] for r in expected.measurements], rel=1e-5, nan_ok=True
            )
        _assert_rows_close(ours[trial_id].measurements, reference[trial_id].measurements)


def test_cohort_size_shrinks_to_fit_and_successive_cohorts_pass_the_bound_on() -> None:
    study = _study("nqm", "nesterov")
    specs = study.trial_specs(16)
    plan = plan_cohort(study.workload, study.workload.data(), specs, check_speed=False)
    assert plan is not None and plan.cohort_size == len(specs)
    small = replace(plan, cohort_size=1, chunk_trials=1)
    raced = _run("cohort", study.workload, specs, _rules("nqm"), True, small)
    full = _results("nqm", "nesterov", "reference", False)
    metric = "val/loss"
    assert _steps_to_result(raced, metric, _rules("nqm")) == _steps_to_result(
        full, metric, _rules("nqm")
    )


def test_concurrent_workers_and_background_evaluation_change_no_number() -> None:
    study = _study("mnist1d-mlp", "nesterov")
    specs = study.trial_specs(32)
    serial = plan_cohort(study.workload, study.workload.data(), specs, check_speed=False)
    assert serial is not None
    concurrent = replace(serial, chunk_trials=1, workers=2, eval_workers=2, eval_examples=500)
    beside = replace(serial, background_evaluation=True)
    rules = _rules("mnist1d-mlp")
    for race in (False, True):
        expected = _by_id(_run("cohort", study.workload, specs, rules, race, serial))
        for plan in (concurrent, beside):
            got = _by_id(_run("cohort", study.workload, specs, rules, race, plan))
            assert got.keys() == expected.keys()
            for trial_id, result in expected.items():
                assert (got[trial_id].status, got[trial_id].steps) == (result.status, result.steps)
                # Evaluating in parts of another size changes the loss sums' rounding only.
                _assert_rows_close(got[trial_id].measurements, result.measurements)
                errors = [r["val/classification_error"] for r in got[trial_id].measurements]
                assert errors == [r["val/classification_error"] for r in result.measurements]


class _DoneAtOnce(Executor):
    """An executor whose futures are done when submitted: an evaluation beside training that
    finishes before the next stretch's first step."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        future.set_result(fn(*args, **kwargs))
        return future


def test_trials_stop_as_soon_as_an_evaluation_beside_training_ends_or_prunes_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    study = _study("mnist1d-mlp", "nesterov")
    specs = study.trial_specs(32)
    serial = plan_cohort(study.workload, study.workload.data(), specs, check_speed=False)
    assert serial is not None and serial.workers == serial.eval_workers == 1
    trial_steps: list[int] = []
    train_steps = cohort_module._CohortState.train_steps

    def counted(
        state: cohort_module._CohortState, batches: Iterator[Any], rates: torch.Tensor
    ) -> Iterator[torch.Tensor]:
        for losses in train_steps(state, batches, rates):
            trial_steps[-1] += len(losses)
            yield losses

    measure = cohort_module._Lockstep._measure

    def instant(lockstep: cohort_module._Lockstep, params: torch.Tensor, workers: int) -> Any:
        values = measure(lockstep, params, workers)
        lockstep.evaluation_seconds = 0.0  # so that every evaluation goes beside training
        return values

    monkeypatch.setattr(cohort_module._CohortState, "train_steps", counted)
    monkeypatch.setattr(cohort_module._Lockstep, "_measure", instant)
    monkeypatch.setattr(cohort_module, "worker_threads", lambda count, threads: _DoneAtOnce())
    runs = {}
    for plan in (serial, replace(serial, background_evaluation=True)):
        trial_steps.append(0)
        runs[plan.background_evaluation] = _by_id(
            _run("cohort", study.workload, specs, _rules("mnist1d-mlp"), True, plan)
        )
    # Its outcome is applied before the next stretch trains a step: no trial trains a step
    # that the evaluation in the foreground would have spared.
    assert trial_steps[0] == trial_steps[1]
    assert any(r.status == Status.PRUNED for r in runs[False].values())
    for trial_id, result in runs[False].items():
        beside = runs[True][trial_id]
        assert (beside.status, beside.steps) == (result.status, result.steps)
        assert beside.measurements == result.measurements


def test_sampler_blocks_are_the_same_batches_as_one_at_a_time() -> None:
    one, block = EpochSampler(50, 7, seed=3), EpochSampler(50, 7, seed=3)
    expected = torch.stack([one.next_indices() for _ in range(23)])
    got = torch.cat([block.next_block(5), block.next_block(0), block.next_block(18)])
    assert torch.equal(got, expected)


@pytest.mark.parametrize("engine", ["cohort", "reference"])
def test_engines_draw_batches_from_the_data_given_without_loading_the_workload_s_own(
    engine: Engine,
) -> None:
    # A workload handed its data must not read its own files again: for a real data set that
    # took seconds, inside the first trial's timed steps.
    study = _study("mnist1d-mlp", "nesterov")
    specs = study.trial_specs(CASES["mnist1d-mlp"].batch_size)[:2]
    data = study.workload.data()
    fresh = get_workload("mnist1d-mlp")

    def refuse() -> Data:
        raise AssertionError("the workload loaded its own data")

    fresh.load_data = refuse  # type: ignore[method-assign]
    plan = plan_cohort(fresh, data, specs, check_speed=False) if engine == "cohort" else None
    results: list[TrialResult] = []
    run_cohort(
        engine, fresh, data, specs, _rules("mnist1d-mlp"), [0, 3], False, None, results.append, plan
    )
    assert sorted(r.steps for r in results) == [3, 3]
    inputs, _ = next(fresh.batches(specs[0].data_seed, 5, data))
    assert all((data.train.inputs == row).all(1).any() for row in inputs)


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores to tell one from many")
def test_worker_threads_run_their_kernels_on_the_plan_s_threads() -> None:
    # Intra-op settings are per thread: an unpinned worker multiplies on every core, and two
    # such workers beside each other fight over the cores.
    left, right = torch.randn(768, 768), torch.randn(768, 768)

    def cpu_per_wall() -> float:
        torch.mm(left, right)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(20):
            torch.mm(left, right)
        return (time.process_time() - cpu) / (time.perf_counter() - wall)

    with intra_op_threads(1), worker_threads(1, threads=1) as pool:
        assert pool.submit(cpu_per_wall).result() < 1.5


def test_intra_op_threads_are_restored() -> None:
    before = torch.get_num_threads()
    with intra_op_threads(before + 1):
        assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before


# -- user models --------------------------------------------------------------------------


class TwoTower(nn.Module):
    """Not a Sequential: two branches added, so only the functional kernels can batch it."""

    def __init__(self) -> None:
        super().__init__()
        self.left = nn.Linear(8, 16)
        self.right = nn.Linear(8, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.left(inputs)) + torch.relu(self.right(inputs)))


def _user_workload(model: Callable[[], nn.Module], smoothing: tuple[float, ...]) -> Workload:
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 8, generator=generator) * 2

    def split(size: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(0, 3, (size,), generator=generator)
        return centres[labels] + torch.randn(size, 8, generator=generator), labels

    workload = CustomWorkload.create(
        "toy", model, split(512), split(256), split(256), target=0.2, learning_rate_range=(0.01, 1)
    )
    workload.label_smoothing_values = smoothing
    return workload


def _user_specs(workload: Workload, trials: int = 6) -> list[TrialSpec]:
    config = StudyConfig(
        workload="toy", optimizer="nesterov", batch_sizes=(16,), trials=trials, step_budget=60
    )
    return Study(config, Path("unused.sqlite"), workload).trial_specs(16)


@pytest.mark.parametrize(
    ("model", "kind"),
    [
        (lambda: nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)), "mlp"),
        (TwoTower, "functional"),
    ],
)
def test_user_models_with_label_smoothing_match_the_reference(
    model: Callable[[], nn.Module], kind: str
) -> None:
    workload = _user_workload(model, smoothing=(0.0, 0.1, 0.3))
    specs = _user_specs(workload)
    assert len({s.label_smoothing for s in specs}) > 1
    assert choose_kernels(workload, workload.data(), specs) == kind
    rules = StopRules(target=0.2, maximize=False)
    reference = _by_id(_run("reference", workload, specs, rules, False))
    cohort = _by_id(_run("cohort", workload, specs, rules, False))
    for trial_id, expected in reference.items():
        assert cohort[trial_id].status == expected.status
        _assert_rows_close(cohort[trial_id].measurements, expected.measurements)


@pytest.mark.parametrize(
    "model",
    [
        lambda: nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.2), nn.ReLU(), nn.Linear(16, 3)),
        lambda: nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3)),
    ],
    ids=["dropout", "batch-norm"],
)
def test_models_that_cannot_be_batched_fall_back_to_the_reference(
    model: Callable[[], nn.Module],
) -> None:
    workload = _user_workload(model, smoothing=())
    specs = _user_specs(workload, trials=2)
    assert plan_cohort(workload, workload.data(), specs) is None
    results: list[TrialResult] = []
    steps = evaluation_steps(60, GROWTH)
    rules = StopRules(target=0.2, maximize=False)
    data = workload.data()
    run_cohort("cohort", workload, data, specs, rules, steps, False, None, results.append)
    assert sorted(r.spec.trial_id for r in results) == [0, 1]
    assert all(r.measurements[-1]["step"] == r.steps for r in results)


def test_a_dropout_trial_s_curve_depends_on_its_own_seed_only() -> None:
    workload = _user_workload(
        lambda: nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.5), nn.ReLU(), nn.Linear(16, 3)),
        smoothing=(),
    )
    specs = _user_specs(workload, trials=3)
    never = StopRules(target=0.0, maximize=False, divergence_factor=1e9)
    steps = evaluation_steps(60, GROWTH)
    data = workload.data()

    def alone(spec: TrialSpec) -> list[dict[str, float]]:
        return train_reference(workload, data, spec, never, steps).measurements

    together = _by_id(_run("cohort", workload, specs, never, False, plan=None, fallback=True))
    torch.manual_seed(123)  # whatever the process's generator holds
    first = alone(specs[2])
    torch.rand(1000)
    assert _exact(first) == _exact(alone(specs[2])) == _exact(together[2].measurements)
    # The masks do differ from trial to trial.
    assert _exact(alone(replace(specs[2], seed=specs[1].seed))) != _exact(first)


def test_the_reference_s_numbers_do_not_depend_on_the_process_s_threads() -> None:
    # Chaotic trials at batch size 1024: a matrix multiply split over two threads adds up in
    # another order, and the curve drifts; the reference runs on one thread whatever is set.
    study = _study("mnist1d-mlp", "nesterov")
    specs = _chaotic_specs(study, trials=2, batch_size=1024, steps=120)
    never = StopRules(target=0.0, maximize=False, divergence_factor=1e9)
    runs = []
    for threads in (1, 2):
        with intra_op_threads(threads):
            runs.append(_by_id(_run("reference", study.workload, specs, never, False)))
            assert torch.get_num_threads() == threads  # the caller's setting is restored
    for trial_id, result in runs[0].items():
        assert _exact(result.measurements) == _exact(runs[1][trial_id].measurements)


def test_nesterov_with_momentum_zero_trains_as_plain_sgd_in_both_engines() -> None:
    # The default search spaces reach momentum 0 (1 - momentum up to 1); torch refuses
    # Nesterov without momentum, so the reference trains such a trial with plain SGD.
    study = _study("mnist1d-mlp", "nesterov")
    space = {
        "learning_rate": {"scale": "log", "low": 0.01, "high": 0.1},
        "momentum": {"scale": "discrete", "values": [0.0]},
    }
    config = study.config.model_copy(update={"search_space": space, "trials": 2})
    specs = [replace(s, step_budget=40) for s in Study(config, Path("u.sqlite")).trial_specs(32)]
    never = StopRules(target=0.0, maximize=False, divergence_factor=1e9)
    reference = _by_id(_run("reference", study.workload, specs, never, False))
    cohort = _by_id(_run("cohort", study.workload, specs, never, False))
    for trial_id, expected in reference.items():
        got = cohort[trial_id].measurements
        assert [r["val/classification_error"] for r in got] == [
            r["val/classification_error"] for r in expected.measurements
        ]
        _assert_rows_close(got, expected.measurements)


def _chaotic_specs(study: Study, trials: int, batch_size: int, steps: int) -> list[TrialSpec]:
    """Trials at effective learning rates of 3 to 10: far past the edge of stability, where a
    difference in the last bit of one update grows into a different curve within a few hundred
    steps."""
    space = {
        "learning_rate": {"scale": "log", "low": 0.3, "high": 1.0},
        "momentum": {"scale": "reverse_log", "low": 0.85, "high": 0.9},
    }
    config = study.config.model_copy(update={"search_space": space, "trials": trials})
    planned = Study(config, Path("u.sqlite")).trial_specs(batch_size)
    return [replace(spec, step_budget=steps) for spec in planned]


def _exact(rows: list[dict[str, float]]) -> list[dict[str, float | None]]:
    """Rows with NaN (the training loss at step 0) as None, so that == compares every bit."""
    return [{k: None if math.isnan(v) else v for k, v in row.items()} for row in rows]


def test_a_functional_trial_s_numbers_do_not_depend_on_how_many_share_its_call() -> None:
    # vmap over one trial runs other convolution kernels than over several; a lone trial is
    # computed beside a copy of itself, so its bits are those it gets in any larger call.
    study = _study("mnist1d-cnn", "nesterov")
    specs = study.trial_specs(CASES["mnist1d-cnn"].batch_size)[:3]
    specs = [replace(s, step_budget=30) for s in specs]
    never = StopRules(target=0.0, maximize=False, divergence_factor=1e9)
    data = study.workload.data()
    plan = plan_cohort(study.workload, data, specs, check_speed=False)
    assert plan is not None and plan.kernels == "functional"
    runs = [
        _by_id(_run("cohort", study.workload, specs, never, False, replace(plan, chunk_trials=n)))
        for n in (1, 3)
    ]
    for trial_id, result in runs[0].items():
        assert _exact(result.measurements) == _exact(runs[1][trial_id].measurements)
