"""berthd over HTTP: exec (hijacked like attach), pause/unpause, restart, rename, top,
stats and restart policies, with a private daemon (and monitor) for the module."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from tests.compat.berthd import Daemon, UnixHTTPConnection, demux

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root and the real kernel"),
]


@pytest.fixture(scope="module")
def sleeper(daemon: Daemon) -> Iterator[str]:
    """One running container shared by the exec tests."""
    container_id = daemon.create(["sleep", "60"])
    assert daemon.post(f"/containers/{container_id}/start").status == 204
    yield container_id
    daemon.delete(f"/containers/{container_id}?force=1")


def _exec(daemon: Daemon, container_id: str, cmd: list[str], **config: Any) -> str:
    body = {"AttachStdout": True, "AttachStderr": True, "Cmd": cmd, **config}
    response = daemon.post(f"/containers/{container_id}/exec", body)
    assert response.status == 201, response
    exec_id: str = response.json()["Id"]
    return exec_id


def _run_exec(
    daemon: Daemon, container_id: str, cmd: list[str], stdin: bytes = b"", **config: Any
) -> tuple[bytes, dict[str, Any]]:
    exec_id = _exec(daemon, container_id, cmd, **config)
    status, raw = daemon.hijack(
        f"/v1.45/exec/{exec_id}/start", {"Detach": False, "Tty": config.get("Tty", False)}, stdin
    )
    assert status == 101, raw
    info = daemon.get(f"/exec/{exec_id}/json").json()  # at once, as the CLI does
    return raw, info


def _wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# ---- exec ---------------------------------------------------------------------------------


def test_exec_streams_and_exit_code(daemon: Daemon, sleeper: str) -> None:
    raw, info = _run_exec(daemon, sleeper, ["sh", "-c", "echo out; echo err >&2; exit 7"])
    frames = demux(raw)
    assert (1, b"out\n") in frames and (2, b"err\n") in frames
    assert info["ExitCode"] == 7 and info["Running"] is False
    assert info["ContainerID"] == sleeper and info["Pid"] > 0
    assert info["ProcessConfig"]["entrypoint"] == "sh"
    assert info["ProcessConfig"]["arguments"] == ["-c", "echo out; echo err >&2; exit 7"]
    assert info["ID"] in daemon.inspect(sleeper)["ExecIDs"]


def test_exec_joins_the_container(daemon: Daemon, sleeper: str) -> None:
    raw, info = _run_exec(
        daemon,
        sleeper,
        [
            "sh",
            "-c",
            "hostname; pwd; id -u; echo $FOO; cat /proc/1/cmdline; echo; "
            "cat /proc/self/cgroup | grep -c berth",
        ],
        Env=["FOO=bar"],
        WorkingDir="/tmp",
        User="nobody",
    )
    out = b"".join(d for s, d in demux(raw) if s == 1).decode().split("\n")
    assert out[0] == sleeper[:12]  # its uts namespace
    assert out[1:4] == ["/tmp", "65534", "bar"]
    assert out[4].replace("\0", " ").strip() == "sleep 60"  # its pid namespace
    assert int(out[5]) >= 1  # its cgroup
    assert info["ExitCode"] == 0


def test_exec_stdin_and_tty(daemon: Daemon, sleeper: str) -> None:
    raw, info = _run_exec(
        daemon, sleeper, ["sh", "-c", "cat; echo done"], stdin=b"hello\n", AttachStdin=True
    )
    assert b"".join(d for _, d in demux(raw)) == b"hello\ndone\n"
    assert info["ExitCode"] == 0
    raw, info = _run_exec(daemon, sleeper, ["sh", "-c", "tty; exit 3"], Tty=True)
    assert raw.replace(b"\r", b"").startswith(b"/dev/pts/")  # raw, no frames
    assert info["ExitCode"] == 3 and info["ProcessConfig"]["tty"] is True


def test_exec_detached_resize_and_errors(daemon: Daemon, sleeper: str) -> None:
    exec_id = _exec(daemon, sleeper, ["sh", "-c", "sleep 0.2; exit 4"])
    assert daemon.post(f"/exec/{exec_id}/start", {"Detach": True}).status == 200
    assert daemon.post(f"/exec/{exec_id}/start", {"Detach": True}).status == 409
    _wait_for(lambda: daemon.get(f"/exec/{exec_id}/json").json()["Running"] is False)
    assert daemon.get(f"/exec/{exec_id}/json").json()["ExitCode"] == 4
    assert daemon.post(f"/exec/{exec_id}/resize?h=30&w=100").status == 200
    # a program that is not there: the stream says why, the exit code is 127
    raw, info = _run_exec(daemon, sleeper, ["nonexistent"])
    assert b"executable file not found" in b"".join(d for _, d in demux(raw))
    assert info["ExitCode"] == 127
    assert daemon.get("/exec/nope/json").status == 404
    assert daemon.post("/exec/nope/start", {}).status == 404
    assert daemon.post(f"/containers/{sleeper}/exec", {"Cmd": []}).status == 400
    stopped, _ = daemon.run(["true"])
    assert daemon.post(f"/containers/{stopped}/exec", {"Cmd": ["true"]}).status == 409
    daemon.delete(f"/containers/{stopped}")


# ---- pause, restart, rename, top, stats ---------------------------------------------------------


def test_pause_unpause(daemon: Daemon) -> None:
    container_id = daemon.create(["sh", "-c", "while true; do sleep 0.05; done"])
    daemon.post(f"/containers/{container_id}/start")
    assert daemon.post(f"/containers/{container_id}/pause").status == 204
    state = daemon.inspect(container_id)["State"]
    assert state["Status"] == "paused" and state["Paused"] is True and state["Running"]
    listed = daemon.get('/containers/json?filters={"status":["paused"]}').json()
    assert [c["Id"] for c in listed] == [container_id]
    assert listed[0]["Status"].endswith("(Paused)")
    assert daemon.post(f"/containers/{container_id}/pause").status == 409
    assert daemon.post(f"/containers/{container_id}/exec", {"Cmd": ["true"]}).status == 409
    assert daemon.get("/info").json()["ContainersPaused"] == 1
    assert daemon.post(f"/containers/{container_id}/unpause").status == 204
    assert daemon.inspect(container_id)["State"]["Status"] == "running"
    assert daemon.post(f"/containers/{container_id}/unpause").status == 409
    # a paused container can be stopped: it is thawed to receive the signal
    daemon.post(f"/containers/{container_id}/pause")
    assert daemon.post(f"/containers/{container_id}/stop?t=1").status == 204
    state = daemon.inspect(container_id)["State"]
    assert state["Status"] == "exited" and state["Paused"] is False
    assert daemon.post(f"/containers/{container_id}/pause").status == 409
    # and removed by force while paused
    daemon.post(f"/containers/{container_id}/start")
    assert daemon.post(f"/containers/{container_id}/pause").status == 204
    assert daemon.delete(f"/containers/{container_id}?force=1").status == 204


def test_restart_and_rename(daemon: Daemon) -> None:
    container_id = daemon.create(["sleep", "60"], name="before-rename")
    daemon.post(f"/containers/{container_id}/start")
    first = daemon.inspect(container_id)["State"]
    assert daemon.post(f"/containers/{container_id}/restart?t=0").status == 204
    second = daemon.inspect(container_id)["State"]
    assert second["Running"] and second["Pid"] != first["Pid"]
    assert second["StartedAt"] > first["StartedAt"]
    assert daemon.post(f"/containers/{container_id}/rename?name=after-rename").status == 204
    assert daemon.inspect("after-rename")["Id"] == container_id
    assert daemon.get("/containers/before-rename/json").status == 404
    other = daemon.create(["true"], name="taken-name")
    assert daemon.post(f"/containers/{container_id}/rename?name=taken-name").status == 409
    assert daemon.post(f"/containers/{container_id}/rename?name=bad/name").status == 400
    daemon.delete(f"/containers/{container_id}?force=1")
    daemon.delete(f"/containers/{other}")


def test_top_and_stats(daemon: Daemon, sleeper: str) -> None:
    top = daemon.get(f"/containers/{sleeper}/top").json()
    assert "PID" in top["Titles"] and "CMD" in top["Titles"]
    assert [p[-1] for p in top["Processes"]] == ["sleep 60"]
    top = daemon.get(f"/containers/{sleeper}/top?ps_args=aux").json()
    assert "%CPU" in top["Titles"] and len(top["Processes"]) == 1
    stats = daemon.get(f"/containers/{sleeper}/stats?stream=false").json()
    assert stats["id"] == sleeper and stats["name"].startswith("/")
    assert stats["memory_stats"]["usage"] > 0 and stats["memory_stats"]["limit"] > 0
    assert "stats" in stats["memory_stats"]
    assert stats["cpu_stats"]["cpu_usage"]["total_usage"] > 0
    assert stats["cpu_stats"]["system_cpu_usage"] > stats["precpu_stats"]["system_cpu_usage"] > 0
    assert stats["cpu_stats"]["online_cpus"] >= 1
    assert stats["pids_stats"]["current"] == 1
    one = daemon.get(f"/containers/{sleeper}/stats?stream=false&one-shot=true").json()
    assert one["precpu_stats"]["system_cpu_usage"] == 0
    # a stream: one object a second, until the client goes
    conn = UnixHTTPConnection(daemon.socket, 10)
    try:
        conn.request("GET", f"/containers/{sleeper}/stats")
        response = conn.getresponse()
        assert response.status == 200
        first = json.loads(response.readline())
        second = json.loads(response.readline())
        assert second["precpu_stats"] == first["cpu_stats"]
    finally:
        conn.close()
    stopped = daemon.create(["true"])
    assert daemon.get(f"/containers/{stopped}/top").status == 409
    assert daemon.get(f"/containers/{stopped}/stats?stream=false").json()["memory_stats"] == {}
    daemon.delete(f"/containers/{stopped}")


# ---- restart policies ---------------------------------------------------------------------------


def test_restart_policy_on_failure(daemon: Daemon) -> None:
    bad = {"HostConfig": {"RestartPolicy": {"Name": "sometimes"}}}
    assert daemon.post("/containers/create", {"Image": "busybox", **bad}).status == 400
    policy = {"Name": "on-failure", "MaximumRetryCount": 2}
    container_id = daemon.create(
        ["sh", "-c", "echo run; exit 1"], HostConfig={"RestartPolicy": policy}
    )
    daemon.post(f"/containers/{container_id}/start")
    _wait_for(lambda: daemon.inspect(container_id)["RestartCount"] == 2)
    _wait_for(lambda: daemon.inspect(container_id)["State"]["Status"] == "exited")
    time.sleep(0.5)  # and no third run
    info = daemon.inspect(container_id)
    assert info["RestartCount"] == 2 and info["State"]["ExitCode"] == 1
    assert info["HostConfig"]["RestartPolicy"] == policy
    assert [d for _, d in daemon.logs(container_id)] == [b"run\n"] * 3
    daemon.delete(f"/containers/{container_id}")


def test_restart_policy_always_and_stop(daemon: Daemon) -> None:
    always = {"RestartPolicy": {"Name": "always"}}
    container_id = daemon.create(["sh", "-c", "exit 0"], HostConfig=always)
    daemon.post(f"/containers/{container_id}/start")
    _wait_for(lambda: daemon.inspect(container_id)["RestartCount"] >= 2)
    # stopped by hand: not restarted
    daemon.post(f"/containers/{container_id}/stop?t=0")
    time.sleep(0.3)
    count = daemon.inspect(container_id)["RestartCount"]
    time.sleep(0.5)
    info = daemon.inspect(container_id)
    assert info["RestartCount"] == count and info["State"]["Status"] == "exited"
    daemon.delete(f"/containers/{container_id}?force=1")


def test_restart_policy_across_a_daemon_restart(daemon: Daemon) -> None:
    always = daemon.create(["sleep", "60"], HostConfig={"RestartPolicy": {"Name": "always"}})
    unless = daemon.create(
        ["sleep", "60"], HostConfig={"RestartPolicy": {"Name": "unless-stopped"}}
    )
    for container_id in (always, unless):
        daemon.post(f"/containers/{container_id}/start")
    daemon.post(f"/containers/{unless}/stop?t=0")
    pid = daemon.inspect(always)["State"]["Pid"]
    daemon.stop()
    os.kill(pid, 9)  # it dies while no daemon runs
    time.sleep(0.3)
    daemon.start()
    # the exit may reach the new daemon a moment after it answers
    _wait_for(lambda: daemon.inspect(always)["RestartCount"] == 1)
    _wait_for(lambda: daemon.inspect(always)["State"]["Running"])
    info = daemon.inspect(always)
    assert info["State"]["Pid"] != pid and info["RestartCount"] == 1
    assert daemon.inspect(unless)["State"]["Status"] == "exited"  # stopped by hand
    for container_id in (always, unless):
        assert daemon.delete(f"/containers/{container_id}?force=1").status == 204
