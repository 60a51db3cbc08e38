"""Named network namespaces owned by the engine: ``<exec-root>/netns/<container-id>``.

A namespace is made by a short-lived thread that unshares its network namespace and
bind-mounts ``/proc/self/task/<tid>/ns/net`` on the file (no fork, ~1 ms). The folder
is a private bind mount of itself first, so the namespace mounts propagate nowhere
(the host's ``/run`` is often shared).
"""

from __future__ import annotations

import contextlib
import os
import threading

from berth.errors import SystemFailure
from berth.linux import syscalls as sc


def _mount_point(path: str) -> bool:
    """A mount point by mountinfo: ``os.path.ismount`` misses a bind of a folder on
    itself (same device as its parent)."""
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


def prepare_dir(folder: str) -> None:
    """Make ``folder`` a private mount point (once)."""
    folder = os.path.abspath(folder)
    os.makedirs(folder, mode=0o711, exist_ok=True)
    if not _mount_point(folder):
        sc.mount(folder, folder, "", sc.MS_BIND)
        sc.mount("", folder, "", sc.MS_PRIVATE)


def release_dir(folder: str) -> None:
    """Unmount the folder's own bind mount when no namespace is left in it."""
    with contextlib.suppress(FileNotFoundError):
        if any(os.path.ismount(os.path.join(folder, n)) for n in os.listdir(folder)):
            return
    while _mount_point(os.path.abspath(folder)):
        try:
            sc.umount2(folder, sc.MNT_DETACH)
        except OSError:
            break


def create(path: str) -> None:
    """A new network namespace kept alive by a bind mount on ``path``."""
    if os.path.ismount(path):
        return
    with open(path, "w"):
        pass
    failure: list[BaseException] = []

    def work() -> None:
        try:
            sc.unshare(sc.CLONE_NEWNET)
            sc.mount(f"/proc/self/task/{threading.get_native_id()}/ns/net", path, "", sc.MS_BIND)
        except BaseException as exc:  # reported by the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=work, name="berth-netns")
    thread.start()
    thread.join()
    if failure:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise SystemFailure(f"cannot make a network namespace at {path}: {failure[0]}")


def remove(path: str) -> None:
    """Unmount and delete; the namespace goes when its last process leaves."""
    while os.path.ismount(path):
        try:
            sc.umount2(path, sc.MNT_DETACH)
        except OSError:
            break
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def listing(folder: str) -> list[str]:
    try:
        return sorted(os.listdir(folder))
    except FileNotFoundError:
        return []
