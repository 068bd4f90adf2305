"""The Ray executor: cohorts as Ray tasks on a cluster, results stored by the driver.

A cohort (some or all pending trials of one batch size) is one Ray task that asks for one CPU,
or one GPU where the study runs on CUDA. The driver waits on the tasks and hands each trial of
a finished cohort to the study, which stores it: a crash loses at most the cohorts still
running. A task whose worker process or node dies is run again by Ray (``max_retries``); a
trial is deterministic given its seed, so the retry returns what the lost attempt would have.

Racing crosses workers through a board actor (``LocalRaceBoard`` run as a Ray actor): cohorts
read the best bound at every evaluation and offer each trial that reaches the goal sooner. A
board that restarted empty only prunes less, so steps to result never depend on it.

Built-in and user workloads alike travel as the workload object without its loaded data
(Ray pickles it with cloudpickle), put into the object store once; each worker process loads
the data once per study and keeps it for the cohorts that follow.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from batchscale.config import ConfigError
from batchscale.executors import CohortJob, CohortWork, Executor, ExecutorName
from batchscale.training.engine import run_cohort
from batchscale.training.race import LocalRaceBoard
from batchscale.training.trial import RaceBound, TrialResult
from batchscale.workloads.base import Data, Workload

# Ray rewrites a loopback node address to the machine's outward one unless multi-node clusters
# are switched off (a switch named for Windows and macOS, honoured everywhere); a local
# instance never needs other nodes, and so stays on 127.0.0.1.
LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
TEMP_PREFIX = "batchscale-ray-"
OWNER_FILE = "driver.pid"
# Seconds after which a session folder without an owner is taken for an orphan.
ORPHAN_AGE = 600.0
MAX_RETRIES = 3
CONNECT_TIMEOUT = 5.0
# Where something else listens, or the cluster wants a token, Ray's own client retries for
# minutes and logs every try: it is asked first, in a process of its own that can be cut short
# and whose logs are dropped.
PROBE_TIMEOUT = 15.0
PROBE_REFUSED = 3
PROBE = f"""\
import sys
import ray._raylet, ray.exceptions
try:
    ray._raylet.GcsClient(address=sys.argv[1])
except ray.exceptions.RayError as error:
    print(" ".join(str(error).split()) or type(error).__name__, file=sys.stderr)
    sys.exit({PROBE_REFUSED})
"""
# An HTTP/2 (gRPC) client's preface and an empty SETTINGS frame: a server answers with its own
# SETTINGS frame before anything else (RFC 9113, 3.4), something that is not gRPC does not.
HTTP2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
HTTP2_SETTINGS = 4
# Run by a watchdog (``python -c``) that each local instance's driver starts: Ray stops the GCS
# and raylet of a killed driver, but their agents then spend a minute failing to tell the dead
# GCS, deaf to SIGTERM meanwhile. Once the driver dies (its end of stdin closes unsaid), every
# process with the session folder open or named on its command line is killed, and the folder
# removed. The standard library only: a bare interpreter waits for the driver.
REAPER = """\
import os, shutil, signal, sys, time

folder, inside = sys.argv[1], sys.argv[1] + "/"
for sent_to_the_driver in (signal.SIGINT, signal.SIGHUP):
    signal.signal(sent_to_the_driver, signal.SIG_IGN)
if sys.stdin.buffer.read():
    sys.exit()  # the driver closed its instance itself


def in_folder(pid: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            if inside in cmdline.read().decode(errors="replace"):
                return True
        descriptors = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False  # gone, or another user's
    for descriptor in descriptors:
        try:
            if os.readlink(f"/proc/{pid}/fd/{descriptor}").startswith(inside):
                return True
        except OSError:
            continue
    return False


# Until none is left (a dying raylet may still have forked a worker); without /proc (macOS)
# they cannot be found, and only the folder goes.
for _ in range(50 if os.path.isdir("/proc") else 0):
    found = [int(pid) for pid in os.listdir("/proc") if pid.isdigit() and in_folder(pid)]
    if not found:
        break
    for pid in found:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    time.sleep(0.1)
shutil.rmtree(folder, ignore_errors=True)
"""
REAPER_TIMEOUT = 30.0

# The data each worker process has loaded: one study's, keyed by the run's token.
_WORKER_DATA: dict[str, tuple[Workload, Data]] = {}
# The watchdog of each local instance this process started, by session folder: held here, for
# an executor dropped unclosed leaves its instance running, and with it the pipe open.
_WATCHDOGS: dict[str, subprocess.Popen[bytes]] = {}


class ActorRaceBoard:
    """A ``RaceBoard`` whose state lives in the driver's board actor."""

    def __init__(self, actor: Any) -> None:
        self._actor = actor

    def current(self, batch_size: int) -> RaceBound | None:
        """See ``RaceBoard.current``."""
        import ray

        bound: RaceBound | None = ray.get(self._actor.current.remote(batch_size))
        return bound

    def offer(self, batch_size: int, step: int, trial_id: int) -> None:
        """See ``RaceBoard.offer``; does not wait for the actor."""
        self._actor.offer.remote(batch_size, step, trial_id)


def _worker_data(token: str, job: CohortJob, device: torch.device) -> tuple[Workload, Data]:
    cached = _WORKER_DATA.get(token)
    if cached is None:
        _WORKER_DATA.clear()  # another study's data: a worker serves one study at a time
        cached = (job.workload, job.workload.data().to(device))
        _WORKER_DATA[token] = cached
    return cached


def train_cohort_task(
    job: CohortJob, token: str, work: CohortWork, gpu: bool, board: Any
) -> list[TrialResult]:
    """Train one cohort on a Ray worker and return its finished trials."""
    workload, data = _worker_data(token, job, torch.device("cuda" if gpu else "cpu"))
    results: list[TrialResult] = []
    run_cohort(
        engine=job.engine,
        workload=workload,
        data=data,
        specs=list(work.specs),
        rules=job.rules,
        evaluation_steps=list(work.evaluation_steps),
        race=job.race,
        bound=work.bound,
        on_result=results.append,
        board=None if board is None else ActorRaceBoard(board),
    )
    return results


def without_data(workload: Workload) -> Workload:
    """A shallow copy of ``workload`` that has not loaded its data (workers load their own)."""
    clone = copy.copy(workload)
    object.__setattr__(clone, "_data", None)
    return clone


def _reap(folder: Path) -> None:
    """Kill what is left of a dead driver's instance and remove its session folder."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        subprocess.run(
            [sys.executable, "-c", REAPER, str(folder)],
            stdin=subprocess.DEVNULL,  # read at once as a closed driver's end: reap now
            timeout=REAPER_TIMEOUT,
        )


def _remove_stale_temp_dirs() -> None:
    """Session folders of local instances whose driver (and its watchdog) was killed before
    it could clean up, and the processes still at work in them.

    A folder without its owner file is either just being made, or one that a killed
    instance's last processes wrote to again after it was removed: only an old one goes.
    """
    for folder in Path(tempfile.gettempdir()).glob(TEMP_PREFIX + "*"):
        try:
            owner = int((folder / OWNER_FILE).read_text())
            os.kill(owner, 0)
        except ProcessLookupError:
            _reap(folder)
        except FileNotFoundError:
            with contextlib.suppress(OSError):
                if time.time() - folder.stat().st_mtime > ORPHAN_AGE:
                    _reap(folder)
        except (OSError, ValueError):
            continue  # alive, another user's, or not ours to judge


def _speaks_http2(connection: socket.socket) -> bool:
    """Whether the server at the other end of ``connection`` answers an HTTP/2 preface."""
    try:
        connection.sendall(HTTP2_HELLO)
        header = b""
        while len(header) < 9:  # a frame header: length (3 bytes), type, flags, stream (4)
            chunk = connection.recv(9 - len(header))
            if not chunk:
                return False
            header += chunk
    except OSError:
        return False
    return header[3] == HTTP2_SETTINGS


def _check_reachable(address: str) -> None:
    """Fail at once, in one line, where no Ray cluster answers at a ``host:port`` address."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return  # "auto", "ray://...": Ray resolves these itself
    try:
        connection = socket.create_connection((host.strip("[]"), int(port)), CONNECT_TIMEOUT)
    except OSError as error:
        raise ConfigError(
            f"no Ray cluster answers at {address} ({error}); start one with 'ray start --head' "
            "or check --ray-address"
        ) from None
    refusal = f"cannot join the Ray cluster at {address}"
    with connection:
        # Over TLS the preface would go unanswered by a real cluster too; Ray's client is asked.
        tls = os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true")
        if not tls and not _speaks_http2(connection):
            raise ConfigError(
                f"{refusal}: what listens there does not speak gRPC, Ray's protocol; "
                "check --ray-address"
            )
    try:
        probe = subprocess.run(
            [sys.executable, "-c", PROBE, address],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        raise ConfigError(
            f"{refusal}: no answer from its GCS within {PROBE_TIMEOUT:g} s; check --ray-address"
        ) from None
    if probe.returncode == PROBE_REFUSED:  # other failures (another Ray's API) are ray.init's
        raise ConfigError(f"{refusal}: {probe.stderr.strip().splitlines()[-1]}")


class RayExecutor(Executor):
    """Cohorts as Ray tasks; a local Ray instance on 127.0.0.1 unless ``address`` is given.

    ``cohort_trials`` caps the trials of one task (by default a batch size's trials are split
    so that every CPU, or GPU, of the cluster has a cohort); ``max_retries`` is how often Ray
    reruns a cohort whose worker died.
    """

    name: ExecutorName = "ray"

    def __init__(
        self,
        address: str | None = None,
        cohort_trials: int | None = None,
        max_retries: int = MAX_RETRIES,
    ) -> None:
        if cohort_trials is not None and cohort_trials < 1:
            raise ConfigError(f"cohort_trials must be at least 1, not {cohort_trials}")
        if address is not None:
            _check_reachable(address)
        self.address = address
        self.cohort_trials = cohort_trials
        self.max_retries = max_retries
        self._ray: ModuleType | None = None
        self._owns_connection = False
        self._temp_dir: str | None = None

    def _connect(self) -> ModuleType:
        """The ray module, joined to the cluster or to a local instance it starts."""
        if self._ray is not None:
            return self._ray
        if self.address is None:
            if "ray" in sys.modules and os.environ.get(LOOPBACK_SWITCH) != "0":
                # Read by Ray when it is first imported: too late now, and the local instance
                # would listen on the machine's outward address.
                raise ConfigError(
                    "Ray was imported before batchscale could keep its local instance on "
                    f"127.0.0.1; set {LOOPBACK_SWITCH}=0 before importing ray, or start a "
                    "cluster yourself and pass --ray-address"
                )
            os.environ.setdefault(LOOPBACK_SWITCH, "0")
        import ray

        if ray.is_initialized():
            self._ray = ray  # the caller's own connection: used, and left open
            return ray
        if self.address is None:
            _remove_stale_temp_dirs()
            temp_dir = tempfile.mkdtemp(prefix=TEMP_PREFIX)
            Path(temp_dir, OWNER_FILE).write_text(str(os.getpid()))
            # Its stdin is a pipe only this process writes to (Ray's processes do not inherit
            # it): closed unsaid, by the kernel, once this process dies, even of kill -9.
            _WATCHDOGS[temp_dir] = subprocess.Popen(
                [sys.executable, "-c", REAPER, temp_dir], stdin=subprocess.PIPE
            )
            self._temp_dir = temp_dir
            ray.init(
                address="local",
                include_dashboard=False,
                _temp_dir=self._temp_dir,
                logging_level=logging.WARNING,
                log_to_driver=False,
            )
        else:
            try:
                ray.init(address=self.address, logging_level=logging.WARNING, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as error:
                message = str(error).splitlines()[0] if str(error) else type(error).__name__
                raise ConfigError(
                    f"cannot join the Ray cluster at {self.address}: {message}"
                ) from None
        self._owns_connection = True
        self._ray = ray
        return ray

    def open(self) -> None:
        """Join the cluster, or start the local instance."""
        self._connect()

    def close(self) -> None:
        """Leave the cluster; a local instance is stopped and its session folder removed."""
        if self._ray is not None and self._owns_connection:
            self._ray.shutdown()
        self._ray = None
        self._owns_connection = False
        if self._temp_dir is not None:
            _WATCHDOGS.pop(self._temp_dir).communicate(b"closed", timeout=REAPER_TIMEOUT)
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None

    def _uses_gpus(self, ray: ModuleType, device: str) -> bool:
        gpus = ray.cluster_resources().get("GPU", 0)
        if device == "cuda" and not gpus:
            raise ConfigError(
                "--device cuda was asked for but the Ray cluster has no GPUs; "
                "use --device cpu or add GPU nodes"
            )
        return device == "cuda" or (device == "auto" and gpus > 0)

    def _cohorts(self, work: list[CohortWork], slots: int) -> list[CohortWork]:
        """Split each batch size's trials so that every slot has a cohort, smallest ids first."""
        cohorts = []
        per_batch_size = max(1, math.ceil(slots / max(1, len(work))))
        for item in work:
            size = self.cohort_trials or math.ceil(len(item.specs) / per_batch_size)
            for start in range(0, len(item.specs), size):
                specs = item.specs[start : start + size]
                cohorts.append(
                    CohortWork(item.batch_size, specs, item.evaluation_steps, item.bound)
                )
        return cohorts

    def run(
        self,
        job: CohortJob,
        work: list[CohortWork],
        on_result: Callable[[TrialResult], None],
        on_batch_size: Callable[[int], None],
    ) -> None:
        """See ``Executor.run``: trials come back as each cohort finishes."""
        ray = self._connect()
        gpu = self._uses_gpus(ray, job.device)
        resources = ray.cluster_resources()
        slots = max(1, int(resources.get("GPU" if gpu else "CPU", 1)))
        board = None
        if job.race:
            # No CPU of its own: it answers a few calls per evaluation of each cohort.
            board = (
                ray.remote(LocalRaceBoard)
                .options(num_cpus=0, max_restarts=-1, max_task_retries=-1)
                .remote()
            )
            for item in work:
                if item.bound is not None:
                    board.offer.remote(item.batch_size, item.bound.step, item.bound.trial_id)
        shipped = ray.put(replace(job, workload=without_data(job.workload)))
        token = uuid.uuid4().hex
        task = ray.remote(train_cohort_task).options(
            num_cpus=1,
            num_gpus=1 if gpu else 0,
            max_retries=self.max_retries,
            retry_exceptions=False,  # an error in training repeats; only lost workers retry
        )
        running = {
            task.remote(shipped, token, cohort, gpu, board): cohort.batch_size
            for cohort in self._cohorts(work, slots)
        }
        failure: BaseException | None = None
        try:
            while running:
                ready, _ = ray.wait(list(running), num_returns=1)
                batch_size = running.pop(ready[0])
                try:
                    results = ray.get(ready[0])
                except ray.exceptions.RayError as error:
                    # Keep storing the other cohorts' trials; report the first failure last.
                    failure = failure or error
                    continue
                on_batch_size(batch_size)
                for result in results:
                    on_result(result)
        finally:
            # Leaves a cluster that outlives this run (the caller's connection) idle.
            for ref in running:
                ray.cancel(ref, force=True)
            if board is not None:
                ray.kill(board)
        if failure is not None:
            cause = getattr(failure, "cause", None)
            if isinstance(cause, Exception):
                raise cause from failure
            raise failure
