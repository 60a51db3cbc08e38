"""The build context: the tar stream a client sends, unpacked once into a folder.

Files are hashed while they are written, so a COPY's cache key (contents and modes,
never mtimes) costs no second read. Entries that would land outside the folder are
dropped. As dockerd does, the context is not filtered again here (clients apply
``.dockerignore`` when they make the tar); only the Dockerfile and ``.dockerignore``
are hidden from COPY when the ignore patterns exclude them.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import stat
import tarfile
from typing import BinaryIO

from berth.build import dockerignore
from berth.errors import InvalidArgument

_CHUNK = 1 << 20


def clean_rel(name: str) -> str | None:
    """A tar member name as a relative path inside the context; None if it escapes."""
    path = posixpath.normpath("/" + name.replace("\\", "/")).lstrip("/")
    if path in ("", "."):
        return ""
    if path.startswith("../") or path == "..":
        return None
    return path


class Context:
    """An unpacked context folder and the content digests of its regular files."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.digests: dict[str, str] = {}  # relative path -> sha256 of the content
        self._real_root = os.path.realpath(root)

    # ---- unpacking ------------------------------------------------------------------

    def extract(self, stream: BinaryIO) -> None:
        """Unpack a (possibly compressed) tar stream; an empty body is an empty context."""
        os.makedirs(self.root, mode=0o755, exist_ok=True)
        self._real_root = os.path.realpath(self.root)
        head = stream.read(1)
        if not head:
            return
        from berth.images.layer import PrefixedStream

        source = PrefixedStream(head, stream)
        dirs: list[tuple[str, int, float]] = []
        try:
            with tarfile.open(fileobj=source, mode="r|*") as tar:
                for member in tar:
                    self._member(tar, member, dirs)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise InvalidArgument(f"the build context is not a valid tar stream: {exc}") from None
        for path, mode, mtime in reversed(dirs):
            os.chmod(path, mode)
            os.utime(path, (mtime, mtime))

    def _member(self, tar: tarfile.TarFile, member: tarfile.TarInfo, dirs: list) -> None:
        rel = clean_rel(member.name)
        if rel is None or rel == "":
            return
        path = os.path.join(self.root, rel)
        parent = os.path.dirname(path)
        if not os.path.isdir(parent):
            os.makedirs(parent, mode=0o755, exist_ok=True)
        real = os.path.realpath(parent)
        if real != self._real_root and not real.startswith(self._real_root + "/"):
            return  # a parent is a symlink pointing away: never write through it
        if member.isdir():
            if not os.path.isdir(path):
                self._clear(path)
                os.mkdir(path, 0o755)
            dirs.append((path, member.mode & 0o7777, member.mtime))
            return
        self._clear(path)
        if member.isreg():
            digest = hashlib.sha256()
            source = tar.extractfile(member)
            assert source is not None
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as out:
                while chunk := source.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
            os.chmod(path, member.mode & 0o7777)
            os.utime(path, (member.mtime, member.mtime))
            self.digests[rel] = digest.hexdigest()
        elif member.issym():
            os.symlink(member.linkname, path)
        elif member.islnk():
            target = clean_rel(member.linkname)
            if target and os.path.isfile(os.path.join(self.root, target)):
                os.link(os.path.join(self.root, target), path)
                if target in self.digests:
                    self.digests[rel] = self.digests[target]
        # devices, fifos: nothing a COPY could use

    @staticmethod
    def _clear(path: str) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path)
        else:
            os.unlink(path)

    # ---- the build files ------------------------------------------------------------

    def read_dockerfile(self, name: str) -> bytes:
        rel = clean_rel(name)
        if not rel:
            raise InvalidArgument(f"the Dockerfile ({name}) must be inside the build context")
        path = os.path.join(self.root, rel)
        try:
            with open(path, "rb") as f:
                return f.read()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            pass
        # as dockerd: "Dockerfile" also finds "dockerfile"
        if rel == "Dockerfile" and os.path.isfile(os.path.join(self.root, "dockerfile")):
            with open(os.path.join(self.root, "dockerfile"), "rb") as f:
                return f.read()
        raise InvalidArgument(f"Cannot locate specified Dockerfile: {name}") from None

    def hide_build_files(self, dockerfile: str) -> None:
        """dockerd's removeDockerfile: the ignore file and the Dockerfile leave the context
        when the ignore patterns exclude them (a client sends them anyway)."""
        try:
            with open(os.path.join(self.root, ".dockerignore"), "rb") as f:
                patterns = dockerignore.read_patterns(f.read())
        except OSError:
            return
        matcher = dockerignore.PatternMatcher(patterns)
        for name in (".dockerignore", clean_rel(dockerfile) or ""):
            if name and matcher.matches(name):
                path = os.path.join(self.root, name)
                if os.path.lexists(path) and not os.path.isdir(path):
                    os.unlink(path)
                    self.digests.pop(name, None)

    def digest_of(self, rel: str) -> str:
        """The content hash of a context file (read again only if not hashed on arrival)."""
        found = self.digests.get(rel)
        if found is not None:
            return found
        return file_digest(os.path.join(self.root, rel))


def file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
