"""Builds for berthd: a context arriving as a request body, the executor of
``berth.build`` on a worker thread, its messages as an async stream.

The API layer only turns query parameters into ``BuildOptions`` and writes the
messages out; pulls of missing base images go through the image service (so they
stream and publish events as any pull), and the step cache is one per daemon root.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import shutil
import sys
import traceback
import uuid
from collections.abc import AsyncIterator
from typing import Any

from berth import errors
from berth.build.cache import BuildCache
from berth.build.context import Context
from berth.build.executor import Builder, BuildFailed, BuildOptions, Emit
from berth.engine.images import ImageService, feed_thread
from berth.engine.network.service import BuildSandbox, NetworkService
from berth.engine.reconcile import build_work_root


def registry_auth(configs: str | None, domain: str) -> str | None:
    """X-Registry-Config (base64 JSON: registry -> auth config) to the X-Registry-Auth
    form the pull takes, for one registry."""
    if not configs:
        return None
    try:
        text = configs.strip()
        doc = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, ValueError):
        return None
    if not isinstance(doc, dict):
        return None
    names = [domain, f"https://{domain}", f"http://{domain}"]
    if domain == "docker.io":
        names += ["https://index.docker.io/v1/", "index.docker.io"]
    for name in names:
        if isinstance(doc.get(name), dict):
            return base64.urlsafe_b64encode(json.dumps(doc[name]).encode()).decode()
    return None


class Build:
    """One prepared build: ``messages()`` runs it and yields Docker's JSON messages."""

    def __init__(
        self,
        builder: Builder,
        options: BuildOptions,
        context_dir: str,
        images: ImageService,
        queue: asyncio.Queue[dict[str, Any] | None],
    ) -> None:
        self.builder = builder
        self.options = options
        self.context_dir = context_dir
        self.images = images
        self.queue = queue

    def cancel(self) -> None:
        """Stop the build: RUN steps are killed, no image is made."""
        self.builder.cancelled.set()

    def _emit(self, loop: asyncio.AbstractEventLoop, message: dict[str, Any] | None) -> None:
        loop.call_soon_threadsafe(self.queue.put_nowait, message)

    async def messages(self) -> AsyncIterator[dict[str, Any]]:
        """The build's output; a failure is the last message (``errorDetail``, with a
        RUN's exit code as ``code``). A consumer that stops cancels the build."""
        loop = asyncio.get_running_loop()
        built: list[Any] = []

        def work() -> None:
            try:
                built.append(self.builder.run())
            except BuildFailed as exc:
                detail: dict[str, Any] = {"message": str(exc)}
                if exc.code:
                    detail = {"code": exc.code, "message": str(exc)}
                self._emit(loop, {"errorDetail": detail, "error": str(exc)})
            except errors.BerthError as exc:
                self._emit(loop, {"errorDetail": {"message": str(exc)}, "error": str(exc)})
            except Exception as exc:
                traceback.print_exc(file=sys.stderr)
                message = f"internal error: {type(exc).__name__}: {exc}"
                self._emit(loop, {"errorDetail": {"message": message}, "error": message})
            finally:
                shutil.rmtree(self.context_dir, ignore_errors=True)
                self._emit(loop, None)

        task = asyncio.ensure_future(asyncio.to_thread(work))
        try:
            while (message := await self.queue.get()) is not None:
                yield message
        except BaseException:  # the client went away (or the daemon stops): cancel
            self.builder.cancelled.set()
            await asyncio.gather(task, return_exceptions=True)
            raise
        await asyncio.gather(task, return_exceptions=True)
        for image in built:
            for tag in self.options.tags:
                self.images.image_event("tag", image.id, image, tag)


class _RunNetworks:
    """The network service, called from a build's thread (its database and lock live
    on the event loop)."""

    def __init__(self, networks: NetworkService, loop: asyncio.AbstractEventLoop) -> None:
        self.networks = networks
        self.loop = loop

    def acquire(
        self, sandbox_id: str, network: str, hostname: str, extra_hosts: list[str]
    ) -> BuildSandbox:
        call = self.networks.build_sandbox(sandbox_id, network, hostname, extra_hosts)
        return asyncio.run_coroutine_threadsafe(call, self.loop).result()

    def release(self, sandbox_id: str) -> None:
        call = self.networks.release_build_sandbox(sandbox_id)
        asyncio.run_coroutine_threadsafe(call, self.loop).result()


class BuildService:
    def __init__(
        self, images: ImageService, networks: NetworkService, root: str, exec_root: str
    ) -> None:
        self.images = images
        self.networks = networks
        self.root = root
        self.work_root = build_work_root(exec_root)
        self.cache = BuildCache(os.path.join(root, "build"))

    async def prepare(
        self,
        body: AsyncIterator[bytes],
        options: BuildOptions,
        registry_config: str | None = None,
    ) -> Build:
        """Unpack the context as it arrives, parse the Dockerfile and plan the stages:
        an error here comes before any output (a plain 400 for the docker CLI)."""
        context_dir = os.path.join(self.root, "build", "contexts", uuid.uuid4().hex)
        os.makedirs(os.path.dirname(context_dir), mode=0o700, exist_ok=True)
        context = Context(context_dir)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

        def emit(message: dict[str, Any]) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, message)

        async def pull_async(name: str, platform: str, progress: Emit) -> None:
            from berth.images.reference import parse as parse_reference

            auth = registry_auth(registry_config, parse_reference(name).domain)
            error = ""
            async for line in self.images.pull(name, "", platform=platform, auth=auth):
                doc = json.loads(line)
                if doc.get("error"):
                    error = str(doc["error"])
                elif not options.quiet:
                    progress(doc)  # in the stage's place of the output (parallel stages)
            if error:
                raise errors.NotFound(error)

        def pull(name: str, platform: str, progress: Emit) -> None:  # on a build thread
            call = pull_async(name, platform, progress)
            asyncio.run_coroutine_threadsafe(call, loop).result()

        if options.network not in ("", "default", "host", "none"):
            self.networks.get(options.network)  # an unknown network: 404 before any output
        run_networks = _RunNetworks(self.networks, loop)
        builder = Builder(self.images.store, self.cache, self.work_root, emit, pull, run_networks)
        try:
            await feed_thread(body, context.extract)
            await asyncio.to_thread(builder.prepare, context, options)
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, context_dir, True)
            raise
        return Build(builder, options, context_dir, self.images, queue)

    async def prune(self) -> None:
        """Forget every cached step (the blobs go with image gc)."""
        await asyncio.to_thread(self.cache.clear)
