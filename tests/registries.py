"""Local registries for tests: the CNCF distribution registry (Debian's docker-registry)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

REGISTRY_BIN = shutil.which("docker-registry") or "/usr/bin/docker-registry"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class CNCFRegistry:
    host: str
    process: subprocess.Popen[bytes]


def start_registry(root: Path, htpasswd: Path | None = None) -> CNCFRegistry:
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    config = [
        "version: 0.1",
        "log:",
        "  level: error",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {root / 'data'}",
        "  delete:",
        "    enabled: true",
        "http:",
        f"  addr: 127.0.0.1:{port}",
    ]
    if htpasswd is not None:
        config += ["auth:", "  htpasswd:", "    realm: basic-realm", f"    path: {htpasswd}"]
    (root / "config.yml").write_text("\n".join(config) + "\n")
    log = open(root / "registry.log", "wb")  # noqa: SIM115 - the child keeps writing to it
    process = subprocess.Popen(
        [REGISTRY_BIN, "serve", str(root / "config.yml")], stdout=log, stderr=log
    )
    log.close()
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                process.wait()
                raise RuntimeError(
                    "docker-registry did not start: " + (root / "registry.log").read_text()
                ) from None
            time.sleep(0.05)
    return CNCFRegistry(f"127.0.0.1:{port}", process)


def htpasswd_file(folder: Path, user: str, password: str = "s3cret") -> Path:
    """An htpasswd file (bcrypt) with one user, for a registry with basic auth."""
    import bcrypt

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "htpasswd"
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    path.write_text(f"{user}:{hashed}\n")
    return path


def stop_registry(registry: CNCFRegistry) -> None:
    registry.process.terminate()
    try:
        registry.process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        registry.process.kill()
        registry.process.wait()
