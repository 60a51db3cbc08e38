"""The ``berth`` command (``.venv/bin/berth``, a subprocess) against a private berthd.

Covers version/info, image bootstrap, images, run (output, streams, exit codes, stdin,
--rm, -t), run -d + ps + logs + stop + rm, start -a, inspect, tag/rmi, pull with live
progress from a local registry, exec (or its clean refusal), and the error lines (no
daemon, unknown container, bad flags): one line, exit 125, never a traceback. The pure
helpers (tables, durations, templates, the stream decoders) are checked first, without
a daemon.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.compat.berthd import Daemon
from tests.helpers import CREATED_IDS, VENV_BIN

from berth.cli import format as fmt
from berth.client.streams import FrameDecoder, iter_json

BERTH = str(VENV_BIN / "berth")
BUSYBOX_OCI = (
    Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "busybox-1.38-musl-oci"
)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root and the real kernel")


# ---- helpers without a daemon -----------------------------------------------------------


def test_docker_style_formatting() -> None:
    assert fmt.human_duration(0.4) == "Less than a second"
    assert fmt.human_duration(3) == "3 seconds"
    assert fmt.human_duration(61) == "About a minute"
    assert fmt.human_duration(150) == "2 minutes"
    assert fmt.human_duration(3 * 3600) == "3 hours"
    assert fmt.human_duration(20 * 86400) == "2 weeks"
    assert fmt.human_size(1133059) == "1.13MB" and fmt.human_size(886_000) == "886kB"
    assert fmt.ellipsis("sh -c echo hi; exit 3", 20) == "sh -c echo hi; exit…"
    assert fmt.split_tag("localhost:5000/a/b") == ("localhost:5000/a/b", "latest")
    assert fmt.split_tag("busybox:1.36") == ("busybox", "1.36")
    assert fmt.familiar("docker.io/library/busybox:latest") == "busybox:latest"
    # Go's tabwriter as docker configures it: padding 3, minimum width 10, last column bare.
    assert fmt.table([["CONTAINER ID", "IMAGE", "NAMES"], ["abc", "busybox", "x"]]) == (
        "CONTAINER ID   IMAGE     NAMES\nabc            busybox   x\n"
    )
    data = {"State": {"ExitCode": 3, "Running": False}, "Config": {"Cmd": ["sh", "-c"]}}
    assert fmt.render("{{.State.ExitCode}} {{.State.Running}}", data) == "3 false"
    assert fmt.render('{{json .Config.Cmd}}|{{join .Config.Cmd ","}}', data) == (
        '["sh", "-c"]|sh,-c'
    )
    # as Go templates: a missing key of a map, or a field of a null one, is <no value>
    labelled = {"Labels": None, "Config": {"Labels": {"a": "1"}}}
    assert fmt.render("{{.Labels.a}} {{.Config.Labels.b}} {{.Config.Labels.a}}", labelled) == (
        "<no value> <no value> 1"
    )
    with pytest.raises(ValueError, match="can't evaluate field Nope"):
        fmt.render("{{.Nope}}", data)


def test_stream_decoders_take_any_split() -> None:
    stream = b"\x01\x00\x00\x00\x00\x00\x00\x03out\x02\x00\x00\x00\x00\x00\x00\x04err\n"
    decoder = FrameDecoder()
    frames = [
        frame for byte in range(len(stream)) for frame in decoder.feed(stream[byte : byte + 1])
    ]
    assert frames == [(1, b"out"), (2, b"err\n")] and decoder.pending == 0
    chunks = [b'{"status":"a"}\r\n{"sta', b'tus":"\xc3', b'\xa9"}{"id":"x"}\n', b""]
    assert list(iter_json(iter(chunks).__next__)) == [
        {"status": "a"},
        {"status": "é"},
        {"id": "x"},
    ]


# ---- against a private daemon -------------------------------------------------------------


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    if os.geteuid() != 0:
        pytest.skip("needs root and the real kernel")
    d = Daemon()
    try:
        d.start()
        yield d
    finally:
        d.cleanup()
    assert not d.mounts()


@pytest.fixture(autouse=True)
def _track(request: pytest.FixtureRequest) -> Iterator[None]:
    """Record every container a test made, for the session's leak check."""
    yield
    if "daemon" in request.fixturenames:
        d: Daemon = request.getfixturevalue("daemon")
        if d.process is not None and d.process.poll() is None:
            CREATED_IDS.update(c["Id"] for c in d.get("/containers/json?all=1").json())


def berth(
    daemon: Daemon | None,
    *args: str,
    input: str = "",
    host: str | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "BERTH_"))}
    env["BERTH_HOST"] = host or (daemon.host if daemon else "unix:///nonexistent/berth.sock")
    result = subprocess.run(
        [BERTH, *args], capture_output=True, text=True, input=input, timeout=timeout, env=env
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 125, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("berth"), lines
    return lines[0]


@needs_root
def test_bootstrap_and_images(daemon: Daemon) -> None:
    result = berth(daemon, "image", "bootstrap", "busybox", timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Bootstrapped image: busybox:latest (")
    images = berth(daemon, "images")
    assert images.returncode == 0, images.stderr
    header, *rows = images.stdout.splitlines()
    assert header.startswith("REPOSITORY   TAG       IMAGE ID       CREATED")
    row = next(r.split() for r in rows if r.startswith("busybox "))
    assert row[1] == "latest" and row[-1].endswith("B")
    image_id = daemon.get("/images/busybox/json").json()["Id"]
    assert berth(daemon, "images", "-q").stdout.split() == [image_id[7:19]]
    # No recipe for it: one line that names what can be bootstrapped.
    line = one_error_line(berth(daemon, "image", "bootstrap", "nosuchdistro:1"))
    assert "busybox" in line


@needs_root
def test_version_and_info(daemon: Daemon) -> None:
    assert berth(None, "--version").stdout.startswith("berth version ")
    result = berth(daemon, "version")
    assert result.returncode == 0, result.stderr
    assert "Server: Berth Engine" in result.stdout
    assert "API version:     1.45 (minimum version 1.24)" in result.stdout
    assert berth(daemon, "version", "-f", "{{.Server.APIVersion}}").stdout == "1.45\n"
    info = berth(daemon, "info")
    assert info.returncode == 0, info.stderr
    assert "Storage Driver: overlay" in info.stdout
    assert f"Root Dir: {daemon.root}" in info.stdout
    data = json.loads(berth(daemon, "info", "--format", "json").stdout)
    assert data["DefaultRuntime"] == "berth-runtime"


@needs_root
def test_run_output_streams_and_exit_code(daemon: Daemon) -> None:
    daemon.bootstrap_busybox()
    result = berth(daemon, "run", "--name", "streams", "busybox", "sh", "-c",
                   "echo out; echo err >&2; exit 3")  # fmt: skip
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")
    ps = berth(daemon, "ps", "-a", "--filter", "name=streams")
    assert "Exited (3) " in ps.stdout and '"sh -c echo out; ech…"' in ps.stdout
    assert berth(daemon, "rm", "streams").stdout == "streams\n"
    # --rm removes it; -i passes stdin and its end; flags reach the container.
    result = berth(daemon, "run", "-i", "--rm", "--name", "gone", "-e", "GREETING=hello",
                   "-w", "/tmp", "busybox", "sh", "-c", 'cat; echo "$GREETING from $(pwd)"',
                   input="one\ntwo\n")  # fmt: skip
    assert (result.returncode, result.stdout) == (0, "one\ntwo\nhello from /tmp\n"), result.stderr
    assert berth(daemon, "ps", "-aq", "--filter", "name=gone").stdout == ""
    # -t: a terminal inside (raw stream, \r\n from the pty).
    result = berth(daemon, "run", "-t", "--rm", "busybox", "tty")  # the pty's \r\n, read as \n
    assert (result.returncode, result.stdout) == (0, "/dev/pts/0\n"), result.stderr
    # A command that does not exist: docker's 127, one line.
    result = berth(daemon, "run", "--rm", "busybox", "no-such-command")
    assert result.returncode == 127
    assert result.stderr.count("\n") == 1 and "executable file not found" in result.stderr


@needs_root
def test_detached_ps_logs_stop_rm(daemon: Daemon) -> None:
    daemon.bootstrap_busybox()
    result = berth(daemon, "run", "-d", "--name", "sleeper", "busybox", "sh", "-c",
                   "echo started; echo warn >&2; sleep 30")  # fmt: skip
    assert result.returncode == 0, result.stderr
    container_id = result.stdout.strip()
    assert len(container_id) == 64
    ps = berth(daemon, "ps")
    header, *rows = ps.stdout.splitlines()
    assert header.split() == ["CONTAINER", "ID", "IMAGE", "COMMAND", "CREATED", "STATUS",
                              "PORTS", "NAMES"]  # fmt: skip
    row = next(r for r in rows if r.startswith(container_id[:12]))
    assert row.endswith("   sleeper") and " Up " in row and " ago " in row
    # Columns line up under their headers.
    assert row.index("busybox") == header.index("IMAGE")
    assert row.index('"sh -c') == header.index("COMMAND")
    assert berth(daemon, "ps", "-q").stdout.split() == [container_id[:12]]
    [line] = berth(daemon, "ps", "--format", "json").stdout.splitlines()
    assert json.loads(line)["Names"] == "sleeper" and json.loads(line)["State"] == "running"
    for _ in range(50):
        logs = berth(daemon, "logs", "sleeper")
        if logs.stdout:
            break
        time.sleep(0.05)
    assert (logs.stdout, logs.stderr) == ("started\n", "warn\n")
    stamped = berth(daemon, "logs", "-t", "--tail", "1", "sleeper")
    assert stamped.stderr.endswith("Z warn\n") and stamped.stdout == ""
    started = time.monotonic()
    assert berth(daemon, "stop", "-t", "1", "sleeper").stdout == "sleeper\n"
    assert time.monotonic() - started < 6
    ps = berth(daemon, "ps", "-a")
    assert "Exited (137) " in ps.stdout or "Exited (143) " in ps.stdout, ps.stdout
    assert berth(daemon, "wait", "sleeper").stdout.strip() in ("137", "143")
    assert berth(daemon, "rm", "sleeper").stdout == "sleeper\n"
    assert container_id[:12] not in berth(daemon, "ps", "-a").stdout


@needs_root
def test_create_start_attach_and_logs_follow(daemon: Daemon) -> None:
    daemon.bootstrap_busybox()
    created = berth(daemon, "create", "--name", "later", "busybox", "sh", "-c",
                    "for i in 1 2 3; do echo tick $i; sleep 0.1; done; exit 4")  # fmt: skip
    assert created.returncode == 0, created.stderr
    result = berth(daemon, "start", "-a", "later")
    assert (result.returncode, result.stdout) == (4, "tick 1\ntick 2\ntick 3\n"), result.stderr
    assert berth(daemon, "start", "later").stdout == "later\n"
    follow = berth(daemon, "logs", "-f", "later")  # returns when the container exits
    assert follow.stdout.count("tick 3\n") == 2, follow.stdout
    assert berth(daemon, "rm", "-f", "later").returncode == 0


@needs_root
def test_inspect_json(daemon: Daemon) -> None:
    daemon.bootstrap_busybox()
    assert berth(daemon, "run", "--name", "inspected", "busybox", "true").returncode == 0
    result = berth(daemon, "inspect", "inspected")
    assert result.returncode == 0, result.stderr
    [data] = json.loads(result.stdout)
    assert data["Name"] == "/inspected" and data["State"]["ExitCode"] == 0
    assert result.stdout.startswith('[\n    {\n        "Id": ')  # docker's 4-space indent
    formatted = berth(daemon, "inspect", "-f", "{{.State.Status}} {{json .Config.Cmd}}",
                      "inspected")  # fmt: skip
    assert formatted.stdout == 'exited ["true"]\n'
    [image] = json.loads(berth(daemon, "inspect", "busybox").stdout)
    assert image["Id"].startswith("sha256:")
    assert (
        berth(daemon, "image", "inspect", "-f", "{{.Id}}", "busybox").stdout == image["Id"] + "\n"
    )
    missing = berth(daemon, "inspect", "inspected", "no-such-thing")
    assert missing.returncode == 125 and json.loads(missing.stdout)[0]["Name"] == "/inspected"
    assert missing.stderr == "berth: no such object: no-such-thing\n"
    assert berth(daemon, "rm", "inspected").returncode == 0


@needs_root
def test_tag_and_rmi(daemon: Daemon) -> None:
    daemon.bootstrap_busybox()
    assert berth(daemon, "tag", "busybox", "berth-test/copy:v1").returncode == 0
    rows = [r.split() for r in berth(daemon, "images").stdout.splitlines()[1:]]
    assert ["berth-test/copy", "v1"] in [r[:2] for r in rows]
    removed = berth(daemon, "rmi", "berth-test/copy:v1")
    assert (removed.returncode, removed.stdout) == (0, "Untagged: berth-test/copy:v1\n")
    line = one_error_line(berth(daemon, "rmi", "berth-test/copy:v1"))
    assert line.startswith("berth: no such image")
    assert "busybox" in berth(daemon, "images").stdout


@needs_root
def test_exec_or_its_clean_refusal(daemon: Daemon) -> None:
    daemon.bootstrap_busybox()
    assert berth(daemon, "run", "-d", "--name", "execd", "busybox", "sleep", "30").returncode == 0
    try:
        result = berth(daemon, "exec", "execd", "sh", "-c", "echo in; exit 4")
        if "does not support exec" in result.stderr:
            assert one_error_line(result) == "berth: this berthd does not support exec yet"
        else:
            assert (result.returncode, result.stdout) == (4, "in\n"), result.stderr
            piped = berth(daemon, "exec", "-i", "execd", "cat", input="through\n")
            assert (piped.returncode, piped.stdout) == (0, "through\n"), piped.stderr
        assert one_error_line(berth(daemon, "exec", "nope", "true")) == (
            "berth: no such container: nope"
        )
    finally:
        berth(daemon, "rm", "-f", "execd")


@needs_root
def test_pull_shows_layers(daemon: Daemon, tmp_path: Path) -> None:
    if not (BUSYBOX_OCI.is_dir() and shutil.which("skopeo")):
        pytest.skip("needs skopeo and the busybox OCI fixture")
    registry = subprocess.Popen(
        [BERTH, "registry", "serve", "--listen", "127.0.0.1:0", "--root", str(tmp_path / "reg"),
         "--no-fsync"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert registry.stdout is not None
        address = registry.stdout.readline().split("http://", 1)[1].split()[0]
        subprocess.run(
            ["skopeo", "copy", "--dest-tls-verify=false", f"oci:{BUSYBOX_OCI}",
             f"docker://{address}/lib/busybox:1.38"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        result = berth(daemon, "pull", f"{address}/lib/busybox:1.38")
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0] == "1.38: Pulling from lib/busybox"
        assert any(line.endswith(": Pull complete") for line in lines), lines
        assert lines[-1] == f"{address}/lib/busybox:1.38"
        ran = berth(daemon, "run", "--rm", f"{address}/lib/busybox:1.38", "echo", "pulled")
        assert ran.stdout == "pulled\n", ran.stderr
        assert berth(daemon, "rmi", f"{address}/lib/busybox:1.38").returncode == 0
        line = one_error_line(berth(daemon, "pull", f"{address}/lib/nothing:1"))
        assert "nothing" in line or "not found" in line or "unknown" in line, line
    finally:
        registry.terminate()
        registry.wait(10)


@needs_root
def test_error_lines(daemon: Daemon) -> None:
    line = one_error_line(berth(None, "ps"))
    assert line == (
        "berth: cannot connect to berthd at unix:///nonexistent/berth.sock: is it running?"
        " (start it with berthd)"
    )
    assert one_error_line(berth(None, "run", "busybox", "true")) == line
    for args in (("logs", "nope"), ("stop", "nope"), ("rm", "nope"), ("start", "nope"),
                 ("wait", "nope"), ("kill", "nope")):  # fmt: skip
        assert one_error_line(berth(daemon, *args)) == "berth: no such container: nope", args
    assert one_error_line(berth(daemon, "frobnicate")).startswith("berth: unknown command")
    assert "--bogus" in one_error_line(berth(daemon, "ps", "--bogus"))
    assert "unsupported host" in one_error_line(berth(daemon, "ps", host="ssh://somewhere"))
    result = berth(daemon, "run", "-it", "busybox", "true")  # stdin is not a terminal
    assert "not a TTY" in one_error_line(result)


def test_start_up_stays_light() -> None:
    """``berth --version`` loads no argparse or HTTP; ``berth ps`` no aiohttp, rich, ssl,
    asyncio, typing (it fails to connect here, after importing everything it needs)."""

    def imported(*args: str) -> set[str]:
        code = (
            "import sys; from berth.cli.main import main; main(sys.argv[1:]);"
            " sys.stdout.write(' '.join(sys.modules))"
        )
        env = {**os.environ, "BERTH_HOST": "unix:///nonexistent/berth.sock"}
        result = subprocess.run(
            [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env
        )
        return set(result.stdout.split())

    version = imported("--version")
    assert not version & {"argparse", "http.client", "json", "berth.client"}
    ps = imported("ps")
    assert {"http.client", "berth.client", "berth.cli.commands"} <= ps
    assert not ps & {"aiohttp", "rich", "ssl", "asyncio", "typing", "dataclasses", "threading"}
