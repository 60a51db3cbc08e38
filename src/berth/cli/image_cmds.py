"""The image verbs that move images or credentials: push, save, load, import, history,
login, logout and ``image prune``.

Each follows the docker CLI's behaviour: ``push`` shows per-layer progress as ``pull``
does and sends the credentials ``login`` stored (``~/.docker/config.json``, or
``$DOCKER_CONFIG``) in ``X-Registry-Auth``; ``save`` refuses to write a tar to a
terminal; ``login`` has the daemon check the credentials against the registry and only
then stores them, as docker does.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import tempfile
import time
from argparse import Namespace

from berth.cli import format as fmt
from berth.client import Client, ClientError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, BinaryIO

_CHUNK = 1 << 20
HUB_SERVER = "https://index.docker.io/v1/"


# ---- credentials --------------------------------------------------------------------------


def _registry_of(name: str) -> str:
    """The registry host of an image name (``docker.io`` when it names none)."""
    first, slash, _ = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def registry_auth(name: str) -> str:
    """``X-Registry-Auth`` for ``name``'s registry: base64url JSON of the stored
    credentials, or of ``{}`` (no credentials), as the docker CLI sends it."""
    from berth.distribution.auth import load_credentials

    host = _registry_of(name)
    creds = load_credentials(host)
    doc: dict[str, str] = {}
    if creds is not None:
        server = HUB_SERVER if host == "docker.io" else host
        doc = {"username": creds.username, "password": creds.password, "serveraddress": server}
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode()


# ---- push ---------------------------------------------------------------------------------


def push(client: Client, args: Namespace) -> int:
    from berth.cli.commands import _full_name, _reference
    from berth.distribution.progress import ProgressRenderer

    name = args.name
    repo, tag = _reference(name)
    if "@" in name:
        raise ClientError(f"cannot push a digest reference: {name}: push a tag")
    if args.all_tags:
        if ":" in name.rpartition("/")[2]:
            raise ClientError("tag can't be used with --all-tags/-a")
        tag = ""
    renderer = None if args.quiet else ProgressRenderer(sys.stdout)
    try:
        for message in client.push(repo, tag or None, auth=registry_auth(repo)):
            if renderer is not None and "aux" not in message:
                renderer.feed(message)
    finally:
        if renderer is not None:
            renderer.close()
    if args.quiet:
        print(fmt.familiar(_full_name(repo, tag)) if tag else repo)
    return 0


# ---- save, load, import -------------------------------------------------------------------


def save(client: Client, args: Namespace) -> int:
    if not args.output and sys.stdout.isatty():
        raise ClientError("cowardly refusing to save to a terminal: use the -o flag or redirect")
    with client.save_images(args.images) as stream:
        if not args.output:
            out = sys.stdout.buffer
            while chunk := stream.read_chunk():
                out.write(chunk)
            out.flush()
            return 0
        _write_atomically(args.output, stream.read_chunk)
    return 0


def _write_atomically(path: str, read: Any) -> None:
    """Write the stream to ``path`` through a temporary file renamed at the end: a failed
    save never leaves a truncated tar under the name asked for."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, temp = tempfile.mkstemp(prefix=".berth-save-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := read():
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp, 0o644 & ~_umask())
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _open_input(path: str | None, what: str) -> BinaryIO:
    if path and path != "-":
        try:
            return open(path, "rb")  # closed by the caller
        except OSError as exc:
            raise ClientError(f"cannot open {path}: {exc.strerror}") from None
    if sys.stdin.isatty():
        raise ClientError(f"requested {what} from stdin, but stdin is a terminal: use -i FILE")
    return sys.stdin.buffer


def load(client: Client, args: Namespace) -> int:
    source = _open_input(args.input, "load")
    try:
        for message in client.load_images(source, quiet=args.quiet):
            text = message.get("stream") or message.get("status") or ""
            if text:
                sys.stdout.write(text if text.endswith("\n") else text + "\n")
    finally:
        if source is not sys.stdin.buffer:
            source.close()
    sys.stdout.flush()
    return 0


def import_(client: Client, args: Namespace) -> int:
    if args.file.startswith(("http://", "https://")):
        raise ClientError(
            f"importing from a URL ({args.file}) is not supported: download it, then import"
            " the file"
        )
    source = _open_input(args.file, "import")
    image_id = ""
    try:
        for message in client.import_image(
            source,
            args.repository or None,
            changes=args.change,
            message=args.message,
            platform=args.platform,
        ):
            image_id = str(message.get("status") or image_id)
    finally:
        if source is not sys.stdin.buffer:
            source.close()
    print(image_id)
    return 0


# ---- history ------------------------------------------------------------------------------

HISTORY_COLUMNS = ["ID", "CreatedSince", "CreatedBy", "Size", "Comment"]
HISTORY_HEADERS = {
    "ID": "IMAGE",
    "CreatedSince": "CREATED",
    "CreatedAt": "CREATED AT",
    "CreatedBy": "CREATED BY",
    "Size": "SIZE",
    "Comment": "COMMENT",
}


def _rfc3339(seconds: float) -> str:
    """Go's time.RFC3339 in local time ("2024-05-01T12:00:00Z" when that is UTC)."""
    local = time.localtime(seconds)
    offset = time.strftime("%z", local)
    zone = "Z" if offset in ("+0000", "-0000", "") else f"{offset[:3]}:{offset[3:]}"
    return time.strftime("%Y-%m-%dT%H:%M:%S", local) + zone


def history_rows(
    entries: list[dict[str, Any]], *, trunc: bool = True, human: bool = True
) -> list[dict[str, Any]]:
    """The fields of ``docker history --format`` for each entry."""
    now = time.time()
    rows = []
    for entry in entries:
        ident = str(entry.get("Id") or "")
        if trunc and ident.startswith("sha256:"):
            ident = fmt.short_id(ident)
        created = float(entry.get("Created") or 0)
        created_by = str(entry.get("CreatedBy") or "").replace("\t", " ")
        size = int(entry.get("Size") or 0)
        rows.append(
            {
                "ID": ident,
                "CreatedSince": fmt.ago(created, now) if human else _rfc3339(created),
                "CreatedAt": _rfc3339(created),
                "CreatedBy": fmt.ellipsis(created_by, 45) if trunc else created_by,
                "Size": fmt.human_size(size) if human else str(size),
                "Comment": str(entry.get("Comment") or ""),
            }
        )
    return rows


def history(client: Client, args: Namespace) -> int:
    entries = client.image_history(args.image)
    rows = history_rows(entries, trunc=not args.no_trunc, human=args.human)
    if args.quiet:
        sys.stdout.write("".join(row["ID"] + "\n" for row in rows))
        return 0
    form = args.format
    if form == "json":
        for row in rows:
            sys.stdout.write(json.dumps(row, separators=(",", ":"), ensure_ascii=False) + "\n")
        return 0
    if form and not form.startswith("table"):
        for row in rows:
            sys.stdout.write(fmt.render(form, row) + "\n")
        return 0
    template = form[len("table") :].strip() if form else ""
    names = fmt.template_fields(template) if template else HISTORY_COLUMNS
    headers = dict(HISTORY_HEADERS)
    if not args.human:
        headers["CreatedSince"] = "CREATED AT"
    table = [[headers.get(name, name.upper()) for name in names]]
    for row in rows:
        if template:
            table.append(fmt.render(template, row).split("\t"))
        else:
            table.append([str(row.get(name, "")) for name in names])
    sys.stdout.write(fmt.table(table))
    return 0


# ---- login, logout ------------------------------------------------------------------------


def _server_key(server: str | None) -> tuple[str, str]:
    """(what the daemon is asked about, the host credentials are stored under)."""
    from berth.distribution.client import normalize_login_host

    if not server:
        return HUB_SERVER, "docker.io"
    host = normalize_login_host(server)
    return (HUB_SERVER if host == "docker.io" else host), host


def login(client: Client, args: Namespace) -> int:
    from berth.distribution.auth import store_credentials

    server, host = _server_key(args.server)
    username = args.username
    password = args.password
    if args.password_stdin:
        if password:
            raise ClientError("--password and --password-stdin are mutually exclusive")
        if not username:
            raise ClientError("must provide --username with --password-stdin")
        password = sys.stdin.read().rstrip("\r\n")
    if password and not args.password_stdin:
        print(
            "WARNING! Using --password via the CLI is insecure. Use --password-stdin.",
            file=sys.stderr,
        )
    if not username:
        if not sys.stdin.isatty():
            raise ClientError("cannot ask for a username: stdin is not a terminal; use -u")
        username = input("Username: ").strip()
    if not password:
        import getpass

        if not sys.stdin.isatty():
            raise ClientError("cannot ask for a password: stdin is not a terminal")
        password = getpass.getpass("Password: ")
    if not username or not password:
        raise ClientError("a username and a password are needed to log in")
    result = client.login(username, password, server)
    path = store_credentials(host, username, password)
    print(
        f"WARNING! Your credentials are stored unencrypted in '{path}'.",
        file=sys.stderr,
    )
    print(result.get("Status") or "Login Succeeded")
    return 0


def logout(client: Client, args: Namespace) -> int:
    from berth.distribution.auth import logout as forget

    _, host = _server_key(args.server)
    shown = HUB_SERVER if host == "docker.io" else host
    if forget(host):
        print(f"Removing login credentials for {shown}")
    else:
        print(f"Not logged in to {shown}")
    return 0


# ---- prune --------------------------------------------------------------------------------


def image_prune(client: Client, args: Namespace) -> int:
    from berth.cli.commands import filters_of

    filters: dict[str, Any] = dict(filters_of(args.filter))
    if args.all:
        filters["dangling"] = {"false": True}
    warning = (
        "WARNING! This will remove all images without at least one container associated to them."
        if args.all
        else "WARNING! This will remove all dangling images."
    )
    if not args.force:
        sys.stdout.write(f"{warning}\nAre you sure you want to continue? [y/N] ")
        sys.stdout.flush()
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            return 0
    result = client.prune_images(filters or None)
    deleted = result.get("ImagesDeleted") or []
    if deleted:
        print("Deleted Images:")
        for item in deleted:
            for key, label in (("Untagged", "untagged"), ("Deleted", "deleted")):
                if key in item:
                    print(f"{label}: {item[key]}")
        print()
    print(f"Total reclaimed space: {fmt.human_size(float(result.get('SpaceReclaimed') or 0))}")
    return 0
