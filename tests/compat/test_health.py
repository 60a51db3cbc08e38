"""Health checks against a private berthd: probes as execs, State.Health, events,
``docker ps`` and its ``health`` filter, start periods, timeouts, stop/start and a
daemon restart; with the API and the real docker CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import pytest
from tests.compat.berthd import Daemon
from tests.helpers import CREATED_IDS

DOCKER = shutil.which("docker") or "/usr/local/bin/docker"
MS = 1_000_000
SECOND = 1000 * MS

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root and the real kernel"),
]


def _wait_for(check: Callable[[], Any], timeout: float = 15) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not reached in {timeout}s")


def _health(daemon: Daemon, container_id: str) -> dict[str, Any] | None:
    health: dict[str, Any] | None = daemon.inspect(container_id)["State"].get("Health")
    return health


def _status(daemon: Daemon, container_id: str) -> str:
    health = _health(daemon, container_id)
    return str(health["Status"]) if health else ""


def _start(daemon: Daemon, cmd: list[str], check: dict[str, Any] | None, **config: Any) -> str:
    if check is not None:
        config["Healthcheck"] = check
    container_id = daemon.create(cmd, **config)
    assert daemon.post(f"/containers/{container_id}/start").status == 204
    return container_id


def _remove(daemon: Daemon, container_id: str) -> None:
    daemon.delete(f"/containers/{container_id}?force=1")


def test_healthy_then_shown_by_ps_and_filter(daemon: Daemon) -> None:
    since = time.time()
    check = {"Test": ["CMD-SHELL", "echo ok; echo err >&2"], "Interval": 300 * MS}
    container_id = _start(daemon, ["sleep", "60"], check)
    try:
        assert _status(daemon, container_id) == "starting"
        _wait_for(lambda: _status(daemon, container_id) == "healthy")
        health = _health(daemon, container_id)
        assert health is not None
        assert health["FailingStreak"] == 0
        entry = health["Log"][-1]
        assert entry["ExitCode"] == 0
        assert entry["Output"] == "ok\nerr\n"
        assert entry["Start"] <= entry["End"]
        listed = daemon.get("/containers/json").json()
        mine = next(c for c in listed if c["Id"] == container_id)
        assert mine["Status"].endswith(" (healthy)")
        for value, expected in (("healthy", True), ("unhealthy", False), ("none", False)):
            filters = urllib.parse.quote(json.dumps({"health": [value]}))
            ids = [c["Id"] for c in daemon.get(f"/containers/json?filters={filters}").json()]
            assert (container_id in ids) is expected, value
        bad = urllib.parse.quote(json.dumps({"health": ["weird"]}))
        assert daemon.get(f"/containers/json?filters={bad}").status == 400
        # the log keeps the last five probes
        _wait_for(lambda: len((_health(daemon, container_id) or {})["Log"]) == 5, timeout=10)
        time.sleep(0.7)
        assert len((_health(daemon, container_id) or {})["Log"]) == 5
        response = daemon.get(
            f"/events?since={since:.3f}&until={time.time():.3f}"
            f"&filters={urllib.parse.quote(json.dumps({'container': [container_id]}))}"
        )
        if response.status == 200:
            actions = [json.loads(line)["Action"] for line in response.body.splitlines()]
            assert actions.count("health_status: healthy") == 1
            assert any(a.startswith("exec_start: /bin/sh -c echo ok") for a in actions)
        # probe execs are not kept
        assert daemon.inspect(container_id)["ExecIDs"] is None
    finally:
        _remove(daemon, container_id)


def test_unhealthy_after_retries(daemon: Daemon) -> None:
    check = {"Test": ["CMD", "sh", "-c", "echo bad; exit 1"], "Interval": 200 * MS, "Retries": 2}
    container_id = _start(daemon, ["sleep", "60"], check)
    try:
        _wait_for(lambda: _status(daemon, container_id) == "unhealthy")
        health = _health(daemon, container_id)
        assert health is not None
        assert health["FailingStreak"] >= 2
        assert health["Log"][-1]["ExitCode"] == 1
        assert health["Log"][-1]["Output"] == "bad\n"
        listed = daemon.get("/containers/json").json()
        assert next(c for c in listed if c["Id"] == container_id)["Status"].endswith(" (unhealthy)")
    finally:
        _remove(daemon, container_id)


def test_timeout_and_start_period(daemon: Daemon) -> None:
    check = {
        "Test": ["CMD", "sleep", "5"],
        "Interval": 200 * MS,
        "Timeout": 300 * MS,
        "Retries": 1,
        "StartPeriod": 2 * SECOND,
        "StartInterval": 100 * MS,
    }
    container_id = _start(daemon, ["sleep", "60"], check)
    try:
        # failures inside the start period do not count
        _wait_for(lambda: (_health(daemon, container_id) or {}).get("Log"))
        assert _status(daemon, container_id) == "starting"
        entry = (_health(daemon, container_id) or {})["Log"][0]
        assert entry["ExitCode"] == -1
        assert entry["Output"] == "Health check exceeded timeout (300ms)"
        _wait_for(lambda: _status(daemon, container_id) == "unhealthy", timeout=10)
        # the timed-out probes were killed
        top = daemon.get(f"/containers/{container_id}/top").json()
        assert not [p for p in top["Processes"] if "sleep 5" in " ".join(p)]
    finally:
        _remove(daemon, container_id)


def test_none_and_image_less_check(daemon: Daemon) -> None:
    container_id = _start(daemon, ["sleep", "60"], {"Test": ["NONE"]})
    try:
        time.sleep(0.3)
        assert _health(daemon, container_id) is None
    finally:
        _remove(daemon, container_id)
    container_id = _start(daemon, ["sleep", "60"], None)
    try:
        assert _health(daemon, container_id) is None
        listed = daemon.get("/containers/json").json()
        assert not next(c for c in listed if c["Id"] == container_id)["Status"].endswith(")")
    finally:
        _remove(daemon, container_id)


def test_bad_healthcheck_is_refused(daemon: Daemon) -> None:
    body = {"Image": "busybox", "Cmd": ["true"], "Healthcheck": {"Test": ["CMD", "true"]}}
    body["Healthcheck"]["Interval"] = 10  # 10 ns
    response = daemon.post("/containers/create", body)
    assert response.status == 400
    assert "Interval in Healthcheck cannot be less than 1ms" in response.json()["message"]


def test_stop_start_and_daemon_restart(daemon: Daemon) -> None:
    check = {"Test": ["CMD", "true"], "Interval": 200 * MS}
    container_id = _start(daemon, ["sleep", "60"], check)
    try:
        _wait_for(lambda: _status(daemon, container_id) == "healthy")
        assert daemon.post(f"/containers/{container_id}/stop?t=0").status == 204
        ends = [e["End"] for e in (_health(daemon, container_id) or {})["Log"]]
        time.sleep(0.6)
        assert [e["End"] for e in (_health(daemon, container_id) or {})["Log"]] == ends
        assert daemon.post(f"/containers/{container_id}/start").status == 204
        assert _status(daemon, container_id) == "starting"
        _wait_for(lambda: _status(daemon, container_id) == "healthy")
        daemon.stop()
        daemon.start()
        last = (_health(daemon, container_id) or {})["Log"][-1]["End"]
        assert _status(daemon, container_id) == "healthy"  # kept across the restart
        _wait_for(lambda: (_health(daemon, container_id) or {})["Log"][-1]["End"] > last)
    finally:
        _remove(daemon, container_id)


@pytest.mark.skipif(not os.path.exists(DOCKER), reason="no docker CLI")
def test_docker_cli_health_flags(daemon: Daemon) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env["DOCKER_CONFIG"] = os.path.join(daemon.base, "docker-config")

    def docker(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [DOCKER, "-H", daemon.host, *args], capture_output=True, text=True, env=env, timeout=60
        )

    run = docker(
        "run", "-d", "--health-cmd", "test -e /etc/passwd", "--health-interval", "300ms",
        "--health-retries", "2", "busybox", "sleep", "60",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    container_id = run.stdout.strip()
    CREATED_IDS.add(container_id)
    try:

        def status() -> str:
            result = docker("inspect", "--format", "{{.State.Health.Status}}", container_id)
            return result.stdout.strip()

        _wait_for(lambda: status() == "healthy")
        ps = docker("ps", "--filter", "health=healthy", "--format", "{{.ID}} {{.Status}}")
        assert f"{container_id[:12]} Up" in ps.stdout
        assert "(healthy)" in ps.stdout
        log = docker("inspect", "--format", "{{json .State.Health.Log}}", container_id)
        assert json.loads(log.stdout)[-1]["ExitCode"] == 0
        config = docker("inspect", "--format", "{{json .Config.Healthcheck}}", container_id)
        assert json.loads(config.stdout)["Test"] == ["CMD-SHELL", "test -e /etc/passwd"]
    finally:
        docker("rm", "-f", container_id)
