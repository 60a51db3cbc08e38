"""berthd's default sandbox, seen from inside containers run by the real docker CLI.

The default seccomp profile (Docker's, with ENOSYS for ``clone3``), what lifts it
(``seccomp=unconfined``, ``--privileged``, ``CAP_SYS_ADMIN`` for its syscalls), custom
profiles in Docker's format, and ``no-new-privileges``. A small static C probe
(compiled here with gcc, bound read-only into the container) makes the syscalls
busybox cannot: ``clone3``, ``unshare(CLONE_NEWUSER)``, ``keyctl``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator

import pytest
from tests.compat.berthd import Daemon
from tests.helpers import CREATED_IDS

DOCKER = shutil.which("docker") or "/usr/local/bin/docker"

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root and the real kernel"),
    pytest.mark.skipif(not os.path.exists(DOCKER), reason="the docker CLI is not installed"),
]

PROBE_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
static void report(const char *what, long rc) {
    printf("%s=%s\n", what, rc < 0 ? strerrorname_np(errno) : "OK");
}
int main(void) {
    report("clone3", syscall(SYS_clone3, NULL, 0));  /* the kernel itself says EINVAL */
    report("unshare_user", syscall(SYS_unshare, CLONE_NEWUSER));
    report("keyctl", syscall(SYS_keyctl, 0 /* GET_KEYRING_ID */, -3 /* session */, 0));
    return 0;
}
"""


@pytest.fixture(scope="module")
def probe_dir() -> Iterator[str]:
    """A folder holding the static probe, or a skip when gcc cannot link statically."""
    folder = tempfile.mkdtemp(prefix="berth-probe-", dir="/tmp")
    try:
        source = os.path.join(folder, "probe.c")
        with open(source, "w") as f:
            f.write(PROBE_C)
        gcc = shutil.which("gcc")
        built = gcc and subprocess.run(
            [gcc, "-static", "-O1", "-o", os.path.join(folder, "probe"), source],
            capture_output=True,
            check=False,
        )
        if not built or built.returncode != 0:
            pytest.skip("no gcc able to link a static probe")
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def docker(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env["DOCKER_CONFIG"] = os.path.join(daemon.base, "docker-config")
    result = subprocess.run(
        [DOCKER, "-H", daemon.host, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    for c in daemon.get("/containers/json?all=1").json():
        CREATED_IDS.add(c["Id"])
    return result


def probe(daemon: Daemon, folder: str, *options: str) -> dict[str, str]:
    result = docker(
        daemon, "run", "--rm", "-v", f"{folder}:/probe:ro", *options, "busybox", "/probe/probe"
    )
    assert result.returncode == 0, result.stderr
    return dict(line.split("=", 1) for line in result.stdout.split())


def status_field(daemon: Daemon, field: str, *options: str) -> str:
    result = docker(
        daemon, "run", "--rm", *options, "busybox", "grep", f"^{field}:", "/proc/self/status"
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split(":", 1)[1].strip()


def test_default_profile_denies_and_clone3_is_enosys(daemon: Daemon, probe_dir: str) -> None:
    assert probe(daemon, probe_dir) == {
        "clone3": "ENOSYS",  # glibc falls back to clone
        "unshare_user": "EPERM",  # the kernel alone would allow it
        "keyctl": "EPERM",  # not in the allow list at all
    }
    assert status_field(daemon, "Seccomp") == "2"  # a filter is loaded
    assert status_field(daemon, "NoNewPrivs") == "0"  # as Docker: setuid binaries work


def test_fork_still_works_and_unshare_is_denied(daemon: Daemon) -> None:
    result = docker(
        daemon,
        "run",
        "--rm",
        "busybox",
        "sh",
        "-c",
        "echo forked & wait; unshare -r true; echo unshare=$?; mkdir /made && echo mkdir=ok",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["forked", "unshare=1", "mkdir=ok"]
    assert "Operation not permitted" in result.stderr


def test_unconfined_lifts_the_filter(daemon: Daemon, probe_dir: str) -> None:
    found = probe(daemon, probe_dir, "--security-opt", "seccomp=unconfined")
    assert found == {"clone3": "EINVAL", "unshare_user": "OK", "keyctl": "OK"}
    assert status_field(daemon, "Seccomp", "--security-opt", "seccomp=unconfined") == "0"
    result = docker(
        daemon,
        "run",
        "--rm",
        "--security-opt",
        "seccomp=unconfined",
        "busybox",
        "unshare",
        "-r",
        "id",
        "-u",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0"


def test_capabilities_unlock_their_syscalls(daemon: Daemon, probe_dir: str) -> None:
    # CAP_SYS_ADMIN unlocks unshare and clone3 (any flags); keyctl stays denied.
    found = probe(daemon, probe_dir, "--cap-add", "SYS_ADMIN")
    assert found == {"clone3": "EINVAL", "unshare_user": "OK", "keyctl": "EPERM"}
    # --privileged: Docker's rule, no default profile at all
    assert status_field(daemon, "Seccomp", "--privileged") == "0"


def test_custom_profile_in_docker_format(daemon: Daemon) -> None:
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "archMap": [
            {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]},
            {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
        ],
        "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "comment": "no folders"},
            {
                "names": ["rmdir"],
                "action": "SCMP_ACT_ERRNO",
                "includes": {"caps": ["CAP_SYS_ADMIN"]},  # not held: the rule is dropped
            },
        ],
    }
    path = os.path.join(daemon.base, "no-mkdir.json")
    with open(path, "w") as f:
        json.dump(profile, f)
    result = docker(
        daemon,
        "run",
        "--rm",
        "--security-opt",
        f"seccomp={path}",  # the CLI reads the file and sends its JSON
        "busybox",
        "sh",
        "-c",
        "mkdir /nope; echo mkdir=$?; rmdir /tmp && echo rmdir=ok;"
        " unshare -r true && echo unshare=ok",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["mkdir=1", "rmdir=ok", "unshare=ok"]
    assert "Operation not permitted" in result.stderr


def test_bad_profile_is_refused_in_one_line(daemon: Daemon) -> None:
    path = os.path.join(daemon.base, "bad.json")
    with open(path, "w") as f:
        json.dump({"defaultAction": "SCMP_ACT_NOPE"}, f)
    result = docker(daemon, "create", "--security-opt", f"seccomp={path}", "busybox", "true")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[0] == (
        "Error response from daemon: invalid seccomp profile:"
        ' seccomp: unknown action "SCMP_ACT_NOPE"'
    )
    # over the API, a path on the daemon's host works too, and a missing one is one line
    missing = daemon.post(
        "/containers/create",
        {"Image": "busybox", "HostConfig": {"SecurityOpt": ["seccomp=/nonexistent.json"]}},
    )
    assert missing.status == 400
    assert missing.json()["message"] == (
        "cannot read the seccomp profile '/nonexistent.json': No such file or directory"
    )


def test_no_new_privileges(daemon: Daemon) -> None:
    assert status_field(daemon, "NoNewPrivs", "--security-opt", "no-new-privileges") == "1"
    assert status_field(daemon, "NoNewPrivs", "--security-opt", "no-new-privileges=false") == "0"
    assert status_field(daemon, "NoNewPrivs", "--security-opt", "no-new-privileges:true") == "1"
