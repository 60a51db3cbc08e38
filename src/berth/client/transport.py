"""Where the daemon listens: ``unix:///path`` (the default) or ``tcp://HOST:PORT``.

TCP is spoken over TLS as the docker CLI does: ``$DOCKER_TLS_VERIFY`` (set and not
empty) verifies the daemon's certificate against ``$DOCKER_CERT_PATH/ca.pem`` (default
``~/.docker``) and presents ``cert.pem``/``key.pem`` as the client certificate;
``$DOCKER_TLS`` alone encrypts without verifying the daemon. Port 2376 with TLS and
2375 without when none is given, as Docker's defaults.
"""

from __future__ import annotations

import os

from berth.client.errors import ClientError, DaemonUnreachable

TYPE_CHECKING = False
if TYPE_CHECKING:  # ssl is loaded only for tcp:// with TLS; socket when a call needs it
    import socket
    import ssl


DEFAULT_HOST = "unix:///run/berth/berth.sock"


def fallback_host() -> str:
    """Berth's own socket: ``$BERTH_DEFAULT_HOST`` (a private engine), else the
    system's. This is where ``berth`` starts a daemon when none answers."""
    return os.environ.get("BERTH_DEFAULT_HOST") or DEFAULT_HOST


def chosen_host() -> str | None:
    """The host the user chose through the environment, if any."""
    return os.environ.get("BERTH_HOST") or os.environ.get("DOCKER_HOST") or None


def default_host() -> str:
    """``$BERTH_HOST``, else ``$DOCKER_HOST``, else Berth's socket."""
    return chosen_host() or fallback_host()


def _tls_settings() -> tuple[bool, bool]:
    """(use TLS, verify the daemon) from docker's variables."""
    verify = bool(os.environ.get("DOCKER_TLS_VERIFY"))
    return verify or bool(os.environ.get("DOCKER_TLS")), verify


def tls_context() -> ssl.SSLContext:
    """The client side of docker's TLS: CA, client certificate and key from
    ``$DOCKER_CERT_PATH``."""
    import ssl

    folder = os.environ.get("DOCKER_CERT_PATH") or os.path.join(os.path.expanduser("~"), ".docker")
    _, verify = _tls_settings()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        if verify:
            context.load_verify_locations(cafile=os.path.join(folder, "ca.pem"))
        else:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        cert, key = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
        if os.path.exists(cert) and os.path.exists(key):
            context.load_cert_chain(cert, key)
        elif verify:
            raise ClientError(f"DOCKER_TLS_VERIFY is set but {folder} has no cert.pem and key.pem")
    except (OSError, ssl.SSLError) as exc:
        raise ClientError(f"cannot load TLS certificates from {folder}: {exc}") from None
    return context


class Address:
    """A parsed host (no dataclass: ``dataclasses`` costs milliseconds at start-up)."""

    __slots__ = ("_context", "host", "tcp", "tls", "unix_path")

    def __init__(
        self,
        host: str,
        unix_path: str | None = None,
        tcp: tuple[str, int] | None = None,
        tls: bool = False,
    ) -> None:
        self.host = host  # as the user wrote it, for messages
        self.unix_path = unix_path
        self.tcp = tcp
        self.tls = tls
        self._context: ssl.SSLContext | None = None

    def context(self) -> ssl.SSLContext:
        if self._context is None:
            self._context = tls_context()
        return self._context

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
    if host.startswith(("tcp://", "http://", "https://")):
        tls, _ = _tls_settings()
        tls = tls or host.startswith("https://")
        rest = host.split("://", 1)[1].rstrip("/")
        name, colon, port = rest.rpartition(":")
        if not colon or "]" in port:
            name, port = rest, ""  # no port: Docker's default
        if not name or (port and not port.isdigit()):
            raise ClientError(f"invalid host {host!r}: give tcp://HOST:PORT")
        number = int(port) if port else (2376 if tls else 2375)
        return Address(host, tcp=(name.strip("[]"), number), tls=tls)
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


def open_socket(address: Address, timeout: float | None, *, bare: bool = False) -> socket.socket:
    """A connected socket to the daemon, or :class:`DaemonUnreachable`.

    ``bare``: for a unix socket, ``_socket.socket`` (recv, sendall, shutdown, close; no
    makefile), which spares loading the socket module (~2 ms of ``berth build``)."""
    try:
        if address.unix_path is not None:
            if bare:
                import _socket

                sock: socket.socket = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)  # type: ignore[assignment]
            else:
                import socket

                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(address.unix_path)
            except BaseException:
                sock.close()
                raise
            return sock
        import socket

        assert address.tcp is not None
        sock = socket.create_connection(address.tcp, timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if address.tls:
            return _wrap(address, sock)
        return sock
    except (FileNotFoundError, ConnectionRefusedError, PermissionError) as exc:
        raise unreachable(address, exc) from None
    except OSError as exc:
        if isinstance(exc, TimeoutError):
            raise DaemonUnreachable(f"timed out connecting to berthd at {address.host}") from None
        raise unreachable(address, exc) from None


def _wrap(address: Address, sock: socket.socket) -> socket.socket:
    """The TLS handshake; a refused certificate is one clear line."""
    import ssl

    assert address.tcp is not None
    try:
        return address.context().wrap_socket(sock, server_hostname=address.tcp[0])
    except ssl.SSLCertVerificationError as exc:
        sock.close()
        raise ClientError(
            f"the certificate of berthd at {address.host} is not trusted: {exc.verify_message}"
        ) from None
    except (ssl.SSLError, ConnectionResetError) as exc:
        sock.close()
        raise ClientError(f"TLS with berthd at {address.host} failed: {exc}") from None
    except BaseException:
        sock.close()
        raise


def __getattr__(name: str) -> object:
    """``Connection`` (http.client) lives in :mod:`berth.client.connection`, loaded only
    by the calls that use it: ``berth build`` never needs http.client."""
    if name == "Connection":
        from berth.client.connection import Connection

        return Connection
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
