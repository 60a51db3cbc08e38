"""Bad bundles and misuse: one clear line on stderr, a non-zero exit, nothing left."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest
from tests.helpers import Bundle, RuntimeCLI


def assert_nothing_left(cid: str, bundle: Path) -> None:
    leftovers = subprocess.run(
        ["find", "/sys/fs/cgroup", "-name", cid], capture_output=True, text=True
    ).stdout
    assert leftovers == "", f"cgroups left: {leftovers}"
    with open("/proc/self/mountinfo") as f:
        assert str(bundle) not in f.read(), "a mount of the bundle is left"
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            root = os.readlink(f"/proc/{pid}/root")
        except OSError:
            continue
        assert not root.startswith(str(bundle)), f"process {pid} still runs in the bundle"


def assert_one_clear_line(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def _run(berth: RuntimeCLI, bundle: Bundle, cid: str) -> subprocess.CompletedProcess[str]:
    return berth("run", "--bundle", str(bundle.path), cid)


def test_missing_config(berth: RuntimeCLI, make_bundle) -> None:
    bundle = make_bundle()
    (bundle.path / "config.json").unlink()
    cid = f"bad-{uuid.uuid4().hex[:8]}"
    assert_one_clear_line(_run(berth, bundle, cid), "config.json")
    assert_nothing_left(cid, bundle.path)
    assert berth("state", cid).returncode != 0


def test_malformed_config(berth: RuntimeCLI, make_bundle) -> None:
    bundle = make_bundle()
    (bundle.path / "config.json").write_text('{"ociVersion": "1.0.2", "process": ')
    cid = f"bad-{uuid.uuid4().hex[:8]}"
    assert_one_clear_line(_run(berth, bundle, cid), "malformed", "config.json")
    assert_nothing_left(cid, bundle.path)


def test_unknown_namespace_type(berth: RuntimeCLI, make_bundle) -> None:
    bundle = make_bundle()
    bundle.linux["namespaces"].append({"type": "bogus"})
    bundle.write()
    cid = f"bad-{uuid.uuid4().hex[:8]}"
    assert_one_clear_line(_run(berth, bundle, cid), "'bogus'", "namespace")
    assert_nothing_left(cid, bundle.path)


def test_missing_rootfs(berth: RuntimeCLI, make_bundle) -> None:
    bundle = make_bundle()
    bundle.config["root"]["path"] = "no-such-rootfs"
    bundle.write()
    cid = f"bad-{uuid.uuid4().hex[:8]}"
    assert_one_clear_line(_run(berth, bundle, cid), "no-such-rootfs", "does not exist")
    assert_nothing_left(cid, bundle.path)


def test_missing_executable(berth: RuntimeCLI, make_bundle) -> None:
    bundle = make_bundle(["/no/such/program"])
    cid = f"bad-{uuid.uuid4().hex[:8]}"
    assert_one_clear_line(_run(berth, bundle, cid), "/no/such/program")
    assert_nothing_left(cid, bundle.path)


def test_rlimit_above_the_host_hard_limit_is_named(berth: RuntimeCLI, make_bundle) -> None:
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        pytest.skip("the host has no hard limit on open files")
    bundle = make_bundle()
    bundle.process["rlimits"] = [{"type": "RLIMIT_NOFILE", "soft": 1048576, "hard": 1048576}]
    bundle.write()
    cid = f"bad-{uuid.uuid4().hex[:8]}"
    result = _run(berth, bundle, cid)
    if result.returncode == 0:
        pytest.skip("this host lets root raise the open-files hard limit")
    assert_one_clear_line(result, "RLIMIT_NOFILE", str(hard))
    assert_nothing_left(cid, bundle.path)


def test_default_spec_fits_the_host_limits(berth: RuntimeCLI, make_bundle) -> None:
    # runc's default asks for 1024 open files: it must start on a host capped low.
    assert _run(berth, make_bundle(["true"]), f"ok-{uuid.uuid4().hex[:8]}").returncode == 0


def _create(berth: RuntimeCLI, bundle: Bundle, cid: str) -> subprocess.CompletedProcess[str]:
    berth.remember(cid)
    with tempfile.TemporaryFile(mode="w+") as err:
        result = berth(
            "create", "--bundle", str(bundle.path), cid,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
        err.seek(0)
        result.stderr = err.read()
    return result


def test_duplicate_container_id(berth: RuntimeCLI, make_bundle) -> None:
    bundle = make_bundle(["sleep", "30"])
    cid = f"dup-{uuid.uuid4().hex[:8]}"
    assert _create(berth, bundle, cid).returncode == 0
    pid = berth.state(cid)["pid"]
    second = _create(berth, make_bundle(["sleep", "30"]), cid)
    assert_one_clear_line(second, cid, "already exists")
    # the first container is untouched
    state = berth.state(cid)
    assert state["status"] == "created" and state["pid"] == pid


def test_start_on_a_running_container(berth: RuntimeCLI, make_bundle) -> None:
    bundle = make_bundle(["sleep", "30"])
    cid = f"run-{uuid.uuid4().hex[:8]}"
    assert _create(berth, bundle, cid).returncode == 0
    berth("start", cid, check=True)
    assert_one_clear_line(berth("start", cid), cid, "running")
    assert berth.state(cid)["status"] == "running"


def test_unknown_container(berth: RuntimeCLI) -> None:
    for verb in ("start", "state", "kill", "delete", "pause", "resume"):
        assert_one_clear_line(berth(verb, "no-such-container"), "does not exist")


def test_bad_signal(berth: RuntimeCLI, make_bundle) -> None:
    cid = f"sig-{uuid.uuid4().hex[:8]}"
    assert _create(berth, make_bundle(["sleep", "30"]), cid).returncode == 0
    assert_one_clear_line(berth("kill", cid, "SIGBOGUS"), "SIGBOGUS")


def test_spec_refuses_to_overwrite(berth: RuntimeCLI, tmp_path: Path) -> None:
    assert berth("spec", "--bundle", str(tmp_path)).returncode == 0
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["process"]["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
    assert_one_clear_line(berth("spec", "--bundle", str(tmp_path)), "already exists")
