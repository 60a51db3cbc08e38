"""What a daemon killed with -9 left half-done, undone at the next start.

berthd writes in an order that makes every interruption recoverable: a container's
record is inserted with ``Creating`` set before its directories, snapshot and mount
exist, and the flag goes only once all of them do; layers are unpacked into active
``extract-*`` snapshots and committed under their ChainID in one SQLite step, and an
image's record is written last. So at start-up, before any request is served:

* a container record still ``Creating`` never reached its client: it is discarded
  with whatever part of it exists;
* an active or view snapshot that belongs to no container is the remains of a pull,
  load, import or commit that was cut off: removed (nothing can be using it, since no
  request runs yet);
* a rootfs still mounted for a container that no longer exists is detached.

Blobs are left alone: a partial download is resumed by the next pull, and complete
blobs nothing refers to go with ``gc`` (image prune).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from berth.images.snapshot import COMMITTED

if TYPE_CHECKING:
    from berth.engine.containers import ContainerService


def reconcile(containers: ContainerService) -> dict[str, int]:
    """Undo interrupted work; returns counts of what was removed (for the log)."""
    discarded = 0
    for record in containers.db.all():
        if record.get("Creating"):
            containers._discard(record["Id"])
            discarded += 1
    known = {record["Id"] for record in containers.db.all()}
    snapshots = containers.images.snapshots
    removed = 0
    for info in list(snapshots.walk()):
        if info.kind != COMMITTED and info.key not in known:
            containers._unmount(info.key)
            snapshots.remove(info.key)
            removed += 1
    detached = 0
    leftovers: set[str] = set()
    for base in (containers.bundle(""), containers.state_dir("")):
        if os.path.isdir(base):
            leftovers.update(name for name in os.listdir(base) if name not in known)
    for name in sorted(leftovers):
        if os.path.ismount(containers.rootfs(name)):
            detached += 1
        containers._discard(name)
    return {"containers": discarded, "snapshots": removed, "mounts": detached}
