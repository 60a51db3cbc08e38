"""The same bundles under berth-runtime and runc must behave the same.

Each test runs once per installed runtime (the ``runtime`` fixture), and asserts
what a user observes from inside the container.
"""

from __future__ import annotations

import array
import json
import os
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from tests.helpers import Bundle, RuntimeCLI

SH = ["sh", "-c"]


def test_init_is_pid_1_in_its_own_pid_namespace(runtime: RuntimeCLI, make_bundle) -> None:
    bundle = make_bundle([*SH, "echo $$; ls /proc | grep -c '^[0-9]'"])
    result = runtime.run(bundle, check=True)
    pid, visible = result.stdout.split()
    assert pid == "1"
    assert int(visible) <= 3  # sh, ls and grep: no host process is visible


def test_hostname(runtime: RuntimeCLI, make_bundle) -> None:
    bundle = make_bundle(["hostname"])
    bundle.config["hostname"] = "box-one"
    assert runtime.run(bundle, check=True).stdout.strip() == "box-one"


def test_user_ids_and_additional_groups(runtime: RuntimeCLI, make_bundle) -> None:
    bundle = make_bundle(["id"], user={"uid": 1000, "gid": 1001, "additionalGids": [5, 7]})
    assert runtime.run(bundle, check=True).stdout.strip() == ("uid=1000 gid=1001 groups=5(tty),7")


def test_capability_masks_follow_the_spec(runtime: RuntimeCLI, make_bundle) -> None:
    bundle = make_bundle(["grep", "^Cap", "/proc/self/status"])
    caps = ["CAP_CHOWN", "CAP_KILL", "CAP_NET_RAW"]
    bundle.process["capabilities"] = {
        "bounding": [*caps, "CAP_SYS_ADMIN"],
        "effective": caps,
        "permitted": caps,
        "inheritable": ["CAP_KILL"],
        "ambient": ["CAP_KILL"],
    }
    lines = dict(line.split(":\t") for line in runtime.run(bundle, check=True).stdout.splitlines())
    mask = (1 << 0) | (1 << 5) | (1 << 13)
    assert int(lines["CapEff"], 16) == mask
    assert int(lines["CapPrm"], 16) == mask
    assert int(lines["CapBnd"], 16) == mask | (1 << 21)
    assert int(lines["CapInh"], 16) == 1 << 5
    assert int(lines["CapAmb"], 16) == 1 << 5


def test_mounts_seen_inside(runtime: RuntimeCLI, make_bundle, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "hello").write_text("from the host\n")
    bundle = make_bundle([*SH, "cut -d' ' -f2,4 /proc/self/mounts; cat /data/hello"])
    bundle.config["mounts"].append(
        {"destination": "/data", "type": "bind", "source": str(shared), "options": ["rbind", "ro"]}
    )
    out = runtime.run(bundle, check=True).stdout.splitlines()
    mounts = dict(line.split(" ", 1) for line in out[:-1])
    assert out[-1] == "from the host"
    for point in ("/", "/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/data"):
        assert point in mounts, f"{point} not mounted: {sorted(mounts)}"
    assert mounts["/"].startswith("ro")  # root.readonly in the default spec
    assert mounts["/data"].startswith("ro")
    assert mounts["/sys"].startswith("ro")
    assert "/sys/fs/cgroup/memory" in mounts or "/sys/fs/cgroup" in mounts


def test_masked_paths_are_unreadable(runtime: RuntimeCLI, make_bundle) -> None:
    bundle = make_bundle([*SH, "cat /proc/timer_list | wc -c; ls /sys/firmware | wc -l"])
    assert runtime.run(bundle, check=True).stdout.split() == ["0", "0"]


def test_readonly_paths_refuse_writes(runtime: RuntimeCLI, make_bundle) -> None:
    bundle = make_bundle(
        [
            *SH,
            "echo 1 > /proc/sys/vm/drop_caches && echo wrote; echo x > /proc/sys/kernel/domainname"
            " && echo wrote; true",
        ]
    )
    result = runtime.run(bundle)
    assert "wrote" not in result.stdout
    assert result.stderr.count("Read-only file system") == 2


def test_rlimits(runtime: RuntimeCLI, make_bundle) -> None:
    bundle = make_bundle([*SH, "ulimit -Sn; ulimit -Hn; ulimit -c"])
    bundle.process["rlimits"] = [
        {"type": "RLIMIT_NOFILE", "soft": 256, "hard": 512},
        {"type": "RLIMIT_CORE", "soft": 0, "hard": 0},
    ]
    assert runtime.run(bundle, check=True).stdout.split() == ["256", "512", "0"]


def test_seccomp_denial_returns_the_configured_errno(runtime: RuntimeCLI, make_bundle) -> None:
    bundle = make_bundle([*SH, "mkdir /tmp/x; echo status=$?"])
    bundle.config["root"]["readonly"] = False
    bundle.linux["seccomp"] = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}],
    }
    result = runtime.run(bundle, check=True)
    assert "status=1" in result.stdout
    assert "Function not implemented" in result.stderr


def test_memory_limit_oom_kills(runtime: RuntimeCLI, make_bundle) -> None:
    bundle = make_bundle([*SH, "a=0123456789abcdef; while true; do a=$a$a; done"])
    bundle.linux["resources"]["memory"] = {"limit": 32 * 1024 * 1024, "swap": 32 * 1024 * 1024}
    result = runtime.run(bundle, timeout=60)
    assert result.returncode == 137, result.stderr


def test_pids_limit(runtime: RuntimeCLI, make_bundle) -> None:
    bundle = make_bundle([*SH, "for i in 1 2 3 4 5 6 7 8; do sleep 2 & done; wait; echo done"])
    bundle.linux["resources"]["pids"] = {"limit": 4}
    result = runtime.run(bundle, timeout=30)
    assert "can't fork" in result.stderr


def test_user_namespace_mapping(runtime: RuntimeCLI, make_bundle) -> None:
    bundle = make_bundle(
        [*SH, "cat /proc/self/uid_map /proc/self/gid_map; id -u; stat -c %u /"], traversable=True
    )
    subprocess.run(["chown", "-R", "100000:100000", str(bundle.rootfs)], check=True)
    bundle.linux["namespaces"].append({"type": "user"})
    bundle.linux["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    bundle.linux["gidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    out = runtime.run(bundle, check=True).stdout.split()
    assert out == ["0", "100000", "65536", "0", "100000", "65536", "0", "0"]


def test_exit_code_passes_through(runtime: RuntimeCLI, make_bundle) -> None:
    assert runtime.run(make_bundle([*SH, "exit 42"])).returncode == 42


@pytest.mark.parametrize(
    ("signal", "command", "code"),
    [
        ("KILL", ["sleep", "60"], 137),
        ("9", ["sleep", "60"], 137),
        ("SIGTERM", [*SH, "trap 'exit 5' TERM; while :; do sleep 0.05; done"], 5),
        ("USR1", [*SH, "trap 'exit 6' USR1; while :; do sleep 0.05; done"], 6),
    ],
)
def test_kill_delivers_signals_by_name_or_number(
    runtime: RuntimeCLI, make_bundle, signal: str, command: list[str], code: int
) -> None:
    bundle = make_bundle(command).write()
    cid = f"t-{uuid.uuid4().hex[:10]}"
    runtime.remember(cid)
    proc = subprocess.Popen(
        [runtime.binary, "--root", str(runtime.root), "run", "--bundle", str(bundle.path), cid],
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while runtime("state", cid).returncode != 0 or runtime.state(cid)["status"] != "running":
            assert time.monotonic() < deadline, "the container never started"
            time.sleep(0.02)
        time.sleep(0.2)  # let the shell install its trap
        runtime("kill", cid, signal, check=True)
        assert proc.wait(timeout=10) == code
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _create(runtime: RuntimeCLI, bundle: Bundle, *extra: str) -> str:
    bundle.write()
    cid = f"t-{uuid.uuid4().hex[:10]}"
    runtime.remember(cid)
    # The init inherits stdio: a pipe would keep the caller waiting for EOF.
    with tempfile.TemporaryFile(mode="w+") as errors:
        result = runtime(
            "create",
            "--bundle",
            str(bundle.path),
            *extra,
            cid,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )
        errors.seek(0)
        assert result.returncode == 0, errors.read()
    return cid


def test_create_start_state_kill_delete(runtime: RuntimeCLI, make_bundle) -> None:
    bundle = make_bundle(["sleep", "60"])
    bundle.config["annotations"] = {"org.example.key": "value"}
    cid = _create(runtime, bundle)
    state = runtime.state(cid)
    assert state["status"] == "created"
    assert state["id"] == cid and state["pid"] > 0
    assert state["bundle"] == str(bundle.path)
    assert state["annotations"] == {"org.example.key": "value"}
    runtime("start", cid, check=True)
    assert runtime.state(cid)["status"] == "running"
    again = runtime("start", cid)
    assert again.returncode != 0
    runtime("pause", cid, check=True)
    assert runtime.state(cid)["status"] == "paused"
    runtime("resume", cid, check=True)
    assert runtime.state(cid)["status"] == "running"
    refused = runtime("delete", cid)
    assert refused.returncode != 0
    runtime("kill", cid, "KILL", check=True)
    deadline = time.monotonic() + 10
    while runtime.state(cid)["status"] != "stopped":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    runtime("delete", cid, check=True)
    assert runtime("state", cid).returncode != 0


def test_exec_joins_namespaces_and_cgroup(runtime: RuntimeCLI, make_bundle) -> None:
    cid = _create(runtime, make_bundle(["sleep", "60"]))
    runtime("start", cid, check=True)
    init_pid = runtime.state(cid)["pid"]
    result = runtime(
        "exec",
        cid,
        "sh",
        "-c",
        "for n in ipc mnt net pid uts; do readlink /proc/self/ns/$n; done;"
        " cat /proc/self/cgroup; echo $$",
        check=True,
    )
    lines = result.stdout.splitlines()
    expected_ns = [
        os.readlink(f"/proc/{init_pid}/ns/{n}") for n in ("ipc", "mnt", "net", "pid", "uts")
    ]
    assert lines[:5] == expected_ns
    with open(f"/proc/{init_pid}/cgroup") as f:
        init_cgroups = f.read().split()
    assert lines[5:-1] == init_cgroups
    assert int(lines[-1]) > 1  # a new process in the container's pid namespace
    status = runtime("exec", cid, "sh", "-c", "exit 3")
    assert status.returncode == 3


def _console_server(path: Path) -> socket.socket:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    server.settimeout(20)
    return server


def _receive_master(server: socket.socket) -> int:
    conn, _ = server.accept()
    with conn:
        fds = array.array("i")
        _, ancdata, _, _ = conn.recvmsg(1024, socket.CMSG_SPACE(fds.itemsize))
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[: fds.itemsize])
    return fds[0]


def _read_all(fd: int, timeout: float = 10) -> str:
    import select

    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                data = os.read(fd, 4096)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks).decode(errors="replace")


def test_terminal_mode_gives_a_tty(runtime: RuntimeCLI, make_bundle, tmp_path: Path) -> None:
    bundle = make_bundle([*SH, "tty; test -t 0 && test -t 1 && echo IS-A-TTY; stty size"])
    bundle.process["terminal"] = True
    bundle.process["consoleSize"] = {"height": 33, "width": 101}
    sock_path = tmp_path / "console.sock"
    server = _console_server(sock_path)
    try:
        cid = _create(runtime, bundle, "--console-socket", str(sock_path))
        master = _receive_master(server)
    finally:
        server.close()
    try:
        runtime("start", cid, check=True)
        output = _read_all(master)
    finally:
        os.close(master)
    assert "/dev/pts/" in output or "/dev/console" in output
    assert "IS-A-TTY" in output
    assert "33 101" in output


@pytest.mark.parametrize(
    "phase", ["createRuntime", "createContainer", "startContainer", "poststart", "poststop"]
)
def test_hooks_get_the_state_on_stdin(
    runtime: RuntimeCLI, make_bundle, tmp_path: Path, phase: str
) -> None:
    out = tmp_path / f"{phase}.json"
    bundle = make_bundle(["true"])
    bundle.config["hooks"] = {phase: [{"path": "/bin/sh", "args": ["sh", "-c", f"cat > {out}"]}]}
    if phase in {"createContainer", "startContainer"}:
        # these run in the container's mount namespace: give the hook the host's /tmp path
        bundle.config["mounts"].append(
            {
                "destination": str(tmp_path),
                "type": "bind",
                "source": str(tmp_path),
                "options": ["rbind"],
            }
        )
    runtime.run(bundle, check=True)
    state = json.loads(out.read_text())
    assert state["bundle"] == str(bundle.path)
    assert state["id"].startswith("t-")


def test_umask(runtime: RuntimeCLI, make_bundle) -> None:
    bundle = make_bundle([*SH, "umask"], user={"uid": 0, "gid": 0, "umask": 0o077})
    assert runtime.run(bundle, check=True).stdout.strip() == "0077"
