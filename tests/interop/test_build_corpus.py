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
import io
import json
import os
import shutil
import subprocess
import tarfile
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
