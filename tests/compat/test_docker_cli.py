"""The real docker CLI (and docker-py when installed) against a private berthd.

No DOCKER_API_VERSION: the CLI negotiates through ``/_ping``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest
from tests.compat.berthd import Daemon
from tests.conftest import each_runtime
from tests.helpers import CREATED_IDS

DOCKER = shutil.which("docker") or "/usr/local/bin/docker"

pytestmark = [
    each_runtime,  # the same tests under berth-runtime and runc
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root and the real kernel"),
    pytest.mark.skipif(not os.path.exists(DOCKER), reason="the docker CLI is not installed"),
]


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
    assert f"Default Runtime: {daemon.runtime or 'berth-runtime'}" in result.stdout
    assert "seccomp" in result.stdout and "Profile: builtin" in result.stdout
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


# ---- exec, pause, restart, rename, top, stats, restart policies ---------------------------------


def docker_tty(daemon: Daemon, *args: str, timeout: float = 30) -> tuple[int, str]:
    """Run the CLI on a pty (``-t`` needs a terminal): (exit code, what it printed)."""
    import pty
    import select

    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env["DOCKER_CONFIG"] = os.path.join(daemon.base, "docker-config")
    master, slave = pty.openpty()
    try:
        process = subprocess.Popen(
            [DOCKER, "-H", daemon.host, *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            start_new_session=True,
        )
        os.close(slave)
        slave = -1
        output = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the CLI closed the terminal
                    chunk = b""
                if not chunk:
                    break
                output += chunk
            elif process.poll() is not None:
                break
        return process.wait(timeout), output.decode(errors="replace")
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)


def test_exec(daemon: Daemon) -> None:
    container_id = docker(daemon, "run", "-d", "--name", "execd", "busybox", "sleep", "60")
    _track(daemon)
    assert container_id.returncode == 0, container_id.stderr
    result = docker(daemon, "exec", "execd", "echo", "hi")
    assert (result.returncode, result.stdout) == (0, "hi\n"), result.stderr
    result = docker(daemon, "exec", "execd", "sh", "-c", "echo err >&2; exit 5")
    assert result.returncode == 5 and result.stderr == "err\n"
    result = docker(daemon, "exec", "-i", "execd", "sh", "-c", "cat; echo done", input="in\n")
    assert (result.returncode, result.stdout) == (0, "in\ndone\n"), result.stderr
    result = docker(daemon, "exec", "-u", "nobody", "-w", "/tmp", "-e", "A=b", "execd",
                    "sh", "-c", "id -u; pwd; echo $A")  # fmt: skip
    assert result.stdout == "65534\n/tmp\nb\n"
    code, out = docker_tty(daemon, "exec", "-t", "execd", "sh", "-c", "tty; exit 2")
    assert code == 2 and "/dev/pts/" in out
    result = docker(daemon, "exec", "execd", "nonexistent")
    assert result.returncode == 127 and "not found" in result.stdout + result.stderr
    assert docker(daemon, "exec", "-d", "execd", "sleep", "1").returncode == 0
    assert docker(daemon, "rm", "-f", "execd").returncode == 0


def test_pause_unpause_restart_rename_top_stats(daemon: Daemon) -> None:
    run = docker(daemon, "run", "-d", "--name", "ops", "busybox", "sleep", "60")
    _track(daemon)
    assert run.returncode == 0, run.stderr
    assert docker(daemon, "pause", "ops").returncode == 0
    ps = docker(daemon, "ps", "--format", "{{.Names}} {{.State}} {{.Status}}").stdout
    assert any(line.startswith("ops paused Up") and "(Paused)" in line for line in ps.splitlines())
    state = docker(daemon, "inspect", "-f", "{{.State.Status}} {{.State.Paused}}", "ops").stdout
    assert state.split() == ["paused", "true"]
    assert docker(daemon, "exec", "ops", "true").returncode != 0
    assert docker(daemon, "unpause", "ops").returncode == 0
    assert docker(daemon, "inspect", "-f", "{{.State.Status}}", "ops").stdout == "running\n"
    pid = docker(daemon, "inspect", "-f", "{{.State.Pid}}", "ops").stdout
    restart = docker(daemon, "restart", "-t", "0", "ops")
    assert restart.returncode == 0, restart.stderr
    assert docker(daemon, "inspect", "-f", "{{.State.Pid}}", "ops").stdout != pid
    assert docker(daemon, "rename", "ops", "ops2").returncode == 0
    assert "ops2" in docker(daemon, "ps", "--format", "{{.Names}}").stdout.split()
    top = docker(daemon, "top", "ops2")
    assert top.returncode == 0, top.stderr
    assert top.stdout.split("\n")[0].split()[:2] == ["UID", "PID"]
    assert top.stdout.strip().endswith("sleep 60")
    stats = docker(daemon, "stats", "--no-stream", "ops2")
    assert stats.returncode == 0, stats.stderr
    header, line = stats.stdout.strip().split("\n")
    assert "CPU %" in header and "MEM USAGE / LIMIT" in header and "PIDS" in header
    fields = line.split()
    assert fields[1] == "ops2" and fields[2].endswith("%") and fields[-1] == "1"
    assert "/" in line and "B" in fields[3]
    assert docker(daemon, "rm", "-f", "ops2").returncode == 0


def test_restart_policies(daemon: Daemon) -> None:
    run = docker(daemon, "run", "-d", "--name", "flaky", "--restart", "on-failure:2",
                 "busybox", "sh", "-c", "exit 1")  # fmt: skip
    always = docker(daemon, "run", "-d", "--name", "keeper", "--restart", "always",
                    "busybox", "sleep", "60")  # fmt: skip
    _track(daemon)
    assert run.returncode == 0 and always.returncode == 0, run.stderr + always.stderr
    template = "{{.State.Status}} {{.RestartCount}} {{.State.ExitCode}}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        state = docker(daemon, "inspect", "-f", template, "flaky").stdout.split()
        if state == ["exited", "2", "1"]:
            break
        time.sleep(0.1)
    assert state == ["exited", "2", "1"]
    # `always` survives a daemon restart, even when its process dies meanwhile
    pid = int(docker(daemon, "inspect", "-f", "{{.State.Pid}}", "keeper").stdout)
    daemon.stop()
    os.kill(pid, 9)
    time.sleep(0.3)
    daemon.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the exit may reach the new daemon a moment later
        state = docker(daemon, "inspect", "-f", "{{.State.Status}} {{.RestartCount}}", "keeper")
        if state.stdout.split() == ["running", "1"]:
            break
        time.sleep(0.1)
    assert state.stdout.split() == ["running", "1"]
    assert "keeper" in docker(daemon, "ps", "--format", "{{.Names}}").stdout.split()
    assert docker(daemon, "rm", "-f", "flaky", "keeper").returncode == 0
