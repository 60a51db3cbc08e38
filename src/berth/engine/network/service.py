"""NetworkService: the one owner of everything networking adds to the host.

- A container that is not on the host's network gets a namespace of the engine's
  (``<exec-root>/netns/<id>``, made at start, gone at exit), which its OCI config joins
  by path; ``container:NAME`` joins the same path; ``none`` has loopback only.
- A container on a bridge network gets one veth pair per network, an address held
  from create to removal (IPAM in SQLite), a default route (not on ``--internal``).
- nftables (``nft.py``) is rewritten from the state on every change: masquerade,
  published ports (DNAT in prerouting and output), isolation, internal networks.
- User-defined networks get the embedded DNS (``dns.py``) on their gateway address.

Ownership: records in SQLite (``ipam.NetworkDB``) say what should exist; on daemon
start whatever of ours exists without a reason (a netns of a stopped container, the
veth of one) is removed, and the rules are rewritten. A daemon that stops with no
container on a network removes its bridges and tables; otherwise they stay for the
running containers, as their processes do.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import os
import re
import secrets
import socket
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from berth.engine.filters import label_matches, until_epoch
from berth.engine.filters import values as _values
from berth.engine.filters import values as filter_values
from berth.engine.network import ipam, links, netns, nft, ports
from berth.engine.network.dns import Listener, Resolver
from berth.errors import BerthError, Conflict, InvalidArgument, NotFound
from berth.units import rfc3339_epoch

if TYPE_CHECKING:
    from berth.engine.containers import Container, ContainerService

DEFAULT_EXEC_ROOT = "/run/berth"
PREDEFINED = ("bridge", "host", "none")
VETH_PREFIX = "brth"
USER_BRIDGE_PREFIX = "brn-"
_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_. -]*$")
BRIDGE_NAME_OPTION = "com.docker.network.bridge.name"


def _now() -> str:
    from berth.engine import jsonlog

    return jsonlog.rfc3339nano()


def veth_name(container_id: str, network_id: str) -> str:
    return VETH_PREFIX + hashlib.sha256((container_id + network_id).encode()).hexdigest()[:10]


def _log(message: str) -> None:
    print(f"berthd: network: {message}", file=sys.stderr, flush=True)


class NetworkService:
    def __init__(self, containers: ContainerService) -> None:
        self.containers = containers
        self.db = ipam.NetworkDB(containers.db.conn)
        exec_root = os.path.abspath(containers.exec_root)
        self.netns_dir = os.path.join(exec_root, "netns")
        digest = hashlib.sha256(exec_root.encode()).hexdigest()[:6]
        default = exec_root == DEFAULT_EXEC_ROOT
        self.tag = "berth" if default else f"berth-{digest}"  # nftables table names
        self.default_bridge = "berth0" if default else f"berth{digest}"
        self.bip = ""  # berthd --bip: gateway/prefix of the default bridge
        self._lock = asyncio.Lock()
        self._held: dict[str, list[socket.socket]] = {}
        self._dns: dict[str, Listener] = {}
        self.resolver = Resolver(self._lookup)

    # ---- daemon start and stop ------------------------------------------------------------

    def _running(self, container_id: str) -> bool:
        record = self.containers.db.get(container_id)
        return record is not None and record["State"]["Status"] == "running"

    async def startup(self) -> None:
        """Predefined networks, bridges, and a reconcile of what exists with the state."""
        netns.prepare_dir(self.netns_dir)
        self._predefined()
        for network in self._bridges():
            await self._ensure_bridge(network)
        # stale: namespaces and veths of containers that are not running (or are gone)
        for name in netns.listing(self.netns_dir):
            if not self._running(name):
                netns.remove(os.path.join(self.netns_dir, name))
        existing = set(await asyncio.to_thread(links.link_names))
        for container_id in self.db.container_ids():
            if self._running(container_id):
                self._reserve_again(container_id)
                continue
            for endpoint in self.db.endpoints(container_id=container_id):
                if endpoint["Veth"] in existing:
                    await asyncio.to_thread(links.delete_link, endpoint["Veth"])
            if (self.db.container(container_id) or {}).get("Build"):
                self.db.forget_container(container_id)  # a RUN step of a build cut short
                continue
            self._set_runtime(container_id, {})
        self._apply()
        for network in self._bridges():
            await self._start_dns(network)

    async def shutdown(self) -> None:
        for listener in list(self._dns.values()):
            await listener.stop()
        self._dns.clear()
        for held in self._held.values():
            for sock in held:
                sock.close()
        self._held.clear()
        if any(self._running(cid) for cid in self.db.container_ids()):
            return  # running containers keep their bridges and rules
        for network in self._bridges():
            await asyncio.to_thread(links.delete_link, network["_Bridge"])
        with contextlib.suppress(BerthError):
            nft.apply(nft.ruleset(self.tag, [], []))
        netns.release_dir(self.netns_dir)

    def _predefined(self) -> None:
        have = {n["Name"]: n for n in self.db.networks()}
        if "bridge" in have:
            bridge = have["bridge"]
            subnet = ipaddress.IPv4Network(bridge["IPAM"]["Config"][0]["Subnet"])
            clash = any(
                subnet.overlaps(ipaddress.IPv4Network(r, strict=False))
                for r in self._foreign_routes()
            )
            if clash and not self.bip and not self.db.endpoints(network_id=bridge["Id"]):
                # another bridge took the subnet while this daemon was away: move
                subnet = self._free_subnet(skip=bridge["Id"])
                bridge["IPAM"]["Config"] = [
                    {"Subnet": str(subnet), "Gateway": str(next(subnet.hosts()))}
                ]
                self.db.update_network(bridge)
            if self.bip and self._bip_config() != bridge["IPAM"]["Config"][0]:
                if self.db.endpoints(network_id=bridge["Id"]):
                    _log("--bip ignored: containers are on the default bridge")
                else:
                    bridge["IPAM"]["Config"] = [self._bip_config()]
                    self.db.update_network(bridge)
        else:
            if self.bip:
                config = self._bip_config()
            else:
                subnet = self._free_subnet()
                config = {"Subnet": str(subnet), "Gateway": str(next(subnet.hosts()))}
            self.db.add_network(
                self._record(
                    "bridge",
                    "bridge",
                    config,
                    options={
                        "com.docker.network.bridge.default_bridge": "true",
                        "com.docker.network.bridge.enable_icc": "true",
                        "com.docker.network.bridge.enable_ip_masquerade": "true",
                        "com.docker.network.bridge.host_binding_ipv4": "0.0.0.0",
                        BRIDGE_NAME_OPTION: self.default_bridge,
                        "com.docker.network.driver.mtu": "1500",
                    },
                    bridge=self.default_bridge,
                )
            )
        for name, driver in (("host", "host"), ("none", "null")):
            if name not in have:
                self.db.add_network(self._record(name, driver, None))

    def _bip_config(self) -> dict[str, str]:
        try:
            interface = ipaddress.IPv4Interface(self.bip)
        except ValueError:
            raise InvalidArgument(f"invalid --bip {self.bip!r}: use e.g. 172.30.0.1/16") from None
        return {"Subnet": str(interface.network), "Gateway": str(interface.ip)}

    def _foreign_routes(self, version: int = 4) -> list[str]:
        """The host's routes and addresses but those through our own bridges."""
        own = frozenset(n["_Bridge"] for n in self._bridges())
        try:
            return links.host_routes(own, version)
        except Exception as exc:  # netlink unavailable: only our own networks count
            _log(f"cannot read the host's routes: {exc}")
            return []

    def _free_subnet(self, skip: str = "") -> ipaddress.IPv4Network:
        taken = [
            c["Subnet"] for n in self._bridges() for c in n["IPAM"]["Config"] if n["Id"] != skip
        ]
        return ipam.pick_subnet([*taken, *self._foreign_routes()])

    @staticmethod
    def _record(
        name: str,
        driver: str,
        config: dict[str, str] | None,
        *,
        options: dict[str, str] | None = None,
        bridge: str = "",
        internal: bool = False,
        attachable: bool = False,
        labels: dict[str, str] | None = None,
        network_id: str = "",
    ) -> dict[str, Any]:
        return {
            "Name": name,
            "Id": network_id or secrets.token_hex(32),
            "Created": _now(),
            "Scope": "local",
            "Driver": driver,
            "EnableIPv6": False,
            "IPAM": {
                "Driver": "default",
                "Options": None if driver != "bridge" or name == "bridge" else {},
                "Config": [config] if config else [],
            },
            "Internal": internal,
            "Attachable": attachable,
            "Ingress": False,
            "ConfigFrom": {"Network": ""},
            "ConfigOnly": False,
            "Options": options or {},
            "Labels": labels or {},
            "_Bridge": bridge,
        }

    def _bridges(self) -> list[dict[str, Any]]:
        return [n for n in self.db.networks() if n["Driver"] == "bridge"]

    async def _ensure_bridge(self, network: dict[str, Any]) -> None:
        """The network's bridge with its gateway addresses (IPv4, and IPv6 if enabled)."""
        config = ipam.v4_config(network)
        prefix = ipaddress.IPv4Network(config["Subnet"]).prefixlen
        config6 = ipam.v6_config(network) or {}
        prefix6 = ipaddress.IPv6Network(config6["Subnet"]).prefixlen if config6 else 0
        await asyncio.to_thread(
            links.ensure_bridge,
            network["_Bridge"],
            config["Gateway"],
            prefix,
            config6.get("Gateway", ""),
            prefix6,
        )

    def _apply(self) -> None:
        bridges = [
            nft.Bridge(n["_Bridge"], n["IPAM"]["Config"][0]["Subnet"], bool(n["Internal"]))
            for n in self._bridges()
        ]
        forwards: list[nft.Forward] = []
        for container_id in self.db.container_ids():
            record = self.db.container(container_id) or {}
            runtime = record.get("Runtime") or {}
            target = runtime.get("PortTarget") or ""
            if not target:
                continue
            for key, bindings in (runtime.get("Ports") or {}).items():
                port, proto = ports.parse_key(key)
                for binding in bindings or []:
                    forwards.append(
                        nft.Forward(
                            proto, binding["HostIp"], int(binding["HostPort"]), target, port
                        )
                    )
        nft.apply(nft.ruleset(self.tag, bridges, forwards))

    # ---- lookups -----------------------------------------------------------------------

    def get(self, ref: str) -> dict[str, Any]:
        found = self.db.find_network("bridge" if ref == "default" else ref)
        if not found:
            raise NotFound(f"network {ref} not found")
        if len(found) > 1:
            raise InvalidArgument(f"network {ref} is ambiguous ({len(found)} matches found)")
        return found[0]

    # ---- containers: create, start, exit, remove -------------------------------------------

    def on_create(
        self, container_id: str, name: str, body: dict[str, Any], mode: str,
        image_config: dict[str, Any],
    ) -> None:  # fmt: skip
        """Validate and record the container's networking; endpoints get addresses."""
        host = body.get("HostConfig") or {}
        asked = ports.requested(body, host, image_config)
        record: dict[str, Any] = {
            "Mode": mode,
            "Ports": asked,
            "Exposed": ports.exposed_keys(body, image_config, asked),
            "Dns": [str(d) for d in host.get("Dns") or []],
            "DnsSearch": [str(d) for d in host.get("DnsSearch") or []],
            "DnsOptions": [str(d) for d in host.get("DnsOptions") or []],
            "ExtraHosts": [str(h) for h in host.get("ExtraHosts") or []],
            "Runtime": {},
        }
        for entry in record["ExtraHosts"]:
            hostname, sep, address = entry.partition(":")
            if not sep or not hostname or not address:
                raise InvalidArgument(f"invalid extra host {entry!r}: use NAME:ADDRESS")
        for server in record["Dns"]:
            try:
                ipaddress.ip_address(server)
            except ValueError:
                raise InvalidArgument(f"invalid DNS server address {server!r}") from None
        endpoints = (body.get("NetworkingConfig") or {}).get("EndpointsConfig") or {}
        if not isinstance(endpoints, dict):
            raise InvalidArgument("NetworkingConfig.EndpointsConfig must be an object")
        if mode.startswith("container:"):
            other = self.containers.get(mode.partition(":")[2])
            if other.id == container_id:
                raise InvalidArgument("cannot join the network namespace of the container itself")
            record["Mode"] = "container:" + other.id
        self.db.set_container(container_id, record)
        if mode in ("host", "none") or mode.startswith("container:"):
            return
        # a network not known yet is looked up again at start, where an unknown one fails
        # (dockerd's order: a 404 from create makes the docker CLI pull the image instead)
        wanted: list[tuple[str, dict[str, Any]]] = [(mode, {})]
        for key, value in endpoints.items():
            if self._same_network(key, mode):
                wanted[0] = (mode, value or {})
            elif not any(self._same_network(key, k) for k, _ in wanted):
                wanted.append((str(key), value or {}))
        record["Unresolved"] = []
        for order, (ref, config) in enumerate(wanted):
            found = self.db.find_network("bridge" if ref == "default" else ref)
            if not found:
                record["Unresolved"].append({"Name": ref, "Config": config, "Order": order})
                continue
            network = self.get(ref)
            if network["Driver"] != "bridge":
                raise InvalidArgument(f"container cannot be connected to network {ref}")
            self._new_endpoint(container_id, name, network, config, order)
        if record["Unresolved"]:
            self.db.set_container(container_id, record)

    def _same_network(self, a: str, b: str) -> bool:
        """Two references (name, id, prefix, ``default``) to one known network, or equal."""
        if a == b:
            return True
        try:
            return bool(self.get(a)["Id"] == self.get(b)["Id"])
        except (NotFound, InvalidArgument):
            return False

    def _resolve_pending(self, container: Container, record: dict[str, Any]) -> None:
        """Networks named at create that did not exist then: they must now (or 404)."""
        pending = record.get("Unresolved") or []
        for item in pending:
            network = self.get(item["Name"])
            if network["Driver"] != "bridge":
                raise InvalidArgument(f"container cannot be connected to network {item['Name']}")
        for item in pending:
            network = self.get(item["Name"])
            if not any(
                e["NetworkID"] == network["Id"]
                for e in self.db.endpoints(container_id=container.id)
            ):
                self._new_endpoint(
                    container.id, container.name, network, item["Config"], item["Order"]
                )
            if record["Mode"] == item["Name"]:
                record["Mode"] = network["Name"]
        record["Unresolved"] = []
        self.db.set_container(container.id, record)

    def _new_endpoint(
        self,
        container_id: str,
        name: str,
        network: dict[str, Any],
        config: dict[str, Any],
        order: int,
    ) -> dict[str, Any]:
        aliases = [str(a) for a in config.get("Aliases") or []]
        ipam_config = config.get("IPAMConfig") or {}
        wanted = str(ipam_config.get("IPv4Address") or "")
        user_defined = network["Name"] != "bridge"
        if aliases and not user_defined:
            raise InvalidArgument(
                "network-scoped alias is supported only for containers in user defined networks"
            )
        if wanted and not user_defined:
            raise InvalidArgument(
                "user specified IP address is supported on user defined networks only"
            )
        wanted6 = str(ipam_config.get("IPv6Address") or "")
        if wanted6 and not user_defined:
            raise InvalidArgument(
                "user specified IP address is supported on user defined networks only"
            )
        subnet_config = ipam.v4_config(network)
        address = ipam.allocate(subnet_config, self.db.used_addresses(network["Id"]), wanted)
        config6 = ipam.v6_config(network)
        if wanted6 and config6 is None:
            raise InvalidArgument(
                f"IPv6 address {wanted6} given, but network {network['Name']} has no IPv6:"
                " create it with --ipv6 (and an IPv6 --subnet)"
            )
        address6 = ""
        if config6 is not None:
            used6 = self.db.used_addresses(network["Id"], version=6)
            address6 = ipam.allocate(config6, used6, wanted6)
        mac = str(config.get("MacAddress") or "") or ipam.mac_for(address)
        short = container_id[:12]
        endpoint = {
            "ContainerID": container_id,
            "NetworkID": network["Id"],
            "EndpointID": secrets.token_hex(32),
            "IPAddress": address,
            "IPPrefixLen": ipaddress.IPv4Network(subnet_config["Subnet"]).prefixlen,
            "Gateway": "" if network["Internal"] else subnet_config.get("Gateway", ""),
            "BridgeGateway": subnet_config.get("Gateway", ""),
            "MacAddress": mac,
            "GlobalIPv6Address": address6,
            "GlobalIPv6PrefixLen": (
                ipaddress.IPv6Network(config6["Subnet"]).prefixlen if config6 else 0
            ),
            "IPv6Gateway": (
                "" if network["Internal"] or config6 is None else config6.get("Gateway", "")
            ),
            "BridgeGateway6": (config6 or {}).get("Gateway", ""),
            # as dockerd since API 1.45: Aliases are the user's, DNSNames add name and short id
            "Aliases": (aliases or None) if user_defined else None,
            "DNSNames": ([short, *aliases] if user_defined else None),
            "IPAMConfig": ({k: v for k, v in ipam_config.items() if v} or None),
            "Links": config.get("Links") or None,
            "DriverOpts": config.get("DriverOpts") or None,
            "MacConfig": str(config.get("MacAddress") or ""),  # shown while not running
            "Veth": veth_name(container_id, network["Id"]),
            "Order": order,
        }
        self.db.add_endpoint(endpoint)
        return endpoint

    def _set_runtime(self, container_id: str, runtime: dict[str, Any]) -> None:
        record = self.db.container(container_id)
        if record is not None:
            record["Runtime"] = runtime
            self.db.set_container(container_id, record)

    async def setup(self, container: Container) -> str:
        """Before a start: the namespace (path for the OCI config; "" = the host's)."""
        async with self._lock:
            record = self.db.container(container.id)
            if record is None:  # made before networking existed: loopback only
                record = {"Mode": "none", "Ports": [], "Exposed": [], "Runtime": {}}
                self.db.set_container(container.id, record)
            mode = record["Mode"]
            if mode == "host":
                return ""
            if mode.startswith("container:"):
                return self._join(container, mode.partition(":")[2])
            if record.get("Unresolved"):
                self._resolve_pending(container, record)
            path = os.path.join(self.netns_dir, container.id)
            self._teardown_sync(container.id, apply=False)
            try:
                netns.prepare_dir(self.netns_dir)
                netns.create(path)
                endpoints = self.db.endpoints(container_id=container.id)
                if not endpoints:
                    await asyncio.to_thread(links.loopback_up, path)
                for index, endpoint in enumerate(endpoints):
                    network = self.db.network(endpoint["NetworkID"])
                    if network is None:
                        raise NotFound(f"network {endpoint['NetworkID']} not found")
                    await _attach(path, endpoint, f"eth{index}", network["_Bridge"])
                runtime: dict[str, Any] = {"Netns": path, "Ports": {}, "PortTarget": ""}
                if endpoints and record.get("Ports"):
                    runtime["PortTarget"] = endpoints[0]["IPAddress"]
                    runtime["Ports"] = self._reserve(container.id, record["Ports"])
                self._set_runtime(container.id, runtime)
                self._write_etc(container, record, endpoints)
                self._apply()
            except BaseException:
                self._teardown_sync(container.id)
                raise
            return path

    def _join(self, container: Container, other_id: str) -> str:
        other = self.containers.get(other_id)
        if other.status != "running":
            raise Conflict(f"cannot join network of a non running container: {other.id}")
        other_record = self.db.container(other.id) or {}
        if other_record.get("Mode") == "host":
            return f"/proc/{os.getpid()}/ns/net"
        path = (other_record.get("Runtime") or {}).get("Netns") or ""
        if not path and other_record.get("Mode", "").startswith("container:"):
            return self._join(container, other_record["Mode"].partition(":")[2])
        if not path:
            path = f"/proc/{other.state['Pid']}/ns/net"
        for name in ("hosts", "resolv.conf"):
            source = os.path.join(self.containers.state_dir(other.id), name)
            with contextlib.suppress(OSError), open(source, "rb") as f:
                _write_atomic(os.path.join(self.containers.state_dir(container.id), name), f.read())
        return path

    def _reserve(self, container_id: str, asked: list[dict[str, Any]]) -> dict[str, Any]:
        held: list[socket.socket] = []
        result: dict[str, list[dict[str, str]]] = {}
        try:
            for request in asked:
                sock, port = ports.reserve(
                    request["host_ip"], request["proto"], request["first"], request["last"]
                )
                held.append(sock)
                key = f"{request['port']}/{request['proto']}"
                result.setdefault(key, []).append(
                    {"HostIp": request["host_ip"] or "0.0.0.0", "HostPort": str(port)}
                )
        except BaseException:
            for sock in held:
                sock.close()
            raise
        self._held[container_id] = held
        return result

    def _reserve_again(self, container_id: str) -> None:
        """After a daemon restart: hold the running container's ports again."""
        runtime = (self.db.container(container_id) or {}).get("Runtime") or {}
        held = []
        for key, bindings in (runtime.get("Ports") or {}).items():
            _, proto = ports.parse_key(key)
            for binding in bindings:
                port = int(binding["HostPort"])
                host_ip = "" if binding["HostIp"] == "0.0.0.0" else binding["HostIp"]
                try:
                    held.append(ports.reserve(host_ip, proto, port, port)[0])
                except BerthError as exc:
                    _log(f"{container_id[:12]}: {exc}")
        self._held[container_id] = held

    def _write_etc(
        self, container: Container, record: dict[str, Any], endpoints: list[dict[str, Any]]
    ) -> None:
        """/etc/hosts and /etc/resolv.conf of the container (before its start)."""
        state_dir = self.containers.state_dir(container.id)
        spec = container.spec
        hostname = spec.hostname or container.id[:12]
        lines = [
            "127.0.0.1\tlocalhost",
            "::1\tlocalhost ip6-localhost ip6-loopback",
            "fe00::0\tip6-localnet",
            "ff00::0\tip6-mcastprefix",
            "ff02::1\tip6-allnodes",
            "ff02::2\tip6-allrouters",
        ]
        for entry in record.get("ExtraHosts") or []:
            name, _, address = entry.partition(":")
            lines.append(f"{address}\t{name}")
        if endpoints:
            names = hostname + (f".{spec.domainname}\t{hostname}" if spec.domainname else "")
            lines.append(f"{endpoints[0]['IPAddress']}\t{names}")
            if endpoints[0].get("GlobalIPv6Address"):
                lines.append(f"{endpoints[0]['GlobalIPv6Address']}\t{names}")
        _write_atomic(os.path.join(state_dir, "hosts"), ("\n".join(lines) + "\n").encode())
        embedded = next(
            (e["BridgeGateway"] for e in endpoints if self._user_defined(e["NetworkID"])), ""
        )
        servers = record.get("Dns") or []
        host_lines = _host_resolv()
        search = record.get("DnsSearch") or [
            w
            for line in host_lines
            if line.startswith(("search", "domain"))
            for w in line.split()[1:]
        ]
        options = record.get("DnsOptions") or []
        if embedded:
            servers = [embedded]
            options = (
                [*options, "ndots:0"]
                if not any(o.startswith("ndots") for o in options)
                else options
            )
        elif not servers:
            servers = _forwarded_servers(host_lines)
        text = "".join(f"nameserver {s}\n" for s in servers)
        if search:
            text += "search " + " ".join(search) + "\n"
        if options:
            text += "options " + " ".join(options) + "\n"
        _write_atomic(os.path.join(state_dir, "resolv.conf"), text.encode())

    def _user_defined(self, network_id: str) -> bool:
        network = self.db.network(network_id)
        return network is not None and network["Name"] != "bridge" and network["Driver"] == "bridge"

    async def teardown(self, container_id: str) -> None:
        """After an exit: namespace, veths, port reservations and rules go."""
        async with self._lock:
            self._teardown_sync(container_id)

    def _teardown_sync(self, container_id: str, apply: bool = True) -> None:
        """Every part that exists goes; an absent or stubborn part is logged, never
        raised: this runs on failure paths and on exits, where an exception would
        leave the rest behind (or stop the daemon)."""
        for sock in self._held.pop(container_id, []):
            sock.close()
        try:
            record = self.db.container(container_id)
        except Exception as exc:
            _log(f"{container_id[:12]}: cannot read the network record: {exc}")
            record = None
        try:
            endpoints = self.db.endpoints(container_id=container_id) if record else []
        except Exception as exc:
            _log(f"{container_id[:12]}: cannot read the endpoints: {exc}")
            endpoints = []
        for endpoint in endpoints:
            try:
                links.delete_link(endpoint["Veth"])
            except Exception as exc:
                _log(f"cannot delete {endpoint['Veth']}: {exc}")
        try:
            netns.remove(os.path.join(self.netns_dir, container_id))
        except Exception as exc:
            _log(f"{container_id[:12]}: cannot remove the network namespace: {exc}")
        if record is None:
            return
        had_ports = bool((record.get("Runtime") or {}).get("Ports"))
        try:
            self._set_runtime(container_id, {})
            if apply and had_ports:
                self._apply()
        except Exception as exc:
            _log(f"{container_id[:12]}: cannot update the rules: {exc}")

    def remove_container(self, container_id: str) -> None:
        """The container is removed (or its create failed): release everything."""
        self._teardown_sync(container_id)
        try:
            self.db.forget_container(container_id)
        except Exception as exc:
            _log(f"{container_id[:12]}: cannot forget the network record: {exc}")

    # ---- inspect data --------------------------------------------------------------------

    def settings(self, container: Container) -> dict[str, Any]:
        """``NetworkSettings`` of container inspect."""
        record = self.db.container(container.id) or {"Mode": container.spec.network_mode}
        runtime = record.get("Runtime") or {}
        running = container.status == "running" and bool(runtime)
        result: dict[str, Any] = {
            "Bridge": "",
            "SandboxID": hashlib.sha256(container.id.encode()).hexdigest() if running else "",
            "HairpinMode": False,
            "LinkLocalIPv6Address": "",
            "LinkLocalIPv6PrefixLen": 0,
            "Ports": {},
            "SandboxKey": runtime.get("Netns", "") if running else "",
            "SecondaryIPAddresses": None,
            "SecondaryIPv6Addresses": None,
            "EndpointID": "",
            "Gateway": "",
            "GlobalIPv6Address": "",
            "GlobalIPv6PrefixLen": 0,
            "IPAddress": "",
            "IPPrefixLen": 0,
            "IPv6Gateway": "",
            "MacAddress": "",
            "Networks": {},
        }
        if running:
            published = runtime.get("Ports") or {}
            result["Ports"] = {key: published.get(key) for key in record.get("Exposed") or []}
        mode = record.get("Mode", "none")
        if mode in ("host", "none"):
            network = self.get(mode)
            result["Networks"][mode] = _endpoint_view(None, network["Id"])
            return result
        for endpoint in self.db.endpoints(container_id=container.id):
            network = self.db.network(endpoint["NetworkID"]) or {"Name": endpoint["NetworkID"]}
            view = _endpoint_view(endpoint if running else None, endpoint["NetworkID"], endpoint)
            if view["DNSNames"]:
                view["DNSNames"] = [container.name, *view["DNSNames"]]
            result["Networks"][network["Name"]] = view
            if network["Name"] == "bridge" and running:
                for key in ("EndpointID", "Gateway", "IPAddress", "IPPrefixLen", "MacAddress"):
                    result[key] = view[key]
        return result

    def host_config(self, container: Container) -> dict[str, Any]:
        host = container.data.get("HostConfig") or {}
        return {
            "PortBindings": host.get("PortBindings") or {},
            "PublishAllPorts": bool(host.get("PublishAllPorts")),
            "Dns": host.get("Dns") or [],
            "DnsOptions": host.get("DnsOptions") or [],
            "DnsSearch": host.get("DnsSearch") or [],
            "ExtraHosts": host.get("ExtraHosts"),
        }

    def port_list(self, container: Container) -> list[dict[str, Any]]:
        """``Ports`` of /containers/json."""
        record = self.db.container(container.id) or {}
        runtime = record.get("Runtime") or {}
        published = runtime.get("Ports") or {} if container.status == "running" else {}
        result: list[dict[str, Any]] = []
        for key in record.get("Exposed") or []:
            port, proto = ports.parse_key(key)
            bindings = published.get(key) or []
            if not bindings:
                result.append({"PrivatePort": port, "Type": proto})
            for binding in bindings:
                result.append(
                    {
                        "IP": binding["HostIp"],
                        "PrivatePort": port,
                        "PublicPort": int(binding["HostPort"]),
                        "Type": proto,
                    }
                )
        return result

    # ---- the networks API --------------------------------------------------------------------

    async def create(self, body: dict[str, Any]) -> dict[str, str]:
        name = body.get("Name")
        if not isinstance(name, str) or not name:
            raise InvalidArgument("network name is required: give Name")
        if not _NAME.fullmatch(name):
            raise InvalidArgument(f"invalid network name {name!r}")
        driver = body.get("Driver") or "bridge"
        if driver in ("host", "null"):
            raise Conflict(f'only one instance of "{driver}" network is allowed')
        if driver != "bridge":
            raise NotFound(f"plugin {driver!r} not found: only the bridge driver is available")
        if body.get("Ingress"):
            raise InvalidArgument("ingress networks need swarm mode, which Berth does not have")
        if body.get("ConfigOnly") or (body.get("ConfigFrom") or {}).get("Network"):
            raise InvalidArgument("config-only networks are not supported")
        labels = body.get("Labels") or {}
        options = body.get("Options") or {}
        if not isinstance(labels, dict) or not isinstance(options, dict):
            raise InvalidArgument("Labels and Options must be objects of strings")
        if self.db.find_network(name) and any(
            n["Name"] == name for n in self.db.find_network(name)
        ):
            raise Conflict(f"network with name {name} already exists")
        ipam_body = body.get("IPAM") or {}
        if (ipam_body.get("Driver") or "default") != "default":
            raise InvalidArgument(f"IPAM driver {ipam_body.get('Driver')!r} is not supported")
        configs = [c for c in ipam_body.get("Config") or [] if c]
        enable_ipv6 = bool(body.get("EnableIPv6"))
        pools = self._subnet_configs(configs, enable_ipv6)
        bridge_name = str(options.get(BRIDGE_NAME_OPTION) or "")
        network_id = secrets.token_hex(32)
        if not bridge_name:
            bridge_name = USER_BRIDGE_PREFIX + network_id[:11]
        elif len(bridge_name) > 15 or any(n["_Bridge"] == bridge_name for n in self._bridges()):
            raise InvalidArgument(f"invalid or taken bridge name {bridge_name!r}")
        record = self._record(
            name,
            "bridge",
            pools[0],
            options={str(k): str(v) for k, v in options.items()},
            bridge=bridge_name,
            internal=bool(body.get("Internal")),
            attachable=bool(body.get("Attachable")),
            labels={str(k): str(v) for k, v in labels.items()},
            network_id=network_id,
        )
        record["IPAM"]["Options"] = ipam_body.get("Options")  # absent: null, as dockerd
        record["IPAM"]["Config"] = pools
        record["EnableIPv6"] = enable_ipv6
        async with self._lock:
            self.db.add_network(record)
            try:
                await self._ensure_bridge(record)
                self._apply()
                await self._start_dns(record)
            except BaseException:
                self.db.delete_network(network_id)
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(links.delete_link, bridge_name)
                with contextlib.suppress(Exception):
                    self._apply()
                raise
        self.containers.events.publish(
            "network", "create", network_id, {"name": name, "type": "bridge"}
        )
        return {"Id": network_id, "Warning": ""}

    def _subnet_configs(
        self, configs: list[dict[str, Any]], enable_ipv6: bool
    ) -> list[dict[str, Any]]:
        """``IPAM.Config`` of a new network: its IPv4 pool first (given or picked), then
        its IPv6 one (given; picked from the daemon's ULA /48 for ``--ipv6`` alone)."""
        v4: list[dict[str, Any]] = []
        v6: list[dict[str, Any]] = []
        for item in configs:
            text = str(item.get("Subnet") or item.get("Gateway") or item.get("IPRange") or "")
            (v6 if ":" in text else v4).append(item)
        if len(v4) > 1 or len(v6) > 1:
            raise InvalidArgument("only one IPv4 and one IPv6 subnet per network are supported")
        result = [self._pool(v4[0] if v4 else {}, 4)]
        if v6 or enable_ipv6:
            result.append(self._pool(v6[0] if v6 else {}, 6))
        return result

    def _pool(self, item: dict[str, Any], version: int) -> dict[str, Any]:
        """One checked pool: subnet (picked when absent), gateway, range, aux addresses."""
        taken = [c["Subnet"] for n in self._bridges() for c in n["IPAM"]["Config"]]
        family = f"IPv{version}"
        if not item.get("Subnet"):
            if item.get("Gateway") or item.get("IPRange") or item.get("AuxiliaryAddresses"):
                raise InvalidArgument("a gateway or IP range needs a subnet (--subnet)")
            if version == 4:
                picked: Any = self._free_subnet()
            else:
                foreign = self._foreign_routes(version=6)
                picked = ipam.pick_subnet6([*taken, *foreign], seed=self.netns_dir)
            return {"Subnet": str(picked), "Gateway": str(next(picked.hosts()))}
        try:
            subnet = ipaddress.ip_network(str(item["Subnet"]), strict=False)
        except ValueError:
            raise InvalidArgument(f"invalid subnet {item['Subnet']!r}") from None
        if subnet.version != version:
            raise InvalidArgument(f"invalid {family} subnet {item['Subnet']!r}")
        if subnet.max_prefixlen - subnet.prefixlen < 2:
            raise InvalidArgument(f"subnet {subnet} is too small")
        for other in taken:
            other_net = ipaddress.ip_network(other)
            if other_net.version == version and subnet.overlaps(other_net):
                raise Conflict(f"Pool overlaps with other one on this address space: {other}")

        def address_in(what: str, text: str) -> str:
            try:
                address = ipaddress.ip_address(text)
            except ValueError:
                raise InvalidArgument(f"invalid {what} {text!r}") from None
            if address.version != version or address not in subnet:
                raise InvalidArgument(f"{what} {text} is not in subnet {subnet}")
            return str(address)

        gateway = str(item.get("Gateway") or next(subnet.hosts()))
        result: dict[str, Any] = {
            "Subnet": str(subnet),
            "Gateway": address_in("gateway", gateway),
        }
        if item.get("IPRange"):
            try:
                ip_range = ipaddress.ip_network(str(item["IPRange"]), strict=False)
            except ValueError:
                raise InvalidArgument(f"invalid IP range {item['IPRange']!r}") from None
            if ip_range.version != version or not ip_range.subnet_of(subnet):  # type: ignore[arg-type]
                raise InvalidArgument(f"IP range {ip_range} is not within subnet {subnet}")
            result["IPRange"] = str(ip_range)
        aux = item.get("AuxiliaryAddresses") or {}
        if not isinstance(aux, dict):
            raise InvalidArgument("AuxiliaryAddresses must be an object of name: address")
        checked = {str(k): address_in(f"auxiliary address {k}=", str(v)) for k, v in aux.items()}
        if checked:  # held back from allocation (ipam.allocate)
            result["AuxiliaryAddresses"] = checked
        return result

    async def _start_dns(self, network: dict[str, Any]) -> None:
        if network["Name"] == "bridge" or network["Id"] in self._dns:
            return
        address = network["IPAM"]["Config"][0]["Gateway"]
        listener = Listener(self.resolver, address, forward=not network["Internal"])
        try:
            await listener.start()
        except OSError as exc:
            _log(f"embedded DNS on {address}:53 of {network['Name']}: {exc}")
            return
        self._dns[network["Id"]] = listener

    def _lookup(self, client: str, name: str) -> list[str] | None:
        """Addresses (IPv4 and IPv6) for ``name`` among running containers on the asker's
        user networks."""
        asking = [
            e
            for n in self._bridges()
            if n["Name"] != "bridge"
            for e in self.db.endpoints(network_id=n["Id"])
            if client in (e["IPAddress"], e.get("GlobalIPv6Address"))
        ]
        for endpoint in asking:  # --link on a user network: an alias only its owner sees
            for link in endpoint.get("Links") or []:
                target, _, alias = str(link).partition(":")
                if name == (alias or target).lower().lstrip("/"):
                    name = target.lower().lstrip("/")
        network_ids = {e["NetworkID"] for e in asking}
        if not network_ids:
            network_ids = {nid for nid, listener in self._dns.items() if listener.address == client}
        found: list[str] = []
        for network_id in network_ids:
            for endpoint in self.db.endpoints(network_id=network_id):
                record = self.containers.db.get(endpoint["ContainerID"])
                if record is None or record["State"]["Status"] != "running":
                    continue
                names = {record["Name"].lower(), endpoint["ContainerID"][:12]}
                names.update(a.lower() for a in endpoint.get("Aliases") or [])
                service = (record["Spec"].get("labels") or {}).get("com.docker.compose.service")
                if service:
                    names.add(service.lower())
                if name in names:
                    for address in (endpoint["IPAddress"], endpoint.get("GlobalIPv6Address")):
                        if address and address not in found:
                            found.append(address)
        return found or None

    def inspect(self, ref: str) -> dict[str, Any]:
        network = self.get(ref)
        view = {k: v for k, v in network.items() if not k.startswith("_")}
        containers: dict[str, Any] = {}
        for endpoint in self.db.endpoints(network_id=network["Id"]):
            record = self.containers.db.get(endpoint["ContainerID"])
            if record is None or record["State"]["Status"] != "running":
                continue
            containers[endpoint["ContainerID"]] = {
                "Name": record["Name"],
                "EndpointID": endpoint["EndpointID"],
                "MacAddress": endpoint["MacAddress"],
                "IPv4Address": f"{endpoint['IPAddress']}/{endpoint['IPPrefixLen']}",
                "IPv6Address": (
                    f"{endpoint['GlobalIPv6Address']}/{endpoint['GlobalIPv6PrefixLen']}"
                    if endpoint.get("GlobalIPv6Address")
                    else ""
                ),
            }
        if network["Driver"] in ("host", "null"):
            for record in self.containers.db.all():
                mode = record["Spec"].get("network_mode")
                if mode == network["Name"] and record["State"]["Status"] == "running":
                    containers[record["Id"]] = {
                        "Name": record["Name"], "EndpointID": "", "MacAddress": "",
                        "IPv4Address": "", "IPv6Address": "",
                    }  # fmt: skip
        view["Containers"] = containers
        return view

    def list_networks(self, filters: dict[str, Any]) -> list[dict[str, Any]]:
        def values(key: str) -> list[str]:
            return filter_values(filters, key)

        result = []
        for network in self.db.networks():
            if (names := values("name")) and not any(n in network["Name"] for n in names):
                continue
            if (ids := values("id")) and not any(network["Id"].startswith(i) for i in ids):
                continue
            if (drivers := values("driver")) and network["Driver"] not in drivers:
                continue
            builtin = network["Name"] in PREDEFINED
            if (types := values("type")) and ("builtin" if builtin else "custom") not in types:
                continue
            labels_ok = True
            for label in values("label"):
                key, eq, value = label.partition("=")
                if key not in network["Labels"] or (eq and network["Labels"][key] != value):
                    labels_ok = False
            if not labels_ok:
                continue
            if values("dangling"):
                dangling = values("dangling")[0] in ("true", "1")
                unused = not builtin and not self.db.endpoints(network_id=network["Id"])
                if dangling != unused:
                    continue
            result.append(self.inspect(network["Id"]))
        return result

    async def remove(self, ref: str) -> None:
        network = self.get(ref)
        if network["Name"] in PREDEFINED:
            raise Conflict(f"{network['Name']} is a pre-defined network and cannot be removed")
        async with self._lock:
            endpoints = self.db.endpoints(network_id=network["Id"])
            active = [e for e in endpoints if self._running(e["ContainerID"])]
            if active:
                raise Conflict(
                    f"error while removing network: network {network['Name']} id"
                    f" {network['Id']} has active endpoints"
                )
            for endpoint in endpoints:  # stopped containers lose the network (Docker's rule)
                self.db.delete_endpoint(endpoint["ContainerID"], network["Id"])
            listener = self._dns.pop(network["Id"], None)
            if listener is not None:
                await listener.stop()
            self.db.delete_network(network["Id"])
            await asyncio.to_thread(links.delete_link, network["_Bridge"])
            self._apply()
        self.containers.events.publish(
            "network", "destroy", network["Id"], {"name": network["Name"], "type": "bridge"}
        )

    async def prune(self, filters: dict[str, Any]) -> list[str]:
        deleted = []
        until = [until_epoch(v) for v in _values(filters, "until")]
        for network in self.db.networks():
            if network["Name"] in PREDEFINED or self.db.endpoints(network_id=network["Id"]):
                continue
            if any(rfc3339_epoch(network["Created"]) >= u for u in until):
                continue
            labels = network["Labels"] or {}
            if not all(label_matches(labels, f) for f in _values(filters, "label")):
                continue
            if any(label_matches(labels, f) for f in _values(filters, "label!")):
                continue
            with contextlib.suppress(NotFound, Conflict):
                await self.remove(network["Id"])
                deleted.append(network["Name"])
        return deleted

    async def connect(self, ref: str, container_ref: str, config: dict[str, Any]) -> None:
        network = self.get(ref)
        container = self.containers.get(container_ref)
        record = self.db.container(container.id)
        mode = (record or {}).get("Mode") or container.spec.network_mode
        if network["Driver"] != "bridge":
            raise Conflict(f"container cannot be connected to the {network['Name']} network")
        if mode in ("host", "none") or mode.startswith("container:"):
            raise Conflict(
                f"container sharing network namespace with another container or host cannot be"
                f" connected to any other network (network mode {mode})"
            )
        async with self._lock:
            if any(
                e["NetworkID"] == network["Id"]
                for e in self.db.endpoints(container_id=container.id)
            ):
                raise Conflict(
                    f"endpoint with name {container.name} already exists in network"
                    f" {network['Name']}"
                )
            order = 1 + max(
                (e["Order"] for e in self.db.endpoints(container_id=container.id)), default=-1
            )
            endpoint = self._new_endpoint(container.id, container.name, network, config, order)
            runtime = (record or {}).get("Runtime") or {}
            if container.status == "running" and runtime.get("Netns"):
                try:
                    ifname = await asyncio.to_thread(links.free_ifname, runtime["Netns"])
                    await _attach(runtime["Netns"], endpoint, ifname, network["_Bridge"])
                except BaseException:
                    self.db.delete_endpoint(container.id, network["Id"])
                    raise
        self.containers.events.publish(
            "network",
            "connect",
            network["Id"],
            {"container": container.id, "name": network["Name"], "type": "bridge"},
        )

    async def disconnect(self, ref: str, container_ref: str, force: bool = False) -> None:
        network = self.get(ref)
        try:
            container = self.containers.get(container_ref)
        except NotFound:
            if force:
                return
            raise
        async with self._lock:
            if not any(
                e["NetworkID"] == network["Id"]
                for e in self.db.endpoints(container_id=container.id)
            ):
                raise Conflict(
                    f"container {container.id} is not connected to network {network['Name']}"
                )
            endpoint = next(
                e
                for e in self.db.endpoints(container_id=container.id)
                if e["NetworkID"] == network["Id"]
            )
            await asyncio.to_thread(links.delete_link, endpoint["Veth"])
            self.db.delete_endpoint(container.id, network["Id"])
            record = self.db.container(container.id) or {}
            if record.get("Mode") == network["Name"] or record.get("Mode") == network["Id"]:
                rest = self.db.endpoints(container_id=container.id)
                if rest:  # the container's mode names the network it had first
                    first = self.db.network(rest[0]["NetworkID"]) or {}
                    record["Mode"] = first.get("Name", record["Mode"])
                    self.db.set_container(container.id, record)
            self._apply()
        self.containers.events.publish(
            "network",
            "disconnect",
            network["Id"],
            {"container": container.id, "name": network["Name"], "type": "bridge"},
        )

    # ---- build sandboxes --------------------------------------------------------------------

    async def build_sandbox(
        self, sandbox_id: str, ref: str, hostname: str, extra_hosts: list[str]
    ) -> BuildSandbox:
        """A RUN step's network stack, as dockerd gives its build containers: a namespace
        on the default bridge (or the named bridge network, with its embedded DNS), NAT
        out. The record says ``Build``, so a daemon that starts after a crash forgets it."""
        network = self.get("bridge" if ref in ("", "default") else ref)
        if network["Driver"] != "bridge":
            raise InvalidArgument(f"a build cannot use network {ref}: not a bridge network")
        hosts = [
            "127.0.0.1\tlocalhost",
            "::1\tlocalhost ip6-localhost ip6-loopback",
            *(f"{a}\t{n}" for n, _, a in (e.partition(":") for e in extra_hosts)),
        ]
        async with self._lock:
            path = os.path.join(self.netns_dir, sandbox_id)
            self.db.set_container(sandbox_id, {"Mode": network["Name"], "Build": True})
            try:
                endpoint = self._new_endpoint(sandbox_id, "", network, {}, 0)
                netns.prepare_dir(self.netns_dir)
                netns.create(path)
                await _attach(path, endpoint, "eth0", network["_Bridge"])
            except BaseException:
                self.remove_container(sandbox_id)
                raise
        hosts.append(f"{endpoint['IPAddress']}\t{hostname}")
        host_lines = _host_resolv()
        if self._user_defined(network["Id"]):
            resolv = f"nameserver {endpoint['BridgeGateway']}\noptions ndots:0\n"
        else:
            resolv = "".join(f"nameserver {s}\n" for s in _forwarded_servers(host_lines))
        search = [w for line in host_lines if line.startswith("search") for w in line.split()[1:]]
        if search:
            resolv += "search " + " ".join(search) + "\n"
        return BuildSandbox(path, "\n".join(hosts) + "\n", resolv)

    async def release_build_sandbox(self, sandbox_id: str) -> None:
        async with self._lock:
            self.remove_container(sandbox_id)


@dataclass
class BuildSandbox:
    """What a RUN step joins: the namespace path and its /etc/hosts and resolv.conf."""

    netns: str
    hosts: str
    resolv: str


def _forwarded_servers(host_lines: list[str]) -> list[str]:
    """The host's resolvers a container can reach (not the host's loopback ones)."""
    return [s for s in _resolv_servers(host_lines) if not re.match(r"^(127\.|::1$)", s)] or [
        "8.8.8.8",
        "8.8.4.4",
    ]


def _endpoint_view(
    live: dict[str, Any] | None, network_id: str, stored: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One entry of ``NetworkSettings.Networks`` (addresses only while running)."""
    stored = stored or {}
    live = live or {}
    return {
        "IPAMConfig": stored.get("IPAMConfig"),
        "Links": stored.get("Links"),
        "Aliases": stored.get("Aliases"),
        "MacAddress": live.get("MacAddress") or stored.get("MacConfig", ""),
        "DriverOpts": stored.get("DriverOpts"),
        "NetworkID": network_id,
        "EndpointID": live.get("EndpointID", ""),
        "Gateway": live.get("Gateway", ""),
        "IPAddress": live.get("IPAddress", ""),
        "IPPrefixLen": live.get("IPPrefixLen", 0),
        "IPv6Gateway": live.get("IPv6Gateway", ""),
        "GlobalIPv6Address": live.get("GlobalIPv6Address", ""),
        "GlobalIPv6PrefixLen": live.get("GlobalIPv6PrefixLen", 0),
        "DNSNames": (stored.get("DNSNames") or None) if live else None,
    }


async def _attach(path: str, endpoint: dict[str, Any], ifname: str, bridge: str) -> None:
    """The endpoint's veth pair, addresses and routes (``links.attach`` off the loop)."""
    v6: dict[str, Any] = {}
    if endpoint.get("GlobalIPv6Address"):
        v6 = {
            "address6": endpoint["GlobalIPv6Address"],
            "prefixlen6": endpoint["GlobalIPv6PrefixLen"],
            "gateway6": endpoint.get("IPv6Gateway", ""),
        }
    await asyncio.to_thread(
        links.attach,
        path,
        host_name=endpoint["Veth"],
        ifname=ifname,
        bridge=bridge,
        address=endpoint["IPAddress"],
        prefixlen=endpoint["IPPrefixLen"],
        mac=endpoint["MacAddress"],
        gateway=endpoint["Gateway"],
        **v6,
    )


def _host_resolv() -> list[str]:
    try:
        with open("/etc/resolv.conf") as f:
            return [line.strip() for line in f]
    except OSError:
        return []


def _resolv_servers(lines: list[str]) -> list[str]:
    return [
        line.split()[1] for line in lines if line.startswith("nameserver") and len(line.split()) > 1
    ]


def _write_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp{os.getpid()}{time.monotonic_ns()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.rename(tmp, path)
