"""Named and anonymous volumes (the ``local`` driver), and the Mounts inspect shows.

A volume is a folder ``<root>/volumes/<name>/`` holding ``_data`` (what containers
mount, Docker's layout) and ``volume.json`` (driver, labels, options, creation time,
whether it is anonymous). A volume is created whole or not at all: it is made under
a temporary name and renamed into place. Whether a volume is in use is derived from
the container records (any state), never stored.

At container create, :meth:`VolumeService.attach` makes the volumes a spec names
(named ones on first use, anonymous ones with a random name), fills in their host
paths, and copies the image's content at the mount point into a volume that is
still empty, as Docker does (unless ``nocopy``).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
from typing import Any

from berth.engine import jsonlog
from berth.engine.events import EventBus
from berth.engine.filters import values as _filter_values
from berth.engine.specgen import VOLUME_NAME, ContainerSpec, Mount
from berth.engine.state import EngineDB
from berth.errors import Conflict, InvalidArgument, NotFound, SystemFailure

META = "volume.json"
ANONYMOUS_LABEL = "com.docker.volume.anonymous"


def _size(path: str) -> int:
    """Bytes of the files under ``path`` as Docker counts a volume (moby's
    ``directory.Size``): apparent sizes, folders not counted, hard links once."""
    from berth.engine.system import content_size

    return content_size(path)


def _labels_match(labels: dict[str, str], wanted: list[str]) -> bool:
    for label in wanted:
        key, eq, value = label.partition("=")
        if key not in labels or (eq and labels[key] != value):
            return False
    return True


class VolumeService:
    def __init__(self, root: str, db: EngineDB, events: EventBus | None = None) -> None:
        self.base = os.path.join(root, "volumes")
        self.events = events or EventBus()
        self.db = db
        os.makedirs(self.base, mode=0o701, exist_ok=True)
        for name in os.listdir(self.base):  # a create cut short leaves only these
            if name.startswith(".tmp-"):
                shutil.rmtree(os.path.join(self.base, name), ignore_errors=True)

    # ---- paths and records ------------------------------------------------------------

    def path(self, name: str) -> str:
        return os.path.join(self.base, name)

    def data_path(self, name: str) -> str:
        return os.path.join(self.base, name, "_data")

    def _meta(self, name: str) -> dict[str, Any] | None:
        if not VOLUME_NAME.fullmatch(name):
            return None
        try:
            with open(os.path.join(self.path(name), META)) as f:
                meta: dict[str, Any] = json.load(f)
        except (OSError, ValueError):
            return None
        return meta

    def _view(self, name: str, meta: dict[str, Any]) -> dict[str, Any]:
        """Docker's Volume object."""
        return {
            "Name": name,
            "Driver": "local",
            "Mountpoint": self.data_path(name),
            "CreatedAt": meta.get("CreatedAt", ""),
            "Labels": meta.get("Labels") or None,
            "Scope": "local",
            "Options": meta.get("Options") or None,
        }

    def names(self) -> list[str]:
        return sorted(n for n in os.listdir(self.base) if self._meta(n) is not None)

    def users(self) -> dict[str, list[str]]:
        """Volume name -> ids of the containers (any state) that mount it."""
        found: dict[str, list[str]] = {}
        for record in self.db.all():
            spec = record.get("Spec") or {}
            for mount in spec.get("mounts") or []:
                if mount.get("type") == "volume" and mount.get("name"):
                    found.setdefault(mount["name"], []).append(str(record["Id"]))
        return found

    # ---- the API's operations -----------------------------------------------------------

    def create(
        self,
        name: str = "",
        *,
        driver: str = "",
        labels: dict[str, str] | None = None,
        driver_opts: dict[str, str] | None = None,
        anonymous: bool = False,
    ) -> dict[str, Any]:
        """Make a volume, or answer the existing one of that name (as Docker does)."""
        if driver not in ("", "local"):
            raise InvalidArgument(f"volume driver {driver!r} is not supported: use local")
        if driver_opts:
            raise InvalidArgument(
                f"volume driver options are not supported yet: {sorted(driver_opts)}"
            )
        if labels is not None and (
            not isinstance(labels, dict)
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items())
        ):
            raise InvalidArgument("volume Labels must be an object of strings")
        if name and not VOLUME_NAME.fullmatch(name):
            raise InvalidArgument(
                f"invalid volume name {name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
            )
        if not name:  # an unnamed volume is anonymous (moby's VolumesService.Create)
            name = secrets.token_hex(32)
            anonymous = True
        existing = self._meta(name)
        if existing is not None:
            return self._view(name, existing)
        all_labels = dict(labels or {})
        if anonymous:
            all_labels[ANONYMOUS_LABEL] = ""
        meta = {
            "CreatedAt": jsonlog.rfc3339nano().split(".")[0].rstrip("Z") + "Z",
            "Labels": all_labels,
            "Options": {},
            "Anonymous": anonymous,
        }
        tmp = os.path.join(self.base, f".tmp-{name}-{secrets.token_hex(4)}")
        try:
            os.makedirs(os.path.join(tmp, "_data"), mode=0o755)
            os.chmod(tmp, 0o701)
            with open(os.path.join(tmp, META), "w") as f:
                json.dump(meta, f)
            os.rename(tmp, self.path(name))
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            again = self._meta(name)  # made meanwhile
            if again is not None:
                return self._view(name, again)
            raise SystemFailure(f"cannot create volume {name}: {exc}") from None
        self.events.publish("volume", "create", name, {"driver": "local"})
        return self._view(name, meta)

    def get(self, name: str) -> dict[str, Any]:
        meta = self._meta(name)
        if meta is None:
            raise NotFound(f"get {name}: no such volume")
        return self._view(name, meta)

    def list_volumes(self, filters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Filters: ``name`` (substring), ``label``, ``dangling``, ``driver``."""
        filters = filters or {}
        users = self.users()
        dangling = _filter_values(filters, "dangling")
        for value in dangling:
            if value not in ("true", "false", "1", "0"):
                raise InvalidArgument(f"invalid filter 'dangling={value}': use true or false")
        result = []
        for name in self.names():
            view = self.get(name)
            if (wanted := _filter_values(filters, "name")) and not any(w in name for w in wanted):
                continue
            if not _labels_match(view["Labels"] or {}, _filter_values(filters, "label")):
                continue
            if (drivers := _filter_values(filters, "driver")) and "local" not in drivers:
                continue
            if dangling and (name not in users) != (dangling[-1] in ("true", "1")):
                continue
            result.append(view)
        return result

    def remove(self, name: str, *, force: bool = False) -> None:
        """Refused while any container mounts it; ``force`` forgives only absence."""
        if self._meta(name) is None:
            if force:
                return
            raise NotFound(f"get {name}: no such volume")
        using = self.users().get(name)
        if using:
            raise Conflict(
                f"remove {name}: volume is in use - [{', '.join(using)}]:"
                " remove those containers first"
            )
        self._delete(name)

    def _delete(self, name: str) -> None:
        # Renamed first, so a half-deleted volume is never seen (nor mounted) again.
        doomed = os.path.join(self.base, f".tmp-rm-{name}-{secrets.token_hex(4)}")
        try:
            os.rename(self.path(name), doomed)
        except FileNotFoundError:
            return
        shutil.rmtree(doomed, ignore_errors=True)
        self.events.publish("volume", "destroy", name, {"driver": "local"})

    def prune(self, filters: dict[str, Any] | None = None) -> tuple[list[str], int]:
        """Remove unused volumes: anonymous ones only, unless ``all=true`` (API 1.42+)."""
        filters = filters or {}
        for key in filters:
            if key not in ("label", "label!", "all"):
                raise InvalidArgument(f"invalid filter '{key}'")
        every = any(v in ("true", "1") for v in _filter_values(filters, "all"))
        labels = _filter_values(filters, "label")
        not_labels = _filter_values(filters, "label!")
        users = self.users()
        deleted: list[str] = []
        reclaimed = 0
        for name in self.names():
            meta = self._meta(name) or {}
            if name in users or (not every and not meta.get("Anonymous")):
                continue
            own = meta.get("Labels") or {}
            if not _labels_match(own, labels):
                continue
            if not_labels and any(_labels_match(own, [label]) for label in not_labels):
                continue
            reclaimed += _size(self.data_path(name))
            self._delete(name)
            deleted.append(name)
        self.events.publish("volume", "prune", "", {"reclaimed": str(reclaimed)})
        return deleted, reclaimed

    def usage(self) -> list[dict[str, Any]]:
        """``/system/df``'s volumes: each with ``UsageData`` (bytes on disk, users)."""
        users = self.users()
        result = []
        for name in self.names():
            meta = self._meta(name)
            if meta is None:
                continue
            view = self._view(name, meta)
            view["UsageData"] = {
                "Size": _size(self.data_path(name)),
                "RefCount": len(users.get(name, [])),
            }
            result.append(view)
        return result

    # ---- events of containers' use ------------------------------------------------------

    def mounted(self, container_id: str, spec: ContainerSpec) -> None:
        """Docker's ``volume mount`` events, one per volume, as the container starts."""
        for mount in spec.mounts:
            if mount.type == "volume" and mount.name:
                attributes = {
                    "container": container_id,
                    "destination": mount.destination,
                    "driver": "local",
                    "propagation": "",
                    "read/write": "false" if mount.readonly else "true",
                }
                self.events.publish("volume", "mount", mount.name, attributes)

    def unmounted(self, container_id: str, spec: ContainerSpec) -> None:
        """Docker's ``volume unmount`` events, once the container has stopped."""
        for mount in spec.mounts:
            if mount.type == "volume" and mount.name:
                attributes = {"container": container_id, "driver": "local"}
                self.events.publish("volume", "unmount", mount.name, attributes)

    # ---- containers' side -----------------------------------------------------------------

    def attach(self, spec: ContainerSpec, rootfs: str) -> None:
        """Make the spec's volumes, set their host paths, copy the image's content into
        empty ones. On failure, the anonymous volumes made here are removed again."""
        made: list[str] = []
        try:
            for mount in spec.mounts:
                if mount.type != "volume":
                    continue
                if not mount.name:
                    mount.name = secrets.token_hex(32)
                    mount.anonymous = True
                if self._meta(mount.name) is None:
                    self.create(mount.name, anonymous=mount.anonymous)
                    made.append(mount.name)
                mount.source = self.data_path(mount.name)
                if mount.copy_up:
                    self._copy_up(mount, rootfs)
        except BaseException:
            for name in made:
                with contextlib.suppress(OSError):
                    self._delete(name)
            raise

    def _copy_up(self, mount: Mount, rootfs: str) -> None:
        from berth.runtime.rootfs import secure_join

        source = secure_join(rootfs, mount.destination)
        if not os.path.isdir(source) or os.path.islink(source):
            return
        target = mount.source
        if os.listdir(target) or not os.listdir(source):
            return
        st = os.stat(source)
        os.chown(target, st.st_uid, st.st_gid)
        os.chmod(target, st.st_mode & 0o7777)
        result = subprocess.run(
            ["cp", "-a", "--", source + "/.", target + "/"],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            message = result.stderr.strip().splitlines()[-1:] or ["cp failed"]
            raise SystemFailure(
                f"cannot copy the image's {mount.destination} into volume {mount.name}:"
                f" {message[0]}"
            )

    def release(self, spec: ContainerSpec) -> None:
        """After a container is gone (``rm -v``, ``--rm``): its anonymous volumes that no
        other container mounts."""
        users = self.users()
        for mount in spec.mounts:
            if mount.type == "volume" and mount.anonymous and mount.name not in users:
                meta = self._meta(mount.name)
                if meta is not None and meta.get("Anonymous"):
                    self._delete(mount.name)


def mount_points(spec: ContainerSpec) -> list[dict[str, Any]]:
    """Inspect's (and ps's) ``Mounts`` of a container."""
    points = []
    for mount in spec.mounts:
        if mount.type == "volume":
            points.append(
                {
                    "Type": "volume",
                    "Name": mount.name,
                    "Source": mount.source,
                    "Destination": mount.destination,
                    "Driver": "local",
                    "Mode": "z" if not mount.readonly else "ro",
                    "RW": not mount.readonly,
                    "Propagation": "",
                }
            )
        elif mount.type == "tmpfs":
            points.append(
                {
                    "Type": "tmpfs",
                    "Source": "",
                    "Destination": mount.destination,
                    "Mode": ",".join(mount.options),
                    "RW": not mount.readonly,
                    "Propagation": "",
                }
            )
        else:
            points.append(
                {
                    "Type": "bind",
                    "Source": mount.source,
                    "Destination": mount.destination,
                    "Mode": "ro" if mount.readonly else "",
                    "RW": not mount.readonly,
                    "Propagation": mount.propagation,
                }
            )
    return points
