"""Container statistics in the Docker Engine API's shape, read from the cgroup files.

cgroup v1 (this host's layout) is read in full: ``memory.usage_in_bytes``,
``memory.limit_in_bytes``, ``memory.stat``, ``cpuacct.usage``, ``cpuacct.usage_percpu``,
``cpuacct.stat``, ``pids.current``/``pids.max``, ``blkio.throttle.io_service_bytes``.
On cgroup v2 the same fields come from ``memory.current``, ``memory.max``,
``cpu.stat``, ``pids.current``. ``system_cpu_usage`` is the host's (``/proc/stat``,
in nanoseconds), as the docker CLI's CPU % needs.
"""

from __future__ import annotations

import os
from typing import Any

from berth.engine.jsonlog import rfc3339nano

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_ZERO_TIME = "0001-01-01T00:00:00Z"


def _read(directory: str | None, name: str) -> str:
    if not directory:
        return ""
    try:
        with open(os.path.join(directory, name)) as f:
            return f.read()
    except OSError:
        return ""


def _int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        return 0


def _keyed(text: str) -> dict[str, int]:
    result = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            result[key] = int(value)
    return result


def host_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def system_cpu_usage() -> int:
    """The host's CPU time in nanoseconds (all CPUs, all states), as Docker reads it."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:8]
    except OSError:
        return 0
    return sum(int(v) for v in fields) * 1_000_000_000 // _TICKS


def online_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except OSError:
        return os.cpu_count() or 1


def empty_cpu() -> dict[str, Any]:
    return {
        "cpu_usage": {"total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0},
        "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0},
    }


def sample(paths: dict[str, str]) -> dict[str, Any]:
    """memory_stats, cpu_stats, pids_stats and blkio_stats of one cgroup."""
    v2 = paths.get("") or paths.get("unified") if "memory" not in paths else None
    machine = host_memory()
    if v2:
        memory_stat = _keyed(_read(v2, "memory.stat"))
        usage = _int(_read(v2, "memory.current"))
        limit_text = _read(v2, "memory.max").strip()
        limit = _int(limit_text) if limit_text and limit_text != "max" else machine
        cpu = _keyed(_read(v2, "cpu.stat"))
        total = cpu.get("usage_usec", 0) * 1000
        user = cpu.get("user_usec", 0) * 1000
        system = cpu.get("system_usec", 0) * 1000
        percpu: list[int] = []
        pids_dir: str | None = v2
        blkio: list[dict[str, Any]] = []
    else:
        memory = paths.get("memory")
        memory_stat = _keyed(_read(memory, "memory.stat"))
        usage = _int(_read(memory, "memory.usage_in_bytes"))
        limit = _int(_read(memory, "memory.limit_in_bytes")) or machine
        cpuacct = paths.get("cpuacct") or paths.get("cpu")
        total = _int(_read(cpuacct, "cpuacct.usage"))
        percpu = [int(v) for v in _read(cpuacct, "cpuacct.usage_percpu").split() if v.isdigit()]
        ticks = _keyed(_read(cpuacct, "cpuacct.stat"))
        user = ticks.get("user", 0) * 1_000_000_000 // _TICKS
        system = ticks.get("system", 0) * 1_000_000_000 // _TICKS
        pids_dir = paths.get("pids")
        blkio = []
        for line in _read(paths.get("blkio"), "blkio.throttle.io_service_bytes").splitlines():
            parts = line.split()
            if len(parts) == 3 and ":" in parts[0]:
                major, _, minor = parts[0].partition(":")
                blkio.append(
                    {
                        "major": int(major),
                        "minor": int(minor),
                        "op": parts[1],
                        "value": int(parts[2]),
                    }
                )
    if machine and limit > machine:
        limit = machine
    pids_max_text = _read(pids_dir, "pids.max").strip()
    pids: dict[str, Any] = {"current": _int(_read(pids_dir, "pids.current"))}
    if pids_max_text and pids_max_text != "max":
        pids["limit"] = _int(pids_max_text)
    cpu_usage: dict[str, Any] = {
        "total_usage": total,
        "usage_in_kernelmode": system,
        "usage_in_usermode": user,
    }
    if percpu:
        cpu_usage["percpu_usage"] = percpu
    return {
        "read": rfc3339nano(),
        "pids_stats": pids,
        "blkio_stats": {
            "io_service_bytes_recursive": blkio or None,
            "io_serviced_recursive": None,
            "io_queue_recursive": None,
            "io_service_time_recursive": None,
            "io_wait_time_recursive": None,
            "io_merged_recursive": None,
            "io_time_recursive": None,
            "sectors_recursive": None,
        },
        "num_procs": 0,
        "storage_stats": {},
        "cpu_stats": {
            "cpu_usage": cpu_usage,
            "system_cpu_usage": system_cpu_usage(),
            "online_cpus": online_cpus(),
            "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0},
        },
        "memory_stats": {"usage": usage, "stats": memory_stat, "limit": limit},
    }


def empty(container_id: str, name: str) -> dict[str, Any]:
    """What Docker answers for a container that does not run."""
    return {
        "name": "/" + name,
        "id": container_id,
        "read": _ZERO_TIME,
        "preread": _ZERO_TIME,
        "pids_stats": {},
        "blkio_stats": {},
        "num_procs": 0,
        "storage_stats": {},
        "cpu_stats": empty_cpu(),
        "precpu_stats": empty_cpu(),
        "memory_stats": {},
    }


def networks(pid: int) -> dict[str, Any]:
    """Per-interface counters of the process's network namespace (``/proc/PID/net/dev``),
    loopback left out, in Docker's ``networks`` shape."""
    result: dict[str, Any] = {}
    try:
        with open(f"/proc/{pid}/net/dev") as f:
            lines = f.read().splitlines()[2:]
    except OSError:
        return result
    for line in lines:
        name, _, rest = line.partition(":")
        name = name.strip()
        fields = rest.split()
        if name == "lo" or len(fields) < 16:
            continue
        values = [int(v) for v in fields[:16]]
        result[name] = {
            "rx_bytes": values[0],
            "rx_packets": values[1],
            "rx_errors": values[2],
            "rx_dropped": values[3],
            "tx_bytes": values[8],
            "tx_packets": values[9],
            "tx_errors": values[10],
            "tx_dropped": values[11],
        }
    return result
