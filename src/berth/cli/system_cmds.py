"""``berth events``, ``system df|prune|service``, ``volume prune``, and the daemon's
auto-start.

When no host is chosen (no ``-H``, ``$BERTH_HOST`` or ``$DOCKER_HOST``) and nothing
answers on Berth's socket (``$BERTH_DEFAULT_HOST`` or /run/berth/berth.sock), ``berth``
starts ``berthd`` in the background, waits for it to answer (at most 5 s) and says so
in one line on stderr. Only :func:`ensure_daemon` runs on every command, so this
module imports nothing heavy at the top.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at start-up; annotations stay strings here
    from argparse import Namespace
    from typing import Any

    from berth.client import Client

START_TIMEOUT = 5.0


# ---- auto-start ------------------------------------------------------------------------------


def _answers(path: str) -> bool | None:
    """True if something accepts on the socket, False if nothing listens, None if it
    cannot be told (no permission: the command's own error says so)."""
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(1.0)
        sock.connect(path)
        return True
    except (FileNotFoundError, ConnectionRefusedError):
        return False
    except OSError:
        return None
    finally:
        sock.close()


def ensure_daemon() -> None:
    """Start berthd on Berth's own socket if nothing answers there."""
    from berth.client.transport import fallback_host

    host = fallback_host()
    if not host.startswith("unix://"):
        return
    path = host[len("unix://") :]
    if _answers(path) is not False or os.geteuid() != 0:
        return  # running, unknowable, or not ours to start (the connect error explains)
    import fcntl

    from berth.daemon.main import default_exec_root

    exec_root = default_exec_root()
    os.makedirs(exec_root, mode=0o711, exist_ok=True)
    # one starter at a time: a second berth waits here, then finds the daemon up
    with open(os.path.join(exec_root, "autostart.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _answers(path) is not False:
            return
        pid, log_path = _spawn(host, exec_root)
        _wait(path, pid, log_path)
    print(
        f"berth: no daemon answered at {host}: started berthd (pid {pid}, log {log_path})",
        file=sys.stderr,
    )


def _spawn(host: str, exec_root: str) -> tuple[int, str]:
    """berthd in its own session, detached from this terminal, logging to a file."""
    import subprocess

    log_path = os.path.join(exec_root, "berthd.log")
    with open(log_path, "ab") as log, open(os.devnull, "rb") as null:
        process = subprocess.Popen(
            [sys.executable, "-m", "berth.daemon.main", "-H", host, "--exec-root", exec_root],
            stdin=null,
            stdout=log,
            stderr=log,
            start_new_session=True,
            close_fds=True,
            cwd="/",
        )
    return process.pid, log_path


def _wait(path: str, pid: int, log_path: str) -> None:
    import time

    from berth.errors import BerthError

    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if _answers(path):
            return
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            raise BerthError(f"berthd could not start: {_last_line(log_path)}")
        time.sleep(0.02)
    raise BerthError(
        f"berthd (pid {pid}) did not answer within {START_TIMEOUT:.0f} s: see {log_path}"
    )


def _last_line(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return "no log"
    return lines[-1].removeprefix("berthd: ") if lines else "no log"


def service(args: list[str]) -> int:
    """``berth system service [berthd options]``: the daemon in the foreground."""
    from berth.daemon.main import main as berthd_main

    return berthd_main(args, prog="berth system service")


# ---- times -------------------------------------------------------------------------------------

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _duration(text: str) -> float | None:
    """Go's time.ParseDuration ("10m", "1h30m", "1.5s"), in seconds; None if not one."""
    import re

    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    parts = re.findall(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)", body)
    if not parts or "".join(n + u for n, u in parts) != body:
        return None
    return sign * sum(float(n) * _UNITS[u] for n, u in parts)


def timestamp(value: str, now: float | None = None) -> str:
    """Docker's ``--since``/``--until``: a duration before now (``10m``), unix seconds,
    or an RFC 3339 date/time (local time without an offset); as ``seconds.nanos``."""
    import time
    from datetime import datetime

    from berth.client import ClientError

    text = value.strip()
    reference = time.time() if now is None else now
    seconds = _duration(text)
    if seconds is not None:
        return _unix(reference - seconds)
    whole, _, fraction = text.partition(".")
    if whole.isdigit() and (not fraction or fraction.isdigit()):
        return f"{whole}.{fraction[:9].ljust(9, '0')}"
    candidate = text.replace("Z", "+00:00").replace("z", "+00:00")
    try:
        moment = datetime.fromisoformat(candidate)
    except ValueError:
        raise ClientError(
            f"invalid time {value!r}: give a duration (10m), unix seconds or an RFC 3339 time"
        ) from None
    if moment.tzinfo is None:
        moment = moment.astimezone()  # local time, as docker reads it
    return _unix(moment.timestamp())


def _unix(seconds: float) -> str:
    nanos = round(seconds * 1e9)
    return f"{nanos // 1_000_000_000}.{nanos % 1_000_000_000:09d}"


def _event_time(event: dict[str, Any]) -> str:
    """jsonmessage.RFC3339NanoFixed in local time: 2024-05-01T10:00:00.000000000+02:00."""
    from datetime import datetime

    nano = int(event.get("timeNano") or int(event.get("time") or 0) * 1_000_000_000)
    moment = datetime.fromtimestamp(nano // 1_000_000_000).astimezone()
    offset = moment.strftime("%z")
    zone = "Z" if offset in ("+0000", "") else f"{offset[:3]}:{offset[3:]}"
    return f"{moment.strftime('%Y-%m-%dT%H:%M:%S')}.{nano % 1_000_000_000:09d}{zone}"


def event_line(event: dict[str, Any]) -> str:
    """One event as ``docker events`` prints it."""
    actor = event.get("Actor") or {}
    line = f"{_event_time(event)} {event.get('Type', '')} {event.get('Action', '')} "
    line += str(actor.get("ID", ""))
    attributes = actor.get("Attributes") or {}
    if attributes:
        line += " (" + ", ".join(f"{k}={attributes[k]}" for k in sorted(attributes)) + ")"
    return line


# ---- events ------------------------------------------------------------------------------------


def events(client: Client, args: Namespace) -> int:
    import json

    from berth.cli import format as fmt
    from berth.cli.commands import filters_of

    since = timestamp(args.since) if args.since else None
    until = timestamp(args.until) if args.until else None
    for event in client.events(since=since, until=until, filters=filters_of(args.filter)):
        if args.format == "json":
            line = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
        elif args.format:
            line = fmt.render(args.format, event)
        else:
            line = event_line(event)
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    return 0


# ---- system df ----------------------------------------------------------------------------------


def _size(value: float) -> str:
    from berth.cli import format as fmt

    return fmt.human_size(value, 4)


def _reclaimable(reclaimable: int, total: int) -> str:
    if total > 0:
        return f"{_size(reclaimable)} ({reclaimable * 100 // total}%)"
    return _size(reclaimable)


def df_summary(data: dict[str, Any]) -> list[dict[str, str]]:
    """The four rows of ``docker system df`` (docker's formatter/disk_usage.go)."""
    images = data.get("Images") or []
    layers = int(data.get("LayersSize") or 0)
    used = sum(
        int(i.get("Size", 0)) - int(i.get("SharedSize", 0))
        for i in images
        if i.get("Containers") and i.get("SharedSize", -1) != -1
    )
    containers = data.get("Containers") or []
    active_states = ("running", "paused", "restarting")
    c_size = sum(int(c.get("SizeRw") or 0) for c in containers)
    c_free = sum(int(c.get("SizeRw") or 0) for c in containers if c["State"] not in active_states)
    volumes = data.get("Volumes") or []

    def usage(v: dict[str, Any]) -> dict[str, int]:
        u = v.get("UsageData") or {}
        return {"Size": int(u.get("Size", -1)), "RefCount": int(u.get("RefCount", -1))}

    v_size = sum(usage(v)["Size"] for v in volumes if usage(v)["Size"] > 0)
    v_free = sum(
        usage(v)["Size"] for v in volumes if usage(v)["Size"] > 0 and usage(v)["RefCount"] == 0
    )
    cache = data.get("BuildCache") or []
    cache_size = sum(int(b.get("Size") or 0) for b in cache)
    cache_free = sum(int(b.get("Size") or 0) for b in cache if not b.get("InUse"))
    return [
        {
            "Type": "Images",
            "TotalCount": str(len(images)),
            "Active": str(sum(1 for i in images if i.get("Containers"))),
            "Size": _size(layers),
            "Reclaimable": _reclaimable(layers - used, layers),
        },
        {
            "Type": "Containers",
            "TotalCount": str(len(containers)),
            "Active": str(sum(1 for c in containers if c["State"] in active_states)),
            "Size": _size(c_size),
            "Reclaimable": _reclaimable(c_free, c_size),
        },
        {
            "Type": "Local Volumes",
            "TotalCount": str(len(volumes)),
            "Active": str(sum(1 for v in volumes if usage(v)["RefCount"] > 0)),
            "Size": _size(v_size),
            "Reclaimable": _reclaimable(v_free, v_size),
        },
        {
            "Type": "Build Cache",
            "TotalCount": str(len(cache)),
            "Active": str(sum(1 for b in cache if b.get("InUse"))),
            "Size": _size(cache_size),
            "Reclaimable": _size(cache_free),
        },
    ]


def system_df(client: Client, args: Namespace) -> int:
    import json

    from berth.cli import format as fmt

    data = client.df()
    rows = df_summary(data)
    if args.format == "json":
        for row in rows:
            print(json.dumps(row, separators=(",", ":")))
        return 0
    if args.format and not args.format.startswith("table"):
        for row in rows:
            print(fmt.render(args.format, row))
        return 0
    if not args.verbose:
        table = [["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]]
        table += [
            [r["Type"], r["TotalCount"], r["Active"], r["Size"], r["Reclaimable"]] for r in rows
        ]
        sys.stdout.write(fmt.table(table))
        return 0
    _df_verbose(data)
    return 0


def _df_verbose(data: dict[str, Any]) -> None:
    from berth.cli import format as fmt

    out = sys.stdout
    out.write("Images space usage:\n\n")
    table = [
        [
            "REPOSITORY",
            "TAG",
            "IMAGE ID",
            "CREATED",
            "SIZE",
            "SHARED SIZE",
            "UNIQUE SIZE",
            "CONTAINERS",
        ]
    ]
    for image in data.get("Images") or []:
        size, shared = int(image.get("Size", 0)), int(image.get("SharedSize", 0))
        names = image.get("RepoTags") or ["<none>:<none>"]
        for name in names:
            repo, tag = (
                fmt.split_tag(fmt.familiar(name))
                if name != "<none>:<none>"
                else ("<none>", "<none>")
            )
            table.append(
                [
                    repo,
                    tag,
                    fmt.short_id(image["Id"]),
                    fmt.ago(float(image.get("Created", 0))),
                    _size(size),
                    _size(shared) if shared >= 0 else "N/A",
                    _size(size - max(shared, 0)),
                    str(image.get("Containers", 0)),
                ]
            )
    out.write(fmt.table(table))
    out.write("\nContainers space usage:\n\n")
    table = [
        ["CONTAINER ID", "IMAGE", "COMMAND", "LOCAL VOLUMES", "SIZE", "CREATED", "STATUS", "NAMES"]
    ]
    for c in data.get("Containers") or []:
        volumes = sum(1 for m in c.get("Mounts") or [] if m.get("Type") == "volume")
        table.append(
            [
                fmt.short_id(c["Id"]),
                fmt.familiar(str(c.get("Image", ""))),
                fmt.ellipsis(fmt.go_quote(str(c.get("Command", ""))), 20),
                str(volumes),
                _size(int(c.get("SizeRw") or 0)),
                fmt.ago(float(c.get("Created", 0))),
                str(c.get("Status", "")),
                ",".join(n.lstrip("/") for n in c.get("Names") or []),
            ]
        )
    out.write(fmt.table(table))
    out.write("\nLocal Volumes space usage:\n\n")
    table = [["VOLUME NAME", "LINKS", "SIZE"]]
    for v in data.get("Volumes") or []:
        usage = v.get("UsageData") or {}
        size = int(usage.get("Size", -1))
        table.append(
            [str(v["Name"]), str(usage.get("RefCount", 0)), _size(size) if size >= 0 else "N/A"]
        )
    out.write(fmt.table(table))
    cache = data.get("BuildCache") or []
    out.write(f"\nBuild cache usage: {_size(sum(int(b.get('Size') or 0) for b in cache))}\n\n")
    out.write(
        fmt.table([["CACHE ID", "CACHE TYPE", "SIZE", "CREATED", "LAST USED", "USAGE", "SHARED"]])
    )


# ---- prune --------------------------------------------------------------------------------------


def confirm(warning: str, force: bool) -> bool:
    """A prune's question on the terminal (skipped with ``--force``)."""
    if force:
        return True
    sys.stdout.write(f"{warning}\nAre you sure you want to continue? [y/N] ")
    sys.stdout.flush()
    answer = sys.stdin.readline().strip().lower()
    return answer in ("y", "yes")


def _prune(client: Client, kind: str, filters: dict[str, Any]) -> tuple[list[str], int]:
    """Run one prune; (lines to print, bytes reclaimed)."""
    result = client.prune(kind, filters)
    key = {
        "containers": "ContainersDeleted",
        "networks": "NetworksDeleted",
        "volumes": "VolumesDeleted",
        "images": "ImagesDeleted",
        "build": "CachesDeleted",
    }[kind]
    lines: list[str] = []
    for item in result.get(key) or []:
        if isinstance(item, dict):  # images: {"Untagged": ...} or {"Deleted": ...}
            for action, ref in item.items():
                lines.append(f"{action.lower()}: {ref}")
        else:
            lines.append(str(item))
    return lines, int(result.get("SpaceReclaimed") or 0)


_TITLES = {
    "containers": "Deleted Containers:",
    "networks": "Deleted Networks:",
    "volumes": "Deleted Volumes:",
    "images": "Deleted Images:",
    "build": "Deleted build cache objects:",
}


def volume_prune(client: Client, args: Namespace) -> int:
    from berth.cli.commands import filters_of

    which = "all local volumes" if args.all else "anonymous local volumes"
    warning = f"WARNING! This will remove {which} not used by at least one container."
    if not confirm(warning, args.force):
        return 0
    filters: dict[str, Any] = filters_of(args.filter)
    if args.all:
        filters["all"] = {"true": True}
    lines, reclaimed = _prune(client, "volumes", filters)
    if lines:
        print(_TITLES["volumes"])
        print("\n".join(lines))
        print()
    print(f"Total reclaimed space: {_size(reclaimed)}")
    return 0


def system_prune(client: Client, args: Namespace) -> int:
    from berth.cli.app import EXIT_ERROR, error
    from berth.cli.commands import filters_of
    from berth.client.errors import APIError

    removes = ["all stopped containers", "all networks not used by at least one container"]
    if args.volumes:
        removes.append("all anonymous volumes not used by at least one container")
    removes.append("all images without at least one container associated to them")
    if not args.all:
        removes[-1] = "all dangling images"
    removes.append("unused build cache")
    warning = "WARNING! This will remove:\n" + "".join(f"  - {r}\n" for r in removes)
    if not confirm(warning, args.force):
        return 0
    filters = filters_of(args.filter)
    kinds = ["containers", "networks"] + (["volumes"] if args.volumes else [])
    kinds += ["images", "build"]
    total = 0
    failed = []
    for kind in kinds:
        wanted: dict[str, Any] = dict(filters)
        if kind == "images":
            wanted["dangling"] = {"false" if args.all else "true": True}
        if kind == "volumes":
            wanted = {k: v for k, v in filters.items() if k.startswith("label")}
        try:
            lines, reclaimed = _prune(client, kind, wanted)
        except APIError as exc:
            if exc.status in (404, 405):  # the daemon has no such prune yet
                failed.append(f"this berthd cannot prune {kind}")
                continue
            raise
        total += reclaimed
        if lines:
            print(_TITLES[kind])
            print("\n".join(lines))
            print()
    print(f"Total reclaimed space: {_size(total)}")
    for message in failed:
        error(message)
    return EXIT_ERROR if failed else 0
