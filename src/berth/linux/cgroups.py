"""Cgroup management for the OCI runtime: the equivalent of runc's "cgroupfs" driver.

Two implementations behind one interface, :class:`Cgroup`:

* cgroup v1, one directory per mounted hierarchy (named hierarchies such as
  ``name=systemd`` included). A *hybrid* host, where ``/sys/fs/cgroup`` is a tmpfs
  holding v1 hierarchies plus a cgroup2 mount at ``/sys/fs/cgroup/unified``, is v1:
  the unified mount carries no controllers and is ignored for resource control.
* cgroup v2 (unified), used only when ``/sys/fs/cgroup`` itself is a cgroup2 mount.

The mode and the hierarchies come from ``/proc/self/mountinfo``, never from guesses
about which directories exist. Every write error is a :class:`CgroupError` naming the
file and the value. The module imports only ``os``, ``errno``, ``berth.log`` and
``typing`` (it sits on the runtime's hot path); ``time`` is imported where a wait is
needed.

Paths (``linux.cgroupsPath``):

* absolute (``/a/b``): used as is under each hierarchy's mount point;
* relative (``a/b``): relative to the calling process's own cgroup in each hierarchy
  (from ``/proc/self/cgroup``);
* absent or empty: the relative path ``berth/<id>``;
* systemd form ``slice:prefix:name``: translated to the cgroupfs path the systemd
  driver would use, ``/<expanded slice>/<prefix>-<name>.scope`` (absolute), e.g.
  ``system.slice:berth:ID`` -> ``/system.slice/berth-ID.scope``. ``--systemd-cgroup``
  is accepted, not implemented through systemd.

A ``..`` component is refused.
"""

from __future__ import annotations

import errno
import os

from berth import log
from berth.errors import SystemFailure

# typing costs milliseconds to import on every container start: types only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Literal

DEFAULT_ROOT = "/sys/fs/cgroup"

_SIGKILL = 9  # the same number on every Linux architecture
_FREEZE_TIMEOUT = 2.0

# Controllers a v1 hierarchy can carry (named hierarchies are "name=<x>").
_V1_CONTROLLERS = frozenset(
    {
        "blkio",
        "cpu",
        "cpuacct",
        "cpuset",
        "debug",
        "devices",
        "freezer",
        "hugetlb",
        "memory",
        "misc",
        "net_cls",
        "net_prio",
        "perf_event",
        "pids",
        "rdma",
    }
)

_THROTTLE = (
    ("throttleReadBpsDevice", "blkio.throttle.read_bps_device", "rbps"),
    ("throttleWriteBpsDevice", "blkio.throttle.write_bps_device", "wbps"),
    ("throttleReadIOPSDevice", "blkio.throttle.read_iops_device", "riops"),
    ("throttleWriteIOPSDevice", "blkio.throttle.write_iops_device", "wiops"),
)


class CgroupError(SystemFailure):
    """A cgroup operation failed: the message names the file and the value."""


# --------------------------------------------------------------------------- files


def _strerror(e: OSError) -> str:
    text = e.strerror or (os.strerror(e.errno) if e.errno else str(e))
    return text[:1].lower() + text[1:]


def _write(path: str, value: str) -> None:
    """Write ``value`` to a cgroup file in one write(2), as the kernel expects."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    except OSError as e:
        raise CgroupError(f"cgroup: cannot write {value} to {path}: {_strerror(e)}") from None
    try:
        os.write(fd, value.encode())
    except OSError as e:
        raise CgroupError(f"cgroup: cannot write {value} to {path}: {_strerror(e)}") from None
    finally:
        os.close(fd)


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise CgroupError(f"cgroup: cannot read {path}: {_strerror(e)}") from None


def _read_opt(path: str) -> str | None:
    """The file's text, or None when it (or its cgroup) does not exist."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        if e.errno == errno.ENODEV:
            return None
        raise CgroupError(f"cgroup: cannot read {path}: {_strerror(e)}") from None


def _keyed(text: str | None) -> dict[str, str]:
    """Parse flat-keyed files such as ``memory.events`` ("key value" lines)."""
    out: dict[str, str] = {}
    for line in (text or "").splitlines():
        key, _, value = line.strip().partition(" ")
        if key:
            out[key] = value.strip()
    return out


def _sleep(seconds: float) -> None:
    import time

    time.sleep(seconds)


def _monotonic() -> float:
    import time

    return time.monotonic()


def _mkdir_p(path: str) -> None:
    # A concurrent destroy may remove an empty parent between the steps of makedirs.
    for _ in range(5):
        try:
            os.makedirs(path, exist_ok=True)
            return
        except FileNotFoundError:
            continue
        except OSError as e:
            raise CgroupError(f"cgroup: cannot create {path}: {_strerror(e)}") from None
    raise CgroupError(f"cgroup: cannot create {path}: parent keeps disappearing")


def _rmdir_retry(path: str) -> None:
    """rmdir a cgroup directory; EBUSY (tasks still leaving) is retried briefly."""
    delay = 0.01
    for attempt in range(6):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY or attempt == 5:
                raise CgroupError(f"cgroup: cannot remove {path}: {_strerror(e)}") from None
        _sleep(delay)
        delay *= 2


def _remove_tree(path: str) -> None:
    """Remove a cgroup directory and any cgroups nested in it, deepest first."""
    try:
        entries = [e.path for e in os.scandir(path) if e.is_dir(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as e:
        raise CgroupError(f"cgroup: cannot list {path}: {_strerror(e)}") from None
    for sub in entries:
        _remove_tree(sub)
    _rmdir_retry(path)


def _mount_of(path: str) -> str:
    """The mount point holding ``path`` (walking up while not a mount)."""
    d = path
    while d != "/" and not os.path.ismount(d):
        d = os.path.dirname(d)
    return d


def _procs_under(top: str) -> set[int]:
    found: set[int] = set()
    for dirpath, _dirs, _files in os.walk(top):
        text = _read_opt(os.path.join(dirpath, "cgroup.procs"))
        for line in (text or "").split():
            if line.isdigit():
                found.add(int(line))
    return found


# ---------------------------------------------------------------- mounts and paths


class _Mount:
    __slots__ = ("fstype", "mount_root", "mountpoint", "options")

    def __init__(self, mount_root: str, mountpoint: str, fstype: str, options: str) -> None:
        self.mount_root = mount_root
        self.mountpoint = mountpoint
        self.fstype = fstype
        self.options = options


def _unescape(field: str) -> str:
    if "\\" not in field:
        return field
    out: list[str] = []
    i = 0
    while i < len(field):
        chunk = field[i + 1 : i + 4]
        if field[i] == "\\" and len(chunk) == 3 and all(c in "01234567" for c in chunk):
            out.append(chr(int(chunk, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _parse_mountinfo(text: str) -> list[_Mount]:
    mounts: list[_Mount] = []
    for line in text.splitlines():
        fields = line.split()
        try:
            sep = fields.index("-", 6)
        except ValueError:
            continue
        if len(fields) < sep + 3:
            continue
        mounts.append(
            _Mount(
                mount_root=_unescape(fields[3]),
                mountpoint=_unescape(fields[4]),
                fstype=fields[sep + 1],
                options=fields[sep + 3] if len(fields) > sep + 3 else "",
            )
        )
    return mounts


def _read_proc(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise CgroupError(f"cgroup: cannot read {path}: {_strerror(e)}") from None


_mountinfo_cache: str | None = None


def _own_mountinfo() -> str:
    """This process's mountinfo, read once: cgroup hierarchies do not move while a
    runtime runs, and every create would otherwise parse it three times."""
    global _mountinfo_cache
    if _mountinfo_cache is None:
        _mountinfo_cache = _read_proc("/proc/self/mountinfo")
    return _mountinfo_cache


def warm_up() -> None:
    """Start the kernel's cgroup-migration grace period now, in the background.

    Moving a process between cgroups takes a global lock whose first writer waits
    for an RCU grace period (~12-15 ms here) unless another move happened in the
    last few tens of milliseconds. A thread writes this process's pid into its own
    cgroup (a no-op move) so that the wait overlaps with the caller's work, and the
    container's real join later finds the lock already warm.
    """
    import _thread

    target = ""
    try:
        for line in _read_proc("/proc/self/cgroup").splitlines():
            _, controllers, path = line.split(":", 2)
            if controllers and not controllers.startswith("name="):
                name = controllers.split(",")[0]
                target = os.path.join(DEFAULT_ROOT, name, path.lstrip("/"), "cgroup.procs")
                break
            if not controllers and detect_mode() == "v2":
                target = os.path.join(DEFAULT_ROOT, path.lstrip("/"), "cgroup.procs")
    except (CgroupError, ValueError):
        return
    if not target:
        return

    def move_self() -> None:
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)
        except OSError:
            pass

    _thread.start_new_thread(move_self, ())


def _norm(path: str) -> str:
    return os.path.normpath(path) if path else path


def detect_mode(mountinfo: str | None = None, *, root: str = DEFAULT_ROOT) -> Literal["v1", "v2"]:
    """ "v2" only when ``root`` (``/sys/fs/cgroup``) itself is a cgroup2 mount, else "v1".

    A hybrid host (a tmpfs at ``/sys/fs/cgroup`` with v1 hierarchies and a cgroup2
    mount at ``/sys/fs/cgroup/unified``) is "v1". ``mountinfo`` is the text of
    ``/proc/self/mountinfo`` (read when not given).
    """
    text = _own_mountinfo() if mountinfo is None else mountinfo
    want = _norm(root)
    mode: Literal["v1", "v2"] = "v1"
    for m in _parse_mountinfo(text):
        if m.mountpoint == want:  # the last mount on a point is the visible one
            mode = "v2" if m.fstype == "cgroup2" else "v1"
    return mode


def _parse_proc_cgroup(text: str) -> dict[str, str]:
    """``/proc/self/cgroup`` as controller -> path; "" is the unified (v2) entry."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _hid, controllers, path = parts
        if not controllers:
            out[""] = path
            continue
        for c in controllers.split(","):
            out[c] = path
    return out


def _is_under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def _join(mountpoint: str, mount_root: str, cg_path: str) -> str:
    """The directory of cgroup ``cg_path`` (a path in the hierarchy) under a mount."""
    if mount_root not in ("", "/") and _is_under(cg_path, mount_root):
        cg_path = cg_path[len(mount_root.rstrip("/")) :]
    rel = cg_path.strip("/")
    return os.path.join(mountpoint, rel) if rel else mountpoint


def _expand_slice(name: str) -> str:
    """systemd's slice nesting: ``a-b.slice`` -> ``/a.slice/a-b.slice`` (runc ExpandSlice)."""
    suffix = ".slice"
    if not name.endswith(suffix) or len(name) <= len(suffix) or "/" in name:
        raise CgroupError(f"cgroup: invalid slice name {name!r}")
    stem = name[: -len(suffix)]
    if stem == "-":
        return "/"
    path = ""
    prefix = ""
    for component in stem.split("-"):
        if not component:
            raise CgroupError(f"cgroup: invalid slice name {name!r}")
        path += "/" + prefix + component + suffix
        prefix += component + "-"
    return path


def _systemd_path(spec: str) -> str:
    parent, prefix, name = spec.split(":")
    for part, what in ((prefix, "prefix"), (name, "name")):
        if "/" in part or part in (".", ".."):
            raise CgroupError(f"cgroup: invalid systemd cgroup {what} {part!r} in {spec!r}")
    if not name:
        raise CgroupError(f"cgroup: systemd cgroup path {spec!r} has no unit name")
    if name.endswith(".slice"):
        return _expand_slice(name)
    unit = f"{prefix}-{name}.scope" if prefix else f"{name}.scope"
    base = _expand_slice(parent or "system.slice")
    return base.rstrip("/") + "/" + unit


def _resolve(cgroups_path: str | None, container_id: str) -> tuple[str, bool]:
    """Normalise a cgroupsPath to (path without leading slash, is_absolute)."""
    if not cgroups_path:
        if not container_id or "/" in container_id or container_id in (".", ".."):
            raise CgroupError(f"cgroup: invalid container id {container_id!r} for a cgroup")
        return f"berth/{container_id}", False
    if "\0" in cgroups_path:
        raise CgroupError(f"cgroup: invalid cgroups path {cgroups_path!r}")
    path = cgroups_path
    absolute = path.startswith("/")
    if not absolute and path.count(":") == 2:
        path = _systemd_path(path)
        absolute = True
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise CgroupError(f"cgroup: cgroups path {cgroups_path!r} must not contain '..'")
    if not parts:
        raise CgroupError(f"cgroup: cgroups path {cgroups_path!r} names no cgroup")
    return "/".join(parts), absolute


# ------------------------------------------------------------------ value helpers


def _section(resources: dict[str, Any], key: str) -> dict[str, Any]:
    value = resources.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CgroupError(f"cgroup: linux.resources.{key} must be an object, not {value!r}")
    return value


def _list(resources: dict[str, Any], key: str, where: str) -> list[dict[str, Any]]:
    value = resources.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise CgroupError(f"cgroup: {where} must be a list of objects, not {value!r}")
    return value


def _int(section: dict[str, Any], key: str, where: str) -> int | None:
    value = section.get(key)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise CgroupError(f"cgroup: invalid {where} {value!r}")
    return value


def _str(section: dict[str, Any], key: str, where: str) -> str:
    value = section.get(key)
    if value is None:
        return ""
    if not isinstance(value, str) or "\n" in value:
        raise CgroupError(f"cgroup: invalid {where} {value!r}")
    return value


def _max(value: int) -> str:
    """cgroup v2 spelling: negative means unlimited ("max")."""
    return "max" if value < 0 else str(value)


def _dev(entry: dict[str, Any], where: str) -> tuple[int, int]:
    major = _int(entry, "major", f"{where}.major")
    minor = _int(entry, "minor", f"{where}.minor")
    if major is None or minor is None or major < 0 or minor < 0:
        raise CgroupError(f"cgroup: {where} needs a major and a minor number, got {entry!r}")
    return major, minor


def _device_rule(rule: dict[str, Any]) -> tuple[bool, str]:
    """One OCI device rule as (allow, "c 1:3 rwm") for devices.allow/deny (v1)."""
    kind = _str(rule, "type", "devices type") or "a"
    if kind not in ("a", "b", "c"):
        raise CgroupError(f"cgroup: invalid devices type {kind!r} (want a, b or c)")
    access = _str(rule, "access", "devices access") or "rwm"
    if any(c not in "rwm" for c in access):
        raise CgroupError(f"cgroup: invalid devices access {access!r} (want letters of rwm)")

    def num(key: str) -> str:
        n = _int(rule, key, f"devices {key}")
        return "*" if n is None or n < 0 else str(n)

    return bool(rule.get("allow")), f"{kind} {num('major')}:{num('minor')} {access}"


def _shares_to_weight(shares: int) -> int:
    """runc's cpu.shares [2, 262144] -> cpu.weight [1, 10000] mapping."""
    if shares == 0:
        return 0
    return 1 + ((shares - 2) * 9999) // 262142


def _blkio_to_io_weight(weight: int) -> int:
    """runc's blkio weight [10, 1000] -> io.weight [1, 10000] mapping."""
    if weight == 0:
        return 0
    return 1 + ((weight - 10) * 9999) // 990


def _page_size(entry: dict[str, Any]) -> str:
    size = _str(entry, "pageSize", "hugepageLimits pageSize")
    if not size or not size.isalnum():
        raise CgroupError(f"cgroup: invalid hugepageLimits pageSize {size!r}")
    return size


# ---------------------------------------------------------------------- interface


class Cgroup:
    """One container's cgroup, in every hierarchy that matters on this host.

    Build it with :meth:`for_container` (from the OCI ``cgroupsPath``) or
    :meth:`from_paths` (from what :meth:`paths` returned earlier). The keyword
    arguments ``root``, ``mountinfo`` and ``proc_cgroup`` of :meth:`for_container`
    exist so tests can point it at a fake tree.
    """

    mode: Literal["v1", "v2"]

    @staticmethod
    def for_container(
        cgroups_path: str | None,
        container_id: str,
        *,
        root: str = DEFAULT_ROOT,
        mountinfo: str | None = None,
        proc_cgroup: str | None = None,
    ) -> Cgroup:
        path, absolute = _resolve(cgroups_path, container_id)
        text = _own_mountinfo() if mountinfo is None else mountinfo
        root = _norm(root)
        mode = detect_mode(text, root=root)
        mounts = _parse_mountinfo(text)
        own: dict[str, str] = {}
        if not absolute:
            own = _parse_proc_cgroup(
                _read_proc("/proc/self/cgroup") if proc_cgroup is None else proc_cgroup
            )
        if mode == "v2":
            mount = [m for m in mounts if m.mountpoint == root][-1]
            if absolute:
                base = mount.mountpoint
            else:
                base = _join(mount.mountpoint, mount.mount_root, own.get("", "/"))
            leaf = os.path.join(base, path)
            return _CgroupV2(leaf, base=base, mount=mount.mountpoint)
        dirs: dict[str, str] = {}
        bases: dict[str, str] = {}
        mount_of: dict[str, str] = {}
        for controllers, m in _v1_hierarchies(mounts, root):
            if absolute:
                base = m.mountpoint
            else:
                own_path = next((own[c] for c in controllers if c in own), None)
                if own_path is None:
                    log.debug("cgroup: no entry for %s in /proc/self/cgroup", ",".join(controllers))
                    own_path = "/"
                base = _join(m.mountpoint, m.mount_root, own_path)
            leaf = os.path.join(base, path)
            for c in controllers:
                dirs[c] = leaf
            bases[leaf] = base
            mount_of[leaf] = m.mountpoint
        return _CgroupV1(dirs, bases=bases, mounts=mount_of)

    @staticmethod
    def from_paths(paths: dict[str, str]) -> Cgroup:
        """Rebuild from :meth:`paths` (as stored in the runtime's state.json)."""
        if not paths:  # a v1 host without any hierarchy mounted: nothing to manage
            return _CgroupV1({}, bases={}, mounts={})
        for key, value in paths.items():
            if not isinstance(value, str) or not os.path.isabs(value) or ".." in value.split("/"):
                raise CgroupError(f"cgroup: invalid stored cgroup path {key!r}: {value!r}")
        if "" in paths:
            return _CgroupV2(paths[""], base=None, mount=None)
        return _CgroupV1(dict(paths), bases={}, mounts={})

    def paths(self) -> dict[str, str]:
        """Controller name ("" on v2, "name=systemd" for named ones) -> directory."""
        raise NotImplementedError

    def create(self) -> None:
        """Create the cgroup directories (mkdir -p) in every hierarchy."""
        raise NotImplementedError

    def apply(self, resources: dict[str, Any]) -> None:
        """Write OCI ``linux.resources`` to the cgroup files."""
        raise NotImplementedError

    def join(self, pid: int) -> None:
        """Move ``pid`` into the cgroup (0: the calling process)."""
        raise NotImplementedError

    def freeze(self) -> None:
        raise NotImplementedError

    def thaw(self) -> None:
        raise NotImplementedError

    def is_frozen(self) -> bool:
        raise NotImplementedError

    def pids(self) -> list[int]:
        """Every process in the cgroup or a cgroup nested in it, sorted."""
        raise NotImplementedError

    def kill_all(self, sig: int) -> None:
        """Send ``sig`` to every process in the cgroup.

        The cgroup is frozen while the signals go out (unless it is already frozen or
        holds the calling process), so a forking process cannot slip past.
        """
        if sig == _SIGKILL and self._kill_at_once():
            return
        pids = self.pids()
        froze = False
        if pids and os.getpid() not in pids and self._has_freezer() and not self.is_frozen():
            try:
                self.freeze()
                froze = True
            except CgroupError as e:
                log.debug("%s; signalling without freezing", e)
            pids = self.pids()
        try:
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
                except OSError as e:
                    raise CgroupError(
                        f"cgroup: cannot send signal {sig} to pid {pid}: {_strerror(e)}"
                    ) from None
        finally:
            if froze:
                self.thaw()

    def destroy(self) -> None:
        """Remove the cgroup directories (and any nested cgroups); kill nothing.

        Already-removed directories are fine. Empty parents are removed up to, not
        including, the directory the path was resolved from (the hierarchy's mount
        point for absolute paths, the caller's own cgroup for relative ones).
        """
        raise NotImplementedError

    def oom_killed(self) -> bool:
        raise NotImplementedError

    def memory_usage(self) -> int | None:
        raise NotImplementedError

    # hooks for kill_all
    def _kill_at_once(self) -> bool:
        """SIGKILL the whole cgroup in one kernel call if the host can; True if done."""
        return False

    def _has_freezer(self) -> bool:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.paths()!r}>"


def _v1_hierarchies(mounts: list[_Mount], root: str) -> list[tuple[list[str], _Mount]]:
    """Mounted v1 hierarchies, one mount each (preferring one under ``root``)."""
    chosen: dict[str, tuple[list[str], _Mount]] = {}
    for m in mounts:
        if m.fstype != "cgroup":
            continue
        controllers = [
            o for o in m.options.split(",") if o in _V1_CONTROLLERS or o.startswith("name=")
        ]
        if not controllers:
            continue
        key = ",".join(sorted(controllers))
        prev = chosen.get(key)
        if prev is None or (
            _is_under(m.mountpoint, root) and not _is_under(prev[1].mountpoint, root)
        ):
            chosen[key] = (controllers, m)
    return list(chosen.values())


# ------------------------------------------------------------------------- v1


class _CgroupV1(Cgroup):
    mode: Literal["v1", "v2"] = "v1"

    def __init__(
        self, dirs: dict[str, str], *, bases: dict[str, str], mounts: dict[str, str]
    ) -> None:
        self._dirs = dirs
        self._bases = bases
        self._mounts = mounts

    def paths(self) -> dict[str, str]:
        return dict(self._dirs)

    def _unique(self) -> list[str]:
        return list(dict.fromkeys(self._dirs.values()))

    def _need(self, controller: str, what: str) -> str:
        d = self._dirs.get(controller)
        if d is None:
            raise CgroupError(f"cgroup: {controller} controller is not mounted (needed for {what})")
        return d

    def create(self) -> None:
        for d in self._unique():
            _mkdir_p(d)
        cpuset = self._dirs.get("cpuset")
        if cpuset is not None:
            self._cpuset_copy_down(cpuset)

    def _cpuset_copy_down(self, leaf: str) -> None:
        """An empty cpuset.cpus/mems makes joining fail (ENOSPC): inherit the parent's."""
        top = self._mounts.get(leaf) or _mount_of(leaf)
        chain: list[str] = []
        d = leaf
        while d != top and _is_under(d, top) and d != "/":
            chain.append(d)
            d = os.path.dirname(d)
        for d in reversed(chain):
            parent = os.path.dirname(d)
            for name in ("cpuset.cpus", "cpuset.mems"):
                current = (_read_opt(os.path.join(d, name)) or "").strip()
                if current:
                    continue
                inherited = (_read_opt(os.path.join(parent, name)) or "").strip()
                if inherited:
                    _write(os.path.join(d, name), inherited)

    def apply(self, resources: dict[str, Any]) -> None:
        r = resources or {}
        unified = r.get("unified")
        if unified:
            raise CgroupError(
                "cgroup: linux.resources.unified needs cgroup v2; this host uses cgroup v1"
            )
        self._apply_cpuset(_section(r, "cpu"))
        self._apply_devices(_list(r, "devices", "linux.resources.devices"))
        self._apply_memory(_section(r, "memory"))
        self._apply_cpu(_section(r, "cpu"))
        self._apply_pids(_section(r, "pids"))
        self._apply_blkio(_section(r, "blockIO"))
        self._apply_hugetlb(_list(r, "hugepageLimits", "linux.resources.hugepageLimits"))
        self._apply_network(_section(r, "network"))

    def _apply_cpuset(self, cpu: dict[str, Any]) -> None:
        cpus = _str(cpu, "cpus", "cpu.cpus")
        mems = _str(cpu, "mems", "cpu.mems")
        if cpus:
            _write(os.path.join(self._need("cpuset", "cpu.cpus"), "cpuset.cpus"), cpus)
        if mems:
            _write(os.path.join(self._need("cpuset", "cpu.mems"), "cpuset.mems"), mems)

    def _apply_devices(self, rules: list[dict[str, Any]]) -> None:
        if not rules:
            return
        lines = [_device_rule(rule) for rule in rules]
        d = self._need("devices", "linux.resources.devices")
        for allow, line in lines:
            _write(os.path.join(d, "devices.allow" if allow else "devices.deny"), line)

    def _apply_memory(self, mem: dict[str, Any]) -> None:
        limit = _int(mem, "limit", "memory.limit") or 0
        swap = _int(mem, "swap", "memory.swap") or 0
        reservation = _int(mem, "reservation", "memory.reservation") or 0
        swappiness = _int(mem, "swappiness", "memory.swappiness")
        disable_oom = bool(mem.get("disableOOMKiller"))
        if mem.get("kernel") is not None or mem.get("kernelTCP") is not None:
            log.debug("cgroup: memory.kernel and memory.kernelTCP are ignored")
        if swappiness is not None and swappiness < 0:
            swappiness = None  # the old "inherit" spelling
        if not (limit or swap or reservation or disable_oom or swappiness is not None):
            return
        d = self._need("memory", "linux.resources.memory")
        limit_file = os.path.join(d, "memory.limit_in_bytes")
        memsw_file = os.path.join(d, "memory.memsw.limit_in_bytes")
        has_memsw = os.path.exists(memsw_file)
        if limit == -1 and swap == 0 and has_memsw:
            swap = -1  # unlimited memory means unlimited memory+swap too
        if swap and not has_memsw:
            log.debug(
                "cgroup: %s does not exist (no swap accounting); memory.swap skipped", memsw_file
            )
            swap = 0
        if limit > 0 and swap > 0 and swap < limit:
            raise CgroupError(
                f"cgroup: memory.swap {swap} (memory+swap) must not be below memory.limit {limit}"
            )
        # The kernel keeps memsw >= limit at every step: raise memsw first when it grows.
        if limit and swap:
            current = _read(limit_file).strip()
            if swap == -1 or (current.isdigit() and int(current) < swap):
                _write(memsw_file, str(swap))
                _write(limit_file, str(limit))
            else:
                _write(limit_file, str(limit))
                _write(memsw_file, str(swap))
        elif limit:
            _write(limit_file, str(limit))
        elif swap:
            _write(memsw_file, str(swap))
        if reservation:
            _write(os.path.join(d, "memory.soft_limit_in_bytes"), str(reservation))
        if swappiness is not None:
            if swappiness > 100:
                raise CgroupError(
                    f"cgroup: invalid memory.swappiness {swappiness} (valid range is 0-100)"
                )
            _write(os.path.join(d, "memory.swappiness"), str(swappiness))
        if disable_oom:
            _write(os.path.join(d, "memory.oom_control"), "1")

    def _apply_cpu(self, cpu: dict[str, Any]) -> None:
        shares = _int(cpu, "shares", "cpu.shares") or 0
        quota = _int(cpu, "quota", "cpu.quota") or 0
        period = _int(cpu, "period", "cpu.period") or 0
        rt_runtime = _int(cpu, "realtimeRuntime", "cpu.realtimeRuntime") or 0
        rt_period = _int(cpu, "realtimePeriod", "cpu.realtimePeriod") or 0
        idle = _int(cpu, "idle", "cpu.idle")
        if not (shares or quota or period or rt_runtime or rt_period or idle is not None):
            return
        d = self._need("cpu", "linux.resources.cpu")
        if shares:
            path = os.path.join(d, "cpu.shares")
            _write(path, str(shares))
            got = _read(path).strip()
            if got.isdigit() and int(got) != shares:
                bound = "maximum" if shares > int(got) else "minimum"
                raise CgroupError(f"cgroup: cpu.shares {shares} refused, the {bound} is {got}")
        period_file = os.path.join(d, "cpu.cfs_period_us")
        pending_period = ""
        if period:
            try:
                _write(period_file, str(period))
            except CgroupError:
                # A smaller period can be refused (EINVAL) until the quota is lowered.
                if not quota:
                    raise
                pending_period = str(period)
        if quota:
            _write(os.path.join(d, "cpu.cfs_quota_us"), str(quota if quota > 0 else -1))
            if pending_period:
                _write(period_file, pending_period)
        for value, name in ((rt_period, "cpu.rt_period_us"), (rt_runtime, "cpu.rt_runtime_us")):
            if not value:
                continue
            path = os.path.join(d, name)
            if os.path.exists(path):
                _write(path, str(value))
            else:
                log.debug("cgroup: %s does not exist; realtime setting skipped", path)
        if idle is not None:
            path = os.path.join(d, "cpu.idle")
            if os.path.exists(path):
                _write(path, str(idle))
            else:
                log.debug("cgroup: %s does not exist; cpu.idle skipped", path)

    def _apply_pids(self, pids: dict[str, Any]) -> None:
        limit = _int(pids, "limit", "pids.limit")
        if limit is None:
            return
        d = self._need("pids", "pids.limit")
        _write(os.path.join(d, "pids.max"), "max" if limit <= 0 else str(limit))

    def _apply_blkio(self, bio: dict[str, Any]) -> None:
        weight = _int(bio, "weight", "blockIO.weight") or 0
        leaf_weight = _int(bio, "leafWeight", "blockIO.leafWeight") or 0
        weight_devices = _list(bio, "weightDevice", "blockIO.weightDevice")
        d = self._dirs.get("blkio")
        if weight or leaf_weight or weight_devices:
            if d is None:
                log.debug("cgroup: no blkio hierarchy; blockIO weights skipped")
            else:
                self._apply_blkio_weights(d, weight, leaf_weight, weight_devices)
        for key, name, _v2 in _THROTTLE:
            entries = _list(bio, key, f"blockIO.{key}")
            if not entries:
                continue
            target = os.path.join(self._need("blkio", f"blockIO.{key}"), name)
            for entry in entries:
                major, minor = _dev(entry, f"blockIO.{key}")
                rate = _int(entry, "rate", f"blockIO.{key}.rate") or 0
                _write(target, f"{major}:{minor} {max(rate, 0)}")

    def _apply_blkio_weights(
        self, d: str, weight: int, leaf_weight: int, devices: list[dict[str, Any]]
    ) -> None:
        # blkio.weight went with CFQ; BFQ offers blkio.bfq.weight. Use what the host has.
        weight_file = next(
            (
                p
                for p in (os.path.join(d, "blkio.weight"), os.path.join(d, "blkio.bfq.weight"))
                if os.path.exists(p)
            ),
            None,
        )
        if weight:
            if weight_file is None:
                log.debug("cgroup: neither blkio.weight nor blkio.bfq.weight in %s; skipped", d)
            else:
                _write(weight_file, str(weight))
        if leaf_weight:
            path = os.path.join(d, "blkio.leaf_weight")
            if os.path.exists(path):
                _write(path, str(leaf_weight))
            else:
                log.debug("cgroup: %s does not exist; blockIO.leafWeight skipped", path)
        if not devices:
            return
        device_file = next(
            (
                p
                for p in (
                    os.path.join(d, "blkio.weight_device"),
                    os.path.join(d, "blkio.bfq.weight_device"),
                )
                if os.path.exists(p)
            ),
            None,
        )
        for entry in devices:
            major, minor = _dev(entry, "blockIO.weightDevice")
            w = _int(entry, "weight", "blockIO.weightDevice.weight") or 0
            if not w:
                continue
            if device_file is None:
                log.debug("cgroup: no blkio weight_device file in %s; skipped", d)
                return
            _write(device_file, f"{major}:{minor} {w}")

    def _apply_hugetlb(self, limits: list[dict[str, Any]]) -> None:
        if not limits:
            return
        d = self._dirs.get("hugetlb")
        if d is None:
            log.debug("cgroup: no hugetlb hierarchy; hugepageLimits skipped")
            return
        for entry in limits:
            size = _page_size(entry)
            limit = _int(entry, "limit", "hugepageLimits limit")
            if limit is None:
                continue
            _write(os.path.join(d, f"hugetlb.{size}.limit_in_bytes"), str(limit))

    def _apply_network(self, net: dict[str, Any]) -> None:
        class_id = _int(net, "classID", "network.classID")
        priorities = _list(net, "priorities", "network.priorities")
        if class_id is not None:
            d = self._dirs.get("net_cls")
            if d is None:
                log.debug("cgroup: no net_cls hierarchy; network.classID skipped")
            else:
                _write(os.path.join(d, "net_cls.classid"), str(class_id))
        if priorities:
            d = self._dirs.get("net_prio")
            if d is None:
                log.debug("cgroup: no net_prio hierarchy; network.priorities skipped")
                return
            for p in priorities:
                name = _str(p, "name", "network.priorities name")
                prio = _int(p, "priority", "network.priorities priority") or 0
                _write(os.path.join(d, "net_prio.ifpriomap"), f"{name} {prio}")

    def join(self, pid: int) -> None:
        value = str(pid)
        for d in self._unique():
            _write(os.path.join(d, "cgroup.procs"), value)

    def _has_freezer(self) -> bool:
        return "freezer" in self._dirs

    def freeze(self) -> None:
        path = os.path.join(self._need("freezer", "freeze"), "freezer.state")
        deadline = _monotonic() + _FREEZE_TIMEOUT
        state = ""
        attempt = 0
        while True:
            if attempt % 50 == 49:
                # A thaw/freeze cycle unsticks a freeze racing with a fork (as runc does).
                _write(path, "THAWED")
                _sleep(0.01)
            _write(path, "FROZEN")
            state = _read(path).strip()
            if state == "FROZEN":
                return
            if _monotonic() > deadline:
                break
            attempt += 1
            _sleep(0.001 if attempt < 25 else 0.005)
        try:
            _write(path, "THAWED")
        except CgroupError as e:
            log.debug("%s", e)
        raise CgroupError(
            f"cgroup: cannot write FROZEN to {path}: still {state} after {_FREEZE_TIMEOUT:g}s"
        )

    def thaw(self) -> None:
        path = os.path.join(self._need("freezer", "thaw"), "freezer.state")
        deadline = _monotonic() + _FREEZE_TIMEOUT
        while True:
            _write(path, "THAWED")
            state = _read(path).strip()
            if state == "THAWED":
                return
            if _monotonic() > deadline:
                raise CgroupError(
                    f"cgroup: cannot write THAWED to {path}: still {state} "
                    f"after {_FREEZE_TIMEOUT:g}s"
                )
            _sleep(0.002)

    def is_frozen(self) -> bool:
        d = self._dirs.get("freezer")
        if d is None:
            return False
        path = os.path.join(d, "freezer.state")
        deadline = _monotonic() + 0.2
        while True:
            state = (_read_opt(path) or "").strip()
            if state != "FREEZING" or _monotonic() > deadline:
                return state == "FROZEN"
            _sleep(0.002)

    def pids(self) -> list[int]:
        found: set[int] = set()
        for d in self._unique():
            found |= _procs_under(d)
        return sorted(found)

    def destroy(self) -> None:
        first: CgroupError | None = None
        for d in self._unique():
            try:
                _remove_tree(d)
            except CgroupError as e:
                first = first or e
        if first is not None:
            raise first

    def oom_killed(self) -> bool:
        d = self._dirs.get("memory")
        if d is None:
            return False
        fields = _keyed(_read_opt(os.path.join(d, "memory.oom_control")))
        return _count(fields.get("oom_kill")) > 0 or _count(fields.get("under_oom")) > 0

    def memory_usage(self) -> int | None:
        d = self._dirs.get("memory")
        if d is None:
            return None
        text = (_read_opt(os.path.join(d, "memory.usage_in_bytes")) or "").strip()
        return int(text) if text.isdigit() else None


def _count(value: str | None) -> int:
    return int(value) if value and value.isdigit() else 0


# ------------------------------------------------------------------------- v2


class _CgroupV2(Cgroup):
    """cgroup v2 (unified hierarchy).

    Device rules are not applied: cgroup v2 controls devices only through an eBPF
    program (BPF_CGROUP_DEVICE) attached to the cgroup, which this module does not
    load. ``linux.resources.devices`` is skipped with a debug note; the container's
    /dev (only the devices the spec lists) and its dropped capabilities (no
    CAP_MKNOD by default) still limit what it can reach.
    """

    mode: Literal["v1", "v2"] = "v2"

    def __init__(self, path: str, *, base: str | None, mount: str | None) -> None:
        self._dir = path
        self._base = base
        self._mount = mount

    def paths(self) -> dict[str, str]:
        return {"": self._dir}

    def _f(self, name: str) -> str:
        return os.path.join(self._dir, name)

    def create(self) -> None:
        _mkdir_p(self._dir)
        top = self._mount or _mount_of(self._dir)
        chain: list[str] = []
        d = os.path.dirname(self._dir)
        while _is_under(d, top):
            chain.append(d)
            if d == top or d == "/":
                break
            d = os.path.dirname(d)
        for d in reversed(chain):
            self._enable_controllers(d)

    @staticmethod
    def _enable_controllers(d: str) -> None:
        available = (_read_opt(os.path.join(d, "cgroup.controllers")) or "").split()
        enabled = set((_read_opt(os.path.join(d, "cgroup.subtree_control")) or "").split())
        want = [c for c in available if c not in enabled]
        if not want:
            return
        target = os.path.join(d, "cgroup.subtree_control")
        try:
            _write(target, " ".join("+" + c for c in want))
            return
        except CgroupError as e:
            log.debug("%s; enabling one at a time", e)
        for c in want:
            try:
                _write(target, "+" + c)
            except CgroupError as e:
                # e.g. EBUSY: the ancestor holds processes (the no-internal-process rule)
                log.debug("%s", e)

    def apply(self, resources: dict[str, Any]) -> None:
        r = resources or {}
        unified = r.get("unified") or {}
        if not isinstance(unified, dict):
            raise CgroupError(f"cgroup: linux.resources.unified must be an object, not {unified!r}")
        for key, value in unified.items():
            if not isinstance(key, str) or "/" in key or key in ("", ".", ".."):
                raise CgroupError(f"cgroup: invalid linux.resources.unified key {key!r}")
            if not isinstance(value, str):
                raise CgroupError(f"cgroup: linux.resources.unified {key} must be a string")
        cpu = _section(r, "cpu")
        self._apply_cpuset(cpu)
        if r.get("devices"):
            log.debug("cgroup: v2 device rules need eBPF; linux.resources.devices skipped")
        self._apply_memory(_section(r, "memory"))
        self._apply_cpu(cpu)
        self._apply_pids(_section(r, "pids"))
        self._apply_io(_section(r, "blockIO"))
        self._apply_hugetlb(_list(r, "hugepageLimits", "linux.resources.hugepageLimits"))
        if _section(r, "network"):
            log.debug("cgroup: v2 has no net_cls/net_prio; linux.resources.network skipped")
        for key, value in unified.items():  # last, so it can override the above
            _write(self._f(key), value)

    def _apply_cpuset(self, cpu: dict[str, Any]) -> None:
        cpus = _str(cpu, "cpus", "cpu.cpus")
        mems = _str(cpu, "mems", "cpu.mems")
        if cpus:
            _write(self._f("cpuset.cpus"), cpus)
        if mems:
            _write(self._f("cpuset.mems"), mems)

    def _apply_memory(self, mem: dict[str, Any]) -> None:
        limit = _int(mem, "limit", "memory.limit") or 0
        swap = _int(mem, "swap", "memory.swap") or 0
        reservation = _int(mem, "reservation", "memory.reservation") or 0
        if mem.get("kernel") is not None or mem.get("kernelTCP") is not None:
            log.debug("cgroup: memory.kernel and memory.kernelTCP are ignored")
        if mem.get("swappiness") is not None:
            log.debug("cgroup: memory.swappiness has no cgroup v2 file; skipped")
        if mem.get("disableOOMKiller"):
            log.debug("cgroup: memory.disableOOMKiller has no cgroup v2 file; skipped")
        # OCI swap is memory+swap; memory.swap.max is swap alone (runc's conversion).
        swap_value = ""
        if limit == -1 and swap == 0:
            swap_value = "max"  # unlimited memory, swap not given: unlimited swap too
        elif swap < 0:
            swap_value = "max"
        elif swap > 0:
            if limit in (0, -1):
                raise CgroupError(f"cgroup: memory.swap {swap} needs a memory.limit")
            if swap < limit:
                raise CgroupError(
                    f"cgroup: memory.swap {swap} (memory+swap) must not be below "
                    f"memory.limit {limit}"
                )
            swap_value = str(swap - limit)  # "0" when equal: no swap at all
        if swap_value:
            try:
                _write(self._f("memory.swap.max"), swap_value)
            except CgroupError:
                # No swap accounting: "max" (no limit) is then a no-op anyway.
                if os.path.exists(self._f("memory.swap.max")) or swap_value != "max":
                    raise
                log.debug("cgroup: no memory.swap.max in %s; swap setting skipped", self._dir)
        if limit:
            _write(self._f("memory.max"), _max(limit))
        if reservation:
            _write(self._f("memory.low"), _max(reservation))

    def _apply_cpu(self, cpu: dict[str, Any]) -> None:
        shares = _int(cpu, "shares", "cpu.shares") or 0
        quota = _int(cpu, "quota", "cpu.quota") or 0
        period = _int(cpu, "period", "cpu.period") or 0
        idle = _int(cpu, "idle", "cpu.idle")
        if cpu.get("realtimeRuntime") or cpu.get("realtimePeriod"):
            log.debug("cgroup: cgroup v2 has no realtime cpu files; realtime settings skipped")
        if shares:
            _write(self._f("cpu.weight"), str(_shares_to_weight(shares)))
        if quota or period:
            value = str(quota) if quota > 0 else "max"
            if period:
                value += f" {period}"
            _write(self._f("cpu.max"), value)
        if idle is not None:
            _write(self._f("cpu.idle"), str(idle))

    def _apply_pids(self, pids: dict[str, Any]) -> None:
        limit = _int(pids, "limit", "pids.limit")
        if limit is not None:
            _write(self._f("pids.max"), "max" if limit <= 0 else str(limit))

    def _apply_io(self, bio: dict[str, Any]) -> None:
        weight = _int(bio, "weight", "blockIO.weight") or 0
        if bio.get("leafWeight"):
            log.debug("cgroup: cgroup v2 has no leaf weight; blockIO.leafWeight skipped")
        bfq = self._f("io.bfq.weight")
        plain = self._f("io.weight")
        # BFQ's file takes the blkio range as is; io.weight (io.cost) takes 1-10000.
        if weight:
            if os.path.exists(bfq):
                _write(bfq, str(weight))
            elif os.path.exists(plain):
                _write(plain, str(_blkio_to_io_weight(weight)))
            else:
                log.debug("cgroup: no io.bfq.weight or io.weight in %s; skipped", self._dir)
        for entry in _list(bio, "weightDevice", "blockIO.weightDevice"):
            major, minor = _dev(entry, "blockIO.weightDevice")
            w = _int(entry, "weight", "blockIO.weightDevice.weight") or 0
            if not w:
                continue
            if os.path.exists(bfq):
                _write(bfq, f"{major}:{minor} {w}")
            elif os.path.exists(plain):
                _write(plain, f"{major}:{minor} {_blkio_to_io_weight(w)}")
            else:
                log.debug("cgroup: no io weight file in %s; weightDevice skipped", self._dir)
        limits: dict[tuple[int, int], list[str]] = {}
        for key, _v1, name in _THROTTLE:
            for entry in _list(bio, key, f"blockIO.{key}"):
                dev = _dev(entry, f"blockIO.{key}")
                rate = _int(entry, "rate", f"blockIO.{key}.rate") or 0
                limits.setdefault(dev, []).append(f"{name}={rate if rate > 0 else 'max'}")
        for (major, minor), items in limits.items():
            _write(self._f("io.max"), f"{major}:{minor} " + " ".join(items))

    def _apply_hugetlb(self, limits: list[dict[str, Any]]) -> None:
        for entry in limits:
            size = _page_size(entry)
            limit = _int(entry, "limit", "hugepageLimits limit")
            if limit is None:
                continue
            path = self._f(f"hugetlb.{size}.max")
            if not os.path.exists(path):
                log.debug("cgroup: %s does not exist (no hugetlb controller); skipped", path)
                continue
            _write(path, _max(limit))
            rsvd = self._f(f"hugetlb.{size}.rsvd.max")
            if os.path.exists(rsvd):
                _write(rsvd, _max(limit))

    def join(self, pid: int) -> None:
        _write(self._f("cgroup.procs"), str(pid))

    def _has_freezer(self) -> bool:
        return os.path.exists(self._f("cgroup.freeze"))

    def _frozen_value(self) -> str:
        return _keyed(_read_opt(self._f("cgroup.events"))).get("frozen", "")

    def _set_frozen(self, value: str) -> None:
        path = self._f("cgroup.freeze")
        _write(path, value)
        deadline = _monotonic() + _FREEZE_TIMEOUT
        delay = 0.001
        while self._frozen_value() != value:
            if _monotonic() > deadline:
                if value == "1":
                    try:
                        _write(path, "0")
                    except CgroupError as e:
                        log.debug("%s", e)
                raise CgroupError(
                    f"cgroup: cannot write {value} to {path}: cgroup.events did not show "
                    f"frozen {value} after {_FREEZE_TIMEOUT:g}s"
                )
            _sleep(delay)
            delay = min(delay * 2, 0.02)

    def freeze(self) -> None:
        self._set_frozen("1")

    def thaw(self) -> None:
        self._set_frozen("0")

    def is_frozen(self) -> bool:
        return self._frozen_value() == "1"

    def pids(self) -> list[int]:
        return sorted(_procs_under(self._dir))

    def _kill_at_once(self) -> bool:
        path = self._f("cgroup.kill")
        if not os.path.exists(path):
            return False
        _write(path, "1")
        return True

    def destroy(self) -> None:
        _remove_tree(self._dir)

    def oom_killed(self) -> bool:
        events = _keyed(_read_opt(self._f("memory.events")))
        return _count(events.get("oom_kill")) > 0

    def memory_usage(self) -> int | None:
        text = (_read_opt(self._f("memory.current")) or "").strip()
        return int(text) if text.isdigit() else None
