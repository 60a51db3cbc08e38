"""``berth`` top, stats, port, rename, update, container prune and the volume verbs
against a private berthd, each compared with what the real docker CLI prints for the
same call on the same daemon; detaching from ``run -it`` through a pty; start-up
imports of the new verbs.
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.compat.berthd import Daemon
from tests.helpers import VENV_BIN

from berth.cli.container_cmds import render_stats, stats_row

BERTH = str(VENV_BIN / "berth")
DOCKER = "/usr/local/bin/docker"
needs_docker = pytest.mark.skipif(not os.path.exists(DOCKER), reason="needs the docker CLI")


def _env(daemon: Daemon | None, tmp: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "BERTH_"))}
    env["BERTH_HOST"] = daemon.host if daemon else "unix:///nonexistent/berth.sock"
    if tmp is not None:
        env["DOCKER_CONFIG"] = str(tmp)
    return env


def berth(daemon: Daemon, *args: str, input: str = "") -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [BERTH, *args], capture_output=True, text=True, input=input, timeout=60, env=_env(daemon)
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def docker(daemon: Daemon, *args: str, input: str = "") -> subprocess.CompletedProcess[str]:
    env = _env(daemon, Path("/tmp/berth-test-docker-config"))
    return subprocess.run(
        [DOCKER, "-H", daemon.host, *args],
        capture_output=True,
        text=True,
        input=input,
        timeout=60,
        env=env,
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 125, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("berth"), result.stderr
    return lines[0]


def same(daemon: Daemon, *args: str) -> str:
    """berth and docker print the same stdout (and both succeed); that output."""
    theirs, ours = docker(daemon, *args), berth(daemon, *args)
    assert theirs.returncode == 0, theirs.stderr
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout == theirs.stdout, (args, ours.stdout, theirs.stdout)
    return ours.stdout


@pytest.fixture
def web(daemon: Daemon) -> Iterator[str]:
    # berth run -p belongs to the networking work: the docker CLI publishes the ports here.
    result = docker(daemon, "run", "-d", "--name", "more-web", "-p", "80", "-p", "53/udp",
                    "busybox", "sleep", "300")  # fmt: skip
    assert result.returncode == 0, result.stderr
    try:
        yield "more-web"
    finally:
        berth(daemon, "rm", "-f", "more-web")


# ---- without a daemon -----------------------------------------------------------------------


def test_stats_columns_are_computed_as_docker_does() -> None:
    sample = {
        "id": "a" * 64,
        "name": "/web",
        "cpu_stats": {
            "cpu_usage": {"total_usage": 3_000_000, "percpu_usage": [1, 2]},
            "system_cpu_usage": 2_000_000_000,
            "online_cpus": 2,
        },
        "precpu_stats": {
            "cpu_usage": {"total_usage": 1_000_000},
            "system_cpu_usage": 1_000_000_000,
        },
        "memory_stats": {
            "usage": 10 << 20,
            "limit": 100 << 20,
            "stats": {"total_inactive_file": 2 << 20},
        },
        "networks": {
            "eth0": {"rx_bytes": 1520, "tx_bytes": 516},
            "eth1": {"rx_bytes": 0, "tx_bytes": 1},
        },
        "blkio_stats": {
            "io_service_bytes_recursive": [
                {"op": "Read", "value": 4096},
                {"op": "write", "value": 2_000_000},
                {"op": "Total", "value": 9},
            ]
        },
        "pids_stats": {"current": 3},
    }
    row = stats_row(sample, "web")
    assert row == {
        "BlockIO": "4.1kB / 2MB",
        "CPUPerc": "0.40%",  # 2e6 / 1e9 * 2 CPUs * 100
        "Container": "web",
        "ID": "a" * 12,
        "MemPerc": "8.00%",
        "MemUsage": "8MiB / 100MiB",
        "Name": "web",
        "NetIO": "1.52kB / 517B",
        "PIDs": "3",
    }
    assert render_stats([row], None).splitlines() == [
        "CONTAINER ID   NAME      CPU %     MEM USAGE / LIMIT   MEM %     NET I/O         "
        "BLOCK I/O     PIDS",
        "aaaaaaaaaaaa   web       0.40%     8MiB / 100MiB       8.00%     1.52kB / 517B   "
        "4.1kB / 2MB   3",
    ]
    assert render_stats([row], "table {{.Name}}\t{{.PIDs}}") == "NAME      PIDS\nweb       3\n"


# ---- against a private daemon, side by side with the docker CLI -------------------------


@needs_docker
def test_top_and_port_match_docker(daemon: Daemon, web: str) -> None:
    assert same(daemon, "top", web, "-o", "pid,comm").splitlines()[1].endswith("sleep")
    header = same(daemon, "top", web, "-o", "user,pid,args").splitlines()[0]
    assert header.split() == ["USER", "PID", "COMMAND"]
    assert berth(daemon, "container", "top", web).stdout.split()[:8] == [
        "UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]  # fmt: skip
    listed = same(daemon, "port", web).splitlines()
    assert [line.split(" -> ")[0] for line in listed] == ["53/udp", "80/tcp"]
    assert same(daemon, "port", web, "80") == same(daemon, "container", "port", web, "80/tcp")
    assert same(daemon, "port", web, "53/udp").startswith("0.0.0.0:")
    line = one_error_line(berth(daemon, "port", web, "81"))
    assert line == f"berth: no public port '81' published for {web}"
    assert docker(daemon, "port", web, "81").returncode != 0
    assert "invalid port (abc)" in one_error_line(berth(daemon, "port", web, "abc"))
    for verb in (["top", "nope"], ["port", "nope"], ["stats", "--no-stream", "nope"]):
        assert one_error_line(berth(daemon, *verb)) == "berth: no such container: nope"
        assert "No such container: nope" in docker(daemon, *verb).stderr


@needs_docker
def test_stats_no_stream_matches_docker(daemon: Daemon, web: str) -> None:
    stopped = berth(daemon, "create", "--name", "more-stopped", "busybox", "true")
    try:
        for args in (["--no-stream"], ["--no-stream", "-a", "--no-trunc"], ["--no-stream", web]):
            theirs, ours = docker(daemon, "stats", *args), berth(daemon, "stats", *args)
            assert ours.returncode == theirs.returncode == 0, ours.stderr
            t_lines, o_lines = theirs.stdout.splitlines(), ours.stdout.splitlines()
            # the same columns (widths follow the values, and the counters move)
            assert o_lines[0].split() == t_lines[0].split()
            assert len(o_lines) == len(t_lines)
            for t_row, o_row in zip(t_lines[1:], o_lines[1:], strict=True):
                t_cells, o_cells = t_row.split(), o_row.split()
                assert o_cells[:2] == t_cells[:2] and o_cells[-1] == t_cells[-1]  # ID NAME PIDS
                assert o_cells[5] == t_cells[5]  # the memory limit
        fields = "{{.Container}} {{.ID}} {{.Name}} {{.PIDs}}"
        same(daemon, "stats", "--no-stream", "--format", fields, web, "more-stopped")
        theirs = json.loads(docker(daemon, "stats", "--no-stream", "--format", "json", web).stdout)
        ours = json.loads(berth(daemon, "stats", "--no-stream", "--format", "json", web).stdout)
        assert sorted(ours) == sorted(theirs) and ours["Name"] == theirs["Name"] == web
        stopped_row = berth(daemon, "stats", "--no-stream", "more-stopped").stdout.splitlines()[1]
        assert "0.00%     0B / 0B             0.00%     0B / 0B   0B / 0B     0" in stopped_row
        # Not a terminal and no --no-stream: one table, then exit (as the brief asks).
        piped = berth(daemon, "stats", web)
        assert piped.returncode == 0 and len(piped.stdout.splitlines()) == 2
    finally:
        assert stopped.returncode == 0, stopped.stderr
        berth(daemon, "rm", "-f", "more-stopped")


def test_stats_refreshes_on_a_terminal(daemon: Daemon, web: str) -> None:
    out, code = _in_pty(daemon, ["stats", web], seconds=2.6, interrupt=True)
    assert out.count(b"\x1b[2J\x1b[H") >= 2, out
    assert f"   {web}   ".encode() in out and b"Traceback" not in out
    assert code == 130


@needs_docker
def test_rename_update_prune(daemon: Daemon, web: str) -> None:
    assert berth(daemon, "rename", web, "more-renamed").returncode == 0
    try:
        assert daemon.inspect("more-renamed")["Name"] == "/more-renamed"
        line = one_error_line(berth(daemon, "container", "rename", "more-renamed", "more-renamed"))
        assert "same name" in line, line
        assert one_error_line(berth(daemon, "rename", "nope", "other")).startswith("berth: ")
    finally:
        berth(daemon, "rename", "more-renamed", web)
    result = berth(daemon, "update", "--memory", "64m", "--memory-swap", "-1", "--cpus", "0.5",
                   "--cpu-shares", "512", "--pids-limit", "60", "--restart", "on-failure:3",
                   "--blkio-weight", "300", web)  # fmt: skip
    assert (result.returncode, result.stdout) == (0, f"{web}\n"), result.stderr
    host = daemon.inspect(web)["HostConfig"]
    assert (host["Memory"], host["NanoCpus"], host["CpuShares"], host["PidsLimit"]) == (
        64 << 20, 500_000_000, 512, 60)  # fmt: skip
    assert host["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}
    assert host["BlkioWeight"] == 300
    assert "one or more flags" in one_error_line(berth(daemon, "update", web))
    assert one_error_line(berth(daemon, "update", "-m", "8m", "nope")) == (
        "berth: no such container: nope"
    )
    # container prune: the stopped ones go, the running one stays; --filter reaches the daemon.
    kept = berth(daemon, "create", "--label", "keep=1", "busybox", "true").stdout.strip()
    gone = berth(daemon, "create", "busybox", "true").stdout.strip()
    refused = berth(daemon, "container", "prune", input="n\n")
    assert refused.stdout == (
        "WARNING! This will remove all stopped containers.\n"
        "Are you sure you want to continue? [y/N] "
    )
    pruned = berth(daemon, "container", "prune", "-f", "--filter", "label!=keep")
    assert pruned.returncode == 0, pruned.stderr
    assert pruned.stdout == f"Deleted Containers:\n{gone}\n\nTotal reclaimed space: 0B\n"
    assert docker(daemon, "container", "prune", "-f").stdout == (
        f"Deleted Containers:\n{kept}\n\nTotal reclaimed space: 0B\n"
    )
    assert daemon.inspect(web)["State"]["Running"]
    assert berth(daemon, "container", "prune", "-f").stdout == "Total reclaimed space: 0B\n"


@needs_docker
def test_volume_verbs_match_docker(daemon: Daemon) -> None:
    try:
        assert same(daemon, "volume", "create", "more-v10") == "more-v10\n"
        assert berth(daemon, "volume", "create", "--label", "a=b", "-d", "local",
                     "more-v2").stdout == "more-v2\n"  # fmt: skip
        anonymous = berth(daemon, "volume", "create").stdout.strip()
        assert len(anonymous) == 64
        listed = same(daemon, "volume", "ls")
        assert listed.splitlines()[0] == "DRIVER    VOLUME NAME"
        assert listed.index("more-v2") < listed.index("more-v10")  # natural order
        same(daemon, "volume", "ls", "-q")
        same(daemon, "volume", "ls", "--format", "json")
        same(daemon, "volume", "ls", "--filter", "label=a")
        same(daemon, "volume", "ls", "--filter", "name=more-v1", "--filter", "driver=local")
        same(daemon, "volume", "ls", "-f", "dangling=true", "--format", "{{.Name}} {{.Labels}}")
        same(daemon, "volume", "ls", "--format", "table {{.Name}}\t{{.Mountpoint}}\t{{.Scope}}")
        same(daemon, "volume", "inspect", "more-v2", "more-v10")
        same(daemon, "volume", "inspect", "--format", "{{.Name}} {{.Driver}}", "more-v2")
        line = one_error_line(berth(daemon, "volume", "inspect", "nope"))
        assert line.startswith("berth: ") and "no such volume" in line
        assert "driver options" in one_error_line(
            berth(daemon, "volume", "create", "-o", "type=tmpfs", "more-v3"))  # fmt: skip
        assert "no such volume" in one_error_line(berth(daemon, "volume", "rm", "nope"))
        same(daemon, "volume", "rm", "-f", "nope")
        assert berth(daemon, "volume", "rm", "more-v2", anonymous).stdout == (
            f"more-v2\n{anonymous}\n"
        )
        assert same(daemon, "volume", "ls", "-q") == "more-v10\n"
    finally:
        for name in ("more-v10", "more-v2", "more-v3"):
            berth(daemon, "volume", "rm", "-f", name)


# ---- run -it and the detach keys, through a pty ---------------------------------------------


def _in_pty(
    daemon: Daemon,
    args: list[str],
    *,
    send: list[tuple[float | bytes, bytes]] = (),  # type: ignore[assignment]
    seconds: float = 3.0,
    interrupt: bool = False,
) -> tuple[bytes, int | None]:
    """Run berth on a pty; (what it wrote, its exit code or None if still running).
    Each ``send`` item goes at a time (seconds) or once its output (bytes) has shown."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: only exec
        os.environ.update(_env(daemon))
        os.execv(BERTH, [BERTH, *args])
    out = b""
    start = time.monotonic()
    pending = list(send)
    code: int | None = None
    try:
        while time.monotonic() - start < seconds:
            if pending:
                when = pending[0][0]
                due = when in out if isinstance(when, bytes) else time.monotonic() - start >= when
                if due:
                    os.write(fd, pending.pop(0)[1])
            ready, _, _ = select.select([fd], [], [], 0.05)
            if ready:
                try:
                    out += os.read(fd, 65536)
                except OSError:
                    pass
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                pid = 0
                return out, os.waitstatus_to_exitcode(status)
        if interrupt:
            os.kill(pid, 2)
            _, status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(status)
            pid = 0
        return out, code
    finally:
        if pid:
            try:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        os.close(fd)


def test_run_it_detach_keys_leave_the_container_up(daemon: Daemon) -> None:
    try:
        out, code = _in_pty(
            daemon,
            ["run", "-it", "--name", "more-detach", "busybox", "sh"],
            send=[(b"/ # ", b"echo hi-there\r"), (b"hi-there\r\n", b"\x10\x11")],
            seconds=15,
        )
        assert code == 0, out  # berth left on ctrl-p ctrl-q, as the docker CLI does
        assert b"hi-there" in out
        assert daemon.inspect("more-detach")["State"]["Running"]
        # attach again, and leave with custom keys
        out, code = _in_pty(
            daemon,
            ["attach", "--detach-keys", "ctrl-x,x", "more-detach"],
            # typed at once (before the attach is ready, on a loaded machine): nothing lost
            send=[(0.0, b"echo again\r"), (b"\nagain\r\n", b"\x18x")],
            seconds=15,
        )
        assert code == 0 and b"again" in out, out
        assert daemon.inspect("more-detach")["State"]["Running"]
    finally:
        berth(daemon, "rm", "-f", "more-detach")


# ---- start-up ---------------------------------------------------------------------------------


def test_new_verbs_load_only_their_module() -> None:
    def imported(*args: str) -> set[str]:
        code = (
            "import sys; from berth.cli.main import main; main(sys.argv[1:]);"
            " sys.stdout.write(' '.join(sys.modules))"
        )
        env = {**os.environ, "BERTH_HOST": "unix:///nonexistent/berth.sock"}
        result = subprocess.run(
            [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env
        )
        assert "Traceback" not in result.stderr, result.stderr
        return set(result.stdout.split())

    ps = imported("ps")
    assert not ps & {"berth.cli.container_cmds", "berth.cli.volume_cmds", "threading"}
    stats = imported("stats", "--no-stream")
    assert "berth.cli.container_cmds" in stats and "berth.cli.volume_cmds" not in stats
    volumes = imported("volume", "ls")
    assert "berth.cli.volume_cmds" in volumes and "berth.cli.container_cmds" not in volumes
    assert not volumes & {"aiohttp", "asyncio", "ssl"}
    build = imported("build", "--help")
    assert "berth.build.parser" not in build
