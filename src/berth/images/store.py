"""The image store: content, snapshots and names, and the garbage collector over them.

An image is its config digest (Docker's image ID) plus the manifest that lists its
layers; names (``docker.io/library/busybox:latest``) point at images. Blobs live in
the content store, unpacked layers in the snapshotter (named by ChainID). Removing
an image only drops metadata; ``gc`` then frees every blob and snapshot nothing
references, so ``system df`` can account for every byte.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
import uuid

from berth import faults
from berth.errors import BerthError, Conflict, InvalidArgument, NotFound
from berth.images import manifest as mf
from berth.images.content import ContentStore
from berth.images.db import ThreadLocalDB
from berth.images.reference import parse as parse_reference
from berth.images.snapshot import ACTIVE, Snapshotter

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import BinaryIO

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY,                 -- the config digest
    manifest_digest TEXT NOT NULL,
    manifest_media_type TEXT NOT NULL,
    index_digest TEXT,                   -- the index it was selected from, if any
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS names (
    name TEXT PRIMARY KEY,               -- normalised reference
    image_id TEXT NOT NULL REFERENCES images(id)
);
"""


class LayerMismatch(BerthError):
    """An unpacked layer does not hash to the diff ID its image config promises."""


class Image:
    def __init__(
        self,
        id: str,
        names: list[str],
        manifest_digest: str,
        manifest: mf.Manifest,
        config: mf.ImageConfig,
        index_digest: str | None,
        created: float,
    ) -> None:
        self.id = id
        self.names = names
        self.manifest_digest = manifest_digest
        self.manifest = manifest
        self.config = config
        self.index_digest = index_digest
        self.created = created

    @property
    def layers(self) -> list[mf.Descriptor]:
        return self.manifest.layers

    @property
    def chain_ids(self) -> list[str]:
        return mf.chain_ids(self.config.diff_ids)

    @property
    def top_layer(self) -> str | None:
        """The snapshot a container of this image is prepared on (None: no layers)."""
        chain = self.chain_ids
        return chain[-1] if chain else None

    @property
    def size(self) -> int:
        return sum(layer.size for layer in self.layers)

    @property
    def short_id(self) -> str:
        return self.id.split(":", 1)[1][:12]


class _HashingReader:
    """Hashes what is read through it: the diff ID of a layer as it is unpacked."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.hash = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.hash.update(data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


class ImageStore:
    def __init__(self, root: str) -> None:
        self.root = root
        os.makedirs(root, mode=0o700, exist_ok=True)
        self.content = ContentStore(os.path.join(root, "content"))
        self.snapshots = Snapshotter(os.path.join(root, "snapshots"))
        self._meta = ThreadLocalDB(os.path.join(root, "images.db"), _SCHEMA)

    @property
    def _db(self) -> sqlite3.Connection:
        return self._meta.connection()

    def close(self) -> None:
        self._meta.close()
        self.snapshots.close()

    # ---- adding ---------------------------------------------------------------------

    def add(
        self,
        manifest_digest: str,
        *,
        names: Iterable[str] = (),
        platform: mf.Platform | None = None,
    ) -> Image:
        """Record an image whose manifest (or index), config and layers are all in the
        content store; index entries are resolved to ``platform`` (the host's)."""
        data = self.content.read(manifest_digest)
        parsed = mf.parse_manifest(data)
        index_digest = None
        if isinstance(parsed, mf.Index):
            index_digest = manifest_digest
            chosen = mf.select_platform(parsed, platform or mf.Platform.host())
            manifest_digest = chosen.digest
            parsed = mf.parse_manifest(self.content.read(manifest_digest), chosen.media_type)
            if isinstance(parsed, mf.Index):
                raise InvalidArgument(f"nested index {manifest_digest} is not supported")
        config = mf.ImageConfig.parse(self.content.read(parsed.config.digest))
        if len(config.diff_ids) != len(parsed.layers):
            raise InvalidArgument(
                f"image {parsed.config.digest}: {len(parsed.layers)} layers but"
                f" {len(config.diff_ids)} diff IDs in its config"
            )
        for layer in parsed.layers:
            if not self.content.has(layer.digest):
                raise NotFound(f"layer {layer.digest} of {manifest_digest} is not in the store")
        image_id = parsed.config.digest
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT INTO images (id, manifest_digest, manifest_media_type, index_digest,"
                " created) VALUES (?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET"
                " manifest_digest = excluded.manifest_digest,"
                " manifest_media_type = excluded.manifest_media_type,"
                " index_digest = excluded.index_digest",
                (image_id, manifest_digest, parsed.media_type, index_digest, time.time()),
            )
            for name in names:
                self._db.execute(
                    "INSERT INTO names (name, image_id) VALUES (?, ?) ON CONFLICT(name)"
                    " DO UPDATE SET image_id = excluded.image_id",
                    (_normal_name(name), image_id),
                )
        return self.get(image_id)

    def create_image(
        self, config: dict[str, object], layers: list[mf.Descriptor], names: list[str]
    ) -> Image:
        """Write the config and an OCI manifest for layers already in the content
        store, unpack them, and only then record the image (import, bootstrap, build)."""
        parsed = mf.ImageConfig(config)
        config_bytes = parsed.to_bytes()
        config_digest = self.content.put(config_bytes)
        manifest = mf.Manifest(
            mf.OCI_MANIFEST,
            mf.Descriptor(mf.OCI_CONFIG, config_digest, len(config_bytes)),
            layers,
        )
        manifest_digest = self.content.put(mf.manifest_bytes(manifest))
        self.unpack(
            Image(config_digest, names, manifest_digest, manifest, parsed, None, time.time())
        )
        faults.point("image:unpacked")
        return self.add(manifest_digest, names=names)

    def unpack(self, image: Image, on_layer: Callable[[int], None] | None = None) -> str | None:
        """Unpack every layer not yet a snapshot; returns the top ChainID."""
        extracted: dict[str, tuple[str, str]] = {}
        try:
            for index, (layer, chain_id) in enumerate(
                zip(image.layers, image.chain_ids, strict=True)
            ):
                if not self.snapshots.exists(chain_id) and layer.digest not in extracted:
                    extracted[layer.digest] = self.extract(layer.digest)
                if on_layer is not None:
                    on_layer(index)
            return self.adopt(image, extracted)
        except BaseException:
            self.discard(extracted)
            raise

    def extract(self, layer_digest: str) -> tuple[str, str]:
        """Unpack one layer blob into a new parentless active snapshot.

        Returns (snapshot key, diff ID): the uncompressed stream is hashed while it is
        applied, so ``adopt`` can check it against the image config. Layers of one
        image can be extracted in parallel, as their blobs arrive.
        """
        from berth.images.layer import apply_layer, open_layer_stream

        key = f"extract-{uuid.uuid4().hex}"
        self.snapshots.prepare(key, None, labels={"berth.layer": layer_digest})
        try:
            with self.content.open(layer_digest) as blob:
                reader = _HashingReader(open_layer_stream(blob))
                apply_layer(reader, self.snapshots.fs_path(key))  # type: ignore[arg-type]
                reader.drain()
        except BaseException:
            self.snapshots.remove(key)
            raise
        return key, "sha256:" + reader.hash.hexdigest()

    def adopt(self, image: Image, extracted: dict[str, tuple[str, str]]) -> str | None:
        """Chain extracted layers into committed snapshots named by ChainID, in order.

        A layer whose ChainID already exists keeps the existing snapshot; one whose
        diff ID does not match the config is refused and every extraction discarded.
        """
        parent: str | None = None
        used: set[str] = set()
        try:
            for layer, chain_id, diff_id in zip(
                image.layers, image.chain_ids, image.config.diff_ids, strict=True
            ):
                if not self.snapshots.exists(chain_id):
                    if layer.digest not in extracted or extracted[layer.digest][0] in used:
                        extracted[layer.digest] = self.extract(layer.digest)
                    key, got = extracted[layer.digest]
                    if got != diff_id:
                        raise LayerMismatch(
                            f"layer {layer.digest} unpacks to {got}, but its image says {diff_id}"
                        )
                    try:
                        self.snapshots.commit(chain_id, key, parent=parent)
                        used.add(key)
                    except Conflict:  # committed meanwhile by someone else: keep theirs
                        pass
                parent = chain_id
        finally:
            self.discard({d: v for d, v in extracted.items() if v[0] not in used})
        return parent

    def discard(self, extracted: dict[str, tuple[str, str]]) -> None:
        for key, _ in extracted.values():
            if self.snapshots.exists(key) and self.snapshots.stat(key).kind == ACTIVE:
                self.snapshots.remove(key)

    def has_layer(self, layer_digest: str) -> bool:
        """Whether some committed snapshot holds this layer (worth no new extraction)."""
        return any(
            s.kind == "committed" and s.labels.get("berth.layer") == layer_digest
            for s in self.snapshots.walk()
        )

    # ---- reading --------------------------------------------------------------------

    def _load(self, image_id: str) -> Image:
        row = self._db.execute(
            "SELECT id, manifest_digest, manifest_media_type, index_digest, created FROM images"
            " WHERE id = ?",
            (image_id,),
        ).fetchone()
        if row is None:
            raise NotFound(f"no such image: {image_id}")
        names = [
            r[0]
            for r in self._db.execute(
                "SELECT name FROM names WHERE image_id = ? ORDER BY name", (image_id,)
            )
        ]
        parsed = mf.parse_manifest(self.content.read(row[1]), row[2])
        if isinstance(parsed, mf.Index):
            raise InvalidArgument(f"image {image_id}: its manifest is an index")
        config = mf.ImageConfig.parse(self.content.read(parsed.config.digest))
        return Image(row[0], names, row[1], parsed, config, row[3], row[4])

    def get(self, ref: str) -> Image:
        """An image by name (``busybox``, ``localhost:5000/app:1``), ID or ID prefix."""
        text = ref.strip()
        if not text:
            raise InvalidArgument("an image name or ID is needed")
        candidate = text.removeprefix("sha256:")
        if 4 <= len(candidate) <= 64 and all(c in "0123456789abcdef" for c in candidate):
            rows = self._db.execute(
                "SELECT id FROM images WHERE id LIKE ?", (f"sha256:{candidate}%",)
            ).fetchall()
            if len(rows) == 1:
                return self._load(rows[0][0])
            if len(rows) > 1:
                raise Conflict(f"image ID prefix {text!r} is ambiguous: give more characters")
        try:
            name = _normal_name(text)
        except InvalidArgument:
            raise NotFound(f"no such image: {text}") from None
        row = self._db.execute("SELECT image_id FROM names WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFound(f"no such image: {text}")
        return self._load(row[0])

    def images(self) -> list[Image]:
        ids = [r[0] for r in self._db.execute("SELECT id FROM images ORDER BY created DESC")]
        return [self._load(image_id) for image_id in ids]

    # ---- names and removal ----------------------------------------------------------

    def tag(self, ref: str, name: str) -> Image:
        image = self.get(ref)
        with self._db:
            self._db.execute(
                "INSERT INTO names (name, image_id) VALUES (?, ?) ON CONFLICT(name)"
                " DO UPDATE SET image_id = excluded.image_id",
                (_normal_name(name), image.id),
            )
        return self.get(image.id)

    def in_use(self, image: Image) -> list[str]:
        """Keys of active snapshots (containers) built on this image's top layer."""
        top = image.top_layer
        if top is None:
            return []
        return [s.key for s in self.snapshots.walk() if s.kind == ACTIVE and s.parent == top]

    def remove(self, ref: str, *, force: bool = False) -> list[tuple[str, str]]:
        """Docker's ``rmi``: by name, untag (and delete once no name is left); by ID,
        delete (refused while several names point at it, unless forced). Returns
        events as ("Untagged", name) and ("Deleted", id)."""
        image = self.get(ref)
        events: list[tuple[str, str]] = []
        by_name = not ref.removeprefix("sha256:").startswith(image.id.split(":")[1][:4])
        names = image.names
        if by_name:
            names = [_normal_name(ref)]
        elif len(image.names) > 1 and not force:
            raise Conflict(
                f"image {image.short_id} is referenced by {len(image.names)} names"
                f" ({', '.join(image.names)}): remove them by name, or force"
            )
        remaining = [n for n in image.names if n not in names]
        if not remaining:
            users = self.in_use(image)
            if users and not force:
                raise Conflict(
                    f"image {image.short_id} is used by {len(users)} container(s): remove them"
                    " first, or force"
                )
        with self._db:
            for name in names:
                self._db.execute("DELETE FROM names WHERE name = ?", (name,))
                events.append(("Untagged", name))
            if not remaining:
                self._db.execute("DELETE FROM images WHERE id = ?", (image.id,))
                events.append(("Deleted", image.id))
        return events

    # ---- garbage collection -----------------------------------------------------------

    def gc(self) -> dict[str, int]:
        """Free blobs and committed snapshots that no image and no container needs."""
        blobs: set[str] = set()
        snaps: set[str] = set()
        for image_id, manifest_digest, index_digest in self._db.execute(
            "SELECT id, manifest_digest, index_digest FROM images"
        ).fetchall():
            blobs.update({image_id, manifest_digest})
            if index_digest:
                blobs.add(index_digest)
                try:
                    index = mf.parse_manifest(self.content.read(index_digest))
                    if isinstance(index, mf.Index):
                        blobs.update(d.digest for d in index.manifests)
                except BerthError:
                    pass
            try:
                image = self._load(image_id)
            except BerthError:
                continue
            blobs.update(layer.digest for layer in image.layers)
            snaps.update(image.chain_ids)
        infos = {s.key: s for s in self.snapshots.walk()}
        for info in infos.values():  # containers keep their whole chain
            if info.kind != "committed":
                snaps.add(info.key)
                parent = info.parent
                while parent is not None and parent in infos:
                    snaps.add(parent)
                    parent = infos[parent].parent
        freed_bytes = removed_blobs = removed_snapshots = 0
        for digest in list(self.content.list()):
            if digest not in blobs:
                freed_bytes += self.content.size(digest)
                self.content.delete(digest)
                removed_blobs += 1
        doomed = [key for key in infos if key not in snaps]
        while doomed:  # children before parents
            progress = False
            for key in list(doomed):
                if not self.snapshots.children(key):
                    freed_bytes += self.snapshots.usage(key)[0]
                    self.snapshots.remove(key)
                    doomed.remove(key)
                    removed_snapshots += 1
                    progress = True
            if not progress:
                break
        return {"blobs": removed_blobs, "snapshots": removed_snapshots, "bytes": freed_bytes}


def _normal_name(name: str) -> str:
    reference = parse_reference(name)
    if reference.digest and not reference.tag:
        return f"{reference.name}@{reference.digest}"
    return f"{reference.name}:{reference.tag or 'latest'}"
