"""``/system/df``, ``/volumes/prune``, ``docker system prune`` and the berth CLI's
``system`` and ``volume prune`` verbs against a private berthd, with the real docker
CLI and docker-py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest
from tests.compat.berthd import Daemon
from tests.compat.test_docker_cli import DOCKER, docker
from tests.helpers import CREATED_IDS, VENV_BIN

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root and the real kernel"),
    pytest.mark.skipif(not os.path.exists(DOCKER), reason="the docker CLI is not installed"),
]


def berth(daemon: Daemon, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "BERTH_"))}
    env["BERTH_HOST"] = daemon.host
    return subprocess.run(
        [str(VENV_BIN / "berth"), *args],
        capture_output=True,
        text=True,
        input=input,
        env=env,
        timeout=60,
    )


def _volumes(daemon: Daemon) -> set[str]:
    return {v["Name"] for v in daemon.get("/volumes").json()["Volumes"] or []}


@pytest.fixture
def clean(daemon: Daemon) -> Iterator[Daemon]:
    """Each test starts and ends with no container and no volume."""

    def wipe() -> None:
        for c in daemon.get("/containers/json?all=1").json():
            daemon.delete(f"/containers/{c['Id']}?force=1&v=1")
        for name in _volumes(daemon):
            daemon.delete(f"/volumes/{name}?force=1")

    wipe()
    yield daemon
    wipe()


def _created(daemon: Daemon, *args: str) -> str:
    result = docker(daemon, "create", *args)
    assert result.returncode == 0, result.stderr
    container_id = result.stdout.strip()
    CREATED_IDS.add(container_id)
    return container_id


def _df_rows(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.splitlines()[1:]:
        kind, rest = re.split(r"\s{2,}", line, maxsplit=1)
        rows[kind] = re.split(r"\s{2,}", rest.strip())
    return rows


def test_docker_system_df(clean: Daemon) -> None:
    daemon = clean
    volume = f"df-{uuid.uuid4().hex[:8]}"
    docker(daemon, "volume", "create", volume)
    docker(daemon, "volume", "create", "df-unused")
    _created(daemon, "-v", f"{volume}:/data", "busybox", "true")
    result = docker(daemon, "system", "df")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].split() == [
        "TYPE",
        "TOTAL",
        "ACTIVE",
        "SIZE",
        "RECLAIMABLE",
    ]
    rows = _df_rows(result.stdout)
    images = len(daemon.get("/images/json").json())
    assert rows["Images"][:2] == [str(images), "1"]
    assert rows["Images"][2] != "0B"  # busybox's layer
    assert rows["Containers"][:2] == ["1", "0"]
    assert rows["Local Volumes"][:2] == ["2", "1"]
    assert rows["Build Cache"][:3] == ["0", "0", "0B"]

    verbose = docker(daemon, "system", "df", "-v")
    assert verbose.returncode == 0, verbose.stderr
    assert "Images space usage:" in verbose.stdout
    assert re.search(rf"^{volume}\s+1\s+", verbose.stdout, re.M), verbose.stdout
    assert re.search(r"^df-unused\s+0\s+", verbose.stdout, re.M), verbose.stdout
    assert re.search(r"^busybox\s+latest\s+[0-9a-f]{12}\s+.*\s1$", verbose.stdout, re.M)

    # berth's own table matches docker's
    mine = berth(daemon, "system", "df")
    assert mine.returncode == 0, mine.stderr
    assert _df_rows(mine.stdout) == rows


def test_system_df_api(clean: Daemon) -> None:
    daemon = clean
    data = daemon.get("/system/df").json()
    assert set(data) >= {"LayersSize", "Images", "Containers", "Volumes", "BuildCache"}
    assert data["LayersSize"] > 0 and data["BuildCache"] == []
    busybox = next(i for i in data["Images"] if "busybox:latest" in i["RepoTags"])
    assert busybox["Size"] > 0 and busybox["SharedSize"] >= 0 and busybox["Containers"] == 0
    container_id = _created(daemon, "busybox", "sh", "-c", "echo > /written")
    daemon.post(f"/containers/{container_id}/start")
    daemon.post(f"/containers/{container_id}/wait")
    data = daemon.get("/v1.45/system/df?type=container").json()
    assert data["Images"] is None and data["Volumes"] is None
    (row,) = data["Containers"]
    assert row["Id"] == container_id
    assert row["SizeRw"] > 0  # the file it wrote
    assert row["SizeRootFs"] >= row["SizeRw"] + busybox["Size"]
    data = daemon.get("/system/df?type=volume&type=image").json()
    assert data["Containers"] is None and data["Volumes"] == [] and data["Images"]
    bad = daemon.get("/system/df?type=everything")
    assert bad.status == 400 and "unknown object type" in bad.json()["message"]


def test_docker_volume_prune(clean: Daemon) -> None:
    daemon = clean
    anonymous = docker(daemon, "volume", "create").stdout.strip()
    named = f"keep-{uuid.uuid4().hex[:8]}"
    labelled = f"lab-{uuid.uuid4().hex[:8]}"
    docker(daemon, "volume", "create", named)
    docker(daemon, "volume", "create", "--label", "tier=scratch", labelled)
    container_id = _created(daemon, "-v", "/data", "busybox", "true")
    in_use = daemon.inspect(container_id)["Mounts"][0]["Name"]

    result = docker(daemon, "volume", "prune", "-f")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Deleted Volumes:\n" + anonymous + "\n")
    assert "Total reclaimed space:" in result.stdout
    assert _volumes(daemon) == {named, labelled, in_use}

    only_label = docker(daemon, "volume", "prune", "-af", "--filter", "label=tier=scratch")
    assert only_label.returncode == 0, only_label.stderr
    assert _volumes(daemon) == {named, in_use}
    every = docker(daemon, "volume", "prune", "--all", "--force")
    assert every.returncode == 0 and named in every.stdout
    assert _volumes(daemon) == {in_use}  # a container still uses it
    bad = daemon.post('/volumes/prune?filters={"colour":["red"]}')
    assert bad.status == 400 and bad.json()["message"] == "invalid filter 'colour'"


def test_prune_before_api_1_42_removes_named_volumes(clean: Daemon) -> None:
    daemon = clean
    daemon.post("/volumes/create", {"Name": "old-api"})
    assert daemon.post("/v1.45/volumes/prune").json()["VolumesDeleted"] == []
    assert daemon.post("/v1.41/volumes/prune").json()["VolumesDeleted"] == ["old-api"]


def test_docker_py_df_and_prune_volumes(clean: Daemon) -> None:
    docker_py = pytest.importorskip("docker")
    client = docker_py.APIClient(base_url=clean.host, version="1.45")
    try:
        created = client.create_volume()
        kept = client.create_volume(name=f"py-{uuid.uuid4().hex[:8]}")
        data = client.df()
        assert {v["Name"] for v in data["Volumes"]} == {created["Name"], kept["Name"]}
        result = client.prune_volumes()
        assert result["VolumesDeleted"] == [created["Name"]]
        assert client.prune_volumes({"all": True})["VolumesDeleted"] == [kept["Name"]]
    finally:
        client.close()


def test_docker_system_prune(clean: Daemon) -> None:
    daemon = clean
    missing = [
        kind
        for kind in ("containers", "images", "networks")
        if daemon.post(f'/{kind}/prune?filters={{"label":["berth.none"]}}').status in (404, 405)
    ]
    if missing:
        pytest.skip(f"this berthd has no prune route for {', '.join(missing)} yet")
    stopped = _created(daemon, "-v", "/data", "busybox", "true")
    volume = daemon.inspect(stopped)["Mounts"][0]["Name"]
    result = docker(daemon, "system", "prune", "-f", "--volumes")
    assert result.returncode == 0, result.stderr
    assert f"Deleted Containers:\n{stopped}\n" in result.stdout
    assert volume in result.stdout
    assert "Total reclaimed space:" in result.stdout
    assert daemon.get("/containers/json?all=1").json() == []
    assert _volumes(daemon) == set()
    mine = berth(daemon, "system", "prune", "-f")
    assert mine.returncode == 0, mine.stderr
    assert mine.stdout.strip().endswith("Total reclaimed space: 0B")


def test_berth_volume_prune_and_confirmation(clean: Daemon) -> None:
    daemon = clean
    daemon.post("/volumes/create", {})
    named = f"bp-{uuid.uuid4().hex[:8]}"
    daemon.post("/volumes/create", {"Name": named})
    declined = berth(daemon, "volume", "prune", input="n\n")
    assert declined.returncode == 0
    assert "WARNING! This will remove anonymous local volumes" in declined.stdout
    assert len(_volumes(daemon)) == 2
    accepted = berth(daemon, "volume", "prune", input="y\n")
    assert accepted.returncode == 0, accepted.stderr
    assert "Deleted Volumes:" in accepted.stdout
    assert _volumes(daemon) == {named}
    every = berth(daemon, "volume", "prune", "-a", "-f")
    assert every.stdout == f"Deleted Volumes:\n{named}\n\nTotal reclaimed space: 0B\n"
    assert _volumes(daemon) == set()


def test_berth_system_info_and_df_json(clean: Daemon) -> None:
    info = berth(clean, "system", "info", "--format", "{{.DockerRootDir}}")
    assert info.returncode == 0 and info.stdout.strip() == clean.root
    rows = [
        json.loads(line)
        for line in berth(clean, "system", "df", "--format", "json").stdout.splitlines()
    ]
    assert [r["Type"] for r in rows] == ["Images", "Containers", "Local Volumes", "Build Cache"]
    bad = berth(clean, "system", "frobnicate")
    assert bad.returncode == 125 and bad.stderr.startswith("berth system: unknown command")


def test_prune_until_and_label_filters(clean: Daemon) -> None:
    """``--filter until=`` (a duration, an RFC 3339 time, Unix seconds) and ``label``/
    ``label!`` narrow container and network prunes as dockerd's do; bad values are one
    clear error."""
    daemon = clean
    tag = uuid.uuid4().hex[:8]
    old_net = f"prune-old-{tag}"
    assert docker(daemon, "network", "create", "--label", "keep=1", old_net).returncode == 0
    old_box = _created(daemon, "--label", "keep=1", "busybox", "true")
    time.sleep(2.2)
    new_net = f"prune-new-{tag}"
    assert docker(daemon, "network", "create", new_net).returncode == 0
    new_box = _created(daemon, "busybox", "true")
    try:
        for kind in ("container", "network"):
            out = docker(daemon, kind, "prune", "-f", "--filter", "until=1h")
            assert out.returncode == 0 and old_net not in out.stdout, out
        nets = docker(daemon, "network", "prune", "-f", "--filter", "until=2s").stdout
        assert old_net in nets and new_net not in nets
        boxes = docker(daemon, "container", "prune", "-f", "--filter", "until=2s").stdout
        assert old_box in boxes and new_box not in boxes
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 60))
        nets = docker(daemon, "network", "prune", "-f", "--filter", "label!=keep",
                      "--filter", f"until={stamp}").stdout  # fmt: skip
        assert new_net in nets
        bad = docker(daemon, "network", "prune", "-f", "--filter", "until=yesterday")
        assert bad.returncode != 0 and "invalid until" in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1
    finally:
        for net in (old_net, new_net):
            daemon.delete(f"/networks/{net}")
