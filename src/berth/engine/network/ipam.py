"""Networks, endpoints and addresses in the engine's SQLite file.

An endpoint (a container on a network) holds its address from the container's create
(or ``network connect``) until its removal (or disconnect); ``UNIQUE(network_id,
address)`` makes a collision impossible, across daemon restarts too. Subnets for
networks made without one come from a pool, skipping any that overlap the host's
routes and addresses or another network.

IPv6 (``EnableIPv6``) adds a second subnet, ``IPAM.Config[1]``; an endpoint's IPv6
address lives in the ``address6`` column, unique per network as the IPv4 one is.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import sqlite3
from collections.abc import Iterable, Iterator
from typing import Any

from berth.errors import Conflict, InvalidArgument

SCHEMA = """
CREATE TABLE IF NOT EXISTS networks (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS endpoints (
    container_id TEXT NOT NULL,
    network_id TEXT NOT NULL,
    address TEXT NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (container_id, network_id),
    UNIQUE (network_id, address)
);
CREATE TABLE IF NOT EXISTS container_net (
    container_id TEXT PRIMARY KEY,
    record TEXT NOT NULL
);
"""


def pool(default_bridge: bool = False) -> Iterator[ipaddress.IPv4Network]:
    """Subnets tried in order: 172.30-31.0.0/16, then /20s of 192.168.0.0/16, then
    /24s of 10.208.0.0/12."""
    for second in (30, 31):
        yield ipaddress.IPv4Network(f"172.{second}.0.0/16")
    yield from ipaddress.IPv4Network("192.168.0.0/16").subnets(new_prefix=20)
    yield from ipaddress.IPv4Network("10.208.0.0/12").subnets(new_prefix=24)


def ula_pool(seed: str) -> Iterator[ipaddress.IPv6Network]:
    """/64s of one unique-local /48 (RFC 4193: fd + a 40-bit global id, here derived
    from ``seed`` so a daemon keeps its prefix across restarts)."""
    global_id = hashlib.sha256(seed.encode()).digest()[:5]
    prefix = ipaddress.IPv6Network((b"\xfd" + global_id + bytes(10), 48))
    return prefix.subnets(new_prefix=64)


def pick_subnet6(taken: Iterable[str], seed: str) -> ipaddress.IPv6Network:
    """The first /64 of the daemon's ULA /48 that overlaps nothing in ``taken``."""
    used = _parsed(taken, 6)
    for count, candidate in enumerate(ula_pool(seed)):
        if count > 4096:
            break
        if not any(candidate.overlaps(u) for u in used):
            return candidate
    raise Conflict("could not find an available, non-overlapping IPv6 address pool")


def _parsed(taken: Iterable[str], version: int) -> list[Any]:
    """The subnets of one IP version among ``taken`` (others are skipped)."""
    result = []
    for text in taken:
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            continue
        if net.version == version:
            result.append(net)
    return result


def v4_config(network: dict[str, Any]) -> dict[str, Any]:
    """The IPv4 entry of a network's ``IPAM.Config`` (always the first)."""
    return dict(network["IPAM"]["Config"][0])


def v6_config(network: dict[str, Any]) -> dict[str, Any] | None:
    """The IPv6 entry of ``IPAM.Config``, when the network has IPv6 enabled."""
    if not network.get("EnableIPv6"):
        return None
    for config in network["IPAM"]["Config"]:
        if ":" in str(config.get("Subnet") or ""):
            return dict(config)
    return None


def pick_subnet(taken: Iterable[str]) -> ipaddress.IPv4Network:
    used = _parsed(taken, 4)
    for candidate in pool():
        if not any(candidate.overlaps(u) for u in used):
            return candidate
    raise Conflict("could not find an available, non-overlapping IPv4 address pool")


def mac_for(address: str) -> str:
    """Docker's rule: 02:42 and the four bytes of the address."""
    packed = ipaddress.IPv4Address(address).packed
    return "02:42:" + ":".join(f"{b:02x}" for b in packed)


class NetworkDB:
    """The three tables, on the engine's connection (the event loop's thread only)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        conn.executescript(SCHEMA)
        columns = {r[1] for r in conn.execute("PRAGMA table_info(endpoints)")}
        with conn:  # IPv6: added to files made before it existed
            if "address6" not in columns:
                conn.execute("ALTER TABLE endpoints ADD COLUMN address6 TEXT NOT NULL DEFAULT ''")
            conn.execute(
                "CREATE UNIQUE INDEX IF NOT EXISTS endpoints_address6"
                " ON endpoints (network_id, address6) WHERE address6 != ''"
            )

    # ---- networks ----------------------------------------------------------------------

    def add_network(self, record: dict[str, Any]) -> None:
        try:
            with self.conn:
                self.conn.execute(
                    "INSERT INTO networks (id, name, record) VALUES (?, ?, ?)",
                    (record["Id"], record["Name"], json.dumps(record)),
                )
        except sqlite3.IntegrityError:
            raise Conflict(f"network with name {record['Name']} already exists") from None

    def update_network(self, record: dict[str, Any]) -> None:
        with self.conn:
            self.conn.execute(
                "UPDATE networks SET record = ? WHERE id = ?", (json.dumps(record), record["Id"])
            )

    def delete_network(self, network_id: str) -> None:
        with self.conn:
            self.conn.execute("DELETE FROM networks WHERE id = ?", (network_id,))

    def networks(self) -> list[dict[str, Any]]:
        return [
            json.loads(r[0]) for r in self.conn.execute("SELECT record FROM networks ORDER BY name")
        ]

    def network(self, network_id: str) -> dict[str, Any] | None:
        row = self.conn.execute(
            "SELECT record FROM networks WHERE id = ?", (network_id,)
        ).fetchone()
        return json.loads(row[0]) if row else None

    def find_network(self, ref: str) -> list[dict[str, Any]]:
        """By full id, exact name, then id prefix (Docker's order)."""
        for query in (
            "SELECT record FROM networks WHERE id = ?",
            "SELECT record FROM networks WHERE name = ?",
        ):
            row = self.conn.execute(query, (ref,)).fetchone()
            if row:
                return [json.loads(row[0])]
        if not ref or any(c not in "0123456789abcdef" for c in ref):
            return []
        return [
            json.loads(r[0])
            for r in self.conn.execute("SELECT record FROM networks WHERE id LIKE ?", (ref + "%",))
        ]

    # ---- endpoints -----------------------------------------------------------------------

    def endpoints(
        self, *, container_id: str | None = None, network_id: str | None = None
    ) -> list[dict[str, Any]]:
        query = "SELECT record FROM endpoints"
        args: list[str] = []
        where = []
        if container_id is not None:
            where.append("container_id = ?")
            args.append(container_id)
        if network_id is not None:
            where.append("network_id = ?")
            args.append(network_id)
        if where:
            query += " WHERE " + " AND ".join(where)
        endpoints = [json.loads(r[0]) for r in self.conn.execute(query, args)]
        return sorted(endpoints, key=lambda e: e.get("Order", 0))

    def add_endpoint(self, record: dict[str, Any]) -> None:
        try:
            with self.conn:
                self.conn.execute(
                    "INSERT INTO endpoints (container_id, network_id, address, address6, record)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (
                        record["ContainerID"],
                        record["NetworkID"],
                        record["IPAddress"],
                        record.get("GlobalIPv6Address") or "",
                        json.dumps(record),
                    ),
                )
        except sqlite3.IntegrityError:
            addresses = " or ".join(
                a for a in (record["IPAddress"], record.get("GlobalIPv6Address")) if a
            )
            raise Conflict(
                f"address {addresses} is already in use on the network, or the"
                " container is already connected to it"
            ) from None

    def update_endpoint(self, record: dict[str, Any]) -> None:
        with self.conn:
            self.conn.execute(
                "UPDATE endpoints SET record = ? WHERE container_id = ? AND network_id = ?",
                (json.dumps(record), record["ContainerID"], record["NetworkID"]),
            )

    def delete_endpoint(self, container_id: str, network_id: str) -> None:
        with self.conn:
            self.conn.execute(
                "DELETE FROM endpoints WHERE container_id = ? AND network_id = ?",
                (container_id, network_id),
            )

    def used_addresses(self, network_id: str, version: int = 4) -> set[str]:
        column = "address6" if version == 6 else "address"
        return {
            r[0]
            for r in self.conn.execute(
                f"SELECT {column} FROM endpoints WHERE network_id = ? AND {column} != ''",
                (network_id,),
            )
        }

    # ---- per-container settings ----------------------------------------------------------

    def container(self, container_id: str) -> dict[str, Any] | None:
        row = self.conn.execute(
            "SELECT record FROM container_net WHERE container_id = ?", (container_id,)
        ).fetchone()
        return json.loads(row[0]) if row else None

    def set_container(self, container_id: str, record: dict[str, Any]) -> None:
        with self.conn:
            self.conn.execute(
                "INSERT OR REPLACE INTO container_net (container_id, record) VALUES (?, ?)",
                (container_id, json.dumps(record)),
            )

    def forget_container(self, container_id: str) -> None:
        with self.conn:
            self.conn.execute("DELETE FROM container_net WHERE container_id = ?", (container_id,))
            self.conn.execute("DELETE FROM endpoints WHERE container_id = ?", (container_id,))

    def container_ids(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT container_id FROM container_net")]


def allocate(ipam: dict[str, Any], used: set[str], wanted: str = "") -> str:
    """An address of the network's subnet (within IPRange when given) that no endpoint
    holds; ``wanted`` is checked instead when given. The IP version is the subnet's."""
    subnet = ipaddress.ip_network(ipam["Subnet"])
    family = f"IPv{subnet.version}"
    gateway = ipam.get("Gateway") or ""
    reserved = {str(subnet.network_address), gateway}
    if subnet.version == 4:
        reserved.add(str(subnet.broadcast_address))
    reserved.update(str(a) for a in (ipam.get("AuxiliaryAddresses") or {}).values())
    if wanted:
        try:
            address = ipaddress.ip_address(wanted)
        except ValueError:
            raise InvalidArgument(f"invalid {family} address {wanted!r}") from None
        if address.version != subnet.version or address not in subnet:
            raise InvalidArgument(f"no configured subnet contains IP address {wanted}")
        if str(address) in reserved or str(address) in used:
            raise Conflict(f"Address already in use: {wanted}")
        return str(address)
    window = ipaddress.ip_network(ipam["IPRange"]) if ipam.get("IPRange") else subnet
    for address in window.hosts():  # a generator: a /64 is never listed whole
        text = str(address)
        if text not in reserved and text not in used:
            return text
    raise Conflict(f"no available {family} address on the network's subnet {subnet}")
