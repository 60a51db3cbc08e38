"""Where the daemon listens: ``unix:///path`` (the default) or ``tcp://HOST:PORT``."""

from __future__ import annotations

import http.client
import os
import socket

from berth.client.errors import ClientError, DaemonUnreachable

DEFAULT_HOST = "unix:///run/berth/berth.sock"


def default_host() -> str:
    """``$BERTH_HOST``, else ``$DOCKER_HOST``, else Berth's socket."""
    return os.environ.get("BERTH_HOST") or os.environ.get("DOCKER_HOST") or DEFAULT_HOST


class Address:
    """A parsed host (no dataclass: ``dataclasses`` costs milliseconds at start-up)."""

    __slots__ = ("host", "tcp", "unix_path")

    def __init__(
        self, host: str, unix_path: str | None = None, tcp: tuple[str, int] | None = None
    ) -> None:
        self.host = host  # as the user wrote it, for messages
        self.unix_path = unix_path
        self.tcp = tcp

    @property
    def http_host(self) -> str:
        """The ``Host`` header: docker's clients send a placeholder for unix sockets."""
        if self.tcp is not None:
            return f"{self.tcp[0]}:{self.tcp[1]}"
        return "localhost"


def parse_host(host: str) -> Address:
    if host.startswith("unix://"):
        path = host[len("unix://") :]
        if not path:
            raise ClientError(f"invalid host {host!r}: give a socket path, unix:///path")
        return Address(host, unix_path=path)
    if host.startswith(("tcp://", "http://")):
        rest = host.split("://", 1)[1].rstrip("/")
        name, _, port = rest.rpartition(":")
        if not name or not port.isdigit():
            raise ClientError(f"invalid host {host!r}: give tcp://HOST:PORT")
        return Address(host, tcp=(name.strip("[]"), int(port)))
    if host.startswith("/"):
        return Address(f"unix://{host}", unix_path=host)
    raise ClientError(f"unsupported host {host!r}: use unix:///path/to/socket or tcp://HOST:PORT")


def unreachable(address: Address, exc: OSError) -> DaemonUnreachable:
    if isinstance(exc, PermissionError):
        return DaemonUnreachable(
            f"permission denied connecting to berthd at {address.host}:"
            " run as root or as a member of the socket's group"
        )
    return DaemonUnreachable(
        f"cannot connect to berthd at {address.host}: is it running? (start it with berthd)"
    )


def open_socket(address: Address, timeout: float | None) -> socket.socket:
    """A connected socket to the daemon, or :class:`DaemonUnreachable`."""
    try:
        if address.unix_path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(address.unix_path)
            except BaseException:
                sock.close()
                raise
            return sock
        assert address.tcp is not None
        sock = socket.create_connection(address.tcp, timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    except (FileNotFoundError, ConnectionRefusedError, PermissionError) as exc:
        raise unreachable(address, exc) from None
    except OSError as exc:
        if isinstance(exc, TimeoutError):
            raise DaemonUnreachable(f"timed out connecting to berthd at {address.host}") from None
        raise unreachable(address, exc) from None


class Connection(http.client.HTTPConnection):
    """http.client over the daemon's unix socket (or TCP), with Berth's connect errors."""

    def __init__(self, address: Address, timeout: float | None = None) -> None:
        super().__init__(address.http_host, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = open_socket(self.address, self.timeout)
