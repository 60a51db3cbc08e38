"""Base images made here: busybox from busybox-static, Debian with debootstrap."""

from __future__ import annotations

import os
import shutil
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from berth.images import bootstrap
from berth.images.store import Image, ImageStore

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root and the real kernel")


def _top(store: ImageStore, image: Image) -> Path:
    assert image.top_layer is not None
    return Path(store.snapshots.fs_path(image.top_layer))


def test_busybox_image_is_reproducible(tmp_path: Path) -> None:
    if not os.path.exists("/bin/busybox"):
        pytest.skip("/bin/busybox is absent: apt-get install busybox-static")
    first, second = ImageStore(str(tmp_path / "a")), ImageStore(str(tmp_path / "b"))
    try:
        one = bootstrap.bootstrap_busybox(first)
        two = bootstrap.bootstrap_busybox(second)
        again = bootstrap.bootstrap_busybox(first)
        assert one.id == two.id == again.id
        assert one.manifest_digest == two.manifest_digest  # even the gzip bytes agree
        assert one.names == ["docker.io/library/busybox:latest"]
        assert len(one.layers) == 1
        assert one.config.cmd == ["sh"]
        assert one.config.env == [bootstrap.PATH_ENV]
        root = _top(first, one)
        assert os.readlink(root / "bin/sh") == "busybox"
        assert os.access(root / "bin/busybox", os.X_OK)
        assert (root / "etc/passwd").read_text().startswith("root:x:0:0:")
        assert first.gc()["snapshots"] == 0
        # the epoch is part of the image: another one is another image
        other = bootstrap.bootstrap_busybox(second, "busybox:old", source_date_epoch=0)
        assert other.id != one.id and other.config.created == "1970-01-01T00:00:00Z"
    finally:
        first.close()
        second.close()


@dataclass
class Debian:
    store: ImageStore
    image: Image
    cache_dir: str
    seconds: float


def _mirror_reachable(mirror: str, suite: str) -> str | None:
    try:
        with urllib.request.urlopen(f"{mirror}/dists/{suite}/Release", timeout=10) as r:
            r.read(64)
    except OSError as e:
        return str(e)
    return None


@pytest.fixture(scope="session")
def debian(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Debian]:
    """One cold bootstrap per session (about half a minute), in its own cache folder."""
    if os.geteuid() != 0:
        pytest.skip("debootstrap needs root")
    if shutil.which("debootstrap") is None:
        pytest.skip("debootstrap is absent: apt-get install debootstrap")
    mirror = bootstrap._host_mirror()
    problem = _mirror_reachable(mirror, "bookworm")
    if problem:
        pytest.skip(f"the debian mirror {mirror} is unreachable: {problem}")
    root = tmp_path_factory.mktemp("debian")
    store = ImageStore(str(root / "store"))
    started = time.monotonic()
    image = bootstrap.bootstrap_debian(store, cache_dir=str(root / "cache"))
    yield Debian(store, image, str(root / "cache"), time.monotonic() - started)
    store.close()


@pytest.mark.slow
def test_debian_is_slim_and_has_apt(debian: Debian) -> None:
    image, root = debian.image, _top(debian.store, debian.image)
    print(f"cold debian bootstrap: {debian.seconds:.1f} s, layer {image.size} bytes")
    assert image.names == ["docker.io/library/debian:bookworm"]
    assert image.config.cmd == ["bash"]
    assert len(image.layers) == 1
    assert (root / "usr/bin/apt-get").is_file()
    assert (root / "usr/bin/bash").is_file()
    # docs, man pages and translations are gone; only copyright notices stay
    docs = [p for p in (root / "usr/share/doc").rglob("*") if not p.is_dir()]
    assert docs and all(p.name == "copyright" or p.is_symlink() for p in docs), docs[:5]
    assert not [p for p in (root / "usr/share/man").rglob("*") if not p.is_dir()]
    assert not [p for p in (root / "usr/share/locale").rglob("*.mo")]
    for top in ("usr/share/doc", "usr/share/man"):
        for p in (root / top).rglob("*"):
            assert not p.is_symlink() or bootstrap._resolves(str(root), str(p)), p
    # ... and dpkg keeps them out of later installs; apt cleans up after itself
    assert "path-exclude /usr/share/doc/*" in (root / "etc/dpkg/dpkg.cfg.d/docker").read_text()
    assert (
        "path-include /usr/share/doc/*/copyright"
        in (root / "etc/dpkg/dpkg.cfg.d/docker").read_text()
    )
    assert (root / "etc/apt/apt.conf.d/docker-clean").is_file()
    assert os.access(root / "usr/sbin/policy-rc.d", os.X_OK)
    assert list((root / "var/lib/apt/lists").iterdir()) == []
    assert list((root / "var/cache/apt").iterdir()) == []
    assert list((root / "dev").iterdir()) == []  # the engine provides /dev
    assert not (root / "var/log/bootstrap.log").exists()
    sources = (root / "etc/apt/sources.list.d/debian.sources").read_text()
    assert "Suites: bookworm bookworm-updates" in sources
    assert not (root / "etc/apt/sources.list").exists()
    assert "nameserver" not in (root / "etc/resolv.conf").read_text()  # not the host's


@pytest.mark.slow
def test_debian_cache_makes_the_second_bootstrap_fast(debian: Debian, tmp_path: Path) -> None:
    other = ImageStore(str(tmp_path / "other"))
    try:
        started = time.monotonic()
        image = bootstrap.bootstrap_debian(other, cache_dir=debian.cache_dir)
        elapsed = time.monotonic() - started
        assert image.id == debian.image.id
        assert elapsed < 20, f"a cached bootstrap took {elapsed:.1f} s"
        assert (_top(other, image) / "usr/bin/apt-get").is_file()
    finally:
        other.close()


def test_busybox_applet_links_resolve_inside_the_rootfs(tmp_path: Path) -> None:
    """``/sbin/ip`` runs as a program of its own (not only as a shell builtin)."""
    from berth.images import busybox_rootfs

    root = tmp_path / "rootfs"
    busybox_rootfs.build(str(root))
    links = [p for p in root.rglob("*") if p.is_symlink()]
    assert len(links) > 100
    for link in links:
        target = (link.parent / os.readlink(link)).resolve()
        assert target == (root / "bin" / "busybox").resolve(), link
