"""The registry server's storage: content-addressed blobs and per-repository links on disk.

Layout under the root (see docs/registry.md)::

    blobs/<alg>/<hex>                          every blob and manifest, once, verified
    repositories/<name>/_layers/<alg>/<hex>    empty file: the repository may serve this blob
    repositories/<name>/_manifests/<alg>/<hex> the manifest's media type: the repository holds it
    repositories/<name>/_tags/<tag>            the digest the tag points at
    repositories/<name>/_referrers/<alg>/<hex>/<alg>-<hex>
                                               descriptor (JSON) of a manifest whose subject
                                               is <alg>:<hex>
    uploads/<uuid>/info.json, uploads/<uuid>/data
                                               an upload session (survives restarts)
    tmp/                                       temporary files of atomic writes

Content becomes visible only after it was hashed and matched its digest: uploads are
hard-linked from their session into ``blobs/`` (the first link wins, so two sessions
finishing the same blob at once both succeed and neither clobbers the other), and every
small file (tags, links, referrer entries) is written to ``tmp/`` and renamed into place.
Repository components cannot start with ``_``, so the ``_*`` folders never collide with
nested repository names. The methods are blocking; the server calls them from threads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import threading
import time
import uuid as uuidlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from berth.errors import BerthError, ConfigError, InvalidArgument, NotFound

if TYPE_CHECKING:
    from hashlib import _Hash

# Media types the registry accepts as manifests.
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)
IMAGE_MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
MANIFEST_TYPES = IMAGE_MANIFEST_TYPES + INDEX_TYPES
# Layers a manifest may reference without the registry holding them (pulled from "urls").
FOREIGN_LAYER_TYPES = (
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
)

DIGEST_ALGORITHMS = {"sha256": 64, "sha512": 128}
MANIFEST_MAX_BYTES = 16 << 20
NAME_MAX_LENGTH = 255

_NAME_RE = re.compile(
    r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*"
)
_TAG_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
_DIGEST_RE = re.compile(r"([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)")
_HEX_RE = re.compile(r"[0-9a-f]+")
_UUID_RE = re.compile(r"[0-9a-f]{32}")
_COPY_CHUNK = 1 << 20


class RegistryError(BerthError):
    """A request the registry refuses, with the spec's error ``code`` and the HTTP ``status``."""

    code = "UNKNOWN"
    status = 500

    def __init__(self, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.detail = detail


class NameInvalid(RegistryError, InvalidArgument):
    code, status = "NAME_INVALID", 400


class NameUnknown(RegistryError, NotFound):
    code, status = "NAME_UNKNOWN", 404


class TagInvalid(RegistryError, InvalidArgument):
    code, status = "MANIFEST_INVALID", 400


class DigestInvalid(RegistryError, InvalidArgument):
    code, status = "DIGEST_INVALID", 400


class Unsupported(RegistryError, InvalidArgument):
    code, status = "UNSUPPORTED", 400


class BlobUnknown(RegistryError, NotFound):
    code, status = "BLOB_UNKNOWN", 404


class UploadUnknown(RegistryError, NotFound):
    code, status = "BLOB_UPLOAD_UNKNOWN", 404


class UploadInvalid(RegistryError, InvalidArgument):
    code, status = "BLOB_UPLOAD_INVALID", 400


class RangeInvalid(RegistryError, InvalidArgument):
    """A chunk that does not start where the upload ends; the client resumes from ``offset``."""

    code, status = "BLOB_UPLOAD_INVALID", 416

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message, {"offset": offset})
        self.offset = offset


class SizeInvalid(RegistryError, InvalidArgument):
    code, status = "SIZE_INVALID", 400


class ManifestUnknown(RegistryError, NotFound):
    code, status = "MANIFEST_UNKNOWN", 404


class ManifestInvalid(RegistryError, InvalidArgument):
    code, status = "MANIFEST_INVALID", 400


class ManifestBlobUnknown(RegistryError, InvalidArgument):
    code, status = "MANIFEST_BLOB_UNKNOWN", 400


class Digest(NamedTuple):
    """A parsed, supported digest: "<algorithm>:<hex>"."""

    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


def parse_digest(text: str) -> Digest:
    """Parse a digest, refusing unsupported algorithms and anything that could escape a path."""
    match = _DIGEST_RE.fullmatch(text)
    if match is None:
        raise DigestInvalid(f"invalid digest {text!r}: expected <algorithm>:<hex>", text)
    algorithm, encoded = match.groups()
    length = DIGEST_ALGORITHMS.get(algorithm)
    if length is None:
        raise Unsupported(
            f"unsupported digest algorithm {algorithm!r} in {text!r}: use sha256 or sha512", text
        )
    if len(encoded) != length or not _HEX_RE.fullmatch(encoded):
        raise DigestInvalid(
            f"invalid digest {text!r}: {algorithm} needs {length} lower-case hex digits", text
        )
    return Digest(algorithm, encoded)


def digest_of(data: bytes, algorithm: str = "sha256") -> Digest:
    return Digest(algorithm, hashlib.new(algorithm, data).hexdigest())


def validate_name(name: str) -> str:
    """Check a repository name against the distribution-spec grammar."""
    if len(name) > NAME_MAX_LENGTH or not _NAME_RE.fullmatch(name):
        raise NameInvalid(
            f"invalid repository name {name!r}: use lower-case components like a/b-c/d_e.f",
            {"name": name},
        )
    return name


def is_tag(reference: str) -> bool:
    return _TAG_RE.fullmatch(reference) is not None


def validate_tag(tag: str) -> str:
    if not is_tag(tag):
        raise TagInvalid(f"invalid tag {tag!r}: use up to 128 of [A-Za-z0-9_.-]", {"tag": tag})
    return tag


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, chunks: Sequence[bytes | memoryview]) -> None:
    """os.writev, continued after short writes."""
    views = [memoryview(c) for c in chunks if len(c)]
    while views:
        written = os.writev(fd, views)
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if written:
            views[0] = views[0][written:]


def _hash_file(path: Path, algorithm: str) -> str:
    hasher = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(_COPY_CHUNK):
            hasher.update(block)
    return hasher.hexdigest()


@dataclass
class ManifestRecord:
    """A manifest a repository holds."""

    digest: Digest
    media_type: str
    path: Path
    size: int


@dataclass
class PutResult:
    """What a manifest push stored: its digest, the subject it refers to, the tags it set."""

    digest: Digest
    media_type: str
    subject: str | None
    tags: list[str]


@dataclass
class GcReport:
    """What a garbage collection removed (or would remove, in a dry run)."""

    blobs_deleted: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    links_removed: int = 0
    uploads_removed: int = 0
    blobs_kept: int = 0


class UploadWriter:
    """Appends to one upload session and hashes as it goes.

    The hash state lives in memory between requests (keyed by session and offset); after a
    restart, or when the client names another algorithm, the file is hashed again on commit.
    """

    def __init__(self, store: RegistryStore, name: str, upload_id: str) -> None:
        self.store = store
        self.name = name
        self.upload_id = upload_id
        self.dir = store.upload_dir(name, upload_id)
        self.data = self.dir / "data"
        try:
            self.fd = os.open(self.data, os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise UploadUnknown(f"upload {upload_id} is unknown or finished", upload_id) from None
        self.start = os.fstat(self.fd).st_size
        os.lseek(self.fd, self.start, os.SEEK_SET)
        self.offset = self.start
        self.hasher: _Hash | None = store._take_hasher(upload_id, self.start)
        self._saved = self.hasher.copy() if self.hasher is not None else None

    def start_hash(self, algorithm: str) -> None:
        """Hash with ``algorithm`` from the start (a fresh session whose digest is known)."""
        if self.start == 0:
            self.hasher = hashlib.new(algorithm)
            self._saved = self.hasher.copy()

    def write(self, chunks: Sequence[bytes | memoryview]) -> None:
        _write_all(self.fd, chunks)
        if self.hasher is not None:
            for chunk in chunks:
                self.hasher.update(chunk)
        self.offset += sum(len(c) for c in chunks)

    def abort(self) -> None:
        """Undo this request's writes: the session stays as it was before."""
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, self.start)
        self.offset = self.start
        self.hasher = self._saved
        self.close()

    def close(self) -> None:
        """Keep the session (and its hash state) for the next request."""
        if self.fd >= 0:
            if self.hasher is not None:
                self.store._keep_hasher(self.upload_id, self.offset, self.hasher)
            os.close(self.fd)
            self.fd = -1

    def commit(self, expected: Digest) -> Digest:
        """Verify the data against ``expected``, publish the blob and link it to the repository."""
        try:
            if self.hasher is not None and self.hasher.name == expected.algorithm:
                actual = self.hasher.hexdigest()
            else:
                actual = _hash_file(self.data, expected.algorithm)
            if actual != expected.hex:
                raise DigestInvalid(
                    f"upload does not match digest {expected}: the content hashes to "
                    f"{expected.algorithm}:{actual}",
                    str(expected),
                )
            if self.store.fsync:
                os.fsync(self.fd)
        finally:
            os.close(self.fd)
            self.fd = -1
            self.store._drop_hasher(self.upload_id)
        try:
            self.store._publish(self.data, expected)
            self.store.link_blob(self.name, expected)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
        return expected


class RegistryStore:
    """Blobs, manifests, tags, referrers and upload sessions of one registry root."""

    def __init__(self, root: str | os.PathLike[str], fsync: bool = True) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self.blobs = self.root / "blobs"
        self.repositories = self.root / "repositories"
        self.uploads = self.root / "uploads"
        self.tmp = self.root / "tmp"
        try:
            for path in (self.blobs, self.repositories, self.uploads, self.tmp):
                path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(
                f"cannot use {self.root} as registry storage: {e.strerror or e}".lower()
            ) from None
        self._hashers: dict[str, tuple[int, _Hash]] = {}
        self._hashers_lock = threading.Lock()

    # -- paths and small atomic files --------------------------------------------------

    def blob_path(self, digest: Digest) -> Path:
        return self.blobs / digest.algorithm / digest.hex

    def repo_dir(self, name: str) -> Path:
        return self.repositories / validate_name(name)

    def _layer_link(self, name: str, digest: Digest) -> Path:
        return self.repo_dir(name) / "_layers" / digest.algorithm / digest.hex

    def _manifest_link(self, name: str, digest: Digest) -> Path:
        return self.repo_dir(name) / "_manifests" / digest.algorithm / digest.hex

    def _tag_path(self, name: str, tag: str) -> Path:
        return self.repo_dir(name) / "_tags" / validate_tag(tag)

    def _referrers_dir(self, name: str, subject: Digest) -> Path:
        return self.repo_dir(name) / "_referrers" / subject.algorithm / subject.hex

    def _atomic_write(self, path: Path, data: bytes) -> None:
        """Write a small file so readers see the old or the new content, never a mix."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.tmp / f"{uuidlib.uuid4().hex}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            _write_all(fd, [data])
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _publish(self, source: Path, digest: Digest) -> None:
        """Hard-link verified content into blobs/; an existing copy (same bytes) is kept."""
        target = self.blob_path(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
        except FileExistsError:
            return
        if self.fsync:
            _fsync_dir(target.parent)

    # -- blobs -------------------------------------------------------------------------

    def link_blob(self, name: str, digest: Digest) -> None:
        link = self._layer_link(name, digest)
        link.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.close(os.open(link, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644))

    def has_blob(self, name: str, digest: Digest) -> bool:
        """Whether the repository may serve the blob: pushed or mounted there, or its manifest."""
        if not self.blob_path(digest).exists():
            return False
        return self._layer_link(name, digest).exists() or self._manifest_link(name, digest).exists()

    def stat_blob(self, name: str, digest: Digest) -> tuple[Path, int]:
        """The blob's file and size, if the repository holds it."""
        path = self.blob_path(digest)
        if self._layer_link(name, digest).exists() or self._manifest_link(name, digest).exists():
            with contextlib.suppress(FileNotFoundError):
                return path, path.stat().st_size
        raise BlobUnknown(f"blob {digest} is unknown to repository {name}", {"digest": str(digest)})

    def delete_blob(self, name: str, digest: Digest) -> None:
        """Unlink the blob from the repository; the content goes at the next garbage collection."""
        try:
            self._layer_link(name, digest).unlink()
        except FileNotFoundError:
            raise BlobUnknown(
                f"blob {digest} is unknown to repository {name}", {"digest": str(digest)}
            ) from None

    def mount_blob(self, name: str, digest: Digest, source: str | None) -> bool:
        """Link a blob another repository holds (or, with no source, any stored blob)."""
        if source is not None:
            try:
                validate_name(source)
            except NameInvalid:
                return False
            if not self.has_blob(source, digest):
                return False
        elif not self.blob_path(digest).exists():
            return False
        self.link_blob(name, digest)
        return True

    # -- uploads -----------------------------------------------------------------------

    def upload_dir(self, name: str, upload_id: str) -> Path:
        """A session's folder, if it exists and belongs to the repository."""
        if not _UUID_RE.fullmatch(upload_id):
            raise UploadUnknown(f"upload {upload_id!r} is unknown", upload_id)
        path = self.uploads / upload_id
        try:
            info = json.loads((path / "info.json").read_bytes())
        except (OSError, ValueError):
            raise UploadUnknown(f"upload {upload_id} is unknown or finished", upload_id) from None
        if info.get("repository") != name:
            raise UploadUnknown(f"upload {upload_id} does not belong to {name}", upload_id)
        return path

    def new_upload(self, name: str) -> str:
        validate_name(name)
        upload_id = uuidlib.uuid4().hex
        path = self.uploads / upload_id
        path.mkdir()
        os.close(os.open(path / "data", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644))
        info = {"repository": name, "started": time.time()}
        (path / "info.json").write_text(json.dumps(info))
        return upload_id

    def upload_size(self, name: str, upload_id: str) -> int:
        try:
            return (self.upload_dir(name, upload_id) / "data").stat().st_size
        except FileNotFoundError:
            raise UploadUnknown(f"upload {upload_id} is unknown or finished", upload_id) from None

    def open_upload(self, name: str, upload_id: str) -> UploadWriter:
        return UploadWriter(self, name, upload_id)

    def cancel_upload(self, name: str, upload_id: str) -> None:
        path = self.upload_dir(name, upload_id)
        self._drop_hasher(upload_id)
        shutil.rmtree(path, ignore_errors=True)

    def _take_hasher(self, upload_id: str, offset: int) -> _Hash | None:
        with self._hashers_lock:
            kept = self._hashers.pop(upload_id, None)
        if offset == 0:
            return hashlib.sha256()
        if kept is not None and kept[0] == offset:
            return kept[1]
        return None

    def _keep_hasher(self, upload_id: str, offset: int, hasher: _Hash) -> None:
        with self._hashers_lock:
            self._hashers[upload_id] = (offset, hasher)

    def _drop_hasher(self, upload_id: str) -> None:
        with self._hashers_lock:
            self._hashers.pop(upload_id, None)

    # -- manifests and tags ------------------------------------------------------------

    def resolve(self, name: str, reference: str) -> Digest:
        """The digest a tag points at, or the digest the reference is."""
        if is_tag(reference):
            try:
                return parse_digest(self._tag_path(name, reference).read_text().strip())
            except (FileNotFoundError, NotADirectoryError):
                raise ManifestUnknown(
                    f"manifest {name}:{reference} is unknown", {"tag": reference}
                ) from None
        return parse_digest(reference)

    def get_manifest(self, name: str, reference: str) -> ManifestRecord:
        digest = self.resolve(name, reference)
        try:
            media_type = self._manifest_link(name, digest).read_text().strip()
            path = self.blob_path(digest)
            size = path.stat().st_size
        except (FileNotFoundError, NotADirectoryError):
            raise ManifestUnknown(
                f"manifest {name}@{digest} is unknown", {"digest": str(digest)}
            ) from None
        return ManifestRecord(digest, media_type, path, size)

    def put_manifest(
        self,
        name: str,
        reference: str,
        body: bytes,
        content_type: str | None,
        tags: Iterable[str] = (),
    ) -> PutResult:
        """Validate and store a manifest pushed by tag or digest, with extra ``tags``."""
        validate_name(name)
        extra_tags = [validate_tag(t) for t in tags]
        if is_tag(reference):
            digest = digest_of(body)
            extra_tags.insert(0, reference)
        else:
            expected = parse_digest(reference)
            digest = digest_of(body, expected.algorithm)
            if digest != expected:
                raise DigestInvalid(
                    f"manifest does not match digest {expected}: its content hashes to {digest}",
                    str(expected),
                )
        manifest = self._parse_manifest(body)
        media_type = self._media_type(manifest, content_type)
        self._check_references(name, manifest, media_type)
        subject = manifest.get("subject") if media_type in (OCI_MANIFEST, OCI_INDEX) else None
        subject_digest = None
        if subject is not None:
            if not isinstance(subject, dict) or not isinstance(subject.get("digest"), str):
                raise ManifestInvalid("manifest subject must be a descriptor with a digest")
            subject_digest = parse_digest(subject["digest"])

        if not self.blob_path(digest).exists():
            tmp = self.tmp / f"{uuidlib.uuid4().hex}.tmp"
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
                try:
                    _write_all(fd, [body])
                    if self.fsync:
                        os.fsync(fd)
                finally:
                    os.close(fd)
                self._publish(tmp, digest)
            finally:
                tmp.unlink(missing_ok=True)
        self._atomic_write(self._manifest_link(name, digest), media_type.encode())
        if subject_digest is not None:
            descriptor = self._referrer_descriptor(manifest, media_type, digest, len(body))
            entry = self._referrers_dir(name, subject_digest) / f"{digest.algorithm}-{digest.hex}"
            self._atomic_write(entry, json.dumps(descriptor).encode())
        seen: list[str] = []
        for tag in extra_tags:
            if tag not in seen:
                self._atomic_write(self._tag_path(name, tag), str(digest).encode())
                seen.append(tag)
        return PutResult(digest, media_type, str(subject_digest) if subject_digest else None, seen)

    @staticmethod
    def _parse_manifest(body: bytes) -> dict[str, Any]:
        try:
            manifest = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise ManifestInvalid("manifest is not valid JSON") from None
        if not isinstance(manifest, dict):
            raise ManifestInvalid("manifest must be a JSON object")
        return manifest

    @staticmethod
    def _media_type(manifest: dict[str, Any], content_type: str | None) -> str:
        """The manifest's media type, from its Content-Type and its own mediaType field."""
        declared = manifest.get("mediaType")
        header = (content_type or "").split(";")[0].strip().lower() or None
        if header in ("application/json", "application/octet-stream"):
            header = None
        schema = manifest.get("schemaVersion")
        if schema == 1 or header in DOCKER_SCHEMA1 or declared in DOCKER_SCHEMA1:
            raise ManifestInvalid(
                "docker schema 1 manifests are not supported: push a schema 2 or OCI manifest"
            )
        if declared is not None and not isinstance(declared, str):
            raise ManifestInvalid("manifest mediaType must be a string")
        if header and declared and header != declared:
            raise ManifestInvalid(
                f"manifest mediaType {declared!r} does not match Content-Type {header!r}"
            )
        media_type = header or declared
        if media_type is None:
            media_type = OCI_INDEX if "manifests" in manifest else OCI_MANIFEST
        if media_type not in MANIFEST_TYPES:
            raise ManifestInvalid(
                f"unsupported manifest media type {media_type!r}: use an OCI image manifest or "
                "index, or a docker schema 2 manifest or manifest list"
            )
        if schema != 2:
            raise ManifestInvalid(f"manifest schemaVersion must be 2, not {schema!r}")
        return media_type

    def _check_references(self, name: str, manifest: dict[str, Any], media_type: str) -> None:
        """Refuse an image manifest whose config or layers the repository does not hold."""
        if media_type in INDEX_TYPES:
            children = manifest.get("manifests")
            if not isinstance(children, list):
                raise ManifestInvalid("index needs a manifests list")
            for child in children:
                self._descriptor_digest(child, "manifests")
            return
        config = manifest.get("config")
        layers = manifest.get("layers")
        if not isinstance(config, dict):
            raise ManifestInvalid("image manifest needs a config descriptor")
        if not isinstance(layers, list):
            raise ManifestInvalid("image manifest needs a layers list")
        wanted = [(config, "config")] + [(layer, "layers") for layer in layers]
        for descriptor, where in wanted:
            digest = self._descriptor_digest(descriptor, where)
            if descriptor.get("urls") or descriptor.get("mediaType") in FOREIGN_LAYER_TYPES:
                continue
            if not self.has_blob(name, digest):
                raise ManifestBlobUnknown(
                    f"manifest references blob {digest} that repository {name} does not hold: "
                    "push it first",
                    {"digest": str(digest)},
                )

    @staticmethod
    def _descriptor_digest(descriptor: Any, where: str) -> Digest:
        if not isinstance(descriptor, dict) or not isinstance(descriptor.get("digest"), str):
            raise ManifestInvalid(f"manifest {where} entries must be descriptors with a digest")
        try:
            return parse_digest(descriptor["digest"])
        except RegistryError as e:
            raise ManifestInvalid(f"manifest {where}: {e}") from None

    @staticmethod
    def _referrer_descriptor(
        manifest: dict[str, Any], media_type: str, digest: Digest, size: int
    ) -> dict[str, Any]:
        descriptor: dict[str, Any] = {"mediaType": media_type, "digest": str(digest), "size": size}
        artifact_type = manifest.get("artifactType")
        if not artifact_type and media_type == OCI_MANIFEST:
            config = manifest.get("config")
            if isinstance(config, dict):
                artifact_type = config.get("mediaType")
        if isinstance(artifact_type, str) and artifact_type:
            descriptor["artifactType"] = artifact_type
        annotations = manifest.get("annotations")
        if isinstance(annotations, dict) and annotations:
            descriptor["annotations"] = annotations
        return descriptor

    def delete_manifest(self, name: str, reference: str) -> None:
        """Delete a tag, or a manifest with the tags that point at it and its referrer entry."""
        if is_tag(reference):
            try:
                self._tag_path(name, reference).unlink()
            except (FileNotFoundError, NotADirectoryError):
                raise ManifestUnknown(
                    f"tag {name}:{reference} is unknown", {"tag": reference}
                ) from None
            return
        digest = parse_digest(reference)
        link = self._manifest_link(name, digest)
        if not link.exists():
            raise ManifestUnknown(f"manifest {name}@{digest} is unknown", {"digest": str(digest)})
        with contextlib.suppress(OSError, ValueError, RegistryError):
            manifest = json.loads(self.blob_path(digest).read_bytes())
            subject = manifest.get("subject") if isinstance(manifest, dict) else None
            if isinstance(subject, dict) and isinstance(subject.get("digest"), str):
                entry = self._referrers_dir(name, parse_digest(subject["digest"]))
                (entry / f"{digest.algorithm}-{digest.hex}").unlink(missing_ok=True)
        for tag in self._tag_names(name):
            with contextlib.suppress(OSError):
                if (self.repo_dir(name) / "_tags" / tag).read_text().strip() == str(digest):
                    (self.repo_dir(name) / "_tags" / tag).unlink()
        link.unlink(missing_ok=True)

    def _tag_names(self, name: str) -> list[str]:
        try:
            return [t for t in os.listdir(self.repo_dir(name) / "_tags") if is_tag(t)]
        except (FileNotFoundError, NotADirectoryError):
            return []

    def tags(self, name: str) -> list[str]:
        """The repository's tags in lexical order."""
        if not self.repo_dir(name).is_dir():
            raise NameUnknown(f"repository {name} is unknown", {"name": name})
        return sorted(self._tag_names(name))

    def catalog(self) -> list[str]:
        """Every repository that has held content, in lexical order."""
        found: list[str] = []
        for top, dirs, _ in os.walk(self.repositories):
            if any(d in dirs for d in ("_layers", "_manifests", "_tags")):
                found.append(os.path.relpath(top, self.repositories))
            dirs[:] = [d for d in dirs if not d.startswith("_")]
        return sorted(found)

    def referrers(
        self, name: str, subject: Digest, artifact_type: str | None
    ) -> list[dict[str, Any]]:
        """Descriptors of the manifests whose subject is ``subject`` (optionally of one type)."""
        folder = self._referrers_dir(name, subject)
        try:
            entries = sorted(os.listdir(folder))
        except (FileNotFoundError, NotADirectoryError):
            return []
        result = []
        for entry in entries:
            try:
                descriptor = json.loads((folder / entry).read_bytes())
                digest = parse_digest(descriptor["digest"])
            except (OSError, ValueError, KeyError, TypeError, RegistryError):
                continue
            if not self._manifest_link(name, digest).exists():
                continue
            if artifact_type is not None and descriptor.get("artifactType") != artifact_type:
                continue
            result.append(descriptor)
        return result

    # -- garbage collection ------------------------------------------------------------

    def _repo_dirs(self) -> Iterator[Path]:
        for repo in self.catalog():
            yield self.repositories / repo

    @staticmethod
    def _links(folder: Path) -> Iterator[tuple[Path, Digest]]:
        try:
            algorithms = os.listdir(folder)
        except (FileNotFoundError, NotADirectoryError):
            return
        for algorithm in algorithms:
            try:
                names = os.listdir(folder / algorithm)
            except (FileNotFoundError, NotADirectoryError):
                continue
            for hexpart in names:
                try:
                    yield folder / algorithm / hexpart, parse_digest(f"{algorithm}:{hexpart}")
                except RegistryError:
                    continue

    def collect_garbage(self, dry_run: bool = False, upload_max_age: float = 86400.0) -> GcReport:
        """Mark every blob a manifest of any repository references, sweep the rest.

        Safe when no push is in flight: a blob uploaded but not yet referenced by a
        manifest is garbage to this pass.
        """
        report = GcReport()
        marked: set[Digest] = set()
        for repo in self._repo_dirs():
            for link, digest in self._links(repo / "_manifests"):
                path = self.blob_path(digest)
                try:
                    manifest = json.loads(path.read_bytes())
                except (OSError, ValueError):
                    if not path.exists() and not dry_run:
                        link.unlink(missing_ok=True)
                        report.links_removed += 1
                    continue
                marked.add(digest)
                marked.update(self._referenced(manifest))
        for _, digest in list(self._links(self.blobs)):
            path = self.blob_path(digest)
            if digest in marked:
                report.blobs_kept += 1
                continue
            with contextlib.suppress(FileNotFoundError):
                report.bytes_freed += path.stat().st_size
                report.blobs_deleted.append(str(digest))
                if not dry_run:
                    path.unlink()
        for repo in self._repo_dirs():
            for link, digest in list(self._links(repo / "_layers")):
                if digest not in marked:
                    report.links_removed += 1
                    if not dry_run:
                        link.unlink(missing_ok=True)
        now = time.time()
        for entry in list(self.uploads.iterdir()) + list(self.tmp.iterdir()):
            with contextlib.suppress(OSError):
                if now - entry.stat().st_mtime > upload_max_age:
                    if entry.parent == self.uploads:
                        report.uploads_removed += 1
                    if not dry_run:
                        if entry.is_dir():
                            shutil.rmtree(entry, ignore_errors=True)
                        else:
                            entry.unlink()
        return report

    @staticmethod
    def _referenced(manifest: Any) -> set[Digest]:
        found: set[Digest] = set()
        if not isinstance(manifest, dict):
            return found
        descriptors: list[Any] = [manifest.get("config")]
        for key in ("layers", "manifests", "blobs"):
            value = manifest.get(key)
            if isinstance(value, list):
                descriptors.extend(value)
        for descriptor in descriptors:
            if isinstance(descriptor, dict) and isinstance(descriptor.get("digest"), str):
                with contextlib.suppress(RegistryError):
                    found.add(parse_digest(descriptor["digest"]))
        return found
