"""The engine's nftables rules: one filter table (``inet berth``) and one NAT table
(``ip berth-nat``), rewritten whole, atomically, from the engine's state.

The ruleset is a pure function of the networks and the running containers' published
ports (:func:`ruleset`); :func:`apply` replaces both tables in one ``nft -f``
transaction, so every change (and a daemon start after a crash) converges on the
state in SQLite with no stale rule left. A daemon with a private ``--exec-root`` has
its own table names (``berth-<tag>``), so several daemons on one host never touch
each other's rules.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

from berth.errors import SystemFailure


@dataclass
class Bridge:
    name: str
    subnet: str
    internal: bool


@dataclass
class Forward:
    """One published port: host (address, port) -> container (address, port)."""

    proto: str  # tcp | udp
    host_ip: str  # "" = every local address
    host_port: int
    ip: str
    port: int


def _q(name: str) -> str:
    return '"' + name.replace('"', "") + '"'


def ruleset(tag: str, bridges: list[Bridge], forwards: list[Forward]) -> str:
    """The nft script that makes (or replaces) both tables."""
    filt, nat = tag, f"{tag}-nat"
    names = [b.name for b in bridges]
    lines = [
        f"table inet {filt} {{}}",
        f"delete table inet {filt}",
        f"table ip {nat} {{}}",
        f"delete table ip {nat}",
    ]
    if not bridges:
        return "\n".join(lines) + "\n"
    lines += [
        f"table inet {filt} {{",
        "  chain forward {",
        "    type filter hook forward priority filter; policy accept;",
    ]
    for bridge in bridges:
        if bridge.internal:  # nothing in or out but within the bridge
            lines.append(f"    iifname {_q(bridge.name)} oifname != {_q(bridge.name)} drop")
            lines.append(f"    oifname {_q(bridge.name)} iifname != {_q(bridge.name)} drop")
        others = [n for n in names if n != bridge.name]
        if others:  # networks are isolated from each other, as Docker's
            lines.append(
                f"    iifname {_q(bridge.name)} oifname {{ {', '.join(map(_q, others))} }} drop"
            )
    lines += ["  }", "}"]
    lines += [
        f"table ip {nat} {{",
        "  chain ports {",
    ]
    for fwd in forwards:
        match = f"ip daddr {fwd.host_ip} " if fwd.host_ip not in ("", "0.0.0.0") else ""
        lines.append(f"    {match}{fwd.proto} dport {fwd.host_port} dnat to {fwd.ip}:{fwd.port}")
    lines += [
        "  }",
        "  chain prerouting {",
        "    type nat hook prerouting priority dstnat; policy accept;",
        "    fib daddr type local jump ports",
        "  }",
        "  chain output {",
        "    type nat hook output priority -100; policy accept;",
        "    fib daddr type local jump ports",
        "  }",
        "  chain postrouting {",
        "    type nat hook postrouting priority srcnat; policy accept;",
    ]
    for bridge in bridges:
        q = _q(bridge.name)
        if not bridge.internal:
            lines.append(f"    ip saddr {bridge.subnet} oifname != {q} masquerade")
        # published on 127.0.0.1 (route_localnet) and hairpin: replies must come back here
        lines.append(f"    oifname {q} ip saddr 127.0.0.0/8 masquerade")
        lines.append(f"    oifname {q} ip saddr {bridge.subnet} ct status dnat masquerade")
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def apply(script: str) -> None:
    nft = shutil.which("nft") or "/usr/sbin/nft"
    try:
        result = subprocess.run(
            [nft, "-f", "-"], input=script, capture_output=True, text=True, timeout=30
        )
    except FileNotFoundError:
        raise SystemFailure(
            "nft is not installed: install the nftables package (scripts/setup does)"
        ) from None
    if result.returncode != 0:
        message = result.stderr.strip().splitlines()
        raise SystemFailure(f"nft: {message[0] if message else 'failed'}")


def tables() -> list[str]:
    """``family name`` of every nftables table on the host."""
    nft = shutil.which("nft") or "/usr/sbin/nft"
    result = subprocess.run([nft, "list", "tables"], capture_output=True, text=True)
    return [line.removeprefix("table ").strip() for line in result.stdout.splitlines()]
