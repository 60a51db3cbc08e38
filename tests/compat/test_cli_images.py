"""The ``berth`` image verbs (a subprocess) against a private berthd: push to the CNCF
registry and pull back, login/logout with an htpasswd registry, save | load, import,
history and image prune, in their top-level and ``image`` group forms."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.compat.berthd import Daemon
from tests.helpers import VENV_BIN, tar_of
from tests.registries import (
    REGISTRY_BIN,
    CNCFRegistry,
    htpasswd_file,
    start_registry,
    stop_registry,
)

BERTH = str(VENV_BIN / "berth")

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root and the real kernel"),
    pytest.mark.skipif(
        not os.access(REGISTRY_BIN, os.X_OK), reason="the CNCF registry is not installed"
    ),
]


def berth(
    daemon: Daemon, *args: str, input: str | bytes = "", timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "BERTH_"))}
    env["BERTH_HOST"] = daemon.host
    env["DOCKER_CONFIG"] = os.path.join(daemon.base, "berth-config")
    raw = subprocess.run(
        [BERTH, *args],
        capture_output=True,
        input=input.encode() if isinstance(input, str) else input,
        timeout=timeout,
        env=env,
    )
    result = subprocess.CompletedProcess(
        raw.args, raw.returncode, raw.stdout.decode(errors="replace"), raw.stderr.decode()
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 125, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if not line.startswith("WARNING")]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("berth"), lines
    return lines[0]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    reg: CNCFRegistry = start_registry(tmp_path_factory.mktemp("cncf"))
    yield reg.host
    stop_registry(reg)


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("cncf-auth")
    reg = start_registry(root / "registry", htpasswd_file(root, "bob"))
    yield reg.host
    stop_registry(reg)


def _rootfs_tar() -> bytes:
    return tar_of({"hello.txt": b"hi\n"})


def test_push_then_pull_back(daemon: Daemon, registry: str) -> None:
    name = f"{registry}/cli/busybox:7"
    assert berth(daemon, "tag", "busybox", name).returncode == 0
    pushed = berth(daemon, "push", name)
    assert pushed.returncode == 0, pushed.stderr
    assert f"The push refers to repository [{registry}/cli/busybox]" in pushed.stdout
    assert "7: digest: sha256:" in pushed.stdout
    quiet = berth(daemon, "image", "push", "-q", name)
    assert quiet.stdout.strip() == name
    assert berth(daemon, "rmi", name).returncode == 0
    pulled = berth(daemon, "pull", name)
    assert pulled.returncode == 0, pulled.stderr
    assert berth(daemon, "image", "inspect", name).returncode == 0
    missing = berth(daemon, "push", f"{registry}/cli/nothing:1")
    assert "does not exist locally" in one_error_line(missing)


def test_login_logout(daemon: Daemon, auth_registry: str) -> None:
    config = Path(daemon.base) / "berth-config" / "config.json"
    refused = berth(daemon, "login", "-u", "bob", "--password-stdin", auth_registry, input="x")
    assert "incorrect username or password" in one_error_line(refused)
    name = f"{auth_registry}/cli/busybox:1"
    berth(daemon, "tag", "busybox", name)
    assert "authentication required" in one_error_line(berth(daemon, "push", name))
    ok = berth(daemon, "login", "-u", "bob", "--password-stdin", auth_registry, input="s3cret\n")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "Login Succeeded"
    auths = json.loads(config.read_text())["auths"]
    assert base64.b64decode(auths[auth_registry]["auth"]) == b"bob:s3cret"
    assert berth(daemon, "push", name).returncode == 0
    out = berth(daemon, "logout", auth_registry)
    assert out.stdout.strip() == f"Removing login credentials for {auth_registry}"
    assert auth_registry not in json.loads(config.read_text())["auths"]
    assert berth(daemon, "logout", auth_registry).stdout.startswith("Not logged in")


def test_save_load(daemon: Daemon, tmp_path: Path) -> None:
    archive = tmp_path / "out" / "busybox.tar"
    archive.parent.mkdir()
    assert berth(daemon, "save", "-o", str(archive), "busybox").returncode == 0
    assert os.listdir(archive.parent) == ["busybox.tar"]  # no temporary file left
    with tarfile.open(archive) as tar:
        assert "manifest.json" in tar.getnames()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "BERTH_"))}
    env["BERTH_HOST"] = daemon.host
    piped = subprocess.run(
        f"{BERTH} image save busybox | {BERTH} load",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout.strip() == "Loaded image: busybox:latest"
    loaded = berth(daemon, "load", "-q", "-i", str(archive))
    assert loaded.stdout.strip() == "Loaded image: busybox:latest", loaded.stderr
    raw = archive.read_bytes()
    again = berth(daemon, "image", "load", input=raw)
    assert again.stdout.strip() == "Loaded image: busybox:latest"
    bad = berth(daemon, "load", input=b"not a tar at all")
    assert "invalid image archive" in one_error_line(bad)
    missing = berth(daemon, "save", "-o", str(tmp_path / "x.tar"), "no-such-image")
    one_error_line(missing)
    assert not (tmp_path / "x.tar").exists()


def test_save_refuses_a_terminal(daemon: Daemon) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "BERTH_"))}
    env["BERTH_HOST"] = daemon.host
    result = subprocess.run(
        ["script", "-qec", f"{BERTH} save busybox", "/dev/null"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode != 0
    assert "cowardly refusing to save to a terminal" in result.stdout


def test_import_and_history(daemon: Daemon, tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs.tar"
    rootfs.write_bytes(_rootfs_tar())
    made = berth(
        daemon, "import", "-c", "WORKDIR /srv", "-c", "LABEL a=b", "-m", "note", str(rootfs),
        "cli-imported:1",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    image_id = made.stdout.strip()
    assert image_id.startswith("sha256:")
    info = json.loads(berth(daemon, "image", "inspect", "cli-imported:1").stdout)[0]
    assert info["Config"]["WorkingDir"] == "/srv" and info["Config"]["Labels"] == {"a": "b"}
    from_stdin = berth(daemon, "image", "import", "-", "cli-imported:2", input=_rootfs_tar())
    assert from_stdin.returncode == 0, from_stdin.stderr
    shown = berth(daemon, "history", "cli-imported:1")
    lines = shown.stdout.splitlines()
    assert lines[0].split() == ["IMAGE", "CREATED", "CREATED", "BY", "SIZE", "COMMENT"]
    assert lines[1].startswith(image_id[7:19]) and lines[1].rstrip().endswith("note")
    assert "3B" in lines[1]
    quiet = berth(daemon, "image", "history", "-q", "--no-trunc", "cli-imported:1")
    assert quiet.stdout.split() == [image_id]
    form = berth(daemon, "history", "--format", "{{.ID}} {{.Comment}}", "cli-imported:2")
    assert form.stdout.strip() == f"{from_stdin.stdout.strip()[7:19]} Imported from -"
    bad = berth(daemon, "import", "-c", "COPY a b", str(rootfs))
    assert "COPY is not a valid change command" in one_error_line(bad)


def test_image_prune(daemon: Daemon) -> None:
    dangling = berth(daemon, "import", "-", input=_rootfs_tar()).stdout.strip()
    named = berth(daemon, "import", "-", "cli-prune:1", input=_rootfs_tar()).stdout.strip()
    daemon.create(["true"])  # keeps busybox
    asked = berth(daemon, "image", "prune", input="n\n")
    assert "WARNING! This will remove all dangling images." in asked.stdout
    assert daemon.get(f"/images/{dangling}/json").status == 200
    pruned = berth(daemon, "image", "prune", "-f")
    assert pruned.returncode == 0, pruned.stderr
    assert f"deleted: {dangling}" in pruned.stdout
    assert pruned.stdout.rstrip().splitlines()[-1].startswith("Total reclaimed space: ")
    everything = berth(daemon, "image", "prune", "-a", "-f", "--filter", "label!=keep")
    assert "untagged: cli-prune:1" in everything.stdout
    assert f"deleted: {named}" in everything.stdout
    assert daemon.get("/images/busybox/json").status == 200
