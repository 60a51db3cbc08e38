"""A private berthd for tests: its own socket, --root and --exec-root, and a tiny
HTTP client over the unix socket. Shared by tests/integration/test_daemon*.py and
tests/compat/.

Teardown removes every container through the API, stops the daemon and then the
monitor by PID, and checks that no mount is left under the exec root.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import tempfile
import time
from typing import Any

from tests.helpers import CREATED_IDS, VENV_BIN, tar_of

BERTHD = str(VENV_BIN / "berthd")


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 60) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"Response({self.status}, {self.body[:300]!r})"


def demux(data: bytes) -> list[tuple[int, bytes]]:
    """Docker's multiplexed stream -> [(stream, data)]."""
    frames = []
    while data:
        stream, size = struct.unpack(">BxxxL", data[:8])
        frames.append((stream, data[8 : 8 + size]))
        data = data[8 + size :]
    return frames


class Daemon:
    def __init__(self, runtime: str = "") -> None:
        self.runtime = runtime  # berthd's --default-runtime ("": berth-runtime)
        self.base = tempfile.mkdtemp(prefix="berth-test-daemon-", dir="/tmp")
        os.chmod(self.base, 0o711)
        self.socket = os.path.join(self.base, "berth.sock")
        self.root = os.path.join(self.base, "root")
        self.exec_root = os.path.join(self.base, "run")
        self.host = f"unix://{self.socket}"
        self.log_path = os.path.join(self.base, "berthd.log")
        self.process: subprocess.Popen[bytes] | None = None

    # ---- process ------------------------------------------------------------------------

    def start(self, env: dict[str, str] | None = None) -> None:
        """Start berthd; ``env`` adds variables (e.g. BERTH_CRASH_AT) to its environment."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    BERTHD,
                    "--host",
                    self.host,
                    "--root",
                    self.root,
                    "--exec-root",
                    self.exec_root,
                    *(["--default-runtime", self.runtime] if self.runtime else []),
                ],
                stdout=log,
                stderr=log,
                env={**os.environ, **(env or {})},
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"berthd exited: {self.log()}")
            try:
                if self.get("/_ping").status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"berthd did not answer: {self.log()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def monitor_pid(self) -> int:
        try:
            with open(os.path.join(self.exec_root, "monitor.pid")) as f:
                return int(f.read())
        except (OSError, ValueError):
            return 0

    def log(self) -> str:
        try:
            with open(self.log_path) as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def mounts(self) -> list[str]:
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4] for line in f]
        return [p for p in points if p.startswith(self.base)]

    def cleanup(self) -> None:
        """Every container removed, daemon and monitor stopped (by PID), nothing mounted."""
        try:
            if self.process is not None and self.process.poll() is None:
                for c in self.get("/containers/json?all=1").json():
                    self.delete(f"/containers/{c['Id']}?force=1")
        finally:
            self.stop()
            pid = self.monitor_pid()
            if pid:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                for _ in range(500):  # gone, or a zombie left for init to reap
                    try:
                        with open(f"/proc/{pid}/stat", "rb") as f:
                            if f.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X"):
                                break
                    except OSError:
                        break
                    time.sleep(0.01)
            for point in reversed(self.mounts()):
                subprocess.run(["umount", "-l", point], check=False)
            shutil.rmtree(self.base, ignore_errors=True)

    # ---- HTTP ----------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        timeout: float = 60,
        headers: dict[str, str] | None = None,
    ) -> Response:
        conn = UnixHTTPConnection(self.socket, timeout)
        try:
            data = json.dumps(body).encode() if body is not None else None
            all_headers = {"Content-Type": "application/json"} if data is not None else {}
            all_headers.update(headers or {})
            conn.request(method, path, body=data, headers=all_headers)
            response = conn.getresponse()
            return Response(
                response.status,
                {k.lower(): v for k, v in response.getheaders()},
                response.read(),
            )
        finally:
            conn.close()

    def get(self, path: str, **kwargs: Any) -> Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> Response:
        return self.request("POST", path, body, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Response:
        return self.request("DELETE", path, **kwargs)

    def hijack(
        self, path: str, body: Any = None, stdin: bytes = b"", timeout: float = 30
    ) -> tuple[int, bytes]:
        """POST with ``Upgrade: tcp`` as the docker CLI does (attach, exec start): send
        ``stdin`` and half-close, read to the end; (status, raw stream after headers)."""
        data = json.dumps(body if body is not None else {}).encode()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(self.socket)
            sock.sendall(
                f"POST {path} HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\n"
                f"Upgrade: tcp\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\n\r\n".encode()
                + data
            )
            received = b""
            while b"\r\n\r\n" not in received:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
            head, _, rest = received.partition(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1]) if head else 0
            if status != 101:  # an error: a plain response with a length
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(rest) < length and (chunk := sock.recv(65536)):
                    rest += chunk
                return status, rest
            if stdin:
                sock.sendall(stdin)
            sock.shutdown(socket.SHUT_WR)
            while chunk := sock.recv(65536):
                rest += chunk
            return status, rest
        finally:
            sock.close()

    # ---- conveniences ----------------------------------------------------------------------

    def bootstrap_busybox(self) -> None:
        response = self.post("/berth/images/bootstrap?name=busybox", timeout=300)
        assert response.status == 201, response

    def create(self, cmd: list[str], name: str | None = None, **config: Any) -> str:
        body = {"Image": "busybox", "Cmd": cmd, **config}
        path = "/containers/create" + (f"?name={name}" if name else "")
        response = self.post(path, body)
        assert response.status == 201, response
        container_id: str = response.json()["Id"]
        CREATED_IDS.add(container_id)
        return container_id

    def run(self, cmd: list[str], **config: Any) -> tuple[str, int]:
        """create + start + wait: (id, exit code)."""
        container_id = self.create(cmd, **config)
        response = self.post(f"/containers/{container_id}/start")
        assert response.status == 204, response
        waited = self.post(f"/containers/{container_id}/wait")
        assert waited.status == 200, waited
        return container_id, int(waited.json()["StatusCode"])

    def logs(self, container_id: str, query: str = "stdout=1&stderr=1") -> list[tuple[int, bytes]]:
        response = self.get(f"/containers/{container_id}/logs?{query}")
        assert response.status == 200, response
        return demux(response.body)

    def inspect(self, container_id: str) -> dict[str, Any]:
        response = self.get(f"/containers/{container_id}/json")
        assert response.status == 200, response
        data: dict[str, Any] = response.json()
        return data

    def build_running(
        self, run: bytes, query: str = ""
    ) -> tuple[UnixHTTPConnection, http.client.HTTPResponse, str]:
        """Post a build of ``FROM busybox`` + ``RUN echo up-$((1+1)) && <run>`` and read
        its output until the step printed ``up-2``: the open connection, the answer (the
        rest of the stream) and the RUN container's short id (cgroup ``berth/build-<id>``)."""
        dockerfile = b"FROM busybox\nRUN echo up-$((1+1)) && " + run + b"\n"
        conn = UnixHTTPConnection(self.socket, 60)
        conn.request("POST", f"/build?nocache=1{query}", body=tar_of({"Dockerfile": dockerfile}))
        answer = conn.getresponse()
        seen = b""
        while b"up-2" not in seen:
            line = answer.readline()
            assert line, seen
            seen += line
        step = re.search(rb"Running in ([0-9a-f]{12})", seen)
        assert step, seen
        return conn, answer, step[1].decode()

    def build_leftovers(self, output: str = "", cids: tuple[str, ...] = ()) -> list[str]:
        """What a build of this daemon must not leave: uncommitted build snapshots,
        mounts under its build folder, RUN bundles, and the cgroups of the RUN containers
        named in ``output`` or ``cids`` (other daemons may be building)."""
        db = sqlite3.connect(os.path.join(self.root, "images", "snapshots", "metadata.db"))
        try:
            found = [
                f"snapshot {row[0]}"
                for row in db.execute("SELECT key FROM snapshots WHERE kind != 'committed'")
                if row[0].startswith("build")
            ]
        finally:
            db.close()
        mounts = os.path.join(self.exec_root, "build", "mounts") + "/"
        with open("/proc/self/mountinfo") as f:
            points = (line.split()[4] for line in f)
            found += [f"mount {p}" for p in points if p.startswith(mounts)]
        bundles = os.path.join(self.exec_root, "build", "bundles")
        if os.path.isdir(bundles):
            found += [f"bundle {name}" for name in os.listdir(bundles)]
        named = re.findall(r"^ ---> Running in (\w+)$", output, flags=re.M)
        for cid in {c[:12] for c in [*named, *cids]}:
            for controller in os.listdir("/sys/fs/cgroup"):
                path = f"/sys/fs/cgroup/{controller}/berth/build-{cid}"
                if os.path.isdir(path):
                    found.append(f"cgroup {path}")
        return found
