"""Restart policies (``HostConfig.RestartPolicy``), as Docker applies them.

``no`` (default), ``always``, ``unless-stopped``, ``on-failure[:N]``. When the monitor
reports an exit, the container is started again after a back-off of 100 ms that
doubles with each restart (at most a minute) and starts again at 100 ms once a run
lasted 10 s. A container stopped or killed through the API (``ManuallyStopped`` in
its record) is not restarted until it is started again by hand. When berthd starts,
``always`` containers and ``unless-stopped`` ones not stopped by hand are started if
they do not run (the monitor may have lost them, or they exited while the daemon
was down), and restarts that were pending are carried out.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from berth.errors import BerthError, InvalidArgument
from berth.units import rfc3339_epoch

if TYPE_CHECKING:
    from berth.engine.containers import ContainerService

FIRST_DELAY = 0.1
MAX_DELAY = 60.0
RESET_AFTER = 10.0
POLICIES = ("no", "always", "unless-stopped", "on-failure")


def policy_of(data: dict[str, Any]) -> tuple[str, int]:
    policy = (data.get("HostConfig") or {}).get("RestartPolicy") or {}
    return str(policy.get("Name") or "no"), int(policy.get("MaximumRetryCount") or 0)


def validate(host_config: dict[str, Any]) -> None:
    """Refuse what Docker refuses: unknown names, retries without on-failure, auto-remove."""
    name, retries = policy_of({"HostConfig": host_config})
    if name not in POLICIES:
        raise InvalidArgument(f"invalid restart policy '{name}'")
    if retries < 0:
        raise InvalidArgument("invalid restart policy: maximum retry count cannot be negative")
    if retries and name != "on-failure":
        raise InvalidArgument(
            f"invalid restart policy: maximum retry count can only be used with 'on-failure'"
            f" (not {name!r})"
        )
    if name != "no" and host_config.get("AutoRemove"):
        raise InvalidArgument(
            "can't create 'AutoRemove' container with restart policy: use one or the other"
        )


class RestartManager:
    def __init__(self, service: ContainerService) -> None:
        self.service = service
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.delays: dict[str, float] = {}
        self.stopping = False

    def cancel(self, container_id: str) -> None:
        task = self.tasks.pop(container_id, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    def stopped_by_user(self, container_id: str) -> None:
        """stop, kill: no restart until a start by hand."""
        self.cancel(container_id)
        record = self.service.db.get(container_id)
        if record is not None:
            record["ManuallyStopped"] = True
            record["State"]["Restarting"] = False
            self.service.db.update(container_id, record)

    def after_exit(self, container_id: str) -> bool:
        """Called once an exit is recorded: schedule a restart if the policy says so."""
        if self.stopping:
            return False
        record = self.service.db.get(container_id)
        if record is None or record.get("ManuallyStopped"):
            return False
        name, retries = policy_of(record)
        state = record["State"]
        code = int(state.get("ExitCode") or 0)
        if name == "no":
            return False
        if name == "on-failure" and (
            code == 0 or (retries > 0 and int(record.get("RestartCount") or 0) >= retries)
        ):
            return False
        ran = rfc3339_epoch(state.get("FinishedAt")) - rfc3339_epoch(state.get("StartedAt"))
        previous = self.delays.get(container_id, 0.0)
        delay = FIRST_DELAY if not previous or ran >= RESET_AFTER else min(previous * 2, MAX_DELAY)
        self.delays[container_id] = delay
        state["Restarting"] = True
        self.service.db.update(container_id, record)
        self.schedule(container_id, delay)
        return True

    def schedule(self, container_id: str, delay: float) -> None:
        self.cancel(container_id)
        self.tasks[container_id] = asyncio.create_task(self._restart_later(container_id, delay))

    async def _restart_later(self, container_id: str, delay: float) -> None:
        await asyncio.sleep(delay)
        if self.tasks.get(container_id) is asyncio.current_task():
            del self.tasks[container_id]
        record = self.service.db.get(container_id)
        if record is None or not record["State"].get("Restarting"):
            return
        record["RestartCount"] = int(record.get("RestartCount") or 0) + 1
        record["State"]["Restarting"] = False
        self.service.db.update(container_id, record)
        try:
            await self.service.start(container_id, by_policy=True)
        except BerthError as exc:
            record = self.service.db.get(container_id)
            if record is not None:
                record["State"]["Error"] = str(exc)
                self.service.db.update(container_id, record)
            print(f"berthd: restart of {container_id[:12]}: {exc}", flush=True)

    async def startup(self) -> None:
        """After the exits missed while down are applied: start what the policies say."""
        from berth.engine.containers import EXITED, ZERO_TIME

        for record in self.service.db.all():
            container_id = record["Id"]
            if container_id in self.tasks or record["State"]["Status"] != EXITED:
                continue
            name, _ = policy_of(record)
            wanted = record["State"].get("Restarting") or (
                name == "always" or (name == "unless-stopped" and not record.get("ManuallyStopped"))
            )
            if not wanted or record["State"].get("StartedAt", ZERO_TIME) == ZERO_TIME:
                continue
            record["State"]["Restarting"] = True
            self.service.db.update(container_id, record)
            self.schedule(container_id, 0)

    async def shutdown(self) -> None:
        self.stopping = True
        tasks = list(self.tasks.values())
        self.tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
