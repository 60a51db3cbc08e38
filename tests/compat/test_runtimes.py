"""One small lifecycle through the real docker CLI, once per runtime berthd can use.

berth-runtime runs in the monitor's process; runc and crun (when installed) are driven
through runc's command line (``--runtime NAME``). A runtime that is installed but cannot
run containers on this host (crun 1.8 refuses hybrid cgroup v1/v2 hosts) is skipped
with its own error as the reason.
"""

from __future__ import annotations

import os
import time

import pytest
from tests.compat.berthd import Daemon
from tests.compat.test_docker_cli import DOCKER, docker

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root and the real kernel"),
    pytest.mark.skipif(not os.path.exists(DOCKER), reason="the docker CLI is not installed"),
]

RUNTIMES = {"berth-runtime": "", "runc": "/usr/sbin/runc", "crun": "/usr/bin/crun"}


@pytest.fixture(params=list(RUNTIMES))
def runtime(request: pytest.FixtureRequest, daemon: Daemon) -> str:
    name: str = request.param
    path = RUNTIMES[name]
    if path and not os.access(path, os.X_OK):
        pytest.skip(f"{name} is not installed")
    probe = docker(daemon, "run", "--rm", "--network", "none", "--runtime", name, "busybox", "true")
    if probe.returncode != 0 and "hybrid mode not supported" in probe.stderr:
        pytest.skip(f"{name} cannot run containers on this host: {probe.stderr.strip()}")
    assert probe.returncode == 0, probe.stderr
    return name


def test_lifecycle(daemon: Daemon, runtime: str) -> None:
    name = f"life-{runtime}"
    base = ["--runtime", runtime, "--network", "none"]
    ran = docker(daemon, "run", "--rm", *base, "busybox", "sh", "-c", "echo out; echo err >&2")
    assert (ran.returncode, ran.stdout, ran.stderr) == (0, "out\n", "err\n")
    assert (
        docker(daemon, "run", "-d", "--name", name, *base, "busybox", "sleep", "300").returncode
        == 0
    )
    try:
        assert docker(daemon, "inspect", "-f", "{{.HostConfig.Runtime}}", name).stdout == (
            runtime + "\n"
        )
        executed = docker(daemon, "exec", name, "sh", "-c", "echo in; exit 3")
        assert (executed.returncode, executed.stdout) == (3, "in\n")
        assert docker(daemon, "exec", "-t", name, "tty").stdout.startswith("/dev/pts/")
        assert docker(daemon, "exec", name, "nonexistent").returncode == 127
        assert docker(daemon, "pause", name).returncode == 0
        status = docker(daemon, "inspect", "-f", "{{.State.Status}}", name).stdout.strip()
        assert status == "paused"
        assert docker(daemon, "unpause", name).returncode == 0
        updated = docker(daemon, "update", "--memory", "64m", "--memory-swap", "128m", name)
        assert updated.returncode == 0, updated.stderr
        cid = docker(daemon, "inspect", "-f", "{{.Id}}", name).stdout.strip()
        with open(f"/sys/fs/cgroup/memory/berth/{cid}/memory.limit_in_bytes") as f:
            assert int(f.read()) == 64 * 1024 * 1024
        top = docker(daemon, "top", name)
        assert "sleep 300" in top.stdout
        started = time.monotonic()
        assert docker(daemon, "stop", "-t", "1", name).returncode == 0
        assert time.monotonic() - started < 5  # pid 1 ignores SIGTERM: SIGKILL after 1 s
        code = docker(daemon, "inspect", "-f", "{{.State.ExitCode}}", name).stdout.strip()
        assert code == "137"
    finally:
        docker(daemon, "rm", "-f", name)
    assert not os.path.exists(f"/sys/fs/cgroup/memory/berth/{cid}")


def test_exit_codes(daemon: Daemon, runtime: str) -> None:
    """docker run: 127 command not found, 126 not executable, as with dockerd."""
    base = ["run", "--rm", "--runtime", runtime, "--network", "none", "busybox"]
    missing = docker(daemon, *base, "nonexistent")
    assert missing.returncode == 127, missing.stderr
    assert "executable file not found" in missing.stderr
    not_executable = docker(daemon, *base, "/etc/passwd")
    assert not_executable.returncode == 126, not_executable.stderr
    assert "permission denied" in not_executable.stderr
    assert docker(daemon, "ps", "-aq").stdout == ""  # --rm removed the failed containers
