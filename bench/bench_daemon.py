"""The engine side by side: berthd against Docker and Podman, in one run, as ratios.

Three engines, each private to this run and rooted in the work directory (``--dir``):

* berthd    ``berthd --host unix://… --root … --exec-root …`` (it starts its monitor);
* dockerd   Debian's dockerd 20.10 with its own ``--data-root``, ``--exec-root``, socket and
            pidfile, ``--bridge=none --iptables=false`` (started as bench_images.py does;
            it launches its own containerd);
* podman    no daemon: ``--root``/``--runroot``/``--tmpdir`` of its own and a private
            ``containers.conf``. Its runtime is runc: crun 1.8 refuses this host's hybrid
            cgroup layout. The container rlimits are pinned to what root may set here
            (no ``CAP_SYS_RESOURCE``: podman's default of 1,048,576 open files fails).

The busybox image is bootstrapped in berthd (``POST /berth/images/bootstrap``), saved
(``docker save`` through berthd, or berth's ``archive.save`` of the same bootstrap when
berthd has no ``/images/get``) and loaded with ``docker load`` and ``podman load``.

Measured (p50/p90 over ``--iterations``; within each round every contender runs once, the
order rotating from round to round; ``--warmup`` rounds first, not counted):

1. ``run --rm busybox true`` with ``--network none``: the docker CLI against berthd and
   against dockerd, ``podman run``, and ``berth run`` against berthd. Again with the
   default network (podman's only with ``--podman-network``: its CNI bridge changes the
   host's interfaces and iptables).
2. ``exec CTR true`` in a running ``sleep`` container, the same four ways.
3. CLI start-up: ``version`` and ``ps`` the same four ways.
4. ``--containers`` (50) detached ``sleep 1000`` containers per engine, started one CLI
   call at a time (engines interleaved): the time to start them all, and the host memory
   each one adds: (RSS of the engine's processes after - before) / N, where the engine's
   processes are berthd, its monitor and any helper they start (not the containers'
   own processes: those live in another PID namespace); dockerd, containerd and the
   ``containerd-shim*`` processes of this run's containerd; podman's ``conmon``
   processes of this run. VmRSS from ``/proc/PID/status`` (PSS from ``smaps_rollup``
   in the JSON). Idle RSS, read after berthd and dockerd are restarted with the one
   image in their stores: berthd + monitor against dockerd + containerd.

A contender that cannot run is reported as ``unavailable: reason``. Everything the run
starts is stopped by PID; containers are removed, mounts under the work directories
detached, and the directories removed; leftovers are reported.

Run as root: ``sudo .venv/bin/python bench/bench_daemon.py --iterations 30 [--json FILE]``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import http.client
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

IMAGE = "busybox"
MIB = 1024 * 1024
ENGINES = ("berth", "docker", "podman")
BASELINE = "docker→dockerd"
MAX_CONSECUTIVE_FAILURES = 3
VENV_BIN = os.path.dirname(sys.executable)
CLK_TCK = os.sysconf("SC_CLK_TCK")


class Unavailable(Exception):
    """A contender cannot run here; the message says why."""


class CommandFailed(Exception):
    """A command exited non-zero; the message carries its last stderr line."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _last_line(data: bytes) -> str:
    """The message of a failed command: its last line, skipping the docker CLI's hints."""
    lines = [
        line
        for line in data.decode(errors="replace").strip().splitlines()
        if line.strip() and not line.startswith(("Run '", "See '"))
    ]
    return lines[-1][:300] if lines else ""


def run(argv: list[str], env: dict[str, str], timeout: float = 300) -> str:
    """Run a command (untimed set-up or clean-up); its stdout, or CommandFailed."""
    try:
        p = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, env=env, timeout=timeout
        )
    except FileNotFoundError as e:
        raise Unavailable(f"{argv[0]} is not installed") from e
    except subprocess.TimeoutExpired as e:
        raise CommandFailed(f"{_short(argv)}: timed out after {timeout:.0f} s") from e
    if p.returncode:
        raise CommandFailed(f"{_short(argv)}: exit {p.returncode}: {_last_line(p.stderr)}")
    return p.stdout.decode(errors="replace")


def _short(argv: list[str]) -> str:
    """A command for messages: the program's name and its verb, without the storage flags."""
    words = [os.path.basename(argv[0]), *[a for a in argv[1:] if not a.startswith("-")][:2]]
    return " ".join(words)


def timed(argv: list[str], env: dict[str, str], timeout: float = 60) -> tuple[float, str]:
    """Wall time of one command, start to exit, and its stdout; CommandFailed on failure."""
    start = time.perf_counter()
    try:
        p = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, env=env, timeout=timeout
        )
    except subprocess.TimeoutExpired as e:
        raise CommandFailed(f"{_short(argv)}: timed out after {timeout:.0f} s") from e
    elapsed = time.perf_counter() - start
    if p.returncode:
        raise CommandFailed(f"{_short(argv)}: exit {p.returncode}: {_last_line(p.stderr)}")
    return elapsed, p.stdout.decode(errors="replace")


# --------------------------------------------------------------------------- processes


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks since boot), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), int(fields[19])


def _exe_name(pid: int) -> str:
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        return ""


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _pid_ns(pid: int | str) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return ""


def ticks_now() -> int:
    """Now, in the clock ticks of /proc/PID/stat's start time."""
    with open("/proc/uptime") as f:
        return int(float(f.read().split()[0]) * CLK_TCK)


def all_pids() -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit()]


def children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for pid in all_pids():
        st = _stat(pid)
        if st is not None:
            kids.setdefault(st[0], []).append(pid)
    return kids


def host_descendants(roots: list[int]) -> set[int]:
    """The roots and their descendants that live in this PID namespace: engine processes,
    not the containers' own (those are in a PID namespace of their own)."""
    host_ns = _pid_ns("self")
    kids = children_map()
    found: set[int] = set()
    seen: set[int] = set()
    todo = [r for r in roots if r > 0]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        if _pid_ns(pid) == host_ns:
            found.add(pid)
        todo.extend(kids.get(pid, []))
    return found


def started_by_us(exe_prefix: str, since: int, marks: tuple[str, ...]) -> list[int]:
    """Processes named ``exe_prefix*``, started after ``since``, whose command line names
    one of this run's directories (a shim's containerd address, conmon's bundle)."""
    found = []
    for pid in all_pids():
        if not _exe_name(pid).startswith(exe_prefix):
            continue
        st = _stat(pid)
        if st is None or st[1] < since:
            continue
        if any(m in _cmdline(pid) for m in marks):
            found.append(pid)
    return found


def memory_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, Pss) of a process in KiB; zeros for a process gone or a zombie."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                    break
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
                    break
    except (OSError, ValueError):
        pass
    return rss, pss


@dataclass
class MemorySample:
    rss_kib: int
    pss_kib: int
    processes: dict[str, int]  # exe name -> count
    rss_by_name: dict[str, int] = field(default_factory=dict)  # exe name -> KiB

    @classmethod
    def of(cls, pids: set[int]) -> MemorySample:
        rss = pss = 0
        names: dict[str, int] = {}
        by_name: dict[str, int] = {}
        for pid in pids:
            r, p = memory_kib(pid)
            if r == 0:
                continue
            rss += r
            pss += p
            name = _exe_name(pid) or "?"
            if name.startswith("python"):  # berthd and its monitor are both python
                name = "berthd" if "berthd" in _cmdline(pid) else "berth-monitor"
            names[name] = names.get(name, 0) + 1
            by_name[name] = by_name.get(name, 0) + r
        return cls(rss, pss, names, by_name)


def wait_gone(pid: int, timeout: float) -> bool:
    """Wait for a process that is not our child to end (or turn into a zombie)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X"):
                    return True
        except OSError:
            return True
        time.sleep(0.02)
    return False


def stop_child(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def mounts_under(path: str) -> list[str]:
    """Mount points at or below ``path`` in this mount namespace, deepest first."""
    path = os.path.realpath(path)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point == path or point.startswith(path + "/"):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def unmount_under(path: str) -> None:
    if os.path.exists(path):
        for point in mounts_under(path):
            subprocess.run(["umount", "-l", point], capture_output=True)


def pids_referencing(path: str) -> list[tuple[int, str]]:
    """Live processes whose command line names ``path``: what this run started and left."""
    me = os.getpid()
    found = []
    for pid in all_pids():
        if pid == me:
            continue
        cmd = _cmdline(pid)
        if path in cmd:
            found.append((pid, cmd.strip()))
    return found


DOCKER_CGROUPS = "/sys/fs/cgroup/*/docker"
PODMAN_BRIDGE = "cni-podman0"  # podman's default CNI network (only with --podman-network)
CNI_STATE = "/var/lib/cni"  # the CNI plugins' IPAM state


def docker_cgroup_parents() -> list[str]:
    """dockerd's parent cgroup in each hierarchy (``/docker``), made at its first container."""
    import glob

    return glob.glob(DOCKER_CGROUPS)


def other_dockerd_running(mine: int) -> bool:
    return any(_exe_name(pid) == "dockerd" and pid != mine for pid in all_pids())


def podman_network_state() -> dict[str, bool]:
    """What podman's default CNI network leaves on the host, and whether it is there now."""
    chains = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        chains = subprocess.run(["iptables", "-S"], capture_output=True, timeout=30).stdout.decode()
    return {
        "bridge": os.path.exists(f"/sys/class/net/{PODMAN_BRIDGE}"),
        "chains": "-N CNI-FORWARD" in chains,
        "state": os.path.exists(CNI_STATE),
    }


def undo_podman_network(before: dict[str, bool]) -> list[str]:
    """Remove what podman's CNI plugins made during this run (its bridge, the firewall
    plugin's CNI-FORWARD/CNI-ADMIN chains, /var/lib/cni), never what was there before."""
    now = podman_network_state()
    done = []
    if now["bridge"] and not before["bridge"]:
        subprocess.run(["ip", "link", "delete", PODMAN_BRIDGE], capture_output=True)
        done.append(PODMAN_BRIDGE)
    if now["chains"] and not before["chains"]:
        comment = ["-m", "comment", "--comment", "CNI firewall plugin rules"]
        subprocess.run(["iptables", "-D", "FORWARD", *comment, "-j", "CNI-FORWARD"])
        for chain in ("CNI-FORWARD", "CNI-ADMIN"):
            subprocess.run(["iptables", "-F", chain], capture_output=True)
        for chain in ("CNI-FORWARD", "CNI-ADMIN"):
            subprocess.run(["iptables", "-X", chain], capture_output=True)
        done.append("iptables CNI-FORWARD, CNI-ADMIN")
    if now["state"] and not before["state"]:
        shutil.rmtree(CNI_STATE, ignore_errors=True)
        done.append(CNI_STATE)
    left = podman_network_state()
    problems = [f"podman network {k} left" for k, v in left.items() if v and not before[k]]
    if done:
        log(f"podman's default network: removed {', '.join(done)}")
    return problems


# --------------------------------------------------------------------------- engines


class Engine:
    """One engine: started privately, its CLIs' argv and env, its processes' memory."""

    name = ""

    def __init__(self, work: str) -> None:
        self.work = work
        os.makedirs(work, exist_ok=True)
        self.version = ""
        self.since = ticks_now()
        self.cli: list[str] = ["docker"]  # the engine's docker-style CLI
        self.env: dict[str, str] = dict(os.environ)
        self.daemon_argv: list[str] = []
        self.proc: subprocess.Popen[bytes] | None = None

    def engine_pids(self) -> set[int]:
        raise NotImplementedError

    def _wait_ready(self) -> None:
        pass

    def restart(self) -> None:
        """(Re)start the daemon; its containers, if any, outlive it (berthd) or not (dockerd)."""
        if self.proc is not None:
            stop_child(self.proc, timeout=60)
        with open(os.path.join(self.work, f"{self.name}d.log"), "ab") as logf:
            self.proc = subprocess.Popen(
                self.daemon_argv,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=logf,
                start_new_session=True,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.close()
            raise

    def idle_pids(self) -> set[int]:
        return self.engine_pids()

    def close(self) -> None:
        pass


def docker_cli_env(work: str, sock: str) -> dict[str, str]:
    """The docker CLI against ``sock``, with an empty private config."""
    cli = os.path.join(work, "docker-cli")
    os.makedirs(cli, exist_ok=True)
    with open(os.path.join(cli, "config.json"), "w") as f:
        f.write("{}")
    env = dict(os.environ, DOCKER_HOST=f"unix://{sock}", DOCKER_CONFIG=cli)
    for key in ("DOCKER_CONTEXT", "DOCKER_API_VERSION", "BERTH_HOST", "DOCKER_TLS_VERIFY"):
        env.pop(key, None)
    return env


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 120) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


class Berth(Engine):
    """A private berthd; the docker CLI and the berth CLI talk to it."""

    name = "berth"

    def __init__(self, work: str) -> None:
        super().__init__(work)
        self.berthd = os.path.join(VENV_BIN, "berthd")
        self.berth = os.path.join(VENV_BIN, "berth")
        if not os.path.exists(self.berthd):
            raise Unavailable(f"{self.berthd} is missing (scripts/setup)")
        self.sock = os.path.join(work, "berth.sock")
        self.root = os.path.join(work, "root")
        self.exec_root = os.path.join(work, "run")
        self.env = docker_cli_env(work, self.sock)
        self.berth_argv = [self.berth, "-H", f"unix://{self.sock}"]
        self.monitor = 0
        self.daemon_argv = [self.berthd, "--host", f"unix://{self.sock}", "--root", self.root]
        self.daemon_argv += ["--exec-root", self.exec_root]
        self.restart()

    def request(self, method: str, path: str, timeout: float = 120) -> tuple[int, bytes]:
        conn = UnixHTTPConnection(self.sock, timeout)
        try:
            conn.request(method, path)
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise Unavailable(f"berthd exited with {self.proc.returncode}: {self._log_tail()}")
            with contextlib.suppress(OSError):
                if self.request("GET", "/_ping", timeout=2)[0] == 200:
                    break
            if time.monotonic() > deadline:
                raise Unavailable(f"berthd did not answer within 30 s: {self._log_tail()}")
            time.sleep(0.05)
        from berth import __version__

        self.version = f"berthd {__version__}"
        # the monitor is started with the daemon; wait for its pidfile
        while time.monotonic() < deadline and not self.monitor:
            self.monitor = self._monitor_pid()
            time.sleep(0.02)

    def _monitor_pid(self) -> int:
        """The monitor's PID, if the process is this daemon's (its command line names our
        exec root), else 0."""
        try:
            with open(os.path.join(self.exec_root, "monitor.pid")) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            return 0
        return pid if self.exec_root in _cmdline(pid) else 0

    def _log_tail(self) -> str:
        try:
            with open(os.path.join(self.work, "berthd.log"), "rb") as f:
                return _last_line(f.read())
        except OSError:
            return ""

    def bootstrap(self) -> None:
        status, body = self.request("POST", f"/berth/images/bootstrap?name={IMAGE}")
        if status not in (200, 201):
            raise Unavailable(f"bootstrap {IMAGE}: {status} {body[:200]!r}")

    def save(self, path: str) -> str:
        """The image as a docker-archive tar; how it was made."""
        try:
            run(["docker", "save", "-o", path, IMAGE], self.env)
            return "docker save through berthd"
        except CommandFailed as e:
            log(f"docker save through berthd failed ({e}); saving with berth's library")
        from berth.images import archive, bootstrap
        from berth.images.store import ImageStore

        store = ImageStore(os.path.join(self.work, "save-store"))
        try:
            bootstrap.bootstrap_busybox(store, f"{IMAGE}:latest")
            with open(path, "wb") as out:
                archive.save(store, [f"{IMAGE}:latest"], out, format="docker")
        finally:
            store.close()
        return "berth archive.save of the same bootstrap (berthd has no /images/get)"

    def image_id(self) -> str:
        status, body = self.request("GET", f"/images/{IMAGE}/json")
        return str(json.loads(body).get("Id", "")) if status == 200 else ""

    def engine_pids(self) -> set[int]:
        self.monitor = self.monitor or self._monitor_pid()
        roots = [self.proc.pid if self.proc else 0, self.monitor]
        return host_descendants(roots)

    def remove_containers(self) -> None:
        status, body = self.request("GET", "/containers/json?all=1")
        if status == 200:
            for c in json.loads(body):
                self.request("DELETE", f"/containers/{c['Id']}?force=1&v=1")

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.remove_containers()
        if self.proc is not None:
            stop_child(self.proc)
            self.proc = None
        monitor = self.monitor or self._monitor_pid()
        if monitor:
            with contextlib.suppress(ProcessLookupError):
                os.kill(monitor, signal.SIGTERM)
            if not wait_gone(monitor, 15):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(monitor, signal.SIGKILL)
                wait_gone(monitor, 5)
            self.monitor = 0

    def network_leftovers(self) -> list[str]:
        """berthd removes its bridge and nftables tables when it stops with no container
        running; anything of this daemon's left (names from its exec root) is removed."""
        import hashlib

        digest = hashlib.sha256(os.path.abspath(self.exec_root).encode()).hexdigest()[:6]
        found = []
        bridge = f"berth{digest}"
        if os.path.exists(f"/sys/class/net/{bridge}"):
            found.append(f"left by berthd, removed: bridge {bridge}")
            subprocess.run(["ip", "link", "delete", bridge], capture_output=True)
        with contextlib.suppress(OSError, CommandFailed, Unavailable):
            for line in run(["nft", "list", "tables"], dict(os.environ)).splitlines():
                words = line.split()
                if len(words) == 3 and words[2].startswith(f"berth-{digest}"):
                    found.append(f"left by berthd, removed: nftables {words[1]} {words[2]}")
                    subprocess.run(["nft", "delete", "table", words[1], words[2]])
        return found


class Docker(Engine):
    """A private dockerd (its own data-root, exec-root, socket), as bench_images.py starts it."""

    name = "docker"

    def __init__(self, work: str) -> None:
        super().__init__(work)
        if shutil.which("dockerd") is None or shutil.which("docker") is None:
            raise Unavailable("dockerd or the docker CLI is not installed")
        self.sock = os.path.join(work, "docker.sock")
        self.env = docker_cli_env(work, self.sock)
        with open(os.path.join(work, "daemon.json"), "w") as f:
            f.write("{}")
        argv = [
            "dockerd",
            f"--data-root={work}/data",
            f"--exec-root={work}/exec",
            f"--pidfile={work}/docker.pid",
            f"--host=unix://{self.sock}",
            f"--config-file={work}/daemon.json",
            "--iptables=false",
            "--ip-masq=false",
            "--bridge=none",
            "--storage-driver=overlay2",
            "--log-level=error",
        ]
        self.daemon_argv = argv
        self.restart()

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise Unavailable(f"dockerd exited with {self.proc.returncode}: {self._log_tail()}")
            p = subprocess.run(
                ["docker", "version", "--format", "{{.Server.Version}}"],
                capture_output=True,
                env=self.env,
            )
            if p.returncode == 0:
                self.version = "dockerd " + p.stdout.decode().strip()
                return
            if time.monotonic() > deadline:
                raise Unavailable(f"dockerd did not answer within 60 s: {self._log_tail()}")
            time.sleep(0.2)

    def _log_tail(self) -> str:
        try:
            with open(os.path.join(self.work, "dockerd.log"), "rb") as f:
                return _last_line(f.read())
        except OSError:
            return ""

    def load(self, path: str) -> None:
        run(["docker", "load", "-i", path], self.env)

    def engine_pids(self) -> set[int]:
        shims = started_by_us("containerd-shim", self.since, (self.work,))
        return host_descendants([self.proc.pid if self.proc else 0, *shims])

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(Exception):
                ids = run(["docker", "ps", "-aq"], self.env).split()
                if ids:
                    run(["docker", "rm", "-f", "-v", *ids], self.env)
        if self.proc is not None:
            stop_child(self.proc, timeout=60)
            self.proc = None


class Podman(Engine):
    """podman with private storage and configuration; runc as its runtime."""

    name = "podman"

    def __init__(self, work: str, short: str) -> None:
        super().__init__(work)
        self.short = short  # podman refuses a runroot path longer than 50 characters
        if shutil.which("podman") is None:
            raise Unavailable("podman is not installed (apt-get install podman)")
        if shutil.which("runc") is None:
            raise Unavailable("runc is not installed (podman's crun refuses hybrid cgroups)")
        tmp = os.path.join(work, "tmp")
        root = os.path.join(work, "root")
        for d in (tmp, root, short):
            os.makedirs(d, exist_ok=True)
        # Podman asks for 1,048,576 open files and its own nproc for containers; root here
        # lacks CAP_SYS_RESOURCE, so pin them to what this process may set.
        _, nofile_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        _, nproc_hard = resource.getrlimit(resource.RLIMIT_NPROC)
        with open("/proc/sys/kernel/pid_max") as f:
            nproc = min(nproc_hard, int(f.read()))
        conf = os.path.join(work, "containers.conf")
        with open(conf, "w") as f:
            f.write(
                "[containers]\n"
                f'default_ulimits = ["nofile=1024:{nofile_hard}", "nproc={nproc}:{nproc}"]\n'
                "[engine]\n"
                f'events_logger = "file"\nevents_logfile_path = "{work}/events.log"\n'
                'cgroup_manager = "cgroupfs"\n'
                f'image_copy_tmp_dir = "{tmp}"\n'
            )
        auth = os.path.join(work, "auth.json")
        with open(auth, "w") as f:
            f.write("{}")
        self.env = dict(os.environ, CONTAINERS_CONF=conf, REGISTRY_AUTH_FILE=auth, TMPDIR=tmp)
        self.cli = [
            "podman",
            f"--root={root}",
            f"--runroot={short}",
            f"--tmpdir={tmp}",
            "--storage-driver=overlay",
            "--runtime=runc",
        ]
        self.version = "podman " + run(["podman", "--version"], self.env).split()[-1] + " (runc)"

    def load(self, path: str) -> None:
        run([*self.cli, "load", "-q", "-i", path], self.env)

    def engine_pids(self) -> set[int]:
        return host_descendants(started_by_us("conmon", self.since, (self.work, self.short)))

    def idle_pids(self) -> set[int]:
        return set()  # no daemon

    def close(self) -> None:
        try:
            run([*self.cli, "rm", "-a", "-f", "-v", "-t", "0"], self.env)
        except (CommandFailed, Unavailable) as e:
            log(f"podman: removing containers: {e}")
        # conmon runs its exit command (``podman container cleanup``) after a container
        # ends; give those a moment to finish rather than killing them half way
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (
            pids_referencing(self.work) or pids_referencing(self.short)
        ):
            time.sleep(0.1)


# --------------------------------------------------------------------------- measuring


@dataclass
class Series:
    samples: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    unavailable: str | None = None

    def quantile(self, q: float) -> float | None:
        """Linear interpolation between closest ranks (numpy's default)."""
        if not self.samples:
            return None
        s = sorted(self.samples)
        k = (len(s) - 1) * q
        lo = int(k)
        hi = min(lo + 1, len(s) - 1)
        return s[lo] + (s[hi] - s[lo]) * (k - lo)


@dataclass
class Contender:
    label: str
    argv: list[str]
    env: dict[str, str]


@dataclass
class ManyResult:
    containers: int
    start_s: list[float] = field(default_factory=list)
    before: MemorySample | None = None
    after: MemorySample | None = None
    running: int = 0
    error: str | None = None

    def per_container_mib(self) -> float | None:
        if self.before is None or self.after is None or not self.containers:
            return None
        return (self.after.rss_kib - self.before.rss_kib) / 1024 / self.containers


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = tempfile.mkdtemp(prefix="berth-bench-daemon-", dir=args.dir)
        # podman's runroot: short, and not under /tmp (other test sessions watch mounts there)
        self.short = tempfile.mkdtemp(prefix="bbd-", dir="/run")
        self.engines: dict[str, Engine] = {}
        self.unavailable: dict[str, str] = {}
        self.groups: dict[str, dict[str, Series]] = {}
        self.idle: dict[str, MemorySample] = {}
        self.many: dict[str, ManyResult] = {}
        self.notes: list[str] = []
        self.exec_name = f"bbd-exec-{os.getpid()}"
        self.docker_cgroups_before = bool(docker_cgroup_parents())
        self.podman_net_before = podman_network_state()

    # ---- set-up ------------------------------------------------------------------------

    def start(self) -> None:
        makers: dict[str, Callable[[], Engine]] = {
            "berth": lambda: Berth(os.path.join(self.work, "berth")),
            "docker": lambda: Docker(os.path.join(self.work, "docker")),
            "podman": lambda: Podman(os.path.join(self.work, "podman"), self.short),
        }
        for name in self.args.engines:
            log(f"starting {name}")
            try:
                self.engines[name] = makers[name]()
            except (Unavailable, CommandFailed, OSError) as e:
                self.unavailable[name] = str(e)
                log(f"{name}: unavailable: {e}")
        berth = self.engines.get("berth")
        if not isinstance(berth, Berth):
            raise SystemExit(f"berthd is needed: {self.unavailable.get('berth', 'not selected')}")
        berth.bootstrap()
        tar = os.path.join(self.work, f"{IMAGE}.tar")
        how = berth.save(tar)
        self.notes.append(f"image {IMAGE} {berth.image_id()[:19]}: {how}, loaded by the others")
        for name in ("docker", "podman"):
            engine = self.engines.get(name)
            if isinstance(engine, Docker | Podman):
                try:
                    engine.load(tar)
                except (CommandFailed, Unavailable) as e:
                    self.drop(name, f"load failed: {e}")
        # idle: each daemon started afresh with the one image in its store
        for name, engine in list(self.engines.items()):
            if engine.daemon_argv:
                try:
                    engine.restart()
                except Unavailable as e:
                    self.drop(name, f"restart failed: {e}")
        time.sleep(1)  # let the daemons settle before the idle reading
        for name, engine in self.engines.items():
            self.idle[name] = MemorySample.of(engine.idle_pids())

    def check(self) -> None:
        """Every contender really runs a container and returns its output (untimed), and
        which interfaces each default network gives."""
        probe = ["sh", "-c", "echo ok-$((40+2))"]
        for c in self.contenders(["run", "--rm", "--network", "none", IMAGE, *probe]):
            try:
                got = run(c.argv, c.env, timeout=60).strip()
            except CommandFailed as e:
                got = f"failed: {e}"
            if got != "ok-42":
                self.notes.append(f"WARNING: {c.label} run printed {got[:100]!r}, not 'ok-42'")
        default = ["run", "--rm", IMAGE, "ls", "/sys/class/net"]
        for c in self.contenders(default, self.args.podman_network):
            with contextlib.suppress(CommandFailed):
                nets = " ".join(run(c.argv, c.env, timeout=60).split())
                self.notes.append(f"default network of {c.label}: interfaces {nets}")

    def drop(self, name: str, reason: str) -> None:
        self.unavailable[name] = reason
        log(f"{name}: unavailable: {reason}")
        engine = self.engines.pop(name, None)
        if engine is not None:
            with contextlib.suppress(Exception):
                engine.close()

    def contenders(self, verb: list[str], podman_ok: bool = True) -> list[Contender]:
        """One command four ways: berth CLI and docker CLI against berthd, docker CLI against
        dockerd, podman."""
        out: list[Contender] = []
        berth = self.engines.get("berth")
        if isinstance(berth, Berth):
            out.append(Contender("berth→berthd", [*berth.berth_argv, *verb], berth.env))
            out.append(Contender("docker→berthd", ["docker", *verb], berth.env))
        docker = self.engines.get("docker")
        if isinstance(docker, Docker):
            out.append(Contender(BASELINE, ["docker", *verb], docker.env))
        podman = self.engines.get("podman")
        if isinstance(podman, Podman) and podman_ok:
            out.append(Contender("podman", [*podman.cli, *verb], podman.env))
        return out

    # ---- timed groups ------------------------------------------------------------------

    def measure(self, group: str, contenders: list[Contender]) -> None:
        """Round-robin: each round runs every contender once, the order rotating."""
        results = self.groups.setdefault(group, {})
        for c in contenders:
            results[c.label] = Series()
        log(f"[{group}]")
        live = list(contenders)
        for w in range(self.args.warmup):
            for c in list(live):
                try:
                    timed(c.argv, c.env)
                except CommandFailed as e:
                    results[c.label].unavailable = f"failed in warm-up {w + 1}: {e}"
                    log(f"  {c.label}: unavailable: {e}")
                    live.remove(c)
        streak = dict.fromkeys((c.label for c in live), 0)
        for r in range(self.args.iterations):
            order = live[r % len(live) :] + live[: r % len(live)] if live else []
            for c in order:
                s = results[c.label]
                if streak[c.label] >= MAX_CONSECUTIVE_FAILURES:
                    continue
                try:
                    elapsed, _ = timed(c.argv, c.env)
                    s.samples.append(elapsed)
                    streak[c.label] = 0
                except CommandFailed as e:
                    s.failures.append(str(e))
                    streak[c.label] += 1
                    log(f"  {c.label}: round {r + 1} failed: {e}")
            if (r + 1) % 10 == 0 or r + 1 == self.args.iterations:
                summary = ", ".join(
                    f"{label} {q * 1000:.0f}"
                    for label, s in results.items()
                    if (q := s.quantile(0.5)) is not None
                )
                log(f"  round {r + 1}: p50 ms {summary}")

    def start_exec_targets(self) -> None:
        verb = ["run", "-d", "--network", "none", "--name", self.exec_name, IMAGE, "sleep", "1000"]
        for name, engine in list(self.engines.items()):
            try:
                run([*engine.cli, *verb], engine.env)
            except CommandFailed as e:
                self.notes.append(f"{name}: no exec container: {e}")

    def remove_exec_targets(self) -> None:
        for engine in self.engines.values():
            with contextlib.suppress(CommandFailed):
                run([*engine.cli, "rm", "-f", *_no_wait(engine), self.exec_name], engine.env)

    # ---- many detached containers ------------------------------------------------------

    def measure_many(self) -> None:
        n = self.args.containers
        log(f"[{n} detached containers per engine]")
        plans: dict[str, tuple[list[str], dict[str, str]]] = {}
        for name, engine in self.engines.items():
            verb = ["run", "-d", "--network", "none", IMAGE, "sleep", "1000"]
            plans[name] = ([*engine.cli, *verb], engine.env)
            self.many[name] = ManyResult(n)
        time.sleep(1)
        for name, engine in self.engines.items():
            self.many[name].before = MemorySample.of(engine.engine_pids())
        ids: dict[str, list[str]] = {name: [] for name in plans}
        names = list(plans)
        for i in range(n):
            for name in names[i % len(names) :] + names[: i % len(names)]:
                res = self.many[name]
                if res.error:
                    continue
                argv, env = plans[name]
                try:
                    elapsed, out = timed(argv, env)
                    res.start_s.append(elapsed)
                    ids[name].append(out.strip())
                except CommandFailed as e:
                    res.error = f"container {i + 1}: {e}"
                    log(f"  {name}: {res.error}")
            if (i + 1) % 10 == 0:
                log(f"  {i + 1} started")
        time.sleep(2)  # let helpers finish their start-up work before reading memory
        for name, engine in self.engines.items():
            res = self.many[name]
            res.after = MemorySample.of(engine.engine_pids())
            with contextlib.suppress(CommandFailed):
                res.running = len(run([*engine.cli, "ps", "-q"], engine.env).split())
        for name, engine in self.engines.items():
            if not ids[name]:
                continue
            try:
                run([*engine.cli, "rm", "-f", *_no_wait(engine), *ids[name]], engine.env)
            except CommandFailed as e:
                self.notes.append(f"{name}: removing the detached containers: {e}")

    # ---- the whole run -----------------------------------------------------------------

    def go(self) -> None:
        log(f"work directory {self.work}")
        self.start()
        self.check()
        none = ["--network", "none"]
        self.measure(
            "run --rm (--network none)", self.contenders(["run", "--rm", *none, IMAGE, "true"])
        )
        self.measure(
            "run --rm (default network)",
            self.contenders(["run", "--rm", IMAGE, "true"], podman_ok=self.args.podman_network),
        )
        if "podman" in self.engines and not self.args.podman_network:
            self.groups["run --rm (default network)"]["podman"] = Series(
                unavailable="not run: pass --podman-network (its CNI bridge changes the host)"
            )
        self.start_exec_targets()
        self.measure("exec CTR true", self.contenders(["exec", self.exec_name, "true"]))
        self.measure("version", self.contenders(["version"]))
        self.measure("ps", self.contenders(["ps"]))
        self.remove_exec_targets()
        if self.args.containers > 0:
            self.measure_many()

    # ---- cleanup -----------------------------------------------------------------------

    def cleanup(self) -> list[str]:
        problems: list[str] = []
        for engine in list(self.engines.values()):
            try:
                engine.close()
            except Exception as e:
                problems.append(f"closing {engine.name}: {e}")
        dirs = (self.work, self.short)
        # anything still running that this run started (containerd, shims, conmon)
        for d in dirs:
            for pid, cmd in pids_referencing(d):
                problems.append(f"left running, killed: {pid} {cmd[:120]}")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        berth = self.engines.get("berth")
        if isinstance(berth, Berth):
            problems += berth.network_leftovers()
        if self.args.podman_network:
            problems += undo_podman_network(self.podman_net_before)
        # The empty /docker parents our dockerd made: only if none existed before and no
        # other dockerd runs now (a parent with anything in it refuses rmdir anyway).
        if not self.docker_cgroups_before and not other_dockerd_running(0):
            for path in docker_cgroup_parents():
                try:
                    os.rmdir(path)
                except OSError as e:
                    problems.append(f"cgroup left: {path}: {e.strerror}")
        for d in dirs:
            unmount_under(d)
            shutil.rmtree(d, ignore_errors=True)
            if os.path.exists(d):
                problems.append(f"could not remove {d}")
            for point in mounts_under(d):
                problems.append(f"still mounted: {point}")
            for pid, cmd in pids_referencing(d):
                problems.append(f"still running: {pid} {cmd[:120]}")
        return problems

    # ---- report ------------------------------------------------------------------------

    def p50(self, group: str, label: str) -> float | None:
        s = self.groups.get(group, {}).get(label)
        return s.quantile(0.5) if s else None

    def report(self) -> str:
        lines: list[str] = []
        out = lines.append
        out(f"{self.args.iterations} rounds (+{self.args.warmup} warm-up), milliseconds\n")
        out(f"| op | contender | p50 ms | p90 ms | min ms | p50 vs {BASELINE} |")
        out("|---|---|---:|---:|---:|---:|")
        for group, results in self.groups.items():
            base = self.p50(group, BASELINE)
            for label, s in results.items():
                if s.unavailable:
                    out(f"| {group} | {label} | unavailable: {s.unavailable} | | | |")
                    continue
                p50, p90 = s.quantile(0.5), s.quantile(0.9)
                if p50 is None or p90 is None:
                    out(f"| {group} | {label} | failed: {s.failures[0][:120]} | | | |")
                    continue
                ratio = f"{p50 / base:.2f}x" if base else ""
                extra = f" ({len(s.failures)} failed)" if s.failures else ""
                out(
                    f"| {group} | {label}{extra} | {p50 * 1000:.1f} | {p90 * 1000:.1f} |"
                    f" {min(s.samples) * 1000:.1f} | {ratio} |"
                )
        out("")
        out("| engine | idle RSS MiB (processes) | N | start all N s | p50 start ms |"
            " RSS added MiB | per container MiB | running |")  # fmt: skip
        out("|---|---:|---:|---:|---:|---:|---:|---:|")
        for name in self.args.engines:
            if name in self.unavailable:
                out(f"| {name} | unavailable: {self.unavailable[name]} | | | | | | |")
                continue
            idle = self.idle.get(name)
            idle_s = (
                f"{idle.rss_kib / 1024:.1f} ("
                + " + ".join(f"{n} {k / 1024:.1f}" for n, k in sorted(idle.rss_by_name.items()))
                + ")"
                if idle and idle.processes
                else "no daemon"
            )
            res = self.many.get(name)
            if res is None:
                out(f"| {name} | {idle_s} | | | | | | |")
                continue
            if res.error:
                out(f"| {name} | {idle_s} | {res.containers} | failed: {res.error} | | | | |")
                continue
            per = res.per_container_mib()
            added = (
                (res.after.rss_kib - res.before.rss_kib) / 1024
                if res.before is not None and res.after is not None
                else 0.0
            )
            p50 = statistics.median(res.start_s) * 1000 if res.start_s else 0.0
            out(
                f"| {name} | {idle_s} | {res.containers} | {sum(res.start_s):.2f} | {p50:.1f} |"
                f" {added:.1f} | {per:.2f} | {res.running} |"
            )
        for name, res in self.many.items():
            if res.before is not None and res.after is not None:
                out(
                    f"- {name} processes: before {_procs(res.before.processes) or 'none'};"
                    f" after {_procs(res.after.processes) or 'none'}"
                )
        out("")
        out("Goals:")
        for text, verdict in self.goals():
            out(f"- {text}: {verdict}")
        for note in self.notes:
            out(f"- {note}")
        return "\n".join(lines)

    def goals(self) -> list[tuple[str, str]]:
        """(goal, verdict with the numbers) for each goal of issue 4's "Speed and memory"."""

        def ms(v: float | None) -> str:
            return f"{v * 1000:.1f} ms" if v is not None else "n/a"

        def verdict(ok: bool | None, detail: str) -> str:
            word = "n/a" if ok is None else ("met" if ok else "MISSED")
            return f"{word} ({detail})"

        found: list[tuple[str, str]] = []
        run = "run --rm (--network none)"
        b, d, p = (self.p50(run, x) for x in ("docker→berthd", BASELINE, "podman"))
        ratio = b / d if b and d else None
        found.append(
            (
                "docker CLI run via berthd p50 <= 0.5x dockerd's",
                verdict(
                    ratio <= 0.5 if ratio else None,
                    f"{ms(b)} vs {ms(d)}" + (f" = {ratio:.2f}x" if ratio else ""),
                ),
            )
        )
        br = self.p50(run, "berth→berthd")
        ok = None if br is None or d is None or p is None else br < d and br < p
        found.append(
            (
                "berth run p50 below docker's and podman's CLIs",
                verdict(ok, f"berth {ms(br)}, docker {ms(d)}, podman {ms(p)}"),
            )
        )
        bm = self.many.get("berth")
        pm = self.many.get("podman")
        bper = bm.per_container_mib() if bm and not bm.error else None
        pper = pm.per_container_mib() if pm and not pm.error else None
        found.append(
            (
                "memory per container below podman's conmon",
                verdict(
                    None if bper is None or pper is None else bper < pper,
                    f"berth {_mib(bper)}, podman {_mib(pper)}",
                ),
            )
        )
        idle = self.idle.get("berth")
        idle_mib = idle.rss_kib / 1024 if idle else None
        found.append(
            (
                "idle berthd + monitor < 60 MiB",
                verdict(None if idle_mib is None else idle_mib < 60, _mib(idle_mib)),
            )
        )
        ex = "exec CTR true"
        eb, ed, eberth = (self.p50(ex, x) for x in ("docker→berthd", BASELINE, "berth→berthd"))
        found.append(
            (
                "exec p50 <= 0.5x docker's",
                verdict(
                    None if eb is None or ed is None else eb <= 0.5 * ed,
                    f"docker→berthd {ms(eb)}, berth→berthd {ms(eberth)}, dockerd {ms(ed)}",
                ),
            )
        )
        v, ps = self.p50("version", "berth→berthd"), self.p50("ps", "berth→berthd")
        found.append(
            (
                "berth version and berth ps p50 < 100 ms",
                verdict(
                    None if v is None or ps is None else v < 0.1 and ps < 0.1,
                    f"version {ms(v)}, ps {ms(ps)}",
                ),
            )
        )
        return found

    def machine(self, load_start: tuple[float, float, float]) -> dict[str, Any]:
        versions = [e.version for e in self.engines.values() if e.version]
        with contextlib.suppress(Exception):
            versions.append(
                "docker CLI "
                + run(["docker", "--version"], dict(os.environ)).split()[2].rstrip(",")
            )
        with contextlib.suppress(Exception):
            versions.append(run(["runc", "--version"], dict(os.environ)).splitlines()[0])
        return {
            "time": f"{_dt.datetime.now(_dt.UTC):%Y-%m-%d %H:%M} UTC",
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "versions": versions,
            "work_dir_parent": self.args.dir,
            "load_start": load_start[0],
            "load_end": os.getloadavg()[0],
        }

    def as_json(self, machine: dict[str, Any]) -> dict[str, Any]:
        def mem(m: MemorySample | None) -> dict[str, Any] | None:
            if m is None:
                return None
            return {
                "rss_kib": m.rss_kib,
                "pss_kib": m.pss_kib,
                "processes": m.processes,
                "rss_kib_by_name": m.rss_by_name,
            }

        return {
            "machine": machine,
            "iterations": self.args.iterations,
            "warmup": self.args.warmup,
            "unavailable": self.unavailable,
            "groups": {
                group: {
                    label: {
                        "p50": s.quantile(0.5),
                        "p90": s.quantile(0.9),
                        "samples": s.samples,
                        "failures": s.failures,
                        "unavailable": s.unavailable,
                    }
                    for label, s in results.items()
                }
                for group, results in self.groups.items()
            },
            "idle": {name: mem(m) for name, m in self.idle.items()},
            "many": {
                name: {
                    "containers": r.containers,
                    "start_s": r.start_s,
                    "before": mem(r.before),
                    "after": mem(r.after),
                    "per_container_mib": r.per_container_mib(),
                    "running": r.running,
                    "error": r.error,
                }
                for name, r in self.many.items()
            },
            "goals": [{"goal": g, "verdict": v} for g, v in self.goals()],
            "notes": self.notes,
        }


def _no_wait(engine: Engine) -> list[str]:
    """podman rm -f waits for the stop timeout unless told not to (docker kills at once)."""
    return ["-t", "0"] if isinstance(engine, Podman) else []


def _procs(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} x{c}" if c > 1 else n for n, c in sorted(counts.items()))


def _mib(v: float | None) -> str:
    return f"{v:.2f} MiB" if v is not None else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=30, help="timed rounds per op")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--containers", type=int, default=50, help="detached containers")
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma-separated subset")
    parser.add_argument(
        "--podman-network",
        action="store_true",
        help="also time podman on its default (CNI bridge) network",
    )
    parser.add_argument("--dir", default="/var/tmp", help="work directory's parent")
    parser.add_argument("--json", help="write every sample to this file")
    args = parser.parse_args()
    args.engines = [e for e in args.engines.split(",") if e]
    if unknown := set(args.engines) - set(ENGINES):
        parser.error(f"unknown engines {sorted(unknown)}; choose from {', '.join(ENGINES)}")
    if os.geteuid() != 0:
        sys.exit("run as root (the daemons, mounts and cgroups need it)")

    def on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    load_start = os.getloadavg()
    bench = Bench(args)
    failed = ""
    try:
        bench.go()
    except KeyboardInterrupt:
        failed = "interrupted"
    except (Unavailable, CommandFailed) as e:
        failed = str(e)
    finally:
        machine = bench.machine(load_start)
        problems = bench.cleanup()
        if problems:
            log("cleanup found:\n  " + "\n  ".join(problems))
        else:
            log("cleanup: no process, mount or file left behind")
    if failed:
        sys.exit(f"bench_daemon: {failed}")
    for name, reason in bench.unavailable.items():
        print(f"{name}: unavailable: {reason}")
    print(bench.report())
    print(
        f"\nmachine: {machine['time']}; {machine['cpus']} CPUs, kernel {machine['kernel']},"
        f" Python {machine['python']}; {'; '.join(machine['versions'])};"
        f" load average {machine['load_start']:.2f} at start, {machine['load_end']:.2f} at end"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(bench.as_json(machine), f, indent=1)


if __name__ == "__main__":
    main()
