"""``docker build`` (the real docker CLI with DOCKER_BUILDKIT=0) and ``berth build``
against a private berthd: multi-step and multi-stage builds, COPY semantics with
.dockerignore, build args, the step cache (what re-runs after which change), and bad
input (a failing RUN, sources outside the context, Dockerfile syntax errors).
"""

from __future__ import annotations

import glob
import http.server
import io
import json
import os
import re
import shutil
import socket
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import pytest
from tests.compat.berthd import Daemon, UnixHTTPConnection
from tests.helpers import CREATED_IDS, VENV_BIN, tar_of

DOCKER = shutil.which("docker") or "/usr/local/bin/docker"
CLIS = {"docker": DOCKER, "berth": str(VENV_BIN / "berth")}

pytestmark = [
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
        self.env["DOCKER_BUILDKIT"] = "0"
        self.argv = [CLIS[name], "-H", daemon.host]

    def __call__(
        self, *args: str, input: bytes | None = None, ok: bool = True, cwd: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*self.argv, *args],
            capture_output=True,
            input=input,
            timeout=120,
            env=self.env,
            cwd=cwd,
        )
        for c in self.daemon.get("/containers/json?all=1").json():
            CREATED_IDS.add(c["Id"])
        out = subprocess.CompletedProcess(
            result.args,
            result.returncode,
            result.stdout.decode(errors="replace"),
            result.stderr.decode(errors="replace"),
        )
        if ok:
            assert result.returncode == 0, (args, out.stdout, out.stderr)
        return out

    def build(self, context: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        return self("build", *args, str(context), ok=ok)

    def run(self, image: str, *cmd: str) -> str:
        return self("run", "--rm", image, *cmd).stdout


@pytest.fixture(params=["docker", "berth"])
def cli(request: pytest.FixtureRequest, daemon: Daemon) -> CLI:
    return CLI(request.param, daemon)


def cached_steps(output: str) -> list[bool]:
    """For each step after the first FROM: did it come from the cache?"""
    chunks = re.split(r"^Step \d+/\d+ : ", output, flags=re.M)[1:]
    return [" ---> Using cache" in chunk for chunk in chunks if not chunk.startswith("FROM")]


def image_config(daemon: Daemon, name: str) -> dict:
    return daemon.get(f"/images/{name}/json").json()


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_multi_step_build_sets_the_config(cli: CLI, daemon: Daemon, tmp_path: Path) -> None:
    tag = f"b-multi-{cli.name}"
    write(
        tmp_path,
        {
            "Dockerfile": "\n".join(
                [
                    "FROM busybox",
                    "ENV GREETING=hello NAME=world",
                    "LABEL org.example.a=1 b=two",
                    "COPY app.txt /srv/",
                    'RUN echo "$GREETING $NAME" > /srv/greeting'
                    " && echo app:x:1234:1234::/srv:/bin/sh >> /etc/passwd",
                    "WORKDIR /srv/work",
                    "USER app",
                    "EXPOSE 8080 53/udp",
                    "VOLUME /data",
                    "STOPSIGNAL SIGUSR1",
                    "HEALTHCHECK --interval=5s --timeout=2s --retries=4 CMD true",
                    'ENTRYPOINT ["/bin/sh", "-c"]',
                    'CMD ["cat /srv/greeting /srv/app.txt; pwd; id -u"]',
                ]
            ),
            "app.txt": "app data\n",
        },
    )
    out = cli.build(tmp_path, "-t", tag).stdout
    assert "Successfully built" in out and f"Successfully tagged {tag}:latest" in out
    assert cli.run(tag).split() == ["hello", "world", "app", "data", "/srv/work", "1234"]
    info = image_config(daemon, tag)
    config = info["Config"]
    assert "GREETING=hello" in config["Env"] and config["Env"][0].startswith("PATH=")
    assert config["Labels"] == {"org.example.a": "1", "b": "two"}
    assert config["WorkingDir"] == "/srv/work"
    assert config["User"] == "app"
    assert set(config["ExposedPorts"]) == {"8080/tcp", "53/udp"}
    assert config["Volumes"] == {"/data": {}}
    assert config["StopSignal"] == "SIGUSR1"
    assert config["Healthcheck"] == {
        "Test": ["CMD-SHELL", "true"],
        "Interval": 5_000_000_000,
        "Timeout": 2_000_000_000,
        "Retries": 4,
    }
    assert config["Entrypoint"] == ["/bin/sh", "-c"]
    # busybox's layer + COPY + RUN + WORKDIR
    assert len(info["RootFS"]["Layers"]) == 4
    history = daemon.get(f"/images/{tag}/history").json()
    assert sum(1 for h in history if h["Size"] == 0) >= 9


def test_copy_semantics_and_dockerignore(cli: CLI, daemon: Daemon, tmp_path: Path) -> None:
    tag = f"b-copy-{cli.name}"
    write(
        tmp_path,
        {
            "Dockerfile": "\n".join(
                [
                    "FROM busybox",
                    "COPY . /ctx/",
                    "COPY dir /flat",
                    "COPY *.md /docs/",
                    "COPY one.txt /renamed.txt",
                    "COPY --chown=nobody:nogroup --chmod=640 one.txt /owned/",
                    "ADD bundle.tar.gz /unpacked/",
                    "WORKDIR /w",
                    "COPY one.txt rel/",
                ]
            ),
            ".dockerignore": "secret*\n*.log\n!keep.log\ndir/skip\n",
            "one.txt": "1\n",
            "a.md": "a\n",
            "b.md": "b\n",
            "secret.key": "no\n",
            "x.log": "no\n",
            "keep.log": "yes\n",
            "dir/sub/deep.txt": "deep\n",
            "dir/skip": "no\n",
        },
    )
    (tmp_path / "one.txt").chmod(0o755)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("inner/file.txt")
        data = b"from the tar\n"
        info.size = len(data)
        info.uid = 7
        tar.addfile(info, io.BytesIO(data))
    (tmp_path / "bundle.tar.gz").write_bytes(buf.getvalue())
    cli.build(tmp_path, "-t", tag)
    listing = cli.run(tag, "sh", "-c", "cd /ctx && find . | sort").split()
    assert "./secret.key" not in listing and "./x.log" not in listing
    assert "./keep.log" in listing and "./dir/sub/deep.txt" in listing
    assert "./dir/skip" not in listing
    assert ".dockerignore" not in " ".join(listing) or "./.dockerignore" in listing
    out = cli.run(
        tag,
        "sh",
        "-c",
        "cat /flat/sub/deep.txt /docs/a.md /docs/b.md /renamed.txt /unpacked/inner/file.txt;"
        " stat -c '%a %U %G' /owned/one.txt /renamed.txt; stat -c %u /unpacked/inner/file.txt;"
        " cat /w/rel/one.txt",
    )
    assert out.split("\n") == [
        "deep",
        "a",
        "b",
        "1",
        "from the tar",
        "640 nobody nogroup",
        "755 root root",
        "7",
        "1",
        "",
    ]


def test_multi_stage_with_target(cli: CLI, daemon: Daemon, tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "Dockerfile": "\n".join(
                [
                    "FROM busybox AS builder",
                    "RUN echo built > /artifact",
                    "FROM busybox AS unused",
                    "RUN exit 9",
                    "FROM busybox AS final",
                    "COPY --from=builder /artifact /artifact",
                    "COPY --from=0 /artifact /again",
                    'CMD ["cat", "/artifact", "/again"]',
                    "FROM final AS tested",
                    "RUN test -f /artifact",
                ]
            )
        },
    )
    out = cli.build(tmp_path, "-t", f"b-stage-{cli.name}", "--target", "final").stdout
    assert "exit 9" not in out and "test -f" not in out
    assert cli.run(f"b-stage-{cli.name}") == "built\nbuilt\n"
    cli.build(tmp_path, "-t", f"b-stage2-{cli.name}")
    assert cli.run(f"b-stage2-{cli.name}", "cat", "/again") == "built\n"


def test_build_args(cli: CLI, daemon: Daemon, tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "Dockerfile": "\n".join(
                [
                    "ARG BASE=busybox",
                    "FROM $BASE",
                    "ARG WHO=nobody",
                    "ARG UNSET",
                    "ENV FROM_ARG=${WHO}-env",
                    'RUN echo "$WHO ${UNSET:-none}" > /who',
                    "LABEL who=$WHO",
                ]
            )
        },
    )
    tag = f"b-args-{cli.name}"
    cli.build(tmp_path, "-t", tag, "--build-arg", "WHO=alice")
    assert cli.run(tag, "cat", "/who") == "alice none\n"
    config = image_config(daemon, tag)["Config"]
    assert "FROM_ARG=alice-env" in config["Env"]
    assert not any(e.startswith("WHO=") for e in config["Env"])  # ARGs stay out of Env
    assert config["Labels"] == {"who": "alice"}
    cli.build(tmp_path, "-t", tag)
    assert cli.run(tag, "cat", "/who") == "nobody none\n"


def test_cache_reruns_only_what_changed(cli: CLI, daemon: Daemon, tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "Dockerfile": "\n".join(
                [
                    "FROM busybox",
                    "ARG FLAVOUR=plain",
                    "RUN echo one > /one",
                    "COPY a.txt /a.txt",
                    "RUN cat /a.txt > /copy",
                    "COPY b.txt /b.txt",
                    "RUN echo $FLAVOUR > /flavour",
                    "RUN echo last > /last",
                ]
            ),
            "a.txt": f"a {cli.name}\n",  # each CLI its own content: the cache is shared
            "b.txt": "b\n",
        },
    )
    tag = f"b-cache-{cli.name}"
    first = cli.build(tmp_path, "-t", tag).stdout
    assert not any(cached_steps(first)) or cli.name == "berth"  # the docker run goes first
    # unchanged: every step from the cache, the same image
    again = cli.build(tmp_path, "-t", tag).stdout
    assert all(cached_steps(again)), again
    assert again.split("Successfully built ")[1][:12] in first or all(cached_steps(again))
    # an mtime alone changes nothing
    future = time.time() + 3600
    os.utime(tmp_path / "a.txt", (future, future))
    assert all(cached_steps(cli.build(tmp_path, "-t", tag).stdout))
    # one copied file: that COPY and everything after it, nothing before
    (tmp_path / "b.txt").write_text(f"b changed {cli.name}\n")
    changed = cached_steps(cli.build(tmp_path, "-t", tag).stdout)
    assert changed == [True, True, True, True, False, False, False], changed
    # a build arg: exactly the steps that use it (RUN steps after its ARG count it)
    out = cli.build(tmp_path, "-t", tag, "--build-arg", "FLAVOUR=spicy").stdout
    steps = cached_steps(out)
    assert steps[0] is False or steps[0] is True  # the ARG step itself
    assert steps[1] is False and steps[4] is False  # RUN after ARG: the arg is in its env
    assert cli.run(tag, "cat", "/flavour") == "spicy\n"
    assert all(cached_steps(cli.build(tmp_path, "-t", tag, "--build-arg", "FLAVOUR=spicy").stdout))
    # --no-cache runs everything again
    assert not any(cached_steps(cli.build(tmp_path, "-t", tag, "--no-cache").stdout))


def test_changed_build_arg_invalidates_only_its_users(
    cli: CLI, daemon: Daemon, tmp_path: Path
) -> None:
    write(
        tmp_path,
        {
            "Dockerfile": "\n".join(
                [
                    "FROM busybox",
                    f"RUN echo before-{cli.name} > /before",
                    "ARG V=1",
                    "LABEL v=$V",
                    "COPY f /f",
                ]
            ),
            "f": f"f {cli.name}\n",
        },
    )
    tag = f"b-argcache-{cli.name}"
    cli.build(tmp_path, "-t", tag, "--build-arg", "V=1")
    steps = cached_steps(cli.build(tmp_path, "-t", tag, "--build-arg", "V=2").stdout)
    # RUN before the ARG, the ARG and the COPY keep their cache; the LABEL does not,
    # and the COPY after it has a new parent.
    assert steps[0] is True and steps[2] is False


def test_failing_run_reports_its_code_and_leaves_nothing(
    cli: CLI, daemon: Daemon, tmp_path: Path
) -> None:
    write(tmp_path, {"Dockerfile": "FROM busybox\nRUN echo to-stderr >&2; echo out; exit 7\n"})
    before = {c["Id"] for c in daemon.get("/containers/json?all=1").json()}
    result = cli.build(tmp_path, "-t", f"b-fail-{cli.name}", ok=False)
    assert result.returncode == 7
    assert (
        "The command '/bin/sh -c echo to-stderr >&2; echo out; exit 7' returned a"
        " non-zero code: 7" in result.stderr
    )
    assert "out" in result.stdout and "to-stderr" in result.stdout + result.stderr
    assert {c["Id"] for c in daemon.get("/containers/json?all=1").json()} == before
    assert daemon.build_leftovers() == []
    assert daemon.get(f"/images/b-fail-{cli.name}/json").status == 404


def test_copy_source_outside_or_missing(cli: CLI, daemon: Daemon, tmp_path: Path) -> None:
    write(tmp_path, {"Dockerfile": "FROM busybox\nCOPY ../outside /x\n"})
    result = cli.build(tmp_path, ok=False)
    assert result.returncode != 0
    assert "outside the build context" in result.stderr
    write(tmp_path, {"Dockerfile": "FROM busybox\nCOPY missing.txt /x\n"})
    result = cli.build(tmp_path, ok=False)
    assert "missing.txt" in result.stderr and "not found" in result.stderr
    write(tmp_path, {"Dockerfile": "FROM busybox\nCOPY *.nothing /x/\n"})
    assert "no source files" in cli.build(tmp_path, ok=False).stderr
    assert daemon.build_leftovers() == []


def test_syntax_errors_name_the_line(cli: CLI, daemon: Daemon, tmp_path: Path) -> None:
    write(tmp_path, {"Dockerfile": "FROM busybox\nRUN true\nFROB x\n"})
    result = cli.build(tmp_path, ok=False)
    assert result.returncode != 0
    assert ":3:" in result.stderr and "FROB" in result.stderr.upper()
    write(tmp_path, {"Dockerfile": "FROM busybox\nHEALTHCHECK --interval=abc CMD true\n"})
    assert ":2:" in cli.build(tmp_path, ok=False).stderr


def test_dockerfile_from_stdin_and_iidfile(daemon: Daemon, tmp_path: Path) -> None:
    cli = CLI("berth", daemon)
    write(tmp_path, {"data.txt": "from the context\n"})
    iid = tmp_path / "iid"
    out = cli(
        "build",
        "-q",
        "--iidfile",
        str(iid),
        "-t",
        "b-stdin",
        "-f",
        "-",
        str(tmp_path),
        input=b'FROM busybox\nCOPY . /c/\nCMD ["cat", "/c/data.txt"]\n',
    ).stdout
    assert out.strip() == iid.read_text() and out.startswith("sha256:")
    assert cli.run("b-stdin") == "from the context\n"
    listing = cli.run("b-stdin", "ls", "-a", "/c").split()
    assert not any(name.startswith(".dockerfile.") for name in listing)


def test_api_stream_shape(daemon: Daemon) -> None:
    context = tar_of({"Dockerfile": b"FROM busybox\nRUN echo hi\n"})
    conn = UnixHTTPConnection(daemon.socket, 60)
    try:
        conn.request(
            "POST",
            "/build?t=b-api&nocache=1",
            body=context,
            headers={"Content-Type": "application/x-tar"},
        )
        answer = conn.getresponse()
        status, body = answer.status, answer.read()
    finally:
        conn.close()
    assert status == 200
    lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
    assert lines[0] == {"stream": "Step 1/2 : FROM busybox\n"}
    assert {"stream": "hi\n"} in lines
    ids = [line["aux"]["ID"] for line in lines if "aux" in line]
    assert len(ids) == 1 and ids[0].startswith("sha256:")
    assert lines[-1] == {"stream": "Successfully tagged b-api:latest\n"}


def _host_address() -> str:
    """The host's own (non-loopback) IPv4 address: the source of its default route."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # no packet is sent for a UDP connect
        return str(s.getsockname()[0])


def test_run_steps_on_the_default_bridge_reach_out_through_nat(
    cli: CLI, daemon: Daemon, tmp_path: Path
) -> None:
    """As dockerd: a RUN step has its own stack on the default bridge (an address, a
    default route, NAT to the host's network); ``--network none`` has no route out;
    the step's veth and namespace are gone afterwards."""
    address = _host_address()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer((address, 0), Quiet)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    bridge = daemon.get("/networks/bridge").json()["Options"]["com.docker.network.bridge.name"]
    veths = set(os.listdir(f"/sys/class/net/{bridge}/brif"))
    try:
        write(tmp_path, {"Dockerfile": (
            "FROM busybox\n"
            "RUN ip -4 addr show eth0 | grep -q 'inet ' && ip route | grep -q '^default via'\n"
            f"RUN printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {address} {port} | grep -q 200\n"
        )})  # fmt: skip
        cli.build(tmp_path, "--no-cache", "-t", f"b-net-{cli.name}")
    finally:
        server.shutdown()
        server.server_close()
    write(tmp_path, {"Dockerfile": "FROM busybox\nRUN ip route | grep -q default\n"})
    result = cli.build(tmp_path, "--no-cache", "--network", "none", ok=False)
    assert result.returncode == 1, result.stderr
    assert set(os.listdir(f"/sys/class/net/{bridge}/brif")) == veths
    assert os.listdir(os.path.join(daemon.exec_root, "netns")) == []


def test_run_steps_on_a_user_network_resolve_its_names(
    cli: CLI, daemon: Daemon, tmp_path: Path
) -> None:
    """docker-py's scenario: ``--network NET`` puts RUN steps on a user network, where
    the embedded DNS answers a container's alias; an unknown network is a clear 404."""
    net = f"b-net-{cli.name}"
    assert daemon.post("/networks/create", {"Name": net}).status == 201
    web = ""
    try:
        created = daemon.post(
            "/containers/create",
            {
                "Image": "busybox",
                "Cmd": ["sh", "-c", "mkdir /w && echo up > /w/index.html && httpd -f -h /w"],
                "HostConfig": {"NetworkMode": net},
                "NetworkingConfig": {"EndpointsConfig": {net: {"Aliases": ["target.web"]}}},
            },
        )
        web = created.json()["Id"]
        CREATED_IDS.add(web)
        assert daemon.post(f"/containers/{web}/start").status == 204
        write(tmp_path, {"Dockerfile": (
            "FROM busybox\n"
            "RUN wget -q -O /got http://target.web/ && grep -q up /got\n"
        )})  # fmt: skip
        cli.build(tmp_path, "--no-cache", "--network", net)
        result = cli.build(tmp_path, "--no-cache", "--network", "no-such-net", ok=False)
        assert result.returncode != 0 and "no-such-net" in result.stderr
    finally:
        if web:
            daemon.delete(f"/containers/{web}?force=1")
        daemon.delete(f"/networks/{net}")


def test_run_heredocs(cli: CLI, daemon: Daemon, tmp_path: Path) -> None:
    """BuildKit's heredoc rules: a lone ``RUN <<EOF`` is the shell's script (or, with a
    ``#!`` line, an executable file), and a command line with documents hands them to
    the shell, ``<<-`` tab stripping and quoted delimiters included."""
    write(tmp_path, {"Dockerfile": (
        "FROM busybox\n"
        "ENV WHO=world\n"
        "RUN <<EOF\n"
        "echo one > /one\n"
        "echo two >> /one\n"
        "EOF\n"
        "RUN <<EOF\n"
        "#!/bin/sh -e\n"
        "echo \"script $0\" > /script\n"
        "EOF\n"
        "RUN cat <<A > /a && cat <<-'B' > /b\n"
        "hello $WHO\n"
        "A\n"
        "\tkept $WHO\n"
        "\tB\n"
        "COPY <<G <<'R' /docs/\n"
        "hi ${WHO}\n"
        "G\n"
        "raw ${WHO}\n"
        "R\n"
    )})  # fmt: skip
    cli.build(tmp_path, "-t", f"b-heredoc-{cli.name}")
    out = cli.run(f"b-heredoc-{cli.name}", "cat", "/one", "/script", "/a", "/b", "/docs/G",
                  "/docs/R")  # fmt: skip
    assert out == (
        "one\ntwo\nscript /dev/pipes/EOF\nhello world\nkept $WHO\nhi world\nraw ${WHO}\n"
    )
    assert all(cached_steps(cli.build(tmp_path, "-t", f"b-heredoc-{cli.name}").stdout))


def test_a_client_gone_during_a_silent_run_step_stops_it(daemon: Daemon) -> None:
    """The daemon notices the hang-up without waiting for the step to print: the RUN
    container is killed and nothing of the build remains."""
    conn, _, step = daemon.build_running(b"sleep 600")
    conn.close()
    pattern = f"/sys/fs/cgroup/*/berth/build-{step}"
    deadline = time.monotonic() + 10
    while (glob.glob(pattern) or daemon.build_leftovers()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not glob.glob(pattern), "the RUN step still runs"
    assert daemon.build_leftovers() == []


def test_same_inputs_give_the_same_image_on_another_daemon(daemon: Daemon, tmp_path: Path) -> None:
    """Reproducible layers (a property Docker's legacy builder lacks): with
    SOURCE_DATE_EPOCH, two daemons that share nothing build the same context (checked out
    at other times: mtimes past the epoch are clamped to it) into the same layer digests
    and the same image ID."""
    dockerfile = (
        "FROM busybox\nCOPY app/ /app/\nRUN echo built > /built && mkdir -p /var/x\n"
        'ENV A=1\nCMD ["cat", "/built"]\n'
    )
    contexts = []
    for n in (1, 2):
        root = write(tmp_path / f"ctx{n}", {"Dockerfile": dockerfile, "app/a.txt": "a\n"})
        stamp = time.time() - 100 * n  # two checkouts: after the epoch, at other times
        os.utime(root / "app" / "a.txt", (stamp, stamp))
        contexts.append(root)
    other = Daemon()
    try:
        other.start()
        other.bootstrap_busybox()
        results = []
        for d, context in ((daemon, contexts[0]), (other, contexts[1])):
            out = CLI("berth", d).build(
                context, "-q", "--no-cache", "--build-arg", "SOURCE_DATE_EPOCH=1700000000"
            )
            image = d.get(f"/images/{out.stdout.strip()}/json").json()
            results.append((image["Id"], image["RootFS"]["Layers"], image["Created"]))
        assert results[0] == results[1]
        assert results[0][2].startswith("2023-11-14T22:13:20")
        assert "not consumed" not in out.stdout + out.stderr
    finally:
        other.cleanup()
