"""Image archives: ``docker save``/``docker load``, OCI image layouts, and ``docker import``.

Formats written by ``save``:

* ``format="docker"`` is what Docker 25+ writes: an OCI layout (``oci-layout``,
  ``index.json``, ``blobs/sha256/...``) plus the legacy ``manifest.json`` and
  ``repositories``. Layers are the *uncompressed* tars whose digests are their diff IDs,
  because that is what every ``docker load`` since 1.10 reads through ``manifest.json``
  (Docker 20.10 reads nothing else, and takes any paths it names).
* ``format="oci"`` is a plain OCI image layout with the blobs exactly as stored (so
  manifests keep their digests and layers stay compressed).

``load`` reads both of those and Docker's legacy layout (``<id>/layer.tar``, ``<id>/json``,
``<hex>.json`` configs, symlinked duplicate layers) from one pass over the tar, in any
member order, gzip/zstd/bzip2/xz compressed or plain: every regular member is streamed
straight into the content store (verified against its name when that is a digest), and
the images are put together once the archive has been read. Nothing is recorded until
every image is complete and unpacked; blobs left by a failed load are freed by ``gc``.
"""

from __future__ import annotations

import bz2
import contextlib
import datetime as _dt
import hashlib
import io
import json
import lzma
import os
import posixpath
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, BinaryIO, Literal, Self, cast

from berth.errors import BerthError, InvalidArgument, NotFound, SystemFailure
from berth.images import manifest as mf
from berth.images.content import DigestMismatch, digest_bytes, parse_digest
from berth.images.layer import LayerError, PrefixedStream, open_layer_stream
from berth.images.reference import DIGEST_HEX_LENGTHS, InvalidReference
from berth.images.reference import parse as parse_reference
from berth.images.store import Image, ImageStore, LayerMismatch

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = [
    "InvalidArchive",
    "images_to_save",
    "import_rootfs",
    "load",
    "load_oci_layout",
    "save",
]

MANIFEST_JSON = "manifest.json"
INDEX_JSON = "index.json"
OCI_LAYOUT = "oci-layout"
REPOSITORIES = "repositories"
OCI_LAYOUT_CONTENT = b'{"imageLayoutVersion":"1.0.0"}'
ANNOTATION_IMAGE_NAME = "io.containerd.image.name"  # the full name; ref.name holds the tag

_META_FILES = frozenset({MANIFEST_JSON, INDEX_JSON, OCI_LAYOUT, REPOSITORIES})
_MAX_META = 64 << 20  # the largest manifest.json / index.json we read into memory
_CHUNK = 1 << 20
_MAX_LINK_HOPS = 16
_BZ2_MAGIC = b"BZh"
_XZ_MAGIC = b"\xfd7zXZ\x00"
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_TAR_EPOCH = 0  # Docker stamps archive members with the Unix epoch: saves are reproducible


class InvalidArchive(InvalidArgument):
    """An image archive that is malformed, truncated, incomplete or lies about its digests."""


# --------------------------------------------------------------------------- small helpers


def _decompressed(inp: BinaryIO) -> BinaryIO:
    """The archive's tar stream: ``docker load`` takes gzip, bzip2, xz, zstd or plain."""
    head = b""
    while len(head) < 6:
        chunk = inp.read(6 - len(head))
        if not chunk:
            break
        head += chunk
    stream = cast(BinaryIO, io.BufferedReader(PrefixedStream(head, inp), _CHUNK))
    if head.startswith(_BZ2_MAGIC):
        return cast(BinaryIO, bz2.BZ2File(stream))
    if head.startswith(_XZ_MAGIC):
        return cast(BinaryIO, lzma.LZMAFile(stream))
    return open_layer_stream(stream)


def _clean_path(name: str) -> str | None:
    """A member path relative to the archive root, or None when it tries to escape it."""
    parts: list[str] = []
    for part in name.replace("\\", "/").split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            return None
        parts.append(part)
    return "/".join(parts)


def _digest_of_path(path: str) -> str | None:
    """``blobs/sha256/<hex>`` names its digest (an OCI layout); other paths name nothing."""
    parts = path.split("/")
    if len(parts) == 3 and parts[0] == "blobs":
        algorithm, hexpart = parts[1], parts[2]
        if len(hexpart) == DIGEST_HEX_LENGTHS.get(algorithm, -1):
            digest = f"{algorithm}:{hexpart}"
            try:
                parse_digest(digest)
            except InvalidArgument:
                return None
            return digest
    return None


def _blob_path(digest: str) -> str:
    algorithm, hexpart = parse_digest(digest)
    return f"blobs/{algorithm}/{hexpart}"


def _json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidArchive(f"invalid image archive: {what} is not valid json ({e})") from None


def _layer_media_type(head: bytes) -> str:
    """Layers are kept as they come; the magic tells which of the three kinds it is."""
    if head.startswith(_GZIP_MAGIC):
        return mf.OCI_LAYER_GZIP
    if head.startswith(_ZSTD_MAGIC):
        return mf.OCI_LAYER_ZSTD
    return mf.OCI_LAYER


def _normal_name(name: str) -> str:
    reference = parse_reference(name)
    if reference.digest and not reference.tag:
        return f"{reference.name}@{reference.digest}"
    return f"{reference.name}:{reference.tag or 'latest'}"


def _timestamp(seconds: float | None = None) -> str:
    """RFC 3339 in UTC as Docker writes it in configs ("2024-01-02T03:04:05.123456Z")."""
    moment = _dt.datetime.fromtimestamp(time.time() if seconds is None else seconds, _dt.UTC)
    if moment.microsecond:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- save


@dataclass
class _Saved:
    """One image to save and the tags it goes out under."""

    image: Image
    tags: list[str] = field(default_factory=list)  # normalized names with a tag


def _looks_like_id(ref: str, image: Image) -> bool:
    candidate = ref.strip().removeprefix("sha256:")
    return (
        4 <= len(candidate) <= 64
        and all(c in "0123456789abcdef" for c in candidate)
        and image.id.removeprefix("sha256:").startswith(candidate)
    )


def _resolve(store: ImageStore, refs: list[str]) -> list[_Saved]:
    """Docker's rules: an ID saves the image untagged, ``name:tag`` saves that tag, and a
    bare repository name saves every tag of it."""
    if not refs:
        raise InvalidArgument("nothing to save: name at least one image")
    chosen: dict[str, _Saved] = {}

    def add(image: Image, tag: str | None) -> None:
        entry = chosen.setdefault(image.id, _Saved(image))
        if tag is not None and tag not in entry.tags:
            entry.tags.append(tag)

    everything: list[Image] | None = None
    for ref in refs:
        try:
            image = store.get(ref)
        except NotFound:
            image = None
        if image is not None and _looks_like_id(ref, image):
            add(image, None)
            continue
        try:
            reference = parse_reference(ref.strip())
        except InvalidReference:
            if image is None:
                raise NotFound(f"no such image: {ref}") from None
            add(image, None)
            continue
        if reference.tag is None and reference.digest is None:
            if everything is None:
                everything = store.images()
            found = False
            for candidate in everything:
                for name in candidate.names:
                    if "@" not in name and name.rpartition(":")[0] == reference.name:
                        add(candidate, name)
                        found = True
            if found:
                continue
        if image is None:
            raise NotFound(f"no such image: {ref}: check the name with 'berth images'")
        # a digest reference saves the image without a tag, as Docker does
        add(image, None if reference.tag is None and reference.digest else _normal_name(ref))
    return list(chosen.values())


def images_to_save(store: ImageStore, refs: list[str]) -> list[Image]:
    """The images ``save(store, refs, ...)`` would write; raises before any byte is
    written when a name is unknown (a daemon answers 404 then, not a broken tar)."""
    return [saved.image for saved in _resolve(store, refs)]


def _familiar(name: str) -> tuple[str, str, str]:
    """(familiar "busybox:latest", familiar repository "busybox", tag) of a stored name."""
    reference = parse_reference(name)
    tag = reference.tag or "latest"
    return f"{reference.familiar}:{tag}", reference.familiar, tag


class _TarWriter:
    """A streaming tar writer whose entries carry no host details (uid 0, epoch mtimes)."""

    def __init__(self, out: BinaryIO) -> None:
        # closed by close(): the writer outlives this call
        self._tar = tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT)  # noqa: SIM115
        self._dirs: set[str] = set()
        self.written: dict[str, int] = {}  # path -> size

    def _info(self, name: str, kind: bytes, mode: int, size: int = 0) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = mode
        info.size = size
        info.mtime = _TAR_EPOCH
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    def _parents(self, path: str) -> None:
        parent = posixpath.dirname(path)
        if parent and parent not in self._dirs:
            self._parents(parent)
            self._dirs.add(parent)
            self._tar.addfile(self._info(parent + "/", tarfile.DIRTYPE, 0o755))

    def add_bytes(self, path: str, data: bytes) -> None:
        self.add_stream(path, io.BytesIO(data), len(data))

    def add_stream(self, path: str, stream: IO[bytes], size: int) -> None:
        if path in self.written:
            return
        self._parents(path)
        self._tar.addfile(self._info(path, tarfile.REGTYPE, 0o644, size), stream)
        self.written[path] = size

    def close(self) -> None:
        self._tar.close()


def _write_uncompressed_layer(
    store: ImageStore, tar: _TarWriter, layer: mf.Descriptor, diff_id: str
) -> int:
    """Write a layer as its uncompressed tar under its diff ID; returns its size."""
    path = _blob_path(diff_id)
    if path in tar.written:  # shared with an image saved before
        return tar.written[path]
    if layer.digest == diff_id:
        size = store.content.size(layer.digest)
        with store.content.open(layer.digest) as blob:
            tar.add_stream(path, blob, size)
        return size
    # A compressed blob: inflate it to a spool file first, since a tar header needs the
    # size up front, and verify it against the diff ID before anything is written.
    with (
        tempfile.TemporaryFile(dir=store.content.ingest_dir) as spool,
        store.content.open(layer.digest) as blob,
    ):
        stream = open_layer_stream(blob)
        h = hashlib.new(parse_digest(diff_id)[0])
        size = 0
        try:
            while chunk := stream.read(_CHUNK):
                h.update(chunk)
                spool.write(chunk)
                size += len(chunk)
        except (OSError, EOFError, ValueError) as e:
            raise DigestMismatch(
                f"stored layer {layer.digest} cannot be read ({e}): delete the image and"
                " pull it again"
            ) from e
        finally:
            if stream is not blob:
                stream.close()
        got = f"{parse_digest(diff_id)[0]}:{h.hexdigest()}"
        if got != diff_id:
            raise DigestMismatch(
                f"stored layer {layer.digest} unpacks to {got}, but its image says {diff_id}:"
                " delete the image and pull it again"
            )
        spool.seek(0)
        tar.add_stream(path, spool, size)
    return size


def _index_entries(
    saved: _Saved, manifest: mf.Descriptor, platform: mf.Platform | None
) -> list[mf.Descriptor]:
    """One index entry per tag (Docker's and containerd's annotations), else one bare."""
    if not saved.tags:
        return [mf.Descriptor(manifest.media_type, manifest.digest, manifest.size, platform)]
    out = []
    for name in saved.tags:
        tag = parse_reference(name).tag or "latest"
        annotations = {ANNOTATION_IMAGE_NAME: name, mf.ANNOTATION_REF_NAME: tag}
        out.append(
            mf.Descriptor(
                manifest.media_type, manifest.digest, manifest.size, platform, annotations
            )
        )
    return out


def save(
    store: ImageStore,
    refs: list[str],
    out: BinaryIO,
    *,
    format: Literal["docker", "oci"] = "docker",
) -> None:
    """Write the images ``refs`` name to ``out`` as a tar (``docker save``).

    ``out`` need not be seekable (stdout, an HTTP response). See the module notes for
    what each format holds.
    """
    if format not in ("docker", "oci"):
        raise InvalidArgument(f"unknown archive format {format!r}: use 'docker' or 'oci'")
    chosen = _resolve(store, refs)
    tar = _TarWriter(out)
    entries: list[mf.Descriptor] = []
    legacy: list[dict[str, Any]] = []
    repositories: dict[str, dict[str, str]] = {}
    for saved in chosen:
        image = saved.image
        config_bytes = store.content.read(image.id)
        platform = image.config.platform if image.config.os else None
        tar.add_bytes(_blob_path(image.id), config_bytes)
        if format == "oci":
            data = store.content.read(image.manifest_digest)
            for layer in image.layers:
                if _blob_path(layer.digest) not in tar.written:
                    with store.content.open(layer.digest) as blob:
                        size = os.fstat(blob.fileno()).st_size
                        tar.add_stream(_blob_path(layer.digest), blob, size)
            tar.add_bytes(_blob_path(image.manifest_digest), data)
            top = mf.Descriptor(image.manifest.media_type, image.manifest_digest, len(data))
            entries.extend(_index_entries(saved, top, platform))
            continue
        layers: list[mf.Descriptor] = []
        for layer, diff_id in zip(image.layers, image.config.diff_ids, strict=True):
            size = _write_uncompressed_layer(store, tar, layer, diff_id)
            layers.append(mf.Descriptor(mf.OCI_LAYER, diff_id, size))
        manifest = mf.Manifest(
            mf.OCI_MANIFEST, mf.Descriptor(mf.OCI_CONFIG, image.id, len(config_bytes)), layers
        )
        data = mf.manifest_bytes(manifest)
        digest = digest_bytes(data)
        tar.add_bytes(_blob_path(digest), data)
        entries.extend(
            _index_entries(saved, mf.Descriptor(mf.OCI_MANIFEST, digest, len(data)), platform)
        )
        repo_tags = []
        for name in saved.tags:
            familiar, repository, tag = _familiar(name)
            repo_tags.append(familiar)
            if layers:
                repositories.setdefault(repository, {})[tag] = parse_digest(layers[-1].digest)[1]
        legacy.append(
            {
                "Config": _blob_path(image.id),
                "RepoTags": repo_tags or None,
                "Layers": [_blob_path(layer.digest) for layer in layers],
            }
        )
    index = mf.Index(mf.OCI_INDEX, entries)
    tar.add_bytes(INDEX_JSON, mf.manifest_bytes(index))
    if format == "docker":
        tar.add_bytes(MANIFEST_JSON, json.dumps(legacy, separators=(",", ":")).encode() + b"\n")
        if repositories:
            tar.add_bytes(
                REPOSITORIES, json.dumps(repositories, separators=(",", ":")).encode() + b"\n"
            )
    tar.add_bytes(OCI_LAYOUT, OCI_LAYOUT_CONTENT)
    tar.close()


# --------------------------------------------------------------------------- load


@dataclass
class _Member:
    """A regular file of the archive, now a blob in the content store."""

    digest: str
    size: int
    head: bytes  # its first bytes: tells a compressed layer from a plain one


@dataclass
class _Spooled:
    """What one pass over an archive left: its files as blobs, its small metadata files."""

    files: dict[str, _Member] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    meta: dict[str, bytes] = field(default_factory=dict)

    def lookup(self, path: str, what: str) -> _Member:
        """The file at ``path`` (as manifest.json names it), following links."""
        clean = _clean_path(path)
        for _ in range(_MAX_LINK_HOPS):
            if clean is None:
                break
            if clean in self.files:
                return self.files[clean]
            if clean not in self.links:
                break
            clean = self.links[clean]
        raise InvalidArchive(f"invalid image archive: {what} {path!r} is missing from the archive")


def _is_legacy_metadata(path: str) -> bool:
    """``<v1 id>/json`` and ``<v1 id>/VERSION`` of the legacy layout: nothing reads them."""
    parts = path.split("/")
    return len(parts) == 2 and parts[0] != "blobs" and parts[1] in ("json", "VERSION")


class _EndAwareTarInfo(tarfile.TarInfo):
    """Notices the end-of-archive block, which tarfile's reader does not report: it ends
    as quietly at a truncated or garbled header, and a cut archive must not load."""

    seen_end = False

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
        if len(buf) == tarfile.BLOCKSIZE and not buf.strip(b"\0"):
            cls.seen_end = True  # a zero block: where tarfile stops reading
        return super().frombuf(buf, encoding, errors)


def _spool(store: ImageStore, stream: BinaryIO) -> _Spooled:
    """One pass over the tar: members go into the content store as they arrive."""
    out = _Spooled()

    class info_class(_EndAwareTarInfo):  # its own flag per archive
        pass

    with tarfile.open(fileobj=stream, mode="r|", tarinfo=info_class) as tar:
        for member in tar:
            path = _clean_path(member.name)
            if path is None:
                raise InvalidArchive(
                    f"invalid image archive: member {member.name!r} points outside the archive"
                )
            if member.issym() or member.islnk():
                target = member.linkname  # a hard link names a member
                if member.issym() and not target.startswith("/"):  # "../<id>/layer.tar"
                    target = posixpath.join(posixpath.dirname(path), target)
                clean = _clean_path(posixpath.normpath(target.lstrip("/")))
                if clean is not None and path:
                    out.links[path] = clean
                continue
            if not member.isreg() or not path:
                continue
            source = tar.extractfile(member)
            if source is None:
                continue
            if path in _META_FILES:
                if member.size > _MAX_META:
                    raise InvalidArchive(
                        f"invalid image archive: {path} is {member.size} bytes, more than"
                        f" {_MAX_META}"
                    )
                out.meta[path] = source.read()
                continue
            if _is_legacy_metadata(path):
                continue
            expected = _digest_of_path(path)
            if expected is not None and store.content.has(expected):
                # Already stored and verified: the archive's copy is not needed.
                out.files[path] = _Member(expected, member.size, _head(store, expected))
                continue
            out.files[path] = _ingest(store, source, expected, member.size, path)
    if not info_class.seen_end:
        raise InvalidArchive(
            "invalid image archive: the tar is truncated or garbled (it ends without its"
            " end-of-archive marker)"
        )
    return out


def _head(store: ImageStore, digest: str) -> bytes:
    with store.content.open(digest) as f:
        return f.read(8)


def _ingest(
    store: ImageStore, source: IO[bytes], expected: str | None, size: int, path: str
) -> _Member:
    head = b""
    with store.content.writer(expected, size) as writer:
        try:
            while chunk := source.read(_CHUNK):
                if len(head) < 8:
                    head += chunk[: 8 - len(head)]
                writer.write(chunk)
            digest = writer.commit()
        except DigestMismatch as e:
            if writer.offset == size:
                raise InvalidArchive(
                    f"invalid image archive: {path} does not match its digest: the archive"
                    " is corrupt or was tampered with"
                ) from e
            raise InvalidArchive(
                f"invalid image archive: {path} is cut short: the archive is truncated"
            ) from e
    return _Member(digest, size, head)


@dataclass
class _Planned:
    """An image ready to be unpacked and recorded."""

    image: Image  # for unpacking (not yet in the store)
    add_digest: str  # the manifest or index to record
    names: list[str]


def _plan_docker(store: ImageStore, spooled: _Spooled) -> list[_Planned]:
    """Images of a ``docker save`` archive (legacy or Docker 25+), from manifest.json."""
    doc = _json(spooled.meta[MANIFEST_JSON], MANIFEST_JSON)
    if not isinstance(doc, list) or not all(isinstance(e, dict) for e in doc):
        raise InvalidArchive("invalid image archive: manifest.json must be a list of objects")
    reusable = _index_manifests(store, spooled)
    planned = []
    for number, entry in enumerate(doc):
        config_path = entry.get("Config")
        layer_paths = entry.get("Layers") or []
        repo_tags = entry.get("RepoTags") or []
        if (
            not isinstance(config_path, str)
            or not isinstance(layer_paths, list)
            or not all(isinstance(p, str) for p in layer_paths)
            or not isinstance(repo_tags, list)
            or not all(isinstance(t, str) for t in repo_tags)
        ):
            raise InvalidArchive(
                f"invalid image archive: entry {number} of manifest.json needs a 'Config'"
                " path, a 'Layers' list and optional 'RepoTags'"
            )
        config_file = spooled.lookup(config_path, "image config")
        config = _config(store, config_file.digest)
        if len(config.diff_ids) != len(layer_paths):
            raise InvalidArchive(
                f"invalid image archive: image {config_file.digest} has {len(layer_paths)}"
                f" layers in manifest.json but {len(config.diff_ids)} diff IDs in its config"
            )
        layers = []
        for path, diff_id in zip(layer_paths, config.diff_ids, strict=True):
            file = spooled.lookup(path, "layer")
            media_type = _layer_media_type(file.head)
            if media_type == mf.OCI_LAYER and file.digest != diff_id:
                raise InvalidArchive(
                    f"invalid image archive: layer {path!r} hashes to {file.digest}, but its"
                    f" image says {diff_id}: the archive is corrupt"
                )
            layers.append(mf.Descriptor(media_type, file.digest, file.size))
        names = [_archive_name(tag) for tag in repo_tags]
        key = (config_file.digest, tuple(layer.digest for layer in layers))
        if key in reusable:
            manifest_digest, manifest = reusable[key]
        else:
            config_desc = mf.Descriptor(mf.OCI_CONFIG, config_file.digest, config_file.size)
            manifest = mf.Manifest(mf.OCI_MANIFEST, config_desc, layers)
            manifest_digest = store.content.put(mf.manifest_bytes(manifest))
        image = Image(
            config_file.digest, names, manifest_digest, manifest, config, None, time.time()
        )
        planned.append(_Planned(image, manifest_digest, names))
    return planned


def _index_manifests(
    store: ImageStore, spooled: _Spooled
) -> dict[tuple[str, tuple[str, ...]], tuple[str, mf.Manifest]]:
    """Manifests a Docker 25+ archive's index.json offers, keyed by (config, layers):
    reused when they describe exactly what manifest.json says, so digests survive."""
    out: dict[tuple[str, tuple[str, ...]], tuple[str, mf.Manifest]] = {}
    data = spooled.meta.get(INDEX_JSON)
    if data is None:
        return out
    try:
        index = mf.parse_manifest(data)
        if not isinstance(index, mf.Index):
            return out
        for desc in index.manifests:
            if desc.media_type not in mf.MANIFEST_MEDIA_TYPES or not store.content.has(desc.digest):
                continue
            manifest = mf.parse_manifest(store.content.read(desc.digest), desc.media_type)
            if isinstance(manifest, mf.Manifest):
                key = (manifest.config.digest, tuple(layer.digest for layer in manifest.layers))
                out[key] = (desc.digest, manifest)
    except BerthError:
        return {}  # manifest.json is what counts; a broken index only loses reuse
    return out


def _archive_name(text: str) -> str:
    try:
        return _normal_name(text)
    except InvalidArgument as e:
        raise InvalidArchive(f"invalid image archive: bad image name {text!r}: {e}") from None


def _config(store: ImageStore, digest: str) -> mf.ImageConfig:
    try:
        return mf.ImageConfig.parse(store.content.read(digest))
    except InvalidArgument as e:
        raise InvalidArchive(f"invalid image archive: image config {digest}: {e}") from None


def _names_of(desc: mf.Descriptor) -> list[str]:
    """The image name an index entry carries, if any.

    containerd and Docker put the full name in ``io.containerd.image.name``; the OCI
    ``ref.name`` is often only a tag ("latest", "3.22"), which names no repository, so
    it counts only when it holds a full reference ("busybox:1.38", "ghcr.io/x/y:1").
    """
    full = desc.annotations.get(ANNOTATION_IMAGE_NAME)
    if full:
        return [_archive_name(full)]
    ref = desc.annotations.get(mf.ANNOTATION_REF_NAME)
    if ref and ("/" in ref or ":" in ref):
        try:
            return [_normal_name(ref)]
        except InvalidArgument:
            return []
    return []


def _matches_ref(desc: mf.Descriptor, ref_name: str) -> bool:
    wanted = {
        desc.annotations.get(mf.ANNOTATION_REF_NAME),
        desc.annotations.get(ANNOTATION_IMAGE_NAME),
    }
    if ref_name in wanted:
        return True
    try:
        normal = _normal_name(ref_name)
    except InvalidArgument:
        return False
    return normal in _names_of(desc)


class _BlobSource:
    """Where an OCI layout's blobs come from: already spooled, or a layout directory."""

    def __init__(self, store: ImageStore, directory: str | None = None) -> None:
        self.store = store
        self.directory = directory

    def ensure(self, desc: mf.Descriptor, what: str) -> None:
        """Make the blob present and verified in the content store, or fail clearly."""
        content = self.store.content
        if content.has(desc.digest):
            return
        if self.directory is None:
            raise InvalidArchive(
                f"invalid image archive: {what} {desc.digest} is missing from the archive"
            )
        path = os.path.join(self.directory, *_blob_path(desc.digest).split("/"))
        if not os.path.isfile(path):
            raise InvalidArchive(
                f"invalid OCI layout {self.directory}: {what} {desc.digest} is missing"
            )
        with open(path, "rb") as source:
            _ingest(self.store, source, desc.digest, desc.size, path)


def _plan_oci(
    store: ImageStore,
    index_bytes: bytes,
    blobs: _BlobSource,
    ref_name: str | None,
    where: str,
) -> list[_Planned]:
    """Images of an OCI layout's index.json, one per distinct manifest (or index)."""
    try:
        index = mf.parse_manifest(index_bytes)
    except InvalidArgument as e:
        raise InvalidArchive(f"invalid {where}: index.json: {e}") from None
    if not isinstance(index, mf.Index):
        raise InvalidArchive(f"invalid {where}: index.json is a manifest, not an index")
    entries = index.manifests
    if ref_name is not None:
        entries = [d for d in entries if _matches_ref(d, ref_name)]
        if not entries:
            available = sorted(
                {
                    d.annotations.get(mf.ANNOTATION_REF_NAME)
                    or d.annotations.get(ANNOTATION_IMAGE_NAME)
                    or d.digest
                    for d in index.manifests
                }
            )
            raise NotFound(
                f"no image {ref_name!r} in {where}: it holds {', '.join(available) or 'nothing'}"
            )
    grouped: dict[str, tuple[mf.Descriptor, list[str]]] = {}
    for desc in entries:
        _, names = grouped.setdefault(desc.digest, (desc, []))
        for name in _names_of(desc):
            if name not in names:
                names.append(name)
    host = mf.Platform.host()
    planned = []
    for desc, names in grouped.values():
        if desc.media_type not in mf.INDEX_MEDIA_TYPES | mf.MANIFEST_MEDIA_TYPES:
            continue  # an artifact, signature or attestation: not an image
        blobs.ensure(desc, "manifest")
        data = store.content.read(desc.digest)
        parsed = mf.parse_manifest(data, desc.media_type)
        manifest_digest, index_digest = desc.digest, None
        if isinstance(parsed, mf.Index):
            chosen = mf.select_platform(parsed, host)
            blobs.ensure(chosen, "manifest")
            index_digest, manifest_digest = desc.digest, chosen.digest
            parsed = mf.parse_manifest(store.content.read(chosen.digest), chosen.media_type)
            if isinstance(parsed, mf.Index):
                raise InvalidArchive(f"invalid {where}: nested index {chosen.digest}")
        blobs.ensure(parsed.config, "image config")
        for layer in parsed.layers:
            mf.layer_compression(layer.media_type)  # refuses what cannot be unpacked
            blobs.ensure(layer, "layer")
        config = _config(store, parsed.config.digest)
        if len(config.diff_ids) != len(parsed.layers):
            raise InvalidArchive(
                f"invalid {where}: image {parsed.config.digest} has {len(parsed.layers)} layers"
                f" but {len(config.diff_ids)} diff IDs in its config"
            )
        image = Image(
            parsed.config.digest,
            names,
            manifest_digest,
            parsed,
            config,
            index_digest,
            time.time(),
        )
        planned.append(_Planned(image, desc.digest, names))
    if not planned:
        raise InvalidArchive(f"invalid {where}: index.json lists no image")
    return planned


def _commit(
    store: ImageStore, planned: list[_Planned], where: str, name: str | None = None
) -> list[str]:
    """Unpack every image, then record them: a layer that lies leaves no image behind."""
    if name is not None:
        if len({p.image.id for p in planned}) > 1:
            raise InvalidArgument(
                f"cannot name several images {name!r}: choose one with its ref name"
            )
        normal = _normal_name(name)
        for p in planned:
            if normal not in p.names:
                p.names.append(normal)
    for p in planned:
        try:
            store.unpack(p.image)
        except (LayerMismatch, LayerError) as e:
            raise InvalidArchive(f"invalid {where}: {e}") from e
    loaded: list[str] = []
    for p in planned:
        image = store.add(p.add_digest, names=p.names)
        for item in p.names or [image.id]:
            if item not in loaded:
                loaded.append(item)
    return loaded


def load(store: ImageStore, inp: BinaryIO) -> list[str]:
    """Load a ``docker save`` archive (any Docker version) or a tar of an OCI layout.

    Returns the names loaded, or the image IDs of images without a name. Every blob is
    verified; on any error no image is recorded (stray blobs are left for ``gc``).
    """
    try:
        stream = _decompressed(inp)
    except (OSError, EOFError, ValueError) as e:
        raise InvalidArchive(f"invalid image archive: cannot read it ({e})") from None
    try:
        spooled = _spool(store, stream)
    except (tarfile.TarError, EOFError, OSError, ValueError, lzma.LZMAError) as e:
        if isinstance(e, OSError) and e.errno is not None:  # disk full, connection reset
            raise SystemFailure(f"cannot load the image archive: {e.strerror}") from e
        raise InvalidArchive(
            f"invalid image archive: truncated or corrupt tar ({str(e) or type(e).__name__})"
        ) from None
    except BerthError as e:
        if isinstance(e, InvalidArchive):
            raise
        # layer.py's readers report a broken gzip/zstd stream as their own error
        raise InvalidArchive(f"invalid image archive: {e}") from None
    finally:
        if stream is not inp:
            with contextlib.suppress(Exception):
                stream.close()
    if MANIFEST_JSON in spooled.meta:
        planned = _plan_docker(store, spooled)
    elif INDEX_JSON in spooled.meta:
        planned = _plan_oci(
            store, spooled.meta[INDEX_JSON], _BlobSource(store), None, "image archive"
        )
    elif REPOSITORIES in spooled.meta:
        raise InvalidArchive(
            "invalid image archive: it is in the pre-1.10 docker format (no manifest.json):"
            " save it again with docker 1.10 or newer"
        )
    else:
        raise InvalidArchive(
            "invalid image archive: no manifest.json or index.json in it: is it really from"
            " 'docker save' or an OCI image layout?"
        )
    return _commit(store, planned, "image archive")


def load_oci_layout(
    store: ImageStore,
    path: str,
    ref_name: str | None = None,
    *,
    name: str | None = None,
) -> list[str]:
    """Load images from an OCI image layout directory (``skopeo copy ... oci:DIR``).

    ``ref_name`` picks the entries whose ``org.opencontainers.image.ref.name`` (or full
    image name) is that; ``name`` tags the loaded image, which a tag-only ref name does
    not do. Only the blobs the chosen images need are copied, each verified.
    """
    where = f"OCI layout {path}"
    try:
        with open(os.path.join(path, OCI_LAYOUT), "rb") as f:
            layout = _json(f.read(_MAX_META), OCI_LAYOUT)
        with open(os.path.join(path, INDEX_JSON), "rb") as f:
            index_bytes = f.read(_MAX_META + 1)
    except FileNotFoundError as e:
        raise NotFound(
            f"{path} is not an OCI image layout: {os.path.basename(e.filename or '')} is missing"
        ) from None
    except NotADirectoryError:
        raise NotFound(f"{path} is not an OCI image layout directory") from None
    if not isinstance(layout, dict) or not str(layout.get("imageLayoutVersion", "")).startswith(
        "1."
    ):
        raise InvalidArchive(f"invalid {where}: unsupported oci-layout {layout!r}")
    if len(index_bytes) > _MAX_META:
        raise InvalidArchive(f"invalid {where}: index.json is larger than {_MAX_META} bytes")
    planned = _plan_oci(store, index_bytes, _BlobSource(store, path), ref_name, where)
    return _commit(store, planned, where, name)


# --------------------------------------------------------------------------- import

# The container settings ``docker import --change`` can set, and their JSON kinds.
_CHANGE_KEYS: dict[str, type] = {
    "User": str,
    "WorkingDir": str,
    "StopSignal": str,
    "Env": list,
    "Cmd": list,
    "Entrypoint": list,
    "OnBuild": list,
    "Shell": list,
    "Labels": dict,
    "ExposedPorts": dict,
    "Volumes": dict,
    "Healthcheck": dict,
}


def _container_config(changes: dict[str, Any] | None) -> dict[str, Any]:
    """The config section from ``changes`` (Docker's keys: Cmd, Env, WorkingDir, ...)."""
    out: dict[str, Any] = {}
    for key, value in (changes or {}).items():
        kind = _CHANGE_KEYS.get(key)
        if kind is None:
            raise InvalidArgument(
                f"cannot change {key!r} on import: use one of {', '.join(sorted(_CHANGE_KEYS))}"
            )
        if key in ("Cmd", "Entrypoint") and isinstance(value, str):
            value = ["/bin/sh", "-c", value]  # shell form, as a Dockerfile writes it
        if key in ("ExposedPorts", "Volumes") and isinstance(value, list | tuple):
            value = {str(v): {} for v in value}
        if not isinstance(value, kind) or (
            isinstance(value, list) and not all(isinstance(v, str) for v in value)
        ):
            raise InvalidArgument(
                f"invalid {key} {value!r} for import: expected a {kind.__name__}"
                + (" of strings" if kind is list else "")
            )
        out[key] = value
    return out


class _GzipBlob:
    """gzip-compresses into a content store writer (mtime 0 in the header: reproducible)."""

    def __init__(self, store: ImageStore) -> None:
        from isal import isal_zlib

        self.writer = store.content.writer()
        self._z = isal_zlib.compressobj(2, isal_zlib.DEFLATED, 16 + isal_zlib.MAX_WBITS)

    def write(self, data: ReadableBuffer) -> None:
        out = self._z.compress(data)
        if out:
            self.writer.write(out)

    def commit(self) -> tuple[str, int]:
        self.writer.write(self._z.flush())
        size = self.writer.offset
        return self.writer.commit(), size


def import_rootfs(
    store: ImageStore,
    tar_stream: BinaryIO,
    *,
    name: str | None,
    changes: dict[str, Any] | None = None,
    platform: mf.Platform | str | None = None,
    message: str | None = None,
    source: str = "-",
) -> Image:
    """``docker import``: a root filesystem tarball (gzip, zstd or plain) as a one-layer image.

    The tar's bytes are kept as they are (its digest is the diff ID, as in Docker) and
    stored gzip-compressed. The image is unpacked before it is recorded and tagged.
    """
    if isinstance(platform, str):
        platform = mf.Platform.parse(platform)
    platform = platform or mf.Platform.host()
    config_section = _container_config(changes)
    if name is not None:
        _normal_name(name)  # refuse a bad name before the work
    diff = hashlib.sha256()
    blob = _GzipBlob(store)
    with blob.writer:
        stream = open_layer_stream(tar_stream)
        try:
            while chunk := stream.read(_CHUNK):
                diff.update(chunk)
                blob.write(chunk)
        except (OSError, EOFError, ValueError) as e:
            raise InvalidArgument(f"cannot import {source}: cannot read the tarball ({e})") from e
        finally:
            if stream is not tar_stream:
                stream.close()
        layer_digest, layer_size = blob.commit()
    diff_id = "sha256:" + diff.hexdigest()
    created = _timestamp()
    comment = message or f"Imported from {source}"
    config: dict[str, Any] = {"architecture": platform.architecture}
    if platform.variant:
        config["variant"] = platform.variant
    config.update(
        {
            "comment": comment,
            "config": config_section,
            "created": created,
            "history": [{"created": created, "comment": comment}],
            "os": platform.os,
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
    )
    layers = [mf.Descriptor(mf.OCI_LAYER_GZIP, layer_digest, layer_size)]
    try:
        return store.create_image(config, layers, [name] if name else [])
    except BerthError as e:
        raise InvalidArgument(f"cannot import {source}: not a valid rootfs tarball ({e})") from e
