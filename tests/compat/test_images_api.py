"""Image routes with the real docker CLI (and docker-py) against a private berthd: push to
the CNCF registry and pull back, login against an htpasswd registry, save | load,
history, import, prune, search refused, and the image events dockerd would log."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.compat.berthd import Daemon
from tests.helpers import tar_of
from tests.registries import (
    REGISTRY_BIN,
    CNCFRegistry,
    htpasswd_file,
    start_registry,
    stop_registry,
)

DOCKER = shutil.which("docker") or "/usr/local/bin/docker"

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root and the real kernel"),
    pytest.mark.skipif(not os.path.exists(DOCKER), reason="the docker CLI is not installed"),
    pytest.mark.skipif(
        not os.access(REGISTRY_BIN, os.X_OK), reason="the CNCF registry is not installed"
    ),
]


def docker(
    daemon: Daemon, *args: str, input: str | bytes | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env["DOCKER_CONFIG"] = os.path.join(daemon.base, "docker-config")
    return subprocess.run(
        [DOCKER, "-H", daemon.host, *args],
        capture_output=True,
        text=True,
        input=input,
        timeout=timeout,
        env=env,
    )


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    reg: CNCFRegistry = start_registry(tmp_path_factory.mktemp("cncf"))
    yield reg.host
    stop_registry(reg)


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("cncf-auth")
    reg = start_registry(root / "registry", htpasswd_file(root, "alice"))
    yield reg.host
    stop_registry(reg)


def _lines(body: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in body.splitlines() if line.strip()]


def _events(daemon: Daemon, since: float) -> list[dict[str, Any]]:
    until = time.time() + 0.2
    response = daemon.get(
        f"/events?since={since:.9f}&until={until:.9f}&filters="
        + '{"type":["image"]}'.replace('"', "%22")
    )
    if response.status == 404:
        pytest.skip("this berthd has no /events yet")
    assert response.status == 200, response
    return _lines(response.body)


def _rootfs_tar() -> bytes:
    return tar_of({"etc/hello": b"hello from import\n"})


def test_push_and_pull_back_with_the_docker_cli(daemon: Daemon, registry: str) -> None:
    since = time.time()
    name = f"{registry}/compat/busybox:1"
    assert docker(daemon, "tag", "busybox", name).returncode == 0
    pushed = docker(daemon, "push", name)
    assert pushed.returncode == 0, pushed.stderr
    assert f"The push refers to repository [{registry}/compat/busybox]" in pushed.stdout
    assert ": Pushed" in pushed.stdout
    digest_line = [line for line in pushed.stdout.splitlines() if "digest: sha256:" in line]
    assert digest_line and digest_line[0].startswith("1: digest: sha256:")
    # the registry holds it: remove the local name and pull it back
    assert docker(daemon, "rmi", name).returncode == 0
    pulled = docker(daemon, "pull", name)
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stdout.strip().endswith(name)
    busybox_id = daemon.get("/images/busybox/json").json()["Id"]
    assert daemon.get(f"/images/{name}/json").json()["Id"] == busybox_id
    actions = [
        (e["Action"], e["Actor"]["ID"], e["Actor"]["Attributes"]) for e in _events(daemon, since)
    ]
    short = f"{registry}/compat/busybox"
    assert ("tag", busybox_id, {"name": name}) in actions
    assert ("push", name, {"name": short}) in actions
    assert ("untag", busybox_id, {"name": busybox_id}) in actions
    assert ("pull", name, {"name": short}) in actions


def test_push_stream_has_dockerd_aux_line(daemon: Daemon, registry: str) -> None:
    daemon.post(f"/images/busybox/tag?repo={registry}/compat/aux&tag=2")
    auth = base64.urlsafe_b64encode(b"{}").decode()
    response = daemon.post(
        f"/images/{registry}/compat/aux/push?tag=2", headers={"X-Registry-Auth": auth}
    )
    assert response.status == 200, response
    lines = _lines(response.body)
    assert lines[0] == {"status": f"The push refers to repository [{registry}/compat/aux]"}
    aux = [line for line in lines if "aux" in line]
    assert len(aux) == 1 and aux[0]["progressDetail"] == {}
    assert set(aux[0]["aux"]) == {"Tag", "Digest", "Size"} and aux[0]["aux"]["Tag"] == "2"
    status = f"2: digest: {aux[0]['aux']['Digest']} size: {aux[0]['aux']['Size']}"
    assert {"status": status} in lines
    # an unknown image is a 404 before any stream; an unreachable registry an error line
    missing = daemon.post(f"/images/{registry}/compat/nothing/push?tag=1")
    assert missing.status == 404
    assert "does not exist locally" in missing.json()["message"]
    daemon.post("/images/busybox/tag?repo=127.0.0.1:1/compat/x&tag=1")
    failed = _lines(daemon.post("/images/127.0.0.1:1/compat/x/push?tag=1").body)
    assert failed[-1]["error"] == failed[-1]["errorDetail"]["message"]
    assert "cannot reach registry 127.0.0.1:1" in failed[-1]["error"]


def test_login_checks_credentials_and_push_needs_them(daemon: Daemon, auth_registry: str) -> None:
    config = Path(daemon.base) / "docker-config" / "config.json"
    wrong = docker(daemon, "login", auth_registry, "-u", "alice", "--password-stdin", input="no")
    assert wrong.returncode != 0
    assert "incorrect username or password" in wrong.stderr
    response = daemon.post(
        "/auth", {"username": "alice", "password": "no", "serveraddress": auth_registry}
    )
    assert response.status == 401
    name = f"{auth_registry}/private/busybox:1"
    docker(daemon, "tag", "busybox", name)
    refused = docker(daemon, "push", name)
    assert refused.returncode != 0 and "authentication required" in refused.stderr
    ok = docker(daemon, "login", auth_registry, "-u", "alice", "--password-stdin", input="s3cret")
    assert ok.returncode == 0, ok.stderr
    assert "Login Succeeded" in ok.stdout
    auths = json.loads(config.read_text())["auths"]
    assert base64.b64decode(auths[auth_registry]["auth"]) == b"alice:s3cret"
    pushed = docker(daemon, "push", name)
    assert pushed.returncode == 0, pushed.stderr
    docker(daemon, "rmi", name)
    assert docker(daemon, "pull", name).returncode == 0
    assert docker(daemon, "logout", auth_registry).returncode == 0
    docker(daemon, "rmi", name)
    again = docker(daemon, "pull", name)
    assert again.returncode != 0 and "authentication required" in again.stderr


def test_save_load_round_trip(daemon: Daemon, tmp_path: Path) -> None:
    since = time.time()
    busybox_id = daemon.get("/images/busybox/json").json()["Id"]
    archive = tmp_path / "busybox.tar"
    saved = docker(daemon, "save", "-o", str(archive), "busybox")
    assert saved.returncode == 0, saved.stderr
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert "index.json" in names and manifest[0]["RepoTags"] == ["busybox:latest"]
    docker(daemon, "tag", "busybox", "roundtrip:1")
    assert docker(daemon, "rmi", "roundtrip:1").returncode == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    piped = subprocess.run(
        f"{DOCKER} -H {daemon.host} save busybox | {DOCKER} -H {daemon.host} load",
        shell=True,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout.strip() == "Loaded image: busybox:latest"
    loaded = docker(daemon, "load", "-i", str(archive))
    assert loaded.stdout.strip() == "Loaded image: busybox:latest"
    assert daemon.get("/images/busybox/json").json()["Id"] == busybox_id
    # several names in one archive, and an untagged image by ID
    multi = daemon.get(f"/images/get?names=busybox&names={busybox_id}")
    assert multi.status == 200 and multi.headers["content-type"] == "application/x-tar"
    assert daemon.get("/images/no-such-image/get").status == 404
    # a bad archive is a 200 with an error line, as dockerd answers
    bad = daemon.request("POST", "/images/load?quiet=1", None, headers={})
    lines = _lines(bad.body)
    assert bad.status == 200 and "error" in lines[-1]
    garbage = docker(daemon, "load", input="not a tar")
    assert garbage.returncode != 0 and "invalid image archive" in garbage.stderr
    actions = {(e["Action"], e["Actor"]["ID"]) for e in _events(daemon, since)}
    assert ("save", busybox_id) in actions and ("load", busybox_id) in actions


def test_history_as_dockerd_shows_it(daemon: Daemon) -> None:
    entries = daemon.get("/images/busybox/history").json()
    busybox_id = daemon.get("/images/busybox/json").json()["Id"]
    assert entries[0]["Id"] == busybox_id and "busybox:latest" in entries[0]["Tags"]
    assert all(e["Id"] == "<missing>" and e["Tags"] is None for e in entries[1:])
    assert set(entries[0]) == {"Id", "Created", "CreatedBy", "Tags", "Size", "Comment"}
    assert sum(e["Size"] for e in entries) > 500_000  # unpacked busybox
    shown = docker(daemon, "history", "busybox")
    assert shown.returncode == 0, shown.stderr
    header = shown.stdout.splitlines()[0].split()
    assert header == ["IMAGE", "CREATED", "CREATED", "BY", "SIZE", "COMMENT"]
    assert shown.stdout.splitlines()[1].startswith(busybox_id[7:19])
    quiet = docker(daemon, "history", "-q", "--no-trunc", "busybox").stdout.split()
    assert quiet[0] == busybox_id and set(quiet[1:]) <= {"<missing>"}
    assert daemon.get("/images/nothing-here/history").status == 404


def test_import_with_changes(daemon: Daemon, tmp_path: Path) -> None:
    since = time.time()
    rootfs = tmp_path / "rootfs.tar"
    rootfs.write_bytes(_rootfs_tar())
    made = docker(
        daemon,
        "import",
        "-c",
        'CMD ["cat", "/etc/hello"]',
        "-c",
        "ENV GREETING=hi",
        "-c",
        "EXPOSE 8080",
        "-m",
        "from a test",
        str(rootfs),
        "imported:1",
    )
    assert made.returncode == 0, made.stderr
    image_id = made.stdout.strip()
    assert image_id.startswith("sha256:")
    info = daemon.get("/images/imported:1/json").json()
    assert info["Id"] == image_id
    assert info["Config"]["Cmd"] == ["cat", "/etc/hello"]
    assert info["Config"]["Env"] == ["GREETING=hi"]
    assert "8080/tcp" in info["Config"]["ExposedPorts"]
    assert info["Comment"] == "from a test"
    history = daemon.get("/images/imported:1/history").json()
    assert len(history) == 1 and history[0]["Comment"] == "from a test"
    stdin = subprocess.run(
        [DOCKER, "-H", daemon.host, "import", "-", "imported:2"],
        input=rootfs.read_bytes(),
        capture_output=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")},
    )
    assert stdin.returncode == 0, stdin.stderr
    assert daemon.get("/images/imported:2/history").json()[0]["Comment"] == "Imported from -"
    bad = docker(daemon, "import", "-c", "RUN true", str(rootfs))
    assert bad.returncode != 0 and "RUN is not a valid change command" in bad.stderr
    url = daemon.post("/images/create?fromSrc=http://example.com/x.tar")
    assert url.status == 400
    actions = {(e["Action"], e["Actor"]["ID"]) for e in _events(daemon, since)}
    assert ("import", image_id) in actions


def test_prune_keeps_what_containers_use(daemon: Daemon) -> None:
    since = time.time()
    tar = _rootfs_tar()
    # a dangling image (no name), a named one, and a named one a container uses; the
    # same tar each time, but the creation times (microseconds) make three image IDs
    made = [
        subprocess.run(
            [DOCKER, "-H", daemon.host, "import", "-", *name],
            input=tar,
            capture_output=True,
            timeout=60,
            env={k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")},
        )
        .stdout.decode()
        .strip()
        for name in ([], ["prune-me:1"], ["in-use:1"])
    ]
    assert all(m.startswith("sha256:") for m in made) and len(set(made)) == 3
    daemon.create(["true"], Image="in-use:1")
    daemon.create(["true"])  # keeps busybox, which the later tests need
    pruned = docker(daemon, "image", "prune", "-f")
    assert pruned.returncode == 0, pruned.stderr
    assert f"deleted: {made[0]}" in pruned.stdout
    assert daemon.get(f"/images/{made[0]}/json").status == 404
    assert daemon.get("/images/prune-me:1/json").status == 200
    everything = daemon.post('/images/prune?filters={"dangling":["false"]}').json()
    deleted = everything["ImagesDeleted"]
    assert {"Untagged": "prune-me:1"} in deleted and {"Deleted": made[1]} in deleted
    assert everything["SpaceReclaimed"] >= 0
    assert daemon.get("/images/in-use:1/json").status == 200  # its container keeps it
    assert daemon.get("/images/busybox/json").status == 200
    bad = daemon.post('/images/prune?filters={"nonsense":["1"]}')
    assert bad.status == 400
    actions = [e["Action"] for e in _events(daemon, since)]
    assert "delete" in actions and "prune" in actions


def test_search_is_refused_in_one_line(daemon: Daemon) -> None:
    result = docker(daemon, "search", "busybox")
    assert result.returncode != 0
    assert "search is not supported" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_pull_platform_and_bad_names(daemon: Daemon) -> None:
    bad = daemon.post("/images/create?fromImage=busybox&tag=latest&platform=foobar")
    assert bad.status == 400 and "unknown operating system" in bad.json()["message"]
    wrong = daemon.post("/images/create?fromImage=Not_Valid")
    assert wrong.status == 400


def test_docker_py_save_load_import(daemon: Daemon) -> None:
    docker_sdk = pytest.importorskip("docker")
    client = docker_sdk.DockerClient(base_url=daemon.host, version="1.45")
    try:
        image = client.images.get("busybox")
        data = b"".join(image.save())
        loaded = client.images.load(data)
        assert [i.id for i in loaded] == [image.id]
        with pytest.raises(docker_sdk.errors.ImageLoadError):
            client.images.load(b"abc")
        statuses = client.api.import_image_from_data(
            _rootfs_tar(), repository="dpy/imported", changes=["USER nobody", 'CMD ["echo"]']
        )
        image_id = json.loads(statuses.splitlines()[-1])["status"]
        inspected = client.api.inspect_image(image_id)
        assert inspected["Config"]["User"] == "nobody" and inspected["Config"]["Cmd"] == ["echo"]
        history = client.api.history("busybox")
        assert history[0]["Id"] == image.id
    finally:
        client.close()
