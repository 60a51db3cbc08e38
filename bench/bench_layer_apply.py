"""Unpacking a layer: berth's apply_layer against GNU tar, plain and gzip.

One ~100 MB layer is made once: a few large files of random bytes and many small files
of text-like bytes (compressible, as most of a real image is), in nested directories.
GNU tar writes it (``--format=gnu`` by default: one 512-byte header per entry, as in
Docker's layers; ``--format=pax`` adds an extended record to every entry) and
``gzip -6`` compresses it (Go's default level, so like Docker's layers). Each contender
unpacks it into a fresh directory, on tmpfs by default (``--dir``). There the time is
the CPU work of unpacking, which is what berth controls; on this VM's ext4 the same runs
vary several-fold from run to run with writeback and the journal.

* ``apply_layer``  ``berth.images.layer.apply_layer`` in this process (imported once),
* ``tar -x``       GNU tar as root (owners, modes and times kept; xattrs are not
                   extracted without ``--xattrs``, and this layer has none),
* ``tarfile``      Python's ``tarfile`` in stream mode (``r|`` / ``r|gz``) with
                   ``extractall``, for reference: why berth reads tar by itself.

The contenders run round-robin (order rotated each round) so drift hits all alike; round
0 warms up and is dropped. Every run starts after a ``sync`` (not timed) into a new
directory; a round's directories are removed after the round. Nothing is fsynced, by any
contender. The report gives median and minimum seconds and berth's median over tar's.

Run as root: ``sudo .venv/bin/python bench/bench_layer_apply.py [--rounds 5] [--mb 100]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable

from berth.images.layer import apply_layer

WORDS = b"lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor".split()


def make_tree(root: str, total_mb: int) -> tuple[int, int]:
    """80% of the bytes in 4 random files, 20% in 4 KiB text files; returns (files, bytes)."""
    rng = random.Random(42)
    big_bytes = total_mb * 1024 * 1024 * 8 // 10
    files = written = 0
    os.makedirs(os.path.join(root, "big"))
    for i in range(4):
        with open(os.path.join(root, "big", f"blob{i}.bin"), "wb") as f:
            f.write(os.urandom(big_bytes // 4))
        files += 1
        written += big_bytes // 4
    small_total = total_mb * 1024 * 1024 - big_bytes
    n = 0
    while small_total > 0:
        d = os.path.join(root, "usr", f"lib{n // 1000}", f"pkg{(n // 50) % 20}")
        os.makedirs(d, exist_ok=True)
        body = b" ".join(rng.choice(WORDS) for _ in range(700))[:4096]
        with open(os.path.join(d, f"file{n}.txt"), "wb") as f:
            f.write(body)
        os.chmod(os.path.join(d, f"file{n}.txt"), 0o644 if n % 7 else 0o755)
        small_total -= len(body)
        written += len(body)
        files += 1
        n += 1
    return files, written


def run_tar(args: list[str]) -> Callable[[str], None]:
    def run(dest: str) -> None:
        os.mkdir(dest)
        subprocess.run(["tar", *args, "-C", dest], check=True)

    return run


def run_apply(path: str) -> Callable[[str], None]:
    def run(dest: str) -> None:
        with open(path, "rb") as f:
            apply_layer(f, dest)

    return run


def run_tarfile(path: str, mode: str) -> Callable[[str], None]:
    def run(dest: str) -> None:
        os.mkdir(dest)
        with open(path, "rb") as f, tarfile.open(fileobj=f, mode=mode) as t:
            t.extractall(dest)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--no-tarfile", action="store_true", help="skip the tarfile reference")
    parser.add_argument(
        "--format",
        default="gnu",
        choices=["gnu", "pax", "ustar"],
        help="tar format of the layer (gnu, tar's default, has one header per entry as "
        "Docker's layers mostly do; GNU tar's pax adds a record with atime and ctime to each)",
    )
    parser.add_argument(
        "--dir",
        default="/dev/shm",
        help="where to unpack (default tmpfs: the CPU cost alone; give an ext4 path for disks)",
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: tar and apply_layer then both keep owners and devices")

    work = tempfile.mkdtemp(prefix="berth-bench-layer-", dir=args.dir)
    try:
        src = os.path.join(work, "src")
        files, size = make_tree(src, args.mb)
        plain = os.path.join(work, "layer.tar")
        gz = plain + ".gz"
        subprocess.run(["tar", f"--format={args.format}", "-C", src, "-cf", plain, "."], check=True)
        with open(gz, "wb") as out:
            subprocess.run(["gzip", "-6", "-c", plain], stdout=out, check=True)
        shutil.rmtree(src)
        print(
            f"layer ({args.format}): {files} files, {size / 1e6:.1f} MB of data; "
            f"tar {os.path.getsize(plain) / 1e6:.1f} MB, gzip {os.path.getsize(gz) / 1e6:.1f} MB"
        )
        contenders: dict[str, Callable[[str], None]] = {
            "apply_layer plain": run_apply(plain),
            "tar -xf plain": run_tar(["-xf", plain]),
            "apply_layer gzip": run_apply(gz),
            "tar -xzf gzip": run_tar(["-xzf", gz]),
        }
        if not args.no_tarfile:
            contenders["tarfile r| plain"] = run_tarfile(plain, "r|")
            contenders["tarfile r|gz gzip"] = run_tarfile(gz, "r|gz")
        times: dict[str, list[float]] = {name: [] for name in contenders}
        names = list(contenders)
        for r in range(args.rounds + 1):  # round 0 warms up and is dropped
            order = names[r % len(names) :] + names[: r % len(names)]
            for i, name in enumerate(order):
                dest = os.path.join(work, f"dest-{r}-{i}")
                subprocess.run(["sync"], check=True)
                start = time.perf_counter()
                contenders[name](dest)
                elapsed = time.perf_counter() - start
                if r:
                    times[name].append(elapsed)
            for i in range(len(order)):
                shutil.rmtree(os.path.join(work, f"dest-{r}-{i}"))

        print(f"\n{args.rounds} rounds, seconds\n")
        print(f"| {'contender':<20} | median | min    |")
        print(f"|{'-' * 22}|-------:|-------:|")
        for name in names:
            print(
                f"| {name:<20} | {statistics.median(times[name]):6.3f} | {min(times[name]):6.3f} |"
            )
        print()
        for kind, ours, theirs in (
            ("plain", "apply_layer plain", "tar -xf plain"),
            ("gzip", "apply_layer gzip", "tar -xzf gzip"),
        ):
            ratio = statistics.median(times[ours]) / statistics.median(times[theirs])
            print(f"ratio {kind}: apply_layer / tar = {ratio:.2f}x (medians)")
        load = os.getloadavg()
        print(
            f"\nmachine: {os.cpu_count()} CPUs, kernel {platform.release()}, "
            f"Python {platform.python_version()}, load {load[0]:.2f}, work dir {work}"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
