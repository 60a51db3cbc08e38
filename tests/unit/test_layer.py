"""Tests for berth.images.layer: unpacking layers, whiteouts, hostile layers, writing layers.

Layers are made here with ``tarfile``. Device nodes, ownership and ``trusted.*`` xattrs
need root; those tests skip without it. Every hostile layer must fail with LayerError,
leave ``dest`` as it was, leave no temporary directory beside it, and write nothing into a
canary directory outside it.
"""

from __future__ import annotations

import gc
import gzip
import hashlib
import io
import os
import stat
import tarfile
import threading
from pathlib import Path
from typing import Any

import pytest
import zstandard

from berth.images.layer import (
    LayerError,
    apply_layer,
    open_layer_stream,
    tar_directory,
    write_layer,
)

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs root: ownership, devices, trusted xattrs")
MTIME = 1_500_000_000
CAP = bytes.fromhex("0100000200100000000000000000000000000000")  # cap_net_bind_service


# ------------------------------------------------------------------ building layers


def _info(name: str, kind: bytes, **fields: Any) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mtime = fields.pop("mtime", MTIME)
    info.mode = fields.pop("mode", 0o755 if kind == tarfile.DIRTYPE else 0o644)
    xattrs: dict[str, bytes] = fields.pop("xattrs", {})
    info.pax_headers = {
        "SCHILY.xattr." + k: v.decode("utf-8", "surrogateescape") for k, v in xattrs.items()
    }
    for key, value in fields.items():
        setattr(info, key, value)
    return info


def reg(name: str, data: bytes = b"", **fields: Any) -> tuple[tarfile.TarInfo, bytes]:
    info = _info(name, tarfile.REGTYPE, **fields)
    info.size = len(data)
    return info, data


def dir_(name: str, **fields: Any) -> tuple[tarfile.TarInfo, bytes]:
    return _info(name, tarfile.DIRTYPE, **fields), b""


def sym(name: str, target: str, **fields: Any) -> tuple[tarfile.TarInfo, bytes]:
    return _info(name, tarfile.SYMTYPE, linkname=target, mode=0o777, **fields), b""


def link(name: str, target: str, **fields: Any) -> tuple[tarfile.TarInfo, bytes]:
    return _info(name, tarfile.LNKTYPE, linkname=target, **fields), b""


def dev(name: str, kind: bytes, major: int, minor: int, **fields: Any) -> tuple:
    return _info(name, kind, devmajor=major, devminor=minor, **fields), b""


def make_tar(*entries: tuple[tarfile.TarInfo, bytes], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as t:
        for info, data in entries:
            t.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return out.getvalue()


def apply_bytes(data: bytes, dest: Path, **kw: Any) -> int:
    return apply_layer(io.BytesIO(data), str(dest), **kw)


class Unseekable(io.RawIOBase):
    """A pipe-like stream: no seek, no peek."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        chunk = self._data.read(min(len(b), 1000))  # short reads, as pipes give
        b[: len(chunk)] = chunk
        return len(chunk)


# ------------------------------------------------------------------ unpacking


@needs_root
def test_regular_files_dirs_symlinks_hardlinks_keep_metadata(tmp_path: Path) -> None:
    layer = make_tar(
        dir_("etc", mode=0o750, uid=11, gid=12, mtime=1_000_000_000),
        reg("etc/passwd", b"root:x:0:0\n", mode=0o644, uid=0, gid=0),
        reg("etc/secret", b"s", mode=0o600, uid=1234, gid=5678, mtime=1_234_567_890),
        reg("bin/su", b"\x7fELF", mode=0o4755, uid=0, gid=0),
        reg("bin/wall", b"\x7fELF", mode=0o2755, uid=0, gid=5),
        dir_("tmp", mode=0o1777),
        sym("etc/motd", "/run/motd", uid=7, gid=8, mtime=1_111_111_111),
        link("etc/passwd-hard", "etc/passwd"),
        reg("etc/late", b"x"),  # written after etc/: etc's mtime must still be restored
    )
    dest = tmp_path / "snap"
    count = apply_bytes(layer, dest)
    assert count == len(layer)

    etc = os.lstat(dest / "etc")
    assert stat.S_IMODE(etc.st_mode) == 0o750
    assert (etc.st_uid, etc.st_gid, etc.st_mtime) == (11, 12, 1_000_000_000)
    assert (dest / "etc/passwd").read_bytes() == b"root:x:0:0\n"
    secret = os.lstat(dest / "etc/secret")
    assert (stat.S_IMODE(secret.st_mode), secret.st_uid, secret.st_gid) == (0o600, 1234, 5678)
    assert secret.st_mtime == 1_234_567_890
    assert stat.S_IMODE(os.lstat(dest / "bin/su").st_mode) == 0o4755
    wall = os.lstat(dest / "bin/wall")
    assert (stat.S_IMODE(wall.st_mode), wall.st_gid) == (0o2755, 5)
    assert stat.S_IMODE(os.lstat(dest / "tmp").st_mode) == 0o1777
    motd = os.lstat(dest / "etc/motd")
    assert stat.S_ISLNK(motd.st_mode)
    assert os.readlink(dest / "etc/motd") == "/run/motd"
    assert (motd.st_uid, motd.st_gid, motd.st_mtime) == (7, 8, 1_111_111_111)
    hard = os.lstat(dest / "etc/passwd-hard")
    assert hard.st_ino == os.lstat(dest / "etc/passwd").st_ino
    assert hard.st_nlink == 2
    # a parent the layer did not list is made 0755
    assert stat.S_IMODE(os.lstat(dest / "bin").st_mode) == 0o755


@needs_root
def test_devices_and_fifos(tmp_path: Path) -> None:
    layer = make_tar(
        dev("dev/null", tarfile.CHRTYPE, 1, 3, mode=0o666),
        dev("dev/loop0", tarfile.BLKTYPE, 7, 0, mode=0o660, gid=6),
        dev("run/fifo", tarfile.FIFOTYPE, 0, 0, mode=0o620, uid=3),
    )
    dest = tmp_path / "snap"
    apply_bytes(layer, dest)
    null = os.lstat(dest / "dev/null")
    assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)
    assert stat.S_IMODE(null.st_mode) == 0o666
    loop = os.lstat(dest / "dev/loop0")
    assert stat.S_ISBLK(loop.st_mode) and loop.st_rdev == os.makedev(7, 0)
    assert (stat.S_IMODE(loop.st_mode), loop.st_gid) == (0o660, 6)
    fifo = os.lstat(dest / "run/fifo")
    assert stat.S_ISFIFO(fifo.st_mode)
    assert (stat.S_IMODE(fifo.st_mode), fifo.st_uid) == (0o620, 3)


@needs_root
def test_xattrs_survive_chown_and_overlay_ones_are_dropped(tmp_path: Path) -> None:
    layer = make_tar(
        dir_("d", xattrs={"user.note": b"dir", "trusted.overlay.opaque": b"y"}),
        reg(
            "bin/ping",
            b"\x7fELF",
            mode=0o755,
            uid=1000,
            gid=1000,
            xattrs={
                "security.capability": CAP,
                "user.bin": b"\xff\x00binary",
                "trusted.overlay.redirect": b"/etc",
            },
        ),
        sym("l", "d", xattrs={"trusted.note": b"on the link"}),
    )
    dest = tmp_path / "snap"
    apply_bytes(layer, dest)
    ping = str(dest / "bin/ping")
    assert os.getxattr(ping, "security.capability") == CAP  # chown did not clear it
    assert os.getxattr(ping, "user.bin") == b"\xff\x00binary"
    assert "trusted.overlay.redirect" not in os.listxattr(ping)
    assert os.getxattr(dest / "d", "user.note") == b"dir"
    assert "trusted.overlay.opaque" not in os.listxattr(dest / "d")
    assert os.getxattr(dest / "l", "trusted.note", follow_symlinks=False) == b"on the link"


def _compress(kind: str, data: bytes) -> bytes:
    if kind == "gzip":
        return gzip.compress(data)
    if kind == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    return data


@pytest.mark.parametrize("kind", ["plain", "gzip", "zstd"])
@pytest.mark.parametrize("seekable", [True, False])
def test_plain_gzip_and_zstd_layers(tmp_path: Path, kind: str, seekable: bool) -> None:
    big = os.urandom(3 << 20)  # more than one read buffer
    layer = make_tar(reg("a/big", big), reg("a/small", b"small"), dir_("a/empty"))
    blob = _compress(kind, layer)
    stream = io.BytesIO(blob) if seekable else io.BufferedReader(Unseekable(blob))
    dest = tmp_path / "snap"
    assert apply_layer(stream, str(dest)) == len(layer)
    assert (dest / "a/big").read_bytes() == big
    assert (dest / "a/small").read_bytes() == b"small"
    assert (dest / "a/empty").is_dir()


@pytest.mark.parametrize("kind", ["plain", "gzip", "zstd"])
def test_open_layer_stream_sniffs_the_format(kind: str) -> None:
    layer = make_tar(reg("f", b"hello"))
    stream = open_layer_stream(io.BufferedReader(Unseekable(_compress(kind, layer))))
    assert stream.read() == layer


def test_multi_member_gzip_and_multi_frame_zstd(tmp_path: Path) -> None:
    layer = make_tar(reg("f", b"x" * 5000), reg("g", b"y" * 5000))
    half = len(layer) // 2
    gz = gzip.compress(layer[:half]) + gzip.compress(layer[half:])
    zc = zstandard.ZstdCompressor()
    zs = zc.compress(layer[:half]) + zc.compress(layer[half:])
    for i, blob in enumerate((gz, zs)):
        assert apply_bytes(blob, tmp_path / f"s{i}") == len(layer)
        assert (tmp_path / f"s{i}/g").read_bytes() == b"y" * 5000


@needs_root
def test_whiteouts_become_overlay_whiteouts(tmp_path: Path) -> None:
    layer = make_tar(
        dir_("etc"),
        reg("etc/.wh.gone"),
        reg(".wh.toplevel"),
        dir_("opaque"),
        reg("opaque/.wh..wh..opq"),
        reg("opaque/new", b"n"),
        reg("deep/er/.wh..wh..opq"),  # parents missing from the layer
        reg(".wh..wh.plnk"),  # aufs bookkeeping: ignored
    )
    dest = tmp_path / "snap"
    apply_bytes(layer, dest)
    for name in ("etc/gone", "toplevel"):
        st = os.lstat(dest / name)
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0, name
    assert os.getxattr(dest / "opaque", "trusted.overlay.opaque") == b"y"
    assert os.getxattr(dest / "deep/er", "trusted.overlay.opaque") == b"y"
    assert "trusted.overlay.opaque" not in os.listxattr(dest / "etc")
    assert sorted(os.listdir(dest)) == ["deep", "etc", "opaque", "toplevel"]
    assert sorted(os.listdir(dest / "opaque")) == ["new"]


@needs_root
def test_deleted_then_recreated_directory_is_opaque(tmp_path: Path) -> None:
    layer = make_tar(reg(".wh.data"), dir_("data"), reg("data/new", b"n"))
    dest = tmp_path / "snap"
    apply_bytes(layer, dest)
    assert (dest / "data").is_dir()
    assert os.getxattr(dest / "data", "trusted.overlay.opaque") == b"y"


def test_names_are_cleaned_and_long_names_work(tmp_path: Path) -> None:
    long_dir = "d" * 120
    layer = make_tar(
        reg("./dot/slash", b"1"),
        reg("/abs/olute", b"2"),
        reg("a//b/./c", b"3"),
        reg(f"{long_dir}/{'f' * 200}", b"4"),
        reg("ünïcode/名前", b"5"),
    )
    gnu = make_tar(reg(f"{long_dir}/gnu-long", b"6"), fmt=tarfile.GNU_FORMAT)
    dest = tmp_path / "snap"
    apply_bytes(layer, dest)
    assert (dest / "dot/slash").read_bytes() == b"1"
    assert (dest / "abs/olute").read_bytes() == b"2"
    assert (dest / "a/b/c").read_bytes() == b"3"
    assert (dest / long_dir / ("f" * 200)).read_bytes() == b"4"
    assert (dest / "ünïcode/名前").read_bytes() == b"5"
    apply_bytes(gnu, tmp_path / "gnu")
    assert (tmp_path / "gnu" / long_dir / "gnu-long").read_bytes() == b"6"


@needs_root
def test_root_entry_sets_the_snapshot_root(tmp_path: Path) -> None:
    layer = make_tar(dir_(".", mode=0o711, uid=5, mtime=1_000_000_000), reg("f", b""))
    dest = tmp_path / "snap"
    dest.mkdir(mode=0o700)
    apply_bytes(layer, dest)
    st = os.lstat(dest)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_mtime) == (0o711, 5, 1_000_000_000)


def test_existing_empty_dest_keeps_its_mode(tmp_path: Path) -> None:
    dest = tmp_path / "snap"
    dest.mkdir()
    os.chmod(dest, 0o751)
    apply_bytes(make_tar(reg("f", b"x")), dest)
    assert stat.S_IMODE(os.lstat(dest).st_mode) == 0o751
    assert sorted(os.listdir(tmp_path)) == ["snap"]


def test_later_entries_replace_earlier_files_and_merge_directories(tmp_path: Path) -> None:
    layer = make_tar(
        dir_("d", mode=0o700),
        reg("d/f", b"old"),
        reg("d/f", b"new"),
        sym("d/l", "x"),
        reg("d/l", b"now a file"),
        dir_("d", mode=0o755),
    )
    dest = tmp_path / "snap"
    apply_bytes(layer, dest)
    assert (dest / "d/f").read_bytes() == b"new"
    assert (dest / "d/l").read_bytes() == b"now a file"
    assert stat.S_IMODE(os.lstat(dest / "d").st_mode) == 0o755


def test_deep_trees_unpack_without_leaking_descriptors(tmp_path: Path) -> None:
    gc.collect()  # descriptors other tests left to the garbage collector
    fds = len(os.listdir("/proc/self/fd"))
    deep = "/".join(["d"] * 500)  # deeper trees trip the recursion limit of rmtree
    wide = [reg(f"w{i}/x{j}/f", b"") for i in range(30) for j in range(20)]
    layer = make_tar(reg(f"{deep}/f", b"deep"), *wide, link("hard", f"{deep}/f"))
    dest = tmp_path / "snap"
    apply_bytes(layer, dest)
    assert (dest / deep / "f").read_bytes() == b"deep"
    assert (dest / "w29/x19/f").exists()
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) == fds
    with pytest.raises(LayerError, match="name longer than 4096"):
        apply_bytes(make_tar(reg("/".join(["d"] * 2100), b"")), tmp_path / "too-deep")


def test_progress_is_reported(tmp_path: Path) -> None:
    layer = make_tar(*(reg(f"f{i}", os.urandom(300_000)) for i in range(10)))
    seen: list[int] = []
    total = apply_bytes(layer, tmp_path / "snap", on_progress=seen.append)
    assert seen and seen == sorted(seen) and seen[-1] == total == len(layer)
    assert len(seen) > 2


def test_dest_must_be_empty(tmp_path: Path) -> None:
    dest = tmp_path / "snap"
    dest.mkdir()
    (dest / "keep").write_text("mine")
    with pytest.raises(LayerError, match="not empty"):
        apply_bytes(make_tar(reg("f", b"x")), dest)
    assert os.listdir(dest) == ["keep"]
    assert sorted(os.listdir(tmp_path)) == ["snap"]


# ------------------------------------------------------------------ hostile layers


class Arena:
    """dest's parent and a canary directory outside dest, checked after each attempt."""

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path
        self.canary = tmp_path / "canary"
        self.canary.mkdir()
        (self.canary / "file").write_text("canary")
        self.parent = tmp_path / "snapshots"
        self.parent.mkdir()
        self.dest = self.parent / "snap"
        self._before = self._state()

    def _state(self) -> list[tuple[str, str]]:
        found = []
        for top, dirs, files in os.walk(self.root):
            for name in dirs + files:
                path = os.path.join(top, name)
                st = os.lstat(path)
                found.append((os.path.relpath(path, self.root), f"{st.st_mode:o} {st.st_size}"))
        return sorted(found)

    def refuse(self, layer: bytes, match: str) -> None:
        with pytest.raises(LayerError, match=match) as err:
            apply_bytes(layer, self.dest)
        assert "\n" not in str(err.value)
        assert not self.dest.exists(), "dest was created"
        assert os.listdir(self.parent) == [], "something was left beside dest"
        assert self._state() == self._before, "something outside dest changed"
        assert (self.canary / "file").read_text() == "canary"


@pytest.fixture
def arena(tmp_path: Path) -> Arena:
    return Arena(tmp_path)


def test_dotdot_is_refused(arena: Arena) -> None:
    arena.refuse(make_tar(reg("ok", b"1"), reg("../escape", b"x")), r"layer entry \.\./escape")
    arena.refuse(make_tar(reg("a/../../escape", b"x")), r"'\.\.' is not allowed")
    arena.refuse(make_tar(reg("/../etc/evil", b"x")), r"'\.\.' is not allowed")


def test_absolute_names_stay_inside(arena: Arena) -> None:
    outside = arena.canary / "abs"
    apply_bytes(make_tar(reg(str(outside), b"inside")), arena.dest)
    assert not outside.exists()
    assert (arena.dest / str(outside).lstrip("/")).read_bytes() == b"inside"


def test_write_through_a_symlink_out_is_refused(arena: Arena) -> None:
    layer = make_tar(sym("a", str(arena.canary)), reg("a/evil", b"x"))
    arena.refuse(layer, "layer entry a/evil: parent a is a symlink out of the layer")
    layer = make_tar(sym("a", "/etc"), reg("a/passwd", b"x"))
    arena.refuse(layer, "layer entry a/passwd: parent a is a symlink out of the layer")


def test_write_through_a_symlink_to_the_parent_is_refused(arena: Arena) -> None:
    layer = make_tar(dir_("d"), sym("d/up", "../.."), reg("d/up/evil", b"x"))
    arena.refuse(layer, "parent d/up is a symlink out of the layer")
    arena.refuse(make_tar(sym("a", ".."), reg("a/evil", b"x")), "parent a is a symlink out")


def test_write_through_any_symlink_is_refused(arena: Arena) -> None:
    layer = make_tar(dir_("b"), sym("a", "b"), reg("a/f", b"x"))
    arena.refuse(layer, "parent a is a symlink")
    layer = make_tar(dir_("b"), sym("a", "b"), dir_("a/sub"))
    arena.refuse(layer, "parent a is a symlink")


def test_directory_replacing_a_symlink_out_is_refused(arena: Arena) -> None:
    layer = make_tar(sym("a", str(arena.canary)), dir_("a", mode=0o777))
    arena.refuse(layer, "a directory may not replace the symlink a")


def test_nothing_replaces_a_directory(arena: Arena) -> None:
    arena.refuse(make_tar(dir_("d"), sym("d", str(arena.canary))), "replace the directory d")
    arena.refuse(make_tar(dir_("d"), reg(".wh.d")), "replace the directory d")


def test_hardlink_out_of_the_layer_is_refused(arena: Arena) -> None:
    nlink = os.stat("/etc/passwd").st_nlink
    arena.refuse(make_tar(link("x", "/etc/passwd")), "hard link target /etc/passwd is not")
    arena.refuse(make_tar(link("x", "../canary/file")), r"'\.\.' is not allowed")
    arena.refuse(make_tar(link("x", str(arena.canary / "file"))), "is not in the layer")
    assert os.stat("/etc/passwd").st_nlink == nlink


def test_hardlink_through_a_symlinked_parent_is_refused(arena: Arena) -> None:
    layer = make_tar(sym("a", "/etc"), link("x", "a/passwd"))
    arena.refuse(layer, "parent a is a symlink out of the layer")
    layer = make_tar(sym("a", str(arena.canary)), link("x", "a/file"))
    arena.refuse(layer, "parent a is a symlink out of the layer")


def test_hardlink_to_a_symlink_links_the_symlink_itself(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    canary.write_text("c")
    dest = tmp_path / "snap"
    apply_bytes(make_tar(sym("s", str(canary)), link("h", "s")), dest)
    assert stat.S_ISLNK(os.lstat(dest / "h").st_mode)
    assert os.stat(canary).st_nlink == 1


def test_file_replacing_a_symlink_does_not_follow_it(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    canary.write_text("canary")
    dest = tmp_path / "snap"
    apply_bytes(make_tar(sym("a", str(canary)), reg("a", b"mine")), dest)
    assert canary.read_text() == "canary"
    assert (dest / "a").read_bytes() == b"mine" and not (dest / "a").is_symlink()


def test_truncated_layers_are_refused(arena: Arena) -> None:
    layer = make_tar(reg("a", os.urandom(10_000)), reg("b", b"bbb"))
    arena.refuse(layer[:5000], "the layer is truncated")
    arena.refuse(layer[:512], "the layer is truncated")  # a header, then nothing
    end_of_b = 512 + 10_240 + 512 + 512  # header and data of a, then of b
    assert layer[end_of_b : end_of_b + 512] == bytes(512)
    arena.refuse(layer[:end_of_b], "the layer is truncated")  # no end-of-archive marker
    arena.refuse(b"", "the layer is truncated")
    arena.refuse(gzip.compress(layer)[:3000], "cannot read the layer")
    arena.refuse(gzip.compress(layer[:5000]), "the layer is truncated")
    zs = zstandard.ZstdCompressor().compress(layer)
    arena.refuse(zs[: len(zs) // 2], "cannot read the layer|the layer is truncated")


def test_no_decompression_thread_outlives_a_failure(tmp_path: Path) -> None:
    before = threading.active_count()
    layer = make_tar(reg("a", os.urandom(3 << 20)), reg("../x", b""))
    for i in range(3):
        with pytest.raises(LayerError):
            apply_bytes(gzip.compress(layer, compresslevel=1), tmp_path / f"s{i}")
    assert threading.active_count() == before


def test_corrupt_streams_are_refused(arena: Arena) -> None:
    layer = make_tar(reg("a", os.urandom(50_000)), reg("b", b"x" * 50_000))
    gz = bytearray(gzip.compress(layer))
    gz[len(gz) // 2] ^= 0xFF
    arena.refuse(bytes(gz), "cannot read the layer")
    gz = bytearray(gzip.compress(layer))
    gz[-8] ^= 0xFF  # crc
    arena.refuse(bytes(gz), "cannot read the layer")
    zs = bytearray(zstandard.ZstdCompressor(write_checksum=True).compress(layer))
    zs[len(zs) // 2] ^= 0xFF
    arena.refuse(bytes(zs), "cannot read the layer")
    bad = bytearray(layer)
    bad[0] ^= 0x01  # first header's checksum no longer matches
    arena.refuse(bytes(bad), "bad header checksum")
    arena.refuse(b"garbage" * 200, "not a valid tar|bad header checksum|truncated")


def test_unsupported_and_odd_entries_are_refused(arena: Arena) -> None:
    sparse = _info("s", tarfile.GNUTYPE_SPARSE)
    arena.refuse(make_tar((sparse, b""), fmt=tarfile.GNU_FORMAT), "sparse")
    arena.refuse(make_tar(reg(".wh.", b"")), "bad whiteout name")
    arena.refuse(make_tar(reg(".wh..", b"")), "bad whiteout name")
    arena.refuse(make_tar(reg(".wh.x", b""), reg(".wh.x/y", b"")), "parent .wh.x is a whiteout")
    arena.refuse(make_tar(reg("f", b""), dir_("f")), "a directory may not replace")


# ------------------------------------------------------------------ writing layers


def _tar_entries(blob: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(open_layer_stream(io.BytesIO(blob)).read())) as t:
        return t.getmembers()


def _tree(root: Path) -> dict[str, tuple[Any, ...]]:
    """Everything apply/write must preserve, per path."""
    found: dict[str, tuple[Any, ...]] = {}
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(top, name)
            st = os.lstat(path)
            xattrs = tuple(
                sorted(
                    (k, os.getxattr(path, k, follow_symlinks=False))
                    for k in os.listxattr(path, follow_symlinks=False)
                )
            )
            content: Any = None
            if stat.S_ISREG(st.st_mode):
                content = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            mtime = None if stat.S_ISLNK(st.st_mode) else int(st.st_mtime)
            found[os.path.relpath(path, root)] = (
                st.st_mode,
                st.st_uid,
                st.st_gid,
                st.st_rdev,
                mtime,
                content,
                xattrs,
            )
    return found


def _make_upper(upper: Path, mtime: int | None = None) -> None:
    """What an overlay upper directory looks like after a few changes."""
    (upper / "etc").mkdir(parents=True)
    (upper / "etc/new.conf").write_text("new\n")
    os.chmod(upper / "etc/new.conf", 0o640)
    os.mknod(upper / "etc/gone", stat.S_IFCHR, os.makedev(0, 0))
    (upper / "var/cache").mkdir(parents=True)
    os.setxattr(upper / "var/cache", "trusted.overlay.opaque", b"y")
    os.setxattr(upper / "var/cache", "trusted.overlay.origin", b"\x00junk")
    (upper / "var/cache/fresh").write_bytes(os.urandom(70_000))
    (upper / "bin").mkdir()
    (upper / "bin/tool").write_bytes(b"\x7fELF tool")
    os.chmod(upper / "bin/tool", 0o4755)
    os.chown(upper / "bin/tool", 0, 50)
    os.setxattr(upper / "bin/tool", "security.capability", CAP)
    os.link(upper / "bin/tool", upper / "bin/tool-again")
    os.symlink("tool", upper / "bin/alias")
    os.mkfifo(upper / "bin/pipe")
    os.mknod(upper / "bin/zero", stat.S_IFCHR | 0o666, os.makedev(1, 5))
    os.chown(upper / "etc/new.conf", 1000, 1001)
    if mtime is not None:
        for top, dirs, files in os.walk(upper):
            for name in dirs + files:
                os.utime(os.path.join(top, name), (mtime, mtime), follow_symlinks=False)


@needs_root
@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_write_layer_translates_an_upper_dir_and_round_trips(
    tmp_path: Path, compression: Any
) -> None:
    upper = tmp_path / "upper"
    _make_upper(upper)
    out = io.BytesIO()
    digest, diff_id, size = write_layer(str(upper), out, compression=compression)
    blob = out.getvalue()
    assert digest == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert size == len(blob)
    plain = open_layer_stream(io.BytesIO(blob)).read()
    assert diff_id == "sha256:" + hashlib.sha256(plain).hexdigest()
    if compression == "none":
        assert digest == diff_id
    else:
        assert blob[:4] != plain[:4]

    members = _tar_entries(blob)
    names = [m.name for m in members]
    assert names == [
        "bin",
        "bin/alias",
        "bin/pipe",
        "bin/tool",
        "bin/tool-again",
        "bin/zero",
        "etc",
        "etc/.wh.gone",
        "etc/new.conf",
        "var",
        "var/cache",
        "var/cache/.wh..wh..opq",
        "var/cache/fresh",
    ]
    by_name = {m.name: m for m in members}
    assert by_name["bin/tool-again"].islnk() and by_name["bin/tool-again"].linkname == "bin/tool"
    assert all(m.uname == "" and m.gname == "" for m in members)
    assert by_name["bin/tool"].pax_headers["SCHILY.xattr.security.capability"]
    assert not any("overlay" in k for m in members for k in m.pax_headers)
    assert by_name["etc/.wh.gone"].isreg() and by_name["etc/.wh.gone"].size == 0

    dest = tmp_path / "applied"
    apply_layer(io.BytesIO(blob), str(dest))
    expected = _tree(upper)
    got = _tree(dest)
    # overlay's private xattrs are not part of a layer
    for key, value in expected.items():
        if key == "var/cache":
            expected[key] = (*value[:-1], ((("trusted.overlay.opaque", b"y"),)))
    assert got == expected


@needs_root
def test_write_layer_is_reproducible_with_source_date_epoch(tmp_path: Path) -> None:
    first, second = tmp_path / "one", tmp_path / "two"
    _make_upper(first, mtime=1_700_000_000)
    _make_upper(second, mtime=1_800_000_000)
    (second / "var/cache/fresh").write_bytes((first / "var/cache/fresh").read_bytes())
    os.utime(second / "var/cache/fresh", (1_800_000_000, 1_800_000_000))
    os.utime(first / "etc", (1_600_000_000, 1_650_000_000))  # atime differs too

    def layer(upper: Path, **kw: Any) -> tuple[str, str, int]:
        return write_layer(str(upper), io.BytesIO(), **kw)

    epoch = 1_500_000_000
    for compression in ("gzip", "zstd", "none"):
        assert layer(first, compression=compression, source_date_epoch=epoch) == layer(
            second, compression=compression, source_date_epoch=epoch
        )
    assert layer(first) != layer(second)  # without it, mtimes count
    assert layer(first) == layer(first)
    # clamping: an older mtime is kept
    members = _tar_entries(_write(first, source_date_epoch=1_750_000_000))
    assert {m.mtime for m in members} == {1_650_000_000, 1_700_000_000}


def _write(src: Path, **kw: Any) -> bytes:
    out = io.BytesIO()
    write_layer(str(src), out, **kw)
    return out.getvalue()


@needs_root
def test_write_layer_refuses_redirects_and_metacopy(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    (upper / "moved").mkdir(parents=True)
    os.setxattr(upper / "moved", "trusted.overlay.redirect", b"/old")
    with pytest.raises(LayerError, match="redirect_dir=off"):
        write_layer(str(upper), io.BytesIO())
    os.removexattr(upper / "moved", "trusted.overlay.redirect")
    (upper / "moved/meta").write_bytes(b"")
    os.setxattr(upper / "moved/meta", "trusted.overlay.metacopy", b"")
    with pytest.raises(LayerError, match="metacopy=off"):
        write_layer(str(upper), io.BytesIO())


def test_write_layer_needs_a_directory(tmp_path: Path) -> None:
    with pytest.raises(LayerError, match="cannot archive"):
        write_layer(str(tmp_path / "missing"), io.BytesIO())
    with pytest.raises(LayerError, match="unknown layer compression"):
        write_layer(str(tmp_path), io.BytesIO(), compression="lz4")  # type: ignore[arg-type]


@needs_root
def test_tar_directory_keeps_devices_as_devices(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "dev").mkdir(parents=True)
    os.mknod(rootfs / "dev/weird", stat.S_IFCHR | 0o600, os.makedev(0, 0))
    (rootfs / "etc").mkdir()
    (rootfs / "etc/hostname").write_text("berth\n")
    out = io.BytesIO()
    digest, diff_id, _ = tar_directory(str(rootfs), out, compression="none")
    assert digest == diff_id
    members = {m.name: m for m in _tar_entries(out.getvalue())}
    assert members["dev/weird"].ischr()
    assert "dev/.wh.weird" not in members
    dest = tmp_path / "snap"
    apply_layer(io.BytesIO(out.getvalue()), str(dest))
    assert _tree(dest) == _tree(rootfs)


def test_tar_directory_round_trips_without_root(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "a/b").mkdir(parents=True)
    (src / "a/b/f").write_bytes(os.urandom(5000))
    (src / "a/x").write_text("x")
    os.symlink("b/f", src / "a/link")
    os.link(src / "a/x", src / "a/x2")
    os.chmod(src / "a/x", 0o600)
    out = io.BytesIO()
    tar_directory(str(src), out, compression="zstd", source_date_epoch=1)
    dest = tmp_path / "dest"
    apply_layer(io.BytesIO(out.getvalue()), str(dest))
    assert {k: v[:4] + v[5:] for k, v in _tree(dest).items()} == {
        k: v[:4] + v[5:] for k, v in _tree(src).items()
    }
    assert all(v[4] in (None, 1) for v in _tree(dest).values())


def test_parity_with_gnu_tar(tmp_path: Path) -> None:
    """A layer GNU tar wrote unpacks to what GNU tar itself unpacks."""
    import shutil
    import subprocess

    if not shutil.which("tar"):
        pytest.skip("GNU tar is not installed")
    src = tmp_path / "src"
    (src / "usr/share/doc").mkdir(parents=True)
    (src / "usr/share/doc/readme").write_text("r" * 3000)
    (src / ("long-" * 30)).write_text("long name")
    os.symlink("share/doc", src / "usr/docs")
    os.link(src / "usr/share/doc/readme", src / "usr/readme")
    os.chmod(src / "usr/share", 0o700)
    for fmt in ("gnu", "pax", "ustar", "v7"):
        if fmt in ("ustar", "v7"):
            os.rename(src / ("long-" * 30), tmp_path / "aside")
        blob = tmp_path / f"{fmt}.tar"
        subprocess.run(["tar", f"--format={fmt}", "-C", src, "-cf", blob, "."], check=True)
        ref = tmp_path / f"ref-{fmt}"
        ref.mkdir()
        subprocess.run(["tar", "-C", ref, "-xf", blob], check=True)
        ours = tmp_path / f"ours-{fmt}"
        with open(blob, "rb") as f:
            apply_layer(f, str(ours))
        assert _tree(ours) == _tree(ref), fmt
        if fmt in ("ustar", "v7"):
            os.rename(tmp_path / "aside", src / ("long-" * 30))


def test_unpack_errors_name_the_entry(tmp_path: Path) -> None:
    # a name component longer than any filesystem allows
    layer = make_tar(reg("x" * 300, b""))
    with pytest.raises(LayerError, match=r"layer entry x+: file name too long"):
        apply_bytes(layer, tmp_path / "snap")
