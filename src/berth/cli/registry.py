"""``berth registry``: run Berth's OCI distribution registry, and collect its garbage.

    berth registry serve [--listen HOST:PORT] --root DIR [--htpasswd FILE]
                         [--tls-cert FILE --tls-key FILE] [--no-fsync]
    berth registry gc --root DIR [--dry-run] [--upload-max-age SECONDS]

``serve`` prints one line with the URL it listens on (useful with port 0) and runs until
SIGINT or SIGTERM. aiohttp is imported only by ``serve``.
"""

from __future__ import annotations

import argparse
import sys

from berth.errors import BerthError, InvalidArgument

PROG = "berth registry"


class _Parser(argparse.ArgumentParser):
    """argparse that reports one line and exits 2, without the usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{PROG}: {message}; see '{PROG} --help'", file=sys.stderr)
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Berth's OCI distribution registry.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    serve = commands.add_parser("serve", help="serve a registry from a storage folder")
    serve.add_argument(
        "--listen", default="127.0.0.1:5000", metavar="HOST:PORT", help="address (port 0: any)"
    )
    serve.add_argument("--root", required=True, metavar="DIR", help="storage folder")
    serve.add_argument("--htpasswd", metavar="FILE", help="require basic auth (bcrypt entries)")
    serve.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this certificate")
    serve.add_argument("--tls-key", metavar="FILE", help="the certificate's private key")
    serve.add_argument(
        "--no-fsync", action="store_true", help="skip fsync on writes (faster, not crash safe)"
    )
    gc = commands.add_parser("gc", help="delete blobs no manifest references (run when idle)")
    gc.add_argument("--root", required=True, metavar="DIR", help="storage folder")
    gc.add_argument("--dry-run", action="store_true", help="report, delete nothing")
    gc.add_argument(
        "--upload-max-age",
        type=float,
        default=86400.0,
        metavar="SECONDS",
        help="also delete upload sessions idle this long (default: a day)",
    )
    return parser


def _split_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise InvalidArgument(
            f"invalid --listen {value!r}: expected HOST:PORT, like 127.0.0.1:5000"
        )
    return host, int(port)


def _quiet_aiohttp_logs() -> None:
    """aiohttp's own warnings as one line each, never a traceback."""
    import logging

    class OneLine(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            return f"{PROG}: {record.levelname.lower()}: {record.getMessage()}"

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLine())
    logger = logging.getLogger("aiohttp")
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    logger.propagate = False


def _serve(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from berth.distribution.server import RegistryServer, ssl_context_from_files

    host, port = _split_listen(args.listen)
    if bool(args.tls_cert) != bool(args.tls_key):
        raise InvalidArgument("--tls-cert and --tls-key go together: give both or neither")
    context = ssl_context_from_files(args.tls_cert, args.tls_key) if args.tls_cert else None
    server = RegistryServer(
        args.root, htpasswd=args.htpasswd, ssl_context=context, fsync=not args.no_fsync
    )
    _quiet_aiohttp_logs()

    async def run() -> None:
        try:
            await server.start(host, port)
        except OSError as e:
            raise InvalidArgument(
                f"cannot listen on {args.listen}: {e.strerror or e}".lower()
            ) from None
        print(f"{PROG}: listening on {server.url} (root {args.root})", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        try:
            await stop.wait()
        finally:
            await server.stop()

    asyncio.run(run())
    return 0


def _gc(args: argparse.Namespace) -> int:
    import os

    from berth.distribution.registry_store import RegistryStore
    from berth.errors import NotFound

    if not os.path.isdir(os.path.join(args.root, "blobs")):
        raise NotFound(f"no registry storage at {args.root}: expected a blobs folder there")
    report = RegistryStore(args.root).collect_garbage(
        dry_run=args.dry_run, upload_max_age=args.upload_max_age
    )
    verb = "would delete" if args.dry_run else "deleted"
    for digest in report.blobs_deleted:
        print(f"{verb} {digest}")
    print(
        f"{verb} {len(report.blobs_deleted)} blobs ({report.bytes_freed} bytes), "
        f"{report.links_removed} repository links, {report.uploads_removed} stale uploads; "
        f"kept {report.blobs_kept} blobs"
    )
    return 0


def main(argv: list[str]) -> int:
    parser = _parser()
    if not argv or argv[0] in {"-h", "--help", "help"}:
        parser.print_help()
        return 0 if argv else 2
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        return _gc(args)
    except BerthError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
