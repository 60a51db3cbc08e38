"""Layers against a real overlayfs: unpacked whiteouts hide lower files, and an upper
directory's changes written by write_layer and unpacked again give the same merged view.

Every mount happens in a child process in its own mount namespace with private
propagation (``unshare --mount --propagation private``); the namespace, and with it every
mount, ends with that child, so the pytest process's namespace is never touched.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from berth.images.layer import apply_layer, open_layer_stream, write_layer


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root: mounts overlayfs"
    with open("/proc/filesystems") as f:
        if "overlay" not in f.read():
            return "overlayfs is not available"
    return None


SKIP = _skip_reason()
pytestmark = [pytest.mark.root, pytest.mark.skipif(SKIP is not None, reason=SKIP or "")]
OVERLAY_OPTS = "redirect_dir=off,metacopy=off"

# Prints the tree under argv[1] as JSON: path -> [type, content digest or link target].
WALK = r"""
import hashlib, json, os, stat, sys
root = sys.argv[1]
tree = {}
for top, dirs, files in os.walk(root):
    for name in dirs + files:
        path = os.path.join(top, name)
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode):
            with open(path, "rb") as f:
                what = ["file", hashlib.sha256(f.read()).hexdigest()]
        elif stat.S_ISLNK(st.st_mode):
            what = ["link", os.readlink(path)]
        elif stat.S_ISDIR(st.st_mode):
            what = ["dir", oct(stat.S_IMODE(st.st_mode))]
        else:
            what = ["other", st.st_rdev]
        tree[os.path.relpath(path, root)] = what
print(json.dumps(tree))
"""


def in_private_mount_ns(script: str) -> str:
    """Run ``script`` (sh) in a new mount namespace with private propagation."""
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-euc", script],
        capture_output=True,
        text=True,
        env={**os.environ, "PY": sys.executable, "WALK": WALK},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def merged_view(lowers: list[Path], mnt: Path) -> dict[str, Any]:
    """The tree a read-only overlay of ``lowers`` (top first) shows."""
    mnt.mkdir(exist_ok=True)
    if len(lowers) == 1:  # overlayfs wants two lower layers when there is no upper
        empty = mnt.parent / "empty-lower"
        empty.mkdir(exist_ok=True)
        lowers = [*lowers, empty]
    lowerdir = ":".join(str(p) for p in lowers)
    out = in_private_mount_ns(
        f"mount -t overlay overlay -o lowerdir={lowerdir},{OVERLAY_OPTS} {mnt}\n"
        f'"$PY" -c "$WALK" {mnt}\n'
        f"umount {mnt}\n"
    )
    return dict(json.loads(out))


def make_tar(*entries: tuple[str, bytes | None]) -> bytes:
    """Entries: (name, data) for files, (name/, None) for directories."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                t.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                t.addfile(info, io.BytesIO(data))
    return out.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


LAYER1 = make_tar(
    ("etc/", None),
    ("etc/keep", b"keep\n"),
    ("etc/gone", b"gone\n"),
    ("cache/", None),
    ("cache/old", b"old\n"),
    ("cache/sub/", None),
    ("cache/sub/older", b"older\n"),
)


def test_whiteouts_and_opaque_dirs_work_in_a_real_overlay(tmp_path: Path) -> None:
    layer2 = make_tar(
        ("etc/", None),
        ("etc/.wh.gone", b""),
        ("etc/added", b"added\n"),
        ("cache/", None),
        ("cache/.wh..wh..opq", b""),
        ("cache/new", b"new\n"),
    )
    l1, l2 = tmp_path / "l1", tmp_path / "l2"
    apply_layer(io.BytesIO(LAYER1), str(l1))
    apply_layer(io.BytesIO(layer2), str(l2))

    view = merged_view([l2, l1], tmp_path / "mnt")
    assert view == {
        "etc": ["dir", "0o755"],
        "etc/keep": ["file", sha(b"keep\n")],
        "etc/added": ["file", sha(b"added\n")],
        "cache": ["dir", "0o755"],
        "cache/new": ["file", sha(b"new\n")],
    }
    # without the top layer everything of the bottom one is there
    assert "etc/gone" in merged_view([l1], tmp_path / "mnt")


def _change_through_overlay(lower: Path, upper: Path, work: Path, mnt: Path, touch: str) -> dict:
    """Mount lower+upper, make the usual kinds of change, return the merged view."""
    for d in (upper, work, mnt):
        d.mkdir()
    out = in_private_mount_ns(
        f"mount -t overlay overlay -o lowerdir={lower},upperdir={upper},workdir={work},"
        f"{OVERLAY_OPTS} {mnt}\n"
        f"cd {mnt}\n"
        "printf 'added\\n' > etc/added\n"  # add
        "printf 'more\\n' >> etc/keep\n"  # modify (copy-up)
        "rm etc/gone\n"  # delete -> whiteout
        "rm -r cache && mkdir cache && printf 'fresh\\n' > cache/fresh\n"  # -> opaque dir
        "mkdir -p opt/tool && ln etc/added opt/tool/hardlink\n"  # hard link in one layer
        "ln -s ../etc/keep opt/keep-link\n"
        f"find {mnt} -exec touch -h -d '{touch}' {{}} +\n"
        "cd /\n"
        f'"$PY" -c "$WALK" {mnt}\n'
        f"umount {mnt}\n"
    )
    return dict(json.loads(out))


def test_write_layer_of_a_real_upper_dir_round_trips(tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    apply_layer(io.BytesIO(LAYER1), str(lower))
    upper = tmp_path / "upper"
    expected = _change_through_overlay(
        lower, upper, tmp_path / "work", tmp_path / "mnt", "2024-01-01 00:00:00"
    )
    assert "etc/gone" not in expected and "cache/old" not in expected

    blob = io.BytesIO()
    digest, diff_id, size = write_layer(str(upper), blob, compression="gzip")
    assert size == len(blob.getvalue())
    assert digest == "sha256:" + sha(blob.getvalue())
    plain = open_layer_stream(io.BytesIO(blob.getvalue())).read()
    assert diff_id == "sha256:" + sha(plain)
    with tarfile.open(fileobj=io.BytesIO(plain)) as t:
        names = {m.name: m for m in t.getmembers()}
    assert "etc/.wh.gone" in names
    assert "cache/.wh..wh..opq" in names
    assert names["opt/tool/hardlink"].islnk() or names["etc/added"].islnk()

    applied = tmp_path / "applied"
    apply_layer(io.BytesIO(blob.getvalue()), str(applied))
    gone = os.lstat(applied / "etc/gone")
    assert stat.S_ISCHR(gone.st_mode) and gone.st_rdev == 0
    assert os.getxattr(applied / "cache", "trusted.overlay.opaque") == b"y"
    assert os.lstat(applied / "opt/tool/hardlink").st_ino == os.lstat(applied / "etc/added").st_ino

    # the unpacked layer over the old lower shows exactly what the live overlay showed
    assert merged_view([applied, lower], tmp_path / "mnt") == expected


def test_the_same_changes_twice_give_the_same_digests(tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    apply_layer(io.BytesIO(LAYER1), str(lower))
    results = []
    for i, when in enumerate(("2024-01-01 00:00:00", "2025-06-30 12:34:56")):
        upper = tmp_path / f"upper{i}"
        _change_through_overlay(lower, upper, tmp_path / f"work{i}", tmp_path / f"mnt{i}", when)
        for compression in ("gzip", "zstd"):
            results.append(
                (
                    compression,
                    write_layer(
                        str(upper),
                        io.BytesIO(),
                        compression=compression,
                        source_date_epoch=1_700_000_000,
                    ),
                )
            )
    assert results[0] == results[2]
    assert results[1] == results[3]
