"""Exec and attach against a private berthd: detach keys, TTY framing, exec events,
``attach?logs=1``, the websocket attach; with raw sockets, the real docker CLI (on a
pty for ``docker attach``) and aiohttp's websocket client."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import select
import shutil
import socket
import subprocess
import time
import urllib.parse
from typing import Any

import pytest
from tests.compat.berthd import Daemon, demux
from tests.helpers import CREATED_IDS

DOCKER = shutil.which("docker") or "/usr/local/bin/docker"
CTRL_P, CTRL_Q = b"\x10", b"\x11"

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root and the real kernel"),
]


# ---- helpers -------------------------------------------------------------------------------


class Hijack:
    """An upgraded connection kept open (the Daemon's ``hijack`` half-closes at once)."""

    def __init__(self, daemon: Daemon, path: str, body: Any = None) -> None:
        data = json.dumps(body if body is not None else {}).encode()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(daemon.socket)
        self.sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\n"
            f"Upgrade: tcp\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = self.sock.recv(65536)
            assert chunk, "the daemon closed before answering"
            received += chunk
        head, _, self.buffer = received.partition(b"\r\n\r\n")
        self.status = int(head.split(b" ", 2)[1])

    def read_until(self, needle: bytes, timeout: float = 10) -> bytes:
        deadline = time.monotonic() + timeout
        while needle not in self.buffer and time.monotonic() < deadline:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self.buffer += chunk
        return self.buffer

    def read_to_end(self, timeout: float = 10) -> bytes:
        self.sock.settimeout(timeout)
        while chunk := self.sock.recv(65536):
            self.buffer += chunk
        return self.buffer

    def close(self) -> None:
        self.sock.close()


def _exec(daemon: Daemon, container_id: str, **body: Any) -> str:
    response = daemon.post(f"/containers/{container_id}/exec", body)
    assert response.status == 201, response
    exec_id: str = response.json()["Id"]
    return exec_id


def _running(daemon: Daemon, container_id: str) -> bool:
    return bool(daemon.inspect(container_id)["State"]["Running"])


def _remove(daemon: Daemon, container_id: str) -> None:
    daemon.delete(f"/containers/{container_id}?force=1")


@pytest.fixture
def cat(daemon: Daemon) -> Any:
    """A running ``cat`` with stdin open (the container docker-py's tests use)."""
    container_id = daemon.create(["cat"], OpenStdin=True)
    assert daemon.post(f"/containers/{container_id}/start").status == 204
    yield container_id
    _remove(daemon, container_id)


def _attach_routed(daemon: Daemon, container_id: str) -> bool:
    """Whether POST /containers/{id}/attach is the handler of api/hijack.py (it refuses
    bad detach keys with 400; the older one ignored them)."""
    probe = daemon.post(f"/containers/{container_id}/attach?stream=0&detachKeys=ctrl-%3F%3F")
    return probe.status == 400


# ---- exec -------------------------------------------------------------------------------------


def test_exec_detach_with_default_keys(daemon: Daemon, cat: str) -> None:
    exec_id = _exec(daemon, cat, Cmd=["cat"], AttachStdin=True, AttachStdout=True, Tty=True)
    stream = Hijack(daemon, f"/exec/{exec_id}/start", {"Tty": True})
    try:
        assert stream.status == 101
        stream.sock.sendall(b"hello\n")
        assert b"hello" in stream.read_until(b"hello\r\n")
        stream.sock.sendall(CTRL_P)
        time.sleep(0.2)
        stream.sock.sendall(CTRL_Q)
        stream.read_to_end()  # the daemon closes the connection
    finally:
        stream.close()
    info = daemon.get(f"/exec/{exec_id}/json").json()
    assert info["Running"] is True  # detached, not ended
    assert _running(daemon, cat)


def test_exec_detach_keys_from_body_any_case(daemon: Daemon, cat: str) -> None:
    # docker-py sends "detachKeys"; Go's JSON decoding ignores case.
    exec_id = _exec(
        daemon, cat, Cmd=["cat"], AttachStdin=True, AttachStdout=True, detachKeys="ctrl-x,y"
    )
    stream = Hijack(daemon, f"/exec/{exec_id}/start", {})
    try:
        # a partial sequence is passed on once it is clear it is not the sequence
        stream.sock.sendall(b"a\x18b\n")
        out = stream.read_until(b"b\n")
        assert b"a\x18b\n" in b"".join(data for _, data in demux(out))
        stream.sock.sendall(b"\x18y")
        stream.read_to_end()
    finally:
        stream.close()
    assert daemon.get(f"/exec/{exec_id}/json").json()["DetachKeys"] == "ctrl-x,y"


def test_exec_bad_detach_keys_are_refused(daemon: Daemon, cat: str) -> None:
    response = daemon.post(f"/containers/{cat}/exec", {"Cmd": ["true"], "DetachKeys": "ctrl-1"})
    assert response.status == 400
    assert "Invalid detach keys" in response.json()["message"]


def test_exec_tty_stream_framed_per_start(daemon: Daemon, cat: str) -> None:
    """The process has a terminal when created with one; the start's Tty says how the
    stream is framed (docker-py starts such an exec with Tty false)."""
    cmd = ["sh", "-c", "echo out; echo err >&2"]
    exec_id = _exec(daemon, cat, Cmd=cmd, AttachStdout=True, AttachStderr=True, Tty=True)
    status, raw = daemon.hijack(f"/exec/{exec_id}/start", {"Tty": False})
    assert status == 101
    frames = demux(raw)
    assert {stream for stream, _ in frames} == {1}
    assert b"".join(data for _, data in frames) == b"out\r\nerr\r\n"
    exec_id = _exec(daemon, cat, Cmd=cmd, AttachStdout=True, AttachStderr=True, Tty=True)
    status, raw = daemon.hijack(f"/exec/{exec_id}/start", {"Tty": True})
    assert raw == b"out\r\nerr\r\n"
    exec_id = _exec(daemon, cat, Cmd=cmd, AttachStdout=True, AttachStderr=True)
    status, raw = daemon.hijack(f"/exec/{exec_id}/start", {"Tty": True})
    assert sorted(raw.splitlines()) == [b"err", b"out"]  # unframed


def test_exec_events(daemon: Daemon, cat: str) -> None:
    since = time.time()
    exec_id = _exec(daemon, cat, Cmd=["sh", "-c", "exit 3"], AttachStdout=True)
    daemon.hijack(f"/exec/{exec_id}/start", {})
    until = time.time() + 0.5
    time.sleep(0.6)
    filters = urllib.parse.quote(json.dumps({"container": [cat]}))
    response = daemon.get(f"/events?since={since:.3f}&until={until:.3f}&filters={filters}")
    if response.status == 404:
        pytest.skip("no /events route in this daemon")
    events = [json.loads(line) for line in response.body.splitlines() if line.strip()]
    actions = [e["Action"] for e in events if e["Actor"]["Attributes"].get("execID") == exec_id]
    assert actions == ["exec_create: sh -c exit 3", "exec_start: sh -c exit 3", "exec_die"]
    die = next(e for e in events if e["Action"] == "exec_die")
    assert die["Actor"]["Attributes"]["exitCode"] == "3"


# ---- container attach ---------------------------------------------------------------------------


def test_attach_detach_keeps_the_container(daemon: Daemon) -> None:
    container_id = daemon.create(["cat"], OpenStdin=True, Tty=True, StdinOnce=True)
    try:
        assert daemon.post(f"/containers/{container_id}/start").status == 204
        if not _attach_routed(daemon, container_id):
            pytest.skip("POST /containers/{id}/attach is not routed to api.hijack.attach")
        for query, keys in (("", CTRL_P + CTRL_Q), ("&detachKeys=ctrl-x", b"\x18")):
            stream = Hijack(
                daemon,
                f"/containers/{container_id}/attach?stream=1&stdin=1&stdout=1{query}",
            )
            try:
                stream.sock.sendall(b"ping\n")
                assert b"ping" in stream.read_until(b"ping\r\n")
                stream.sock.sendall(keys)
                stream.read_to_end()
            finally:
                stream.close()
            time.sleep(0.3)
            # StdinOnce: a detach is not the end of stdin, cat goes on
            assert _running(daemon, container_id)
    finally:
        _remove(daemon, container_id)


def test_attach_logs_without_stream(daemon: Daemon) -> None:
    container_id, _code = daemon.run(["sh", "-c", "echo hello; echo oops >&2"])
    try:
        if not _attach_routed(daemon, container_id):
            pytest.skip("POST /containers/{id}/attach is not routed to api.hijack.attach")
        status, raw = daemon.hijack(
            f"/containers/{container_id}/attach?logs=1&stream=0&stdout=1&stderr=1"
        )
        assert status == 101
        assert sorted(demux(raw)) == [(1, b"hello\n"), (2, b"oops\n")]
        status, raw = daemon.hijack(f"/containers/{container_id}/attach?logs=1&stdout=1")
        assert demux(raw) == [(1, b"hello\n")]
    finally:
        _remove(daemon, container_id)


def test_attach_websocket(daemon: Daemon) -> None:
    import aiohttp

    container_id = daemon.create(
        ["sh", "-c", "read line; echo got $line; sleep 0.2"], OpenStdin=True
    )

    async def session() -> bytes:
        connector = aiohttp.UnixConnector(path=daemon.socket)
        async with aiohttp.ClientSession(connector=connector) as client:
            url = (
                f"http://docker/containers/{container_id}/attach/ws"
                "?stream=1&stdin=1&stdout=1&stderr=1"
            )
            async with client.ws_connect(url) as ws:
                started = daemon.post(f"/containers/{container_id}/start")
                assert started.status == 204
                await ws.send_bytes(b"hi\n")
                received = b""
                async for message in ws:
                    assert message.type == aiohttp.WSMsgType.BINARY
                    received += message.data
                return received

    try:
        assert asyncio.run(asyncio.wait_for(session(), 20)) == b"got hi\n"
    finally:
        _remove(daemon, container_id)


# ---- the real docker CLI -------------------------------------------------------------------------


def _docker(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env["DOCKER_CONFIG"] = os.path.join(daemon.base, "docker-config")
    return subprocess.run(
        [DOCKER, "-H", daemon.host, *args], capture_output=True, text=True, timeout=60, env=env
    )


needs_docker = pytest.mark.skipif(not os.path.exists(DOCKER), reason="no docker CLI")


@needs_docker
def test_docker_exec_user_and_workdir(daemon: Daemon, cat: str) -> None:
    result = _docker(daemon, "exec", "-u", "nobody", cat, "id", "-u")
    assert (result.returncode, result.stdout) == (0, "65534\n"), result.stderr
    result = _docker(daemon, "exec", "-u", "1234:5678", cat, "id")
    assert result.stdout.startswith("uid=1234 gid=5678"), result
    result = _docker(daemon, "exec", "-w", "/etc", cat, "pwd")
    assert (result.returncode, result.stdout) == (0, "/etc\n"), result.stderr
    result = _docker(daemon, "exec", "-u", "nosuchuser", cat, "true")
    assert result.returncode == 126, result
    assert "unable to find user nosuchuser" in result.stdout + result.stderr


@needs_docker
def test_docker_attach_detach_on_a_pty(daemon: Daemon) -> None:
    """``docker attach`` then ctrl-p ctrl-q: the CLI says it detached and exits 0, the
    shell inside keeps running."""
    run = _docker(daemon, "run", "-dit", "busybox", "sh")
    assert run.returncode == 0, run.stderr
    container_id = run.stdout.strip()
    CREATED_IDS.add(container_id)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env["DOCKER_CONFIG"] = os.path.join(daemon.base, "docker-config")
    master, slave = pty.openpty()
    try:
        process = subprocess.Popen(
            [DOCKER, "-H", daemon.host, "attach", container_id],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            start_new_session=True,
        )
        os.close(slave)
        slave = -1
        output = b""

        def read_for(seconds: float, until: bytes = b"") -> None:
            nonlocal output
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline and (not until or until not in output):
                ready, _, _ = select.select([master], [], [], 0.1)
                if ready:
                    try:
                        chunk = os.read(master, 65536)
                    except OSError:
                        return
                    if not chunk:
                        return
                    output += chunk

        time.sleep(0.5)
        os.write(master, b"echo marker$((40+2))\r")
        read_for(10, b"marker42")
        assert b"marker42" in output, output
        os.write(master, CTRL_P)
        time.sleep(0.2)
        os.write(master, CTRL_Q)
        read_for(10)
        # the CLI reports the detach as an error (exit 1), as it does with dockerd
        assert process.wait(10) in (0, 1), output
        assert b"read escape sequence" in output, output
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
        time.sleep(0.3)
        running = _running(daemon, container_id)
        _remove(daemon, container_id)
    assert running


def test_exec_output_reaches_docker_py_every_time(daemon: Daemon, cat: str) -> None:
    """docker-py reads an exec's stream from the socket past its buffered HTTP reader:
    output sent in the same read as the 101 would be lost. The answer goes out before
    the process starts (dockerd's order), so none is, with or without a TTY."""
    docker_py = pytest.importorskip("docker")
    client = docker_py.APIClient(base_url=daemon.host, version="1.45")
    try:
        lost = []
        for i in range(60):
            tty = i % 2 == 1
            exec_id = client.exec_create(cat, ["echo", "hello", str(i)], tty=tty)["Id"]
            out = client.exec_start(exec_id)
            if out != f"hello {i}{chr(13) if tty else ''}\n".encode():
                lost.append((i, out))
        assert lost == []
    finally:
        client.close()
