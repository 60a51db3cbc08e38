"""The verbs for a container's files: cp (both ways), diff, export, commit.

``cp`` follows ``docker cp``'s rules: a directory destination receives the source under
its own name (its contents with ``SRC/.``); a missing destination is the new name;
``-`` is a tar on stdin or stdout; ``-L`` follows a symlink source; ``-a`` keeps the
container user's ownership when copying in.
"""

from __future__ import annotations

import os
import posixpath
import stat
import sys
import tarfile
import tempfile
from argparse import Namespace
from typing import cast

from berth.cli.app import EXIT_ERROR, error
from berth.client import Client, ClientError, NotFoundError
from berth.client import archive as api

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, BinaryIO

GO_DIR = 1 << 31
_CHUNK = 1 << 20


def _split_container(arg: str) -> tuple[str, str] | None:
    """``CONTAINER:PATH`` -> (container, path); a local path (``./a:b``, ``/x``) -> None."""
    if arg.startswith(("/", ".")) or ":" not in arg:
        return None
    container, _, path = arg.partition(":")
    return (container, path) if container else None


def _dir_entry(path: str) -> tuple[str, str]:
    """docker's SplitPathDirEntry: ``a/b/.`` keeps ``.`` as the base."""
    cleaned = posixpath.normpath(path)
    if path.endswith("/.") or path == ".":
        cleaned = cleaned.rstrip("/") + "/."
    return posixpath.dirname(cleaned) or ".", posixpath.basename(cleaned)


class _NoChownTar(tarfile.TarFile):
    """Extraction as docker cp does it: modes and times, never ownership."""

    def chown(self, tarinfo: tarfile.TarInfo, targetpath: Any, numeric_owner: bool) -> None:
        pass


def _rename_top(member: tarfile.TarInfo, old: str, new: str) -> bool:
    """Rebase ``old/...`` to ``new/...``; False for members outside ``old``."""
    name = member.name.rstrip("/")
    if old in (".", ""):
        member.name = posixpath.normpath(posixpath.join(new, name))
        return True
    if name == old or name.startswith(old + "/"):
        member.name = new + name[len(old) :]
        return True
    return False


def _safe(into: str, name: str, what: str) -> None:
    """Refuse a name that leaves ``into`` or passes through a symlink (the container
    made the tar: nothing it holds may write outside the destination)."""
    cleaned = posixpath.normpath(name)
    if cleaned.startswith(("/", "../")) or cleaned == "..":
        raise ClientError(f"refusing {what} {name!r} of the archive: it leaves the destination")
    path = into
    for part in cleaned.split("/")[:-1]:
        path = os.path.join(path, part)
        if os.path.islink(path):
            raise ClientError(f"refusing {what} {name!r} of the archive: it passes a symlink")


def _extract(stream: BinaryIO, into: str, old_top: str, new_top: str) -> None:
    with _NoChownTar.open(fileobj=stream, mode="r|*") as tar:
        for member in tar:
            if not _rename_top(member, old_top, new_top):
                continue
            if member.name in (".", "") and member.isdir():
                continue
            _safe(into, member.name, "entry")
            if member.islnk():
                _safe(into, member.linkname, "hard link")
            target = os.path.join(into, member.name)
            if os.path.lexists(target) and not (member.isdir() and os.path.isdir(target)):
                if os.path.isdir(target) and not os.path.islink(target):
                    raise ClientError(f"cannot overwrite directory {target} with non-directory")
                os.unlink(target)
            tar.extract(member, into, set_attrs=True)


def _copy_from(client: Client, container: str, path: str, dest: str, follow: bool) -> None:
    stat_info = api.stat_path(client, container, path)
    rebase = ""
    if follow and stat_info.get("linkTarget"):
        rebase = _dir_entry(path)[1]
        path = str(stat_info["linkTarget"])
    response, stat_info = api.get_archive(client, container, path)
    with response:
        if dest == "-":
            out = sys.stdout.buffer
            while chunk := response.read_chunk():
                out.write(chunk)
            out.flush()
            return
        top = str(stat_info.get("name") or _dir_entry(path)[1])
        src_is_dir = bool(int(stat_info.get("mode", 0)) & GO_DIR)
        reader = cast("BinaryIO", _ChunkReader(response.read_chunk))
        if os.path.isdir(dest):
            _extract(reader, dest, top, rebase or top)
            return
        if os.path.lexists(dest) and src_is_dir:
            raise ClientError(f"cannot copy a directory to a file: {dest}")
        if not os.path.lexists(dest) and dest.endswith("/") and not src_is_dir:
            raise ClientError(f"destination directory {dest} does not exist")
        parent = os.path.dirname(os.path.abspath(dest.rstrip("/") or "/"))
        if not os.path.isdir(parent):
            raise ClientError(f"destination directory {parent} does not exist")
        _extract(reader, parent, top, os.path.basename(dest.rstrip("/")))


class _ChunkReader:
    """A stream's read_chunk as a file for tarfile."""

    def __init__(self, read_chunk: Any) -> None:
        self.read_chunk = read_chunk
        self.pending = b""

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self.pending) < size:
            chunk = self.read_chunk()
            if not chunk:
                break
            self.pending += chunk
        if size < 0:
            data, self.pending = self.pending, b""
        else:
            data, self.pending = self.pending[:size], self.pending[size:]
        return data


def _copy_to(
    client: Client, src: str, container: str, path: str, follow: bool, archive: bool
) -> None:
    options = {"no_overwrite_dir_non_dir": True, "copy_uid_gid": archive}
    if src == "-":
        api.put_archive(client, container, path, sys.stdin.buffer, **options)
        return
    try:
        st = os.stat(src) if follow else os.lstat(src)
    except OSError as exc:
        raise ClientError(f"could not find the file {src}: {exc.strerror}") from None
    src_is_dir = stat.S_ISDIR(st.st_mode)
    base = _dir_entry(src)[1]
    try:
        dest = api.stat_path(client, container, path)
        if dest.get("linkTarget"):
            path = str(dest["linkTarget"])
            dest = api.stat_path(client, container, path)
    except NotFoundError:
        dest = {}
    if dest and int(dest.get("mode", 0)) & GO_DIR:
        into, top = path, base
    elif dest:
        if src_is_dir:
            raise ClientError(f"cannot copy a directory to a file: {container}:{path}")
        into, top = _dir_entry(path)[0], _dir_entry(path)[1]
    else:
        if path.endswith("/") and not src_is_dir:
            raise ClientError(f"destination directory {container}:{path} does not exist")
        into, top = _dir_entry(path.rstrip("/") or "/")
    with tempfile.TemporaryFile() as spool:
        with tarfile.open(fileobj=spool, mode="w", format=tarfile.PAX_FORMAT) as tar:
            if top == "." or base == ".":
                for name in sorted(os.listdir(src)):
                    tar.add(os.path.join(src, name), arcname=name, recursive=True)
            else:
                tar.add(src, arcname=top, recursive=True)
        spool.seek(0)
        api.put_archive(client, container, into, spool, **options)


def cp(client: Client, options: Namespace) -> int:
    source, dest = options.source, options.dest
    src_c, dst_c = _split_container(source), _split_container(dest)
    if src_c and dst_c:
        error("copying between containers is not supported")
        return EXIT_ERROR
    if not src_c and not dst_c:
        error("must specify at least one container source (CONTAINER:PATH)")
        return EXIT_ERROR
    if src_c:
        _copy_from(client, src_c[0], src_c[1] or "/", dest, options.follow_link)
    else:
        assert dst_c is not None
        _copy_to(client, source, dst_c[0], dst_c[1] or "/", options.follow_link, options.archive)
    return 0


def diff(client: Client, options: Namespace) -> int:
    for change in api.diff(client, options.container):
        print(f"{api.KINDS.get(int(change['Kind']), '?')} {change['Path']}")
    return 0


def export(client: Client, options: Namespace) -> int:
    if not options.output and sys.stdout.isatty():
        error("cowardly refusing to save to a terminal: use the -o flag or redirect")
        return EXIT_ERROR
    with api.export(client, options.container) as response:
        if options.output:
            tmp = options.output + ".berth-tmp"
            try:
                with open(tmp, "wb") as out:
                    while chunk := response.read_chunk():
                        out.write(chunk)
                os.replace(tmp, options.output)
            except BaseException:
                with _suppress():
                    os.unlink(tmp)
                raise
        else:
            stdout = sys.stdout.buffer
            while chunk := response.read_chunk():
                stdout.write(chunk)
            stdout.flush()
    return 0


def _suppress() -> Any:
    import contextlib

    return contextlib.suppress(OSError)


def commit(client: Client, options: Namespace) -> int:
    repo = tag = None
    if options.repository:
        repo, tag = options.repository, None
        slash = repo.rfind("/")
        colon = repo.rfind(":")
        if colon > slash:
            repo, tag = repo[:colon], repo[colon + 1 :]
    pause = str(options.pause).lower() not in ("false", "0", "no")
    image_id = api.commit(
        client,
        options.container,
        repo,
        tag,
        message=options.message,
        author=options.author,
        changes=options.change,
        pause=pause,
    )
    print(image_id)
    return 0
