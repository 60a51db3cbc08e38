"""Health checks: a container's probe run as an exec on a timer, as dockerd does.

The check comes from the create body's ``Healthcheck`` merged over the image's
(a field left zero or empty is inherited). ``Test`` is ``["NONE"]`` (no check),
``["CMD", prog, args...]`` or ``["CMD-SHELL", "script"]`` (run by the container's
shell, ``/bin/sh -c`` by default). Each probe is an exec (the exec machinery of
``execs.py``, so it has the container's user, environment and namespaces and publishes
``exec_create``/``exec_start``/``exec_die``); its record is dropped once it ends.

State (``State.Health`` in inspect): ``Status`` ``starting`` until the first probe
passes or the retries run out, then ``healthy``/``unhealthy``; ``FailingStreak``;
``Log``, the last five results. Failures inside ``StartPeriod`` do not count while the
status is still ``starting`` (and probes then come every ``StartInterval``). A change
of status publishes ``health_status: <status>``. The state is kept in
``<root>/containers/<id>/health.json`` (written atomically), so a daemon restart
resumes the probes of running containers where they were.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from typing import TYPE_CHECKING, Any

from berth.engine import jsonlog
from berth.errors import BerthError, Conflict, InvalidArgument, NotFound
from berth.units import rfc3339_epoch

if TYPE_CHECKING:
    from berth.engine.containers import Container, ContainerService

SECOND = 1_000_000_000
DEFAULT_INTERVAL = 30 * SECOND
DEFAULT_TIMEOUT = 30 * SECOND
DEFAULT_START_INTERVAL = 5 * SECOND
DEFAULT_RETRIES = 3
MAX_LOG_ENTRIES = 5
MAX_OUTPUT = 4096
MIN_DURATION = 1_000_000  # 1 ms: Docker's floor for a duration that is set
STARTING, HEALTHY, UNHEALTHY, NONE = "starting", "healthy", "unhealthy", "none"
_FIELDS = ("Interval", "Timeout", "StartPeriod", "StartInterval", "Retries")


def effective_config(container: Container) -> dict[str, Any] | None:
    """The container's health check (body over image), or None without one."""
    data = container.data
    user = (data.get("Config") or {}).get("Healthcheck")
    image = (data.get("ImageConfig") or {}).get("Healthcheck")
    if user is None and image is None:
        return None
    merged: dict[str, Any] = dict(image or {})
    if user is not None:
        for key, value in user.items():
            if key == "Test" and not value:
                continue
            if key in _FIELDS and not value:
                continue
            merged[key] = value
    test = merged.get("Test") or []
    if not test or test[0] == "NONE":
        return None
    return merged


def validate(body: dict[str, Any]) -> None:
    """Docker's checks on a create body's Healthcheck (durations, retries, test kind)."""
    check = body.get("Healthcheck")
    if check is None:
        return
    if not isinstance(check, dict):
        raise InvalidArgument("Healthcheck must be an object")
    for name in ("Interval", "Timeout", "StartPeriod", "StartInterval"):
        value = check.get(name) or 0
        if not isinstance(value, int) or (value != 0 and value < MIN_DURATION):
            raise InvalidArgument(f"{name} in Healthcheck cannot be less than 1ms")
    retries = check.get("Retries") or 0
    if not isinstance(retries, int) or retries < 0:
        raise InvalidArgument("Retries in Healthcheck cannot be negative")
    test = check.get("Test") or []
    if not isinstance(test, list) or not all(isinstance(t, str) for t in test):
        raise InvalidArgument("Healthcheck Test must be a list of strings")
    if test and test[0] not in ("NONE", "CMD", "CMD-SHELL"):
        raise InvalidArgument(f"unknown Healthcheck Test type {test[0]!r}")
    if test and test[0] == "CMD-SHELL" and len(test) != 2:
        raise InvalidArgument("Healthcheck CMD-SHELL takes exactly one string")


def probe_command(container: Container, config: dict[str, Any]) -> list[str]:
    test = list(config.get("Test") or [])
    if test[0] == "CMD":
        return test[1:]
    if test[0] == "CMD-SHELL":
        shell = (container.data.get("Config") or {}).get("Shell") or (
            container.data.get("ImageConfig") or {}
        ).get("Shell")
        return [*(shell or ["/bin/sh", "-c"]), " ".join(test[1:])]
    return []


def _duration(config: dict[str, Any], name: str, default: int) -> float:
    value = config.get(name) or 0
    return (value if value > 0 else default) / SECOND


class HealthChecker:
    """One probe loop per running container that has a health check."""

    def __init__(self, containers: ContainerService) -> None:
        self.containers = containers
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.states: dict[str, dict[str, Any]] = {}

    # ---- state ------------------------------------------------------------------------

    def _path(self, container_id: str) -> str:
        return os.path.join(self.containers.state_dir(container_id), "health.json")

    def _load(self, container_id: str) -> dict[str, Any] | None:
        if container_id in self.states:
            return self.states[container_id]
        try:
            with open(self._path(container_id)) as f:
                state = json.load(f)
        except (OSError, ValueError):
            return None
        if isinstance(state, dict):
            self.states[container_id] = state
            return state
        return None

    def _save(self, container_id: str, state: dict[str, Any]) -> None:
        self.states[container_id] = state
        path = self._path(container_id)
        tmp = path + ".tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(state, f)
            os.rename(tmp, path)
        except OSError:  # the container is being removed
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def inspect(self, container_id: str) -> dict[str, Any] | None:
        """``State.Health``: present once a container with a check has started."""
        state = self._load(container_id)
        return json.loads(json.dumps(state)) if state is not None else None

    def status(self, container_id: str) -> str:
        state = self._load(container_id)
        return str(state["Status"]) if state else NONE

    def ps_suffix(self, container_id: str) -> str:
        """What ``docker ps`` adds to ``Up ...``: `` (healthy)``, `` (health: starting)``."""
        state = self._load(container_id)
        if not state:
            return ""
        status = state["Status"]
        return f" (health: {status})" if status == STARTING else f" ({status})"

    def matches(self, container_id: str, filters: dict[str, Any]) -> bool:
        """The ``health`` filter of the container list (starting|healthy|unhealthy|none)."""
        value = filters.get("health")
        if not value:
            return True
        wanted = [k for k, v in value.items() if v] if isinstance(value, dict) else list(value)
        for item in wanted:
            if item not in (STARTING, HEALTHY, UNHEALTHY, NONE):
                raise InvalidArgument(f"Unrecognised filter value for health: {item}")
        return self.status(container_id) in wanted

    # ---- lifecycle hooks ------------------------------------------------------------------

    def start(self, container_id: str) -> None:
        """The container (re)started: status ``starting``, streak 0, probes on."""
        self.stop(container_id)
        container = self.containers.get(container_id)
        if effective_config(container) is None:
            return
        state = self._load(container_id) or {"Log": []}
        state.update(Status=STARTING, FailingStreak=0)
        self._save(container_id, state)
        self._spawn(container_id, time.time())

    def stop(self, container_id: str) -> None:
        """The container stopped: no more probes (the last state stays)."""
        task = self.tasks.pop(container_id, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    def forget(self, container_id: str) -> None:
        self.stop(container_id)
        self.states.pop(container_id, None)

    async def startup(self) -> None:
        """The daemon started: resume the probes of running containers."""
        for record in self.containers.db.all():
            state = record.get("State") or {}
            if state.get("Status") != "running":
                continue
            try:
                container = self.containers.get(record["Id"])
            except NotFound:
                continue
            if effective_config(container) is None:
                continue
            if self._load(container.id) is None:
                self._save(container.id, {"Status": STARTING, "FailingStreak": 0, "Log": []})
            self._spawn(container.id, rfc3339_epoch(state.get("StartedAt")) or time.time())

    async def shutdown(self) -> None:
        tasks = list(self.tasks.values())
        self.tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ---- the probe loop ---------------------------------------------------------------------

    def _spawn(self, container_id: str, started: float) -> None:
        self.stop(container_id)
        task = asyncio.create_task(self._loop(container_id, started))
        self.tasks[container_id] = task

    async def _loop(self, container_id: str, started: float) -> None:
        try:
            while True:
                container = self.containers.get(container_id)
                config = effective_config(container)
                if config is None or not container.state.get("Running"):
                    return
                interval = _duration(config, "Interval", DEFAULT_INTERVAL)
                start_period = _duration(config, "StartPeriod", 0)
                if time.time() - started < start_period and self.status(container_id) == STARTING:
                    interval = _duration(config, "StartInterval", DEFAULT_START_INTERVAL)
                await asyncio.sleep(interval)
                container = self.containers.get(container_id)
                if not container.state.get("Running"):
                    return
                if container.state.get("Paused"):
                    continue
                result = await self._probe(container, config)
                if result is not None:
                    self._record(container, config, result, started)
        except asyncio.CancelledError:
            raise
        except NotFound:
            return
        except Exception as exc:  # a bug here must not end silently
            print(f"berthd: health check of {container_id[:12]}: {exc!r}", flush=True)
        finally:
            if self.tasks.get(container_id) is asyncio.current_task():
                del self.tasks[container_id]

    async def _probe(self, container: Container, config: dict[str, Any]) -> dict[str, Any] | None:
        """Run the probe once: a Log entry, or None if the container stopped meanwhile."""
        execs = self.containers.execs
        timeout = _duration(config, "Timeout", DEFAULT_TIMEOUT)
        cmd = probe_command(container, config)
        begin = jsonlog.rfc3339nano()
        try:
            exec_id = execs.create(
                container.id, {"Cmd": cmd, "AttachStdout": True, "AttachStderr": True}
            )
        except Conflict:
            return None
        output = bytearray()
        code: int | None = None
        try:
            try:
                record, reader, writer = await execs.start(exec_id, detach=False)
            except Conflict:
                return None
            except BerthError as exc:  # ExecFailed: no such program, ...
                record = execs.get(exec_id)
                code, output = record.exit_code or 126, bytearray(str(exc).encode())
            else:
                assert reader is not None and writer is not None
                try:
                    await asyncio.wait_for(_collect(reader, output), timeout)
                    await execs.wait_exit(record)
                    code = record.exit_code if record.exit_code is not None else -1
                except TimeoutError:
                    if record.running and record.pid > 0:
                        with contextlib.suppress(OSError):
                            os.kill(record.pid, signal.SIGKILL)
                    code = -1
                    output = bytearray(
                        f"Health check exceeded timeout ({_go_duration(timeout)})".encode()
                    )
                finally:
                    writer.close()
        finally:
            execs.discard(exec_id)
        return {
            "Start": begin,
            "End": jsonlog.rfc3339nano(),
            "ExitCode": code,
            "Output": bytes(output[:MAX_OUTPUT]).decode(errors="replace"),
        }

    def _record(
        self, container: Container, config: dict[str, Any], result: dict[str, Any], started: float
    ) -> None:
        state = self._load(container.id) or {"Status": STARTING, "FailingStreak": 0, "Log": []}
        old = state.get("Status")
        log = list(state.get("Log") or [])
        log.append(result)
        state["Log"] = log[-MAX_LOG_ENTRIES:]
        if result["ExitCode"] == 0:
            state["FailingStreak"] = 0
            state["Status"] = HEALTHY
        else:
            counts = not (
                old == STARTING and time.time() - started < _duration(config, "StartPeriod", 0)
            )
            if counts:
                state["FailingStreak"] = int(state.get("FailingStreak") or 0) + 1
                retries = int(config.get("Retries") or 0) or DEFAULT_RETRIES
                if state["FailingStreak"] >= retries:
                    state["Status"] = UNHEALTHY
        self._save(container.id, state)
        if state["Status"] != old:
            attributes = {"image": container.spec.image, "name": container.name}
            attributes.update(container.spec.labels)
            self.containers.events.publish(
                "container", f"health_status: {state['Status']}", container.id, attributes
            )


async def _collect(reader: asyncio.StreamReader, output: bytearray) -> None:
    """The probe's stdout and stderr (Docker frames from the monitor), first 4 KiB kept."""
    buffer = bytearray()
    while chunk := await reader.read(65536):
        buffer += chunk
        while len(buffer) >= 8:
            size = int.from_bytes(buffer[4:8], "big")
            if len(buffer) < 8 + size:
                break
            if len(output) < MAX_OUTPUT:
                output += buffer[8 : 8 + size]
            del buffer[: 8 + size]


def _go_duration(seconds: float) -> str:
    """A duration as Go prints it (``30s``, ``1.5s``, ``500ms``)."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    if seconds < 60:
        return f"{seconds:g}s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:g}s"
