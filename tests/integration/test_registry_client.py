"""The registry client against real registries on 127.0.0.1.

The CNCF distribution registry (Debian's docker-registry) is the peer for pushes and
pulls; small aiohttp servers play a counting/faulty proxy in front of it, a Bearer
token issuer, and registries that lie. Every server a test starts, it stops.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil
import stat
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from tests.registries import REGISTRY_BIN, free_port, htpasswd_file, start_registry, stop_registry
from yarl import URL

from berth.distribution.client import (
    ManifestUnknown,
    PullResult,
    RegistryClient,
    RegistryUnreachable,
    Unauthorized,
    login,
    logout,
)
from berth.distribution.progress import ProgressEvent, docker_json_line
from berth.images.content import ContentStore, DigestMismatch
from berth.images.manifest import (
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    NoMatchingPlatform,
    Platform,
    UnsupportedManifest,
)

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures"
BUSYBOX = FIXTURES / "busybox-1.38-musl-oci"
BUSYBOX_MANIFEST = "sha256:a34ce92094b7b100a98fbd21411a92825f6827b1bc5f6918c253516c90556998"
BUSYBOX_CONFIG = "sha256:654fc8fd836e35f4a64586bddf8f59b9029b48cf80f520834c6c98ca8ab5def9"
BUSYBOX_LAYER = "sha256:5c3b447848a98e48dce106cb3e6acbd4fb6f9b26ee778798137349ce01f4d3c1"

needs_busybox = pytest.mark.skipif(
    not BUSYBOX.is_dir(), reason=f"busybox OCI fixture not found at {BUSYBOX}"
)
needs_registry = pytest.mark.skipif(
    not os.access(REGISTRY_BIN, os.X_OK),
    reason="the CNCF registry (Debian package docker-registry) is not installed",
)
pytestmark = [needs_busybox, needs_registry]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    reg = start_registry(tmp_path_factory.mktemp("registry"))
    try:
        yield reg.host
    finally:
        stop_registry(reg)


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("auth-registry")
    reg = start_registry(root, htpasswd_file(root, "alice"))
    try:
        yield reg.host
    finally:
        stop_registry(reg)


# --- images ------------------------------------------------------------------------------


@pytest.fixture
def config_path(tmp_path: Path) -> str:
    """A private docker config: nothing touches the real ~/.docker."""
    return str(tmp_path / "docker" / "config.json")


@pytest.fixture
def busybox_store(tmp_path: Path) -> ContentStore:
    store = ContentStore(str(tmp_path / "source"))
    for blob in (BUSYBOX / "blobs" / "sha256").iterdir():
        store.put(blob.read_bytes(), "sha256:" + blob.name)
    return store


def busybox_manifest(store: ContentStore) -> bytes:
    return store.read(BUSYBOX_MANIFEST)


def fresh_store(tmp_path: Path, name: str = "dest") -> ContentStore:
    return ContentStore(str(tmp_path / name))


# --- small aiohttp servers ---------------------------------------------------------------


@asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    """Run ``app`` on a free loopback port for the duration of the block."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await runner.cleanup()


_HOP = {"connection", "keep-alive", "transfer-encoding", "host", "content-length", "upgrade"}


@dataclass
class Proxy:
    """A forwarding proxy that records requests and can misbehave on purpose."""

    upstream: str
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    truncate_once: str | None = None  # a blob digest: send half of it once, then hang up
    ignore_range: bool = False
    extra_headers: dict[str, dict[str, str]] = field(default_factory=dict)  # method -> headers
    check: Callable[[web.Request], web.StreamResponse | None] | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    def count(self, method: str, contains: str = "") -> int:
        return sum(1 for m, p, _ in self.requests if m == method and contains in p)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.raw_path, request.headers.get("Range")))
        if self.check is not None:
            refused = self.check(request)
            if refused is not None:
                return refused
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        headers["Host"] = request.host  # the registry builds Location URLs from it
        if self.ignore_range:
            headers.pop("Range", None)
        async with (
            aiohttp.ClientSession(auto_decompress=False) as session,
            session.request(
                request.method,
                URL(f"http://{self.upstream}{request.raw_path}", encoded=True),
                headers=headers,
                data=body if body else None,
                allow_redirects=False,
            ) as up,
        ):
            out = {k: v for k, v in up.headers.items() if k.lower() not in _HOP}
            out.update(self.extra_headers.get(request.method, {}))
            data = await up.read()
            if request.method == "HEAD":
                out["Content-Length"] = up.headers.get("Content-Length", "0")
                return web.Response(status=up.status, headers=out)
            if (
                self.truncate_once
                and request.method == "GET"
                and request.path.endswith(self.truncate_once)
            ):
                self.truncate_once = None
                resp = web.StreamResponse(status=up.status, headers=out)
                resp.content_length = len(data)
                await resp.prepare(request)
                await resp.write(data[: len(data) // 2])
                assert request.transport is not None
                request.transport.close()  # Content-Length promised more: a broken transfer
                return resp
            return web.Response(status=up.status, headers=out, body=data)


def events_of(events: list[ProgressEvent], status: str) -> list[ProgressEvent]:
    return [e for e in events if e.status == status]


# --- push and pull -----------------------------------------------------------------------


def test_push_then_pull_round_trip(
    registry: str, busybox_store: ContentStore, tmp_path: Path
) -> None:
    """A real upstream image goes up and comes back with the same digests."""
    manifest = busybox_manifest(busybox_store)
    events: list[ProgressEvent] = []
    unpacked: list[Descriptor] = []

    async def on_layer(desc: Descriptor) -> None:
        await asyncio.sleep(0)
        unpacked.append(desc)

    async def scenario() -> tuple[str, PullResult]:
        async with RegistryClient(config_path=str(tmp_path / "cfg.json")) as client:
            pushed = await client.push(
                f"{registry}/busybox:1.38", busybox_store, manifest, OCI_MANIFEST
            )
            resolved = await client.resolve(f"{registry}/busybox:1.38")
            assert resolved == (BUSYBOX_MANIFEST, OCI_MANIFEST, manifest)
            dest = fresh_store(tmp_path)
            result = await client.pull(
                f"{registry}/busybox:1.38", dest, progress=events.append, on_layer=on_layer
            )
            return pushed, result

    pushed, result = run(scenario())
    assert pushed == BUSYBOX_MANIFEST
    assert result.manifest_digest == BUSYBOX_MANIFEST
    assert result.index_digest is None
    assert result.manifest_bytes == manifest
    assert result.config_digest == BUSYBOX_CONFIG
    assert sha256(result.config) == BUSYBOX_CONFIG
    assert [d.digest for d in result.layers] == [BUSYBOX_LAYER]
    assert result.downloaded
    dest = fresh_store(tmp_path)
    assert set(dest.list()) == {BUSYBOX_MANIFEST, BUSYBOX_CONFIG, BUSYBOX_LAYER}
    dest.verify(BUSYBOX_LAYER)
    assert [d.digest for d in unpacked] == [BUSYBOX_LAYER]
    statuses = [e.status for e in events if e.id == BUSYBOX_LAYER]
    assert statuses[0] == "Pulling fs layer"
    assert statuses[-3:] == ["Verifying Checksum", "Download complete", "Pull complete"]
    assert "Downloading" in statuses
    assert events[-2].status == f"Digest: {BUSYBOX_MANIFEST}"
    assert events[-1].status == f"Status: Downloaded newer image for {registry}/busybox:1.38"
    first = docker_json_line(events_of(events, "Pulling fs layer")[0])
    assert first == b'{"status":"Pulling fs layer","progressDetail":{},"id":"5c3b447848a9"}\r\n'

    # Pulling again: everything exists, nothing is downloaded.
    again: list[ProgressEvent] = []

    async def pull_again() -> PullResult:
        async with RegistryClient() as client:
            return await client.pull(
                f"{registry}/busybox@{BUSYBOX_MANIFEST}", dest, progress=again.append
            )

    second = run(pull_again())
    assert not second.downloaded
    assert [e.status for e in again if e.id == BUSYBOX_LAYER] == ["Already exists"]
    assert again[-1].status.startswith("Status: Image is up to date for ")


def test_second_push_uploads_nothing(registry: str, busybox_store: ContentStore) -> None:
    manifest = busybox_manifest(busybox_store)
    proxy = Proxy(registry)
    events: list[ProgressEvent] = []

    async def scenario() -> None:
        async with serve(proxy.app()) as front, RegistryClient() as client:
            await client.push(f"{front}/again:1", busybox_store, manifest, OCI_MANIFEST)
            assert proxy.count("PUT", "/blobs/uploads/") == 2  # config and layer
            proxy.requests.clear()
            await client.push(
                f"{front}/again:2", busybox_store, manifest, OCI_MANIFEST, progress=events.append
            )

    run(scenario())
    methods = sorted({m for m, _, _ in proxy.requests})
    assert methods == ["HEAD", "PUT"], proxy.requests
    assert proxy.count("PUT") == 1 and proxy.count("PUT", "/manifests/2") == 1
    assert proxy.count("HEAD", "/blobs/") == 2
    assert [e.status for e in events if e.id == BUSYBOX_LAYER] == [
        "Preparing",
        "Layer already exists",
    ]


def test_chunked_upload_honours_chunk_min_length(
    registry: str, busybox_store: ContentStore, tmp_path: Path
) -> None:
    """Blobs above the threshold go up in PATCH chunks; the registry's minimum wins."""
    manifest = busybox_manifest(busybox_store)
    proxy = Proxy(registry)
    small = Proxy(registry, extra_headers={"POST": {"OCI-Chunk-Min-Length": "300000"}})

    async def scenario() -> PullResult:
        async with (
            serve(proxy.app()) as front,
            serve(small.app()) as front2,
            RegistryClient(chunk_size=100_000) as client,
        ):
            await client.push(f"{front}/chunked:1", busybox_store, manifest, OCI_MANIFEST)
            await client.push(f"{front2}/chunked-min:1", busybox_store, manifest, OCI_MANIFEST)
            return await client.pull(f"{registry}/chunked:1", fresh_store(tmp_path))

    result = run(scenario())
    assert result.manifest_digest == BUSYBOX_MANIFEST
    # 886160 bytes in 100 kB chunks, then in 300 kB chunks; the config goes up whole.
    assert proxy.count("PATCH") == 9
    assert small.count("PATCH") == 3
    assert proxy.count("PUT", "/blobs/uploads/") == 2


def test_cross_repository_mount(registry: str, busybox_store: ContentStore) -> None:
    manifest = busybox_manifest(busybox_store)
    proxy = Proxy(registry)
    events: list[ProgressEvent] = []
    fallback: list[ProgressEvent] = []

    async def scenario() -> None:
        async with RegistryClient() as client:
            await client.push(f"{registry}/ns/base:1", busybox_store, manifest, OCI_MANIFEST)
        async with serve(proxy.app()) as front, RegistryClient() as client:
            await client.push(
                f"{front}/ns/derived:1",
                busybox_store,
                manifest,
                OCI_MANIFEST,
                progress=events.append,
                mount_from="ns/base",
            )
            mounts = proxy.count("POST", "mount=")
            assert mounts == 2 and proxy.count("PATCH") == 0
            assert proxy.count("PUT", "/blobs/") == 0
            # A repository with nothing to mount: the registry answers 202, we upload.
            proxy.requests.clear()
            await client.push(
                f"{front}/ns/other:1",
                busybox_store,
                manifest,
                OCI_MANIFEST,
                progress=fallback.append,
                mount_from="ns/nothing-here",
            )
            assert proxy.count("PUT", "/blobs/uploads/") == 2

    run(scenario())
    assert [e.status for e in events if e.id == BUSYBOX_LAYER][-1] == "Mounted from ns/base"
    assert [e.status for e in fallback if e.id == BUSYBOX_LAYER][-1] == "Pushed"


def _platform_variant(store: ContentStore, arch: str) -> tuple[bytes, str]:
    """A second manifest: busybox's layer under a config that says ``arch``."""
    config = json.loads(store.read(BUSYBOX_CONFIG))
    config["architecture"] = arch
    config_bytes = json.dumps(config).encode()
    config_digest = store.put(config_bytes)
    manifest = json.loads(store.read(BUSYBOX_MANIFEST))
    manifest["config"] = {
        "mediaType": manifest["config"]["mediaType"],
        "digest": config_digest,
        "size": len(config_bytes),
    }
    data = json.dumps(manifest).encode()
    return data, store.put(data)


def test_multi_platform_index(registry: str, busybox_store: ContentStore, tmp_path: Path) -> None:
    arm_bytes, arm_digest = _platform_variant(busybox_store, "arm64")
    amd_bytes = busybox_manifest(busybox_store)
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": BUSYBOX_MANIFEST,
                "size": len(amd_bytes),
                "platform": {"architecture": "amd64", "os": "linux"},
            },
            {
                "mediaType": OCI_MANIFEST,
                "digest": arm_digest,
                "size": len(arm_bytes),
                "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"},
            },
        ],
    }
    index_bytes = json.dumps(index).encode()
    host = Platform.host()
    expected = {"amd64": BUSYBOX_MANIFEST, "arm64": arm_digest}.get(host.architecture)

    async def scenario() -> tuple[str, PullResult | None, PullResult]:
        async with RegistryClient() as client:
            pushed = await client.push(f"{registry}/multi:1", busybox_store, index_bytes, OCI_INDEX)
            default = None
            if expected is not None:
                default = await client.pull(f"{registry}/multi:1", fresh_store(tmp_path, "a"))
            arm = await client.pull(
                f"{registry}/multi:1",
                fresh_store(tmp_path, "b"),
                platform=Platform.parse("linux/arm64"),
            )
            with pytest.raises(NoMatchingPlatform) as missing:
                await client.pull(
                    f"{registry}/multi:1",
                    fresh_store(tmp_path, "c"),
                    platform=Platform.parse("linux/s390x"),
                )
            message = str(missing.value)
            assert "linux/s390x" in message and "linux/amd64, linux/arm64/v8" in message
            assert f"{registry}/multi:1" in message
            return pushed, default, arm

    pushed, default, arm = run(scenario())
    assert pushed == sha256(index_bytes)
    if default is not None:
        assert default.index_digest == pushed
        assert default.manifest_digest == expected
        assert default.digest == pushed
    assert arm.manifest_digest == arm_digest
    assert json.loads(arm.config)["architecture"] == "arm64"
    assert set(fresh_store(tmp_path, "b").list()) >= {pushed, arm_digest, BUSYBOX_LAYER}
    assert not list(fresh_store(tmp_path, "c").list())


def test_unknown_tag_and_repository(registry: str, tmp_path: Path) -> None:
    async def scenario() -> tuple[str, str]:
        async with RegistryClient() as client:
            with pytest.raises(ManifestUnknown) as tag:
                await client.pull(f"{registry}/busybox:nope", fresh_store(tmp_path))
            with pytest.raises(ManifestUnknown) as repo:
                await client.resolve(f"{registry}/no/such/repo")
            return str(tag.value), str(repo.value)

    tag, repo = run(scenario())
    assert tag == f"manifest unknown: {registry}/busybox:nope not found"
    assert repo == f"manifest unknown: {registry}/no/such/repo:latest not found"


# --- auth ----------------------------------------------------------------------------------


def test_basic_auth_and_login(
    auth_registry: str, busybox_store: ContentStore, config_path: str, tmp_path: Path
) -> None:
    manifest = busybox_manifest(busybox_store)
    os.makedirs(os.path.dirname(config_path))
    with open(config_path, "w") as f:
        json.dump({"psFormat": "table {{.ID}}", "auths": {"other:5000": {"auth": "eDp5"}}}, f)

    async def anonymous() -> str:
        async with RegistryClient(config_path=config_path) as client:
            with pytest.raises(Unauthorized) as refused:
                await client.pull(f"{auth_registry}/app:1", fresh_store(tmp_path))
            return str(refused.value)

    message = run(anonymous())
    assert message.startswith("unauthorized: authentication required to pull ")
    assert message.endswith(f"run `berth login {auth_registry}`")
    assert "\n" not in message

    with pytest.raises(Unauthorized, match="incorrect username or password"):
        run(login(auth_registry, "alice", "wrong", config_path=config_path))
    assert auth_registry not in json.loads(Path(config_path).read_text())["auths"]

    written = run(login(auth_registry, "alice", "s3cret", config_path=config_path))
    assert written == config_path
    assert stat.S_IMODE(os.stat(config_path).st_mode) == 0o600
    doc = json.loads(Path(config_path).read_text())
    assert doc["psFormat"] == "table {{.ID}}"
    assert doc["auths"]["other:5000"] == {"auth": "eDp5"}
    assert base64.b64decode(doc["auths"][auth_registry]["auth"]) == b"alice:s3cret"

    async def with_login() -> PullResult:
        async with RegistryClient(config_path=config_path) as client:
            await client.push(f"{auth_registry}/app:1", busybox_store, manifest, OCI_MANIFEST)
            return await client.pull(f"{auth_registry}/app:1", fresh_store(tmp_path))

    assert run(with_login()).manifest_digest == BUSYBOX_MANIFEST

    assert logout(auth_registry, config_path)
    assert auth_registry not in json.loads(Path(config_path).read_text())["auths"]
    assert not logout(auth_registry, config_path)


@dataclass
class TokenService:
    """A token issuer and a registry front that wants its tokens, as Docker Hub does."""

    upstream: str
    users: dict[str, str] = field(default_factory=lambda: {"bob": "hunter2"})
    issued: dict[str, list[str]] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    realm: str = ""

    def token_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/token", self.token)
        return app

    async def token(self, request: web.Request) -> web.Response:
        scopes = request.query.getall("scope", [])
        header = request.headers.get("Authorization", "")
        user = None
        if header.startswith("Basic "):
            name, _, password = base64.b64decode(header[6:]).decode().partition(":")
            if self.users.get(name) != password:
                return web.json_response({"details": "incorrect username or password"}, status=401)
            user = name
        self.requests.append(
            {"service": request.query.get("service"), "scopes": scopes, "user": user}
        )
        if user is None and scopes:
            return web.json_response({"details": "authentication required"}, status=401)
        token = f"tok-{len(self.requests)}"
        self.issued[token] = scopes
        return web.json_response({"access_token": token, "expires_in": 300})

    def check(self, request: web.Request) -> web.StreamResponse | None:
        header = request.headers.get("Authorization", "")
        token = header[7:] if header.startswith("Bearer ") else ""
        challenge = f'Bearer realm="{self.realm}",service="test-registry"'
        if request.path == "/v2/":
            if token in self.issued:
                return None
            return web.json_response({}, status=401, headers={"WWW-Authenticate": challenge})
        name = request.path[len("/v2/") :].split("/blobs/")[0].split("/manifests/")[0]
        needed = "pull" if request.method in ("GET", "HEAD") else "push"
        granted = [
            action
            for scope in self.issued.get(token, [])
            if scope.rpartition(":")[0] == f"repository:{name}"
            for action in scope.rpartition(":")[2].split(",")
        ]
        if needed in granted:
            return None
        actions = "pull" if needed == "pull" else "pull,push"
        scope = f'{challenge},scope="repository:{name}:{actions}"'
        body = {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}
        return web.json_response(body, status=401, headers={"WWW-Authenticate": scope})


def test_bearer_token_flow(
    registry: str, busybox_store: ContentStore, config_path: str, tmp_path: Path
) -> None:
    manifest = busybox_manifest(busybox_store)
    service = TokenService(registry)
    proxy = Proxy(registry, check=service.check)

    async def scenario() -> PullResult:
        async with serve(service.token_app()) as issuer, serve(proxy.app()) as front:
            service.realm = f"http://{issuer}/token"
            async with RegistryClient(config_path=config_path) as client:
                with pytest.raises(Unauthorized, match=f"run `berth login {front}`"):
                    await client.push(f"{front}/team/app:1", busybox_store, manifest, OCI_MANIFEST)
            assert service.requests[-1]["scopes"] == ["repository:team/app:pull,push"]

            with pytest.raises(Unauthorized, match="incorrect username or password"):
                await login(front, "bob", "nope", config_path=config_path)
            await login(front, "bob", "hunter2", config_path=config_path)
            service.requests.clear()
            async with RegistryClient(config_path=config_path) as client:
                await client.push(f"{front}/team/app:1", busybox_store, manifest, OCI_MANIFEST)
                pushes = list(service.requests)
                service.requests.clear()
                result = await client.pull(f"{front}/team/app:1", fresh_store(tmp_path))
                await client.pull(f"{front}/team/app:1", fresh_store(tmp_path, "again"))
            pulls = list(service.requests)
            # Each scope was asked for once (the token is cached), with the user's Basic creds.
            assert pushes == [
                {
                    "service": "test-registry",
                    "scopes": ["repository:team/app:pull,push"],
                    "user": "bob",
                }
            ]
            assert pulls == [
                {"service": "test-registry", "scopes": ["repository:team/app:pull"], "user": "bob"}
            ]
            return result

    assert run(scenario()).manifest_digest == BUSYBOX_MANIFEST


# --- broken and malicious registries ---------------------------------------------------------


@dataclass
class FakeRegistry:
    """Serves one image from memory, and lies where told to."""

    manifest: bytes
    blobs: dict[str, bytes]
    content_type: str = OCI_MANIFEST
    digest_header: str | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v2/", self.ping)
        app.router.add_route("*", "/v2/{name:.+}/manifests/{ref}", self.get_manifest)
        app.router.add_route("*", "/v2/{name:.+}/blobs/{digest}", self.get_blob)
        return app

    async def ping(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def get_manifest(self, request: web.Request) -> web.Response:
        headers = {"Content-Type": self.content_type}
        headers["Docker-Content-Digest"] = self.digest_header or sha256(self.manifest)
        return web.Response(body=self.manifest, headers=headers)

    async def get_blob(self, request: web.Request) -> web.Response:
        data = self.blobs.get(request.match_info["digest"])
        if data is None:
            return web.json_response({"errors": [{"code": "BLOB_UNKNOWN"}]}, status=404)
        return web.Response(body=data, content_type="application/octet-stream")


def _tiny_image(lie_in: str) -> FakeRegistry:
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    layer = os.urandom(300_000)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha256(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": sha256(layer),
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    blobs = {sha256(config): config, sha256(layer): layer}
    # Same size, other bytes: only hashing can tell.
    if lie_in == "config":
        blobs[sha256(config)] = config.replace(b"amd64", b"arm64")
    else:
        blobs[sha256(layer)] = os.urandom(len(layer))
    return FakeRegistry(manifest, blobs)


@pytest.mark.parametrize("lie_in", ["config", "layer"])
def test_lying_blob_is_refused_and_not_stored(lie_in: str, tmp_path: Path) -> None:
    fake = _tiny_image(lie_in)
    store = fresh_store(tmp_path)

    async def scenario() -> str:
        async with serve(fake.app()) as host, RegistryClient() as client:
            with pytest.raises(DigestMismatch) as refused:
                await client.pull(f"{host}/liar:1", store, max_parallel=1)
            return str(refused.value)

    message = run(scenario())
    assert "digest mismatch" in message and "/liar" in message
    config_digest = json.loads(fake.manifest)["config"]["digest"]
    # Nothing unverified: at most the honest config (when the layer lied), never the manifest.
    assert set(store.list()) <= ({config_digest} if lie_in == "layer" else set())
    # The bad bytes are not kept for a resume either (an honest partial of another blob may be).
    liar = config_digest if lie_in == "config" else json.loads(fake.manifest)["layers"][0]["digest"]
    resume_file = "resume-" + hashlib.sha256(liar.encode()).hexdigest()[:40]
    assert resume_file not in os.listdir(store.ingest_dir)


def test_lying_manifest_digest_is_refused(tmp_path: Path) -> None:
    fake = _tiny_image("layer")
    fake.digest_header = "sha256:" + "0" * 64

    async def scenario() -> None:
        async with serve(fake.app()) as host, RegistryClient() as client:
            with pytest.raises(DigestMismatch, match="manifest digest mismatch"):
                await client.resolve(f"{host}/liar:1")
            # By digest, the bytes themselves must hash to it.
            fake.digest_header = None
            with pytest.raises(DigestMismatch, match="manifest digest mismatch"):
                await client.resolve(f"{host}/liar@sha256:{'1' * 64}")

    run(scenario())


@pytest.mark.parametrize("ignore_range", [False, True], ids=["range", "no-range"])
def test_broken_transfer_resumes(
    registry: str, busybox_store: ContentStore, tmp_path: Path, ignore_range: bool
) -> None:
    """The connection drops mid-layer once; the pull resumes with Range (or restarts)."""
    manifest = busybox_manifest(busybox_store)
    proxy = Proxy(registry, truncate_once=BUSYBOX_LAYER, ignore_range=ignore_range)

    async def scenario() -> PullResult:
        async with RegistryClient() as client:
            await client.push(f"{registry}/resume:1", busybox_store, manifest, OCI_MANIFEST)
        async with serve(proxy.app()) as front, RegistryClient() as client:
            return await client.pull(f"{front}/resume:1", fresh_store(tmp_path))

    result = run(scenario())
    assert result.manifest_digest == BUSYBOX_MANIFEST
    fresh_store(tmp_path).verify(BUSYBOX_LAYER)
    layer_gets = [r for m, p, r in proxy.requests if m == "GET" and p.endswith(BUSYBOX_LAYER)]
    assert len(layer_gets) == 2
    assert layer_gets[0] is None
    # Half of the layer arrived (at least what the proxy sent before it hung up).
    assert layer_gets[1] is not None and layer_gets[1].startswith("bytes=")
    assert int(layer_gets[1][len("bytes=") : -1]) > 0
    assert os.listdir(fresh_store(tmp_path).ingest_dir) == []


def test_schema1_manifest_is_refused(tmp_path: Path) -> None:
    schema1 = json.dumps(
        {"schemaVersion": 1, "name": "old", "tag": "1", "fsLayers": [], "history": []}
    ).encode()
    fake = FakeRegistry(
        schema1, {}, content_type="application/vnd.docker.distribution.manifest.v1+prettyjws"
    )
    fake.digest_header = "sha256:" + "2" * 64  # signed schema 1 digests never match the body

    async def scenario() -> str:
        async with serve(fake.app()) as host, RegistryClient() as client:
            with pytest.raises(UnsupportedManifest) as refused:
                await client.pull(f"{host}/old:1", fresh_store(tmp_path))
            return f"{host}/old:1\n{refused.value}"

    where, message = run(scenario()).split("\n")
    assert message.startswith(f"{where}: manifest schema 1 is deprecated and not supported")


def test_unreachable_registry_is_one_line(tmp_path: Path) -> None:
    port = free_port()

    async def scenario() -> str:
        async with RegistryClient() as client:
            with pytest.raises(RegistryUnreachable) as refused:
                await client.pull(f"127.0.0.1:{port}/app:1", fresh_store(tmp_path))
            return str(refused.value)

    assert run(scenario()) == f"cannot reach registry 127.0.0.1:{port}: connection refused"


def test_tls_failure_suggests_insecure_registries(
    registry: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plain-HTTP registry not marked insecure: the TLS handshake fails, clearly."""
    monkeypatch.setattr(RegistryClient, "is_insecure", lambda self, host: False)

    async def scenario() -> str:
        async with RegistryClient() as client:
            with pytest.raises(RegistryUnreachable) as refused:
                await client.resolve(f"{registry}/app:1")
            return str(refused.value)

    message = run(scenario())
    assert message.startswith(f"tls handshake with registry {registry} failed")
    assert f"add {registry} to insecure-registries" in message
    assert "\n" not in message


# --- Berth's own registry, over HTTPS too ------------------------------------------------------


def _berth_server() -> Any:
    try:
        from berth.distribution import server
    except ImportError as e:  # written in parallel: the client tests must not depend on it
        pytest.skip(f"berth's registry server is not available: {e}")
    return server


def _self_signed(tmp_path: Path) -> tuple[str, str]:
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
            "-days", "1", "-keyout", key, "-out", cert,
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_round_trip_with_berths_registry(
    busybox_store: ContentStore, tmp_path: Path, tls: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Berth's registry as the peer; over HTTPS a loopback host skips verification as
    Docker's insecure registries do, and a host that must verify says what to do."""
    server = _berth_server()
    if tls and not shutil.which("openssl"):
        pytest.skip("openssl is needed to make a test certificate")
    context = server.ssl_context_from_files(*_self_signed(tmp_path)) if tls else None
    thread = server.run_in_thread(tmp_path / "berth-registry", ssl_context=context, fsync=False)
    host = f"localhost:{thread.port}"
    manifest = busybox_manifest(busybox_store)

    async def scenario() -> PullResult:
        async with RegistryClient(chunk_size=300_000) as client:
            await client.push(f"{host}/berth/busybox:1", busybox_store, manifest, OCI_MANIFEST)
            return await client.pull(f"{host}/berth/busybox:1", fresh_store(tmp_path))

    try:
        result = run(scenario())
        assert result.manifest_digest == BUSYBOX_MANIFEST
        fresh_store(tmp_path).verify(BUSYBOX_LAYER)
        if tls:
            monkeypatch.setattr(RegistryClient, "is_insecure", lambda self, host: False)

            async def verified() -> str:
                async with RegistryClient() as client:
                    with pytest.raises(RegistryUnreachable) as refused:
                        await client.resolve(f"{host}/berth/busybox:1")
                    return str(refused.value)

            message = run(verified())
            assert message.startswith(f"tls certificate of registry {host} is not trusted")
            assert "self-signed certificate" in message and "insecure-registries" in message
    finally:
        thread.close()


PYTHON = FIXTURES / "python-3.12-alpine-oci"


@pytest.mark.skipif(not PYTHON.is_dir(), reason=f"python OCI fixture not found at {PYTHON}")
def test_multi_layer_image_shares_layers(registry: str, tmp_path: Path) -> None:
    """python:3.12-alpine (4 layers) and alpine share a base layer: stored once, pushed once."""
    source = ContentStore(str(tmp_path / "python-src"))
    for blob in (PYTHON / "blobs" / "sha256").iterdir():
        source.put(blob.read_bytes(), "sha256:" + blob.name)
    refs = {
        m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"]
        for m in json.loads((PYTHON / "index.json").read_text())["manifests"]
    }
    python_digest = refs["python-3.12.11-alpine3.22"]
    alpine_digest = refs["alpine-3.22.1"]
    pushed: list[ProgressEvent] = []
    pulled: list[ProgressEvent] = []
    layers_done: list[str] = []

    async def scenario() -> tuple[PullResult, PullResult]:
        async with RegistryClient() as client:
            await client.push(
                f"{registry}/lib/python:3.12", source, source.read(python_digest), OCI_MANIFEST
            )
            await client.push(
                f"{registry}/lib/python:alpine",
                source,
                source.read(alpine_digest),
                OCI_MANIFEST,
                progress=pushed.append,
            )
            dest = fresh_store(tmp_path)
            python = await client.pull(
                f"{registry}/lib/python:3.12",
                dest,
                on_layer=lambda d: layers_done.append(d.digest),
                max_parallel=3,
            )
            alpine = await client.pull(
                f"{registry}/lib/python:alpine", dest, progress=pulled.append
            )
            return python, alpine

    python, alpine = run(scenario())
    assert python.manifest_digest == python_digest and len(python.layers) == 4
    assert sorted(layers_done) == sorted(d.digest for d in python.layers)
    [base] = alpine.layers
    assert base.digest == python.layers[0].digest
    assert [e.status for e in pushed if e.id == base.digest][-1] == "Layer already exists"
    assert [e.status for e in pulled if e.id == base.digest] == ["Already exists"]
    dest = fresh_store(tmp_path)
    for desc in python.layers:
        dest.verify(desc.digest)


@pytest.mark.skipif(not shutil.which("skopeo"), reason="skopeo is not installed")
def test_interoperates_with_skopeo(
    registry: str, busybox_store: ContentStore, tmp_path: Path
) -> None:
    """What skopeo pushes, Berth pulls; what Berth pushes, skopeo copies out intact."""
    tls = ["--src-tls-verify=false", "--dest-tls-verify=false"]
    subprocess.run(
        ["skopeo", "copy", "--quiet", *tls, f"oci:{BUSYBOX}:busybox:1.38.0-musl",
         f"docker://{registry}/by-skopeo:1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip

    async def scenario() -> PullResult:
        async with RegistryClient() as client:
            result = await client.pull(f"{registry}/by-skopeo:1", fresh_store(tmp_path))
            await client.push(
                f"{registry}/by-berth:1",
                busybox_store,
                busybox_manifest(busybox_store),
                OCI_MANIFEST,
            )
            return result

    result = run(scenario())
    assert [d.digest for d in result.layers] == [BUSYBOX_LAYER]
    assert result.config_digest == BUSYBOX_CONFIG
    out = tmp_path / "skopeo-out"
    subprocess.run(
        ["skopeo", "copy", "--quiet", *tls, f"docker://{registry}/by-berth:1", f"oci:{out}:x"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    assert (out / "blobs" / "sha256" / BUSYBOX_LAYER.split(":")[1]).exists()
    assert (out / "blobs" / "sha256" / BUSYBOX_MANIFEST.split(":")[1]).exists()
