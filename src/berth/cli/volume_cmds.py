"""``berth volume create/ls/inspect/rm`` (``prune`` is in system_cmds), printing what the
docker CLI prints: ``ls`` sorted by name as docker sorts it (digits as numbers), its
``--format`` fields, ``inspect`` as a JSON array of what was found."""

from __future__ import annotations

import argparse
import re
import sys
from argparse import Namespace

from berth.cli import format as fmt
from berth.cli.app import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:  # berth.client (http.client) loads in app._call, ssl blocked
    from typing import Any

    from berth.client import Client

VOLUME_HEADERS = {
    "Name": "VOLUME NAME",
    "Driver": "DRIVER",
    "Scope": "SCOPE",
    "Mountpoint": "MOUNTPOINT",
    "Labels": "LABELS",
    "Links": "LINKS",
    "Size": "SIZE",
    "Group": "GROUP",
    "Availability": "AVAILABILITY",
    "Status": "STATUS",
}


# ---- argument builders (app.VERBS reaches them through app._builder) ----------------------


def create_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-d", "--driver", default="local", metavar="DRIVER", help="local")
    p.add_argument("-l", "--label", action="append", default=[], metavar="KEY[=VALUE]")
    p.add_argument("-o", "--opt", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("name", nargs="?", metavar="NAME", help="a random name if not given")


def ls_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="only names")
    p.add_argument("-f", "--filter", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--format", metavar="json|table|TEMPLATE")


def inspect_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--format", metavar="TEMPLATE")
    p.add_argument("names", nargs="+", metavar="VOLUME")


def rm_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true", help="no error for a missing volume")
    p.add_argument("names", nargs="+", metavar="VOLUME")


# ---- verbs --------------------------------------------------------------------------------


def _pairs(items: list[str], flag: str, *, need_value: bool) -> dict[str, str]:
    result: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not key or (need_value and not sep):
            raise UsageError(f"invalid {flag} {item!r}: use KEY=VALUE")
        result[key] = value
    return result


def create(client: Client, args: Namespace) -> int:
    body: dict[str, Any] = {
        "Driver": args.driver,
        "Labels": _pairs(args.label, "--label", need_value=False),
        "DriverOpts": _pairs(args.opt, "--opt", need_value=True),
    }
    if args.name:
        body["Name"] = args.name
    result = client.create_volume(body)
    print(result.get("Name", ""))
    return 0


def _natural(name: str) -> list[Any]:
    """docker's sortorder.NaturalLess as a key: runs of digits compare as numbers."""
    return [
        (0, int(part), part) if part.isdigit() else (1, 0, part)
        for part in re.split(r"(\d+)", name)
    ]


def volume_row(volume: dict[str, Any]) -> dict[str, str]:
    """A volume as docker's volume formatter sees it (the fields of ``--format json``)."""
    labels = volume.get("Labels") or {}
    usage = volume.get("UsageData") or {}
    size = usage.get("Size")
    return {
        "Availability": "N/A",
        "Driver": str(volume.get("Driver") or ""),
        "Group": "N/A",
        "Labels": ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
        "Links": str(usage["RefCount"]) if "RefCount" in usage else "N/A",
        "Mountpoint": str(volume.get("Mountpoint") or ""),
        "Name": str(volume.get("Name") or ""),
        "Scope": str(volume.get("Scope") or ""),
        "Size": fmt.human_size(float(size)) if isinstance(size, int) and size >= 0 else "N/A",
        "Status": "N/A",
    }


def ls(client: Client, args: Namespace) -> int:
    from berth.cli.commands import filters_of

    volumes = client.volumes(filters=filters_of(args.filter) or None)
    volumes.sort(key=lambda v: _natural(str(v.get("Name") or "")))
    if args.quiet:
        sys.stdout.write("".join(f"{v.get('Name')}\n" for v in volumes))
        return 0
    rows = [volume_row(v) for v in volumes]
    sys.stdout.write(fmt.rows(rows, args.format, "{{.Driver}}\t{{.Name}}", VOLUME_HEADERS))
    return 0


def inspect(client: Client, args: Namespace) -> int:
    from berth.cli.commands import inspect_each

    # docker's volume inspect re-encodes the daemon's JSON: keys sorted
    return inspect_each(args.names, client.inspect_volume, args.format, sort_keys=True)


def rm(client: Client, args: Namespace) -> int:
    from berth.cli.commands import each

    return each(
        args.names,
        lambda name: client.remove_volume(name, force=args.force),
        missing_ok=args.force,
    )
