"""The image service: the image store as the Engine API shows it (list, inspect, tag,
remove, pull with Docker's progress stream) and local base images (bootstrap)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from berth.engine.events import EventBus
from berth.errors import BerthError, Conflict, InvalidArgument
from berth.images.store import Image, ImageStore


def _created_epoch(image: Image) -> int:
    stamp = image.config.created
    if not stamp:
        return int(image.created)
    base = stamp[:19]
    try:
        return int(time.mktime(time.strptime(base, "%Y-%m-%dT%H:%M:%S")) - time.timezone)
    except ValueError:
        return int(image.created)


def _digests(image: Image) -> list[str]:
    digest = image.index_digest or image.manifest_digest
    repos = sorted({n.rsplit(":", 1)[0] if "@" not in n else n.split("@")[0] for n in image.names})
    return [f"{repo}@{digest}" for repo in repos]


def _tags(image: Image) -> list[str]:
    return [_short_name(n) for n in image.names if "@" not in n]


def _short_name(name: str) -> str:
    """``docker.io/library/busybox:latest`` -> ``busybox:latest``, as Docker shows names."""
    for prefix in ("docker.io/library/", "docker.io/"):
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


class ImageService:
    def __init__(
        self,
        store: ImageStore,
        insecure_registries: list[str] | None = None,
        events: EventBus | None = None,
    ) -> None:
        self.store = store
        self.events = events or EventBus()
        self.insecure_registries = insecure_registries or []
        self.in_use: Callable[[], dict[str, int]] = dict

    def summary(self, image: Image) -> dict[str, Any]:
        config = image.config.data.get("config") or {}
        return {
            "Id": image.id,
            "ParentId": "",
            "RepoTags": _tags(image),
            "RepoDigests": _digests(image),
            "Created": _created_epoch(image),
            "Size": image.size,
            "SharedSize": -1,
            "VirtualSize": image.size,
            "Labels": config.get("Labels") or {},
            "Containers": self.in_use().get(image.id, 0),
        }

    def list_images(self, *, filters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        result = []
        references = _filter_values(filters or {}, "reference")
        dangling = _filter_values(filters or {}, "dangling")
        for image in self.store.images():
            tags = _tags(image)
            if dangling and (dangling[0] == "true") == bool(tags):
                continue
            if references and not any(
                _glob_match(r, t) or _glob_match(r, t.rsplit(":", 1)[0])
                for r in references
                for t in tags
            ):
                continue
            result.append(self.summary(image))
        return result

    def inspect(self, ref: str) -> dict[str, Any]:
        image = self.store.get(ref)
        data = image.config.data
        return {
            "Id": image.id,
            "RepoTags": _tags(image),
            "RepoDigests": _digests(image),
            "Parent": "",
            "Comment": data.get("comment", ""),
            "Created": data.get("created") or "",
            "DockerVersion": data.get("docker_version", ""),
            "Author": data.get("author", ""),
            "Config": data.get("config") or {},
            "Architecture": image.config.architecture,
            "Variant": image.config.variant,
            "Os": image.config.os,
            "Size": image.size,
            "GraphDriver": {"Name": "overlay", "Data": None},
            "RootFS": {
                "Type": "layers",
                "Layers": list(image.config.data.get("rootfs", {}).get("diff_ids") or []),
            },
            "Metadata": {"LastTagTime": "0001-01-01T00:00:00Z"},
        }

    def tag(self, ref: str, repo: str, tag: str) -> None:
        if not repo:
            raise InvalidArgument("repository name must be given: use ?repo=NAME&tag=TAG")
        self.store.tag(ref, f"{repo}:{tag or 'latest'}")

    def remove(self, ref: str, *, force: bool = False) -> list[dict[str, str]]:
        events = self.store.remove(ref, force=force)
        return [
            {kind: _short_name(value) if kind == "Untagged" else value} for kind, value in events
        ]

    def bootstrap(self, name: str) -> Image:
        from berth.images import bootstrap

        if name in ("busybox", "busybox:latest"):
            return bootstrap.bootstrap_busybox(self.store)
        raise InvalidArgument(
            f"no local recipe for {name!r}: only busybox can be bootstrapped here"
        )

    async def pull(self, from_image: str, tag: str) -> AsyncIterator[bytes]:
        """Docker's JSON progress stream of a pull; an error is the stream's last line."""
        from berth.distribution.client import RegistryClient
        from berth.distribution.images import pull_image
        from berth.distribution.progress import (
            ProgressEvent,
            _go_json,
            docker_json_line,
        )

        reference = from_image
        if tag:
            reference = (
                f"{from_image}@{tag}" if tag.startswith("sha256:") else f"{from_image}:{tag}"
            )
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()

        def progress(event: ProgressEvent) -> None:
            queue.put_nowait(docker_json_line(event))

        async def run() -> None:
            try:
                # the client itself ends the stream with Docker's "Digest:" and "Status:"
                async with RegistryClient(insecure_registries=self.insecure_registries) as client:
                    await pull_image(client, self.store, reference, progress=progress)
            except BerthError as exc:
                queue.put_nowait(
                    (
                        _go_json({"errorDetail": {"message": str(exc)}, "error": str(exc)}) + "\r\n"
                    ).encode()
                )
            finally:
                queue.put_nowait(None)

        task = asyncio.create_task(run())
        try:
            while (line := await queue.get()) is not None:
                yield line
        finally:
            if not task.done():
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def _filter_values(filters: dict[str, Any], key: str) -> list[str]:
    value = filters.get(key)
    if isinstance(value, dict):
        return [k for k, v in value.items() if v]
    if isinstance(value, list):
        return [str(v) for v in value]
    return []


def _glob_match(pattern: str, text: str) -> bool:
    import fnmatch

    return fnmatch.fnmatchcase(text, pattern)


__all__ = ["Conflict", "ImageService"]
