"""Building the container's filesystem view inside its new mount namespace.

Runs in the container's init, before pivot_root. Every destination inside the rootfs
is resolved with symlinks scoped to the rootfs (as filepath-securejoin does), so a
hostile image cannot point a mount at the host's /etc.
"""

from __future__ import annotations

import errno
import os
import stat

from berth.errors import ConfigError
from berth.linux import syscalls as sc

# typing costs milliseconds to import on every container start: types only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# option -> (set flags, clear flags)
_MOUNT_FLAGS: dict[str, tuple[int, int]] = {
    "ro": (sc.MS_RDONLY, 0),
    "rw": (0, sc.MS_RDONLY),
    "nosuid": (sc.MS_NOSUID, 0),
    "suid": (0, sc.MS_NOSUID),
    "nodev": (sc.MS_NODEV, 0),
    "dev": (0, sc.MS_NODEV),
    "noexec": (sc.MS_NOEXEC, 0),
    "exec": (0, sc.MS_NOEXEC),
    "sync": (sc.MS_SYNCHRONOUS, 0),
    "async": (0, sc.MS_SYNCHRONOUS),
    "dirsync": (sc.MS_DIRSYNC, 0),
    "remount": (sc.MS_REMOUNT, 0),
    "mand": (sc.MS_MANDLOCK, 0),
    "nomand": (0, sc.MS_MANDLOCK),
    "atime": (0, sc.MS_NOATIME),
    "noatime": (sc.MS_NOATIME, 0),
    "diratime": (0, sc.MS_NODIRATIME),
    "nodiratime": (sc.MS_NODIRATIME, 0),
    "relatime": (sc.MS_RELATIME, 0),
    "norelatime": (0, sc.MS_RELATIME),
    "strictatime": (sc.MS_STRICTATIME, 0),
    "nostrictatime": (0, sc.MS_STRICTATIME),
    "lazytime": (sc.MS_LAZYTIME, 0),
    "nolazytime": (0, sc.MS_LAZYTIME),
    "nosymfollow": (sc.MS_NOSYMFOLLOW, 0),
    "bind": (sc.MS_BIND, 0),
    "rbind": (sc.MS_BIND | sc.MS_REC, 0),
    "defaults": (0, 0),
}
PROPAGATION_FLAGS: dict[str, int] = {
    "private": sc.MS_PRIVATE,
    "rprivate": sc.MS_PRIVATE | sc.MS_REC,
    "shared": sc.MS_SHARED,
    "rshared": sc.MS_SHARED | sc.MS_REC,
    "slave": sc.MS_SLAVE,
    "rslave": sc.MS_SLAVE | sc.MS_REC,
    "unbindable": sc.MS_UNBINDABLE,
    "runbindable": sc.MS_UNBINDABLE | sc.MS_REC,
}
# statvfs f_flag bits -> mount flags that a bind remount must keep (locked in a userns)
_ST_TO_MS = {1: sc.MS_RDONLY, 2: sc.MS_NOSUID, 4: sc.MS_NODEV, 8: sc.MS_NOEXEC}

DEFAULT_DEVICES = [
    # path, type, major, minor, mode
    ("/dev/null", "c", 1, 3, 0o666),
    ("/dev/zero", "c", 1, 5, 0o666),
    ("/dev/full", "c", 1, 7, 0o666),
    ("/dev/random", "c", 1, 8, 0o666),
    ("/dev/urandom", "c", 1, 9, 0o666),
    ("/dev/tty", "c", 5, 0, 0o666),
]
DEV_SYMLINKS = [
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
]


def parse_options(options: list[str]) -> tuple[int, int, list[str]]:
    """Mount options -> (flags, propagation flags, data options for the filesystem)."""
    flags = 0
    propagation = 0
    data = []
    for option in options:
        if option in _MOUNT_FLAGS:
            set_flags, clear = _MOUNT_FLAGS[option]
            flags = (flags | set_flags) & ~clear
        elif option in PROPAGATION_FLAGS:
            propagation |= PROPAGATION_FLAGS[option]
        elif option in {"tmpcopyup", "idmap", "ridmap", "rro", "rrw"}:
            continue  # runc extensions we accept and do not act on
        else:
            data.append(option)
    return flags, propagation, data


def secure_join(root: str, unsafe: str) -> str:
    """``root/unsafe`` with every symlink resolved as if ``root`` were ``/``."""
    parts = [p for p in unsafe.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            resolved.append(part)
            continue
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > 255:
                raise ConfigError(f"too many symlinks resolving {unsafe} in the rootfs")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        resolved.append(part)
    return os.path.join(root, *resolved)


def _mkdir_p(path: str) -> None:
    os.makedirs(path, mode=0o755, exist_ok=True)


def _ensure_file(path: str) -> None:
    _mkdir_p(os.path.dirname(path))
    if not os.path.exists(path):
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))


def _remount_bind(dest: str, flags: int) -> None:
    """Apply flags to a bind mount, keeping the ones the kernel locked (userns)."""
    try:
        sc.mount(None, dest, None, flags | sc.MS_BIND | sc.MS_REMOUNT)
    except PermissionError:
        kept = 0
        for st_bit, ms_bit in _ST_TO_MS.items():
            if os.statvfs(dest).f_flag & st_bit:
                kept |= ms_bit
        sc.mount(None, dest, None, flags | kept | sc.MS_BIND | sc.MS_REMOUNT)


def _parent_mount_not_shared(path: str, propagation: int) -> None:
    """Make the mount holding ``path`` private (slave if ``propagation`` is a slave one).

    pivot_root(2) fails with EINVAL when new_root's parent mount is shared, and
    a bind of the rootfs under a shared (or unbindable) parent would leak to the
    host (or fail). EINVAL from mount(2) means "not a mount point": walk up.
    """
    flags = sc.MS_SLAVE if propagation & sc.MS_SLAVE else sc.MS_PRIVATE
    while True:
        try:
            sc.mount(None, path, None, flags)
            return
        except OSError as exc:
            if exc.errno != errno.EINVAL or path == "/":
                raise
        path = os.path.dirname(path)


class RootfsBuilder:
    """Mounts, devices and the pivot, in the order runc does them."""

    def __init__(
        self,
        rootfs: str,
        config: dict[str, Any],
        *,
        cgroup_paths: dict[str, str],
        cgroup_mode: str,
        in_userns: bool,
        mount_ns: bool = True,
    ) -> None:
        self.rootfs = rootfs
        self.config = config
        self.linux = config.get("linux") or {}
        self.cgroup_paths = cgroup_paths
        self.cgroup_mode = cgroup_mode
        self.in_userns = in_userns
        self.mount_ns = mount_ns  # False: no linux.namespaces "mount" entry at all
        self.dev_is_bind = False

    def prepare(self) -> None:
        """Propagation, the rootfs bind mount, then every mount of the spec."""
        propagation = PROPAGATION_FLAGS.get(
            self.linux.get("rootfsPropagation") or "", sc.MS_SLAVE | sc.MS_REC
        )
        if not self.mount_ns:
            # The runtime's mount namespace (the host's): leave "/" alone. Bind the
            # rootfs onto itself and make that private, so the spec's mounts below
            # stay under one mount that `delete` detaches as a whole.
            sc.mount(self.rootfs, self.rootfs, None, sc.MS_BIND | sc.MS_REC)
            sc.mount(None, self.rootfs, None, sc.MS_PRIVATE | sc.MS_REC)
            for mount in self.config.get("mounts") or []:
                self.mount_one(mount)
            if not self.dev_is_bind:
                self.create_devices()
                self.dev_symlinks()
            return
        sc.mount(None, "/", None, propagation)
        _parent_mount_not_shared(os.path.realpath(self.rootfs), propagation)
        sc.mount(self.rootfs, self.rootfs, None, sc.MS_BIND | sc.MS_REC)
        for mount in self.config.get("mounts") or []:
            self.mount_one(mount)
        if not self.dev_is_bind:
            self.create_devices()
            self.dev_symlinks()

    def mount_one(self, mount: dict[str, Any]) -> None:
        dest_rel = mount["destination"]
        kind = mount.get("type") or ""
        source = mount.get("source") or kind or "none"
        flags, propagation, data = parse_options(list(mount.get("options") or []))
        dest = secure_join(self.rootfs, dest_rel)
        is_bind = kind == "bind" or bool(flags & sc.MS_BIND)
        if is_bind:
            if not os.path.exists(source):
                raise ConfigError(f"bind mount source {source} does not exist")
            if os.path.isdir(source):
                _mkdir_p(dest)
            else:
                _ensure_file(dest)
            sc.mount(source, dest, None, sc.MS_BIND | (flags & sc.MS_REC))
            rest = flags & ~(sc.MS_BIND | sc.MS_REC | sc.MS_REMOUNT)
            if rest:
                _remount_bind(dest, rest)
            if os.path.normpath(dest_rel) == "/dev":
                self.dev_is_bind = True
        elif kind == "cgroup":
            self.mount_cgroup(dest, flags)
        else:
            _mkdir_p(dest)
            self._mount_fs(source, dest, kind, flags, ",".join(data))
        if propagation:
            sc.mount(None, dest, None, propagation)

    def _mount_fs(self, source: str, dest: str, kind: str, flags: int, data: str) -> None:
        try:
            sc.mount(source, dest, kind, flags, data)
        except PermissionError:
            if kind == "sysfs" and self.in_userns:
                # sysfs needs a network namespace owned by our userns: bind the host's.
                sc.mount("/sys", dest, None, sc.MS_BIND | sc.MS_REC)
                _remount_bind(dest, flags | sc.MS_RDONLY)
            elif kind == "mqueue" and self.in_userns:
                sc.mount("/dev/mqueue", dest, None, sc.MS_BIND | sc.MS_REC)
            else:
                raise

    def mount_cgroup(self, dest: str, flags: int) -> None:
        _mkdir_p(dest)
        if self.cgroup_mode == "v2":
            self._mount_fs("cgroup2", dest, "cgroup2", flags, "")
            return
        # cgroup v1: a tmpfs holding a bind mount of this container's cgroup per hierarchy
        sc.mount("tmpfs", dest, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC, "mode=755")
        for controller, host_dir in sorted(self.cgroup_paths.items()):
            if not controller or not os.path.isdir(host_dir):
                continue
            name = controller.removeprefix("name=")
            target = os.path.join(dest, name)
            _mkdir_p(target)
            sc.mount(host_dir, target, None, sc.MS_BIND | sc.MS_REC)
            _remount_bind(
                target, flags & (sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
            )
        if flags & sc.MS_RDONLY:
            sc.mount(
                None, dest, None, sc.MS_REMOUNT | flags | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC
            )

    def create_devices(self) -> None:
        devices = [(p, t, ma, mi, mode, 0, 0) for p, t, ma, mi, mode in DEFAULT_DEVICES]
        for dev in self.linux.get("devices") or []:
            devices.append(
                (
                    dev["path"],
                    dev.get("type", "c"),
                    int(dev.get("major", 0)),
                    int(dev.get("minor", 0)),
                    int(dev.get("fileMode", 0o666)),
                    int(dev.get("uid", 0)),
                    int(dev.get("gid", 0)),
                )
            )
        old_umask = os.umask(0)
        try:
            for path, kind, major, minor, mode, uid, gid in devices:
                self.create_device(path, kind, major, minor, mode, uid, gid)
        finally:
            os.umask(old_umask)

    def create_device(
        self, path: str, kind: str, major: int, minor: int, mode: int, uid: int, gid: int
    ) -> None:
        dest = secure_join(self.rootfs, path)
        _mkdir_p(os.path.dirname(dest))
        if self.in_userns:
            # mknod is not allowed in a user namespace: bind the host's node instead.
            if not os.path.exists(path):
                return
            _ensure_file(dest)
            sc.mount(path, dest, None, sc.MS_BIND)
            return
        type_bits = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}
        if kind not in type_bits:
            raise ConfigError(f"device {path}: unknown type {kind!r}")
        if os.path.lexists(dest):
            os.unlink(dest)
        try:
            os.mknod(dest, type_bits[kind] | (mode & 0o7777), os.makedev(major, minor))
        except OSError as exc:
            raise OSError(exc.errno, f"mknod {path}: {exc.strerror}") from None
        os.chmod(dest, mode & 0o7777)
        os.chown(dest, uid, gid)

    def dev_symlinks(self) -> None:
        links = list(DEV_SYMLINKS)
        if os.path.exists("/proc/kcore"):
            links.append(("/proc/kcore", "/dev/core"))
        if os.path.isdir(os.path.join(self.rootfs, "dev/pts")):
            links.append(("pts/ptmx", "/dev/ptmx"))
        for target, link in links:
            dest = os.path.join(self.rootfs, link.lstrip("/"))
            if os.path.lexists(dest):
                if os.path.islink(dest) or link == "/dev/ptmx":
                    os.unlink(dest)
                else:
                    continue
            os.symlink(target, dest)

    def pivot(self, no_pivot: bool) -> None:
        os.chdir(self.rootfs)
        if not self.mount_ns:
            os.chroot(".")  # no mount namespace: nothing to pivot (runc does the same)
        elif no_pivot:
            sc.mount(self.rootfs, "/", None, sc.MS_MOVE)
            os.chroot(".")
        else:
            sc.pivot_root(".", ".")
            # The old root is now stacked under the new one at "/": detach it, after
            # making sure the unmount cannot propagate back to the host.
            sc.mount(None, ".", None, sc.MS_SLAVE | sc.MS_REC)
            sc.umount2(".", sc.MNT_DETACH)
        os.chdir("/")
        # rootfsPropagation applies to the container's "/", which exists only now;
        # private/slave were already set on the way in (runc >= 1.2 does the same).
        propagation = PROPAGATION_FLAGS.get(self.linux.get("rootfsPropagation") or "", 0)
        if self.mount_ns and propagation & (sc.MS_SHARED | sc.MS_UNBINDABLE):
            sc.mount(None, "/", None, propagation)

    def finish(self) -> None:
        """After the pivot: readonly and masked paths, then a readonly root."""
        for path in self.linux.get("readonlyPaths") or []:
            readonly_path(path)
        for path in self.linux.get("maskedPaths") or []:
            mask_path(path)
        if (self.config.get("root") or {}).get("readonly"):
            _remount_bind("/", sc.MS_RDONLY | sc.MS_REC)


def readonly_path(path: str) -> None:
    if not os.path.exists(path):
        return
    sc.mount(path, path, None, sc.MS_BIND | sc.MS_REC)
    _remount_bind(path, sc.MS_RDONLY | sc.MS_REC)


def mask_path(path: str) -> None:
    try:
        is_dir = os.path.isdir(path) and not os.path.islink(path)
    except OSError:
        return
    if not os.path.lexists(path):
        return
    if is_dir:
        sc.mount("tmpfs", path, "tmpfs", sc.MS_RDONLY, "size=0k")
    else:
        sc.mount("/dev/null", path, None, sc.MS_BIND)
