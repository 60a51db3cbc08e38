"""Berth's Engine API client (and Python SDK): standard library only, synchronous.

See :class:`berth.client.api.Client`. It speaks the Docker Engine API, so it drives
dockerd as well as berthd.
"""

from __future__ import annotations

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
