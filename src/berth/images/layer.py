"""Image layers: unpack a layer tar into a snapshot directory, and make a layer from a directory.

A snapshot holds exactly one layer (overlayfs stacks them), so a layer is unpacked into an
empty directory and its deletions are kept in overlayfs' own form: ``.wh.NAME`` becomes a
character device 0:0 called NAME, ``.wh..wh..opq`` sets ``trusted.overlay.opaque=y`` on its
directory. ``write_layer`` turns an overlayfs upper directory back into a layer.

Safety of ``apply_layer`` (a layer is untrusted input):

* names are cleaned lexically: a leading ``/`` and ``.`` components are dropped (Docker
  reads ``/etc/x`` as ``etc/x``), and any ``..`` component is refused;
* every entry is created relative to a directory file descriptor of its parent, reached
  from the unpack root one component at a time with ``O_NOFOLLOW | O_DIRECTORY``: a symlink
  anywhere among an entry's parents (even one the same layer created, even one pointing
  inside) is refused, so nothing is ever written through a symlink;
* files are created with ``O_CREAT | O_EXCL | O_NOFOLLOW``; ownership, modes, times and
  xattrs go through that descriptor or through ``*at`` calls that do not follow symlinks;
* a hard link must name an entry the same layer created, found the same way;
* a later non-directory replaces an earlier one of the same name (tar's append rule,
  by unlinking it, never following it); a directory replaces nothing but an earlier
  whiteout (it then becomes opaque) and is refused over a symlink or file; nothing
  replaces a directory;
* overlayfs' own xattrs (``trusted.overlay.*``, ``user.overlay.*``) in a layer are dropped.

Failure leaves nothing behind: the layer is unpacked into a fresh directory beside ``dest``
(``.NAME.apply-XXXX`` in the same parent, so on the same filesystem) and renamed onto
``dest`` only when everything succeeded; on any error that directory is removed and
``dest`` is untouched. A crash can leave such a directory; whoever owns the parent (the
snapshotter) removes ``.*.apply-*`` leftovers. Nothing is fsynced here: a snapshotter
that needs durability syncs the filesystem before it commits the snapshot.

Ownership, device nodes, whiteouts and ``trusted.*`` xattrs need root (CAP_CHOWN,
CAP_MKNOD, CAP_SYS_ADMIN); without root, ownership is left to the caller's ids.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import shutil
import stat
import struct
import tarfile
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, cast

from berth.errors import BerthError

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer


class LayerError(BerthError):
    """A layer could not be read, unpacked or written; nothing half-done was left."""


BLOCK = 512
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
# Overlayfs' own bookkeeping: never taken from a layer (a layer could aim a redirect at
# another layer's files) and never written into one.
OVERLAY_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")
PAX_XATTR = "SCHILY.xattr."
# The host's security labels are its policy, not the image's content: never archived.
HOST_XATTRS = ("security.selinux",)

_BUFFER = 1 << 20  # copy and decompression chunk
_MAX_META = 1 << 20  # largest PAX or GNU long-name record we accept
_MAX_OPEN_DIRS = 256
_MAX_PATH = 4096  # PATH_MAX: a layer's names must work as paths in a container
_ZERO_BLOCK = bytes(BLOCK)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

# tar type flags
_REGULAR = (b"0", b"\0", b"7")
_HARDLINK = b"1"
_SYMLINK = b"2"
_CHAR = b"3"
_BLOCKDEV = b"4"
_DIRECTORY = b"5"
_FIFO = b"6"
_PAX = b"x"
_PAX_GLOBAL = b"g"
_GNU_LONGNAME = b"L"
_GNU_LONGLINK = b"K"
_GNU_DUMPDIR = b"D"
_GNU_VOLUME = b"V"
_GNU_SPARSE = b"S"


def _show(name: str) -> str:
    """A name safe for a one-line message (control and undecodable bytes escaped)."""
    return name if name.isprintable() else repr(name)[1:-1]


def _reason(error: BaseException) -> str:
    text = (error.strerror if isinstance(error, OSError) else None) or str(error)
    text = " ".join(text.split()) or type(error).__name__
    return text[:1].lower() + text[1:]


# --------------------------------------------------------------------------- reading


class PrefixedStream(io.RawIOBase):
    """Bytes already read while sniffing, then the rest of the stream (for pipes)."""

    def __init__(self, prefix: bytes, rest: BinaryIO) -> None:
        self._prefix = prefix
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        if self._prefix:
            n = min(len(view), len(self._prefix))
            view[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        readinto = getattr(self._rest, "readinto", None)
        if readinto is not None:
            return int(readinto(view) or 0)
        data = self._rest.read(len(view))
        view[: len(data)] = data
        return len(data)


def _sniff(fileobj: BinaryIO) -> tuple[bytes, BinaryIO]:
    """The first four bytes, and a stream that still starts at them."""
    peek = getattr(fileobj, "peek", None)
    if peek is not None:
        head = bytes(peek(4)[:4])
        if len(head) == 4:
            return head, fileobj
    try:
        seekable = fileobj.seekable()
    except (AttributeError, OSError, ValueError):
        seekable = False
    head = b""
    while len(head) < 4:
        chunk = fileobj.read(4 - len(head))
        if not chunk:
            break
        head += chunk
    if seekable:
        fileobj.seek(-len(head), io.SEEK_CUR)
        return head, fileobj
    return head, cast(BinaryIO, io.BufferedReader(PrefixedStream(head, fileobj), _BUFFER))


def open_layer_stream(fileobj: BinaryIO) -> BinaryIO:
    """A stream of the uncompressed tar in ``fileobj``: gzip, zstd or plain, told by magic.

    Decompression streams (never the whole blob in memory). gzip runs in isal's reader
    thread, so inflating overlaps with writing files. Closing the result does not close
    ``fileobj``.
    """
    try:
        head, stream = _sniff(fileobj)
    except (OSError, ValueError) as e:
        raise LayerError(f"cannot read the layer: {_reason(e)}") from e
    if head.startswith(GZIP_MAGIC):
        from isal import igzip_threaded

        return cast(BinaryIO, igzip_threaded.open(stream, "rb", threads=1, block_size=_BUFFER))
    if head.startswith(ZSTD_MAGIC):
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(
            stream, read_size=_BUFFER, read_across_frames=True, closefd=False
        )
    return stream


class _Truncated(Exception):
    """The tar stream ended before its end-of-archive marker."""


class _Source:
    """The uncompressed tar stream, read in large chunks into one reused buffer."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._readinto = getattr(stream, "readinto", None)
        self._buf = bytearray(_BUFFER)
        self._view = memoryview(self._buf)
        self._pos = 0
        self._end = 0
        self.total = 0  # bytes read from the stream

    def _read(self, view: memoryview) -> int:
        try:
            if self._readinto is not None:
                n = self._readinto(view)
            else:
                data = self._stream.read(len(view))
                n = len(data)
                view[:n] = data
        except Exception as e:  # decompressors raise their own types
            raise LayerError(f"cannot read the layer: {_reason(e)}") from e
        n = n or 0
        self.total += n
        return n

    def _refill(self) -> None:
        self._pos = 0
        self._end = self._read(self._view)
        if not self._end:
            raise _Truncated

    def header(self) -> bytes:
        """The next 512-byte block."""
        if self._end - self._pos < BLOCK:
            tail = bytes(self._view[self._pos : self._end])
            self._view[: len(tail)] = tail
            self._pos, self._end = 0, len(tail)
            while self._end < BLOCK:
                n = self._read(self._view[self._end :])
                if not n:
                    raise _Truncated
                self._end += n
        block = bytes(self._view[self._pos : self._pos + BLOCK])
        self._pos += BLOCK
        return block

    def read(self, size: int) -> bytes:
        """``size`` bytes of entry data plus its padding (small records only)."""
        out = bytearray()
        remaining = size
        while remaining:
            if self._pos == self._end:
                self._refill()
            n = min(self._end - self._pos, remaining)
            out += self._view[self._pos : self._pos + n]
            self._pos += n
            remaining -= n
        self.skip(-size % BLOCK)
        return bytes(out)

    def copy_to(self, fd: int, size: int) -> None:
        """Write ``size`` bytes of entry data to ``fd``, then skip the padding."""
        remaining = size
        while remaining:
            if self._pos == self._end:
                self._refill()
            n = min(self._end - self._pos, remaining)
            chunk = self._view[self._pos : self._pos + n]
            while chunk:
                chunk = chunk[os.write(fd, chunk) :]
            self._pos += n
            remaining -= n
        self.skip(-size % BLOCK)

    def skip(self, size: int) -> None:
        remaining = size
        while remaining:
            if self._pos == self._end:
                self._refill()
            n = min(self._end - self._pos, remaining)
            self._pos += n
            remaining -= n

    def drain(self) -> None:
        """Read to the end, so the count is complete and a decompressor checks its trailer."""
        self._pos = self._end = 0
        while self._read(self._view):
            pass


class _Header:
    """One tar entry after PAX and GNU long-name records were applied."""

    __slots__ = (
        "atime",
        "gid",
        "linkname",
        "major",
        "minor",
        "mode",
        "mtime",
        "name",
        "size",
        "type",
        "uid",
        "xattrs",
    )

    def __init__(self) -> None:
        self.name = ""
        self.linkname = ""
        self.type = b"0"
        self.mode = 0
        self.uid = 0
        self.gid = 0
        self.size = 0
        self.mtime = 0  # ns
        self.atime: int | None = None  # ns
        self.major = 0
        self.minor = 0
        self.xattrs: list[tuple[str, bytes]] = []


def _number(field: bytes) -> int:
    """A tar numeric field: octal text, or GNU base-256 when the high bit is set."""
    if field[:1] >= b"\x80":
        if field[0] == 0xFF:
            return int.from_bytes(field, "big", signed=True)
        return int.from_bytes(field, "big") - (0x80 << (8 * (len(field) - 1)))
    text = field.partition(b"\0")[0]
    try:
        return int(text, 8)  # int() strips the spaces some writers pad with
    except ValueError:
        if not text.strip():
            return 0
        raise LayerError(f"the layer is not a valid tar: bad number {text!r}") from None


def _text(field: bytes) -> str:
    return field.partition(b"\0")[0].decode("utf-8", "surrogateescape")


# name mode uid gid size mtime chksum type linkname magic version uname gname major minor prefix
_USTAR = struct.Struct("100s8s8s8s12s12s8sc100s6s2s32s32s8s8s155s12x")
_META_TYPES = (_PAX, _PAX_GLOBAL, _GNU_LONGNAME, _GNU_LONGLINK, _GNU_VOLUME)


def _parse_header(block: bytes) -> _Header:
    (name, mode, uid, gid, size, mtime, chksum, kind, linkname, magic, _, _, _, major, minor,
     prefix) = _USTAR.unpack(block)  # fmt: skip
    checksum = _number(chksum)
    if checksum != sum(block) - sum(chksum) + 256:
        signed = memoryview(block).cast("b")
        if checksum != sum(signed[:148]) + 256 + sum(signed[156:]):
            raise LayerError("the layer is not a valid tar: bad header checksum")
    h = _Header()
    h.type = kind
    h.size = _number(size)
    if h.size < 0:
        raise LayerError("the layer is not a valid tar: negative size")
    if kind in _META_TYPES:
        return h  # only the size of a record header matters
    h.name = _text(name)
    if magic == b"ustar\0" and prefix[0]:  # POSIX ustar: a prefix field extends the name
        h.name = _text(prefix) + "/" + h.name
    if kind == b"\0" and h.name.endswith("/"):  # old tars mark directories so
        h.type = _DIRECTORY
    if linkname[0]:
        h.linkname = _text(linkname)
    h.mode = _number(mode) & 0o7777
    h.uid = _number(uid)
    h.gid = _number(gid)
    h.mtime = _number(mtime) * 1_000_000_000
    if kind in (_CHAR, _BLOCKDEV):
        h.major = _number(major)
        h.minor = _number(minor)
    return h


def _parse_pax(data: bytes, records: dict[str, bytes]) -> None:
    """PAX records ``"LEN KEY=VALUE\\n"``; values stay bytes (xattrs are binary)."""
    pos = 0
    while pos < len(data) and data[pos] != 0:
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space])
        except ValueError:
            length = 0
        end = pos + length
        if space < 0 or length <= 0 or end > len(data) or data[end - 1] != 0x0A:
            raise LayerError("the layer is not a valid tar: bad pax record")
        key, eq, value = data[space + 1 : end - 1].partition(b"=")
        if not eq:
            raise LayerError("the layer is not a valid tar: bad pax record")
        records[key.decode("utf-8", "surrogateescape")] = value
        pos = end


def _pax_int(key: str, value: bytes) -> int:
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise LayerError(f"the layer is not a valid tar: bad pax {key} {value!r}")
    return number


def _pax_time(value: bytes) -> int:
    """Seconds with an optional fraction, as nanoseconds."""
    negative = value.startswith(b"-")
    whole, _, frac = value.lstrip(b"-").partition(b".")
    if not whole.isdigit() or (frac and not frac.isdigit()):
        raise LayerError(f"the layer is not a valid tar: bad pax time {value!r}")
    ns = int(whole) * 1_000_000_000 + int((frac + b"000000000")[:9])
    return -ns if negative else ns


def _apply_pax(h: _Header, records: dict[str, bytes]) -> None:
    for key, value in records.items():
        if not value:  # an empty value deletes the record: keep the header's field
            continue
        if key == "path":
            h.name = value.decode("utf-8", "surrogateescape")
        elif key == "linkpath":
            h.linkname = value.decode("utf-8", "surrogateescape")
        elif key == "size":
            h.size = _pax_int(key, value)
        elif key == "uid":
            h.uid = _pax_int(key, value)
        elif key == "gid":
            h.gid = _pax_int(key, value)
        elif key == "mtime":
            h.mtime = _pax_time(value)
        elif key == "atime":
            h.atime = _pax_time(value)
        elif key.startswith(PAX_XATTR):
            name = key[len(PAX_XATTR) :]
            if not name or "\0" in name:
                raise LayerError(f"the layer is not a valid tar: bad xattr name {name!r}")
            h.xattrs.append((name, value))
        elif key.startswith("GNU.sparse."):
            raise LayerError(f"layer entry {_show(h.name)}: sparse files are not supported")


def _clean(name: str) -> str:
    """The entry's path relative to the layer root: no leading '/', no '.', no '..'."""
    if len(name) > _MAX_PATH:
        raise LayerError(f"layer entry {_show(name[:100])}...: name longer than {_MAX_PATH}")
    if (
        name
        and name[0] not in "./"
        and name[-1] != "/"
        and "//" not in name
        and "/." not in name
        and "\0" not in name
    ):
        return name  # already clean: the common case, checked cheaply
    if "\0" in name:
        raise LayerError(f"layer entry {_show(name)}: nul byte in the name")
    parts = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise LayerError(f"layer entry {_show(name)}: '..' is not allowed in a layer path")
        parts.append(part)
    return "/".join(parts)


def _escapes(link_path: str, target: str) -> bool:
    """Whether symlink ``link_path`` -> ``target`` points out of the layer (lexically)."""
    if target.startswith("/"):
        return True
    stack = link_path.split("/")[:-1]
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not stack:
                return True
            stack.pop()
        else:
            stack.append(part)
    return False


def _split(path: str) -> tuple[str, str]:
    parent, _, base = path.rpartition("/")
    return parent, base


class _Unpacker:
    """Creates a layer's entries under one root, every one through its parent's fd."""

    def __init__(self, root: str) -> None:
        self.root_fd = os.open(root, _DIR_FLAGS)
        self.dirs: dict[str, int] = {"": self.root_fd}
        # Directory modes and times are set last: children change mtimes, and a
        # read-only mode must not stop the children from being created.
        self.dir_meta: dict[str, _Header | None] = {}  # None: a parent the layer omitted
        self.chown = os.geteuid() == 0
        self.name = ""  # the entry being unpacked, for messages

    def close(self) -> None:
        for fd in self.dirs.values():
            os.close(fd)
        self.dirs.clear()

    def _evict(self, everything: bool = False) -> None:
        if everything or len(self.dirs) > _MAX_OPEN_DIRS:
            for path, fd in list(self.dirs.items()):
                if path:
                    os.close(fd)
                    del self.dirs[path]

    # --- resolution

    def dir_fd(self, path: str, create: bool = True) -> int:
        """An fd of the layer directory ``path``, opened without following any symlink.

        Walks down from the deepest directory already open, one component at a time
        (no recursion: a hostile layer may nest thousands deep).
        """
        fd = self.dirs.get(path)
        if fd is not None:
            return fd
        missing = []
        parent = path
        while parent not in self.dirs:
            parent, base = _split(parent)
            missing.append(base)
        fd = self.dirs[parent]
        current = parent
        while missing:
            base = missing.pop()
            current = f"{current}/{base}" if current else base
            child = self._open_dir(fd, current, base, create)
            if fd != self.dirs.get(_split(current)[0]):
                os.close(fd)  # an intermediate directory there was no room to keep
            fd = child
            if not missing or len(self.dirs) < _MAX_OPEN_DIRS:
                self.dirs[current] = fd
        return fd

    def _open_dir(self, parent_fd: int, path: str, base: str, create: bool) -> int:
        if base.startswith(WHITEOUT_PREFIX):
            raise LayerError(f"layer entry {_show(self.name)}: parent {_show(path)} is a whiteout")
        try:
            return os.open(base, _DIR_FLAGS, dir_fd=parent_fd)
        except FileNotFoundError:
            if not create:
                raise
            os.mkdir(base, 0o700, dir_fd=parent_fd)
            self.dir_meta[path] = None
            return os.open(base, _DIR_FLAGS, dir_fd=parent_fd)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise self._not_a_directory(parent_fd, path) from None
            raise

    def _not_a_directory(self, parent_fd: int, path: str) -> LayerError:
        base = _split(path)[1]
        what = "is not a directory"
        try:
            if stat.S_ISLNK(os.stat(base, dir_fd=parent_fd, follow_symlinks=False).st_mode):
                target = os.readlink(base, dir_fd=parent_fd)
                if _escapes(path, target):
                    what = "is a symlink out of the layer"
                else:
                    what = "is a symlink (layers are never unpacked through symlinks)"
        except OSError:
            pass
        return LayerError(f"layer entry {_show(self.name)}: parent {_show(path)} {what}")

    def _make(self, parent_fd: int, path: str, create: Callable[[], Any]) -> Any:
        """Run ``create``; an earlier non-directory of the same name is replaced once."""
        try:
            return create()
        except FileExistsError:
            base = _split(path)[1]
            if stat.S_ISDIR(os.stat(base, dir_fd=parent_fd, follow_symlinks=False).st_mode):
                raise LayerError(
                    f"layer entry {_show(self.name)}: would replace the directory {_show(path)}"
                ) from None
            os.unlink(base, dir_fd=parent_fd)
            return create()

    # --- entries

    def entry(self, h: _Header, source: _Source) -> None:
        if len(self.dirs) > _MAX_OPEN_DIRS:
            self._evict()
        path = _clean(h.name)
        parent, base = _split(path)
        t = h.type
        if t in _REGULAR or t == _GNU_DUMPDIR:
            pass
        elif t not in (_DIRECTORY, _SYMLINK, _HARDLINK, _CHAR, _BLOCKDEV, _FIFO):
            if t == _GNU_SPARSE:
                raise LayerError(f"layer entry {_show(h.name)}: sparse files are not supported")
            raise LayerError(f"layer entry {_show(h.name)}: unsupported tar entry type {t!r}")
        if base.startswith(WHITEOUT_PREFIX):
            if t in _REGULAR or t == _GNU_DUMPDIR:
                source.skip(h.size + -h.size % BLOCK)
            self.whiteout(parent, base)
            return
        if t == _GNU_DUMPDIR:
            source.skip(h.size + -h.size % BLOCK)
            t = _DIRECTORY
        if t == _DIRECTORY:
            self.directory(path, h)
            return
        if not path:
            raise LayerError(f"layer entry {_show(h.name)}: the layer root must be a directory")
        parent_fd = self.dir_fd(parent)
        if t in _REGULAR:
            self.regular(parent_fd, path, base, h, source)
        elif t == _SYMLINK:
            self.symlink(parent_fd, path, base, h)
        elif t == _HARDLINK:
            self.hardlink(parent_fd, path, base, h)
        else:
            self.node(parent_fd, path, base, h)

    def _set_xattrs(self, target: int | str, xattrs: list[tuple[str, bytes]]) -> None:
        for key, value in xattrs:
            if key.startswith(OVERLAY_XATTR_PREFIXES):
                continue
            if isinstance(target, int):
                os.setxattr(target, key, value)
            else:
                os.setxattr(target, key, value, follow_symlinks=False)

    def regular(self, parent_fd: int, path: str, base: str, h: _Header, source: _Source) -> None:
        try:
            fd = os.open(base, _FILE_FLAGS, 0o600, dir_fd=parent_fd)
        except FileExistsError:
            fd = self._make(
                parent_fd, path, lambda: os.open(base, _FILE_FLAGS, 0o600, dir_fd=parent_fd)
            )
        try:
            source.copy_to(fd, h.size)
            # chown clears setuid bits and security.capability: chown, chmod, xattrs, times.
            if self.chown:
                os.fchown(fd, h.uid, h.gid)
            os.fchmod(fd, h.mode)
            if h.xattrs:
                self._set_xattrs(fd, h.xattrs)
            os.utime(fd, ns=(h.mtime if h.atime is None else h.atime, h.mtime))
        finally:
            os.close(fd)

    def directory(self, path: str, h: _Header) -> None:
        if path:
            parent, base = _split(path)
            parent_fd = self.dir_fd(parent)
            try:
                os.mkdir(base, 0o700, dir_fd=parent_fd)
            except FileExistsError:
                st = os.stat(base, dir_fd=parent_fd, follow_symlinks=False)
                if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                    # deleted, then made again as a directory in the same layer: hide
                    # whatever lower layers have under that name.
                    os.unlink(base, dir_fd=parent_fd)
                    os.mkdir(base, 0o700, dir_fd=parent_fd)
                    os.setxattr(self.dir_fd(path), OPAQUE_XATTR, b"y")
                elif not stat.S_ISDIR(st.st_mode):
                    kind = "symlink" if stat.S_ISLNK(st.st_mode) else "non-directory"
                    raise LayerError(
                        f"layer entry {_show(h.name)}: a directory may not replace the {kind} "
                        f"{_show(path)}"
                    ) from None
        fd = self.dir_fd(path)
        if self.chown:
            os.fchown(fd, h.uid, h.gid)
        self._set_xattrs(fd, h.xattrs)
        self.dir_meta[path] = h

    def symlink(self, parent_fd: int, path: str, base: str, h: _Header) -> None:
        self._make(parent_fd, path, lambda: os.symlink(h.linkname, base, dir_fd=parent_fd))
        self._metadata_at(parent_fd, base, h, chmod=False)

    def node(self, parent_fd: int, path: str, base: str, h: _Header) -> None:
        kind = {_CHAR: stat.S_IFCHR, _BLOCKDEV: stat.S_IFBLK, _FIFO: stat.S_IFIFO}[h.type]
        device = os.makedev(h.major, h.minor) if h.type != _FIFO else 0
        self._make(parent_fd, path, lambda: os.mknod(base, kind | 0o600, device, dir_fd=parent_fd))
        self._metadata_at(parent_fd, base, h, chmod=True)

    def _metadata_at(self, parent_fd: int, base: str, h: _Header, chmod: bool) -> None:
        """Metadata of a just-created symlink or node, by name, never following it."""
        if self.chown:
            os.chown(base, h.uid, h.gid, dir_fd=parent_fd, follow_symlinks=False)
        if chmod:  # a node this call created: not a symlink, so chmod cannot follow one
            os.chmod(base, h.mode, dir_fd=parent_fd)
        if h.xattrs:
            self._set_xattrs(f"/proc/self/fd/{parent_fd}/{base}", h.xattrs)
        mtime = h.mtime
        atime = h.atime if h.atime is not None else mtime
        os.utime(base, ns=(atime, mtime), dir_fd=parent_fd, follow_symlinks=False)

    def hardlink(self, parent_fd: int, path: str, base: str, h: _Header) -> None:
        target = _clean(h.linkname)
        if target == path:
            return
        if not target:
            raise LayerError(f"layer entry {_show(h.name)}: hard link to the layer root")
        target_parent, target_base = _split(target)
        missing = LayerError(
            f"layer entry {_show(h.name)}: hard link target {_show(h.linkname)} is not in the layer"
        )
        try:
            target_fd = self.dir_fd(target_parent, create=False)
        except FileNotFoundError:
            raise missing from None

        def link() -> None:
            os.link(
                target_base,
                base,
                src_dir_fd=target_fd,
                dst_dir_fd=parent_fd,
                follow_symlinks=False,
            )

        try:
            self._make(parent_fd, path, link)
        except FileNotFoundError:
            raise missing from None

    def whiteout(self, parent: str, base: str) -> None:
        parent_fd = self.dir_fd(parent)
        if base == OPAQUE_MARKER:
            os.setxattr(parent_fd, OPAQUE_XATTR, b"y")
            return
        if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            return  # aufs bookkeeping (.wh..wh.plnk and the like): nothing to record
        victim = base[len(WHITEOUT_PREFIX) :]
        path = f"{parent}/{victim}" if parent else victim
        if victim in ("", ".", ".."):
            raise LayerError(f"layer entry {_show(self.name)}: bad whiteout name")
        self._make(
            parent_fd,
            path,
            lambda: os.mknod(victim, stat.S_IFCHR, os.makedev(0, 0), dir_fd=parent_fd),
        )

    def finish(self, root_mode: int, root_owner: tuple[int, int] | None) -> None:
        """Directory modes and times, now that all children exist.

        Visits the directories depth first, holding open only the chain down to the
        current one, so every directory is opened once however the layer ordered them.
        """
        if "" not in self.dir_meta:
            os.fchmod(self.root_fd, root_mode)
            if root_owner is not None and self.chown:
                os.fchown(self.root_fd, *root_owner)
        self._evict(everything=True)
        chain: list[tuple[str, int]] = [("", self.root_fd)]
        try:
            for path in sorted(self.dir_meta, key=lambda p: p.split("/")):
                while len(chain) > 1 and not path.startswith(chain[-1][0] + "/"):
                    os.close(chain.pop()[1])
                current, fd = chain[-1]
                if path:
                    for base in path[len(current) + 1 if current else 0 :].split("/"):
                        current = f"{current}/{base}" if current else base
                        fd = os.open(base, _DIR_FLAGS, dir_fd=fd)
                        chain.append((current, fd))
                h = self.dir_meta[path]
                if h is None:
                    os.fchmod(fd, 0o755)
                    continue
                os.fchmod(fd, h.mode)
                os.utime(fd, ns=(h.mtime if h.atime is None else h.atime, h.mtime))
        finally:
            for _, fd in chain[1:]:
                os.close(fd)

    def run(self, source: _Source, on_progress: Callable[[int], None] | None) -> None:
        records: dict[str, bytes] = {}
        long_name: str | None = None
        long_link: str | None = None
        reported = 0
        try:
            while True:
                block = source.header()
                if block == _ZERO_BLOCK:
                    break
                h = _parse_header(block)
                t = h.type
                if t in _META_TYPES:
                    if h.size > _MAX_META:
                        raise LayerError(f"the layer is not a valid tar: {h.size}-byte record")
                    data = source.read(h.size)
                    if t == _PAX:
                        _parse_pax(data, records)
                    elif t == _GNU_LONGNAME:
                        long_name = _text(data)
                    elif t == _GNU_LONGLINK:
                        long_link = _text(data)
                    continue  # global PAX headers and volume labels say nothing we use
                if long_name is not None:
                    h.name = long_name
                if long_link is not None:
                    h.linkname = long_link
                if records:
                    _apply_pax(h, records)
                records, long_name, long_link = {}, None, None
                self.name = h.name
                try:
                    self.entry(h, source)
                except OSError as e:
                    raise LayerError(f"layer entry {_show(h.name)}: {_reason(e)}") from e
                if on_progress is not None and source.total - reported >= _BUFFER:
                    reported = source.total
                    on_progress(reported)
            source.drain()
        except _Truncated:
            last = f" (last entry {_show(self.name)})" if self.name else ""
            raise LayerError(
                f"the layer is truncated: the tar ends before its end-of-archive marker{last}"
            ) from None
        if on_progress is not None:
            on_progress(source.total)


def apply_layer(
    stream: BinaryIO, dest: str, *, on_progress: Callable[[int], None] | None = None
) -> int:
    """Unpack a layer (plain, gzip or zstd tar) into ``dest``, missing or empty.

    Whiteouts become overlayfs whiteouts. Returns the number of uncompressed tar bytes.
    ``on_progress`` gets that count as it grows (about every MiB). On error nothing is
    left: ``dest`` is as it was (see the module's notes on safety and failure).
    """
    dest = os.path.abspath(dest)
    try:
        st: os.stat_result | None = os.lstat(dest)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise LayerError(f"cannot use {dest} for a layer: {_reason(e)}") from e
    if st is not None:
        if not stat.S_ISDIR(st.st_mode):
            raise LayerError(f"cannot unpack a layer into {dest}: not a directory")
        with os.scandir(dest) as entries:
            if next(entries, None) is not None:
                raise LayerError(f"cannot unpack a layer into {dest}: it is not empty")
    parent, name = os.path.split(dest)
    try:
        work = tempfile.mkdtemp(prefix=f".{name[:64]}.apply-", dir=parent)
    except OSError as e:
        raise LayerError(f"cannot unpack a layer into {dest}: {_reason(e)}") from e
    source: BinaryIO | None = None
    try:
        source = open_layer_stream(stream)
        counter = _Source(source)
        try:
            unpacker = _Unpacker(work)
            try:
                unpacker.run(counter, on_progress)
                if st is not None:
                    unpacker.finish(stat.S_IMODE(st.st_mode), (st.st_uid, st.st_gid))
                else:
                    unpacker.finish(0o755, None)
            finally:
                unpacker.close()
            os.rename(work, dest)
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise LayerError(f"cannot unpack a layer into {dest}: it is not empty") from e
            raise LayerError(f"cannot unpack a layer into {dest}: {_reason(e)}") from e
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        if source is not None and source is not stream:
            try:
                source.close()
            except Exception:
                pass
    return counter.total


# --------------------------------------------------------------------------- writing

Compression = Literal["gzip", "zstd", "none"]


class _HashingWriter:
    """The compressed side: hashed and counted on its way to ``out``."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: ReadableBuffer) -> int:
        view = memoryview(data)
        self.hash.update(view)
        self.size += view.nbytes
        self._out.write(view)
        return view.nbytes

    def flush(self) -> None:
        self._out.flush()


class _Sink:
    """The uncompressed tar: hashed (the diff_id), cut into fixed blocks, compressed.

    Fixed-size blocks make the compressed bytes depend on the content alone, never on
    how this module happened to split its writes, so digests are reproducible.
    """

    def __init__(self, out: BinaryIO, compression: Compression) -> None:
        self.hashed = _HashingWriter(out)
        self.diff = hashlib.sha256()
        self._pending = bytearray()
        self._compressor: Any
        if compression == "gzip":
            from isal import igzip_threaded

            self._compressor = igzip_threaded.open(
                self.hashed, "wb", compresslevel=2, threads=1, block_size=_BUFFER
            )
        elif compression == "zstd":
            import zstandard

            self._compressor = zstandard.ZstdCompressor(level=3).stream_writer(
                cast(BinaryIO, self.hashed), closefd=False
            )
        elif compression == "none":
            self._compressor = None
        else:
            raise LayerError(f"unknown layer compression {compression!r}: use gzip, zstd or none")

    def write(self, data: ReadableBuffer) -> None:
        self.diff.update(data)
        pending = self._pending
        pending += data
        while len(pending) >= _BUFFER:
            self._emit(pending[:_BUFFER])
            del pending[:_BUFFER]

    def _emit(self, block: bytes | bytearray) -> None:
        if self._compressor is None:
            self.hashed.write(block)
        else:
            self._compressor.write(block)

    def close(self) -> None:
        if self._pending:
            self._emit(bytes(self._pending))
            self._pending.clear()
        if self._compressor is not None:
            self._compressor.close()
            self._compressor = None
        self.hashed.flush()

    def abort(self) -> None:
        """Stop the compressor's threads; the output is garbage anyway."""
        if self._compressor is not None:
            try:
                self._compressor.close()
            except Exception:
                pass
            self._compressor = None


class _Archiver:
    """Walks a directory in sorted order and writes its entries as a PAX tar."""

    def __init__(self, sink: _Sink, overlay: bool, source_date_epoch: int | None) -> None:
        self.sink = sink
        self.overlay = overlay
        self.epoch = source_date_epoch
        self.links: dict[tuple[int, int], str] = {}
        self._buf = bytearray(_BUFFER)
        self._view = memoryview(self._buf)

    def _mtime(self, st: os.stat_result) -> int:
        seconds = st.st_mtime_ns // 1_000_000_000
        return seconds if self.epoch is None else min(seconds, self.epoch)

    def _info(self, name: str, st: os.stat_result, kind: bytes) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = stat.S_IMODE(st.st_mode)
        info.uid = st.st_uid
        info.gid = st.st_gid
        info.uname = info.gname = ""
        info.mtime = self._mtime(st)
        return info

    def _emit(self, info: tarfile.TarInfo, xattrs: dict[str, bytes] | None = None) -> None:
        if xattrs:
            info.pax_headers = {
                PAX_XATTR + key: value.decode("utf-8", "surrogateescape")
                for key, value in sorted(xattrs.items())
            }
        self.sink.write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))

    def _xattrs(self, path: str) -> dict[str, bytes]:
        try:
            names = os.listxattr(path, follow_symlinks=False)
        except OSError as e:
            if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                return {}
            raise
        return {key: os.getxattr(path, key, follow_symlinks=False) for key in names}

    def walk(self, root: str) -> None:
        try:
            if not stat.S_ISDIR(os.lstat(root).st_mode):
                raise LayerError(f"cannot archive {root}: not a directory")
        except OSError as e:
            raise LayerError(f"cannot archive {root}: {_reason(e)}") from e
        # depth first, each directory's names in byte order: parents before children
        stack: list[tuple[str, str, list[str]]] = [(root, "", self._names(root))]
        while stack:
            top, rel, names = stack[-1]
            if not names:
                stack.pop()
                continue
            name = names.pop()
            path = f"{top}/{name}"
            try:
                is_dir = self.entry(path, rel + name)
            except OSError as e:
                raise LayerError(f"cannot archive {_show(path)}: {_reason(e)}") from e
            if is_dir:
                stack.append((path, f"{rel}{name}/", self._names(path)))

    def _names(self, path: str) -> list[str]:
        try:
            names = os.listdir(path)
        except OSError as e:
            raise LayerError(f"cannot archive {_show(path)}: {_reason(e)}") from e
        names.sort(key=os.fsencode, reverse=True)  # popped from the end: ascending
        return names

    def entry(self, path: str, rel: str) -> bool:
        """Write one entry; True when it is a directory to descend into."""
        st = os.lstat(path)
        mode = st.st_mode
        if stat.S_ISSOCK(mode):
            return False  # tar cannot hold sockets; they are recreated at run time
        xattrs = self._xattrs(path)
        if self.overlay:
            is_whiteout = stat.S_ISCHR(mode) and st.st_rdev == 0
            if is_whiteout or "trusted.overlay.whiteout" in xattrs:
                parent, base = _split(rel)
                name = f"{parent}/{WHITEOUT_PREFIX}{base}" if parent else WHITEOUT_PREFIX + base
                info = self._info(name, st, tarfile.REGTYPE)
                info.mode = 0o600
                self._emit(info)
                return False
            for key in ("trusted.overlay.metacopy", "user.overlay.metacopy"):
                if key in xattrs:
                    raise LayerError(
                        f"cannot archive {_show(path)}: its data is in a lower layer "
                        "(overlay metacopy); mount snapshots with metacopy=off"
                    )
            for key in ("trusted.overlay.redirect", "user.overlay.redirect"):
                if key in xattrs:
                    raise LayerError(
                        f"cannot archive {_show(path)}: it is a renamed directory "
                        "(overlay redirect); mount snapshots with redirect_dir=off"
                    )
        opaque = self.overlay and b"y" in (
            xattrs.get("trusted.overlay.opaque"),
            xattrs.get("user.overlay.opaque"),
        )
        kept = {
            k: v
            for k, v in xattrs.items()
            if not k.startswith(OVERLAY_XATTR_PREFIXES) and k not in HOST_XATTRS
        }
        if stat.S_ISDIR(mode):
            self._emit(self._info(rel, st, tarfile.DIRTYPE), kept)
            if opaque:
                marker = self._info(f"{rel}/{OPAQUE_MARKER}", st, tarfile.REGTYPE)
                marker.mode = stat.S_IMODE(mode) & 0o777
                self._emit(marker)
            return True
        if st.st_nlink > 1:
            inode = (st.st_dev, st.st_ino)
            first = self.links.get(inode)
            if first is not None:
                info = self._info(rel, st, tarfile.LNKTYPE)
                info.linkname = first
                self._emit(info)
                return False
            self.links[inode] = rel
        if stat.S_ISREG(mode):
            self._regular(path, rel, st, kept)
        elif stat.S_ISLNK(mode):
            info = self._info(rel, st, tarfile.SYMTYPE)
            info.linkname = os.readlink(path)
            self._emit(info, kept)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            info = self._info(rel, st, tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE)
            info.devmajor = os.major(st.st_rdev)
            info.devminor = os.minor(st.st_rdev)
            self._emit(info, kept)
        elif stat.S_ISFIFO(mode):
            self._emit(self._info(rel, st, tarfile.FIFOTYPE), kept)
        return False

    def _regular(self, path: str, rel: str, st: os.stat_result, xattrs: dict[str, bytes]) -> None:
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(path, flags | os.O_NOATIME)
        except PermissionError:
            fd = os.open(path, flags)
        try:
            opened = os.fstat(fd)
            if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
                raise LayerError(f"cannot archive {_show(path)}: it changed while being archived")
            info = self._info(rel, st, tarfile.REGTYPE)
            info.size = st.st_size
            self._emit(info, xattrs)
            remaining = st.st_size
            view = self._view
            while remaining:
                n = os.readv(fd, [view[: min(remaining, _BUFFER)]])
                if not n:
                    raise LayerError(f"cannot archive {_show(path)}: it shrank while being read")
                self.sink.write(view[:n])
                remaining -= n
            if st.st_size % BLOCK:
                self.sink.write(bytes(BLOCK - st.st_size % BLOCK))
        finally:
            os.close(fd)


def _archive(
    src_dir: str,
    out: BinaryIO,
    compression: Compression,
    source_date_epoch: int | None,
    overlay: bool,
) -> tuple[str, str, int]:
    sink = _Sink(out, compression)
    try:
        _Archiver(sink, overlay, source_date_epoch).walk(src_dir)
        sink.write(bytes(2 * BLOCK))
        sink.close()
    except BaseException as e:
        sink.abort()
        if isinstance(e, OSError):
            raise LayerError(f"cannot write the layer of {src_dir}: {_reason(e)}") from e
        raise
    diff_id = "sha256:" + sink.diff.hexdigest()
    return "sha256:" + sink.hashed.hash.hexdigest(), diff_id, sink.hashed.size


def write_layer(
    src_dir: str,
    out: BinaryIO,
    *,
    compression: Compression = "gzip",
    source_date_epoch: int | None = None,
) -> tuple[str, str, int]:
    """Write the layer an overlayfs upper directory holds to ``out``.

    Whiteouts (char 0:0) become ``.wh.NAME``, opaque directories get ``.wh..wh..opq``.
    Entries are in sorted order with numeric owners only, and with ``source_date_epoch``
    no mtime is later than it, so the same content gives the same digests. Returns
    (digest of the written blob, diff_id of the uncompressed tar, size of the blob). On
    error ``out`` holds a partial stream the caller discards.
    """
    return _archive(src_dir, out, compression, source_date_epoch, overlay=True)


def tar_directory(
    src_dir: str,
    out: BinaryIO,
    *,
    compression: Compression = "gzip",
    source_date_epoch: int | None = None,
) -> tuple[str, str, int]:
    """Write a plain root filesystem as a layer (import, bootstrap): no whiteout translation.

    Same order, ownership and time rules, and the same result, as ``write_layer``.
    """
    return _archive(src_dir, out, compression, source_date_epoch, overlay=False)
