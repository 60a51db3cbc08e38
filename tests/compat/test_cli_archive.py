"""The berth CLI's cp (both ways, ``-`` tars, ``-L``), diff, export and commit against a
private berthd, with the ``container`` group forms."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from tests.compat.berthd import Daemon
from tests.helpers import CREATED_IDS, VENV_BIN

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root and the real kernel"),
]


def berth(daemon: Daemon, *args: str, input: bytes | None = None) -> bytes:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "BERTH_"))}
    env["BERTH_HOST"] = daemon.host
    result = subprocess.run(
        [str(VENV_BIN / "berth"), *args], capture_output=True, input=input, env=env, timeout=60
    )
    for c in daemon.get("/containers/json?all=1").json():
        CREATED_IDS.add(c["Id"])
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


def fails(daemon: Daemon, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "BERTH_"))}
    env["BERTH_HOST"] = daemon.host
    result = subprocess.run(
        [str(VENV_BIN / "berth"), *args], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 125, result
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


def test_cp_both_ways(daemon: Daemon, tmp_path: Path) -> None:
    berth(
        daemon, "run", "--network", "none", "--name", "bcp", "-v", "/vol", "busybox", "sh", "-c",
        "mkdir -p /d/sub; echo one > /d/sub/f; ln -s /d/sub/f /link",
    )  # fmt: skip
    berth(daemon, "cp", "bcp:/d", str(tmp_path))
    assert (tmp_path / "d" / "sub" / "f").read_text() == "one\n"
    berth(daemon, "container", "cp", "bcp:/d/sub/f", str(tmp_path / "renamed"))
    assert (tmp_path / "renamed").read_text() == "one\n"
    berth(daemon, "cp", "-L", "bcp:/link", str(tmp_path / "followed"))
    assert (tmp_path / "followed").read_text() == "one\n"
    berth(daemon, "cp", "bcp:/link", str(tmp_path / "kept"))
    assert os.readlink(tmp_path / "kept") == "/d/sub/f"
    raw = berth(daemon, "cp", "bcp:/d/.", "-")
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        assert sorted(tar.getnames()) == [".", "./sub", "./sub/f"]
    # in: a file into the volume, a directory under a new name, a tar from stdin
    (tmp_path / "in.txt").write_text("in\n")
    berth(daemon, "cp", str(tmp_path / "in.txt"), "bcp:/vol/")
    berth(daemon, "cp", str(tmp_path / "d"), "bcp:/copied")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("from-stdin")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"si\n"))
    berth(daemon, "cp", "-", "bcp:/tmp", input=buffer.getvalue())
    berth(daemon, "start", "bcp")
    berth(daemon, "wait", "bcp")
    for path, text in (
        ("/vol/in.txt", b"in\n"),
        ("/copied/sub/f", b"one\n"),
        ("/tmp/from-stdin", b"si\n"),
    ):
        out = berth(daemon, "cp", f"bcp:{path}", "-")
        with tarfile.open(fileobj=io.BytesIO(out)) as tar:
            member = tar.extractfile(os.path.basename(path))
            assert member is not None and member.read() == text
    assert "could not find the file /nope in container bcp" in fails(
        daemon, "cp", "bcp:/nope", str(tmp_path)
    )
    assert "cannot copy a directory to a file" in fails(
        daemon, "cp", str(tmp_path / "d"), "bcp:/d/sub/f"
    )
    berth(daemon, "rm", "-v", "bcp")


def test_diff_export_commit(daemon: Daemon, tmp_path: Path) -> None:
    berth(
        daemon, "run", "--network", "none", "--name", "bdiff", "busybox", "sh", "-c",
        "touch /new; rm /bin/vi",
    )  # fmt: skip
    assert berth(daemon, "diff", "bdiff").decode().splitlines() == ["C /bin", "D /bin/vi", "A /new"]
    assert berth(daemon, "container", "diff", "bdiff") == berth(daemon, "diff", "bdiff")
    berth(daemon, "export", "-o", str(tmp_path / "fs.tar"), "bdiff")
    with tarfile.open(tmp_path / "fs.tar") as tar:
        names = tar.getnames()
    assert "new" in names and "bin/vi" not in names
    image = berth(
        daemon, "commit", "-m", "msg", "-a", "me", "-c", "CMD ls /new", "--pause=false",
        "bdiff", "berth-committed:1",
    ).decode().strip()  # fmt: skip
    assert image.startswith("sha256:")
    out = berth(daemon, "run", "--rm", "--network", "none", "berth-committed:1")
    assert out == b"/new\n"
    assert "not a valid change command" in fails(daemon, "commit", "-c", "RUN x", "bdiff")
    berth(daemon, "rm", "bdiff")
    berth(daemon, "rmi", "berth-committed:1")
