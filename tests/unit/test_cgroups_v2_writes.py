"""Unit tests for berth.linux.cgroups: v2 writes, path rules and mode detection.

No root and no real cgroup filesystem: a temporary directory imitates a cgroup2 mount
(the files the kernel would create in each cgroup), and the mountinfo and
/proc/self/cgroup texts are handed in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from berth.errors import SystemFailure
from berth.linux import cgroups
from berth.linux.cgroups import Cgroup, CgroupError, detect_mode

# ----------------------------------------------------------------- sample texts

PURE_V2 = """\
22 26 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
26 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw
30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec shared:4 - cgroup2 cgroup2 rw,nsdelegate
"""

HYBRID = """\
23 26 0:22 / /sys rw,nosuid,nodev,noexec,relatime - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""

HYBRID_SELF = """\
9:name=systemd:/
8:pids:/
7:blkio:/
6:freezer:/
5:devices:/
4:memory:/process_api/af33
3:cpuset:/
2:cpuacct:/
1:cpu:/
0::/
"""

PURE_V1 = """\
25 18 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/systemd rw,nosuid shared:10 - cgroup cgroup rw,xattr,name=systemd
29 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:13 - cgroup cgroup rw,cpu,cpuacct
30 25 0:27 / /sys/fs/cgroup/memory rw,nosuid shared:14 - cgroup cgroup rw,memory
31 25 0:28 / /sys/fs/cgroup/pids rw,nosuid shared:15 - cgroup cgroup rw,pids
"""

# ----------------------------------------------------------------- fake cgroup2 tree

ROOT_CONTROLLERS = "cpuset cpu io memory hugetlb pids"

# What the kernel puts in every non-root cgroup (with all controllers enabled).
CGROUP_FILES = {
    "cgroup.procs": "",
    "cgroup.controllers": ROOT_CONTROLLERS,
    "cgroup.subtree_control": "",
    "cgroup.events": "populated 0\nfrozen 0\n",
    "cgroup.freeze": "0",
    "cgroup.kill": "",
    "cpu.weight": "100",
    "cpu.max": "max 100000",
    "cpu.idle": "0",
    "cpuset.cpus": "",
    "cpuset.mems": "",
    "io.weight": "default 100",
    "io.max": "",
    "memory.current": "4096",
    "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
    "memory.low": "0",
    "memory.max": "max",
    "memory.swap.max": "max",
    "pids.max": "max",
    "hugetlb.2MB.max": "max",
}


def make_v2_tree(root: Path, cgroup_path: str = "", **overrides: str | None) -> Path:
    """Imitate a cgroup2 mount at ``root`` holding ``cgroup_path``; return the leaf.

    ``overrides`` replace (or, with None, remove) files in every created cgroup.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "cgroup.controllers").write_text(ROOT_CONTROLLERS + "\n")
    (root / "cgroup.subtree_control").write_text("")
    (root / "cgroup.procs").write_text("1\n")
    files = dict(CGROUP_FILES)
    for key, value in overrides.items():
        name = key.replace("__", ".")
        if value is None:
            files.pop(name, None)
        else:
            files[name] = value
    d = root
    for part in [p for p in cgroup_path.split("/") if p]:
        d = d / part
        d.mkdir(exist_ok=True)
        for name, text in files.items():
            if not (d / name).exists():
                (d / name).write_text(text)
    return d


def v2_mountinfo(root: Path) -> str:
    return f"30 23 0:26 / {root} rw,nosuid,nodev - cgroup2 cgroup2 rw,nsdelegate\n"


def v2_cgroup(
    root: Path, cgroups_path: str | None, cid: str = "c1", own: str = "/", **files: str | None
) -> tuple[Cgroup, Path]:
    cg = Cgroup.for_container(
        cgroups_path,
        cid,
        root=str(root),
        mountinfo=v2_mountinfo(root),
        proc_cgroup=f"0::{own}\n",
    )
    rel = cg.paths()[""][len(str(root)) :]
    leaf = make_v2_tree(root, rel, **files)
    return cg, leaf


def read(leaf: Path, name: str) -> str:
    return (leaf / name).read_text().strip()


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Record every write (a fake file only keeps the last one)."""
    log: list[tuple[str, str]] = []
    real = cgroups._write

    def recording(path: str, value: str) -> None:
        log.append((Path(path).name, value))
        real(path, value)

    monkeypatch.setattr(cgroups, "_write", recording)
    return log


# ----------------------------------------------------------------- detect_mode


def test_detect_mode_pure_v2() -> None:
    assert detect_mode(PURE_V2) == "v2"


def test_detect_mode_hybrid_is_v1() -> None:
    assert detect_mode(HYBRID) == "v1"


def test_detect_mode_pure_v1() -> None:
    assert detect_mode(PURE_V1) == "v1"


def test_detect_mode_last_mount_on_the_point_wins() -> None:
    over = PURE_V1 + "60 25 0:40 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    assert detect_mode(over) == "v2"
    assert detect_mode(PURE_V2 + "61 30 0:41 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n") == "v1"


def test_detect_mode_custom_root(tmp_path: Path) -> None:
    assert detect_mode(v2_mountinfo(tmp_path), root=str(tmp_path)) == "v2"
    assert detect_mode(v2_mountinfo(tmp_path)) == "v1"


def test_detect_mode_reads_this_process() -> None:
    assert detect_mode() in ("v1", "v2")


# ----------------------------------------------------------------- path rules


def test_absolute_path_is_under_the_mount(tmp_path: Path) -> None:
    cg, _ = v2_cgroup(tmp_path, "/machine/ctr", own="/user.slice/session-1.scope")
    assert cg.paths() == {"": str(tmp_path / "machine/ctr")}


def test_relative_path_is_under_own_cgroup(tmp_path: Path) -> None:
    cg, _ = v2_cgroup(tmp_path, "pods/ctr", own="/user.slice/session-1.scope")
    assert cg.paths() == {"": str(tmp_path / "user.slice/session-1.scope/pods/ctr")}


@pytest.mark.parametrize("path", [None, ""])
def test_no_path_means_berth_slash_id(tmp_path: Path, path: str | None) -> None:
    cg, _ = v2_cgroup(tmp_path, path, cid="abc123", own="/svc")
    assert cg.paths() == {"": str(tmp_path / "svc/berth/abc123")}


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("system.slice:berth:ID", "system.slice/berth-ID.scope"),
        ("user-1000.slice:docker:abc", "user.slice/user-1000.slice/docker-abc.scope"),
        (":berth:ID", "system.slice/berth-ID.scope"),
        ("-.slice:berth:ID", "berth-ID.scope"),
        ("system.slice::ID", "system.slice/ID.scope"),
    ],
)
def test_systemd_form_is_translated(tmp_path: Path, spec: str, expected: str) -> None:
    cg, _ = v2_cgroup(tmp_path, spec, own="/somewhere/else")
    assert cg.paths() == {"": str(tmp_path / expected)}


@pytest.mark.parametrize(
    "bad",
    ["../escape", "/a/../../b", "a/..", "..", "bad-.slice:x:y", "system.slice:berth:a/b", "/", "."],
)
def test_bad_paths_are_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(CgroupError):
        Cgroup.for_container(
            bad, "c1", root=str(tmp_path), mountinfo=v2_mountinfo(tmp_path), proc_cgroup="0::/\n"
        )


def test_dot_dot_refusal_is_a_system_failure_with_the_path(tmp_path: Path) -> None:
    with pytest.raises(SystemFailure, match=r"\.\./x"):
        Cgroup.for_container(
            "../x", "c1", root=str(tmp_path), mountinfo=v2_mountinfo(tmp_path), proc_cgroup=""
        )


def test_bad_container_id_for_default_path(tmp_path: Path) -> None:
    with pytest.raises(CgroupError):
        v2_cgroup(tmp_path, None, cid="a/b")


def test_mount_root_is_stripped(tmp_path: Path) -> None:
    # A container without a cgroup namespace: the mount shows /docker/abc as its root.
    mountinfo = f"30 23 0:26 /docker/abc {tmp_path} rw - cgroup2 cgroup2 rw\n"
    cg = Cgroup.for_container(
        "ctr", "c1", root=str(tmp_path), mountinfo=mountinfo, proc_cgroup="0::/docker/abc/init\n"
    )
    assert cg.paths() == {"": str(tmp_path / "init/ctr")}


def test_hybrid_relative_path_per_hierarchy(tmp_path: Path) -> None:
    mountinfo = HYBRID.replace("/sys/fs/cgroup", str(tmp_path))
    cg = Cgroup.for_container(
        None, "c9", root=str(tmp_path), mountinfo=mountinfo, proc_cgroup=HYBRID_SELF
    )
    paths = cg.paths()
    assert paths["memory"] == str(tmp_path / "memory/process_api/af33/berth/c9")
    assert paths["cpu"] == str(tmp_path / "cpu/berth/c9")
    assert paths["name=systemd"] == str(tmp_path / "systemd/berth/c9")
    assert "" not in paths  # the empty unified mount is not used for resource control
    assert set(paths) == {
        "cpu",
        "cpuacct",
        "cpuset",
        "memory",
        "devices",
        "freezer",
        "blkio",
        "pids",
        "name=systemd",
    }


def test_v1_combined_hierarchy_and_absolute_path(tmp_path: Path) -> None:
    mountinfo = PURE_V1.replace("/sys/fs/cgroup", str(tmp_path))
    cg = Cgroup.for_container(
        "/system.slice/x.scope", "c1", root=str(tmp_path), mountinfo=mountinfo, proc_cgroup=""
    )
    paths = cg.paths()
    assert paths["cpu"] == paths["cpuacct"] == str(tmp_path / "cpu,cpuacct/system.slice/x.scope")
    assert paths["memory"] == str(tmp_path / "memory/system.slice/x.scope")


def test_v1_unified_resources_refused(tmp_path: Path) -> None:
    mountinfo = PURE_V1.replace("/sys/fs/cgroup", str(tmp_path))
    cg = Cgroup.for_container("/x", "c1", root=str(tmp_path), mountinfo=mountinfo)
    with pytest.raises(CgroupError, match="unified"):
        cg.apply({"unified": {"memory.high": "1000"}})
    cg.apply({"unified": {}})  # empty is fine (and nothing else asked for)


def test_from_paths_round_trip(tmp_path: Path) -> None:
    cg, leaf = v2_cgroup(tmp_path, "/a/b")
    again = Cgroup.from_paths(cg.paths())
    assert again.paths() == cg.paths() == {"": str(leaf)}
    assert again.mode == "v2"
    v1 = Cgroup.from_paths({"memory": "/sys/fs/cgroup/memory/x", "name=systemd": "/s/x"})
    assert v1.mode == "v1"
    with pytest.raises(CgroupError):
        Cgroup.from_paths({"": "relative/path"})


# ----------------------------------------------------------------- create / join


def test_create_enables_controllers_in_ancestors(
    tmp_path: Path, writes: list[tuple[str, str]]
) -> None:
    cg, leaf = v2_cgroup(tmp_path, "/a/b/c")
    cg.create()
    assert leaf.is_dir()
    want = " ".join("+" + c for c in ROOT_CONTROLLERS.split())
    for d in (tmp_path, tmp_path / "a", tmp_path / "a/b"):
        assert read(d, "cgroup.subtree_control") == want
    assert read(leaf, "cgroup.subtree_control") == ""  # not the leaf
    assert [w for w in writes if w[0] == "cgroup.subtree_control"] == [
        ("cgroup.subtree_control", want)
    ] * 3


def test_create_skips_already_enabled(tmp_path: Path, writes: list[tuple[str, str]]) -> None:
    cg, _ = v2_cgroup(tmp_path, "/a/b")
    (tmp_path / "cgroup.subtree_control").write_text("cpuset cpu io memory hugetlb pids\n")
    (tmp_path / "a/cgroup.subtree_control").write_text("cpu memory\n")
    cg.create()
    assert writes == [("cgroup.subtree_control", "+cpuset +io +hugetlb +pids")]


def test_join_writes_pid(tmp_path: Path) -> None:
    cg, leaf = v2_cgroup(tmp_path, "/a")
    cg.join(0)
    assert read(leaf, "cgroup.procs") == "0"
    cg.join(1234)
    assert read(leaf, "cgroup.procs") == "1234"


def test_pids_recursive(tmp_path: Path) -> None:
    cg, leaf = v2_cgroup(tmp_path, "/a")
    (leaf / "cgroup.procs").write_text("10\n11\n")
    sub = make_v2_tree(tmp_path, "/a/sub")
    (sub / "cgroup.procs").write_text("12\n")
    assert cg.pids() == [10, 11, 12]


# ----------------------------------------------------------------- memory


def test_memory_limit_reservation_swap(tmp_path: Path) -> None:
    cg, leaf = v2_cgroup(tmp_path, "/a")
    cg.apply({"memory": {"limit": 100 << 20, "reservation": 50 << 20, "swap": 300 << 20}})
    assert read(leaf, "memory.max") == str(100 << 20)
    assert read(leaf, "memory.low") == str(50 << 20)
    assert read(leaf, "memory.swap.max") == str(200 << 20)  # swap - limit


def test_memory_unlimited(tmp_path: Path) -> None:
    cg, leaf = v2_cgroup(tmp_path, "/a")
    (leaf / "memory.max").write_text("1000")
    (leaf / "memory.swap.max").write_text("0")
    cg.apply({"memory": {"limit": -1}})
    assert read(leaf, "memory.max") == "max"
    assert read(leaf, "memory.swap.max") == "max"  # unlimited memory, swap not given


def test_memory_swap_unlimited_and_equal(tmp_path: Path) -> None:
    cg, leaf = v2_cgroup(tmp_path, "/a")
    cg.apply({"memory": {"limit": 1 << 20, "swap": -1}})
    assert read(leaf, "memory.swap.max") == "max"
    cg.apply({"memory": {"limit": 1 << 20, "swap": 1 << 20}})
    assert read(leaf, "memory.swap.max") == "0"  # no swap at all


def test_memory_swap_below_limit_refused(tmp_path: Path) -> None:
    cg, _ = v2_cgroup(tmp_path, "/a")
    with pytest.raises(CgroupError, match=r"memory\.swap"):
        cg.apply({"memory": {"limit": 200, "swap": 100}})
    with pytest.raises(CgroupError, match=r"needs a memory\.limit"):
        cg.apply({"memory": {"swap": 100}})


def test_memory_without_swap_accounting(tmp_path: Path) -> None:
    cg, leaf = v2_cgroup(tmp_path, "/a", memory__swap__max=None)
    cg.apply({"memory": {"limit": -1}})  # "max" on a missing file: nothing to do
    assert read(leaf, "memory.max") == "max"
    with pytest.raises(CgroupError, match=r"cannot write 100 to .*memory\.swap\.max"):
        cg.apply({"memory": {"limit": 100, "swap": 200}})


def test_memory_v1_only_knobs_ignored(tmp_path: Path, writes: list[tuple[str, str]]) -> None:
    cg, _ = v2_cgroup(tmp_path, "/a")
    cg.apply({"memory": {"kernel": 1 << 20, "swappiness": 10, "disableOOMKiller": True}})
    assert writes == []


def test_memory_usage_and_oom(tmp_path: Path) -> None:
    cg, leaf = v2_cgroup(tmp_path, "/a")
    assert cg.memory_usage() == 4096
    assert cg.oom_killed() is False
    (leaf / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert cg.oom_killed() is True


# ----------------------------------------------------------------- cpu, cpuset, pids


@pytest.mark.parametrize(
    ("shares", "weight"), [(2, 1), (1024, 39), (512, 20), (262144, 10000), (100, 4)]
)
def test_cpu_weight_from_shares(tmp_path: Path, shares: int, weight: int) -> None:
    cg, leaf = v2_cgroup(tmp_path, "/a")
    cg.apply({"cpu": {"shares": shares}})
    assert read(leaf, "cpu.weight") == str(weight)


@pytest.mark.parametrize(
    ("cpu", "expected"),
    [
        ({"quota": 50000, "period": 100000}, "50000 100000"),
        ({"quota": 20000}, "20000"),
        ({"quota": -1, "period": 100000}, "max 100000"),
        ({"period": 50000}, "max 50000"),
        ({"quota": -1}, "max"),
    ],
)
def test_cpu_max(tmp_path: Path, cpu: dict[str, int], expected: str) -> None:
    cg, leaf = v2_cgroup(tmp_path, "/a")
    cg.apply({"cpu": cpu})
    assert read(leaf, "cpu.max") == expected


def test_cpu_nothing_set_writes_nothing(tmp_path: Path, writes: list[tuple[str, str]]) -> None:
    cg, _ = v2_cgroup(tmp_path, "/a")
    cg.apply({"cpu": {"shares": 0, "quota": 0, "period": 0, "realtimeRuntime": 950000}})
    assert writes == []


def test_cpuset(tmp_path: Path) -> None:
    cg, leaf = v2_cgroup(tmp_path, "/a")
    cg.apply({"cpu": {"cpus": "0-1", "mems": "0"}})
    assert read(leaf, "cpuset.cpus") == "0-1"
    assert read(leaf, "cpuset.mems") == "0"


@pytest.mark.parametrize(("limit", "expected"), [(3, "3"), (0, "max"), (-1, "max")])
def test_pids_max(tmp_path: Path, limit: int, expected: str) -> None:
    cg, leaf = v2_cgroup(tmp_path, "/a")
    (leaf / "pids.max").write_text("77")
    cg.apply({"pids": {"limit": limit}})
    assert read(leaf, "pids.max") == expected


# ----------------------------------------------------------------- io


def test_io_weight_converted(tmp_path: Path) -> None:
    cg, leaf = v2_cgroup(tmp_path, "/a")
    cg.apply({"blockIO": {"weight": 500}})
    assert read(leaf, "io.weight") == str(1 + (490 * 9999) // 990)


def test_io_weight_prefers_bfq(tmp_path: Path) -> None:
    cg, leaf = v2_cgroup(tmp_path, "/a", io__bfq__weight="default 100")
    cg.apply({"blockIO": {"weight": 500}})
    assert read(leaf, "io.bfq.weight") == "500"
    assert read(leaf, "io.weight") == "default 100"


def test_io_weight_skipped_without_a_file(tmp_path: Path, writes: list[tuple[str, str]]) -> None:
    cg, _ = v2_cgroup(tmp_path, "/a", io__weight=None)
    cg.apply({"blockIO": {"weight": 500}})
    assert writes == []


def test_io_max_per_device(tmp_path: Path, writes: list[tuple[str, str]]) -> None:
    cg, leaf = v2_cgroup(tmp_path, "/a")
    cg.apply(
        {
            "blockIO": {
                "throttleReadBpsDevice": [
                    {"major": 8, "minor": 0, "rate": 1048576},
                    {"major": 253, "minor": 1, "rate": 4096},
                ],
                "throttleWriteBpsDevice": [{"major": 8, "minor": 0, "rate": 2097152}],
                "throttleReadIOPSDevice": [{"major": 8, "minor": 0, "rate": 100}],
                "throttleWriteIOPSDevice": [{"major": 8, "minor": 0, "rate": 0}],
            }
        }
    )
    assert writes == [
        ("io.max", "8:0 rbps=1048576 wbps=2097152 riops=100 wiops=max"),
        ("io.max", "253:1 rbps=4096"),
    ]
    assert read(leaf, "io.max") == "253:1 rbps=4096"


def test_io_max_needs_device_numbers(tmp_path: Path) -> None:
    cg, _ = v2_cgroup(tmp_path, "/a")
    with pytest.raises(CgroupError, match="major"):
        cg.apply({"blockIO": {"throttleReadBpsDevice": [{"rate": 1}]}})


# ----------------------------------------------------------------- hugetlb, devices, unified


def test_hugetlb_where_present(tmp_path: Path, writes: list[tuple[str, str]]) -> None:
    cg, leaf = v2_cgroup(tmp_path, "/a")
    cg.apply(
        {
            "hugepageLimits": [
                {"pageSize": "2MB", "limit": 4 << 21},
                {"pageSize": "1GB", "limit": 1 << 30},  # no such file here: skipped
            ]
        }
    )
    assert read(leaf, "hugetlb.2MB.max") == str(4 << 21)
    assert writes == [("hugetlb.2MB.max", str(4 << 21))]


def test_devices_skipped_on_v2(tmp_path: Path, writes: list[tuple[str, str]]) -> None:
    cg, _ = v2_cgroup(tmp_path, "/a")
    cg.apply({"devices": [{"allow": False, "access": "rwm"}]})
    assert writes == []


def test_unified_written_verbatim_and_last(tmp_path: Path, writes: list[tuple[str, str]]) -> None:
    cg, leaf = v2_cgroup(tmp_path, "/a", memory__high="max")
    cg.apply(
        {
            "memory": {"limit": 1000},
            "unified": {"memory.high": "900", "memory.max": "2000"},
        }
    )
    assert read(leaf, "memory.high") == "900"
    assert read(leaf, "memory.max") == "2000"
    assert writes[-2:] == [("memory.high", "900"), ("memory.max", "2000")]


@pytest.mark.parametrize("key", ["../escape", "a/b", "", ".."])
def test_unified_bad_keys(tmp_path: Path, key: str) -> None:
    cg, _ = v2_cgroup(tmp_path, "/a")
    with pytest.raises(CgroupError):
        cg.apply({"unified": {key: "1"}})


def test_unified_missing_file_names_file_and_value(tmp_path: Path) -> None:
    cg, leaf = v2_cgroup(tmp_path, "/a")
    with pytest.raises(CgroupError) as info:
        cg.apply({"unified": {"rdma.max": "mlx4_0 hca_handle=2"}})
    msg = str(info.value)
    assert msg == (
        f"cgroup: cannot write mlx4_0 hca_handle=2 to {leaf / 'rdma.max'}: "
        "no such file or directory"
    )
    assert "\n" not in msg


def test_invalid_values_refused(tmp_path: Path) -> None:
    cg, _ = v2_cgroup(tmp_path, "/a")
    bad: list[dict[str, Any]] = [
        {"memory": {"limit": "lots"}},
        {"cpu": {"shares": True}},
        {"pids": {"limit": 1.5}},
        {"memory": []},
        {"hugepageLimits": [{"pageSize": "../2MB", "limit": 1}]},
    ]
    for resources in bad:
        with pytest.raises(CgroupError):
            cg.apply(resources)


# ----------------------------------------------------------------- freeze, kill, destroy


def test_freeze_and_thaw(tmp_path: Path) -> None:
    cg, leaf = v2_cgroup(tmp_path, "/a")
    assert cg.is_frozen() is False
    (leaf / "cgroup.events").write_text("populated 1\nfrozen 1\n")  # the "kernel" is quick
    cg.freeze()
    assert read(leaf, "cgroup.freeze") == "1"
    assert cg.is_frozen() is True
    (leaf / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    cg.thaw()
    assert read(leaf, "cgroup.freeze") == "0"
    assert cg.is_frozen() is False


def test_freeze_times_out_and_thaws_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cgroups, "_FREEZE_TIMEOUT", 0.05)
    cg, leaf = v2_cgroup(tmp_path, "/a")
    with pytest.raises(CgroupError, match=r"cgroup\.freeze"):
        cg.freeze()
    assert read(leaf, "cgroup.freeze") == "0"


def test_kill_all_sigkill_uses_cgroup_kill(tmp_path: Path) -> None:
    cg, leaf = v2_cgroup(tmp_path, "/a")
    cg.kill_all(9)
    assert read(leaf, "cgroup.kill") == "1"


def test_destroy_removes_the_leaf_and_keeps_shared_parents(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    cg, leaf = v2_cgroup(root, "x/y", own="/own")
    # Fake cgroup dirs hold files the kernel would drop with rmdir; empty them here.
    for d in (leaf, leaf.parent, root / "own"):
        for f in d.iterdir():
            if f.is_file():
                f.unlink()
    cg.destroy()
    assert not leaf.exists()
    # parents are shared by every container (like docker's "docker" cgroup): they stay
    assert (root / "own/x").is_dir()
    cg.destroy()  # already gone: fine
