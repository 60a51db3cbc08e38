"""``berth network create/ls/inspect/rm/connect/disconnect/prune`` and the network flags
of ``berth run``/``create`` (-p, -P, --expose, --network-alias, --ip, --add-host, --dns,
--dns-search, --dns-option), printing what the docker CLI prints."""

from __future__ import annotations

import argparse
import sys
from argparse import Namespace

from berth.cli.app import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:  # berth.client (http.client) loads in app._call
    from typing import Any

    from berth.client import Client

HEADERS = {
    "ID": "NETWORK ID",
    "Name": "NAME",
    "Driver": "DRIVER",
    "Scope": "SCOPE",
    "IPv6": "IPV6",
    "Internal": "INTERNAL",
    "Labels": "LABELS",
    "CreatedAt": "CREATED AT",
}

# ---- argument builders (app.VERBS reaches them through app._builder) ----------------------


def create_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-d", "--driver", default="bridge", metavar="DRIVER", help="bridge")
    p.add_argument("--subnet", action="append", default=[], metavar="CIDR")
    p.add_argument("--gateway", action="append", default=[], metavar="ADDRESS")
    p.add_argument("--ip-range", action="append", default=[], metavar="CIDR")
    p.add_argument("--aux-address", action="append", default=[], metavar="NAME=ADDRESS")
    p.add_argument("--internal", action="store_true", help="no route out of the network")
    p.add_argument("--attachable", action="store_true")
    p.add_argument("--ipv6", action="store_true", help="IPv6 too (a ULA /64 without --subnet)")
    p.add_argument("-l", "--label", action="append", default=[], metavar="KEY[=VALUE]")
    p.add_argument("-o", "--opt", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("name", metavar="NAME")


def ls_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="only IDs")
    p.add_argument("-f", "--filter", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--format", metavar="json|table|TEMPLATE")
    p.add_argument("--no-trunc", action="store_true", help="full IDs")


def inspect_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--format", metavar="TEMPLATE")
    p.add_argument("names", nargs="+", metavar="NETWORK")


def rm_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true", help="no error for a missing network")
    p.add_argument("names", nargs="+", metavar="NETWORK")


def connect_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--alias", action="append", default=[], metavar="NAME")
    p.add_argument("--ip", metavar="ADDRESS")
    p.add_argument("--ip6", metavar="ADDRESS")
    p.add_argument("--link", action="append", default=[], metavar="CONTAINER[:ALIAS]")
    p.add_argument("network", metavar="NETWORK")
    p.add_argument("container", metavar="CONTAINER")


def disconnect_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true")
    p.add_argument("network", metavar="NETWORK")
    p.add_argument("container", metavar="CONTAINER")


def prune_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true", help="do not ask")
    p.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE")


def run_arguments(p: argparse.ArgumentParser) -> None:
    """The network flags of ``run`` and ``create``."""
    p.add_argument("-p", "--publish", action="append", default=[], metavar="[IP:][HOST:]PORT")
    p.add_argument("-P", "--publish-all", action="store_true", help="publish exposed ports")
    p.add_argument("--expose", action="append", default=[], metavar="PORT[/PROTO]")
    p.add_argument("--network-alias", action="append", default=[], metavar="NAME")
    p.add_argument("--ip", metavar="ADDRESS", help="IPv4 address on a user network")
    p.add_argument("--ip6", metavar="ADDRESS", help="IPv6 address on a user network")
    p.add_argument("--add-host", action="append", default=[], metavar="NAME:ADDRESS")
    p.add_argument("--dns", action="append", default=[], metavar="ADDRESS")
    p.add_argument("--dns-search", action="append", default=[], metavar="DOMAIN")
    p.add_argument("--dns-option", action="append", default=[], metavar="OPTION")


# ---- run/create: the create body ----------------------------------------------------------


def _port_range(text: str, what: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    try:
        first, last = int(low), int(high or low)
    except ValueError:
        raise UsageError(f"invalid {what} {text!r}") from None
    if not (0 < first <= last < 65536):
        raise UsageError(f"invalid {what} {text!r}: out of range 1-65535")
    return first, last


def parse_publish(spec: str) -> list[tuple[str, str, str]]:
    """docker's ``-p`` syntax -> [(container port/proto, host ip, host port or range)]."""
    text, _, proto = spec.partition("/")
    proto = proto or "tcp"
    if proto not in ("tcp", "udp", "sctp"):
        raise UsageError(f"invalid protocol {proto!r} in -p {spec!r}: use tcp or udp")
    host_ip = ""
    if text.startswith("["):  # [v6]:host:container
        end = text.find("]")
        if end < 0:
            raise UsageError(f"invalid -p {spec!r}")
        host_ip, text = text[1:end], text[end + 1 :].lstrip(":")
    parts = text.split(":")
    if len(parts) == 1:
        host_port, container = "", parts[0]
    elif len(parts) == 2:
        host_port, container = parts
    elif len(parts) == 3 and not host_ip:
        host_ip, host_port, container = parts
    else:
        raise UsageError(f"invalid -p {spec!r}: use [IP:][HOST_PORT:]CONTAINER_PORT[/PROTO]")
    first, last = _port_range(container, "container port")
    if not host_port:
        return [(f"{p}/{proto}", host_ip, "") for p in range(first, last + 1)]
    h_first, h_last = _port_range(host_port, "host port")
    if last == first:
        span = str(h_first) if h_last == h_first else f"{h_first}-{h_last}"
        return [(f"{first}/{proto}", host_ip, span)]
    if h_last - h_first != last - first:
        raise UsageError(f"invalid -p {spec!r}: the port ranges differ in size")
    return [(f"{first + i}/{proto}", host_ip, str(h_first + i)) for i in range(last - first + 1)]


def apply_run_options(args: Namespace, config: dict[str, Any], host: dict[str, Any]) -> None:
    """Put the network flags of run/create into the create body."""
    exposed: dict[str, dict[str, Any]] = {}
    for item in args.expose:
        text, _, proto = item.partition("/")
        first, last = _port_range(text, "--expose port")
        for port in range(first, last + 1):
            exposed[f"{port}/{proto or 'tcp'}"] = {}
    bindings: dict[str, list[dict[str, str]]] = {}
    for spec in args.publish:
        for key, host_ip, host_port in parse_publish(spec):
            exposed[key] = {}
            bindings.setdefault(key, []).append({"HostIp": host_ip, "HostPort": host_port})
    if exposed:
        config["ExposedPorts"] = exposed
    if bindings:
        host["PortBindings"] = bindings
    if args.publish_all:
        host["PublishAllPorts"] = True
    extra = []
    for item in args.add_host:
        name, sep, address = item.partition(":") if ":" in item else item.partition("=")
        if not sep or not name or not address:
            raise UsageError(f"invalid --add-host {item!r}: use NAME:ADDRESS")
        extra.append(f"{name}:{address}")
    if extra:
        host["ExtraHosts"] = extra
    for key, values in (
        ("Dns", args.dns),
        ("DnsSearch", args.dns_search),
        ("DnsOptions", args.dns_option),
    ):
        if values:
            host[key] = list(values)
    if args.network_alias or args.ip or args.ip6:
        network = args.network or "default"
        if network in ("default", "bridge", "host", "none") or network.startswith("container:"):
            what = "--network-alias" if args.network_alias else "--ip" if args.ip else "--ip6"
            raise UsageError(f"{what} needs a user-defined network (--network NAME)")
        endpoint: dict[str, Any] = {}
        if args.network_alias:
            endpoint["Aliases"] = list(args.network_alias)
        if args.ip or args.ip6:
            endpoint["IPAMConfig"] = _ipam_config(args.ip, args.ip6)
        config["NetworkingConfig"] = {"EndpointsConfig": {network: endpoint}}


def _ipam_config(ip: str | None, ip6: str | None) -> dict[str, str]:
    """An endpoint's ``IPAMConfig`` from ``--ip``/``--ip6``."""
    result = {}
    if ip:
        result["IPv4Address"] = ip
    if ip6:
        result["IPv6Address"] = ip6
    return result


# ---- verbs --------------------------------------------------------------------------------


def _pairs(items: list[str], flag: str, *, need_value: bool) -> dict[str, str]:
    result: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not key or (need_value and not sep):
            raise UsageError(f"invalid {flag} {item!r}: use KEY=VALUE")
        result[key] = value
    return result


def _pools(subnets: list[str], gateways: list[str], ranges: list[str]) -> list[dict[str, Any]]:
    """``IPAM.Config`` entries: each gateway and range goes with the subnet that holds it
    (the docker CLI's rule, so ``--subnet 10.1.0.0/24 --subnet fd00::/64 --gateway
    fd00::1`` pairs the gateway with the IPv6 subnet)."""
    import ipaddress

    pools: list[dict[str, Any]] = [{"Subnet": s} for s in subnets]
    for key, values in (("Gateway", gateways), ("IPRange", ranges)):
        for value in values:
            home = None
            for pool in pools:
                try:
                    net = ipaddress.ip_network(pool["Subnet"], strict=False)
                    inside = (
                        ipaddress.ip_network(value, strict=False).subnet_of(net)  # type: ignore[arg-type]
                        if key == "IPRange"
                        else ipaddress.ip_address(value) in net
                    )
                except (ValueError, TypeError):
                    inside = False
                if inside and key not in pool:
                    home = pool
                    break
            if home is None:
                flag = "--gateway" if key == "Gateway" else "--ip-range"
                raise UsageError(f"{flag} {value} is in none of the --subnet values")
            home[key] = value
    return pools


def create(client: Client, args: Namespace) -> int:
    if len(args.gateway) > len(args.subnet) or len(args.ip_range) > len(args.subnet):
        raise UsageError("--gateway and --ip-range need a --subnet each")
    pools = _pools(args.subnet, args.gateway, args.ip_range)
    if args.aux_address:
        if not pools:
            raise UsageError("--aux-address needs a --subnet")
        pools[0]["AuxiliaryAddresses"] = _pairs(args.aux_address, "--aux-address", need_value=True)
    body: dict[str, Any] = {
        "Name": args.name,
        "Driver": args.driver,
        "IPAM": {"Driver": "default", "Config": pools, "Options": {}},
        "Internal": args.internal,
        "Attachable": args.attachable,
        "EnableIPv6": args.ipv6,
        "Options": _pairs(args.opt, "--opt", need_value=True),
        "Labels": _pairs(args.label, "--label", need_value=False),
    }
    result = client.post("/networks/create", body)
    print(result.get("Id", ""))
    return 0


def network_row(network: dict[str, Any], *, trunc: bool = True) -> dict[str, str]:
    """A network as docker's network formatter sees it (``--format json`` fields)."""
    labels = network.get("Labels") or {}
    ident = str(network.get("Id") or "")
    return {
        "CreatedAt": str(network.get("Created") or ""),
        "Driver": str(network.get("Driver") or ""),
        "ID": ident[:12] if trunc else ident,
        "IPv6": str(bool(network.get("EnableIPv6"))).lower(),
        "Internal": str(bool(network.get("Internal"))).lower(),
        "Labels": ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
        "Name": str(network.get("Name") or ""),
        "Scope": str(network.get("Scope") or ""),
    }


def ls(client: Client, args: Namespace) -> int:
    from berth.cli import format as fmt
    from berth.cli.commands import filters_of

    networks = client.get("/networks", {"filters": filters_of(args.filter) or None})
    networks.sort(key=lambda n: str(n.get("Name") or ""))
    if args.quiet:
        width = None if args.no_trunc else 12
        sys.stdout.write("".join(f"{str(n.get('Id'))[:width]}\n" for n in networks))
        return 0
    rows = [network_row(n, trunc=not args.no_trunc) for n in networks]
    default = "{{.ID}}\t{{.Name}}\t{{.Driver}}\t{{.Scope}}"
    sys.stdout.write(fmt.rows(rows, args.format, default, HEADERS))
    return 0


def inspect(client: Client, args: Namespace) -> int:
    from berth.cli.commands import inspect_each
    from berth.client.api import quoted

    return inspect_each(
        args.names, lambda name: client.get(f"/networks/{quoted(name)}"), args.format
    )


def rm(client: Client, args: Namespace) -> int:
    from berth.cli.commands import each
    from berth.client.api import quoted

    return each(
        args.names,
        lambda name: client.delete(f"/networks/{quoted(name)}"),
        missing_ok=args.force,
    )


def connect(client: Client, args: Namespace) -> int:
    from berth.client.api import quoted

    endpoint: dict[str, Any] = {}
    if args.alias:
        endpoint["Aliases"] = list(args.alias)
    if args.ip or args.ip6:
        endpoint["IPAMConfig"] = _ipam_config(args.ip, args.ip6)
    if args.link:
        endpoint["Links"] = [link if ":" in link else f"{link}:{link}" for link in args.link]
    body = {"Container": args.container, "EndpointConfig": endpoint}
    client.post(f"/networks/{quoted(args.network)}/connect", body)
    return 0


def disconnect(client: Client, args: Namespace) -> int:
    from berth.client.api import quoted

    body = {"Container": args.container, "Force": args.force}
    client.post(f"/networks/{quoted(args.network)}/disconnect", body)
    return 0


def prune(client: Client, args: Namespace) -> int:
    from berth.cli.commands import filters_of
    from berth.cli.system_cmds import confirm

    if not confirm("WARNING! This will remove all custom networks not used by at least one "
                    "container.", args.force):  # fmt: skip
        return 0
    result = client.prune("networks", filters_of(args.filter))
    deleted = result.get("NetworksDeleted") or []
    if deleted:
        print("Deleted Networks:")
        print("\n".join(deleted))
    return 0
