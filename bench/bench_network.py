#!/usr/bin/env python3
"""Networking speed, Berth against the host, Docker and Podman, side by side in one run.

    .venv/bin/python bench/bench_network.py [--seconds 10] [--connections 50]
        [--megabytes 500] [--transfers 3] [--containers 50] [--engines berth,podman,docker]

1. HTTP through published ports: wrk from the host against a busybox ``httpd`` serving a
   600-byte file.
2. Container-to-container throughput: ``dd if=/dev/zero bs=1M count=N | nc IP PORT``
   from one busybox container to a ``nc -l`` in another on the same bridge, timed with
   busybox ``time`` inside the sender; the same busybox pipeline over 127.0.0.1 on the
   host is the reference.
3. ``--containers`` detached containers with ``-p 80`` on a bridge, created+started one
   CLI call at a time, then removed with one ``rm -f``.

Contenders (each skipped with a reason when its tool is missing; berth always runs,
it provides the busybox image the others load):
- ``host-direct`` / ``host-loopback``: busybox httpd / nc on the host (no namespace, no NAT).
- ``berth-container-ip``: the container's address on the bridge (no DNAT).
- ``berth-published-127``, ``berth-published-host``: -p on 127.0.0.1 / the host's address
  (nftables DNAT; loopback through route_localnet). Berth's transfers run on a user network.
- ``docker``: a private dockerd 20.10 with ``--iptables=false`` on a bridge of its own, so
  its published port is its userland proxy (docker-proxy). With iptables dockerd sets the
  host's FORWARD policy to DROP, which breaks every other bridge on the host (Berth's
  included), so it is not run that way here; this is said in the output.
- ``podman``: rootful podman set up as bench_daemon.py sets it up (runc, private --root
  and a short --runroot, rlimits pinned), on its default CNI network (cni-podman0, the
  portmap plugin's iptables DNAT). The iptables rules and chains and the bridge its CNI
  plugins add during the run are removed afterwards (only those).
Everything started is stopped and removed by the bench (by PID / by name).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import re
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
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
    """Rootful podman set up as bench_daemon.py sets it up (runc, private --root and a
    short --runroot under /run, rlimits pinned: root lacks CAP_SYS_RESOURCE here), on its
    default CNI network (cni-podman0, portmap's DNAT)."""

    def __init__(self, work: str, busybox_tar: str) -> None:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import bench_daemon

        self.short = tempfile.mkdtemp(prefix="bbn-", dir="/run")
        self.engine = bench_daemon.Podman(work, self.short)
        self.engine.load(busybox_tar)
        self.version = self.engine.version

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*self.engine.cli, *args], capture_output=True, text=True, env=self.engine.env,
            timeout=120,
        )  # fmt: skip
        if check and result.returncode:
            raise subprocess.CalledProcessError(
                result.returncode, ["podman", *args], result.stdout, result.stderr
            )
        return result

    def close(self) -> None:
        self.engine.close()
        shutil.rmtree(self.short, ignore_errors=True)


def iptables_state() -> dict[str, list[str]]:
    """``iptables -S`` of the filter and nat tables (podman's CNI plugins write there)."""
    out = {}
    for table in ("filter", "nat"):
        result = subprocess.run(["iptables", "-t", table, "-S"], capture_output=True, text=True)
        out[table] = result.stdout.splitlines()
    return out


def undo_cni(before: dict[str, list[str]], bridge_before: bool) -> list[str]:
    """Remove the CNI rules, chains and bridge that appeared during the run, only those."""
    done = []
    for table, lines in iptables_state().items():
        new = [line for line in lines if line not in before[table] and "CNI" in line]
        for line in new:
            if line.startswith("-A "):
                args = ["-D", *shlex.split(line)[1:]]
                subprocess.run(["iptables", "-t", table, *args], capture_output=True)
                done.append(f"{table}: {line}")
        for line in new:
            if line.startswith("-N "):
                chain = line.split()[1]
                subprocess.run(["iptables", "-t", table, "-F", chain], capture_output=True)
                subprocess.run(["iptables", "-t", table, "-X", chain], capture_output=True)
                done.append(f"{table}: chain {chain}")
    if not bridge_before and os.path.exists("/sys/class/net/cni-podman0"):
        subprocess.run(["ip", "link", "delete", "cni-podman0"], capture_output=True)
        done.append("cni-podman0")
    return done


SINK_PORT = 5001
# busybox nc quits when either direction reaches EOF, so the receiver's stdin must never
# end: a FIFO with a writer kept open. One nc per transfer, restarted in a loop.
SINK = (
    f"mkfifo /tmp/bench-fifo && {{ sleep 100000 > /tmp/bench-fifo & }} && "
    f"while true; do nc -l -p {SINK_PORT} < /tmp/bench-fifo > /dev/null; done"
)


def send_script(ip: str, port: int, mb: int, busybox: str = "busybox") -> str:
    return (
        f"{busybox} time sh -c '{busybox} dd if=/dev/zero bs=1M count={mb} 2>/dev/null"
        f" | {busybox} nc {ip} {port}'"
    )


def parse_time(out: str) -> float | None:
    m = re.search(r"real\s+(\d+)m\s*([\d.]+)s", out)
    return int(m.group(1)) * 60 + float(m.group(2)) if m else None


def throughput(
    send: Callable[[], subprocess.CompletedProcess[str]], mb: int, rounds: int
) -> dict[str, float] | str:
    """``rounds`` transfers of ``mb`` MiB; MB/s (MiB/s) median and best."""
    speeds: list[float] = []
    last = ""
    for _ in range(rounds * 4):
        if len(speeds) == rounds:
            break
        result = send()
        seconds = parse_time(result.stderr)
        if result.returncode or seconds is None or seconds <= 0:
            last = (result.stderr or result.stdout).strip()[-200:]
            time.sleep(0.3)  # the receiver's next nc is not listening yet
            continue
        speeds.append(mb / seconds)
        time.sleep(0.3)
    if not speeds:
        return f"failed: {last}"
    return {"MiB_s_median": round(statistics.median(speeds), 1),
            "MiB_s_best": round(max(speeds), 1), "transfers": len(speeds)}  # fmt: skip


@contextlib.contextmanager
def host_sink(port: int) -> Iterator[None]:
    """The receiver on the host, the same busybox nc loop as in the containers."""
    tmp = tempfile.mkdtemp(prefix="bench-net-sink-")
    busybox = shutil.which("busybox") or "/bin/busybox"
    script = (
        SINK.replace("/tmp/bench-fifo", f"{tmp}/fifo")
        .replace(f"-p {SINK_PORT}", f"-p {port}")
        .replace("nc -l", f"{busybox} nc -l")
    )
    proc = subprocess.Popen(["sh", "-c", script], start_new_session=True)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def many(
    label: str,
    results: dict[str, dict[str, float] | str],
    run: Callable[..., object],
    rm: Callable[[list[str]], object],
    count: int,
) -> None:
    """``count`` detached containers with ``-p 80`` on a bridge, one CLI call at a time,
    then one ``rm -f`` of them all."""
    names = [f"m{i}" for i in range(count)]
    start = time.monotonic()
    try:
        for name in names:
            run("run", "-d", "--name", name, "-p", "80", "busybox", "sleep", "600")
        made = time.monotonic() - start
    finally:
        start = time.monotonic()
        rm(names)
    removed = time.monotonic() - start
    results[f"{label}-{count}-containers"] = {"create_start_s": round(made, 2),
                                              "remove_s": round(removed, 2)}  # fmt: skip
    log(f"{label}: {count} networked containers: run -d {made:.1f} s, rm -f {removed:.1f} s")


def c2c(
    exec_: Callable[..., subprocess.CompletedProcess[str]],
    sink_ip: str,
    mb: int,
    rounds: int,
) -> dict[str, float] | str:
    """From container ``cli`` to container ``sink`` (both already running)."""
    return throughput(
        lambda: exec_("exec", "cli", "sh", "-c", send_script(sink_ip, SINK_PORT, mb), check=False),
        mb,
        rounds,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--megabytes", type=int, default=500, help="per transfer")
    parser.add_argument("--transfers", type=int, default=3)
    parser.add_argument("--containers", type=int, default=50)
    parser.add_argument("--engines", default="berth,podman,docker")
    args = parser.parse_args()
    engines = set(args.engines.split(","))
    if os.geteuid() != 0:
        sys.exit("bench_network: needs root")
    if not shutil.which("wrk"):
        sys.exit("bench_network: wrk is not installed (apt-get install wrk; scripts/setup does)")
    work = tempfile.mkdtemp(prefix="bench-network-", dir="/var/tmp")
    os.chmod(work, 0o711)
    address = host_address()
    results: dict[str, dict[str, float] | str] = {}
    log(f"load average at start: {os.getloadavg()[0]:.2f}")

    def measure(name: str, host: str, port: int) -> None:
        wait_http(host, port)
        results[name] = wrk(f"http://{host}:{port}/index.html", args.seconds, args.connections)
        log(f"{name}: {results[name]}")

    def transfer(name: str, value: dict[str, float] | str) -> None:
        results[f"c2c-{name}"] = value
        log(f"c2c {name}: {value}")

    port = free_port()
    with host_httpd(port):
        measure("host-direct", "127.0.0.1", port)
    port = free_port()
    busybox = shutil.which("busybox") or "/bin/busybox"
    with host_sink(port):
        transfer("host-loopback", throughput(
            lambda: subprocess.run(["sh", "-c", send_script("127.0.0.1", port, args.megabytes,
                                                            busybox)],
                                   capture_output=True, text=True, timeout=300),
            args.megabytes, args.transfers,
        ))  # fmt: skip

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
        for name, script in (("sink", SINK), ("cli", "sleep 3600")):
            berth.cli("run", "-d", "--name", name, "--network", "benchnet", "busybox", "sh",
                      "-c", script)  # fmt: skip
        sink = berth.cli("inspect", "-f", "{{.NetworkSettings.Networks.benchnet.IPAddress}}",
                         "sink").stdout.strip()  # fmt: skip
        transfer("berth-user-network", c2c(berth.cli, sink, args.megabytes, args.transfers))
        berth.cli("rm", "-f", "sink", "cli")
        many("berth", results,
             lambda *a: berth.cli(a[0], "--network", "benchnet", *a[1:]),
             lambda names: berth.cli("rm", "-f", *names), args.containers)  # fmt: skip
        berth.cli("network", "rm", "benchnet")
        berth.cli("save", "-o", tar, "busybox")
    finally:
        berth.close()

    if "podman" not in engines:
        pass
    elif shutil.which("podman"):
        podman = None
        iptables_before = iptables_state()
        bridge_before = os.path.exists("/sys/class/net/cni-podman0")
        try:
            os.makedirs(f"{work}/podman")
            podman = Podman(f"{work}/podman", tar)
            port = free_port()
            podman.run("run", "-d", "--name", "web", "-p", f"{port}:80", "busybox", "sh", "-c",
                       HTTPD)  # fmt: skip
            measure(f"podman-{podman.version}-published-host", address, port)
            podman.run("rm", "-f", "-t", "0", "web")
            for name, script in (("sink", SINK), ("cli", "sleep 3600")):
                podman.run("run", "-d", "--name", name, "busybox", "sh", "-c", script)
            sink = podman.run("inspect", "-f", "{{.NetworkSettings.IPAddress}}",
                              "sink").stdout.strip()  # fmt: skip
            transfer("podman-cni-bridge", c2c(podman.run, sink, args.megabytes, args.transfers))
            podman.run("rm", "-f", "-t", "0", "sink", "cli")
            many("podman", results, podman.run,
                 lambda names: podman.run("rm", "-f", "-t", "0", *names),
                 args.containers)  # fmt: skip
        except Exception as exc:  # reported; the others go on
            detail = getattr(exc, "stderr", "") or exc
            results["podman"] = f"failed: {str(detail).strip()[-300:]}"
            log(f"podman: {results['podman']}")
        finally:
            if podman is not None:
                podman.close()
            removed = undo_cni(iptables_before, bridge_before)
            if removed:
                log(f"podman's CNI: removed {len(removed)} rules/chains/links made in this run")
    else:
        results["podman"] = "skipped: podman is not installed"

    if "docker" not in engines:
        pass
    elif shutil.which("dockerd"):
        docker = None
        cgroups_before = set(glob.glob("/sys/fs/cgroup/*/docker"))
        try:
            os.makedirs(f"{work}/docker")
            docker = Docker(f"{work}/docker", tar)
            port = free_port()
            docker.cli("run", "-d", "--name", "web", "-p", f"{port}:80", "busybox", "sh", "-c",
                       HTTPD)  # fmt: skip
            measure(f"docker-{docker.version}-proxy (--iptables=false)", address, port)
            docker.cli("rm", "-f", "web")
            for name, script in (("sink", SINK), ("cli", "sleep 3600")):
                docker.cli("run", "-d", "--name", name, "busybox", "sh", "-c", script)
            sink = docker.cli("inspect", "-f", "{{.NetworkSettings.IPAddress}}",
                              "sink").stdout.strip()  # fmt: skip
            transfer("docker-bridge", c2c(docker.cli, sink, args.megabytes, args.transfers))
            docker.cli("rm", "-f", "sink", "cli")
            many("docker", results, docker.cli, lambda names: docker.cli("rm", "-f", *names),
                 args.containers)  # fmt: skip
        except Exception as exc:  # reported; the others go on
            detail = getattr(exc, "stderr", "") or exc
            results["docker"] = f"failed: {str(detail).strip()[-300:]}"
            log(f"docker: {results['docker']}")
        finally:
            if docker is not None:
                docker.close()
            for cgroup in set(glob.glob("/sys/fs/cgroup/*/docker")) - cgroups_before:
                with contextlib.suppress(OSError):
                    os.rmdir(cgroup)
    else:
        results["docker"] = "skipped: dockerd is not installed"

    log(f"load average at end: {os.getloadavg()[0]:.2f}")
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
