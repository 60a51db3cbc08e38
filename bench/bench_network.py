#!/usr/bin/env python3
"""HTTP through published ports: berthd vs the same server reached directly, vs Docker's
and Podman's published ports, side by side in one run (wrk from the host against a
busybox ``httpd`` serving a small file). Also: 50 networked containers created+started
and removed through berthd.

    .venv/bin/python bench/bench_network.py [--seconds 10] [--connections 50]

Contenders (each skipped with a reason when its tool is missing):
- ``host-direct``: busybox httpd run on the host (no namespace, no NAT).
- ``berth-container-ip``: the container's address on the bridge (no DNAT).
- ``berth-published-127``, ``berth-published-host``: -p on 127.0.0.1 / the host's address
  (nftables DNAT; loopback through route_localnet).
- ``docker``: a private dockerd 20.10 with ``--iptables=false`` on a bridge of its own, so
  its published port is its userland proxy (docker-proxy). With iptables dockerd sets the
  host's FORWARD policy to DROP, which breaks every other bridge on the host (Berth's
  included), so it is not run that way here; this is said in the output.
- ``podman``: rootful podman with a private --root/--runroot (netavark's DNAT rules).
Everything started is stopped and removed by the bench (by PID / by name).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv" / "bin"
HTTPD = (
    "mkdir -p /www && head -c 600 /dev/zero | tr '\\0' x > /www/index.html"
    " && exec httpd -f -p 80 -h /www"
)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def host_address() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))
        return str(s.getsockname()[0])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


def wait_http(host: str, port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1) as s:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                if s.recv(16).startswith(b"HTTP/"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"nothing answers HTTP on {host}:{port}")


def wrk(url: str, seconds: int, connections: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", url],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    ).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    errors = re.search(r"Socket errors: (.*)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    return {
        "rps": float(rps.group(1)) if rps else 0.0,
        "p99_ms": float(p99.group(1)) * scale[p99.group(2)] if p99 else -1.0,
        "errors": 1.0 if errors else 0.0,
    }


class Berth:
    def __init__(self, work: str) -> None:
        self.base = work
        self.sock = f"unix://{work}/berth.sock"
        self.proc = subprocess.Popen(
            [str(VENV / "berthd"), "-H", self.sock, "--root", f"{work}/root",
             "--exec-root", f"{work}/run"],
            stdout=open(f"{work}/berthd.log", "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        for _ in range(200):
            if self.cli("version", check=False).returncode == 0:
                break
            time.sleep(0.1)
        subprocess.run(
            ["curl", "-s", "-XPOST", "--unix-socket", f"{work}/berth.sock",
             "http://x/berth/images/bootstrap?name=busybox"],
            capture_output=True, check=True,
        )  # fmt: skip

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        return subprocess.run(
            ["docker", "-H", self.sock, *args], capture_output=True, text=True, check=check,
            env=env, timeout=120,
        )  # fmt: skip

    def close(self) -> None:
        ids = self.cli("ps", "-aq", check=False).stdout.split()
        if ids:
            self.cli("rm", "-f", *ids, check=False)
        self.proc.terminate()
        self.proc.wait(30)
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(Path(f"{self.base}/run/monitor.pid").read_text()), 15)


@contextlib.contextmanager
def host_httpd(port: int) -> Iterator[None]:
    www = tempfile.mkdtemp(prefix="bench-net-www-")
    Path(www, "index.html").write_text("x" * 600)
    busybox = shutil.which("busybox") or "/bin/busybox"
    proc = subprocess.Popen([busybox, "httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", www])
    try:
        wait_http("127.0.0.1", port)
        yield
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(www, ignore_errors=True)


class Docker:
    """A private dockerd (--iptables=false: docker-proxy carries published ports)."""

    BRIDGE = "bnchdk0"

    def __init__(self, work: str, busybox_tar: str) -> None:
        self.work = work
        subprocess.run(["ip", "link", "add", self.BRIDGE, "type", "bridge"], check=True)
        subprocess.run(["ip", "addr", "add", "10.251.0.1/24", "dev", self.BRIDGE], check=True)
        subprocess.run(["ip", "link", "set", self.BRIDGE, "up"], check=True)
        self.sock = f"unix://{work}/docker.sock"
        Path(work, "daemon.json").write_text("{}")
        self.proc = subprocess.Popen(
            ["dockerd", f"--data-root={work}/data", f"--exec-root={work}/exec",
             f"--pidfile={work}/docker.pid", f"--host={self.sock}",
             f"--config-file={work}/daemon.json", "--iptables=false", "--ip-masq=false",
             f"--bridge={self.BRIDGE}", "--storage-driver=overlay2", "--log-level=error"],
            stdout=open(f"{work}/dockerd.log", "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        for _ in range(300):
            if self.cli("version", check=False).returncode == 0:
                break
            time.sleep(0.2)
        self.cli("load", "-i", busybox_tar)
        self.version = self.cli("version", "-f", "{{.Server.Version}}").stdout.strip()

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env["DOCKER_CONFIG"] = self.work
        return subprocess.run(
            ["docker", "-H", self.sock, *args], capture_output=True, text=True, check=check,
            env=env, timeout=120,
        )  # fmt: skip

    def close(self) -> None:
        ids = self.cli("ps", "-aq", check=False).stdout.split()
        if ids:
            self.cli("rm", "-f", *ids, check=False)
        self.proc.terminate()
        self.proc.wait(30)
        subprocess.run(["ip", "link", "del", self.BRIDGE], check=False)


class Podman:
    def __init__(self, work: str, busybox_tar: str) -> None:
        self.args = ["podman", "--root", f"{work}/root", "--runroot", f"{work}/runroot"]
        subprocess.run([*self.args, "load", "-i", busybox_tar], capture_output=True, check=True)
        self.version = subprocess.run(
            ["podman", "--version"], capture_output=True, text=True
        ).stdout.strip()

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.args, *args], capture_output=True, text=True, check=True, timeout=120
        )

    def close(self) -> None:
        subprocess.run([*self.args, "rm", "-af", "-t", "0"], capture_output=True)
        subprocess.run([*self.args, "system", "reset", "-f"], capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=50)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_network: needs root")
    if not shutil.which("wrk"):
        sys.exit("bench_network: wrk is not installed (apt-get install wrk; scripts/setup does)")
    work = tempfile.mkdtemp(prefix="bench-network-", dir="/var/tmp")
    os.chmod(work, 0o711)
    address = host_address()
    results: dict[str, dict[str, float] | str] = {}

    def measure(name: str, host: str, port: int) -> None:
        wait_http(host, port)
        results[name] = wrk(f"http://{host}:{port}/index.html", args.seconds, args.connections)
        log(f"{name}: {results[name]}")

    port = free_port()
    with host_httpd(port):
        measure("host-direct", "127.0.0.1", port)

    os.makedirs(f"{work}/berth")
    berth = Berth(f"{work}/berth")
    tar = os.path.join(work, "busybox.tar")
    try:
        p1, p2 = free_port(), free_port()
        berth.cli("run", "-d", "--name", "web", "-p", f"127.0.0.1:{p1}:80", "-p", f"{p2}:80",
                  "busybox", "sh", "-c", HTTPD)  # fmt: skip
        ip = berth.cli("inspect", "-f", "{{.NetworkSettings.IPAddress}}", "web").stdout.strip()
        measure("berth-container-ip", ip, 80)
        measure("berth-published-127", "127.0.0.1", p1)
        measure("berth-published-host", address, p2)
        berth.cli("rm", "-f", "web")
        berth.cli("network", "create", "benchnet")
        start = time.monotonic()
        names = [f"c{i}" for i in range(50)]
        for name in names:
            berth.cli("run", "-d", "--name", name, "--network", "benchnet", "-p", "80",
                      "busybox", "sleep", "600")  # fmt: skip
        made = time.monotonic() - start
        start = time.monotonic()
        berth.cli("rm", "-f", *names)
        removed = time.monotonic() - start
        berth.cli("network", "rm", "benchnet")
        results["berth-50-containers"] = {"create_start_s": round(made, 2),
                                          "remove_s": round(removed, 2)}  # fmt: skip
        log(f"50 networked containers: run -d {made:.1f} s, rm -f {removed:.1f} s")
        berth.cli("save", "-o", tar, "busybox")
    finally:
        berth.close()

    if shutil.which("podman"):
        podman = None
        try:
            os.makedirs(f"{work}/podman")
            podman = Podman(f"{work}/podman", tar)
            port = free_port()
            podman.run("run", "-d", "--name", "web", "-p", f"{port}:80", "busybox", "sh", "-c",
                       HTTPD)  # fmt: skip
            measure("podman-published-host", address, port)
        except (subprocess.CalledProcessError, RuntimeError) as exc:
            detail = getattr(exc, "stderr", "") or exc
            results["podman-published-host"] = f"failed: {str(detail).strip()[-300:]}"
        finally:
            if podman is not None:
                podman.close()
    else:
        results["podman-published-host"] = "skipped: podman is not installed"

    if shutil.which("dockerd"):
        docker = None
        try:
            os.makedirs(f"{work}/docker")
            docker = Docker(f"{work}/docker", tar)
            port = free_port()
            docker.cli("run", "-d", "--name", "web", "-p", f"{port}:80", "busybox", "sh", "-c",
                       HTTPD)  # fmt: skip
            measure(f"docker-{docker.version}-proxy (--iptables=false)", address, port)
        except (subprocess.CalledProcessError, RuntimeError) as exc:
            results["docker"] = f"failed: {exc}"
        finally:
            if docker is not None:
                docker.close()
    else:
        results["docker"] = "skipped: dockerd is not installed"

    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
