"""Networking through the real docker CLI against a private berthd, on the real kernel.

Traffic goes only to loopback, the host's own addresses and namespaces berthd makes.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from tests.compat.berthd import Daemon
from tests.helpers import CREATED_IDS, GET, HTTPD

DOCKER = shutil.which("docker") or "/usr/local/bin/docker"

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root and the real kernel"),
    pytest.mark.skipif(not os.path.exists(DOCKER), reason="the docker CLI is not installed"),
    pytest.mark.skipif(not shutil.which("nft"), reason="nftables (nft) is not installed"),
]

# busybox-static's wget crashes (static glibc); nc speaks HTTP/1.0 for the tests


def docker(daemon: Daemon, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env["DOCKER_CONFIG"] = os.path.join(daemon.base, "docker-config")
    result = subprocess.run(
        [DOCKER, "-H", daemon.host, *args], capture_output=True, text=True, timeout=60, env=env
    )
    if check:
        assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result


def run_d(daemon: Daemon, *args: str) -> str:
    container_id = docker(daemon, "run", "-d", *args).stdout.strip()
    CREATED_IDS.add(container_id)
    return container_id


def host_address() -> str:
    """The host's own (non-loopback) IPv4 address: the source of its default route."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent for a UDP connect
            return str(s.getsockname()[0])
        except OSError:
            pytest.skip("the host has no non-loopback IPv4 address")
    return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


def fetch(host: str, port: int, timeout: float = 5) -> str:
    deadline_tries = 30
    for _ in range(deadline_tries):
        try:
            with socket.create_connection((host, port), timeout=timeout) as s:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
                if data:
                    return data.decode(errors="replace")
        except OSError:
            pass
        threading.Event().wait(0.1)
    return ""


UDP_ECHO = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 5353))
while True:
    data, peer = s.recvfrom(100)
    s.sendto(b"pong " + data, peer)
"""


def udp_ask(host: str, port: int) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.5)
        for _ in range(20):
            s.sendto(b"ping", (host, port))
            try:
                return s.recv(100)
            except OSError:
                continue
    return b""


def links() -> set[str]:
    return set(os.listdir("/sys/class/net"))


@pytest.fixture
def cleanup(daemon: Daemon) -> Iterator[list[str]]:
    """Containers then networks named in the list are removed after the test."""
    names: list[str] = []
    yield names
    for c in daemon.get("/containers/json?all=1").json():
        daemon.delete(f"/containers/{c['Id']}?force=1")
    for name in names:
        daemon.delete(f"/networks/{name}")


def test_default_bridge_address_route_and_nat(daemon: Daemon, cleanup: list[str]) -> None:
    """A container on the default bridge has an address, a default route, and reaches
    a server on the host through the gateway (and the host's own address, NATed)."""
    address = host_address()
    port = free_port()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer((address, port), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        out = docker(
            daemon,
            "run",
            "--rm",
            "busybox",
            "sh",
            "-c",
            f"ip -4 addr show eth0; ip route; {GET} {address} {port} | grep -q 200 && echo reached",
        ).stdout
    finally:
        server.shutdown()
        server.server_close()
    assert "inet " in out and "default via" in out
    assert "reached" in out


def test_user_network_names_resolve(daemon: Daemon, cleanup: list[str]) -> None:
    cleanup.append("nwtest-app")
    docker(daemon, "network", "create", "nwtest-app")
    run_d(daemon, "--name", "nw-web", "--network", "nwtest-app", "--network-alias", "api",
          "busybox", "sh", "-c", HTTPD)  # fmt: skip
    out = docker(
        daemon,
        "run",
        "--rm",
        "--network",
        "nwtest-app",
        "busybox",
        "sh",
        "-c",
        f"nslookup nw-web && ping -c1 -W2 nw-web && {GET} api 80",
    ).stdout
    assert "hello-" in out, out
    info = json.loads(docker(daemon, "network", "inspect", "nwtest-app").stdout)[0]
    assert len(info["Containers"]) == 1
    inspect = json.loads(docker(daemon, "inspect", "nw-web").stdout)[0]
    endpoint = inspect["NetworkSettings"]["Networks"]["nwtest-app"]
    assert endpoint["IPAddress"] and endpoint["Gateway"] and endpoint["MacAddress"]
    assert "api" in endpoint["Aliases"]


def test_connect_disconnect_changes_what_resolves(daemon: Daemon, cleanup: list[str]) -> None:
    cleanup += ["nwtest-a", "nwtest-b"]
    docker(daemon, "network", "create", "nwtest-a")
    docker(daemon, "network", "create", "nwtest-b")
    run_d(daemon, "--name", "nw-target", "--network", "nwtest-a", "busybox", "sleep", "60")
    run_d(daemon, "--name", "nw-asker", "--network", "nwtest-b", "busybox", "sleep", "60")
    lookup = ["exec", "nw-asker", "nslookup", "nw-target"]
    assert "can't find" in docker(daemon, *lookup, check=False).stdout
    docker(daemon, "network", "connect", "nwtest-b", "nw-target")
    assert "can't find" not in docker(daemon, *lookup).stdout
    docker(daemon, "network", "disconnect", "nwtest-b", "nw-target")
    assert "can't find" in docker(daemon, *lookup, check=False).stdout


def test_published_ports_loopback_host_address_udp_and_P(
    daemon: Daemon, cleanup: list[str]
) -> None:
    address = host_address()
    loop_port, all_port, udp_port = free_port(), free_port(), free_port()
    run_d(daemon, "--name", "nw-pub", "-p", f"127.0.0.1:{loop_port}:80",
          "-p", f"{all_port}:80", "-p", f"{udp_port}:5353/udp", "--expose", "7000",
          "-P", "busybox", "sh", "-c", HTTPD)  # fmt: skip
    assert "hello-" in fetch("127.0.0.1", loop_port)
    assert "hello-" in fetch(address, all_port)
    ports = docker(daemon, "port", "nw-pub").stdout
    assert f"80/tcp -> 127.0.0.1:{loop_port}" in ports
    assert "7000/tcp -> 0.0.0.0:" in ports  # -P: the exposed port got a random one
    # hairpin: the container reaches its own published port through the host's address
    out = docker(daemon, "exec", "nw-pub", "sh", "-c", f"{GET} {address} {all_port}").stdout
    assert "hello-" in out
    # UDP: busybox's nc has no -u, so a UDP echo server runs in the container's namespace
    sandbox = json.loads(docker(daemon, "inspect", "nw-pub").stdout)[0]["NetworkSettings"]
    server = subprocess.Popen(["nsenter", f"--net={sandbox['SandboxKey']}", sys.executable, "-c",
                               UDP_ECHO])  # fmt: skip
    try:
        for target in ("127.0.0.1", address):
            assert udp_ask(target, udp_port) == b"pong ping"
    finally:
        server.kill()
        server.wait()
    listed = next(c for c in daemon.get("/containers/json").json() if "/nw-pub" in c["Names"])
    assert {"IP": "127.0.0.1", "PrivatePort": 80, "PublicPort": loop_port, "Type": "tcp"} in (
        listed["Ports"]
    )


def test_port_in_use_is_a_clear_error(daemon: Daemon, cleanup: list[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = docker(daemon, "run", "-d", "--name", "nw-busy", "-p", f"{port}:80",
                        "busybox", "sleep", "5", check=False)  # fmt: skip
    assert result.returncode != 0
    assert "already allocated" in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 3
    assert not os.listdir(os.path.join(daemon.exec_root, "netns"))


def test_internal_network_has_no_route_out(daemon: Daemon, cleanup: list[str]) -> None:
    cleanup.append("nwtest-int")
    docker(daemon, "network", "create", "--internal", "nwtest-int")
    out = docker(daemon, "run", "--rm", "--network", "nwtest-int", "busybox", "sh", "-c",
                 f"ip route; ping -c1 -W1 {host_address()} || echo unreachable").stdout  # fmt: skip
    assert "default" not in out
    assert "unreachable" in out


def test_none_has_loopback_only_and_container_mode_shares(
    daemon: Daemon, cleanup: list[str]
) -> None:
    out = docker(
        daemon, "run", "--rm", "--network", "none", "busybox", "ls", "/sys/class/net"
    ).stdout
    assert out.split() == ["lo"]
    run_d(daemon, "--name", "nw-owner", "busybox", "sh", "-c", HTTPD)
    out = docker(daemon, "run", "--rm", "--network", "container:nw-owner", "busybox",
                 "sh", "-c", f"{GET} 127.0.0.1 80").stdout  # fmt: skip
    assert "hello-" in out


def test_bad_input(daemon: Daemon, cleanup: list[str]) -> None:
    cleanup += ["nwtest-s1", "nwtest-s2", "nwtest-used"]
    docker(daemon, "network", "create", "--subnet", "10.231.0.0/24", "nwtest-s1")
    overlap = docker(daemon, "network", "create", "--subnet", "10.231.0.128/25", "nwtest-s2",
                     check=False)  # fmt: skip
    assert overlap.returncode != 0 and "overlaps" in overlap.stderr
    unknown = docker(daemon, "run", "--rm", "--network", "nwtest-nope", "busybox", "true",
                     check=False)  # fmt: skip
    assert unknown.returncode != 0 and "not found" in unknown.stderr
    docker(daemon, "network", "create", "nwtest-used")
    run_d(daemon, "--name", "nw-user", "--network", "nwtest-used", "busybox", "sleep", "60")
    response = daemon.delete("/networks/nwtest-used")
    assert response.status == 409, response
    assert response.json()["message"]
    dup = docker(daemon, "network", "create", "nwtest-used", check=False)
    assert dup.returncode != 0 and "already exists" in dup.stderr
    ip = docker(daemon, "run", "--rm", "--network", "nwtest-s1", "--ip", "10.231.0.77",
                "busybox", "sh", "-c", "ip -4 addr show eth0").stdout  # fmt: skip
    assert "10.231.0.77/24" in ip


def test_removal_leaves_nothing(daemon: Daemon) -> None:
    before = links()
    docker(daemon, "network", "create", "nwtest-gone")
    container_id = run_d(daemon, "--network", "nwtest-gone", "-p", "80", "busybox", "sleep", "60")
    assert links() - before  # a bridge and a veth
    docker(daemon, "rm", "-f", container_id)
    docker(daemon, "network", "rm", "nwtest-gone")
    assert links() - before == set()
    assert not os.listdir(os.path.join(daemon.exec_root, "netns"))
    tag = "berth-" + hashlib.sha256(os.path.abspath(daemon.exec_root).encode()).hexdigest()[:6]
    nat = subprocess.run(
        ["nft", "list", "table", "ip", f"{tag}-nat"], capture_output=True, text=True
    )
    assert "dnat to" not in nat.stdout
    network_ids = {n["Name"] for n in daemon.get("/networks").json()}
    assert network_ids == {"bridge", "host", "none"}


def test_daemon_killed_and_restarted_keeps_containers_reachable(daemon: Daemon) -> None:
    port = free_port()
    run_d(daemon, "--name", "nw-survivor", "-p", f"127.0.0.1:{port}:80", "busybox", "sh", "-c",
          HTTPD)  # fmt: skip
    assert "hello-" in fetch("127.0.0.1", port)
    assert daemon.process is not None
    daemon.process.kill()
    daemon.process.wait()
    daemon.start()
    assert "hello-" in fetch("127.0.0.1", port)
    docker(daemon, "rm", "-f", "nw-survivor")
    assert not os.listdir(os.path.join(daemon.exec_root, "netns"))
