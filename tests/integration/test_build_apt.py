"""A build's RUN step installs a Debian package from the mirror this machine's apt
uses, through the default bridge's NAT and the host's resolvers, as with dockerd
(issue 6's "a build's RUN apt-get install reaches the configured Debian mirror")."""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
from tests.compat.berthd import Daemon
from tests.helpers import CREATED_IDS

from berth.images import bootstrap

DOCKER = shutil.which("docker") or "/usr/local/bin/docker"

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root and the real kernel"),
    pytest.mark.skipif(shutil.which("debootstrap") is None, reason="debootstrap is absent"),
    pytest.mark.skipif(not os.path.exists(DOCKER), reason="the docker CLI is not installed"),
]


def _mirror_problem() -> str:
    mirror = bootstrap._host_mirror()
    try:
        with urllib.request.urlopen(f"{mirror}/dists/bookworm/Release", timeout=10) as r:
            r.read(64)
    except OSError as exc:
        return f"the debian mirror {mirror} is unreachable: {exc}"
    return ""


def test_run_apt_get_install_through_nat(daemon: Daemon, tmp_path: Path) -> None:
    problem = _mirror_problem()
    if problem:
        pytest.skip(problem)
    made = daemon.post("/berth/images/bootstrap?name=debian:bookworm", timeout=600)
    assert made.status == 201, made
    (tmp_path / "Dockerfile").write_text(
        "FROM debian:bookworm\n"
        "RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends jq"
        " >/dev/null\n"
        'CMD ["jq", "--version"]\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env.update(DOCKER_BUILDKIT="0", DOCKER_CONFIG=str(tmp_path / "config"))
    argv = [DOCKER, "-H", daemon.host]
    built = subprocess.run(
        [*argv, "build", "-q", "-t", "apt-jq", str(tmp_path)],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    ran = subprocess.run(
        [*argv, "run", "--rm", "apt-jq"], capture_output=True, text=True, timeout=60, env=env
    )
    for c in daemon.get("/containers/json?all=1").json():
        CREATED_IDS.add(c["Id"])
    assert ran.returncode == 0 and ran.stdout.startswith("jq-"), ran
    assert daemon.delete("/images/apt-jq").status == 200
