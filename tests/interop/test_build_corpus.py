"""The builder against the real Docker daemon's legacy builder, case by case.

Each folder of ``build_corpus/`` (a Dockerfile and its context) is built by dockerd
(``DOCKER_BUILDKIT=0 docker build --network none``) and by berthd (the same docker CLI),
both from the same busybox image ID (saved from berthd, loaded into dockerd). The
resulting images must have the same config fields and the same filesystem (paths,
types, modes, owners, contents, symlink targets; never mtimes). The differences that
remain are deliberate deviations listed in docs/builder.md and asserted here as such.
Also: ADD of a URL (with and without ``--checksum``) from a loopback HTTP server.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import shutil
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from tests.compat.berthd import Daemon

if TYPE_CHECKING:
    from tests.interop.conftest import Dockerd

CORPUS = Path(__file__).resolve().parent / "build_corpus"
CASES = sorted(p.name for p in CORPUS.iterdir() if (p / "Dockerfile").exists())
CONFIG_FIELDS = (
    "Env",
    "Cmd",
    "Entrypoint",
    "WorkingDir",
    "User",
    "Labels",
    "ExposedPorts",
    "Volumes",
    "Healthcheck",
    "StopSignal",
    "Shell",
    "OnBuild",
)
# what a container adds on top of its image (dockerd's init layer, and Berth's mount points)
CONTAINER_ENTRIES = {
    ".dockerenv",
    "etc/hostname",
    "etc/hosts",
    "etc/resolv.conf",
    "etc/mtab",
    "dev/console",
    "dev/pts",
    "dev/shm",
}
# modes git cannot carry, set on the copy of each case before building
MODES = {
    "copy_glob": {"src/main.c": 0o755, "src/sub/deeper": 0o700, "src/sub/x.h": 0o640},
    "chown": {"dir": 0o751, "f1": 0o600},
}

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root and the real kernel"),
]

Entry = tuple[str, int, int, int, str]


def _docker(
    host: str,
    *args: str,
    env: dict[str, str] | None = None,
    ok: bool = True,
    input: bytes | None = None,
) -> subprocess.CompletedProcess[bytes]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    base.update(env or {})
    base["DOCKER_BUILDKIT"] = "0"
    result = subprocess.run(
        ["docker", "-H", host, *args], capture_output=True, env=base, input=input, timeout=300
    )
    if ok:
        assert result.returncode == 0, (args, result.stderr.decode(errors="replace"))
    return result


@pytest.fixture(scope="module")
def both(daemon: Daemon, dockerd: Dockerd) -> tuple[Daemon, Dockerd]:
    """The same busybox (same image ID) in both daemons."""
    saved = _docker(daemon.host, "save", "busybox").stdout
    _docker(dockerd.host, "load", input=saved)
    ours = json.loads(_docker(daemon.host, "image", "inspect", "busybox").stdout)[0]["Id"]
    theirs = json.loads(_docker(dockerd.host, "image", "inspect", "busybox").stdout)[0]["Id"]
    assert ours == theirs
    return daemon, dockerd


def _context(case: str, tmp: Path) -> Path:
    ctx = tmp / case
    shutil.copytree(CORPUS / case, ctx, symlinks=True)
    for rel, mode in MODES.get(case, {}).items():
        os.chmod(ctx / rel, mode)
    if case == "add_tar":
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:

            def add(
                name: str, kind: bytes, mode: int, uid: int = 0, data: bytes = b"", link: str = ""
            ) -> None:
                info = tarfile.TarInfo(name)
                info.type, info.mode, info.uid, info.gid = kind, mode, uid, uid
                info.mtime, info.size, info.linkname = 1_000_000_000, len(data), link
                tar.addfile(info, io.BytesIO(data) if data else None)

            add("payload", tarfile.DIRTYPE, 0o750, 1001)
            add("payload/sub", tarfile.DIRTYPE, 0o700)
            add("payload/sub/file", tarfile.REGTYPE, 0o640, 1001, b"in the tar\n")
            add("payload/exec", tarfile.REGTYPE, 0o4755, 0, b"#!/bin/sh\n")
            add("payload/link", tarfile.SYMTYPE, 0o777, link="sub/file")
            add("payload/hard", tarfile.LNKTYPE, 0o640, 1001, link="payload/sub/file")
        (ctx / "archive.tar.gz").write_bytes(buf.getvalue())
    return ctx


def _clean(name: str) -> str:
    name = name.removeprefix("./").removeprefix("/").rstrip("/")
    return "" if name == "." else name


def _filesystem(host: str, image: str) -> dict[str, Entry]:
    """path -> (type, mode, uid, gid, sha256 or link target) of the image's files."""
    cid = _docker(host, "create", image, "true").stdout.decode().strip()
    try:
        data = _docker(host, "export", cid).stdout
    finally:
        _docker(host, "rm", "-f", cid)
    out: dict[str, Entry] = {}
    contents: dict[str, str] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar:
            name = _clean(m.name)
            if not name or name in CONTAINER_ENTRIES:
                continue
            if m.isreg():
                f = tar.extractfile(m)
                assert f is not None
                what = hashlib.sha256(f.read()).hexdigest()
                contents[name] = what
            elif m.islnk():
                what = contents.get(_clean(m.linkname), "?")
            elif m.issym():
                what = m.linkname
            else:
                what = ""
            kind = "0" if m.islnk() else m.type.decode()
            out[name] = (kind, m.mode & 0o7777, m.uid, m.gid, what)
    return out


def _config(host: str, image: str) -> dict[str, Any]:
    config = json.loads(_docker(host, "image", "inspect", image).stdout)[0]["Config"]
    return {k: config.get(k) or None for k in CONFIG_FIELDS}


def _diff(a: dict[str, Entry], b: dict[str, Entry]) -> list[str]:
    lines = []
    for path in sorted(set(a) | set(b)):
        if a.get(path) != b.get(path):
            lines.append(f"{path}: dockerd={a.get(path)} berth={b.get(path)}")
    return lines


@pytest.mark.parametrize("case", CASES)
def test_corpus_case_builds_the_same_image(
    case: str, both: tuple[Daemon, Dockerd], tmp_path: Path
) -> None:
    berthd, dockerd = both
    ctx = _context(case, tmp_path)
    tag = f"corpus-{case.replace('_', '-')}:test"
    _docker(dockerd.host, "build", "--network", "none", "-t", tag, str(ctx))
    _docker(berthd.host, "build", "--network", "none", "-t", tag, str(ctx))
    assert _config(dockerd.host, tag) == _config(berthd.host, tag)
    diff = _diff(_filesystem(dockerd.host, tag), _filesystem(berthd.host, tag))
    assert diff == [], "\n".join(diff)


@pytest.fixture
def http_files(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTP server on 127.0.0.1 (loopback only) serving a folder of files."""
    root = tmp_path / "served"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def _served(root: Path) -> bytes:
    (root / "data.txt").write_bytes(b"downloaded data\n")
    os.utime(root / "data.txt", (1_600_000_000, 1_600_000_000))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("inside.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"in\n"))
    (root / "archive.tar.gz").write_bytes(buf.getvalue())
    return b"downloaded data\n"


def test_add_url_matches_dockerd(
    both: tuple[Daemon, Dockerd], http_files: tuple[str, Path], tmp_path: Path
) -> None:
    """ADD <url>: a file of mode 0600, named after the URL into a directory, never
    unpacked, the same in both daemons."""
    berthd, dockerd = both
    base, root = http_files
    _served(root)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        "FROM busybox\n"
        f"ADD {base}/data.txt /dl/\n"
        f"ADD {base}/data.txt /dl/renamed\n"
        f"ADD --chown=nobody {base}/archive.tar.gz /dl/\n"
    )
    tag = "corpus-add-url:test"
    _docker(dockerd.host, "build", "--network", "none", "-t", tag, str(ctx))
    _docker(berthd.host, "build", "--network", "none", "-t", tag, str(ctx))
    ours = _filesystem(berthd.host, tag)
    diff = _diff(_filesystem(dockerd.host, tag), ours)
    assert diff == [], "\n".join(diff)
    assert ours["dl/data.txt"][:4] == ("0", 0o600, 0, 0)
    assert ours["dl/archive.tar.gz"][:4] == ("0", 0o600, 65534, 65534)
    mtime = _docker(berthd.host, "run", "--rm", tag, "stat", "-c", "%Y", "/dl/data.txt").stdout
    assert mtime.decode().strip() == "1600000000"  # Last-Modified


def test_add_url_checksum(
    both: tuple[Daemon, Dockerd], http_files: tuple[str, Path], tmp_path: Path
) -> None:
    """ADD --checksum (BuildKit's flag; dockerd's legacy builder refuses it): the
    download is verified; a wrong digest fails the build with one clear line."""
    berthd, dockerd = both
    base, root = http_files
    data = _served(root)
    good = "sha256:" + hashlib.sha256(data).hexdigest()
    bad = "sha256:" + "0" * 64
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    dockerfile = ctx / "Dockerfile"
    dockerfile.write_text(f"FROM busybox\nADD --checksum={good} {base}/data.txt /checked\n")
    refused = _docker(dockerd.host, "build", "--network", "none", str(ctx), ok=False)
    assert refused.returncode != 0  # the legacy builder has no --checksum
    _docker(berthd.host, "build", "-t", "corpus-checksum:test", str(ctx))
    out = _docker(berthd.host, "run", "--rm", "corpus-checksum:test", "cat", "/checked").stdout
    assert out == data
    dockerfile.write_text(f"FROM busybox\nADD --checksum={bad} {base}/data.txt /checked\n")
    failed = _docker(berthd.host, "build", str(ctx), ok=False)
    assert failed.returncode != 0
    message = failed.stderr.decode()
    assert f"digest mismatch {bad}: {good}" in message, message
    dockerfile.write_text(f"FROM busybox\nADD --checksum={good} Dockerfile /x\n")
    failed = _docker(berthd.host, "build", str(ctx), ok=False)
    assert "checksum can't be specified for non-HTTP(S) sources" in failed.stderr.decode()


def test_copy_chmod_is_a_deliberate_deviation(both: tuple[Daemon, Dockerd], tmp_path: Path) -> None:
    """COPY --chmod: dockerd's legacy builder refuses it (BuildKit only); Berth applies
    it, as BuildKit (docs/builder.md, deviations)."""
    berthd, dockerd = both
    ctx = tmp_path / "ctx"
    (ctx / "dir").mkdir(parents=True)
    (ctx / "f").write_text("f\n")
    (ctx / "dir" / "g").write_text("g\n")
    (ctx / "Dockerfile").write_text(
        "FROM busybox\nCOPY --chmod=0751 f /f\nCOPY --chown=1:2 --chmod=600 dir /d/\n"
    )
    refused = _docker(dockerd.host, "build", "--network", "none", str(ctx), ok=False)
    assert refused.returncode != 0
    assert "chmod" in refused.stderr.decode()
    _docker(berthd.host, "build", "-t", "corpus-chmod:test", str(ctx))
    fs = _filesystem(berthd.host, "corpus-chmod:test")
    assert fs["f"][:4] == ("0", 0o751, 0, 0)
    assert fs["d/g"][:4] == ("0", 0o600, 1, 2)
