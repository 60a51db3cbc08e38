"""``berth build``: a context folder as a tar (``.dockerignore`` applied here, as the
docker CLI does) posted to ``/build``; the daemon's step-by-step output printed as it
comes. The exit status is a failed RUN's exit code (1 for other errors), as Docker's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tarfile
import tempfile
import uuid
from argparse import Namespace
from typing import IO, Any

from berth.build import dockerignore
from berth.client.errors import APIError, ClientError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from berth.client import Client


def arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``docker build`` that the legacy builder knows."""
    p.add_argument("-t", "--tag", action="append", default=[], metavar="NAME[:TAG]")
    p.add_argument("-f", "--file", metavar="FILE", help="the Dockerfile (- for stdin)")
    p.add_argument("--build-arg", action="append", default=[], metavar="KEY[=VALUE]")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-cache", action="store_true", help="run every step again")
    p.add_argument("--pull", action="store_true", help="pull base images even if present")
    p.add_argument("--target", metavar="STAGE", help="build up to this stage")
    p.add_argument("--iidfile", metavar="FILE", help="write the image ID to FILE")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the image ID")
    p.add_argument("--network", metavar="MODE", help="network for RUN: host or none")
    p.add_argument("--platform", metavar="OS/ARCH")
    p.add_argument("--add-host", action="append", default=[], metavar="HOST:IP")
    p.add_argument("--shm-size", metavar="BYTES")
    p.add_argument("--rm", default=True, action=argparse.BooleanOptionalAction)
    p.add_argument("--force-rm", action="store_true")
    p.add_argument("path", metavar="PATH|-")


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


def make_context(
    root: str, dockerfile: str | None, dockerfile_text: bytes | None, out: IO[bytes]
) -> str:
    """Write the context tar; returns the Dockerfile's name inside it."""
    patterns: list[str] = []
    ignore = dockerignore.find_ignore_file(root, dockerfile if dockerfile_text is None else None)
    if ignore is not None:
        patterns = dockerignore.read_patterns(ignore.read_bytes())
    name = dockerfile or "Dockerfile"
    inside = dockerfile_text is None
    if inside:
        rel = os.path.relpath(
            os.path.abspath(name if os.path.isabs(name) else os.path.join(root, name)), root
        )
        if rel.startswith(".."):
            with open(name if os.path.isabs(name) else os.path.join(os.getcwd(), name), "rb") as f:
                dockerfile_text = f.read()
            inside = False
        else:
            name = rel
            patterns = dockerignore.keep_build_files(patterns, name)
    matcher = dockerignore.PatternMatcher(patterns)
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        extra_name = ""
        if not inside:
            extra_name = f".dockerfile.{uuid.uuid4().hex[:20]}"
        for rel_path, _entry in matcher.walk(root):
            if rel_path == ".dockerignore" and not inside:
                continue
            info = tar.gettarinfo(os.path.join(root, rel_path), rel_path)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if info.isreg():
                with open(os.path.join(root, rel_path), "rb") as f:
                    tar.addfile(info, f)
            elif info.isdir() or info.issym() or info.islnk():
                tar.addfile(info)
        if not inside:
            assert dockerfile_text is not None
            ignore_text = "\n".join([*(patterns or [".dockerignore"]), extra_name]).encode()
            for entry_name, data in ((".dockerignore", ignore_text), (extra_name, dockerfile_text)):
                info = tarfile.TarInfo(entry_name)
                info.size = len(data)
                info.mode = 0o600
                import io

                tar.addfile(info, io.BytesIO(data))
            name = extra_name
    return name


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
        root = tempfile.mkdtemp(prefix="berth-build-")
        empty = True
    else:
        empty = False
        if not os.path.isdir(root):
            raise ClientError(f"unable to prepare context: path {root!r} not found")
    params: dict[str, Any] = {
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
    with tempfile.TemporaryFile() as body:
        try:
            name = make_context(
                os.path.abspath(root),
                None if args.file in (None, "-") else args.file,
                dockerfile_text,
                body,
            )
        finally:
            if empty:
                os.rmdir(root)
        params["dockerfile"] = name
        if not args.quiet:
            size = body.tell()
            print(f"Sending build context to Berth daemon  {_size(size)}", flush=True)
        body.seek(0)
        url = client.url("/build", params)
        from urllib.parse import quote

        url += "".join(f"&t={quote(tag, safe='')}" for tag in args.tag)  # t repeats
        response = client._exchange(
            "POST",
            url,
            body,  # type: ignore[arg-type]  # a file is sent chunked, as load_images does
            {"Content-Type": "application/x-tar"},
            stream=True,
        )
        image_id = ""
        with response:
            if response.status >= 400:
                text = response.read_all()
                try:
                    message = json.loads(text).get("message") or text.decode()
                except ValueError:
                    message = text.decode(errors="replace")
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
