"""OCI ``linux.seccomp`` filters, built and loaded through libseccomp (ctypes).

:func:`validate` checks a runtime-spec seccomp object without touching the kernel;
:func:`load` builds the filter with libseccomp and installs it on the calling thread.
``load`` runs in the forked, single-threaded container child just before ``execve``,
so this module imports nothing heavy and opens libseccomp once, lazily.

Semantics follow runc (``libcontainer/seccomp``):

- syscall names libseccomp does not know are ignored, not an error;
- a rule whose action equals the default action is skipped;
- the ``args`` of one syscalls entry form ONE rule (AND), unless two of them name
  the same argument index: then each arg becomes its own rule (OR);
- ``SCMP_ACT_ERRNO`` / ``SCMP_ACT_TRACE`` return ``errnoRet`` (default ``EPERM``);
- ``no_new_privs`` is left to the runtime (``SCMP_FLTATR_CTL_NNP`` = 0), so loading
  needs ``CAP_SYS_ADMIN`` unless the runtime has already set it.

Seccomp user notification (``SCMP_ACT_NOTIFY``, ``listenerPath``) is not supported.
"""

from __future__ import annotations

import ctypes
import errno
import os

from berth.errors import ConfigError

# typing costs milliseconds to import on every container start: types only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Final, TypeGuard

__all__ = [
    "KNOWN_ACTIONS",
    "KNOWN_ARCHES",
    "KNOWN_FLAGS",
    "KNOWN_OPERATORS",
    "SeccompError",
    "load",
    "validate",
]


class SeccompError(ConfigError):
    """A seccomp profile is invalid, or libseccomp/the kernel refused to load it."""


# --- spec vocabulary -> libseccomp values ------------------------------------------

# Action values from <seccomp.h>; ERRNO and TRACE carry a 16-bit datum (errnoRet).
_ACT_KILL_THREAD: Final = 0x00000000
_ACT_KILL_PROCESS: Final = 0x80000000
_ACT_TRAP: Final = 0x00030000
_ACT_ERRNO: Final = 0x00050000
_ACT_TRACE: Final = 0x7FF00000
_ACT_LOG: Final = 0x7FFC0000
_ACT_ALLOW: Final = 0x7FFF0000

_ACTIONS: Final[dict[str, int]] = {
    "SCMP_ACT_KILL": _ACT_KILL_THREAD,
    "SCMP_ACT_KILL_PROCESS": _ACT_KILL_PROCESS,
    "SCMP_ACT_KILL_THREAD": _ACT_KILL_THREAD,
    "SCMP_ACT_TRAP": _ACT_TRAP,
    "SCMP_ACT_ERRNO": _ACT_ERRNO,
    "SCMP_ACT_TRACE": _ACT_TRACE,
    "SCMP_ACT_ALLOW": _ACT_ALLOW,
    "SCMP_ACT_LOG": _ACT_LOG,
}
_ERRNO_ACTIONS: Final = frozenset({"SCMP_ACT_ERRNO", "SCMP_ACT_TRACE"})
_UNSUPPORTED_ACTIONS: Final = frozenset({"SCMP_ACT_NOTIFY"})

#: Actions :func:`load` implements (``SCMP_ACT_NOTIFY`` is deliberately absent).
KNOWN_ACTIONS: Final[tuple[str, ...]] = tuple(_ACTIONS)

# enum scmp_compare
_OPERATORS: Final[dict[str, int]] = {
    "SCMP_CMP_NE": 1,
    "SCMP_CMP_LT": 2,
    "SCMP_CMP_LE": 3,
    "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5,
    "SCMP_CMP_GT": 6,
    "SCMP_CMP_MASKED_EQ": 7,
}
KNOWN_OPERATORS: Final[tuple[str, ...]] = tuple(_OPERATORS)

# Spec architecture names -> names accepted by seccomp_arch_resolve_name().
_ARCHES: Final[dict[str, str]] = {
    "SCMP_ARCH_X86": "x86",
    "SCMP_ARCH_X86_64": "x86_64",
    "SCMP_ARCH_X32": "x32",
    "SCMP_ARCH_ARM": "arm",
    "SCMP_ARCH_AARCH64": "aarch64",
    "SCMP_ARCH_MIPS": "mips",
    "SCMP_ARCH_MIPS64": "mips64",
    "SCMP_ARCH_MIPS64N32": "mips64n32",
    "SCMP_ARCH_MIPSEL": "mipsel",
    "SCMP_ARCH_MIPSEL64": "mipsel64",
    "SCMP_ARCH_MIPSEL64N32": "mipsel64n32",
    "SCMP_ARCH_PPC": "ppc",
    "SCMP_ARCH_PPC64": "ppc64",
    "SCMP_ARCH_PPC64LE": "ppc64le",
    "SCMP_ARCH_S390": "s390",
    "SCMP_ARCH_S390X": "s390x",
    "SCMP_ARCH_PARISC": "parisc",
    "SCMP_ARCH_PARISC64": "parisc64",
    "SCMP_ARCH_RISCV64": "riscv64",
}
KNOWN_ARCHES: Final[tuple[str, ...]] = tuple(_ARCHES)

# enum scmp_filter_attr
_ATTR_CTL_NNP: Final = 3
_ATTR_CTL_TSYNC: Final = 4
_ATTR_CTL_LOG: Final = 6
_ATTR_CTL_SSB: Final = 7
_ATTR_CTL_WAITKILL: Final = 10  # libseccomp >= 2.6

_FLAGS: Final[dict[str, int]] = {
    "SECCOMP_FILTER_FLAG_TSYNC": _ATTR_CTL_TSYNC,
    "SECCOMP_FILTER_FLAG_LOG": _ATTR_CTL_LOG,
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": _ATTR_CTL_SSB,
    "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV": _ATTR_CTL_WAITKILL,
}
# Flags silently dropped when this libseccomp (or kernel) does not know them.
_OPTIONAL_FLAGS: Final = frozenset({"SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"})
KNOWN_FLAGS: Final[tuple[str, ...]] = tuple(_FLAGS)

_MAX_ARGS: Final = 6  # syscall arguments 0..5
_NR_SCMP_ERROR: Final = -1  # seccomp_syscall_resolve_name(): unknown name
_MAX_ERRNO_RET: Final = 0xFFFF  # the action datum is 16 bits
_MAX_U64: Final = (1 << 64) - 1


# --- validation ----------------------------------------------------------------------


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_action(action: object, errno_ret: object, what: str) -> None:
    if not isinstance(action, str):
        raise SeccompError(f"seccomp: {what} must be a string, got {action!r}")
    if action in _UNSUPPORTED_ACTIONS:
        raise SeccompError(
            f'seccomp: action "{action}" is not supported (no seccomp user notification)'
        )
    if action not in _ACTIONS:
        raise SeccompError(f'seccomp: unknown action "{action}"')
    if errno_ret is None:
        return
    if action not in _ERRNO_ACTIONS:
        raise SeccompError(
            f"seccomp: errnoRet {errno_ret!r} is only valid with SCMP_ACT_ERRNO or "
            f'SCMP_ACT_TRACE, not "{action}"'
        )
    if not _is_int(errno_ret) or not 0 <= errno_ret <= _MAX_ERRNO_RET:
        raise SeccompError(f"seccomp: invalid errnoRet {errno_ret!r} (want 0..{_MAX_ERRNO_RET})")


def _check_string_list(value: object, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SeccompError(f"seccomp: {what} must be a list of strings, got {value!r}")
    return value


def _check_arg(arg: object, name: str) -> None:
    if not isinstance(arg, dict):
        raise SeccompError(f'seccomp: args of syscall "{name}" must be objects, got {arg!r}')
    index = arg.get("index")
    if not _is_int(index) or not 0 <= index < _MAX_ARGS:
        raise SeccompError(
            f'seccomp: invalid argument index {index!r} for syscall "{name}" (want 0..5)'
        )
    op = arg.get("op")
    if op not in _OPERATORS:
        raise SeccompError(f'seccomp: unknown operator "{op}" for syscall "{name}"')
    for key in ("value", "valueTwo"):
        value = arg.get(key, 0)
        if not _is_int(value) or not 0 <= value <= _MAX_U64:
            raise SeccompError(
                f'seccomp: invalid {key} {value!r} for syscall "{name}" (want a uint64)'
            )


def _check_syscall(entry: object) -> None:
    if not isinstance(entry, dict):
        raise SeccompError(f"seccomp: syscalls entries must be objects, got {entry!r}")
    names = _check_string_list(entry.get("names"), "syscalls names")
    if not names:
        raise SeccompError("seccomp: a syscalls entry has no names")
    for name in names:
        if not name:
            raise SeccompError("seccomp: empty syscall name")
    _check_action(entry.get("action"), entry.get("errnoRet"), "syscall action")
    args = entry.get("args")
    if args is None:
        return
    if not isinstance(args, list):
        raise SeccompError(f'seccomp: args of syscall "{names[0]}" must be a list, got {args!r}')
    for arg in args:
        _check_arg(arg, names[0])


def validate(config: dict[str, Any]) -> None:
    """Check an OCI ``linux.seccomp`` object; raise :class:`SeccompError` if it is bad.

    Syscall names are not checked: unknown ones are skipped at load time, as runc does.
    """
    if not isinstance(config, dict):
        raise SeccompError(f"seccomp: the seccomp config must be an object, got {config!r}")
    if "defaultAction" not in config:
        raise SeccompError("seccomp: defaultAction is required")
    _check_action(config["defaultAction"], config.get("defaultErrnoRet"), "defaultAction")
    if config.get("listenerPath"):
        raise SeccompError(
            f'seccomp: listenerPath "{config["listenerPath"]}" is not supported '
            "(no seccomp user notification)"
        )
    for arch in _check_string_list(config.get("architectures"), "architectures"):
        if arch not in _ARCHES:
            raise SeccompError(f'seccomp: unknown architecture "{arch}"')
    for flag in _check_string_list(config.get("flags"), "flags"):
        if flag not in _FLAGS:
            raise SeccompError(f'seccomp: unknown flag "{flag}"')
    syscalls = config.get("syscalls")
    if syscalls is None:
        return
    if not isinstance(syscalls, list):
        raise SeccompError(f"seccomp: syscalls must be a list, got {syscalls!r}")
    for entry in syscalls:
        _check_syscall(entry)


# --- libseccomp ----------------------------------------------------------------------


class _ArgCmp(ctypes.Structure):
    """struct scmp_arg_cmp."""

    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


_lib: ctypes.CDLL | None = None


def _libseccomp() -> ctypes.CDLL:
    """Open libseccomp once and declare the prototypes we call."""
    global _lib
    if _lib is not None:
        return _lib
    try:
        lib = ctypes.CDLL("libseccomp.so.2")
    except OSError as exc:
        raise SeccompError(f"seccomp: cannot load libseccomp.so.2: {exc}") from None
    ctx = ctypes.c_void_p
    u32 = ctypes.c_uint32
    c_int = ctypes.c_int
    protos: dict[str, tuple[Any, list[Any]]] = {
        "seccomp_init": (ctx, [u32]),
        "seccomp_release": (None, [ctx]),
        "seccomp_load": (c_int, [ctx]),
        "seccomp_export_bpf": (c_int, [ctx, c_int]),
        "seccomp_attr_set": (c_int, [ctx, c_int, u32]),
        "seccomp_arch_resolve_name": (u32, [ctypes.c_char_p]),
        "seccomp_arch_add": (c_int, [ctx, u32]),
        "seccomp_syscall_resolve_name": (c_int, [ctypes.c_char_p]),
        "seccomp_rule_add_array": (
            c_int,
            [ctx, u32, c_int, ctypes.c_uint, ctypes.POINTER(_ArgCmp)],
        ),
    }
    for name, (restype, argtypes) in protos.items():
        func = getattr(lib, name)
        func.restype = restype
        func.argtypes = argtypes
    _lib = lib
    return lib


def preload() -> None:
    """Open libseccomp now: a container's init loads its filter after pivot_root,
    when the host's libraries are out of reach, so the runtime calls this first."""
    _libseccomp()


def _action_value(action: str, errno_ret: int | None) -> int:
    value = _ACTIONS[action]
    if action in _ERRNO_ACTIONS:
        value |= (errno.EPERM if errno_ret is None else errno_ret) & _MAX_ERRNO_RET
    return value


def _rules(args: list[dict[str, Any]]) -> list[Any]:
    """The condition arrays to add for one syscalls entry (runc's AND/OR rule)."""
    if not args:
        return [None]
    conds = [
        _ArgCmp(a["index"], _OPERATORS[a["op"]], a["value"], a.get("valueTwo", 0)) for a in args
    ]
    indexes = [a["index"] for a in args]
    if len(set(indexes)) != len(indexes):
        # Several conditions on one argument: one rule per condition (OR).
        return [(_ArgCmp * 1)(c) for c in conds]
    return [(_ArgCmp * len(conds))(*conds)]


def _fail(what: str, rc: int) -> SeccompError:
    return SeccompError(f"seccomp: {what}: {os.strerror(-rc)}")


_KERNEL_FLAGS: Final[dict[str, int]] = {
    "SECCOMP_FILTER_FLAG_TSYNC": 1,
    "SECCOMP_FILTER_FLAG_LOG": 2,
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": 4,
}
_compiled: dict[str, tuple[bytes, int]] = {}
_COMPILED_MAX = 32


def _key(config: dict[str, Any]) -> str:
    import json

    return json.dumps(config, sort_keys=True)


def precompile(config: dict[str, Any]) -> None:
    """Compile ``config`` to BPF now and keep it, so a forked init only loads it.

    Compiling Docker's default profile for three x86 ABIs takes libseccomp ~12 ms;
    loading the compiled program takes microseconds. A warm process (the engine's
    monitor) compiles each distinct profile once, before it forks.
    """
    key = _key(config)
    if key in _compiled:
        return
    validate(config)
    lib = _libseccomp()
    ctx = _build(config)
    try:
        from berth.linux import syscalls

        fd = syscalls.memfd_create("berth-seccomp", 1)  # MFD_CLOEXEC
        try:
            rc = lib.seccomp_export_bpf(ctx, fd)
            if rc < 0:
                raise _fail("cannot export the filter", rc)
            size = os.lseek(fd, 0, os.SEEK_END)
            program = os.pread(fd, size, 0)
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)
    flags = 0
    for flag in config.get("flags") or ():
        flags |= _KERNEL_FLAGS.get(flag, 0)
    if len(_compiled) >= _COMPILED_MAX:
        _compiled.clear()
    _compiled[key] = (program, flags)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_SYS_SECCOMP = {"x86_64": 317, "aarch64": 277}.get(os.uname().machine, -1)


def _load_program(program: bytes, flags: int) -> None:
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    libc = ctypes.CDLL(None, use_errno=True)
    if _SYS_SECCOMP < 0:
        raise SeccompError(f"seccomp: no seccomp(2) number known for {os.uname().machine}")
    rc = libc.syscall(
        ctypes.c_long(_SYS_SECCOMP), ctypes.c_uint(1), ctypes.c_uint(flags), ctypes.byref(fprog)
    )
    if rc < 0:
        err = ctypes.get_errno()
        raise SeccompError(f"seccomp: cannot load the filter: {os.strerror(err)}")


def load(config: dict[str, Any]) -> None:
    """Install ``config``'s filter on the calling thread (precompiled when available)."""
    cached = _compiled.get(_key(config))
    if cached is not None:
        _load_program(*cached)
        return
    validate(config)
    lib = _libseccomp()
    ctx = _build(config)
    try:
        rc = lib.seccomp_load(ctx)
        if rc < 0:
            raise _fail("cannot load the filter", rc)
    finally:
        lib.seccomp_release(ctx)


def _build(config: dict[str, Any]) -> Any:
    """A libseccomp filter context for ``config``; the caller releases it."""
    lib = _libseccomp()
    default_name: str = config["defaultAction"]
    default = _action_value(default_name, config.get("defaultErrnoRet"))
    ctx = lib.seccomp_init(default)
    if not ctx:
        raise SeccompError(f'seccomp: cannot create a filter with default action "{default_name}"')
    try:
        rc = lib.seccomp_attr_set(ctx, _ATTR_CTL_NNP, 0)
        if rc < 0:
            raise _fail("cannot clear the no_new_privs attribute", rc)

        for arch in config.get("architectures") or ():
            token = lib.seccomp_arch_resolve_name(_ARCHES[arch].encode())
            if token == 0:
                raise SeccompError(f'seccomp: architecture "{arch}" is not supported by libseccomp')
            rc = lib.seccomp_arch_add(ctx, token)
            if rc < 0 and rc != -errno.EEXIST:  # the native arch is there already
                raise _fail(f'cannot add architecture "{arch}"', rc)

        for flag in config.get("flags") or ():
            rc = lib.seccomp_attr_set(ctx, _FLAGS[flag], 1)
            if rc < 0 and flag not in _OPTIONAL_FLAGS:
                raise _fail(f'cannot set flag "{flag}"', rc)

        for entry in config.get("syscalls") or ():
            action = _action_value(entry["action"], entry.get("errnoRet"))
            if action == default:
                continue  # libseccomp refuses rules that repeat the default action
            rules = _rules(entry.get("args") or [])
            for name in entry["names"]:
                nr = lib.seccomp_syscall_resolve_name(name.encode())
                if nr == _NR_SCMP_ERROR:
                    continue  # unknown to libseccomp for this arch: ignored, like runc
                for conds in rules:
                    count = 0 if conds is None else len(conds)
                    rc = lib.seccomp_rule_add_array(ctx, action, nr, count, conds)
                    if rc < 0:
                        raise _fail(f'cannot add a rule for syscall "{name}"', rc)
    except BaseException:
        lib.seccomp_release(ctx)
        raise
    return ctx
