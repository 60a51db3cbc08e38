"""Registry credentials and auth challenges, shared with the docker CLI's config.json.

``berth login`` and ``docker login`` write the same ``auths`` entries, so either tool
can use what the other stored. Credential helpers (credsStore, credHelpers) are not
run yet: when one is configured for a host, Berth says so and uses ``auths``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from berth import log
from berth.errors import ConfigError

DOCKER_HUB_AUTH_KEY = "https://index.docker.io/v1/"
# Keys under which docker has stored Docker Hub credentials over the years.
_DOCKER_HUB_ALIASES = frozenset(
    {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
)


def default_config_path() -> str:
    """Where docker keeps its client config: $DOCKER_CONFIG/config.json or ~/.docker/."""
    directory = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    return os.path.join(directory, "config.json")


def _key_host(key: str) -> str:
    """docker's ConvertToHostname: "https://index.docker.io/v1/" -> "index.docker.io"."""
    for prefix in ("https://", "http://"):
        if key.startswith(prefix):
            key = key[len(prefix) :]
            break
    return key.split("/", 1)[0]


def _is_docker_hub(host: str) -> bool:
    return host in _DOCKER_HUB_ALIASES


def auth_key(host: str) -> str:
    """The ``auths`` key docker login uses for ``host`` (Docker Hub keeps its legacy URL)."""
    return DOCKER_HUB_AUTH_KEY if _is_docker_hub(host) else host


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


def _read_config(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read docker config {path}: {e}: fix or remove it") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"docker config {path} is not a json object: fix or remove it")
    return doc


def _decode_entry(entry: Any, key: str, path: str) -> Credentials | None:
    if not isinstance(entry, dict):
        return None
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            user, sep, password = base64.b64decode(auth, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise ConfigError(
                f"invalid auth for {key} in {path}: not base64 of user:password: "
                f"run `berth login {_key_host(key)}` again"
            ) from None
        if not sep:
            raise ConfigError(
                f"invalid auth for {key} in {path}: expected user:password: "
                f"run `berth login {_key_host(key)}` again"
            )
        return Credentials(user, password)
    name, secret = entry.get("username"), entry.get("password")
    if isinstance(name, str) and isinstance(secret, str) and name:
        return Credentials(name, secret)
    return None


def load_credentials(host: str, config_path: str | None = None) -> Credentials | None:
    """Credentials for registry ``host`` ("localhost:5000", "docker.io") from config.json."""
    path = config_path or default_config_path()
    doc = _read_config(path)
    wanted = {"docker.io"} | _DOCKER_HUB_ALIASES if _is_docker_hub(host) else {host}
    helpers = doc.get("credHelpers")
    helper = None
    if isinstance(helpers, dict):
        helper = next((helpers[k] for k in helpers if _key_host(k) in wanted), None)
    helper = helper or doc.get("credsStore")
    if helper:
        log.warning(
            f"credential helper {helper!r} in {path} is not supported yet: "
            f"using the 'auths' entries for {host}"
        )
    auths = doc.get("auths")
    if not isinstance(auths, dict):
        return None
    # An exact key first, then any key that names the same host (with a scheme or path).
    for key in sorted(auths, key=lambda k: (k != auth_key(host), k)):
        if _key_host(key) in wanted:
            found = _decode_entry(auths[key], key, path)
            if found is not None:
                return found
    return None


def _write_config(path: str, doc: dict[str, Any]) -> None:
    """Atomically replace config.json (mode 0600): a crash never leaves it half-written."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=".config.json.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o600)
            json.dump(doc, f, indent="\t")
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except OSError as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise ConfigError(f"cannot write docker config {path}: {e.strerror}") from None


def store_credentials(
    host: str, username: str, password: str, config_path: str | None = None
) -> str:
    """Write ``auths[host] = {"auth": base64(user:password)}``, keeping every other key."""
    path = config_path or default_config_path()
    doc = _read_config(path)
    auths = doc.get("auths")
    if not isinstance(auths, dict):
        auths = {}
    key = auth_key(host)
    raw = f"{username}:{password}".encode()
    entry = auths.get(key) if isinstance(auths.get(key), dict) else {}
    assert isinstance(entry, dict)
    entry = {k: v for k, v in entry.items() if k not in ("username", "password")}
    entry["auth"] = base64.b64encode(raw).decode()
    auths[key] = entry
    doc["auths"] = auths
    if doc.get("credsStore") or (doc.get("credHelpers") or {}).get(key):
        log.warning(
            f"credential helpers are not supported yet: storing the credentials for {host} "
            f"in {path}"
        )
    _write_config(path, doc)
    return path


def logout(host: str, config_path: str | None = None) -> bool:
    """Forget the credentials for ``host``; False when there were none."""
    path = config_path or default_config_path()
    doc = _read_config(path)
    auths = doc.get("auths")
    if not isinstance(auths, dict):
        return False
    wanted = {"docker.io"} | _DOCKER_HUB_ALIASES if _is_docker_hub(host) else {host}
    keys = [k for k in auths if _key_host(k) in wanted]
    if not keys:
        return False
    for key in keys:
        del auths[key]
    _write_config(path, doc)
    return True


# --- WWW-Authenticate ------------------------------------------------------------------

_PARAM_RE = re.compile(r'\s*([A-Za-z0-9_.-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))\s*,?')


@dataclass
class Challenge:
    """One parsed ``WWW-Authenticate`` challenge: its scheme and parameters."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)


def parse_challenges(header: str) -> list[Challenge]:
    """Parse ``Bearer realm="...",service="...",scope="..."`` (and Basic) challenges."""
    out: list[Challenge] = []
    pos = 0
    text = header.strip()
    while pos < len(text):
        m = re.compile(r"\s*([A-Za-z][A-Za-z0-9_-]*)\s*").match(text, pos)
        if not m:
            break
        challenge = Challenge(m.group(1).lower())
        pos = m.end()
        while pos < len(text):
            p = _PARAM_RE.match(text, pos)
            if not p:
                break
            value = p.group(2)
            value = re.sub(r"\\(.)", r"\1", value) if value is not None else p.group(3)
            challenge.params[p.group(1).lower()] = value
            pos = p.end()
        out.append(challenge)
        if pos < len(text) and text[pos] == ",":
            pos += 1
    return out


def merge_scopes(*scopes: str) -> list[str]:
    """Combine ``repository:name:actions`` scopes, uniting the actions of one resource."""
    actions: dict[str, list[str]] = {}
    for scope in scopes:
        for item in scope.split():
            resource, sep, acts = item.rpartition(":")
            if not sep or not resource:
                actions.setdefault(item, [])
                continue
            have = actions.setdefault(resource, [])
            for act in acts.split(","):
                if act and act not in have:
                    have.append(act)
    return [f"{r}:{','.join(a)}" if a else r for r, a in actions.items()]


@dataclass
class Token:
    value: str
    expires: float


class TokenCache:
    """Bearer tokens per (host, scopes) until shortly before they expire."""

    def __init__(self) -> None:
        self._tokens: dict[tuple[str, tuple[str, ...]], Token] = {}

    def get(self, host: str, scopes: list[str]) -> str | None:
        token = self._tokens.get((host, tuple(sorted(scopes))))
        if token is None or token.expires <= time.monotonic():
            return None
        return token.value

    def put(self, host: str, scopes: list[str], value: str, expires_in: float) -> None:
        # Leave a margin so a token does not expire between the check and its use.
        expires = time.monotonic() + max(expires_in - 10, expires_in / 2)
        self._tokens[(host, tuple(sorted(scopes)))] = Token(value, expires)

    def drop(self, host: str, scopes: list[str]) -> None:
        self._tokens.pop((host, tuple(sorted(scopes))), None)
