"""The engine's state: one SQLite file (WAL) under ``--root``.

A container's record is one row: its id, unique name, and a JSON document (spec,
the request as given, and its state). Only the daemon's event loop writes, so one
connection serves; every change is one transaction.
"""

from __future__ import annotations

import json
import os
import sqlite3
from typing import Any

from berth.errors import Conflict

_SCHEMA = """
CREATE TABLE IF NOT EXISTS containers (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created TEXT NOT NULL,
    record TEXT NOT NULL
);
"""


class EngineDB:
    def __init__(self, root: str) -> None:
        os.makedirs(root, mode=0o711, exist_ok=True)
        self.path = os.path.join(root, "engine.db")
        self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.executescript(_SCHEMA)

    def close(self) -> None:
        self.conn.close()

    def insert(self, container_id: str, name: str, created: str, record: dict[str, Any]) -> None:
        try:
            with self.conn:
                self.conn.execute("BEGIN IMMEDIATE")
                self.conn.execute(
                    "INSERT INTO containers (id, name, created, record) VALUES (?, ?, ?, ?)",
                    (container_id, name, created, json.dumps(record)),
                )
        except sqlite3.IntegrityError:
            row = self.conn.execute("SELECT id FROM containers WHERE name = ?", (name,)).fetchone()
            raise Conflict(
                f'Conflict. The container name "/{name}" is already in use by container'
                f' "{row[0] if row else "?"}". You have to remove (or rename) that container'
                " to be able to reuse that name."
            ) from None

    def update(self, container_id: str, record: dict[str, Any]) -> None:
        with self.conn:
            self.conn.execute(
                "UPDATE containers SET record = ? WHERE id = ?", (json.dumps(record), container_id)
            )

    def rename(self, container_id: str, name: str, record: dict[str, Any]) -> None:
        try:
            with self.conn:
                self.conn.execute(
                    "UPDATE containers SET name = ?, record = ? WHERE id = ?",
                    (name, json.dumps(record), container_id),
                )
        except sqlite3.IntegrityError:
            raise Conflict(
                f'Conflict. The container name "/{name}" is already in use: remove or rename'
                " that container to be able to reuse that name."
            ) from None

    def delete(self, container_id: str) -> None:
        with self.conn:
            self.conn.execute("DELETE FROM containers WHERE id = ?", (container_id,))

    def get(self, container_id: str) -> dict[str, Any] | None:
        row = self.conn.execute(
            "SELECT record FROM containers WHERE id = ?", (container_id,)
        ).fetchone()
        return json.loads(row[0]) if row else None

    def find(self, ref: str) -> list[str]:
        """Ids matching a full id, a name (with or without '/'), or an id prefix."""
        row = self.conn.execute("SELECT id FROM containers WHERE id = ?", (ref,)).fetchone()
        if row:
            return [row[0]]
        row = self.conn.execute(
            "SELECT id FROM containers WHERE name = ?", (ref.removeprefix("/"),)
        ).fetchone()
        if row:
            return [row[0]]
        if not ref or any(c not in "0123456789abcdef" for c in ref):
            return []
        return [
            r[0]
            for r in self.conn.execute("SELECT id FROM containers WHERE id LIKE ?", (ref + "%",))
        ]

    def all(self) -> list[dict[str, Any]]:
        return [
            json.loads(r[0])
            for r in self.conn.execute("SELECT record FROM containers ORDER BY created DESC")
        ]
