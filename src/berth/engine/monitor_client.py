"""The daemon's side of the monitor: find or spawn it, and speak its JSON-lines protocol.

One short connection per request (a unix connect costs microseconds); ``attach`` and
``events`` keep theirs as streams. The monitor runs in its own session, so it and the
containers under it outlive ``berthd``; a restarted daemon finds it again through
``<exec-root>/monitor.pid`` and ``monitor.sock``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any

from berth import errors
from berth.engine.monitor import PIDFILE_NAME, SOCKET_NAME
from berth.errors import BerthError, SystemFailure

_KINDS: dict[str, type[BerthError]] = {
    "NotFound": errors.NotFound,
    "Conflict": errors.Conflict,
    "InvalidArgument": errors.InvalidArgument,
    "ConfigError": errors.ConfigError,
    "SystemFailure": errors.SystemFailure,
}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except OSError:
        return False


class MonitorClient:
    def __init__(self, exec_root: str) -> None:
        self.exec_root = exec_root
        self.socket_path = os.path.join(exec_root, SOCKET_NAME)
        self.pid_path = os.path.join(exec_root, PIDFILE_NAME)
        self.pid = 0

    def running_pid(self) -> int:
        try:
            with open(self.pid_path) as f:
                pid = int(f.read().strip() or 0)
        except (OSError, ValueError):
            return 0
        return pid if pid > 0 and _alive(pid) else 0

    async def ensure(self) -> int:
        """Reconnect to the running monitor, or start one; returns its pid."""
        pid = self.running_pid()
        if pid:
            try:
                answer = await self.call({"op": "ping"})
                self.pid = int(answer["pid"])
                return self.pid
            except (OSError, BerthError):
                pass
        log = open(os.path.join(self.exec_root, "monitor.log"), "ab")  # noqa: SIM115
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "berth.engine.monitor", "--exec-root", self.exec_root],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                close_fds=True,
                cwd="/",
            )
        finally:
            log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SystemFailure(
                    f"the container monitor exited with {process.returncode}:"
                    f" see {self.exec_root}/monitor.log"
                )
            try:
                answer = await self.call({"op": "ping"})
                self.pid = int(answer["pid"])
                return self.pid
            except (OSError, BerthError):
                await asyncio.sleep(0.02)
        raise SystemFailure(
            f"the container monitor did not answer: see {self.exec_root}/monitor.log"
        )

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_unix_connection(self.socket_path, limit=1 << 20)

    @staticmethod
    async def _answer(reader: asyncio.StreamReader) -> dict[str, Any]:
        line = await reader.readline()
        if not line:
            raise SystemFailure("the container monitor closed the connection")
        answer: dict[str, Any] = json.loads(line)
        if not answer.get("ok"):
            kind = _KINDS.get(str(answer.get("kind")), BerthError)
            raise kind(str(answer.get("error") or "the container monitor failed"))
        return answer

    async def call(self, request: dict[str, Any]) -> dict[str, Any]:
        reader, writer = await self._open()
        try:
            writer.write(json.dumps(request).encode() + b"\n")
            await writer.drain()
            return await self._answer(reader)
        finally:
            writer.close()

    async def stream(
        self, request: dict[str, Any]
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Send ``attach`` or ``events``; after the answer the connection is a stream."""
        _, reader, writer = await self.stream_answer(request)
        return reader, writer

    async def stream_answer(
        self, request: dict[str, Any]
    ) -> tuple[dict[str, Any], asyncio.StreamReader, asyncio.StreamWriter]:
        """``stream``, with the answer (``exec`` answers the process's pid)."""
        reader, writer = await self._open()
        try:
            writer.write(json.dumps(request).encode() + b"\n")
            await writer.drain()
            answer = await self._answer(reader)
        except BaseException:
            writer.close()
            raise
        return answer, reader, writer
