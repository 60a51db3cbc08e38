"""The last steps before a container process runs: limits, user, capabilities,
no_new_privs, seccomp, then the exec. Shared by a container's init and by ``exec``.

Runs in a forked, single-threaded child; errors are raised as BerthError and sent
to the parent by the caller, which then exits the child.
"""

from __future__ import annotations

import os
import resource
import signal

from berth.errors import ConfigError, SystemFailure
from berth.linux import capabilities, execstub
from berth.linux import syscalls as sc
from berth.runtime.spec import RLIMITS

# typing costs milliseconds to import on every container start: types only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def reset_signals() -> None:
    """Python ignores SIGPIPE and SIGXFSZ; an ignored signal survives exec, so undo it."""
    for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


def env_value(env: list[str], key: str) -> str | None:
    prefix = key + "="
    for item in env:
        if item.startswith(prefix):
            return item[len(prefix) :]
    return None


def resolve_executable(args: list[str], env: list[str]) -> str:
    """Find args[0] in the container's PATH, as runc does before it waits for start."""
    name = args[0]
    if "/" in name:
        if not os.path.exists(name):
            raise ConfigError(f"exec {name!r}: no such file or directory")
        if os.path.isdir(name) or not os.access(name, os.X_OK):
            raise ConfigError(f"exec {name!r}: permission denied")
        return name
    path = env_value(env, "PATH") or "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    for directory in path.split(":"):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise ConfigError(f"exec {name!r}: executable file not found in $PATH")


def home_of(uid: int) -> str | None:
    try:
        with open("/etc/passwd") as f:
            for line in f:
                fields = line.rstrip("\n").split(":")
                if len(fields) >= 6 and fields[2] == str(uid):
                    return fields[5]
    except OSError:
        pass
    return None


def apply_rlimits(rlimits: list[dict[str, Any]]) -> None:
    for item in rlimits:
        kind = item["type"]
        soft, hard = int(item.get("soft", 0)), int(item.get("hard", 0))
        try:
            resource.setrlimit(RLIMITS[kind], (_rlim(soft), _rlim(hard)))
        except (ValueError, OSError) as exc:
            current = resource.getrlimit(RLIMITS[kind])[1]
            raise ConfigError(
                f"rlimit {kind}: cannot set soft {soft} hard {hard}"
                f" (the host's hard limit is {current}): {exc}"
            ) from None


def _rlim(value: int) -> int:
    return resource.RLIM_INFINITY if value >= 0xFFFFFFFFFFFFFFFF else value


def set_oom_score_adj(value: int) -> None:
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(value))
    except OSError as exc:
        raise SystemFailure(f"cannot set oomScoreAdj {value}: {exc.strerror}") from None


def finalize(process: dict[str, Any], seccomp_config: dict[str, Any] | None) -> None:
    """Drop to the process's user and privileges; seccomp loads last when NNP allows."""
    caps = process.get("capabilities")
    no_new_privs = bool(process.get("noNewPrivileges"))
    set_exec_labels(process)
    if seccomp_config and not no_new_privs:
        # Without no_new_privs, loading a filter needs CAP_SYS_ADMIN: do it while we have it.
        _load_seccomp(seccomp_config)
    if caps is not None:
        capabilities.drop_bounding(capabilities.parse(caps.get("bounding") or []))
    user = process.get("user") or {}
    uid, gid = int(user.get("uid", 0)), int(user.get("gid", 0))
    sc.prctl(sc.PR_SET_KEEPCAPS, 1)
    try:
        os.setgroups([int(g) for g in user.get("additionalGids") or []])
    except PermissionError:
        pass  # a user namespace with setgroups denied
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    sc.prctl(sc.PR_SET_KEEPCAPS, 0)
    if caps is not None:
        capabilities.apply_final(caps)
    if no_new_privs:
        sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
    if seccomp_config and no_new_privs:
        _load_seccomp(seccomp_config)
    umask = user.get("umask")
    os.umask(int(umask) if umask is not None else 0o022)


def set_exec_labels(process: dict[str, Any]) -> None:
    """AppArmor profile and SELinux label for the next exec (validated as enabled)."""
    profile = process.get("apparmorProfile")
    if profile:
        path = "/proc/self/attr/apparmor/exec"
        if not os.path.exists(path):
            path = "/proc/self/attr/exec"
        with open(path, "w") as f:
            f.write(f"exec {profile}")
    label = process.get("selinuxLabel")
    if label:
        with open("/proc/self/attr/exec", "w") as f:
            f.write(label)


def _load_seccomp(config: dict[str, Any]) -> None:
    from berth.linux import seccomp

    seccomp.load(config)


def build_env(process: dict[str, Any]) -> list[str]:
    env = list(process.get("env") or [])
    if env_value(env, "HOME") is None:
        uid = int((process.get("user") or {}).get("uid", 0))
        env.append("HOME=" + (home_of(uid) or "/"))
    return env


def exec_process(path: str, args: list[str], env: list[str], stub_fd: int | None) -> None:
    """Replace this process; through the sealed stub when there is one (CVE-2019-5736)."""
    if stub_fd is not None:
        sc.execveat(stub_fd, ["berth-exec", path, *args], env)
    os.execve(path, args, dict(item.partition("=")[::2] for item in env))


def prepare_exec_fds(preserve_fds: int, keep: tuple[int, ...] = ()) -> None:
    """Close-on-exec every descriptor above stdio and the preserved ones."""
    limit = 3 + preserve_fds
    for fd in range(3, limit):
        try:
            os.set_inheritable(fd, True)
        except OSError:
            pass
    try:
        open_fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:  # no /proc in this container
        open_fds = list(range(limit, 1024))
    for fd in open_fds:
        if fd >= limit and fd not in keep:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass


def stub_fd() -> int | None:
    return execstub.sealed_stub_fd()
