"""One internal container spec, and the OCI config made from it (podman's ``specgen``).

Every way of creating a container (the Docker API today; compose and the builder
later) builds a :class:`ContainerSpec` with :func:`from_docker` (or directly); only
:func:`oci_config` turns it into a runtime ``config.json``. Docker's defaults live
here: the 14 capabilities, masked and read-only paths, ``/dev/shm`` of 64 MB, the
hostname, and ``/etc/hostname``, ``/etc/hosts``, ``/etc/resolv.conf`` bound from
per-container files; Berth's default seccomp profile (``runtime/seccomp_default.py``:
Docker's, with ENOSYS for ``clone3``). Mounts: binds, named and anonymous volumes
(made and filled by ``engine/volumes.py`` at create), and tmpfs.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
from dataclasses import asdict, dataclass, field
from typing import Any

from berth.errors import InvalidArgument
from berth.linux.capabilities import CAP_NAMES
from berth.runtime import seccomp_default
from berth.runtime import spec as oci

DEFAULT_CAPS = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
]
ALL_CAPS = list(CAP_NAMES)  # every capability this code knows, in number order
MASKED_PATHS = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SHM_SIZE = 64 * 1024 * 1024
NOFILE_SOFT = 1024
NOFILE_HARD = 524288
NETWORK_MODES = {"none", "host", "bridge", "default", ""}
VOLUME_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
TMPFS_DEFAULTS = ["noexec", "nosuid", "nodev"]
TMPFS_FLAGS = {
    "ro", "rw", "exec", "noexec", "suid", "nosuid", "dev", "nodev", "sync", "async",
    "dirsync", "atime", "noatime", "diratime", "nodiratime", "relatime", "norelatime",
    "strictatime", "nostrictatime",
}  # fmt: skip
TMPFS_DATA = {"size", "mode", "uid", "gid", "nr_inodes", "nr_blocks", "huge", "mpol"}
PROPAGATIONS = ("private", "rprivate", "slave", "rslave", "shared", "rshared")


@dataclass
class Mount:
    """One mount a container asked for: a bind, a volume (named, or anonymous with a
    generated name) or a tmpfs. A volume's ``source`` is filled in at create by the
    volume service (``<root>/volumes/<name>/_data``)."""

    source: str
    destination: str
    readonly: bool = False
    propagation: str = "rprivate"
    type: str = "bind"
    name: str = ""
    anonymous: bool = False
    copy_up: bool = True
    options: list[str] = field(default_factory=list)  # tmpfs data and flags


Bind = Mount  # the name of the bind-only record before volumes


@dataclass
class ContainerSpec:
    """What a container is, whoever asked for it. Stored with the container's record."""

    image: str  # as the user named it
    image_id: str
    entrypoint: list[str]
    cmd: list[str]
    env: list[str]
    working_dir: str = ""
    user: str = ""
    hostname: str = ""
    domainname: str = ""
    tty: bool = False
    open_stdin: bool = False
    stdin_once: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    stop_signal: str = "SIGTERM"
    stop_timeout: int | None = None
    mounts: list[Mount] = field(default_factory=list)
    network_mode: str = "none"
    auto_remove: bool = False
    memory: int = 0
    memory_swap: int = 0
    pids_limit: int = 0
    nano_cpus: int = 0
    cpu_shares: int = 0
    cap_add: list[str] = field(default_factory=list)
    cap_drop: list[str] = field(default_factory=list)
    privileged: bool = False
    readonly_rootfs: bool = False
    seccomp_unconfined: bool = False
    seccomp_profile: str = ""  # a custom profile in Docker's format (JSON); "" = default
    no_new_privileges: bool = False
    log_max_size: int = 10 * 1024 * 1024
    log_max_files: int = 3
    warnings: list[str] = field(default_factory=list)

    @property
    def args(self) -> list[str]:
        return [*self.entrypoint, *self.cmd]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ContainerSpec:
        values = dict(data)
        values["mounts"] = [Mount(**m) for m in values.pop("binds", None) or []] + [
            Mount(**m) for m in values.get("mounts") or []
        ]
        return cls(**values)


def _strings(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"{what} must be a list of strings")
    return list(value)


def _int(value: Any, what: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{what} must be an integer, not {value!r}")
    return value


def _cap_name(name: str) -> str:
    upper = name.strip().upper()
    if upper == "ALL":
        return upper
    full = upper if upper.startswith("CAP_") else "CAP_" + upper
    if full not in ALL_CAPS:
        raise InvalidArgument(f"unknown capability {name!r}")
    return full


def _check_destination(destination: str, what: str) -> str:
    if not destination.startswith("/") or os.path.normpath(destination) == "/":
        raise InvalidArgument(f"invalid {what}: the destination must be absolute, not /")
    return os.path.normpath(destination)


def parse_bind(text: str) -> Mount:
    """``/host:/container[:opts]`` (a bind) or ``name:/container[:opts]`` (a named
    volume, made on first use); options ``ro``, ``rw``, ``nocopy``, a propagation."""
    parts = text.split(":")
    if len(parts) < 2 or len(parts) > 3:
        raise InvalidArgument(
            f"invalid bind {text!r}: use /host/path:/container/path[:ro] or name:/path[:ro]"
        )
    source, destination = parts[0], parts[1]
    options = parts[2].split(",") if len(parts) == 3 else []
    is_volume = not source.startswith("/")
    if is_volume and not VOLUME_NAME.fullmatch(source):
        raise InvalidArgument(
            f"invalid bind {text!r}: {source!r} is neither an absolute path nor a volume name"
            " ([a-zA-Z0-9][a-zA-Z0-9_.-]+)"
        )
    destination = _check_destination(destination, f"bind {text!r}")
    mount = Mount("" if is_volume else os.path.normpath(source), destination)
    if is_volume:
        mount.type, mount.name, mount.propagation = "volume", source, ""
    for option in options:
        if option == "ro":
            mount.readonly = True
        elif option in ("rw", "z", "Z", ""):
            continue
        elif option == "nocopy" and is_volume:
            mount.copy_up = False
        elif option in PROPAGATIONS and not is_volume:
            mount.propagation = option
        else:
            raise InvalidArgument(f"invalid bind {text!r}: unknown option {option!r}")
    if not is_volume and not os.path.exists(source):
        os.makedirs(source, exist_ok=True)  # Docker creates a missing bind source
    return mount


def parse_tmpfs(destination: str, options: str) -> Mount:
    """``HostConfig.Tmpfs`` entry: ``{"/path": "size=64m,mode=1777"}``."""
    destination = _check_destination(destination, f"tmpfs mount {destination!r}")
    user = [o.strip() for o in (options or "").split(",") if o.strip()]
    for option in user:
        key = option.split("=", 1)[0]
        if option not in TMPFS_FLAGS and ("=" not in option or key not in TMPFS_DATA):
            raise InvalidArgument(f"invalid tmpfs option {option!r} for {destination}")
    mount = Mount("tmpfs", destination, type="tmpfs", propagation="")
    mount.options = [*TMPFS_DEFAULTS, *user]
    modes = [o for o in user if o in ("ro", "rw")]
    mount.readonly = bool(modes) and modes[-1] == "ro"
    return mount


def parse_mount(item: Any) -> Mount:
    """One ``HostConfig.Mounts`` entry (what ``docker run --mount`` sends)."""
    if not isinstance(item, dict):
        raise InvalidArgument(f"invalid mount {item!r}: each of Mounts must be an object")
    kind = str(item.get("Type") or "")
    target = str(item.get("Target") or item.get("Destination") or "")
    what = f"mount config for type {kind!r}"
    if not target:
        raise InvalidArgument(f"invalid {what}: field Target must not be empty")
    destination = _check_destination(target, what)
    source = str(item.get("Source") or "")
    readonly = bool(item.get("ReadOnly"))
    if kind == "bind":
        options = item.get("BindOptions") or {}
        if not source.startswith("/"):
            raise InvalidArgument(f"invalid {what}: the bind source must be an absolute path")
        if not os.path.exists(source):
            if not options.get("CreateMountpoint"):
                raise InvalidArgument(f"invalid {what}: bind source path does not exist: {source}")
            os.makedirs(source, exist_ok=True)
        propagation = str(options.get("Propagation") or "rprivate")
        if propagation not in PROPAGATIONS:
            raise InvalidArgument(f"invalid {what}: unknown propagation {propagation!r}")
        return Mount(os.path.normpath(source), destination, readonly, propagation)
    if kind == "volume":
        options = item.get("VolumeOptions") or {}
        driver = (options.get("DriverConfig") or {}).get("Name") or "local"
        if driver != "local":
            raise InvalidArgument(f"invalid {what}: volume driver {driver!r}: use local")
        if source and not VOLUME_NAME.fullmatch(source):
            raise InvalidArgument(f"invalid {what}: invalid volume name {source!r}")
        return Mount(
            "",
            destination,
            readonly,
            "",
            type="volume",
            name=source,
            anonymous=not source,
            copy_up=not options.get("NoCopy"),
        )
    if kind == "tmpfs":
        if source:
            raise InvalidArgument(f"invalid {what}: a tmpfs has no Source")
        options = item.get("TmpfsOptions") or {}
        data: list[str] = []
        if options.get("SizeBytes"):
            data.append(f"size={_int(options['SizeBytes'], 'TmpfsOptions.SizeBytes')}")
        if options.get("Mode"):
            data.append(f"mode={_int(options['Mode'], 'TmpfsOptions.Mode'):o}")
        mount = Mount("tmpfs", destination, readonly, "", type="tmpfs")
        mount.options = [*TMPFS_DEFAULTS, *data, *(["ro"] if readonly else [])]
        return mount
    raise InvalidArgument(f"invalid mount type {kind!r}: use bind, volume or tmpfs")


def _mounts(
    body: dict[str, Any], host: dict[str, Any], image_config: dict[str, Any]
) -> list[Mount]:
    """Binds, Mounts, Tmpfs, then anonymous volumes for the Volumes of the config and the
    image that nothing else covers. One destination, one mount."""
    mounts = [parse_bind(b) for b in _strings(host.get("Binds"), "Binds")]
    given = host.get("Mounts") or []
    if not isinstance(given, list):
        raise InvalidArgument("Mounts must be a list of objects")
    mounts += [parse_mount(m) for m in given]
    tmpfs = host.get("Tmpfs") or {}
    if not isinstance(tmpfs, dict):
        raise InvalidArgument('Tmpfs must be an object: {"/path": "size=64m"}')
    mounts += [parse_tmpfs(str(d), str(o or "")) for d, o in tmpfs.items()]
    seen: set[str] = set()
    for mount in mounts:
        if mount.destination in seen:
            raise InvalidArgument(f"duplicate mount point: {mount.destination}")
        seen.add(mount.destination)
    declared: list[str] = []
    for volumes in (image_config.get("Volumes"), body.get("Volumes")):
        if isinstance(volumes, dict):
            declared += [str(v) for v in volumes]
    for path in declared:
        destination = _check_destination(path, f"volume {path!r}")
        if destination not in seen:
            seen.add(destination)
            mounts.append(Mount("", destination, False, "", type="volume", anonymous=True))
    return mounts


def _security_options(
    host: dict[str, Any],
) -> tuple[bool, str, bool]:
    """SecurityOpt -> (seccomp unconfined, custom profile JSON, no_new_privs)."""
    unconfined = False
    profile = ""
    no_new_privileges = False
    for option in _strings(host.get("SecurityOpt"), "SecurityOpt"):
        key, sep, value = option.partition("=")
        if not sep and ":" in option:  # the old form, seccomp:unconfined
            key, _, value = option.partition(":")
        if key == "seccomp":
            if value == "unconfined":
                unconfined, profile = True, ""
            elif value in ("builtin", "default", ""):
                unconfined, profile = False, ""
            else:
                parsed = seccomp_default.parse_profile(value)
                seccomp_default.convert(parsed, set(DEFAULT_CAPS))  # fails here if bad
                unconfined, profile = False, json.dumps(parsed)
        elif key == "no-new-privileges":
            if value not in ("", "true", "false"):
                raise InvalidArgument(
                    f"invalid no-new-privileges value {value!r}: use true or false"
                )
            no_new_privileges = value != "false"
        elif key == "label" and value == "disable":
            continue
        else:
            raise InvalidArgument(f"security option {option!r} is not supported yet")
    return unconfined, profile, no_new_privileges


def from_docker(
    body: dict[str, Any], image_name: str, image_id: str, image_config: dict[str, Any]
) -> ContainerSpec:
    """The Engine API's create body (Config with HostConfig inside), over the image's
    defaults, validated: a bad value fails here, before anything is made."""
    if not isinstance(body, dict):
        raise InvalidArgument("the container config must be a JSON object")
    host = body.get("HostConfig") or {}
    if not isinstance(host, dict):
        raise InvalidArgument("HostConfig must be a JSON object")
    image_env = _strings(image_config.get("Env"), "image Env")
    env = list(image_env)
    for item in _strings(body.get("Env"), "Env"):
        key = item.split("=", 1)[0]
        env = [e for e in env if e.split("=", 1)[0] != key]
        env.append(item)
    if not any(e.startswith("PATH=") for e in env):
        env.insert(0, DEFAULT_PATH)
    entrypoint = (
        _strings(body.get("Entrypoint"), "Entrypoint")
        if body.get("Entrypoint") is not None
        else _strings(image_config.get("Entrypoint"), "image Entrypoint")
    )
    cmd = _strings(body.get("Cmd"), "Cmd")
    if not cmd and body.get("Entrypoint") is None:
        cmd = _strings(image_config.get("Cmd"), "image Cmd")
    if not entrypoint and not cmd:
        raise InvalidArgument("no command specified: give one, or use an image with a CMD")
    labels = dict(image_config.get("Labels") or {})
    labels.update(body.get("Labels") or {})
    mode = str(host.get("NetworkMode") or "")
    warnings: list[str] = []
    if mode not in NETWORK_MODES and not re.fullmatch(
        r"container:.+|[a-zA-Z0-9][a-zA-Z0-9_. -]*", mode
    ):  # a user network's name or id; engine/network checks that it exists
        raise InvalidArgument(f"invalid network mode {mode!r}")
    if mode in ("default", ""):
        mode = "bridge"
    cap_add = [_cap_name(c) for c in _strings(host.get("CapAdd"), "CapAdd")]
    cap_drop = [_cap_name(c) for c in _strings(host.get("CapDrop"), "CapDrop")]
    seccomp_unconfined, seccomp_profile, no_new_privileges = _security_options(host)
    stop_signal = str(body.get("StopSignal") or image_config.get("StopSignal") or "SIGTERM")
    from berth.runtime.container import parse_signal

    parse_signal(stop_signal)
    log_config = host.get("LogConfig") or {}
    log_type = log_config.get("Type") or "json-file"
    if log_type not in ("json-file", "local"):
        raise InvalidArgument(f"log driver {log_type!r} is not supported: use json-file")
    log_options = log_config.get("Config") or {}
    from berth.engine.jsonlog import parse_size

    pids_limit = _int(host.get("PidsLimit"), "PidsLimit")
    nano_cpus = _int(host.get("NanoCpus"), "NanoCpus")
    if nano_cpus < 0:
        raise InvalidArgument(f"NanoCpus must not be negative: {nano_cpus}")
    memory = _int(host.get("Memory"), "Memory")
    if memory and memory < 6 * 1024 * 1024:
        raise InvalidArgument("minimum memory limit allowed is 6MB")
    stop_timeout = body.get("StopTimeout")
    return ContainerSpec(
        image=image_name,
        image_id=image_id,
        entrypoint=entrypoint,
        cmd=cmd,
        env=env,
        working_dir=str(body.get("WorkingDir") or image_config.get("WorkingDir") or ""),
        user=str(body.get("User") or image_config.get("User") or ""),
        hostname=str(body.get("Hostname") or ""),
        domainname=str(body.get("Domainname") or ""),
        tty=bool(body.get("Tty")),
        open_stdin=bool(body.get("OpenStdin")),
        stdin_once=bool(body.get("StdinOnce")),
        labels={str(k): str(v) for k, v in labels.items()},
        stop_signal=stop_signal,
        stop_timeout=int(stop_timeout) if stop_timeout is not None else None,
        mounts=_mounts(body, host, image_config),
        network_mode=mode,
        auto_remove=bool(host.get("AutoRemove")),
        memory=memory,
        memory_swap=_int(host.get("MemorySwap"), "MemorySwap"),
        pids_limit=pids_limit if pids_limit > 0 else 0,
        nano_cpus=nano_cpus,
        cpu_shares=_int(host.get("CpuShares"), "CpuShares"),
        cap_add=cap_add,
        cap_drop=cap_drop,
        privileged=bool(host.get("Privileged")),
        readonly_rootfs=bool(host.get("ReadonlyRootfs")),
        seccomp_unconfined=seccomp_unconfined,
        seccomp_profile=seccomp_profile,
        no_new_privileges=no_new_privileges,
        log_max_size=parse_size(log_options.get("max-size")),
        log_max_files=int(log_options.get("max-file") or 3),
        warnings=warnings,
    )


def host_capabilities() -> list[str]:
    """ALL_CAPS that the daemon's own bounding set holds: what "all" can mean (Docker's
    rule; a daemon inside a container may lack some, and capset would then fail)."""
    from berth.linux.capabilities import CAP_NAMES

    try:
        with open("/proc/self/status") as f:
            line = next(x for x in f if x.startswith("CapBnd:"))
        mask = int(line.split()[1], 16)
    except (OSError, StopIteration, ValueError):
        return list(ALL_CAPS)
    return [c for c in ALL_CAPS if mask >> CAP_NAMES[c] & 1]


def capabilities(spec: ContainerSpec) -> list[str]:
    if spec.privileged:
        return host_capabilities()
    caps = list(DEFAULT_CAPS)
    if "ALL" in spec.cap_add:
        caps = host_capabilities()
    caps += [c for c in spec.cap_add if c != "ALL" and c not in caps]
    if "ALL" in spec.cap_drop:
        caps = [c for c in spec.cap_add if c != "ALL"]
    else:
        caps = [c for c in caps if c not in spec.cap_drop]
    return caps


def _passwd_lookup(rootfs: str, user: str) -> tuple[int, int, list[int]]:
    """``user[:group]`` (names or numbers) through the image's /etc/passwd and /etc/group."""
    name, _, group = user.partition(":")

    def read(path: str) -> list[list[str]]:
        try:
            with open(os.path.join(rootfs, path)) as f:
                return [line.rstrip("\n").split(":") for line in f if line.count(":") >= 2]
        except OSError:
            return []

    passwd = read("etc/passwd")
    groups = read("etc/group")
    uid = gid = -1
    if name.isdigit():
        uid = int(name)
        for entry in passwd:
            if len(entry) > 3 and entry[2] == name:
                gid = int(entry[3])
    else:
        for entry in passwd:
            if entry[0] == name and len(entry) > 3:
                uid, gid = int(entry[2]), int(entry[3])
                break
        else:
            raise InvalidArgument(f"unable to find user {name}: no matching entries in passwd file")
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            for entry in groups:
                if entry[0] == group:
                    gid = int(entry[2])
                    break
            else:
                raise InvalidArgument(
                    f"unable to find group {group}: no matching entries in group file"
                )
    if gid < 0:
        gid = 0
    lookup_name = name
    if name.isdigit():
        lookup_name = next((e[0] for e in passwd if len(e) > 2 and e[2] == name), "")
    additional = sorted(
        {
            int(e[2])
            for e in groups
            if len(e) > 3 and lookup_name and lookup_name in e[3].split(",") and int(e[2]) != gid
        }
    )
    return uid, gid, additional


def _nofile_hard() -> int:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        return NOFILE_HARD
    return min(hard, NOFILE_HARD)


def oci_config(
    spec: ContainerSpec,
    *,
    container_id: str,
    rootfs: str,
    hostname_file: str,
    hosts_file: str,
    resolv_file: str,
    netns: str = "",
) -> dict[str, Any]:
    """The runtime's config.json for this container (``rootfs`` is mounted already)."""
    caps = capabilities(spec)
    uid, gid, additional = (0, 0, []) if not spec.user else _passwd_lookup(rootfs, spec.user)
    env = list(spec.env)
    if spec.tty and not any(e.startswith("TERM=") for e in env):
        env.append("TERM=xterm")
    hostname = spec.hostname or container_id[:12]
    if not any(e.startswith("HOSTNAME=") for e in env):
        env.insert(1 if env and env[0].startswith("PATH=") else 0, f"HOSTNAME={hostname}")
    nofile_hard = _nofile_hard()
    process: dict[str, Any] = {
        "terminal": spec.tty,
        "user": {"uid": uid, "gid": gid, **({"additionalGids": additional} if additional else {})},
        "args": spec.args,
        "env": env,
        "cwd": spec.working_dir or "/",
        "capabilities": {
            "bounding": caps,
            "effective": caps,
            "permitted": caps,
        },
        "rlimits": [
            {"type": "RLIMIT_NOFILE", "soft": min(NOFILE_SOFT, nofile_hard), "hard": nofile_hard}
        ],
        "noNewPrivileges": spec.no_new_privileges,
        "oomScoreAdj": 0,
    }
    if spec.tty:
        process["consoleSize"] = {"height": 24, "width": 80}
    mounts: list[dict[str, Any]] = [
        {
            "destination": "/proc",
            "type": "proc",
            "source": "proc",
            "options": ["nosuid", "noexec", "nodev"],
        },
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
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
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
            "options": ["ro", "nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", f"size={SHM_SIZE}"],
        },
    ]
    defaults = len(mounts)
    if spec.privileged:
        mounts[3]["options"] = ["nosuid", "noexec", "nodev", "rw"]
        mounts[4]["options"] = ["rw", "nosuid", "noexec", "nodev"]
    bound = {m.destination for m in spec.mounts}
    for destination, source in (
        ("/etc/resolv.conf", resolv_file),
        ("/etc/hostname", hostname_file),
        ("/etc/hosts", hosts_file),
    ):
        if destination not in bound:
            mounts.append(
                {
                    "destination": destination,
                    "type": "bind",
                    "source": source,
                    "options": ["rbind", "rprivate"],
                }
            )
    for mount in spec.mounts:
        if mount.type == "tmpfs":
            mounts.append(
                {
                    "destination": mount.destination,
                    "type": "tmpfs",
                    "source": "tmpfs",
                    "options": list(mount.options),
                }
            )
            continue
        if not mount.source:
            raise InvalidArgument(f"the volume at {mount.destination} has no host path")
        options = ["rbind", mount.propagation or "rprivate"]
        if mount.readonly:
            options.append("ro")
        mounts.append(
            {
                "destination": mount.destination,
                "type": "bind",
                "source": mount.source,
                "options": options,
            }
        )
    # A parent before its children (a volume on /etc, then /etc/hostname), as Docker sorts.
    mounts[defaults:] = sorted(
        mounts[defaults:], key=lambda m: len(os.path.normpath(m["destination"]).split("/"))
    )
    namespaces: list[dict[str, Any]] = [
        {"type": "pid"},
        {"type": "ipc"},
        {"type": "uts"},
        {"type": "mount"},
    ]
    if spec.network_mode != "host":  # the engine's namespace (engine/network), by path
        namespaces.append({"type": "network", **({"path": netns} if netns else {})})
    resources: dict[str, Any] = {
        "devices": [{"allow": bool(spec.privileged), "access": "rwm"}],
    }
    if spec.memory:
        swap = spec.memory_swap if spec.memory_swap else spec.memory * 2
        resources["memory"] = {"limit": spec.memory, **({"swap": swap} if swap > 0 else {})}
    if spec.pids_limit:
        resources["pids"] = {"limit": spec.pids_limit}
    cpu: dict[str, Any] = {}
    if spec.nano_cpus:
        cpu["period"] = 100000
        cpu["quota"] = spec.nano_cpus * 100000 // 1_000_000_000
    if spec.cpu_shares:
        cpu["shares"] = spec.cpu_shares
    if cpu:
        resources["cpu"] = cpu
    linux: dict[str, Any] = {
        "namespaces": namespaces,
        "resources": resources,
        "cgroupsPath": f"/berth/{container_id}",
        "rootfsPropagation": "rprivate",
    }
    if not spec.privileged:
        linux["maskedPaths"] = list(MASKED_PATHS)
        linux["readonlyPaths"] = list(READONLY_PATHS)
    seccomp = seccomp_config(spec, caps)
    if seccomp is not None:
        linux["seccomp"] = seccomp
    return {
        "ociVersion": oci.OCI_VERSION,
        "process": process,
        "root": {"path": rootfs, "readonly": spec.readonly_rootfs},
        "hostname": hostname,
        **({"domainname": spec.domainname} if spec.domainname else {}),
        "mounts": mounts,
        "linux": linux,
        "annotations": {"org.berth.container.name": ""},
    }


def seccomp_config(spec: ContainerSpec, caps: list[str]) -> dict[str, Any] | None:
    """Docker's rules: unconfined when asked; a privileged container gets no default
    profile but does get a custom one; the default depends on the capabilities."""
    if spec.seccomp_unconfined:
        return None
    if spec.seccomp_profile:
        return seccomp_default.convert(json.loads(spec.seccomp_profile), set(caps))
    if spec.privileged:
        return None
    return seccomp_default.default_profile(set(caps))


def stop_signal_number(spec: ContainerSpec) -> int:
    from berth.runtime.container import parse_signal

    try:
        return parse_signal(spec.stop_signal)
    except InvalidArgument:
        return int(signal.SIGTERM)
