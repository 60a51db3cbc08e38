"""htpasswd files with bcrypt entries, as ``htpasswd -B`` writes and the CNCF registry reads.

A bcrypt check costs tens of milliseconds by design, and a client sends credentials with
every request: a successful check is remembered (by a hash of the password, never the
password itself) so only the first request of a client pays for it. The file is read
again when it changes, so users can be added without a restart.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import bcrypt

from berth.errors import ConfigError

_BCRYPT_PREFIXES = ("$2a$", "$2b$", "$2y$")


class Htpasswd:
    """Users and their bcrypt hashes from one htpasswd file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._users: dict[str, bytes] = {}
        self._stamp: tuple[int, int] | None = None
        self._verified: set[tuple[str, bytes, bytes]] = set()
        self._load()

    def _load(self) -> None:
        try:
            st = self.path.stat()
            text = self.path.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"cannot read htpasswd file {self.path}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"htpasswd file {self.path} is not utf-8 text") from None
        users: dict[str, bytes] = {}
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            user, sep, hashed = line.partition(":")
            if not sep or not user:
                raise ConfigError(f"htpasswd file {self.path} line {number}: expected user:hash")
            if not hashed.startswith(_BCRYPT_PREFIXES):
                raise ConfigError(
                    f"htpasswd file {self.path} line {number}: user {user!r} has no bcrypt "
                    "hash; create entries with 'htpasswd -B'"
                )
            users[user] = hashed.encode()
        if not users:
            raise ConfigError(f"htpasswd file {self.path} has no users")
        self._users = users
        self._stamp = (st.st_mtime_ns, st.st_size)
        self._verified.clear()

    def _reload_if_changed(self) -> None:
        try:
            st = self.path.stat()
        except OSError:
            return
        if (st.st_mtime_ns, st.st_size) != self._stamp:
            try:
                self._load()
            except ConfigError:
                pass  # keep serving the last good file rather than locking everyone out

    def check(self, user: str, password: str) -> bool:
        """Whether ``user`` may log in with ``password``. Blocking: call it from a thread."""
        with self._lock:
            self._reload_if_changed()
            hashed = self._users.get(user)
        secret = password.encode()
        if hashed is None:
            # spend the same time as a real check so user names cannot be probed
            bcrypt.checkpw(secret, _dummy())
            return False
        key = (user, hashed, hashlib.sha256(hashed + b"\0" + secret).digest())
        if key in self._verified:
            return True
        try:
            ok = bcrypt.checkpw(secret, hashed)
        except ValueError:
            return False
        if ok:
            with self._lock:
                self._verified.add(key)
        return ok

    def cached(self, user: str, password: str) -> bool:
        """A cheap check that succeeds only for credentials already verified (no bcrypt)."""
        with self._lock:
            self._reload_if_changed()
            hashed = self._users.get(user)
            if hashed is None:
                return False
            key = (user, hashed, hashlib.sha256(hashed + b"\0" + password.encode()).digest())
            return key in self._verified


_dummy_hash: bytes | None = None


def _dummy() -> bytes:
    """A bcrypt hash to check unknown users against, made on first use (it costs time)."""
    global _dummy_hash
    if _dummy_hash is None:
        _dummy_hash = bcrypt.hashpw(b"berth", bcrypt.gensalt(rounds=10))
    return _dummy_hash
