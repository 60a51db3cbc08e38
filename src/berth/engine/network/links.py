"""Netlink work through pyroute2: bridges, veth pairs, addresses and routes.

Every function here blocks (netlink round trips, a few ms); the service calls them
in a worker thread. A container's end of a veth pair is made directly inside its
namespace (``peer.net_ns_fd``), so no interface ever appears on the host under the
container's name.

pyroute2 costs ~20 MiB of the daemon's memory, so it is imported on first use by a
container; what the daemon does at start-up (its bridges, the host's routes, the
names of links) goes through iproute2's ``ip`` and sysfs instead.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import json
import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from typing import Any, ParamSpec, TypeVar

from berth.errors import SystemFailure
from berth.linux import syscalls as sc

_T = TypeVar("_T")
_P = ParamSpec("_P")
_IFA_F_NODAD = 0x02  # linux/if_addr.h
_pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="berth-netlink")


def _ip(*args: str, check: bool = True) -> str:
    """iproute2's ``ip``: one line of error, or its output."""
    try:
        done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise SystemFailure("the 'ip' command (iproute2) is not installed") from None
    if check and done.returncode:
        raise SystemFailure(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def off_loop(func: Callable[_P, _T]) -> Callable[_P, _T]:
    """pyroute2's synchronous API runs an event loop of its own, which fails in a thread
    that has one running (the daemon's): such calls go to a worker thread."""

    @functools.wraps(func)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return func(*args, **kwargs)
        return _pool.submit(func, *args, **kwargs).result()

    return wrapper


@contextlib.contextmanager
def _netns(path: str) -> Iterator[Any]:
    """IPRoute inside the namespace at ``path``: this thread steps in (setns) for the
    work and back. pyroute2's own ``netns=`` forks a helper whose SIGTERM
    would reach the daemon's asyncio wakeup fd and stop the daemon."""
    from pyroute2 import IPRoute  # type: ignore[import-untyped]

    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(path, os.O_RDONLY)
    try:
        sc.setns(target, sc.CLONE_NEWNET)
        try:
            with IPRoute() as ipr:  # pyroute2 binds lazily: all the work happens in here
                yield ipr
        finally:
            sc.setns(own, sc.CLONE_NEWNET)
    finally:
        os.close(target)
        os.close(own)


def _sysctl(path: str, value: str) -> None:
    with contextlib.suppress(OSError), open(os.path.join("/proc/sys", path), "w") as f:
        f.write(value)


@off_loop
def ensure_bridge(
    name: str, gateway: str, prefixlen: int, gateway6: str = "", prefixlen6: int = 0
) -> None:
    """The bridge, up, with the gateway address (and the IPv6 one when given; made or
    completed; idempotent)."""
    if not os.path.exists(f"/sys/class/net/{name}"):
        # a fixed MAC: a bridge otherwise takes the lowest of its ports' and changes
        # it as veths come and go, which strands the containers' ARP entries for
        # the gateway (a disconnect broke every other container's DNS)
        mac = "02:42:" + ":".join(f"{b:02x}" for b in os.urandom(4))
        _ip("link", "add", "name", name, "address", mac, "type", "bridge")
    have = {
        (a.get("local"), a.get("prefixlen"))
        for link in json.loads(_ip("-j", "addr", "show", "dev", name) or "[]")
        for a in link.get("addr_info", [])
    }
    if gateway and (gateway, prefixlen) not in have:
        _ip("addr", "add", f"{gateway}/{prefixlen}", "dev", name, check=False)
    if gateway6:
        _sysctl(f"net/ipv6/conf/{name}/disable_ipv6", "0")
        if (gateway6, prefixlen6) not in have:
            # nodad: usable at once (duplicate detection would hold it "tentative" ~2 s)
            _ip("addr", "add", f"{gateway6}/{prefixlen6}", "dev", name, "nodad", check=False)
    _ip("link", "set", "dev", name, "up")
    # loopback-published ports reach containers through this bridge (DNAT in output)
    _sysctl(f"net/ipv4/conf/{name}/route_localnet", "1")
    _sysctl("net/ipv4/ip_forward", "1")


def delete_link(name: str) -> None:
    if os.path.exists(f"/sys/class/net/{name}"):
        _ip("link", "del", "dev", name, check=False)


def link_names() -> list[str]:
    return sorted(os.listdir("/sys/class/net"))


@off_loop
def loopback_up(netns_path: str) -> None:
    with _netns(netns_path) as ns:
        ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")


@off_loop
def attach(
    netns_path: str,
    *,
    host_name: str,
    ifname: str,
    bridge: str,
    address: str,
    prefixlen: int,
    mac: str,
    gateway: str,
    address6: str = "",
    prefixlen6: int = 0,
    gateway6: str = "",
) -> None:
    """A veth pair: ``host_name`` on the bridge, ``ifname`` in the namespace with its
    address (and a default route through ``gateway`` when that is not empty), and the
    IPv6 address and route when given."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]

    fd = os.open(netns_path, os.O_RDONLY)
    try:
        with IPRoute() as ipr:
            bridges = ipr.link_lookup(ifname=bridge)
            if not bridges:
                raise SystemFailure(f"bridge {bridge} is missing")
            delete_stale = ipr.link_lookup(ifname=host_name)
            for index in delete_stale:
                with contextlib.suppress(NetlinkError):
                    ipr.link("del", index=index)
            try:
                ipr.link(
                    "add",
                    ifname=host_name,
                    kind="veth",
                    peer={"ifname": ifname, "net_ns_fd": fd},
                )
            except NetlinkError as exc:
                raise SystemFailure(f"cannot create veth {host_name}: {exc}") from None
            index = ipr.link_lookup(ifname=host_name)[0]
            ipr.link("set", index=index, master=bridges[0], state="up")
        # hairpin: a container reaching its own published port comes back on its port
        _sysctl_path = f"/sys/class/net/{host_name}/brport/hairpin_mode"
        with contextlib.suppress(OSError), open(_sysctl_path, "w") as f:
            f.write("1")
    finally:
        os.close(fd)
    try:
        with _netns(netns_path) as ns:
            inner = ns.link_lookup(ifname=ifname)[0]
            ns.link("set", index=inner, address=mac)
            ns.addr("add", index=inner, address=address, prefixlen=prefixlen)
            if address6:
                _sysctl(f"net/ipv6/conf/{ifname}/disable_ipv6", "0")  # this thread's netns
                # nodad: usable at once, as dockerd's (no "tentative" second or two)
                ns.addr(
                    "add",
                    index=inner,
                    address=address6,
                    prefixlen=prefixlen6,
                    family=socket.AF_INET6,
                    flags=_IFA_F_NODAD,
                )
            ns.link("set", index=inner, state="up")
            ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
            if gateway and not _has_default(ns):
                ns.route("add", dst="0.0.0.0/0", gateway=gateway)
            if address6 and gateway6 and not _has_default(ns, socket.AF_INET6):
                ns.route("add", dst="::/0", gateway=gateway6, family=socket.AF_INET6)
    except (NetlinkError, IndexError) as exc:
        delete_link(host_name)
        raise SystemFailure(f"cannot configure {ifname} in {netns_path}: {exc}") from None


def _has_default(ns: Any, family: int = socket.AF_INET) -> bool:
    # type 1 (unicast): IPv6 lists an "unreachable" default of its own
    return any(
        r["dst_len"] == 0 and r["type"] == 1
        for r in ns.route("dump", family=family)
        if r["table"] == 254
    )


@off_loop
def free_ifname(netns_path: str) -> str:
    """The next ``ethN`` not present in the namespace."""
    with _netns(netns_path) as ns:
        names = {str(link.get_attr("IFLA_IFNAME")) for link in ns.get_links()}
    n = 0
    while f"eth{n}" in names:
        n += 1
    return f"eth{n}"


@off_loop
def ensure_default_route(netns_path: str, gateway: str, gateway6: str = "") -> None:
    from pyroute2.netlink.exceptions import NetlinkError

    with _netns(netns_path) as ns:
        if gateway and not _has_default(ns):
            with contextlib.suppress(NetlinkError):
                ns.route("add", dst="0.0.0.0/0", gateway=gateway)
        if gateway6 and not _has_default(ns, socket.AF_INET6):
            with contextlib.suppress(NetlinkError):
                ns.route("add", dst="::/0", gateway=gateway6, family=socket.AF_INET6)


def host_routes(exclude: frozenset[str] = frozenset(), version: int = 4) -> list[str]:
    """Destinations (CIDR) of the host's IPv4 (or IPv6) routes and its addresses, but
    those of the interfaces in ``exclude`` (the daemon's own bridges)."""
    found: list[str] = []
    family = f"-{version}"
    for route in json.loads(_ip(family, "-j", "route", "show", "table", "all") or "[]"):
        dst = str(route.get("dst", ""))
        if route.get("dev") in exclude or route.get("type", "unicast") != "unicast":
            continue
        if dst and dst != "default" and "/" in dst:
            found.append(dst)
    for link in json.loads(_ip(family, "-j", "addr", "show") or "[]"):
        if link.get("ifname") in exclude:
            continue
        for a in link.get("addr_info", []):
            found.append(f"{a['local']}/{a['prefixlen']}")
    return found
