"""The everyday workflow, typed the same way into the real docker CLI and into ``berth``,
both against a private berthd: run --rm, run -d, logs -f, exec (plain and -t on a pty),
ps -a --filter, inspect --format, cp both ways, diff, commit and run the result, stop,
rm -f, images, tag, rmi, save | load, a named volume shared by two containers,
stats --no-stream, top, wait and events.
"""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from tests.compat.berthd import Daemon
from tests.conftest import each_runtime
from tests.helpers import CREATED_IDS, VENV_BIN

DOCKER = shutil.which("docker") or "/usr/local/bin/docker"
CLIS = {"docker": DOCKER, "berth": str(VENV_BIN / "berth")}

pytestmark = [
    each_runtime,  # the same tests under berth-runtime and runc
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root and the real kernel"),
]


class CLI:
    def __init__(self, name: str, daemon: Daemon) -> None:
        if not os.path.exists(CLIS[name]):
            pytest.skip(f"{CLIS[name]} is not installed")
        self.name = name
        self.daemon = daemon
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        self.env["DOCKER_CONFIG"] = os.path.join(daemon.base, f"{name}-config")
        self.argv = [CLIS[name], "-H", daemon.host]

    def __call__(
        self, *args: str, input: str | bytes | None = None, ok: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[bytes]:
        data = input.encode() if isinstance(input, str) else input
        result = subprocess.run(
            [*self.argv, *args], capture_output=True, input=data, timeout=timeout, env=self.env
        )
        for c in self.daemon.get("/containers/json?all=1").json():
            CREATED_IDS.add(c["Id"])
        if ok:
            assert result.returncode == 0, (args, result.stderr.decode(errors="replace"))
        return result

    def out(self, *args: str, **kwargs: object) -> str:
        return self(*args, **kwargs).stdout.decode()  # type: ignore[arg-type]

    def tty(self, *args: str, timeout: float = 30) -> tuple[int, str]:
        """Run on a pty (``-t`` needs a terminal): (exit code, what it printed)."""
        master, slave = pty.openpty()
        process = subprocess.Popen(
            [*self.argv, *args], stdin=slave, stdout=slave, stderr=slave, env=self.env,
            start_new_session=True,
        )  # fmt: skip
        os.close(slave)
        output = b""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                ready, _, _ = select.select([master], [], [], 0.1)
                if ready:
                    try:
                        chunk = os.read(master, 65536)
                    except OSError:
                        chunk = b""
                    if not chunk:
                        break
                    output += chunk
                elif process.poll() is not None:
                    break
            return process.wait(10), output.decode(errors="replace")
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            os.close(master)


@pytest.fixture(params=sorted(CLIS))
def cli(request: pytest.FixtureRequest, daemon: Daemon) -> CLI:
    return CLI(request.param, daemon)


def test_run_logs_exec_ps_inspect(cli: CLI) -> None:
    n = cli.name
    assert cli.out("run", "--rm", "busybox", "echo", "hello") == "hello\n"
    cid = cli.out("run", "-d", "--name", f"{n}-web", "-l", "tier=web", "busybox",
                  "sh", "-c", "echo started; sleep 60").strip()  # fmt: skip
    assert len(cid) == 64
    # logs -f follows until the container ends: stop it from another call meanwhile
    follower = subprocess.Popen(
        [*cli.argv, "logs", "-f", f"{n}-web"], stdout=subprocess.PIPE, env=cli.env
    )
    time.sleep(0.5)
    assert cli.out("exec", f"{n}-web", "sh", "-c", "echo from-exec") == "from-exec\n"
    code, out = cli.tty("exec", "-t", f"{n}-web", "sh", "-c", "tty")
    assert code == 0 and "/dev/pts/" in out, out
    listed = cli.out("ps", "-a", "--filter", "label=tier=web", "--format", "{{.Names}}")
    assert listed.split() == [f"{n}-web"]
    image = cli.out("inspect", "--format", "{{.Config.Image}} {{.State.Running}}", f"{n}-web")
    assert image.strip() == "busybox true"
    top = cli.out("top", f"{n}-web")
    assert "sleep 60" in top
    stats = cli.out("stats", "--no-stream", f"{n}-web")
    assert f"{n}-web" in stats or cid[:12] in stats
    cli("stop", "-t", "1", f"{n}-web")
    assert follower.communicate(timeout=30)[0] == b"started\n"
    assert cli.out("wait", f"{n}-web").strip() in ("137", "143")
    cli("rm", "-f", f"{n}-web")
    assert cli("inspect", f"{n}-web", ok=False).returncode != 0


def test_cp_diff_commit(cli: CLI, tmp_path: Path) -> None:
    n = cli.name
    cli("run", "-d", "--name", f"{n}-box", "busybox", "sleep", "60")
    (tmp_path / "in.txt").write_text("into the container\n")
    cli("cp", str(tmp_path / "in.txt"), f"{n}-box:/tmp/in.txt")
    assert cli.out("exec", f"{n}-box", "cat", "/tmp/in.txt") == "into the container\n"
    cli("exec", f"{n}-box", "sh", "-c", "echo made inside > /made; rm /bin/vi")
    cli("cp", f"{n}-box:/made", str(tmp_path / "out.txt"))
    assert (tmp_path / "out.txt").read_text() == "made inside\n"
    changes = set(cli.out("diff", f"{n}-box").splitlines())
    assert {"A /made", "D /bin/vi", "C /tmp", "A /tmp/in.txt"} <= changes, changes
    image = f"{n}-committed:1"
    cli("commit", "-c", 'CMD ["cat", "/made"]', f"{n}-box", image)
    assert cli.out("run", "--rm", image) == "made inside\n"
    cli("rm", "-f", f"{n}-box")
    cli("rmi", image)


def test_images_tag_save_load(cli: CLI, tmp_path: Path) -> None:
    n = cli.name
    cli("tag", "busybox", f"{n}-copy:v1")
    assert f"{n}-copy" in cli.out("images")
    archive = tmp_path / "saved.tar"
    cli("save", "-o", str(archive), f"{n}-copy:v1")
    cli("rmi", f"{n}-copy:v1")
    assert cli("inspect", "--type", "image", f"{n}-copy:v1", ok=False).returncode != 0
    loaded = cli.out("load", "-i", str(archive))
    assert f"{n}-copy:v1" in loaded
    assert cli.out("run", "--rm", f"{n}-copy:v1", "echo", "loaded") == "loaded\n"
    # and through a pipe, as users type it
    saved = cli("save", f"{n}-copy:v1").stdout
    cli("rmi", f"{n}-copy:v1")
    cli("load", input=saved)
    cli("rmi", f"{n}-copy:v1")


def test_named_volume_shared(cli: CLI) -> None:
    n = cli.name
    cli("volume", "create", f"{n}-data")
    cli("run", "--rm", "-v", f"{n}-data:/data", "busybox", "sh", "-c", "echo kept > /data/f")
    assert cli.out("run", "--rm", "-v", f"{n}-data:/d", "busybox", "cat", "/d/f") == "kept\n"
    assert f"{n}-data" in cli.out("volume", "ls", "-q").split()
    cli("volume", "rm", f"{n}-data")


def test_events(cli: CLI, daemon: Daemon) -> None:
    n = cli.name
    since = str(int(time.time()) - 1)
    cli("run", "--rm", "--name", f"{n}-ev", "busybox", "true")
    until = str(int(time.time()) + 1)
    out = cli.out("events", "--since", since, "--until", until, "--format", "{{json .}}",
                  "--filter", f"container={n}-ev")  # fmt: skip
    actions = [json.loads(line)["Action"] for line in out.splitlines()]
    for action in ("create", "start", "die", "destroy"):
        assert action in actions, actions
    assert actions.index("create") < actions.index("start") < actions.index("destroy")
