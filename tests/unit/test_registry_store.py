"""The registry's filesystem store without HTTP: names, digests, uploads, manifests, GC."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from berth.distribution import registry_store as rs


def sha256(data: bytes) -> rs.Digest:
    return rs.Digest("sha256", hashlib.sha256(data).hexdigest())


@pytest.fixture
def store(tmp_path: Path) -> rs.RegistryStore:
    return rs.RegistryStore(tmp_path / "root", fsync=False)


def upload(store: rs.RegistryStore, name: str, *chunks: bytes) -> str:
    upload_id = store.new_upload(name)
    for chunk in chunks:
        writer = store.open_upload(name, upload_id)
        writer.write([chunk])
        writer.close()
    return upload_id


@pytest.mark.parametrize(
    "text, error",
    [
        ("sha256:" + "a" * 64, None),
        ("sha512:" + "0" * 128, None),
        ("sha256:" + "A" * 64, rs.DigestInvalid),
        ("sha256:abc", rs.DigestInvalid),
        ("sha256:../../etc/passwd", rs.DigestInvalid),
        ("md5:" + "0" * 32, rs.Unsupported),
        ("nocolon", rs.DigestInvalid),
    ],
)
def test_parse_digest(text: str, error: type[Exception] | None) -> None:
    if error is None:
        assert str(rs.parse_digest(text)) == text
    else:
        with pytest.raises(error):
            rs.parse_digest(text)


@pytest.mark.parametrize(
    "name, ok",
    [
        ("a", True),
        ("a/b/c", True),
        ("my-org/app_1.2/x__y", True),
        ("a--b", True),
        ("A", False),
        ("a//b", False),
        ("_a", False),
        ("a/_layers", False),
        ("a/", False),
        ("../a", False),
        ("a" * 256, False),
    ],
)
def test_repository_names(name: str, ok: bool) -> None:
    if ok:
        assert rs.validate_name(name) == name
    else:
        with pytest.raises(rs.NameInvalid):
            rs.validate_name(name)


def test_upload_survives_a_restart(store: rs.RegistryStore) -> None:
    data = os.urandom(50_000)
    upload_id = upload(store, "r", data[:20_000])
    # a new store over the same root has no hash state: commit hashes the file again
    again = rs.RegistryStore(store.root, fsync=False)
    writer = again.open_upload("r", upload_id)
    assert writer.offset == 20_000 and writer.hasher is None
    writer.write([data[20_000:]])
    writer.commit(sha256(data))
    path, size = again.stat_blob("r", sha256(data))
    assert size == len(data) and path.read_bytes() == data


def test_aborted_chunk_leaves_the_session_as_it_was(store: rs.RegistryStore) -> None:
    upload_id = upload(store, "r", b"hello ")
    writer = store.open_upload("r", upload_id)
    writer.write([b"garbage"])
    writer.abort()
    writer = store.open_upload("r", upload_id)
    assert writer.offset == 6 and writer.hasher is not None
    writer.write([b"world"])
    assert writer.commit(sha256(b"hello world")) == sha256(b"hello world")


def test_wrong_digest_publishes_nothing(store: rs.RegistryStore) -> None:
    upload_id = upload(store, "r", b"abc")
    with pytest.raises(rs.DigestInvalid):
        store.open_upload("r", upload_id).commit(sha256(b"abd"))
    assert not store.blob_path(sha256(b"abd")).exists()
    assert not store.blob_path(sha256(b"abc")).exists()


def test_two_sessions_of_one_blob_both_commit(store: rs.RegistryStore) -> None:
    first = store.open_upload("a", upload(store, "a", b"same"))
    second = store.open_upload("b", upload(store, "b", b"same"))
    first.commit(sha256(b"same"))
    second.commit(sha256(b"same"))
    assert store.has_blob("a", sha256(b"same")) and store.has_blob("b", sha256(b"same"))
    assert store.blob_path(sha256(b"same")).read_bytes() == b"same"
    assert list(store.uploads.iterdir()) == []


def test_upload_belongs_to_its_repository(store: rs.RegistryStore) -> None:
    upload_id = store.new_upload("mine")
    with pytest.raises(rs.UploadUnknown):
        store.open_upload("yours", upload_id)
    with pytest.raises(rs.UploadUnknown):
        store.upload_size("mine", "../../etc")


def _manifest(store: rs.RegistryStore, name: str, **extra: object) -> bytes:
    config = b"{}"
    store.open_upload(name, upload(store, name, config)).commit(sha256(config))
    manifest = {
        "schemaVersion": 2,
        "mediaType": rs.OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.empty.v1+json",
            "digest": str(sha256(config)),
            "size": 2,
        },
        "layers": [],
        **extra,
    }
    return json.dumps(manifest).encode()


def test_media_type_comes_from_header_or_body(store: rs.RegistryStore) -> None:
    body = _manifest(store, "m")
    assert store.put_manifest("m", "t", body, None).media_type == rs.OCI_MANIFEST
    with pytest.raises(rs.ManifestInvalid, match="does not match Content-Type"):
        store.put_manifest("m", "t", body, rs.DOCKER_MANIFEST)
    untyped = json.loads(body)
    del untyped["mediaType"]
    result = store.put_manifest("m", "u", json.dumps(untyped).encode(), rs.DOCKER_MANIFEST)
    assert store.get_manifest("m", "u").media_type == rs.DOCKER_MANIFEST == result.media_type


def test_referrer_entries_follow_their_manifest(store: rs.RegistryStore) -> None:
    subject = store.put_manifest("r", "base", _manifest(store, "r"), rs.OCI_MANIFEST)
    body = _manifest(
        store,
        "r",
        subject={"mediaType": rs.OCI_MANIFEST, "digest": str(subject.digest), "size": 1},
    )
    result = store.put_manifest("r", str(sha256(body)), body, rs.OCI_MANIFEST)
    assert result.subject == str(subject.digest)
    found = store.referrers("r", subject.digest, None)
    assert found == [
        {
            "mediaType": rs.OCI_MANIFEST,
            "digest": str(result.digest),
            "size": len(body),
            "artifactType": "application/vnd.oci.empty.v1+json",
        }
    ]
    assert store.referrers("r", subject.digest, "other/type") == []
    assert store.referrers("elsewhere", subject.digest, None) == []
    store.delete_manifest("r", str(result.digest))
    assert store.referrers("r", subject.digest, None) == []


def test_gc_removes_stale_uploads(store: rs.RegistryStore) -> None:
    fresh = store.new_upload("r")
    stale = store.new_upload("r")
    old = time.time() - 3 * 86400
    os.utime(store.uploads / stale, (old, old))
    report = store.collect_garbage()
    assert report.uploads_removed == 1
    assert (store.uploads / fresh).exists() and not (store.uploads / stale).exists()
