"""berthd killed with -9 in the middle of create and pull: the next berthd finds a
consistent store — no half image, no container without its rootfs, no stray active
snapshot, mount or cgroup — and goes on working.

Create is cut at known points (``BERTH_CRASH_AT``, see berth/faults.py: the
daemon SIGKILLs itself there) and at random moments of a burst of creates; pull is cut
by a real ``kill -9`` from the test as soon as the progress stream shows a layer
downloading or extracting.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import http.client
import io
import json
import os
import random
import signal
import sqlite3
import tarfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.compat.berthd import Daemon, UnixHTTPConnection

from berth.distribution.server import run_in_thread

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures"
BUSYBOX = FIXTURES / "busybox-1.38-musl-oci"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root and the real kernel")


@pytest.fixture
def fresh() -> Iterator[Daemon]:
    """A private berthd of its own (it gets killed): busybox bootstrapped."""
    d = Daemon()
    try:
        d.start()
        d.bootstrap_busybox()
        yield d
    finally:
        if d.process is None or d.process.poll() is not None:
            d.process = None  # killed by the test: restart it so cleanup goes through the API
            d.start()
        d.cleanup()
    assert not d.mounts()


def _kill9(d: Daemon) -> None:
    assert d.process is not None
    d.process.send_signal(signal.SIGKILL)
    d.process.wait(10)
    d.process = None


def _snapshot_kinds(d: Daemon) -> list[tuple[str, str]]:
    db = sqlite3.connect(f"file:{d.root}/images/snapshots/metadata.db?mode=ro", uri=True)
    try:
        return [(k, kind) for k, kind in db.execute("SELECT key, kind FROM snapshots")]
    finally:
        db.close()


def _assert_consistent(d: Daemon) -> None:
    """Every listed container works end to end; nothing exists that belongs to no one."""
    listed = d.get("/containers/json?all=1").json()
    ids = {c["Id"] for c in listed}
    for c in listed:
        assert d.get(f"/containers/{c['Id']}/json").status == 200
        started = d.post(f"/containers/{c['Id']}/start")
        assert started.status in (204, 304), started
        waited = d.post(f"/containers/{c['Id']}/wait")
        assert waited.status == 200 and waited.json()["StatusCode"] == 0, waited
    active = {key for key, kind in _snapshot_kinds(d) if kind != "committed"}
    assert active == ids, f"active snapshots {active} vs containers {ids}"
    bundles = set(os.listdir(os.path.join(d.exec_root, "containers")))
    assert bundles <= ids, f"bundles of unknown containers: {bundles - ids}"
    states = set(os.listdir(os.path.join(d.root, "containers")))
    assert states <= ids, f"state directories of unknown containers: {states - ids}"
    mounted = {p.split("/")[-2] for p in d.mounts() if p.endswith("/rootfs")}
    assert mounted <= ids, f"rootfs mounted for unknown containers: {mounted - ids}"
    for cid in ids:
        assert d.delete(f"/containers/{cid}?force=1").status == 204


@pytest.mark.parametrize(
    "point", ["create:inserted", "create:snapshot", "create:mounted", "create:done"]
)
def test_kill9_at_each_step_of_create(fresh: Daemon, point: str) -> None:
    kept = fresh.create(["true"], name="kept")
    fresh.stop()
    fresh.start(env={"BERTH_CRASH_AT": point})
    with pytest.raises((OSError, http.client.HTTPException)):
        fresh.post("/containers/create?name=cut", {"Image": "busybox", "Cmd": ["true"]})
    assert fresh.process is not None
    assert fresh.process.wait(10) == -signal.SIGKILL
    fresh.process = None
    fresh.start()
    names = {c["Names"][0] for c in fresh.get("/containers/json?all=1").json()}
    # a create cut before its record was complete is undone; one cut after it is kept
    assert names == ({"/kept", "/cut"} if point == "create:done" else {"/kept"})
    assert fresh.get(f"/containers/{kept}/json").status == 200
    _assert_consistent(fresh)
    # the name of the undone container is free again
    again = fresh.post("/containers/create?name=cut", {"Image": "busybox", "Cmd": ["true"]})
    assert again.status == 201, again


def test_kill9_at_random_moments_of_a_burst_of_creates(fresh: Daemon) -> None:
    rng = random.Random(4)
    for _ in range(3):
        stop = threading.Event()

        def burst(stop: threading.Event = stop) -> None:
            while not stop.is_set():
                try:
                    fresh.post("/containers/create", {"Image": "busybox", "Cmd": ["true"]})
                except (OSError, http.client.HTTPException):
                    return

        thread = threading.Thread(target=burst)
        thread.start()
        time.sleep(rng.uniform(0.2, 0.6))
        _kill9(fresh)
        stop.set()
        thread.join(30)
        fresh.start()
        _assert_consistent(fresh)


# ---- pull ----------------------------------------------------------------------------------


def _upload(registry: str, repo: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    request = urllib.request.Request(
        f"http://{registry}/v2/{repo}/blobs/uploads/?digest={digest}", data=data, method="POST"
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 201
    return digest


def _big_layer(size: int) -> tuple[bytes, str]:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("big")
        info.size = size
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(random.Random(1).randbytes(size)))
    diff_id = "sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()
    return gzip.compress(raw.getvalue(), compresslevel=1), diff_id


def _publish_big_image(registry: str, repo: str) -> None:
    """busybox's layer and two big random ones, pushed blob by blob to ``registry``."""
    blobs = BUSYBOX / "blobs" / "sha256"
    index = json.loads((BUSYBOX / "index.json").read_text())
    manifest = json.loads((blobs / index["manifests"][0]["digest"][7:]).read_bytes())
    config = json.loads((blobs / manifest["config"]["digest"][7:]).read_bytes())
    base = manifest["layers"][0]
    _upload(registry, repo, (blobs / base["digest"][7:]).read_bytes())
    layers = [base]
    for size in (48_000_000, 48_000_001):
        data, diff_id = _big_layer(size)
        digest = _upload(registry, repo, data)
        layers.append({"mediaType": base["mediaType"], "digest": digest, "size": len(data)})
        config["rootfs"]["diff_ids"].append(diff_id)
    config_bytes = json.dumps(config).encode()
    config_digest = _upload(registry, repo, config_bytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": len(config_bytes),
        },
        "layers": layers,
    }
    request = urllib.request.Request(
        f"http://{registry}/v2/{repo}/manifests/1",
        data=json.dumps(manifest).encode(),
        method="PUT",
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 201


def _pull(d: Daemon, ref: str, kill_on: str = "", nth: int = 1) -> list[dict[str, object]]:
    """POST /images/create, reading the progress; kill -9 the daemon at the nth event
    whose status is ``kill_on``."""
    name, tag = ref.rsplit(":", 1)
    conn = UnixHTTPConnection(d.socket, 120)
    events: list[dict[str, object]] = []
    try:
        conn.request("POST", f"/images/create?fromImage={name}&tag={tag}")
        response = conn.getresponse()
        assert response.status == 200
        while line := response.readline():
            event = json.loads(line)
            events.append(event)
            if kill_on and event.get("status") == kill_on:
                nth -= 1
                if nth == 0:
                    _kill9(d)
                    break
    except (OSError, http.client.HTTPException):
        pass
    finally:
        conn.close()
    return events


@pytest.mark.skipif(not BUSYBOX.is_dir(), reason=f"busybox OCI fixture not found at {BUSYBOX}")
@pytest.mark.parametrize(
    ("cut_at", "nth"), [("Downloading", 1), ("Downloading", 6), ("Download complete", 1)]
)
def test_kill9_in_the_middle_of_a_pull(
    fresh: Daemon, tmp_path: Path, cut_at: str, nth: int
) -> None:
    with run_in_thread(tmp_path / "registry", fsync=False) as server:
        registry = server.host_port
        _publish_big_image(registry, "crash/big")
        ref = f"{registry}/crash/big:1"
        events = _pull(fresh, ref, kill_on=cut_at, nth=nth)
        assert fresh.process is None, f"the pull ended before the kill: {events[-3:]}"
        fresh.start()
        if nth > 1:  # cut while layers were being unpacked: that work was undone
            assert "undid interrupted work" in fresh.log()
        # no half image: the image is absent, and no extraction is left behind
        tags = [t for i in fresh.get("/images/json").json() for t in i.get("RepoTags") or []]
        assert ref not in tags
        assert fresh.get(f"/images/{ref}/json").status == 404
        assert all(kind == "committed" for _, kind in _snapshot_kinds(fresh))
        # and the pull goes through the second time (partial downloads are resumed)
        events = _pull(fresh, ref)
        assert not any("error" in e for e in events), events[-3:]
        assert fresh.get(f"/images/{ref}/json").status == 200
    cid, code = fresh.run(["sh", "-c", "test $(wc -c < /big) = 48000001"], Image=ref)
    assert code == 0
    assert fresh.delete(f"/containers/{cid}").status == 204
    assert fresh.delete(f"/images/{ref}").status == 200


# ---- commit --------------------------------------------------------------------------------


@pytest.mark.parametrize("point", ["commit:layer-written", "image:unpacked"])
def test_kill9_in_the_middle_of_a_commit(fresh: Daemon, point: str) -> None:
    cid = fresh.create(["sleep", "60"], name="source")
    assert fresh.post(f"/containers/{cid}/start").status == 204
    exec_id = fresh.post(
        f"/containers/{cid}/exec", {"Cmd": ["sh", "-c", "head -c 20000000 /dev/urandom > /big"]}
    ).json()["Id"]
    fresh.hijack(f"/exec/{exec_id}/start", {"Detach": False})
    images_before = {i["Id"] for i in fresh.get("/images/json").json()}
    fresh.stop()  # containers go on running under the monitor
    fresh.start(env={"BERTH_CRASH_AT": point})
    with pytest.raises((OSError, http.client.HTTPException)):
        fresh.post(f"/commit?container={cid}&repo=cut&tag=1", timeout=120)
    assert fresh.process is not None
    assert fresh.process.wait(10) == -signal.SIGKILL
    fresh.process = None
    fresh.start()
    # no half image, nothing active but the containers' own snapshots
    assert {i["Id"] for i in fresh.get("/images/json").json()} == images_before
    assert fresh.get("/images/cut:1/json").status == 404
    ids = {c["Id"] for c in fresh.get("/containers/json?all=1").json()}
    active = {key for key, kind in _snapshot_kinds(fresh) if kind != "committed"}
    assert active == ids
    # the container kept running through it all, and the commit goes through now
    assert fresh.inspect(cid)["State"]["Running"]
    done = fresh.post(f"/commit?container={cid}&repo=cut&tag=1", timeout=120)
    assert done.status == 201, done
    image = done.json()["Id"]
    new, code = fresh.run(["sh", "-c", "test $(wc -c < /big) = 20000000"], Image="cut:1")
    assert code == 0
    for c in (new, cid):
        assert fresh.delete(f"/containers/{c}?force=1").status == 204
    assert fresh.delete(f"/images/{image}").status == 200


def test_kill9_in_the_middle_of_a_run_step(fresh: Daemon) -> None:
    """berthd killed while a build's RUN step runs on the default bridge: the next berthd
    leaves no build snapshot, mount, namespace, veth or address behind, and builds."""
    conn, _, step = fresh.build_running(b"sleep 2 && touch /x", "&t=cut-build")
    _kill9(fresh)
    conn.close()
    time.sleep(2.5)  # the step's runtime outlives the daemon until its process ends
    fresh.start()
    assert not [k for k, kind in _snapshot_kinds(fresh) if kind != "committed"]
    assert not [p for p in fresh.mounts() if "/build/" in p]
    assert os.listdir(os.path.join(fresh.exec_root, "netns")) == []
    assert not glob.glob(f"/sys/fs/cgroup/*/berth/build-{step}")
    runtime_root = os.path.join(fresh.exec_root, "build", "runtime")
    assert not os.path.isdir(runtime_root) or os.listdir(runtime_root) == []
    bridge = fresh.get("/networks/bridge").json()
    assert bridge["Containers"] == {}
    name = bridge["Options"]["com.docker.network.bridge.name"]
    assert os.listdir(f"/sys/class/net/{name}/brif") == []  # the step's veth is gone
    conn, answer, _ = fresh.build_running(b"touch /x", "&t=cut-build")  # to the end now
    body = answer.read()
    conn.close()
    assert b"Successfully tagged cut-build:latest" in body, body[-500:]
    assert fresh.delete("/images/cut-build").status == 200


def test_containers_of_a_killed_monitor_are_stopped_not_leaked(fresh: Daemon) -> None:
    """The monitor (which holds the containers' output) killed while berthd is down:
    the next berthd records the container as exited and its processes and cgroup are
    gone, rather than left running with nobody to stop them."""
    cid = fresh.create(["sleep", "9999"], name="orphaned")
    assert fresh.post(f"/containers/{cid}/start").status == 204
    pid = fresh.inspect(cid)["State"]["Pid"]
    fresh.stop()
    monitor = fresh.monitor_pid()
    os.kill(monitor, signal.SIGKILL)
    for _ in range(200):
        if not os.path.exists(f"/proc/{monitor}"):
            break
        time.sleep(0.01)
    assert os.path.exists(f"/proc/{pid}")  # the container outlived its monitor
    fresh.start()
    state = fresh.inspect(cid)["State"]
    assert not state["Running"] and state["ExitCode"] == 255
    for _ in range(100):
        if not os.path.exists(f"/proc/{pid}"):
            break
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{pid}")
    assert not glob.glob(f"/sys/fs/cgroup/*/berth/{cid}")
    assert fresh.delete(f"/containers/{cid}").status == 204
