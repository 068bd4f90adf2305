"""The CUDA path gives the CPU's measurements: skipped on machines without a CUDA device.

CI has no GPU; these run wherever one is present (``pytest tests/test_cuda.py``).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from batchscale import Study, StudyConfig, load_study
from batchscale.training.cohort import MlpKernels, ParameterLayout, plan_cohort
from batchscale.training.engine import Engine, run_cohort
from batchscale.training.evaluation import evaluation_steps
from batchscale.training.noise import measure_noise_scale
from batchscale.training.reference import initialised_model, train_reference
from batchscale.training.trial import StopRules, TrialResult
from batchscale.workloads import OPTIMIZERS, Optimizer, get_workload
from tests.conftest import TINY_NQM
from tests.test_cohort import (
    CASES,
    _assert_rows_close,
    _by_id,
    _metric,
    _results,
    _rules,
    _steps_to_result,
    _study,
)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")
# Error rates on 1000 test examples: the GPU's rounding may move two of them across a boundary.
ERROR_SLACK = 2.5e-3


def _run_on_cuda(workload: str, optimizer: Optimizer, engine: Engine) -> dict[int, TrialResult]:
    study = _study(workload, optimizer)
    case = CASES[workload]
    specs = study.trial_specs(case.batch_size)
    data = study.workload.data().to(CUDA)
    plan = None
    if engine == "cohort":
        plan = plan_cohort(study.workload, data, specs, check_speed=False)
        assert plan is not None, "these models batch"
    results: list[TrialResult] = []
    steps = evaluation_steps(case.step_budget, case.growth)
    rules = _rules(workload)
    run_cohort(engine, study.workload, data, specs, rules, steps, False, None, results.append, plan)
    return _by_id(results)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("workload", list(CASES))
def test_both_engines_on_cuda_give_the_cpu_reference_s_measurements(
    workload: str, optimizer: Optimizer
) -> None:
    cpu = _by_id(_results(workload, optimizer, "reference", False))
    rules, metric = _rules(workload), _metric(workload)
    expected = _steps_to_result(list(cpu.values()), metric, rules)
    for engine in ("reference", "cohort"):
        gpu = _run_on_cuda(workload, optimizer, engine)
        assert gpu.keys() == cpu.keys()
        for trial_id, reference in cpu.items():
            assert (gpu[trial_id].status, gpu[trial_id].steps) == (
                reference.status,
                reference.steps,
            ), (engine, trial_id)
            _assert_rows_close(gpu[trial_id].measurements, reference.measurements, ERROR_SLACK)
        assert _steps_to_result(list(gpu.values()), metric, rules) == expected, engine


def test_micro_batches_on_cuda_are_the_same_update() -> None:
    study = _study("mnist1d-mlp", "momentum")
    specs = [replace(s, step_budget=12) for s in study.trial_specs(64)]
    data = study.workload.data().to(CUDA)
    whole = plan_cohort(study.workload, data, specs, check_speed=False)
    assert whole is not None and whole.micro_batch == 64
    unreachable = StopRules(target=0.0, maximize=False)
    runs = []
    for plan in (whole, replace(whole, micro_batch=20)):
        results: list[TrialResult] = []
        run_cohort(
            "cohort",
            study.workload,
            data,
            specs,
            unreachable,
            list(range(13)),
            False,
            None,
            results.append,
            plan,
        )
        runs.append(_by_id(results))
    for trial_id, expected in runs[0].items():
        for key in ("train/loss", "val/loss"):
            got = [r[key] for r in runs[1][trial_id].measurements]
            want = [r[key] for r in expected.measurements]
            assert got == pytest.approx(want, rel=1e-5, nan_ok=True)


def test_sizing_on_cuda_splits_a_batch_that_does_not_fit() -> None:
    study = _study("mnist1d-mlp", "nesterov")
    specs = study.trial_specs(1024)
    data = study.workload.data().to(CUDA)
    timed = plan_cohort(study.workload, data, specs)
    # Ample memory: the whole cohort at the whole batch, or the reference where that is faster.
    if timed is not None:
        assert (timed.cohort_size, timed.micro_batch) == (len(specs), 1024)
    model = initialised_model(study.workload, 0)
    state_bytes = 3 * 4 * sum(p.numel() for p in model.parameters())
    row_bytes = MlpKernels(model, ParameterLayout.of(model)).row_bytes()  # type: ignore[arg-type]
    memory = state_bytes + 200 * row_bytes
    tight = plan_cohort(study.workload, data, specs, memory_bytes=memory, check_speed=False)
    assert tight is not None and tight.micro_batch < 1024
    used = tight.cohort_size * state_bytes + tight.chunk_trials * tight.micro_batch * row_bytes
    assert used <= memory


def test_a_study_chooses_cuda_by_itself_and_finds_the_cpu_s_steps_to_result(
    tmp_path: Path,
) -> None:
    config = StudyConfig(**{**TINY_NQM, "engine": "cohort", "device": "auto"})
    gpu_study = Study(config, tmp_path / "gpu.sqlite")
    assert gpu_study.device.type == "cuda"
    gpu = gpu_study.run()
    cpu = Study(config.model_copy(update={"device": "cpu"}), tmp_path / "cpu.sqlite").run()
    assert [(r.steps_to_result, r.best_trial) for r in gpu.batch_sizes] == [
        (r.steps_to_result, r.best_trial) for r in cpu.batch_sizes
    ]
    times = load_study(str(tmp_path / "gpu.sqlite")).metadata["step_times"]
    assert {entry["device"] for entry in times.values()} == {str(gpu_study.device)}
    # Resumed on the same device, the study keeps its step times rather than measuring again.
    Study(config.model_copy(update={"trials": 5}), tmp_path / "gpu.sqlite").run()
    assert load_study(str(tmp_path / "gpu.sqlite")).metadata["step_times"] == times


def test_the_noise_scale_on_cuda_follows_the_cpu_s_trial() -> None:
    workload = get_workload("nqm")
    params = {"learning_rate": 0.2, "momentum": 0.5}
    traces = [
        measure_noise_scale(workload, params, "momentum", 16, 100, seed=3, device=device)
        for device in ("cpu", "cuda")
    ]
    assert [p.step for p in traces[0].points] == [p.step for p in traces[1].points]
    assert traces[1].b_simple == pytest.approx(traces[0].b_simple, rel=1e-3)
    assert traces[1].points[-1].val_loss == pytest.approx(traces[0].points[-1].val_loss, rel=1e-4)


def test_the_reference_on_cuda_matches_it_on_the_cpu_for_the_cnn() -> None:
    study = _study("mnist1d-cnn", "nesterov")
    spec = replace(study.trial_specs(32)[0], step_budget=30)
    rules = StopRules(target=0.0, maximize=False)
    steps = evaluation_steps(30, 1.3)
    on_cpu = train_reference(study.workload, study.workload.data(), spec, rules, steps)
    on_gpu = train_reference(study.workload, study.workload.data().to(CUDA), spec, rules, steps)
    _assert_rows_close(on_gpu.measurements, on_cpu.measurements, ERROR_SLACK)
