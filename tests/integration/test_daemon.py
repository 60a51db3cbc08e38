"""berthd over plain HTTP on its unix socket: a private daemon (and monitor) per module.

Covers the system routes, images, and the container lifecycle: create, start, wait,
logs, inspect, list, stop, kill, remove; and that containers outlive the daemon.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from tests.compat.berthd import Daemon

from berth.engine.jsonlog import JsonLogWriter, read_entries

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root and the real kernel"),
]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except OSError:
        return False


# ---- system and images -------------------------------------------------------------------


def test_ping_headers_and_versioned_paths(daemon: Daemon) -> None:
    for path in ("/_ping", "/v1.45/_ping", "/v1.24/_ping"):
        response = daemon.get(path)
        assert response.status == 200
        assert response.body == b"OK"
        assert response.headers["api-version"] == "1.45"
        assert response.headers["docker-experimental"] == "false"
        assert response.headers["ostype"] == "linux"
        assert response.headers["server"].startswith("berth/")
    assert daemon.request("HEAD", "/_ping").status == 200


def test_version_and_info(daemon: Daemon) -> None:
    version = daemon.get("/v1.45/version").json()
    assert version["ApiVersion"] == "1.45"
    assert version["MinAPIVersion"] == "1.24"
    assert version["Os"] == "linux"
    assert version["Components"][0]["Name"] == "Engine"
    info = daemon.get("/info").json()
    assert info["Driver"] == "overlay"
    assert info["DockerRootDir"] == daemon.root
    assert info["DefaultRuntime"] == "berth-runtime"
    assert info["Images"] >= 1
    assert info["NCPU"] == os.cpu_count()
    assert info["CgroupVersion"] in ("1", "2")


def test_unknown_route_and_errors_are_json(daemon: Daemon) -> None:
    response = daemon.get("/nope")
    assert response.status == 404
    assert "message" in response.json()
    response = daemon.get("/containers/doesnotexist/json")
    assert response.status == 404
    assert response.json() == {"message": "No such container: doesnotexist"}
    response = daemon.post("/containers/create", {"Image": "no-such-image:1"})
    assert response.status == 404
    response = daemon.request(
        "POST", "/containers/create", headers={"Content-Type": "application/json"}
    )
    assert response.status == 400  # no Image
    bad = daemon.post("/containers/create", {"Image": "busybox", "Cmd": 42})
    assert bad.status == 400 and "Cmd" in bad.json()["message"]


def test_images_list_inspect_tag_remove(daemon: Daemon) -> None:
    images = daemon.get("/images/json").json()
    assert any("busybox:latest" in i["RepoTags"] for i in images)
    image = daemon.get("/images/busybox/json").json()
    assert image["Id"].startswith("sha256:")
    assert image["Os"] == "linux"
    assert image["Config"]["Cmd"] == ["sh"]
    assert image["RootFS"]["Type"] == "layers" and len(image["RootFS"]["Layers"]) == 1
    assert daemon.post("/images/busybox/tag?repo=example/tagged&tag=v1").status == 201
    assert "example/tagged:v1" in daemon.get(f"/images/{image['Id']}/json").json()["RepoTags"]
    removed = daemon.delete("/images/example/tagged:v1")
    assert removed.status == 200 and removed.json() == [{"Untagged": "example/tagged:v1"}]
    assert daemon.get("/images/example/tagged:v1/json").status == 404


# ---- containers ---------------------------------------------------------------------------


def test_run_exit_code_logs_inspect_remove(daemon: Daemon) -> None:
    container_id, code = daemon.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert code == 3
    frames = daemon.logs(container_id)
    assert (1, b"out\n") in frames and (2, b"err\n") in frames
    assert daemon.logs(container_id, "stdout=1") == [(1, b"out\n")]
    stamped = daemon.logs(container_id, "stderr=1&timestamps=1")
    assert stamped[0][1].endswith(b"Z err\n") and stamped[0][1][:2] == b"20"
    info = daemon.inspect(container_id)
    assert info["State"]["Status"] == "exited"
    assert info["State"]["ExitCode"] == 3
    assert info["State"]["Running"] is False
    assert info["State"]["FinishedAt"] >= info["State"]["StartedAt"] > "0001"
    assert info["Path"] == "sh" and info["Args"][0] == "-c"
    assert info["Name"].startswith("/")
    assert info["Config"]["Image"] == "busybox"
    log_path = info["LogPath"]
    lines = [json.loads(line) for line in Path(log_path).read_text().splitlines()]
    assert {"log": "out\n", "stream": "stdout"}.items() <= lines[0].items() or any(
        entry["log"] == "out\n" and entry["stream"] == "stdout" for entry in lines
    )
    assert daemon.delete(f"/containers/{container_id}").status == 204
    assert daemon.get(f"/containers/{container_id}/json").status == 404
    assert not os.path.exists(log_path)


def test_wait_conditions_and_start_twice(daemon: Daemon) -> None:
    container_id = daemon.create(["true"])
    # not-running on a created container answers at once
    assert daemon.post(f"/containers/{container_id}/wait").json()["StatusCode"] == 0
    assert daemon.post(f"/containers/{container_id}/start").status == 204
    assert daemon.post(f"/containers/{container_id}/wait?condition=not-running").json() == {
        "Error": None,
        "StatusCode": 0,
    }
    # an exited container starts again, and appends to the same log
    sleeper = daemon.create(["sleep", "30"])
    assert daemon.post(f"/containers/{sleeper}/start").status == 204
    assert daemon.post(f"/containers/{sleeper}/start").status == 304
    assert daemon.post(f"/containers/{sleeper}/wait?condition=bogus").status == 400
    daemon.delete(f"/containers/{sleeper}?force=1")
    daemon.delete(f"/containers/{container_id}")


def test_hostname_and_etc_files(daemon: Daemon) -> None:
    container_id, code = daemon.run(
        ["sh", "-c", "cat /etc/hostname; hostname; grep -c localhost /etc/hosts; ip -o link"]
    )
    assert code == 0
    out = b"".join(data for stream, data in daemon.logs(container_id, "stdout=1")).decode()
    lines = out.splitlines()
    assert lines[0] == container_id[:12] and lines[1] == container_id[:12]
    assert int(lines[2]) >= 1
    assert "lo:" in out and "UP" in out.split("lo:")[1].splitlines()[0]  # loopback is up
    assert "eth0@" in out  # the default bridge network
    info = daemon.inspect(container_id)
    assert info["Config"]["Hostname"] == container_id[:12]
    daemon.delete(f"/containers/{container_id}")


def test_config_env_workdir_user_binds_readonly(daemon: Daemon, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # the container runs as nobody
    (shared / "in.txt").write_text("from the host\n")
    container_id, code = daemon.run(
        [
            "sh",
            "-c",
            "echo $FOO; pwd; id -u; cat /data/in.txt; echo made > /data/out.txt;"
            " touch /rootfile 2>/dev/null && echo writable || echo readonly;"
            " grep -c . /proc/self/status >/dev/null; cat /proc/self/status | grep CapEff",
        ],
        Env=["FOO=bar"],
        WorkingDir="/tmp",
        User="nobody",
        HostConfig={"Binds": [f"{shared}:/data"], "ReadonlyRootfs": True, "NetworkMode": "none"},
    )
    out = b"".join(d for _, d in daemon.logs(container_id)).decode()
    assert code == 0, out
    lines = out.splitlines()
    assert lines[:5] == ["bar", "/tmp", "65534", "from the host", "readonly"], out
    assert (shared / "out.txt").read_text() == "made\n"
    info = daemon.inspect(container_id)
    assert info["Mounts"][0]["Source"] == str(shared)
    assert info["HostConfig"]["ReadonlyRootfs"] is True
    daemon.delete(f"/containers/{container_id}")


def test_capabilities_and_limits(daemon: Daemon) -> None:
    container_id, code = daemon.run(
        ["sh", "-c", "grep CapBnd /proc/self/status; ulimit -n; ulimit -Hn"],
        HostConfig={"CapDrop": ["NET_RAW"], "PidsLimit": 50, "Memory": 64 * 1024 * 1024},
    )
    assert code == 0
    out = b"".join(d for _, d in daemon.logs(container_id)).decode().split()
    bounding = int(out[1], 16)
    # the 14 default capabilities minus NET_RAW (13)
    assert bin(bounding).count("1") == 13
    assert not bounding & (1 << 13)
    assert out[2] == "1024"
    assert int(out[3]) <= 524288
    daemon.delete(f"/containers/{container_id}")


def test_list_and_filters(daemon: Daemon) -> None:
    running = daemon.create(["sleep", "30"], name="lister", Labels={"team": "a"})
    assert daemon.post(f"/containers/{running}/start").status == 204
    done, _ = daemon.run(["true"])
    listed = daemon.get("/containers/json").json()
    ids = [c["Id"] for c in listed]
    assert running in ids and done not in ids
    entry = next(c for c in listed if c["Id"] == running)
    assert entry["Names"] == ["/lister"]
    assert entry["State"] == "running" and entry["Status"].startswith("Up")
    assert entry["Command"] == "sleep 30"
    all_ids = [c["Id"] for c in daemon.get("/containers/json?all=1").json()]
    assert running in all_ids and done in all_ids
    by_label = daemon.get('/containers/json?filters={"label":["team=a"]}').json()
    assert [c["Id"] for c in by_label] == [running]
    exited = daemon.get('/containers/json?all=1&filters={"status":["exited"]}').json()
    assert done in [c["Id"] for c in exited] and running not in [c["Id"] for c in exited]
    # names are unique
    conflict = daemon.post("/containers/create?name=lister", {"Image": "busybox", "Cmd": ["true"]})
    assert conflict.status == 409 and "already in use" in conflict.json()["message"]
    # a running container is not removed without force
    refused = daemon.delete(f"/containers/{running}")
    assert refused.status == 409
    assert daemon.get("/containers/lister/json").json()["Id"] == running
    assert daemon.delete("/containers/lister?force=1").status == 204
    daemon.delete(f"/containers/{done}")


def test_stop_and_kill(daemon: Daemon) -> None:
    # sleep as pid 1 ignores SIGTERM: stop escalates to SIGKILL after t seconds
    stubborn = daemon.create(["sleep", "30"])
    daemon.post(f"/containers/{stubborn}/start")
    started = time.monotonic()
    assert daemon.post(f"/containers/{stubborn}/stop?t=1").status == 204
    assert 0.9 < time.monotonic() - started < 5
    assert daemon.inspect(stubborn)["State"]["ExitCode"] == 137
    assert daemon.post(f"/containers/{stubborn}/stop").status == 304
    # a process that handles SIGTERM exits with its own code, at once
    polite = daemon.create(["sh", "-c", "trap 'exit 7' TERM; while true; do sleep 0.1; done"])
    daemon.post(f"/containers/{polite}/start")
    time.sleep(0.3)
    started = time.monotonic()
    assert daemon.post(f"/containers/{polite}/stop?t=10").status == 204
    assert time.monotonic() - started < 3
    assert daemon.inspect(polite)["State"]["ExitCode"] == 7
    # kill with a named signal
    victim = daemon.create(["sleep", "30"])
    daemon.post(f"/containers/{victim}/start")
    pid = daemon.inspect(victim)["State"]["Pid"]
    assert pid > 0 and _alive(pid)
    assert daemon.post(f"/containers/{victim}/kill?signal=SIGKILL").status == 204
    assert daemon.post(f"/containers/{victim}/wait").json()["StatusCode"] == 137
    assert daemon.post(f"/containers/{victim}/kill").status == 409
    assert daemon.post(f"/containers/{victim}/kill?signal=NOPE").status == 400
    for container_id in (stubborn, polite, victim):
        assert daemon.delete(f"/containers/{container_id}").status == 204


def test_auto_remove_and_wait_removed(daemon: Daemon) -> None:
    container_id = daemon.create(["sh", "-c", "exit 5"], HostConfig={"AutoRemove": True})
    import threading

    result: dict[str, object] = {}

    def waiter() -> None:
        result["r"] = daemon.post(f"/containers/{container_id}/wait?condition=removed")

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.2)
    daemon.post(f"/containers/{container_id}/start")
    thread.join(20)
    response = result["r"]
    assert response.json()["StatusCode"] == 5  # type: ignore[attr-defined]
    assert daemon.get(f"/containers/{container_id}/json").status == 404


def test_logs_follow_and_tail(daemon: Daemon) -> None:
    container_id = daemon.create(
        ["sh", "-c", "for i in 1 2 3 4 5; do echo line$i; sleep 0.1; done"]
    )
    daemon.post(f"/containers/{container_id}/start")
    followed = daemon.logs(container_id, "stdout=1&follow=1")
    assert b"".join(d for _, d in followed) == b"".join(b"line%d\n" % i for i in range(1, 6))
    tail = daemon.logs(container_id, "stdout=1&tail=2")
    assert [d for _, d in tail] == [b"line4\n", b"line5\n"]
    daemon.delete(f"/containers/{container_id}")


def test_containers_outlive_the_daemon(daemon: Daemon) -> None:
    survivor = daemon.create(["sleep", "30"])
    daemon.post(f"/containers/{survivor}/start")
    short = daemon.create(["sh", "-c", "sleep 0.5; echo bye; exit 4"])
    daemon.post(f"/containers/{short}/start")
    pid = daemon.inspect(survivor)["State"]["Pid"]
    monitor = daemon.monitor_pid()
    daemon.stop()
    # the daemon unmounts the rootfs it mounted; the network namespaces of containers
    # that go on running stay bound (as dockerd's live-restore keeps them)
    assert [m for m in daemon.mounts() if "/netns" not in m] == []
    time.sleep(1.0)  # `short` exits while no daemon runs
    assert _alive(pid)
    daemon.start()
    assert daemon.monitor_pid() == monitor  # the same monitor was found again
    info = daemon.inspect(survivor)
    assert info["State"]["Running"] and info["State"]["Pid"] == pid
    gone = daemon.inspect(short)["State"]
    assert gone["Status"] == "exited" and gone["ExitCode"] == 4
    assert daemon.logs(short) == [(1, b"bye\n")]
    assert daemon.post(f"/containers/{survivor}/kill").status == 204
    assert daemon.post(f"/containers/{survivor}/wait").json()["StatusCode"] == 137
    assert not _alive(pid)
    for container_id in (survivor, short):
        assert daemon.delete(f"/containers/{container_id}").status == 204


def test_json_log_rotation(tmp_path: Path) -> None:
    path = str(tmp_path / "c-json.log")
    writer = JsonLogWriter(path, max_size=400, max_files=3)
    for i in range(40):
        writer.write("stdout", b"message number %02d\n" % i)
    writer.write("stderr", b"no newline")
    writer.close()
    files = sorted(os.listdir(tmp_path))
    assert files == ["c-json.log", "c-json.log.1", "c-json.log.2"]
    assert all(os.path.getsize(tmp_path / name) <= 400 for name in files)
    entries = list(read_entries(path))
    assert entries[-1][:2] == ("stderr", "no newline")
    numbers = [int(text.split()[-1]) for stream, text, _ in entries if stream == "stdout"]
    assert numbers == list(range(numbers[0], 40))  # the oldest rotated away, in order
