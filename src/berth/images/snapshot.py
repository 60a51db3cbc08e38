"""The overlay snapshotter: layers unpacked once, shared by every image and container.

containerd's vocabulary: a *key* names an active (writable) snapshot, a *name* a
committed one, and a *parent* is always committed. Committed layer snapshots are
named by their ChainID, so two images with a common base share its snapshots.

The snapshotter returns mounts rather than mounting: a container's root is an
overlay whose lower directories are the committed chain (nearest first) and whose
upper directory is the active snapshot's ``fs``. Layers are unpacked straight into
an active snapshot's ``fs`` with overlay-style whiteouts (see ``layer.apply_layer``)
and then committed: no mount is needed to unpack.

Metadata is one SQLite file (WAL); directories are ``snapshots/<n>/fs`` with short
numeric names, which keeps overlay's option string (a page) short for deep images.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time

from berth.errors import Conflict, NotFound, SystemFailure
from berth.images.db import ThreadLocalDB
from berth.linux import syscalls as sc

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

ACTIVE, COMMITTED, VIEW = "active", "committed", "view"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    parent TEXT REFERENCES snapshots(key),
    created REAL NOT NULL,
    labels TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots(parent);
"""


class Mount:
    """One mount(2) call, as containerd describes it."""

    def __init__(self, type: str, source: str, options: list[str]) -> None:
        self.type = type
        self.source = source
        self.options = options

    def mount(self, target: str) -> None:
        flags = 0
        data = []
        for option in self.options:
            if option == "ro":
                flags |= sc.MS_RDONLY
            elif option in ("bind", "rbind"):
                flags |= sc.MS_BIND | (sc.MS_REC if option == "rbind" else 0)
            else:
                data.append(option)
        if self.type == "bind":
            sc.mount(self.source, target, None, flags & (sc.MS_BIND | sc.MS_REC))
            if flags & sc.MS_RDONLY:
                sc.mount(None, target, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY)
            return
        sc.mount(self.source, target, self.type, flags, ",".join(data))

    def to_dict(self) -> dict[str, object]:
        return {"type": self.type, "source": self.source, "options": list(self.options)}

    def __repr__(self) -> str:
        return f"Mount({self.type!r}, {self.source!r}, {self.options!r})"


class SnapshotInfo:
    def __init__(self, id: int, key: str, kind: str, parent: str | None, created: float,
                 labels: dict[str, str]) -> None:  # fmt: skip
        self.id = id
        self.key = key
        self.kind = kind
        self.parent = parent
        self.created = created
        self.labels = labels


class Snapshotter:
    def __init__(self, root: str) -> None:
        self.root = root
        os.makedirs(os.path.join(root, "snapshots"), mode=0o700, exist_ok=True)
        self._meta = ThreadLocalDB(os.path.join(root, "metadata.db"), _SCHEMA)

    @property
    def _db(self) -> sqlite3.Connection:
        return self._meta.connection()

    def close(self) -> None:
        self._meta.close()

    # ---- queries ------------------------------------------------------------------

    def _row(self, key: str) -> SnapshotInfo | None:
        row = self._db.execute(
            "SELECT id, key, kind, parent, created, labels FROM snapshots WHERE key = ?", (key,)
        ).fetchone()
        if row is None:
            return None
        return SnapshotInfo(row[0], row[1], row[2], row[3], row[4], json.loads(row[5]))

    def stat(self, key: str) -> SnapshotInfo:
        info = self._row(key)
        if info is None:
            raise NotFound(f"snapshot {key!r} does not exist")
        return info

    def exists(self, key: str) -> bool:
        return self._row(key) is not None

    def walk(self) -> Iterator[SnapshotInfo]:
        for row in self._db.execute(
            "SELECT id, key, kind, parent, created, labels FROM snapshots ORDER BY id"
        ).fetchall():
            yield SnapshotInfo(row[0], row[1], row[2], row[3], row[4], json.loads(row[5]))

    def children(self, key: str) -> list[str]:
        return [
            r[0] for r in self._db.execute("SELECT key FROM snapshots WHERE parent = ?", (key,))
        ]

    def fs_path(self, key: str) -> str:
        """The directory holding the snapshot's own content (for unpacking, diffs)."""
        return self._dir(self.stat(key).id, "fs")

    def _dir(self, snapshot_id: int, sub: str = "") -> str:
        path = os.path.join(self.root, "snapshots", str(snapshot_id))
        return os.path.join(path, sub) if sub else path

    def _chain(self, parent: str | None) -> list[str]:
        """The fs directories of ``parent`` and its ancestors, nearest first."""
        dirs = []
        while parent is not None:
            info = self.stat(parent)
            if info.kind != COMMITTED:
                raise Conflict(f"snapshot {parent!r} is not committed and cannot be a parent")
            dirs.append(self._dir(info.id, "fs"))
            parent = info.parent
        return dirs

    # ---- changes ------------------------------------------------------------------

    def _create(
        self, key: str, parent: str | None, kind: str, labels: dict[str, str] | None
    ) -> SnapshotInfo:
        if parent is not None:
            self._chain(parent)  # exists and committed
        try:
            cursor = self._db.execute(
                "INSERT INTO snapshots (key, kind, parent, created, labels) VALUES (?, ?, ?, ?, ?)",
                (key, kind, parent, time.time(), json.dumps(labels or {})),
            )
        except sqlite3.IntegrityError:
            raise Conflict(f"snapshot {key!r} already exists") from None
        snapshot_id = int(cursor.lastrowid or 0)
        try:
            os.makedirs(self._dir(snapshot_id, "fs"), mode=0o755)
            if kind == ACTIVE:
                os.makedirs(self._dir(snapshot_id, "work"), mode=0o700)
        except OSError as exc:
            self._db.execute("DELETE FROM snapshots WHERE id = ?", (snapshot_id,))
            _remove_tree(self._dir(snapshot_id))
            raise SystemFailure(f"cannot create snapshot {key!r}: {exc.strerror}") from None
        return self.stat(key)

    def prepare(
        self, key: str, parent: str | None = None, labels: dict[str, str] | None = None
    ) -> list[Mount]:
        """A new writable snapshot on top of ``parent``; returns how to mount it."""
        self._create(key, parent, ACTIVE, labels)
        return self.mounts(key)

    def view(
        self, key: str, parent: str | None = None, labels: dict[str, str] | None = None
    ) -> list[Mount]:
        """A read-only view of ``parent`` (for export, copy-out, history)."""
        self._create(key, parent, VIEW, labels)
        return self.mounts(key)

    def mounts(self, key: str) -> list[Mount]:
        info = self.stat(key)
        lower = self._chain(info.parent)
        if info.kind == COMMITTED:
            raise Conflict(f"snapshot {key!r} is committed: prepare or view a child to mount it")
        if info.kind == VIEW:
            if not lower:
                return [Mount("bind", self._dir(info.id, "fs"), ["rbind", "ro"])]
            if len(lower) == 1:
                return [Mount("bind", lower[0], ["rbind", "ro"])]
            return [Mount("overlay", "overlay", ["lowerdir=" + ":".join(lower)])]
        if not lower:
            return [Mount("bind", self._dir(info.id, "fs"), ["rbind", "rw"])]
        return [
            Mount(
                "overlay",
                "overlay",
                [
                    "index=off",
                    "workdir=" + self._dir(info.id, "work"),
                    "upperdir=" + self._dir(info.id, "fs"),
                    "lowerdir=" + ":".join(lower),
                ],
            )
        ]

    def commit(
        self,
        name: str,
        key: str,
        labels: dict[str, str] | None = None,
        *,
        parent: str | None = None,
    ) -> None:
        """Turn the active snapshot ``key`` into the committed, immutable ``name``.

        ``parent`` re-parents a snapshot prepared without one: layers of a pull are
        unpacked side by side as they arrive and chained in order at commit time
        (a layer's content never depends on its parent's).
        """
        info = self.stat(key)
        if info.kind != ACTIVE:
            raise Conflict(f"snapshot {key!r} is not active and cannot be committed")
        if parent is not None:
            if info.parent is not None and info.parent != parent:
                raise Conflict(f"snapshot {key!r} already has the parent {info.parent!r}")
            self._chain(parent)
        merged = {**info.labels, **(labels or {})}
        try:
            self._db.execute(
                "UPDATE snapshots SET key = ?, kind = ?, labels = ?, parent = ? WHERE id = ?",
                (name, COMMITTED, json.dumps(merged), parent or info.parent, info.id),
            )
        except sqlite3.IntegrityError:
            raise Conflict(f"snapshot {name!r} already exists") from None
        shutil.rmtree(self._dir(info.id, "work"), ignore_errors=True)

    def remove(self, key: str) -> None:
        """Remove a snapshot that no other snapshot builds on."""
        info = self.stat(key)
        if self.children(key):
            raise Conflict(f"snapshot {key!r} is the parent of other snapshots")
        self._db.execute("DELETE FROM snapshots WHERE id = ?", (info.id,))
        _remove_tree(self._dir(info.id))

    def usage(self, key: str) -> tuple[int, int]:
        """Bytes and inodes of the snapshot's own content (not its parents')."""
        size = inodes = 0
        seen: set[tuple[int, int]] = set()
        for top, dirs, files in os.walk(self.fs_path(key)):
            for name in dirs + files:
                st = os.lstat(os.path.join(top, name))
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
                inodes += 1
                size += st.st_blocks * 512
        return size, inodes


def _remove_tree(path: str) -> None:
    """Remove a snapshot directory of any depth.

    A layer may nest ~2000 directories (4096-byte names), deeper than the recursion
    shutil.rmtree can follow, so this is rm(1)'s job.
    """
    import subprocess

    result = subprocess.run(
        ["rm", "-rf", "--one-file-system", "--", path], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise SystemFailure(f"cannot remove {path}: {result.stderr.strip()}")
