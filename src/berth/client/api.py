"""A synchronous Engine API client over the daemon's unix socket: Berth's Python SDK.

Standard library only (``http.client`` and a socket), so ``berth ps`` starts fast; neither
http.client nor urllib is imported until a call needs it (``berth build`` needs neither)::

    from berth.client import Client

    with Client() as client:                  # $BERTH_HOST, $DOCKER_HOST, or berthd's socket
        client.bootstrap_image("busybox")
        created = client.create_container({"Image": "busybox", "Cmd": ["echo", "hi"]})
        client.start(created["Id"])
        print(client.wait(created["Id"]))     # 0
        for stream, data in client.logs(created["Id"]):
            print(stream, data)

The API version is negotiated through ``/_ping`` on the first call (the lower of the
daemon's and :data:`API_VERSION`), unless given (``version=`` or
``$BERTH_API_VERSION``/``$DOCKER_API_VERSION``). Error answers raise
:class:`~berth.client.errors.APIError` (:class:`NotFoundError` for 404,
:class:`ConflictError` for 409) carrying the daemon's message. A client may be used
from several threads: a call that finds the kept-alive connection busy opens its own.
"""

from __future__ import annotations

import _thread
import json
import os
import time
from collections.abc import Iterable, Iterator

from berth.client.errors import (
    APIError,
    ClientError,
    DaemonUnreachable,
    NotFoundError,
    NotSupported,
    api_error,
)
from berth.client.streams import (
    MULTIPLEXED_STREAM,
    RAW_STREAM,
    HijackedStream,
    RawResponse,
    iter_frames,
    iter_json,
    read_body,
    read_head,
)
from berth.client.transport import Address, default_host, open_socket, parse_host

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at start-up; annotations stay strings here
    import http.client
    import socket
    from typing import Any

    from berth.client.connection import Connection

    Params = dict[str, Any]

API_VERSION = "1.45"  # the newest Engine API version this client speaks
MIN_API_VERSION = "1.24"  # what a daemon without an Api-Version header is taken to speak


def _version_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return (0,)


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _message(status: int, body: bytes) -> str:
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text or f"the daemon answered HTTP {status}"
    if isinstance(data, dict) and data.get("message"):
        return str(data["message"])
    return text or f"the daemon answered HTTP {status}"


# urllib.parse's quoting without its import (it loads ipaddress: ~2 ms of a CLI run)
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")
_PATH_SAFE = _UNRESERVED | frozenset(b"/:@")


def _percent(text: str, safe: frozenset[int], plus: bool) -> str:
    """``urllib.parse.quote`` (``plus``: ``quote_plus``) of ``text`` as UTF-8."""
    data = text.encode()
    if all(byte in safe for byte in data):
        return text
    out = []
    for byte in data:
        if byte in safe:
            out.append(chr(byte))
        elif byte == 0x20 and plus:
            out.append("+")
        else:
            out.append(f"%{byte:02X}")
    return "".join(out)


def encode_query(pairs: dict[str, str] | Iterable[tuple[str, str]]) -> str:
    """``urllib.parse.urlencode`` for string keys and values."""
    items = pairs.items() if isinstance(pairs, dict) else pairs
    return "&".join(
        f"{_percent(k, _UNRESERVED, True)}={_percent(v, _UNRESERVED, True)}" for k, v in items
    )


def quoted(name: str) -> str:
    """A name as one part of a URL path (an image's ``/`` and ``:`` kept, as docker's)."""
    return _percent(name, _PATH_SAFE, False)


class Response:
    """A whole answer: status, lower-case headers, body."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            raise ClientError(f"the daemon's answer is not JSON: {self.body[:80]!r}") from None


class StreamResponse:
    """An answer read as it arrives (logs, pull progress, wait), on its own connection."""

    def __init__(self, connection: Connection, response: http.client.HTTPResponse) -> None:
        self.connection = connection
        self.response = response
        self.status = response.status
        self.headers = {k.lower(): v for k, v in response.getheaders()}

    def read_chunk(self) -> bytes:
        """What has arrived (at most 64 KiB); ``b""`` at the end."""
        import http.client

        try:
            return self.response.read1(65536)
        except (http.client.IncompleteRead, ConnectionResetError):
            return b""

    def read_all(self) -> bytes:
        import http.client

        try:
            return self.response.read()
        except http.client.IncompleteRead as exc:
            return bytes(exc.partial)

    def close(self) -> None:
        self.response.close()
        self.connection.close()

    def __enter__(self) -> StreamResponse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Waiter:
    """A ``wait`` registered with the daemon; :meth:`result` blocks for the exit code.

    Made before ``start`` (as ``docker run`` does), it cannot miss a quick exit.
    """

    def __init__(self, stream: StreamResponse) -> None:
        self._stream = stream

    def result(self) -> int:
        with self._stream:
            body = self._stream.read_all()
        try:
            data = json.loads(body)
        except ValueError:
            raise ClientError("the daemon closed the wait without an exit code") from None
        error = data.get("Error") or {}
        if isinstance(error, dict) and error.get("Message"):
            raise APIError(500, str(error["Message"]))
        return int(data.get("StatusCode", 0))

    def close(self) -> None:
        self._stream.close()


class Client:
    """One daemon. ``host``: ``unix:///path`` or ``tcp://HOST:PORT``."""

    def __init__(
        self,
        host: str | None = None,
        *,
        version: str | None = None,
        timeout: float | None = None,
    ) -> None:
        self.address: Address = parse_host(host or default_host())
        self.host = self.address.host
        self.timeout = timeout
        self._version = (
            version
            or os.environ.get("BERTH_API_VERSION")
            or os.environ.get("DOCKER_API_VERSION")
            or None
        )
        self._kept: Connection | None = None
        self._lock = _thread.allocate_lock()

    # ---- connection and version -----------------------------------------------------------

    def close(self) -> None:
        if self._kept is not None:
            self._kept.close()
            self._kept = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def api_version(self) -> str:
        """The negotiated API version (asks ``/_ping`` the first time)."""
        if self._version is None:
            response = self._exchange("GET", "/_ping", None, {})
            if response.status >= 400:
                raise api_error(response.status, _message(response.status, response.body))
            server = response.headers.get("api-version") or MIN_API_VERSION
            self._version = min(server, API_VERSION, key=_version_tuple)
        return self._version

    def url(self, path: str, params: Params | None = None, *, versioned: bool = True) -> str:
        url = f"/v{self.api_version}{path}" if versioned else path
        if params:
            query = {k: _query_value(v) for k, v in params.items() if v is not None}
            if query:
                url += "?" + encode_query(query)
        return url

    def _exchange(
        self,
        method: str,
        url: str,
        body: bytes | None,
        headers: dict[str, str],
        *,
        stream: bool = False,
    ) -> Any:
        """One request; a :class:`Response`, or a :class:`StreamResponse` if ``stream``."""
        import http.client

        from berth.client.connection import Connection

        kept = not stream and self._lock.acquire(False)
        if kept:
            if self._kept is None:
                self._kept = Connection(self.address, self.timeout)
            connection = self._kept
        else:
            connection = Connection(self.address, self.timeout)
        try:
            for attempt in (0, 1):
                reused = connection.sock is not None
                try:
                    connection.request(method, url, body=body, headers=headers)
                    response = connection.getresponse()
                    break
                except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                    connection.close()
                    if reused and attempt == 0:
                        continue  # the daemon closed an idle kept-alive connection
                    raise DaemonUnreachable(
                        f"berthd at {self.host} closed the connection: see its log"
                    ) from None
                except TimeoutError:
                    connection.close()
                    raise DaemonUnreachable(
                        f"berthd at {self.host} did not answer in time"
                    ) from None
                except http.client.HTTPException as exc:
                    connection.close()
                    raise ClientError(f"bad answer from berthd at {self.host}: {exc!r}") from None
            if stream:
                return StreamResponse(connection, response)
            try:
                data = response.read()
            except (http.client.HTTPException, OSError) as exc:
                connection.close()
                raise DaemonUnreachable(
                    f"berthd at {self.host} broke off its answer: {exc}"
                ) from None
            if response.will_close:
                connection.close()
            return Response(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
        except BaseException:
            if not kept:
                connection.close()
            raise
        finally:
            if kept:
                self._lock.release()

    # ---- JSON helpers -------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Params | None = None,
        body: Any = None,
        ok: tuple[int, ...] = (),
    ) -> Response:
        """A versioned request with an optional JSON body; an error status raises
        :class:`APIError` unless listed in ``ok``."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        response: Response = self._exchange(method, self.url(path, params), data, headers)
        if response.status >= 400 and response.status not in ok:
            raise api_error(response.status, _message(response.status, response.body))
        return response

    def get(self, path: str, params: Params | None = None) -> Any:
        return self.request("GET", path, params=params).json()

    def post(self, path: str, body: Any = None, params: Params | None = None) -> Any:
        response = self.request("POST", path, params=params, body=body)
        return response.json() if response.body.strip() else None

    def delete(self, path: str, params: Params | None = None) -> Any:
        response = self.request("DELETE", path, params=params)
        return response.json() if response.body.strip() else None

    def stream(
        self, method: str, path: str, *, params: Params | None = None, body: Any = None
    ) -> StreamResponse:
        """A request whose answer is read as it arrives, on a connection of its own."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        url = self.url(path, params)
        response: StreamResponse = self._exchange(method, url, data, headers, stream=True)
        if response.status >= 400:
            with response:
                raise api_error(response.status, _message(response.status, response.read_all()))
        return response

    def hijack(
        self, path: str, *, params: Params | None = None, body: Any = None
    ) -> HijackedStream:
        """``POST path`` with ``Upgrade: tcp``; after ``101 UPGRADED`` the socket is the
        container's stdin and output (attach, exec start)."""
        url = self.url(path, params)
        data = b"" if body is None else json.dumps(body).encode()
        head = (
            f"POST {url} HTTP/1.1\r\nHost: {self.address.http_host}\r\n"
            "User-Agent: berth-client\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
        )
        if body is not None:
            head += "Content-Type: application/json\r\n"
        head += f"Content-Length: {len(data)}\r\n\r\n"
        sock = open_socket(self.address, self.timeout)
        try:
            sock.sendall(head.encode() + data)
            status, _, headers, rest = read_head(sock)
            if status in (101, 200):
                sock.settimeout(None)
                return HijackedStream(sock, headers.get("content-type", ""), rest)
            raise api_error(status, _message(status, read_body(sock, headers, rest)))
        except (ConnectionError, BrokenPipeError) as exc:
            sock.close()
            raise DaemonUnreachable(f"berthd at {self.host} broke off the attach: {exc}") from None
        except BaseException:
            sock.close()
            raise

    def upload(
        self,
        method: str,
        path: str,
        query: str,
        body: Iterable[bytes],
        headers: dict[str, str],
    ) -> RawResponse:
        """``method path?query`` with ``body`` sent chunked as it is produced (a build
        context streamed while it is tarred), on a socket of its own, the answer read off
        it as it arrives. No http.client: ``berth build`` spends its start-up on the
        build, not on imports. An error status is the caller's to read."""
        sock = open_socket(self.address, self.timeout, bare=True)
        try:
            try:
                if self._version is None:
                    sock = self._raw_ping(sock)
                url = f"/v{self._version}{path}" + (f"?{query}" if query else "")
                head = (
                    f"{method} {url} HTTP/1.1\r\nHost: {self.address.http_host}\r\n"
                    "User-Agent: berth-client\r\nTransfer-Encoding: chunked\r\n"
                    + "".join(f"{name}: {value}\r\n" for name, value in headers.items())
                    + "\r\n"
                ).encode()
                try:
                    for chunk in body:
                        if chunk:
                            sock.sendall(b"".join((head, b"%x\r\n" % len(chunk), chunk, b"\r\n")))
                            head = b""
                    sock.sendall(head + b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the daemon answered before reading it all (an error): read that
                status, _, answer_headers, rest = read_head(sock)
            except TimeoutError:
                raise DaemonUnreachable(f"berthd at {self.host} did not answer in time") from None
            except ConnectionError:
                raise DaemonUnreachable(
                    f"berthd at {self.host} closed the connection: see its log"
                ) from None
            return RawResponse(sock, status, answer_headers, rest)
        except BaseException:
            sock.close()
            raise

    def _raw_ping(self, sock: socket.socket) -> socket.socket:
        """Negotiate the API version with ``/_ping`` on ``sock``; the socket to go on with
        (a new one if the daemon closes after answering)."""
        sock.sendall(
            f"GET /_ping HTTP/1.1\r\nHost: {self.address.http_host}\r\n"
            "User-Agent: berth-client\r\n\r\n".encode()
        )
        status, _, headers, rest = read_head(sock)
        body = read_body(sock, headers, rest)
        if status >= 400:
            raise api_error(status, _message(status, body))
        server = headers.get("api-version") or MIN_API_VERSION
        self._version = min(server, API_VERSION, key=_version_tuple)
        if "content-length" not in headers or headers.get("connection", "").lower() == "close":
            sock.close()  # the answer's end was the connection's
            sock = open_socket(self.address, self.timeout, bare=True)
        return sock

    # ---- system -------------------------------------------------------------------------

    def ping(self) -> str:
        response = self._exchange("GET", "/_ping", None, {})
        if response.status >= 400:
            raise api_error(response.status, _message(response.status, response.body))
        return str(response.body.decode())

    def version(self) -> dict[str, Any]:
        result: dict[str, Any] = self.get("/version")
        return result

    def info(self) -> dict[str, Any]:
        result: dict[str, Any] = self.get("/info")
        return result

    def events(
        self,
        *,
        since: str | None = None,
        until: str | None = None,
        filters: dict[str, Any] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """The daemon's events as they happen (``since``/``until``: unix seconds[.nanos]);
        ends at ``until`` or when the caller stops iterating."""
        params = {"since": since, "until": until, "filters": filters or None}
        with self.stream("GET", "/events", params=params) as response:
            yield from iter_json(response.read_chunk)

    def df(self, types: list[str] | None = None) -> dict[str, Any]:
        """``/system/df``: images, containers, volumes and build cache with their sizes."""
        url = self.url("/system/df")
        if types:
            url += "?" + encode_query([("type", t) for t in types])
        response: Response = self._exchange("GET", url, None, {})
        if response.status >= 400:
            raise api_error(response.status, _message(response.status, response.body))
        result: dict[str, Any] = response.json()
        return result

    def prune(self, kind: str, filters: dict[str, Any] | None = None) -> dict[str, Any]:
        """``POST /{kind}/prune`` (containers, images, networks, volumes, build)."""
        result = self.post(f"/{kind}/prune", params={"filters": filters or None})
        return dict(result or {})

    # ---- images ---------------------------------------------------------------------------

    def images(self, *, all: bool = False, filters: dict[str, Any] | None = None) -> list[Any]:
        result: list[Any] = self.get("/images/json", {"all": all or None, "filters": filters})
        return result

    def inspect_image(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.get(f"/images/{quoted(name)}/json")
        return result

    def tag_image(self, name: str, repo: str, tag: str | None = None) -> None:
        self.request("POST", f"/images/{quoted(name)}/tag", params={"repo": repo, "tag": tag})

    def remove_image(
        self, name: str, *, force: bool = False, noprune: bool = False
    ) -> list[dict[str, str]]:
        params = {"force": force or None, "noprune": noprune or None}
        result = self.delete(f"/images/{quoted(name)}", params)
        return list(result or [])

    def pull(
        self, name: str, tag: str | None = None, *, auth: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Docker's JSON progress messages of a pull; an error message raises APIError.
        ``auth``: the X-Registry-Auth value, as for :meth:`push`."""
        headers = {"X-Registry-Auth": auth} if auth is not None else None
        yield from self._json_stream(
            "POST", "/images/create", {"fromImage": name, "tag": tag}, None, headers
        )

    def bootstrap_image(self, name: str = "busybox") -> dict[str, Any]:
        """Berth's extension: make a base image locally (busybox; others if the daemon
        has a recipe)."""
        result: dict[str, Any] = self.post("/berth/images/bootstrap", params={"name": name})
        return result

    def _json_stream(
        self, method: str, path: str, params: Params, body: Any = None, headers: Any = None
    ) -> Iterator[dict[str, Any]]:
        """POST a raw body (bytes or a file, sent chunked) and yield the JSON messages of
        the answer; an ``error`` message raises APIError (as the pull stream does)."""
        url = self.url(path, params)
        response: StreamResponse = self._exchange(method, url, body, headers or {}, stream=True)
        with response:
            if response.status >= 400:
                raise api_error(response.status, _message(response.status, response.read_all()))
            for message in iter_json(response.read_chunk):
                if message.get("error"):
                    raise APIError(500, str(message["error"]))
                yield message

    def push(
        self, name: str, tag: str | None = None, *, auth: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Docker's JSON progress of a push; ``auth`` is the X-Registry-Auth value
        (base64url JSON of {"username", "password", "serveraddress"})."""
        headers = {"X-Registry-Auth": auth} if auth is not None else {}
        yield from self._json_stream(
            "POST", f"/images/{quoted(name)}/push", {"tag": tag or None}, None, headers
        )

    def save_images(self, names: list[str]) -> StreamResponse:
        """``docker save``: a docker-archive tar of the images, as a stream."""
        if len(names) == 1:
            return self.stream("GET", f"/images/{quoted(names[0])}/get")
        url = self.url("/images/get") + "?" + encode_query([("names", n) for n in names])
        response: StreamResponse = self._exchange("GET", url, None, {}, stream=True)
        if response.status >= 400:
            with response:
                raise api_error(response.status, _message(response.status, response.read_all()))
        return response

    def load_images(self, data: Any, *, quiet: bool = False) -> Iterator[dict[str, Any]]:
        """``docker load`` of a tar (bytes or a binary file): the JSON messages."""
        headers = {"Content-Type": "application/x-tar"}
        yield from self._json_stream(
            "POST", "/images/load", {"quiet": quiet or None}, data, headers
        )

    def import_image(
        self,
        data: Any,
        repo: str | None = None,
        tag: str | None = None,
        *,
        changes: list[str] | None = None,
        message: str | None = None,
        platform: str | None = None,
    ) -> Iterator[dict[str, Any]]:
        """``docker import`` of a root filesystem tar: the JSON messages (the last has
        the new image's ID as its status)."""
        params = {
            "fromSrc": "-",
            "repo": repo or None,
            "tag": tag or None,
            "message": message or None,
            "platform": platform or None,
        }
        url = self.url("/images/create", params)
        for change in changes or []:
            url += "&" + encode_query({"changes": change})
        response: StreamResponse = self._exchange(
            "POST", url, data, {"Content-Type": "application/x-tar"}, stream=True
        )
        with response:
            if response.status >= 400:
                raise api_error(response.status, _message(response.status, response.read_all()))
            for item in iter_json(response.read_chunk):
                if item.get("error"):
                    raise APIError(500, str(item["error"]))
                yield item

    def image_history(self, name: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.get(f"/images/{quoted(name)}/history")
        return result

    def prune_images(self, filters: dict[str, Any] | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self.post("/images/prune", params={"filters": filters})
        return result

    def login(self, username: str, password: str, server: str) -> dict[str, Any]:
        """``POST /auth``: the daemon checks the credentials against the registry."""
        body = {"username": username, "password": password, "serveraddress": server}
        result: dict[str, Any] = self.post("/auth", body)
        return result

    # ---- containers ---------------------------------------------------------------------

    def containers(
        self,
        *,
        all: bool = False,
        filters: dict[str, Any] | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        params = {"all": all or None, "filters": filters or None, "limit": limit}
        result: list[dict[str, Any]] = self.get("/containers/json", params)
        return result

    def create_container(self, config: dict[str, Any], name: str | None = None) -> dict[str, Any]:
        """``{"Id": ..., "Warnings": [...]}``."""
        result: dict[str, Any] = self.post("/containers/create", config, {"name": name})
        return result

    def inspect_container(self, ref: str) -> dict[str, Any]:
        result: dict[str, Any] = self.get(f"/containers/{quoted(ref)}/json")
        return result

    def start(self, ref: str) -> None:
        """Start; a container already running is fine (304)."""
        self.request("POST", f"/containers/{quoted(ref)}/start", ok=(304,))

    def stop(self, ref: str, timeout: int | None = None, signal: str | None = None) -> None:
        """Stop; a container already stopped is fine (304)."""
        params = {"t": timeout, "signal": signal}
        self.request("POST", f"/containers/{quoted(ref)}/stop", params=params, ok=(304,))

    def restart(self, ref: str, timeout: int | None = None) -> None:
        self._maybe_unsupported(
            "restart",
            ref,
            lambda: self.request(
                "POST", f"/containers/{quoted(ref)}/restart", params={"t": timeout}
            ),
        )

    def pause(self, ref: str) -> None:
        self._maybe_unsupported(
            "pause", ref, lambda: self.request("POST", f"/containers/{quoted(ref)}/pause")
        )

    def unpause(self, ref: str) -> None:
        self._maybe_unsupported(
            "unpause", ref, lambda: self.request("POST", f"/containers/{quoted(ref)}/unpause")
        )

    def kill(self, ref: str, signal: str | int | None = None) -> None:
        self.request("POST", f"/containers/{quoted(ref)}/kill", params={"signal": signal})

    def remove_container(self, ref: str, *, force: bool = False, volumes: bool = False) -> None:
        params = {"force": force or None, "v": volumes or None}
        self.request("DELETE", f"/containers/{quoted(ref)}", params=params)

    def wait(self, ref: str, condition: str = "not-running") -> int:
        """Block until the container meets ``condition``; its exit code."""
        return self.wait_later(ref, condition).result()

    def wait_later(self, ref: str, condition: str = "not-running") -> Waiter:
        """Register a wait now (the daemon answers its headers once it is registered)."""
        return Waiter(
            self.stream("POST", f"/containers/{quoted(ref)}/wait", params={"condition": condition})
        )

    def resize(self, ref: str, height: int, width: int) -> None:
        self.request("POST", f"/containers/{quoted(ref)}/resize", params={"h": height, "w": width})

    def logs(
        self,
        ref: str,
        *,
        stdout: bool = True,
        stderr: bool = True,
        follow: bool = False,
        tail: int | str = "all",
        timestamps: bool = False,
        since: float | None = None,
        until: float | None = None,
    ) -> Iterator[tuple[int, bytes]]:
        """``(stream, data)`` pieces of the container's log (stream 1 for a TTY's)."""
        params = {
            "stdout": stdout,
            "stderr": stderr,
            "follow": follow,
            "tail": tail,
            "timestamps": timestamps,
            "since": since,
            "until": until,
        }
        with self.stream("GET", f"/containers/{quoted(ref)}/logs", params=params) as response:
            content_type = response.headers.get("content-type", "")
            if content_type.startswith(MULTIPLEXED_STREAM):
                raw = False
            elif content_type.startswith(RAW_STREAM) and _version_tuple(self.api_version) >= (
                1,
                42,
            ):
                raw = True
            else:  # before API 1.42 logs said raw for both: the container's TTY decides
                raw = bool(self.inspect_container(ref).get("Config", {}).get("Tty"))
            yield from iter_frames(response.read_chunk, raw=raw)

    def attach(
        self,
        ref: str,
        *,
        stdin: bool = False,
        stdout: bool = True,
        stderr: bool = True,
        logs: bool = False,
    ) -> HijackedStream:
        """The container's streams on a hijacked connection (attach before start to miss
        nothing, as ``docker run`` does)."""
        params = {
            "stream": True,
            "stdin": stdin,
            "stdout": stdout,
            "stderr": stderr,
            "logs": logs or None,
        }
        return self.hijack(f"/containers/{quoted(ref)}/attach", params=params)

    # ---- exec ---------------------------------------------------------------------------

    def exec_create(
        self,
        ref: str,
        cmd: list[str],
        *,
        stdin: bool = False,
        stdout: bool = True,
        stderr: bool = True,
        tty: bool = False,
        env: list[str] | None = None,
        workdir: str | None = None,
        user: str | None = None,
        privileged: bool = False,
    ) -> str:
        """The new exec's id; :class:`NotSupported` if the daemon has no exec route."""
        body: dict[str, Any] = {
            "AttachStdin": stdin,
            "AttachStdout": stdout,
            "AttachStderr": stderr,
            "Tty": tty,
            "Cmd": cmd,
            "Privileged": privileged,
        }
        if env:
            body["Env"] = env
        if workdir:
            body["WorkingDir"] = workdir
        if user:
            body["User"] = user
        result = self._maybe_unsupported(
            "exec", ref, lambda: self.post(f"/containers/{quoted(ref)}/exec", body)
        )
        return str(result["Id"])

    def exec_start(
        self, exec_id: str, *, tty: bool = False, detach: bool = False
    ) -> HijackedStream | None:
        """Run the exec: its streams (hijacked), or None when ``detach``."""
        body = {"Detach": detach, "Tty": tty}
        if detach:
            self.request("POST", f"/exec/{quoted(exec_id)}/start", body=body)
            return None
        return self.hijack(f"/exec/{quoted(exec_id)}/start", body=body)

    def exec_inspect(self, exec_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.get(f"/exec/{quoted(exec_id)}/json")
        return result

    def exec_resize(self, exec_id: str, height: int, width: int) -> None:
        self.request("POST", f"/exec/{quoted(exec_id)}/resize", params={"h": height, "w": width})

    def exec_exit_code(self, exec_id: str, timeout: float = 5.0) -> int:
        """The exec's exit code once the daemon has recorded it."""
        deadline = time.monotonic() + timeout
        while True:
            data = self.exec_inspect(exec_id)
            if not data.get("Running") or time.monotonic() > deadline:
                code = data.get("ExitCode")
                return int(code) if code is not None else 0
            time.sleep(0.01)

    # ---- files (berth.client.archive) -----------------------------------------------------

    def stat_path(self, ref: str, path: str) -> dict[str, Any]:
        from berth.client import archive

        return archive.stat_path(self, ref, path)

    def get_archive(self, ref: str, path: str) -> tuple[StreamResponse, dict[str, Any]]:
        from berth.client import archive

        return archive.get_archive(self, ref, path)

    def put_archive(self, ref: str, path: str, data: Any, **options: bool) -> None:
        from berth.client import archive

        archive.put_archive(self, ref, path, data, **options)

    def diff(self, ref: str) -> list[dict[str, Any]]:
        from berth.client import archive

        return archive.diff(self, ref)

    def export(self, ref: str) -> StreamResponse:
        from berth.client import archive

        return archive.export(self, ref)

    def commit(
        self, ref: str, repo: str | None = None, tag: str | None = None, **options: Any
    ) -> str:
        from berth.client import archive

        return archive.commit(self, ref, repo, tag, **options)

    # ---- top, stats, rename, update --------------------------------------------------------

    def top(self, ref: str, ps_args: str | None = None) -> dict[str, Any]:
        """``{"Titles": [...], "Processes": [[...], ...]}`` (``ps_args``: ps's options)."""
        result: dict[str, Any] = self.get(f"/containers/{quoted(ref)}/top", {"ps_args": ps_args})
        return result

    def stats(self, ref: str) -> dict[str, Any]:
        """One sample with ``precpu_stats`` (the daemon waits a sampling interval)."""
        result: dict[str, Any] = self.get(f"/containers/{quoted(ref)}/stats", {"stream": False})
        return result

    def stats_stream(self, ref: str) -> Iterator[dict[str, Any]]:
        """A sample per interval until the caller stops iterating or the container ends."""
        path = f"/containers/{quoted(ref)}/stats"
        with self.stream("GET", path, params={"stream": True}) as response:
            yield from iter_json(response.read_chunk)

    def rename(self, ref: str, name: str) -> None:
        self.request("POST", f"/containers/{quoted(ref)}/rename", params={"name": name})

    def update_container(self, ref: str, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /containers/{id}/update``: ``{"Warnings": [...]}``."""
        result = self.post(f"/containers/{quoted(ref)}/update", body)
        return dict(result or {})

    # ---- volumes ------------------------------------------------------------------------

    def volumes(self, filters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        result = self.get("/volumes", {"filters": filters or None})
        return list((result or {}).get("Volumes") or [])

    def create_volume(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /volumes/create`` (Name, Driver, DriverOpts, Labels): the volume."""
        result: dict[str, Any] = self.post("/volumes/create", body)
        return result

    def inspect_volume(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.get(f"/volumes/{quoted(name)}")
        return result

    def remove_volume(self, name: str, *, force: bool = False) -> None:
        self.request("DELETE", f"/volumes/{quoted(name)}", params={"force": force or None})

    def _maybe_unsupported(self, what: str, ref: str, call: Any) -> Any:
        """``call()``; a 404 while the container exists means the route is missing."""
        try:
            return call()
        except NotFoundError:
            self.inspect_container(ref)  # no such container: that error
            raise NotSupported(f"this berthd does not support {what} yet") from None
