"""Moving images: berth's push, pull, save and load against Docker, Podman and skopeo.

One test image is built once as an OCI image layout on disk: a small busybox base layer
and two layers of ~100 MB of random bytes each (gzip, written by berth's
``tar_directory``). Every contender moves that same image through the same local
registry, on the same disk (the work directory, ``--dir``):

* push   berth ``push_image`` (library, in this process) from an image store holding
         the image, ``docker push`` (a private dockerd), ``podman push`` (a private
         ``--root``), ``skopeo copy oci:LAYOUT docker://...``. The registry is restarted
         on a fresh, empty root before every push, so every push uploads every blob.
* pull   berth ``pull_image`` into a fresh ``ImageStore`` (download + verify + unpack),
         ``docker pull`` (every image removed and pruned before), ``podman pull`` into a
         fresh ``--root``, ``skopeo copy docker://... oci:DIR`` into a fresh directory:
         the raw copy, nothing unpacked, the floor for a pull.
* save   berth ``archive.save`` (``format="docker"``), ``docker save``, ``podman save``
         (docker-archive), each to a file.
* load   berth ``archive.load`` into a fresh store, ``docker load`` (images removed
         before), ``podman load`` into a fresh ``--root``, each from its own save.

Registries: the CNCF distribution registry (``docker-registry serve``) and berth's own
(``berth registry serve``, a separate process), both on 127.0.0.1 and rooted in the
work directory. Each operation runs ``--rounds`` times (3 by default); the contenders
take turns within a round, the order rotating from round to round, and a ``sync``
(untimed) comes before every timed run. Reported: median and minimum seconds, MB/s
(image bytes = compressed layers + config, MB = 10^6 bytes) and berth's median over
the others'.

What is timed is the whole command: the docker and podman CLIs and skopeo start a
process each time (docker's work happens in the already running dockerd); berth's calls
run in this process, already imported, with a new registry client per call.

A contender that cannot run is reported as ``unavailable: reason``. Everything the run
starts (registries, dockerd and its containerd) is stopped by PID; mounts under the
work directory are detached and the directory removed; leftovers are reported.

Run as root: ``sudo .venv/bin/python bench/bench_images.py [--rounds 3] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MB = 1_000_000
LAYER_MB = 100
REPO_PUSH = "bench/push"
REPO_PULL = "bench/pull"
SRC_NAME = "bench.local/bench/image:latest"  # the image's name in berth's source store
OCI_TAG = "latest"  # its ref name in the OCI layout

CONTENDERS = ("berth", "docker", "podman", "skopeo")


class Unavailable(Exception):
    """A contender cannot run here; the message says why."""


class CommandFailed(Exception):
    pass


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(
    argv: list[str], *, env: dict[str, str] | None = None, timeout: float = 900
) -> subprocess.CompletedProcess[bytes]:
    try:
        p = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            timeout=timeout,
        )
    except FileNotFoundError as e:
        raise Unavailable(f"{argv[0]} is not installed") from e
    except subprocess.TimeoutExpired as e:
        raise CommandFailed(f"{' '.join(argv[:3])}: timed out after {timeout:.0f} s") from e
    if p.returncode:
        lines = p.stderr.decode(errors="replace").strip().splitlines()
        last = lines[-1] if lines else ""
        raise CommandFailed(f"{' '.join(argv[:3])}: exit {p.returncode}: {last[:300]}")
    return p


def output(argv: list[str], *, env: dict[str, str] | None = None) -> str:
    p = subprocess.run(argv, capture_output=True, env=env, timeout=120)
    if p.returncode:
        raise CommandFailed(
            f"{' '.join(argv[:3])}: exit {p.returncode}: {p.stderr.decode(errors='replace')[:300]}"
        )
    return p.stdout.decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rmtree(path: str) -> None:
    unmount_under(path)
    shutil.rmtree(path, ignore_errors=True)


def mounts_under(path: str) -> list[str]:
    """Mount points at or below ``path`` in this mount namespace, deepest first."""
    path = os.path.realpath(path)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point == path or point.startswith(path + "/"):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def unmount_under(path: str) -> None:
    if not os.path.exists(path):
        return
    for point in mounts_under(path):
        subprocess.run(["umount", "-l", point], capture_output=True)


def pids_referencing(path: str) -> list[tuple[int, str]]:
    """Processes whose command line names ``path``: what this run started and left."""
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if path in cmd:
            found.append((int(entry), cmd.strip()))
    return found


def stop_pid(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def wait_http(url: str, proc: subprocess.Popen[bytes], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise Unavailable(f"{what} exited with {proc.returncode} at start")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except urllib.error.HTTPError as e:
            if e.code in (200, 401):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise Unavailable(f"{what} did not answer {url} within {timeout:.0f} s")
        time.sleep(0.05)


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


# --------------------------------------------------------------------------- the image


@dataclass
class TestImage:
    layout: str
    image_bytes: int  # compressed layers + config
    layer_sizes: list[int]
    config_size: int
    manifest_digest: str


def build_image(work: str, layer_mb: int) -> TestImage:
    """An OCI layout: busybox base + two random-data layers, written with berth's layer code."""
    from berth.images import manifest as mf
    from berth.images.layer import tar_directory

    layout = os.path.join(work, "image-oci")
    blobs = os.path.join(layout, "blobs", "sha256")
    os.makedirs(blobs)
    trees = os.path.join(work, "trees")
    base = os.path.join(trees, "base")
    try:
        from berth.images import busybox_rootfs

        busybox_rootfs.build(base)
    except Exception as e:  # no busybox-static: a tiny base of a few files
        log(f"busybox base unavailable ({e}); using a few small files")
        os.makedirs(os.path.join(base, "etc"), exist_ok=True)
        with open(os.path.join(base, "etc", "os-release"), "w") as f:
            f.write("NAME=bench\n")
    dirs = [base]
    for n in (1, 2):
        d = os.path.join(trees, f"data{n}", "data", f"layer{n}")
        os.makedirs(d)
        per_file = layer_mb * MB // 4
        for i in range(4):
            with open(os.path.join(d, f"random{i}.bin"), "wb") as f:
                for _ in range(per_file // (1 << 20)):
                    f.write(os.urandom(1 << 20))
                f.write(os.urandom(per_file % (1 << 20)))
        dirs.append(os.path.join(trees, f"data{n}"))
    layers: list[Any] = []
    diff_ids = []
    for src in dirs:
        tmp = os.path.join(blobs, ".tmp-layer")
        with open(tmp, "wb") as out:
            digest, diff_id, size = tar_directory(src, out, compression="gzip", source_date_epoch=0)
        os.rename(tmp, os.path.join(blobs, digest.split(":", 1)[1]))
        layers.append(mf.Descriptor(mf.OCI_LAYER_GZIP, digest, size))
        diff_ids.append(diff_id)
    shutil.rmtree(trees)
    host = mf.Platform.host()
    config = {
        "architecture": host.architecture,
        "os": host.os,
        "created": "1970-01-01T00:00:00Z",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": "1970-01-01T00:00:00Z", "comment": "bench"}] * len(layers),
    }
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    config_digest = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
    with open(os.path.join(blobs, config_digest.split(":")[1]), "wb") as f:
        f.write(config_bytes)
    manifest = mf.Manifest(
        mf.OCI_MANIFEST, mf.Descriptor(mf.OCI_CONFIG, config_digest, len(config_bytes)), layers
    )
    manifest_data = mf.manifest_bytes(manifest)
    manifest_digest = "sha256:" + hashlib.sha256(manifest_data).hexdigest()
    with open(os.path.join(blobs, manifest_digest.split(":")[1]), "wb") as f:
        f.write(manifest_data)
    index = {
        "schemaVersion": 2,
        "mediaType": mf.OCI_INDEX,
        "manifests": [
            {
                "mediaType": mf.OCI_MANIFEST,
                "digest": manifest_digest,
                "size": len(manifest_data),
                "annotations": {"org.opencontainers.image.ref.name": OCI_TAG},
            }
        ],
    }
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump(index, f)
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')
    sizes = [layer.size for layer in layers]
    return TestImage(
        layout, sum(sizes) + len(config_bytes), sizes, len(config_bytes), manifest_digest
    )


# --------------------------------------------------------------------------- registries


class Registry:
    """A registry process on a fixed port; ``reset`` restarts it on a fresh, empty root."""

    name = ""

    def __init__(self, work: str, port: int) -> None:
        self.work = work
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        self.generation = 0
        self.root = ""
        os.makedirs(work, exist_ok=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        self.generation += 1
        self.root = os.path.join(self.work, f"root-{self.generation}")
        os.makedirs(self.root)
        logf = open(os.path.join(self.work, "registry.log"), "ab")  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=logf,
                start_new_session=True,
            )
        except FileNotFoundError as e:
            raise Unavailable(f"{self.argv()[0]} is not installed") from e
        finally:
            logf.close()
        wait_http(f"http://{self.host}/v2/", self.proc, self.name)

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc)
            self.proc = None
        if self.root:
            shutil.rmtree(self.root, ignore_errors=True)

    def reset(self) -> None:
        self.stop()
        self.start()


class CNCFRegistry(Registry):
    name = "distribution"

    def argv(self) -> list[str]:
        config = os.path.join(self.work, "config.yml")
        with open(config, "w") as f:
            f.write(
                "version: 0.1\n"
                "log: {level: error, accesslog: {disabled: true}}\n"
                f"storage:\n  filesystem: {{rootdirectory: {self.root}}}\n"
                "  cache: {blobdescriptor: inmemory}\n"
                "  delete: {enabled: true}\n"
                f"http:\n  addr: {self.host}\n  secret: bench-secret\n"
                "health: {storagedriver: {enabled: false}}\n"
            )
        return ["docker-registry", "serve", config]


class BerthRegistry(Registry):
    name = "berth"

    def argv(self) -> list[str]:
        berth = os.path.join(os.path.dirname(sys.executable), "berth")
        if not os.path.exists(berth):
            berth = shutil.which("berth") or berth
        return [berth, "registry", "serve", "--listen", self.host, "--root", self.root]


def registry_version(kind: str) -> str:
    if kind == "distribution":
        with contextlib.suppress(Exception):
            return output(["docker-registry", "--version"]).split()[-1]
    return "berth (fsync on)" if kind == "berth" else "?"


# --------------------------------------------------------------------------- contenders


class Contender:
    name = ""
    ops: tuple[str, ...] = ()

    def __init__(self, work: str) -> None:
        self.work = work
        os.makedirs(work, exist_ok=True)
        self.version = ""

    def setup(self, seed_ref: str, image: TestImage) -> None:
        """Make the image available for push and save (untimed)."""

    def prepare_push(self, ref: str) -> None:
        pass

    def push(self, ref: str) -> None:
        raise NotImplementedError

    def prepare_pull(self) -> None:
        pass

    def pull(self, ref: str) -> None:
        raise NotImplementedError

    def after_pull(self) -> None:
        pass

    def save(self, path: str) -> None:
        raise NotImplementedError

    def prepare_load(self) -> None:
        pass

    def load(self, path: str) -> None:
        raise NotImplementedError

    def after_load(self) -> None:
        pass

    def close(self) -> None:
        pass


class Berth(Contender):
    name = "berth"
    ops = ("push", "pull", "save", "load")

    def __init__(self, work: str) -> None:
        super().__init__(work)
        from berth.distribution.client import RegistryClient
        from berth.distribution.images import pull_image, push_image
        from berth.images import archive
        from berth.images.store import ImageStore

        self._client_cls = RegistryClient
        self._pull_image = pull_image
        self._push_image = push_image
        self._archive = archive
        self._store_cls = ImageStore
        self.config = os.path.join(work, "docker-config.json")
        with open(self.config, "w") as f:
            f.write("{}")
        self.src = ImageStore(os.path.join(work, "src"))
        self.scratch: Any = None
        self.count = 0
        self.version = "library, in process"

    def setup(self, seed_ref: str, image: TestImage) -> None:
        self._archive.load_oci_layout(self.src, image.layout, OCI_TAG, name=SRC_NAME)

    def _fresh(self) -> Any:
        self.count += 1
        self.scratch_dir = os.path.join(self.work, f"store-{self.count}")
        self.scratch = self._store_cls(self.scratch_dir)
        return self.scratch

    def _drop(self) -> None:
        if self.scratch is not None:
            self.scratch.close()
            self.scratch = None
            rmtree(self.scratch_dir)

    def push(self, ref: str) -> None:
        async def go() -> None:
            async with self._client_cls(config_path=self.config) as client:
                await self._push_image(client, self.src, SRC_NAME, ref)

        asyncio.run(go())

    def prepare_pull(self) -> None:
        self._fresh()

    def pull(self, ref: str) -> None:
        store = self.scratch

        async def go() -> None:
            async with self._client_cls(config_path=self.config) as client:
                await self._pull_image(client, store, ref)

        asyncio.run(go())

    def after_pull(self) -> None:
        self._drop()

    def save(self, path: str) -> None:
        with open(path, "wb") as out:
            self._archive.save(self.src, [SRC_NAME], out, format="docker")

    def prepare_load(self) -> None:
        self._fresh()

    def load(self, path: str) -> None:
        with open(path, "rb") as inp:
            self._archive.load(self.scratch, inp)

    def after_load(self) -> None:
        self._drop()

    def close(self) -> None:
        self._drop()
        self.src.close()


class Docker(Contender):
    """``docker`` against a private dockerd (its own data-root, exec-root and socket)."""

    name = "docker"
    ops = ("push", "pull", "save", "load")

    def __init__(self, work: str, insecure: list[str]) -> None:
        super().__init__(work)
        self.proc: subprocess.Popen[bytes] | None = None
        if shutil.which("dockerd") is None or shutil.which("docker") is None:
            raise Unavailable("dockerd or the docker CLI is not installed")
        self.sock = os.path.join(work, "docker.sock")
        cli = os.path.join(work, "cli")
        os.makedirs(cli)
        with open(os.path.join(cli, "config.json"), "w") as f:
            f.write("{}")
        with open(os.path.join(work, "daemon.json"), "w") as f:
            f.write("{}")
        self.env = dict(os.environ, DOCKER_HOST=f"unix://{self.sock}", DOCKER_CONFIG=cli)
        self.env.pop("DOCKER_CONTEXT", None)
        argv = [
            "dockerd",
            f"--data-root={work}/data",
            f"--exec-root={work}/exec",
            f"--pidfile={work}/docker.pid",
            f"--host=unix://{self.sock}",
            f"--config-file={work}/daemon.json",
            "--iptables=false",
            "--ip-masq=false",
            "--bridge=none",
            "--storage-driver=overlay2",
            "--log-level=error",
        ]
        argv += [f"--insecure-registry={r}" for r in insecure]
        logf = open(os.path.join(work, "dockerd.log"), "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True
        )
        logf.close()
        try:
            self._wait_ready()
        except BaseException:
            self.close()
            raise

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise Unavailable(f"dockerd exited with {self.proc.returncode}: {self._log_tail()}")
            p = subprocess.run(
                ["docker", "version", "--format", "{{.Server.Version}}"],
                capture_output=True,
                env=self.env,
            )
            if p.returncode == 0:
                self.version = "dockerd " + p.stdout.decode().strip()
                break
            if time.monotonic() > deadline:
                raise Unavailable(f"dockerd did not answer within 60 s: {self._log_tail()}")
            time.sleep(0.2)

    def _log_tail(self) -> str:
        try:
            with open(os.path.join(self.work, "dockerd.log"), errors="replace") as f:
                lines = f.read().strip().splitlines()
            return lines[-1][:300] if lines else ""
        except OSError:
            return ""

    def docker(self, *args: str) -> None:
        run(["docker", *args], env=self.env)

    def remove_all(self) -> None:
        ids = output(["docker", "image", "ls", "-aq"], env=self.env).split()
        if ids:
            run(["docker", "rmi", "-f", *sorted(set(ids))], env=self.env)
        self.docker("image", "prune", "-af")
        left = output(["docker", "image", "ls", "-aq"], env=self.env).split()
        if left:
            raise CommandFailed(f"docker still has images {left}")

    def setup(self, seed_ref: str, image: TestImage) -> None:
        self.docker("pull", seed_ref)
        self.last_pulled = seed_ref

    def prepare_push(self, ref: str) -> None:
        self.docker("tag", self.last_pulled, ref)

    def push(self, ref: str) -> None:
        self.docker("push", ref)

    def prepare_pull(self) -> None:
        self.remove_all()

    def pull(self, ref: str) -> None:
        self.docker("pull", ref)
        self.last_pulled = ref

    def save(self, path: str) -> None:
        self.docker("save", "-o", path, self.last_pulled)

    def prepare_load(self) -> None:
        self.remove_all()

    def load(self, path: str) -> None:
        self.docker("load", "-i", path)

    def close(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc, timeout=60)
            self.proc = None


class Podman(Contender):
    """``podman`` with private storage: ``--root``/``--runroot``/``--tmpdir`` per store."""

    name = "podman"
    ops = ("push", "pull", "save", "load")

    def __init__(self, work: str, short: str) -> None:
        super().__init__(work)
        self.short = short  # podman refuses a runroot path longer than 50 characters
        if shutil.which("podman") is None:
            raise Unavailable("podman is not installed (apt-get install podman)")
        conf = os.path.join(work, "containers.conf")
        tmp = os.path.join(work, "tmp")
        os.makedirs(tmp)
        # Podman 4.3 asks for 1,048,576 open files for containers; pull/push/save/load
        # start no container, so the host's 20,000 hard limit does not matter here.
        # The private containers.conf keeps big temporary files and events in the work dir.
        with open(conf, "w") as f:
            f.write(
                "[engine]\n"
                f'image_copy_tmp_dir = "{tmp}"\n'
                'events_logger = "none"\n'
                'cgroup_manager = "cgroupfs"\n'
            )
        auth = os.path.join(work, "auth.json")
        with open(auth, "w") as f:
            f.write("{}")
        self.env = dict(os.environ, CONTAINERS_CONF=conf, REGISTRY_AUTH_FILE=auth, TMPDIR=tmp)
        self.count = 0
        self.src = self._store("src")
        self.scratch: str | None = None
        self.version = output(["podman", "--version"]).split()[-1]

    def _store(self, name: str) -> list[str]:
        d = os.path.join(self.work, name)
        runroot = os.path.join(self.short, name)
        for sub in (f"{d}/root", f"{d}/tmp", runroot):
            os.makedirs(sub, exist_ok=True)
        return [
            "podman",
            f"--root={d}/root",
            f"--runroot={runroot}",
            f"--tmpdir={d}/tmp",
            "--storage-driver=overlay",
        ]

    def _fresh(self) -> list[str]:
        self.count += 1
        self.scratch = os.path.join(self.work, f"store-{self.count}")
        return self._store(f"store-{self.count}")

    def _drop(self) -> None:
        if self.scratch is not None:
            rmtree(self.scratch)
            rmtree(os.path.join(self.short, os.path.basename(self.scratch)))
            self.scratch = None

    def setup(self, seed_ref: str, image: TestImage) -> None:
        run([*self.src, "pull", "--tls-verify=false", "-q", seed_ref], env=self.env)
        self.seed = seed_ref

    def push(self, ref: str) -> None:
        run([*self.src, "push", "--tls-verify=false", "-q", self.seed, ref], env=self.env)

    def prepare_pull(self) -> None:
        self.cmd = self._fresh()

    def pull(self, ref: str) -> None:
        run([*self.cmd, "pull", "--tls-verify=false", "-q", ref], env=self.env)

    def after_pull(self) -> None:
        self._drop()

    def save(self, path: str) -> None:
        run(
            [*self.src, "save", "-q", "--format=docker-archive", "-o", path, self.seed],
            env=self.env,
        )

    def prepare_load(self) -> None:
        self.cmd = self._fresh()

    def load(self, path: str) -> None:
        run([*self.cmd, "load", "-q", "-i", path], env=self.env)

    def after_load(self) -> None:
        self._drop()

    def close(self) -> None:
        self._drop()
        rmtree(os.path.join(self.work, "src"))
        rmtree(os.path.join(self.short, "src"))


class Skopeo(Contender):
    """skopeo: the raw copy, no engine storage. Its blob-info cache (root's is
    /var/lib/containers/cache, shared with everything else on the host) is replaced by
    a private, empty directory through a bind mount in a private mount namespace."""

    name = "skopeo"
    ops = ("push", "pull")

    def __init__(self, work: str) -> None:
        super().__init__(work)
        if shutil.which("skopeo") is None:
            raise Unavailable("skopeo is not installed")
        auth = os.path.join(work, "auth.json")
        with open(auth, "w") as f:
            f.write("{}")
        self.env = dict(os.environ, REGISTRY_AUTH_FILE=auth)
        self.cache = os.path.join(work, "cache")
        os.makedirs(self.cache)
        self.prefix = ["skopeo"]
        if os.path.isdir("/var/lib/containers/cache"):
            self.prefix = [
                "unshare", "--mount", "--propagation", "private", "sh", "-c",
                'mount --bind "$0" /var/lib/containers/cache && exec "$@"', self.cache, "skopeo",
            ]  # fmt: skip
        self.count = 0
        self.scratch: str | None = None
        self.version = output(["skopeo", "--version"]).split()[-1]

    def setup(self, seed_ref: str, image: TestImage) -> None:
        self.layout = image.layout

    def copy(self, src: str, dest: str) -> None:
        run([*self.prefix, "copy", "-q", "--src-tls-verify=false", "--dest-tls-verify=false",
             src, dest], env=self.env)  # fmt: skip

    def push(self, ref: str) -> None:
        self.copy(f"oci:{self.layout}:{OCI_TAG}", f"docker://{ref}")

    def prepare_pull(self) -> None:
        self.count += 1
        self.scratch = os.path.join(self.work, f"pull-{self.count}")

    def pull(self, ref: str) -> None:
        self.copy(f"docker://{ref}", f"oci:{self.scratch}:{OCI_TAG}")

    def after_pull(self) -> None:
        if self.scratch is not None:
            rmtree(self.scratch)
            self.scratch = None


# --------------------------------------------------------------------------- measuring


@dataclass
class Series:
    samples: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    unavailable: str | None = None

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None


def timed(fn: Callable[[], None]) -> float:
    os.sync()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = tempfile.mkdtemp(prefix="berth-bench-images-", dir=args.dir)
        self.short = tempfile.mkdtemp(prefix="bbi-", dir="/tmp")  # podman's runroots
        self.contenders: dict[str, Contender] = {}
        self.unavailable: dict[str, str] = {}
        self.registries: list[Registry] = []
        self.results: dict[tuple[str, str, str], Series] = {}  # (target, op, contender)
        self.image: TestImage | None = None
        self.notes: list[str] = []

    def series(self, target: str, op: str, name: str) -> Series:
        return self.results.setdefault((target, op, name), Series())

    def start_contenders(self, insecure: list[str]) -> None:
        makers: dict[str, Callable[[], Contender]] = {
            "berth": lambda: Berth(os.path.join(self.work, "berth")),
            "docker": lambda: Docker(os.path.join(self.work, "docker"), insecure),
            "podman": lambda: Podman(os.path.join(self.work, "podman"), self.short),
            "skopeo": lambda: Skopeo(os.path.join(self.work, "skopeo")),
        }
        for name in self.args.contenders:
            try:
                self.contenders[name] = makers[name]()
            except (Unavailable, CommandFailed, OSError) as e:
                self.unavailable[name] = str(e)
                log(f"{name}: unavailable: {e}")
            except BaseException:
                # a half-started contender (dockerd) must still be stopped
                raise

    def seed(self, registry: Registry, repo: str) -> str:
        """Put the test image into ``registry`` as ``repo:latest`` with skopeo (untimed)."""
        assert self.image is not None
        ref = f"{registry.host}/{repo}:latest"
        sk = self.contenders.get("skopeo")
        if isinstance(sk, Skopeo):
            sk.copy(f"oci:{self.image.layout}:{OCI_TAG}", f"docker://{ref}")
        else:  # no skopeo: berth pushes the seed
            berth = self.contenders.get("berth")
            if not isinstance(berth, Berth):
                raise SystemExit("neither skopeo nor berth can seed the registry")
            berth.push(ref)
        return ref

    def measure(
        self,
        target: str,
        op: str,
        names: list[str],
        before: Callable[[Contender], None],
        action: Callable[[Contender], None],
        after: Callable[[Contender], None],
    ) -> None:
        active = [n for n in names if op in self.contenders[n].ops]
        stopped: set[str] = set()
        for r in range(self.args.rounds):
            order = active[r % len(active) :] + active[: r % len(active)] if active else []
            for name in order:
                if name in stopped:
                    continue
                c = self.contenders[name]
                s = self.series(target, op, name)
                try:
                    before(c)
                    elapsed = timed(lambda c=c: action(c))  # type: ignore[misc]
                    s.samples.append(elapsed)
                    log(f"  {target:12} {op:5} round {r + 1} {name:7} {elapsed:7.3f} s")
                except Exception as e:
                    s.failures.append(f"{type(e).__name__}: {e}")
                    log(f"  {target:12} {op:5} round {r + 1} {name:7} FAILED: {e}")
                    if len(s.failures) >= 2:
                        stopped.add(name)
                finally:
                    with contextlib.suppress(Exception):
                        after(c)

    def run_target(self, registry: Registry) -> None:
        target = registry.name
        names = [n for n in CONTENDERS if n in self.contenders]
        push_ref = f"{registry.host}/{REPO_PUSH}:latest"

        def before_push(c: Contender) -> None:
            registry.reset()
            c.prepare_push(push_ref)

        log(f"[{target}] push")
        self.measure(target, "push", names, before_push, lambda c: c.push(push_ref), lambda c: None)
        registry.reset()
        pull_ref = self.seed(registry, REPO_PULL)
        log(f"[{target}] pull")
        self.measure(
            target,
            "pull",
            names,
            lambda c: c.prepare_pull(),
            lambda c: c.pull(pull_ref),
            lambda c: c.after_pull(),
        )

    def run_archives(self) -> None:
        names = [n for n in CONTENDERS if n in self.contenders]
        archives = os.path.join(self.work, "archives")
        os.makedirs(archives)
        sizes: dict[str, int] = {}

        def path(c: Contender) -> str:
            return os.path.join(archives, f"{c.name}.tar")

        def before_save(c: Contender) -> None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path(c))

        def after_save(c: Contender) -> None:
            with contextlib.suppress(OSError):
                sizes[c.name] = os.path.getsize(path(c))

        log("[archive] save")
        self.measure(
            "-", "save", names,
            before_save,
            lambda c: c.save(path(c)),
            after_save,
        )  # fmt: skip
        log("[archive] load")
        self.measure(
            "-", "load", names,
            lambda c: c.prepare_load(),
            lambda c: c.load(path(c)),
            lambda c: c.after_load(),
        )  # fmt: skip
        self.archive_sizes = sizes

    def go(self) -> None:
        args = self.args
        log(f"work directory {self.work}")
        t0 = time.perf_counter()
        self.image = build_image(self.work, args.layer_mb)
        log(
            f"test image: layers {[round(s / MB, 1) for s in self.image.layer_sizes]} MB,"
            f" {self.image.image_bytes / MB:.1f} MB in all ({time.perf_counter() - t0:.1f} s)"
        )
        regs: list[Registry] = []
        if "distribution" in args.registries:
            regs.append(CNCFRegistry(os.path.join(self.work, "reg-distribution"), free_port()))
        if "berth" in args.registries:
            regs.append(BerthRegistry(os.path.join(self.work, "reg-berth"), free_port()))
        self.registries = regs
        started: list[Registry] = []
        for reg in regs:
            try:
                reg.start()
                started.append(reg)
            except Unavailable as e:
                self.notes.append(f"registry {reg.name}: unavailable: {e}")
                log(f"registry {reg.name}: unavailable: {e}")
        if not started:
            raise SystemExit("no registry could be started")
        self.start_contenders([r.host for r in regs])
        seed_ref = self.seed(started[0], "bench/seed")
        for name, c in list(self.contenders.items()):
            try:
                c.setup(seed_ref, self.image)
            except (CommandFailed, Unavailable, Exception) as e:
                self.unavailable[name] = f"setup failed: {e}"
                log(f"{name}: unavailable: setup failed: {e}")
                with contextlib.suppress(Exception):
                    c.close()
                del self.contenders[name]
        for reg in started:
            self.run_target(reg)
        self.run_archives()

    # ---- cleanup ----------------------------------------------------------------------

    def cleanup(self) -> list[str]:
        problems: list[str] = []
        for c in list(self.contenders.values()):
            try:
                c.close()
            except Exception as e:
                problems.append(f"closing {c.name}: {e}")
        for reg in self.registries:
            with contextlib.suppress(Exception):
                reg.stop()
        dirs = (self.work, self.short)
        # anything still running that this run started (containerd, shims, a registry)
        for d in dirs:
            for pid, cmd in pids_referencing(d):
                problems.append(f"left running, killed: {pid} {cmd[:120]}")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        for d in dirs:
            for point in mounts_under(d):
                problems.append(f"left mounted, detached: {point}")
            unmount_under(d)
            shutil.rmtree(d, ignore_errors=True)
            if os.path.exists(d):
                problems.append(f"could not remove {d}")
            for point in mounts_under(d):
                problems.append(f"still mounted: {point}")
            for pid, cmd in pids_referencing(d):
                problems.append(f"still running: {pid} {cmd[:120]}")
        return problems

    # ---- report -----------------------------------------------------------------------

    def report(self) -> str:
        assert self.image is not None
        img = self.image.image_bytes
        lines: list[str] = []
        out = lines.append
        ops = [
            (reg.name, op) for reg in self.registries for op in ("push", "pull")
            if any(k[:2] == (reg.name, op) for k in self.results)
        ] + [("-", "save"), ("-", "load")]  # fmt: skip
        out(
            f"image: {len(self.image.layer_sizes)} layers "
            f"({', '.join(f'{s / MB:.1f}' for s in self.image.layer_sizes)} MB gzip) + "
            f"config {self.image.config_size} B = {img / MB:.1f} MB; "
            f"{self.args.rounds} rounds, median (min) seconds\n"
        )
        out("| registry | op | contender | median s | min s | MB/s | berth / this |")
        out("|---|---|---|---:|---:|---:|---:|")
        for target, op in ops:
            berth = self.results.get((target, op, "berth"))
            bm = berth.median if berth else None
            for name in CONTENDERS:
                if name in self.unavailable:
                    if (target, op) == ops[0]:
                        out(f"| {target} | {op} | {name} | unavailable: {self.unavailable[name]}"
                            " | | | |")  # fmt: skip
                    continue
                s = self.results.get((target, op, name))
                if s is None:
                    continue
                m = s.median
                if m is None:
                    out(f"| {target} | {op} | {name} | failed: {s.failures[0][:100]} | | | |")
                    continue
                ratio = f"{bm / m:.2f}x" if bm is not None and name != "berth" else ""
                extra = f" ({len(s.failures)} failed)" if s.failures else ""
                out(
                    f"| {target} | {op} | {name}{extra} | {m:.2f} | {min(s.samples):.2f} |"
                    f" {img / MB / m:.0f} | {ratio} |"
                )
        out("")
        for target in [r.name for r in self.registries]:
            b = self.results.get((target, "pull", "berth"))
            k = self.results.get((target, "pull", "skopeo"))
            if b and k and b.median and k.median:
                times = b.median / k.median
                verdict = "meets" if times <= 1.5 else "misses"
                out(f"- {target} registry: berth pull / skopeo copy = {times:.2f}x"
                    f" ({verdict} the 1.5x goal)")  # fmt: skip
        sizes = getattr(self, "archive_sizes", {})
        if sizes:
            out("- archive sizes: " + ", ".join(f"{n} {v / MB:.1f} MB" for n, v in sizes.items()))
        for note in self.notes:
            out(f"- {note}")
        return "\n".join(lines)

    def machine(self, load_start: tuple[float, float, float]) -> str:
        load_end = os.getloadavg()
        versions = [f"{n} {c.version}" for n, c in self.contenders.items() if c.version]
        versions += [f"registry {registry_version(r.name)}" for r in self.registries]
        return (
            f"{_dt.datetime.now(_dt.UTC):%Y-%m-%d %H:%M} UTC; {os.cpu_count()} CPUs,"
            f" kernel {platform.release()}, Python {platform.python_version()};"
            f" {'; '.join(versions)}; work dir on {self.args.dir};"
            f" load average {load_start[0]:.2f} at start, {load_end[0]:.2f} at end"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--layer-mb", type=int, default=LAYER_MB, help="MB per data layer")
    parser.add_argument("--dir", default="/var/tmp", help="work directory's parent")
    parser.add_argument("--contenders", default=",".join(CONTENDERS), help="comma-separated subset")
    parser.add_argument(
        "--registries", default="distribution,berth", help="distribution, berth or both"
    )
    parser.add_argument("--json", help="write every sample to this file")
    args = parser.parse_args()
    args.contenders = [c for c in args.contenders.split(",") if c]
    args.registries = [r for r in args.registries.split(",") if r]
    if os.geteuid() != 0:
        sys.exit("run as root (dockerd, podman and unpacking with owners need it)")

    def on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    load_start = os.getloadavg()
    bench = Bench(args)
    interrupted = False
    try:
        bench.go()
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: cleaning up")
    finally:
        problems = bench.cleanup()
        if problems:
            log("cleanup found:\n  " + "\n  ".join(problems))
        else:
            log("cleanup: no process, mount or file left behind")
    if interrupted or bench.image is None:
        sys.exit(1)
    for name, reason in bench.unavailable.items():
        print(f"{name}: unavailable: {reason}")
    print(bench.report())
    print(f"\nmachine: {bench.machine(load_start)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "image_bytes": bench.image.image_bytes,
                    "layers": bench.image.layer_sizes,
                    "unavailable": bench.unavailable,
                    "results": [
                        {"registry": t, "op": o, "contender": n, "samples": s.samples,
                         "failures": s.failures}
                        for (t, o, n), s in bench.results.items()
                    ],
                },
                f,
                indent=1,
            )  # fmt: skip


if __name__ == "__main__":
    main()
