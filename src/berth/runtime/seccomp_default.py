"""Berth's default seccomp profile, and Docker's profile format turned into OCI's.

The profile is Docker's default (moby's ``profiles/seccomp/default.json``) re-expressed
as Python data in Docker's own *profile* format: an allow list with default action
``ERRNO(EPERM)``, plus rules that apply only on some architectures or only when the
container holds a capability (``CAP_SYS_ADMIN`` unlocks ``mount``, ``unshare``,
``setns``, any ``clone`` flags...; ``CAP_SYS_PTRACE`` unlocks ``ptrace``...).

Berth's better default: ``clone3`` answers ``ENOSYS`` (not ``EPERM``) when the
container lacks ``CAP_SYS_ADMIN``, so glibc and other runtimes fall back to ``clone``,
whose flags the filter can inspect.

:func:`convert` turns any profile in Docker's format (``archMap`` or
``architectures``, ``name``/``names``, ``includes``/``excludes`` on ``caps``,
``arches`` and ``minKernel``, ``comment``) into a runtime-spec ``linux.seccomp``
object for one container's capabilities and one architecture, as moby's
``setupSeccomp`` does. :func:`default_profile` is that conversion of the default.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import re
from typing import Any

from berth.errors import InvalidArgument

EPERM = 1
ENOSYS = 38

# platform.machine() / OCI names -> Go's (libseccomp's) names, the vocabulary of
# Docker profiles' "arches" filters.
_MACHINE_TO_NATIVE = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "i386": "x86",
    "i686": "x86",
    "x86": "x86",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "arm": "arm",
    "ppc64le": "ppc64le",
    "ppc64": "ppc64",
    "s390x": "s390x",
    "s390": "s390",
    "riscv64": "riscv64",
    "loongarch64": "loong64",
    "loong64": "loong64",
    "mips64": "mips64",
    "mips64el": "mipsel64",
    "mipsel64": "mipsel64",
    "mips": "mips",
    "mipsel": "mipsel",
    "x32": "x32",
}
# Go's names -> the runtime-spec architecture of a native process.
_NATIVE_TO_SCMP = {
    "x86": "SCMP_ARCH_X86",
    "amd64": "SCMP_ARCH_X86_64",
    "x32": "SCMP_ARCH_X32",
    "arm": "SCMP_ARCH_ARM",
    "arm64": "SCMP_ARCH_AARCH64",
    "loong64": "SCMP_ARCH_LOONGARCH64",
    "mips": "SCMP_ARCH_MIPS",
    "mipsel": "SCMP_ARCH_MIPSEL",
    "mips64": "SCMP_ARCH_MIPS64",
    "mips64n32": "SCMP_ARCH_MIPS64N32",
    "mipsel64": "SCMP_ARCH_MIPSEL64",
    "mips3l64n32": "SCMP_ARCH_MIPSEL64N32",
    "ppc": "SCMP_ARCH_PPC",
    "ppc64": "SCMP_ARCH_PPC64",
    "ppc64le": "SCMP_ARCH_PPC64LE",
    "riscv64": "SCMP_ARCH_RISCV64",
    "s390": "SCMP_ARCH_S390",
    "s390x": "SCMP_ARCH_S390X",
}

# Every syscall a container may make whatever its capabilities (Docker's list).
_ALLOWED = """
accept accept4 access adjtimex alarm bind brk cachestat capget capset chdir chmod chown
chown32 clock_adjtime clock_adjtime64 clock_getres clock_getres_time64 clock_gettime
clock_gettime64 clock_nanosleep clock_nanosleep_time64 close close_range connect
copy_file_range creat dup dup2 dup3 epoll_create epoll_create1 epoll_ctl epoll_ctl_old
epoll_pwait epoll_pwait2 epoll_wait epoll_wait_old eventfd eventfd2 execve execveat exit
exit_group faccessat faccessat2 fadvise64 fadvise64_64 fallocate fanotify_mark fchdir
fchmod fchmodat fchmodat2 fchown fchown32 fchownat fcntl fcntl64 fdatasync fgetxattr
flistxattr flock fork fremovexattr fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64
fsync ftruncate ftruncate64 futex futex_requeue futex_time64 futex_wait futex_waitv
futex_wake futimesat getcpu getcwd getdents getdents64 getegid getegid32 geteuid
geteuid32 getgid getgid32 getgroups getgroups32 getitimer getpeername getpgid getpgrp
getpid getppid getpriority getrandom getresgid getresgid32 getresuid getresuid32
getrlimit get_robust_list getrusage getsid getsockname getsockopt get_thread_area gettid
gettimeofday getuid getuid32 getxattr getxattrat inotify_add_watch inotify_init
inotify_init1 inotify_rm_watch io_cancel ioctl io_destroy io_getevents io_pgetevents
io_pgetevents_time64 ioprio_get ioprio_set io_setup io_submit ipc kill
landlock_add_rule landlock_create_ruleset landlock_restrict_self lchown lchown32
lgetxattr link linkat listen listmount listxattr listxattrat llistxattr _llseek
lremovexattr lseek lsetxattr lstat lstat64 madvise map_shadow_stack membarrier
memfd_create memfd_secret mincore mkdir mkdirat mknod mknodat mlock mlock2 mlockall mmap
mmap2 mprotect mq_getsetattr mq_notify mq_open mq_timedreceive mq_timedreceive_time64
mq_timedsend mq_timedsend_time64 mq_unlink mremap mseal msgctl msgget msgrcv msgsnd msync
munlock munlockall munmap name_to_handle_at nanosleep newfstatat _newselect open openat
openat2 pause pidfd_open pidfd_send_signal pipe pipe2 pkey_alloc pkey_free pkey_mprotect
poll ppoll ppoll_time64 prctl pread64 preadv preadv2 prlimit64 process_mrelease pselect6
pselect6_time64 pwrite64 pwritev pwritev2 read readahead readlink readlinkat readv recv
recvfrom recvmmsg recvmmsg_time64 recvmsg remap_file_pages removexattr removexattrat
rename renameat renameat2 restart_syscall riscv_hwprobe rmdir rseq rt_sigaction
rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend rt_sigtimedwait
rt_sigtimedwait_time64 rt_tgsigqueueinfo sched_getaffinity sched_getattr sched_getparam
sched_get_priority_max sched_get_priority_min sched_getscheduler sched_rr_get_interval
sched_rr_get_interval_time64 sched_setaffinity sched_setattr sched_setparam
sched_setscheduler sched_yield seccomp select semctl semget semop semtimedop
semtimedop_time64 send sendfile sendfile64 sendmmsg sendmsg sendto setfsgid setfsgid32
setfsuid setfsuid32 setgid setgid32 setgroups setgroups32 setitimer setpgid setpriority
setregid setregid32 setresgid setresgid32 setresuid setresuid32 setreuid setreuid32
setrlimit set_robust_list setsid setsockopt set_thread_area set_tid_address setuid
setuid32 setxattr setxattrat shmat shmctl shmdt shmget shutdown sigaltstack signalfd
signalfd4 sigprocmask sigreturn socketcall socketpair splice stat stat64 statfs statfs64
statmount statx symlink symlinkat sync sync_file_range syncfs sysinfo tee tgkill time
timer_create timer_delete timer_getoverrun timer_gettime timer_gettime64 timer_settime
timer_settime64 timerfd_create timerfd_gettime timerfd_gettime64 timerfd_settime
timerfd_settime64 times tkill truncate truncate64 ugetrlimit umask uname unlink unlinkat
uretprobe utime utimensat utimensat_time64 utimes vfork vmsplice wait4 waitid waitpid
write writev
"""

# clone flags that create namespaces (CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC |
# NEWUSER | NEWPID | NEWNET): without CAP_SYS_ADMIN, clone is allowed only without them.
CLONE_NAMESPACE_FLAGS = 0x7E020000
# socket families between AF_ALG (38) and AF_VSOCK (40) stay allowed; those two do not.
AF_ALG, AF_VSOCK = 38, 40
# personality(2) values a program may set: PER_LINUX, PER_LINUX32, UNAME26,
# UNAME26|PER_LINUX32, and 0xffffffff (query).
_PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)

# Capability -> syscalls it unlocks (in addition to _ALLOWED).
_BY_CAPABILITY: list[tuple[str, str]] = [
    ("CAP_DAC_READ_SEARCH", "open_by_handle_at"),
    (
        "CAP_SYS_ADMIN",
        "bpf clone clone3 fanotify_init fsconfig fsmount fsopen fspick lookup_dcookie"
        " lsm_get_self_attr lsm_list_modules lsm_set_self_attr mount mount_setattr"
        " move_mount open_tree perf_event_open quotactl quotactl_fd setdomainname"
        " sethostname setns syslog umount umount2 unshare",
    ),
    ("CAP_SYS_BOOT", "reboot"),
    ("CAP_SYS_CHROOT", "chroot"),
    ("CAP_SYS_MODULE", "delete_module init_module finit_module"),
    ("CAP_SYS_PACCT", "acct"),
    (
        "CAP_SYS_PTRACE",
        "kcmp pidfd_getfd process_madvise process_vm_readv process_vm_writev ptrace",
    ),
    ("CAP_SYS_RAWIO", "iopl ioperm"),
    ("CAP_SYS_TIME", "settimeofday stime clock_settime clock_settime64"),
    ("CAP_SYS_TTY_CONFIG", "vhangup"),
    ("CAP_SYS_NICE", "get_mempolicy mbind set_mempolicy set_mempolicy_home_node"),
    ("CAP_SYSLOG", "syslog"),
    ("CAP_BPF", "bpf"),
    ("CAP_PERFMON", "perf_event_open"),
]

# Architecture -> syscalls only that architecture has.
_BY_ARCH: list[tuple[list[str], str]] = [
    (["ppc64le"], "sync_file_range2 swapcontext"),
    (["arm", "arm64"], "arm_fadvise64_64 arm_sync_file_range sync_file_range2 breakpoint"),
    (["arm", "arm64"], "cacheflush set_tls"),
    (["amd64", "x32"], "arch_prctl"),
    (["amd64", "x32", "x86"], "modify_ldt"),
    (["s390", "s390x"], "s390_pci_mmio_read s390_pci_mmio_write s390_runtime_instr"),
    (["riscv64"], "riscv_flush_icache"),
]

# A native architecture and the compat ones its processes may also use.
_ARCH_MAP: list[tuple[str, list[str]]] = [
    ("SCMP_ARCH_X86_64", ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]),
    ("SCMP_ARCH_AARCH64", ["SCMP_ARCH_ARM"]),
    ("SCMP_ARCH_MIPS64", ["SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64N32"]),
    ("SCMP_ARCH_MIPS64N32", ["SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64"]),
    ("SCMP_ARCH_MIPSEL64", ["SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64N32"]),
    ("SCMP_ARCH_MIPSEL64N32", ["SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64"]),
    ("SCMP_ARCH_S390X", ["SCMP_ARCH_S390"]),
    ("SCMP_ARCH_RISCV64", []),
    ("SCMP_ARCH_LOONGARCH64", []),
]


def _allow(names: str, **extra: Any) -> dict[str, Any]:
    return {"names": names.split(), "action": "SCMP_ACT_ALLOW", **extra}


def _arg(index: int, value: int, op: str) -> dict[str, Any]:
    return {"index": index, "value": value, "op": op}


def docker_format() -> dict[str, Any]:
    """The default profile in Docker's profile format (what ``seccomp=`` files hold)."""
    syscalls: list[dict[str, Any]] = [
        _allow(_ALLOWED),
        _allow("process_vm_readv process_vm_writev ptrace", includes={"minKernel": "4.8"}),
        _allow("socket", args=[_arg(0, AF_ALG, "SCMP_CMP_LT")]),
        _allow("socket", args=[_arg(0, AF_ALG + 1, "SCMP_CMP_EQ")]),
        _allow("socket", args=[_arg(0, AF_VSOCK, "SCMP_CMP_GT")]),
    ]
    syscalls += [
        _allow("personality", args=[_arg(0, value, "SCMP_CMP_EQ")]) for value in _PERSONALITIES
    ]
    syscalls += [_allow(names, includes={"arches": arches}) for arches, names in _BY_ARCH]
    for cap, names in _BY_CAPABILITY[:2]:
        syscalls.append(_allow(names, includes={"caps": [cap]}))
    syscalls += [
        _allow(
            "clone",
            args=[_arg(0, CLONE_NAMESPACE_FLAGS, "SCMP_CMP_MASKED_EQ")],
            excludes={"caps": ["CAP_SYS_ADMIN"], "arches": ["s390", "s390x"]},
        ),
        _allow(
            "clone",
            args=[_arg(1, CLONE_NAMESPACE_FLAGS, "SCMP_CMP_MASKED_EQ")],
            comment="s390 parameter ordering for clone is different",
            includes={"arches": ["s390", "s390x"]},
            excludes={"caps": ["CAP_SYS_ADMIN"]},
        ),
        {
            # Berth's default: ENOSYS, so callers fall back to clone (flags checked above).
            "names": ["clone3"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": ENOSYS,
            "excludes": {"caps": ["CAP_SYS_ADMIN"]},
        },
    ]
    for cap, names in _BY_CAPABILITY[2:]:
        syscalls.append(_allow(names, includes={"caps": [cap]}))
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EPERM,
        "archMap": [
            {"architecture": arch, "subArchitectures": subs or None} for arch, subs in _ARCH_MAP
        ],
        "syscalls": syscalls,
    }


def native_arch(machine: str | None = None) -> str:
    """The host's architecture in Docker profiles' vocabulary (``amd64``, ``arm64``...)."""
    name = machine or platform.machine()
    return _MACHINE_TO_NATIVE.get(name, name)


def _kernel_at_least(version: str, release: str | None) -> bool:
    match = re.fullmatch(r"(\d+)\.(\d+)", version.strip())
    if not match:
        raise InvalidArgument(f'invalid minKernel {version!r} in the seccomp profile: use "4.8"')
    want = (int(match[1]), int(match[2]))
    have_match = re.match(r"(\d+)\.(\d+)", release or os.uname().release)
    have = (int(have_match[1]), int(have_match[2])) if have_match else (0, 0)
    return have >= want


def _filter(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"seccomp profile: {where} must be an object, got {value!r}")
    return value


def convert(
    profile: dict[str, Any],
    capabilities: set[str] | list[str],
    arch: str | None = None,
    *,
    kernel: str | None = None,
) -> dict[str, Any] | None:
    """A Docker-format profile -> an OCI ``linux.seccomp`` object for a container with
    these (bounding) ``capabilities`` on ``arch`` (``amd64`` or ``x86_64`` style).

    None when the profile asks for nothing (no default action and no syscalls), as
    Docker treats it: the container runs unconfined.
    """
    if not isinstance(profile, dict):
        raise InvalidArgument("seccomp profile: the profile must be a JSON object")
    native = native_arch(arch)
    caps = set(capabilities)
    syscalls_in = profile.get("syscalls") or []
    if not profile.get("defaultAction") and not syscalls_in:
        return None
    if not isinstance(syscalls_in, list):
        raise InvalidArgument("seccomp profile: syscalls must be a list")
    if profile.get("architectures") and profile.get("archMap"):
        raise InvalidArgument(
            "seccomp profile: both architectures and archMap are given: use one of them"
        )
    out: dict[str, Any] = {
        k: copy.deepcopy(v)
        for k, v in profile.items()
        if k not in ("archMap", "syscalls", "architectures")
    }
    architectures = list(profile.get("architectures") or [])
    scmp = _NATIVE_TO_SCMP.get(native)
    for entry in profile.get("archMap") or []:
        if not isinstance(entry, dict):
            raise InvalidArgument(f"seccomp profile: archMap entries must be objects: {entry!r}")
        if scmp and entry.get("architecture") == scmp:
            architectures.append(scmp)
            architectures.extend(entry.get("subArchitectures") or [])
            break
    if architectures:
        out["architectures"] = architectures
    rules: list[dict[str, Any]] = []
    for call in syscalls_in:
        if not isinstance(call, dict):
            raise InvalidArgument(f"seccomp profile: syscalls entries must be objects: {call!r}")
        names = call.get("names")
        if call.get("name"):
            if names:
                raise InvalidArgument(
                    "seccomp profile: a syscalls entry has both name and names: use names"
                )
            names = [call["name"]]
        excludes = _filter(call.get("excludes"), "excludes")
        includes = _filter(call.get("includes"), "includes")
        if native in (excludes.get("arches") or []):
            continue
        if any(c in caps for c in excludes.get("caps") or []):
            continue
        if excludes.get("minKernel") and _kernel_at_least(excludes["minKernel"], kernel):
            continue
        if includes.get("arches") and native not in includes["arches"]:
            continue
        if not all(c in caps for c in includes.get("caps") or []):
            continue
        if includes.get("minKernel") and not _kernel_at_least(includes["minKernel"], kernel):
            continue
        rule = {
            k: copy.deepcopy(v)
            for k, v in call.items()
            if k not in ("name", "names", "comment", "includes", "excludes")
        }
        rules.append({"names": list(names or []), **rule})
    out["syscalls"] = rules
    from berth.linux import seccomp

    try:
        seccomp.validate(out)
    except seccomp.SeccompError as exc:
        raise InvalidArgument(f"invalid seccomp profile: {exc}") from None
    return out


def default_profile(capabilities: set[str], arch: str | None = None) -> dict[str, Any]:
    """Berth's default ``linux.seccomp`` for a container holding ``capabilities``."""
    profile = convert(docker_format(), capabilities, arch)
    assert profile is not None
    return profile


def parse_profile(text: str) -> dict[str, Any]:
    """``seccomp=`` of a security option: inline JSON (what the docker CLI sends after
    reading the file) or the path of a JSON file on the daemon's host."""
    body = text.strip()
    if not body.startswith("{"):
        try:
            with open(body) as f:
                body = f.read()
        except OSError as exc:
            raise InvalidArgument(
                f"cannot read the seccomp profile {text!r}: {exc.strerror}"
            ) from None
    try:
        profile = json.loads(body)
    except ValueError as exc:
        raise InvalidArgument(f"the seccomp profile is not valid JSON: {exc}") from None
    if not isinstance(profile, dict):
        raise InvalidArgument("the seccomp profile must be a JSON object")
    return profile
