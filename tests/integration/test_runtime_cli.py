"""runc's command line, verb by verb, and the config fields not covered elsewhere."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from tests.helpers import Bundle, RuntimeCLI

SH = ["sh", "-c"]


def _create(runtime: RuntimeCLI, bundle: Bundle, *extra: str, **kwargs) -> str:
    bundle.write()
    cid = f"t-{uuid.uuid4().hex[:10]}"
    runtime.remember(cid)
    with tempfile.TemporaryFile(mode="w+") as errors:
        kwargs.setdefault("stdout", subprocess.DEVNULL)
        result = runtime(
            "create", "--bundle", str(bundle.path), *extra, cid,
            stdin=subprocess.DEVNULL, stderr=errors, **kwargs,
        )  # fmt: skip
        errors.seek(0)
        assert result.returncode == 0, errors.read()
    return cid


def test_list_and_ps(runtime: RuntimeCLI, make_bundle) -> None:
    cid = _create(runtime, make_bundle([*SH, "sleep 60 & sleep 61"]))
    runtime("start", cid, check=True)
    table = runtime("list", check=True).stdout.splitlines()
    assert table[0].split()[:3] == ["ID", "PID", "STATUS"]
    assert any(line.startswith(cid) and "running" in line for line in table[1:])
    items = json.loads(runtime("list", "--format", "json", check=True).stdout)
    assert [item["id"] for item in items] == [cid]
    assert runtime("list", "-q", check=True).stdout.split() == [cid]
    deadline = time.monotonic() + 5
    while len(json.loads(runtime("ps", "--format", "json", cid, check=True).stdout)) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    pids = json.loads(runtime("ps", "--format", "json", cid, check=True).stdout)
    assert runtime.state(cid)["pid"] in pids
    ps_table = runtime("ps", cid, check=True).stdout
    assert "sleep 60" in ps_table


def test_pid_file_and_go_style_flags(runtime: RuntimeCLI, make_bundle, tmp_path: Path) -> None:
    bundle = make_bundle(["sleep", "60"])
    pid_file = tmp_path / "init.pid"
    cid = _create(runtime, bundle, "-pid-file", str(pid_file))
    assert int(pid_file.read_text()) == runtime.state(cid)["pid"]


def test_run_detached_then_delete(runtime: RuntimeCLI, make_bundle) -> None:
    bundle = make_bundle(["sleep", "60"]).write()
    cid = f"t-{uuid.uuid4().hex[:10]}"
    runtime.remember(cid)
    result = runtime(
        "run", "-d", "--bundle", str(bundle.path), cid,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 0
    assert runtime.state(cid)["status"] == "running"
    runtime("delete", "--force", cid, check=True)
    assert runtime("state", cid).returncode != 0


def test_no_pivot(runtime: RuntimeCLI, make_bundle) -> None:
    bundle = make_bundle([*SH, "ls /; echo $$"]).write()
    cid = f"t-{uuid.uuid4().hex[:10]}"
    result = runtime("run", "--no-pivot", "--bundle", str(bundle.path), cid, check=True)
    assert "bin" in result.stdout.split() and result.stdout.split()[-1] == "1"


def test_preserve_fds(runtime: RuntimeCLI, make_bundle, tmp_path: Path) -> None:
    extra = tmp_path / "extra.txt"
    extra.write_text("through fd 3\n")
    bundle = make_bundle(["cat", "/proc/self/fd/3"]).write()
    fd = os.open(extra, os.O_RDONLY)
    saved = os.dup(3) if _is_open(3) else None
    try:
        os.dup2(fd, 3)
        cid = f"t-{uuid.uuid4().hex[:10]}"
        result = runtime(
            "run", "--preserve-fds", "1", "--bundle", str(bundle.path), cid, pass_fds=(3,)
        )
    finally:
        os.close(fd)
        if saved is not None:
            os.dup2(saved, 3)
            os.close(saved)
        else:
            os.close(3)
    assert result.stdout == "through fd 3\n", result.stderr


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_exec_with_a_process_file_and_detach(
    runtime: RuntimeCLI, make_bundle, tmp_path: Path
) -> None:
    cid = _create(runtime, make_bundle(["sleep", "60"]))
    runtime("start", cid, check=True)
    out = tmp_path / "exec-out"
    proc_file = tmp_path / "process.json"
    proc_file.write_text(
        json.dumps(
            {
                "args": ["sh", "-c", "echo $GREETING from $(pwd) as $(id -u)"],
                "env": ["PATH=/bin:/usr/bin", "GREETING=hello"],
                "cwd": "/tmp",
                "user": {"uid": 1000, "gid": 1000},
            }
        )
    )
    result = runtime("exec", "--process", str(proc_file), cid, check=True)
    assert result.stdout.strip() == "hello from /tmp as 1000"
    pid_file = tmp_path / "exec.pid"
    with open(out, "w") as sink:
        runtime(
            "exec", "-d", "--pid-file", str(pid_file), cid, "sleep", "30",
            stdout=sink, stderr=sink, stdin=subprocess.DEVNULL, check=True,
        )  # fmt: skip
    exec_pid = int(pid_file.read_text())
    assert exec_pid in json.loads(runtime("ps", "-f", "json", cid, check=True).stdout)


def test_join_a_namespace_by_path(runtime: RuntimeCLI, make_bundle) -> None:
    first = _create(runtime, make_bundle(["sleep", "60"]))
    runtime("start", first, check=True)
    first_pid = runtime.state(first)["pid"]
    bundle = make_bundle([*SH, "readlink /proc/self/ns/net; readlink /proc/self/ns/uts"])
    for ns in bundle.linux["namespaces"]:
        if ns["type"] == "network":
            ns["path"] = f"/proc/{first_pid}/ns/net"
    out = runtime.run(bundle, check=True).stdout.split()
    assert out[0] == os.readlink(f"/proc/{first_pid}/ns/net")
    assert out[1] != os.readlink(f"/proc/{first_pid}/ns/uts")


def test_sysctl_oom_score_and_cgroup_resources(runtime: RuntimeCLI, make_bundle) -> None:
    bundle = make_bundle(
        [
            *SH,
            "cat /proc/sys/kernel/shmmni /proc/self/oom_score_adj"
            " /sys/fs/cgroup/cpu/cpu.shares /sys/fs/cgroup/cpu/cpu.cfs_quota_us"
            " /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/memory/memory.limit_in_bytes",
        ]
    )
    bundle.linux["sysctl"] = {"kernel.shmmni": "1000"}
    bundle.process["oomScoreAdj"] = 500
    bundle.linux["resources"].update(
        cpu={"shares": 512, "quota": 50000, "period": 100000},
        pids={"limit": 42},
        memory={"limit": 64 * 1024 * 1024},
    )
    out = runtime.run(bundle, check=True).stdout.split()
    assert out == ["1000", "500", "512", "50000", "42", str(64 * 1024 * 1024)]


def test_device_nodes(runtime: RuntimeCLI, make_bundle) -> None:
    bundle = make_bundle(
        [
            *SH,
            "ls -l /dev/null /dev/zero /dev/urandom /dev/tty /dev/mynull;"
            " echo data > /dev/mynull && echo ok; ls -l /dev/fd /dev/ptmx",
        ]
    )
    bundle.linux["devices"] = [
        {"path": "/dev/mynull", "type": "c", "major": 1, "minor": 3, "fileMode": 0o620,
         "uid": 0, "gid": 5}
    ]  # fmt: skip
    out = runtime.run(bundle, check=True).stdout
    assert "crw--w----" in out and "ok" in out
    assert "/dev/fd -> /proc/self/fd" in out
    assert "/dev/ptmx -> pts/ptmx" in out


def test_rootfs_propagation_private(runtime: RuntimeCLI, make_bundle) -> None:
    bundle = make_bundle(["sh", "-c", "awk '$5 == \"/\"' /proc/self/mountinfo"])
    bundle.linux["rootfsPropagation"] = "private"
    out = runtime.run(bundle, check=True).stdout
    assert out.strip() and "shared:" not in out and "master:" not in out


def test_foreground_terminal_is_proxied(runtime: RuntimeCLI, make_bundle) -> None:
    bundle = make_bundle(["sh", "-c", "tty; echo cols=$(stty size)"]).write()
    bundle.process["terminal"] = True
    bundle.write()
    cid = f"t-{uuid.uuid4().hex[:10]}"
    runtime.remember(cid)
    pid, master = pty.fork()
    if pid == 0:
        os.execv(runtime.binary, [runtime.binary, "--root", str(runtime.root), "run",
                                  "--bundle", str(bundle.path), cid])  # fmt: skip
    output = b""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if select.select([master], [], [], 0.2)[0]:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
    _, status = os.waitpid(pid, 0)
    os.close(master)
    assert os.waitstatus_to_exitcode(status) == 0
    assert b"/dev/pts/" in output or b"/dev/console" in output


def test_log_file_gets_errors_as_json(berth: RuntimeCLI, tmp_path: Path) -> None:
    log = tmp_path / "runtime.log"
    result = berth("--log", str(log), "--log-format", "json", "start", "missing-container")
    assert result.returncode != 0
    entry = json.loads(log.read_text().splitlines()[-1])
    assert entry["level"] == "error" and "does not exist" in entry["msg"]


def test_features_and_version(berth: RuntimeCLI) -> None:
    features = json.loads(berth("features", check=True).stdout)
    assert features["ociVersionMax"].startswith("1.")
    assert "user" in features["linux"]["namespaces"]
    assert "CAP_SYS_ADMIN" in features["linux"]["capabilities"]
    assert "SCMP_ACT_ERRNO" in features["linux"]["seccomp"]["actions"]
    assert "rbind" in features["mountOptions"]
    assert berth("--version", check=True).stdout.startswith("berth-runtime version")


def test_rootfs_propagation_shared(runtime: RuntimeCLI, make_bundle) -> None:
    bundle = make_bundle(["sh", "-c", "awk '$5 == \"/\"' /proc/self/mountinfo"])
    bundle.linux["rootfsPropagation"] = "shared"
    result = runtime.run(bundle)
    if runtime.name == "runc":
        return  # runc 1.1 fails pivot_root here; berth makes the rootfs's parent private
    assert result.returncode == 0, result.stderr
    assert "shared:" in result.stdout


def test_fifo_and_u_devices(runtime: RuntimeCLI, make_bundle) -> None:
    bundle = make_bundle([*SH, "ls -l /dev/myfifo /dev/mynull2 | cut -c1"])
    bundle.linux["devices"] = [
        {"path": "/dev/myfifo", "type": "p", "fileMode": 0o666},
        {"path": "/dev/mynull2", "type": "u", "major": 1, "minor": 3, "fileMode": 0o666},
    ]
    assert runtime.run(bundle, check=True).stdout.split() == ["p", "c"]  # ls sorts by name


def test_hostname_in_a_joined_uts_namespace(berth: RuntimeCLI, make_bundle) -> None:
    first = _create(berth, make_bundle(["sleep", "60"]))
    berth("start", first, check=True)
    first_pid = berth.state(first)["pid"]
    bundle = make_bundle(["hostname"])
    bundle.config["hostname"] = "renamed"
    for ns in bundle.linux["namespaces"]:
        if ns["type"] == "uts":
            ns["path"] = f"/proc/{first_pid}/ns/uts"
    assert berth.run(bundle, check=True).stdout.strip() == "renamed"
    assert berth("exec", first, "hostname", check=True).stdout.strip() == "renamed"


def test_no_mount_namespace_uses_chroot_and_leaves_no_mount(berth: RuntimeCLI, make_bundle) -> None:
    bundle = make_bundle([*SH, "ls /bin/busybox && cat /proc/self/cgroup | head -1"])
    bundle.linux["namespaces"] = [{"type": "pid"}]
    del bundle.linux["maskedPaths"], bundle.linux["readonlyPaths"]
    bundle.config["root"]["readonly"] = False
    bundle.config.pop("hostname")
    with open("/proc/self/mountinfo") as f:
        before = f.read().count("\n")
    result = berth.run(bundle, check=True)
    assert "/bin/busybox" in result.stdout
    with open("/proc/self/mountinfo") as f:
        assert f.read().count("\n") == before
