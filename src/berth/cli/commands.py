"""The verbs that ask and print: ps, images, inspect, stop/kill/rm/wait, rmi, tag, pull,
image bootstrap, version, info."""

from __future__ import annotations

import json
import os
import sys
import time
from argparse import Namespace

from berth import __version__
from berth.cli import format as fmt
from berth.cli.app import EXIT_ERROR, error
from berth.client import API_VERSION, Client, ClientError, NotFoundError
from berth.client.errors import APIError, NotSupported

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at start-up; annotations stay strings here
    from typing import Any

PS_COLUMNS = ["ID", "Image", "Command", "RunningFor", "Status", "Ports", "Names"]
IMAGE_COLUMNS = ["Repository", "Tag", "ID", "CreatedSince", "Size"]
HEADERS = {
    "ID": "CONTAINER ID",
    "RunningFor": "CREATED",
    "CreatedSince": "CREATED",
    "CreatedAt": "CREATED AT",
    "LocalVolumes": "LOCAL VOLUMES",
}


def filters_of(items: list[str]) -> dict[str, dict[str, bool]]:
    """``-f key=value`` flags as the API's filters (``{"key": {"value": true}}``)."""
    filters: dict[str, dict[str, bool]] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ClientError(f"bad filter {item!r}: give KEY=VALUE")
        filters.setdefault(key.strip().lower(), {})[value] = True
    return filters


def _emit(rows: list[dict[str, Any]], form: str | None, columns: list[str], id_header: str) -> None:
    """Rows as docker prints them: a table, JSON lines, or a Go template per row."""
    out = sys.stdout
    if form == "json":
        for row in rows:
            out.write(json.dumps(row, separators=(",", ":"), ensure_ascii=False) + "\n")
        return
    if form and not form.startswith("table"):
        for row in rows:
            out.write(fmt.render(form, row) + "\n")
        return
    template = form[len("table") :].strip() if form else ""
    names = fmt.template_fields(template) if template else columns
    headers = {**HEADERS, "ID": id_header}
    table = [[headers.get(name, name.upper()) for name in names]]
    for row in rows:
        if template:
            table.append(fmt.render(template, row).split("\t"))
        else:
            table.append([str(row.get(name, "")) for name in names])
    out.write(fmt.table(table))


# ---- containers ---------------------------------------------------------------------------


def _ports(ports: list[dict[str, Any]]) -> str:
    shown = []
    for port in ports or []:
        private, kind = port.get("PrivatePort"), port.get("Type", "tcp")
        if port.get("PublicPort"):
            ip = port.get("IP") or "0.0.0.0"
            ip = f"[{ip}]" if ":" in ip else ip
            shown.append(f"{ip}:{port['PublicPort']}->{private}/{kind}")
        else:
            shown.append(f"{private}/{kind}")
    return ", ".join(shown)


def ps_row(c: dict[str, Any], *, trunc: bool = True, now: float | None = None) -> dict[str, Any]:
    """A container as docker's ps formatter sees it (the fields of ``--format json``)."""
    created = float(c.get("Created") or 0)
    command = str(c.get("Command") or "")
    image = str(c.get("Image") or "")
    if trunc and image.startswith("sha256:"):
        image = fmt.short_id(image)
    names = [n[1:] if n.startswith("/") else n for n in c.get("Names") or []]
    names = [n for n in names if "/" not in n]  # links, in docker, are names with a slash
    networks = (c.get("NetworkSettings") or {}).get("Networks") or {}
    mounts = c.get("Mounts") or []
    labels = c.get("Labels") or {}
    return {
        "Command": fmt.go_quote(fmt.ellipsis(command, 20) if trunc else command),
        "CreatedAt": time.strftime("%Y-%m-%d %H:%M:%S +0000 UTC", time.gmtime(created)),
        "ID": c["Id"][:12] if trunc else c["Id"],
        "Image": image,
        "Labels": ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
        "LocalVolumes": str(sum(1 for m in mounts if m.get("Type") == "volume")),
        "Mounts": ",".join(
            fmt.ellipsis(str(m.get("Name") or m.get("Source") or ""), 15)
            if trunc
            else str(m.get("Name") or m.get("Source") or "")
            for m in mounts
        ),
        "Names": ",".join(names),
        "Networks": ",".join(sorted(networks)),
        "Ports": _ports(c.get("Ports") or []),
        "RunningFor": fmt.ago(created, now),
        "Size": "0B",
        "State": str(c.get("State") or ""),
        "Status": str(c.get("Status") or ""),
    }


def ps(client: Client, args: Namespace) -> int:
    limit = 1 if args.latest else (args.last if args.last > 0 else None)
    containers = client.containers(
        all=args.all or limit is not None, filters=filters_of(args.filter), limit=limit
    )
    if args.quiet:
        sys.stdout.write(
            "".join((c["Id"] if args.no_trunc else c["Id"][:12]) + "\n" for c in containers)
        )
        return 0
    now = time.time()
    rows = [ps_row(c, trunc=not args.no_trunc, now=now) for c in containers]
    _emit(rows, args.format, PS_COLUMNS, "CONTAINER ID")
    return 0


def each(refs: list[str], action: Any, *, missing_ok: bool = False) -> int:
    """Apply ``action`` to every object named; print each name done, each error; 125 if
    any. ``missing_ok`` (``rm --force``): an object that does not exist is no error."""
    failed = False
    for ref in refs:
        try:
            result = action(ref)
        except NotFoundError as exc:
            if not missing_ok:
                error(str(exc))
                failed = True
            continue
        except ClientError as exc:
            error(str(exc))
            failed = True
            continue
        print(ref if result is None else result, flush=True)
    return EXIT_ERROR if failed else 0


def inspect_each(refs: list[str], fetch: Any, form: str | None, *, sort_keys: bool = False) -> int:
    """``inspect`` of named objects: those found printed together, then an error line
    for each missing one (as docker); 125 if any was missing."""
    found: list[dict[str, Any]] = []
    failed = []
    for ref in refs:
        try:
            found.append(fetch(ref))
        except NotFoundError as exc:
            failed.append(str(exc))
    sys.stdout.write(fmt.inspected(found, form, sort_keys=sort_keys))
    for message in failed:
        error(message)
    return EXIT_ERROR if failed else 0


def stop(client: Client, args: Namespace) -> int:
    return each(args.containers, lambda c: client.stop(c, args.time, args.signal))


def restart(client: Client, args: Namespace) -> int:
    return each(args.containers, lambda c: client.restart(c, args.time))


def kill(client: Client, args: Namespace) -> int:
    return each(args.containers, lambda c: client.kill(c, args.signal))


def rm(client: Client, args: Namespace) -> int:
    return each(
        args.containers,
        lambda c: client.remove_container(c, force=args.force, volumes=args.volumes),
    )


def pause(client: Client, args: Namespace) -> int:
    return each(args.containers, client.pause)


def unpause(client: Client, args: Namespace) -> int:
    return each(args.containers, client.unpause)


def wait(client: Client, args: Namespace) -> int:
    return each(args.containers, lambda c: str(client.wait(c)))


def inspect(client: Client, args: Namespace) -> int:
    found: list[Any] = []
    missing: list[str] = []
    for name in args.names:
        try:
            if args.type in (None, "container"):
                try:
                    found.append(client.inspect_container(name))
                    continue
                except NotFoundError:
                    if args.type == "container":
                        raise
            found.append(client.inspect_image(name))
        except NotFoundError:
            missing.append(name)
    sys.stdout.write(fmt.inspected(found, args.format))
    kind = args.type or "object"
    for name in missing:
        error(f"no such {kind}: {name}")
    return EXIT_ERROR if missing else 0


# ---- images -------------------------------------------------------------------------------


def image_rows(images: list[dict[str, Any]], *, trunc: bool = True) -> list[dict[str, Any]]:
    now = time.time()
    rows = []
    for image in sorted(images, key=lambda i: -int(i.get("Created") or 0)):
        tags = [t for t in image.get("RepoTags") or [] if t != "<none>:<none>"]
        pairs = [fmt.split_tag(fmt.familiar(t)) for t in tags] or [("<none>", "<none>")]
        created = float(image.get("Created") or 0)
        for repo, tag in pairs:
            rows.append(
                {
                    "Containers": str(image.get("Containers", "N/A")),
                    "CreatedAt": time.strftime("%Y-%m-%d %H:%M:%S +0000 UTC", time.gmtime(created)),
                    "CreatedSince": fmt.ago(created, now),
                    "Digest": "<none>",
                    "ID": fmt.short_id(image["Id"]) if trunc else image["Id"],
                    "Repository": repo,
                    "Size": fmt.human_size(float(image.get("Size") or 0)),
                    "Tag": tag,
                }
            )
    return rows


def images(client: Client, args: Namespace) -> int:
    filters = filters_of(args.filter)
    if args.reference:
        filters.setdefault("reference", {})[args.reference] = True
    listed = client.images(all=args.all, filters=filters or None)
    rows = image_rows(listed, trunc=not args.no_trunc)
    if args.quiet:
        ids = dict.fromkeys(row["ID"] for row in rows)
        sys.stdout.write("".join(f"{i}\n" for i in ids))
        return 0
    _emit(rows, args.format, IMAGE_COLUMNS, "IMAGE ID")
    return 0


def rmi(client: Client, args: Namespace) -> int:
    failed = False
    for name in args.images:
        try:
            events = client.remove_image(name, force=args.force, noprune=args.no_prune)
        except ClientError as exc:
            error(str(exc))
            failed = True
            continue
        for event in events:
            for key in ("Untagged", "Deleted"):
                if key in event:
                    print(f"{key}: {fmt.familiar(event[key]) if key == 'Untagged' else event[key]}")
    return EXIT_ERROR if failed else 0


def tag(client: Client, args: Namespace) -> int:
    repo, tag_ = fmt.split_tag(args.target)
    if not tag_:
        raise ClientError(f"refusing to create a tag with a digest reference: {args.target}")
    client.tag_image(args.source, repo, tag_)
    return 0


def _reference(name: str) -> tuple[str, str]:
    """``pull`` arguments: (fromImage, tag); a digest goes as the tag, as docker sends it."""
    if "@" in name:
        repo, _, digest = name.partition("@")
        return repo, digest
    return fmt.split_tag(name)


def _full_name(repo: str, tag: str) -> str:
    first = repo.split("/", 1)[0]
    if "/" not in repo:
        repo = f"docker.io/library/{repo}"
    elif not ("." in first or ":" in first or first == "localhost"):
        repo = f"docker.io/{repo}"
    return f"{repo}@{tag}" if tag.startswith("sha256:") else f"{repo}:{tag}"


def pull_image(client: Client, name: str, *, quiet: bool = False, out: Any = None) -> str:
    """Pull with live per-layer progress on ``out`` (stdout); the full reference."""
    repo, tag_ = _reference(name)
    stream = out if out is not None else sys.stdout
    renderer = None
    if not quiet:
        from berth.distribution.progress import ProgressRenderer

        renderer = ProgressRenderer(stream)
    try:
        from berth.cli.image_cmds import registry_auth

        for message in client.pull(repo, tag_, auth=registry_auth(repo)):
            if renderer is not None:
                renderer.feed(message)
    finally:
        if renderer is not None:
            renderer.close()
    return _full_name(repo, tag_)


def pull(client: Client, args: Namespace) -> int:
    print(pull_image(client, args.name, quiet=args.quiet))
    return 0


def bootstrap(client: Client, args: Namespace) -> int:
    name = args.name
    if name.startswith(("debian", "ubuntu")):
        print(f"bootstrapping {name} (debootstrap): this can take minutes", file=sys.stderr)
    try:
        result = client.bootstrap_image(name)
    except NotFoundError as exc:
        if "page not found" in str(exc).lower():
            raise NotSupported(
                "this daemon has no bootstrap extension (POST /berth/images/bootstrap):"
                " is it berthd?"
            ) from None
        raise
    except APIError as exc:
        if exc.status == 400 and "busybox" not in str(exc):
            raise APIError(400, f"{exc}: this berthd can bootstrap busybox only") from None
        raise
    tags = ", ".join(fmt.familiar(t) for t in result.get("RepoTags") or []) or name
    print(f"Bootstrapped image: {tags} ({fmt.short_id(str(result.get('Id', '')))})")
    return 0


# ---- system -------------------------------------------------------------------------------


def _arch(machine: str) -> str:
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(
        machine, machine
    )


def _client_version(client: Client, connected: bool) -> dict[str, Any]:
    return {
        "Version": __version__,
        "ApiVersion": client.api_version if connected else API_VERSION,
        "PythonVersion": sys.version.split()[0],
        "Os": "linux",
        "Arch": _arch(os.uname().machine),
        "Host": client.host,
    }


def _print_fields(indent: str, fields: list[tuple[str, Any]], width: int = 18) -> None:
    for key, value in fields:
        print(f"{indent}{key + ':':<{width}}{value}")


def version(client: Client, args: Namespace) -> int:
    server: dict[str, Any] | None = None
    failure = None
    try:
        server = client.version()
    except ClientError as exc:
        failure = exc
    mine = _client_version(client, server is not None)
    if args.format:
        data = {"Client": mine, "Server": server}
        print(json.dumps(data) if args.format == "json" else fmt.render(args.format, data))
    else:
        print("Client: Berth")
        _print_fields(
            " ",
            [
                ("Version", mine["Version"]),
                ("API version", mine["ApiVersion"]),
                ("Python version", mine["PythonVersion"]),
                ("OS/Arch", f"{mine['Os']}/{mine['Arch']}"),
                ("Host", mine["Host"]),
            ],
        )
        if server is not None:
            print(f"\nServer: {(server.get('Platform') or {}).get('Name', '')}".rstrip())
            for component in server.get("Components") or []:
                details = component.get("Details") or {}
                print(f" {component.get('Name')}:")
                fields: list[tuple[str, Any]] = [("Version", component.get("Version", ""))]
                if "ApiVersion" in details:
                    fields.append(
                        (
                            "API version",
                            f"{details['ApiVersion']} (minimum version "
                            f"{details.get('MinAPIVersion', '')})",
                        )
                    )
                for key, label in (
                    ("GoVersion", "Python version"),
                    ("GitCommit", "Git commit"),
                    ("KernelVersion", "Kernel version"),
                ):
                    if details.get(key):
                        fields.append((label, details[key]))
                if "Os" in details:
                    fields.append(("OS/Arch", f"{details['Os']}/{details.get('Arch', '')}"))
                if "Experimental" in details:
                    fields.append(("Experimental", details["Experimental"]))
                _print_fields("  ", fields, 17)
    if failure is not None:
        error(str(failure))
        return EXIT_ERROR
    return 0


def info(client: Client, args: Namespace) -> int:
    data = client.info()
    if args.format:
        print(json.dumps(data) if args.format == "json" else fmt.render(args.format, data))
        return 0
    print(f"Client: Berth\n Version: {__version__}\n Host: {client.host}\n")
    print(f"Server:\n Containers: {data.get('Containers', 0)}")
    for key, label in (
        ("ContainersRunning", "Running"),
        ("ContainersPaused", "Paused"),
        ("ContainersStopped", "Stopped"),
    ):
        print(f"  {label}: {data.get(key, 0)}")
    _info_body(data)
    return 0


def _info_body(data: dict[str, Any]) -> None:
    print(f" Images: {data.get('Images', 0)}")
    print(f" Server Version: {data.get('ServerVersion', '')}")
    print(f" Storage Driver: {data.get('Driver', '')}")
    for key, value in data.get("DriverStatus") or []:
        print(f"  {key}: {value}")
    print(f" Logging Driver: {data.get('LoggingDriver', '')}")
    print(f" Cgroup Driver: {data.get('CgroupDriver', '')}")
    print(f" Cgroup Version: {data.get('CgroupVersion', '')}")
    plugins = data.get("Plugins") or {}
    print(" Plugins:")
    for kind in ("Volume", "Network", "Log"):
        print(f"  {kind}: {' '.join(plugins.get(kind) or [])}".rstrip())
    print(f" Runtimes: {' '.join(sorted(data.get('Runtimes') or {}))}")
    print(f" Default Runtime: {data.get('DefaultRuntime', '')}")
    options = data.get("SecurityOptions") or []
    if options:
        print(" Security Options:")
        for option in options:
            print(f"  {option.removeprefix('name=')}")
    print(f" Kernel Version: {data.get('KernelVersion', '')}")
    print(f" Operating System: {data.get('OperatingSystem', '')}")
    print(f" OSType: {data.get('OSType', '')}")
    print(f" Architecture: {data.get('Architecture', '')}")
    print(f" CPUs: {data.get('NCPU', '')}")
    print(f" Total Memory: {fmt.binary_size(float(data.get('MemTotal') or 0))}")
    print(f" Name: {data.get('Name', '')}")
    print(f" Root Dir: {data.get('DockerRootDir', '')}")
    print(f" Live Restore Enabled: {str(bool(data.get('LiveRestoreEnabled'))).lower()}")
    for warning in data.get("Warnings") or []:
        print(warning, file=sys.stderr)
