"""Build speed, side by side in one run: berthd, Docker's legacy builder (a private
dockerd) and ``podman build``, for a busybox Dockerfile with a COPY and three RUN steps,
and (``--debian``) a Debian Dockerfile whose RUN step installs a package from the mirror.

    sudo .venv/bin/python bench/bench_build.py [--rounds 5] [--unchanged 5] [--debian]

For each engine: the cold build (``--no-cache``), the unchanged rebuild (every step
cached, ``--unchanged`` times a round) and the rebuild after one copied file changed
(that COPY and the RUN steps after it again). Each is the median of its runs, timed
around the CLI, all with ``--network host`` (the private dockerd runs without a bridge,
so that no engine's own network set-up is in the numbers). The base images are Berth's
bootstrapped ones, saved from berthd and loaded into the others, so every engine builds
on the same bytes. The Debian case's cold build is mostly the mirror's download time.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = HERE.parent / ".venv" / "bin"
DOCKERFILE = """FROM busybox
COPY app/ /app/
RUN echo one > /one
RUN cat /app/* | wc -c > /size
RUN echo three > /three
"""
DEBIAN_DOCKERFILE = """FROM debian:bookworm
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends jq >/dev/null
COPY app/ /app/
RUN cat /app/* | wc -c > /size
"""


def sh(argv: list[str], env: dict[str, str] | None = None) -> str:
    result = subprocess.run(argv, capture_output=True, env=env, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])}...: {result.stderr.decode()[-400:]}")
    return result.stdout.decode()


def wait(check: list[str], env: dict[str, str], proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while subprocess.run(check, capture_output=True, env=env).returncode != 0:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{check[0]} daemon did not start")
        time.sleep(0.2)


class Engine:
    name = ""

    def build(self, context: str, *flags: str) -> None:
        raise NotImplementedError

    def load(self, archive: str) -> None:
        """Add an image archive to the engine's store (berthd's engines have it)."""

    def close(self) -> None:
        pass


class Berth(Engine):
    name = "berth"

    def __init__(self, work: str) -> None:
        os.makedirs(work)
        self.work = work
        self.sock = f"{work}/berth.sock"
        self.env = dict(os.environ, BERTH_HOST=f"unix://{self.sock}")
        self.proc = subprocess.Popen(
            [
                str(BIN / "berthd"),
                "-H",
                f"unix://{self.sock}",
                "--root",
                f"{work}/root",
                "--exec-root",
                f"{work}/run",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(f"{work}/berthd.log", "wb"),  # noqa: SIM115
            start_new_session=True,
        )
        wait([str(BIN / "berth"), "version"], self.env, self.proc)
        sh(
            [
                "curl",
                "-sf",
                "-XPOST",
                "--unix-socket",
                self.sock,
                "http://x/berth/images/bootstrap?name=busybox",
            ]
        )
        self.busybox = f"{work}/busybox.tar"
        sh(["docker", "-H", f"unix://{self.sock}", "save", "-o", self.busybox, "busybox"])
        self.debian = ""

    def bootstrap_debian(self) -> str:
        """debian:bookworm made here (debootstrap; cached after the first time), saved."""
        url = "http://x/berth/images/bootstrap?name=debian:bookworm"
        sh(["curl", "-sf", "-XPOST", "--unix-socket", self.sock, url])
        self.debian = f"{self.work}/debian.tar"
        sh(["docker", "-H", f"unix://{self.sock}", "save", "-o", self.debian, "debian:bookworm"])
        return self.debian

    def build(self, context: str, *flags: str) -> None:
        sh(
            [
                str(BIN / "berth"),
                "build",
                "-q",
                "--network",
                "host",
                *flags,
                "-t",
                "bench",
                context,
            ],
            self.env,
        )

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        # berthd's monitor outlives it by design: stop it too (no container is left)
        monitor_pid = Path(f"{self.work}/run/monitor.pid")
        if monitor_pid.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(monitor_pid.read_text()), signal.SIGTERM)


class BerthDockerCLI(Engine):
    """The same berthd, driven by the docker CLI (Go, ~10 ms to start) instead of berth's."""

    name = "berthd + docker CLI"

    def __init__(self, berth: Berth) -> None:
        self.env = dict(os.environ, DOCKER_HOST=f"unix://{berth.sock}", DOCKER_BUILDKIT="0")

    def build(self, context: str, *flags: str) -> None:
        sh(["docker", "build", "-q", "--network", "host", *flags, "-t", "bench", context], self.env)


class Docker(Engine):
    name = "docker (legacy builder)"

    def __init__(self, work: str, busybox: str) -> None:
        self.work = work
        sock = f"{work}/docker.sock"
        os.makedirs(f"{work}/cli")  # and work itself
        Path(f"{work}/cli/config.json").write_text("{}")
        self.env = dict(
            os.environ,
            DOCKER_HOST=f"unix://{sock}",
            DOCKER_CONFIG=f"{work}/cli",
            DOCKER_BUILDKIT="0",
        )
        self.proc = subprocess.Popen(
            [
                "dockerd",
                f"--data-root={work}/data",
                f"--exec-root={work}/exec",
                f"--pidfile={work}/docker.pid",
                f"--host=unix://{sock}",
                "--iptables=false",
                "--ip-masq=false",
                "--bridge=none",
                "--storage-driver=overlay2",
                "--log-level=error",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(f"{work}/dockerd.log", "wb"),  # noqa: SIM115
            start_new_session=True,
        )
        wait(["docker", "version"], self.env, self.proc)
        sh(["docker", "load", "-i", busybox], self.env)

    def build(self, context: str, *flags: str) -> None:
        sh(["docker", "build", "-q", "--network", "host", *flags, "-t", "bench", context], self.env)

    def load(self, archive: str) -> None:
        sh(["docker", "load", "-i", archive], self.env)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)
        # dockerd leaves its netns bind mount (exec-root/netns/default) behind
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4] for line in f if f" {self.work}/" in line]
        for point in sorted(points, key=len, reverse=True):
            subprocess.run(["umount", "-l", point], check=False)


class Podman(Engine):
    name = "podman build"

    def __init__(self, work: str, busybox: str) -> None:
        short = tempfile.mkdtemp(prefix="pb-", dir="/tmp")
        self.short = short
        os.makedirs(f"{work}/tmp")
        conf = f"{work}/containers.conf"
        Path(conf).write_text('[engine]\nevents_logger = "none"\ncgroup_manager = "cgroupfs"\n')
        self.env = dict(os.environ, CONTAINERS_CONF=conf)
        self.base = [
            "podman",
            "--runtime=runc",
            f"--root={work}/root",
            f"--runroot={short}/run",
            f"--tmpdir={work}/tmp",
        ]
        sh([*self.base, "load", "-i", busybox], self.env)

    def build(self, context: str, *flags: str) -> None:
        sh(
            [
                *self.base,
                "build",
                "-q",
                "--network",
                "host",
                "--pull=never",
                *flags,
                "-t",
                "bench",
                context,
            ],
            self.env,
        )

    def load(self, archive: str) -> None:
        sh([*self.base, "load", "-i", archive], self.env)

    def close(self) -> None:
        subprocess.run([*self.base, "system", "reset", "-f"], capture_output=True, env=self.env)
        shutil.rmtree(self.short, ignore_errors=True)


def make_context(root: Path, dockerfile: str) -> None:
    (root / "app").mkdir(parents=True)
    for i in range(20):
        (root / "app" / f"file{i:02}.txt").write_text(f"file {i}\n" * 200)
    (root / "Dockerfile").write_text(dockerfile)


def timed(action: object) -> float:
    start = time.perf_counter()
    action()  # type: ignore[operator]
    return time.perf_counter() - start


def measure(engine: Engine, context: Path, rounds: int, unchanged: int) -> dict[str, float]:
    """Medians; the unchanged rebuild (~40 ms, mostly the CLI's start) ``unchanged``
    times a round, since one sample a round is mostly noise at that size."""
    results: dict[str, list[float]] = {"cold": [], "unchanged": [], "one file changed": []}
    engine.build(str(context))  # warm-up: the base image's files in the page cache
    for round_ in range(rounds):
        results["cold"].append(timed(lambda: engine.build(str(context), "--no-cache")))
        for _ in range(unchanged):
            results["unchanged"].append(timed(lambda: engine.build(str(context))))
        (context / "app" / "file07.txt").write_text(f"changed {engine.name} {round_}\n")
        results["one file changed"].append(timed(lambda: engine.build(str(context))))
    return {k: statistics.median(v) for k, v in results.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--unchanged", type=int, default=5, help="unchanged rebuilds timed per round"
    )
    parser.add_argument(
        "--debian", action="store_true", help="also the Debian case (needs the mirror)"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_build: needs root", file=sys.stderr)
        return 2
    work = tempfile.mkdtemp(prefix="berth-bench-build-", dir="/tmp")
    engines: list[Engine] = []
    table: list[tuple[str, str, dict[str, float]]] = []
    try:
        berth = Berth(f"{work}/berth")
        engines.append(berth)
        engines.append(BerthDockerCLI(berth))
        for factory in (
            lambda: Docker(f"{work}/docker", berth.busybox),
            lambda: Podman(f"{work}/podman", berth.busybox),
        ):
            try:
                engines.append(factory())
            except (RuntimeError, FileNotFoundError) as exc:
                print(f"skipped: {exc}", file=sys.stderr)
        cases = [("busybox", DOCKERFILE, args.rounds)]
        if args.debian:
            try:
                debian = berth.bootstrap_debian()
                for engine in engines:
                    engine.load(debian)
                cases.append(("debian+apt", DEBIAN_DOCKERFILE, max(1, args.rounds // 3)))
            except RuntimeError as exc:
                print(f"debian case skipped: {exc}", file=sys.stderr)
        for case, dockerfile, rounds in cases:
            for engine in engines:
                context = Path(work) / f"ctx-{case}-{engine.name.split()[0]}"
                make_context(context, dockerfile)
                try:
                    times = measure(engine, context, rounds, args.unchanged)
                    table.append((case, engine.name, times))
                except RuntimeError as exc:
                    print(f"{case}, {engine.name}: failed: {exc}", file=sys.stderr)
    finally:
        for engine in engines:
            engine.close()
        subprocess.run(["umount", "-R", f"{work}/docker/exec"], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"{'case':<12}{'engine':<26}{'cold':>10}{'unchanged':>12}{'1 file changed':>16}"
        "   (median s)"
    )
    for case, name, values in table:
        print(
            f"{case:<12}{name:<26}{values['cold']:>10.3f}{values['unchanged']:>12.3f}"
            f"{values['one file changed']:>16.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
