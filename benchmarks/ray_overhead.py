"""What a local Ray instance costs on this machine: start-up time and resident memory.

Starts the instance the Ray executor starts (``RayExecutor`` with no address: bound to
127.0.0.1, no dashboard, its own session folder) several times and prints, per run and as
medians:

* start: ``ray.init`` until it returns;
* first task: a trivial task's round trip right after (workers are started and waiting);
* batchscale task: the first task that imports batchscale (PyTorch) in a worker;
* the driver's growth in resident memory from ``ray.init`` on;
* memory of the instance's own processes (GCS, raylet, agents, monitors, workers), as RSS and
  as PSS (shared pages split among the processes that share them, so PSS adds up to what the
  instance really takes), once idle and once every worker has imported batchscale;
* stop: ``ray.shutdown``.

    python benchmarks/ray_overhead.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections import defaultdict
from pathlib import Path

from batchscale.executors.ray import LOOPBACK_SWITCH, RayExecutor


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="instances to start (default 3)")
    return parser.parse_args()


def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of ``pid`` in KiB; zeros for a process that is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0, 0
    values = {}
    for line in text.splitlines()[1:]:
        name, value, *_ = line.split()
        values[name.rstrip(":")] = int(value)
    return values.get("Rss", 0), values.get("Pss", 0)


def descendants(root: int) -> list[int]:
    """Every process started, directly or not, by ``root``."""
    children: dict[int, list[int]] = defaultdict(list)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children[parent].append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        for child in children[todo.pop()]:
            found.append(child)
            todo.append(child)
    return found


def component(pid: int) -> str:
    """A short name for one of the instance's processes."""
    try:
        line = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "gone"
    first = Path(line[0].decode()).name
    if first.startswith("ray::"):
        return "worker" if first in {"ray::IDLE", "ray::imports"} else first
    script = next((Path(p.decode()).stem for p in line[1:3] if p.endswith(b".py")), "")
    return script or first


def instance_memory() -> dict[str, tuple[int, int, int]]:
    """Processes, RSS and PSS (MiB) per component of the instance (the driver apart)."""
    table: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for pid in descendants(os.getpid()):
        rss, pss = memory_kib(pid)
        row = table[component(pid)]
        row[0] += 1
        row[1] += rss
        row[2] += pss
    return {name: (n, rss // 1024, pss // 1024) for name, (n, rss, pss) in table.items()}


def worker_pid() -> int:
    """A task that does nothing but answer."""
    return os.getpid()


def imports() -> int:
    """A task that imports what a cohort needs; its worker's pid."""
    import batchscale.executors.ray  # noqa: F401 - the import is what is measured

    return os.getpid()


def one_run() -> dict[str, float | dict[str, tuple[int, int, int]]]:
    """Start, probe and stop one local instance."""
    import ray

    before = memory_kib(os.getpid())[0]
    executor = RayExecutor()
    started = time.perf_counter()
    executor.connect()  # what a study's first cohort triggers
    start = time.perf_counter() - started
    started = time.perf_counter()
    ray.get(ray.remote(worker_pid).remote())
    first_task = time.perf_counter() - started
    time.sleep(2.0)  # let the prestarted workers settle
    driver = (memory_kib(os.getpid())[0] - before) / 1024
    idle = instance_memory()
    slots = int(ray.cluster_resources()["CPU"])
    started = time.perf_counter()
    ray.get([ray.remote(imports).remote() for _ in range(slots)])
    batchscale_task = time.perf_counter() - started
    loaded = instance_memory()
    started = time.perf_counter()
    executor.close()
    stop = time.perf_counter() - started
    return {
        "start": start,
        "first_task": first_task,
        "batchscale_task": batchscale_task,
        "stop": stop,
        "driver_mib": driver,
        "idle": idle,
        "loaded": loaded,
    }


def print_memory(title: str, table: dict[str, tuple[int, int, int]]) -> None:
    """One memory table."""
    print(f"\n{title}")
    print(f"  {'process':<24} {'count':>5} {'RSS MiB':>8} {'PSS MiB':>8}")
    for name, (count, rss, pss) in sorted(table.items(), key=lambda item: -item[1][2]):
        print(f"  {name:<24} {count:>5} {rss:>8} {pss:>8}")
    total = [sum(row[i] for row in table.values()) for i in range(3)]
    print(f"  {'total':<24} {total[0]:>5} {total[1]:>8} {total[2]:>8}")


def main() -> None:
    """Measure and print."""
    args = parse_args()
    os.environ.setdefault(LOOPBACK_SWITCH, "0")  # before Ray's first import: see RayExecutor
    import ray

    cores = os.cpu_count()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    print(f"Ray {ray.__version__} on {platform.processor() or platform.machine()}, {cores} cores, "
          f"{memory:.0f} GiB; a local instance as --executor ray starts it")  # fmt: skip
    runs = []
    for index in range(args.repeats):
        run = one_run()
        runs.append(run)
        print(
            f"run {index + 1}: start {run['start']:.2f} s, first task {run['first_task']:.2f} s, "
            f"first batchscale task {run['batchscale_task']:.2f} s, stop {run['stop']:.2f} s, "
            f"driver +{run['driver_mib']:.0f} MiB RSS"
        )
    print("\nmedians:")
    for key in ("start", "first_task", "batchscale_task", "stop"):
        values = [run[key] for run in runs]
        print(f"  {key:<16} {statistics.median(v for v in values if isinstance(v, float)):.2f} s")
    last = runs[-1]
    for key, title in (
        ("idle", "memory, idle instance (last run)"),
        ("loaded", "memory, every worker has imported batchscale (last run)"),
    ):
        table = last[key]
        assert isinstance(table, dict)
        print_memory(title, table)


if __name__ == "__main__":
    main()
