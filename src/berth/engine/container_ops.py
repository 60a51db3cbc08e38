"""More of the container service: pause, unpause, restart, rename, top, stats.

Freezing goes through the monitor (``Runtime.pause``/``resume``, the freezer cgroup);
a paused container is ``running`` in its record with ``State.Paused`` set, shown as
``paused``. ``top`` runs the host's ``ps`` and keeps the container's processes;
``stats`` reads the container's cgroup files (``stats.py``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

from berth.engine import stats
from berth.errors import Conflict, InvalidArgument, SystemFailure

if TYPE_CHECKING:
    from berth.engine.containers import ContainerService

# Between the two samples of a one-off stats answer (Docker waits a second or two).
PRECPU_INTERVAL = 0.5
STREAM_INTERVAL = 1.0


class ContainerOps:
    def __init__(self, service: ContainerService) -> None:
        self.service = service

    async def pause(self, ref: str) -> None:
        await self._set_paused(ref, True)

    async def unpause(self, ref: str) -> None:
        await self._set_paused(ref, False)

    async def _set_paused(self, ref: str, paused: bool) -> None:
        from berth.engine.containers import RUNNING

        service = self.service
        container = service.get(ref)
        async with service._lock(container.id):
            container = service.get(container.id)
            if container.status != RUNNING:
                raise Conflict(f"container {container.id} is not running")
            if bool(container.state.get("Paused")) == paused:
                raise Conflict(
                    f"container {container.id} is already paused"
                    if paused
                    else f"container {container.id} is not paused"
                )
            await service.monitor.call({"op": "pause" if paused else "resume", "id": container.id})
            container.state["Paused"] = paused
            service.db.update(container.id, container.data)
        service.publish(container, "pause" if paused else "unpause")

    async def restart(self, ref: str, timeout: int | None = None, sig: str | None = None) -> None:
        from berth.engine.containers import RUNNING

        service = self.service
        container = service.get(ref)
        if container.status == RUNNING:
            await service.stop(container.id, timeout, sig)
        else:
            service.restarts.cancel(container.id)
        await service.start(container.id)
        service.publish(container, "restart")

    def rename(self, ref: str, name: str) -> None:
        from berth.engine.containers import _NAME

        if not name:
            raise InvalidArgument("Neither old nor new names may be empty")
        if not _NAME.fullmatch(name):
            raise InvalidArgument(
                f"Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
            )
        name = name.removeprefix("/")
        container = self.service.get(ref)
        if container.name == name:
            raise Conflict(f"Renaming a container with the same name as its current name: {name}")
        old_name = container.name
        container.data["Name"] = name
        self.service.db.rename(container.id, name, container.data)
        self.service.publish(container, "rename", oldName="/" + old_name)

    async def _running(self, ref: str) -> tuple[Any, dict[str, Any]]:
        from berth.engine.containers import RUNNING

        container = self.service.get(ref)
        if container.status != RUNNING:
            raise Conflict(f"container {container.id} is not running")
        return container, container.data

    async def top(self, ref: str, ps_args: str = "") -> dict[str, Any]:
        container, _ = await self._running(ref)
        answer = await self.service.monitor.call({"op": "pids", "id": container.id})
        pids = {int(p) for p in answer["pids"]}
        args = ps_args.split() if ps_args else ["-ef"]
        process = await asyncio.create_subprocess_exec(
            "ps",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
        )
        out, err = await process.communicate()
        if process.returncode != 0:
            raise SystemFailure(
                f"ps {' '.join(args)} failed: {err.decode(errors='replace').strip()}"
            )
        lines = out.decode(errors="replace").splitlines()
        if not lines:
            raise SystemFailure("ps printed nothing")
        titles = lines[0].split()
        if "PID" not in titles:
            raise InvalidArgument(f"couldn't find PID field in ps output of {' '.join(args)!r}")
        column = titles.index("PID")
        processes = []
        for line in lines[1:]:
            fields = line.split(None, len(titles) - 1)
            try:
                pid = int(fields[column])
            except (IndexError, ValueError):
                continue
            if pid in pids:
                processes.append(fields)
        return {"Titles": titles, "Processes": processes}

    async def _sample(self, container_id: str) -> dict[str, Any] | None:
        try:
            answer = await self.service.monitor.call({"op": "cgroup", "id": container_id})
        except Conflict:
            return None
        sample = stats.sample(answer.get("paths") or {})
        if answer.get("pid"):
            sample["networks"] = stats.networks(int(answer["pid"]))
        return sample

    async def stats(
        self, ref: str, *, stream: bool, one_shot: bool
    ) -> AsyncGenerator[dict[str, Any]]:
        """Docker's stats objects: one (``stream`` false) or one a second."""
        from berth.engine.containers import RUNNING

        container = self.service.get(ref)
        base = {"name": "/" + container.name, "id": container.id}
        if container.status != RUNNING:
            yield stats.empty(container.id, container.name)
            return
        previous = await self._sample(container.id)
        if not stream and not one_shot and previous is not None:
            await asyncio.sleep(PRECPU_INTERVAL)
        while True:
            current = await self._sample(container.id) if previous is not None else None
            if current is None:
                yield stats.empty(container.id, container.name)
                return
            if one_shot and not stream:
                pre = {"cpu_usage": {"total_usage": 0}, "system_cpu_usage": 0}
                preread = "0001-01-01T00:00:00Z"
            else:
                assert previous is not None
                pre, preread = previous["cpu_stats"], previous["read"]
            yield {**base, **current, "preread": preread, "precpu_stats": pre}
            if not stream:
                return
            previous = current
            started = time.monotonic()
            await asyncio.sleep(max(0.0, STREAM_INTERVAL - (time.monotonic() - started)))
