"""Berth's Engine API client (and Python SDK): standard library only, synchronous.

See :class:`berth.client.api.Client`. It speaks the Docker Engine API, so it drives
dockerd as well as berthd.

The names load on first use (PEP 562): ``from berth.client.errors import ...`` must not
pull in the whole client, and ``berth build`` never loads http.client.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from berth.client.api import API_VERSION, Client, Waiter
    from berth.client.errors import (
        APIError,
        ClientError,
        ConflictError,
        DaemonUnreachable,
        NotFoundError,
        NotSupported,
    )
    from berth.client.streams import (
        STDERR,
        STDIN,
        STDOUT,
        FrameDecoder,
        HijackedStream,
        demux,
        iter_json,
    )
    from berth.client.transport import DEFAULT_HOST, default_host

_WHERE = {
    "API_VERSION": "api",
    "Client": "api",
    "Waiter": "api",
    "APIError": "errors",
    "ClientError": "errors",
    "ConflictError": "errors",
    "DaemonUnreachable": "errors",
    "NotFoundError": "errors",
    "NotSupported": "errors",
    "STDERR": "streams",
    "STDIN": "streams",
    "STDOUT": "streams",
    "FrameDecoder": "streams",
    "HijackedStream": "streams",
    "demux": "streams",
    "iter_json": "streams",
    "DEFAULT_HOST": "transport",
    "default_host": "transport",
}

__all__ = [
    "API_VERSION",
    "DEFAULT_HOST",
    "STDERR",
    "STDIN",
    "STDOUT",
    "APIError",
    "Client",
    "ClientError",
    "ConflictError",
    "DaemonUnreachable",
    "FrameDecoder",
    "HijackedStream",
    "NotFoundError",
    "NotSupported",
    "Waiter",
    "default_host",
    "demux",
    "iter_json",
]


def __getattr__(name: str) -> object:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'berth.client' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f"berth.client.{module}"), name)
    globals()[name] = value
    return value
