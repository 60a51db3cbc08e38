"""Networks through the docker CLI and the berth CLI against a private berthd: what
the integration tests (tests/integration/test_network.py) do not cover — port ranges,
the berth network verbs, runtime connect with an alias, and the clean-up of every part
(veth, bridge address, nftables rule) after removal."""

from __future__ import annotations

import json
import os
import shutil
import socket
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
]


def run(daemon: Daemon, tool: str, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
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


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive free ports."""
    for base in range(42000, 60000, 97):
        try:
            for port in range(base, base + count):
                with socket.socket() as s:
                    s.bind(("0.0.0.0", port))
            return base
        except OSError:
            continue
    pytest.skip("no free port range")
    return 0


def fetch(port: int) -> str:
    for _ in range(50):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
                if data:
                    return data.decode(errors="replace")
        except OSError:
            subprocess.run(["sleep", "0.1"])
    return ""


def test_port_range_and_docker_port(daemon: Daemon, clean_networks: None) -> None:
    base = free_ports(2)
    run(daemon, DOCKER, "run", "-d", "--name", "nwc-range", "-p",
        f"127.0.0.1:{base}-{base + 1}:80-81", "busybox", "sh", "-c",
        "httpd -p 81 -h /; " + HTTPD)  # fmt: skip
    assert "hello-" in fetch(base)
    ports = run(daemon, DOCKER, "port", "nwc-range").stdout
    assert f"80/tcp -> 127.0.0.1:{base}" in ports
    assert f"81/tcp -> 127.0.0.1:{base + 1}" in ports


def test_berth_network_verbs(daemon: Daemon, clean_networks: None) -> None:
    created = run(daemon, BERTH, "network", "create", "--subnet", "10.232.0.0/24",
                  "--label", "team=net", "nwc-one").stdout.strip()  # fmt: skip
    assert len(created) == 64
    listed = run(daemon, BERTH, "network", "ls", "--filter", "label=team=net").stdout
    assert "nwc-one" in listed and "NETWORK ID" in listed
    info = json.loads(run(daemon, BERTH, "network", "inspect", "nwc-one").stdout)[0]
    assert info["IPAM"]["Config"][0]["Subnet"] == "10.232.0.0/24"
    run(daemon, BERTH, "run", "-d", "--name", "nwc-srv", "--network", "nwc-one",
        "--network-alias", "svc", "--ip", "10.232.0.40", "busybox", "sh", "-c", HTTPD)  # fmt: skip
    out = run(daemon, BERTH, "run", "--rm", "--network", "nwc-one", "busybox", "sh", "-c",
              f"nslookup svc; {GET} nwc-srv 80").stdout  # fmt: skip
    assert "10.232.0.40" in out and "hello-" in out
    # connect at runtime with an alias: the other network's containers see it by it
    run(daemon, BERTH, "network", "create", "nwc-two")
    run(daemon, BERTH, "network", "connect", "--alias", "late", "nwc-two", "nwc-srv")
    out = run(daemon, DOCKER, "run", "--rm", "--network", "nwc-two", "busybox", "sh", "-c",
              f"{GET} late 80").stdout  # fmt: skip
    assert "hello-" in out
    busy = run(daemon, BERTH, "network", "rm", "nwc-two", ok=False)
    assert busy.returncode != 0 and "active endpoints" in busy.stderr
    assert len(busy.stderr.strip().splitlines()) == 1
    run(daemon, BERTH, "network", "disconnect", "nwc-two", "nwc-srv")
    run(daemon, BERTH, "network", "rm", "nwc-two")
    run(daemon, BERTH, "rm", "-f", "nwc-srv")
    pruned = run(daemon, BERTH, "network", "prune", "-f").stdout
    assert "nwc-one" in pruned


def test_nothing_left_after_removal(daemon: Daemon, clean_networks: None) -> None:
    """No veth, no bridge address, no DNAT rule once containers and networks are gone."""
    run(daemon, DOCKER, "network", "create", "--subnet", "10.233.0.0/24", "nwc-gone")
    port = free_ports(1)
    run(daemon, DOCKER, "run", "-d", "--name", "nwc-a", "--network", "nwc-gone",
        "-p", f"{port}:80", "busybox", "sh", "-c", HTTPD)  # fmt: skip
    assert "hello-" in fetch(port)
    addresses = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    assert "10.233.0.1/24" in addresses
    run(daemon, DOCKER, "rm", "-f", "nwc-a")
    run(daemon, DOCKER, "network", "rm", "nwc-gone")
    addresses = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    assert "10.233.0." not in addresses
    routes = subprocess.run(["ip", "route"], capture_output=True, text=True).stdout
    assert "10.233.0.0/24" not in routes
    rules = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout
    assert f"dport {port} dnat" not in rules
    assert fetch(port) == "" or "hello-" not in fetch(port)


def test_bad_input_leaves_nothing_half_made(daemon: Daemon, clean_networks: None) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = run(daemon, DOCKER, "run", "-d", "--name", "nwc-busy", "-p",
                   f"127.0.0.1:{port}:80", "busybox", "sleep", "30", ok=False)  # fmt: skip
    assert busy.returncode != 0 and "already allocated" in busy.stderr
    rules = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout
    assert f"dport {port} dnat" not in rules
    assert not os.listdir(os.path.join(daemon.exec_root, "netns"))
    unknown = run(daemon, DOCKER, "run", "--rm", "--network", "nwc-nope", "busybox", "true",
                  ok=False)  # fmt: skip
    assert "network nwc-nope not found" in unknown.stderr
    assert "Unable to find image" not in unknown.stderr
    assert not [c for c in daemon.get("/containers/json?all=1").json() if "nwc-nope" in str(c)]
    bad = run(daemon, DOCKER, "network", "create", "--subnet", "10.234.0.0/33", "nwc-bad",
              ok=False)  # fmt: skip
    assert bad.returncode != 0
    for tool in (DOCKER, BERTH):  # each CLI refuses an alias on the default bridge
        alias = run(daemon, tool, "run", "--rm", "--network-alias", "x", "busybox", "true",
                    ok=False)  # fmt: skip
        assert alias.returncode != 0 and "user-defined network" in alias.stderr


def test_berth_cli_ipv6_flags(daemon: Daemon, clean_networks: None) -> None:
    """berth pairs --gateway/--ip-range with the subnet that holds them (docker's rule)
    and sends --ip6 from run and network connect."""
    run(daemon, BERTH, "network", "create", "--ipv6", "--subnet", "fd7e:2a1c:90b4:1::/64",
        "--subnet", "10.235.0.0/24", "--gateway", "fd7e:2a1c:90b4:1::fe", "--gateway",
        "10.235.0.254", "nwc-six")  # fmt: skip
    config = json.loads(run(daemon, BERTH, "network", "inspect", "nwc-six").stdout)[0]
    assert config["IPAM"]["Config"] == [
        {"Subnet": "10.235.0.0/24", "Gateway": "10.235.0.254"},
        {"Subnet": "fd7e:2a1c:90b4:1::/64", "Gateway": "fd7e:2a1c:90b4:1::fe"},
    ]
    run(daemon, BERTH, "run", "-d", "--name", "nwc-six-a", "--network", "nwc-six", "--ip6",
        "fd7e:2a1c:90b4:1::a", "busybox", "sleep", "30")  # fmt: skip
    run(daemon, BERTH, "network", "create", "--ipv6", "--subnet", "fd7e:2a1c:90b4:2::/64",
        "nwc-six-b")  # fmt: skip
    run(daemon, BERTH, "network", "connect", "--ip6", "fd7e:2a1c:90b4:2::b", "nwc-six-b",
        "nwc-six-a")  # fmt: skip
    networks = daemon.inspect("nwc-six-a")["NetworkSettings"]["Networks"]
    assert networks["nwc-six"]["GlobalIPv6Address"] == "fd7e:2a1c:90b4:1::a"
    assert networks["nwc-six-b"]["GlobalIPv6Address"] == "fd7e:2a1c:90b4:2::b"
    out = run(daemon, BERTH, "exec", "nwc-six-a", "ip", "-6", "route").stdout
    assert out.count("default via") == 1  # the first network's gateway only
    stray = run(daemon, BERTH, "network", "create", "--subnet", "10.235.1.0/24", "--gateway",
                "10.9.9.9", "nwc-stray", ok=False)  # fmt: skip
    assert "--gateway 10.9.9.9 is in none of the --subnet values" in stray.stderr
