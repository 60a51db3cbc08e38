"""``berth build``: a context folder as a tar (``.dockerignore`` applied here, as the
docker CLI does) posted to ``/build``; the daemon's step-by-step output printed as it
comes. The exit status is a failed RUN's exit code (1 for other errors), as Docker's.
"""

from __future__ import annotations

import json
import os
import sys

from berth.client.errors import APIError, ClientError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing, argparse and the client load elsewhere or not at all
    from argparse import ArgumentParser, Namespace
    from collections.abc import Iterator

    from berth.build.dockerignore import PatternMatcher
    from berth.client import Client

# What a build imports is its start-up cost (an unchanged rebuild is ~10 ms of daemon
# work): no argparse beyond the parser, no tarfile, tempfile, uuid, urllib, http.client,
# and .dockerignore's matcher only when there is an ignore file.
_BLOCK = 512
_RECORD = 20 * _BLOCK  # tarfile pads an archive to a multiple of this
_SEND = 1 << 16  # the body goes out in chunks of about this size


def arguments(p: ArgumentParser) -> None:
    """The flags of ``docker build`` that the legacy builder knows."""
    import argparse

    p.add_argument("-t", "--tag", action="append", default=[], metavar="NAME[:TAG]")
    p.add_argument("-f", "--file", metavar="FILE", help="the Dockerfile (- for stdin)")
    p.add_argument("--build-arg", action="append", default=[], metavar="KEY[=VALUE]")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-cache", action="store_true", help="run every step again")
    p.add_argument("--pull", action="store_true", help="pull base images even if present")
    p.add_argument("--target", metavar="STAGE", help="build up to this stage")
    p.add_argument("--iidfile", metavar="FILE", help="write the image ID to FILE")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the image ID")
    p.add_argument("--network", metavar="MODE", help="RUN steps' network: bridge, host, none, NAME")
    p.add_argument("--platform", metavar="OS/ARCH")
    p.add_argument("--add-host", action="append", default=[], metavar="HOST:IP")
    p.add_argument("--shm-size", metavar="BYTES")
    p.add_argument("--rm", default=True, action=argparse.BooleanOptionalAction)
    p.add_argument("--force-rm", action="store_true")
    p.add_argument("path", metavar="PATH|-")


# quick_arguments' table: option -> (attribute, kind); kind "append", "value", or the
# constant a flag stores
_OPTIONS: dict[str, tuple[str, object]] = {
    "-t": ("tag", "append"),
    "--tag": ("tag", "append"),
    "-f": ("file", "value"),
    "--file": ("file", "value"),
    "--build-arg": ("build_arg", "append"),
    "--label": ("label", "append"),
    "--no-cache": ("no_cache", True),
    "--pull": ("pull", True),
    "--target": ("target", "value"),
    "--iidfile": ("iidfile", "value"),
    "-q": ("quiet", True),
    "--quiet": ("quiet", True),
    "--network": ("network", "value"),
    "--platform": ("platform", "value"),
    "--add-host": ("add_host", "append"),
    "--shm-size": ("shm_size", "value"),
    "--rm": ("rm", True),
    "--no-rm": ("rm", False),
    "--force-rm": ("force_rm", True),
}


def quick_arguments(args: list[str]) -> Namespace | None:
    """``build``'s arguments as :func:`arguments` would parse them, without argparse
    (~4 ms with gettext and locale), for the plain spellings: ``-t NAME``,
    ``--tag NAME``, ``--tag=NAME``, flags, one PATH. None for anything else (help,
    errors, abbreviations, ``-tNAME``, values starting with ``-``): argparse decides."""
    from types import SimpleNamespace

    values: dict[str, object] = {
        "tag": [],
        "file": None,
        "build_arg": [],
        "label": [],
        "no_cache": False,
        "pull": False,
        "target": None,
        "iidfile": None,
        "quiet": False,
        "network": None,
        "platform": None,
        "add_host": [],
        "shm_size": None,
        "rm": True,
        "force_rm": False,
    }
    paths: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("-") or arg == "-":
            paths.append(arg)
            continue
        name, equals, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        option = _OPTIONS.get(name)
        if option is None:
            return None
        attribute, kind = option
        if kind not in ("append", "value"):
            if equals:
                return None
            values[attribute] = kind
            continue
        if not equals:
            if i >= len(args):
                return None
            value = args[i]
            i += 1
            if value.startswith("-") and value != "-":
                return None
        if kind == "append":
            values[attribute] = [*values[attribute], value]  # type: ignore[misc]
        else:
            values[attribute] = value
    if len(paths) != 1:
        return None
    values["path"] = paths[0]
    return SimpleNamespace(**values)  # type: ignore[return-value]


def _pairs(values: list[str], from_env: bool) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep:
            if not from_env:
                raise ClientError(f"invalid argument {item!r}: use KEY=VALUE")
            if key not in os.environ:
                continue  # docker: an unset variable is not passed
            value = os.environ[key]
        out[key] = value
    return out


# ---- the context tar: what tarfile writes (PAX format), without tarfile -------------------


def _field(text: str, length: int) -> bytes:
    data = text.encode("ascii", "replace")
    return data[:length] + bytes(length - len(data[:length]))


def _number(value: int, digits: int) -> bytes:
    return b"%0*o\0" % (digits - 1, value)


def _header(name: str, mode: int, size: int, mtime: int, kind: bytes, linkname: str = "") -> bytes:
    """A ustar header block with uid, gid 0 and empty user and group names."""
    block = b"".join(
        (
            _field(name, 100),
            _number(mode & 0o7777, 8),
            _number(0, 8),
            _number(0, 8),
            _number(size, 12),
            _number(mtime, 12),
            b"        ",
            kind,
            _field(linkname, 100),
            b"ustar\x0000",
            bytes(32 + 32 + 8 + 8 + 155),
        )
    )
    block += bytes(_BLOCK - len(block))
    checksum = 256 + sum(block[:148]) + sum(block[156:])
    return block[:148] + b"%06o\0" % checksum + block[155:]


def _pax(records: dict[str, str]) -> bytes:
    """An extended header (type x) and its records, as tarfile writes them."""
    binary = False
    for text in records.values():
        try:
            text.encode("utf-8", "strict")
        except UnicodeEncodeError:
            binary = True
            break
    data = b"21 hdrcharset=BINARY\n" if binary else b""
    for keyword, text in records.items():
        value = text.encode("utf-8", "surrogateescape" if binary else "strict")
        length = len(keyword) + len(value) + 3
        n = p = 0
        while True:
            n = length + len(str(p))
            if n == p:
                break
            p = n
        data += b"%d %s=%s\n" % (p, keyword.encode(), value)
    return _header("././@PaxHeader", 0, len(data), 0, b"x") + data + _padding(len(data))


def _padding(size: int) -> bytes:
    return bytes(-size % _BLOCK)


def _entry(
    name: str, mode: int, size: int, mtime: float | int, kind: bytes, linkname: str = ""
) -> bytes:
    """The header blocks of one member: a PAX record where ustar cannot hold a value
    (long or non-ASCII names, a fractional mtime), exactly as tarfile's PAX_FORMAT."""
    records: dict[str, str] = {}
    for key, text in (("path", name), ("linkpath", linkname)):
        if not text.isascii() or len(text) > 100:
            records[key] = text
    if not 0 <= size < 8**11:  # 8 GiB and more: the size in a record, 0 in the header
        records["size"] = str(size)
        size = 0
    whole = round(mtime) if isinstance(mtime, float) else mtime
    if not 0 <= whole < 8**11:
        records["mtime"] = str(mtime)
        whole = 0
    elif isinstance(mtime, float):
        records["mtime"] = str(mtime)  # the whole second in the header, all of it here
    head = _header(name, mode, size, whole, kind, linkname)
    return _pax(records) + head if records else head


def _walk(top: str, rel: str) -> Iterator[tuple[str, os.DirEntry[str]]]:
    """Every entry under ``top``, as ``PatternMatcher.walk`` yields them when nothing is
    ignored: sorted by name, parents first, symlinks not followed."""
    try:
        with os.scandir(top) as it:
            entries = sorted(it, key=lambda e: e.name)
    except FileNotFoundError:
        return
    for entry in entries:
        path = f"{rel}/{entry.name}" if rel else entry.name
        yield path, entry
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(entry.path, path)


class Context:
    """A context folder about to be sent: the Dockerfile's name inside the tar is known
    before the tar is written, so the request can go out while :meth:`chunks` tars."""

    def __init__(self, root: str, dockerfile: str | None, dockerfile_text: bytes | None) -> None:
        self.root = root
        self.size = 0  # bytes produced so far
        patterns: list[str] = []
        if dockerfile_text is None and dockerfile is not None:
            candidates = True  # <Dockerfile>.dockerignore may exist: let dockerignore look
        else:
            candidates = os.path.isfile(os.path.join(root, ".dockerignore"))
        ignore = None
        if candidates:
            from berth.build import dockerignore

            ignore = dockerignore.find_ignore_file(
                root, dockerfile if dockerfile_text is None else None
            )
            if ignore is not None:
                with open(ignore, "rb") as f:
                    patterns = dockerignore.read_patterns(f.read())
        name = dockerfile or "Dockerfile"
        self.inside = dockerfile_text is None
        if self.inside:
            rel = os.path.relpath(
                os.path.abspath(name if os.path.isabs(name) else os.path.join(root, name)), root
            )
            if rel.startswith(".."):
                path = name if os.path.isabs(name) else os.path.join(os.getcwd(), name)
                with open(path, "rb") as f:
                    dockerfile_text = f.read()
                self.inside = False
            else:
                name = rel
                if patterns:
                    from berth.build import dockerignore

                    patterns = dockerignore.keep_build_files(patterns, name)
        self.matcher: PatternMatcher | None = None
        if patterns:
            from berth.build.dockerignore import PatternMatcher

            self.matcher = PatternMatcher(patterns)  # checks every pattern before sending
        self.patterns = patterns
        self.dockerfile_text = dockerfile_text
        if not self.inside:
            name = f".dockerfile.{os.urandom(10).hex()}"
        self.name = name  # the Dockerfile inside the tar

    def chunks(self) -> Iterator[bytes]:
        """The tar, in pieces of about 64 KiB, as tarfile's PAX_FORMAT writes it (uid and
        gid 0, no user names; regular files, folders, symlinks and hard links)."""
        out = bytearray()
        inodes: dict[tuple[int, int], str] = {}
        walk = self.matcher.walk(self.root) if self.matcher is not None else _walk(self.root, "")
        for rel_path, _ in walk:
            if rel_path == ".dockerignore" and not self.inside:
                continue
            path = os.path.join(self.root, rel_path)
            st = os.lstat(path)
            mode = st.st_mode
            kind = mode & 0o170000
            if kind == 0o100000:  # a regular file, or a hard link to one already sent
                inode = (st.st_ino, st.st_dev)
                first = inodes.get(inode)
                if st.st_nlink > 1 and first is not None and first != rel_path:
                    out += _entry(rel_path, mode, 0, st.st_mtime, b"1", first)
                else:
                    if st.st_ino:
                        inodes[inode] = rel_path
                    out += _entry(rel_path, mode, st.st_size, st.st_mtime, b"0")
                    with open(path, "rb") as f:
                        left = st.st_size
                        while left:
                            data = f.read(min(left, _SEND))
                            if not data:
                                raise ClientError(
                                    f"unable to prepare context: {rel_path} shrank while read"
                                )
                            out += data
                            left -= len(data)
                            if len(out) >= _SEND:
                                self.size += len(out)
                                yield bytes(out)
                                out.clear()
                    out += _padding(st.st_size)
            elif kind == 0o040000:
                out += _entry(rel_path + "/", mode, 0, st.st_mtime, b"5")
            elif kind == 0o120000:
                out += _entry(rel_path, mode, 0, st.st_mtime, b"2", os.readlink(path))
            # fifos, devices and sockets are not sent (as before: tarfile's types left out)
            if len(out) >= _SEND:
                self.size += len(out)
                yield bytes(out)
                out.clear()
        if not self.inside:
            assert self.dockerfile_text is not None
            ignore_text = "\n".join([*(self.patterns or [".dockerignore"]), self.name]).encode()
            for entry_name, data in (
                (".dockerignore", ignore_text),
                (self.name, self.dockerfile_text),
            ):
                out += _entry(entry_name, 0o600, len(data), 0, b"0") + data + _padding(len(data))
        out += bytes(2 * _BLOCK)
        out += bytes(-(self.size + len(out)) % _RECORD)
        self.size += len(out)
        yield bytes(out)


def build(client: Client, args: Namespace) -> int:
    from berth.client.streams import iter_json

    dockerfile_text: bytes | None = None
    root = args.path
    if args.file == "-" or root == "-":
        if args.file == "-" and root == "-":
            raise ClientError(
                "invalid argument: can't use stdin for both build context and Dockerfile"
            )
        dockerfile_text = sys.stdin.buffer.read()
    if root == "-":
        import tempfile

        root = tempfile.mkdtemp(prefix="berth-build-")
        empty = True
    else:
        empty = False
        if not os.path.isdir(root):
            raise ClientError(f"unable to prepare context: path {root!r} not found")
    params: dict[str, str | bool | None] = {
        "q": args.quiet or None,
        "nocache": args.no_cache or None,
        "pull": args.pull or None,
        "target": args.target or None,
        "networkmode": args.network or None,
        "platform": args.platform or None,
        "rm": args.rm,
        "forcerm": args.force_rm or None,
        "shmsize": args.shm_size or None,
    }
    build_args = _pairs(args.build_arg, True)
    if build_args:
        params["buildargs"] = json.dumps(build_args)
    labels = _pairs(args.label, False)
    if labels:
        params["labels"] = json.dumps(labels)
    if args.add_host:
        params["extrahosts"] = ",".join(args.add_host)
    try:
        context = Context(
            os.path.abspath(root), None if args.file in (None, "-") else args.file, dockerfile_text
        )
        params["dockerfile"] = context.name
        from berth.client.api import encode_query

        query = [(k, ("1" if v else "0") if isinstance(v, bool) else v) for k, v in params.items()]
        pairs = [(k, v) for k, v in query if v is not None]
        pairs += [("t", tag) for tag in args.tag]  # t repeats
        response = client.upload(
            "POST",
            "/build",
            encode_query(pairs),
            context.chunks(),
            {"Content-Type": "application/x-tar"},
        )
    finally:
        if empty:
            os.rmdir(root)
    if not args.quiet:
        print(f"Sending build context to Berth daemon  {_size(context.size)}", flush=True)
    image_id = ""
    with response:
        if response.status >= 400:
            answer = response.read_all()
            try:
                message = json.loads(answer).get("message") or answer.decode()
            except ValueError:
                message = answer.decode(errors="replace")
            raise APIError(response.status, str(message).strip())
        for message in iter_json(response.read_chunk):
            if message.get("error"):
                detail = message.get("errorDetail") or {}
                print(str(message["error"]), file=sys.stderr)
                code = detail.get("code") if isinstance(detail, dict) else None
                return int(code) if isinstance(code, int) and code > 0 else 1
            aux = message.get("aux")
            if isinstance(aux, dict) and aux.get("ID"):
                image_id = str(aux["ID"])
                continue
            if args.quiet:
                continue
            text = message.get("stream")
            if isinstance(text, str):
                sys.stdout.write(text)
                sys.stdout.flush()
            elif message.get("status"):
                line = str(message["status"])
                if message.get("id"):
                    line = f"{message['id']}: {line}"
                print(line, flush=True)
    if args.quiet:
        print(image_id)
    if args.iidfile and image_id:
        with open(args.iidfile, "w") as f:
            f.write(image_id)
    return 0


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.3g}{unit}"
        value /= 1000
    return f"{n}B"
