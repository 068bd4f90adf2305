import sqlite3
from pathlib import Path

import pytest

from batchscale.store import StoreError, StudyStore
from batchscale.training.trial import Status, TrialResult, TrialSpec

COLUMNS = ["train/loss", "val/loss", "val/error"]


def result(trial_id: int, status: Status = Status.COMPLETE) -> TrialResult:
    spec = TrialSpec(
        batch_size=8,
        trial_id=trial_id,
        params={"learning_rate": 0.1},
        seed=123 + trial_id,
        step_budget=10,
        optimizer="sgd",
    )
    rows = [
        {"step": 0, "train/loss": float("nan"), "val/loss": 2.0, "val/error": 0.9},
        {"step": 10, "train/loss": 1.0, "val/loss": float("inf"), "val/error": 0.5},
    ]
    return TrialResult(spec=spec, status=status, steps=10, measurements=rows, wall_time=1.5)


def test_round_trip_as_dataframes(tmp_path: Path) -> None:
    store = StudyStore.create(tmp_path / "s.sqlite", {"workload": "w"}, COLUMNS)
    store.record(result(0))
    store.record(result(1, Status.INFEASIBLE))
    trials = store.trials()
    assert list(trials.index.names) == ["batch_size", "trial_id"]
    assert trials.loc[(8, 1), "status"] == "INFEASIBLE"
    assert trials.loc[(8, 0), "learning_rate"] == 0.1
    assert trials.loc[(8, 0), "seed"] == 123
    measurements = store.measurements()
    assert list(measurements.index.names) == ["batch_size", "trial_id", "step"]
    assert list(measurements.columns) == COLUMNS
    # non-finite values are stored as missing, never as a bogus number
    assert measurements["val/loss"].isna().sum() == 2
    assert store.finished_trials() == {(8, 0), (8, 1)}
    store.close()
    reopened = StudyStore.open(tmp_path / "s.sqlite", read_only=True)
    assert reopened.metadata["workload"] == "w"


def test_a_trial_is_written_whole_or_not_at_all(tmp_path: Path) -> None:
    store = StudyStore.create(tmp_path / "s.sqlite", {}, COLUMNS)
    store.record(result(0))
    with pytest.raises(sqlite3.IntegrityError):
        store.record(result(0))  # same trial twice: refused, and nothing half-written
    assert len(store.measurements()) == 2


def test_not_a_study(tmp_path: Path) -> None:
    text = tmp_path / "notes.sqlite"
    text.write_text("hello, this is not a database at all" * 20)
    before = text.read_bytes()
    with pytest.raises(StoreError, match="not a batchscale study"):
        StudyStore.open(text)
    assert text.read_bytes() == before
    other = tmp_path / "other.sqlite"
    connection = sqlite3.connect(other)
    connection.execute("CREATE TABLE meta (key TEXT, value TEXT)")
    connection.commit()
    connection.close()
    with pytest.raises(StoreError, match="not a batchscale study"):
        StudyStore.open(other)


def test_missing_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        StudyStore.open(tmp_path / "absent.sqlite")


def test_second_writer_is_refused(tmp_path: Path) -> None:
    first = StudyStore.create(tmp_path / "s.sqlite", {}, COLUMNS)
    second = StudyStore.open(tmp_path / "s.sqlite")
    with (
        first.writer_lock(),
        pytest.raises(StoreError, match="in use by another running study"),
        second.writer_lock(),
    ):
        pass
    with second.writer_lock():
        pass


def test_a_closed_study_is_readable_without_writing_beside_it(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    store = StudyStore.create(path, {"workload": "w"}, COLUMNS)
    with store.writer_lock():
        store.record(result(0))
        with sqlite3.connect(path) as connection:
            assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        connection.close()
    store.close()
    # Out of WAL mode at rest: no shared-memory file is needed to read it, wherever it lies.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.sqlite", "s.sqlite.lock"]
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    reader = StudyStore.open(path, read_only=True)
    assert len(reader.trials()) == 1
    reader.close()


def test_a_format_tag_that_is_not_json_is_not_a_study(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    StudyStore.create(path, {"workload": "w"}, COLUMNS).close()
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE meta SET value = 'not json' WHERE key = 'format'")
    connection.close()
    with pytest.raises(StoreError, match="not a batchscale study"):
        StudyStore.open(path)
