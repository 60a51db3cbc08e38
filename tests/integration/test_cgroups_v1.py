"""Integration tests for berth.linux.cgroups on a real cgroup v1 (or hybrid) host.

Every test works in its own uniquely named cgroup ("berth-test-<pid>-<random>", a path
relative to this process's own cgroup, so on a host where our memory cgroup is
nested the test cgroups nest under it too). The ``cg`` fixture's teardown thaws,
kills and reaps everything it started and removes every directory it created, also
when the test fails half-way.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from berth.linux.cgroups import Cgroup, CgroupError, detect_mode


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root: creates cgroups on the real kernel"
    try:
        mode = detect_mode()
    except CgroupError as e:
        return f"cannot tell the cgroup mode: {e}"
    if mode != "v1":
        return "cgroup v1 tests; this host uses cgroup v2 (unified)"
    return None


SKIP = _skip_reason()
pytestmark = [pytest.mark.root, pytest.mark.skipif(SKIP is not None, reason=SKIP or "")]


def _rmdir_tree(path: str) -> None:
    if not os.path.isdir(path):
        return
    for dirpath, _dirs, _files in sorted(os.walk(path), key=lambda w: -len(w[0])):
        try:
            os.rmdir(dirpath)
        except OSError:
            pass


def fork_child(body: Callable[[], int]) -> int:
    """Fork; the child runs ``body`` and exits with its result, never returning here."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            code = body()
        except BaseException as e:
            os.write(2, f"child failed: {e!r}\n".encode())
        finally:
            os._exit(code)
    return pid


def sleeper() -> int:
    time.sleep(60)
    return 0


def read_line(fd: int, timeout: float = 10.0) -> str:
    ready, _, _ = select.select([fd], [], [], timeout)
    assert ready, "child did not report in time"
    return os.read(fd, 4096).decode().strip()


def wait_for(pred: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


def wait_exit(pid: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got, status = os.waitpid(pid, os.WNOHANG)
        if got == pid:
            return status
        time.sleep(0.01)
    raise AssertionError(f"pid {pid} did not exit")


def _emptied(cg: Cgroup) -> Callable[[], bool]:
    return lambda: not cg.pids()


class Env:
    """Creates cgroups and children for one test and undoes all of it."""

    def __init__(self) -> None:
        self.cgroups: list[Cgroup] = []
        self.tops: list[str] = []
        self.children: list[int] = []
        self.name = f"berth-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def cgroup(self, sub: str = "ctr", create: bool = True) -> Cgroup:
        cg = Cgroup.for_container(f"{self.name}/{sub}", "unused")
        self.cgroups.append(cg)
        for d in cg.paths().values():
            top = d[: d.index(self.name) + len(self.name)]
            if top not in self.tops:
                self.tops.append(top)
        if create:
            cg.create()
        return cg

    def spawn(self, body: Callable[[], int] = sleeper) -> int:
        pid = fork_child(body)
        self.children.append(pid)
        return pid

    def reap(self, pid: int) -> int:
        status = wait_exit(pid)
        self.children.remove(pid)
        return status

    def cleanup(self) -> None:
        for cg in self.cgroups:
            try:
                if cg.is_frozen():
                    cg.thaw()
            except CgroupError:
                pass
            try:
                cg.kill_all(signal.SIGKILL)
            except CgroupError:
                pass
        for pid in self.children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        for cg in self.cgroups:
            wait_for(_emptied(cg), timeout=3)
            try:
                cg.destroy()
            except CgroupError:
                pass
        for top in self.tops:
            _rmdir_tree(top)


@pytest.fixture
def env() -> Iterator[Env]:
    e = Env()
    try:
        yield e
    finally:
        e.cleanup()
        left = [t for t in e.tops if os.path.exists(t)]
        assert not left, f"cgroup directories left behind: {left}"


def needs(cg: Cgroup, *controllers: str) -> None:
    missing = [c for c in controllers if c not in cg.paths()]
    if missing:
        pytest.skip(f"no {', '.join(missing)} hierarchy mounted on this host")


def read(cg: Cgroup, controller: str, name: str) -> str:
    return Path(cg.paths()[controller], name).read_text().strip()


def proc_cgroup(pid: int) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(","):
            out[c] = path
    return out


# --------------------------------------------------------------------------- tests


def test_create_apply_memory_and_join(env: Env) -> None:
    cg = env.cgroup()
    needs(cg, "memory")
    for d in set(cg.paths().values()):
        assert os.path.isdir(d)
    cg.apply({"memory": {"limit": 64 << 20}})
    assert read(cg, "memory", "memory.limit_in_bytes") == str(64 << 20)

    pid = env.spawn()
    cg.join(pid)
    assert pid in cg.pids()
    where = proc_cgroup(pid)
    assert where["memory"].endswith(f"/{env.name}/ctr")
    assert where["pids"].endswith(f"/{env.name}/ctr") if "pids" in where else True
    usage = cg.memory_usage()
    assert usage is not None and usage >= 0
    assert cg.oom_killed() is False


def test_memory_and_swap_order_both_ways(env: Env) -> None:
    cg = env.cgroup()
    needs(cg, "memory")
    if not os.path.exists(os.path.join(cg.paths()["memory"], "memory.memsw.limit_in_bytes")):
        cg.apply({"memory": {"limit": 64 << 20, "swap": 128 << 20}})  # swap skipped
        assert read(cg, "memory", "memory.limit_in_bytes") == str(64 << 20)
        return
    steps = [(64 << 20, 128 << 20), (32 << 20, 40 << 20), (256 << 20, 512 << 20), (16 << 20, -1)]
    for limit, swap in steps:
        cg.apply({"memory": {"limit": limit, "swap": swap}})
        assert read(cg, "memory", "memory.limit_in_bytes") == str(limit)
        memsw = int(read(cg, "memory", "memory.memsw.limit_in_bytes"))
        assert memsw == swap if swap > 0 else memsw > 1 << 60
    cg.apply({"memory": {"limit": -1}})  # unlimited: memsw follows
    assert int(read(cg, "memory", "memory.limit_in_bytes")) > 1 << 60
    assert int(read(cg, "memory", "memory.memsw.limit_in_bytes")) > 1 << 60


def test_join_pid_zero_moves_the_caller(env: Env) -> None:
    cg = env.cgroup()
    r, w = os.pipe()

    def body() -> int:
        cg.join(0)
        os.write(w, b"joined\n")
        time.sleep(60)
        return 0

    pid = env.spawn(body)
    os.close(w)
    assert read_line(r) == "joined"
    os.close(r)
    assert cg.pids() == [pid]


def test_pids_limit_is_enforced(env: Env) -> None:
    cg = env.cgroup()
    needs(cg, "pids")
    cg.apply({"pids": {"limit": 3}})
    assert read(cg, "pids", "pids.max") == "3"
    r, w = os.pipe()

    def body() -> int:
        cg.join(0)
        kids: list[int] = []
        err = 0
        for _ in range(5):
            try:
                kid = os.fork()
            except OSError as e:
                err = e.errno or 0
                break
            if kid == 0:
                time.sleep(60)
                os._exit(0)
            kids.append(kid)
        os.write(w, f"{len(kids)} {errno.errorcode.get(err, err)}\n".encode())
        for kid in kids:
            os.kill(kid, signal.SIGKILL)
            os.waitpid(kid, 0)
        return 0

    pid = env.spawn(body)
    os.close(w)
    assert read_line(r) == "2 EAGAIN"  # the child itself + 2 = 3 tasks
    os.close(r)
    assert os.WEXITSTATUS(env.reap(pid)) == 0
    events = dict(line.split() for line in read(cg, "pids", "pids.events").splitlines())
    assert int(events["max"]) >= 1


def test_freeze_and_thaw(env: Env) -> None:
    cg = env.cgroup()
    needs(cg, "freezer")
    r, w = os.pipe()
    os.set_blocking(r, False)

    def body() -> int:
        while True:
            os.write(w, b".")
            time.sleep(0.005)

    pid = env.spawn(body)
    os.close(w)
    cg.join(pid)
    assert wait_for(lambda: select.select([r], [], [], 0)[0] != [])

    def drain() -> int:
        n = 0
        while True:
            try:
                chunk = os.read(r, 65536)
            except BlockingIOError:
                return n
            n += len(chunk)

    assert cg.is_frozen() is False
    cg.freeze()
    assert cg.is_frozen() is True
    assert read(cg, "freezer", "freezer.state") == "FROZEN"
    drain()
    time.sleep(0.2)
    assert drain() == 0, "a frozen child kept running"
    assert os.waitpid(pid, os.WNOHANG) == (0, 0)

    cg.thaw()
    assert cg.is_frozen() is False
    assert read(cg, "freezer", "freezer.state") == "THAWED"
    assert wait_for(lambda: drain() > 0), "a thawed child did not run again"
    os.close(r)


def test_cpuset_copy_down(env: Env) -> None:
    cg = env.cgroup("a/b/c")
    needs(cg, "cpuset")
    leaf = Path(cg.paths()["cpuset"])
    top = Path(leaf.as_posix().split(env.name)[0]) / env.name
    base = top.parent
    want_cpus = (base / "cpuset.cpus").read_text().strip()
    want_mems = (base / "cpuset.mems").read_text().strip()
    assert want_cpus and want_mems
    for d in (top, top / "a", top / "a/b", leaf):
        assert (d / "cpuset.cpus").read_text().strip() == want_cpus
        assert (d / "cpuset.mems").read_text().strip() == want_mems
    pid = env.spawn()
    cg.join(pid)  # an empty cpuset would refuse it (ENOSPC)
    assert pid in cg.pids()

    first_cpu = want_cpus.split(",")[0].split("-")[0]
    cg.apply({"cpu": {"cpus": first_cpu, "mems": want_mems.split(",")[0].split("-")[0]}})
    assert read(cg, "cpuset", "cpuset.cpus") == first_cpu


def test_write_error_names_file_and_value(env: Env) -> None:
    cg = env.cgroup()
    needs(cg, "cpuset")
    with pytest.raises(CgroupError) as info:
        cg.apply({"cpu": {"cpus": "9999"}})
    path = os.path.join(cg.paths()["cpuset"], "cpuset.cpus")
    msg = str(info.value)
    assert msg.startswith(f"cgroup: cannot write 9999 to {path}: ")
    reason = msg.rsplit(": ", 1)[1]
    assert reason in ("invalid argument", "numerical result out of range")
    assert "\n" not in msg


def test_cpu_pids_devices_blkio(env: Env) -> None:
    cg = env.cgroup()
    needs(cg, "cpu", "devices")
    cg.apply(
        {
            "cpu": {"shares": 512, "quota": 50000, "period": 100000},
            "devices": [
                {"allow": False, "access": "rwm"},
                {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
                {"allow": True, "type": "c", "major": 136, "minor": -1, "access": "rw"},
            ],
            "blockIO": {"weight": 300},
        }
    )
    assert read(cg, "cpu", "cpu.shares") == "512"
    assert read(cg, "cpu", "cpu.cfs_quota_us") == "50000"
    assert read(cg, "cpu", "cpu.cfs_period_us") == "100000"
    assert read(cg, "devices", "devices.list").splitlines() == ["c 1:3 rwm", "c 136:* rw"]
    if "blkio" in cg.paths():
        for name in ("blkio.weight", "blkio.bfq.weight"):
            if os.path.exists(os.path.join(cg.paths()["blkio"], name)):
                assert read(cg, "blkio", name).split()[-1] == "300"
                break


def test_oom_killed(env: Env) -> None:
    cg = env.cgroup()
    needs(cg, "memory")
    has_memsw = os.path.exists(os.path.join(cg.paths()["memory"], "memory.memsw.limit_in_bytes"))
    memory: dict[str, int] = {"limit": 32 << 20}
    if has_memsw:
        memory["swap"] = 32 << 20
    cg.apply({"memory": memory})
    r, w = os.pipe()

    def body() -> int:
        cg.join(0)
        os.write(w, b"in\n")
        hog = b"\x01" * (256 << 20)
        return len(hog) and 0

    pid = env.spawn(body)
    os.close(w)
    assert read_line(r) == "in"
    os.close(r)
    status = env.reap(pid)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert cg.oom_killed() is True


def test_kill_all_reaches_nested_cgroups(env: Env) -> None:
    cg = env.cgroup()
    needs(cg, "pids")
    pids = [env.spawn() for _ in range(3)]
    for pid in pids:
        cg.join(pid)
    nested = os.path.join(cg.paths()["pids"], "nested")
    os.mkdir(nested)
    Path(nested, "cgroup.procs").write_text(str(pids[2]))
    assert cg.pids() == sorted(pids)

    cg.kill_all(signal.SIGKILL)
    for pid in pids:
        status = env.reap(pid)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert wait_for(lambda: cg.pids() == [])
    assert cg.is_frozen() is False
    cg.destroy()  # removes the nested cgroup too
    assert not os.path.exists(nested)


def test_kill_all_other_signal_leaves_cgroup_thawed(env: Env) -> None:
    cg = env.cgroup()
    pid = env.spawn()
    cg.join(pid)
    cg.kill_all(signal.SIGTERM)
    status = env.reap(pid)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM
    assert cg.is_frozen() is False


def test_destroy_leaves_no_directories(env: Env) -> None:
    cg = env.cgroup("x/y")
    pid = env.spawn()
    cg.join(pid)
    with pytest.raises(CgroupError, match="busy"):
        cg.destroy()  # a process is still inside: refused, nothing killed
    assert os.waitpid(pid, os.WNOHANG) == (0, 0)
    os.kill(pid, signal.SIGKILL)
    env.reap(pid)
    cg.destroy()
    for top in env.tops:  # the shared parent stays for the next container
        assert os.path.isdir(top), top
        assert os.path.isdir(os.path.dirname(top))  # the base stays
    cg.destroy()  # already gone: fine


def test_destroy_from_stored_paths(env: Env) -> None:
    cg = env.cgroup()
    again = Cgroup.from_paths(cg.paths())
    assert again.paths() == cg.paths()
    again.destroy()
    for d in cg.paths().values():
        assert not os.path.exists(d)
    for top in env.tops:  # the shared parent stays for the next container
        assert os.path.isdir(top), top
