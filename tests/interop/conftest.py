"""A private, real Docker daemon for interop tests.

``dockerd`` runs with its own data root, exec root, pid file and socket in a temporary
folder, without a bridge or iptables rules, so it touches nothing of the host's Docker.
Containers get a cgroup parent of their own. At the end leftover containers are
removed, the daemon is stopped by its PID (its containerd and shims too, should they
linger: they name the private folder), any mount left under the folder is detached,
and the cgroups and the folder are removed.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from berth.linux import syscalls as sc

DOCKERD = "/usr/sbin/dockerd"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0


@dataclass
class Dockerd:
    """A running private daemon and the docker CLI pointed at it."""

    root: str
    host: str
    env: dict[str, str]
    pid: int

    def docker(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        """Run the docker CLI against this daemon; its stdout."""
        proc = subprocess.run(
            ["docker", *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"docker {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}"
            )
        return proc.stdout

    def inspect(self, ref: str) -> dict[str, object]:
        result = json.loads(self.docker("image", "inspect", ref))
        assert isinstance(result, list) and len(result) == 1
        entry = result[0]
        assert isinstance(entry, dict)
        return entry


def _ping(sock_path: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(sock_path)
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            data = s.recv(4096)
    except OSError:
        return False
    return data.startswith(b"HTTP/1.") and b" 200 " in data.split(b"\r\n", 1)[0] + b" "


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _mounts_under(root: str) -> list[str]:
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            target = line.split()[4].encode().decode("unicode_escape")
            if target == root or target.startswith(root + "/"):
                found.append(target)
    return found


def _ours(root: str) -> list[int]:
    """Live processes this daemon started (containerd, shims): their command lines name
    our private folder, which nothing else can know."""
    found = []
    needle = root.encode()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if needle in f.read() and _alive(int(name)):
                    found.append(int(name))
        except OSError:
            continue
    return found


def _cgroup_dirs(parent: str) -> list[str]:
    return [p for p in glob.glob(f"/sys/fs/cgroup/*/{parent}") if os.path.isdir(p)] + [
        p for p in [f"/sys/fs/cgroup/{parent}"] if os.path.isdir(p)
    ]


def _stop(proc: subprocess.Popen[bytes], root: str, sock: str, cgroup_parent: str) -> None:
    """Remove leftover containers, stop dockerd and its children by PID, then detach
    mounts, remove the containers' cgroup parent and ``root``."""
    if proc.poll() is None and _ping(sock):
        env = dict(os.environ, DOCKER_HOST=f"unix://{sock}", DOCKER_CONFIG=f"{root}/cli")
        ids = subprocess.run(
            ["docker", "ps", "-aq"], env=env, capture_output=True, text=True, timeout=30
        ).stdout.split()
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], env=env, capture_output=True, timeout=60)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    deadline = time.monotonic() + 5
    while _ours(root) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in _ours(root):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for target in sorted(_mounts_under(root), key=len, reverse=True):
        with contextlib.suppress(Exception):
            sc.umount2(target, sc.MNT_DETACH)
    for path in _cgroup_dirs(cgroup_parent):
        for child in sorted(glob.glob(f"{path}/*/"), reverse=True):
            with contextlib.suppress(OSError):
                os.rmdir(child)
        with contextlib.suppress(OSError):
            os.rmdir(path)
    shutil.rmtree(root, ignore_errors=True)


def _start(driver: str) -> tuple[subprocess.Popen[bytes], str, str, str]:
    root = tempfile.mkdtemp(prefix="berth-dockerd-", dir="/tmp")
    # containers' cgroups go under a parent of our own (removed at the end), not "docker"
    cgroup_parent = f"berth-test-{os.path.basename(root)}"
    config = os.path.join(root, "daemon.json")
    with open(config, "w") as f:
        f.write("{}\n")
    sock = os.path.join(root, "docker.sock")
    log = open(os.path.join(root, "dockerd.log"), "wb")  # noqa: SIM115 - the daemon's
    with log:
        proc = subprocess.Popen(
            [
                DOCKERD,
                f"--config-file={config}",
                f"--data-root={root}/data",
                f"--exec-root={root}/exec",
                f"--pidfile={root}/docker.pid",
                f"--host=unix://{sock}",
                "--bridge=none",
                "--iptables=false",
                "--ip6tables=false",
                "--ip-forward=false",
                "--ip-masq=false",
                f"--storage-driver={driver}",
                f"--cgroup-parent=/{cgroup_parent}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None:
        if _ping(sock):
            return proc, root, sock, cgroup_parent
        time.sleep(0.1)
    tail: list[str] = []
    with contextlib.suppress(OSError), open(os.path.join(root, "dockerd.log"), "rb") as f:
        tail = f.read()[-600:].decode(errors="replace").strip().splitlines()[-1:]
    _stop(proc, root, sock, cgroup_parent)
    raise RuntimeError(f"dockerd --storage-driver={driver} did not start: {' '.join(tail)}")


@pytest.fixture(scope="session")
def dockerd() -> Iterator[Dockerd]:
    """The real Docker daemon, private to this test session (skips when unavailable)."""
    if os.geteuid() != 0:
        pytest.skip("the docker daemon needs root")
    if not os.path.exists(DOCKERD):
        pytest.skip(f"{DOCKERD} is absent: install docker.io to run the interop tests")
    if shutil.which("docker") is None:
        pytest.skip("the docker CLI is absent: install it to run the interop tests")
    errors = []
    for driver in ("overlay2", "vfs"):  # vfs where overlay cannot stack (overlay on overlay)
        try:
            proc, root, sock, cgroup_parent = _start(driver)
            break
        except RuntimeError as e:
            errors.append(str(e))
    else:
        pytest.skip("; ".join(errors))
    env = dict(os.environ, DOCKER_HOST=f"unix://{sock}", DOCKER_CONFIG=f"{root}/cli")
    env.pop("DOCKER_CONTEXT", None)
    try:
        yield Dockerd(root, env["DOCKER_HOST"], env, proc.pid)
    finally:
        _stop(proc, root, sock, cgroup_parent)
