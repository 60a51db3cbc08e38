"""Pull into the image store and push from it, across Berth's registry, the CNCF
registry and skopeo: the same digests everywhere, layers unpacked while pulling."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.registries import REGISTRY_BIN, CNCFRegistry, start_registry, stop_registry

from berth.distribution.client import RegistryClient
from berth.distribution.images import pull_image, push_image
from berth.distribution.server import run_in_thread
from berth.images.store import ImageStore

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures"
BUSYBOX = FIXTURES / "busybox-1.38-musl-oci"
BUSYBOX_MANIFEST = "sha256:a34ce92094b7b100a98fbd21411a92825f6827b1bc5f6918c253516c90556998"
BUSYBOX_CONFIG = "sha256:654fc8fd836e35f4a64586bddf8f59b9029b48cf80f520834c6c98ca8ab5def9"

pytestmark = [
    pytest.mark.skipif(not BUSYBOX.is_dir(), reason=f"busybox OCI fixture not found at {BUSYBOX}"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (unpacking keeps ownership)"),
]


@pytest.fixture
def berth_registry(tmp_path: Path) -> Iterator[str]:
    with run_in_thread(tmp_path / "berth-registry", fsync=False) as server:
        yield server.host_port


@pytest.fixture
def cncf_registry(tmp_path: Path) -> Iterator[str]:
    if not os.access(REGISTRY_BIN, os.X_OK):
        pytest.skip("the CNCF registry (Debian package docker-registry) is not installed")
    registry: CNCFRegistry = start_registry(tmp_path / "cncf")
    yield registry.host
    stop_registry(registry)


def _client(tmp_path: Path) -> RegistryClient:
    return RegistryClient(config_path=str(tmp_path / "docker-config.json"))


def _skopeo(*args: str) -> None:
    if not shutil.which("skopeo"):
        pytest.skip("skopeo is not installed")
    subprocess.run(["skopeo", *args], check=True, capture_output=True, timeout=60)


def test_push_pull_across_both_registries_and_skopeo(
    tmp_path: Path, berth_registry: str, cncf_registry: str
) -> None:
    # skopeo publishes the upstream busybox into Berth's registry...
    _skopeo(
        "copy",
        "--dest-tls-verify=false",
        f"oci:{BUSYBOX}",
        f"docker://{berth_registry}/lib/busybox:1.38",
    )
    # ...copies it from Berth's registry to the CNCF registry...
    _skopeo(
        "copy", "--src-tls-verify=false", "--dest-tls-verify=false",
        f"docker://{berth_registry}/lib/busybox:1.38", f"docker://{cncf_registry}/mirror/busybox:1.38",
    )  # fmt: skip
    store = ImageStore(str(tmp_path / "store"))
    events: list[str] = []

    async def scenario() -> tuple[str, str]:
        async with _client(tmp_path) as client:
            # ...berth pulls it from the CNCF registry, unpacking as it downloads...
            image = await pull_image(
                client, store, f"{cncf_registry}/mirror/busybox:1.38",
                progress=lambda e: events.append(e.status),
            )  # fmt: skip
            assert image.id == BUSYBOX_CONFIG and image.manifest_digest == BUSYBOX_MANIFEST
            # ...and pushes it back to Berth's registry under a new name.
            pushed = await push_image(
                client, store, f"{cncf_registry}/mirror/busybox:1.38",
                f"{berth_registry}/copies/busybox:again",
            )  # fmt: skip
            again = await pull_image(client, store, f"{berth_registry}/copies/busybox:again")
            return pushed, again.id

    pushed, again_id = asyncio.run(scenario())
    assert pushed == BUSYBOX_MANIFEST
    assert again_id == BUSYBOX_CONFIG
    assert "Pull complete" in events or "Download complete" in events
    top = store.get(BUSYBOX_CONFIG).top_layer
    assert top is not None
    assert (Path(store.snapshots.fs_path(top)) / "bin/busybox").exists()
    # one committed snapshot for the one layer, nothing half-made left behind
    assert [s.kind for s in store.snapshots.walk()] == ["committed"]
    # and skopeo reads back from Berth's registry what berth pushed, byte for byte
    out = tmp_path / "copied"
    _skopeo("copy", "--src-tls-verify=false", f"docker://{berth_registry}/copies/busybox:again",
            f"oci:{out}")  # fmt: skip
    index = json.loads((out / "index.json").read_text())
    assert index["manifests"][0]["digest"] == BUSYBOX_MANIFEST


def test_a_second_pull_reuses_blobs_and_snapshots(tmp_path: Path, berth_registry: str) -> None:
    _skopeo(
        "copy", "--dest-tls-verify=false", f"oci:{BUSYBOX}", f"docker://{berth_registry}/busybox:1"
    )
    store = ImageStore(str(tmp_path / "store"))
    events: list[str] = []

    async def twice() -> None:
        async with _client(tmp_path) as client:
            await pull_image(client, store, f"{berth_registry}/busybox:1")
            await pull_image(client, store, f"{berth_registry}/busybox:1",
                             progress=lambda e: events.append(e.status))  # fmt: skip

    asyncio.run(twice())
    assert "Already exists" in events and "Downloading" not in events
    assert len(list(store.snapshots.walk())) == 1


def test_a_failed_pull_leaves_no_image_and_no_snapshot(tmp_path: Path, berth_registry: str) -> None:
    store = ImageStore(str(tmp_path / "store"))

    async def missing() -> None:
        async with _client(tmp_path) as client:
            await pull_image(client, store, f"{berth_registry}/nothing/here:latest")

    with pytest.raises(Exception, match=r"not found|unknown"):
        asyncio.run(missing())
    assert store.images() == [] and list(store.snapshots.walk()) == []
