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
    subpath: str = ""  # a volume's subdirectory to mount instead of its root


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
    log_driver: str = "json-file"
    group_add: list[str] = field(default_factory=list)
    pid_mode: str = ""  # "", host, container:<id>
    ipc_mode: str = ""  # "", private, shareable, host, none, container:<id>
    uts_mode: str = ""  # "", host
    cgroupns_mode: str = ""  # "", host, private
    cpuset_cpus: str = ""
    cpuset_mems: str = ""
    cpu_period: int = 0
    cpu_quota: int = 0
    memory_reservation: int = 0
    memory_swappiness: int = -1
    oom_kill_disable: bool = False
    oom_score_adj: int = 0
    blkio_weight: int = 0
    shm_size: int = SHM_SIZE
    init: bool = False
    runtime: str = ""  # "" = the daemon's default at start
    devices: list[dict[str, str]] = field(default_factory=list)
    device_cgroup_rules: list[str] = field(default_factory=list)
    ulimits: list[dict[str, Any]] = field(default_factory=list)
    sysctls: dict[str, str] = field(default_factory=dict)
    links: list[str] = field(default_factory=list)  # "container-name:alias"
    mac_address: str = ""
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
        subpath = str(options.get("Subpath") or "")
        if subpath and (subpath.startswith("/") or ".." in subpath.split("/") or not source):
            raise InvalidArgument(
                f"invalid {what}: Subpath must be relative, inside a named volume"
            )
        return Mount(
            "",
            destination,
            readonly,
            "",
            type="volume",
            name=source,
            anonymous=not source,
            copy_up=not options.get("NoCopy") and not subpath,
            subpath=os.path.normpath(subpath) if subpath else "",
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
    log_type, log_options = _log_config(host)
    from berth.engine.jsonlog import parse_size

    pids_limit = _int(host.get("PidsLimit"), "PidsLimit")
    nano_cpus = _int(host.get("NanoCpus"), "NanoCpus")
    if nano_cpus < 0:
        raise InvalidArgument(f"NanoCpus must not be negative: {nano_cpus}")
    memory = _int(host.get("Memory"), "Memory")
    if memory and memory < 6 * 1024 * 1024:
        raise InvalidArgument("minimum memory limit allowed is 6MB")
    memory_swap = _int(host.get("MemorySwap"), "MemorySwap")
    if memory and not memory_swap:
        memory_swap = memory * 2  # dockerd's default, shown by inspect
    if memory and memory_swap > 0 and memory_swap < memory:
        raise InvalidArgument(
            "Minimum memoryswap limit should be larger than memory limit, see usage"
        )
    stop_timeout = body.get("StopTimeout")
    modes = _namespace_modes(host, body)
    cpu_period = _int(host.get("CpuPeriod"), "CpuPeriod")
    cpu_quota = _int(host.get("CpuQuota"), "CpuQuota")
    check_cpu(nano_cpus, cpu_period, cpu_quota)
    swappiness = host.get("MemorySwappiness")
    swappiness = -1 if swappiness is None else _int(swappiness, "MemorySwappiness")
    if swappiness != -1 and not 0 <= swappiness <= 100:
        raise InvalidArgument(
            f"Invalid value: {swappiness}, valid memory swappiness range is 0-100"
        )
    shm_size = _int(host.get("ShmSize"), "ShmSize")
    if shm_size < 0:
        raise InvalidArgument("SHM size can not be less than 0")
    runtime = host.get("Runtime") or body.get("Runtime") or ""  # docker-py sends Config's
    if not isinstance(runtime, str):
        raise InvalidArgument("Runtime must be a string")
    sysctls = host.get("Sysctls") or {}
    if not isinstance(sysctls, dict):
        raise InvalidArgument('Sysctls must be an object: {"net.core.somaxconn": "1024"}')
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
        memory_swap=memory_swap,
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
        log_driver=log_type,
        group_add=[str(g) for g in _list_of(host.get("GroupAdd"), "GroupAdd", (str, int))],
        pid_mode=modes["pid"],
        ipc_mode=modes["ipc"],
        uts_mode=modes["uts"],
        cgroupns_mode=modes["cgroupns"],
        cpuset_cpus=check_cpuset(str(host.get("CpusetCpus") or ""), "cpus"),
        cpuset_mems=check_cpuset(str(host.get("CpusetMems") or ""), "mems"),
        cpu_period=cpu_period,
        cpu_quota=cpu_quota,
        memory_reservation=_int(host.get("MemoryReservation"), "MemoryReservation"),
        memory_swappiness=swappiness,
        oom_kill_disable=bool(host.get("OomKillDisable")),
        oom_score_adj=_oom_score_adj(host.get("OomScoreAdj")),
        blkio_weight=_blkio_weight(host.get("BlkioWeight")),
        shm_size=shm_size or SHM_SIZE,
        init=bool(host.get("Init")),
        runtime=runtime,
        devices=[_device(d) for d in _list_of(host.get("Devices"), "Devices", (dict,))],
        device_cgroup_rules=[
            _device_cgroup_rule(r)
            for r in _list_of(host.get("DeviceCgroupRules"), "DeviceCgroupRules", (str,))
        ],
        ulimits=[_ulimit(u) for u in _list_of(host.get("Ulimits"), "Ulimits", (dict,))],
        sysctls={str(k): str(v) for k, v in sysctls.items()},
        links=[_link(v) for v in _list_of(host.get("Links"), "Links", (str,))],
        mac_address=_mac_address(body.get("MacAddress") or _endpoint_mac(body)),
        warnings=warnings,
    )


LOG_DRIVERS = ("json-file", "local", "none")
DOCKER_LOG_DRIVERS = (
    "syslog", "journald", "gelf", "fluentd", "awslogs", "splunk", "etwlogs", "gcplogs",
    "logentries",
)  # fmt: skip
LOG_OPTIONS = {
    "json-file": {"max-size", "max-file", "compress", "labels", "labels-regex", "env",
                  "env-regex", "tag"},
    "local": {"max-size", "max-file", "compress"},
}  # fmt: skip
ULIMITS = (
    "core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile",
    "nproc", "rss", "rtprio", "rttime", "sigpending", "stack", "as",
)  # fmt: skip
INIT_PATHS = ("/usr/bin/tini-static", "/usr/bin/docker-init", "/usr/libexec/docker/docker-init")
INIT_DESTINATION = "/sbin/docker-init"
_DEVICE_RULE = re.compile(r"^([acb]) ([0-9]+|\*):([0-9]+|\*) ([rwm]{1,3})$")
_MAC = re.compile(r"^([0-9a-fA-F]{2}[:-]){5}[0-9a-fA-F]{2}$")


def _list_of(value: Any, what: str, kinds: tuple[type, ...]) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(
        isinstance(v, kinds) and not isinstance(v, bool) for v in value
    ):
        raise InvalidArgument(f"{what} must be a list")
    return list(value)


def _log_config(host: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """Docker's log drivers: json-file (the default), local (kept as json-file), none."""
    log_config = host.get("LogConfig") or {}
    if not isinstance(log_config, dict):
        raise InvalidArgument("LogConfig must be an object")
    log_type = str(log_config.get("Type") or "json-file")
    options = log_config.get("Config") or {}
    if not isinstance(options, dict):
        raise InvalidArgument("LogConfig.Config must be an object of strings")
    if log_type in DOCKER_LOG_DRIVERS:
        raise InvalidArgument(
            f"log driver {log_type!r} is not supported by berthd: use json-file, local or none"
        )
    if log_type not in LOG_DRIVERS:
        raise InvalidArgument(f"logger: no log driver named '{log_type}' is registered")
    allowed = LOG_OPTIONS.get(log_type)
    for key in options:
        if allowed is not None and key not in allowed:
            raise InvalidArgument(f"unknown log opt '{key}' for {log_type} log driver")
    return log_type, {str(k): str(v) for k, v in options.items()}


def _namespace_modes(host: dict[str, Any], body: dict[str, Any]) -> dict[str, str]:
    """PidMode, IpcMode, UTSMode, CgroupnsMode, checked as dockerd checks them."""
    pid = str(host.get("PidMode") or "")
    ipc = str(host.get("IpcMode") or "")
    uts = str(host.get("UTSMode") or "")
    cgroupns = str(host.get("CgroupnsMode") or "")
    if pid not in ("", "host") and not (pid.startswith("container:") and pid[10:]):
        raise InvalidArgument(f"invalid PID mode: {pid}")
    if ipc not in ("", "private", "shareable", "host", "none") and not (
        ipc.startswith("container:") and ipc[10:]
    ):
        raise InvalidArgument(f"invalid IPC mode: {ipc}")
    if uts not in ("", "host"):
        raise InvalidArgument(f"invalid UTS mode: {uts}")
    if cgroupns not in ("", "host", "private"):
        raise InvalidArgument(f"invalid cgroup namespace mode: {cgroupns}")
    if uts == "host" and body.get("Hostname"):
        raise InvalidArgument("Conflicting options: hostname and the UTS mode")
    return {"pid": pid, "ipc": ipc, "uts": uts, "cgroupns": cgroupns}


def check_cpu(nano_cpus: int, period: int, quota: int) -> None:
    if nano_cpus and (period or quota):
        raise InvalidArgument(
            "Conflicting options: Nano CPUs and CPU Period cannot both be set"
            if period
            else "Conflicting options: Nano CPUs and CPU Quota cannot both be set"
        )
    if period and not 1000 <= period <= 1_000_000:
        raise InvalidArgument(
            "CPU cfs period can not be less than 1ms (i.e. 1000) or larger than 1s (i.e. 1000000)"
        )
    if quota and 0 < quota < 1000:
        raise InvalidArgument("CPU cfs quota can not be less than 1ms (i.e. 1000)")
    if nano_cpus:
        cpus = os.cpu_count() or 1
        if nano_cpus > cpus * 1_000_000_000:
            raise InvalidArgument(
                f"Range of CPUs is from 0.01 to {cpus}.00, as there are only {cpus} CPUs available"
            )


def _parse_set(text: str) -> set[int]:
    result: set[int] = set()
    for part in text.split(","):
        low, dash, high = part.strip().partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise ValueError(part)
        result.update(range(int(low), int(high if dash else low) + 1))
    return result


def check_cpuset(text: str, kind: str) -> str:
    """``0-2,4``: well formed, and every CPU (or memory node) present on this host."""
    if not text:
        return ""
    try:
        wanted = _parse_set(text)
    except ValueError:
        raise InvalidArgument(f"Invalid value {text} for cpuset {kind}") from None
    source = (
        "/sys/devices/system/cpu/online" if kind == "cpus" else ("/sys/devices/system/node/online")
    )
    try:
        with open(source) as f:
            available_text = f.read().strip()
        available = _parse_set(available_text)
    except (OSError, ValueError):
        return text
    if not wanted <= available:
        raise InvalidArgument(
            f"Requested {'CPUs' if kind == 'cpus' else 'memory nodes'} are not available"
            f" - requested {text}, available: {available_text}"
        )
    return text


def _oom_score_adj(value: Any) -> int:
    score = _int(value, "OomScoreAdj")
    if not -1000 <= score <= 1000:
        raise InvalidArgument(f"Invalid value {score}, range for oom score adj is [-1000, 1000]")
    return score


def _blkio_weight(value: Any) -> int:
    weight = _int(value, "BlkioWeight")
    if weight and not 10 <= weight <= 1000:
        raise InvalidArgument("Range of blkio weight is from 10 to 1000")
    return weight


def _device(item: dict[str, Any]) -> dict[str, str]:
    """``--device /dev/x[:/dev/y[:rwm]]``: the host node must exist."""
    host_path = str(item.get("PathOnHost") or "")
    inside = str(item.get("PathInContainer") or host_path)
    permissions = str(item.get("CgroupPermissions") or "rwm")
    if not host_path.startswith("/") or not inside.startswith("/"):
        raise InvalidArgument(f"invalid device {host_path!r}: paths must be absolute")
    if not permissions or set(permissions) - set("rwm"):
        raise InvalidArgument(f"invalid device mode: {permissions}")
    try:
        os.stat(host_path)
    except OSError as exc:
        raise InvalidArgument(
            f"error gathering device information while adding custom device"
            f' "{host_path}": {exc.strerror.lower() if exc.strerror else exc}'
        ) from None
    return {"PathOnHost": host_path, "PathInContainer": inside, "CgroupPermissions": permissions}


def _device_cgroup_rule(rule: str) -> str:
    if not _DEVICE_RULE.fullmatch(rule.strip()):
        raise InvalidArgument(f"invalid device cgroup rule format: '{rule}'")
    return rule.strip()


def _ulimit(item: dict[str, Any]) -> dict[str, Any]:
    name = str(item.get("Name") or "")
    if name not in ULIMITS:
        raise InvalidArgument(f"invalid ulimit type: {name}")
    soft, hard = _int(item.get("Soft"), "Ulimit Soft"), _int(item.get("Hard"), "Ulimit Hard")
    if soft > hard:
        raise InvalidArgument(
            f"ulimit soft limit must be less than or equal to hard limit: {soft} > {hard}"
        )
    return {"Name": name, "Soft": soft, "Hard": hard}


def _link(text: str) -> str:
    name, _, alias = text.partition(":")
    name = name.strip("/")
    alias = alias.strip("/").rsplit("/", 1)[-1] or name
    if not name:
        raise InvalidArgument(f"invalid link {text!r}: use name:alias")
    return f"{name}:{alias}"


def _endpoint_mac(body: dict[str, Any]) -> str:
    endpoints = (body.get("NetworkingConfig") or {}).get("EndpointsConfig") or {}
    for endpoint in endpoints.values() if isinstance(endpoints, dict) else []:
        if isinstance(endpoint, dict) and endpoint.get("MacAddress"):
            return str(endpoint["MacAddress"])
    return ""


def _mac_address(text: str) -> str:
    if text and not _MAC.fullmatch(text):
        raise InvalidArgument(f"invalid MAC address: {text}")
    return text


def init_binary() -> str:
    """The static init bound at /sbin/docker-init for ``--init`` (tini, as dockerd)."""
    for path in INIT_PATHS:
        if os.access(path, os.X_OK):
            return path
    raise InvalidArgument(
        f"no init binary for --init: install tini (looked for {', '.join(INIT_PATHS)})"
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


def _group_ids(rootfs: str, groups: list[str]) -> list[int]:
    """GroupAdd: numbers, or names looked up in the image's /etc/group."""
    ids = []
    entries: list[list[str]] | None = None
    for group in groups:
        if group.isdigit():
            ids.append(int(group))
            continue
        if entries is None:
            try:
                with open(os.path.join(rootfs, "etc/group")) as f:
                    entries = [line.rstrip("\n").split(":") for line in f if line.count(":") >= 2]
            except OSError:
                entries = []
        for entry in entries:
            if entry[0] == group and entry[2].isdigit():
                ids.append(int(entry[2]))
                break
        else:
            raise InvalidArgument(
                f"unable to find group {group}: no matching entries in group file"
            )
    return ids


def resources(spec: ContainerSpec) -> dict[str, Any]:
    """``linux.resources`` of the OCI config; also what an update applies live."""
    result: dict[str, Any] = {}
    memory: dict[str, Any] = {}
    if spec.memory:
        swap = spec.memory_swap if spec.memory_swap else spec.memory * 2
        memory["limit"] = spec.memory
        if swap > 0:
            memory["swap"] = swap
    elif spec.memory_swap:
        memory["swap"] = spec.memory_swap
    if spec.memory_reservation:
        memory["reservation"] = spec.memory_reservation
    if spec.memory_swappiness >= 0:
        memory["swappiness"] = spec.memory_swappiness
    if spec.oom_kill_disable:
        memory["disableOOMKiller"] = True
    if memory:
        result["memory"] = memory
    if spec.pids_limit:
        result["pids"] = {"limit": spec.pids_limit}
    cpu: dict[str, Any] = {}
    if spec.nano_cpus:
        cpu["period"] = 100000
        cpu["quota"] = spec.nano_cpus * 100000 // 1_000_000_000
    if spec.cpu_period:
        cpu["period"] = spec.cpu_period
    if spec.cpu_quota:
        cpu["quota"] = spec.cpu_quota
    if spec.cpu_shares:
        cpu["shares"] = spec.cpu_shares
    if spec.cpuset_cpus:
        cpu["cpus"] = spec.cpuset_cpus
    if spec.cpuset_mems:
        cpu["mems"] = spec.cpuset_mems
    if cpu:
        result["cpu"] = cpu
    if spec.blkio_weight:
        result["blockIO"] = {"weight": spec.blkio_weight}
    return result


def _device_rules(spec: ContainerSpec, nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = [{"allow": bool(spec.privileged), "access": "rwm"}]
    for node, device in zip(nodes, spec.devices, strict=True):
        rules.append(
            {
                "allow": True,
                "type": node["type"],
                "major": node["major"],
                "minor": node["minor"],
                "access": device["CgroupPermissions"],
            }
        )
    for text in spec.device_cgroup_rules:
        match = _DEVICE_RULE.fullmatch(text)
        if match is None:
            continue
        kind, major, minor, access = match.groups()
        rule: dict[str, Any] = {"allow": True, "type": kind, "access": access}
        if major != "*":
            rule["major"] = int(major)
        if minor != "*":
            rule["minor"] = int(minor)
        rules.append(rule)
    return rules


def _device_nodes(spec: ContainerSpec) -> list[dict[str, Any]]:
    """``linux.devices`` for --device (the host node's type and numbers)."""
    import stat

    nodes = []
    for device in spec.devices:
        try:
            st = os.stat(device["PathOnHost"])
        except OSError as exc:
            raise InvalidArgument(
                f"error gathering device information while adding custom device"
                f' "{device["PathOnHost"]}": {exc.strerror or exc}'
            ) from None
        if stat.S_ISCHR(st.st_mode):
            kind = "c"
        elif stat.S_ISBLK(st.st_mode):
            kind = "b"
        else:
            raise InvalidArgument(f"{device['PathOnHost']} is not a device node")
        nodes.append(
            {
                "path": device["PathInContainer"],
                "type": kind,
                "major": os.major(st.st_rdev),
                "minor": os.minor(st.st_rdev),
                "fileMode": st.st_mode & 0o7777,
                "uid": 0,
                "gid": 0,
            }
        )
    return nodes


def oci_config(
    spec: ContainerSpec,
    *,
    container_id: str,
    rootfs: str,
    hostname_file: str,
    hosts_file: str,
    resolv_file: str,
    extra_env: list[str] | None = None,
    namespace_paths: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The runtime's config.json for this container (``rootfs`` is mounted already).

    ``extra_env``: the legacy links' variables; ``namespace_paths``: ``{"pid":
    "/proc/N/ns/pid"}`` for ``container:<id>`` modes (the daemon resolves them)."""
    caps = capabilities(spec)
    uid, gid, additional = (0, 0, []) if not spec.user else _passwd_lookup(rootfs, spec.user)
    for extra in _group_ids(rootfs, spec.group_add):
        if extra not in additional and extra != gid:
            additional.append(extra)
    env = list(spec.env)
    for item in extra_env or []:
        if not any(e.split("=", 1)[0] == item.split("=", 1)[0] for e in env):
            env.append(item)
    if spec.tty and not any(e.startswith("TERM=") for e in env):
        env.append("TERM=xterm")
    hostname = spec.hostname or container_id[:12]
    if spec.uts_mode == "host":
        import socket

        hostname = socket.gethostname()
    if not any(e.startswith("HOSTNAME=") for e in env):
        env.insert(1 if env and env[0].startswith("PATH=") else 0, f"HOSTNAME={hostname}")
    nofile_hard = _nofile_hard()
    rlimits = [
        {"type": "RLIMIT_NOFILE", "soft": min(NOFILE_SOFT, nofile_hard), "hard": nofile_hard}
    ]
    for ulimit in spec.ulimits:
        kind = "RLIMIT_" + str(ulimit["Name"]).upper()
        rlimits = [r for r in rlimits if r["type"] != kind]
        rlimits.append({"type": kind, "soft": ulimit["Soft"], "hard": ulimit["Hard"]})
    args = spec.args
    if spec.init:
        args = [INIT_DESTINATION, "--", *args]
    process: dict[str, Any] = {
        "terminal": spec.tty,
        "user": {"uid": uid, "gid": gid, **({"additionalGids": additional} if additional else {})},
        "args": args,
        "env": env,
        "cwd": spec.working_dir or "/",
        "capabilities": {
            "bounding": caps,
            "effective": caps,
            "permitted": caps,
        },
        "rlimits": rlimits,
        "noNewPrivileges": spec.no_new_privileges,
        "oomScoreAdj": spec.oom_score_adj,
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
            "options": ["nosuid", "noexec", "nodev", "mode=1777", f"size={spec.shm_size}"],
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
        source = mount.source
        if mount.subpath:
            from berth.runtime.rootfs import secure_join

            source = secure_join(mount.source, mount.subpath)
            if not os.path.exists(source):
                raise InvalidArgument(
                    f"cannot access path {source}: the subpath {mount.subpath!r} does not"
                    f" exist in volume {mount.name}"
                )
        options = ["rbind", mount.propagation or "rprivate"]
        if mount.readonly:
            options.append("ro")
        mounts.append(
            {
                "destination": mount.destination,
                "type": "bind",
                "source": source,
                "options": options,
            }
        )
    if spec.init:
        mounts.append(
            {
                "destination": INIT_DESTINATION,
                "type": "bind",
                "source": init_binary(),
                "options": ["rbind", "rprivate", "ro"],
            }
        )
    # A parent before its children (a volume on /etc, then /etc/hostname), as Docker sorts.
    mounts[defaults:] = sorted(
        mounts[defaults:], key=lambda m: len(os.path.normpath(m["destination"]).split("/"))
    )
    paths = namespace_paths or {}
    namespaces: list[dict[str, Any]] = []
    for kind, mode in (("pid", spec.pid_mode), ("ipc", spec.ipc_mode), ("uts", spec.uts_mode)):
        if mode == "host":
            continue
        if kind in paths:
            namespaces.append({"type": kind, "path": paths[kind]})
        else:
            namespaces.append({"type": kind})
    namespaces.append({"type": "mount"})
    if "network" in paths:  # the engine's namespace (engine/network), joined by path
        namespaces.append({"type": "network", "path": paths["network"]})
    elif spec.network_mode != "host":
        namespaces.append({"type": "network"})
    if spec.cgroupns_mode == "private":
        namespaces.append({"type": "cgroup"})
    nodes = _device_nodes(spec)
    linux_resources: dict[str, Any] = {"devices": _device_rules(spec, nodes), **resources(spec)}
    linux: dict[str, Any] = {
        "namespaces": namespaces,
        "resources": linux_resources,
        "cgroupsPath": f"/berth/{container_id}",
        "rootfsPropagation": "rprivate",
    }
    if nodes:
        linux["devices"] = nodes
    if spec.sysctls:
        linux["sysctl"] = dict(spec.sysctls)
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
        **({"hostname": hostname} if spec.uts_mode != "host" else {}),
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
