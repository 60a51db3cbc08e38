"""The runtime's record of each container: ``<root>/<id>/state.json`` and its exec fifo.

Status is never stored, it is derived: a container is *created* while its init waits
on the exec fifo, *running* once the fifo is gone and the init lives, *paused* while
its freezer holds it, and *stopped* when the init is gone (or a zombie). The init's
start time is kept beside its pid so a recycled pid is never mistaken for it.
"""

from __future__ import annotations

import json
import os

from berth.errors import Conflict, NotFound

# typing costs milliseconds to import on every container start: types only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEFAULT_ROOT = "/run/berth-runtime"
FIFO_NAME = "exec.fifo"


class ContainerState:
    """What the runtime keeps about one container (a plain class: dataclasses cost
    milliseconds to import on every start)."""

    FIELDS = (
        "id",
        "bundle",
        "rootfs",
        "pid",
        "pid_start",
        "created",
        "owner",
        "annotations",
        "cgroup_paths",
        "config",
    )

    def __init__(
        self,
        id: str,
        bundle: str,
        rootfs: str,
        pid: int = 0,
        pid_start: int = 0,
        created: str = "",
        owner: str = "",
        annotations: dict[str, str] | None = None,
        cgroup_paths: dict[str, str] | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.id = id
        self.bundle = bundle
        self.rootfs = rootfs
        self.pid = pid
        self.pid_start = pid_start
        self.created = created
        self.owner = owner
        self.annotations = annotations or {}
        self.cgroup_paths = cgroup_paths or {}
        self.config = config or {}

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.FIELDS}


class StateStore:
    """One directory per container under ``root``; writes are atomic renames."""

    def __init__(self, root: str = DEFAULT_ROOT) -> None:
        self.root = root

    def dir(self, container_id: str) -> str:
        return os.path.join(self.root, container_id)

    def fifo(self, container_id: str) -> str:
        return os.path.join(self.dir(container_id), FIFO_NAME)

    def reserve(self, container_id: str) -> str:
        """Create the container's directory; a second create of the same id fails here."""
        os.makedirs(self.root, mode=0o711, exist_ok=True)
        path = self.dir(container_id)
        try:
            os.mkdir(path, 0o711)
        except FileExistsError:
            raise Conflict(f"container with id {container_id!r} already exists") from None
        return path

    def save(self, state: ContainerState) -> None:
        path = os.path.join(self.dir(state.id), "state.json")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(state.to_dict(), f)
        os.rename(tmp, path)

    def load(self, container_id: str) -> ContainerState:
        path = os.path.join(self.dir(container_id), "state.json")
        try:
            with open(path) as f:
                data = json.load(f)
        except FileNotFoundError:
            raise NotFound(f"container {container_id!r} does not exist") from None
        except ValueError:
            raise NotFound(f"container {container_id!r} has a damaged state file {path}") from None
        return ContainerState(**{k: data[k] for k in ContainerState.FIELDS if k in data})

    def ids(self) -> list[str]:
        try:
            names = sorted(os.listdir(self.root))
        except FileNotFoundError:
            return []
        return [n for n in names if os.path.exists(os.path.join(self.root, n, "state.json"))]

    def remove(self, container_id: str) -> None:
        """Remove the container's directory: a few flat files (shutil costs an import)."""
        path = self.dir(container_id)
        try:
            names = os.listdir(path)
        except FileNotFoundError:
            return
        for name in names:
            try:
                os.unlink(os.path.join(path, name))
            except FileNotFoundError:
                pass
        try:
            os.rmdir(path)
        except FileNotFoundError:
            pass


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat, or None when the process is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rindex(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def init_alive(state: ContainerState) -> bool:
    return state.pid > 0 and process_start_time(state.pid) == state.pid_start
