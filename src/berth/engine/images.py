"""The image service: the image store as the Engine API shows it (list, inspect, tag,
remove, history, prune), registries (pull, push with Docker's progress stream, login),
archives (save, load, import) and local base images (bootstrap).

Every change publishes dockerd's image event (pull, push, tag, untag, delete, import,
load, save, prune) with dockerd's actor: the reference for pull/push, the image ID
otherwise, with the image's labels and ``name`` as attributes. Archives stream through
a pipe to or from a worker thread, so a large tar is never held in memory.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from berth.engine.events import EventBus
from berth.engine.filters import label_matches, until_epoch
from berth.engine.filters import values as _filter_values
from berth.errors import BerthError, Conflict, InvalidArgument, NotFound
from berth.images.reference import Reference
from berth.images.reference import parse as parse_reference
from berth.images.store import Image, ImageStore
from berth.units import rfc3339_epoch

if TYPE_CHECKING:
    from berth.distribution.auth import Credentials
    from berth.distribution.client import RegistryClient
    from berth.distribution.progress import ProgressEvent
    from berth.images.manifest import Platform

    Progress = Callable[[ProgressEvent], None]

T = TypeVar("T")
PIPE_SIZE = 1 << 20  # the pipe between a worker thread and the HTTP stream
CHUNK = 1 << 20


def _created_epoch(image: Image) -> int:
    return int(rfc3339_epoch(image.config.created) or image.created)


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
        self._diff_sizes: dict[str, int] = {}  # ChainID -> unpacked size (history)
        self._busy = 0  # pulls, pushes, loads and imports under way: no gc meanwhile

    def summary(self, image: Image) -> dict[str, Any]:
        config = image.config.data.get("config") or {}
        return {
            "Id": image.id,
            "ParentId": str(image.config.data.get("parent") or ""),
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
            "Parent": str(data.get("parent") or ""),
            "Comment": data.get("comment", ""),
            "Created": data.get("created") or "",
            "Container": str(data.get("container") or ""),
            "ContainerConfig": data.get("container_config") or {},
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
        reference = parse_reference(repo)
        if tag:
            reference = reference.with_tag(tag)
        elif reference.tag is None:
            reference = reference.with_tag("latest")
        if reference.digest is not None:
            raise InvalidArgument(f"refusing to create a tag with a digest reference: {repo}")
        image = self.store.tag(ref, str(reference))
        self.image_event("tag", image.id, image, reference.familiar_string)

    def remove(self, ref: str, *, force: bool = False) -> list[dict[str, str]]:
        image = self.store.get(ref)
        events = self.store.remove(ref, force=force)
        for kind, _value in events:
            self.image_event("untag" if kind == "Untagged" else "delete", image.id, image)
        return [
            {kind: _short_name(value) if kind == "Untagged" else value} for kind, value in events
        ]

    def bootstrap(self, name: str) -> Image:
        from berth.images import bootstrap

        if name in ("busybox", "busybox:latest"):
            return bootstrap.bootstrap_busybox(self.store)
        repo, _, suite = name.partition(":")
        if repo == "debian" and shutil.which("debootstrap"):
            return bootstrap.bootstrap_debian(self.store, suite or "bookworm")
        raise InvalidArgument(
            f"no local recipe for {name!r}: busybox and debian[:SUITE] (with debootstrap)"
            " can be bootstrapped here"
        )

    # ---- registries ---------------------------------------------------------------------

    def _client(self, domain: str, auth: str | None) -> RegistryClient:
        """A registry client with the credentials the API client sent in
        ``X-Registry-Auth`` and no others (as dockerd). Without the header at all (docker-py,
        older berth CLIs) the daemon's own ``~/.docker/config.json`` is used."""
        from berth.distribution.client import RegistryClient

        credentials = None
        if auth is not None:
            creds = registry_credentials(auth)
            credentials = {domain: creds} if creds is not None else {}
        return RegistryClient(insecure_registries=self.insecure_registries, credentials=credentials)

    def pull(
        self, from_image: str, tag: str, *, platform: str = "", auth: str | None = None
    ) -> AsyncIterator[bytes]:
        """Docker's JSON progress stream of a pull; an error is the stream's last line.
        A bad name or platform raises here, before the stream starts (a 400)."""
        text = from_image
        if tag:
            text = f"{from_image}@{tag}" if tag.startswith("sha256:") else f"{from_image}:{tag}"
        reference = parse_reference(text)
        if reference.tag is None and reference.digest is None:
            reference = reference.with_tag("latest")
        wanted = parse_platform(platform) if platform else None
        return self._pull_stream(reference, wanted, auth)

    async def _pull_stream(
        self, reference: Reference, platform: Platform | None, auth: str | None
    ) -> AsyncIterator[bytes]:
        from berth.distribution.images import pull_image

        async def work(progress: Progress, aux: Callable[[dict[str, Any]], None]) -> None:
            # the client itself ends the stream with Docker's "Digest:" and "Status:"
            async with self._client(reference.domain, auth) as client:
                image = await pull_image(
                    client, self.store, reference, platform=platform, progress=progress
                )
            self.image_event("pull", reference.familiar_string, image, reference.familiar)

        async for line in self._progress_stream(work):
            yield line

    def push(self, name: str, tag: str, *, auth: str | None = None) -> AsyncIterator[bytes]:
        """``docker push``: every tag of the repository when ``tag`` is empty. An image
        that is not here raises now (a 404), before the stream starts."""
        reference = parse_reference(name)
        if tag:
            reference = (
                reference.with_digest(tag) if tag.startswith("sha256:") else reference.with_tag(tag)
            )
        if reference.tag is not None or reference.digest is not None:
            targets = [reference]
            try:
                self.store.get(str(reference))
            except NotFound:
                raise NotFound(
                    f"an image does not exist locally with the tag: {reference.familiar_string}"
                ) from None
        else:
            targets = [
                parse_reference(n)
                for image in self.store.images()
                for n in image.names
                if "@" not in n and n.rpartition(":")[0] == reference.name
            ]
            if not targets:
                raise NotFound(
                    f"an image does not exist locally with the tag: {reference.familiar}"
                )
            targets.sort(key=str)
        return self._push_stream(targets, auth)

    async def _push_stream(
        self, targets: list[Reference], auth: str | None
    ) -> AsyncIterator[bytes]:
        from berth.distribution.images import push_image

        async def work(progress: Progress, aux: Callable[[dict[str, Any]], None]) -> None:
            async with self._client(targets[0].domain, auth) as client:
                for target in targets:
                    image = self.store.get(str(target))
                    digest = await push_image(
                        client, self.store, str(target), target, progress=progress
                    )
                    size = len(self.store.content.read(image.manifest_digest))
                    aux({"Tag": target.tag or target.digest or "", "Digest": digest, "Size": size})
                    self.image_event("push", target.familiar_string, image, target.familiar)

        async for line in self._progress_stream(work):
            yield line

    async def _progress_stream(
        self, work: Callable[[Progress, Callable[[dict[str, Any]], None]], Awaitable[None]]
    ) -> AsyncIterator[bytes]:
        """Run ``work`` and stream its progress as Docker's JSON lines; it may also send
        ``{"progressDetail":{},"aux":...}`` lines; an error is the stream's last line."""
        from berth.distribution.progress import docker_json_line

        queue: asyncio.Queue[bytes | None] = asyncio.Queue()

        def progress(event: ProgressEvent) -> None:
            queue.put_nowait(docker_json_line(event))

        def aux(value: dict[str, Any]) -> None:
            queue.put_nowait(json_line({"progressDetail": {}, "aux": value}))

        async def run() -> None:
            self._busy += 1
            try:
                await work(progress, aux)
            except BerthError as exc:
                queue.put_nowait(error_line(str(exc)))
            finally:
                self._busy -= 1
                queue.put_nowait(None)

        task = asyncio.create_task(run())
        try:
            while (line := await queue.get()) is not None:
                yield line
        finally:
            if not task.done():
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def login(self, body: dict[str, Any]) -> dict[str, str]:
        """``POST /auth``: check the credentials against the registry; nothing is stored
        (the client keeps them). Unauthorized when the registry refuses them."""
        username = str(body.get("username") or "")
        password = str(body.get("password") or "")
        server = str(body.get("serveraddress") or "") or "docker.io"
        if not username:
            raise InvalidArgument("login needs a username")
        from berth.distribution.client import normalize_login_host

        domain = normalize_login_host(server)
        async with self._client(domain, "") as client:
            await client.check_login(domain, username, password)
        return {"Status": "Login Succeeded", "IdentityToken": ""}

    # ---- archives -----------------------------------------------------------------------

    def save(self, refs: list[str]) -> AsyncIterator[bytes]:
        """``docker save``: the images as a docker-archive tar, streamed. Unknown names
        raise now, before the first byte."""
        from berth.images import archive

        images = archive.images_to_save(self.store, refs)

        def produce(out: BinaryIO) -> None:
            archive.save(self.store, refs, out)
            for image in {i.id: i for i in images}.values():
                self.image_event("save", image.id, image)

        return _stream_from_thread(produce)

    async def load(self, body: AsyncIterator[bytes], *, quiet: bool = False) -> list[str]:
        """``docker load`` of the request body: the names loaded (images without a
        name as their IDs). Records nothing unless the whole archive is good."""
        from berth.images import archive

        self._busy += 1
        try:
            loaded = await feed_thread(body, lambda f: archive.load(self.store, f))
        finally:
            self._busy -= 1
        seen: set[str] = set()
        out = []
        for item in loaded:
            image = self.store.get(item)
            if image.id not in seen:
                seen.add(image.id)
                self.image_event("load", image.id, image)
            out.append(item if item.startswith("sha256:") else _short_name(item))
        return out

    async def import_image(
        self,
        body: AsyncIterator[bytes],
        *,
        repo: str = "",
        tag: str = "",
        changes: list[str] | None = None,
        message: str = "",
        platform: str = "",
    ) -> str:
        """``docker import`` of the request body (a rootfs tar): the new image's ID."""
        from berth.images import archive
        from berth.images.changes import apply_changes

        name = None
        if repo:
            reference = parse_reference(repo)
            if tag:
                reference = reference.with_tag(tag)
            elif reference.tag is None and reference.digest is None:
                reference = reference.with_tag("latest")
            if reference.digest is not None:
                raise InvalidArgument(f"cannot import as {repo}: a digest is not a tag")
            name = str(reference)
        config = apply_changes(changes or [])
        wanted = parse_platform(platform) if platform else None
        self._busy += 1
        try:
            image = await feed_thread(
                body,
                lambda f: archive.import_rootfs(
                    self.store,
                    f,
                    name=name,
                    changes=config,
                    platform=wanted,
                    message=message or None,
                ),
            )
        finally:
            self._busy -= 1
        self.image_event("import", image.id, image)
        return image.id

    # ---- history, prune ------------------------------------------------------------------

    def history(self, ref: str) -> list[dict[str, Any]]:
        """dockerd's ImageHistory: one entry per history item, newest first; only the
        top one carries the image's ID and tags ("<missing>" below it)."""
        image = self.store.get(ref)
        diff_ids = image.config.diff_ids
        chains = image.chain_ids
        entries: list[dict[str, Any]] = []
        layer = 0
        for item in image.config.history:
            size = 0
            if not item.get("empty_layer"):
                if layer >= len(diff_ids):
                    raise InvalidArgument(
                        f"image {image.short_id}: too many non-empty layers in its history"
                    )
                size = self._layer_size(chains[layer], image.layers[layer].size)
                layer += 1
            entries.insert(
                0,
                {
                    "Comment": item.get("comment") or "",
                    "Created": int(rfc3339_epoch(item.get("created"))),
                    "CreatedBy": item.get("created_by") or "",
                    "Id": "<missing>",
                    "Size": size,
                    "Tags": None,
                },
            )
        # the IDs and tags down the parent chain (images made here by commit or build)
        current: Image | None = image
        for entry in entries:
            if current is None:
                break
            entry["Id"] = current.id
            entry["Tags"] = _tags(current) or None
            parent = str(current.config.data.get("parent") or "")
            try:
                current = self.store.get(parent) if parent else None
            except BerthError:
                current = None
        return entries

    def _layer_size(self, chain_id: str, fallback: int) -> int:
        """A layer's size as Docker's DiffSize counts it (file sizes, directories and
        hard-link repeats not counted), from its snapshot; cached, as layers never change."""
        cached = self._diff_sizes.get(chain_id)
        if cached is not None:
            return cached
        try:
            root = self.store.snapshots.fs_path(chain_id)
        except BerthError:
            return fallback
        size = 0
        seen: set[int] = set()
        for top, _dirs, files in os.walk(root):
            for name in files:
                try:
                    st = os.lstat(os.path.join(top, name))
                except OSError:
                    continue
                if st.st_size and st.st_ino not in seen:
                    seen.add(st.st_ino)
                    size += st.st_size
        self._diff_sizes[chain_id] = size
        return size

    def prune(
        self, filters: dict[str, Any] | None = None, used: dict[str, int] | None = None
    ) -> dict[str, Any]:
        """``docker image prune``: images no container uses; only untagged ones unless
        ``dangling=false``; ``until`` and ``label``/``label!`` narrow the choice.
        ``used`` (image ID -> containers) is taken on the event loop by a caller that
        runs this on a worker thread."""
        filters = filters or {}
        unknown = set(filters) - {"dangling", "until", "label", "label!"}
        if unknown:
            raise InvalidArgument(
                f"invalid filter {sorted(unknown)[0]!r} for image prune:"
                " use dangling, until, label or label!"
            )
        dangling_values = _filter_values(filters, "dangling")
        dangling_only = True
        if dangling_values:
            value = dangling_values[0].strip().lower()
            if value in ("false", "0"):
                dangling_only = False
            elif value not in ("true", "1"):
                raise InvalidArgument(f"invalid filter dangling={value!r}: use true or false")
        until = [until_epoch(v) for v in _filter_values(filters, "until")]
        labels = _filter_values(filters, "label")
        not_labels = _filter_values(filters, "label!")
        if used is None:
            used = self.in_use()
        deleted: list[dict[str, str]] = []
        doomed: list[Image] = []
        for image in self.store.images():
            if used.get(image.id):  # by image ID: images may share their top layer
                continue
            if dangling_only and _tags(image):
                continue
            if until and not all(_created_epoch(image) < u for u in until):
                continue
            image_labels = image.config.labels
            if labels and not all(label_matches(image_labels, f) for f in labels):
                continue
            if not_labels and any(label_matches(image_labels, f) for f in not_labels):
                continue
            doomed.append(image)
        keep_blobs: set[str] = set()
        for image in self.store.images():
            if image.id not in {d.id for d in doomed}:
                keep_blobs.update(layer.digest for layer in image.layers)
        reclaimed = 0
        counted: set[str] = set()
        for image in doomed:
            for layer in image.layers:
                if layer.digest not in keep_blobs and layer.digest not in counted:
                    counted.add(layer.digest)
                    reclaimed += layer.size
            try:
                deleted.extend(self.remove(image.id, force=True))
            except BerthError:
                continue
        if doomed and not self._busy:
            with contextlib.suppress(BerthError, OSError):
                self.store.gc()
        self.events.publish("image", "prune", "", {"reclaimed": str(reclaimed)})
        return {"ImagesDeleted": deleted or None, "SpaceReclaimed": reclaimed}

    # ---- events -------------------------------------------------------------------------

    def image_event(
        self, action: str, actor: str, image: Image | None = None, name: str | None = None
    ) -> None:
        """dockerd's LogImageEvent: the image's labels, then ``name``."""
        attributes: dict[str, str] = {}
        if image is not None:
            attributes.update(image.config.labels)
        attributes["name"] = name if name is not None else actor
        self.events.publish("image", action, actor, attributes)


# ---- request helpers -------------------------------------------------------------------


def json_line(value: Any) -> bytes:
    """One line of a Docker JSON stream, as dockerd's streamformatter writes it."""
    from berth.distribution.progress import _go_json

    return (_go_json(value) + "\r\n").encode()


def error_line(message: str) -> bytes:
    return json_line({"errorDetail": {"message": message}, "error": message})


def registry_credentials(header: str | None) -> Credentials | None:
    """``X-Registry-Auth``: base64url JSON of an auth config. Anything unreadable counts
    as no credentials, as in dockerd (a pull of a public image needs none)."""
    from berth.distribution.auth import Credentials

    if not header:
        return None
    text = header.strip()
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        doc = json.loads(raw)
    except (binascii.Error, ValueError):
        try:
            doc = json.loads(base64.b64decode(text + "=" * (-len(text) % 4)))
        except (binascii.Error, ValueError):
            return None
    if not isinstance(doc, dict):
        return None
    username, password = doc.get("username"), doc.get("password")
    if isinstance(username, str) and username and isinstance(password, str):
        return Credentials(username, password)
    auth = doc.get("auth")
    if isinstance(auth, str) and auth:
        try:
            user, sep, secret = base64.b64decode(auth).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        if sep and user:
            return Credentials(user, secret)
    return None


_KNOWN_ARCHES = frozenset(
    {
        "386",
        "amd64",
        "arm",
        "arm64",
        "loong64",
        "mips",
        "mipsle",
        "mips64",
        "mips64le",
        "ppc64",
        "ppc64le",
        "riscv64",
        "s390x",
        "wasm",
    }
)


def parse_platform(text: str) -> Platform:
    """``linux/amd64`` as Docker accepts it; a bad one is one 400 line."""
    from berth.images.manifest import Platform

    platform = Platform.parse(text)
    known_os = ("linux", "windows", "darwin", "freebsd", "netbsd", "openbsd", "solaris")
    if platform.os not in known_os or platform.architecture not in _KNOWN_ARCHES:
        raise InvalidArgument(
            f"invalid platform {text!r}: unknown operating system or architecture"
        )
    return platform


def _in_own_thread(fn: Callable[[], T]) -> asyncio.Future[T]:
    """Run ``fn`` on a thread of its own: the other end of its pipe waits on the shared
    pool, and a producer queued behind such waiters in that pool would never run."""
    import threading

    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.cancelled():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def main() -> None:
        try:
            result: T | None = fn()
            error: BaseException | None = None
        except BaseException as exc:
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile (shutdown)
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=main, name="berth-archive", daemon=True).start()
    return future


def _stream_from_thread(produce: Callable[[BinaryIO], None]) -> AsyncIterator[bytes]:
    """Run ``produce(out)`` on a worker thread, writing into a pipe, and yield what it
    writes. A reader that goes away closes the pipe, so the writer stops (EPIPE); a
    writer that fails raises here after the bytes it wrote, so the response is cut off
    rather than ended as if complete."""

    async def gen() -> AsyncIterator[bytes]:
        read_fd, write_fd = os.pipe()
        with contextlib.suppress(OSError):
            fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        reader = os.fdopen(read_fd, "rb", buffering=0)

        def run() -> None:
            with os.fdopen(write_fd, "wb", buffering=CHUNK) as out:
                produce(out)

        task = _in_own_thread(run)
        try:
            while chunk := await asyncio.to_thread(reader.read, CHUNK):
                yield chunk
        finally:
            reader.close()
            await asyncio.gather(task, return_exceptions=True)
        exc = task.exception()
        if exc is not None:
            raise exc

    return gen()


async def feed_thread(body: AsyncIterator[bytes], consume: Callable[[BinaryIO], T]) -> T:
    """Run ``consume(stream)`` on a worker thread while the request body is fed into its
    stream through a pipe: a big archive is never held in memory or spooled twice."""
    read_fd, write_fd = os.pipe()
    with contextlib.suppress(OSError):
        fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)

    def run() -> T:
        with os.fdopen(read_fd, "rb", buffering=CHUNK) as stream:
            return consume(stream)

    def write_all(data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(write_fd, view)
            view = view[written:]

    task = _in_own_thread(run)
    try:
        pending = bytearray()
        async for chunk in body:
            pending += chunk
            if len(pending) >= CHUNK:
                if task.done():
                    break
                try:
                    await asyncio.to_thread(write_all, bytes(pending))
                except BrokenPipeError:  # the reader stopped (done or failed)
                    break
                pending.clear()
        if pending and not task.done():
            with contextlib.suppress(BrokenPipeError):
                await asyncio.to_thread(write_all, bytes(pending))
    except BaseException:
        os.close(write_fd)  # the reader sees the end and stops
        await asyncio.gather(task, return_exceptions=True)
        raise
    os.close(write_fd)
    return await task


def _glob_match(pattern: str, text: str) -> bool:
    import fnmatch

    return fnmatch.fnmatchcase(text, pattern)


__all__ = ["Conflict", "ImageService"]
