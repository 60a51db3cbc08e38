"""Bad input to berthd: each gets Docker's status and one clear ``{"message"}``, nothing
is half made, and the daemon keeps serving — also after clients that hang up in the
middle of a stream."""

from __future__ import annotations

import json
import os
import socket
import time

import pytest
from tests.compat.berthd import Daemon, UnixHTTPConnection

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root and the real kernel")


def _message(response: object) -> str:
    body = response.json()  # type: ignore[attr-defined]
    assert set(body) == {"message"} and "\n" not in body["message"]
    return str(body["message"])


def _raw(daemon: Daemon, method: str, path: str, body: bytes) -> tuple[int, str]:
    conn = UnixHTTPConnection(daemon.socket, 30)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())["message"]
    finally:
        conn.close()


def _names(daemon: Daemon) -> set[str]:
    return {c["Names"][0] for c in daemon.get("/containers/json?all=1").json()}


def test_malformed_bodies_and_queries(daemon: Daemon) -> None:
    before = _names(daemon)
    status, message = _raw(daemon, "POST", "/containers/create", b'{"Image": "busybox",')
    assert status == 400 and "invalid JSON" in message
    status, message = _raw(daemon, "POST", "/containers/create", b'["busybox"]')
    assert status == 400 and "JSON object" in message
    bad = daemon.get('/containers/json?filters={"label":')
    assert bad.status == 400 and "invalid filters" in _message(bad)
    assert _names(daemon) == before
    assert daemon.get("/_ping").status == 200


def test_unknown_fields_are_ignored_as_dockerd_does(daemon: Daemon) -> None:
    created = daemon.post(
        "/containers/create?name=extra-fields",
        {"Image": "busybox", "Cmd": ["true"], "NoSuchField": 1, "HostConfig": {"Bogus": True}},
    )
    assert created.status == 201, created
    assert daemon.delete("/containers/extra-fields").status == 204


def test_names_images_and_conflicts(daemon: Daemon) -> None:
    bad_name = daemon.post("/containers/create?name=no/slashes", {"Image": "busybox"})
    assert bad_name.status == 400 and "Invalid container name" in _message(bad_name)
    missing = daemon.post("/containers/create", {"Image": "no-such-image:1"})
    assert missing.status == 404 and "No such image" in _message(missing)
    first = daemon.post(
        "/containers/create?name=taken", {"Image": "busybox", "Cmd": ["sleep", "30"]}
    )
    assert first.status == 201
    again = daemon.post("/containers/create?name=taken", {"Image": "busybox"})
    assert again.status == 409 and "already in use" in _message(again)
    assert daemon.post("/containers/taken/start").status == 204
    running = daemon.delete("/containers/taken")
    assert running.status == 409 and "stop the container" in _message(running).lower()
    assert daemon.inspect("taken")["State"]["Running"]
    assert daemon.delete("/containers/taken?force=1").status == 204
    assert daemon.get("/containers/nope/json").status == 404


def _hang_up_during(daemon: Daemon, path: str, method: str = "GET") -> None:
    """Open a streaming request, read its first bytes, and drop the connection."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(daemon.socket)
    sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: docker\r\nContent-Length: 0\r\n\r\n".encode())
    assert sock.recv(1024).startswith(b"HTTP/1.1 200")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()  # an abortive close (RST), as a killed client leaves it


def test_clients_that_hang_up_mid_stream(daemon: Daemon) -> None:
    chatty = daemon.create(["sh", "-c", "while true; do echo tick; sleep 0.05; done"])
    assert daemon.post(f"/containers/{chatty}/start").status == 204
    for _ in range(3):
        _hang_up_during(daemon, f"/containers/{chatty}/logs?stdout=1&follow=1")
        _hang_up_during(daemon, f"/containers/{chatty}/stats?stream=1")
        _hang_up_during(daemon, "/events")
    # the daemon drops those subscribers and keeps serving everyone else
    deadline = time.monotonic() + 10
    while daemon.get("/info").json()["NEventsListener"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert daemon.get("/info").json()["NEventsListener"] == 0
    logs = daemon.get(f"/containers/{chatty}/logs?stdout=1&tail=2")
    assert logs.status == 200 and b"tick" in logs.body
    assert daemon.inspect(chatty)["State"]["Running"]
    assert daemon.delete(f"/containers/{chatty}?force=1").status == 204
