"""The Engine API's container lifecycle against a private berthd: create options as
inspect shows them and as the container sees them, update, prune, links, events."""

from __future__ import annotations

import json
import os
import time
import urllib.parse

import pytest
from tests.compat.berthd import Daemon

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root and the real kernel"),
]


def _output(daemon: Daemon, container_id: str) -> str:
    return b"".join(data for _, data in daemon.logs(container_id)).decode()


def test_create_options_reach_the_container(daemon: Daemon) -> None:
    host = {
        "NetworkMode": "none",
        "GroupAdd": ["1000", "2000"],
        "Ulimits": [{"Name": "nofile", "Soft": 512, "Hard": 1024}],
        "ShmSize": 8 * 1024 * 1024,
        "CpusetCpus": "0",
        "Init": True,
        "OomScoreAdj": 100,
    }
    script = (
        "id -G; ulimit -n; df -k /dev/shm | tail -1; cat /proc/self/oom_score_adj; cat /proc/1/comm"
    )
    container_id, code = daemon.run(["sh", "-c", script], HostConfig=host)
    assert code == 0
    lines = _output(daemon, container_id).splitlines()
    assert lines[0].split() == ["0", "1000", "2000"]
    assert lines[1] == "512"
    assert lines[2].split()[1] == "8192"
    assert lines[3] == "100"
    assert lines[4].startswith("docker-init") or lines[4].startswith("tini")
    info = daemon.inspect(container_id)["HostConfig"]
    assert info["Init"] is True and info["CpusetCpus"] == "0"
    assert info["GroupAdd"] == ["1000", "2000"]
    assert info["Runtime"] == "berth-runtime"
    assert info["LogConfig"] == {"Type": "json-file", "Config": {}}
    assert daemon.delete(f"/containers/{container_id}").status == 204


def test_bad_options_are_refused(daemon: Daemon) -> None:
    cases = [
        ({"LogConfig": {"Type": "asdf"}}, "logger: no log driver named 'asdf' is registered"),
        ({"Runtime": "nope"}, "Unknown runtime specified nope"),
        ({"PidMode": "bogus"}, "invalid PID mode: bogus"),
        ({"CpusetCpus": "0-63"}, "Requested CPUs are not available"),
        ({"MemorySwappiness": 200}, "valid memory swappiness range is 0-100"),
    ]
    for host, message in cases:
        response = daemon.post("/containers/create", {"Image": "busybox", "Cmd": ["true"],
                                                      "HostConfig": host})  # fmt: skip
        assert response.status == 400, (host, response)
        assert message in response.json()["message"]


def test_update_applies_live(daemon: Daemon) -> None:
    container_id = daemon.create(
        ["sleep", "300"], HostConfig={"NetworkMode": "none", "Memory": 64 * 1024 * 1024}
    )
    assert daemon.post(f"/containers/{container_id}/start").status == 204
    try:
        response = daemon.post(
            f"/containers/{container_id}/update",
            {"Memory": 32 * 1024 * 1024, "CpuShares": 512, "PidsLimit": 50,
             "RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 3}},
        )  # fmt: skip
        assert response.status == 200 and response.json() == {"Warnings": []}
        cgroup = f"/sys/fs/cgroup/memory/berth/{container_id}/memory.limit_in_bytes"
        with open(cgroup) as f:
            assert int(f.read()) == 32 * 1024 * 1024
        with open(f"/sys/fs/cgroup/pids/berth/{container_id}/pids.max") as f:
            assert f.read().strip() == "50"
        host = daemon.inspect(container_id)["HostConfig"]
        assert (host["Memory"], host["CpuShares"], host["PidsLimit"]) == (32 << 20, 512, 50)
        assert host["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}
    finally:
        daemon.delete(f"/containers/{container_id}?force=1")


def test_kill_waits_and_prune_removes_stopped(daemon: Daemon) -> None:
    running = daemon.create(["sleep", "300"], HostConfig={"NetworkMode": "none"})
    assert daemon.post(f"/containers/{running}/start").status == 204
    done, _ = daemon.run(["sh", "-c", "echo x > /file"], HostConfig={"NetworkMode": "none"},
                         Labels={"keep": "no"})  # fmt: skip
    try:
        filters = urllib.parse.quote(json.dumps({"label": ["keep=no"]}))
        pruned = daemon.post(f"/containers/prune?filters={filters}").json()
        assert pruned["ContainersDeleted"] == [done]
        assert pruned["SpaceReclaimed"] > 0
        assert daemon.post(f"/containers/{running}/kill").status == 204
        state = daemon.inspect(running)["State"]  # at once: kill waits for the exit
        assert (state["Running"], state["ExitCode"]) == (False, 137)
    finally:
        daemon.delete(f"/containers/{running}?force=1")


def test_links_env_and_removal(daemon: Daemon) -> None:
    target = daemon.create(["sleep", "300"], name="linked", Env=["FOO=1"],
                           HostConfig={"NetworkMode": "none"})  # fmt: skip
    assert daemon.post(f"/containers/{target}/start").status == 204
    try:
        parent, code = daemon.run(["env"], name="parent",
                                  HostConfig={"Links": ["linked:db"]})  # fmt: skip
        assert code == 0
        out = _output(daemon, parent)
        assert "DB_NAME=/parent/db" in out and "DB_ENV_FOO=1" in out
        assert daemon.inspect(parent)["HostConfig"]["Links"] == ["/linked:/parent/db"]
        assert daemon.delete("/containers/parent/db?link=1").status == 204
        assert daemon.inspect(parent)["HostConfig"]["Links"] is None
        assert daemon.inspect(target)["State"]["Running"]
        daemon.delete(f"/containers/{parent}")
    finally:
        daemon.delete(f"/containers/{target}?force=1")


def test_container_events(daemon: Daemon) -> None:
    since = time.time()
    container_id = daemon.create(["sleep", "300"], name="evented", Labels={"team": "x"},
                                 HostConfig={"NetworkMode": "none"})  # fmt: skip
    for step in ("start", "pause", "unpause"):
        assert daemon.post(f"/containers/{container_id}/{step}").status == 204
    assert daemon.post(f"/containers/{container_id}/rename?name=evented2").status == 204
    assert daemon.post(f"/containers/{container_id}/update", {"CpuShares": 256}).status == 200
    assert daemon.post(f"/containers/{container_id}/stop?t=1").status == 204
    assert daemon.delete(f"/containers/{container_id}").status == 204
    until = time.time() + 0.5
    time.sleep(0.6)
    response = daemon.get(f"/events?since={since:.3f}&until={until:.3f}")
    events = [json.loads(line) for line in response.body.splitlines() if line.strip()]
    ours = [e for e in events if e["Actor"]["ID"] == container_id]
    actions = [e["Action"] for e in ours]
    assert actions == ["create", "start", "pause", "unpause", "rename", "update", "kill",
                       "kill", "die", "stop", "destroy"]  # fmt: skip
    by_action = {e["Action"]: e["Actor"]["Attributes"] for e in ours}
    assert by_action["create"]["team"] == "x" and by_action["create"]["image"] == "busybox"
    assert by_action["rename"] == {**by_action["rename"], "oldName": "/evented", "name": "evented2"}
    assert by_action["die"]["exitCode"] == "137"
    assert by_action["kill"]["signal"] == "9"
