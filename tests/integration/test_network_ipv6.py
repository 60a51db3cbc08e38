"""IPv6 on user networks, through the real docker CLI (and berth's) against a private
berthd on the real kernel: addresses, routes, reachability by address and by name
(AAAA from the embedded DNS), inspect fields, IPAM reuse, refusals, and no leftover
address, route, veth or bridge once containers and networks are gone.

Each test picks its own unique-local /64 (fdXX random), so berthds of other tests or
helpers on this host never see the same prefix.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import subprocess

import pytest
from tests.compat.berthd import Daemon
from tests.helpers import CREATED_IDS, GET, HTTPD, VENV_BIN

DOCKER = shutil.which("docker") or "/usr/local/bin/docker"
BERTH = str(VENV_BIN / "berth")

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root and the real kernel"),
    pytest.mark.skipif(not os.path.exists(DOCKER), reason="the docker CLI is not installed"),
    pytest.mark.skipif(not shutil.which("nft"), reason="nftables (nft) is not installed"),
    pytest.mark.skipif(not os.path.exists("/proc/net/if_inet6"), reason="the kernel has no IPv6"),
]


def cli(
    daemon: Daemon, *args: str, tool: str = DOCKER, ok: bool = True
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "BERTH_"))}
    env["DOCKER_CONFIG"] = os.path.join(daemon.base, "docker-config")
    result = subprocess.run(
        [tool, "-H", daemon.host, *args], capture_output=True, text=True, timeout=60, env=env
    )
    for c in daemon.get("/containers/json?all=1").json():
        CREATED_IDS.add(c["Id"])
    if ok:
        assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result


def prefix() -> str:
    """A random unique-local /64 prefix such as ``fd3a:19c2:7e01:1::``."""
    net = ipaddress.IPv6Network((b"\xfd" + secrets.token_bytes(5) + b"\x00\x01" + bytes(8), 64))
    return str(net.network_address)  # canonical, as berthd (and dockerd) print it


def host_ip6(*args: str) -> str:
    return subprocess.run(["ip", "-6", *args], capture_output=True, text=True).stdout


def test_two_containers_talk_over_ipv6(daemon: Daemon, clean_networks: None) -> None:
    p = prefix()
    network_id = cli(daemon, "network", "create", "--ipv6", "--subnet", f"{p}/64",
                     "v6-net").stdout.strip()  # fmt: skip
    info = daemon.get(f"/networks/{network_id}").json()
    assert info["EnableIPv6"] is True
    v4, v6 = info["IPAM"]["Config"]
    assert "." in v4["Subnet"] and v6 == {"Subnet": f"{p}/64", "Gateway": f"{p}1"}
    bridge = f"brn-{network_id[:11]}"
    assert f"{p}1/64" in host_ip6("addr", "show", "dev", bridge)
    cli(daemon, "run", "-d", "--name", "v6-srv", "--network", "v6-net", "--ip6", f"{p}99",
        "busybox", "sh", "-c", HTTPD)  # fmt: skip
    cli(daemon, "run", "-d", "--name", "v6-cli", "--network", "v6-net", "busybox",
        "sleep", "60")  # fmt: skip

    # inspect: the container's and the network's view
    srv = daemon.inspect("v6-srv")["NetworkSettings"]["Networks"]["v6-net"]
    assert srv["GlobalIPv6Address"] == f"{p}99"
    assert srv["GlobalIPv6PrefixLen"] == 64 and srv["IPv6Gateway"] == f"{p}1"
    assert srv["IPAMConfig"] == {"IPv6Address": f"{p}99"}
    client = daemon.inspect("v6-cli")["NetworkSettings"]["Networks"]["v6-net"]
    assert client["GlobalIPv6Address"] == f"{p}2"  # the first after the gateway
    members = daemon.get("/networks/v6-net").json()["Containers"]
    assert sorted(m["IPv6Address"] for m in members.values()) == [f"{p}2/64", f"{p}99/64"]

    # inside: the address (usable at once, no DAD), the default route, /etc/hosts
    inside = cli(daemon, "exec", "v6-cli", "sh", "-c",
                 "ip -6 addr show dev eth0; ip -6 route; cat /etc/hosts").stdout  # fmt: skip
    assert f"inet6 {p}2/64 scope global" in inside and "tentative" not in inside.split("fe80")[0]
    assert f"default via {p}1 dev eth0" in inside
    assert f"{p}2\t" in inside

    # by address and by name (AAAA from the embedded DNS)
    by_address = cli(daemon, "exec", "v6-cli", "sh", "-c", f"{GET} {p}99 80").stdout
    assert "hello-" in by_address
    lookup = cli(daemon, "exec", "v6-cli", "nslookup", "-type=aaaa", "v6-srv").stdout
    assert f"Address: {p}99" in lookup
    cli(daemon, "exec", "v6-cli", "ping", "-6", "-c", "1", "-W", "3", "v6-srv")
    a_only = cli(daemon, "exec", "v6-cli", "nslookup", "-type=a", "v6-srv").stdout
    assert p not in a_only and srv["IPAddress"] in a_only

    # removal: no address, route, veth or bridge left on the host
    cli(daemon, "rm", "-f", "v6-srv", "v6-cli")
    cli(daemon, "network", "rm", "v6-net")
    assert p not in host_ip6("addr") and p not in host_ip6("route")
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert bridge not in links


def test_ipam_reclaims_v6_and_refuses_what_dockerd_refuses(
    daemon: Daemon, clean_networks: None
) -> None:
    p = prefix()
    cli(daemon, "network", "create", "--ipv6", "--subnet", "10.236.0.0/24",
        "--subnet", f"{p}/64", "--gateway", f"{p}fe", "--ip-range", f"{p}100/120",
        "v6-pool")  # fmt: skip
    info = daemon.get("/networks/v6-pool").json()
    assert info["IPAM"]["Config"][1] == {
        "Subnet": f"{p}/64", "Gateway": f"{p}fe", "IPRange": f"{p}100/120",
    }  # fmt: skip
    cli(daemon, "create", "--name", "v6-one", "--network", "v6-pool", "--ip6", f"{p}5",
        "busybox", "true")  # fmt: skip
    taken = cli(daemon, "create", "--network", "v6-pool", "--ip6", f"{p}5", "busybox",
                "true", ok=False)  # fmt: skip
    assert taken.returncode != 0 and "already in use" in taken.stderr
    cli(daemon, "rm", "v6-one")  # the address goes back to the pool
    cli(daemon, "create", "--name", "v6-two", "--network", "v6-pool", "--ip6", f"{p}5",
        "busybox", "true")  # fmt: skip
    # connect with an address, disconnect, connect again with the same one
    cli(daemon, "network", "disconnect", "v6-pool", "v6-two")
    cli(daemon, "network", "connect", "--ip6", f"{p}6", "v6-pool", "v6-two")
    cli(daemon, "network", "disconnect", "v6-pool", "v6-two")
    cli(daemon, "network", "connect", "--ip6", f"{p}6", "v6-pool", "v6-two")
    ipam = daemon.inspect("v6-two")["NetworkSettings"]["Networks"]["v6-pool"]["IPAMConfig"]
    assert ipam == {"IPv6Address": f"{p}6"}
    out = cli(daemon, "run", "--rm", "--network", "v6-pool", "busybox", "ip", "-6", "addr",
              "show", "dev", "eth0").stdout  # fmt: skip
    assert f"inet6 {p}101/64" in out  # within --ip-range

    overlap = daemon.post("/networks/create", {"Name": "v6-over", "EnableIPv6": True,
                          "IPAM": {"Config": [{"Subnet": f"{p}8000/80"}]}})  # fmt: skip
    assert overlap.status == 409 and "overlaps" in overlap.json()["message"]
    outside = cli(daemon, "create", "--network", "v6-pool", "--ip6", "fd00:dead::5", "busybox",
                  "true", ok=False)  # fmt: skip
    assert "no configured subnet contains IP address fd00:dead::5" in outside.stderr
    cli(daemon, "network", "create", "v6-none")
    no_v6 = cli(daemon, "create", "--network", "v6-none", "--ip6", f"{p}7", "busybox", "true",
                ok=False)  # fmt: skip
    assert "has no IPv6" in no_v6.stderr and len(no_v6.stderr.strip().splitlines()) == 1
    pool = {"Subnet": f"{prefix()}/64", "Gateway": "10.0.0.1"}
    bad = daemon.post("/networks/create", {"Name": "v6-bad", "EnableIPv6": True,
                      "IPAM": {"Config": [pool]}})  # fmt: skip
    assert bad.status == 400 and "not in subnet" in bad.json()["message"]


def test_ipv6_without_subnet_gets_a_ula_prefix(daemon: Daemon, clean_networks: None) -> None:
    """dockerd 20.10 refuses --ipv6 alone (no default IPv6 pool); Docker 27 and Berth
    give the network a /64 of a unique-local /48."""
    cli(daemon, "network", "create", "--ipv6", "v6-auto-a", tool=BERTH)
    cli(daemon, "network", "create", "--ipv6", "v6-auto-b", tool=BERTH)
    subnets = [
        daemon.get(f"/networks/{name}").json()["IPAM"]["Config"][1]["Subnet"]
        for name in ("v6-auto-a", "v6-auto-b")
    ]
    assert all(s.startswith("fd") and s.endswith("::/64") for s in subnets)
    assert subnets[0] != subnets[1]
    ls = cli(daemon, "network", "ls", "--format", "{{.Name}} {{.IPv6}}", tool=BERTH).stdout
    assert "v6-auto-a true" in ls
    out = cli(daemon, "run", "--rm", "--network", "v6-auto-b", "busybox", "ip", "-6", "addr",
              "show", "dev", "eth0", tool=BERTH).stdout  # fmt: skip
    assert f"inet6 {subnets[1].removesuffix('/64')}2/64" in out


def test_ipv6_subnet_without_enable_gives_no_address(daemon: Daemon, clean_networks: None) -> None:
    """As dockerd: an IPv6 subnet without EnableIPv6 is recorded, but unused."""
    p = prefix()
    cli(daemon, "network", "create", "--subnet", f"{p}/64", "v6-off")
    info = daemon.get("/networks/v6-off").json()
    assert info["EnableIPv6"] is False and info["IPAM"]["Config"][1]["Subnet"] == f"{p}/64"
    cli(daemon, "run", "-d", "--name", "v6-off-c", "--network", "v6-off", "busybox",
        "sleep", "30")  # fmt: skip
    view = daemon.inspect("v6-off-c")["NetworkSettings"]["Networks"]["v6-off"]
    assert view["GlobalIPv6Address"] == "" and view["IPv6Gateway"] == ""
    assert p not in host_ip6("addr")


def test_bridge_gets_its_ipv6_gateway_again_after_a_restart(
    daemon: Daemon, clean_networks: None
) -> None:
    p = prefix()
    network_id = cli(daemon, "network", "create", "--ipv6", "--subnet", f"{p}/64",
                     "v6-again").stdout.strip()  # fmt: skip
    bridge = f"brn-{network_id[:11]}"
    daemon.stop()  # no container: the bridge goes with the daemon
    try:
        assert bridge not in subprocess.run(["ip", "-o", "link"], capture_output=True,
                                            text=True).stdout  # fmt: skip
    finally:
        daemon.start()
    assert f"{p}1/64" in host_ip6("addr", "show", "dev", bridge)
    out = cli(daemon, "run", "--rm", "--network", "v6-again", "busybox", "ping", "-6", "-c",
              "1", "-W", "3", f"{p}1").stdout  # fmt: skip
    assert "1 packets received" in out
    assert json.loads(cli(daemon, "network", "inspect", "v6-again").stdout)[0]["EnableIPv6"]
