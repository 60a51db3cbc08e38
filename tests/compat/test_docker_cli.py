"""The real docker CLI (and docker-py when installed) against a private berthd.

No DOCKER_API_VERSION: the CLI negotiates through ``/_ping``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest
from tests.compat.berthd import Daemon
from tests.helpers import CREATED_IDS

DOCKER = shutil.which("docker") or "/usr/local/bin/docker"

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root and the real kernel"),
    pytest.mark.skipif(not os.path.exists(DOCKER), reason="the docker CLI is not installed"),
]


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    d = Daemon()
    try:
        d.start()
        d.bootstrap_busybox()
        yield d
    finally:
        d.cleanup()
    assert not d.mounts()


def docker(
    daemon: Daemon, *args: str, input: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env["DOCKER_CONFIG"] = os.path.join(daemon.base, "docker-config")
    result = subprocess.run(
        [DOCKER, "-H", daemon.host, *args],
        capture_output=True,
        text=True,
        input=input,
        timeout=timeout,
        env=env,
    )
    return result


def _track(daemon: Daemon) -> None:
    """Record every container id for the session's leak check."""
    for c in daemon.get("/containers/json?all=1").json():
        CREATED_IDS.add(c["Id"])


def test_version(daemon: Daemon) -> None:
    result = docker(daemon, "version")
    assert result.returncode == 0, result.stderr
    assert "Client:" in result.stdout
    assert "Server: Berth Engine" in result.stdout
    assert "API version:      1.45 (minimum version 1.24)" in result.stdout
    fmt = docker(daemon, "version", "--format", "{{.Server.APIVersion}}")
    assert fmt.stdout.strip() == "1.45"


def test_info(daemon: Daemon) -> None:
    result = docker(daemon, "info")
    assert result.returncode == 0, result.stderr
    assert "Storage Driver: overlay" in result.stdout
    assert "Default Runtime: berth-runtime" in result.stdout
    assert f"Docker Root Dir: {daemon.root}" in result.stdout


def test_images(daemon: Daemon) -> None:
    result = docker(daemon, "images")
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()[1:]]
    assert rows[0][:2] == ["busybox", "latest"]
    image_id = docker(daemon, "image", "inspect", "-f", "{{.Id}}", "busybox").stdout.strip()
    assert image_id.startswith("sha256:")


def test_run_rm_echo(daemon: Daemon) -> None:
    result = docker(daemon, "run", "--rm", "busybox", "echo", "hi")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hi\n"
    assert docker(daemon, "ps", "-aq").stdout.strip() == ""  # --rm removed it


def test_run_exit_code_and_streams(daemon: Daemon) -> None:
    result = docker(daemon, "run", "busybox", "sh", "-c", "echo out; echo err >&2; exit 3")
    _track(daemon)
    assert result.returncode == 3
    assert result.stdout == "out\n"
    assert result.stderr == "err\n"


def test_run_hostname(daemon: Daemon) -> None:
    result = docker(daemon, "run", "--name", "named", "busybox", "cat", "/etc/hostname")
    _track(daemon)
    assert result.returncode == 0, result.stderr
    container_id = docker(daemon, "inspect", "-f", "{{.Id}}", "named").stdout.strip()
    assert result.stdout.strip() == container_id[:12]
    assert docker(daemon, "rm", "named").returncode == 0


def test_run_stdin(daemon: Daemon) -> None:
    result = docker(daemon, "run", "-i", "--rm", "busybox", "sh", "-c", "cat; echo done",
                    input="one\ntwo\n")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == "one\ntwo\ndone\n"


def test_detached_ps_logs_stop_rm(daemon: Daemon) -> None:
    result = docker(
        daemon, "run", "-d", "--name", "sleeper", "busybox", "sh", "-c", "echo started; sleep 30"
    )
    _track(daemon)
    assert result.returncode == 0, result.stderr
    container_id = result.stdout.strip()
    assert len(container_id) == 64
    ps = docker(daemon, "ps")
    assert ps.returncode == 0, ps.stderr
    line = next(line for line in ps.stdout.splitlines() if line.startswith(container_id[:12]))
    assert "busybox" in line and "sleeper" in line and "Up" in line
    for _ in range(50):
        logs = docker(daemon, "logs", "sleeper")
        if logs.stdout:
            break
        time.sleep(0.05)
    assert logs.stdout == "started\n"
    started = time.monotonic()
    stop = docker(daemon, "stop", "-t", "1", "sleeper")
    assert stop.returncode == 0, stop.stderr
    assert time.monotonic() - started < 6
    state = docker(daemon, "inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", "sleeper")
    assert state.stdout.split() == ["exited", "137"]
    assert "sleeper" not in docker(daemon, "ps").stdout
    assert "sleeper" in docker(daemon, "ps", "-a").stdout
    rm = docker(daemon, "rm", "sleeper")
    assert rm.returncode == 0, rm.stderr
    assert docker(daemon, "inspect", "sleeper").returncode != 0


def test_rm_running_needs_force(daemon: Daemon) -> None:
    container_id = docker(daemon, "run", "-d", "busybox", "sleep", "30").stdout.strip()
    CREATED_IDS.add(container_id)
    refused = docker(daemon, "rm", container_id)
    assert refused.returncode != 0
    assert "container is running" in refused.stderr
    assert docker(daemon, "rm", "-f", container_id).returncode == 0


def test_docker_py(daemon: Daemon) -> None:
    docker_py = pytest.importorskip("docker")
    client = docker_py.DockerClient(base_url=daemon.host)
    try:
        assert client.ping()
        output = client.containers.run("busybox", ["echo", "from docker-py"], remove=True)
        assert output == b"from docker-py\n"
        container = client.containers.run("busybox", ["sh", "-c", "echo x; sleep 30"], detach=True)
        CREATED_IDS.add(container.id)
        container.reload()
        assert container.status == "running"
        for _ in range(50):
            if container.logs():
                break
            time.sleep(0.05)
        assert container.logs() == b"x\n"
        container.kill()
        assert container.wait()["StatusCode"] == 137
        container.remove()
        assert [i.tags for i in client.images.list()] == [["busybox:latest"]]
    finally:
        client.close()
