"""Entry point of ``berthd``: the Docker Engine API on unix sockets and TLS TCP.

``berthd [-H unix:///run/berth/berth.sock] [-H tcp://ADDR:PORT --tlsverify --tlscacert
CA --tlscert CERT --tlskey KEY] [--root /var/lib/berth] [--exec-root /run/berth]``.
State (SQLite, images, logs) lives under ``--root``; runtime state, bundles, the
monitor's socket and pidfile under ``--exec-root``. The monitor
(``berth.engine.monitor``) is found or started; it and the containers outlive the
daemon.

TCP is root on the host for whoever connects, so it is served only with TLS and
verified client certificates; plain TCP only on a loopback address and only with
``--insecure-tcp`` (Docker 27+ likewise refuses unauthenticated TCP). A unix socket
is mode 0660, group ``berth`` when that group exists.

``$BERTH_DEFAULT_HOST``, ``$BERTH_ROOT`` and ``$BERTH_EXEC_ROOT`` replace the
defaults (the ``berth`` CLI's auto-start uses the same, so a private engine can be
started and found without touching /run/berth).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import signal
import sys
from typing import Any

DEFAULT_HOST = "unix:///run/berth/berth.sock"
DEFAULT_ROOT = "/var/lib/berth"
DEFAULT_EXEC_ROOT = "/run/berth"
SOCKET_GROUP = "berth"
PLAIN_PORT = 2375
TLS_PORT = 2376


def default_host() -> str:
    return os.environ.get("BERTH_DEFAULT_HOST") or DEFAULT_HOST


def default_root() -> str:
    return os.environ.get("BERTH_ROOT") or DEFAULT_ROOT


def default_exec_root() -> str:
    return os.environ.get("BERTH_EXEC_ROOT") or DEFAULT_EXEC_ROOT


class Listen:
    """One ``-H``: a unix socket path, or a TCP address and port."""

    def __init__(self, text: str, path: str = "", address: str = "", port: int = 0) -> None:
        self.text = text
        self.path = path
        self.address = address
        self.port = port

    @property
    def tcp(self) -> bool:
        return not self.path

    @property
    def loopback(self) -> bool:
        if self.address == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.address).is_loopback
        except ValueError:
            return False


class UsageError(Exception):
    """A bad option: one line on stderr, exit code 1."""


def parse_host(text: str, *, tls: bool) -> Listen:
    if text.startswith("unix://"):
        path = text[len("unix://") :]
        if not path.startswith("/"):
            raise UsageError(f"invalid --host {text!r}: use unix:///absolute/path")
        return Listen(text, path=path)
    if text.startswith("/"):
        return Listen(f"unix://{text}", path=text)
    if text.startswith("tcp://"):
        rest = text[len("tcp://") :].rstrip("/")
        if rest.startswith("["):  # [::1]:2376
            address, _, port = rest[1:].partition("]")
            port = port.lstrip(":")
        elif rest.count(":") == 1 or ":" not in rest:
            address, _, port = rest.partition(":")
        else:
            raise UsageError(f"invalid --host {text!r}: write IPv6 addresses as tcp://[ADDR]:PORT")
        if port and not port.isdigit():
            raise UsageError(f"invalid --host {text!r}: the port must be a number")
        number = int(port) if port else (TLS_PORT if tls else PLAIN_PORT)
        if not 0 < number < 65536:
            raise UsageError(f"invalid --host {text!r}: the port must be 1-65535")
        return Listen(text, address=address or "0.0.0.0", port=number)
    raise UsageError(f"unsupported --host {text!r}: use unix:///path or tcp://ADDR:PORT")


def check_listeners(args: argparse.Namespace) -> list[Listen]:
    """The ``-H`` values, refusing TCP that anyone could reach without a certificate."""
    listeners = [parse_host(h, tls=args.tlsverify) for h in (args.host or [default_host()])]
    tcp = [listen for listen in listeners if listen.tcp]
    if not tcp:
        return listeners
    if args.tlsverify:
        for option in ("tlscacert", "tlscert", "tlskey"):
            path = getattr(args, option)
            if not path:
                raise UsageError(f"--tlsverify needs --{option}")
            if not os.access(path, os.R_OK):
                raise UsageError(f"--{option} {path}: cannot read the file")
        return listeners
    for listen in tcp:
        if not (args.insecure_tcp and listen.loopback):
            raise UsageError(
                f"refusing to serve {listen.text} without TLS: anyone who connects is root"
                " on this host. Give --tlsverify --tlscacert CA --tlscert CERT --tlskey KEY"
                " (or --insecure-tcp, for a loopback address only)"
            )
    return listeners


def ssl_context(args: argparse.Namespace) -> Any:
    """TLS 1.2+ with a client certificate signed by ``--tlscacert`` required."""
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(args.tlscert, args.tlskey)
        context.load_verify_locations(cafile=args.tlscacert)
    except (ssl.SSLError, OSError) as exc:
        raise UsageError(f"cannot load the TLS certificates: {exc}") from None
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def _socket_group() -> int | None:
    import grp

    try:
        return grp.getgrnam(SOCKET_GROUP).gr_gid
    except KeyError:
        return None


def _pid_alive(pidfile: str) -> int:
    try:
        with open(pidfile) as f:
            pid = int(f.read().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return 0


def _say(message: str) -> None:
    print(f"berthd: {message}", file=sys.stderr, flush=True)


async def serve(args: argparse.Namespace, listeners: list[Listen]) -> int:
    from aiohttp import web

    from berth.api.server import Services, make_app
    from berth.daemon.tls import TLSListener
    from berth.engine.containers import ContainerService
    from berth.engine.events import EventBus
    from berth.engine.images import ImageService
    from berth.images.store import ImageStore

    root = os.path.abspath(args.root)
    exec_root = os.path.abspath(args.exec_root)
    sockets = [listen.path for listen in listeners if not listen.tcp]
    for folder in (root, exec_root, *(os.path.dirname(path) for path in sockets)):
        os.makedirs(folder, mode=0o711, exist_ok=True)
    context = ssl_context(args) if args.tlsverify else None
    pidfile = os.path.join(exec_root, "berthd.pid")
    other = _pid_alive(pidfile)
    if other and other != os.getpid():
        _say(f"another berthd (pid {other}) uses {exec_root}")
        return 1
    with open(pidfile + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(pidfile + ".tmp", pidfile)

    store = ImageStore(os.path.join(root, "images"))
    events = EventBus()
    events.bind(asyncio.get_running_loop())
    containers = ContainerService(root, exec_root, store, events)
    containers.configure_runtimes(args.default_runtime, args.add_runtime)
    images = ImageService(store, args.insecure_registry, events)

    def images_in_use() -> dict[str, int]:
        counts: dict[str, int] = {}
        for record in containers.db.all():
            image_id = record["Spec"]["image_id"]
            counts[image_id] = counts.get(image_id, 0) + 1
        return counts

    images.in_use = images_in_use
    runner: web.AppRunner | None = None
    made: list[str] = []
    fronts: list[TLSListener] = []
    try:
        containers.networks.bip = args.bip
        await containers.networks.startup()
        await containers.startup()
        app = make_app(Services(containers, images, root))
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        gid = _socket_group()
        for listen in listeners:
            if listen.tcp:
                if context is not None:
                    assert runner.server is not None  # set by setup()
                    front = TLSListener(runner.server, context, listen.address, listen.port)
                    await front.start()
                    fronts.append(front)
                else:
                    await web.TCPSite(runner, listen.address, listen.port).start()
                kind = "TLS, client certificates required" if context else "NO TLS"
                _say(f"API listening on {listen.text} ({kind})")
                if context is None:
                    _say(
                        f"WARNING: {listen.text} has no TLS: any local user who connects"
                        " controls the engine as root"
                    )
                continue
            if os.path.exists(listen.path):
                os.unlink(listen.path)
            await web.UnixSite(runner, listen.path).start()
            made.append(listen.path)
            if gid is not None:
                os.chown(listen.path, 0, gid)
            os.chmod(listen.path, 0o660)
            _say(f"API listening on unix://{listen.path}")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        _say("stopping (containers keep running)")
    finally:
        for front in fronts:
            await front.close()
        if runner is not None:
            await runner.cleanup()
        await containers.networks.shutdown()
        await containers.shutdown()
        store.close()
        for path in (*made, pidfile):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
    return 0


def build_parser(prog: str = "berthd") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Berth's Engine API daemon")
    parser.add_argument(
        "-H",
        "--host",
        action="append",
        metavar="HOST",
        help=f"unix:///path or tcp://ADDR:PORT, repeatable (default {DEFAULT_HOST})",
    )
    parser.add_argument("--root", default=default_root(), help="persistent state")
    parser.add_argument("--exec-root", default=default_exec_root(), help="runtime state")
    parser.add_argument(
        "--insecure-registry", action="append", default=[], help="registries reached over HTTP"
    )
    parser.add_argument(
        "--tlsverify", action="store_true", help="TLS on tcp:// with client certificates required"
    )
    parser.add_argument(
        "--bip", default="", help="the default bridge's gateway/prefix (e.g. 172.30.0.1/16)"
    )
    parser.add_argument("--tlscacert", metavar="FILE", help="CA that signs client certificates")
    parser.add_argument("--tlscert", metavar="FILE", help="the server's certificate")
    parser.add_argument("--tlskey", metavar="FILE", help="the server's private key")
    parser.add_argument(
        "--default-runtime",
        default="",
        metavar="NAME",
        help="the OCI runtime of containers that name none (default: berth-runtime)",
    )
    parser.add_argument(
        "--add-runtime",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="an OCI runtime with runc's command line, selectable with --runtime NAME",
    )
    parser.add_argument(
        "--insecure-tcp",
        action="store_true",
        help="allow tcp:// without TLS on a loopback address (any local user is root)",
    )
    return parser


def main(argv: list[str] | None = None, prog: str = "berthd") -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        listeners = check_listeners(args)
    except UsageError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    if os.geteuid() != 0:
        print(f"{prog}: must run as root", file=sys.stderr)
        return 1
    os.umask(0o022)
    try:
        return asyncio.run(serve(args, listeners))
    except KeyboardInterrupt:
        return 130
    except UsageError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # one line, never a traceback
        from berth.errors import BerthError

        if not isinstance(exc, BerthError | OSError):
            raise
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
