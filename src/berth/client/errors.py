"""The client's errors: one clear line each, for the CLI and for SDK users."""

from __future__ import annotations

from berth.errors import BerthError


class ClientError(BerthError):
    """Anything the client reports: the daemon unreachable, an error answer, a bad host."""


class DaemonUnreachable(ClientError):
    """No daemon answers at the host (no socket, connection refused, permission denied)."""


class APIError(ClientError):
    """The daemon answered with an error status; ``str()`` is its message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class NotFoundError(APIError):
    """404: no such container, image, exec (or route: see :class:`NotSupported`)."""


class ConflictError(APIError):
    """409: a name in use, a running container removed without force, ..."""


class NotSupported(ClientError):
    """The daemon does not implement the route (``this berthd does not support exec yet``)."""


def api_error(status: int, message: str) -> APIError:
    if status == 404:
        return NotFoundError(status, message)
    if status == 409:
        return ConflictError(status, message)
    return APIError(status, message)
