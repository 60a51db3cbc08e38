"""Entry point of ``berthd``: the Docker Engine API on a unix socket.

``berthd [--host unix:///run/berth/berth.sock] [--root /var/lib/berth]
[--exec-root /run/berth]``. State (SQLite, images, logs) lives under ``--root``;
runtime state, bundles, the monitor's socket and pidfile under ``--exec-root``. The
monitor (``berth.engine.monitor``) is found or started; it and the containers
outlive the daemon.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

DEFAULT_HOST = "unix:///run/berth/berth.sock"
DEFAULT_ROOT = "/var/lib/berth"
DEFAULT_EXEC_ROOT = "/run/berth"


def _socket_path(host: str) -> str:
    if host.startswith("unix://"):
        return host[len("unix://") :]
    if host.startswith("/"):
        return host
    raise SystemExit(f"berthd: unsupported --host {host!r}: only unix:///path sockets for now")


def _pid_alive(pidfile: str) -> int:
    try:
        with open(pidfile) as f:
            pid = int(f.read().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return 0


async def serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from berth.api.server import Services, make_app
    from berth.engine.containers import ContainerService
    from berth.engine.events import EventBus
    from berth.engine.images import ImageService
    from berth.images.store import ImageStore

    root = os.path.abspath(args.root)
    exec_root = os.path.abspath(args.exec_root)
    socket_path = _socket_path(args.host)
    for folder in (root, exec_root, os.path.dirname(socket_path)):
        os.makedirs(folder, mode=0o711, exist_ok=True)
    pidfile = os.path.join(exec_root, "berthd.pid")
    other = _pid_alive(pidfile)
    if other and other != os.getpid():
        print(f"berthd: another berthd (pid {other}) uses {exec_root}", file=sys.stderr)
        return 1
    with open(pidfile + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(pidfile + ".tmp", pidfile)

    store = ImageStore(os.path.join(root, "images"))
    events = EventBus()
    events.bind(asyncio.get_running_loop())
    containers = ContainerService(root, exec_root, store, events)
    images = ImageService(store, args.insecure_registry, events)

    def images_in_use() -> dict[str, int]:
        counts: dict[str, int] = {}
        for record in containers.db.all():
            image_id = record["Spec"]["image_id"]
            counts[image_id] = counts.get(image_id, 0) + 1
        return counts

    images.in_use = images_in_use
    runner: web.AppRunner | None = None
    try:
        await containers.startup()
        app = make_app(Services(containers, images, root))
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        if os.path.exists(socket_path):
            os.unlink(socket_path)
        site = web.UnixSite(runner, socket_path)
        await site.start()
        os.chmod(socket_path, 0o660)
        print(f"berthd: API listening on unix://{socket_path}", file=sys.stderr, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        print("berthd: stopping (containers keep running)", file=sys.stderr, flush=True)
    finally:
        if runner is not None:
            await runner.cleanup()
        await containers.shutdown()
        store.close()
        for path in (socket_path, pidfile):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="berthd", description="Berth's Engine API daemon")
    parser.add_argument("-H", "--host", default=DEFAULT_HOST, help="unix:///path of the socket")
    parser.add_argument("--root", default=DEFAULT_ROOT, help="persistent state")
    parser.add_argument("--exec-root", default=DEFAULT_EXEC_ROOT, help="runtime state")
    parser.add_argument(
        "--insecure-registry", action="append", default=[], help="registries reached over HTTP"
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("berthd: must run as root", file=sys.stderr)
        return 1
    os.umask(0o022)
    try:
        return asyncio.run(serve(args))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one line, never a traceback
        from berth.errors import BerthError

        if not isinstance(exc, BerthError | OSError):
            raise
        print(f"berthd: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
