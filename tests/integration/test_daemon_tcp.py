"""berthd's listeners: TCP with TLS and client certificates (certificates made here
with the openssl command), plain TCP refused, the unix socket's mode, the berth
CLI's TLS client, ``berth`` starting a daemon when none answers, and
``berth system service``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.compat.berthd import BERTHD, Daemon
from tests.helpers import VENV_BIN

DOCKER = shutil.which("docker") or "/usr/local/bin/docker"
BERTH = str(VENV_BIN / "berth")

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root and the real kernel"),
    pytest.mark.skipif(not shutil.which("openssl"), reason="needs the openssl command"),
]


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _signed(cwd: Path, name: str, ca: str, subject: str, extensions: str) -> None:
    """``name``-key.pem and ``name``-cert.pem signed by ``ca``."""
    (cwd / f"{name}.ext").write_text(extensions)
    _openssl("genrsa", "-out", f"{name}-key.pem", "2048", cwd=cwd)
    _openssl(
        "req", "-new", "-key", f"{name}-key.pem", "-subj", subject, "-out", f"{name}.csr", cwd=cwd
    )
    _openssl(
        "x509",
        "-req",
        "-days",
        "2",
        "-in",
        f"{name}.csr",
        "-CA",
        f"{ca}.pem",
        "-CAkey",
        f"{ca}-key.pem",
        "-CAcreateserial",
        "-extfile",
        f"{name}.ext",
        "-out",
        f"{name}-cert.pem",
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1, a client certificate, and a client
    certificate from another CA (which the daemon must refuse)."""
    d = tmp_path_factory.mktemp("tls")
    for ca in ("ca", "rogue"):
        _openssl("genrsa", "-out", f"{ca}-key.pem", "2048", cwd=d)
        _openssl(
            "req",
            "-new",
            "-x509",
            "-days",
            "2",
            "-key",
            f"{ca}-key.pem",
            "-subj",
            f"/CN=berth test {ca}",
            "-out",
            f"{ca}.pem",
            cwd=d,
        )
    _signed(
        d,
        "server",
        "ca",
        "/CN=127.0.0.1",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    _signed(d, "client", "ca", "/CN=client", "extendedKeyUsage=clientAuth\n")
    _signed(d, "stranger", "rogue", "/CN=stranger", "extendedKeyUsage=clientAuth\n")
    # docker's DOCKER_CERT_PATH layouts: the good client, and one trusting another CA
    for folder, ca, name in (("client", "ca", "client"), ("wrong-ca", "rogue", "client")):
        (d / folder).mkdir()
        shutil.copy(d / f"{ca}.pem", d / folder / "ca.pem")
        shutil.copy(d / f"{name}-cert.pem", d / folder / "cert.pem")
        shutil.copy(d / f"{name}-key.pem", d / folder / "key.pem")
    return d


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ListeningDaemon(Daemon):
    """A private berthd with extra berthd options (more -H, TLS)."""

    def __init__(self, *extra: str) -> None:
        super().__init__()
        self.extra = list(extra)

    def start(self, env: dict[str, str] | None = None) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    BERTHD,
                    "-H",
                    self.host,
                    *self.extra,
                    "--root",
                    self.root,
                    "--exec-root",
                    self.exec_root,
                ],
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"berthd exited: {self.log()}")
            try:
                if self.get("/_ping").status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"berthd did not answer: {self.log()}")


@pytest.fixture(scope="module")
def tls_daemon(certs: Path) -> Iterator[ListeningDaemon]:
    port = _free_port()
    d = ListeningDaemon(
        "-H",
        f"tcp://127.0.0.1:{port}",
        "--tlsverify",
        "--tlscacert",
        str(certs / "ca.pem"),
        "--tlscert",
        str(certs / "server-cert.pem"),
        "--tlskey",
        str(certs / "server-key.pem"),
    )
    d.port = port  # type: ignore[attr-defined]
    try:
        d.start()
        d.bootstrap_busybox()
        yield d
    finally:
        d.cleanup()


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "BERTH_"))}
    env.update(extra)
    return env


def _docker(
    *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DOCKER, *args], capture_output=True, text=True, env=env, timeout=timeout)


@pytest.mark.skipif(not os.path.exists(DOCKER), reason="the docker CLI is not installed")
def test_docker_cli_over_tls_with_client_certificates(
    tls_daemon: ListeningDaemon, certs: Path, tmp_path: Path
) -> None:
    tcp = f"tcp://127.0.0.1:{tls_daemon.port}"  # type: ignore[attr-defined]
    env = _clean_env(DOCKER_CONFIG=str(tmp_path / "cfg"))
    flags = [
        "--tlsverify",
        "--tlscacert",
        str(certs / "ca.pem"),
        "--tlscert",
        str(certs / "client-cert.pem"),
        "--tlskey",
        str(certs / "client-key.pem"),
        "-H",
        tcp,
    ]
    version = _docker(*flags, "version", "--format", "{{.Server.APIVersion}}", env=env)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == "1.45"
    run = _docker(*flags, "run", "--rm", "busybox", "echo", "over tls", env=env)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "over tls\n"
    # the environment docker users set instead of flags
    by_env = _docker(
        "ps",
        "-a",
        env={
            **env,
            "DOCKER_HOST": tcp,
            "DOCKER_TLS_VERIFY": "1",
            "DOCKER_CERT_PATH": str(certs / "client"),
        },
    )
    assert by_env.returncode == 0, by_env.stderr
    assert by_env.stdout.startswith("CONTAINER ID")


@pytest.mark.skipif(not os.path.exists(DOCKER), reason="the docker CLI is not installed")
def test_tls_refuses_clients_without_a_trusted_certificate(
    tls_daemon: ListeningDaemon, certs: Path, tmp_path: Path
) -> None:
    port = tls_daemon.port  # type: ignore[attr-defined]
    env = _clean_env(DOCKER_CONFIG=str(tmp_path / "cfg"))
    no_cert = _docker(
        "--tlsverify",
        "--tlscacert",
        str(certs / "ca.pem"),
        "-H",
        f"tcp://127.0.0.1:{port}",
        "ps",
        env=env,
    )
    assert no_cert.returncode != 0
    stranger = _docker(
        "--tlsverify",
        "--tlscacert",
        str(certs / "ca.pem"),
        "--tlscert",
        str(certs / "stranger-cert.pem"),
        "--tlskey",
        str(certs / "stranger-key.pem"),
        "-H",
        f"tcp://127.0.0.1:{port}",
        "ps",
        env=env,
    )
    assert stranger.returncode != 0
    # plain HTTP on the TLS port gets no API
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            answer = sock.recv(100)
        except (ConnectionResetError, TimeoutError):
            answer = b""
        assert b"OK" not in answer
    # TLS without a client certificate: the handshake (or first read) fails
    context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    refused = (ssl.SSLError, ConnectionResetError, BrokenPipeError)
    with (
        pytest.raises(refused),
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n")
        if not tls.recv(100):
            raise ConnectionResetError("closed")


def test_berth_cli_over_tls(tls_daemon: ListeningDaemon, certs: Path) -> None:
    tcp = f"tcp://127.0.0.1:{tls_daemon.port}"  # type: ignore[attr-defined]
    env = _clean_env(DOCKER_HOST=tcp, DOCKER_TLS_VERIFY="1", DOCKER_CERT_PATH=str(certs / "client"))
    ps = subprocess.run([BERTH, "ps", "-a"], capture_output=True, text=True, env=env, timeout=30)
    assert ps.returncode == 0, ps.stderr
    assert ps.stdout.startswith("CONTAINER ID")
    wrong = subprocess.run(
        [BERTH, "ps"],
        capture_output=True,
        text=True,
        env={**env, "DOCKER_CERT_PATH": str(certs / "wrong-ca")},
        timeout=30,
    )
    assert wrong.returncode == 125
    assert wrong.stderr.startswith(f"berth: the certificate of berthd at {tcp} is not trusted")
    assert len(wrong.stderr.splitlines()) == 1


def _berthd_fails(*args: str, tmp_path: Path) -> str:
    result = subprocess.run(
        [BERTHD, *args, "--root", str(tmp_path / "root"), "--exec-root", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1, result
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert not (tmp_path / "root").exists()  # refused before anything was made
    return result.stderr


def test_plain_tcp_is_refused(tmp_path: Path, certs: Path) -> None:
    port = _free_port()
    message = _berthd_fails("-H", f"tcp://127.0.0.1:{port}", tmp_path=tmp_path)
    assert message.startswith(f"berthd: refusing to serve tcp://127.0.0.1:{port} without TLS")
    message = _berthd_fails("-H", f"tcp://0.0.0.0:{port}", "--insecure-tcp", tmp_path=tmp_path)
    assert "refusing to serve" in message and "loopback address only" in message
    message = _berthd_fails(
        "-H", f"tcp://127.0.0.1:{port}", "--tlsverify", "--tlscert", "x", tmp_path=tmp_path
    )
    assert message == "berthd: --tlsverify needs --tlscacert\n"
    message = _berthd_fails("-H", "ftp://example", tmp_path=tmp_path)
    assert message.startswith("berthd: unsupported --host 'ftp://example'")


@pytest.mark.skipif(not os.path.exists(DOCKER), reason="the docker CLI is not installed")
def test_insecure_tcp_on_loopback_warns_and_serves(tmp_path: Path) -> None:
    port = _free_port()
    d = ListeningDaemon("-H", f"tcp://127.0.0.1:{port}", "--insecure-tcp")
    try:
        d.start()
        env = _clean_env(DOCKER_CONFIG=str(tmp_path / "cfg"))
        result = _docker(
            "-H", f"tcp://127.0.0.1:{port}", "version", "--format", "{{.Server.Os}}", env=env
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "linux"
        assert "WARNING: tcp://127.0.0.1" in d.log()
        # the unix socket: mode 0660, group berth when there is one
        st = os.stat(d.socket)
        assert st.st_mode & 0o777 == 0o660
        try:
            import grp

            assert st.st_gid == grp.getgrnam("berth").gr_gid
        except KeyError:
            assert st.st_gid == 0
    finally:
        d.cleanup()


def _stop_by_pidfiles(exec_root: Path) -> None:
    """Stop a berthd (and then its monitor) started outside this test's processes."""
    for name in ("berthd.pid", "monitor.pid"):
        try:
            pid = int((exec_root / name).read_text())
        except (OSError, ValueError):
            continue
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with open(f"/proc/{pid}/stat", "rb") as f:
                    if f.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X"):
                        break
            except OSError:
                break
            time.sleep(0.02)


def test_berth_starts_a_daemon_when_none_answers(tmp_path: Path) -> None:
    base = tmp_path / "auto"
    base.mkdir()
    base.chmod(0o711)
    host = f"unix://{base}/berth.sock"
    env = _clean_env(
        BERTH_DEFAULT_HOST=host,
        BERTH_ROOT=str(base / "root"),
        BERTH_EXEC_ROOT=str(base / "run"),
    )
    try:
        started = time.monotonic()
        first = subprocess.run([BERTH, "ps"], capture_output=True, text=True, env=env, timeout=30)
        elapsed = time.monotonic() - started
        assert first.returncode == 0, first.stderr
        assert first.stdout.startswith("CONTAINER ID")
        log = base / "run" / "berthd.log"
        (line,) = first.stderr.splitlines()
        assert line.startswith(f"berth: no daemon answered at {host}: started berthd (pid ")
        assert line.endswith(f", log {log})")
        assert elapsed < 5
        assert "API listening on" in log.read_text()
        second = subprocess.run([BERTH, "ps"], capture_output=True, text=True, env=env, timeout=30)
        assert second.returncode == 0 and second.stderr == ""
        # an explicit host is never started, only reported
        other = subprocess.run(
            [BERTH, "-H", f"unix://{base}/other.sock", "ps"],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
        )
        assert other.returncode == 125 and "cannot connect" in other.stderr
        assert not (base / "other.sock").exists()
    finally:
        _stop_by_pidfiles(base / "run")
    assert not (base / "berth.sock").exists()


def test_berth_system_service_runs_in_the_foreground(tmp_path: Path) -> None:
    base = tmp_path / "svc"
    base.mkdir()
    sock = base / "berth.sock"
    with open(base / "log", "wb") as log:
        process = subprocess.Popen(
            [
                BERTH,
                "system",
                "service",
                "-H",
                f"unix://{sock}",
                "--root",
                str(base / "root"),
                "--exec-root",
                str(base / "run"),
            ],
            stdout=log,
            stderr=log,
            env=_clean_env(),
        )
    try:
        deadline = time.monotonic() + 20
        while not sock.exists():
            assert process.poll() is None, (base / "log").read_text()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        info = subprocess.run(
            [BERTH, "-H", f"unix://{sock}", "system", "info", "--format", "{{.DockerRootDir}}"],
            capture_output=True,
            text=True,
            env=_clean_env(),
            timeout=30,
        )
        assert info.stdout.strip() == str(base / "root"), info.stderr
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
        _stop_by_pidfiles(base / "run")
    bad = subprocess.run(
        [BERTH, "system", "service", "-H", "tcp://0.0.0.0:2375"],
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=30,
    )
    assert bad.returncode == 1
    assert bad.stderr.startswith("berth system service: refusing to serve tcp://0.0.0.0:2375")
