"""Pull into and push from the image store: the registry client meets the store.

A pull unpacks while it downloads: each layer is extracted into its own snapshot
on a worker thread as soon as its blob is verified, and the snapshots are chained
by ChainID once the config is known (``ImageStore.adopt``). Layers the store
already holds are not extracted again.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from berth.images.reference import Reference
from berth.images.reference import parse as parse_reference

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from berth.distribution.client import RegistryClient
    from berth.distribution.progress import ProgressEvent
    from berth.images.manifest import Descriptor, Platform
    from berth.images.store import Image, ImageStore


async def pull_image(
    client: RegistryClient,
    store: ImageStore,
    ref: str | Reference,
    *,
    platform: Platform | None = None,
    progress: Callable[[ProgressEvent], None] | None = None,
    unpack_workers: int = 2,
) -> Image:
    reference = parse_reference(ref) if isinstance(ref, str) else ref
    loop = asyncio.get_running_loop()
    extractions: dict[str, asyncio.Future[tuple[str, str]]] = {}
    pool = ThreadPoolExecutor(max_workers=unpack_workers, thread_name_prefix="unpack")

    def on_layer(desc: Descriptor) -> None:
        if desc.digest not in extractions and not store.has_layer(desc.digest):
            extractions[desc.digest] = loop.run_in_executor(pool, store.extract, desc.digest)

    extracted: dict[str, tuple[str, str]] = {}
    try:
        try:
            result = await client.pull(
                reference, store.content, platform=platform, progress=progress, on_layer=on_layer
            )
        finally:  # whatever happened, wait for the workers and keep what they made
            outcomes = await asyncio.gather(*extractions.values(), return_exceptions=True)
            failures = []
            for digest, outcome in zip(extractions, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    failures.append(outcome)
                else:
                    extracted[digest] = outcome
        if failures:
            raise failures[0]
        image = await loop.run_in_executor(
            pool, lambda: store.add(result.digest, names=[str(reference)], platform=platform)
        )
        await loop.run_in_executor(pool, store.adopt, image, extracted)
        extracted = {}
        return store.get(image.id)
    finally:
        if extracted:
            store.discard(extracted)
        pool.shutdown(wait=True)


async def push_image(
    client: RegistryClient,
    store: ImageStore,
    source: str,
    destination: str | Reference | None = None,
    *,
    progress: Callable[[ProgressEvent], None] | None = None,
) -> str:
    """Push the image ``source`` (a name or ID in the store) as ``destination``
    (default: its own name); returns the pushed manifest's digest."""
    image = store.get(source)
    if destination is None:
        destination = source
    reference = parse_reference(destination) if isinstance(destination, str) else destination
    # the platform manifest: the store holds only this platform's blobs, not the index's
    data = store.content.read(image.manifest_digest)
    from berth.images.manifest import parse_manifest

    media_type = parse_manifest(data).media_type
    return await client.push(reference, store.content, data, media_type, progress=progress)
