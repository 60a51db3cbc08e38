#!/usr/bin/env python3
"""Networking speed, Berth against the host, Docker and Podman, side by side in one run.

    .venv/bin/python bench/bench_network.py [--seconds 4] [--connections 50]
        [--rounds 3] [--latency-seconds 2] [--paced-seconds 5] [--latency-connections 4]
        [--pace-ms 4]
        [--megabytes 500] [--transfers 3] [--containers 50] [--engines berth,podman,docker]
        [--json FILE]

Every engine is started first and its web server kept up, so the HTTP contenders are
measured in the same minutes, interleaved:

1. HTTP throughput through published ports: ``wrk -t2 -c<connections>`` from the host
   against a busybox ``httpd`` serving a 600-byte file, once per contender.
2. HTTP latency, ``--rounds`` rounds, the contenders' order rotating each round, three runs
   each: ``low`` (``wrk -t2 -c<latency-connections>``, closed loop) and ``paced`` (the
   same connections, each waiting ``--pace-ms`` after every response, so every contender
   gets about the same offered load well below its capacity). Reported per contender:
   the medians over the rounds of p50/p90/p99/p99.9/max, the spread of p99, and p99 over
   host-direct's p99. busybox httpd listens with a backlog of 9 (``ss -ltn`` Send-Q) and
   forks per connection, and wrk opens a new connection per request (httpd closes each),
   so with more connections than the accept queue holds (10) SYNs and handshake-ending
   ACKs are dropped (``TcpExtListenOverflows``/``ListenDrops`` in the server's network
   namespace): the client resends the SYN after 1 s, or its request after an RTO of
   200 ms and up. That, for every contender, host-direct included, is the 0.2-1.5 s p99
   of the throughput runs (docker-proxy's own backend connect waits out its dropped
   SYNs inside wrk's timer, so its tail looks worst). The latency runs stay below it;
   the overflow counters of every run are read before and after from
   ``/proc/PID/net/netstat`` of the server's namespace (and the host's, where
   docker-proxy listens and the client's SYN retransmits count).
   Each run goes to a server port of its own (see httpd_script), so no run reuses a
   source port whose TIME_WAIT the server still holds. ``one-by-one`` is a third latency
   run: one client, one request at a time, timed from before ``connect()`` to the close
   (wrk's timer starts after the handshake, where DNAT does its work and where a dropped
   SYN would wait).
3. Container-to-container throughput: ``dd if=/dev/zero bs=1M count=N | nc IP PORT``
   from one busybox container to a ``nc -l`` in another on the same bridge, timed with
   busybox ``time`` inside the sender; the same busybox pipeline over 127.0.0.1 on the
   host is the reference.
4. ``--containers`` detached containers with ``-p 80`` on a bridge, created+started one
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
Everything started is stopped and removed by the bench, also on errors and SIGTERM:
containers removed, berthd, its monitor, dockerd (and what names its work directory:
its containerd) stopped by PID, mounts under the work directory (dockerd's netns)
detached, dockerd's bridge and the CNI leftovers removed.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import glob
import hashlib
import json
import math
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv" / "bin"
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_daemon  # noqa: E402


# Every wrk or one-by-one run gets a server port of its own (many httpd listeners in one
# container; all die with it). Each request is a new connection from one client address:
# past ~14,000 of them towards one address:port (connect() takes the even half of the
# 28,000-port range first) a source port comes back while the server still holds its
# TIME_WAIT (60 s). Without NAT the server takes the new SYN (its timestamp is newer);
# through a NAT that had to pick another source port (conntrack's own TIME_WAIT entries
# clash) the SYN can carry another connection's timestamps and is refused (PAWS,
# TcpExtPAWSTimewait): RST, a quick SYN retransmit, sometimes a 1 s one. That is a
# property of the churn, not of a path, so no run here comes near it.
def httpd_script(count: int) -> str:
    """busybox httpd on ports 80 .. 80+count-1 (all but 80 daemonized)."""
    return (
        "mkdir -p /www && head -c 600 /dev/zero | tr '\\0' x > /www/index.html && "
        f"for p in $(seq 81 {79 + count}); do httpd -p $p -h /www; done; "
        "exec httpd -f -p 80 -h /www"
    )


# wrk's done() hook: every percentile we report (microseconds) and the error counts.
LUA_REPORT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {\\"requests\\": %d, \\"duration_us\\": %d, \\"errors\\": %d, "
    .. "\\"timeouts\\": %d, \\"p50\\": %d, \\"p90\\": %d, \\"p99\\": %d, "
    .. "\\"p999\\": %d, \\"max\\": %d}\\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max))
end
"""
LATENCY_KEYS = ("p50", "p90", "p99", "p999", "max")
MODES = ("low", "paced", "one-by-one")
COUNTERS = ("ListenOverflows", "ListenDrops", "TCPSynRetrans", "RetransSegs", "PAWSTimewait")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def host_address() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))
        return str(s.getsockname()[0])


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port free now and not handed out before in this run (the kernel may offer one
    twice: it is released as soon as it is chosen)."""
    while True:
        with socket.socket() as s:
            s.bind(("0.0.0.0", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


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


def wrk(url: str, seconds: int, connections: int, script: str) -> dict[str, float]:
    """One wrk run; latencies in ms (wrk times from the request's write, after connect)."""
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "-s", script, url],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    ).stdout
    m = re.search(r"^WRKJSON (\{.*\})$", out, re.M)
    if not m:
        return {"rps": 0.0, "errors": -1.0}
    data = json.loads(m.group(1))
    result = {
        "rps": round(data["requests"] / max(data["duration_us"], 1) * 1e6, 1),
        "requests": float(data["requests"]),
        "errors": float(data["errors"]),
        "timeouts": float(data["timeouts"]),
    }
    for key in LATENCY_KEYS:
        result[f"{key}_ms"] = round(data[key] / 1000, 3)
    return result


def percentile(ordered: list[float], q: float) -> float:
    """Nearest rank, as wrk reports its percentiles."""
    return ordered[min(len(ordered), max(1, math.ceil(q / 100 * len(ordered)))) - 1]


def one_by_one(host: str, port: int, seconds: int) -> dict[str, float]:
    """One client, one request at a time, each timed from before ``connect`` to the
    server's close: unlike wrk's timer, this includes the handshake, which is where DNAT
    does its work (the SYN makes the conntrack entry) and where a dropped SYN waits."""
    request = b"GET /index.html HTTP/1.0\r\n\r\n"
    samples: list[float] = []
    errors = 0
    gc_was = gc.isenabled()
    gc.disable()  # a collection would land in some sample's time
    start = time.perf_counter()
    try:
        while time.perf_counter() - start < seconds:
            t0 = time.perf_counter()
            try:
                with socket.socket() as s:
                    s.settimeout(10)
                    s.connect((host, port))
                    s.sendall(request)
                    while s.recv(65536):
                        pass
            except OSError:
                errors += 1
                continue
            samples.append((time.perf_counter() - t0) * 1000)
    finally:
        if gc_was:
            gc.enable()
    elapsed = time.perf_counter() - start
    if not samples:
        return {"rps": 0.0, "errors": float(errors)}
    samples.sort()
    result = {"rps": round(len(samples) / elapsed, 1), "requests": float(len(samples)),
              "errors": float(errors), "timeouts": 0.0}  # fmt: skip
    for key, q in (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9)):
        result[f"{key}_ms"] = round(percentile(samples, q), 3)
    result["max_ms"] = round(samples[-1], 3)
    return result


def tcp_counters(pid: int | str = "self") -> dict[str, int]:
    """TCP counters of ``pid``'s network namespace (``nstat``'s, read directly)."""
    found: dict[str, int] = {}
    for name, prefix in (("netstat", "TcpExt:"), ("snmp", "Tcp:")):
        with open(f"/proc/{pid}/net/{name}") as f:
            rows = [line.split() for line in f if line.startswith(prefix)]
        for keys, values in zip(rows[::2], rows[1::2], strict=True):
            found.update(zip(keys[1:], map(int, values[1:]), strict=True))
    return {k: found.get(k, 0) for k in COUNTERS}


def listen_backlog(pid: int | None, port: int) -> int | None:
    """The accept queue's size (``ss -ltn`` Send-Q) of the listener on ``port``."""
    argv = ["ss", "-Hltn", f"sport = :{port}"]
    if pid is not None:
        argv = ["nsenter", "-t", str(pid), "-n", *argv]
    out = subprocess.run(argv, capture_output=True, text=True).stdout.split()
    return int(out[2]) if len(out) >= 3 and out[2].isdigit() else None


@dataclass
class Web:
    """One HTTP contender: where its throughput and latency runs go, and whose network
    namespace holds the listening httpd (None: the host's)."""

    name: str
    host: str
    port: int
    latency_ports: list[int]  # one per latency run: rounds x modes
    server_pid: int | None
    server_port: int = 80  # where the throughput run's httpd listens in its namespace
    proxy: bool = False  # a userland proxy listens on the host for it

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"httpd_backlog": listen_backlog(self.server_pid, self.server_port)}
        if self.proxy:
            info["host_listener_backlog"] = listen_backlog(None, self.port)
        return info


def measure_http(web: Web, port: int, seconds: int, connections: int, script: str) -> dict:
    """A wrk run (``script`` empty: one_by_one) with the overflow counters read around it."""
    wait_http(web.host, port)
    host_before = tcp_counters()
    server_before = tcp_counters(web.server_pid) if web.server_pid else host_before
    result: dict[str, Any]
    if script:
        result = wrk(f"http://{web.host}:{port}/index.html", seconds, connections, script)
    else:
        result = one_by_one(web.host, port, seconds)
    host_after = tcp_counters()
    server_after = tcp_counters(web.server_pid) if web.server_pid else host_after
    result["server_listen_overflows"] = (
        server_after["ListenOverflows"] - server_before["ListenOverflows"]
    )
    result["server_listen_drops"] = server_after["ListenDrops"] - server_before["ListenDrops"]
    # the host's counters are shared with everything else running here
    result["host_syn_retrans"] = host_after["TCPSynRetrans"] - host_before["TCPSynRetrans"]
    result["host_retrans_segs"] = host_after["RetransSegs"] - host_before["RetransSegs"]
    if web.server_pid:
        result["host_listen_overflows"] = (
            host_after["ListenOverflows"] - host_before["ListenOverflows"]
        )
        # SYN-ACKs the server resent: handshakes whose last ACK met a full accept queue
        result["server_synack_retrans"] = (
            server_after["TCPSynRetrans"] - server_before["TCPSynRetrans"]
        )
    # SYNs refused by a TIME_WAIT because their timestamp is older than the last one seen
    result["server_paws_timewait"] = server_after["PAWSTimewait"] - server_before["PAWSTimewait"]
    return result


class Berth:
    def __init__(self, work: str) -> None:
        self.base = work
        self.sock = f"unix://{work}/berth.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [str(VENV / "berthd"), "-H", self.sock, "--root", f"{self.base}/root",
             "--exec-root", f"{self.base}/run"],
            stdout=open(f"{self.base}/berthd.log", "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        for _ in range(200):
            if self.cli("version", check=False).returncode == 0:
                break
            time.sleep(0.1)
        subprocess.run(
            ["curl", "-s", "-XPOST", "--unix-socket", f"{self.base}/berth.sock",
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
        """Containers, then berthd (it drops its bridge and tables when none runs), then
        the monitor, which outlives berthd by design."""
        if self.proc is not None and self.proc.poll() is None:
            ids = self.cli("ps", "-aq", check=False).stdout.split()
            if ids:
                self.cli("rm", "-f", *ids, check=False)
        if self.proc is not None:
            bench_daemon.stop_child(self.proc, timeout=30)
        with contextlib.suppress(OSError, ValueError):
            monitor = int(Path(f"{self.base}/run/monitor.pid").read_text())
            if self.base in bench_daemon._cmdline(monitor):
                os.kill(monitor, signal.SIGTERM)
                if not bench_daemon.wait_gone(monitor, 15):
                    os.kill(monitor, signal.SIGKILL)
        bench_daemon.unmount_under(self.base)
        # berthd drops its bridge and tables at a stop with no container running; if it
        # could not, they are this run's (named from its exec root): remove them
        digest = hashlib.sha256(f"{self.base}/run".encode()).hexdigest()[:6]
        if os.path.exists(f"/sys/class/net/berth{digest}"):
            log(f"berth: removing leftover bridge berth{digest}")
            subprocess.run(["ip", "link", "del", f"berth{digest}"], check=False)
        tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True)
        for family, table in (("inet", f"berth-{digest}"), ("ip", f"berth-{digest}-nat")):
            if f"table {family} {table}\n" in tables.stdout + "\n":
                log(f"berth: removing leftover nftables table {family} {table}")
                subprocess.run(["nft", "delete", "table", family, table], check=False)


@contextlib.contextmanager
def host_httpd(port: int) -> Iterator[int]:
    """busybox httpd on the host's loopback; yields its PID."""
    www = tempfile.mkdtemp(prefix="bench-net-www-")
    Path(www, "index.html").write_text("x" * 600)
    busybox = shutil.which("busybox") or "/bin/busybox"
    proc = subprocess.Popen([busybox, "httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", www])
    try:
        wait_http("127.0.0.1", port)
        yield proc.pid
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(www, ignore_errors=True)


class Docker:
    """A private dockerd (--iptables=false: docker-proxy carries published ports)."""

    BRIDGE = "bnchdk0"

    def __init__(self, work: str) -> None:
        self.work = work
        self.sock = f"unix://{work}/docker.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self.bridge = False
        self.version = ""

    def start(self, busybox_tar: str) -> None:
        subprocess.run(["ip", "link", "add", self.BRIDGE, "type", "bridge"], check=True)
        self.bridge = True
        subprocess.run(["ip", "addr", "add", "10.251.0.1/24", "dev", self.BRIDGE], check=True)
        subprocess.run(["ip", "link", "set", self.BRIDGE, "up"], check=True)
        Path(self.work, "daemon.json").write_text("{}")
        self.proc = subprocess.Popen(
            ["dockerd", f"--data-root={self.work}/data", f"--exec-root={self.work}/exec",
             f"--pidfile={self.work}/docker.pid", f"--host={self.sock}",
             f"--config-file={self.work}/daemon.json", "--iptables=false", "--ip-masq=false",
             f"--bridge={self.BRIDGE}", "--storage-driver=overlay2", "--log-level=error"],
            stdout=open(f"{self.work}/dockerd.log", "ab"),  # noqa: SIM115
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
        """Containers, dockerd by PID, whatever still names the work directory (its
        containerd), the netns bind mount dockerd leaves in its exec root, the bridge."""
        if self.proc is not None and self.proc.poll() is None:
            ids = self.cli("ps", "-aq", check=False).stdout.split()
            if ids:
                self.cli("rm", "-f", *ids, check=False)
        if self.proc is not None:
            bench_daemon.stop_child(self.proc, timeout=60)
        deadline = time.monotonic() + 10
        while (left := bench_daemon.pids_referencing(self.work)) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid, _ in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        bench_daemon.unmount_under(self.work)
        if self.bridge:
            subprocess.run(["ip", "link", "del", self.BRIDGE], check=False)


class Podman:
    """Rootful podman set up as bench_daemon.py sets it up (runc, private --root and a
    short --runroot under /run, rlimits pinned: root lacks CAP_SYS_RESOURCE here), on its
    default CNI network (cni-podman0, portmap's DNAT)."""

    def __init__(self, work: str) -> None:
        self.short = tempfile.mkdtemp(prefix="bbn-", dir="/run")
        self.engine: bench_daemon.Podman | None = None
        self.work = work
        self.version = ""

    def start(self, busybox_tar: str) -> None:
        self.engine = bench_daemon.Podman(self.work, self.short)
        self.engine.load(busybox_tar)
        self.version = self.engine.version

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        assert self.engine is not None
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
        if self.engine is not None:
            self.engine.close()
        bench_daemon.unmount_under(self.short)
        bench_daemon.unmount_under(self.work)
        shutil.rmtree(self.short, ignore_errors=True)


def iptables_state() -> dict[str, list[str]]:
    """``iptables -S`` of the filter and nat tables (podman's CNI plugins write there)."""
    out = {}
    for table in ("filter", "nat"):
        result = subprocess.run(["iptables", "-t", table, "-S"], capture_output=True, text=True)
        out[table] = result.stdout.splitlines()
    return out


CNI_SHARED = re.compile(r"^CNI-(FORWARD|ADMIN|HOSTPORT-[A-Z]+)$")


def undo_cni(before: dict[str, list[str]], bridge_before: bool) -> None:
    """Remove what podman's CNI plugins set up for everyone during this run (the shared
    CNI-FORWARD/CNI-ADMIN/CNI-HOSTPORT-* chains, the jumps to them, cni-podman0) when
    they did not exist before and nobody else's container still uses them. Per-container
    chains are podman's to remove, and it does; other sessions' podmans are left alone."""
    done = []
    for table, lines in iptables_state().items():
        chains = [
            line.split()[1]
            for line in lines
            if line.startswith("-N ") and line not in before[table]
            and CNI_SHARED.match(line.split()[1])
        ]  # fmt: skip
        # a per-container rule (a CNI-DN-* jump, a /32 address) means some container uses it
        if any(
            line.startswith(f"-A {c} ") and ("CNI-DN-" in line or "/32" in line)
            for c in chains
            for line in lines
        ):
            continue
        for line in lines:
            words = shlex.split(line)
            if (
                line.startswith("-A ") and line not in before[table]
                and words[1] not in chains and words[-1] in chains
            ):  # fmt: skip
                subprocess.run(["iptables", "-t", table, "-D", *words[1:]], capture_output=True)
                done.append(f"{table}: {line}")
        for chain in chains:
            subprocess.run(["iptables", "-t", table, "-F", chain], capture_output=True)
        for chain in chains:
            subprocess.run(["iptables", "-t", table, "-X", chain], capture_output=True)
            done.append(f"{table}: chain {chain}")
    bridge = "/sys/class/net/cni-podman0"
    if not bridge_before and os.path.exists(bridge) and not os.listdir(f"{bridge}/brif"):
        subprocess.run(["ip", "link", "delete", "cni-podman0"], capture_output=True)
        done.append("cni-podman0")
    if done:
        log(f"podman's CNI: removed {len(done)} rules/chains/links made in this run")


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


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the rounds, the spread of p99, the overflow counters summed."""
    out: dict[str, Any] = {"rounds": len(runs)}
    for key in ("rps", *(f"{k}_ms" for k in LATENCY_KEYS)):
        values = [r[key] for r in runs if key in r]
        if values:
            out[key] = round(statistics.median(values), 3)
    p99 = [r["p99_ms"] for r in runs if "p99_ms" in r]
    if p99:
        out["p99_ms_min"], out["p99_ms_max"] = min(p99), max(p99)
    for key in ("errors", "timeouts", "server_listen_overflows", "server_listen_drops",
                "host_syn_retrans", "host_listen_overflows", "server_synack_retrans",
                "server_paws_timewait"):  # fmt: skip
        if any(key in r for r in runs):
            out[key] = int(sum(r.get(key, 0) for r in runs))
    return out


def latency_table(latency: dict[str, dict[str, dict[str, Any]]], mode: str) -> list[str]:
    """A readable table of one mode, p99 as a ratio of host-direct's."""
    base = latency.get("host-direct", {}).get(mode, {}).get("p99_ms")
    lines = [f"latency ({mode}): contender  req/s  p50 p90 p99 (min-max) p99.9 max ms"
             "  p99/direct  overflows(server) paws-tw(server) synretrans(host)"]  # fmt: skip
    for name, modes in latency.items():
        s = modes[mode]
        ratio = f"{s['p99_ms'] / base:.2f}x" if base and "p99_ms" in s else "-"
        lines.append(
            f"  {name:<40} {s.get('rps', 0):>7.0f}  {s.get('p50_ms', -1):.2f} "
            f"{s.get('p90_ms', -1):.2f} {s.get('p99_ms', -1):.2f} "
            f"({s.get('p99_ms_min', -1):.2f}-{s.get('p99_ms_max', -1):.2f}) "
            f"{s.get('p999_ms', -1):.2f} {s.get('max_ms', -1):.2f}  {ratio}  "
            f"{s.get('server_listen_overflows', 0)}  {s.get('server_paws_timewait', 0)}  "
            f"{s.get('host_syn_retrans', 0)}"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=4, help="throughput run")
    parser.add_argument("--connections", type=int, default=50, help="throughput run")
    parser.add_argument("--rounds", type=int, default=3, help="latency rounds")
    parser.add_argument("--latency-seconds", type=int, default=2, help="low and one-by-one")
    parser.add_argument("--paced-seconds", type=int, default=5)
    parser.add_argument("--latency-connections", type=int, default=4)
    parser.add_argument("--pace-ms", type=int, default=4, help="think time, paced runs")
    parser.add_argument("--megabytes", type=int, default=500, help="per transfer")
    parser.add_argument("--transfers", type=int, default=3)
    parser.add_argument("--containers", type=int, default=50)
    parser.add_argument("--engines", default="berth,podman,docker")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    engines = set(args.engines.split(","))
    if os.geteuid() != 0:
        sys.exit("bench_network: needs root")
    if not shutil.which("wrk"):
        sys.exit("bench_network: wrk is not installed (apt-get install wrk; scripts/setup does)")
    if args.latency_connections < 2:
        sys.exit("bench_network: --latency-connections must be at least 2 (wrk -t2)")
    # SIGTERM unwinds like Ctrl-C, so every cleanup below runs
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results: dict[str, Any] = {"load_average_start": round(os.getloadavg()[0], 2)}
    log(f"load average at start: {os.getloadavg()[0]:.2f}")
    with contextlib.ExitStack() as stack:
        work = tempfile.mkdtemp(prefix="bench-network-", dir="/var/tmp")
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        os.chmod(work, 0o711)
        report = os.path.join(work, "report.lua")
        Path(report).write_text(LUA_REPORT)
        paced = os.path.join(work, "paced.lua")
        Path(paced).write_text(f"delay = function() return {args.pace_ms} end\n{LUA_REPORT}")
        run_all(args, engines, work, report, paced, stack, results)
    results["load_average_end"] = round(os.getloadavg()[0], 2)
    log(f"load average at end: {os.getloadavg()[0]:.2f}")
    output = json.dumps(results, indent=2)
    if args.json:
        Path(args.json).write_text(output + "\n")
    print(output)
    return 0


def run_all(
    args: argparse.Namespace,
    engines: set[str],
    work: str,
    report: str,
    paced: str,
    stack: contextlib.ExitStack,
    results: dict[str, Any],
) -> None:
    """Start every engine and web server, measure HTTP side by side, then the rest."""
    address = host_address()
    webs: list[Web] = []

    # -- the engines and their web servers, all up at once; ports: see httpd_script
    n = 1 + args.rounds * len(MODES)
    ports = [free_port() for _ in range(n)]
    webs.append(Web("host-direct", "127.0.0.1", ports[0], ports[1:], None, ports[0]))
    pid = stack.enter_context(host_httpd(ports[0]))
    for port in ports[1:]:
        stack.enter_context(host_httpd(port))
    log(f"host-direct: httpd {pid}")

    def published(bind: str, first: int) -> tuple[list[int], list[str]]:
        """``n`` host ports for container ports ``first`` .., and their -p flags."""
        host_ports = [free_port() for _ in range(n)]
        flags = [f"--publish={bind}{h}:{first + i}" for i, h in enumerate(host_ports)]
        return host_ports, flags

    os.makedirs(f"{work}/berth")
    berth = Berth(f"{work}/berth")
    stack.callback(berth.close)
    berth.start()
    tar = os.path.join(work, "busybox.tar")
    berth.cli("save", "-o", tar, "busybox")
    # container ports: 80.. direct to the container IP, 80+n.. on 127.0.0.1, 80+2n.. on
    # the host's address
    loopback, loopback_flags = published("127.0.0.1:", 80 + n)
    host, host_flags = published("", 80 + 2 * n)
    berth.cli("run", "-d", "--name", "web", *loopback_flags, *host_flags,
              "busybox", "sh", "-c", httpd_script(3 * n))  # fmt: skip
    ip = berth.cli("inspect", "-f", "{{.NetworkSettings.IPAddress}}", "web").stdout.strip()
    pid = int(berth.cli("inspect", "-f", "{{.State.Pid}}", "web").stdout)
    webs.append(Web("berth-container-ip", ip, 80, list(range(81, 80 + n)), pid))
    webs.append(Web("berth-published-127", "127.0.0.1", loopback[0], loopback[1:], pid, 80 + n))
    webs.append(Web("berth-published-host", address, host[0], host[1:], pid, 80 + 2 * n))

    podman: Podman | None = None
    if "podman" not in engines:
        pass
    elif not shutil.which("podman"):
        results["podman"] = "skipped: podman is not installed"
    else:
        stack.callback(undo_cni, iptables_state(), os.path.exists("/sys/class/net/cni-podman0"))
        os.makedirs(f"{work}/podman")
        podman = Podman(f"{work}/podman")
        stack.callback(podman.close)
        try:
            podman.start(tar)
            host, flags = published("", 80)
            podman.run("run", "-d", "--name", "web", *flags, "busybox", "sh", "-c",
                       httpd_script(n))  # fmt: skip
            pid = int(podman.run("inspect", "-f", "{{.State.Pid}}", "web").stdout)
            webs.append(Web(f"podman-{podman.version.split()[1]}-published-host", address,
                            host[0], host[1:], pid))  # fmt: skip
        except Exception as exc:  # reported; the others go on
            detail = getattr(exc, "stderr", "") or exc
            results["podman"] = f"failed: {str(detail).strip()[-300:]}"
            log(f"podman: {results['podman']}")
            podman = None

    docker: Docker | None = None
    if "docker" not in engines:
        pass
    elif not shutil.which("dockerd"):
        results["docker"] = "skipped: dockerd is not installed"
    else:
        cgroups_before = set(glob.glob("/sys/fs/cgroup/*/docker"))

        def drop_cgroups() -> None:
            for cgroup in set(glob.glob("/sys/fs/cgroup/*/docker")) - cgroups_before:
                with contextlib.suppress(OSError):
                    os.rmdir(cgroup)

        stack.callback(drop_cgroups)
        os.makedirs(f"{work}/docker")
        docker = Docker(f"{work}/docker")
        stack.callback(docker.close)
        try:
            docker.start(tar)
            host, flags = published("", 80)
            docker.cli("run", "-d", "--name", "web", *flags, "busybox", "sh", "-c",
                       httpd_script(n))  # fmt: skip
            pid = int(docker.cli("inspect", "-f", "{{.State.Pid}}", "web").stdout)
            webs.append(Web(f"docker-{docker.version}-proxy (--iptables=false)", address,
                            host[0], host[1:], pid, proxy=True))  # fmt: skip
        except Exception as exc:  # reported; the others go on
            detail = getattr(exc, "stderr", "") or exc
            results["docker"] = f"failed: {str(detail).strip()[-300:]}"
            log(f"docker: {results['docker']}")
            docker = None

    # -- HTTP: throughput once each, then latency rounds, the order rotating
    results["listeners"] = {w.name: w.describe() for w in webs}
    log(f"listen backlogs: {results['listeners']}")
    for web in webs:
        results[web.name] = measure_http(web, web.port, args.seconds, args.connections, report)
        log(f"{web.name}: {results[web.name]}")
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        w.name: {mode: [] for mode in MODES} for w in webs
    }
    for round_ in range(args.rounds):
        shift = round_ % len(webs)
        for web in webs[shift:] + webs[:shift]:
            for i, (mode, script) in enumerate(zip(MODES, (report, paced, ""), strict=True)):
                seconds = args.paced_seconds if mode == "paced" else args.latency_seconds
                r = measure_http(web, web.latency_ports[round_ * len(MODES) + i], seconds,
                                 args.latency_connections, script)  # fmt: skip
                runs[web.name][mode].append(r)
                log(f"latency {mode} round {round_ + 1} {web.name}: {r}")
    latency = {name: {mode: summarize(rs) for mode, rs in modes.items()}
               for name, modes in runs.items()}  # fmt: skip
    base = {m: latency.get("host-direct", {}).get(m, {}).get("p99_ms") for m in MODES}
    for modes in latency.values():
        for mode, s in modes.items():
            if base[mode] and "p99_ms" in s:
                s["p99_over_direct"] = round(s["p99_ms"] / base[mode], 2)
    results["latency"] = {
        "method": f"low: wrk -t2 -c{args.latency_connections} -d{args.latency_seconds}s; "
        f"paced: the same for {args.paced_seconds}s, {args.pace_ms} ms after each response; "
        f"one-by-one: one Python client for {args.latency_seconds}s, connect to close timed; "
        f"each run on a server port of its own; medians of {args.rounds} rounds",
        "runs": runs,
        "summary": latency,
    }
    for mode in MODES:
        for line in latency_table(latency, mode):
            log(line)
    berth.cli("rm", "-f", "web", check=False)
    if podman is not None:
        podman.run("rm", "-f", "-t", "0", "web", check=False)
    if docker is not None:
        docker.cli("rm", "-f", "web", check=False)

    # -- container to container, and many networked containers, one engine at a time
    def transfer(name: str, value: dict[str, float] | str) -> None:
        results[f"c2c-{name}"] = value
        log(f"c2c {name}: {value}")

    port = free_port()
    busybox = shutil.which("busybox") or "/bin/busybox"
    with host_sink(port):
        transfer("host-loopback", throughput(
            lambda: subprocess.run(["sh", "-c", send_script("127.0.0.1", port, args.megabytes,
                                                            busybox)],
                                   capture_output=True, text=True, timeout=300),
            args.megabytes, args.transfers,
        ))  # fmt: skip

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

    if podman is not None:
        pm = podman
        try:
            for name, script in (("sink", SINK), ("cli", "sleep 3600")):
                pm.run("run", "-d", "--name", name, "busybox", "sh", "-c", script)
            sink = pm.run("inspect", "-f", "{{.NetworkSettings.IPAddress}}",
                          "sink").stdout.strip()  # fmt: skip
            transfer("podman-cni-bridge", c2c(pm.run, sink, args.megabytes, args.transfers))
            pm.run("rm", "-f", "-t", "0", "sink", "cli")
            many("podman", results, pm.run,
                 lambda names: pm.run("rm", "-f", "-t", "0", *names),
                 args.containers)  # fmt: skip
        except Exception as exc:  # reported; the others go on
            detail = getattr(exc, "stderr", "") or exc
            results["podman"] = f"failed: {str(detail).strip()[-300:]}"
            log(f"podman: {results['podman']}")

    if docker is not None:
        dk = docker
        try:
            for name, script in (("sink", SINK), ("cli", "sleep 3600")):
                dk.cli("run", "-d", "--name", name, "busybox", "sh", "-c", script)
            sink = dk.cli("inspect", "-f", "{{.NetworkSettings.IPAddress}}",
                          "sink").stdout.strip()  # fmt: skip
            transfer("docker-bridge", c2c(dk.cli, sink, args.megabytes, args.transfers))
            dk.cli("rm", "-f", "sink", "cli")
            many("docker", results, dk.cli, lambda names: dk.cli("rm", "-f", *names),
                 args.containers)  # fmt: skip
        except Exception as exc:  # reported; the others go on
            detail = getattr(exc, "stderr", "") or exc
            results["docker"] = f"failed: {str(detail).strip()[-300:]}"
            log(f"docker: {results['docker']}")


if __name__ == "__main__":
    sys.exit(main())
