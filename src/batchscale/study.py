"""A study: plan the trials of every batch size, run them through an engine, store, resume.

Only this driver writes the store. Trials already stored are never rerun; a trial that was
running when the process died left nothing behind and starts again from scratch.
"""

from __future__ import annotations

import math
import sqlite3
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from batchscale.analysis.checks import noisy_step_time
from batchscale.analysis.goals import neighbouring_goals, order_goals
from batchscale.analysis.steps_to_result import steps_to_result
from batchscale.analysis.winners import trial_outcomes
from batchscale.config import ConfigError, StudyConfig
from batchscale.executors import CohortJob, CohortWork, Executor, get_executor
from batchscale.search import derive_seed
from batchscale.store import StoreError, StudyStore
from batchscale.training.engine import first_reaching_step, run_cohort
from batchscale.training.evaluation import evaluation_steps, metric_columns
from batchscale.training.noise import NoiseScaleTrace, measure_noise_scale
from batchscale.training.timing import measure_step_time, step_time_threads
from batchscale.training.trial import (
    METAPARAMETERS,
    RaceBound,
    StopRules,
    TrialResult,
    TrialSpec,
)
from batchscale.workloads import Data, Workload, get_workload

# Settings that define what a study measures: a stored study must agree on all of them.
# In the order a difference is reported: the budget before the stop goal and the mode it
# implies (an epoch budget stops nothing early and races nothing).
IDENTITY_KEYS = (
    "workload",
    "optimizer",
    "metric",
    "maximize",
    "target",
    "budget",
    "mode",
    "stop_target",
    "search_space",
    "train_size",
    "width",
    "seed",
    "eval_growth",
    "divergence_factor",
)

# How an identity error names a setting the user never gives by that name.
IDENTITY_NAMES = {"stop_target": "the hardest goal, where trials stop (--goals)"}


def identity_difference(key: str, there: Any, here: Any) -> str:
    """How a stored study's setting ``key`` differs from this run's, in the user's terms."""
    if key == "budget":
        return f"the budget is {_budget_words(there)} there, {_budget_words(here)} here"
    if key == "search_space" and isinstance(there, dict) and isinstance(here, dict):
        stored = {d["name"]: d for d in there.get("dimensions", [])}
        given = {d["name"]: d for d in here.get("dimensions", [])}
        for name in [*given, *(n for n in stored if n not in given)]:
            if stored.get(name) != given.get(name):
                return (
                    f"the search space's {name} is {_dimension_words(stored.get(name))} there, "
                    f"{_dimension_words(given.get(name))} here"
                )
    return f"{IDENTITY_NAMES.get(key, key)} is {there!r} there, {here!r} here"


def _budget_words(budget: Any) -> str:
    if not isinstance(budget, dict):
        return repr(budget)
    if "steps" in budget:
        return f"{budget['steps']:,} steps"
    if "epochs" in budget:
        return f"{budget['epochs']:g} epochs of {budget['train_examples']:,} examples"
    if {"examples", "min_steps", "max_steps"} <= budget.keys():
        return (
            f"the workload's default ({budget['examples']:,} examples, "
            f"{budget['min_steps']:,} to {budget['max_steps']:,} steps)"
        )
    return repr(budget)


def _dimension_words(dimension: dict[str, Any] | None) -> str:
    if dimension is None:
        return "absent"
    if dimension.get("values") is not None:
        return f"one of {list(dimension['values'])}"
    integer = " (integers)" if dimension.get("integer") else ""
    return f"{dimension['scale']}[{dimension['low']:g}, {dimension['high']:g}]{integer}"


# Seeds of replicates come from their own stream, apart from every trial's seed.
REPLICATE_STREAM = 1_000_000


@dataclass
class BatchSizeSummary:
    """One batch size's outcome."""

    batch_size: int
    steps_to_result: int | None
    best_trial: int | None
    best_params: dict[str, float] | None
    trials: int
    # Each trial's outcome as the report counts it (a trial that reached the goal is reached,
    # whatever happened after): see ``batchscale.analysis.trial_outcomes``.
    reached: int
    missed: int
    diverged: int
    pruned: int
    incomplete: int = 0
    step_time: float | None = None
    time_to_result: float | None = None
    replicates: list[int | None] | None = None

    @property
    def replicate_median(self) -> float | None:
        """Median steps to result of the winner's replicates (a replicate that never reached
        the goal counts as infinitely slow); ``None`` without replicates."""
        if not self.replicates:
            return None
        steps = sorted(math.inf if s is None else s for s in self.replicates)
        middle = len(steps) // 2
        value = steps[middle] if len(steps) % 2 else (steps[middle - 1] + steps[middle]) / 2
        return None if math.isinf(value) else float(value)


@dataclass
class StudySummary:
    """What ``batchscale show`` prints."""

    workload: str
    optimizer: str
    metric: str
    target: float
    maximize: bool
    mode: str
    engine: str
    batch_sizes: list[BatchSizeSummary] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {
            "workload": self.workload,
            "optimizer": self.optimizer,
            "metric": self.metric,
            "target": self.target,
            "maximize": self.maximize,
            "mode": self.mode,
            "engine": self.engine,
            "batch_sizes": [
                {**vars(row), "replicate_median": row.replicate_median} for row in self.batch_sizes
            ],
        }


class Progress:
    """Hooks a front end can override to follow a running study; the defaults do nothing."""

    def start(self, total: int, done: int) -> None:
        """The study has ``total`` trials, ``done`` of them already stored."""

    def batch_size(self, batch_size: int) -> None:
        """Trials of ``batch_size`` start."""

    def trial_done(self, result: TrialResult) -> None:
        """A trial finished and was stored."""


def resolve_device(requested: str) -> torch.device:
    """``auto`` picks CUDA where available, else the CPU; ``cuda`` must be available.

    A CUDA device is returned with its index (``cuda:0``), the name its tensors report, so
    that what is stored with a measurement compares equal to the device of a later run.
    """
    if requested not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"unknown device {requested!r}: use auto, cpu or cuda")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA device is available")
    if requested == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def configured_workload(config: StudyConfig) -> Workload:
    """The workload the settings name, with their training-set size, width and data folder."""
    train_size: float | int | None = config.train_size
    if train_size is not None and train_size > 1:
        if not float(train_size).is_integer():
            raise ConfigError(
                f"train_size {train_size} is neither a fraction in (0, 1] nor a count"
            )
        train_size = int(train_size)
    try:
        return get_workload(
            config.workload, train_size=train_size, width=config.width, data_dir=config.data_dir
        )
    except ValueError as error:
        raise ConfigError(str(error)) from None


class Study:
    """A steps-to-result study stored in one SQLite file.

    ``workload`` may be a registered name (through ``config.workload``) or a ``Workload``
    object, for a user's own model and data.
    """

    def __init__(
        self, config: StudyConfig, store: Path | str, workload: Workload | None = None
    ) -> None:
        self.config = config
        self.store_path = Path(store)
        if config.step_budget is not None and config.epoch_budget is not None:
            raise ConfigError("give a step budget or an epoch budget, not both")
        if workload is None:
            workload = configured_workload(config)
        elif config.workload != workload.name:
            if "workload" in config.model_fields_set:
                raise ConfigError(
                    f"the settings name the workload {config.workload!r}, but the workload "
                    f"given is {workload.name!r}; leave workload out of the settings"
                )
            self.config = config = config.model_copy(update={"workload": workload.name})
        self.workload = workload
        self.target = config.target if config.target is not None else workload.default_target
        maximize = workload.metric.direction == "maximize"
        metric = workload.metric
        try:
            metric.check_target(self.target)
            for goal in config.goals or ():
                metric.check_target(goal, "goal")
        except ValueError as error:
            raise ConfigError(str(error)) from None
        # The automatic goals 10% either side are left out where they fall outside the range
        # (an error of 0.95 has no goal 10% easier).
        automatic = [g for g in neighbouring_goals(self.target, maximize) if metric.contains(g)]
        self.goals = order_goals(config.goals if config.goals else automatic, maximize)
        # Trials run on to the hardest goal so that every goal's curve is measured, not cut
        # short by the stop rule; racing against that goal keeps every curve exact. Under an
        # epoch budget the question is the best metric within the budget, so nothing stops
        # early (and nothing can be raced).
        self.stop_target: float | None = (max if maximize else min)((self.target, *self.goals))
        if config.epoch_budget is not None:
            if config.mode == "race":
                config = self.config = config.model_copy(update={"mode": "full"})
            self.stop_target = None
        try:
            self.search_space = config.resolved_search_space(
                workload.default_search_space(config.optimizer)
            )
        except ValueError as error:
            raise ConfigError(f"search_space: {error}") from None
        for dimension in self.search_space.dimensions:
            if dimension.name not in METAPARAMETERS:
                raise ConfigError(
                    f"search_space: unknown dimension '{dimension.name}'; the trials read "
                    f"{', '.join(METAPARAMETERS)}"
                )
        if "learning_rate" not in self.search_space.names:
            raise ConfigError("search_space must have a 'learning_rate' dimension")
        for dimension in self.search_space.dimensions:
            allowed, valid = METAPARAMETERS[dimension.name]
            if not all(valid(value) for value in dimension.extremes):
                low, high = dimension.extremes
                raise ConfigError(
                    f"search_space: {dimension.name} must be {allowed}, but its range "
                    f"[{low:g}, {high:g}] is not; narrow it"
                )
        if {"decay_fraction", "learning_rate_decay_steps"} <= set(self.search_space.names):
            raise ConfigError(
                "search_space: give the decay's length as 'decay_fraction' or as "
                "'learning_rate_decay_steps', not both"
            )
        if config.optimizer == "sgd" and "momentum" in self.search_space.names:
            raise ConfigError(
                "search_space: optimizer 'sgd' has no momentum; remove the 'momentum' "
                "dimension or choose --optimizer momentum or nesterov"
            )
        if config.optimizer != "sgd" and "momentum" not in self.search_space.names:
            raise ConfigError(
                f"optimizer '{config.optimizer}' needs a 'momentum' dimension in search_space"
            )
        self.train_examples = workload.data_sizes()["train"]
        too_large = [b for b in config.batch_sizes if 0 < self.train_examples < b]
        if too_large:
            raise ConfigError(
                f"batch size {too_large[0]} exceeds the {self.train_examples} training examples "
                f"of '{workload.name}'; choose batch sizes up to {self.train_examples}"
            )
        if config.epoch_budget is not None and not self.train_examples:
            raise ConfigError(
                f"'{workload.name}' draws fresh training data every step, so it has no epochs; "
                "use a step budget instead of an epoch budget"
            )
        self.device = resolve_device(config.device)
        unreachable = math.inf if maximize else -math.inf
        self.rules = StopRules(
            target=unreachable if self.stop_target is None else self.stop_target,
            maximize=maximize,
            divergence_factor=config.divergence_factor,
        )

    @classmethod
    def from_store(cls, store: Path | str, workload: Workload | None = None) -> Study:
        """The study a store was run with (its settings are kept in the store)."""
        opened = StudyStore.open(store, read_only=True)
        try:
            settings = opened.metadata.get("config")
        finally:
            opened.close()
        if settings is None:
            raise StoreError(f"{store} records no study settings (an imported study?)")
        return cls(StudyConfig(**settings), store, workload)

    # -- planning -------------------------------------------------------------------------

    def step_budget(self, batch_size: int) -> int:
        """Steps allowed per trial at ``batch_size``."""
        if self.config.step_budget is not None:
            return self.config.step_budget
        if self.config.epoch_budget is not None:
            # In whole examples first: 1.1 epochs of 12,000 is 13,200 examples, 825 steps of
            # 16, where the float quotient (825.0000000000001) would round up to 826.
            examples = round(self.config.epoch_budget * self.train_examples)
            return max(1, -(-examples // batch_size))
        return self.workload.budget.steps(batch_size)

    def trial_specs(self, batch_size: int) -> list[TrialSpec]:
        """Every trial of ``batch_size``: trial i is always quasi-random point i."""
        seed = self.config.seed
        points = self.search_space.points(self.config.trials, derive_seed(seed, batch_size))
        return [
            TrialSpec(
                batch_size=batch_size,
                trial_id=trial_id,
                params=point,
                seed=derive_seed(seed, batch_size, trial_id, 1),
                step_budget=self.step_budget(batch_size),
                optimizer=self.config.optimizer,
            )
            for trial_id, point in enumerate(points)
        ]

    def identity(self) -> dict[str, Any]:
        """The settings a stored study must share with this one to be resumed."""
        if self.config.step_budget is not None:
            budget: dict[str, Any] = {"steps": self.config.step_budget}
        elif self.config.epoch_budget is not None:
            budget = {"epochs": self.config.epoch_budget, "train_examples": self.train_examples}
        else:
            budget = vars(self.workload.budget)
        return {
            "workload": self.workload.name,
            "optimizer": self.config.optimizer,
            "target": self.target,
            "stop_target": self.stop_target,
            "metric": self.workload.metric.name,
            "maximize": self.rules.maximize,
            "seed": self.config.seed,
            "mode": self.config.mode,
            "search_space": self.search_space.model_dump(mode="json"),
            "budget": budget,
            "train_size": self._train_size_setting(),
            "width": self.config.width,
            "eval_growth": self.config.eval_growth,
            "divergence_factor": self.config.divergence_factor,
        }

    def _train_size_setting(self) -> float | None:
        """``train_size``, or None where it keeps every example (1.0, or the full count):
        written either way, it is the same study."""
        if self.config.train_size is None:
            return None
        try:
            everything = configured_workload(self.config.model_copy(update={"train_size": None}))
        except ConfigError:  # a user's own workload, which the settings do not build
            return self.config.train_size
        whole = self.train_examples == everything.data_sizes()["train"]
        return None if whole else self.config.train_size

    # -- the store ------------------------------------------------------------------------

    def open_store(self) -> StudyStore:
        """Open the study's store, creating it if needed; refuse a damaged one or one for a
        different study."""
        identity = self.identity()
        if not self.store_path.exists():
            return StudyStore.create(
                self.store_path,
                {
                    **identity,
                    "goals": self.goals,
                    "train_examples": self.train_examples,
                    "batch_sizes": [],
                    "trials": 0,
                    "engine": self.config.engine,
                },
                metric_columns(self.workload),
            )
        store = StudyStore.open(self.store_path)
        try:
            # Before anything is written: a damaged file is refused exactly as it was found.
            check_integrity(self.store_path)
        except StoreError:
            store.close()
            raise
        if store.metadata.get("imported"):
            store.close()
            source = store.metadata.get("source")
            raise StoreError(
                f"{self.store_path} holds released data imported from {source}, which cannot "
                "be trained further; read it with show, report or compare, or use another --store"
            )
        for key in IDENTITY_KEYS:
            if store.metadata.get(key) != identity[key]:
                store.close()
                difference = identity_difference(key, store.metadata.get(key), identity[key])
                raise StoreError(
                    f"{self.store_path} holds a different study ({difference}); "
                    "use the same settings, or another store file for a new study"
                )
        try:
            self._check_same_model_and_data(store.metadata)
        except StoreError:
            store.close()
            raise
        return store

    def _check_same_model_and_data(self, stored: dict[str, Any]) -> None:
        """Refuse a store whose model has another number of parameters, or whose data differ.

        A workload's name does not fix a model a user builds, or a user's data.
        """
        parameters = stored.get("parameters")
        if parameters is not None and parameters != (here := self.parameter_count()):
            raise StoreError(
                f"{self.store_path} holds a different study (its model has {parameters:,} "
                f"parameters, this one {here:,}); use the same model, or another store file "
                "for a new study"
            )
        fingerprint = stored.get("data_fingerprint")
        if fingerprint is not None and fingerprint != (digest := self.workload.data_fingerprint()):
            raise StoreError(
                f"{self.store_path} holds a different study (its data differ from this "
                f"{self.workload.name!r}'s: digest {fingerprint} there, {digest} here); use "
                "the same data, or another store file for a new study"
            )

    def parameter_count(self) -> int:
        """The number of parameters of the workload's model."""
        return sum(p.numel() for p in self.workload.make_model().parameters())

    # -- running --------------------------------------------------------------------------

    def run(
        self, progress: Progress | None = None, executor: Executor | None = None
    ) -> StudySummary:
        """Run every trial not yet stored and return the summary.

        Cohorts run where ``executor`` puts them: by default the one the settings name
        (``executor``, ``ray_address``), opened for this run and closed after it. Only this
        process writes the store, each trial as soon as the executor hands it back.
        """
        progress = progress or Progress()
        # Before the store is created: data files that are missing leave no study behind.
        self.workload.data()
        chosen = executor or get_executor(self.config.executor, self.config.ray_address)
        created = not self.store_path.exists()
        store = self.open_store()
        try:
            with store.writer_lock():
                planned = sorted(set(store.metadata["batch_sizes"]) | set(self.config.batch_sizes))
                store.set_metadata("batch_sizes", planned)
                store.set_metadata("trials", max(store.metadata["trials"], self.config.trials))
                store.set_metadata("engine", self.config.engine)
                store.set_metadata("config", self.config.model_dump(mode="json"))
                if "parameters" not in store.metadata:
                    store.set_metadata("parameters", self.parameter_count())
                if "data_fingerprint" not in store.metadata:
                    fingerprint = self.workload.data_fingerprint()
                    if fingerprint is not None:
                        store.set_metadata("data_fingerprint", fingerprint)
                finished = store.finished_trials()
                pending = {
                    b: [s for s in self.trial_specs(b) if (b, s.trial_id) not in finished]
                    for b in self.config.batch_sizes
                }
                total = len(self.config.batch_sizes) * self.config.trials
                done = total - sum(len(specs) for specs in pending.values())
                work = [
                    self._cohort_work(store, batch_size, specs)
                    for batch_size, specs in pending.items()
                    if specs
                ]
                if work:
                    self._run_cohorts(
                        store, chosen, work, progress, owned=executor is None, counts=(total, done)
                    )
                    self._forget_old_winners(store)
                else:
                    progress.start(total, done)
                data = self.workload.data().to(self.device)
                for batch_size in self.config.batch_sizes:
                    self._record_step_time(store, data, batch_size)
                if self.config.noise_scale:
                    self._record_noise_scales(store)
            return summarize(store, self.workload.metric.name)
        except (sqlite3.DatabaseError, pd.errors.DatabaseError) as error:
            raise StoreError(
                f"{self.store_path} cannot be read or written ({error}); "
                "restore it from a copy or use another --store"
            ) from None
        except BaseException:
            if created:
                self._remove_if_empty(store)
            raise
        finally:
            store.close()

    def _remove_if_empty(self, store: StudyStore) -> None:
        """Delete the study file this run created, if it failed before storing a trial.

        It would hold settings only, and a corrected command would then be refused as a
        different study.
        """
        with suppress(sqlite3.Error, StoreError):
            if store.finished_trials():
                return
            store.close()
            for suffix in ("", "-wal", "-shm", ".lock"):
                self.store_path.with_name(self.store_path.name + suffix).unlink(missing_ok=True)

    def _forget_old_winners(self, store: StudyStore) -> None:
        """Drop replicates and noise-scale traces of trials that are no longer the winner.

        More trials can change a batch size's winner; what was measured along the old one
        would then be shown as the new one's. ``replicate`` and ``--noise-scale`` measure anew.
        """
        winners = steps_to_result(
            store.measurements(), self.metric_column, self.target, self.rules.maximize
        ).dropna()
        trials = store.trials()
        winner_ids = {str(b): int(t) for b, t in winners["trial_id"].items()}
        winner_seeds = {
            size: int(trials.loc[(int(size), t), "seed"]) for size, t in winner_ids.items()
        }
        for key, identifies, current in (
            ("replicates", "trial_id", winner_ids),
            ("noise_scale", "seed", winner_seeds),
        ):
            stored = store.metadata.get(key, {})
            kept = {
                size: entry
                for size, entry in stored.items()
                if entry.get(identifies) == current.get(size)
            }
            if kept != stored:
                store.set_metadata(key, kept)

    def _record_step_time(self, store: StudyStore, data: Data, batch_size: int) -> None:
        """Measure one model's step time at ``batch_size`` once per study and device.

        A time taken otherwise (on all of a CPU's threads, as before they were measured on
        one) is measured again; so is one whose repeats disagreed (a busy machine), keeping
        whichever measurement's repeats agree better.
        """
        times = dict(store.metadata.get("step_times", {}))
        stored = times.get(str(batch_size), {})
        threads = step_time_threads(self.device)
        same_kind = stored.get("device") == str(self.device) and stored.get("threads") == threads
        if same_kind and not noisy_step_time(stored):
            return
        measured = measure_step_time(
            self.workload, data, batch_size, self.config.optimizer, seed=self.config.seed
        ).as_dict()
        if same_kind and stored["high"] / stored["low"] <= measured["high"] / measured["low"]:
            return
        times[str(batch_size)] = measured
        store.set_metadata("step_times", times)

    def _record_noise_scales(self, store: StudyStore) -> None:
        """B_simple along every batch size's winner, measured once and kept in the store.

        Not at batch size 1: a gradient's noise is estimated from two or more examples.
        """
        traces = dict(store.metadata.get("noise_scale", {}))
        winners = steps_to_result(
            store.measurements(), self.metric_column, self.target, self.rules.maximize
        ).dropna()
        for batch_size in winners.index:
            if str(batch_size) in traces or batch_size < 2:
                continue
            trace = noise_scale_of_winner(
                self.store_path, int(batch_size), device=str(self.device), workload=self.workload
            )
            traces[str(batch_size)] = trace.to_dict()
            store.set_metadata("noise_scale", traces)

    def replicate(self, seeds: int, progress: Progress | None = None) -> dict[str, Any]:
        """Re-run each batch size's winning metaparameters with ``seeds`` new seeds.

        Steps to result is a minimum over many trials, so it is optimistic (the winner's
        curse). Each replicate runs to the goal or its budget (never raced); its steps to
        result are kept in the store's ``replicates`` entry, which is returned. Seeds already
        run are not run again, and more seeds extend the same sequence.
        """
        progress = progress or Progress()
        store = self.open_store()
        try:
            with store.writer_lock():
                winners = steps_to_result(
                    store.measurements(), self.metric_column, self.target, self.rules.maximize
                ).dropna()
                trials = store.trials()
                replicates = dict(store.metadata.get("replicates", {}))
                todo = {}
                for batch_size, row in winners.iterrows():
                    entry = replicates.get(str(batch_size), {})
                    if entry.get("trial_id") != int(row["trial_id"]):
                        entry = {"trial_id": int(row["trial_id"])}
                    done = len(entry.get("steps", []))
                    if done < seeds:
                        todo[int(batch_size)] = (entry, done)
                progress.start(
                    len(winners) * seeds,
                    len(winners) * seeds - sum(seeds - done for _, done in todo.values()),
                )
                data = self.workload.data().to(self.device)
                for batch_size, (entry, done) in todo.items():
                    progress.batch_size(batch_size)
                    winner = trials.loc[(batch_size, entry["trial_id"])]
                    params = {
                        name: float(winner[name])
                        for name in self.search_space.names
                        if not pd.isna(winner[name])
                    }
                    steps = self._replicate_batch_size(
                        data, batch_size, params, entry["trial_id"], range(done, seeds), progress
                    )
                    entry = {**entry, "params": params, "steps": [*entry.get("steps", []), *steps]}
                    replicates[str(batch_size)] = entry
                    store.set_metadata("replicates", replicates)
                return replicates
        finally:
            store.close()

    def _replicate_batch_size(
        self,
        data: Data,
        batch_size: int,
        params: dict[str, float],
        trial_id: int,
        indices: range,
        progress: Progress,
    ) -> list[int | None]:
        """Steps to result of replicates ``indices`` of one winner (``None``: not reached)."""
        specs = [
            TrialSpec(
                batch_size=batch_size,
                trial_id=index,
                params=params,
                seed=derive_seed(self.config.seed, batch_size, trial_id, REPLICATE_STREAM + index),
                step_budget=self.step_budget(batch_size),
                optimizer=self.config.optimizer,
            )
            for index in indices
        ]
        results: list[TrialResult] = []

        def keep(result: TrialResult) -> None:
            results.append(result)
            progress.trial_done(result)

        run_cohort(
            engine=self.config.engine,
            workload=self.workload,
            data=data,
            specs=specs,
            rules=self.rules,
            evaluation_steps=evaluation_steps(
                self.step_budget(batch_size), self.config.eval_growth
            ),
            race=False,
            bound=None,
            on_result=keep,
        )
        main_goal = StopRules(self.target, self.rules.maximize)
        return [
            first_reaching_step(result, self.metric_column, main_goal)
            for result in sorted(results, key=lambda r: r.spec.trial_id)
        ]

    def _cohort_work(
        self, store: StudyStore, batch_size: int, specs: list[TrialSpec]
    ) -> CohortWork:
        """The pending ``specs`` of ``batch_size``, with the best stored result when racing."""
        bound = None
        if self.config.mode == "race":
            bound = best_bound(
                store.measurements(),
                self.metric_column,
                self.rules.target,
                batch_size,
                self.rules.maximize,
            )
        steps = evaluation_steps(self.step_budget(batch_size), self.config.eval_growth)
        return CohortWork(batch_size, tuple(specs), tuple(steps), bound)

    def _run_cohorts(
        self,
        store: StudyStore,
        executor: Executor,
        work: list[CohortWork],
        progress: Progress,
        owned: bool,
        counts: tuple[int, int],
    ) -> None:
        """Run ``work`` on ``executor``, storing each trial as it comes back.

        ``counts`` (all trials, those stored) start the progress once the executor is open, so
        that a cluster that cannot be joined fails before any progress is shown.
        """
        job = CohortJob(
            workload=self.workload,
            engine=self.config.engine,
            rules=self.rules,
            race=self.config.mode == "race",
            device=self.config.device,
        )

        def record(result: TrialResult) -> None:
            store.record(result)
            progress.trial_done(result)

        try:
            executor.open()
            progress.start(*counts)
            executor.run(job, work, record, progress.batch_size)
        finally:
            if owned:
                executor.close()

    @property
    def metric_column(self) -> str:
        """The validation column that defines the goal."""
        return f"val/{self.workload.metric.name}"


def noise_scale_of_winner(
    store_path: Path | str,
    batch_size: int,
    method: str = "auto",
    device: str = "auto",
    workload: Workload | None = None,
    data_dir: str | None = None,
) -> NoiseScaleTrace:
    """B_simple along the winning trial of ``batch_size``, up to its steps to result.

    The run repeats the winner step for step (same seed, metaparameters and budget), on the
    study's own model and data: a built-in workload is rebuilt from the stored settings (its
    data read from ``data_dir`` where given), a user's own must be passed as ``workload``.
    """
    store = StudyStore.open(store_path, read_only=True)
    try:
        meta = store.metadata
        trials = store.trials()
        result = steps_to_result(
            store.measurements(), f"val/{meta['metric']}", meta["target"], meta["maximize"]
        )
    finally:
        store.close()
    if batch_size not in result.index or pd.isna(result.loc[batch_size, "steps"]):
        reached = [int(b) for b in result.dropna().index]
        raise ConfigError(
            f"no trial reached the goal at batch size {batch_size} in {store_path}; "
            + (
                f"choose one of {reached}"
                if reached
                else "no batch size did, so there is no winner to follow"
            )
        )
    if workload is None:
        settings = dict(meta.get("config") or {"workload": meta["workload"]})
        if data_dir is not None:
            settings["data_dir"] = data_dir
        workload = configured_workload(StudyConfig(**settings))
    winner = trials.loc[(batch_size, int(result.loc[batch_size, "trial_id"]))]
    names = [d["name"] for d in meta["search_space"]["dimensions"]]
    return measure_noise_scale(
        workload,
        {name: float(winner[name]) for name in names if not pd.isna(winner[name])},
        meta["optimizer"],
        batch_size,
        max(1, int(result.loc[batch_size, "steps"])),
        seed=int(winner["seed"]),
        device=resolve_device(device),
        method=method,  # type: ignore[arg-type]
        step_budget=int(winner["step_budget"]),
    )


def check_integrity(path: Path) -> None:
    """Refuse a store whose file is damaged, before anything more is written to it."""
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        problems = [str(row[0]) for row in connection.execute("PRAGMA quick_check")]
    except sqlite3.DatabaseError as error:
        problems = [str(error)]
    finally:
        connection.close()
    if problems != ["ok"]:
        problem = " ".join(problems[0].split())  # SQLite's report spans lines
        raise StoreError(
            f"{path} is damaged ({problem}); restore it from a copy or use another --store"
        )


def best_bound(
    measurements: pd.DataFrame, metric: str, target: float, batch_size: int, maximize: bool
) -> RaceBound | None:
    """The stored (step, trial) that reached the goal first at ``batch_size``, if any."""
    if measurements.empty or batch_size not in measurements.index.get_level_values("batch_size"):
        return None
    rows = measurements.xs(batch_size, level="batch_size", drop_level=False)
    result = steps_to_result(rows, metric, target, maximize)
    steps = result["steps"].iloc[0]
    if pd.isna(steps):
        return None
    return RaceBound(step=int(steps), trial_id=int(result["trial_id"].iloc[0]))


def summarize(store: StudyStore, metric_name: str) -> StudySummary:
    """Steps to result and trial counts per batch size, from a store."""
    meta = store.metadata
    metric = f"val/{metric_name}"
    trials = store.trials()
    measurements = store.measurements()
    summary = StudySummary(
        workload=meta["workload"],
        optimizer=meta["optimizer"],
        metric=metric_name,
        target=meta["target"],
        maximize=meta["maximize"],
        mode=meta["mode"],
        engine=meta.get("engine", ""),
    )
    if trials.empty:
        return summary
    result = steps_to_result(measurements, metric, meta["target"], meta["maximize"])
    outcomes = trial_outcomes(measurements, trials, metric, meta["target"], meta["maximize"])
    counts = outcomes.groupby(level="batch_size").value_counts().unstack(fill_value=0)
    for batch_size, group in trials.groupby(level="batch_size"):
        steps = result["steps"].get(batch_size, math.nan)
        best = None if pd.isna(steps) else int(result["trial_id"][batch_size])
        params = None
        if best is not None:
            row = group.loc[(batch_size, best)]
            params = {
                name: float(row[name])
                for name in (d["name"] for d in meta["search_space"]["dimensions"])
                if name in row and not pd.isna(row[name])
            }
        tally = counts.loc[batch_size]
        timing = meta.get("step_times", {}).get(str(batch_size))
        step_time = None if timing is None else float(timing["median"])
        replicated = meta.get("replicates", {}).get(str(batch_size))
        summary.batch_sizes.append(
            BatchSizeSummary(
                batch_size=int(batch_size),
                steps_to_result=None if pd.isna(steps) else int(steps),
                best_trial=best,
                best_params=params,
                trials=len(group),
                reached=int(tally.get("reached", 0)),
                missed=int(tally.get("missed", 0)),
                diverged=int(tally.get("diverged", 0)),
                pruned=int(tally.get("pruned", 0)),
                incomplete=int(tally.get("incomplete", 0)),
                step_time=step_time,
                time_to_result=(
                    None if step_time is None or pd.isna(steps) else step_time * float(steps)
                ),
                replicates=None if replicated is None else list(replicated["steps"]),
            )
        )
    return summary
