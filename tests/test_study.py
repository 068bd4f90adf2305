import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from batchscale import (
    ConfigError,
    CustomWorkload,
    StoreError,
    Study,
    StudyConfig,
    build_config,
    load_study,
)
from batchscale.training.trial import Status

from .conftest import TINY_NQM


def test_tiny_study_measures_and_summarises(tiny_store: Path) -> None:
    store = load_study(str(tiny_store))
    trials = store.trials()
    assert len(trials) == 12
    assert set(trials["status"]) <= {s.value for s in Status}
    measurements = store.measurements()
    steps = measurements.index.get_level_values("step")
    assert steps.min() == 0
    # each trial has its own seed, recorded
    assert trials["seed"].nunique() == 12


def test_rerun_does_no_new_training(tiny_store: Path, tiny_config: StudyConfig) -> None:
    before = load_study(str(tiny_store)).trials()
    Study(tiny_config, tiny_store).run()
    after = load_study(str(tiny_store)).trials()
    pd.testing.assert_frame_equal(before, after)


def test_more_trials_extend_the_same_points(tiny_store: Path, tiny_config: StudyConfig) -> None:
    before = load_study(str(tiny_store)).trials()
    Study(tiny_config.model_copy(update={"trials": 6}), tiny_store).run()
    after = load_study(str(tiny_store)).trials()
    assert len(after) == 18
    pd.testing.assert_frame_equal(after.loc[before.index, before.columns], before)


def test_race_and_full_agree_on_steps_to_result(tmp_path: Path, tiny_config: StudyConfig) -> None:
    race = Study(tiny_config, tmp_path / "race.sqlite").run()
    full = Study(tiny_config.model_copy(update={"mode": "full"}), tmp_path / "full.sqlite").run()
    assert [r.steps_to_result for r in race.batch_sizes] == [
        r.steps_to_result for r in full.batch_sizes
    ]
    assert [r.best_trial for r in race.batch_sizes] == [r.best_trial for r in full.batch_sizes]
    assert any(r.steps_to_result is not None for r in race.batch_sizes)
    assert sum(r.pruned for r in full.batch_sizes) == 0


def test_divergence_is_a_status_not_a_crash(tmp_path: Path) -> None:
    config = StudyConfig(
        **{
            **TINY_NQM,
            "batch_sizes": (8,),
            "trials": 3,
            "search_space": {
                "learning_rate": {"scale": "log", "low": 50.0, "high": 100.0},
                "momentum": {"scale": "reverse_log", "low": 0.5, "high": 0.9},
            },
        }
    )
    summary = Study(config, tmp_path / "d.sqlite").run()
    assert summary.batch_sizes[0].diverged == 3
    trials = load_study(str(tmp_path / "d.sqlite")).trials()
    assert (trials["status"] == "INFEASIBLE").all()
    assert (trials["steps"] < 120).all()  # stopped early, did not run the whole budget


def test_store_of_another_study_is_refused_and_untouched(
    tiny_store: Path, tiny_config: StudyConfig
) -> None:
    before = tiny_store.read_bytes()
    with pytest.raises(StoreError, match="different study"):
        Study(tiny_config.model_copy(update={"optimizer": "nesterov"}), tiny_store).run()
    assert tiny_store.read_bytes() == before


def _own_workload(hidden: int, data_seed: int) -> CustomWorkload:
    generator = torch.Generator().manual_seed(data_seed)
    inputs = torch.randn(300, 5, generator=generator)
    targets = (inputs[:, 0] > 0).long() + (inputs[:, 1] > 0).long()
    return CustomWorkload.create(
        "my-mlp",
        model=lambda: nn.Sequential(nn.Linear(5, hidden), nn.ReLU(), nn.Linear(hidden, 3)),
        train=(inputs[:200], targets[:200]),
        validation=[inputs[200:250], targets[200:250]],  # a list works as a tuple does
        test=(inputs[250:], targets[250:]),
        target=0.3,
        max_steps=60,
    )


def test_a_store_of_another_model_or_other_data_under_the_same_name_is_refused(
    tmp_path: Path,
) -> None:
    store = tmp_path / "own.sqlite"
    config = StudyConfig(batch_sizes=(8,), trials=2, device="cpu")
    Study(config, store, workload=_own_workload(16, data_seed=0)).run()
    before = store.read_bytes()
    with pytest.raises(StoreError, match="its model has 147 parameters, this one 291"):
        Study(config, store, workload=_own_workload(32, data_seed=0)).run()
    with pytest.raises(StoreError, match="its data differ from this 'my-mlp'"):
        Study(config, store, workload=_own_workload(16, data_seed=1)).run()
    assert store.read_bytes() == before
    # The same model and data resume, with nothing left to train.
    summary = Study(config, store, workload=_own_workload(16, data_seed=0)).run()
    assert summary.batch_sizes[0].trials == 2


def test_bad_target_and_unknown_workload(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="outside the range"):
        Study(StudyConfig(workload="nqm", target=-1.0), tmp_path / "x.sqlite")
    with pytest.raises(ConfigError, match="known workloads"):
        Study(StudyConfig(workload="imagenet-resnet"), tmp_path / "x.sqlite")
    # An error of 0 can never be beaten strictly: the study would train to its budget for nothing.
    with pytest.raises(ConfigError, match="target 0 can never be reached: classification_error"):
        Study(StudyConfig(target=0.0), tmp_path / "x.sqlite")
    with pytest.raises(ConfigError, match="goal 0 can never be reached"):
        Study(StudyConfig(target=0.3, goals=(0.0,)), tmp_path / "x.sqlite")
    assert not list(tmp_path.iterdir())


def test_one_goal_or_one_batch_size_may_be_given_bare(tmp_path: Path) -> None:
    file = tmp_path / "study.toml"
    file.write_text("goals = 0.3\nbatch_sizes = 16\n")
    config = build_config(file)
    assert config.goals == (0.3,) and config.batch_sizes == (16,)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('[search_space.learning_rate]\nscale = "log"\nlwo = 0.01\nhigh = 1.0',
         "dimension 'learning_rate' has an unknown key 'lwo'; it takes scale, low, high"),
        ('[search_space.learning_rate]\nscale = "logg"\nlow = 0.01\nhigh = 1.0',
         "dimension 'learning_rate': 'scale' input should be 'log'"),
        ('[search_space.learning_rate]\nscale = "log"\nlow = 1.0\nhigh = 0.1',
         "dimension 'learning_rate' has an empty or inverted range"),
        ('[search_space.learning_rat]\nscale = "log"\nlow = 0.01\nhigh = 1.0',
         "unknown dimension 'learning_rat'; the trials read learning_rate"),
        ('batch_sizes = "16,,32"', "batch sizes '16,,32' have an empty entry"),
        ('[search_space.learning_rate]\nname = "x"\nscale = "log"\nlow = 0.01\nhigh = 1.0',
         "dimension 'learning_rate' has an unknown key 'name'"),
        ('[search_space.learning_rate]\nscale = "log"\nlow = 0.01\nhigh = 1.0\ninteger = true',
         "dimension 'learning_rate' is log: only a linear dimension takes 'integer = true'"),
        ('[search_space.learning_rate]\nscale = "linear"\nlow = 1\nhigh = 3\ninteger = "yes"',
         "dimension 'learning_rate': 'integer' input should be a valid boolean"),
        ('[search_space.learning_rate]\nscale = "linear"\nlow = 0.5\nhigh = 3\ninteger = true',
         "integer dimension 'learning_rate' needs whole-number bounds"),
        ("epoch_budget = inf", "invalid setting 'epoch_budget': Input should be a finite number"),
        ("eval_growth = nan", "invalid setting 'eval_growth': Input should be a finite number"),
        ("seed = 99999999999999999999", "invalid setting 'seed': Input should be less than"),
        ("goals = []", "invalid setting 'goals': goals [] hold no goal"),
        ('goals = ","', "invalid setting 'goals': goals ',' hold no goal"),
        ("goals = true", "invalid setting 'goals': goals True are not a list of numbers"),
        ("batch_sizes = true", "batch sizes True are not a list of positive integers"),
        # TOML's true would otherwise read as 1.
        ("target = true", "invalid setting 'target': true is a truth value, not a number"),
        ("trials = false", "invalid setting 'trials': false is a truth value, not a number"),
        ("goals = [0.5, true]", "invalid setting 'goals.1': true is a truth value, not a number"),
        ('noise_scale = "yes"', "invalid setting 'noise_scale': Input should be a valid boolean"),
        ('[search_space.learning_rate]\nscale = "linear"\nlow = true\nhigh = 3',
         "dimension 'learning_rate': 'low' true is a truth value, not a number"),
    ],
)  # fmt: skip
def test_config_errors_name_the_dimension_or_entry_at_fault(
    table: str, message: str, tmp_path: Path
) -> None:
    file = tmp_path / "study.toml"
    file.write_text(table + "\n")
    with pytest.raises(ConfigError, match=re.escape(message)):
        Study(build_config(file), tmp_path / "x.sqlite")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.toml"]


RESUME_SCRIPT = """
import sys
from batchscale import Study, StudyConfig
config = StudyConfig(workload="nqm", optimizer="nesterov", batch_sizes=(4, 8, 16, 32), trials=6,
                     target=0.5, step_budget=3000, engine="reference", mode="full", device="cpu")
Study(config, sys.argv[1]).run()
"""


def test_kill_9_mid_study_loses_nothing_finished(tmp_path: Path) -> None:
    store = tmp_path / "resume.sqlite"
    clean = tmp_path / "clean.sqlite"
    script = tmp_path / "run_study.py"
    script.write_text(RESUME_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen([sys.executable, str(script), str(store)], env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if store.exists() and len(load_study(str(store)).trials()) >= 5:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    interrupted = load_study(str(store)).trials()
    assert 5 <= len(interrupted) < 24, "the kill should land mid-study"
    subprocess.run([sys.executable, str(script), str(store)], env=env, check=True)
    subprocess.run([sys.executable, str(script), str(clean)], env=env, check=True)
    resumed, reference = load_study(str(store)), load_study(str(clean))
    columns = ["seed", "status", "steps", "learning_rate", "momentum"]
    pd.testing.assert_frame_equal(resumed.trials()[columns], reference.trials()[columns])
    pd.testing.assert_frame_equal(resumed.measurements(), reference.measurements())
    # trials stored before the kill were not rerun
    kept = resumed.trials().loc[interrupted.index, "finished_at"]
    assert (kept == interrupted["finished_at"]).all()


def test_epoch_budget_trains_every_batch_size_on_the_same_examples(tmp_path: Path) -> None:
    config = StudyConfig(
        workload="mnist1d-mlp",
        optimizer="momentum",
        batch_sizes=(64, 256),
        trials=2,
        epoch_budget=0.5,
        train_size=2048,
        width=16,
        engine="reference",
        device="cpu",
    )
    study = Study(config, tmp_path / "e.sqlite")
    assert study.config.mode == "full"  # nothing can be raced without a goal to stop at
    assert study.train_examples == 2048
    assert [study.step_budget(b) for b in (64, 256)] == [16, 4]
    study.run()
    store = load_study(str(tmp_path / "e.sqlite"))
    trials = store.trials()
    # no trial stopped at the goal: each ran its whole budget of examples (or diverged)
    finished = trials[trials["status"] == "COMPLETE"]
    assert (finished["steps"] * finished.index.get_level_values("batch_size") == 1024).all()
    assert store.metadata["budget"] == {"epochs": 0.5, "train_examples": 2048}
    from batchscale.report import write_report

    html = write_report(tmp_path / "e.sqlite", tmp_path / "r", bootstrap_samples=0).read_text()
    assert "trained every batch size for 0.5 epochs" in html


def test_train_size_and_width_change_the_study(tmp_path: Path) -> None:
    base = {"workload": "mnist1d-mlp", "batch_sizes": (32,), "trials": 1, "step_budget": 5,
            "engine": "reference", "device": "cpu"}  # fmt: skip
    small = Study(StudyConfig(**base, train_size=0.25, width=8), tmp_path / "a.sqlite")
    assert small.train_examples == 9000
    assert small.identity()["train_size"] == 0.25 and small.identity()["width"] == 8
    small.run()
    with pytest.raises(StoreError, match="train_size"):
        Study(StudyConfig(**base, train_size=0.5, width=8), tmp_path / "a.sqlite").run()
    with pytest.raises(ConfigError, match="fraction"):
        Study(StudyConfig(**base, train_size=10.5), tmp_path / "b.sqlite")
    with pytest.raises(ConfigError, match="no epochs"):
        Study(StudyConfig(workload="nqm", epoch_budget=1.0), tmp_path / "c.sqlite")


def test_the_paper_s_decay_steps_dimension_sets_each_trial_s_schedule(tmp_path: Path) -> None:
    space = {
        "learning_rate": {"scale": "log", "low": 0.01, "high": 0.5},
        "momentum": {"scale": "reverse_log", "low": 0.5, "high": 0.9},
        "learning_rate_decay_steps": {"scale": "linear", "low": 5, "high": 60, "integer": True},
    }
    config = StudyConfig(**{**TINY_NQM, "search_space": space})
    study = Study(config, tmp_path / "s.sqlite")
    specs = study.trial_specs(16)
    lengths = [spec.decay_steps for spec in specs]
    assert lengths == [spec.params["learning_rate_decay_steps"] for spec in specs]
    assert all(5 <= n <= 60 for n in lengths) and len(set(lengths)) > 1
    assert all(spec.step_budget == 120 for spec in specs)  # not the budget's fraction


def test_an_epoch_budget_counts_whole_examples() -> None:
    # 1.1 epochs of 12,000 examples is 13,200: 825 steps of 16, exactly (the float quotient
    # is 825.0000000000001), and 104 steps of 128 (13,312 examples, the first to cover it).
    config = StudyConfig(workload="mnist1d-mlp", epoch_budget=1.1, train_size=12000)
    study = Study(config, Path("unused.sqlite"))
    assert study.train_examples == 12000
    assert [study.step_budget(b) for b in (16, 128)] == [825, 104]


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"model": nn.Linear(5, 3)}, TypeError, "model must be a function that builds a fresh"),
        ({"metric": "accuracy"}, TypeError, "metric must be a batchscale Metric"),
        ({"name": " "}, ValueError, "give the workload a name"),
        ({"name": "nqm"}, ValueError, "'nqm' is a built-in workload's name"),
        ({"max_steps": 0}, ValueError, "min_steps and max_steps must be at least 1, got 200 and 0"),
        ({"model": lambda: nn.Linear(5, 2)}, ValueError, "targets go up to class 2, but the "
         "model gives 2 logits: make its last layer 3 wide"),
        ({"model": lambda: nn.Flatten(0)}, ValueError, "must return logits of shape (examples, "
         "classes); for 2 examples it returned (10,)"),
        ({"train": (torch.zeros(4, 5), torch.zeros(4))}, TypeError,
         "the train targets must be class indices (integers), not torch.float32"),
        ({"test": (torch.zeros(4, 5), torch.tensor([0, -1, 0, 0]))}, ValueError,
         "the test targets hold -1: class indices start at 0"),
    ],
)  # fmt: skip
def test_a_custom_workload_s_mistakes_are_refused_at_creation(
    change: dict[str, object], error: type[Exception], message: str
) -> None:
    inputs = torch.randn(20, 5)
    targets = torch.arange(20) % 3
    given: dict[str, object] = {
        "name": "mine",
        "model": lambda: nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3)),
        "train": (inputs, targets),
        "validation": (inputs, targets),
        "test": (inputs, targets),
        "target": 0.3,
        **change,
    }
    with pytest.raises(error, match=re.escape(message)):
        CustomWorkload.create(**given)  # type: ignore[arg-type]


def test_registering_needs_a_factory_and_a_name_of_one_s_own() -> None:
    from batchscale import register_workload

    with pytest.raises(TypeError, match="factory must be a function"):
        register_workload("mine", 5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'nqm' is a built-in workload's name"):
        register_workload("nqm", lambda: _own_workload(8, 0))


def test_settings_that_name_another_workload_than_the_one_given_are_refused(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError, match="the settings name the workload 'nqm', but the"):
        Study(StudyConfig(workload="nqm"), tmp_path / "s.sqlite", _own_workload(8, 0))
    # Left unset, the workload given names the study.
    study = Study(StudyConfig(batch_sizes=(8,)), tmp_path / "s.sqlite", _own_workload(8, 0))
    assert study.config.workload == "my-mlp"


def test_a_different_study_is_named_in_the_user_s_terms(tmp_path: Path) -> None:
    store = tmp_path / "s.sqlite"
    base = {"workload": "mnist1d-mlp", "batch_sizes": (64,), "trials": 1, "step_budget": 20}
    Study(StudyConfig(**base), store).run()
    before = store.read_bytes()

    def refusal(**changes: object) -> str:
        with pytest.raises(StoreError) as refused:
            Study(StudyConfig(**{**base, **changes}), store).run()
        return str(refused.value)

    assert "(the budget is 20 steps there, 2 epochs of 36,000 examples here)" in refusal(
        step_budget=None, epoch_budget=2.0
    )
    space = Study(StudyConfig(**base), store).search_space.model_dump(mode="json")
    narrow = {d.pop("name"): d for d in space["dimensions"]}
    narrow["learning_rate"]["high"] = 1.0
    assert "(the search space's learning_rate is log[0.01, 3] there, log[0.01, 1] here)" in (
        refusal(search_space=narrow)
    )
    assert "(train_size is None there, 0.5 here)" in refusal(train_size=0.5)
    assert store.read_bytes() == before
    # Every example, written as a fraction or as a count, is the study stored.
    for whole in (1.0, 36_000):
        Study(StudyConfig(**{**base, "train_size": whole}), store).run()
