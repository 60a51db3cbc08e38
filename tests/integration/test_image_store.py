"""The image store: add, unpack (diff IDs checked), names, rmi, and gc accounting."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from berth.errors import Conflict, NotFound
from berth.images import manifest as mf
from berth.images.layer import tar_directory
from berth.images.store import ImageStore, LayerMismatch

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (ownership, overlay)")


def _layer(store: ImageStore, tmp: Path, files: dict[str, str]) -> tuple[mf.Descriptor, str]:
    src = tmp / f"src-{len(list(tmp.iterdir()))}"
    for name, text in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(text)
    out = io.BytesIO()
    digest, diff_id, size = tar_directory(str(src), out, source_date_epoch=0)
    store.content.put(out.getvalue(), digest)
    return mf.Descriptor(mf.OCI_LAYER_GZIP, digest, size), diff_id


def _image(store: ImageStore, tmp: Path, layers: list[dict[str, str]], *,
           diff_ids: list[str] | None = None, cmd: str = "sh") -> str:  # fmt: skip
    descs, ids = [], []
    for files in layers:
        desc, diff_id = _layer(store, tmp, files)
        descs.append(desc)
        ids.append(diff_id)
    config = {
        "architecture": mf.Platform.host().architecture,
        "os": "linux",
        "config": {"Cmd": [cmd]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids or ids},
    }
    config_bytes = json.dumps(config).encode()
    config_digest = store.content.put(config_bytes)
    manifest = mf.Manifest(
        mf.OCI_MANIFEST, mf.Descriptor(mf.OCI_CONFIG, config_digest, len(config_bytes)), descs
    )
    return store.content.put(mf.manifest_bytes(manifest))


def test_add_unpack_and_share_layers(tmp_path: Path) -> None:
    store = ImageStore(str(tmp_path / "store"))
    work = tmp_path / "work"
    work.mkdir()
    base = {"etc/os-release": "base\n"}
    one = store.add(_image(store, work, [base, {"app/one": "1\n"}]), names=["app:one"])
    two = store.add(_image(store, work, [base, {"app/two": "2\n"}], cmd="two"), names=["app:two"])
    assert one.chain_ids[0] == two.chain_ids[0] == one.config.diff_ids[0]
    top_one = store.unpack(one)
    store.unpack(two)
    snapshots = {s.key for s in store.snapshots.walk()}
    assert snapshots == {one.chain_ids[0], top_one, two.top_layer}  # the base is shared
    assert (Path(store.snapshots.fs_path(top_one)) / "app/one").read_text() == "1\n"
    assert store.get("app:one").id == one.id
    assert store.get("docker.io/library/app:two").id == two.id
    assert store.get(one.short_id).id == one.id
    assert store.get(one.id).names == ["docker.io/library/app:one"]
    with pytest.raises(NotFound, match="no such image: nope"):
        store.get("nope")


def test_a_layer_that_lies_about_its_diff_id_is_refused(tmp_path: Path) -> None:
    store = ImageStore(str(tmp_path / "store"))
    work = tmp_path / "work"
    work.mkdir()
    digest = _image(store, work, [{"f": "x"}], diff_ids=["sha256:" + "0" * 64])
    image = store.add(digest, names=["liar"])
    with pytest.raises(LayerMismatch, match="unpacks to"):
        store.unpack(image)
    assert list(store.snapshots.walk()) == []
    assert not [n for n in os.listdir(tmp_path / "store/snapshots/snapshots")]


def test_rmi_and_gc_free_every_byte(tmp_path: Path) -> None:
    store = ImageStore(str(tmp_path / "store"))
    work = tmp_path / "work"
    work.mkdir()
    image = store.add(_image(store, work, [{"big": "x" * 100_000}]), names=["a:1", "a:2"])
    store.unpack(image)
    blobs_before = set(store.content.list())
    assert len(blobs_before) == 3  # layer, config, manifest
    assert store.gc()["blobs"] == 0  # everything is referenced
    with pytest.raises(Conflict, match="referenced by 2 names"):
        store.remove(image.id)
    assert store.remove("a:1") == [("Untagged", "docker.io/library/a:1")]
    store.snapshots.prepare("container-x", image.top_layer)
    with pytest.raises(Conflict, match="used by 1 container"):
        store.remove("a:2")
    store.snapshots.remove("container-x")
    assert store.remove("a:2") == [
        ("Untagged", "docker.io/library/a:2"),
        ("Deleted", image.id),
    ]
    freed = store.gc()
    assert freed["blobs"] == 3 and freed["snapshots"] == 1 and freed["bytes"] > 100_000
    assert list(store.content.list()) == []
    assert list(store.snapshots.walk()) == []
    assert store.images() == []
