"""The default seccomp profile and the Docker-format -> OCI conversion (no daemon)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from berth.engine.specgen import ALL_CAPS, DEFAULT_CAPS
from berth.errors import InvalidArgument
from berth.runtime.seccomp_default import convert, default_profile, docker_format


def rules_for(profile: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [r for r in profile["syscalls"] if name in r["names"]]


def allowed_plainly(profile: dict[str, Any], name: str) -> bool:
    return any(
        r["action"] == "SCMP_ACT_ALLOW" and not r.get("args") for r in rules_for(profile, name)
    )


def test_default_caps_on_amd64() -> None:
    profile = default_profile(set(DEFAULT_CAPS), "x86_64")
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    assert profile["defaultErrnoRet"] == 1
    assert profile["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    for name in ("read", "execve", "fork", "vfork", "arch_prctl", "chroot", "io_uring_setup"):
        assert allowed_plainly(profile, name) == (name != "io_uring_setup"), name
    for name in ("mount", "unshare", "setns", "kcmp", "bpf", "reboot", "keyctl", "set_tls"):
        assert not allowed_plainly(profile, name), name
    # ptrace: allowed from kernel 4.8 on (no more seccomp bypass through it), as Docker
    assert allowed_plainly(profile, "ptrace")
    old_kernel = convert(docker_format(), set(DEFAULT_CAPS), "amd64", kernel="4.4.0-21")
    assert old_kernel is not None and not rules_for(old_kernel, "ptrace")
    assert rules_for(profile, "clone3") == [
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}
    ]
    (clone,) = rules_for(profile, "clone")
    assert clone["args"] == [{"index": 0, "value": 0x7E020000, "op": "SCMP_CMP_MASKED_EQ"}]
    assert len(rules_for(profile, "socket")) == 3
    assert len(rules_for(profile, "personality")) == 5
    for rule in profile["syscalls"]:
        assert not {"includes", "excludes", "comment", "name"} & set(rule)


def test_capabilities_unlock_syscalls() -> None:
    admin = default_profile({*DEFAULT_CAPS, "CAP_SYS_ADMIN"}, "amd64")
    for name in ("mount", "unshare", "setns", "clone", "clone3", "umount2", "sethostname"):
        assert allowed_plainly(admin, name), name
    assert not any(r["action"] == "SCMP_ACT_ERRNO" for r in rules_for(admin, "clone3"))
    ptrace = default_profile({*DEFAULT_CAPS, "CAP_SYS_PTRACE"}, "amd64")
    assert allowed_plainly(ptrace, "kcmp") and allowed_plainly(ptrace, "pidfd_getfd")
    every = default_profile(set(ALL_CAPS), "amd64")
    for name in ("reboot", "init_module", "acct", "iopl", "settimeofday", "bpf", "syslog"):
        assert allowed_plainly(every, name), name


def test_other_architectures() -> None:
    arm = default_profile(set(DEFAULT_CAPS), "aarch64")
    assert arm["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    assert allowed_plainly(arm, "set_tls") and not rules_for(arm, "arch_prctl")
    s390 = default_profile(set(DEFAULT_CAPS), "s390x")
    (clone,) = rules_for(s390, "clone")
    assert clone["args"][0]["index"] == 1  # s390 passes clone's flags second
    riscv = default_profile(set(DEFAULT_CAPS), "riscv64")
    assert riscv["architectures"] == ["SCMP_ARCH_RISCV64"]


def test_convert_docker_format_rules() -> None:
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [
            {"name": "mkdir", "action": "SCMP_ACT_ERRNO"},
            {"names": ["rmdir"], "action": "SCMP_ACT_ERRNO", "includes": {"minKernel": "99.0"}},
            {"names": ["link"], "action": "SCMP_ACT_ERRNO", "excludes": {"minKernel": "3.0"}},
            {"names": ["chmod"], "action": "SCMP_ACT_ERRNO", "excludes": {"arches": ["amd64"]}},
            {"names": ["chown"], "action": "SCMP_ACT_ERRNO", "includes": {"arches": ["amd64"]}},
        ],
    }
    out = convert(profile, set(DEFAULT_CAPS), "amd64", kernel="6.1.0-18-amd64")
    assert out == {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [
            {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"},
            {"names": ["chown"], "action": "SCMP_ACT_ERRNO"},
        ],
    }
    assert convert({}, set(), "amd64") is None  # Docker: nothing asked, no filter


@pytest.mark.parametrize(
    ("profile", "message"),
    [
        (
            {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["x"], "archMap": [{}]},
            "seccomp profile: both architectures and archMap are given: use one of them",
        ),
        (
            {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"name": "a", "names": ["b"]}]},
            "seccomp profile: a syscalls entry has both name and names: use names",
        ),
        (
            {"defaultAction": "SCMP_ACT_KILL", "syscalls": [{"names": ["a"], "action": "X"}]},
            'invalid seccomp profile: seccomp: unknown action "X"',
        ),
        (
            {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"includes": {"minKernel": "4"}}]},
            "invalid minKernel '4' in the seccomp profile: use \"4.8\"",
        ),
    ],
)
def test_convert_refuses_bad_profiles(profile: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        convert(profile, set(DEFAULT_CAPS), "amd64")
    assert str(caught.value) == message


def test_docker_format_is_json_data() -> None:
    import json

    data = docker_format()
    assert json.loads(json.dumps(data)) == data
    assert len(data["archMap"]) == 9


LOAD_AND_PROBE = """
import ctypes, errno, json, sys
from berth.linux import seccomp
from berth.runtime.seccomp_default import default_profile
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS: load without CAP_SYS_ADMIN
seccomp.load(default_profile(set(json.loads(sys.argv[1])), None))
def call(nr, *args):
    rc = libc.syscall(nr, *args)
    return "OK" if rc >= 0 else errno.errorcode[ctypes.get_errno()]
print(call(435, None, 0), call(272, 0x10000000), call(250, 0, -3, 0))  # clone3 unshare keyctl
"""


@pytest.mark.skipif(sys.platform != "linux", reason="seccomp is Linux only")
def test_the_default_profile_loads_and_filters() -> None:
    import json
    import platform

    if platform.machine() != "x86_64":
        pytest.skip("syscall numbers here are x86_64's")
    result = subprocess.run(
        [sys.executable, "-c", LOAD_AND_PROBE, json.dumps(DEFAULT_CAPS)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ENOSYS", "EPERM", "EPERM"]
