"""One SQLite file per study: its settings, every trial, every measurement.

A finished trial and its measurements are written in one transaction, so a crash (even
``kill -9``) loses only trials that were still running; they are rerun from scratch next time.
A lock file next to the store keeps a second running study from writing to it.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pandas as pd

from batchscale.training.trial import TrialResult

FORMAT = "batchscale-study"
SCHEMA_VERSION = 1
KEY_COLUMNS = ["batch_size", "trial_id", "step"]


class StoreError(Exception):
    """A store that cannot be used: not a study, corrupt, locked, or for another study."""


def _quote(column: str) -> str:
    return '"' + column.replace('"', '""') + '"'


class StudyStore:
    """Read and write access to one study file."""

    def __init__(self, path: Path, connection: sqlite3.Connection) -> None:
        self.path = path
        self._connection = connection
        try:
            self.metadata = self._read_metadata()
            self.metric_columns: list[str] = list(self.metadata["metric_columns"])
        except (KeyError, TypeError, json.JSONDecodeError) as error:
            connection.close()
            raise StoreError(
                f"{path} is a damaged study (its metadata cannot be read: {error!r}); restore "
                "it from a copy or pass another file"
            ) from None

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """Name this file, and the damage, when a query on it fails."""
        try:
            yield
        except (sqlite3.DatabaseError, pd.errors.DatabaseError) as error:
            cause = error.__cause__ if isinstance(error.__cause__, sqlite3.Error) else error
            raise StoreError(
                f"{self.path} cannot be read ({cause}); it is damaged: restore it from a copy "
                "or pass another file"
            ) from None

    @classmethod
    def create(
        cls, path: Path | str, metadata: dict[str, Any], metric_columns: list[str]
    ) -> StudyStore:
        """A new, empty study at ``path`` (which must not exist yet)."""
        path = Path(path)
        if path.exists():
            raise StoreError(f"{path} already exists; open it instead of creating it")
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.unlink(missing_ok=True)
        connection = sqlite3.connect(partial)
        metrics_sql = ", ".join(f"{_quote(c)} REAL" for c in metric_columns)
        with connection:
            connection.executescript(
                f"""
                CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                CREATE TABLE trials (
                    batch_size INTEGER NOT NULL, trial_id INTEGER NOT NULL,
                    params TEXT NOT NULL, seed INTEGER NOT NULL, status TEXT NOT NULL,
                    steps INTEGER NOT NULL, step_budget INTEGER NOT NULL,
                    wall_time REAL NOT NULL, train_time REAL NOT NULL,
                    finished_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
                    PRIMARY KEY (batch_size, trial_id));
                CREATE TABLE measurements (
                    batch_size INTEGER NOT NULL, trial_id INTEGER NOT NULL,
                    step INTEGER NOT NULL, {metrics_sql},
                    PRIMARY KEY (batch_size, trial_id, step));
                """
            )
            record = {
                **metadata,
                "format": FORMAT,
                "schema_version": SCHEMA_VERSION,
                "metric_columns": metric_columns,
            }
            connection.executemany(
                "INSERT INTO meta VALUES (?, ?)",
                [(key, json.dumps(value)) for key, value in record.items()],
            )
        connection.close()
        # The file appears under its name only once it is a complete, valid study.
        os.replace(partial, path)
        return cls.open(path)

    @classmethod
    def open(cls, path: Path | str, read_only: bool = False) -> StudyStore:
        """Open an existing study, checking that it is one."""
        path = Path(path)
        if path.exists() and not path.is_file():
            raise StoreError(
                f"{path} is not a regular file; pass a study file written by 'batchscale run'"
            )
        if not path.is_file():
            raise StoreError(f"{path} does not exist; run a study first or check the path")
        mode = "ro" if read_only else "rw"
        try:
            try:
                connection = sqlite3.connect(f"file:{path}?mode={mode}", uri=True)
                rows = dict(connection.execute("SELECT key, value FROM meta").fetchall())
            except sqlite3.OperationalError:
                if not read_only or os.access(path.parent, os.W_OK):
                    raise
                # A study left in WAL mode (a run that was killed) in a folder that cannot be
                # written: reading it needs a shared-memory file SQLite cannot create there.
                connection = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
                rows = dict(connection.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as error:
            raise StoreError(
                f"{path} is not a batchscale study ({error}); pass a file written by "
                "'batchscale run'"
            ) from None
        try:
            format_tag = json.loads(rows.get("format", "null"))
        except json.JSONDecodeError:
            format_tag = None
        if format_tag != FORMAT:
            connection.close()
            raise StoreError(
                f"{path} is an SQLite file but not a batchscale study; pass a file written by "
                "'batchscale run'"
            )
        return cls(path, connection)

    def _read_metadata(self) -> dict[str, Any]:
        with self._reading():
            rows = self._connection.execute("SELECT key, value FROM meta").fetchall()
        return {key: json.loads(value) for key, value in rows}

    def set_metadata(self, key: str, value: Any) -> None:
        """Store or replace one metadata entry."""
        with self._connection:
            self._connection.execute(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value))
            )
        self.metadata[key] = value

    def close(self) -> None:
        """Close the connection."""
        self._connection.close()

    def record(self, result: TrialResult) -> None:
        """Write a finished trial and all its measurements atomically."""
        spec = result.spec
        columns = ", ".join(_quote(c) for c in [*KEY_COLUMNS, *self.metric_columns])
        placeholders = ", ".join("?" for _ in range(3 + len(self.metric_columns)))
        rows = [
            (
                spec.batch_size,
                spec.trial_id,
                int(row["step"]),
                *(_finite_or_none(row.get(c)) for c in self.metric_columns),
            )
            for row in result.measurements
        ]
        with self._connection:
            self._connection.execute(
                "INSERT INTO trials (batch_size, trial_id, params, seed, status, steps, "
                "step_budget, wall_time, train_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    spec.batch_size,
                    spec.trial_id,
                    json.dumps(spec.params),
                    spec.seed,
                    str(result.status),
                    result.steps,
                    spec.step_budget,
                    result.wall_time,
                    result.train_time,
                ),
            )
            self._connection.executemany(
                f"INSERT INTO measurements ({columns}) VALUES ({placeholders})", rows
            )

    def finished_trials(self) -> set[tuple[int, int]]:
        """(batch size, trial id) of every stored trial."""
        with self._reading():
            rows = self._connection.execute("SELECT batch_size, trial_id FROM trials").fetchall()
        return {(int(b), int(t)) for b, t in rows}

    def trials(self) -> pd.DataFrame:
        """One row per trial, indexed by (batch_size, trial_id); metaparameters as columns."""
        with self._reading():
            frame = pd.read_sql_query(
                "SELECT batch_size, trial_id, params, seed, status, steps, step_budget, "
                "wall_time, train_time, finished_at FROM trials ORDER BY batch_size, trial_id",
                self._connection,
            )
        params = pd.DataFrame([json.loads(p) for p in frame.pop("params")], index=frame.index)
        frame = pd.concat([frame, params], axis=1)
        return frame.set_index(["batch_size", "trial_id"])

    def measurements(self) -> pd.DataFrame:
        """Every evaluation row, indexed by (batch_size, trial_id, step)."""
        with self._reading():
            frame = pd.read_sql_query(
                "SELECT * FROM measurements ORDER BY batch_size, trial_id, step", self._connection
            )
        return frame.set_index(KEY_COLUMNS)

    @contextmanager
    def writer_lock(self) -> Iterator[None]:
        """Hold the study's lock file for as long as this study writes to it.

        Meanwhile the file is in write-ahead-log mode (a finished trial is durable without
        blocking readers); after, it is back in rollback mode, so a study at rest needs no
        shared-memory file to be read, and can be read where nothing can be written.
        """
        with study_lock(self.path):
            self._connection.execute("PRAGMA journal_mode=WAL")
            self._connection.execute("PRAGMA synchronous=NORMAL")
            try:
                yield
            finally:
                # Where another connection still reads it, it stays in WAL mode for now.
                with suppress(sqlite3.Error):
                    self._connection.execute("PRAGMA journal_mode=DELETE")


@contextmanager
def study_lock(path: Path) -> Iterator[None]:
    """Hold the lock file beside the study at ``path``; refused while a running study holds it."""
    lock_path = path.with_name(path.name + ".lock")
    handle = open(lock_path, "a+")  # noqa: SIM115 - held for the whole block
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise StoreError(
                f"{path} is in use by another running study ({holder}); wait for it "
                "to finish or use another --store"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        yield
    finally:
        handle.close()


def _finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if number == number and abs(number) != float("inf") else None
