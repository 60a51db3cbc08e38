"""A real, tiny root filesystem from Debian's busybox-static, as Docker's first
busybox image was made: the static binary, one link per applet, and the few files
in /etc that programs expect (root and nobody in passwd and group)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess

from berth.errors import NotFound

BUSYBOX = "/bin/busybox"
LAYOUT = 2  # bumped when build() changes, so an old cached rootfs is not reused
DEFAULT_CACHE = os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "berth"
)

PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\ntty:x:5:\nnogroup:x:65534:\nnobody:x:65534:\n"
SKELETON_DIRS = (
    "bin",
    "sbin",
    "usr/bin",
    "usr/sbin",
    "etc",
    "proc",
    "sys",
    "dev",
    "tmp",
    "root",
    "var",
    "run",
)


def _busybox_digest() -> str:
    try:
        with open(BUSYBOX, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()[:16]
    except FileNotFoundError:
        raise NotFound(
            f"{BUSYBOX} is missing: install it with 'apt-get install busybox-static'"
        ) from None


def build(dest: str) -> None:
    """Write a busybox root filesystem into the empty or missing directory ``dest``."""
    for d in SKELETON_DIRS:
        os.makedirs(os.path.join(dest, d), exist_ok=True)
    os.chmod(os.path.join(dest, "tmp"), 0o1777)
    shutil.copy2(BUSYBOX, os.path.join(dest, "bin/busybox"))
    applets = subprocess.run(
        [BUSYBOX, "--list-full"], capture_output=True, text=True, check=True
    ).stdout.split()
    for applet in applets:
        link = os.path.join(dest, applet)
        if applet == "bin/busybox" or os.path.lexists(link):
            continue
        os.makedirs(os.path.dirname(link), exist_ok=True)
        # relative, so the link works in the rootfs wherever it is: sbin/ip -> ../bin/busybox
        depth = applet.count("/")
        os.symlink("busybox" if applet.startswith("bin/") else "../" * depth + "bin/busybox", link)
    for name, text in (("etc/passwd", PASSWD), ("etc/group", GROUP), ("etc/hostname", "berth\n")):
        with open(os.path.join(dest, name), "w") as f:
            f.write(text)


def cached(cache_dir: str = DEFAULT_CACHE) -> str:
    """A busybox rootfs built once per busybox binary and kept under ``cache_dir``.

    Treat it as read-only: copy it (``copy_to``) before a container writes to it.
    """
    path = os.path.join(cache_dir, f"busybox-rootfs-{LAYOUT}-{_busybox_digest()}")
    if os.path.isdir(path):
        return path
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    build(tmp)
    try:
        os.rename(tmp, path)
    except OSError:  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def copy_to(dest: str, cache_dir: str = DEFAULT_CACHE) -> str:
    """A private, writable copy of the cached rootfs at ``dest``."""
    subprocess.run(["cp", "-a", cached(cache_dir), dest], check=True)
    return dest
