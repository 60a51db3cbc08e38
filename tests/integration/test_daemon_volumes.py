"""Volumes and mounts through berthd: the volumes API over HTTP, and the real docker CLI
(``docker volume ...``, ``-v name:/path``, ``--tmpfs``, ``--mount``, ``rm -v``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.parse

import pytest
from tests.compat.berthd import Daemon
from tests.helpers import CREATED_IDS

DOCKER = shutil.which("docker") or "/usr/local/bin/docker"

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root and the real kernel"),
]
needs_cli = pytest.mark.skipif(not os.path.exists(DOCKER), reason="no docker CLI")


def docker(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env["DOCKER_CONFIG"] = os.path.join(daemon.base, "docker-config")
    result = subprocess.run(
        [DOCKER, "-H", daemon.host, *args], capture_output=True, text=True, timeout=60, env=env
    )
    for c in daemon.get("/containers/json?all=1").json():
        CREATED_IDS.add(c["Id"])
    return result


def filters(**values: list[str]) -> str:
    return "filters=" + urllib.parse.quote(json.dumps(values))


def names(daemon: Daemon, query: str = "") -> list[str]:
    response = daemon.get("/volumes" + (f"?{query}" if query else ""))
    assert response.status == 200, response
    return sorted(v["Name"] for v in response.json()["Volumes"])


def output(daemon: Daemon, container_id: str) -> str:
    return b"".join(data for _, data in daemon.logs(container_id)).decode()


# ---- the API ---------------------------------------------------------------------------


def test_volume_api_create_inspect_list_remove(daemon: Daemon) -> None:
    made = daemon.post("/volumes/create", {"Name": "api-one", "Labels": {"team": "a"}})
    assert made.status == 201, made
    volume = made.json()
    assert volume["Name"] == "api-one"
    assert volume["Driver"] == "local" and volume["Scope"] == "local"
    assert volume["Labels"] == {"team": "a"}
    assert volume["Mountpoint"] == os.path.join(daemon.root, "volumes", "api-one", "_data")
    assert os.path.isdir(volume["Mountpoint"])
    again = daemon.post("/volumes/create", {"Name": "api-one"})  # the existing one
    assert again.status == 201 and again.json()["CreatedAt"] == volume["CreatedAt"]
    anonymous = daemon.post("/volumes/create", {}).json()["Name"]
    assert len(anonymous) == 64
    assert daemon.get("/v1.45/volumes/api-one").json() == volume
    assert {"api-one", anonymous} <= set(names(daemon))
    assert names(daemon, filters(name=["api-"])) == ["api-one"]
    assert names(daemon, filters(label=["team=a"])) == ["api-one"]
    assert names(daemon, filters(label=["team=b"])) == []
    assert "api-one" in names(daemon, filters(dangling=["true"]))
    assert "api-one" not in names(daemon, filters(dangling=["false"]))
    for name in ("api-one", anonymous):
        assert daemon.delete(f"/volumes/{name}").status == 204
    gone = daemon.get("/volumes/api-one")
    assert gone.status == 404 and gone.json()["message"] == "get api-one: no such volume"
    assert daemon.delete("/volumes/api-one").status == 404
    assert daemon.delete("/volumes/api-one?force=1").status == 204


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"Name": "/etc"},
            "invalid volume name '/etc': only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed",
        ),
        ({"Name": "x1", "Driver": "nfs"}, "volume driver 'nfs' is not supported: use local"),
        (
            {"Name": "x2", "DriverOpts": {"type": "nfs"}},
            "volume driver options are not supported yet: ['type']",
        ),
    ],
)
def test_volume_create_refusals(daemon: Daemon, body: dict[str, object], message: str) -> None:
    response = daemon.post("/volumes/create", body)
    assert response.status == 400
    assert response.json()["message"] == message


def test_named_volume_on_demand_copy_up_and_in_use(daemon: Daemon) -> None:
    # a name, not a path: made on first use and filled from the image's /etc
    writer, code = daemon.run(
        ["sh", "-c", "cat /etc/hostname; grep -c root /etc/passwd; echo hi > /etc/new"],
        HostConfig={"Binds": ["etcvol:/etc"]},
    )
    assert code == 0, output(daemon, writer)
    assert output(daemon, writer).split() == [writer[:12], "1"]  # /etc/hostname still bound
    data = os.path.join(daemon.root, "volumes", "etcvol", "_data")
    # the image's files, the new one, and the mount points of the bound /etc files
    assert sorted(os.listdir(data)) == [
        "group",
        "hostname",
        "hosts",
        "new",
        "passwd",
        "resolv.conf",
    ]
    mounts = daemon.inspect(writer)["Mounts"]
    assert mounts == [
        {
            "Type": "volume",
            "Name": "etcvol",
            "Source": data,
            "Destination": "/etc",
            "Driver": "local",
            "Mode": "z",
            "RW": True,
            "Propagation": "",
        }
    ]
    refused = daemon.delete("/volumes/etcvol?force=1")
    assert refused.status == 409
    assert refused.json()["message"] == (
        f"remove etcvol: volume is in use - [{writer}]: remove those containers first"
    )
    assert "etcvol" not in names(daemon, filters(dangling=["true"]))
    reader, code = daemon.run(["cat", "/mnt/new"], HostConfig={"Binds": ["etcvol:/mnt:ro"]})
    assert code == 0 and output(daemon, reader) == "hi\n"
    for container in (writer, reader):
        assert daemon.delete(f"/containers/{container}?v=1").status == 204
    assert "etcvol" in names(daemon)  # -v removes anonymous volumes only
    assert daemon.delete("/volumes/etcvol").status == 204


def test_anonymous_volumes_and_rm_v(daemon: Daemon) -> None:
    container, code = daemon.run(
        ["sh", "-c", "echo a > /data/f; grep -c ' /data ' /proc/mounts"],
        Volumes={"/data": {}},
        HostConfig={"Mounts": [{"Type": "volume", "Target": "/more"}]},
    )
    assert code == 0 and output(daemon, container) == "1\n"
    anonymous = [m["Name"] for m in daemon.inspect(container)["Mounts"]]
    assert len(anonymous) == 2 and all(len(n) == 64 for n in anonymous)
    for name in anonymous:
        labels = daemon.get(f"/volumes/{name}").json()["Labels"]
        assert labels == {"com.docker.volume.anonymous": ""}
    assert daemon.delete(f"/containers/{container}?v=1").status == 204
    assert not set(anonymous) & set(names(daemon))
    # AutoRemove (docker run --rm) takes its anonymous volumes along
    auto = daemon.create(["true"], Volumes={"/data": {}}, HostConfig={"AutoRemove": True})
    name = daemon.inspect(auto)["Mounts"][0]["Name"]
    assert daemon.post(f"/containers/{auto}/start").status == 204
    daemon.post(f"/containers/{auto}/wait?condition=removed")
    assert name not in names(daemon)


def test_tmpfs_and_mounts_api(daemon: Daemon) -> None:
    host = os.path.join(daemon.base, "bindsrc")
    os.makedirs(host, exist_ok=True)
    with open(os.path.join(host, "file"), "w") as f:
        f.write("from the host\n")
    container, code = daemon.run(
        [
            "sh",
            "-c",
            "grep -E ' /(scratch|small) ' /proc/mounts | cut -d' ' -f2-4;"
            " cat /src/file; touch /src/x 2>/dev/null || echo read-only",
        ],
        HostConfig={
            "Tmpfs": {"/scratch": "size=64m,mode=1777"},
            "Mounts": [
                {"Type": "bind", "Source": host, "Target": "/src", "ReadOnly": True},
                {"Type": "tmpfs", "Target": "/small", "TmpfsOptions": {"SizeBytes": 1 << 20}},
            ],
        },
    )
    assert code == 0, output(daemon, container)
    lines = output(daemon, container).splitlines()
    lines[:2] = sorted(lines[:2])  # /proc/mounts order: Mounts first, then Tmpfs
    assert lines[0].startswith("/scratch tmpfs rw,nosuid,nodev,noexec")
    assert "size=65536k" in lines[0]
    assert lines[1].startswith("/small tmpfs rw,nosuid,nodev,noexec") and "size=1024k" in lines[1]
    assert lines[2:] == ["from the host", "read-only"]
    kinds = {m["Destination"]: (m["Type"], m["RW"]) for m in daemon.inspect(container)["Mounts"]}
    assert kinds == {
        "/src": ("bind", False),
        "/small": ("tmpfs", True),
        "/scratch": ("tmpfs", True),
    }
    assert daemon.delete(f"/containers/{container}").status == 204


@pytest.mark.parametrize(
    ("host_config", "message"),
    [
        (
            {"Mounts": [{"Type": "bind", "Source": "/nonexistent-src", "Target": "/x"}]},
            "invalid mount config for type 'bind': bind source path does not exist:"
            " /nonexistent-src",
        ),
        ({"Tmpfs": {"/x": "size=1m,bind"}}, "invalid tmpfs option 'bind' for /x"),
        ({"Binds": ["aa:/x", "bb:/x"]}, "duplicate mount point: /x"),
        ({"Binds": ["bad name:/x"]}, "invalid bind 'bad name:/x': 'bad name' is neither"),
        ({"Mounts": [{"Type": "npipe", "Target": "/x"}]}, "invalid mount type 'npipe'"),
    ],
)
def test_mount_refusals(daemon: Daemon, host_config: dict[str, object], message: str) -> None:
    response = daemon.post("/containers/create", {"Image": "busybox", "HostConfig": host_config})
    assert response.status == 400
    assert response.json()["message"].startswith(message)
    assert not {"aa", "bb"} & set(names(daemon))


def test_prune(daemon: Daemon) -> None:
    for name in ("keep-named", "prune-named"):
        daemon.post("/volumes/create", {"Name": name, "Labels": {"p": name}})
    used = daemon.create(["true"], HostConfig={"Binds": ["prune-used:/d"]}, Volumes={"/a": {}})
    anonymous_used = daemon.inspect(used)["Mounts"][1]["Name"]
    left = daemon.create(["true"], Volumes={"/left": {}})  # removed without -v
    loose = daemon.inspect(left)["Mounts"][0]["Name"]
    assert daemon.delete(f"/containers/{left}").status == 204
    unnamed = daemon.post("/volumes/create", {}).json()["Name"]  # anonymous, as in moby
    # the default: unused anonymous volumes only; named need all=true
    response = daemon.post("/volumes/prune")
    assert response.status == 200
    assert sorted(response.json()["VolumesDeleted"]) == sorted([loose, unnamed])
    pruned = daemon.post("/volumes/prune?" + filters(all=["true"], label=["p=prune-named"]))
    assert pruned.json()["VolumesDeleted"] == ["prune-named"]
    assert {"keep-named", "prune-used", anonymous_used} <= set(names(daemon))
    assert unnamed not in names(daemon)
    assert daemon.delete(f"/containers/{used}?v=1").status == 204
    assert daemon.delete("/volumes/keep-named").status == 204
    assert daemon.delete("/volumes/prune-used").status == 204


# ---- the docker CLI ----------------------------------------------------------------------


@needs_cli
def test_docker_volume_commands(daemon: Daemon) -> None:
    assert docker(daemon, "volume", "create", "--label", "k=v", "clivol").stdout == "clivol\n"
    listed = docker(daemon, "volume", "ls", "--format", "{{.Driver}} {{.Name}}")
    assert "local clivol" in listed.stdout.splitlines()
    inspected = json.loads(docker(daemon, "volume", "inspect", "clivol").stdout)
    assert inspected[0]["Labels"] == {"k": "v"}
    run = docker(
        daemon, "run", "--rm", "-v", "clivol:/data", "busybox", "sh", "-c", "echo x > /data/f"
    )
    assert run.returncode == 0, run.stderr
    read = docker(daemon, "run", "--rm", "-v", "clivol:/data", "busybox", "cat", "/data/f")
    assert read.returncode == 0 and read.stdout == "x\n", read.stderr
    holder = docker(daemon, "create", "--name", "holder", "-v", "clivol:/data", "busybox", "true")
    assert holder.returncode == 0, holder.stderr
    refused = docker(daemon, "volume", "rm", "clivol")
    assert refused.returncode == 1
    assert refused.stderr.startswith(
        "Error response from daemon: remove clivol: volume is in use - ["
    )
    assert docker(daemon, "rm", "-v", "holder").returncode == 0
    assert docker(daemon, "volume", "rm", "clivol").stdout == "clivol\n"
    assert "clivol" not in docker(daemon, "volume", "ls", "-q").stdout.split()


@needs_cli
def test_docker_run_tmpfs_mount_and_prune(daemon: Daemon) -> None:
    tmpfs = docker(
        daemon,
        "run",
        "--rm",
        "--tmpfs",
        "/scratch",
        "busybox",
        "grep",
        " /scratch ",
        "/proc/mounts",
    )
    assert tmpfs.returncode == 0, tmpfs.stderr
    assert tmpfs.stdout.startswith("tmpfs /scratch tmpfs rw,nosuid,nodev,noexec")
    source = os.path.join(daemon.base, "clibind")
    os.makedirs(source, exist_ok=True)
    bound = docker(
        daemon,
        "run",
        "--rm",
        "--mount",
        f"type=bind,source={source},target=/b,readonly",
        "busybox",
        "sh",
        "-c",
        "touch /b/x",
    )
    assert bound.returncode == 1 and "Read-only file system" in bound.stderr
    assert docker(daemon, "volume", "create", "cliprune").returncode == 0
    assert docker(daemon, "run", "--rm", "-v", "/anon", "busybox", "true").returncode == 0
    pruned = docker(daemon, "volume", "prune", "-f", "-a")
    assert pruned.returncode == 0, pruned.stderr
    assert "cliprune" in pruned.stdout.split()
    assert names(daemon) == []
