"""``GET /events`` against a private berthd: the real docker CLI, docker-py, the berth
CLI and raw HTTP. Events of volumes are published by the volume service; container
events by the container lifecycle.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import uuid
from typing import Any

import pytest
from tests.compat.berthd import Daemon
from tests.compat.test_docker_cli import DOCKER, docker
from tests.helpers import VENV_BIN

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root and the real kernel"),
    pytest.mark.skipif(not os.path.exists(DOCKER), reason="the docker CLI is not installed"),
]


def _now() -> str:
    return f"{time.time():.9f}"


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _events(daemon: Daemon, query: str) -> list[dict[str, Any]]:
    response = daemon.get(f"/events?{query}", timeout=10)
    assert response.status == 200, response
    assert response.headers["content-type"].startswith("application/json")
    return [json.loads(line) for line in response.body.decode().splitlines() if line]


def test_docker_events_since_until_shows_volume_events(daemon: Daemon) -> None:
    name = f"ev-{uuid.uuid4().hex[:8]}"
    since = _now()
    assert docker(daemon, "volume", "create", name).returncode == 0
    assert docker(daemon, "volume", "rm", name).returncode == 0
    until = _now()
    result = docker(daemon, "events", "--since", since, "--until", until, timeout=20)
    assert result.returncode == 0, result.stderr
    lines = _lines(result.stdout)
    assert len(lines) == 2, result.stdout
    assert lines[0].endswith(f" volume create {name} (driver=local)")
    assert lines[1].endswith(f" volume destroy {name} (driver=local)")
    # docker's own time format: 2024-05-01T10:00:00.123456789+02:00
    stamp = lines[0].split(" ", 1)[0]
    assert len(stamp.split("T")[1].split(".")[1]) >= 10


def test_docker_events_filters_and_format(daemon: Daemon) -> None:
    a, b = f"fa-{uuid.uuid4().hex[:8]}", f"fb-{uuid.uuid4().hex[:8]}"
    since = _now()
    for name in (a, b):
        docker(daemon, "volume", "create", name)
        docker(daemon, "volume", "rm", name)
    until = _now()
    window = ["--since", since, "--until", until]
    only_a = docker(daemon, "events", *window, "--filter", f"volume={a}", "--format", "{{.Action}}")
    assert _lines(only_a.stdout) == ["create", "destroy"], only_a.stderr
    destroys = docker(
        daemon, "events", *window, "-f", "event=destroy", "-f", "type=volume", "--format", "json"
    )
    names = [json.loads(line)["Actor"]["ID"] for line in _lines(destroys.stdout)]
    assert names == [a, b]
    nothing = docker(daemon, "events", *window, "--filter", "type=image")
    assert nothing.returncode == 0 and nothing.stdout == ""
    bad = docker(daemon, "events", *window, "--filter", "colour=red")
    assert bad.returncode != 0
    assert "invalid filter 'colour'" in bad.stderr


def test_docker_events_shows_a_container_lifecycle(daemon: Daemon) -> None:
    """create, start, die, destroy of ``docker run --rm`` (published by the container
    service)."""
    name = f"life-{uuid.uuid4().hex[:8]}"
    since = _now()
    run = docker(daemon, "run", "--rm", "--name", name, "busybox", "true")
    assert run.returncode == 0, run.stderr
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # destroy follows the exit by a moment
        result = docker(
            daemon,
            "events",
            "--since",
            since,
            "--until",
            _now(),
            "--filter",
            f"container={name}",
            "--format",
            "{{.Type}} {{.Action}} {{.Actor.Attributes.name}}",
        )
        if "destroy" in result.stdout:
            break
        time.sleep(0.1)
    actions = [line.split()[1] for line in _lines(result.stdout) if line.startswith("container ")]
    for wanted in ("create", "start", "die", "destroy"):
        assert wanted in actions, result.stdout
    assert actions.index("create") < actions.index("start") < actions.index("die")
    assert actions.index("die") < actions.index("destroy")
    assert all(line.split()[2] == name for line in _lines(result.stdout))


def test_live_events_are_flushed_one_by_one(daemon: Daemon) -> None:
    """Each event reaches a live subscriber as it happens, not when the stream ends."""
    name = f"live-{uuid.uuid4().hex[:8]}"
    watcher = subprocess.Popen(
        [DOCKER, "-H", daemon.host, "events", "--filter", f"volume={name}"],
        stdout=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")},
    )
    try:
        assert watcher.stdout is not None
        deadline = time.monotonic() + 5
        while daemon.get("/info").json()["NEventsListener"] < 1:
            assert time.monotonic() < deadline, "the subscriber never arrived"
            time.sleep(0.02)
        docker(daemon, "volume", "create", name)
        line = watcher.stdout.readline()
        assert f"volume create {name}" in line
        docker(daemon, "volume", "rm", name)
        assert f"volume destroy {name}" in watcher.stdout.readline()
    finally:
        watcher.terminate()
        watcher.wait(10)
    # the daemon lets go of a subscriber whose client went away
    deadline = time.monotonic() + 5
    while daemon.get("/info").json()["NEventsListener"] != 0:
        assert time.monotonic() < deadline, "the subscriber was kept after its client left"
        time.sleep(0.1)


def test_until_in_the_future_ends_the_stream_then(daemon: Daemon) -> None:
    started = time.monotonic()
    events = _events(daemon, f"until={time.time() + 1:.3f}")
    assert events == []
    assert 0.8 < time.monotonic() - started < 3


def test_raw_api_timestamps_and_errors(daemon: Daemon) -> None:
    name = f"raw-{uuid.uuid4().hex[:8]}"
    since = _now()
    daemon.post("/volumes/create", {"Name": name})
    daemon.delete(f"/volumes/{name}")
    events = _events(daemon, f"since={since}&until={_now()}")
    mine = [e for e in events if (e["Actor"] or {}).get("ID") == name]
    assert [e["Action"] for e in mine] == ["create", "destroy"]
    for event in mine:
        assert event["Type"] == "volume" and event["scope"] == "local"
        assert event["time"] == int(event["timeNano"]) // 1_000_000_000
    # whole seconds work too; a window in the past before these events holds none of them
    early = _events(daemon, f"since={int(float(since)) - 100}&until={int(float(since)) - 50}")
    assert not [e for e in early if (e["Actor"] or {}).get("ID") == name]
    assert daemon.get("/events?since=yesterday").status == 400
    assert daemon.get("/events?until=1&since=2").status == 400
    assert daemon.get('/events?until=1&filters={"type":["bogus"]}').status == 400


def test_docker_py_events_decode_and_until(daemon: Daemon) -> None:
    docker_py = pytest.importorskip("docker")
    client = docker_py.DockerClient(base_url=daemon.host)
    name = f"py-{uuid.uuid4().hex[:8]}"
    since = time.time()
    client.volumes.create(name)
    client.volumes.get(name).remove()
    got = list(
        client.events(since=since, until=time.time() + 0.5, decode=True, filters={"volume": name})
    )
    assert [e["Action"] for e in got] == ["create", "destroy"]
    client.close()


def test_berth_events_durations(daemon: Daemon) -> None:
    name = f"bd-{uuid.uuid4().hex[:8]}"
    daemon.post("/volumes/create", {"Name": name})
    daemon.delete(f"/volumes/{name}")
    env = {**os.environ, "BERTH_HOST": daemon.host}
    result = subprocess.run(
        [
            str(VENV_BIN / "berth"),
            "events",
            "--since",
            "1m",
            "--until",
            "0s",
            "--filter",
            f"volume={name}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=20,
    )
    assert result.returncode == 0, result.stderr
    lines = _lines(result.stdout)
    assert [line.split(" ", 3)[1:3] for line in lines] == [
        ["volume", "create"],
        ["volume", "destroy"],
    ]
    bad = subprocess.run(
        [str(VENV_BIN / "berth"), "system", "events", "--since", "soon"],
        capture_output=True,
        text=True,
        env=env,
        timeout=20,
    )
    assert bad.returncode == 125
    assert bad.stderr.startswith("berth: invalid time 'soon'")
    assert len(bad.stderr.splitlines()) == 1


def test_event_stream_survives_a_client_that_never_reads(daemon: Daemon) -> None:
    """A subscriber that disconnects without reading does not break others."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(daemon.socket)
    sock.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.2)
    sock.close()
    name = f"after-{uuid.uuid4().hex[:8]}"
    since = _now()
    daemon.post("/volumes/create", {"Name": name})
    daemon.delete(f"/volumes/{name}")
    assert [e["Action"] for e in _events(daemon, f"since={since}&until={_now()}")][-2:] == [
        "create",
        "destroy",
    ]
