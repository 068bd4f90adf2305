"""Executors without Ray: selection, the race board's exactness, and stores that must be refused."""

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from batchscale import Study, StudyConfig, load_study
from batchscale.cli import main
from batchscale.config import ConfigError
from batchscale.executors import get_executor
from batchscale.executors.local import LocalExecutor
from batchscale.training.engine import Engine, first_reaching_step, run_cohort
from batchscale.training.evaluation import evaluation_steps
from batchscale.training.race import LocalRaceBoard, best_bound_of
from batchscale.training.trial import RaceBound, Status, TrialResult

from .conftest import TINY_NQM
from .test_cli import TINY


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_get_executor_names_and_mistakes() -> None:
    assert isinstance(get_executor("local"), LocalExecutor)
    assert get_executor("ray").name == "ray"  # nothing starts before a run
    port = free_port()
    with pytest.raises(ConfigError, match=f"no Ray cluster answers at 127.0.0.1:{port}"):
        get_executor("ray", f"127.0.0.1:{port}")
    with pytest.raises(ConfigError, match="known executors: local, ray"):
        get_executor("dask")
    with pytest.raises(ConfigError, match="--executor ray"):
        get_executor("local", "127.0.0.1:6379")


def test_board_keeps_the_best_bound_per_batch_size() -> None:
    board = LocalRaceBoard()
    assert board.current(16) is None
    board.offer(16, 40, 3)
    board.offer(16, 50, 0)  # later: ignored
    board.offer(16, 40, 5)  # same step, larger trial id: ignored
    board.offer(32, 90, 1)
    assert board.current(16) == RaceBound(40, 3)
    board.offer(16, 40, 2)  # same step, smaller trial id: wins the tie
    assert board.current(16) == RaceBound(40, 2)
    assert board.current(32) == RaceBound(90, 1)
    assert best_bound_of(None, None) is None
    assert best_bound_of(RaceBound(5, 1), None) == RaceBound(5, 1)
    assert best_bound_of(RaceBound(5, 1), RaceBound(4, 9)) == RaceBound(4, 9)


def same_rows(first: list[dict[str, float]], second: list[dict[str, float]]) -> bool:
    """The same evaluation rows: steps and goal metrics exactly, losses to float32 rounding.

    The cohort engine sums evaluation losses over chunks of examples sized by its cohort, so
    the last bits of a loss may depend on how many trials share a cohort.
    """
    a, b = pd.DataFrame(first), pd.DataFrame(second)
    exact = ["step", *(c for c in a.columns if c.endswith("error"))]
    if list(a.columns) != list(b.columns) or not a[exact].equals(b[exact]):
        return False
    return bool(np.allclose(a, b, rtol=1e-6, atol=0, equal_nan=True))


@pytest.mark.parametrize(
    ("engine", "settings"),
    [
        ("reference", {"workload": "nqm", "target": 1.0}),
        ("cohort", {"workload": "mnist1d-mlp", "target": 0.6, "train_size": 2048, "width": 16}),
    ],
)
def test_a_shared_board_prunes_exactly(
    engine: Engine, settings: dict[str, Any], tmp_path: Path
) -> None:
    """Trials of one batch size split over two cohorts race through a board, as on two workers."""
    config = StudyConfig(
        **{**TINY_NQM, **settings, "engine": engine, "trials": 6, "step_budget": 200}
    )
    study = Study(config.model_copy(update={"goals": (config.target,)}), tmp_path / "unused")
    specs, workload, rules = study.trial_specs(64), study.workload, study.rules
    data = workload.data()
    steps = evaluation_steps(200, 1.25)
    metric = study.metric_column

    def train(race: bool, board: LocalRaceBoard | None, ids: list[int]) -> list[TrialResult]:
        results: list[TrialResult] = []
        chosen = [spec for spec in specs if spec.trial_id in ids]
        run_cohort(engine, workload, data, chosen, rules, steps, race, None, results.append,
                   board=board)  # fmt: skip
        return results

    full = {r.spec.trial_id: r for r in train(False, None, list(range(6)))}
    reached = {t: first_reaching_step(r, metric, rules) for t, r in full.items()}
    best = RaceBound(*min((step, t) for t, step in reached.items() if step is not None))
    others = [t for t in range(6) if t != best.trial_id]
    # The winner's cohort runs first; the others learn of it only through the board.
    board = LocalRaceBoard()
    raced = train(True, board, [best.trial_id]) + train(True, board, others)
    assert board.current(64) == best
    alone = train(True, None, others)
    assert sum(r.status == Status.PRUNED for r in raced) > sum(
        r.status == Status.PRUNED for r in alone
    ), "the board should prune trials that their own cohort could not"
    for result in raced:
        rows = full[result.spec.trial_id].measurements
        assert same_rows(result.measurements, rows[: len(result.measurements)])  # a prefix
        if result.status == Status.PRUNED:
            next_step = steps[len(result.measurements)]
            assert next_step > best.last_useful_step(result.spec.trial_id)
        else:
            assert same_rows(result.measurements, rows)


def test_local_executor_stores_each_trial_as_it_finishes(
    tiny_config: StudyConfig, tmp_path: Path
) -> None:
    """The default executor is the one a study uses without being told."""
    config = tiny_config.model_copy(update={"batch_sizes": (4, 16)})
    Study(config, tmp_path / "a.sqlite").run()
    Study(config, tmp_path / "b.sqlite").run(executor=LocalExecutor())
    a, b = load_study(str(tmp_path / "a.sqlite")), load_study(str(tmp_path / "b.sqlite"))
    columns = ["seed", "status", "steps", "learning_rate", "momentum"]
    pd.testing.assert_frame_equal(a.trials()[columns], b.trials()[columns])
    pd.testing.assert_frame_equal(a.measurements(), b.measurements())


def _one_line_error(code: int, err: str) -> str:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


def test_corrupt_store_is_one_line_error(
    tiny_store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page = 4096
    content = bytearray(tiny_store.read_bytes())
    assert len(content) > 3 * page
    content[2 * page : 3 * page] = b"\x07" * page  # a data page, not the settings
    tiny_store.write_bytes(bytes(content))
    code = main(["run", *TINY, "--store", str(tiny_store), "--no-report"])
    line = _one_line_error(code, capsys.readouterr().err)
    assert "is damaged" in line or "not a batchscale study" in line
    assert tiny_store.read_bytes() == bytes(content)


HOLD_LOCK = """
import sys, time
from batchscale.store import StudyStore
store = StudyStore.open(sys.argv[1])
with store.writer_lock():
    print("locked", flush=True)
    time.sleep(60)
"""


def test_store_locked_by_a_running_study_is_refused(
    tiny_store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = load_study(str(tiny_store)).trials()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(tiny_store)], stdout=subprocess.PIPE, text=True,
        env=env,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        more = list(TINY)
        more[more.index("--trials") + 1] = "6"  # work to do, were it allowed
        code = main(["run", *more, "--store", str(tiny_store), "--no-report"])
        line = _one_line_error(code, capsys.readouterr().err)
        assert f"in use by another running study (pid {holder.pid})" in line
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    pd.testing.assert_frame_equal(load_study(str(tiny_store)).trials(), before)


def test_ray_executor_without_a_cluster_is_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "s.sqlite"
    args = ["run", *TINY, "--store", str(store), "--no-report"]
    code = main([*args, "--executor", "ray", "--ray-address", f"127.0.0.1:{free_port()}"])
    assert "no Ray cluster answers at" in _one_line_error(code, capsys.readouterr().err)
    code = main([*args, "--executor", "spark"])
    assert "executor" in _one_line_error(code, capsys.readouterr().err)
    assert not store.exists()
