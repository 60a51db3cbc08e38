"""Client calls for a container's files: archive (cp) both ways, changes, export, commit.

Functions over a :class:`~berth.client.api.Client` (the ``Client`` methods of the same
names call these)."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote

from berth.client.api import Client, Response, StreamResponse, _message, quoted
from berth.client.errors import ClientError, api_error

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, BinaryIO

KINDS = {0: "C", 1: "A", 2: "D"}


def _stat_of(headers: dict[str, str]) -> dict[str, Any]:
    encoded = headers.get("x-docker-container-path-stat", "")
    if not encoded:
        return {}
    try:
        value: dict[str, Any] = json.loads(base64.b64decode(encoded))
    except ValueError:
        raise ClientError("the daemon sent a bad X-Docker-Container-Path-Stat header") from None
    return value


def stat_path(client: Client, ref: str, path: str) -> dict[str, Any]:
    """``HEAD .../archive``: name, size, mode (Go's bits), mtime, linkTarget of a path."""
    url = client.url(f"/containers/{quoted(ref)}/archive", {"path": path})
    response: Response = client._exchange("HEAD", url, None, {})
    if response.status >= 400:
        message = _message(response.status, response.body)
        if response.status == 404 and not response.body:
            message = f"Could not find the file {path} in container {ref}"
        raise api_error(response.status, message)
    return _stat_of(response.headers)


def get_archive(client: Client, ref: str, path: str) -> tuple[StreamResponse, dict[str, Any]]:
    """A tar of ``path`` in the container (read it from the stream) and the path's stat."""
    response = client.stream("GET", f"/containers/{quoted(ref)}/archive", params={"path": path})
    return response, _stat_of(response.headers)


def put_archive(
    client: Client,
    ref: str,
    path: str,
    data: bytes | BinaryIO,
    *,
    no_overwrite_dir_non_dir: bool = False,
    copy_uid_gid: bool = False,
) -> None:
    """Extract a tar (bytes or a file, sent chunked) into the directory ``path``."""
    params = {
        "path": path,
        "noOverwriteDirNonDir": no_overwrite_dir_non_dir or None,
        "copyUIDGID": copy_uid_gid or None,
    }
    url = client.url(f"/containers/{quoted(ref)}/archive", params)
    headers = {"Content-Type": "application/x-tar"}
    response: Response = client._exchange("PUT", url, data, headers)  # type: ignore[arg-type]
    if response.status >= 400:
        raise api_error(response.status, _message(response.status, response.body))


def diff(client: Client, ref: str) -> list[dict[str, Any]]:
    """The container's changes: ``{"Path", "Kind"}`` (0 modified, 1 added, 2 deleted)."""
    result = client.get(f"/containers/{quoted(ref)}/changes")
    return list(result or [])


def export(client: Client, ref: str) -> StreamResponse:
    """A tar of the container's whole filesystem, as a stream."""
    return client.stream("GET", f"/containers/{quoted(ref)}/export")


def commit(
    client: Client,
    ref: str,
    repo: str | None = None,
    tag: str | None = None,
    *,
    message: str | None = None,
    author: str | None = None,
    changes: list[str] | None = None,
    pause: bool = True,
    config: dict[str, Any] | None = None,
) -> str:
    """A new image from the container; its ID."""
    params: dict[str, Any] = {
        "container": ref,
        "repo": repo or None,
        "tag": tag or None,
        "comment": message or None,
        "author": author or None,
        "pause": pause,
    }
    url = client.url("/commit", params)
    for change in changes or []:
        url += "&changes=" + quote(change, safe="")
    body = json.dumps(config or {}).encode()
    response: Response = client._exchange("POST", url, body, {"Content-Type": "application/json"})
    if response.status >= 400:
        raise api_error(response.status, _message(response.status, response.body))
    return str(response.json()["Id"])
