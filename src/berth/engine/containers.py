"""The container service: lifecycle, wait, logs, attach, inspect and list.

The lifecycle is an explicit state machine (``created -> running -> exited ->
running ... -> removed``); a request that does not fit the state is refused with
Conflict. Process work goes through the monitor (``monitor.py``); the rootfs is an
overlay mount of the container's snapshot at ``<exec-root>/containers/<id>/rootfs``,
made in the daemon's mount namespace and undone on removal and at daemon stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import secrets
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

from berth import faults
from berth.engine import jsonlog, restarts, specgen
from berth.engine.container_ops import ContainerOps
from berth.engine.events import EventBus
from berth.engine.execs import ExecService
from berth.engine.filters import label_matches, until_epoch
from berth.engine.filters import values as filter_values
from berth.engine.health import HealthChecker
from berth.engine.health import validate as validate_healthcheck
from berth.engine.monitor_client import MonitorClient
from berth.engine.network.service import NetworkService
from berth.engine.reconcile import reconcile
from berth.engine.restarts import RestartManager
from berth.engine.state import EngineDB
from berth.engine.volumes import VolumeService, mount_points
from berth.errors import BerthError, Conflict, InvalidArgument, NotFound, SystemFailure
from berth.images.store import ImageStore
from berth.units import human_duration, rfc3339_epoch

CREATED, RUNNING, EXITED, REMOVING = "created", "running", "exited", "removing"
BUILTIN_RUNTIME = "berth-runtime"
KNOWN_RUNTIMES = {"runc": "/usr/sbin/runc", "crun": "/usr/bin/crun"}
OTHER_RUNTIMES_OCI_VERSION = "1.0.2"
ZERO_TIME = "0001-01-01T00:00:00Z"
_NAME = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
_ADJECTIVES_TEXT = (
    "admiring adoring agitated amazing angry awesome bold brave busy clever cool"
    " dazzling eager ecstatic elegant epic focused frosty gallant happy hopeful jolly"
    " keen kind laughing loving modest nice optimistic peaceful practical quirky"
    " relaxed serene sharp stoic sweet tender trusting vibrant wizardly youthful"
    " zealous"
)
_NAMES_TEXT = (
    "albattani allen archimedes babbage bell bohr curie darwin dijkstra einstein"
    " euler fermat feynman galileo gauss hopper hypatia kepler knuth lamport lovelace"
    " maxwell mendel newton noether pascal planck ritchie shannon thompson torvalds"
    " turing wozniak"
)
_ADJECTIVES = _ADJECTIVES_TEXT.split()
_NAMES = _NAMES_TEXT.split()


class NotModified(BerthError):
    """The container is already in the asked state (HTTP 304)."""


def _now() -> str:
    return jsonlog.rfc3339nano()


class Container:
    """A container's record as stored (a dict underneath, for the JSON column)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    @property
    def id(self) -> str:
        return str(self.data["Id"])

    @property
    def name(self) -> str:
        return str(self.data["Name"])

    @property
    def spec(self) -> specgen.ContainerSpec:
        return specgen.ContainerSpec.from_dict(self.data["Spec"])

    @property
    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = self.data["State"]
        return state

    @property
    def status(self) -> str:
        return str(self.state["Status"])


class ContainerService:
    def __init__(
        self, root: str, exec_root: str, images: ImageStore, events: EventBus | None = None
    ) -> None:
        self.root = root
        self.events = events or EventBus()
        self.exec_root = exec_root
        self.images = images
        self.db = EngineDB(root)
        self.monitor = MonitorClient(exec_root)
        self.volumes = VolumeService(root, self.db, self.events)
        self.networks = NetworkService(self)
        self.execs = ExecService(self)
        self.health = HealthChecker(self)
        self.restarts = RestartManager(self)
        self.ops = ContainerOps(self)
        self.runtimes: dict[str, str] = {BUILTIN_RUNTIME: BUILTIN_RUNTIME}
        for runtime_name, runtime_path in KNOWN_RUNTIMES.items():
            if os.access(runtime_path, os.X_OK):
                self.runtimes[runtime_name] = runtime_path
        self.default_runtime = BUILTIN_RUNTIME
        self._locks: dict[str, asyncio.Lock] = {}
        self._waiters: dict[str, list[tuple[str, asyncio.Future[int]]]] = {}
        self._events_task: asyncio.Task[None] | None = None
        for folder in (os.path.join(root, "containers"), os.path.join(exec_root, "containers")):
            os.makedirs(folder, mode=0o711, exist_ok=True)

    # ---- paths ------------------------------------------------------------------------

    def state_dir(self, container_id: str) -> str:
        return os.path.join(self.root, "containers", container_id)

    def bundle(self, container_id: str) -> str:
        return os.path.join(self.exec_root, "containers", container_id)

    def rootfs(self, container_id: str) -> str:
        return os.path.join(self.bundle(container_id), "rootfs")

    def log_path(self, container_id: str) -> str:
        return os.path.join(self.state_dir(container_id), f"{container_id}-json.log")

    def exit_path(self, container_id: str) -> str:
        return os.path.join(self.state_dir(container_id), "exit.json")

    # ---- daemon start and stop --------------------------------------------------------

    async def startup(self) -> None:
        """Undo interrupted work, find or start the monitor, follow its exits, and catch
        up on missed ones."""
        undone = reconcile(self)
        if any(undone.values()):
            print(f"berthd: undid interrupted work: {undone}", file=sys.stderr, flush=True)
        await self.monitor.ensure()
        reader, writer = await self.monitor.stream({"op": "events"})
        self._events_task = asyncio.create_task(self._follow_events(reader, writer))
        known = (await self.monitor.call({"op": "list"}))["containers"]
        for record in self.db.all():
            container = Container(record)
            if container.status != RUNNING:
                continue
            exit_file = self.exit_path(container.id)
            if os.path.exists(exit_file):
                await self._apply_exit_file(container.id)
            elif container.id not in known:
                await asyncio.to_thread(self._kill_orphan, container.id)
                await self._on_exit(container.id, 255, _now(), "the monitor lost the container")
        await self.health.startup()
        await self.restarts.startup()

    def _kill_orphan(self, container_id: str) -> None:
        """A container whose monitor is gone (killed) may still run, with nobody holding
        its output: it is killed, as the exit recorded for it says."""
        from berth.linux.cgroups import Cgroup
        from berth.runtime.container import Runtime

        try:
            Runtime(os.path.join(self.exec_root, "runtime")).delete(container_id, force=True)
            return
        except BerthError:
            pass  # another runtime's container, or no state left: its cgroup then
        try:
            cgroup = Cgroup.for_container(f"/berth/{container_id}", container_id)
            for _ in range(50):
                if not cgroup.pids():
                    break
                cgroup.kill_all(signal.SIGKILL)
                time.sleep(0.02)
            cgroup.destroy()
        except (OSError, BerthError) as exc:
            print(f"berthd: cannot stop {container_id[:12]}: {exc}", file=sys.stderr)

    async def shutdown(self) -> None:
        """Stop following events and unmount every rootfs; containers keep running."""
        await self.restarts.shutdown()
        await self.health.shutdown()
        if self._events_task is not None:
            self._events_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._events_task
        for record in self.db.all():
            self._unmount(record["Id"])
        self.db.close()

    async def _follow_events(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            try:
                while line := await reader.readline():
                    event = json.loads(line)
                    if event.get("event") == "exit":
                        await self._apply_exit_file(event["id"], event)
                    elif event.get("event") == "exec-exit":
                        self.execs.on_exit(event)
            except (OSError, ValueError) as exc:
                print(f"berthd: monitor events: {exc}", flush=True)
            finally:
                writer.close()
            print("berthd: lost the monitor's event stream; reconnecting", flush=True)
            while True:
                await asyncio.sleep(1)
                try:
                    await self.monitor.ensure()
                    reader, writer = await self.monitor.stream({"op": "events"})
                    break
                except (OSError, BerthError):
                    continue

    async def _apply_exit_file(
        self, container_id: str, event: dict[str, Any] | None = None
    ) -> None:
        path = self.exit_path(container_id)
        data = event
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError):
            pass
        if data is None:
            return
        await self._on_exit(
            container_id,
            int(data.get("ExitCode", 255)),
            data.get("FinishedAt"),
            oom_killed=bool(data.get("OOMKilled")),
        )
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    async def _on_exit(
        self,
        container_id: str,
        code: int,
        finished: str | None,
        error: str = "",
        *,
        oom_killed: bool = False,
    ) -> None:
        async with self._lock(container_id):
            record = self.db.get(container_id)
            if record is None:
                return
            container = Container(record)
            if container.status != RUNNING:
                return
            container.state.update(
                Status=EXITED,
                Running=False,
                Paused=False,
                Pid=0,
                ExitCode=code,
                Error=error,
                OOMKilled=oom_killed,
                FinishedAt=finished or _now(),
            )
            self.db.update(container_id, container.data)
            if oom_killed:
                self.publish(container, "oom")
            started = rfc3339_epoch(str(container.state.get("StartedAt") or ""))
            self.publish(
                container,
                "die",
                exitCode=str(code),
                execDuration=str(int(max(0.0, time.time() - started))) if started else "0",
            )
            self.volumes.unmounted(container_id, container.spec)
            self._resolve(container_id, ("not-running", "next-exit"), code)
            self.health.stop(container_id)
            auto_remove = container.spec.auto_remove
            await self.networks.teardown(container_id)
        if self.restarts.after_exit(container_id):
            return
        if auto_remove:
            try:
                await self.remove(container_id, force=True, volumes=True)
            except BerthError as exc:
                print(f"berthd: auto-remove of {container_id[:12]}: {exc}", flush=True)

    # ---- events and runtimes ---------------------------------------------------------------

    def publish(self, container: Container, action: str, **extra: str) -> None:
        """A container event with dockerd's attributes: name, image, the labels, extras."""
        spec = container.spec
        attributes = {**spec.labels, "image": spec.image, "name": container.name, **extra}
        self.events.publish("container", action, container.id, attributes)

    def configure_runtimes(self, default: str = "", added: list[str] | None = None) -> None:
        """``berthd --add-runtime NAME=PATH`` (repeatable) and ``--default-runtime NAME``."""
        for item in added or []:
            name, sep, path = item.partition("=")
            if not sep or not name or not path:
                raise InvalidArgument(f"invalid --add-runtime {item!r}: use NAME=PATH")
            self.runtimes[name] = path
        if default:
            if default not in self.runtimes:
                raise InvalidArgument(
                    f"default runtime {default!r} is not configured: add it with --add-runtime"
                )
            self.default_runtime = default

    def runtime_info(self) -> dict[str, Any]:
        """``/info``'s ``Runtimes`` and ``DefaultRuntime``."""
        return {
            "Runtimes": {name: {"path": path} for name, path in sorted(self.runtimes.items())},
            "DefaultRuntime": self.default_runtime,
        }

    def _check_runtime(self, name: str) -> str:
        name = name or self.default_runtime
        if name not in self.runtimes:
            raise InvalidArgument(f"Unknown runtime specified {name}")
        return name

    # ---- lookup ---------------------------------------------------------------------------

    def _lock(self, container_id: str) -> asyncio.Lock:
        return self._locks.setdefault(container_id, asyncio.Lock())

    def get(self, ref: str) -> Container:
        ids = self.db.find(ref)
        if not ids:
            raise NotFound(f"No such container: {ref}")
        if len(ids) > 1:
            raise InvalidArgument(f"multiple IDs found with provided prefix: {ref}")
        record = self.db.get(ids[0])
        if record is None:
            raise NotFound(f"No such container: {ref}")
        return Container(record)

    # ---- create ---------------------------------------------------------------------------

    def _new_name(self) -> str:
        for _ in range(20):
            name = f"{random.choice(_ADJECTIVES)}_{random.choice(_NAMES)}"
            if not self.db.find(name):
                return name
        return f"{random.choice(_ADJECTIVES)}_{random.choice(_NAMES)}{random.randint(1, 99)}"

    def create(self, body: dict[str, Any], name: str | None) -> tuple[str, list[str]]:
        if name:
            if not _NAME.fullmatch(name):
                raise InvalidArgument(
                    f"Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
                )
            name = name.removeprefix("/")
        restarts.validate(body.get("HostConfig") or {})
        validate_healthcheck(body)
        image_ref = str(body.get("Image") or "")
        if not image_ref:
            raise InvalidArgument("no image given: the container config needs Image")
        try:
            image = self.images.get(image_ref)
        except NotFound:
            raise NotFound(f"No such image: {image_ref}") from None
        image_config = dict(image.config.data.get("config") or {})
        spec = specgen.from_docker(body, image_ref, image.id, image_config)
        spec.runtime = self._check_runtime(spec.runtime)
        container_id = secrets.token_hex(32)
        name = name or self._new_name()
        host_config = dict(body.get("HostConfig") or {})
        host_config["Runtime"] = spec.runtime
        self._check_links(spec)
        if spec.links:
            host_config["Links"] = [
                f"/{link.split(':')[0]}:/{name}/{link.split(':')[1]}" for link in spec.links
            ]
        spec.mounts += self._volumes_from(host_config.get("VolumesFrom"), spec)
        created = _now()
        config = {k: v for k, v in body.items() if k not in ("HostConfig", "NetworkingConfig")}
        record = {
            "Id": container_id,
            "Name": name,
            "Created": created,
            "Spec": spec.to_dict(),
            "Config": config,
            "HostConfig": host_config,
            "ImageConfig": image_config,
            "State": {
                "Status": CREATED,
                "Running": False,
                "Paused": False,
                "Restarting": False,
                "OOMKilled": False,
                "Dead": False,
                "Pid": 0,
                "ExitCode": 0,
                "Error": "",
                "StartedAt": ZERO_TIME,
                "FinishedAt": ZERO_TIME,
            },
            "RestartCount": 0,
            "Creating": True,  # until every part exists (see engine/reconcile.py)
        }
        self.db.insert(container_id, name, created, record)  # the name is taken here
        try:
            faults.point("create:inserted")
            state_dir = self.state_dir(container_id)
            os.makedirs(state_dir, mode=0o710)
            self._write_etc_files(container_id, spec)
            os.makedirs(self.rootfs(container_id), mode=0o711)
            self.images.snapshots.prepare(
                container_id, image.top_layer, labels={"berth.container": name}
            )
            faults.point("create:snapshot")
            self._mount(container_id)
            faults.point("create:mounted")
            self.volumes.attach(spec, self.rootfs(container_id))
            self.networks.on_create(container_id, name, body, spec.network_mode, image_config)
            record["Spec"] = spec.to_dict()
            del record["Creating"]
            self.db.update(container_id, record)
            faults.point("create:done")
        except BaseException:
            self._discard(container_id)
            raise
        self.publish(Container(record), "create")
        return container_id, list(spec.warnings)

    def _check_links(self, spec: specgen.ContainerSpec) -> None:
        if spec.links and spec.network_mode == "host":
            raise InvalidArgument(
                "conflicting options: host type networking can't be used with links."
                " This would result in undefined behavior"
            )
        for link in spec.links:
            target = link.split(":")[0]
            if not self.db.find(target):
                raise NotFound(f"Could not get container for {target}")

    def _volumes_from(self, given: Any, spec: specgen.ContainerSpec) -> list[specgen.Mount]:
        """``--volumes-from NAME[:ro|rw]``: that container's binds and volumes, at the
        same paths, unless this container mounts something there itself."""
        if not given:
            return []
        if not isinstance(given, list):
            raise InvalidArgument("VolumesFrom must be a list of container names")
        taken = {m.destination for m in spec.mounts}
        mounts: list[specgen.Mount] = []
        for item in given:
            ref, _, mode = str(item).partition(":")
            if mode not in ("", "ro", "rw", "z", "Z"):
                raise InvalidArgument(f"invalid mode for volumes-from: {mode}")
            source = self.get(ref)
            for mount in source.spec.mounts:
                if mount.type == "tmpfs" or mount.destination in taken:
                    continue
                taken.add(mount.destination)
                copy = specgen.Mount(**{**mount.__dict__, "options": list(mount.options)})
                copy.copy_up = False
                if mode == "ro":
                    copy.readonly = True
                elif mode == "rw":
                    copy.readonly = False
                mounts.append(copy)
        return mounts

    def _write_etc_files(self, container_id: str, spec: specgen.ContainerSpec) -> None:
        state_dir = self.state_dir(container_id)
        hostname = spec.hostname or container_id[:12]
        with open(os.path.join(state_dir, "hostname"), "w") as f:
            f.write(hostname + "\n")
        if spec.network_mode == "host":
            shutil.copyfile("/etc/hosts", os.path.join(state_dir, "hosts"))
        else:
            with open(os.path.join(state_dir, "hosts"), "w") as f:
                f.write(
                    "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                    "fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\n"
                    "ff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n"
                )
        try:
            with open("/etc/resolv.conf") as f:
                lines = f.read().splitlines()
        except OSError:
            lines = []
        if spec.network_mode != "host":  # a loopback resolver is not reachable from there
            lines = [
                line for line in lines if not re.match(r"^\s*nameserver\s+(127\.|::1\b)", line)
            ]
            if not any(line.strip().startswith("nameserver") for line in lines):
                lines += ["nameserver 8.8.8.8", "nameserver 8.8.4.4"]
        with open(os.path.join(state_dir, "resolv.conf"), "w") as f:
            f.write("\n".join(lines) + "\n")

    def _mount(self, container_id: str) -> None:
        target = self.rootfs(container_id)
        if os.path.ismount(target):
            return
        mounts = self.images.snapshots.mounts(container_id)
        for mount in mounts:
            try:
                mount.mount(target)
            except OSError as exc:
                raise SystemFailure(f"cannot mount the rootfs at {target}: {exc}") from None

    def _unmount(self, container_id: str) -> None:
        from berth.linux import syscalls as sc

        target = self.rootfs(container_id)
        while os.path.ismount(target):
            try:
                sc.umount2(target, sc.MNT_DETACH)
            except OSError:
                break

    def _discard(self, container_id: str) -> None:
        """Undo whatever create made; every step tolerates its part being absent."""
        self.networks.remove_container(container_id)
        self._unmount(container_id)
        if self.images.snapshots.exists(container_id):
            self.images.snapshots.remove(container_id)
        shutil.rmtree(self.bundle(container_id), ignore_errors=True)
        shutil.rmtree(self.state_dir(container_id), ignore_errors=True)
        self.db.delete(container_id)
        self._locks.pop(container_id, None)

    # ---- start, stop, kill ---------------------------------------------------------------

    async def start(self, ref: str, *, by_policy: bool = False) -> None:
        """Start; a start that fails records its error and exit code (127 not found, 126
        not executable, 128 otherwise, as dockerd) and removes an AutoRemove container
        (``docker run --rm`` waits for that)."""
        try:
            await self._start(ref, by_policy=by_policy)
        except NotModified:
            raise
        except BerthError as exc:
            try:  # NotFound: the container, or a network it names (then AutoRemove applies)
                container = self.get(ref)
            except NotFound:
                raise exc from None
            message = str(exc)
            lowered = message.lower()
            code = 128
            if "not found" in lowered or "no such file" in lowered:
                code = 127
            elif "permission denied" in lowered or "not executable" in lowered:
                code = 126
            async with self._lock(container.id):
                record = self.db.get(container.id)
                if record is not None and record["State"]["Status"] != RUNNING:
                    record["State"].update(Error=message, ExitCode=code)
                    self.db.update(container.id, record)
            if container.spec.auto_remove and container.status != RUNNING:
                with contextlib.suppress(BerthError):
                    await self.remove(container.id, force=True, volumes=True)
            raise

    async def _start(self, ref: str, *, by_policy: bool = False) -> None:
        container = self.get(ref)
        if not by_policy:
            self.restarts.cancel(container.id)
        async with self._lock(container.id):
            container = self.get(container.id)
            if container.status == RUNNING:
                raise NotModified(f"container {container.id} is already started")
            if container.status == REMOVING:
                raise Conflict(f"container {container.id} is being removed")
            if by_policy and container.data.get("ManuallyStopped"):
                return  # stopped by hand while this restart waited for the lock
            if not by_policy and container.data.pop("ManuallyStopped", None):
                self.db.update(container.id, container.data)  # a start by hand forgives
            spec = container.spec
            self._mount(container.id)
            bundle = self.bundle(container.id)
            netns_path = await self.networks.setup(container)
            config = specgen.oci_config(
                spec,
                container_id=container.id,
                rootfs=self.rootfs(container.id),
                hostname_file=os.path.join(self.state_dir(container.id), "hostname"),
                hosts_file=os.path.join(self.state_dir(container.id), "hosts"),
                resolv_file=os.path.join(self.state_dir(container.id), "resolv.conf"),
                namespace_paths={
                    **self._joined_namespaces(spec),
                    **({"network": netns_path} if netns_path else {}),
                },
                extra_env=self._link_env(container),
            )
            config["annotations"] = {"org.berth.container.name": container.name}
            runtime = self._runtime_of(spec)
            if runtime["name"] != BUILTIN_RUNTIME:
                config["ociVersion"] = OTHER_RUNTIMES_OCI_VERSION  # crun 1.8 wants 1.0.x
            tmp = os.path.join(bundle, "config.json.tmp")
            with open(tmp, "w") as f:
                json.dump(config, f)
            os.rename(tmp, os.path.join(bundle, "config.json"))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.exit_path(container.id))
            # taken before the start: a quick container can exit (and be stamped
            # FinishedAt by the monitor) before the answer arrives here
            started_at = _now()
            answer = await self.monitor.call(
                {
                    "op": "start",
                    "id": container.id,
                    "bundle": bundle,
                    "tty": spec.tty,
                    "stdin": spec.open_stdin,
                    "log_path": self.log_path(container.id) if spec.log_driver != "none" else "",
                    "log_max_size": spec.log_max_size,
                    "log_max_files": spec.log_max_files,
                    "exit_file": self.exit_path(container.id),
                    "loopback_up": spec.network_mode != "host" and not netns_path,
                    "runtime": runtime,
                }
            )
            # a stop that came while this start awaited the monitor stays in force
            current = self.db.get(container.id) or {}
            container.data.pop("ManuallyStopped", None)
            if current.get("ManuallyStopped"):
                container.data["ManuallyStopped"] = True
            container.state.update(
                Status=RUNNING,
                Running=True,
                Paused=False,
                Restarting=False,
                Pid=int(answer["pid"]),
                ExitCode=0,
                Error="",
                StartedAt=started_at,
                FinishedAt=ZERO_TIME,
            )
            self.db.update(container.id, container.data)
            self.volumes.mounted(container.id, container.spec)
            self.publish(container, "start")
            self.health.start(container.id)

    def _runtime_of(self, spec: specgen.ContainerSpec) -> dict[str, str]:
        """The runtime a start uses: the container's (checked at create), by name."""
        name = spec.runtime or self.default_runtime
        if name not in self.runtimes:
            raise InvalidArgument(f"Unknown runtime specified {name}")
        return {"name": name, "path": self.runtimes[name]}

    def _joined_namespaces(self, spec: specgen.ContainerSpec) -> dict[str, str]:
        """``container:<name>`` pid/ipc modes: the other container's namespace by path."""
        paths = {}
        for kind, mode in (("pid", spec.pid_mode), ("ipc", spec.ipc_mode)):
            if not mode.startswith("container:"):
                continue
            other = self.get(mode.split(":", 1)[1])
            if other.status != RUNNING or not other.state.get("Pid"):
                what = "PID" if kind == "pid" else "IPC"
                raise Conflict(f"cannot join {what} of a non running container: {other.id}")
            paths[kind] = f"/proc/{other.state['Pid']}/ns/{kind}"
        return paths

    def _link_env(self, container: Container) -> list[str]:
        """Legacy links' variables: ``ALIAS_NAME=/me/alias``, ``ALIAS_ENV_K=V``."""
        env: list[str] = []
        for link in container.spec.links:
            target, alias = link.split(":", 1)
            try:
                other = self.get(target)
            except NotFound:
                raise NotFound(f"Could not get container for {target}") from None
            if other.status != RUNNING:
                raise Conflict(
                    f"Cannot link to a non running container: /{other.name} AS"
                    f" /{container.name}/{alias}"
                )
            prefix = alias.upper().replace("-", "_")
            env.append(f"{prefix}_NAME=/{container.name}/{alias}")
            for item in other.spec.env:
                key, sep, value = item.partition("=")
                if sep and key not in ("HOME", "PATH"):
                    env.append(f"{prefix}_ENV_{key}={value}")
        return env

    def _future(self, container_id: str, condition: str) -> asyncio.Future[int]:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(container_id, []).append((condition, future))
        return future

    def _resolve(self, container_id: str, conditions: tuple[str, ...], code: int) -> None:
        kept = []
        for condition, future in self._waiters.get(container_id, []):
            if condition in conditions:
                if not future.done():
                    future.set_result(code)
            else:
                kept.append((condition, future))
        self._waiters[container_id] = kept

    async def kill(self, ref: str, sig: str | int | None = None) -> None:
        from berth.runtime.container import parse_signal

        container = self.get(ref)
        number = parse_signal(str(sig)) if sig not in (None, "") else int(signal.SIGKILL)
        if container.status != RUNNING:
            raise Conflict(f"Cannot kill container: {ref}: container {container.id} is not running")
        self.restarts.stopped_by_user(container.id)
        exited = self._future(container.id, "next-exit") if number == signal.SIGKILL else None
        try:
            await self.monitor.call(
                {
                    "op": "kill",
                    "id": container.id,
                    "signal": number,
                    "resume": bool(container.state.get("Paused")),
                }
            )
        except Conflict:
            raise Conflict(
                f"Cannot kill container: {ref}: container {container.id} is not running"
            ) from None
        self.publish(container, "kill", signal=str(number))
        if exited is not None:  # as dockerd: a SIGKILL answers once the exit is recorded
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(exited), 10)

    async def stop(self, ref: str, timeout: int | None = None, sig: str | None = None) -> None:
        from berth.runtime.container import parse_signal

        container = self.get(ref)
        self.restarts.stopped_by_user(container.id)
        async with self._lock(container.id):  # a start under way (a policy's) ends first
            container = self.get(container.id)
        if container.status != RUNNING:
            raise NotModified(f"container {container.id} is not running")
        spec = container.spec
        if timeout is None:
            timeout = spec.stop_timeout if spec.stop_timeout is not None else 10
        number = parse_signal(sig) if sig else specgen.stop_signal_number(spec)
        exited = self._future(container.id, "next-exit")
        with contextlib.suppress(Conflict):
            await self.monitor.call(
                {
                    "op": "kill",
                    "id": container.id,
                    "signal": number,
                    "resume": bool(container.state.get("Paused")),
                }
            )
            self.publish(container, "kill", signal=str(number))
        if timeout < 0:
            await exited
            self.publish(container, "stop")
            return
        try:
            await asyncio.wait_for(asyncio.shield(exited), timeout)
            self.publish(container, "stop")
            return
        except TimeoutError:
            pass
        with contextlib.suppress(Conflict):
            await self.monitor.call(
                {"op": "kill", "id": container.id, "signal": int(signal.SIGKILL)}
            )
            self.publish(container, "kill", signal=str(int(signal.SIGKILL)))
        try:
            await asyncio.wait_for(asyncio.shield(exited), 30)
        except TimeoutError:
            raise SystemFailure(f"container {container.id} did not exit after SIGKILL") from None
        self.publish(container, "stop")

    async def wait(self, ref: str, condition: str = "not-running") -> asyncio.Future[int]:
        """A future of the exit code; registered before this returns (the API then sends
        its headers, so a client may start the container without a race)."""
        condition = condition or "not-running"
        if condition not in ("not-running", "next-exit", "removed"):
            raise InvalidArgument(f"invalid condition {condition!r}")
        container = self.get(ref)
        future = self._future(container.id, condition)
        if condition == "not-running" and container.status != RUNNING:
            self._resolve(container.id, ("not-running",), int(container.state["ExitCode"]))
        return future

    # ---- remove --------------------------------------------------------------------------

    async def remove(self, ref: str, *, force: bool = False, volumes: bool = False) -> None:
        container = self.get(ref)
        if container.state.get("Restarting") and not force:
            raise Conflict(
                f'cannot remove container "/{container.name}": container is restarting:'
                " stop the container before removing or force remove"
            )
        self.restarts.stopped_by_user(container.id)
        if container.status == RUNNING:
            if not force:
                raise Conflict(
                    f'cannot remove container "/{container.name}": container is running:'
                    " stop the container before removing or force remove"
                )
            exited = self._future(container.id, "next-exit")
            with contextlib.suppress(Conflict):
                await self.monitor.call(
                    {"op": "kill", "id": container.id, "signal": int(signal.SIGKILL)}
                )
            try:
                await asyncio.wait_for(asyncio.shield(exited), 30)
            except TimeoutError:
                raise SystemFailure(
                    f"container {container.id} did not exit after SIGKILL"
                ) from None
        async with self._lock(container.id):
            record = self.db.get(container.id)
            if record is None:
                return  # removed meanwhile (auto-remove)
            container = Container(record)
            if container.status == RUNNING:
                raise Conflict(f"container {container.id} was started again meanwhile")
            if container.status == REMOVING:
                return
            container.state["Status"] = REMOVING
            self.db.update(container.id, container.data)
            self._discard(container.id)
            if volumes:
                self.volumes.release(container.spec)
            self.publish(container, "destroy")
        self._resolve(
            container.id, ("removed", "not-running", "next-exit"), int(container.state["ExitCode"])
        )
        self._waiters.pop(container.id, None)
        self.execs.forget(container.id)
        self.health.forget(container.id)

    def remove_link(self, ref: str) -> None:
        """``DELETE /containers/PARENT/ALIAS?link=1``: drop a legacy link, keep both."""
        parent_ref, sep, alias = ref.strip("/").rpartition("/")
        if not sep:
            raise InvalidArgument(f"Conflict, cannot remove the default link name: {ref}")
        parent = self.get(parent_ref)
        links = [link for link in parent.spec.links if link.split(":", 1)[1] != alias]
        if len(links) == len(parent.spec.links):
            raise NotFound(f"Could not find a link named {ref}")
        spec = parent.spec
        spec.links = links
        parent.data["Spec"] = spec.to_dict()
        host = parent.data.setdefault("HostConfig", {})
        host["Links"] = [
            f"/{link.split(':')[0]}:/{parent.name}/{link.split(':')[1]}" for link in links
        ] or None
        self.db.update(parent.id, parent.data)

    # ---- update and prune -----------------------------------------------------------------

    async def update(self, ref: str, body: dict[str, Any]) -> list[str]:
        """``POST /containers/{id}/update``: resources (applied live to the cgroup of a
        running container) and the restart policy; answers dockerd's warnings."""
        container = self.get(ref)
        async with self._lock(container.id):
            container = self.get(container.id)
            spec = container.spec
            host = dict(container.data.get("HostConfig") or {})
            fields = {
                "Memory": "memory",
                "MemorySwap": "memory_swap",
                "MemoryReservation": "memory_reservation",
                "CpuShares": "cpu_shares",
                "CpuPeriod": "cpu_period",
                "CpuQuota": "cpu_quota",
                "NanoCpus": "nano_cpus",
                "CpusetCpus": "cpuset_cpus",
                "CpusetMems": "cpuset_mems",
                "PidsLimit": "pids_limit",
                "BlkioWeight": "blkio_weight",
            }
            for key, attribute in fields.items():
                value = body.get(key)
                if value is None or (value == 0 and key not in ("PidsLimit",)):
                    continue
                if key in ("CpusetCpus", "CpusetMems"):
                    if not isinstance(value, str):
                        raise InvalidArgument(f"{key} must be a string")
                    value = specgen.check_cpuset(value, "cpus" if key == "CpusetCpus" else "mems")
                elif isinstance(value, bool) or not isinstance(value, int):
                    raise InvalidArgument(f"{key} must be an integer, not {value!r}")
                if key == "PidsLimit" and isinstance(value, int) and value <= 0:
                    value = 0
                setattr(spec, attribute, value)
                host[key] = value
            if body.get("Memory"):
                if spec.memory < 6 * 1024 * 1024:
                    raise InvalidArgument("minimum memory limit allowed is 6MB")
                if not body.get("MemorySwap") and 0 < spec.memory_swap < spec.memory:
                    raise InvalidArgument(
                        "Memory limit should be smaller than already set memoryswap limit,"
                        " update the memoryswap at the same time"
                    )
                if not spec.memory_swap:
                    spec.memory_swap = spec.memory * 2
                    host["MemorySwap"] = spec.memory_swap
            specgen.check_cpu(spec.nano_cpus, spec.cpu_period, spec.cpu_quota)
            policy = body.get("RestartPolicy")
            if policy and policy.get("Name") is not None:
                check = {**host, "RestartPolicy": policy}
                restarts.validate(check)
                host["RestartPolicy"] = {
                    "Name": str(policy.get("Name") or "no"),
                    "MaximumRetryCount": int(policy.get("MaximumRetryCount") or 0),
                }
            if container.status == RUNNING:
                try:
                    await self.monitor.call(
                        {"op": "update", "id": container.id, "resources": specgen.resources(spec)}
                    )
                except BerthError as exc:
                    raise InvalidArgument(
                        f"Cannot update container {container.id}: {exc}"
                    ) from None
            container.data["Spec"] = spec.to_dict()
            container.data["HostConfig"] = host
            self.db.update(container.id, container.data)
        self.publish(container, "update")
        return []

    async def prune(self, filters: dict[str, Any] | None = None) -> dict[str, Any]:
        """``POST /containers/prune``: remove every stopped container (``until``,
        ``label``, ``label!`` filters); the space is that of their writable layers."""
        filters = filters or {}

        def values(key: str) -> list[str]:
            return filter_values(filters, key)

        for key in filters:
            if key not in ("until", "label", "label!"):
                raise InvalidArgument(f"invalid filter '{key}'")
        until = [until_epoch(u) for u in values("until")]
        deleted: list[str] = []
        reclaimed = 0
        for record in self.db.all():
            container = Container(record)
            if container.status in (RUNNING, REMOVING) or container.state.get("Restarting"):
                continue
            if any(rfc3339_epoch(container.data["Created"]) >= u for u in until):
                continue
            labels = container.spec.labels
            if not all(label_matches(labels, f) for f in values("label")):
                continue
            if any(label_matches(labels, f) for f in values("label!")):
                continue
            size = self._layer_size(container.id)
            try:
                await self.remove(container.id)
            except (BerthError, OSError) as exc:  # dockerd logs and goes on, too
                print(f"berthd: prune: {container.id[:12]}: {exc}", file=sys.stderr, flush=True)
                continue
            deleted.append(container.id)
            reclaimed += size
        self.events.publish("container", "prune", "", {"reclaimed": str(reclaimed)})
        return {"ContainersDeleted": deleted or None, "SpaceReclaimed": reclaimed}

    def _layer_size(self, container_id: str) -> int:
        try:
            return int(self.images.snapshots.usage(container_id)[0])
        except (BerthError, OSError, KeyError, IndexError):
            return 0

    # ---- attach and logs -------------------------------------------------------------------

    async def attach(
        self, ref: str, *, stdin: bool, stdout: bool, stderr: bool
    ) -> tuple[Container, asyncio.StreamReader, asyncio.StreamWriter]:
        container = self.get(ref)
        spec = container.spec
        reader, writer = await self.monitor.stream(
            {
                "op": "attach",
                "id": container.id,
                "stdin": stdin and spec.open_stdin,
                "stdout": stdout,
                "stderr": stderr,
                "close_stdin": spec.stdin_once,
            }
        )
        return container, reader, writer

    async def logs(
        self,
        ref: str,
        *,
        follow: bool = False,
        tail: str = "all",
        since: float = 0,
        until: float = 0,
    ) -> AsyncIterator[tuple[str, str, str]]:
        """(stream, text, time) entries of the container's json-file log."""
        container = self.get(ref)
        if container.spec.log_driver == "none":
            raise InvalidArgument(
                'configured logging driver does not support reading: driver "none"'
            )
        path = self.log_path(container.id)
        since_stamp = jsonlog.rfc3339nano(int(since * 1e9)) if since else ""
        until_stamp = jsonlog.rfc3339nano(int(until * 1e9)) if until else ""

        def wanted(entry: tuple[str, str, str]) -> bool:
            return (not since_stamp or entry[2] > since_stamp) and (
                not until_stamp or entry[2] <= until_stamp
            )

        if not follow:
            entries = [e for e in jsonlog.read_entries(path) if wanted(e)]
            if tail not in ("", "all"):
                count = int(tail)
                entries = entries[-count:] if count > 0 else []
            for entry in entries:
                yield entry
            return
        async for entry in self._follow(container.id, path, tail, wanted):
            yield entry

    async def _follow(
        self, container_id: str, path: str, tail: str, wanted: Any
    ) -> AsyncIterator[tuple[str, str, str]]:
        # What is there now: the rotated files whole, then the current one, tracked by inode.
        files = jsonlog.log_files(path)
        older = [e for name in files[:-1] for e in _entries_of(name)]
        handle = None
        with contextlib.suppress(FileNotFoundError):
            handle = open(path, "rb")  # noqa: SIM115
        current: list[tuple[str, str, str]] = []
        pending = b""
        if handle is not None:
            for line in handle:
                if line.endswith(b"\n"):
                    parsed = jsonlog.parse_line(line)
                    if parsed:
                        current.append(parsed)
                else:
                    pending = line
        backlog = [e for e in older + current if wanted(e)]
        if tail not in ("", "all"):
            count = int(tail)
            backlog = backlog[-count:] if count > 0 else []
        for entry in backlog:
            yield entry
        try:
            while True:
                record = self.db.get(container_id)
                running = record is not None and record["State"]["Status"] == RUNNING
                got = False
                if handle is None:
                    with contextlib.suppress(FileNotFoundError):
                        handle = open(path, "rb")  # noqa: SIM115
                if handle is not None:
                    for line in handle:
                        line = pending + line
                        pending = b""
                        if not line.endswith(b"\n"):
                            pending = line
                            break
                        parsed = jsonlog.parse_line(line)
                        if parsed and wanted(parsed):
                            got = True
                            yield parsed
                    try:
                        rotated = os.stat(path).st_ino != os.fstat(handle.fileno()).st_ino
                    except FileNotFoundError:
                        rotated = True
                    if rotated:
                        handle.close()
                        handle = None
                        pending = b""
                        continue
                if not running and not got:
                    return
                if not got:
                    await asyncio.sleep(0.1)
        finally:
            if handle is not None:
                handle.close()

    # ---- inspect and list ------------------------------------------------------------------

    def inspect(self, ref: str) -> dict[str, Any]:
        container = self.get(ref)
        spec = container.spec
        data = container.data
        state_dir = self.state_dir(container.id)
        config = dict(data.get("Config") or {})
        config.update(
            Hostname=spec.hostname or container.id[:12],
            Domainname=spec.domainname,
            User=spec.user,
            AttachStdin=bool(config.get("AttachStdin")),
            AttachStdout=bool(config.get("AttachStdout")),
            AttachStderr=bool(config.get("AttachStderr")),
            Tty=spec.tty,
            OpenStdin=spec.open_stdin,
            StdinOnce=spec.stdin_once,
            Env=spec.env,
            Cmd=spec.cmd or None,
            Image=spec.image,
            Volumes=config.get("Volumes"),
            WorkingDir=spec.working_dir,
            Entrypoint=spec.entrypoint or None,
            OnBuild=None,
            Labels=spec.labels,
            StopSignal=spec.stop_signal,
        )
        given = dict(data.get("HostConfig") or {})
        log_options = ((given.get("LogConfig") or {}).get("Config")) or {}
        host_config = {
            **_default_host_config(),
            **given,  # what the client sent, as sent (Isolation, VolumeDriver, ...)
            "Binds": given.get("Binds"),
            "Mounts": given.get("Mounts"),
            "Tmpfs": given.get("Tmpfs"),
            "NetworkMode": "bridge" if spec.network_mode == "bridge" else spec.network_mode,
            "AutoRemove": spec.auto_remove,
            "LogConfig": {"Type": spec.log_driver, "Config": dict(log_options)},
            "RestartPolicy": dict(
                zip(("Name", "MaximumRetryCount"), restarts.policy_of(data), strict=True)
            ),
            "Memory": spec.memory,
            "MemorySwap": spec.memory_swap,
            "MemoryReservation": spec.memory_reservation,
            "MemorySwappiness": spec.memory_swappiness if spec.memory_swappiness >= 0 else None,
            "NanoCpus": spec.nano_cpus,
            "CpuShares": spec.cpu_shares,
            "CpuPeriod": spec.cpu_period,
            "CpuQuota": spec.cpu_quota,
            "CpusetCpus": spec.cpuset_cpus,
            "CpusetMems": spec.cpuset_mems,
            "BlkioWeight": spec.blkio_weight,
            "PidsLimit": spec.pids_limit or None,
            "OomKillDisable": spec.oom_kill_disable,
            "OomScoreAdj": spec.oom_score_adj,
            "CapAdd": spec.cap_add or None,
            "CapDrop": spec.cap_drop or None,
            "GroupAdd": spec.group_add or None,
            "PidMode": spec.pid_mode,
            "IpcMode": spec.ipc_mode or "private",
            "UTSMode": spec.uts_mode,
            "CgroupnsMode": spec.cgroupns_mode or "host",
            "Devices": spec.devices,
            "DeviceCgroupRules": spec.device_cgroup_rules or None,
            "Ulimits": spec.ulimits or None,
            "Privileged": spec.privileged,
            "ReadonlyRootfs": spec.readonly_rootfs,
            "SecurityOpt": given.get("SecurityOpt"),
            "ShmSize": spec.shm_size,
            **self.networks.host_config(container),
            "Runtime": spec.runtime or self.default_runtime,
            "Init": True if spec.init else given.get("Init"),
        }
        args = spec.args
        state = dict(container.state)
        state["Status"] = _display_status(container)
        if (health := self.health.inspect(container.id)) is not None:
            state["Health"] = health
        return {
            "Id": container.id,
            "Created": data["Created"],
            "Path": args[0] if args else "",
            "Args": args[1:],
            "State": state,
            "Image": spec.image_id,
            "ResolvConfPath": os.path.join(state_dir, "resolv.conf"),
            "HostnamePath": os.path.join(state_dir, "hostname"),
            "HostsPath": os.path.join(state_dir, "hosts"),
            "LogPath": self.log_path(container.id),
            "Name": "/" + container.name,
            "RestartCount": data.get("RestartCount", 0),
            "Driver": "overlay",
            "Platform": "linux",
            "MountLabel": "",
            "ProcessLabel": "",
            "AppArmorProfile": "",
            "ExecIDs": self.execs.ids_of(container.id) or None,
            "HostConfig": host_config,
            "GraphDriver": {"Name": "overlay", "Data": None},
            "Mounts": mount_points(spec),
            "Config": config,
            "NetworkSettings": self._with_mac(self.networks.settings(container), spec),
            "Warnings": spec.warnings or None,
        }

    @staticmethod
    def _with_mac(settings: dict[str, Any], spec: specgen.ContainerSpec) -> dict[str, Any]:
        """A MAC address given at create is what inspect shows (the network side may
        not have assigned one)."""
        if spec.mac_address:
            settings = dict(settings)
            settings["MacAddress"] = spec.mac_address
        return settings

    @staticmethod
    def _network_settings(spec: specgen.ContainerSpec) -> dict[str, Any]:
        name = "none" if spec.network_mode == "none" else spec.network_mode
        return {
            "Bridge": "",
            "SandboxID": "",
            "Ports": {},
            "SandboxKey": "",
            "Networks": {
                name: {
                    "NetworkID": "",
                    "EndpointID": "",
                    "Gateway": "",
                    "IPAddress": "",
                    "IPPrefixLen": 0,
                    "MacAddress": "",
                }
            },
        }

    def list(
        self, *, all: bool = False, filters: dict[str, Any] | None = None, limit: int = -1
    ) -> list[dict[str, Any]]:
        filters = filters or {}
        result = []
        now = time.time()
        for record in self.db.all():
            container = Container(record)
            status = container.status
            if status == REMOVING:
                continue
            restarting = bool(container.state.get("Restarting"))
            if not all and status != RUNNING and not restarting and "status" not in filters:
                continue
            if not _matches(container, filters):
                continue
            if not self.health.matches(container.id, filters):
                continue
            spec = container.spec
            state = container.state
            if status == RUNNING:
                text = "Up " + human_duration(now - rfc3339_epoch(state["StartedAt"]))
                if state.get("Paused"):
                    text += " (Paused)"
                else:
                    text += self.health.ps_suffix(container.id)
            elif state.get("Restarting"):
                ago = human_duration(now - rfc3339_epoch(state["FinishedAt"]))
                text = f"Restarting ({state['ExitCode']}) {ago} ago"
            elif status == EXITED:
                ago = human_duration(now - rfc3339_epoch(state["FinishedAt"]))
                text = f"Exited ({state['ExitCode']}) {ago} ago"
            else:
                text = "Created"
            result.append(
                {
                    "Id": container.id,
                    "Names": ["/" + container.name],
                    "Image": spec.image,
                    "ImageID": spec.image_id,
                    "Command": " ".join(spec.args),
                    "Created": int(rfc3339_epoch(container.data["Created"])),
                    "Ports": self.networks.port_list(container),
                    "Labels": spec.labels,
                    "State": _display_status(container),
                    "Status": text,
                    "HostConfig": {"NetworkMode": spec.network_mode},
                    "NetworkSettings": {"Networks": self.networks.settings(container)["Networks"]},
                    "Mounts": mount_points(spec),
                }
            )
            if 0 < limit <= len(result):
                break
        return result

    def counts(self) -> dict[str, int]:
        counts = {
            "Containers": 0,
            "ContainersRunning": 0,
            "ContainersPaused": 0,
            "ContainersStopped": 0,
        }
        for record in self.db.all():
            counts["Containers"] += 1
            if record["State"].get("Paused"):
                counts["ContainersPaused"] += 1
            elif record["State"]["Status"] == RUNNING:
                counts["ContainersRunning"] += 1
            else:
                counts["ContainersStopped"] += 1
        return counts


def _default_host_config() -> dict[str, Any]:
    """dockerd's HostConfig fields for what a client did not set."""
    return {
        "ContainerIDFile": "",
        "PortBindings": {},
        "VolumeDriver": "",
        "VolumesFrom": None,
        "ConsoleSize": [0, 0],
        "Cgroup": "",
        "CgroupParent": "",
        "Dns": [],
        "DnsOptions": [],
        "DnsSearch": [],
        "ExtraHosts": None,
        "Links": None,
        "PublishAllPorts": False,
        "UsernsMode": "",
        "Isolation": "",
        "BlkioWeightDevice": [],
        "BlkioDeviceReadBps": None,
        "BlkioDeviceWriteBps": None,
        "BlkioDeviceReadIOps": None,
        "BlkioDeviceWriteIOps": None,
        "CpuRealtimePeriod": 0,
        "CpuRealtimeRuntime": 0,
        "DeviceRequests": None,
        "KernelMemory": 0,
        "KernelMemoryTCP": 0,
        "CpuCount": 0,
        "CpuPercent": 0,
        "IOMaximumIOps": 0,
        "IOMaximumBandwidth": 0,
        "MaskedPaths": list(specgen.MASKED_PATHS),
        "ReadonlyPaths": list(specgen.READONLY_PATHS),
    }


def _display_status(container: Container) -> str:
    """Docker's State.Status: paused and restarting are flags in the record."""
    state = container.state
    if state.get("Paused") and container.status == RUNNING:
        return "paused"
    if state.get("Restarting"):
        return "restarting"
    return container.status


def _entries_of(name: str) -> list[tuple[str, str, str]]:
    entries = []
    try:
        with open(name, "rb") as f:
            for line in f:
                if line.endswith(b"\n"):
                    parsed = jsonlog.parse_line(line)
                    if parsed:
                        entries.append(parsed)
    except FileNotFoundError:
        pass
    return entries


def _matches(container: Container, filters: dict[str, Any]) -> bool:
    """Docker's list filters: id, name, status, label, ancestor (the rest: ignored)."""

    def values(key: str) -> list[str]:
        return filter_values(filters, key)

    if (ids := values("id")) and not any(container.id.startswith(i) for i in ids):
        return False
    if (names := values("name")) and not any(
        re.search(n.removeprefix("/"), container.name) for n in names
    ):
        return False
    if (statuses := values("status")) and _display_status(container) not in statuses:
        return False
    spec = container.spec
    for label in values("label"):
        key, eq, value = label.partition("=")
        if key not in spec.labels or (eq and spec.labels[key] != value):
            return False
    ancestors = values("ancestor")
    return not ancestors or any(
        a in (spec.image, spec.image_id) or spec.image_id.startswith("sha256:" + a)
        for a in ancestors
    )
