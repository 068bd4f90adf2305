"""The Ray executor on real Ray: a two-node cluster on 127.0.0.1 that these tests start and stop.

Ray rewrites 127.0.0.1 to the machine's outward address unless multi-node clusters are
switched off (``LOOPBACK_SWITCH``); every process here keeps to the loopback interface: the
head and the drivers with the switch, the second node through ``JOIN_NODE``.
"""

import contextlib
import http.server
import os
import random
import shutil
import signal
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from torch import Tensor, nn

from batchscale import Study, StudyConfig, load_study
from batchscale.executors.ray import (
    LOOPBACK_SWITCH,
    OWNER_FILE,
    REAPER,
    TEMP_PREFIX,
    RayExecutor,
    _remove_stale_temp_dirs,
)
from batchscale.workloads import CustomWorkload

from .test_executors import free_port, same_rows

RAY_ENV = {LOOPBACK_SWITCH: "0", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
os.environ.update(RAY_ENV)  # before this process first imports Ray, which reads them once
ray = pytest.importorskip("ray")
# A node joining at 127.0.0.1 keeps that address instead of the machine's outward one.
JOIN_NODE = (
    "import sys, ray._private.services as services; "
    "services.resolve_ip_for_localhost = lambda host: host; "
    "from ray.scripts.scripts import main; sys.exit(main())"
)
RAY = str(Path(sys.executable).parent / "ray")
CLI = [str(Path(sys.executable).parent / "batchscale"), "run", "--no-report"]
# Long enough per cohort (trials that miss the goal run 3000 steps) to be caught running.
LONG: dict[str, Any] = {
    "workload": "nqm", "optimizer": "nesterov", "batch_sizes": (4, 8, 16, 32), "trials": 3,
    "target": 0.5, "goals": (0.5,), "step_budget": 3000, "engine": "reference", "mode": "full",
    "device": "cpu",
}  # fmt: skip
LONG_ARGS = [
    "--workload", "nqm", "--optimizer", "nesterov", "--batch-sizes", "4,8,16,32", "--trials",
    "3", "--target", "0.5", "--goals", "0.5", "--step-budget", "3000", "--engine", "reference",
    "--mode", "full", "--device", "cpu",
]  # fmt: skip
TRIAL_COLUMNS = ["seed", "status", "steps", "learning_rate", "momentum"]


def session_processes(session: int) -> list[int]:
    """Live (not zombie) processes of ``session``: what a process started with
    ``start_new_session`` left behind, Ray's workers included."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[3]) == session:
            pids.append(int(stat.parent.name))
    return pids


def kill_sessions(sessions: list[int]) -> None:
    """SIGKILL whatever still runs in ``sessions`` (all started by these tests)."""
    for session in sessions:
        for pid in session_processes(session):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def start_node(command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A Ray node (or a driver) in a session of its own, where all it starts can be found."""
    return subprocess.Popen(
        command, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


@dataclass(frozen=True)
class Cluster:
    """A running test cluster: its address and the sessions its processes run in."""

    address: str
    sessions: tuple[int, ...]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A head node and a second node, one CPU each, all on 127.0.0.1."""
    temp_dir = tempfile.mkdtemp(prefix="bs-ray-test-")  # short: Ray's socket paths must fit
    port = free_port()
    address = f"127.0.0.1:{port}"
    head = start_node(
        [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--num-cpus=1", f"--temp-dir={temp_dir}", "--include-dashboard=false",
         "--disable-usage-stats"],
        dict(os.environ),
    )  # fmt: skip
    nodes = [head]
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                ray.init(address=address, log_to_driver=False)
                break
            except (ConnectionError, RuntimeError):
                if time.monotonic() > deadline or head.poll() is not None:
                    raise
                time.sleep(0.3)
        join_env = {key: value for key, value in os.environ.items() if key != LOOPBACK_SWITCH}
        join = [sys.executable, "-c", JOIN_NODE, "start", "--block", f"--address={address}",
                "--num-cpus=1", "--disable-usage-stats"]  # fmt: skip
        nodes.append(start_node(join, join_env))
        while len([n for n in ray.nodes() if n["Alive"]]) < 2:
            assert time.monotonic() < deadline, "the second node did not join"
            time.sleep(0.2)
        assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
        ray.shutdown()
        yield Cluster(address, tuple(node.pid for node in nodes))
    finally:
        ray.shutdown()
        for node in reversed(nodes):
            node.send_signal(signal.SIGTERM)  # `ray start --block` stops its node's processes
        for node in nodes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.wait(timeout=30)
        kill_sessions([node.pid for node in nodes])
        shutil.rmtree(temp_dir, ignore_errors=True)


def assert_same_store(first: Path, second: Path) -> None:
    """The same trials and measurements (losses to float32 rounding, see ``same_rows``)."""
    a, b = load_study(str(first)), load_study(str(second))
    pd.testing.assert_frame_equal(a.trials()[TRIAL_COLUMNS], b.trials()[TRIAL_COLUMNS])
    assert not a.measurements().index.duplicated().any()
    rows_a, rows_b = a.measurements().reset_index(), b.measurements().reset_index()
    assert same_rows(rows_a.to_dict("records"), rows_b.to_dict("records"))


@pytest.fixture(scope="module")
def long_local(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``LONG`` study run by the local executor: what every Ray run must end with."""
    store = tmp_path_factory.mktemp("long") / "local.sqlite"
    Study(StudyConfig(**LONG), store).run()
    return store


@pytest.fixture
def killed_drivers() -> Iterator[list[int]]:
    """Drivers (session leaders) that a test kills: what of theirs still runs at its end is
    killed too."""
    killed: list[int] = []
    try:
        yield killed
    finally:
        kill_sessions(killed)


def wait_until_gone(session: int, seconds: float) -> list[str]:
    """The command lines of what still runs in ``session`` after up to ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and session_processes(session):
        time.sleep(0.1)
    return [command_line(pid)[:60] for pid in session_processes(session)]


def owned_folders(driver: int) -> list[Path]:
    """The session folders of the local instances that ``driver`` started."""
    return [
        folder
        for folder in Path(tempfile.gettempdir()).glob(TEMP_PREFIX + "*")
        if (folder / OWNER_FILE).is_file() and (folder / OWNER_FILE).read_text() == str(driver)
    ]


def test_driver_killed_at_random_moments_resumes(
    long_local: Path, killed_drivers: list[int], tmp_path: Path
) -> None:
    """kill -9 the driver (with its own local Ray instance) again and again, then finish."""
    store = tmp_path / "ray.sqlite"
    env = {**os.environ, **RAY_ENV}
    command = [*CLI, *LONG_ARGS, "--executor", "ray", "--store", str(store)]
    rng = random.Random(7)
    # Kills at any moment (start-up, Ray's start, training), then one once trials are stored.
    moments: list[float | None] = [rng.uniform(3.0, 16.0) for _ in range(2)] + [None]
    stored: list[pd.DataFrame] = []
    for moment in moments:
        driver = start_node(command, env)  # in a session of its own, like a node
        killed_drivers.append(driver.pid)
        if moment is None:
            before = len(stored[-1]) if stored else 0
            while driver.poll() is None and len(stored_trials(store)) <= before:
                time.sleep(0.02)
        else:
            time.sleep(moment)
        driver.kill()
        driver.wait()
        # The instance dies with the driver that started it: Ray stops its GCS and raylet, the
        # watchdog the agents that Ray leaves running for a minute, deaf to SIGTERM.
        left = wait_until_gone(driver.pid, 15)
        assert not left, f"processes of the killed driver outlived it: {left}"
        trials = stored_trials(store)
        if stored:
            kept = trials.loc[stored[-1].index, "finished_at"]
            assert (kept == stored[-1]["finished_at"]).all(), "a stored trial was run again"
        stored.append(trials)
    counts = [len(trials) for trials in stored]
    assert any(0 < count < 12 for count in counts), f"no kill landed mid-study: {counts}"
    subprocess.run(command, env=env, check=True, capture_output=True)
    assert_same_store(store, long_local)
    leftovers = [folder for pid in killed_drivers for folder in owned_folders(pid)]
    assert not leftovers, "the session folders of killed drivers were not removed"


def test_next_start_clears_what_a_driver_killed_with_its_watchdog_left(
    killed_drivers: list[int],
) -> None:
    """kill -9 a driver and its watchdog at once: the next local instance's start kills what
    still runs in the session folder (Ray's agents) and removes it."""
    script = (
        "from batchscale.executors.ray import RayExecutor\n"
        "RayExecutor().open()\n"
        "print('open', flush=True)\n"
        "import time; time.sleep(300)\n"
    )
    driver = subprocess.Popen(
        [sys.executable, "-c", script], env={**os.environ, **RAY_ENV}, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    killed_drivers.append(driver.pid)
    assert driver.stdout is not None
    try:
        assert driver.stdout.readline() == "open\n"
        watchdogs = [pid for pid in session_processes(driver.pid) if REAPER in command_line(pid)]
        assert len(watchdogs) == 1
        folders = owned_folders(driver.pid)
        assert len(folders) == 1
        for pid in watchdogs:
            os.kill(pid, signal.SIGKILL)
    finally:
        driver.kill()
        driver.wait()
        driver.stdout.close()
    _remove_stale_temp_dirs()  # what the next start does first
    left = wait_until_gone(driver.pid, 5)
    assert not left, f"processes of the killed driver outlived the next start: {left}"
    assert not folders[0].exists()


TINY: dict[str, Any] = {
    "workload": "nqm", "optimizer": "momentum", "batch_sizes": (4, 16, 64), "trials": 6,
    "target": 1.0, "goals": (1.0,), "step_budget": 120, "engine": "reference", "device": "cpu",
}  # fmt: skip
MNIST1D: dict[str, Any] = {
    "workload": "mnist1d-mlp", "optimizer": "momentum", "batch_sizes": (32, 128), "trials": 4,
    "target": 0.6, "goals": (0.6,), "step_budget": 300, "train_size": 2048, "width": 16,
    "engine": "cohort", "device": "cpu",
}  # fmt: skip


def test_same_answers_as_local(cluster: Cluster, tmp_path: Path) -> None:
    """Cohorts of two trials spread over both nodes store what one process stores (the cohort
    engine is compared in the racing test below)."""
    config = StudyConfig(**TINY).model_copy(update={"mode": "full"})
    Study(config, tmp_path / "local.sqlite").run()
    with RayExecutor(cluster.address, cohort_trials=2) as executor:
        Study(config, tmp_path / "ray.sqlite").run(executor=executor)
    assert_same_store(tmp_path / "ray.sqlite", tmp_path / "local.sqlite")


@pytest.mark.parametrize("settings", [TINY, MNIST1D], ids=["nqm", "mnist1d"])
def test_racing_across_workers_keeps_steps_to_result(
    cluster: Cluster, settings: dict[str, Any], tmp_path: Path
) -> None:
    """Racing cohorts learn of each other's results through the board; the answer is exact."""
    config = StudyConfig(**settings)
    full = Study(config.model_copy(update={"mode": "full"}), tmp_path / "full.sqlite").run()
    with RayExecutor(cluster.address, cohort_trials=2) as executor:
        raced = Study(config, tmp_path / "ray.sqlite").run(executor=executor)
    assert [(r.steps_to_result, r.best_trial) for r in raced.batch_sizes] == [
        (r.steps_to_result, r.best_trial) for r in full.batch_sizes
    ]
    assert sum(r.pruned for r in raced.batch_sizes) > 0
    # Every trial's rows are the unraced trial's, up to where racing stopped it.
    ray_rows = load_study(str(tmp_path / "ray.sqlite")).measurements()
    full_rows = load_study(str(tmp_path / "full.sqlite")).measurements()
    assert same_rows(
        ray_rows.reset_index().to_dict("records"),
        full_rows.loc[ray_rows.index].reset_index().to_dict("records"),
    )


def test_killed_worker_is_retried(cluster: Cluster, long_local: Path, tmp_path: Path) -> None:
    """SIGKILL the worker process of a running cohort: Ray reruns it, nothing is lost or doubled."""
    store = tmp_path / "ray.sqlite"
    env = {**os.environ, **RAY_ENV}
    driver = subprocess.Popen(
        [*CLI, *LONG_ARGS, "--executor", "ray", "--ray-address", cluster.address,
         "--store", str(store)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        victim = None
        deadline = time.monotonic() + 120
        while victim is None and time.monotonic() < deadline and driver.poll() is None:
            # A worker's title names the task it runs.
            running = [
                pid
                for session in cluster.sessions
                for pid in session_processes(session)
                if command_line(pid).startswith("ray::train_cohort_task")
            ]
            victim = running[0] if running else None
            time.sleep(0.02)
        assert victim is not None, "no cohort was seen running"
        time.sleep(0.3)  # well inside a cohort of several seconds
        assert command_line(victim).startswith("ray::train_cohort_task"), "it finished first"
        os.kill(victim, signal.SIGKILL)
        _, err = driver.communicate(timeout=300)
    finally:
        driver.kill()
    # Had Ray not run the cohort again, the driver would have failed with the lost worker.
    assert driver.returncode == 0, err
    assert_same_store(store, long_local)


def test_user_workload_travels_and_a_failed_cohort_is_reported(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A user's own workload object reaches the workers; a cohort that fails for good raises
    its own error once the other cohorts' trials are stored."""

    class Picky(CustomWorkload):  # defined here, so Ray ships the class itself
        def loss(self, outputs: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
            if len(targets) == 64:
                raise ValueError("no batches of 64, please")
            return super().loss(outputs, targets, label_smoothing)

    generator = torch.Generator().manual_seed(0)

    def split(size: int) -> tuple[Tensor, Tensor]:
        return torch.randn(size, 8, generator=generator), torch.randint(0, 3, (size,))

    workload = Picky.create(
        "picky", model=lambda: nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)),
        train=split(256), validation=split(128), test=split(128), target=0.5,
    )  # fmt: skip
    config = StudyConfig(workload="picky", optimizer="momentum", batch_sizes=(16, 64), trials=2,
                         step_budget=40, engine="reference", mode="full", device="cpu")  # fmt: skip
    store = tmp_path / "picky.sqlite"
    with RayExecutor(cluster.address) as executor, pytest.raises(ValueError, match="of 64"):
        Study(config, store, workload).run(executor=executor)
    trials = load_study(str(store)).trials()
    assert list(trials.index) == [(16, 0), (16, 1)]


def stored_trials(store: Path) -> pd.DataFrame:
    """The trials stored so far (none before the store exists)."""
    if not store.exists():
        return pd.DataFrame(columns=["finished_at"])
    return load_study(str(store)).trials()


def test_a_local_instance_is_refused_where_ray_was_imported_without_the_loopback_switch() -> None:
    script = (
        "import ray\n"
        "from batchscale.config import ConfigError\n"
        "from batchscale.executors.ray import RayExecutor\n"
        "try:\n"
        "    RayExecutor().open()\n"
        "except ConfigError as error:\n"
        "    print(error)\n"
        "print('initialised' if ray.is_initialized() else 'not started')\n"
    )
    env = {key: value for key, value in os.environ.items() if key != LOOPBACK_SWITCH}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    message, started = done.stdout.strip().splitlines()
    assert message.startswith("Ray was imported before batchscale could keep its local instance")
    assert started == "not started"  # nothing listens anywhere


class Http1(http.server.BaseHTTPRequestHandler):
    """A web server, quiet: it answers every request with an error."""

    def log_message(self, format: str, *args: Any) -> None:
        """Logs nothing."""


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    """An HTTP/2 frame."""
    header = len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big")
    return header + payload


class Http2(socketserver.BaseRequestHandler):
    """An HTTP/2 server that answers every request with 404, as a web proxy may: gRPC's
    transport, but no Ray behind it."""

    SETTINGS, HEADERS, ACK, END_OF_HEADERS_AND_STREAM = 4, 1, 1, 5

    def handle(self) -> None:
        """Settings are acknowledged, requests answered with ``:status 404``."""
        reader = self.request.makefile("rb")
        with contextlib.suppress(OSError):
            reader.read(24)  # the client's preface
            self.request.sendall(frame(self.SETTINGS, 0, 0))
            while len(header := reader.read(9)) == 9:
                reader.read(int.from_bytes(header[:3], "big"))
                kind, flags, stream = header[3], header[4], int.from_bytes(header[5:], "big")
                if kind == self.SETTINGS and not flags & self.ACK:
                    self.request.sendall(frame(self.SETTINGS, self.ACK, 0))
                elif kind == self.HEADERS:  # 0x8d: the static table's ":status: 404"
                    reply = frame(self.HEADERS, self.END_OF_HEADERS_AND_STREAM, stream, b"\x8d")
                    self.request.sendall(reply)


@pytest.mark.parametrize("handler", [Http1, Http2], ids=["http1", "http2"])
def test_a_server_that_is_not_ray_is_refused_at_once(
    handler: type[socketserver.BaseRequestHandler], tmp_path: Path
) -> None:
    """Ray's client would retry for minutes (HTTP/1) or 20 s (HTTP/2), logging every try."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"127.0.0.1:{server.server_address[1]}"
    try:
        started = time.monotonic()
        done = subprocess.run(
            [*CLI, *LONG_ARGS, "--executor", "ray", "--ray-address", address, "--store",
             str(tmp_path / "s.sqlite")],
            env={**os.environ, **RAY_ENV}, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        took = time.monotonic() - started
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode != 0
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert len(lines) == 1 and f"cannot join the Ray cluster at {address}" in lines[0], lines
    assert took < 15  # the process's own start (PyTorch) included
