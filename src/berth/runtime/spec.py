"""OCI runtime-spec config.json: loading, validation before any fork, and runc's default.

Everything that can be checked without touching the kernel is checked here, in the
runtime's own process, so that a bad bundle fails with one clear line and leaves
nothing behind (no cgroup, no mount, no process).
"""

from __future__ import annotations

import json
import os
import re

from berth.errors import ConfigError

# typing costs milliseconds to import on every container start: types only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

OCI_VERSION = "1.2.0"
SUPPORTED_MAJOR = "1."

NAMESPACE_FLAGS: dict[str, int] = {
    "pid": 0x20000000,
    "network": 0x40000000,
    "mount": 0x00020000,
    "ipc": 0x08000000,
    "uts": 0x04000000,
    "user": 0x10000000,
    "cgroup": 0x02000000,
    "time": 0x00000080,
}
# /proc/PID/ns/<name> for each spec namespace type.
NAMESPACE_PROC_NAMES: dict[str, str] = {
    "pid": "pid",
    "network": "net",
    "mount": "mnt",
    "ipc": "ipc",
    "uts": "uts",
    "user": "user",
    "cgroup": "cgroup",
    "time": "time",
}

RLIMITS: dict[str, int] = {
    "RLIMIT_CPU": 0,
    "RLIMIT_FSIZE": 1,
    "RLIMIT_DATA": 2,
    "RLIMIT_STACK": 3,
    "RLIMIT_CORE": 4,
    "RLIMIT_RSS": 5,
    "RLIMIT_NPROC": 6,
    "RLIMIT_NOFILE": 7,
    "RLIMIT_MEMLOCK": 8,
    "RLIMIT_AS": 9,
    "RLIMIT_LOCKS": 10,
    "RLIMIT_SIGPENDING": 11,
    "RLIMIT_MSGQUEUE": 12,
    "RLIMIT_NICE": 13,
    "RLIMIT_RTPRIO": 14,
    "RLIMIT_RTTIME": 15,
}
RLIM_INFINITY = 0xFFFFFFFFFFFFFFFF

_ID_PATTERN = re.compile(r"^[\w+.-]+$")
_CAP_SYS_RESOURCE = 24

DEFAULT_MASKED_PATHS = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
]
DEFAULT_READONLY_PATHS = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
]
DEFAULT_CAPS = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]


def default_spec(rootless: bool = False) -> dict[str, Any]:
    """The config ``runc spec`` writes, so bundles made for runc run unchanged."""
    del rootless  # accepted for runc's --rootless flag; the root layout is what we write
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": True,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh"],
            "env": [
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "TERM=xterm",
            ],
            "cwd": "/",
            "capabilities": {
                "bounding": list(DEFAULT_CAPS),
                "effective": list(DEFAULT_CAPS),
                "permitted": list(DEFAULT_CAPS),
                "ambient": list(DEFAULT_CAPS),
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "berth",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
            {
                "destination": "/dev/pts",
                "type": "devpts",
                "source": "devpts",
                "options": [
                    "nosuid",
                    "noexec",
                    "newinstance",
                    "ptmxmode=0666",
                    "mode=0620",
                    "gid=5",
                ],
            },
            {
                "destination": "/dev/shm",
                "type": "tmpfs",
                "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            },
            {
                "destination": "/dev/mqueue",
                "type": "mqueue",
                "source": "mqueue",
                "options": ["nosuid", "noexec", "nodev"],
            },
            {
                "destination": "/sys",
                "type": "sysfs",
                "source": "sysfs",
                "options": ["nosuid", "noexec", "nodev", "ro"],
            },
            {
                "destination": "/sys/fs/cgroup",
                "type": "cgroup",
                "source": "cgroup",
                "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
            },
        ],
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [
                {"type": "pid"},
                {"type": "network"},
                {"type": "ipc"},
                {"type": "uts"},
                {"type": "mount"},
            ],
            "maskedPaths": list(DEFAULT_MASKED_PATHS),
            "readonlyPaths": list(DEFAULT_READONLY_PATHS),
        },
    }


def validate_id(container_id: str) -> None:
    if not container_id or container_id in {".", ".."} or not _ID_PATTERN.fullmatch(container_id):
        raise ConfigError(
            f"invalid container id {container_id!r}: use letters, digits, '_', '+', '-' and '.'"
        )


def load(bundle: str) -> dict[str, Any]:
    """Read ``bundle/config.json``; one clear line for each way it can be wrong."""
    path = os.path.join(bundle, "config.json")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ConfigError(
            f"no config.json in bundle {bundle}: run 'berth-runtime spec' there"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    try:
        config = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"malformed {path}: {exc}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"malformed {path}: the top level must be a JSON object")
    return config


def _host_can_raise_limits() -> bool:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> _CAP_SYS_RESOURCE & 1)
    except OSError:
        pass
    return False


def _check_rlimits(rlimits: list[dict[str, Any]]) -> None:
    import resource

    raise_ok: bool | None = None
    seen = set()
    for item in rlimits:
        kind = str(item.get("type", ""))
        if kind not in RLIMITS:
            raise ConfigError(f"unknown rlimit type {kind!r} in process.rlimits")
        if kind in seen:
            raise ConfigError(f"rlimit {kind} is given twice in process.rlimits")
        seen.add(kind)
        soft, hard = int(item.get("soft", 0)), int(item.get("hard", 0))
        if soft > hard:
            raise ConfigError(f"rlimit {kind}: soft limit {soft} is above the hard limit {hard}")
        _, host_hard = resource.getrlimit(RLIMITS[kind])
        host_hard = RLIM_INFINITY if host_hard == resource.RLIM_INFINITY else host_hard
        if hard > host_hard:
            if raise_ok is None:
                raise_ok = _host_can_raise_limits()
            if not raise_ok:
                raise ConfigError(
                    f"rlimit {kind}: hard limit {hard} exceeds the host's hard limit {host_hard}"
                    f" (lower it in config.json, or raise the host's limit)"
                )


_NAMESPACED_SYSCTLS = ("kernel.msg", "kernel.shm", "fs.mqueue.")
_NAMESPACED_SYSCTL_NAMES = {"kernel.sem", "kernel.shmall", "kernel.shmmax", "kernel.shmmni"}


def _check_sysctl(sysctl: dict[str, str], ns_types: dict[str, str | None]) -> None:
    for key in sysctl:
        if key in _NAMESPACED_SYSCTL_NAMES or key.startswith(_NAMESPACED_SYSCTLS):
            if "ipc" not in ns_types:
                raise ConfigError(f"sysctl {key!r} needs a new ipc namespace")
        elif key.startswith("net."):
            if "network" not in ns_types:
                raise ConfigError(f"sysctl {key!r} needs a new network namespace")
        elif key in {"kernel.hostname", "kernel.domainname"}:
            if "uts" not in ns_types:
                raise ConfigError(f"sysctl {key!r} needs a new uts namespace")
        else:
            raise ConfigError(f"sysctl {key!r} is not namespaced: it would change the host")


def namespaces(config: dict[str, Any]) -> dict[str, str | None]:
    """Namespace type -> path to join (None: create a new one). Validates types."""
    result: dict[str, str | None] = {}
    for item in (config.get("linux") or {}).get("namespaces") or []:
        kind = item.get("type")
        if kind not in NAMESPACE_FLAGS:
            raise ConfigError(
                f"unknown namespace type {kind!r} in linux.namespaces"
                f" (known: {', '.join(sorted(NAMESPACE_FLAGS))})"
            )
        if kind in result:
            raise ConfigError(f"namespace {kind!r} is listed twice in linux.namespaces")
        path = item.get("path") or None
        if path is not None and not os.path.exists(path):
            raise ConfigError(f"namespace path {path} for {kind!r} does not exist")
        result[kind] = path
    return result


def rootfs_path(config: dict[str, Any], bundle: str) -> str:
    root = config.get("root") or {}
    path = root.get("path")
    if not path:
        raise ConfigError("config.json has no root.path")
    full = os.path.normpath(os.path.join(bundle, path))
    if not os.path.isdir(full):
        raise ConfigError(f"rootfs {full} does not exist or is not a directory")
    return full


def validate(config: dict[str, Any], bundle: str, *, need_process: bool = True) -> None:
    """Check a config before anything is created; raises ConfigError."""
    version = str(config.get("ociVersion", ""))
    if not version.startswith(SUPPORTED_MAJOR):
        raise ConfigError(f"unsupported ociVersion {version!r}: berth-runtime supports 1.x")
    rootfs_path(config, bundle)
    ns = namespaces(config)
    linux = config.get("linux") or {}
    if "mount" not in ns and (linux.get("maskedPaths") or linux.get("readonlyPaths")):
        # runc: "unable to restrict sys entries without a private MNT namespace"
        raise ConfigError("linux.maskedPaths and readonlyPaths need a mount namespace")
    if "user" in ns and ns["user"] is None:
        if not linux.get("uidMappings") or not linux.get("gidMappings"):
            raise ConfigError("a new user namespace needs linux.uidMappings and linux.gidMappings")
    elif linux.get("uidMappings") or linux.get("gidMappings"):
        raise ConfigError("uid/gid mappings need a new user namespace in linux.namespaces")
    if config.get("hostname") and "uts" not in ns:
        raise ConfigError("hostname needs a uts namespace in linux.namespaces")
    if config.get("domainname") and "uts" not in ns:
        raise ConfigError("domainname needs a uts namespace in linux.namespaces")
    for mount in config.get("mounts") or []:
        dest = mount.get("destination", "")
        if not isinstance(dest, str) or not dest.startswith("/"):
            raise ConfigError(f"mount destination {dest!r} must be an absolute path")
    _check_sysctl(linux.get("sysctl") or {}, ns)
    if linux.get("seccomp"):
        from berth.linux import seccomp

        seccomp.validate(linux["seccomp"])
    for phase, hooks in (config.get("hooks") or {}).items():
        for hook in hooks or []:
            if not str(hook.get("path", "")).startswith("/"):
                raise ConfigError(f"hooks.{phase}: path {hook.get('path')!r} must be absolute")
    process = config.get("process")
    if need_process:
        if not isinstance(process, dict):
            raise ConfigError("config.json has no process")
        validate_process(process)
        check_security_labels(process, linux)


def apparmor_enabled() -> bool:
    try:
        with open("/sys/module/apparmor/parameters/enabled") as f:
            return f.read().strip() == "Y"
    except OSError:
        return False


def selinux_enabled() -> bool:
    return os.path.exists("/sys/fs/selinux/enforce")


def check_security_labels(process: dict[str, Any], linux: dict[str, Any]) -> None:
    """A security label the host cannot apply is refused, never silently dropped."""
    if process.get("apparmorProfile") and not apparmor_enabled():
        raise ConfigError(
            f"process.apparmorProfile {process['apparmorProfile']!r} is set but AppArmor is"
            " not enabled on this host: remove it from config.json"
        )
    if process.get("selinuxLabel") and not selinux_enabled():
        raise ConfigError(
            f"process.selinuxLabel {process['selinuxLabel']!r} is set but SELinux is not"
            " enabled on this host: remove it from config.json"
        )
    if linux.get("mountLabel") and not selinux_enabled():
        raise ConfigError(
            f"linux.mountLabel {linux['mountLabel']!r} is set but SELinux is not enabled"
            " on this host: remove it from config.json"
        )


def validate_process(process: dict[str, Any]) -> None:
    args = process.get("args")
    if not args or not isinstance(args, list):
        raise ConfigError("process.args must be a non-empty list")
    cwd = process.get("cwd", "/")
    if not str(cwd).startswith("/"):
        raise ConfigError(f"process.cwd {cwd!r} must be an absolute path")
    from berth.linux import capabilities

    capabilities.validate(process.get("capabilities") or {})
    _check_rlimits(process.get("rlimits") or [])
