"""A container's files as its processes see them: ``docker cp`` both ways, diff, export.

The container's view is its rootfs (the overlay at ``<exec-root>/containers/<id>/rootfs``)
with its binds and volumes on top, and ``/etc/hostname``, ``/etc/hosts`` and
``/etc/resolv.conf`` bound from its state directory. Those mounts exist only inside the
container's mount namespace (and not at all while it is stopped), so :class:`ContainerFS`
maps a container path to the host path of the deepest mount holding it, as Docker's daemon
does after mounting the volumes into the rootfs.

Paths are resolved as Docker does (``FollowSymlinkInScope``): lexically cleaned, then each
symlink's target read and applied with the container's root as ``/``, so no path leaves
the container. The files are then reached one component at a time from a directory file
descriptor with ``O_NOFOLLOW``: a symlink swapped in by the container meanwhile makes the
operation fail rather than be followed onto the host.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import os
import posixpath
import shutil
import stat
import tarfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, BinaryIO

from berth.errors import Conflict, InvalidArgument, NotFound

if TYPE_CHECKING:
    from berth.engine.containers import Container, ContainerService

# Go's os.FileMode type bits (what the X-Docker-Container-Path-Stat header carries).
GO_DIR = 1 << 31
GO_SYMLINK = 1 << 27
GO_DEVICE = 1 << 26
GO_PIPE = 1 << 25
GO_SOCKET = 1 << 24
GO_SETUID = 1 << 23
GO_SETGID = 1 << 22
GO_CHARDEV = 1 << 21
GO_STICKY = 1 << 20
GO_IRREGULAR = 1 << 19

_PATH = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_LINKS = 255
_CHUNK = 1 << 20

# Docker's init layer: mount points the engine makes, never part of the container's changes.
INIT_FILES = frozenset({"/etc/hostname", "/etc/hosts", "/etc/resolv.conf", "/.dockerenv"})
INIT_DIRS = frozenset({"/etc", "/dev", "/dev/pts", "/dev/shm", "/proc", "/sys"})
KIND_MODIFIED, KIND_ADDED, KIND_DELETED = 0, 1, 2


class ReadOnly(Conflict):
    """The destination is a read-only volume or rootfs (Docker answers 403)."""


def go_mode(mode: int) -> int:
    """A stat mode as Go's os.FileMode bits."""
    result = mode & 0o777
    if mode & stat.S_ISUID:
        result |= GO_SETUID
    if mode & stat.S_ISGID:
        result |= GO_SETGID
    if mode & stat.S_ISVTX:
        result |= GO_STICKY
    kind = stat.S_IFMT(mode)
    if kind == stat.S_IFDIR:
        result |= GO_DIR
    elif kind == stat.S_IFLNK:
        result |= GO_SYMLINK
    elif kind == stat.S_IFBLK:
        result |= GO_DEVICE
    elif kind == stat.S_IFCHR:
        result |= GO_DEVICE | GO_CHARDEV
    elif kind == stat.S_IFIFO:
        result |= GO_PIPE
    elif kind == stat.S_IFSOCK:
        result |= GO_SOCKET
    return result


def rfc3339(ns: int) -> str:
    seconds, frac = divmod(ns, 1_000_000_000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return text + (f".{frac:09d}".rstrip("0") if frac else "") + "Z"


def stat_header(value: dict[str, Any]) -> str:
    """The ``X-Docker-Container-Path-Stat`` header: base64 of the JSON stat."""
    return base64.b64encode(json.dumps(value).encode()).decode()


def _go_clean(path: str) -> str:
    """Go's path.Clean for absolute paths ("" and "/.." give "/")."""
    cleaned = posixpath.normpath("/" + path)
    return "/" + cleaned.lstrip("/")


def _go_base(path: str) -> str:
    """Go's filepath.Base: trailing slashes dropped, "/" for the root, "." kept."""
    stripped = path.rstrip("/")
    if not stripped:
        return "/"
    return stripped.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class MountPoint:
    destination: str  # clean absolute container path
    source: str  # host path
    readonly: bool


def _missing(exc: OSError) -> bool:
    return exc.errno in (errno.ENOENT, errno.ENOTDIR)


class ContainerFS:
    """The container's files: its rootfs plus its binds and volumes."""

    def __init__(self, rootfs: str, mounts: list[MountPoint], readonly_rootfs: bool) -> None:
        self.rootfs = rootfs
        self.readonly_rootfs = readonly_rootfs
        self.mounts = {m.destination: m for m in mounts}

    # ---- locating and resolving ---------------------------------------------------------

    def locate(self, cpath: str) -> tuple[str, list[str], MountPoint | None]:
        """(host root, components below it, mount) of the deepest mount holding cpath."""
        parts = [p for p in cpath.split("/") if p]
        for i in range(len(parts), 0, -1):
            mount = self.mounts.get("/" + "/".join(parts[:i]))
            if mount is not None:
                return mount.source, parts[i:], mount
        return self.rootfs, parts, None

    def _lstat(self, cpath: str) -> os.stat_result:
        host, rest, _ = self.locate(cpath)
        return os.lstat(os.path.join(host, *rest))

    def _readlink(self, cpath: str) -> str:
        host, rest, _ = self.locate(cpath)
        return os.readlink(os.path.join(host, *rest))

    def resolve(self, path: str) -> str:
        """Every symlink of ``path`` evaluated with the container's root as ``/``.

        Missing components are accepted as they are (Docker's FollowSymlinkInScope)."""
        rest = _go_clean(path)
        done = ""
        for _ in range(_MAX_LINKS * 16):
            if not rest:
                break
            part, _, rest = rest.lstrip("/").partition("/")
            if not part:
                continue
            candidate = _go_clean(done + "/" + part)
            if candidate == "/":
                done = ""
                continue
            try:
                st = self._lstat(candidate)
            except OSError as exc:
                if not _missing(exc):
                    raise
                done = candidate
                continue
            if not stat.S_ISLNK(st.st_mode):
                done = candidate
                continue
            target = self._readlink(candidate)
            if target.startswith("/"):
                done = ""
            rest = target + "/" + rest
        else:
            raise InvalidArgument(f"too many levels of symbolic links in {path}")
        return _go_clean(done)

    def open(self, cpath: str, flags: int = _PATH) -> int:
        """An fd of cpath reached without following any symlink (flags for the last)."""
        host, rest, _ = self.locate(cpath)
        if not rest:
            return os.open(host, flags & ~os.O_NOFOLLOW | os.O_CLOEXEC)
        fd = os.open(host, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for part in rest[:-1]:
                child = os.open(part, os.O_PATH | os.O_DIRECTORY | _PATH, dir_fd=fd)
                os.close(fd)
                fd = child
            return os.open(rest[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        finally:
            os.close(fd)

    def open_dir(self, cpath: str, *, create: bool = False) -> int:
        """A directory fd of cpath (symlink-free already); missing parts made 0755."""
        host, rest, _ = self.locate(cpath)
        fd = os.open(host, _DIR & ~os.O_NOFOLLOW)
        try:
            for part in rest:
                try:
                    child = os.open(part, _DIR, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o755, dir_fd=fd)
                    child = os.open(part, _DIR, dir_fd=fd)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def writable(self, cpath: str) -> None:
        """Refuse writes into a read-only volume or a read-only rootfs (Docker's rule)."""
        _, _, mount = self.locate(cpath)
        if mount is not None:
            if mount.readonly:
                raise ReadOnly("mounted volume is marked read-only")
        elif self.readonly_rootfs:
            raise ReadOnly("container rootfs is marked read-only")

    # ---- stat -----------------------------------------------------------------------------

    def stat_path(self, path: str) -> tuple[dict[str, Any], str]:
        """Docker's ContainerPathStat of ``path`` and the container path it names.

        The last component is not followed unless the path ends in ``/`` or ``/.``."""
        trailing = path.endswith("/") or path.endswith("/.") or path in (".", "")
        abs_path = _go_clean(path)
        name = _go_base(abs_path + ("/." if path.endswith("/.") else ""))
        if trailing:
            target = self.resolve(abs_path)
        else:
            parent, base = posixpath.split(abs_path)
            target = _go_clean(self.resolve(parent) + "/" + base)
        fd = self.open(target)
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        if trailing and not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(path)  # lstat("file/") fails so
        link = ""
        if stat.S_ISLNK(st.st_mode):
            link = self.resolve(abs_path)
        info = {
            "name": name,
            "size": st.st_size,
            "mode": go_mode(st.st_mode),
            "mtime": rfc3339(st.st_mtime_ns),
            "linkTarget": link,
        }
        return info, target

    # ---- reading: a tar of a path -----------------------------------------------------------

    def write_tar(self, cpath: str, arcname: str, out: IO[bytes]) -> None:
        """A tar of cpath (not followed if a symlink) whose top entry is ``arcname``."""
        links: dict[tuple[int, int], str] = {}
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            fd = self.open(cpath)
            try:
                is_dir = self._add(tar, fd, arcname, links)
            except BaseException:
                os.close(fd)
                raise
            if not is_dir:
                os.close(fd)
                return
            try:
                dfd = os.open(".", _DIR & ~os.O_NOFOLLOW, dir_fd=fd)
            finally:
                os.close(fd)
            self._add_tree(tar, dfd, cpath, arcname, links)

    def _add_tree(
        self,
        tar: tarfile.TarFile,
        dfd: int,
        cpath: str,
        arcname: str,
        links: dict[tuple[int, int], str],
    ) -> None:
        # depth first, names sorted; one open directory fd per level
        stack: list[tuple[int, str, str, list[str]]] = [
            (dfd, cpath, arcname, sorted(os.listdir(dfd), reverse=True))
        ]
        try:
            while stack:
                top_fd, top_c, top_arc, names = stack[-1]
                if not names:
                    os.close(top_fd)
                    stack.pop()
                    continue
                name = names.pop()
                child_c = top_c.rstrip("/") + "/" + name
                child_arc = top_arc.rstrip("/") + "/" + name
                mount = self.mounts.get(child_c)
                try:
                    if mount is not None:
                        fd = os.open(mount.source, os.O_PATH | os.O_CLOEXEC)
                    else:
                        fd = os.open(name, _PATH, dir_fd=top_fd)
                except FileNotFoundError:
                    continue  # removed meanwhile
                try:
                    is_dir = self._add(tar, fd, child_arc, links)
                    if is_dir:
                        sub = os.open(".", _DIR & ~os.O_NOFOLLOW, dir_fd=fd)
                        stack.append(
                            (sub, child_c, child_arc, sorted(os.listdir(sub), reverse=True))
                        )
                finally:
                    os.close(fd)
        finally:
            for entry in stack:
                os.close(entry[0])

    def _add(
        self, tar: tarfile.TarFile, fd: int, arcname: str, links: dict[tuple[int, int], str]
    ) -> bool:
        """Write the entry of the O_PATH fd; True when it is a directory."""
        st = os.fstat(fd)
        mode = st.st_mode
        info = tarfile.TarInfo(arcname)
        info.mode = stat.S_IMODE(mode)
        info.uid, info.gid = st.st_uid, st.st_gid
        info.uname = info.gname = ""
        info.mtime = st.st_mtime_ns // 1_000_000_000
        if stat.S_ISDIR(mode):
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
            return True
        if stat.S_ISSOCK(mode):
            return False
        if st.st_nlink > 1:
            first = links.get((st.st_dev, st.st_ino))
            if first is not None:
                info.type = tarfile.LNKTYPE
                info.linkname = first
                tar.addfile(info)
                return False
            links[(st.st_dev, st.st_ino)] = arcname
        if stat.S_ISREG(mode):
            info.type = tarfile.REGTYPE
            info.size = st.st_size
            rfd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
            with os.fdopen(rfd, "rb") as f:
                tar.addfile(info, f)
        elif stat.S_ISLNK(mode):
            info.type = tarfile.SYMTYPE
            info.linkname = os.readlink("", dir_fd=fd)
            tar.addfile(info)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            info.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
            info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
            tar.addfile(info)
        elif stat.S_ISFIFO(mode):
            info.type = tarfile.FIFOTYPE
            tar.addfile(info)
        return False

    # ---- writing: extract a tar into a directory -----------------------------------------------

    def extract_to(
        self,
        path: str,
        stream: BinaryIO,
        *,
        no_overwrite_dir_non_dir: bool = False,
        owner: tuple[int, int] | None = None,
    ) -> None:
        """Docker's PUT archive: ``stream`` (tar, maybe compressed) into the directory path."""
        dest = self.resolve(_go_clean(path))
        try:
            st = self._lstat(dest)
        except OSError as exc:
            if _missing(exc):
                raise FileNotFoundError(path) from None
            raise
        if not stat.S_ISDIR(st.st_mode):
            raise InvalidArgument("extraction point is not a directory")
        self.writable(dest)
        _Extractor(self, dest, no_overwrite_dir_non_dir, owner).run(stream)


class _Extractor:
    """Each entry created in its parent's fd, the parent reached as the container sees it."""

    def __init__(
        self, fs: ContainerFS, dest: str, no_overwrite: bool, owner: tuple[int, int] | None
    ) -> None:
        self.fs = fs
        self.dest = dest
        self.no_overwrite = no_overwrite
        self.owner = owner
        self.dir_times: list[tuple[str, int]] = []

    def _target(self, name: str, what: str = "path") -> str:
        target = _go_clean(self.dest + "/" + name)
        inside = self.dest.rstrip("/") + "/"
        if target != self.dest and not target.startswith(inside):
            raise InvalidArgument(f"invalid {what} in the archive: {name!r} is outside {self.dest}")
        return target

    def _parent(self, target: str) -> tuple[int, str, str]:
        parent_c, base = posixpath.split(target)
        real = self.fs.resolve(parent_c)
        self.fs.writable(real)
        return self.fs.open_dir(real, create=True), base, real

    def run(self, stream: BinaryIO) -> None:
        try:
            tar = tarfile.open(fileobj=stream, mode="r|*")  # noqa: SIM115
        except tarfile.ReadError as exc:
            if str(exc) == "empty file":
                return  # nothing to extract (Docker: EOF before a header is fine)
            raise InvalidArgument(f"cannot read the archive: {exc}") from None
        except tarfile.TarError as exc:
            raise InvalidArgument(f"cannot read the archive: {exc}") from None
        with tar:
            try:
                for member in tar:
                    self.entry(tar, member)
            except tarfile.TarError as exc:
                raise InvalidArgument(f"cannot read the archive: {exc}") from None
        for cpath, mtime in reversed(self.dir_times):
            with contextlib.suppress(OSError):
                fd = self.fs.open_dir(cpath)
                try:
                    os.utime(fd, (mtime, mtime))
                finally:
                    os.close(fd)

    def entry(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        target = self._target(member.name)
        if target == self.dest:
            return  # the destination itself: Docker keeps it as it is
        pfd, base, parent_c = self._parent(target)
        try:
            self._create(tar, member, pfd, base, parent_c)
        finally:
            os.close(pfd)

    def _create(
        self, tar: tarfile.TarFile, member: tarfile.TarInfo, pfd: int, base: str, parent_c: str
    ) -> None:
        try:
            existing: os.stat_result | None = os.stat(base, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            existing = None
        is_dir = member.isdir()
        if existing is not None:
            old_dir = stat.S_ISDIR(existing.st_mode)
            if self.no_overwrite and old_dir and not is_dir:
                raise InvalidArgument(
                    f"cannot overwrite directory {parent_c}/{base} with non-directory"
                )
            if self.no_overwrite and not old_dir and is_dir:
                raise InvalidArgument(
                    f"cannot overwrite non-directory {parent_c}/{base} with directory"
                )
            if not (old_dir and is_dir):
                if old_dir:
                    shutil.rmtree(base, dir_fd=pfd)
                else:
                    os.unlink(base, dir_fd=pfd)
        uid, gid = self.owner if self.owner is not None else (member.uid, member.gid)
        mode = member.mode & 0o7777
        if is_dir:
            if existing is None or not stat.S_ISDIR(existing.st_mode):
                os.mkdir(base, 0o700, dir_fd=pfd)
            fd = os.open(base, _DIR, dir_fd=pfd)
            try:
                os.fchown(fd, uid, gid)
                os.fchmod(fd, mode)
            finally:
                os.close(fd)
            self.dir_times.append((parent_c.rstrip("/") + "/" + base, int(member.mtime)))
            return
        if member.isreg():
            fd = os.open(
                base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                dir_fd=pfd,
            )  # fmt: skip
            with os.fdopen(fd, "wb") as out:
                source = tar.extractfile(member)
                if source is not None:
                    shutil.copyfileobj(source, out, _CHUNK)
                out.flush()
                os.fchown(fd, uid, gid)
                os.fchmod(fd, mode)
                os.utime(fd, (member.mtime, member.mtime))
            return
        if member.issym():
            os.symlink(member.linkname, base, dir_fd=pfd)
        elif member.islnk():
            link_target = self._target(member.linkname, "hard link")
            lfd, lbase, _ = self._parent(link_target)
            try:
                os.link(lbase, base, src_dir_fd=lfd, dst_dir_fd=pfd, follow_symlinks=False)
            finally:
                os.close(lfd)
            return
        elif member.ischr() or member.isblk() or member.isfifo():
            kind = (
                stat.S_IFCHR if member.ischr() else stat.S_IFBLK if member.isblk() else stat.S_IFIFO
            )
            device = os.makedev(member.devmajor, member.devminor) if not member.isfifo() else 0
            os.mknod(base, kind | 0o600, device, dir_fd=pfd)
        else:
            return  # other kinds (GNU sparse, volume labels) are skipped, as Docker does
        os.chown(base, uid, gid, dir_fd=pfd, follow_symlinks=False)
        if not member.issym():
            fd = os.open(base, _PATH, dir_fd=pfd)
            try:
                os.chmod(f"/proc/self/fd/{fd}", mode)
            finally:
                os.close(fd)
        with contextlib.suppress(OSError):
            os.utime(base, (member.mtime, member.mtime), dir_fd=pfd, follow_symlinks=False)


# ---- changes (docker diff) ------------------------------------------------------------------


def _whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _in_lower(lowers: list[str], cpath: str) -> os.stat_result | None:
    """The path's stat in the nearest lower layer that has it (None: absent or whited out)."""
    rel = cpath.lstrip("/")
    for layer in lowers:
        try:
            st = os.lstat(os.path.join(layer, rel))
        except OSError:
            continue
        return None if _whiteout(st) else st
    return None


def _same_dir(cpath: str, st: os.stat_result, lower: os.stat_result) -> bool:
    """Docker's test for a directory unchanged but for its children (init dirs: ownership
    and mode only, since the engine's mount points change their times)."""
    if st.st_mode != lower.st_mode:
        return False
    if cpath in INIT_DIRS:
        return (st.st_uid, st.st_gid) == (lower.st_uid, lower.st_gid)
    return st.st_size == lower.st_size and st.st_mtime_ns // 1000 == lower.st_mtime_ns // 1000


def changes(upper: str, lowers: list[str]) -> list[dict[str, Any]]:
    """Docker's changes of an overlay upper dir over its lowers (nearest first), in its order:
    a lexical walk; a path new to the lowers is added, known is modified, a whiteout or an
    opaque directory the lowers have is deleted; the parent of an addition or deletion is
    modified. Docker's init-layer mount points are left out."""
    result: list[dict[str, Any]] = []
    changed_dirs: set[str] = set()

    def visit(cpath: str, host: str) -> bool:
        st = os.lstat(host)
        is_dir = stat.S_ISDIR(st.st_mode)
        if cpath in INIT_FILES and not is_dir:
            return False
        kind: int | None
        if _whiteout(st):
            kind = KIND_DELETED
        else:
            lower = _in_lower(lowers, cpath)
            opaque = False
            if is_dir:
                with contextlib.suppress(OSError):
                    opaque = (
                        os.getxattr(host, "trusted.overlay.opaque", follow_symlinks=False) == b"y"
                    )
            if opaque and lower is not None:
                kind = KIND_DELETED
            elif lower is None:
                kind = KIND_ADDED
            else:
                kind = KIND_MODIFIED
                if is_dir and stat.S_ISDIR(lower.st_mode) and _same_dir(cpath, st, lower):
                    kind = None  # a directory copied up for its children only
        if kind is None:
            return is_dir
        if is_dir:
            changed_dirs.add(cpath)
        if kind in (KIND_ADDED, KIND_DELETED):
            parent = posixpath.dirname(cpath)
            if parent != "/" and parent not in changed_dirs:
                result.append({"Path": parent, "Kind": KIND_MODIFIED})
                changed_dirs.add(parent)
        result.append({"Path": cpath, "Kind": kind})
        return is_dir

    def walk(cdir: str, hdir: str) -> None:
        stack = [(cdir, hdir, sorted(os.listdir(hdir), key=os.fsencode, reverse=True))]
        while stack:
            top_c, top_h, names = stack[-1]
            if not names:
                stack.pop()
                continue
            name = names.pop()
            child_c = top_c.rstrip("/") + "/" + name
            child_h = os.path.join(top_h, name)
            if visit(child_c, child_h) and not _whiteout(os.lstat(child_h)):
                stack.append(
                    (child_c, child_h, sorted(os.listdir(child_h), key=os.fsencode, reverse=True))
                )

    walk("/", upper)
    return result


# ---- helpers for the service --------------------------------------------------------------------


def _passwd_line(fs: ContainerFS, file: str, column: int, key: str) -> list[str] | None:
    """The first line of the container's passwd or group file whose column is key."""
    try:
        fd = fs.open(fs.resolve(file), os.O_RDONLY)
    except OSError:
        return None
    with os.fdopen(fd, "r", errors="replace") as f:
        for line in f:
            fields = line.rstrip("\n").split(":")
            if len(fields) >= 4 and fields[column] == key:
                return fields
    return None


def user_ids(fs: ContainerFS, user: str) -> tuple[int, int]:
    """uid and gid of a container's ``User`` (names through its /etc/passwd and /etc/group)."""
    name, _, group = (user or "0").partition(":")
    fields = _passwd_line(fs, "/etc/passwd", 2 if name.isdigit() else 0, name)
    if name.isdigit():
        uid = int(name)
        gid = int(fields[3]) if fields is not None and fields[3].isdigit() else 0
    elif fields is None:
        raise InvalidArgument(f"unable to find user {name}: no matching entries in passwd file")
    else:
        uid, gid = int(fields[2]), int(fields[3])
    if group.isdigit():
        gid = int(group)
    elif group:
        gfields = _passwd_line(fs, "/etc/group", 0, group)
        if gfields is None:
            raise InvalidArgument(
                f"unable to find group {group}: no matching entries in group file"
            )
        gid = int(gfields[2])
    return uid, gid


def not_found(path: str, container: str) -> NotFound:
    return NotFound(f"Could not find the file {path} in container {container}")


# ---- the service: which files, mounted when ---------------------------------------------------


class ArchiveService:
    """The container side of cp, diff and export: the view of a container's files, with its
    rootfs mounted for as long as someone reads or writes it."""

    def __init__(self, containers: ContainerService) -> None:
        self.containers = containers
        self._users: dict[str, int] = {}
        self._mounted_here: set[str] = set()

    def view(self, container: Container) -> ContainerFS:
        spec = container.spec
        state_dir = self.containers.state_dir(container.id)
        mounts = [
            MountPoint(destination, os.path.join(state_dir, name), False)
            for destination, name in (
                ("/etc/resolv.conf", "resolv.conf"),
                ("/etc/hostname", "hostname"),
                ("/etc/hosts", "hosts"),
            )
        ]
        for mount in spec.mounts:  # a user mount of the same destination comes later: wins
            if mount.type != "tmpfs" and mount.source:
                mounts.append(
                    MountPoint(_go_clean(mount.destination), mount.source, mount.readonly)
                )
        return ContainerFS(self.containers.rootfs(container.id), mounts, spec.readonly_rootfs)

    @contextlib.asynccontextmanager
    async def mounted(self, ref: str) -> AsyncIterator[tuple[Container, ContainerFS]]:
        """The container and its files; a rootfs not mounted (a stopped container after a
        daemon restart) is mounted here and unmounted after the last user, unless the
        container was started meanwhile."""
        service = self.containers
        container = service.get(ref)
        cid = container.id
        async with service._lock(cid):
            container = service.get(cid)
            if container.status == "removing":
                raise Conflict(f"container {cid} is being removed")
            if not self._users.get(cid) and not os.path.ismount(service.rootfs(cid)):
                service._mount(cid)
                self._mounted_here.add(cid)
            self._users[cid] = self._users.get(cid, 0) + 1
        try:
            yield container, self.view(container)
        finally:
            async with service._lock(cid):
                self._users[cid] -= 1
                if not self._users[cid]:
                    del self._users[cid]
                    if cid in self._mounted_here:
                        self._mounted_here.discard(cid)
                        record = service.db.get(cid)
                        if record is not None and record["State"]["Status"] != "running":
                            service._unmount(cid)

    def layers(self, container_id: str) -> tuple[str, list[str]]:
        """The container's upper directory and its image's layer directories, nearest first."""
        snapshots = self.containers.images.snapshots
        upper = snapshots.fs_path(container_id)
        lowers = []
        parent = snapshots.stat(container_id).parent
        while parent is not None:
            lowers.append(snapshots.fs_path(parent))
            parent = snapshots.stat(parent).parent
        return upper, lowers

    def changes(self, ref: str) -> list[dict[str, Any]]:
        container = self.containers.get(ref)
        upper, lowers = self.layers(container.id)
        return changes(upper, lowers)
