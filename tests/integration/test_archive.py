"""save/load/import on the real kernel: round trips, real upstream images, bad archives."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.helpers import tar_of

from berth.errors import BerthError, InvalidArgument, NotFound
from berth.images import archive, bootstrap
from berth.images import manifest as mf
from berth.images.store import Image, ImageStore

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root and the real kernel")

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures"
BUSYBOX = FIXTURES / "busybox-1.38-musl-oci"
PYTHON = FIXTURES / "python-3.12-alpine-oci"
ALPINE = FIXTURES / "alpine-minirootfs-3.20.3-x86_64.tar.gz"
BUSYBOX_ID = "sha256:654fc8fd836e35f4a64586bddf8f59b9029b48cf80f520834c6c98ca8ab5def9"
BUSYBOX_NAME = "docker.io/library/busybox:1.38.0-musl"
PYTHON_REF = "python-3.12.11-alpine3.22"


def _need(*paths: Path) -> None:
    for path in paths:
        if not path.exists():
            pytest.skip(f"fixture {path} is absent (see /work/shared/fixtures/README.md)")


@pytest.fixture
def new_store(tmp_path: Path) -> Iterator[Callable[[str], ImageStore]]:
    stores: list[ImageStore] = []

    def make(name: str) -> ImageStore:
        s = ImageStore(str(tmp_path / name))
        stores.append(s)
        return s

    yield make
    for s in stores:
        s.close()


@pytest.fixture
def store(new_store: Callable[[str], ImageStore]) -> ImageStore:
    return new_store("store")


@pytest.fixture
def fresh(new_store: Callable[[str], ImageStore]) -> ImageStore:
    return new_store("fresh")


@pytest.fixture
def busybox(store: ImageStore) -> Image:
    """A local busybox image with two tags (made from busybox-static, no fixture needed)."""
    if not os.path.exists("/bin/busybox"):
        pytest.skip("/bin/busybox is absent: apt-get install busybox-static")
    bootstrap.bootstrap_busybox(store, "busybox:latest")
    return store.tag("busybox:latest", "localhost:5000/tools/busybox:1")


def _save(store: ImageStore, refs: list[str], fmt: str = "docker") -> bytes:
    out = io.BytesIO()
    archive.save(store, refs, out, format=fmt)  # type: ignore[arg-type]
    return out.getvalue()


def _members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {
            m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }


def _assert_unpacked(store: ImageStore, image: Image) -> None:
    for chain_id in image.chain_ids:
        assert store.snapshots.exists(chain_id), chain_id


def _assert_nothing_recorded(store: ImageStore) -> None:
    assert store.images() == []
    assert [s.key for s in store.snapshots.walk() if s.kind == "active"] == []


# ---------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("fmt", ["docker", "oci"])
def test_round_trip_keeps_ids_names_and_layers(
    fmt: str, store: ImageStore, fresh: ImageStore, busybox: Image
) -> None:
    _need(ALPINE)
    with open(ALPINE, "rb") as f:
        alpine = archive.import_rootfs(store, f, name="alpine:3.20")
    data = _save(store, ["busybox", "localhost:5000/tools/busybox:1", "alpine:3.20"], fmt)
    assert store.gc() == {"blobs": 0, "snapshots": 0, "bytes": 0}  # save leaves no strays

    loaded = archive.load(fresh, io.BytesIO(data))
    assert sorted(loaded) == [
        "docker.io/library/alpine:3.20",
        "docker.io/library/busybox:latest",
        "localhost:5000/tools/busybox:1",
    ]
    for original in (busybox, alpine):
        copy = fresh.get(original.id)
        assert copy.id == original.id
        assert copy.names == original.names
        assert copy.config.diff_ids == original.config.diff_ids
        _assert_unpacked(fresh, copy)
        if fmt == "oci":  # blobs as stored: the very same manifest
            assert copy.manifest_digest == original.manifest_digest
    assert fresh.gc() == {"blobs": 0, "snapshots": 0, "bytes": 0}
    top = fresh.get("alpine:3.20").top_layer
    assert top is not None
    assert (Path(fresh.snapshots.fs_path(top)) / "etc/alpine-release").is_file()

    # loading the same archive again changes nothing
    assert sorted(archive.load(fresh, io.BytesIO(data))) == sorted(loaded)
    assert len(fresh.images()) == 2


def test_docker_format_is_what_docker_save_writes(store: ImageStore, busybox: Image) -> None:
    data = _save(store, ["busybox:latest"])
    files = _members(data)
    hexid = busybox.id.split(":")[1]
    diff_hex = busybox.config.diff_ids[0].split(":")[1]
    assert json.loads(files["manifest.json"]) == [
        {
            "Config": f"blobs/sha256/{hexid}",
            "RepoTags": ["busybox:latest"],
            "Layers": [f"blobs/sha256/{diff_hex}"],
        }
    ]
    assert json.loads(files["repositories"]) == {"busybox": {"latest": diff_hex}}
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    # the layer is the uncompressed tar whose digest is the diff ID
    layer = files[f"blobs/sha256/{diff_hex}"]
    assert hashlib.sha256(layer).hexdigest() == diff_hex
    index = mf.parse_manifest(files["index.json"])
    assert isinstance(index, mf.Index)
    (entry,) = index.manifests
    assert entry.annotations == {
        "io.containerd.image.name": "docker.io/library/busybox:latest",
        "org.opencontainers.image.ref.name": "latest",
    }
    manifest = mf.parse_manifest(files[f"blobs/sha256/{entry.digest.split(':')[1]}"])
    assert isinstance(manifest, mf.Manifest)
    assert [(la.media_type, la.digest) for la in manifest.layers] == [
        (mf.OCI_LAYER, busybox.config.diff_ids[0])
    ]
    # reproducible: the same images give the same bytes
    assert _save(store, ["busybox:latest"]) == data


def test_save_by_id_is_untagged_and_by_repository_takes_every_tag(
    store: ImageStore, fresh: ImageStore, busybox: Image
) -> None:
    store.tag("busybox:latest", "busybox:stable")
    by_repo = json.loads(_members(_save(store, ["busybox"]))["manifest.json"])
    assert sorted(by_repo[0]["RepoTags"]) == ["busybox:latest", "busybox:stable"]
    by_id = _members(_save(store, [busybox.short_id]))
    assert json.loads(by_id["manifest.json"])[0]["RepoTags"] is None
    assert "repositories" not in by_id
    assert archive.load(fresh, io.BytesIO(_save(store, [busybox.id]))) == [busybox.id]
    with pytest.raises(NotFound, match="no such image"):
        _save(store, ["nothing-here:1"])


def test_load_reads_the_legacy_layout(store: ImageStore, fresh: ImageStore, busybox: Image) -> None:
    """``docker save`` before Docker 25: ``<id>/layer.tar``, ``<hex>.json``, and a shared
    layer of a second image stored once, the other a symlink to it."""
    files = _members(_save(store, ["busybox:latest"]))
    hexid = busybox.id.split(":")[1]
    diff_hex = busybox.config.diff_ids[0].split(":")[1]
    config = json.loads(files[f"blobs/sha256/{hexid}"])
    config["config"]["Cmd"] = ["echo", "two"]
    config2 = json.dumps(config).encode()
    hex2 = hashlib.sha256(config2).hexdigest()
    legacy = {
        "aaaa/VERSION": b"1.0",
        "aaaa/json": b"{}",
        "aaaa/layer.tar": files[f"blobs/sha256/{diff_hex}"],
        f"{hexid}.json": files[f"blobs/sha256/{hexid}"],
        f"{hex2}.json": config2,
        "manifest.json": json.dumps(
            [
                {"Config": f"{hexid}.json", "RepoTags": ["one:1"], "Layers": ["aaaa/layer.tar"]},
                {"Config": f"{hex2}.json", "RepoTags": ["two:2"], "Layers": ["bbbb/layer.tar"]},
            ]
        ).encode(),
        "repositories": b"{}",
    }
    data = tar_of(legacy, {"bbbb/layer.tar": "../aaaa/layer.tar"})
    assert archive.load(fresh, io.BytesIO(data)) == [
        "docker.io/library/one:1",
        "docker.io/library/two:2",
    ]
    assert fresh.get("one:1").id == busybox.id
    two = fresh.get("two:2")
    assert two.id == f"sha256:{hex2}"
    assert two.config.cmd == ["echo", "two"]
    assert two.top_layer == busybox.top_layer
    assert fresh.gc() == {"blobs": 0, "snapshots": 0, "bytes": 0}


def test_load_takes_a_compressed_archive(
    store: ImageStore, fresh: ImageStore, busybox: Image
) -> None:
    data = gzip.compress(_save(store, ["busybox:latest"]), compresslevel=1)
    assert archive.load(fresh, io.BytesIO(data)) == ["docker.io/library/busybox:latest"]


# ---------------------------------------------------------------------------- real images


def test_load_busybox_oci_layout(store: ImageStore) -> None:
    _need(BUSYBOX)
    assert archive.load_oci_layout(store, str(BUSYBOX)) == [BUSYBOX_NAME]
    image = store.get("busybox:1.38.0-musl")
    assert image.id == BUSYBOX_ID
    assert image.manifest_digest == (
        "sha256:a34ce92094b7b100a98fbd21411a92825f6827b1bc5f6918c253516c90556998"
    )
    assert image.top_layer is not None
    assert (Path(store.snapshots.fs_path(image.top_layer)) / "bin/busybox").is_file()
    assert store.gc() == {"blobs": 0, "snapshots": 0, "bytes": 0}


def test_load_python_from_a_layout_by_ref_name(store: ImageStore) -> None:
    _need(PYTHON)
    # the ref name is a tag only, which names no repository: the image stays untagged
    (loaded,) = archive.load_oci_layout(store, str(PYTHON), PYTHON_REF)
    (image,) = store.images()
    assert loaded == image.id
    assert image.names == []
    assert len(image.layers) == 4
    assert image.config.cmd == ["python3"]
    assert archive.load_oci_layout(store, str(PYTHON), PYTHON_REF, name="python:3.12-alpine") == [
        "docker.io/library/python:3.12-alpine"
    ]
    assert store.get("python:3.12-alpine").id == image.id
    assert image.top_layer is not None
    chain = [Path(store.snapshots.fs_path(c)) for c in image.chain_ids]
    assert any((d / "usr/local/bin/python3.12").exists() for d in chain)
    with pytest.raises(NotFound, match=r"alpine-3\.22\.1"):
        archive.load_oci_layout(store, str(PYTHON), "no-such-ref")


def test_load_a_tar_of_an_oci_layout(store: ImageStore, fresh: ImageStore) -> None:
    _need(PYTHON)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        tar.add(str(PYTHON), arcname=".")
    loaded = archive.load(store, io.BytesIO(out.getvalue()))
    assert len(loaded) == 2 and all(item.startswith("sha256:") for item in loaded)
    python, alpine = sorted((store.get(i) for i in loaded), key=lambda i: -len(i.layers))
    assert (len(python.layers), len(alpine.layers)) == (4, 1)
    assert python.config.diff_ids[0] == alpine.config.diff_ids[0]  # a shared base layer

    # saved for docker, the shared (gzip) layer goes out once, inflated
    data = _save(store, [python.id, alpine.id])
    diff_hex = tuple(d.split(":")[1] for d in python.config.diff_ids)
    layer_blobs = [n for n in _members(data) if n.endswith(diff_hex)]
    assert len(layer_blobs) == 4
    assert sorted(archive.load(fresh, io.BytesIO(data))) == sorted(loaded)
    assert fresh.gc() == {"blobs": 0, "snapshots": 0, "bytes": 0}


def test_import_alpine_minirootfs(store: ImageStore) -> None:
    _need(ALPINE)
    with open(ALPINE, "rb") as f:
        image = archive.import_rootfs(
            store, f, name="alpine:imported", changes={"Cmd": ["/bin/sh"], "Env": ["A=1"]}
        )
    assert image.names == ["docker.io/library/alpine:imported"]
    (layer,) = image.layers
    assert layer.media_type == mf.OCI_LAYER_GZIP
    with gzip.open(ALPINE) as f:
        assert image.config.diff_ids == ["sha256:" + hashlib.sha256(f.read()).hexdigest()]
    assert image.config.platform.matches(mf.Platform.host())
    assert image.config.cmd == ["/bin/sh"] and image.config.env == ["A=1"]
    assert image.config.history[0]["comment"] == "Imported from -"
    assert image.top_layer is not None
    release = Path(store.snapshots.fs_path(image.top_layer)) / "etc/alpine-release"
    assert release.read_text().startswith("3.20.3")

    # a plain tar of the same files is the same layer, hence the same snapshot
    with gzip.open(ALPINE) as f:
        plain = archive.import_rootfs(store, io.BytesIO(f.read()), name=None)
    assert plain.names == [] and plain.top_layer == image.top_layer


def test_import_refuses_bad_input(store: ImageStore) -> None:
    with pytest.raises(InvalidArgument, match="cannot change 'Foo'"):
        archive.import_rootfs(store, io.BytesIO(b""), name="x", changes={"Foo": 1})
    with pytest.raises(BerthError, match="not a valid rootfs tarball"):
        archive.import_rootfs(store, io.BytesIO(b"hello, not a tar" * 64), name="x")
    _assert_nothing_recorded(store)


# ---------------------------------------------------------------------------- bad archives


def _replace(data: bytes, name: str, content: bytes) -> bytes:
    files = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar.getmembers():
            if m.isfile():
                files[m.name] = tar.extractfile(m).read()  # type: ignore[union-attr]
    files[name] = content
    return tar_of(files)


def test_archive_without_manifest_or_index(fresh: ImageStore) -> None:
    with pytest.raises(archive.InvalidArchive, match=r"no manifest\.json or index\.json"):
        archive.load(fresh, io.BytesIO(tar_of({"hello.txt": b"hi"})))
    with pytest.raises(archive.InvalidArchive, match=r"pre-1\.10"):
        archive.load(fresh, io.BytesIO(tar_of({"repositories": b"{}"})))
    _assert_nothing_recorded(fresh)


def test_blob_whose_digest_lies(store: ImageStore, fresh: ImageStore, busybox: Image) -> None:
    data = _save(store, ["busybox:latest"])
    diff_hex = busybox.config.diff_ids[0].split(":")[1]
    layer = bytearray(_members(data)[f"blobs/sha256/{diff_hex}"])
    layer[1000] ^= 0xFF
    bad = _replace(data, f"blobs/sha256/{diff_hex}", bytes(layer))
    with pytest.raises(archive.InvalidArchive, match="does not match its digest"):
        archive.load(fresh, io.BytesIO(bad))
    _assert_nothing_recorded(fresh)


def test_layer_that_lies_about_its_diff_id(
    store: ImageStore, fresh: ImageStore, busybox: Image
) -> None:
    """A gzip layer is only found out when unpacked: still no image is recorded."""
    files = _members(_save(store, ["busybox:latest"]))
    hexid = busybox.id.split(":")[1]
    diff_hex = busybox.config.diff_ids[0].split(":")[1]
    tampered = tar_of({"etc/evil": b"x"})
    legacy = {
        "l/layer.tar": gzip.compress(tampered),
        f"{hexid}.json": files[f"blobs/sha256/{hexid}"],
        "manifest.json": json.dumps(
            [{"Config": f"{hexid}.json", "RepoTags": ["b:1"], "Layers": ["l/layer.tar"]}]
        ).encode(),
    }
    with pytest.raises(archive.InvalidArchive, match=f"sha256:{diff_hex}"):
        archive.load(fresh, io.BytesIO(tar_of(legacy)))
    legacy["l/layer.tar"] = tampered  # plain: caught before unpacking
    with pytest.raises(archive.InvalidArchive, match="hashes to"):
        archive.load(fresh, io.BytesIO(tar_of(legacy)))
    _assert_nothing_recorded(fresh)
    assert [s.key for s in fresh.snapshots.walk()] == []


def test_truncated_archives(store: ImageStore, fresh: ImageStore, busybox: Image) -> None:
    data = _save(store, ["busybox:latest"])
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        offsets = {m.name: (m.offset, m.offset_data, m.size) for m in tar.getmembers()}
    layer = f"blobs/sha256/{busybox.config.diff_ids[0].split(':')[1]}"
    cuts = [
        offsets[layer][1] + offsets[layer][2] // 2,  # in a layer
        offsets["manifest.json"][1] + 10,  # in manifest.json
        offsets["manifest.json"][0] + 100,  # in a header
    ]
    for cut in cuts:
        with pytest.raises(archive.InvalidArchive, match=r"truncated|cut short"):
            archive.load(fresh, io.BytesIO(data[:cut]))
    packed = gzip.compress(data, compresslevel=1)
    with pytest.raises(archive.InvalidArchive):
        archive.load(fresh, io.BytesIO(packed[: len(packed) // 2]))
    for junk in (b"", b"\x00" * 100, os.urandom(4096)):
        with pytest.raises(archive.InvalidArchive):
            archive.load(fresh, io.BytesIO(junk))
    _assert_nothing_recorded(fresh)


def test_archive_missing_a_blob(store: ImageStore, fresh: ImageStore, busybox: Image) -> None:
    diff_hex = busybox.config.diff_ids[0].split(":")[1]
    for fmt in ("docker", "oci"):
        data = _save(store, ["busybox:latest"], fmt)
        layer = busybox.layers[0].digest if fmt == "oci" else f"sha256:{diff_hex}"
        files = _members(data)
        del files[f"blobs/sha256/{layer.split(':')[1]}"]
        with pytest.raises(archive.InvalidArchive, match="missing from the archive"):
            archive.load(fresh, io.BytesIO(tar_of(files)))
    _assert_nothing_recorded(fresh)
