"""Archives between Berth and the real Docker daemon (20.10 here), both ways.

Berth's ``save`` must load into ``docker load`` with the same image ID (the config
digest) and tags, and what ``docker save`` writes (the legacy layout of Docker < 25:
``<id>/layer.tar``, ``<hex>.json``, symlinked duplicate layers) must load into Berth
with the same ID and names.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from berth.images import archive, bootstrap
from berth.images.store import ImageStore

if TYPE_CHECKING:
    from tests.interop.conftest import Dockerd

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures"
BUSYBOX = FIXTURES / "busybox-1.38-musl-oci"
PYTHON = FIXTURES / "python-3.12-alpine-oci"
ALPINE = FIXTURES / "alpine-minirootfs-3.20.3-x86_64.tar.gz"
BUSYBOX_ID = "sha256:654fc8fd836e35f4a64586bddf8f59b9029b48cf80f520834c6c98ca8ab5def9"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root and the real kernel")


def _need(*paths: Path) -> None:
    for path in paths:
        if not path.exists():
            pytest.skip(f"fixture {path} is absent (see /work/shared/fixtures/README.md)")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ImageStore]:
    s = ImageStore(str(tmp_path / "store"))
    yield s
    s.close()


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[ImageStore]:
    s = ImageStore(str(tmp_path / "fresh"))
    yield s
    s.close()


def _tags(entry: dict[str, object]) -> list[str]:
    tags = entry.get("RepoTags") or []
    assert isinstance(tags, list)
    return sorted(str(t) for t in tags)


def test_berth_save_loads_into_docker(
    dockerd: Dockerd, store: ImageStore, fresh: ImageStore, tmp_path: Path
) -> None:
    _need(BUSYBOX, PYTHON)
    archive.load_oci_layout(store, str(BUSYBOX))
    archive.load_oci_layout(
        store, str(PYTHON), "python-3.12.11-alpine3.22", name="berth-interop/python:3.12"
    )
    python = store.get("berth-interop/python:3.12")
    store.tag("busybox:1.38.0-musl", "berth-interop/busybox:a")
    store.tag("busybox:1.38.0-musl", "berth-interop/busybox:b")
    saved = tmp_path / "berth.tar"
    with open(saved, "wb") as f:
        archive.save(store, ["berth-interop/busybox", "berth-interop/python:3.12"], f)

    out = dockerd.docker("load", "-i", str(saved))
    assert "Loaded image: berth-interop/busybox:a" in out, out
    assert "Loaded image: berth-interop/python:3.12" in out, out
    busybox = dockerd.inspect("berth-interop/busybox:a")
    assert busybox["Id"] == BUSYBOX_ID
    assert _tags(busybox) == ["berth-interop/busybox:a", "berth-interop/busybox:b"]
    py = dockerd.inspect("berth-interop/python:3.12")
    assert py["Id"] == python.id
    assert py["RootFS"] == {"Type": "layers", "Layers": python.config.diff_ids}

    # ... and what docker saves of them comes back to Berth unchanged
    again = tmp_path / "docker.tar"
    dockerd.docker("save", "-o", str(again), "berth-interop/busybox:a", "berth-interop/python:3.12")
    with open(again, "rb") as f:
        loaded = archive.load(fresh, f)
    assert sorted(loaded) == [
        "docker.io/berth-interop/busybox:a",
        "docker.io/berth-interop/python:3.12",
    ]
    assert fresh.get("berth-interop/busybox:a").id == BUSYBOX_ID
    assert fresh.get("berth-interop/python:3.12").id == python.id
    assert fresh.gc()["snapshots"] == 0


def test_docker_import_and_save_load_into_berth(
    dockerd: Dockerd, fresh: ImageStore, tmp_path: Path
) -> None:
    """Docker's own legacy archive, with a layer two images share (a symlinked layer.tar)."""
    _need(ALPINE)
    dockerd.docker("import", str(ALPINE), "berth-interop/alpine:3.20")
    dockerd.docker("import", "--change", 'CMD ["/bin/sh"]', str(ALPINE), "berth-interop/alpine:sh")
    plain = dockerd.inspect("berth-interop/alpine:3.20")
    with_cmd = dockerd.inspect("berth-interop/alpine:sh")
    assert plain["Id"] != with_cmd["Id"]
    saved = tmp_path / "docker.tar"
    dockerd.docker("save", "-o", str(saved), "berth-interop/alpine:3.20", "berth-interop/alpine:sh")
    with tarfile.open(saved) as tar:
        names = tar.getnames()
        links = [m.name for m in tar.getmembers() if m.issym()]
    assert "manifest.json" in names and any(n.endswith("/layer.tar") for n in names), names
    assert links, f"docker saved the shared layer twice instead of linking it: {names}"

    with open(saved, "rb") as f:
        loaded = archive.load(fresh, f)
    assert sorted(loaded) == [
        "docker.io/berth-interop/alpine:3.20",
        "docker.io/berth-interop/alpine:sh",
    ]
    first = fresh.get("berth-interop/alpine:3.20")
    second = fresh.get("berth-interop/alpine:sh")
    assert (first.id, second.id) == (plain["Id"], with_cmd["Id"])
    assert second.config.cmd == ["/bin/sh"]
    assert first.top_layer == second.top_layer
    assert first.top_layer is not None
    release = Path(fresh.snapshots.fs_path(first.top_layer)) / "etc" / "alpine-release"
    assert release.read_text().startswith("3.20")
    assert fresh.gc() == {"blobs": 0, "snapshots": 0, "bytes": 0}


def test_berth_made_images_run_in_docker(
    dockerd: Dockerd, store: ImageStore, tmp_path: Path
) -> None:
    """An imported image (a gzip layer) and the bootstrapped busybox load and run."""
    _need(ALPINE)
    if not os.path.exists("/bin/busybox"):
        pytest.skip("/bin/busybox is absent: apt-get install busybox-static")
    with open(ALPINE, "rb") as f:
        alpine = archive.import_rootfs(store, f, name="berth-interop/imported:1")
    busybox = bootstrap.bootstrap_busybox(store, "berth-interop/busybox:boot")
    saved = tmp_path / "berth.tar"
    with open(saved, "wb") as f:
        archive.save(store, ["berth-interop/imported:1", "berth-interop/busybox:boot"], f)
    dockerd.docker("load", "-i", str(saved))
    assert dockerd.inspect("berth-interop/imported:1")["Id"] == alpine.id
    assert dockerd.inspect("berth-interop/busybox:boot")["Id"] == busybox.id
    out = dockerd.docker(
        "run", "--rm", "--network=none", "berth-interop/imported:1", "cat", "/etc/alpine-release"
    )
    assert out.startswith("3.20.3")
    out = dockerd.docker("run", "--rm", "--network=none", "berth-interop/busybox:boot")
    assert out == ""  # Cmd ["sh"] with no input: a clean exit
    out = dockerd.docker(
        "run", "--rm", "--network=none", "berth-interop/busybox:boot", "sh", "-c", "echo $PATH"
    )
    assert out.strip() == bootstrap.PATH_ENV.split("=", 1)[1]
