"""SQLite for the image layer's metadata: one file, WAL, a connection per thread.

Pulls unpack layers on worker threads while the event loop's thread records the
image; sqlite3 connections must not cross threads, so each thread gets its own and
SQLite's own locking (with a busy timeout) orders the writers.
"""

from __future__ import annotations

import sqlite3
import threading


class ThreadLocalDB:
    def __init__(self, path: str, schema: str) -> None:
        self.path = path
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self.connection().executescript(schema)

    def connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path, isolation_level=None, timeout=30, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()
