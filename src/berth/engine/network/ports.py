"""Published ports: the API's ``PortBindings``/``ExposedPorts``/``PublishAllPorts``,
and host-port reservations.

A published port is held by a bound socket in the daemon (not listening, so it
receives nothing: the kernel DNATs the traffic before any socket lookup). The bind is
Docker's "port is already allocated" check, and it keeps any other program from
taking the port later. A random port (``-P``, or ``-p 80``) is the kernel's choice of
a free ephemeral port.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import Any

from berth.errors import Conflict, InvalidArgument


def parse_key(key: str) -> tuple[int, str]:
    """``"80/tcp"`` -> (80, "tcp")."""
    port, _, proto = str(key).partition("/")
    proto = proto or "tcp"
    if proto not in ("tcp", "udp", "sctp"):
        raise InvalidArgument(f"invalid protocol {proto!r} in port {key!r}: use tcp or udp")
    if proto == "sctp":
        raise InvalidArgument(f"sctp ports are not supported: {key}")
    try:
        number = int(port)
    except ValueError:
        raise InvalidArgument(f"invalid port {key!r}") from None
    if not 0 < number < 65536:
        raise InvalidArgument(f"invalid port {key!r}: out of range 1-65535")
    return number, proto


def _host_range(text: str) -> tuple[int, int]:
    if not text:
        return 0, 0
    low, _, high = text.partition("-")
    try:
        first, last = int(low), int(high or low)
    except ValueError:
        raise InvalidArgument(f"invalid host port {text!r}") from None
    if not (0 <= first <= last < 65536):
        raise InvalidArgument(f"invalid host port range {text!r}")
    return first, last


def requested(
    config: dict[str, Any], host: dict[str, Any], image_config: dict[str, Any]
) -> list[dict[str, Any]]:
    """The container's port requests: [{port, proto, host_ip, first, last}], validated."""
    exposed: list[str] = []
    for source in (image_config.get("ExposedPorts"), config.get("ExposedPorts")):
        if isinstance(source, dict):
            exposed += [str(k) for k in source]
    bindings = host.get("PortBindings") or {}
    if not isinstance(bindings, dict):
        raise InvalidArgument('PortBindings must be an object: {"80/tcp": [{"HostPort": "8080"}]}')
    result: list[dict[str, Any]] = []
    for key, items in bindings.items():
        port, proto = parse_key(key)
        for item in items or [{}]:
            item = item or {}
            host_ip = str(item.get("HostIp") or "")
            if host_ip:
                try:
                    parsed = ipaddress.ip_address(host_ip)
                except ValueError:
                    raise InvalidArgument(f"invalid host IP {host_ip!r} for port {key}") from None
                if parsed.version == 6:
                    if parsed.is_unspecified:
                        continue  # "::" beside "0.0.0.0": IPv6 is not published
                    raise InvalidArgument(f"IPv6 host addresses are not supported: {host_ip}")
            first, last = _host_range(str(item.get("HostPort") or ""))
            result.append(
                {"port": port, "proto": proto, "host_ip": host_ip, "first": first, "last": last}
            )
    if host.get("PublishAllPorts"):
        have = {(r["port"], r["proto"]) for r in result}
        for key in exposed:
            port, proto = parse_key(key)
            if (port, proto) not in have:
                result.append({"port": port, "proto": proto, "host_ip": "", "first": 0, "last": 0})
                have.add((port, proto))
    return result


def exposed_keys(
    config: dict[str, Any], image_config: dict[str, Any], asked: list[dict[str, Any]]
) -> list[str]:
    keys: list[str] = []
    for source in (image_config.get("ExposedPorts"), config.get("ExposedPorts")):
        if isinstance(source, dict):
            keys += [str(k) if "/" in str(k) else f"{k}/tcp" for k in source]
    keys += [f"{r['port']}/{r['proto']}" for r in asked]
    return sorted(set(keys), key=lambda k: (int(k.split("/")[0]), k))


def reserve(host_ip: str, proto: str, first: int, last: int) -> tuple[socket.socket, int]:
    """A bound socket holding the host port (the first free one of a range, or a free
    ephemeral port for 0); Conflict when taken."""
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    address = host_ip or "0.0.0.0"
    candidates = range(first, last + 1) if first else [0]
    error: OSError | None = None
    for port in candidates:
        sock = socket.socket(socket.AF_INET, kind)
        try:
            sock.bind((address, port))
            return sock, sock.getsockname()[1]
        except OSError as exc:
            sock.close()
            error = exc
            if exc.errno == errno.EADDRNOTAVAIL:
                raise InvalidArgument(
                    f"cannot publish on {address}: it is not an address of this host"
                ) from None
    span = f"{first}-{last}" if last != first else str(first)
    raise Conflict(
        f"driver failed programming external connectivity: Bind for {address}:{span}"
        f" failed: port is already allocated ({error.strerror if error else 'in use'})"
    )
