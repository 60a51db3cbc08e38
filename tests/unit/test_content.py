"""Tests for berth.images.content: atomic, verified, resumable blob storage."""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from pathlib import Path

import pytest

from berth.errors import Conflict, InvalidArgument
from berth.images.content import (
    BlobNotFound,
    ContentStore,
    DigestMismatch,
    digest_bytes,
    parse_digest,
)

DATA = b"hello berth\n" * 1000
DIGEST = "sha256:" + hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> ContentStore:
    return ContentStore(str(tmp_path / "content"))


def ingest_files(store: ContentStore) -> list[str]:
    return os.listdir(store.ingest_dir)


def test_parse_digest() -> None:
    assert parse_digest(DIGEST) == ("sha256", DIGEST[7:])
    assert parse_digest("sha512:" + "0" * 128) == ("sha512", "0" * 128)
    for bad in ("", "sha256", "sha256:", "sha256:" + "A" * 64, "md5:" + "0" * 32,
                "sha256:" + "0" * 63, "sha256:../../etc/passwd", "sha512:" + "0" * 64):  # fmt: skip
        with pytest.raises(InvalidArgument):
            parse_digest(bad)


def test_digest_bytes() -> None:
    assert digest_bytes(DATA) == DIGEST
    assert digest_bytes(b"", "sha512") == "sha512:" + hashlib.sha512(b"").hexdigest()
    with pytest.raises(InvalidArgument):
        digest_bytes(b"", "md5")


def test_write_commit_is_atomic_and_read_only(store: ContentStore) -> None:
    with store.writer(DIGEST, len(DATA)) as w:
        w.write(DATA[:100])
        assert not store.has(DIGEST)  # nothing visible before commit
        assert w.offset == 100
        w.write(DATA[100:])
        assert w.commit() == DIGEST
    path = store.path(DIGEST)
    assert path == os.path.join(store.root, "blobs", "sha256", DIGEST[7:])
    assert store.has(DIGEST)
    assert store.size(DIGEST) == len(DATA)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o444
    assert store.read(DIGEST) == DATA
    with store.open(DIGEST) as f:
        assert f.read() == DATA
    store.verify(DIGEST)
    assert ingest_files(store) == []


def test_put_without_expected_and_existing_blob(store: ContentStore) -> None:
    assert store.put(DATA) == DIGEST
    assert store.put(DATA, DIGEST) == DIGEST  # already there: succeeds
    with pytest.raises(DigestMismatch):
        store.put(b"other", DIGEST)
    assert ingest_files(store) == []


def test_sha512_blob(store: ContentStore) -> None:
    digest = digest_bytes(DATA, "sha512")
    assert store.put(DATA, digest) == digest
    assert store.read(digest) == DATA
    assert list(store.list()) == [digest]


def test_mismatch_names_both_digests_and_deletes_temp(store: ContentStore) -> None:
    wrong = "sha256:" + "0" * 64
    with pytest.raises(DigestMismatch) as info, store.writer(wrong) as w:
        w.write(DATA)
        w.commit()
    assert wrong in str(info.value) and DIGEST in str(info.value)
    assert not store.has(wrong) and not store.has(DIGEST)
    assert ingest_files(store) == []


def test_size_checks(store: ContentStore) -> None:
    with pytest.raises(DigestMismatch, match="bytes, expected"), store.writer(size=5) as w:
        w.write(b"abc")
        w.commit()
    with pytest.raises(DigestMismatch, match="larger than"), store.writer(size=2) as w:
        w.write(b"abc")
    assert ingest_files(store) == []


def test_exception_aborts_and_deletes_temp(store: ContentStore) -> None:
    with pytest.raises(RuntimeError), store.writer() as w:
        w.write(DATA)
        raise RuntimeError("network gone")
    assert ingest_files(store) == []
    assert list(store.list()) == []


def test_resume_after_abort(store: ContentStore) -> None:
    key = "docker.io/library/busybox@" + DIGEST
    with pytest.raises(ConnectionError), store.writer(DIGEST, len(DATA), resume_key=key) as w:
        w.write(DATA[:5000])
        raise ConnectionError("connection reset")
    assert len(ingest_files(store)) == 1  # the partial file survives
    assert not store.has(DIGEST)

    with store.writer(DIGEST, len(DATA), resume_key=key) as w:
        assert w.offset == 5000  # ask the registry for Range: bytes=5000-
        w.write(DATA[w.offset :])
        assert w.commit() == DIGEST
    assert store.read(DIGEST) == DATA
    assert ingest_files(store) == []


def test_resume_with_bad_partial_data_is_discarded(store: ContentStore) -> None:
    key = "k"
    with store.writer(DIGEST, resume_key=key) as w:
        w.write(b"garbage")
    with pytest.raises(DigestMismatch), store.writer(DIGEST, resume_key=key) as w:
        w.write(DATA[w.offset :])
        w.commit()
    assert ingest_files(store) == []  # a fresh start next time
    with store.writer(DIGEST, resume_key=key) as w:
        assert w.offset == 0


def test_same_resume_key_twice_at_once_conflicts(store: ContentStore) -> None:
    with store.writer(resume_key="k") as w:
        w.write(b"x")
        with pytest.raises(Conflict):
            store.writer(resume_key="k")


def test_concurrent_writers_of_the_same_blob(store: ContentStore) -> None:
    n = 8
    barrier = threading.Barrier(n)
    results: list[str] = []
    errors: list[BaseException] = []

    def write() -> None:
        try:
            with store.writer(DIGEST, len(DATA)) as w:
                for i in range(0, len(DATA), 1000):
                    w.write(DATA[i : i + 1000])
                barrier.wait()
                results.append(w.commit())
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=write) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert results == [DIGEST] * n
    assert store.read(DIGEST) == DATA
    assert ingest_files(store) == []


def test_read_verifies(store: ContentStore) -> None:
    store.put(DATA)
    path = store.path(DIGEST)
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.write(b"J")  # flip the first byte on disk
    with pytest.raises(DigestMismatch, match="corrupt"):
        store.read(DIGEST)
    with pytest.raises(DigestMismatch):
        store.verify(DIGEST)
    assert store.read(DIGEST, verify=False)[:1] == b"J"


def test_missing_blob(store: ContentStore) -> None:
    missing = "sha256:" + "1" * 64
    assert not store.has(missing)
    for call in (store.read, store.open, store.size, store.verify, store.delete):
        with pytest.raises(BlobNotFound, match=missing):
            call(missing)
    with pytest.raises(InvalidArgument):
        store.has("sha256:../../x")


def test_delete_list_usage(store: ContentStore) -> None:
    a = store.put(b"a" * 10)
    b = store.put(b"b" * 32)
    assert sorted(store.list()) == sorted([a, b])
    assert store.usage() == 42
    store.delete(a)
    assert not store.has(a)
    assert list(store.list()) == [b]
    assert store.usage() == 32
    # Stray files in blobs/ are not blobs.
    Path(store.blobs_dir, "sha256", "junk").write_text("x")
    assert list(store.list()) == [b]
