"""``docker commit``: a new image from a container's image plus its writable layer.

The container's overlay upper directory becomes one layer (whiteouts turned into
``.wh.`` entries by ``images.layer``'s archiver, Docker's init-layer mount points left
out), stored gzip-compressed; the image is the container's image's layers plus that one
(none if nothing changed, as Docker), with a history entry and the container's config
merged under the caller's (the JSON body, then the ``changes`` Dockerfile lines).
The container is paused meanwhile unless ``pause`` is false.
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from berth import faults
from berth.engine.archive import INIT_FILES
from berth.errors import BerthError, Conflict, InvalidArgument, NotFound, SystemFailure
from berth.images import layer as layers
from berth.images import manifest as mf
from berth.images.changes import apply_changes
from berth.images.content import BlobFile

if TYPE_CHECKING:
    from berth.engine.containers import ContainerService
    from berth.images.store import Image, ImageStore

EMPTY_TAR_DIFF_ID = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"
_OCI_OF = {
    mf.DOCKER_LAYER: mf.OCI_LAYER,
    mf.DOCKER_LAYER_GZIP: mf.OCI_LAYER_GZIP,
    mf.DOCKER_LAYER_ZSTD: mf.OCI_LAYER_ZSTD,
}


# ---- the config ----------------------------------------------------------------------------


def merge(user: dict[str, Any], container: dict[str, Any]) -> dict[str, Any]:
    """Docker's commit merge: the container's config fills what the caller's leaves out."""
    if not user.get("User"):
        user["User"] = container.get("User") or ""
    ports = dict(user.get("ExposedPorts") or {})
    for port in container.get("ExposedPorts") or {}:
        ports.setdefault(port, {})
    user["ExposedPorts"] = ports or None
    env = list(user.get("Env") or [])
    keys = {e.partition("=")[0] for e in env}
    env += [e for e in container.get("Env") or [] if e.partition("=")[0] not in keys]
    user["Env"] = env or None
    labels = dict(container.get("Labels") or {})
    labels.update(user.get("Labels") or {})
    user["Labels"] = labels
    if not user.get("Entrypoint"):
        if not user.get("Cmd"):
            user["Cmd"] = container.get("Cmd")
        if user.get("Entrypoint") is None:
            user["Entrypoint"] = container.get("Entrypoint")
    if not user.get("WorkingDir"):
        user["WorkingDir"] = container.get("WorkingDir") or ""
    volumes = dict(user.get("Volumes") or {})
    volumes.update(container.get("Volumes") or {})
    user["Volumes"] = volumes or None
    if not user.get("StopSignal") and container.get("StopSignal"):
        user["StopSignal"] = container["StopSignal"]
    for key in ("Hostname", "Domainname", "Tty", "OpenStdin", "StdinOnce", "Image", "OnBuild"):
        if key not in user and key in container:
            user[key] = container[key]
    for key in ("AttachStdin", "AttachStdout", "AttachStderr"):
        user.setdefault(key, False)
    return user


# ---- the layer -----------------------------------------------------------------------------


class _ContainerArchiver(layers._Archiver):
    """The layer archiver, minus the mount points the engine makes (Docker's init layer)."""

    def entry(self, path: str, rel: str) -> bool:
        if "/" + rel in INIT_FILES and stat.S_ISREG(os.lstat(path).st_mode):
            return False
        return super().entry(path, rel)


def write_container_layer(upper: str, out: BinaryIO) -> tuple[str, str, int]:
    """``layer.write_layer`` of a container's upper dir: (blob digest, diff ID, size)."""
    sink = layers._Sink(out, "gzip")
    try:
        _ContainerArchiver(sink, True, None).walk(upper)
        sink.write(bytes(2 * layers.BLOCK))
        sink.close()
    except BaseException as exc:
        sink.abort()
        if isinstance(exc, OSError):
            raise layers.LayerError(f"cannot write the layer of {upper}: {exc}") from exc
        raise
    return (
        "sha256:" + sink.hashed.hash.hexdigest(),
        "sha256:" + sink.diff.hexdigest(),
        sink.hashed.size,
    )


def _now() -> str:
    ns = time.time_ns()
    seconds, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{frac:09d}Z"


def make_image(
    store: ImageStore,
    base: Image,
    upper: str,
    *,
    container_id: str,
    container_config: dict[str, Any],
    config: dict[str, Any],
    comment: str,
    author: str,
    names: list[str],
) -> Image:
    """Write the layer and record the image (blocking: run it in a worker thread)."""
    with store.content.writer() as writer:
        digest, diff_id, size = write_container_layer(upper, cast(BinaryIO, BlobFile(writer)))
        stored = writer.commit()
    faults.point("commit:layer-written")
    if stored != digest:
        raise SystemFailure(
            f"the layer of {container_id[:12]} was stored as {stored}, not {digest}"
        )
    empty = diff_id == EMPTY_TAR_DIFF_ID
    base_config = base.config.data
    created = _now()
    entry: dict[str, Any] = {"created": created}
    if author:
        entry["author"] = author
    created_by = " ".join(container_config.get("Cmd") or [])
    if created_by:
        entry["created_by"] = created_by
    if comment:
        entry["comment"] = comment
    if empty:
        entry["empty_layer"] = True
    image_config: dict[str, Any] = {
        key: base_config[key] for key in ("architecture", "variant", "os") if key in base_config
    }
    image_config.update(
        {
            "config": config,
            "container": container_id,
            "container_config": container_config,
            "created": created,
            "parent": base.id,
            "history": [*(base_config.get("history") or []), entry],
            "rootfs": {
                "type": "layers",
                "diff_ids": list(base.config.diff_ids) + ([] if empty else [diff_id]),
            },
        }
    )
    if author:
        image_config["author"] = author
    if comment:
        image_config["comment"] = comment
    descriptors = [
        mf.Descriptor(_OCI_OF.get(d.media_type, d.media_type), d.digest, d.size)
        for d in base.layers
    ]
    if not empty:
        descriptors.append(mf.Descriptor(mf.OCI_LAYER_GZIP, digest, size))
    return store.create_image(image_config, descriptors, names)


# ---- the operation ---------------------------------------------------------------------------


def _name(repo: str, tag: str) -> list[str]:
    if not repo:
        if tag:
            raise InvalidArgument("a tag needs a repository: give repo= too")
        return []
    from berth.images.reference import parse

    name = f"{repo}:{tag}" if tag else repo
    try:
        parse(name)
    except BerthError as exc:
        raise InvalidArgument(f"invalid reference format: {name}: {exc}") from None
    return [name]


async def commit(
    containers: ContainerService,
    ref: str,
    *,
    repo: str = "",
    tag: str = "",
    comment: str = "",
    author: str = "",
    pause: bool = True,
    changes: list[str] | None = None,
    config: dict[str, Any] | None = None,
) -> str:
    """Commit the container; the new image's ID."""
    container = containers.get(ref)
    names = _name(repo, tag)
    container_config = containers.inspect(container.id)["Config"]
    new_config = apply_changes(changes or [], dict(config or {}))
    new_config = merge(new_config, container_config)
    store = containers.images
    try:
        base = store.get(container.spec.image_id)
    except NotFound:
        raise Conflict(
            f"cannot commit {container.name}: its image {container.spec.image_id} was removed"
        ) from None
    upper = store.snapshots.fs_path(container.id)
    paused_here = False
    if pause and container.status == "running" and not container.state.get("Paused"):
        try:
            await containers.ops.pause(container.id)
            paused_here = True
        except Conflict:
            pass  # stopped or paused meanwhile: either way it is still
    try:
        image = await asyncio.to_thread(
            make_image,
            store,
            base,
            upper,
            container_id=container.id,
            container_config=container_config,
            config=new_config,
            comment=comment,
            author=author,
            names=names,
        )
    finally:
        if paused_here:
            try:
                await containers.ops.unpause(container.id)
            except BerthError as exc:
                print(f"berthd: unpause of {container.id[:12]} after commit: {exc}", flush=True)
    attributes = {
        "comment": comment,
        "imageID": image.id,
        "imageRef": names[0] if names else image.id,
        "author": author,
        "image": container.spec.image,
        "name": container.name,
    }
    containers.events.publish("container", "commit", container.id, attributes)
    return image.id
