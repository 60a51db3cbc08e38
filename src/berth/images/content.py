"""The content store: immutable blobs (layers, configs, manifests) kept by digest.

A blob becomes visible only once it is complete and verified: writers fill a file in
``ingest/`` and hard-link it to ``blobs/<alg>/<hex>``, so readers never see a partial
blob and concurrent writers of one digest cannot clobber each other (the first link
wins, the others discard their copy). A writer with a ``resume_key`` keeps its partial
file across failures, so an interrupted download continues with an HTTP Range request.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from types import TracebackType
from typing import TYPE_CHECKING, BinaryIO

from berth.errors import BerthError, Conflict, InvalidArgument, NotFound, SystemFailure

if TYPE_CHECKING:
    from hashlib import _Hash

DIGEST_HEX_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}
_HEX_RE = re.compile(r"[0-9a-f]+")
_CHUNK = 1 << 20


class DigestMismatch(BerthError):
    """Content does not hash to (or is not the size of) what it claims to be."""


class BlobNotFound(NotFound):
    """The store holds no blob with this digest."""


def parse_digest(digest: str) -> tuple[str, str]:
    """Split "sha256:<hex>" into (algorithm, hex), refusing anything that could escape a path."""
    algorithm, sep, hexpart = digest.partition(":") if isinstance(digest, str) else ("", "", "")
    expected = DIGEST_HEX_LENGTHS.get(algorithm)
    if not sep or expected is None:
        raise InvalidArgument(
            f"invalid digest {digest!r}: expected sha256:<64 hex digits> or sha512:<128 hex digits>"
        )
    if len(hexpart) != expected or not _HEX_RE.fullmatch(hexpart):
        raise InvalidArgument(
            f"invalid digest {digest!r}: {algorithm} needs {expected} lower-case hex digits"
        )
    return algorithm, hexpart


def digest_bytes(data: bytes, algorithm: str = "sha256") -> str:
    """The digest string of ``data``: "sha256:<hex>"."""
    if algorithm not in DIGEST_HEX_LENGTHS:
        raise InvalidArgument(f"unsupported digest algorithm {algorithm!r}: use sha256 or sha512")
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobWriter:
    """Streams one blob into ingest/, then verifies and publishes it on ``commit()``."""

    def __init__(
        self,
        store: ContentStore,
        expected: str | None,
        size: int | None,
        resume_key: str | None,
    ) -> None:
        algorithm = parse_digest(expected)[0] if expected is not None else "sha256"
        if size is not None and size < 0:
            raise InvalidArgument(f"invalid blob size {size}: must be zero or more")
        self._store = store
        self.expected = expected
        self.size = size
        self.resume_key = resume_key
        self._hash: _Hash = hashlib.new(algorithm)
        self._algorithm = algorithm
        self._done = False
        self.offset = 0
        if resume_key is not None:
            key = hashlib.sha256(resume_key.encode()).hexdigest()[:40]
            self._temp = os.path.join(store.ingest_dir, f"resume-{key}")
            fd = os.open(self._temp, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                # One writer per key: a second would interleave its bytes with ours.
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise Conflict(
                    f"blob ingest {resume_key!r} is in use by another writer: wait for it to finish"
                ) from None
            self._file = os.fdopen(fd, "r+b")
            # Re-hash what an earlier writer left: the hash state did not survive it.
            while chunk := self._file.read(_CHUNK):
                self._hash.update(chunk)
                self.offset += len(chunk)
        else:
            fd, self._temp = tempfile.mkstemp(prefix="ingest-", dir=store.ingest_dir)
            self._file = os.fdopen(fd, "r+b")

    def write(self, data: bytes) -> None:
        """Append ``data``; refuse early once more bytes arrive than the expected size."""
        if self._done:
            raise InvalidArgument("blob writer is already committed or aborted: open a new one")
        if self.size is not None and self.offset + len(data) > self.size:
            self.abort(discard=True)
            raise DigestMismatch(
                f"blob {self.expected or '(unknown digest)'} is larger than its expected size "
                f"{self.size}: the source sent bad data, try again"
            )
        self._file.write(data)
        self._hash.update(data)
        self.offset += len(data)

    def commit(self) -> str:
        """Verify size and digest, then publish the blob atomically; return its digest."""
        if self._done:
            raise InvalidArgument("blob writer is already committed or aborted: open a new one")
        digest = f"{self._algorithm}:{self._hash.hexdigest()}"
        if self.size is not None and self.offset != self.size:
            self.abort(discard=True)
            raise DigestMismatch(
                f"blob {self.expected or digest} has {self.offset} bytes, expected {self.size}: "
                "the transfer was cut short, try again"
            )
        if self.expected is not None and digest != self.expected:
            self.abort(discard=True)
            raise DigestMismatch(
                f"blob digest mismatch: expected {self.expected}, got {digest}: "
                "the source sent bad data, try again"
            )
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._done = True
        final = self._store.path(digest)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        try:
            os.chmod(self._temp, 0o444)
            # link, not rename: it never replaces an existing blob, so the first writer wins.
            os.link(self._temp, final)
        except FileExistsError:
            pass
        except OSError as e:
            raise SystemFailure(f"cannot store blob {digest} at {final}: {e.strerror}") from e
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._temp)
        _fsync_dir(os.path.dirname(final))
        return digest

    def abort(self, *, discard: bool = False) -> None:
        """Stop writing; the partial file survives only for a resumable writer."""
        if not self._done:
            self._done = True
            self._file.close()
        if discard or self.resume_key is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._temp)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._done:
            self.abort()


class BlobFile:
    """A ``BlobWriter`` seen as the binary file the layer writers write to (``tar_directory``,
    ``write_layer`` take a file); memoryviews are accepted as the tar writer hands them."""

    def __init__(self, writer: BlobWriter) -> None:
        self.writer = writer

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data).cast("B")
        self.writer.write(view)  # type: ignore[arg-type]  # file.write and hash.update take views
        return view.nbytes

    def flush(self) -> None:
        pass


class ContentStore:
    """Blobs at ``root/blobs/<alg>/<hex>``, partial writes at ``root/ingest/``."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.blobs_dir = os.path.join(root, "blobs")
        self.ingest_dir = os.path.join(root, "ingest")
        os.makedirs(self.blobs_dir, exist_ok=True)
        os.makedirs(self.ingest_dir, mode=0o700, exist_ok=True)

    def path(self, digest: str) -> str:
        """Where the blob lives (whether or not it is there)."""
        algorithm, hexpart = parse_digest(digest)
        return os.path.join(self.blobs_dir, algorithm, hexpart)

    def has(self, digest: str) -> bool:
        return os.path.isfile(self.path(digest))

    def size(self, digest: str) -> int:
        try:
            return os.stat(self.path(digest)).st_size
        except FileNotFoundError:
            raise BlobNotFound(f"blob {digest} not found in the content store") from None

    def writer(
        self,
        expected: str | None = None,
        size: int | None = None,
        *,
        resume_key: str | None = None,
    ) -> BlobWriter:
        """A writer for one blob; use it as a context manager and call ``commit()``."""
        return BlobWriter(self, expected, size, resume_key)

    def put(self, data: bytes, expected: str | None = None) -> str:
        """Store ``data`` (verified against ``expected`` when given); return its digest."""
        if expected is not None and self.has(expected):
            actual = digest_bytes(data, parse_digest(expected)[0])
            if actual != expected:
                raise DigestMismatch(
                    f"blob digest mismatch: expected {expected}, got {actual}: "
                    "the source sent bad data, try again"
                )
            return expected
        with self.writer(expected, len(data)) as w:
            w.write(data)
            return w.commit()

    def read(self, digest: str, *, verify: bool = True) -> bytes:
        """A whole small blob (manifest, config), re-verified unless ``verify`` is False."""
        try:
            with open(self.path(digest), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise BlobNotFound(f"blob {digest} not found in the content store") from None
        if verify:
            actual = digest_bytes(data, parse_digest(digest)[0])
            if actual != digest:
                raise DigestMismatch(
                    f"stored blob {digest} is corrupt (it hashes to {actual}): "
                    "delete it and pull the image again"
                )
        return data

    def open(self, digest: str) -> BinaryIO:
        """A read-only file of a (large) blob; the caller closes it."""
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError:
            raise BlobNotFound(f"blob {digest} not found in the content store") from None

    def verify(self, digest: str) -> None:
        """Re-hash a stored blob; raise DigestMismatch when the disk copy is corrupt."""
        algorithm = parse_digest(digest)[0]
        h = hashlib.new(algorithm)
        with self.open(digest) as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        actual = f"{algorithm}:{h.hexdigest()}"
        if actual != digest:
            raise DigestMismatch(
                f"stored blob {digest} is corrupt (it hashes to {actual}): "
                "delete it and pull the image again"
            )

    def delete(self, digest: str) -> None:
        try:
            os.unlink(self.path(digest))
        except FileNotFoundError:
            raise BlobNotFound(f"blob {digest} not found in the content store") from None

    def list(self) -> Iterator[str]:
        """Digests of all stored blobs (files with malformed names are ignored)."""
        for algorithm, length in DIGEST_HEX_LENGTHS.items():
            directory = os.path.join(self.blobs_dir, algorithm)
            try:
                names = os.listdir(directory)
            except FileNotFoundError:
                continue
            for name in sorted(names):
                if len(name) == length and _HEX_RE.fullmatch(name):
                    yield f"{algorithm}:{name}"

    def usage(self) -> int:
        """Total bytes of all stored blobs."""
        total = 0
        for digest in self.list():
            try:
                total += os.stat(self.path(digest)).st_size
            except OSError as e:
                if e.errno != errno.ENOENT:
                    raise
        return total
