"""The build cache: step key -> the step's result (image config and layers), in SQLite.

A key is a hash of the parent's ID, the instruction after expansion, the build args it
uses and, for COPY/ADD, the content hash of its sources (``step_key``). A result is
the intermediate image's config and layer descriptors; its blobs live in the image
store's content store, so a hit is only used while every layer blob is still there
(``ImageStore.gc`` may have freed it). The file lives under the daemon's root, so keys
survive restarts.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from typing import Any

from berth.images.db import ThreadLocalDB

_SCHEMA = """
CREATE TABLE IF NOT EXISTS steps (
    key TEXT PRIMARY KEY,
    result TEXT NOT NULL,            -- {"id", "config", "layers"}
    created REAL NOT NULL
);
"""


def step_key(parent: str, text: str, used_args: dict[str, str], extra: str = "") -> str:
    """The cache key of one step (hex sha256)."""
    doc = json.dumps(
        {"parent": parent, "text": text, "args": sorted(used_args.items()), "extra": extra},
        sort_keys=True,
    )
    return hashlib.sha256(doc.encode()).hexdigest()


class BuildCache:
    def __init__(self, root: str) -> None:
        os.makedirs(root, mode=0o700, exist_ok=True)
        self._meta = ThreadLocalDB(os.path.join(root, "cache.db"), _SCHEMA)

    @property
    def _db(self) -> sqlite3.Connection:
        return self._meta.connection()

    def get(self, key: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT result FROM steps WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        value = json.loads(row[0])
        return value if isinstance(value, dict) else None

    def put(self, key: str, result: dict[str, Any]) -> None:
        with self._db:
            self._db.execute(
                "INSERT INTO steps (key, result, created) VALUES (?, ?, ?) ON CONFLICT(key)"
                " DO UPDATE SET result = excluded.result, created = excluded.created",
                (key, json.dumps(result), time.time()),
            )

    def forget(self, key: str) -> None:
        with self._db:
            self._db.execute("DELETE FROM steps WHERE key = ?", (key,))

    def clear(self) -> int:
        with self._db:
            return self._db.execute("DELETE FROM steps").rowcount

    def close(self) -> None:
        self._meta.close()
