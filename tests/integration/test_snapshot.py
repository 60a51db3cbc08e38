"""The overlay snapshotter on the real kernel: chains, commits, views, removal."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from berth.errors import Conflict, NotFound
from berth.images.snapshot import Mount, Snapshotter
from berth.linux import syscalls as sc

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root and the real kernel")


def in_private_namespace(mounts: list[Mount], target: Path, script) -> dict:
    """Mount in a forked child's own mount namespace, run ``script(target)``, report."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_fd)
            sc.unshare(sc.CLONE_NEWNS)
            sc.mount(None, "/", None, sc.MS_PRIVATE | sc.MS_REC)
            for mount in mounts:
                mount.mount(str(target))
            result = script(target)
            os.write(write_fd, json.dumps(result).encode())
            os._exit(0)
        except BaseException as exc:
            os.write(write_fd, json.dumps({"error": repr(exc)}).encode())
            os._exit(1)
    os.close(write_fd)
    with os.fdopen(read_fd) as f:
        data = f.read()
    os.waitpid(pid, 0)
    result = json.loads(data)
    assert "error" not in result, result
    return result


def _write(snapshotter: Snapshotter, key: str, files: dict[str, str]) -> None:
    root = Path(snapshotter.fs_path(key))
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_chain_of_layers_and_a_container(tmp_path: Path) -> None:
    snaps = Snapshotter(str(tmp_path / "snap"))
    snaps.prepare("extract-1")
    _write(snaps, "extract-1", {"etc/os": "base\n", "bin/tool": "v1\n"})
    snaps.commit("sha256:layer1", "extract-1")
    snaps.prepare("extract-2", "sha256:layer1")
    _write(snaps, "extract-2", {"bin/tool": "v2\n"})
    os.mkdir(os.path.join(snaps.fs_path("extract-2"), "etc"))
    # an overlay whiteout: layer 2 deletes etc/os
    os.mknod(os.path.join(snaps.fs_path("extract-2"), "etc/os"), 0o020000, os.makedev(0, 0))
    snaps.commit("sha256:layer2", "extract-2")
    mounts = snaps.prepare("container-a", "sha256:layer2")
    assert mounts[0].type == "overlay"
    target = tmp_path / "rootfs"
    target.mkdir()

    def look(root: Path) -> dict:
        (root / "new").write_text("written by the container\n")
        return {"tool": (root / "bin/tool").read_text(), "os": (root / "etc/os").exists()}

    assert in_private_namespace(mounts, target, look) == {"tool": "v2\n", "os": False}
    # the write went to the container's own snapshot, not to a shared layer
    assert (Path(snaps.fs_path("container-a")) / "new").exists()
    assert not (Path(snaps.fs_path("sha256:layer2")) / "new").exists()
    assert not list(target.iterdir()), "the mount leaked into the test's namespace"
    # two containers share the same committed layers
    snaps.prepare("container-b", "sha256:layer2")
    assert {s.key for s in snaps.walk()} == {
        "sha256:layer1", "sha256:layer2", "container-a", "container-b"
    }  # fmt: skip


def test_views_are_read_only(tmp_path: Path) -> None:
    snaps = Snapshotter(str(tmp_path / "snap"))
    snaps.prepare("x")
    _write(snaps, "x", {"file": "content\n"})
    snaps.commit("base", "x")
    mounts = snaps.view("look", "base")
    target = tmp_path / "view"
    target.mkdir()

    def attempt(root: Path) -> dict:
        try:
            (root / "file").write_text("changed")
            return {"wrote": True}
        except OSError as exc:
            return {"wrote": False, "errno": exc.errno}

    assert in_private_namespace(mounts, target, attempt) == {"wrote": False, "errno": 30}


def test_errors(tmp_path: Path) -> None:
    snaps = Snapshotter(str(tmp_path / "snap"))
    snaps.prepare("a")
    with pytest.raises(Conflict, match="already exists"):
        snaps.prepare("a")
    with pytest.raises(Conflict, match="not committed"):
        snaps.prepare("b", "a")
    with pytest.raises(NotFound):
        snaps.prepare("c", "missing")
    snaps.commit("base", "a")
    snaps.prepare("child", "base")
    with pytest.raises(Conflict, match="parent of other snapshots"):
        snaps.remove("base")
    snaps.remove("child")
    snaps.remove("base")
    assert list(snaps.walk()) == []
    assert os.listdir(tmp_path / "snap" / "snapshots") == []


def test_metadata_survives_a_new_snapshotter(tmp_path: Path) -> None:
    snaps = Snapshotter(str(tmp_path / "snap"))
    snaps.prepare("a", labels={"berth.image": "busybox"})
    snaps.commit("base", "a")
    snaps.close()
    again = Snapshotter(str(tmp_path / "snap"))
    info = again.stat("base")
    assert info.kind == "committed" and info.labels == {"berth.image": "busybox"}
    size, inodes = again.usage("base")
    assert inodes == 0 and size == 0
