"""Tests for berth.linux.seccomp.

Every filter is loaded in a forked child (a seccomp filter can never be removed), which
reports back through a pipe and its exit status; the pytest process never loads one.
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from berth.errors import ConfigError
from berth.linux import seccomp
from berth.linux.seccomp import SeccompError, load, validate


def _have_libseccomp() -> bool:
    try:
        ctypes.CDLL("libseccomp.so.2")
    except OSError:
        return False
    return True


needs_kernel = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="loading without no_new_privs needs root"),
    pytest.mark.skipif(not _have_libseccomp(), reason="libseccomp.so.2 not installed"),
]


def in_child(fn: Callable[[], str]) -> tuple[int, str]:
    """Run ``fn`` in a forked child; return its wait status and what it returned."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 0
        try:
            os.close(r)
            signal.alarm(10)  # never hang the test run
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # SIGSYS must not dump core
            out = fn()
        except BaseException as exc:
            out = f"{type(exc).__name__}: {exc}"
            code = 1
        try:
            os.write(w, out.encode())
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    return status, b"".join(chunks).decode()


def run_ok(fn: Callable[[], str]) -> str:
    status, out = in_child(fn)
    assert os.WIFEXITED(status), f"child died: status {status:#x}, output {out!r}"
    assert os.WEXITSTATUS(status) == 0, out
    return out


def errno_of(call: Callable[[], object]) -> int:
    """0 if ``call`` succeeds, else the errno of the OSError it raised."""
    try:
        call()
    except OSError as exc:
        return exc.errno or -1
    return 0


# --- validate ------------------------------------------------------------------------


def rule(names: list[str], action: str = "SCMP_ACT_ERRNO", **extra: Any) -> dict[str, Any]:
    return {"names": names, "action": action, **extra}


def allow_with(*rules: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": list(rules), **extra}


def arg(index: int, value: int, op: str = "SCMP_CMP_EQ", value_two: int = 0) -> dict[str, Any]:
    return {"index": index, "value": value, "valueTwo": value_two, "op": op}


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"defaultAction": "SCMP_ACT_FOO"}, 'seccomp: unknown action "SCMP_ACT_FOO"'),
        (allow_with(rule(["mkdir"], "SCMP_ACT_BAR")), 'seccomp: unknown action "SCMP_ACT_BAR"'),
        (
            allow_with(architectures=["SCMP_ARCH_X86_64", "SCMP_ARCH_BAR"]),
            'seccomp: unknown architecture "SCMP_ARCH_BAR"',
        ),
        (
            allow_with(rule(["kill"], args=[{"index": 0, "value": 1, "op": "SCMP_CMP_XX"}])),
            'unknown operator "SCMP_CMP_XX"',
        ),
        (allow_with(flags=["SECCOMP_FILTER_FLAG_NOPE"]), 'unknown flag "SECCOMP_FILTER_FLAG_NOPE"'),
        ({"defaultAction": "SCMP_ACT_NOTIFY"}, '"SCMP_ACT_NOTIFY" is not supported'),
        (allow_with(rule(["mkdir"], "SCMP_ACT_NOTIFY")), '"SCMP_ACT_NOTIFY" is not supported'),
        (allow_with(listenerPath="/run/seccomp.sock"), "listenerPath"),
        (
            allow_with(rule(["kill"], args=[{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}])),
            "invalid argument index 6",
        ),
        (
            allow_with(rule(["kill"], args=[{"index": 0, "value": -1, "op": "SCMP_CMP_EQ"}])),
            "invalid value -1",
        ),
        (allow_with(rule(["mkdir"], "SCMP_ACT_ALLOW", errnoRet=1)), "errnoRet 1 is only valid"),
        ({"defaultAction": "SCMP_ACT_KILL", "defaultErrnoRet": 1}, "only valid"),
        (allow_with(rule(["mkdir"], errnoRet=70000)), "invalid errnoRet 70000"),
        ({"syscalls": []}, "defaultAction is required"),
        (allow_with(rule([])), "has no names"),
    ],
)
def test_validate_rejects(config: dict[str, Any], message: str) -> None:
    with pytest.raises(SeccompError, match=message.replace("(", r"\(")) as info:
        validate(config)
    assert isinstance(info.value, ConfigError)
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("seccomp: ")


def test_validate_accepts_everything_known() -> None:
    config = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 38,
        "architectures": list(seccomp.KNOWN_ARCHES),
        "flags": list(seccomp.KNOWN_FLAGS),
        "syscalls": [
            rule(["no_such_syscall_at_all", "mkdir"], action) for action in seccomp.KNOWN_ACTIONS
        ]
        + [
            rule(["kill"], args=[{"index": 5, "value": 2**64 - 1, "valueTwo": 0, "op": op}])
            for op in seccomp.KNOWN_OPERATORS
        ],
    }
    validate(config)


def test_known_constants() -> None:
    assert "SCMP_ACT_ERRNO" in seccomp.KNOWN_ACTIONS
    assert "SCMP_ACT_KILL_PROCESS" in seccomp.KNOWN_ACTIONS
    assert "SCMP_ACT_NOTIFY" not in seccomp.KNOWN_ACTIONS
    assert len(seccomp.KNOWN_OPERATORS) == 7
    assert "SCMP_ARCH_X86_64" in seccomp.KNOWN_ARCHES
    assert "SCMP_ARCH_RISCV64" in seccomp.KNOWN_ARCHES
    assert "SECCOMP_FILTER_FLAG_SPEC_ALLOW" in seccomp.KNOWN_FLAGS


def test_load_validates_before_building() -> None:
    # Safe in-process: an invalid config never reaches libseccomp.
    with pytest.raises(SeccompError, match="unknown action"):
        load({"defaultAction": "SCMP_ACT_FOO"})


# --- load, in forked children ---------------------------------------------------------


def _kernel(fn: Callable[..., None]) -> Callable[..., None]:
    for mark in needs_kernel:
        fn = mark(fn)
    return fn


@_kernel
def test_errno_rule_hits_only_its_syscall(tmp_path: Path) -> None:
    config = allow_with(
        rule(["mkdir", "mkdirat"], errnoRet=errno.ENOSYS),
        rule(["getpid"], "SCMP_ACT_ALLOW"),  # equals the default: must be skipped
        architectures=["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        flags=["SECCOMP_FILTER_FLAG_SPEC_ALLOW", "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"],
    )
    (tmp_path / "f").write_text("hello")

    def child() -> str:
        load(config)
        code = errno_of(lambda: os.mkdir(tmp_path / "d"))
        data = (tmp_path / "f").read_text()
        os.rename(tmp_path / "f", tmp_path / "g")
        return f"{code} {data} {os.getpid() > 0}"

    assert run_ok(child) == f"{errno.ENOSYS} hello True"
    assert not (tmp_path / "d").exists()
    assert (tmp_path / "g").exists()


@_kernel
def test_errno_rule_defaults_to_eperm_and_unknown_names_are_ignored(tmp_path: Path) -> None:
    config = allow_with(rule(["berth_no_such_syscall", "mkdir", "mkdirat", "socketcall"]))

    def child() -> str:
        load(config)
        return str(errno_of(lambda: os.mkdir(tmp_path / "d")))

    assert run_ok(child) == str(errno.EPERM)


@_kernel
def test_arg_rule_hits_only_that_value() -> None:
    def child() -> str:
        me = os.getpid()
        load(allow_with(rule(["kill"], errnoRet=errno.ENOSYS, args=[arg(0, me)])))
        return " ".join(
            str(errno_of(call))
            for call in (lambda: os.kill(me, 0), lambda: os.kill(os.getppid(), 0))
        )

    assert run_ok(child) == f"{errno.ENOSYS} 0"


@_kernel
def test_args_on_different_indexes_are_anded() -> None:
    def child() -> str:
        me = os.getpid()
        load(allow_with(rule(["kill"], args=[arg(0, me), arg(1, 0)])))
        calls = (
            lambda: os.kill(me, 0),  # both match
            lambda: os.kill(os.getppid(), 0),  # only arg1 matches
            lambda: os.kill(me, signal.SIGCONT),  # only arg0 matches (harmless signal)
        )
        return " ".join(str(errno_of(call)) for call in calls)

    assert run_ok(child) == f"{errno.EPERM} 0 0"


@_kernel
def test_args_on_the_same_index_are_ored() -> None:
    def child() -> str:
        me, parent = os.getpid(), os.getppid()
        load(allow_with(rule(["kill"], args=[arg(0, me), arg(0, parent)])))
        calls = (lambda: os.kill(me, 0), lambda: os.kill(parent, 0), lambda: os.kill(1, 0))
        return " ".join(str(errno_of(call)) for call in calls)

    assert run_ok(child) == f"{errno.EPERM} {errno.EPERM} 0"


@_kernel
def test_masked_eq(tmp_path: Path) -> None:
    existing = tmp_path / "existing"
    existing.write_text("x")
    creat = os.O_CREAT
    config = allow_with(
        rule(["openat"], errnoRet=errno.EROFS, args=[arg(2, creat, "SCMP_CMP_MASKED_EQ", creat)])
    )

    def child() -> str:
        load(config)

        def read() -> None:
            os.close(os.open(existing, os.O_RDONLY))

        def create() -> None:
            os.close(os.open(tmp_path / "new", os.O_CREAT | os.O_WRONLY, 0o600))

        return f"{errno_of(read)} {errno_of(create)}"

    assert run_ok(child) == f"0 {errno.EROFS}"
    assert not (tmp_path / "new").exists()


# What a CPython child needs after load() to finish: report through the pipe and exit.
_PYTHON_ALLOW = [
    "write",
    "read",
    "close",
    "exit",
    "exit_group",
    "brk",
    "mmap",
    "munmap",
    "mremap",
    "madvise",
    "mprotect",
    "futex",
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "getpid",
    "gettid",
    "fstat",
    "newfstatat",
    "lseek",
    "clock_gettime",
]


@_kernel
def test_default_errno_with_default_errno_ret() -> None:
    config = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": errno.EXDEV,
        "syscalls": [rule(_PYTHON_ALLOW, "SCMP_ACT_ALLOW")],
    }

    def child() -> str:
        load(config)
        return str(errno_of(lambda: os.chdir("/")))

    assert run_ok(child) == str(errno.EXDEV)


@_kernel
def test_kill_process_kills_with_sigsys(tmp_path: Path) -> None:
    config = allow_with(rule(["mkdir", "mkdirat"], "SCMP_ACT_KILL_PROCESS"))

    def child() -> str:
        load(config)
        os.mkdir(tmp_path / "d")
        return "survived"

    status, out = in_child(child)
    assert os.WIFSIGNALED(status), f"status {status:#x}, output {out!r}"
    assert os.WTERMSIG(status) == signal.SIGSYS
    assert out == ""
    assert not (tmp_path / "d").exists()


@_kernel
def test_load_failure_is_a_seccomp_error() -> None:
    # Without CAP_SYS_ADMIN and without no_new_privs the kernel refuses the filter.
    def child() -> str:
        os.setgroups([])
        os.setresgid(65534, 65534, 65534)
        os.setresuid(65534, 65534, 65534)
        try:
            load(allow_with(rule(["mkdir"])))
        except SeccompError as exc:
            return str(exc)
        return "loaded"

    out = run_ok(child)
    assert out.startswith("seccomp: cannot load the filter"), out


def test_a_precompiled_filter_behaves_the_same() -> None:
    config = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}],
    }
    seccomp.precompile(config)
    assert seccomp._key(config) in seccomp._compiled
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            seccomp.load(config)  # from the cache: no libseccomp work in the child
            try:
                os.mkdir("/tmp/berth-seccomp-never")
                result = b"made"
            except OSError as exc:
                result = str(exc.errno).encode()
            os.write(write_fd, result)
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as f:
        assert f.read() == b"38"
    os.waitpid(pid, 0)
