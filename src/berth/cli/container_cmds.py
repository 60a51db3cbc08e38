"""The container verbs beyond the lifecycle: top, stats, rename, port, update and
``container prune``, each printing what the docker CLI prints for the same call.

``stats`` computes its columns as the docker CLI does from ``/containers/{id}/stats``
(CPU % from the delta to ``precpu_stats``, memory without the inactive page cache,
network and block I/O summed), refreshes in place on a terminal, and prints one table
when its output is not a terminal or with ``--no-stream``.
"""

from __future__ import annotations

import argparse
import sys
import time
from argparse import Namespace

from berth.cli import format as fmt
from berth.cli.app import EXIT_ERROR, UsageError, error

TYPE_CHECKING = False
if TYPE_CHECKING:  # berth.client (http.client) loads in app._call, ssl blocked
    from typing import Any

    from berth.client import Client


# ---- argument builders (app.VERBS reaches them through app._builder) ----------------------


def top_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument("ps_args", nargs=argparse.REMAINDER, metavar="PS OPTIONS")


def stats_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--all", action="store_true", help="all containers, not only running")
    p.add_argument("--no-stream", action="store_true", help="one sample, then exit")
    p.add_argument("--no-trunc", action="store_true", help="full container ids")
    p.add_argument("--format", metavar="json|table|TEMPLATE")
    p.add_argument("containers", nargs="*", metavar="CONTAINER")


def rename_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument("name", metavar="NEW_NAME")


def port_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument("port", nargs="?", metavar="PRIVATE_PORT[/PROTO]")


def update_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--memory", metavar="BYTES", help="memory limit (512m, 1g)")
    p.add_argument("--memory-swap", metavar="BYTES", help="memory plus swap (-1: unlimited)")
    p.add_argument("--cpus", type=float, metavar="N", help="number of CPUs (1.5)")
    p.add_argument("-c", "--cpu-shares", type=int, metavar="N", help="relative CPU weight")
    p.add_argument("--cpuset-cpus", metavar="LIST", help="CPUs allowed (0-2,4)")
    p.add_argument("--pids-limit", type=int, metavar="N", help="-1: unlimited")
    p.add_argument("--restart", metavar="POLICY", help="no, always, unless-stopped, on-failure[:N]")
    p.add_argument("--blkio-weight", type=int, metavar="N", help="10 to 1000, 0 to disable")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")


def prune_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true", help="do not ask")
    p.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE")


# ---- top ----------------------------------------------------------------------------------


def _tabwriter(rows: list[list[str]], minwidth: int) -> str:
    """Go's tabwriter with padding 3 and ``minwidth``; the last cell is not padded."""
    widths: dict[int, int] = {}
    for row in rows:
        for i, cell in enumerate(row[:-1]):
            widths[i] = max(widths.get(i, 0), len(cell) + 3, minwidth)
    return "".join(
        "".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:-1]))
        + (row[-1] if row else "")
        + "\n"
        for row in rows
    )


def top(client: Client, args: Namespace) -> int:
    result = client.top(args.container, " ".join(args.ps_args) or None)
    rows = [list(result.get("Titles") or [])]
    rows += [[str(cell) for cell in process] for process in result.get("Processes") or []]
    sys.stdout.write(_tabwriter(rows, 20))  # docker top: tabwriter minwidth 20, padding 3
    return 0


# ---- stats --------------------------------------------------------------------------------

STATS_FORMAT = (
    "table {{.ID}}\t{{.Name}}\t{{.CPUPerc}}\t{{.MemUsage}}\t{{.MemPerc}}\t{{.NetIO}}"
    "\t{{.BlockIO}}\t{{.PIDs}}"
)
STATS_HEADERS = {
    "Container": "CONTAINER",
    "ID": "CONTAINER ID",
    "Name": "NAME",
    "CPUPerc": "CPU %",
    "MemUsage": "MEM USAGE / LIMIT",
    "MemPerc": "MEM %",
    "NetIO": "NET I/O",
    "BlockIO": "BLOCK I/O",
    "PIDs": "PIDS",
}


def cpu_percent(sample: dict[str, Any]) -> float:
    """docker's calculateCPUPercentUnix, against the sample's own ``precpu_stats``."""
    cpu = sample.get("cpu_stats") or {}
    pre = sample.get("precpu_stats") or {}
    usage = float((cpu.get("cpu_usage") or {}).get("total_usage") or 0)
    pre_usage = float((pre.get("cpu_usage") or {}).get("total_usage") or 0)
    system = float(cpu.get("system_cpu_usage") or 0) - float(pre.get("system_cpu_usage") or 0)
    online = float(cpu.get("online_cpus") or 0) or float(
        len((cpu.get("cpu_usage") or {}).get("percpu_usage") or [])
    )
    delta = usage - pre_usage
    if system > 0 and delta > 0:
        return delta / system * online * 100.0
    return 0.0


def memory_usage(memory: dict[str, Any]) -> float:
    """docker's calculateMemUsageUnixNoCache: usage less the inactive page cache."""
    usage = int(memory.get("usage") or 0)
    stats = memory.get("stats") or {}
    if "total_inactive_file" in stats and stats["total_inactive_file"] < usage:  # cgroup v1
        return float(usage - stats["total_inactive_file"])
    inactive = int(stats.get("inactive_file") or 0)  # cgroup v2
    return float(usage - inactive) if inactive < usage else float(usage)


def stats_row(sample: dict[str, Any], container: str, *, trunc: bool = True) -> dict[str, str]:
    """One sample as docker's stats formatter shows it (the fields of ``--format json``)."""
    memory = sample.get("memory_stats") or {}
    used = memory_usage(memory)
    limit = float(memory.get("limit") or 0)
    rx = tx = 0
    for net in (sample.get("networks") or {}).values():
        rx += int(net.get("rx_bytes") or 0)
        tx += int(net.get("tx_bytes") or 0)
    read = write = 0
    for entry in (sample.get("blkio_stats") or {}).get("io_service_bytes_recursive") or []:
        op = str(entry.get("op") or "")[:1].lower()
        if op == "r":
            read += int(entry.get("value") or 0)
        elif op == "w":
            write += int(entry.get("value") or 0)
    full_id = str(sample.get("id") or "")
    return {
        "BlockIO": f"{fmt.human_size(read)} / {fmt.human_size(write)}",
        "CPUPerc": f"{cpu_percent(sample):.2f}%",
        "Container": container,
        "ID": full_id[:12] if trunc else full_id,
        "MemPerc": f"{(used / limit * 100.0 if limit else 0.0):.2f}%",
        "MemUsage": f"{fmt.binary_size(used)} / {fmt.binary_size(limit)}",
        "Name": str(sample.get("name") or "").removeprefix("/"),
        "NetIO": f"{fmt.human_size(rx)} / {fmt.human_size(tx)}",
        "PIDs": str(int((sample.get("pids_stats") or {}).get("current") or 0)),
    }


def _missing_row(container: str) -> dict[str, str]:
    """A container whose stats could not be read: docker's "--" columns."""
    row = dict.fromkeys(STATS_HEADERS, "--")
    row.update(Container=container, ID=container[:12], Name="--")
    row.update(CPUPerc="0.00%", MemUsage="0B / 0B", MemPerc="0.00%", NetIO="0B / 0B")
    row.update(BlockIO="0B / 0B", PIDs="0")
    return row


def render_stats(rows: list[dict[str, str]], form: str | None) -> str:
    """Rows as a table (docker's default or ``table TEMPLATE``), JSON lines or a template."""
    return fmt.rows(rows, form, STATS_FORMAT[len("table") :].strip(), STATS_HEADERS)


def _targets(client: Client, args: Namespace) -> list[tuple[str, str]]:
    """(reference, shown Container) of each container to sample, in docker's order."""
    if args.containers:
        for ref in args.containers:
            client.inspect_container(ref)  # no such container: fail before any table
        return [(ref, ref) for ref in args.containers]
    return [(c["Id"], c["Id"][:12]) for c in client.containers(all=args.all)]


def _sample_all(client: Client, targets: list[tuple[str, str]]) -> list[dict[str, Any] | None]:
    """One ``stream=false`` sample of each container, taken side by side (the daemon
    spends a sampling interval on each)."""
    import threading

    from berth.client import ClientError

    results: list[dict[str, Any] | None] = [None] * len(targets)

    def one(i: int, ref: str) -> None:
        try:
            results[i] = client.stats(ref)
        except ClientError:
            results[i] = None

    threads = [
        threading.Thread(target=one, args=(i, ref), daemon=True)
        for i, (ref, _) in enumerate(targets)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def stats(client: Client, args: Namespace) -> int:
    trunc = not args.no_trunc
    live = not args.no_stream and sys.stdout.isatty()
    if not live:
        targets = _targets(client, args)
        samples = _sample_all(client, targets)
        rows = [
            stats_row(s, shown, trunc=trunc) if s is not None else _missing_row(shown)
            for s, (_, shown) in zip(samples, targets, strict=True)
        ]
        sys.stdout.write(render_stats(rows, args.format))
        return 0
    return _live_stats(client, args)


def _live_stats(client: Client, args: Namespace) -> int:
    """Refresh the table in place once a second until interrupted, as ``docker stats``
    does: a thread per container follows its stream; new containers join the table,
    those that stop (without ``-a``) leave it."""
    import threading

    from berth.client import ClientError

    latest: dict[str, dict[str, Any]] = {}
    followed: set[str] = set()
    lock = threading.Lock()

    def follow(ref: str) -> None:
        try:
            for sample in client.stats_stream(ref):
                with lock:
                    latest[ref] = sample
        except ClientError:
            pass
        finally:
            with lock:
                followed.discard(ref)

    trunc = not args.no_trunc
    while True:
        targets = _targets(client, args)
        with lock:
            for ref, _ in targets:
                if ref not in followed:
                    followed.add(ref)
                    threading.Thread(target=follow, args=(ref,), daemon=True).start()
            rows = [
                stats_row(latest[ref], shown, trunc=trunc) if ref in latest else _missing_row(shown)
                for ref, shown in targets
            ]
        sys.stdout.write("\033[2J\033[H" + render_stats(rows, args.format))
        sys.stdout.flush()
        time.sleep(1.0)


# ---- rename, port, update, prune ------------------------------------------------------------


def rename(client: Client, args: Namespace) -> int:
    if not args.name.strip():
        raise UsageError("berth rename: the new name must not be empty")
    client.rename(args.container, args.name)
    return 0


def _host_port(binding: dict[str, Any]) -> str:
    """Go's net.JoinHostPort: an IPv6 host in brackets."""
    host = str(binding.get("HostIp") or "")
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{binding.get('HostPort') or ''}"


def port(client: Client, args: Namespace) -> int:
    from berth.client import ClientError

    data = client.inspect_container(args.container)
    ports: dict[str, Any] = (data.get("NetworkSettings") or {}).get("Ports") or {}
    out: list[str] = []
    if args.port:
        number, _, proto = args.port.partition("/")
        if not number.isdigit() or int(number) > 65535:
            raise ClientError(f"invalid port ({number}): use PRIVATE_PORT[/PROTO]")
        bindings = ports.get(f"{int(number)}/{proto or 'tcp'}")
        if not bindings:
            raise ClientError(f"No public port '{args.port}' published for {args.container}")
        out = [_host_port(b) for b in bindings]
    else:
        out = [f"{key} -> {_host_port(b)}" for key, bs in ports.items() for b in bs or []]
    out.sort()
    sys.stdout.write("".join(line + "\n" for line in out))
    return 0


def update_body(args: Namespace) -> dict[str, Any]:
    """The ``/containers/{id}/update`` body of the flags given (only those)."""
    from berth.cli.interactive import _restart_policy, parse_bytes

    body: dict[str, Any] = {}
    if args.memory is not None:
        body["Memory"] = parse_bytes(args.memory, "--memory")
    if args.memory_swap is not None:
        swap = args.memory_swap.strip()
        body["MemorySwap"] = -1 if swap == "-1" else parse_bytes(swap, "--memory-swap")
    if args.cpus is not None:
        if args.cpus < 0:
            raise UsageError("invalid --cpus: give a positive number of CPUs")
        body["NanoCpus"] = round(args.cpus * 1e9)
    if args.cpu_shares is not None:
        body["CpuShares"] = args.cpu_shares
    if args.cpuset_cpus is not None:
        body["CpusetCpus"] = args.cpuset_cpus
    if args.pids_limit is not None:
        body["PidsLimit"] = args.pids_limit
    if args.restart is not None:
        body["RestartPolicy"] = _restart_policy(args.restart)
    if args.blkio_weight is not None:
        if args.blkio_weight and not 10 <= args.blkio_weight <= 1000:
            raise UsageError("invalid --blkio-weight: give 10 to 1000 (0 to disable)")
        body["BlkioWeight"] = args.blkio_weight
    if not body:
        raise UsageError("berth update: you must provide one or more flags")
    return body


def update(client: Client, args: Namespace) -> int:
    from berth.client import ClientError

    body = update_body(args)
    failed = False
    for ref in args.containers:
        try:
            result = client.update_container(ref, body)
        except ClientError as exc:
            error(str(exc))
            failed = True
            continue
        for warning in (result or {}).get("Warnings") or []:
            print(f"WARNING: {warning}", file=sys.stderr)
        print(ref, flush=True)
    return EXIT_ERROR if failed else 0


def container_prune(client: Client, args: Namespace) -> int:
    from berth.cli.commands import filters_of
    from berth.cli.system_cmds import _TITLES, _prune, _size, confirm

    if not confirm("WARNING! This will remove all stopped containers.", args.force):
        return 0
    lines, reclaimed = _prune(client, "containers", dict(filters_of(args.filter)))
    if lines:
        print(_TITLES["containers"])
        print("\n".join(lines))
        print()
    print(f"Total reclaimed space: {_size(reclaimed)}")
    return 0
