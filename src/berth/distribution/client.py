"""The registry client: pull and push images over the OCI distribution API.

Blobs stream straight into the content store, whose writer checks size and digest
as the bytes arrive, so nothing unverified ever becomes visible; an interrupted
download keeps its partial file in the store's ingest area and continues with an
HTTP Range request. Transfers run in parallel (bounded), and each layer is handed
to ``on_layer`` as soon as it is stored so the image store can unpack while the
remaining layers still download.

Auth follows Docker: anonymous, Basic, or the Bearer token flow (a 401 challenge
names a token realm, service and scope); credentials come from docker's
config.json, so ``berth login`` and ``docker login`` share them.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import hashlib
import inspect
import ipaddress
import json
import re
import ssl
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import aiohttp
from yarl import URL

from berth.distribution.auth import (
    Challenge,
    Credentials,
    TokenCache,
    load_credentials,
    merge_scopes,
    parse_challenges,
    store_credentials,
)
from berth.distribution.auth import logout as logout
from berth.distribution.progress import ProgressEvent, pull_status_line
from berth.errors import BerthError, Conflict, InvalidArgument, NotFound
from berth.images.content import (
    BlobWriter,
    ContentStore,
    DigestMismatch,
    parse_digest,
)
from berth.images.manifest import (
    MANIFEST_ACCEPT,
    MANIFEST_MEDIA_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
    SCHEMA1_MEDIA_TYPES,
    SCHEMA1_MESSAGE,
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
    NoMatchingPlatform,
    Platform,
    UnsupportedManifest,
    parse_manifest,
    select_platform,
)
from berth.images.reference import DEFAULT_DOMAIN, DEFAULT_REGISTRY_HOST, Reference, parse

READ_SIZE = 1 << 20
MAX_MANIFEST_SIZE = 4 << 20  # containerd's limit: a bigger "manifest" is an attack or a bug
DEFAULT_CHUNK_SIZE = 32 << 20
_ERROR_BODY_LIMIT = 64 << 10
_PROGRESS_INTERVAL = 0.1
_GENERIC_TYPES = frozenset({"", "application/json", "text/plain", "application/octet-stream"})

ProgressCallback = Callable[[ProgressEvent], None]
LayerCallback = Callable[[Descriptor], Awaitable[None] | None]


class RegistryError(BerthError):
    """The registry refused a request or answered with something unusable."""


class Unauthorized(RegistryError):
    """The registry wants credentials Berth does not have (or rejected those it has)."""


class RegistryUnreachable(RegistryError):
    """No connection to the registry (refused, unresolvable, timed out, TLS failure)."""


class ManifestUnknown(NotFound):
    """The repository or the tag/digest does not exist in the registry."""


class BlobUnknown(NotFound):
    """A blob the manifest names is missing from the registry or the local store."""


@dataclass
class PullResult:
    """What a pull stored: the chosen manifest, its config and layers (all verified)."""

    reference: Reference
    index_digest: str | None
    index_bytes: bytes | None
    manifest_digest: str
    manifest_media_type: str
    manifest: Manifest
    manifest_bytes: bytes
    config_digest: str
    config: bytes
    layers: list[Descriptor]
    downloaded: bool = False  # any blob was fetched (Docker's "Downloaded newer image")

    @property
    def digest(self) -> str:
        """The digest Docker reports for the pull: the index's when there is one."""
        return self.index_digest or self.manifest_digest


@dataclass
class _Endpoint:
    base: str  # "https://host:port"
    verify_tls: bool
    challenge: Challenge | None


@dataclass
class _Repo:
    """One repository and what we want to do there (token scopes, wording of errors)."""

    ref: Reference
    scopes: list[str]
    action: str  # "pull" or "push"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def domain(self) -> str:
        return self.ref.domain

    @property
    def name(self) -> str:
        return self.ref.name


def _as_ref(ref: Reference | str) -> Reference:
    return parse(ref) if isinstance(ref, str) else ref


def display_ref(ref: Reference, reference: str | None = None) -> str:
    """The name a user typed, completed: "busybox:latest", "localhost:5000/app@sha256:..."."""
    reference = reference or ref.manifest_ref
    sep = "@" if ":" in reference else ":"
    return f"{ref.familiar}{sep}{reference}"


def _connect_host(domain: str) -> str:
    return DEFAULT_REGISTRY_HOST if domain == DEFAULT_DOMAIN else domain


def _hostname(host: str) -> str:
    """The host part of "host:port" or "[::1]:port"."""
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def is_loopback(host: str) -> bool:
    name = _hostname(host).lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _digest_of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def _media_type(content_type: str | None, data: bytes) -> str:
    """The manifest's media type: the Content-Type, else the document's own, else sniffed."""
    given = (content_type or "").split(";", 1)[0].strip().lower()
    if given and given not in _GENERIC_TYPES:
        return given
    try:
        doc = json.loads(data)
    except ValueError:
        return given
    if not isinstance(doc, dict):
        return given
    declared = doc.get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    if doc.get("schemaVersion") == 1:
        return "application/vnd.docker.distribution.manifest.v1+json"
    return OCI_INDEX if "manifests" in doc else OCI_MANIFEST


def _is_schema1(media_type: str, data: bytes) -> bool:
    if media_type in SCHEMA1_MEDIA_TYPES:
        return True
    try:
        doc = json.loads(data)
    except ValueError:
        return False
    return isinstance(doc, dict) and doc.get("schemaVersion") == 1


def _join(base: str, location: str) -> str:
    """Resolve a Location header (absolute, or relative to the request that returned it)."""
    return urllib.parse.urljoin(base, location)


def _with_query(url: str, **params: str) -> str:
    """Append parameters without re-encoding the opaque upload state already in ``url``."""
    extra = urllib.parse.urlencode(params)
    return url + ("&" if urllib.parse.urlsplit(url).query else "?") + extra


def _connection_reason(exc: BaseException) -> str:
    os_error = getattr(exc, "os_error", None)
    if isinstance(exc, aiohttp.ClientConnectorDNSError) or (
        os_error is not None and type(os_error).__name__ == "gaierror"
    ):
        return "no such host"
    if isinstance(os_error, OSError) and os_error.errno is not None:
        if os_error.errno == errno.ECONNREFUSED:
            return "connection refused"
        if os_error.strerror:
            return os_error.strerror.lower()
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection"
    text = str(exc) or type(exc).__name__
    return text[0].lower() + text[1:]


def _is_tls_error(exc: BaseException) -> bool:
    if isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError):
        return True
    os_error = getattr(exc, "os_error", None)
    return isinstance(os_error, ssl.SSLError)


def _tls_reason(exc: BaseException) -> str:
    error = getattr(exc, "os_error", None) or getattr(exc, "certificate_error", None) or exc
    verify = getattr(error, "verify_message", None)
    if verify:
        return str(verify)
    text = getattr(error, "strerror", None) or str(error)
    text = re.sub(r"^\[SSL: [A-Z0-9_]+\]\s*", "", str(text))
    return re.sub(r"\s*\(_ssl\.c:\d+\)$", "", text).lower()


class _Transient(Exception):
    """A failure worth retrying (broken connection, short body, server error)."""


async def _error_text(resp: aiohttp.ClientResponse) -> str:
    """The registry's own words: "CODE: message" from an OCI error body, else the status."""
    try:
        body = await resp.content.read(_ERROR_BODY_LIMIT)
    except (TimeoutError, aiohttp.ClientError):
        body = b""
    try:
        doc = json.loads(body)
        errors = doc.get("errors") if isinstance(doc, dict) else None
        parts = []
        for err in errors or []:
            code = str(err.get("code") or "").lower().replace("_", " ")
            message = str(err.get("message") or "")
            parts.append(f"{code}: {message}" if code and message else code or message)
        if parts:
            return "; ".join(parts)
        for key in ("details", "message", "error"):  # token services word it like this
            if isinstance(doc, dict) and isinstance(doc.get(key), str) and doc[key]:
                return str(doc[key])
    except (ValueError, AttributeError):
        pass
    return f"http {resp.status} {resp.reason or ''}".strip()


class RegistryClient:
    """Pulls and pushes images; one aiohttp session, used as ``async with`` or closed."""

    def __init__(
        self,
        *,
        insecure_registries: Iterable[str] = (),
        config_path: str | None = None,
        credentials: Mapping[str, Credentials] | None = None,
        user_agent: str = "berth/0.1",
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        retries: int = 5,
        connect_timeout: float = 30.0,
        read_timeout: float = 120.0,
    ) -> None:
        """``chunk_size``: blobs larger than this are uploaded in chunks of this size.
        ``credentials`` (domain -> credentials), when given, are the only ones used and
        no config file is read: a daemon gets them from its client with each request."""
        if chunk_size <= 0:
            raise InvalidArgument(f"invalid upload chunk size {chunk_size}: must be positive")
        self.insecure_registries = frozenset(r.strip().lower() for r in insecure_registries)
        self.config_path = config_path
        self.user_agent = user_agent
        self.chunk_size = chunk_size
        self.retries = retries
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout
        )
        self._session: aiohttp.ClientSession | None = None
        self._endpoints: dict[str, _Endpoint] = {}
        self._endpoint_locks: dict[str, asyncio.Lock] = {}
        self._token_lock: asyncio.Lock | None = None
        self._tokens = TokenCache()
        self._creds: dict[str, Credentials | None] = {}
        if credentials is not None:
            self._creds = {normalize_login_host(k): v for k, v in credentials.items()}
        self._fixed_creds = credentials is not None

    # --- session ---------------------------------------------------------------------

    async def __aenter__(self) -> RegistryClient:
        self._get_session()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                headers={"User-Agent": self.user_agent},
                read_bufsize=READ_SIZE,
                connector=aiohttp.TCPConnector(limit=32),
                auto_decompress=False,
            )
        return self._session

    # --- transport -------------------------------------------------------------------

    def is_insecure(self, host: str) -> bool:
        """May ``host`` be reached over plain HTTP (and HTTPS without verification)?"""
        host = host.lower()
        return (
            is_loopback(host)
            or host in self.insecure_registries
            or (_hostname(host) in self.insecure_registries)
        )

    def _unreachable(self, host: str, exc: BaseException) -> RegistryUnreachable:
        if not _is_tls_error(exc):
            return RegistryUnreachable(f"cannot reach registry {host}: {_connection_reason(exc)}")
        reason = _tls_reason(exc)
        if isinstance(exc, aiohttp.ClientConnectorCertificateError) or isinstance(
            getattr(exc, "os_error", None), ssl.SSLCertVerificationError
        ):
            return RegistryUnreachable(
                f"tls certificate of registry {host} is not trusted ({reason}): add its ca to "
                f"the system's trusted certificates, or add {host} to insecure-registries in "
                "the daemon config"
            )
        hint = (
            f"if it serves plain http, add {host} to insecure-registries in the daemon config"
            if not self.is_insecure(host)
            else "check the registry's tls setup"
        )
        return RegistryUnreachable(f"tls handshake with registry {host} failed ({reason}): {hint}")

    async def _endpoint(self, domain: str) -> _Endpoint:
        """Find the scheme that works and the auth challenge, with one GET /v2/ per host."""
        found = self._endpoints.get(domain)
        if found is not None:
            return found
        lock = self._endpoint_locks.setdefault(domain, asyncio.Lock())
        async with lock:
            found = self._endpoints.get(domain)
            if found is not None:
                return found
            host = _connect_host(domain)
            insecure = self.is_insecure(host)
            # As Docker does: HTTPS first; an insecure registry may fall back to plain HTTP.
            schemes = ["https", "http"] if insecure else ["https"]
            first_error: BaseException | None = None
            for scheme in schemes:
                base = f"{scheme}://{host}"
                try:
                    async with self._get_session().get(
                        base + "/v2/", ssl=not insecure, allow_redirects=False
                    ) as resp:
                        challenge = None
                        if resp.status == 401:
                            challenges = parse_challenges(resp.headers.get("WWW-Authenticate", ""))
                            challenge = next(
                                (c for c in challenges if c.scheme == "bearer"),
                                challenges[0] if challenges else None,
                            )
                        found = _Endpoint(base, not insecure, challenge)
                        self._endpoints[domain] = found
                        return found
                except (TimeoutError, aiohttp.ClientError, ssl.SSLError, OSError) as e:
                    first_error = first_error or e
            assert first_error is not None
            raise self._unreachable(host, first_error) from None

    def _credentials(self, domain: str) -> Credentials | None:
        if self._fixed_creds:
            return self._creds.get(domain)
        if domain not in self._creds:
            self._creds[domain] = load_credentials(domain, self.config_path)
        return self._creds[domain]

    def _unauthorized(self, repo: _Repo | None, domain: str, detail: str = "") -> Unauthorized:
        creds = self._credentials(domain)
        what = f"to {repo.action} {repo.name}" if repo is not None else f"for {domain}"
        if detail.startswith(("unauthorized", "http 401")) or "authentication required" in detail:
            detail = ""  # says nothing the message does not
        detail = f" ({detail})" if detail else ""
        if creds is None:
            return Unauthorized(
                f"unauthorized: authentication required {what}{detail}: run `berth login {domain}`"
            )
        return Unauthorized(
            f"unauthorized: {domain} refused the credentials of {creds.username!r} {what}"
            f"{detail}: run `berth login {domain}` with an account that has access"
        )

    async def _fetch_token(
        self,
        domain: str,
        challenge: Challenge,
        scopes: list[str],
        repo: _Repo | None,
        creds: Credentials | None = None,
    ) -> str:
        realm = challenge.params.get("realm")
        if not realm:
            raise RegistryError(
                f"registry {domain} asked for a bearer token without naming a realm: "
                "the registry's auth is misconfigured"
            )
        params: list[tuple[str, str]] = []
        if challenge.params.get("service"):
            params.append(("service", challenge.params["service"]))
        params.extend(("scope", s) for s in scopes)
        creds = creds or self._credentials(domain)
        headers = {"Authorization": creds.basic_header()} if creds else {}
        try:
            async with self._get_session().get(
                realm, params=params, headers=headers, ssl=self._endpoints[domain].verify_tls
            ) as resp:
                if resp.status in (401, 403):
                    raise self._unauthorized(repo, domain, await _error_text(resp))
                if resp.status != 200:
                    raise RegistryError(
                        f"token service {realm} of registry {domain} failed: "
                        f"{await _error_text(resp)}: try again later"
                    )
                doc = await resp.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError) as e:
            if isinstance(e, aiohttp.ContentTypeError | aiohttp.ClientResponseError):
                raise RegistryError(
                    f"token service {realm} of registry {domain} sent an invalid answer: {e}"
                ) from None
            raise self._unreachable(URL(realm).host or realm, e) from None
        except ValueError:
            raise RegistryError(
                f"token service {realm} of registry {domain} sent invalid json"
            ) from None
        token = doc.get("token") or doc.get("access_token") if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"token service {realm} of registry {domain} sent no token")
        expires_in = doc.get("expires_in")
        if not isinstance(expires_in, int | float) or expires_in <= 0:
            expires_in = 60
        self._tokens.put(domain, scopes, token, float(expires_in))
        return token

    async def _authorization(
        self, domain: str, endpoint: _Endpoint, repo: _Repo | None, *, fresh: bool = False
    ) -> str | None:
        challenge = endpoint.challenge
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            creds = self._credentials(domain)
            return creds.basic_header() if creds else None
        if challenge.scheme != "bearer":
            raise RegistryError(
                f"registry {domain} asks for {challenge.scheme} auth, which berth does not speak"
            )
        scopes = repo.scopes if repo is not None else []
        if self._token_lock is None:
            self._token_lock = asyncio.Lock()
        async with self._token_lock:
            if fresh:
                self._tokens.drop(domain, scopes)
            token = self._tokens.get(domain, scopes)
            if token is None:
                token = await self._fetch_token(domain, challenge, scopes, repo)
        return "Bearer " + token

    async def _request(
        self,
        method: str,
        repo: _Repo,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        body: Callable[[], Any] | None = None,
    ) -> aiohttp.ClientResponse:
        """Send one request with auth; retry once after a 401; map failures to one line.

        ``url`` is a path below /v2/<name>/ or an absolute URL (an upload Location).
        The caller releases the response and words its status; a 401 that survives a
        fresh token (or the stored credentials) raises Unauthorized.
        """
        endpoint = await self._endpoint(repo.domain)
        if not url.startswith(("http://", "https://")):
            url = f"{endpoint.base}/v2/{repo.ref.path}/{url}"
        for attempt in range(2):
            auth = await self._authorization(repo.domain, endpoint, repo, fresh=attempt > 0)
            sent = dict(headers or {})
            if auth:
                sent["Authorization"] = auth
            try:
                resp = await self._get_session().request(
                    method,
                    URL(url, encoded=True),
                    headers=sent,
                    data=body() if body is not None else None,
                    ssl=endpoint.verify_tls,
                )
            except (aiohttp.ClientConnectorError, aiohttp.ClientSSLError) as e:
                raise self._unreachable(_connect_host(repo.domain), e) from None
            except (TimeoutError, aiohttp.ClientError, OSError) as e:
                raise _Transient(
                    f"{method} {URL(url).path} to {repo.domain} failed: {_connection_reason(e)}"
                ) from e
            if resp.status != 401:
                return resp
            challenges = parse_challenges(resp.headers.get("WWW-Authenticate", ""))
            detail = await _error_text(resp)
            resp.release()
            bearer = next((c for c in challenges if c.scheme == "bearer"), None)
            if attempt == 0 and bearer is not None:
                # The registry may want more than we asked (or a first challenge only now).
                wanted = bearer.params.get("scope", "")
                repo.scopes = merge_scopes(*repo.scopes, wanted)
                endpoint.challenge = bearer
                continue
            if attempt == 0 and challenges and endpoint.challenge is None:
                endpoint.challenge = challenges[0]
                if self._credentials(repo.domain) is not None:
                    continue
            raise self._unauthorized(repo, repo.domain, detail)
        raise AssertionError("unreachable")

    async def _send(
        self,
        method: str,
        repo: _Repo,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        body: Callable[[], Any] | None = None,
        idempotent: bool | None = None,
    ) -> aiohttp.ClientResponse:
        """``_request`` with retries of transient failures for requests safe to repeat."""
        if idempotent is None:
            idempotent = method in ("GET", "HEAD")
        failures = 0
        while True:
            try:
                resp = await self._request(method, repo, url, headers=headers, body=body)
            except _Transient as e:
                failures += 1
                if not idempotent or failures > self.retries:
                    raise RegistryError(f"{e}: try again") from None
                await asyncio.sleep(min(0.2 * 2 ** (failures - 1), 5.0))
                continue
            if resp.status in (502, 503, 504) and idempotent and failures < self.retries:
                resp.release()
                failures += 1
                await asyncio.sleep(min(0.2 * 2 ** (failures - 1), 5.0))
                continue
            return resp

    async def _fail(self, resp: aiohttp.ClientResponse, what: str) -> RegistryError:
        text = await _error_text(resp)
        resp.release()
        if resp.status == 403:
            return Unauthorized(f"denied: {what}: {text}")
        return RegistryError(f"{what} failed: {text}")

    # --- manifests -------------------------------------------------------------------

    def _repo(self, ref: Reference, action: str, mount_from: str | None = None) -> _Repo:
        scopes = [f"repository:{ref.path}:{'pull,push' if action == 'push' else 'pull'}"]
        if mount_from:
            scopes.append(f"repository:{mount_from}:pull")
        return _Repo(ref, scopes, action)

    async def _get_manifest(self, repo: _Repo, reference: str) -> tuple[str, str, bytes]:
        ref = repo.ref
        shown = display_ref(ref, reference)
        resp = await self._send(
            "GET", repo, f"manifests/{reference}", headers={"Accept": MANIFEST_ACCEPT}
        )
        try:
            if resp.status == 404:
                raise ManifestUnknown(f"manifest unknown: {shown} not found")
            if resp.status != 200:
                raise await self._fail(resp, f"fetching manifest {shown} from {repo.domain}")
            if resp.content_length is not None and resp.content_length > MAX_MANIFEST_SIZE:
                raise RegistryError(
                    f"manifest {shown} is {resp.content_length} bytes, more than the "
                    f"{MAX_MANIFEST_SIZE} a manifest may have: the registry is broken"
                )
            try:
                data = await resp.content.read(MAX_MANIFEST_SIZE + 1)
                while len(data) <= MAX_MANIFEST_SIZE and (
                    more := await resp.content.read(MAX_MANIFEST_SIZE + 1 - len(data))
                ):
                    data += more
            except (TimeoutError, aiohttp.ClientError) as e:
                raise RegistryError(
                    f"fetching manifest {shown} failed: {_connection_reason(e)}: try again"
                ) from None
            if len(data) > MAX_MANIFEST_SIZE:
                raise RegistryError(
                    f"manifest {shown} is more than {MAX_MANIFEST_SIZE} bytes: "
                    "the registry is broken"
                )
            header_digest = resp.headers.get("Docker-Content-Digest")
            media_type = _media_type(resp.headers.get("Content-Type"), data)
        finally:
            resp.release()
        if _is_schema1(media_type, data):
            raise UnsupportedManifest(f"{shown}: {SCHEMA1_MESSAGE}")
        # Pulling by digest: the bytes must hash to it, whatever the registry claims.
        claimed = reference if ":" in reference else header_digest
        if claimed:
            try:
                algorithm = parse_digest(claimed)[0]
            except InvalidArgument:
                raise RegistryError(
                    f"registry {repo.domain} sent an invalid Docker-Content-Digest {claimed!r} "
                    f"for {shown}"
                ) from None
            actual = _digest_of(data, algorithm)
            if actual != claimed:
                raise DigestMismatch(
                    f"manifest digest mismatch for {shown}: expected {claimed}, got {actual}: "
                    "the registry sent bad data"
                )
            return claimed, media_type, data
        return _digest_of(data), media_type, data

    async def resolve(self, ref: Reference | str) -> tuple[str, str, bytes]:
        """The manifest (or index) a reference names: (digest, media type, exact bytes)."""
        ref = _as_ref(ref)
        return await self._get_manifest(self._repo(ref, "pull"), ref.manifest_ref)

    # --- pull ------------------------------------------------------------------------

    async def pull(
        self,
        ref: Reference | str,
        store: ContentStore,
        *,
        platform: Platform | None = None,
        progress: ProgressCallback | None = None,
        on_layer: LayerCallback | None = None,
        max_parallel: int = 4,
    ) -> PullResult:
        """Fetch an image's manifest, config and layers into ``store``, verified.

        ``on_layer`` is called once per layer as soon as it is in the store (layers
        already there included), in completion order; an awaitable it returns is
        awaited concurrently with the remaining downloads.
        """
        ref = _as_ref(ref)
        emit: ProgressCallback = progress or (lambda _e: None)
        repo = self._repo(ref, "pull")
        emit(ProgressEvent(ref.digest or ref.tag or "latest", f"Pulling from {ref.path}"))
        digest, media_type, data = await self._get_manifest(repo, ref.manifest_ref)
        doc = parse_manifest(data, media_type)
        index_digest: str | None = None
        index_bytes: bytes | None = None
        if isinstance(doc, Index):
            index_digest, index_bytes = digest, data
            want = platform or Platform.host()
            try:
                chosen = select_platform(doc, want)
            except NoMatchingPlatform as e:
                raise NoMatchingPlatform(f"{display_ref(ref)}: {e}") from None
            digest, media_type, data = await self._get_manifest(repo, chosen.digest)
            doc = parse_manifest(data, media_type)
            if not isinstance(doc, Manifest):
                raise UnsupportedManifest(
                    f"{display_ref(ref)}: the index entry for {want} is itself an index: "
                    "nested indexes are not supported"
                )
        manifest = doc
        if media_type not in MANIFEST_MEDIA_TYPES:
            media_type = manifest.media_type

        layers = list(manifest.layers)
        downloaded = await self._fetch_blobs(
            repo, store, manifest.config, layers, emit, on_layer, max_parallel
        )
        config = await asyncio.to_thread(store.read, manifest.config.digest)
        if platform is not None and index_digest is None:
            self._check_platform(ref, config, platform)
        # The manifests last: they make the image complete, so they come after its blobs.
        await asyncio.to_thread(store.put, data, digest)
        if index_bytes is not None and index_digest is not None:
            await asyncio.to_thread(store.put, index_bytes, index_digest)
        result = PullResult(
            reference=ref,
            index_digest=index_digest,
            index_bytes=index_bytes,
            manifest_digest=digest,
            manifest_media_type=media_type,
            manifest=manifest,
            manifest_bytes=data,
            config_digest=manifest.config.digest,
            config=config,
            layers=layers,
            downloaded=downloaded,
        )
        emit(ProgressEvent(None, f"Digest: {result.digest}"))
        emit(pull_status_line(display_ref(ref), downloaded))
        return result

    @staticmethod
    def _check_platform(ref: Reference, config: bytes, want: Platform) -> None:
        try:
            have = ImageConfig.parse(config).platform
        except InvalidArgument:
            return
        if have.os and have.architecture and not have.matches(want):
            raise NoMatchingPlatform(
                f"image {display_ref(ref)} was found but does not match the specified "
                f"platform: wanted {want}, actual: {have}"
            )

    async def _fetch_blobs(
        self,
        repo: _Repo,
        store: ContentStore,
        config: Descriptor,
        layers: list[Descriptor],
        emit: ProgressCallback,
        on_layer: LayerCallback | None,
        max_parallel: int,
    ) -> bool:
        limit = asyncio.Semaphore(max(1, max_parallel))
        downloaded = False
        unpacks: list[asyncio.Task[None]] = []
        seen: set[str] = set()
        unique: list[Descriptor] = []
        for desc in layers:
            if desc.digest not in seen:
                seen.add(desc.digest)
                unique.append(desc)
        for desc in unique:
            present = store.has(desc.digest)
            emit(ProgressEvent(desc.digest, "Already exists" if present else "Pulling fs layer"))

        async def layer_done(desc: Descriptor, fetched: bool) -> None:
            if on_layer is not None:
                result = on_layer(desc)
                if inspect.isawaitable(result):
                    await result
            if fetched:
                emit(ProgressEvent(desc.digest, "Pull complete"))

        async def one(desc: Descriptor, show: bool) -> None:
            nonlocal downloaded
            if store.has(desc.digest):
                fetched = False
            else:
                if show and limit.locked():
                    emit(ProgressEvent(desc.digest, "Waiting"))
                async with limit:
                    fetched = await self._download_blob(repo, store, desc, emit if show else None)
            downloaded = downloaded or fetched
            if show:
                unpacks.append(asyncio.create_task(layer_done(desc, fetched)))

        jobs: list[Coroutine[Any, Any, None]] = [one(config, False)]
        jobs.extend(one(desc, True) for desc in unique)
        try:
            await _all_or_nothing(jobs)
            await _all_or_nothing(unpacks)
        finally:
            for task in unpacks:
                task.cancel()
            if unpacks:
                await asyncio.gather(*unpacks, return_exceptions=True)
        return downloaded

    async def _open_writer(self, store: ContentStore, desc: Descriptor) -> BlobWriter | None:
        """A resumable writer, or None once another writer (e.g. a parallel pull) stored it."""
        while True:
            if store.has(desc.digest):
                return None
            try:
                return await asyncio.to_thread(
                    store.writer, desc.digest, desc.size, resume_key=desc.digest
                )
            except Conflict:
                await asyncio.sleep(0.2)

    async def _download_blob(
        self,
        repo: _Repo,
        store: ContentStore,
        desc: Descriptor,
        emit: ProgressCallback | None,
    ) -> bool:
        """Stream one blob into the store, resuming broken transfers with Range requests."""
        writer = await self._open_writer(store, desc)
        if writer is None:
            return False
        last_emit, last_offset = 0.0, -1

        def report(offset: int, force: bool = False) -> None:
            nonlocal last_emit, last_offset
            now = time.monotonic()
            if emit is None or offset == last_offset:
                return
            if force or now - last_emit >= _PROGRESS_INTERVAL:
                last_emit, last_offset = now, offset
                emit(ProgressEvent(desc.digest, "Downloading", offset, desc.size))

        try:
            failures = 0
            while writer.offset < desc.size:
                start = writer.offset
                headers = {"Range": f"bytes={start}-"} if start else {}
                error: str | None = None
                try:
                    resp = await self._request("GET", repo, f"blobs/{desc.digest}", headers=headers)
                except (_Transient, RegistryUnreachable) as e:
                    # A registry restarting mid-pull: keep what we have and try again.
                    resp, error = None, str(e)
                if resp is not None:
                    try:
                        writer, error = await self._receive(
                            repo, store, desc, writer, resp, start, report
                        )
                    finally:
                        resp.release()
                if error is None:
                    continue
                failures += 1
                if failures > self.retries:
                    raise RegistryError(
                        f"download of {desc.digest} from {repo.name} failed "
                        f"{failures} times ({error}): try again, the pull resumes where it stopped"
                    )
                await asyncio.sleep(min(0.2 * 2 ** (failures - 1), 5.0))
            report(writer.offset, force=True)
            if emit is not None:
                emit(ProgressEvent(desc.digest, "Verifying Checksum"))
            await asyncio.to_thread(writer.commit)
            if emit is not None:
                emit(ProgressEvent(desc.digest, "Download complete"))
            return True
        except DigestMismatch as e:
            # Bad bytes are never worth resuming from.
            writer.abort(discard=True)
            raise DigestMismatch(f"{repo.name}: {e}") from None
        finally:
            writer.abort()

    async def _receive(
        self,
        repo: _Repo,
        store: ContentStore,
        desc: Descriptor,
        writer: BlobWriter,
        resp: aiohttp.ClientResponse,
        start: int,
        report: Callable[[int], None],
    ) -> tuple[BlobWriter, str | None]:
        """Copy one response body into ``writer``; return the writer and any retryable error."""
        if resp.status == 404:
            raise BlobUnknown(
                f"blob unknown: {desc.digest} not found in {repo.name}: "
                "the image is incomplete in the registry"
            )
        if resp.status == 416:
            # Our partial copy is no prefix of the blob: start over.
            writer = await self._restart(store, desc, writer)
            return writer, "the registry refused the range of a partial download"
        if resp.status in (500, 502, 503, 504):
            return writer, await _error_text(resp)
        if resp.status == 206:
            content_range = resp.headers.get("Content-Range", "")
            if not content_range.startswith(f"bytes {start}-"):
                raise RegistryError(
                    f"registry {repo.domain} answered a range request for {desc.digest} "
                    f"with the wrong range {content_range!r}: the registry is broken"
                )
        elif resp.status == 200:
            if start:
                # The server ignored Range: the body starts at byte 0, so must our copy.
                writer = await self._restart(store, desc, writer)
        else:
            raise await self._fail(resp, f"downloading {desc.digest} from {repo.name}")
        buf = bytearray()
        error: str | None = None
        try:
            async for chunk in resp.content.iter_chunked(READ_SIZE):
                buf += chunk
                if len(buf) >= READ_SIZE:
                    await asyncio.to_thread(writer.write, bytes(buf))
                    buf.clear()
                    report(writer.offset)
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            error = _connection_reason(e)
        if buf:
            await asyncio.to_thread(writer.write, bytes(buf))
            report(writer.offset)
        if error is None and writer.offset < desc.size:
            error = f"the body ended after {writer.offset} of {desc.size} bytes"
        return writer, error

    @staticmethod
    async def _restart(store: ContentStore, desc: Descriptor, writer: BlobWriter) -> BlobWriter:
        writer.abort(discard=True)
        return await asyncio.to_thread(store.writer, desc.digest, desc.size, resume_key=desc.digest)

    # --- push ------------------------------------------------------------------------

    async def push(
        self,
        ref: Reference | str,
        store: ContentStore,
        manifest_bytes: bytes,
        media_type: str,
        *,
        progress: ProgressCallback | None = None,
        mount_from: str | None = None,
        max_parallel: int = 4,
    ) -> str:
        """Upload the blobs the registry lacks, then the manifest; return its digest.

        For an index, each child manifest (and its blobs) goes first, by digest.
        ``mount_from`` names a repository of the same registry to mount blobs from.
        """
        ref = _as_ref(ref)
        emit: ProgressCallback = progress or (lambda _e: None)
        if mount_from:
            mount_from = mount_from.strip("/")
            prefix = ref.domain + "/"
            if mount_from.startswith(prefix):
                mount_from = mount_from[len(prefix) :]
        repo = self._repo(ref, "push", mount_from)
        repo.extra["mount_from"] = mount_from
        digest = _digest_of(manifest_bytes)
        if ref.digest is not None and ref.digest != _digest_of(
            manifest_bytes, parse_digest(ref.digest)[0]
        ):
            raise InvalidArgument(
                f"cannot push {display_ref(ref)}: the manifest's digest is {digest}"
            )
        emit(ProgressEvent(None, f"The push refers to repository [{ref.name}]"))
        await self._push_tree(repo, store, manifest_bytes, media_type, emit, max_parallel)
        target = ref.tag or ref.digest or "latest"
        digest = await self._put_manifest(repo, target, manifest_bytes, media_type)
        emit(
            ProgressEvent(
                None, f"{ref.tag or 'latest'}: digest: {digest} size: {len(manifest_bytes)}"
            )
        )
        return digest

    async def _push_tree(
        self,
        repo: _Repo,
        store: ContentStore,
        data: bytes,
        media_type: str,
        emit: ProgressCallback,
        max_parallel: int,
    ) -> None:
        """Everything a manifest or index refers to, so the registry accepts it."""
        doc = parse_manifest(data, media_type)
        if isinstance(doc, Manifest):
            await self._push_blobs(repo, store, doc, emit, max_parallel)
            return
        for child in doc.manifests:
            if await self._has(repo, f"manifests/{child.digest}", child.media_type):
                continue
            try:
                child_bytes = await asyncio.to_thread(store.read, child.digest)
            except NotFound:
                where = f" ({child.platform})" if child.platform else ""
                raise BlobUnknown(
                    f"manifest {child.digest}{where} of the index for {repo.name} is not in "
                    "the content store: pull the image for every platform first"
                ) from None
            child_type = child.media_type
            await self._push_tree(repo, store, child_bytes, child_type, emit, max_parallel)
            await self._put_manifest(repo, child.digest, child_bytes, child_type)

    async def _has(self, repo: _Repo, path: str, accept: str | None = None) -> bool:
        headers = {"Accept": accept} if accept else {}
        resp = await self._send("HEAD", repo, path, headers=headers)
        resp.release()
        if resp.status == 200:
            return True
        if resp.status == 404:
            return False
        raise await self._fail(resp, f"checking {path.split('/', 1)[-1]} in {repo.name}")

    async def _push_blobs(
        self,
        repo: _Repo,
        store: ContentStore,
        manifest: Manifest,
        emit: ProgressCallback,
        max_parallel: int,
    ) -> None:
        limit = asyncio.Semaphore(max(1, max_parallel))
        seen: set[str] = set()
        layers = []
        for desc in manifest.layers:
            if desc.digest not in seen:
                seen.add(desc.digest)
                layers.append(desc)
        for desc in layers:
            emit(ProgressEvent(desc.digest, "Preparing"))

        async def one(desc: Descriptor, show: bool) -> None:
            if show and limit.locked():
                emit(ProgressEvent(desc.digest, "Waiting"))
            async with limit:
                await self._push_blob(repo, store, desc, emit if show else None)

        jobs: list[Coroutine[Any, Any, None]] = [one(d, True) for d in layers]
        if manifest.config.digest not in seen:
            jobs.append(one(manifest.config, False))
        await _all_or_nothing(jobs)

    async def _push_blob(
        self,
        repo: _Repo,
        store: ContentStore,
        desc: Descriptor,
        emit: ProgressCallback | None,
    ) -> None:
        show = emit or (lambda _e: None)
        if await self._has(repo, f"blobs/{desc.digest}"):
            show(ProgressEvent(desc.digest, "Layer already exists"))
            return
        if not store.has(desc.digest):
            raise BlobUnknown(
                f"blob {desc.digest} of {repo.name} is not in the content store: "
                "pull or build the image again"
            )
        size = store.size(desc.digest)
        if size != desc.size:
            raise DigestMismatch(
                f"stored blob {desc.digest} has {size} bytes but the manifest says {desc.size}: "
                "the manifest is wrong"
            )
        mount_from = repo.extra.get("mount_from")
        if mount_from:
            query = urllib.parse.urlencode({"mount": desc.digest, "from": mount_from})
            resp = await self._send("POST", repo, f"blobs/uploads/?{query}", idempotent=False)
            if resp.status == 201:
                resp.release()
                show(ProgressEvent(desc.digest, f"Mounted from {mount_from}"))
                return
            # Not mountable (no access, or not there): a 202 opened an upload session.
            what = f"mounting {desc.digest} into {repo.name}"
        else:
            resp = await self._send("POST", repo, "blobs/uploads/", idempotent=False)
            what = f"starting an upload to {repo.name}"
        if resp.status != 202:
            raise await self._fail(resp, what)
        resp.release()
        if not resp.headers.get("Location"):
            raise RegistryError(
                f"registry {repo.domain} opened an upload without a Location: it is broken"
            )
        location = _join(str(resp.url), resp.headers["Location"])
        min_chunk = _int_header(resp, "OCI-Chunk-Min-Length")
        sent = 0
        last_emit = 0.0

        def on_bytes(n: int) -> None:
            nonlocal sent, last_emit
            sent += n
            now = time.monotonic()
            if emit is not None and (now - last_emit >= _PROGRESS_INTERVAL or sent == size):
                last_emit = now
                emit(ProgressEvent(desc.digest, "Pushing", sent, size))

        chunk = max(self.chunk_size, min_chunk)
        if size > chunk:
            location = await self._upload_chunks(repo, store, desc, location, chunk, on_bytes)
            final = await self._send(
                "PUT",
                repo,
                _with_query(location, digest=desc.digest),
                headers={"Content-Length": "0"},
                idempotent=False,
            )
        else:
            final = await self._send(
                "PUT",
                repo,
                _with_query(location, digest=desc.digest),
                headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
                body=lambda: _file_body(store, desc.digest, 0, size, on_bytes),
                idempotent=False,
            )
        if final.status != 201:
            raise await self._fail(final, f"uploading {desc.digest} to {repo.name}")
        echoed = final.headers.get("Docker-Content-Digest")
        final.release()
        if echoed and echoed != desc.digest:
            raise DigestMismatch(
                f"registry {repo.domain} stored {desc.digest} of {repo.name} as {echoed}: "
                "the upload was corrupted, push again"
            )
        show(ProgressEvent(desc.digest, "Pushed"))

    async def _upload_chunks(
        self,
        repo: _Repo,
        store: ContentStore,
        desc: Descriptor,
        location: str,
        chunk: int,
        on_bytes: Callable[[int], None],
    ) -> str:
        offset = 0
        while offset < desc.size:
            n = min(chunk, desc.size - offset)
            begin = offset
            resp = await self._send(
                "PATCH",
                repo,
                location,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{begin}-{begin + n - 1}",
                    "Content-Length": str(n),
                },
                body=functools.partial(_file_body, store, desc.digest, begin, n, on_bytes),
                idempotent=False,
            )
            if resp.status != 202:
                raise await self._fail(resp, f"uploading a chunk of {desc.digest} to {repo.name}")
            resp.release()
            location = _join(str(resp.url), resp.headers.get("Location") or location)
            offset += n
        return location

    async def _put_manifest(self, repo: _Repo, reference: str, data: bytes, media_type: str) -> str:
        digest = _digest_of(data)
        resp = await self._send(
            "PUT",
            repo,
            f"manifests/{reference}",
            headers={"Content-Type": media_type},
            body=lambda: data,
            idempotent=True,
        )
        if resp.status not in (200, 201):
            raise await self._fail(resp, f"pushing manifest {display_ref(repo.ref, reference)}")
        echoed = resp.headers.get("Docker-Content-Digest")
        resp.release()
        if echoed and echoed.startswith("sha256:") and echoed != digest:
            raise DigestMismatch(
                f"registry {repo.domain} stored the manifest of {repo.name} as {echoed}, "
                f"expected {digest}: push again"
            )
        return digest

    # --- login -----------------------------------------------------------------------

    async def login(self, host: str, username: str, password: str) -> str:
        """Check the credentials against ``host``'s /v2/, then store them; return the file."""
        domain = await self.check_login(host, username, password)
        path = store_credentials(domain, username, password, self.config_path)
        self._creds[domain] = Credentials(username, password)
        return path

    async def check_login(self, host: str, username: str, password: str) -> str:
        """Whether ``host`` accepts the credentials (basic, or the token flow), storing
        nothing (the daemon's ``/auth``); returns the normalised domain."""
        domain = normalize_login_host(host)
        creds = Credentials(username, password)
        endpoint = await self._endpoint(domain)
        challenge = endpoint.challenge
        if challenge is not None and challenge.scheme == "bearer":
            try:
                token = await self._fetch_token(domain, challenge, [], None, creds)
            except Unauthorized:
                raise Unauthorized(
                    f"login to {domain} failed: incorrect username or password"
                ) from None
            auth = "Bearer " + token
        else:
            auth = creds.basic_header()
        try:
            async with self._get_session().get(
                endpoint.base + "/v2/", headers={"Authorization": auth}, ssl=endpoint.verify_tls
            ) as resp:
                if resp.status == 401:
                    raise Unauthorized(f"login to {domain} failed: incorrect username or password")
                if resp.status != 200:
                    raise RegistryError(f"login to {domain} failed: {await _error_text(resp)}")
        except (TimeoutError, aiohttp.ClientError) as e:
            raise self._unreachable(_connect_host(domain), e) from None
        return domain


def normalize_login_host(host: str) -> str:
    """What ``berth login`` accepts ("https://index.docker.io/v1/", "host:5000") as a domain."""
    host = host.strip()
    for prefix in ("https://", "http://"):
        if host.startswith(prefix):
            host = host[len(prefix) :]
    host = host.split("/", 1)[0].lower()
    if not host:
        raise InvalidArgument("login needs a registry host such as localhost:5000")
    if host in ("index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"):
        return DEFAULT_DOMAIN
    return host


def _int_header(resp: aiohttp.ClientResponse, name: str) -> int:
    try:
        return max(0, int(resp.headers.get(name, "0")))
    except ValueError:
        return 0


async def _file_body(
    store: ContentStore, digest: str, start: int, length: int, on_bytes: Callable[[int], None]
) -> AsyncIterator[bytes]:
    """Stream ``length`` bytes of a stored blob from ``start``, 1 MB at a time."""
    f = await asyncio.to_thread(store.open, digest)
    try:
        f.seek(start)
        remaining = length
        while remaining > 0:
            data = await asyncio.to_thread(f.read, min(READ_SIZE, remaining))
            if not data:
                raise DigestMismatch(
                    f"stored blob {digest} is shorter than expected: delete it and pull again"
                )
            remaining -= len(data)
            on_bytes(len(data))
            yield data
    finally:
        f.close()


async def _all_or_nothing(jobs: Iterable[Awaitable[None]]) -> None:
    """Run jobs concurrently; on the first failure cancel the rest and raise that failure."""
    tasks = [j if isinstance(j, asyncio.Task) else asyncio.ensure_future(j) for j in jobs]
    if not tasks:
        return
    try:
        done, _pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def login(
    host: str,
    username: str,
    password: str,
    *,
    config_path: str | None = None,
    insecure_registries: Iterable[str] = (),
) -> str:
    """``berth login``: verify the credentials against ``host``, then store them."""
    async with RegistryClient(
        insecure_registries=insecure_registries, config_path=config_path
    ) as client:
        return await client.login(host, username, password)


__all__ = [
    "BlobUnknown",
    "ManifestUnknown",
    "PullResult",
    "RegistryClient",
    "RegistryError",
    "RegistryUnreachable",
    "Unauthorized",
    "display_ref",
    "login",
    "logout",
]
