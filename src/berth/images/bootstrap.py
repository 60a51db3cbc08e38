"""Base images made locally, as Docker's first official images were made.

Docker Hub is out of reach here, so the two base images every course starts from are
built on this machine: ``busybox`` from Debian's busybox-static, and ``debian`` with
debootstrap, slimmed the way the official ``-slim`` images are (debuerreotype's
minimizing config and slimify lists). Both are one gzip layer written with a fixed
SOURCE_DATE_EPOCH, so the same inputs give the same diff ID and image ID.

A cold Debian bootstrap downloads and installs ~90 packages (about half a minute on a
near mirror); its layer is cached under ``cache_dir`` keyed by suite, mirror,
architecture and recipe, so later calls only copy the cached layer into the store.
"""

from __future__ import annotations

import contextlib
import email.utils
import fcntl
import fnmatch
import glob
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from typing import IO, TYPE_CHECKING, Any, BinaryIO, cast

from berth.errors import InvalidArgument, NotFound, SystemFailure
from berth.images import busybox_rootfs
from berth.images import manifest as mf
from berth.images.content import BlobFile
from berth.images.store import Image, ImageStore

if TYPE_CHECKING:
    pass

__all__ = ["DEFAULT_MIRROR", "bootstrap_busybox", "bootstrap_debian"]

DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_CACHE = busybox_rootfs.DEFAULT_CACHE
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Bump when the Debian recipe changes, so layers cached by an older recipe are not reused.
RECIPE_VERSION = 2
_SUITE_RE = re.compile(r"[a-z][a-z0-9.-]*")
_NO_UPDATES_SUITES = frozenset({"sid", "unstable", "experimental", "rc-buggy"})
_CHUNK = 1 << 20

# What the official slim images drop (debuerreotype's .slimify-excludes) and keep of it.
SLIM_EXCLUDES = (
    "/usr/share/doc/*",
    "/usr/share/groff/*",
    "/usr/share/info/*",
    "/usr/share/linda/*",
    "/usr/share/lintian/overrides/*",
    "/usr/share/locale/*",
    "/usr/share/man/*",
)
SLIM_INCLUDES = (
    "/usr/share/doc/*/copyright",  # licences must travel with the binaries
    "/usr/share/doc/kde/HTML/C/*",
    "/usr/share/gnome/help/*/C/*",
    "/usr/share/locale/all_languages",
    "/usr/share/locale/currency/*",
    "/usr/share/locale/l10n/*",
    "/usr/share/locale/languages",
    "/usr/share/locale/locale.alias",
    "/usr/share/omf/*/*-C.emf",
)
# Files that hold host details, timestamps or caches, not part of an image.
_DROP_FILES = (
    "var/log/dpkg.log",
    "var/log/bootstrap.log",
    "var/log/alternatives.log",
    "var/log/apt/history.log",
    "var/log/apt/term.log",
    "var/cache/ldconfig/aux-cache",
    "run/mount/utab",
    "run/motd.dynamic",
    "etc/apt/apt.conf.d/01autoremove-kernels",
)
# Emptied, as debuerreotype-tar leaves them: apt recreates its caches, the engine
# mounts /dev, /proc and /sys.
_EMPTY_DIRS = ("var/cache/apt", "var/lib/apt/lists", "dev", "proc", "sys")

_APT_CLEAN = (
    '"rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb'
    ' /var/cache/apt/*.bin || true";'
)
# The configuration the official images carry so that later installs stay lean.
_MINIMIZING_CONFIG: dict[str, tuple[int, str]] = {
    "usr/sbin/policy-rc.d": (
        0o755,
        "#!/bin/sh\n\n# Installing a package in an image build must not start its service.\n\n"
        "exit 101\n",
    ),
    "etc/dpkg/dpkg.cfg.d/docker-apt-speedup": (
        0o644,
        "# An image build that dies is rebuilt from scratch: skip dpkg's fsyncs.\n\n"
        "force-unsafe-io\n",
    ),
    "etc/apt/apt.conf.d/docker-autoremove-suggests": (
        0o644,
        "# Let 'apt-get purge --auto-remove' remove what it installed even when some other\n"
        "# package merely suggests it.\n"
        'Apt::AutoRemove::SuggestsImportant "false";\n',
    ),
    "etc/apt/apt.conf.d/docker-clean": (
        0o644,
        "# Every RUN is a layer: keep downloaded packages and apt's caches out of them.\n"
        f"DPkg::Post-Invoke {{ {_APT_CLEAN} }};\n"
        f"APT::Update::Post-Invoke {{ {_APT_CLEAN} }};\n\n"
        'Dir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\n',
    ),
    "etc/apt/apt.conf.d/docker-gzip-indexes": (
        0o644,
        "# Keep the package lists compressed on disk (a third of the size in a layer).\n"
        'Acquire::GzipIndexes "true";\n',
    ),
    "etc/apt/apt.conf.d/docker-no-languages": (
        0o644,
        "# Images rarely need translated package descriptions: do not download them.\n"
        'Acquire::Languages "none";\n',
    ),
}

Progress = Callable[[str], None]


def _timestamp(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _one_layer_image(
    store: ImageStore,
    *,
    layer: tuple[str, str, int],
    config_section: dict[str, Any],
    history: list[dict[str, Any]],
    epoch: int,
    name: str | None,
) -> Image:
    """Record and unpack an image of one layer already in the content store."""
    digest, diff_id, size = layer
    platform = mf.Platform.host()
    created = _timestamp(epoch)
    config: dict[str, Any] = {"architecture": platform.architecture}
    if platform.variant:
        config["variant"] = platform.variant
    config.update(
        {
            "config": config_section,
            "created": created,
            "history": [{"created": created, **entry} for entry in history],
            "os": platform.os,
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
    )
    layers = [mf.Descriptor(mf.OCI_LAYER_GZIP, digest, size)]
    return store.create_image(config, layers, [name] if name else [])


def _tar_into_store(store: ImageStore, rootfs: str, epoch: int) -> tuple[str, str, int]:
    """A directory as one gzip layer blob in the content store: (digest, diff_id, size)."""
    from berth.images.layer import tar_directory

    with store.content.writer() as writer:
        digest, diff_id, size = tar_directory(
            rootfs, cast(BinaryIO, BlobFile(writer)), compression="gzip", source_date_epoch=epoch
        )
        stored = writer.commit()
    if stored != digest:
        raise SystemFailure(f"layer of {rootfs} was stored as {stored}, not {digest}: try again")
    return digest, diff_id, size


# --------------------------------------------------------------------------- busybox


def _normalize_modes(root: str) -> None:
    """Modes that do not depend on the caller's umask: the same tree, the same layer."""
    for top, dirs, files in os.walk(root):
        for d in dirs:
            path = os.path.join(top, d)
            if not os.path.islink(path):
                os.chmod(path, 0o1777 if os.path.relpath(path, root) == "tmp" else 0o755)
        for f in files:
            path = os.path.join(top, f)
            if not os.path.islink(path):
                mode = os.lstat(path).st_mode
                os.chmod(path, 0o755 if mode & stat.S_IXUSR else 0o644)


def _busybox_epoch(source_date_epoch: int | None) -> int:
    if source_date_epoch is not None:
        return source_date_epoch
    env = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if env:
        try:
            return int(env)
        except ValueError:
            raise InvalidArgument(
                f"invalid SOURCE_DATE_EPOCH {env!r}: give seconds since 1970"
            ) from None
    try:
        # the package's build time, as dpkg unpacked it: fixed for a given binary
        return int(os.stat(busybox_rootfs.BUSYBOX).st_mtime)
    except FileNotFoundError:
        raise NotFound(
            f"{busybox_rootfs.BUSYBOX} is missing: install it with 'apt-get install busybox-static'"
        ) from None


def bootstrap_busybox(
    store: ImageStore,
    name: str | None = "busybox:latest",
    *,
    source_date_epoch: int | None = None,
) -> Image:
    """A busybox image from this machine's busybox-static: one layer, ``Cmd ["sh"]``.

    The layer's times are clamped to ``source_date_epoch`` (default: $SOURCE_DATE_EPOCH,
    else the binary's mtime), so the image ID depends only on the busybox binary.
    """
    epoch = _busybox_epoch(source_date_epoch)
    with open(busybox_rootfs.BUSYBOX, "rb") as f:
        binary = hashlib.file_digest(f, "sha256").hexdigest()
    work = tempfile.mkdtemp(prefix=".bootstrap-busybox-", dir=store.root)
    try:
        rootfs = os.path.join(work, "rootfs")
        busybox_rootfs.build(rootfs)
        _normalize_modes(rootfs)
        layer = _tar_into_store(store, rootfs, epoch)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return _one_layer_image(
        store,
        layer=layer,
        config_section={"Env": [PATH_ENV], "Cmd": ["sh"]},
        history=[
            {"created_by": f"berth bootstrap busybox: /bin/busybox sha256:{binary}"},
            {"created_by": 'CMD ["sh"]', "empty_layer": True},
        ],
        epoch=epoch,
        name=name,
    )


# --------------------------------------------------------------------------- debian


def _host_mirror() -> str:
    """The Debian mirror this machine's apt uses (one-line or deb822 sources)."""
    paths = ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*"))]
    for path in paths:
        try:
            with open(path) as f:
                text = f.read()
        except OSError:
            continue
        for line in text.splitlines():
            words = line.split("#", 1)[0].split()
            if path.endswith(".sources"):
                urls = words[1:] if words[:1] == ["URIs:"] else []
            else:
                urls = [w for w in words[1:] if "://" in w][:1] if words[:1] == ["deb"] else []
            for url in urls:
                if url.rstrip("/").rsplit("/", 1)[-1] == "debian":
                    return url.rstrip("/")
    return DEFAULT_MIRROR


def _dpkg_arch() -> str:
    try:
        out = subprocess.run(
            ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        out = ""
    return out or mf.Platform.host().architecture


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    """One bootstrap per cache key at a time; the others wait and then reuse its layer."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _mounts_under(root: str) -> list[str]:
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            target = line.split()[4].encode().decode("unicode_escape")
            if target == root or target.startswith(root + "/"):
                found.append(target)
    return sorted(found, key=len, reverse=True)


def _remove_work(path: str) -> None:
    """Remove a bootstrap's work folder, first detaching what debootstrap left mounted."""
    from berth.linux import syscalls as sc

    for target in _mounts_under(os.path.realpath(path)):
        with contextlib.suppress(OSError):
            sc.umount2(target, sc.MNT_DETACH)
    # --one-file-system: never delete through a mount that refused to go away
    subprocess.run(["rm", "-rf", "--one-file-system", "--", path], check=False)


def _release_epoch(rootfs: str) -> int | None:
    """The archive's Release date: the image's creation time, as debuerreotype uses."""
    for path in sorted(glob.glob(os.path.join(rootfs, "var/lib/apt/lists/*_Release"))):
        with open(path, errors="replace") as f:
            for line in f:
                if line.startswith("Date:"):
                    with contextlib.suppress(TypeError, ValueError):
                        return int(email.utils.parsedate_to_datetime(line[5:].strip()).timestamp())
                if not line.strip():
                    break
    return None


def _write(rootfs: str, rel: str, text: str, mode: int = 0o644) -> None:
    path = os.path.join(rootfs, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.islink(path):
        os.unlink(path)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def _resolves(rootfs: str, path: str) -> bool:
    """Whether symlink ``path`` leads to something *inside* ``rootfs`` (as in a chroot:
    an absolute target starts at ``rootfs``, never at the host's root)."""
    pending = [p for p in os.path.relpath(path, rootfs).split("/") if p]
    done: list[str] = []
    hops = 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        here = os.path.join(rootfs, *done, part)
        try:
            st = os.lstat(here)
        except OSError:
            return False
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > 40:
                return False
            target = os.readlink(here)
            if target.startswith("/"):
                done = []
            pending = [p for p in target.split("/") if p] + pending
            continue
        done.append(part)
    return True


def _slimify(rootfs: str) -> None:
    """Drop docs, man pages and translations (keeping copyrights and the C locale's files)
    and leave dpkg configured to keep dropping them."""
    for pattern in SLIM_EXCLUDES:
        top = os.path.join(rootfs, os.path.dirname(pattern).lstrip("/"))
        if not os.path.isdir(top):
            continue
        for here, _dirs, files in os.walk(top):
            for name in files:
                path = os.path.join(here, name)
                inside = "/" + os.path.relpath(path, rootfs)
                if not fnmatch.fnmatchcase(inside, pattern) or os.path.islink(path):
                    continue
                if any(fnmatch.fnmatchcase(inside, keep) for keep in SLIM_INCLUDES):
                    continue
                os.unlink(path)
        # then dangling symlinks and empty directories, until none is left
        changed = True
        while changed:
            changed = False
            for here, dirs, files in os.walk(top, topdown=False):
                for name in files + dirs:
                    path = os.path.join(here, name)
                    if os.path.islink(path):
                        if not _resolves(rootfs, path):
                            os.unlink(path)
                            changed = True
                    elif os.path.isdir(path) and not os.listdir(path):
                        os.rmdir(path)
                        changed = True
    lines = [
        "# The slim variant of the Debian base image: files that containers rarely need",
        "# are left out, and this keeps later package installs from bringing them back.",
        "",
    ]
    lines += [f"path-exclude {pattern}" for pattern in SLIM_EXCLUDES]
    lines += [""] + [f"path-include {pattern}" for pattern in SLIM_INCLUDES]
    _write(rootfs, "etc/dpkg/dpkg.cfg.d/docker", "\n".join(lines) + "\n")


def _sources(suite: str, mirror: str) -> str:
    """deb822 sources as the official images have them: the suite, its updates, security."""
    key = "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    suites = suite if suite in _NO_UPDATES_SUITES else f"{suite} {suite}-updates"
    text = f"Types: deb\nURIs: {mirror}\nSuites: {suites}\nComponents: main\n{key}"
    if suite not in _NO_UPDATES_SUITES and mirror.endswith("/debian"):
        text += (
            f"\nTypes: deb\nURIs: {mirror}-security\nSuites: {suite}-security\n"
            f"Components: main\n{key}"
        )
    return text


def _fix_shadow(rootfs: str, epoch: int) -> None:
    """Password-change dates no later than the epoch (they are the build day otherwise)."""
    days = epoch // 86400
    for rel in ("etc/shadow", "etc/shadow-"):
        path = os.path.join(rootfs, rel)
        if not os.path.isfile(path):
            continue
        with open(path) as f:
            lines = f.read().splitlines()
        out = []
        for line in lines:
            fields = line.split(":")
            if len(fields) > 2 and fields[2].isdigit() and int(fields[2]) > days:
                fields[2] = str(days)
            out.append(":".join(fields))
        with open(path, "r+") as f:  # in place: keep the file's mode and owner
            f.write("\n".join(out) + "\n")
            f.truncate()


def _finish_rootfs(rootfs: str, suite: str, mirror: str, epoch: int) -> None:
    """Turn a debootstrap tree into what the official slim images ship."""
    for rel, (mode, text) in _MINIMIZING_CONFIG.items():
        _write(rootfs, rel, text, mode)
    _slimify(rootfs)
    subprocess.run(  # everything minbase brought is a dependency: 'apt-mark showmanual' empty
        ["chroot", rootfs, "apt-mark", "auto", ".*"], capture_output=True, check=False
    )
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(rootfs, "etc/apt/sources.list"))
    _write(rootfs, "etc/apt/sources.list.d/debian.sources", _sources(suite, mirror))
    for rel in _DROP_FILES:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(rootfs, rel))
    with contextlib.suppress(OSError):
        os.rmdir(os.path.join(rootfs, "run/mount"))
    for rel in _EMPTY_DIRS:
        top = os.path.join(rootfs, rel)
        if os.path.isdir(top):
            for name in os.listdir(top):
                path = os.path.join(top, name)
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.unlink(path)
    # debootstrap copied the host's: the engine provides both at run time
    _write(rootfs, "etc/hostname", "berth\n")
    _write(rootfs, "etc/resolv.conf", "# provided by the container engine at run time\n")
    _fix_shadow(rootfs, epoch)


def _build_debian(
    suite: str,
    mirror: str,
    arch: str,
    include: Sequence[str],
    cache_dir: str,
    layer_path: str,
    progress: Progress | None,
) -> dict[str, Any]:
    """debootstrap, slim, and write the layer to ``layer_path``; returns its metadata."""
    if shutil.which("debootstrap") is None:
        raise NotFound(
            "debootstrap is not installed: install it with 'apt-get install debootstrap'"
        )
    started = time.monotonic()
    work = tempfile.mkdtemp(prefix=".debootstrap-", dir=cache_dir)
    try:
        rootfs = os.path.join(work, "rootfs")
        # In a private mount namespace: the /proc and /sys debootstrap mounts in the
        # target vanish with it, and can never be left behind in the host's.
        command = ["unshare", "--mount", "--propagation", "private"]
        command += ["debootstrap", "--variant=minbase", f"--arch={arch}"]
        if include:
            command.append("--include=" + ",".join(include))
        command += [suite, rootfs, mirror]
        if progress:
            progress(f"running {' '.join(command)}")
        proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("E:", "W:"))]
            last = (lines or proc.stdout.strip().splitlines() or ["no output"])[-1]
            raise SystemFailure(
                f"debootstrap of {suite} from {mirror} failed: {last.strip()}: check the suite"
                " name and that the mirror is reachable"
            )
        seconds_debootstrap = time.monotonic() - started
        epoch = _release_epoch(rootfs) or int(time.time())
        _finish_rootfs(rootfs, suite, mirror, epoch)
        from berth.images.layer import tar_directory

        temp = f"{layer_path}.tmp-{os.getpid()}"
        try:
            with open(temp, "wb") as f:
                digest, diff_id, size = tar_directory(
                    rootfs, cast(BinaryIO, f), compression="gzip", source_date_epoch=epoch
                )
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, layer_path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        unpacked = sum(
            os.lstat(os.path.join(here, n)).st_size
            for here, dirs, files in os.walk(rootfs)
            for n in files + dirs
        )
    finally:
        _remove_work(work)
    meta = {
        "recipe": RECIPE_VERSION,
        "suite": suite,
        "mirror": mirror,
        "arch": arch,
        "include": list(include),
        "epoch": epoch,
        "digest": digest,
        "diff_id": diff_id,
        "size": size,
        "unpacked_size": unpacked,
        "built": int(time.time()),
        "seconds_debootstrap": round(seconds_debootstrap, 1),
        "seconds_total": round(time.monotonic() - started, 1),
    }
    if progress:
        progress(
            f"bootstrapped debian {suite} in {meta['seconds_total']} s: layer {size} bytes,"
            f" {unpacked} bytes unpacked"
        )
    return meta


def _read_meta(meta_path: str, layer_path: str) -> dict[str, Any] | None:
    try:
        with open(meta_path) as f:
            meta = json.load(f)
        if os.path.getsize(layer_path) != meta["size"]:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return meta if isinstance(meta, dict) and meta.get("recipe") == RECIPE_VERSION else None


def _copy_layer(store: ImageStore, layer_path: str, digest: str, size: int) -> None:
    """The cached layer into the content store, verified against its recorded digest."""
    if store.content.has(digest):
        return
    with open(layer_path, "rb") as f, store.content.writer(digest, size) as writer:
        while chunk := f.read(_CHUNK):
            writer.write(chunk)
        writer.commit()


def bootstrap_debian(
    store: ImageStore,
    suite: str = "bookworm",
    name: str | None = None,
    mirror: str | None = None,
    cache_dir: str = DEFAULT_CACHE,
    *,
    include: Sequence[str] = (),
    refresh: bool = False,
    progress: Progress | None = None,
) -> Image:
    """A slim Debian image made with ``debootstrap --variant=minbase``; ``Cmd ["bash"]``.

    ``name`` defaults to ``debian:<suite>``, ``mirror`` to the Debian mirror this
    machine's apt uses. The layer is cached in ``cache_dir``; ``refresh`` builds it anew
    (to pick up security updates). ``progress`` receives one-line status messages.
    """
    if not _SUITE_RE.fullmatch(suite):
        raise InvalidArgument(f"invalid debian suite {suite!r}: use a name such as 'bookworm'")
    mirror = (mirror or _host_mirror()).rstrip("/")
    if not mirror.startswith(("http://", "https://", "file:/")):
        raise InvalidArgument(f"invalid mirror {mirror!r}: give a URL such as {DEFAULT_MIRROR}")
    arch = _dpkg_arch()
    key_doc = json.dumps([RECIPE_VERSION, suite, mirror, arch, sorted(include)])
    key = hashlib.sha256(key_doc.encode()).hexdigest()[:16]
    os.makedirs(cache_dir, exist_ok=True)
    base = os.path.join(cache_dir, f"debian-{suite}-{arch}-{key}")
    layer_path, meta_path = base + ".tar.gz", base + ".json"
    with _locked(base + ".lock"):
        meta = None if refresh else _read_meta(meta_path, layer_path)
        if meta is None:
            meta = _build_debian(suite, mirror, arch, include, cache_dir, layer_path, progress)
            temp = f"{meta_path}.tmp-{os.getpid()}"
            with open(temp, "w") as f:
                json.dump(meta, cast(IO[str], f), indent=1)
            os.replace(temp, meta_path)
        elif progress:
            progress(f"using the cached debian {suite} layer {layer_path}")
        _copy_layer(store, layer_path, meta["digest"], meta["size"])
    command = f"debootstrap --variant=minbase --arch={arch} {suite} / {mirror}"
    return _one_layer_image(
        store,
        layer=(meta["digest"], meta["diff_id"], meta["size"]),
        config_section={"Env": [PATH_ENV], "Cmd": ["bash"]},
        history=[
            {"created_by": f"{command} # slimmed as debian:{suite}-slim (berth bootstrap)"},
            {"created_by": 'CMD ["bash"]', "empty_layer": True},
        ],
        epoch=int(meta["epoch"]),
        name=name if name is not None else f"debian:{suite}",
    )
