"""docker-compose 1.29 (Debian's ``docker-compose``) runs a two-service app through berthd:
a web service (busybox httpd) and a worker that calls it by service name, scaled to 3."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from tests.compat.berthd import Daemon
from tests.helpers import CREATED_IDS

COMPOSE = shutil.which("docker-compose")

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root and the real kernel"),
    pytest.mark.skipif(COMPOSE is None, reason="docker-compose is not installed (scripts/setup)"),
]

APP = """\
version: "3"
services:
  web:
    image: busybox
    command: sh -c 'mkdir -p /www && echo hello-from-web > /www/index.html && exec httpd -f -p 80 -h /www'
  worker:
    image: busybox
    command: sh -c 'for i in $$(seq 20); do printf "GET / HTTP/1.0\\r\\n\\r\\n" | nc -w 3 web 80 | grep hello && break; sleep 0.5; done; exec sleep 300'
    depends_on: [web]
"""  # noqa: E501


def compose(daemon: Daemon, folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "COMPOSE_"))}
    env["DOCKER_HOST"] = daemon.host
    return subprocess.run(
        [str(COMPOSE), "-p", "berthnw", *args],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )


def test_two_services_by_name_scaled(daemon: Daemon, tmp_path: Path) -> None:
    (tmp_path / "docker-compose.yml").write_text(APP)
    try:
        up = compose(daemon, tmp_path, "up", "-d", "--scale", "worker=3")
        for c in daemon.get("/containers/json?all=1").json():
            CREATED_IDS.add(c["Id"])
        assert up.returncode == 0, up.stderr
        workers = [
            c
            for c in daemon.get("/containers/json").json()
            if c["Labels"].get("com.docker.compose.service") == "worker"
        ]
        assert len(workers) == 3
        for worker in workers:  # each worker reached web by its service name
            logs = ""
            for _ in range(40):
                logs = daemon.get(f"/containers/{worker['Id']}/logs?stdout=1").body.decode(
                    errors="replace"
                )
                if "hello-from-web" in logs:
                    break
                subprocess.run(["sleep", "0.25"])
            assert "hello-from-web" in logs
        web = next(
            c
            for c in daemon.get("/containers/json").json()
            if c["Labels"].get("com.docker.compose.service") == "web"
        )
        # the scaled service's name answers with one A record per container
        exec_id = daemon.post(
            f"/containers/{web['Id']}/exec",
            {"Cmd": ["nslookup", "worker"], "AttachStdout": True, "AttachStderr": True},
        ).json()["Id"]
        _, out = daemon.hijack(f"/exec/{exec_id}/start", {"Detach": False})
        assert out.count(b"Address: ") == 3, out
    finally:
        down = compose(daemon, tmp_path, "down")
    assert down.returncode == 0, down.stderr
    names = {n["Name"] for n in daemon.get("/networks").json()}
    assert names == {"bridge", "host", "none"}
