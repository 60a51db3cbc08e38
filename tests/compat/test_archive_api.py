"""Container files through the Engine API and the real docker CLI: docker cp both ways
(files, directories, volumes, stopped containers), diff, export, commit, and bad input
(missing paths, non-directory destinations, symlinks that try to leave the container)."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from tests.compat.berthd import Daemon, UnixHTTPConnection
from tests.helpers import CREATED_IDS, tar_of

DOCKER = shutil.which("docker") or "/usr/local/bin/docker"

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root and the real kernel"),
    pytest.mark.skipif(not os.path.exists(DOCKER), reason="the docker CLI is not installed"),
]


def docker(
    daemon: Daemon, *args: str, input: bytes | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env["DOCKER_CONFIG"] = os.path.join(daemon.base, "docker-config")
    result = subprocess.run(
        [DOCKER, "-H", daemon.host, *args],
        capture_output=True,
        input=input,
        timeout=timeout,
        env=env,
    )
    for c in daemon.get("/containers/json?all=1").json():
        CREATED_IDS.add(c["Id"])
    return result


def ok(result: subprocess.CompletedProcess[bytes]) -> str:
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode(errors="replace")


def put(daemon: Daemon, path: str, body: bytes) -> tuple[int, bytes]:
    conn = UnixHTTPConnection(daemon.socket)
    try:
        conn.request("PUT", path, body=body, headers={"Content-Type": "application/x-tar"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def members(result: subprocess.CompletedProcess[bytes]) -> dict[str, bytes | None]:
    """Names (in order) and file contents of the tar a command printed."""
    ok(result)
    found: dict[str, bytes | None] = {}
    with tarfile.open(fileobj=io.BytesIO(result.stdout)) as tar:
        for member in tar:
            data = tar.extractfile(member) if member.isreg() else None
            found[member.name] = data.read() if data is not None else None
    return found


def run(daemon: Daemon, *args: str) -> str:
    return ok(docker(daemon, "run", "--network", "none", *args))


def test_cp_out_file_and_directory(daemon: Daemon, tmp_path: Path) -> None:
    run(daemon, "--name", "cp-out", "busybox", "sh", "-c", "mkdir -p /d/sub; echo one > /d/sub/f")
    ok(docker(daemon, "cp", "cp-out:/d/sub/f", str(tmp_path / "copy")))
    assert (tmp_path / "copy").read_text() == "one\n"
    ok(docker(daemon, "cp", "cp-out:/d", str(tmp_path)))
    assert (tmp_path / "d" / "sub" / "f").read_text() == "one\n"
    names = list(members(docker(daemon, "cp", "cp-out:/d", "-")))
    assert names == ["d", "d/sub", "d/sub/f"]
    # the stat header, as HEAD gives it: Go's FileMode bits, the base name
    head = daemon.request("HEAD", "/containers/cp-out/archive?path=/d/sub/f")
    stat = json.loads(base64.b64decode(head.headers["x-docker-container-path-stat"]))
    assert stat["name"] == "f" and stat["size"] == 4 and stat["mode"] == 0o644
    head = daemon.request("HEAD", "/containers/cp-out/archive?path=/d")
    stat = json.loads(base64.b64decode(head.headers["x-docker-container-path-stat"]))
    assert stat["mode"] == (1 << 31) | 0o755
    ok(docker(daemon, "rm", "cp-out"))


def test_cp_in_file_directory_and_volume_of_a_stopped_container(
    daemon: Daemon, tmp_path: Path
) -> None:
    (tmp_path / "in.txt").write_text("hello\n")
    (tmp_path / "tree" / "sub").mkdir(parents=True)
    (tmp_path / "tree" / "sub" / "y").write_text("y\n")
    ok(docker(daemon, "volume", "create", "arch-vol"))
    ok(
        docker(
            daemon, "create", "--network", "none", "--name", "cp-in", "-v", "arch-vol:/data",
            "busybox", "sh", "-c", "cat /data/in.txt /data/tree/sub/y /root/renamed",
        )
    )  # fmt: skip
    ok(docker(daemon, "cp", str(tmp_path / "in.txt"), "cp-in:/data/"))
    ok(docker(daemon, "cp", str(tmp_path / "tree"), "cp-in:/data/"))
    ok(docker(daemon, "cp", str(tmp_path / "in.txt"), "cp-in:/root/renamed"))
    # the writes went into the volume, not the rootfs below its mount point
    volume = daemon.get("/volumes/arch-vol").json()["Mountpoint"]
    assert Path(volume, "in.txt").read_text() == "hello\n"
    assert Path(volume, "tree", "sub", "y").read_text() == "y\n"
    ok(docker(daemon, "start", "-a", "cp-in"))
    logs = ok(docker(daemon, "logs", "cp-in"))
    assert logs == "hello\ny\nhello\n"
    # and out of the stopped container, whose rootfs is mounted only for the copy
    assert members(docker(daemon, "cp", "cp-in:/data/tree/sub/y", "-")) == {"y": b"y\n"}
    ok(docker(daemon, "rm", "cp-in"))
    ok(docker(daemon, "volume", "rm", "arch-vol"))


def test_cp_bad_input(daemon: Daemon, tmp_path: Path) -> None:
    run(daemon, "--name", "cp-bad", "busybox", "sh", "-c", "echo x > /file")
    missing = daemon.get("/containers/cp-bad/archive?path=/nope")
    assert missing.status == 404
    assert missing.json()["message"] == "Could not find the file /nope in container cp-bad"
    assert put(daemon, "/containers/cp-bad/archive?path=/nope", tar_of({"a": b"a"}))[0] == 404
    status, body = put(daemon, "/containers/cp-bad/archive?path=/file", tar_of({"a": b"a"}))
    assert status == 400 and b"not a directory" in body
    assert daemon.get("/containers/cp-bad/archive").status == 400
    # an entry that climbs out of the destination is refused
    status, body = put(daemon, "/containers/cp-bad/archive?path=/tmp", tar_of({"../../x": b""}))
    assert status == 400, body
    result = docker(daemon, "cp", "cp-bad:/nope", str(tmp_path))
    assert result.returncode != 0
    assert b"Could not find the file /nope in container cp-bad" in result.stderr
    ok(docker(daemon, "rm", "cp-bad"))


def test_symlinks_resolve_inside_the_container(daemon: Daemon, tmp_path: Path) -> None:
    marker = tmp_path / "host-only"
    run(
        daemon, "--name", "cp-esc", "busybox", "sh", "-c",
        f"ln -s / /up; ln -s ../../../../../.. /climb; ln -s {tmp_path} /abs; mkdir /abs2",
    )  # fmt: skip
    for target in ("/up/", "/climb/tmp/", "/abs/"):
        status, body = put(daemon, f"/containers/cp-esc/archive?path={target}", b"")
        assert status in (200, 404), body
        tar = tar_of({"host-only": b"inside"})
        put(daemon, f"/containers/cp-esc/archive?path={target}", tar)
    assert not marker.exists()
    (tmp_path / "secret").write_text("host secret")
    got = daemon.get(f"/containers/cp-esc/archive?path=/climb{tmp_path}/secret")
    assert got.status == 404
    found = members(docker(daemon, "cp", "cp-esc:/up/host-only", "-"))
    assert found == {"host-only": b"inside"}
    ok(docker(daemon, "rm", "cp-esc"))


def test_diff(daemon: Daemon) -> None:
    run(
        daemon, "--name", "differ", "-v", "/vol", "busybox", "sh", "-c",
        "rm /bin/ls; mkdir -p /etc/new; touch /added; echo v > /vol/f",
    )  # fmt: skip
    lines = ok(docker(daemon, "diff", "differ")).splitlines()
    assert lines == ["A /added", "C /bin", "D /bin/ls", "C /etc", "A /etc/new", "A /vol"]
    changes = daemon.get("/containers/differ/changes").json()
    assert {"Path": "/added", "Kind": 1} in changes and {"Path": "/bin/ls", "Kind": 2} in changes
    assert daemon.get("/containers/nope/changes").status == 404
    ok(docker(daemon, "rm", "-v", "differ"))


def test_export(daemon: Daemon, tmp_path: Path) -> None:
    run(daemon, "--name", "exporter", "busybox", "sh", "-c", "echo e > /exported")
    names = list(members(docker(daemon, "export", "exporter")))
    assert "exported" in names and "bin/busybox" in names
    ok(docker(daemon, "export", "-o", str(tmp_path / "out.tar"), "exporter"))
    listing = subprocess.run(["tar", "-tf", str(tmp_path / "out.tar")], capture_output=True)
    assert b"exported\n" in listing.stdout
    ok(docker(daemon, "rm", "exporter"))


def test_commit_and_run_the_image(daemon: Daemon) -> None:
    run(
        daemon, "-d", "--name", "committer", "busybox", "sh", "-c",
        "echo made > /made; rm /bin/vi; sleep 30",
    )  # fmt: skip
    image = ok(
        docker(
            daemon, "commit", "-m", "a message", "-a", "someone", "-c", 'CMD ["cat", "/made"]',
            "-c", "ENV FOO=bar", "-c", "EXPOSE 8080", "committer", "arch-committed:v1",
        )
    ).strip()  # fmt: skip
    assert image.startswith("sha256:")
    state = daemon.inspect("committer")["State"]
    assert state["Running"] and not state["Paused"]
    assert run(daemon, "--rm", "arch-committed:v1") == "made\n"
    shell = "echo $FOO; test -e /bin/vi || echo gone"  # the deletion is in the image too
    assert run(daemon, "--rm", "arch-committed:v1", "sh", "-c", shell) == "bar\ngone\n"
    info = daemon.get("/images/arch-committed:v1/json").json()
    assert info["Config"]["Cmd"] == ["cat", "/made"]
    assert "8080/tcp" in info["Config"]["ExposedPorts"]
    assert info["Author"] == "someone" and info["Comment"] == "a message"
    base = daemon.get("/images/busybox/json").json()
    assert len(info["RootFS"]["Layers"]) == len(base["RootFS"]["Layers"]) + 1
    bad = daemon.post("/commit?container=committer&changes=RUN%20true")
    assert bad.status == 400
    ok(docker(daemon, "rm", "-f", "committer"))
    ok(docker(daemon, "rmi", "arch-committed:v1"))
