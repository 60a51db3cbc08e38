"""Exec: more processes in a running container (``docker exec``).

An exec is created (the daemon keeps its configuration, in memory as Docker does),
then started: the monitor forks it with ``Runtime.exec_start`` (joining the
container's namespaces and cgroup, with its capabilities, rlimits and seccomp
filter), holds its pipes or pty and streams them like an attach. The exit comes
back on the monitor's event stream (``exec-exit``) before the client's stream
ends, so the client's ``GET /exec/{id}/json`` right after sees the exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from berth.client import streams
from berth.engine import specgen
from berth.errors import BerthError, Conflict, InvalidArgument, NotFound

if TYPE_CHECKING:
    from berth.engine.containers import ContainerService

# How long the end of an exec's stream waits for its exit to be reported.
EXIT_WAIT_SECONDS = 5.0


class ExecFailed(BerthError):
    """The process could not be started (no such program, ...): Docker reports it in
    the exec's stream and as exit code 127 (not found) or 126."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        lowered = message.lower()
        self.exit_code = 127 if "not found" in lowered or "no such file" in lowered else 126


def parse_detach_keys(text: str | None) -> bytes:
    """Docker's detach key syntax (``ctrl-p,ctrl-q``), a bad one refused with 400."""
    try:
        return streams.parse_detach_keys(text)
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None


@dataclass
class Exec:
    id: str
    container_id: str
    cmd: list[str]
    env: list[str]
    working_dir: str
    user: str
    privileged: bool
    tty: bool
    attach_stdin: bool
    attach_stdout: bool
    attach_stderr: bool
    detach_keys: str = ""
    detach_key_bytes: bytes = b""
    console_size: list[int] = field(default_factory=list)
    running: bool = False
    started: bool = False
    exit_code: int | None = None
    pid: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)


def _strings(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"{what} must be a list of strings")
    return list(value)


def _field(body: dict[str, Any], name: str) -> Any:
    """A body field looked up as Go's JSON decoding does: case-insensitively (docker-py
    sends ``detachKeys``)."""
    if name in body:
        return body[name]
    lowered = name.lower()
    for key, value in body.items():
        if key.lower() == lowered:
            return value
    return None


def _merge_env(base: list[str], extra: list[str]) -> list[str]:
    """The container's environment with the exec's variables set over it."""
    merged = {e.partition("=")[0]: e for e in base}
    for entry in extra:
        merged[entry.partition("=")[0]] = entry
    return list(merged.values())


def _bounding_caps() -> set[str]:
    """The capabilities in the daemon's bounding set (a host may lack some)."""
    names = {i: name for i, name in enumerate(specgen.ALL_CAPS)}
    try:
        with open("/proc/self/status") as f:
            line = next(x for x in f if x.startswith("CapBnd:"))
    except (OSError, StopIteration):
        return set(names.values())
    mask = int(line.split()[1], 16)
    return {name for i, name in names.items() if mask & (1 << i)}


class ExecService:
    def __init__(self, containers: ContainerService) -> None:
        self.containers = containers
        self.execs: dict[str, Exec] = {}

    def get(self, exec_id: str) -> Exec:
        found = self.execs.get(exec_id)
        if found is None:
            raise NotFound(f"No such exec instance: {exec_id}")
        return found

    def ids_of(self, container_id: str) -> list[str]:
        return [e.id for e in self.execs.values() if e.container_id == container_id]

    def forget(self, container_id: str) -> None:
        """The container is removed: so are its execs."""
        for exec_id in self.ids_of(container_id):
            del self.execs[exec_id]

    def discard(self, exec_id: str) -> None:
        """Drop one finished exec's record (health probes: Docker keeps none of them)."""
        self.execs.pop(exec_id, None)

    def _publish(self, record: Exec, action: str, extra: dict[str, str] | None = None) -> None:
        """An exec event on the container (``exec_create: CMD``, ``exec_start: CMD``,
        ``exec_die``), as dockerd publishes them."""
        attributes = {"execID": record.id}
        try:
            container = self.containers.get(record.container_id)
            attributes.update(
                {"image": container.spec.image, "name": container.name},
            )
            attributes.update(container.spec.labels)
        except BerthError:
            pass
        attributes.update(extra or {})
        self.containers.events.publish("container", action, record.container_id, attributes)

    def create(self, ref: str, body: dict[str, Any]) -> str:
        body = {
            name: _field(body, name)
            for name in (
                "Cmd",
                "Env",
                "WorkingDir",
                "User",
                "Privileged",
                "Tty",
                "AttachStdin",
                "AttachStdout",
                "AttachStderr",
                "DetachKeys",
                "ConsoleSize",
            )
        }
        detach_keys = str(_field(body, "DetachKeys") or "")
        key_bytes = parse_detach_keys(detach_keys)
        container = self.containers.get(ref)
        if not container.state.get("Running"):
            raise Conflict(f"container {container.id} is not running")
        if container.state.get("Paused"):
            raise Conflict(f"container {container.id} is paused, unpause the container before exec")
        cmd = _strings(body.get("Cmd"), "Cmd")
        if not cmd:
            raise InvalidArgument("no exec command specified")
        size = body.get("ConsoleSize") or []
        record = Exec(
            id=secrets.token_hex(32),
            container_id=container.id,
            cmd=cmd,
            env=_strings(body.get("Env"), "Env"),
            working_dir=str(body.get("WorkingDir") or ""),
            user=str(body.get("User") or ""),
            privileged=bool(body.get("Privileged")),
            tty=bool(body.get("Tty")),
            attach_stdin=bool(body.get("AttachStdin")),
            attach_stdout=bool(body.get("AttachStdout")),
            attach_stderr=bool(body.get("AttachStderr")),
            detach_keys=detach_keys,
            detach_key_bytes=key_bytes,
            console_size=[int(v) for v in size][:2] if isinstance(size, list) else [],
        )
        self.execs[record.id] = record
        self._publish(record, "exec_create: " + " ".join(record.cmd))
        return record.id

    def _process(self, record: Exec) -> dict[str, Any]:
        """The OCI process of the exec: the container's own, with the exec's changes."""
        path = os.path.join(self.containers.bundle(record.container_id), "config.json")
        try:
            with open(path) as f:
                config = json.load(f)
        except (OSError, ValueError):
            raise Conflict(f"container {record.container_id} is not running") from None
        proc: dict[str, Any] = copy.deepcopy(config["process"])
        proc["args"] = record.cmd
        proc["terminal"] = record.tty
        env = _merge_env(proc.get("env") or [], record.env)
        if record.tty and not any(e.startswith("TERM=") for e in env):
            env.append("TERM=xterm")
        proc["env"] = env
        if record.working_dir:
            proc["cwd"] = record.working_dir
        if record.user:
            rootfs = self.containers.rootfs(record.container_id)
            uid, gid, additional = specgen._passwd_lookup(rootfs, record.user)
            proc["user"] = {"uid": uid, "gid": gid}
            if additional:
                proc["user"]["additionalGids"] = additional
        if record.privileged:  # every capability this host can give
            caps = [c for c in specgen.ALL_CAPS if c in _bounding_caps()]
            proc["capabilities"] = {"bounding": caps, "effective": caps, "permitted": caps}
        proc.pop("consoleSize", None)
        if record.tty and len(record.console_size) == 2 and all(record.console_size):
            proc["consoleSize"] = {
                "height": record.console_size[0],
                "width": record.console_size[1],
            }
        return proc

    async def start(
        self,
        exec_id: str,
        *,
        detach: bool,
        before_launch: Callable[[], Awaitable[None]] | None = None,
    ) -> tuple[Exec, asyncio.StreamReader | None, asyncio.StreamWriter | None]:
        """Start the exec; unless detached, the monitor's stream of it (output in Docker's
        frames, or raw for a TTY; stdin the other way). ``before_launch`` runs once the
        exec is known to be startable, just before the process starts: the API answers
        the client there, so no output can reach it in the same read as the answer
        (docker-py reads the socket past its buffered HTTP reader and would lose it)."""
        record = self.get(exec_id)
        if record.started:
            raise Conflict(f"exec {exec_id} has already been started")
        container = self.containers.get(record.container_id)
        if not container.state.get("Running"):
            raise Conflict(f"container {container.id} is not running")
        if container.state.get("Paused"):
            raise Conflict(f"container {container.id} is paused, unpause the container before exec")
        try:
            process = self._process(record)
        except InvalidArgument as exc:  # no such user: Docker reports it in the stream
            failed = ExecFailed(str(exc))
            record.started = True
            record.exit_code = failed.exit_code
            record.done.set()
            self._publish(record, "exec_start: " + " ".join(record.cmd))
            self._publish(record, "exec_die", {"exitCode": str(failed.exit_code)})
            raise failed from None
        request = {
            "op": "exec",
            "id": record.container_id,
            "exec_id": record.id,
            "process": process,
            "detach": detach,
            "stdin": record.attach_stdin,
            "stdout": record.attach_stdout,
            "stderr": record.attach_stderr,
        }
        if before_launch is not None:
            await before_launch()
        record.started = True
        try:
            if detach:
                answer = await self.containers.monitor.call(request)
                reader = writer = None
            else:
                answer, reader, writer = await self.containers.monitor.stream_answer(request)
        except (Conflict, NotFound):
            record.started = False
            raise
        except BerthError as exc:
            failed = ExecFailed(f"berth-runtime exec failed: {exc}")
            record.exit_code = failed.exit_code
            record.done.set()
            self._publish(record, "exec_start: " + " ".join(record.cmd))
            self._publish(record, "exec_die", {"exitCode": str(failed.exit_code)})
            raise failed from None
        record.pid = int(answer.get("pid") or 0)
        record.running = True
        self._publish(record, "exec_start: " + " ".join(record.cmd))
        return record, reader, writer

    def on_exit(self, event: dict[str, Any]) -> None:
        record = self.execs.get(str(event.get("id")))
        if record is None:
            return
        record.running = False
        record.exit_code = int(event.get("ExitCode", 255))
        record.pid = int(event.get("Pid") or record.pid)
        record.done.set()
        self._publish(record, "exec_die", {"exitCode": str(record.exit_code)})

    async def wait_exit(self, record: Exec) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(record.done.wait(), EXIT_WAIT_SECONDS)

    async def resize(self, exec_id: str, height: int, width: int) -> None:
        record = self.get(exec_id)
        if record.tty and record.running:
            await self.containers.monitor.call(
                {"op": "exec_resize", "exec_id": record.id, "h": height, "w": width}
            )

    def inspect(self, exec_id: str) -> dict[str, Any]:
        record = self.get(exec_id)
        return {
            "ID": record.id,
            "Running": record.running,
            "ExitCode": record.exit_code,
            "ProcessConfig": {
                "tty": record.tty,
                "entrypoint": record.cmd[0],
                "arguments": record.cmd[1:],
                "privileged": record.privileged,
                "user": record.user,
            },
            "OpenStdin": record.attach_stdin,
            "OpenStderr": record.attach_stderr,
            "OpenStdout": record.attach_stdout,
            "CanRemove": False,
            "ContainerID": record.container_id,
            "DetachKeys": record.detach_keys,
            "Pid": record.pid,
        }
