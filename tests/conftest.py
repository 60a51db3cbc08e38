"""Shared fixtures: real busybox bundles, a private runtime state root, and runtimes.

Every test gets its own state root and bundle, and the ``runtime_root`` fixture
force-deletes whatever containers a test left behind, so a failing test leaks no
process, mount or cgroup.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.compat.berthd import Daemon
from tests.helpers import CREATED_IDS, Bundle, RuntimeCLI

from berth.images import busybox_rootfs
from berth.runtime import spec

IS_ROOT = os.geteuid() == 0

needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root and the real kernel")


def runtimes() -> list[str]:
    """The runtimes the comparison tests run under: berth-runtime, and runc when installed."""
    found = ["berth-runtime"]
    if shutil.which("runc"):
        found.append("runc")
    return found


def _cgroup_dirs() -> set[str]:
    found = set()
    for top, dirs, _ in os.walk("/sys/fs/cgroup"):
        found.update(os.path.join(top, d) for d in dirs)
    return found


def _test_mounts() -> set[str]:
    """Mount points in this namespace under the places tests and Berth work in."""
    with open("/proc/self/mountinfo") as f:
        points = {line.split()[4] for line in f}
    return {p for p in points if p.startswith(("/tmp/", "/run/berth", "/var/lib/berth"))}


def _test_processes() -> set[int]:
    """Processes whose root is inside pytest's temporary folders (container inits)."""
    pids = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/root").startswith(("/tmp/pytest-of-", "/tmp/berth-test-")):
                pids.add(int(pid))
        except OSError:
            continue
    return pids


_OUR_LINK = ("brth", "brn-", "berth")  # veths, user-network bridges, default bridges


def _network_parts() -> set[str]:
    """Berth's links on the host and its nftables tables (``link NAME``, ``nft FAMILY
    NAME``); netns files are mounts, which ``_test_mounts`` covers."""
    found = {f"link {n}" for n in os.listdir("/sys/class/net") if n.startswith(_OUR_LINK)}
    nft = shutil.which("nft")
    if nft:
        listed = subprocess.run([nft, "list", "tables"], capture_output=True, text=True)
        for line in listed.stdout.splitlines():
            family_name = line.removeprefix("table ").strip()
            if family_name.split(" ")[-1].startswith("berth"):
                found.add(f"nft {family_name}")
    return found


@pytest.fixture(scope="session", autouse=True)
def _nothing_leaks() -> Iterator[None]:
    """After the whole suite: no cgroup, mount or process of the tests remains."""
    if not IS_ROOT:
        yield
        return
    cgroups_before = _cgroup_dirs()
    mounts_before = _test_mounts()
    network_before = _network_parts()
    yield
    leaked_cgroups = sorted(
        path
        for path in _cgroup_dirs() - cgroups_before
        if os.path.basename(path) in CREATED_IDS
        or "berth-test-" in path
        or os.path.basename(os.path.dirname(path)) == "berth"  # a daemon's containers
    )
    leaked_mounts = sorted(_test_mounts() - mounts_before)
    processes = _test_processes()
    assert not leaked_cgroups, f"cgroups left behind: {leaked_cgroups[:10]}"
    assert not leaked_mounts, f"mounts left behind in the host namespace: {leaked_mounts[:10]}"
    assert not processes, f"container processes left behind: {sorted(processes)}"
    leaked_network = sorted(_network_parts() - network_before)
    assert not leaked_network, f"network parts left behind: {leaked_network[:10]}"


@pytest.fixture(scope="session")
def busybox_cache() -> str:
    return busybox_rootfs.cached()


@pytest.fixture
def make_bundle(tmp_path: Path, busybox_cache: str) -> Iterator[Callable[..., Bundle]]:
    """make_bundle(args, **process_fields) -> Bundle with runc's default spec, no tty."""
    cleanups: list[Path] = []

    def make(
        args: list[str] | None = None,
        name: str | None = None,
        traversable: bool = False,
        **process: Any,
    ) -> Bundle:
        """``traversable``: put the bundle where any uid can reach it (user namespaces)."""
        base = tmp_path
        if traversable:
            base = Path(tempfile.mkdtemp(prefix="berth-test-", dir="/tmp"))
            base.chmod(0o711)
            cleanups.append(base)
        path = base / (name or f"bundle-{uuid.uuid4().hex[:8]}")
        path.mkdir()
        subprocess.run(["cp", "-a", busybox_cache, str(path / "rootfs")], check=True)
        config = copy.deepcopy(spec.default_spec())
        config["process"]["terminal"] = False
        config["process"]["args"] = args or ["true"]
        config["process"].update(process)
        config["hostname"] = "berth"
        return Bundle(path, config).write()

    yield make
    for path in cleanups:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(params=runtimes())
def runtime(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RuntimeCLI]:
    """Each comparison test runs once per installed runtime."""
    if not IS_ROOT:
        pytest.skip("needs root and the real kernel")
    cli = RuntimeCLI(request.param, tmp_path / f"state-{request.param}")
    yield cli
    cli.cleanup()


@pytest.fixture
def berth(tmp_path: Path) -> Iterator[RuntimeCLI]:
    """berth-runtime alone, for behaviour runc does not share or we do not compare."""
    if not IS_ROOT:
        pytest.skip("needs root and the real kernel")
    cli = RuntimeCLI("berth-runtime", tmp_path / "state-berth")
    yield cli
    cli.cleanup()


# For modules that run once per runtime: ``pytestmark = [each_runtime, ...]``.
RUNTIMES = [""] + [name for name in ("runc",) if shutil.which(name)]
each_runtime = pytest.mark.parametrize(
    "daemon", RUNTIMES, indirect=True, ids=[r or "berth-runtime" for r in RUNTIMES]
)


@pytest.fixture(scope="module")
def daemon(request: pytest.FixtureRequest) -> Iterator[Daemon]:
    """A private berthd (and its monitor) per test module, with a busybox image; its
    default runtime is berth-runtime, or the module's parameter (``each_runtime``)."""
    if not IS_ROOT:
        pytest.skip("needs root and the real kernel")
    d = Daemon(runtime=getattr(request, "param", ""))
    try:
        d.start()
        d.bootstrap_busybox()
        yield d
    finally:
        d.cleanup()
    assert not d.mounts()


@pytest.fixture
def clean_networks(daemon: Daemon) -> Iterator[None]:
    """After the test: the daemon's containers, then its user networks, removed."""
    yield
    for c in daemon.get("/containers/json?all=1").json():
        daemon.delete(f"/containers/{c['Id']}?force=1")
    for n in daemon.get("/networks").json():
        if n["Name"] not in ("bridge", "host", "none"):
            daemon.delete(f"/networks/{n['Id']}")
