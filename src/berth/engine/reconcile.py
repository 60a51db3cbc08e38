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
* a rootfs still mounted for a container that no longer exists is detached;
* a build cut off leaves its RUN step's runtime state (and maybe its process and
  cgroup), its snapshot mounts and bundles under ``<exec-root>/build``: the step is
  killed and deleted, the mounts detached, the rest removed (its network namespace
  goes with the network service's own start-up).

Blobs are left alone: a partial download is resumed by the next pull, and complete
blobs nothing refers to go with ``gc`` (image prune).
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import TYPE_CHECKING

from berth.errors import BerthError
from berth.images.snapshot import COMMITTED

if TYPE_CHECKING:
    from berth.engine.containers import ContainerService


def build_work_root(exec_root: str) -> str:
    """Where builds keep RUN steps' runtime state, bundles and snapshot mounts."""
    return os.path.join(exec_root, "build")


def sweep_builds(work_root: str) -> int:
    """Undo builds a killed daemon left running or mounted; returns the steps killed."""
    from berth.linux import syscalls as sc
    from berth.runtime.container import Runtime

    killed = 0
    runtime_root = os.path.join(work_root, "runtime")
    if os.path.isdir(runtime_root):
        runtime = Runtime(runtime_root)
        for state in runtime.containers():
            try:
                runtime.delete(state["id"], force=True)
                killed += 1
            except BerthError as exc:
                print(f"berthd: build step {state['id'][:12]}: {exc}", file=sys.stderr)
    mounts = os.path.join(work_root, "mounts") + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f if line.split()[4].startswith(mounts)]
    for point in sorted(points, key=len, reverse=True):
        try:
            sc.umount2(point, sc.MNT_DETACH)
        except OSError as exc:
            print(f"berthd: cannot detach {point}: {exc}", file=sys.stderr)
    for name in ("mounts", "bundles"):
        shutil.rmtree(os.path.join(work_root, name), ignore_errors=True)
    return killed


def reconcile(containers: ContainerService) -> dict[str, int]:
    """Undo interrupted work; returns counts of what was removed (for the log)."""
    steps = sweep_builds(build_work_root(containers.exec_root))
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
    return {
        "containers": discarded,
        "snapshots": removed,
        "mounts": detached,
        "build steps": steps,
    }
