"""Image references ("busybox", "ghcr.io/ns/app:1.2@sha256:...") normalized as Docker does.

The rules are those of distribution/reference ``ParseNormalizedNamed`` so that a name
means the same image in Berth as in Docker: "busybox" is docker.io/library/busybox,
a first component is a registry only when it looks like a host.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from berth.errors import InvalidArgument

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
DEFAULT_REGISTRY_HOST = "registry-1.docker.io"
OFFICIAL_REPO_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_TOTAL_LENGTH_MAX = 255

# Hex lengths of the digest algorithms Docker accepts (go-digest).
DIGEST_HEX_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE = re.compile(
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
)
_PATH_COMPONENT_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG_RE = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_DIGEST_RE = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}")
_ID_RE = re.compile(r"[a-f0-9]{64}")


class InvalidReference(InvalidArgument):
    """A text that is not a valid image reference."""


def _fail(text: str, reason: str) -> InvalidReference:
    return InvalidReference(f"invalid reference format: '{text}': {reason}")


def _check_digest(text: str, digest: str) -> None:
    if not _DIGEST_RE.fullmatch(digest):
        raise _fail(text, f"invalid digest format '{digest}': expected sha256:<64 hex digits>")
    algorithm, hexpart = digest.split(":", 1)
    expected = DIGEST_HEX_LENGTHS.get(algorithm)
    if expected is None:
        raise _fail(text, f"unsupported digest algorithm '{algorithm}': use sha256 or sha512")
    if len(hexpart) != expected or hexpart != hexpart.lower():
        raise _fail(
            text,
            f"invalid digest format '{digest}': {algorithm} needs {expected} lower-case hex digits",
        )


def _check_tag(text: str, tag: str) -> None:
    if not _TAG_RE.fullmatch(tag):
        raise _fail(
            text,
            f"invalid tag format '{tag}': up to 128 letters, digits, '_', '.' or '-', "
            "not starting with '.' or '-'",
        )


def _split_domain(name: str) -> tuple[str, str]:
    """Docker's splitDockerDomain: the first component is a registry only if it looks like one."""
    first, sep, rest = name.partition("/")
    if not sep:
        return DEFAULT_DOMAIN, OFFICIAL_REPO_PREFIX + name
    if first == "localhost" or any(c in first for c in ".:") or first.lower() != first:
        domain, path = first, rest
    else:
        domain, path = DEFAULT_DOMAIN, name
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = OFFICIAL_REPO_PREFIX + path
    return domain, path


@dataclass(frozen=True)
class Reference:
    """A normalized image reference; ``tag`` stays None when the user gave none."""

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """The full repository name: "docker.io/library/busybox"."""
        return f"{self.domain}/{self.path}"

    @property
    def familiar(self) -> str:
        """Docker's short form of the name, as ``docker images`` shows it."""
        if self.domain != DEFAULT_DOMAIN:
            return self.name
        path = self.path
        if path.startswith(OFFICIAL_REPO_PREFIX) and "/" not in path[len(OFFICIAL_REPO_PREFIX) :]:
            return path[len(OFFICIAL_REPO_PREFIX) :]
        return path

    @property
    def familiar_string(self) -> str:
        """The short form with the tag and digest as given: "busybox:1.36"."""
        return self.familiar + self._suffix(default_tag=False)

    @property
    def registry_host(self) -> str:
        """The host to connect to: Docker Hub's API lives on registry-1.docker.io."""
        return DEFAULT_REGISTRY_HOST if self.domain == DEFAULT_DOMAIN else self.domain

    @property
    def manifest_ref(self) -> str:
        """What to ask the registry for (/v2/<path>/manifests/<this>): the digest, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def with_tag(self, tag: str) -> Reference:
        """The same repository with ``tag`` (any digest is kept, as Docker's WithTag does)."""
        _check_tag(f"{self.name}:{tag}", tag)
        return Reference(self.domain, self.path, tag, self.digest)

    def with_digest(self, digest: str) -> Reference:
        """The same repository pinned to ``digest`` (any tag is kept)."""
        _check_digest(f"{self.name}@{digest}", digest)
        return Reference(self.domain, self.path, self.tag, digest)

    def _suffix(self, default_tag: bool) -> str:
        tag = self.tag
        if tag is None and self.digest is None and default_tag:
            tag = DEFAULT_TAG
        out = f":{tag}" if tag is not None else ""
        if self.digest is not None:
            out += f"@{self.digest}"
        return out

    def __str__(self) -> str:
        return self.name + self._suffix(default_tag=True)


def parse(text: str) -> Reference:
    """Parse and normalize ``text`` as ``docker pull`` does; raise InvalidReference."""
    if not text:
        raise _fail(text, "repository name must have at least one component")
    if _ID_RE.fullmatch(text):
        raise _fail(text, "a 64-character hexadecimal string is an image id, not a name")
    if ":" in text and "/" not in text and "@" not in text:
        algorithm, _, hexpart = text.partition(":")
        if algorithm in DIGEST_HEX_LENGTHS and re.fullmatch(r"[0-9a-fA-F]{32,}", hexpart):
            raise _fail(
                text, "a digest alone is not a name: give one such as 'busybox@" + text + "'"
            )

    rest, at, digest = text.partition("@")
    if at:
        _check_digest(text, digest)
    tag: str | None = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        _check_tag(text, tag)
    if not rest:
        raise _fail(text, "repository name must have at least one component")

    domain, path = _split_domain(rest)
    if path.lower() != path:
        raise _fail(text, "repository name must be lowercase")
    if not _DOMAIN_RE.fullmatch(domain):
        raise _fail(text, f"invalid registry host '{domain}'")
    for component in path.split("/"):
        if not _PATH_COMPONENT_RE.fullmatch(component):
            raise _fail(
                text,
                f"invalid repository name component '{component}': use lower-case letters and "
                "digits separated by '.', '_', '__' or '-'",
            )
    if len(domain) + 1 + len(path) > NAME_TOTAL_LENGTH_MAX:
        raise _fail(
            text, f"repository name must not be more than {NAME_TOTAL_LENGTH_MAX} characters"
        )
    return Reference(domain, path, tag, digest if at else None)
