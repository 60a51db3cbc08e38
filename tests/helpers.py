"""Test helpers: busybox bundles and a wrapper that runs a runtime binary."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path
from typing import Any

# Every container id any test created, for the end-of-session leak check.
CREATED_IDS: set[str] = set()
VENV_BIN = Path(sys.executable).parent
BERTH_RUNTIME = str(VENV_BIN / "berth-runtime")


class Bundle:
    """A bundle directory with a busybox rootfs and a config.json to edit."""

    def __init__(self, path: Path, config: dict[str, Any]) -> None:
        self.path = path
        self.config = config

    @property
    def rootfs(self) -> Path:
        return self.path / "rootfs"

    @property
    def process(self) -> dict[str, Any]:
        proc: dict[str, Any] = self.config["process"]
        return proc

    @property
    def linux(self) -> dict[str, Any]:
        linux: dict[str, Any] = self.config["linux"]
        return linux

    def write(self) -> Bundle:
        (self.path / "config.json").write_text(json.dumps(self.config, indent=2))
        return self


class RuntimeCLI:
    """Runs one runtime binary (berth-runtime or runc) with a private --root."""

    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.binary = BERTH_RUNTIME if name == "berth-runtime" else shutil.which(name) or name
        self.root = root
        self.created: list[str] = []

    def __call__(
        self, *args: str, check: bool = False, timeout: float = 60, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        if len(args) > 0 and args[0] in {"create", "run"}:
            self.remember(args[-1])
        if "stdout" not in kwargs:
            kwargs.setdefault("capture_output", True)
        result = subprocess.run(
            [self.binary, "--root", str(self.root), *args],
            text=True,
            timeout=timeout,
            **kwargs,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{self.name} {' '.join(args)} exited {result.returncode}: {result.stderr}"
            )
        return result

    def remember(self, cid: str) -> None:
        """Delete ``cid`` when the test ends, and check at the end that it left nothing."""
        if cid not in self.created:
            self.created.append(cid)
        CREATED_IDS.add(cid)

    def run(self, bundle: Bundle, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        bundle.write()
        cid = f"t-{uuid.uuid4().hex[:10]}"
        return self("run", "--bundle", str(bundle.path), cid, **kwargs)

    def state(self, cid: str) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self("state", cid, check=True).stdout)
        return result

    def cleanup(self) -> None:
        for cid in self.created:
            self("delete", "--force", cid)


def tar_of(files: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    """An uncompressed tar of regular files, then symlinks (name -> target): a build
    context, a rootfs to import, an archive to load."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return buffer.getvalue()


# busybox httpd serving its own hostname on port 80, and a one-shot HTTP GET by nc
# (HOST PORT follow): what the network tests run inside containers
HTTPD = "mkdir -p /www && echo hello-$HOSTNAME > /www/index.html && exec httpd -f -p 80 -h /www"
GET = 'printf "GET / HTTP/1.0\\r\\n\\r\\n" | nc -w 5'
