"""Linux capabilities: names, and applying the five OCI capability sets to this process.

The order matters and follows runc: drop the bounding set first (needs CAP_SETPCAP),
keep capabilities across the switch to the container user, then set effective,
permitted and inheritable with capset(2), and finally raise the ambient ones.
"""

from __future__ import annotations

import ctypes
import os

from berth.errors import ConfigError
from berth.linux import syscalls

CAP_NAMES: dict[str, int] = {
    name: number
    for number, name in enumerate(
        [
            "CAP_CHOWN",
            "CAP_DAC_OVERRIDE",
            "CAP_DAC_READ_SEARCH",
            "CAP_FOWNER",
            "CAP_FSETID",
            "CAP_KILL",
            "CAP_SETGID",
            "CAP_SETUID",
            "CAP_SETPCAP",
            "CAP_LINUX_IMMUTABLE",
            "CAP_NET_BIND_SERVICE",
            "CAP_NET_BROADCAST",
            "CAP_NET_ADMIN",
            "CAP_NET_RAW",
            "CAP_IPC_LOCK",
            "CAP_IPC_OWNER",
            "CAP_SYS_MODULE",
            "CAP_SYS_RAWIO",
            "CAP_SYS_CHROOT",
            "CAP_SYS_PTRACE",
            "CAP_SYS_PACCT",
            "CAP_SYS_ADMIN",
            "CAP_SYS_BOOT",
            "CAP_SYS_NICE",
            "CAP_SYS_RESOURCE",
            "CAP_SYS_TIME",
            "CAP_SYS_TTY_CONFIG",
            "CAP_MKNOD",
            "CAP_LEASE",
            "CAP_AUDIT_WRITE",
            "CAP_AUDIT_CONTROL",
            "CAP_SETFCAP",
            "CAP_MAC_OVERRIDE",
            "CAP_MAC_ADMIN",
            "CAP_SYSLOG",
            "CAP_WAKE_ALARM",
            "CAP_BLOCK_SUSPEND",
            "CAP_AUDIT_READ",
            "CAP_PERFMON",
            "CAP_BPF",
            "CAP_CHECKPOINT_RESTORE",
        ]
    )
}

CAP_SETPCAP = CAP_NAMES["CAP_SETPCAP"]
_CAP_VERSION_3 = 0x20080522
SETS = ("bounding", "effective", "permitted", "inheritable", "ambient")


def last_cap() -> int:
    """The highest capability number this kernel knows."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return max(CAP_NAMES.values())


def parse(names: list[str], field: str = "capabilities") -> set[int]:
    """Capability names to numbers; unknown names are a config error, as in runc."""
    numbers = set()
    for name in names:
        key = name.upper()
        if not key.startswith("CAP_"):
            key = "CAP_" + key
        if key not in CAP_NAMES:
            raise ConfigError(f"unknown capability {name!r} in {field}")
        numbers.add(CAP_NAMES[key])
    return numbers


def validate(caps: dict[str, list[str]]) -> None:
    for field in SETS:
        parse(caps.get(field) or [], f"process.capabilities.{field}")


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _mask(caps: set[int]) -> int:
    value = 0
    for cap in caps:
        value |= 1 << cap
    return value


def capset(effective: set[int], permitted: set[int], inheritable: set[int]) -> None:
    header = _Header(_CAP_VERSION_3, 0)
    data = (_Data * 2)()
    for index, (e, p, i) in enumerate(
        [(_mask(effective), _mask(permitted), _mask(inheritable))] * 2
    ):
        shift = 32 * index
        data[index].effective = (e >> shift) & 0xFFFFFFFF
        data[index].permitted = (p >> shift) & 0xFFFFFFFF
        data[index].inheritable = (i >> shift) & 0xFFFFFFFF
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.capset(ctypes.byref(header), data) < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capset: {os.strerror(err)}")


def drop_bounding(keep: set[int]) -> None:
    for cap in range(last_cap() + 1):
        if cap not in keep:
            try:
                syscalls.prctl(syscalls.PR_CAPBSET_DROP, cap)
            except OSError as exc:
                if exc.errno != 22:  # EINVAL: the kernel does not know this cap
                    raise


def apply_final(caps: dict[str, list[str]]) -> None:
    """Set effective/permitted/inheritable, then ambient, after the user switch."""
    top = last_cap()
    effective = {c for c in parse(caps.get("effective") or []) if c <= top}
    permitted = {c for c in parse(caps.get("permitted") or []) if c <= top}
    inheritable = {c for c in parse(caps.get("inheritable") or []) if c <= top}
    capset(effective, permitted, inheritable)
    for cap in sorted(parse(caps.get("ambient") or [])):
        if cap > top:
            continue
        try:
            syscalls.prctl(syscalls.PR_CAP_AMBIENT, syscalls.PR_CAP_AMBIENT_RAISE, cap)
        except OSError as exc:
            # runc ignores ambient caps that are not also permitted and inheritable.
            if exc.errno != 1:
                raise
