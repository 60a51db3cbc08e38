"""Manifests, indexes, descriptors, platforms and image configs (OCI and Docker schema 2).

Parsing is strict where a mistake would be silent later (digests, sizes, ambiguous
documents) and tolerant where real registries differ (a missing mediaType in OCI
documents). Digests of manifests are always taken over the bytes as received, never
over a re-serialization: ``manifest_bytes`` is for documents Berth writes itself.
"""

from __future__ import annotations

import hashlib
import json
import platform as _platform
from dataclasses import dataclass, field
from typing import Any

from berth.errors import InvalidArgument, NotFound
from berth.images.content import parse_digest

# --- media types -------------------------------------------------------------------

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_NONDIST = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_LAYER_NONDIST_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_ZSTD = "application/vnd.docker.image.rootfs.diff.tar.zstd"
DOCKER_LAYER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar"
DOCKER_LAYER_FOREIGN_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

INDEX_MEDIA_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFEST_MEDIA_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
CONFIG_MEDIA_TYPES = frozenset({OCI_CONFIG, DOCKER_CONFIG})
SCHEMA1_MEDIA_TYPES = frozenset({DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED})
# Layer media type -> compression ("" for a plain tar).
LAYER_MEDIA_TYPES: dict[str, str] = {
    OCI_LAYER: "",
    OCI_LAYER_GZIP: "gzip",
    OCI_LAYER_ZSTD: "zstd",
    OCI_LAYER_NONDIST: "",
    OCI_LAYER_NONDIST_GZIP: "gzip",
    OCI_LAYER_NONDIST_ZSTD: "zstd",
    DOCKER_LAYER: "",
    DOCKER_LAYER_GZIP: "gzip",
    DOCKER_LAYER_ZSTD: "zstd",
    DOCKER_LAYER_FOREIGN: "",
    DOCKER_LAYER_FOREIGN_GZIP: "gzip",
}
FOREIGN_LAYER_MEDIA_TYPES = frozenset(
    {
        OCI_LAYER_NONDIST,
        OCI_LAYER_NONDIST_GZIP,
        OCI_LAYER_NONDIST_ZSTD,
        DOCKER_LAYER_FOREIGN,
        DOCKER_LAYER_FOREIGN_GZIP,
    }
)
# The Accept header a registry client sends for a manifest.
MANIFEST_ACCEPT = ", ".join([OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST])

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_DOCKER_REFERENCE_TYPE = "vnd.docker.reference.type"
ATTESTATION_MANIFEST = "attestation-manifest"

SCHEMA1_MESSAGE = (
    "manifest schema 1 is deprecated and not supported: push the image again with a current "
    "Docker or Berth (schema 2 / OCI)"
)


class UnsupportedManifest(InvalidArgument):
    """A manifest kind Berth refuses (schema 1, unknown media types)."""


class NoMatchingPlatform(NotFound):
    """An index has no manifest for the wanted platform."""


def layer_compression(media_type: str) -> str:
    """The compression of a layer media type: "gzip", "zstd" or "" (plain tar)."""
    try:
        return LAYER_MEDIA_TYPES[media_type]
    except KeyError:
        raise InvalidArgument(
            f"unsupported layer media type {media_type!r}: expected an OCI or Docker layer tar"
        ) from None


# --- small validators ----------------------------------------------------------------


def _obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidArgument(
            f"malformed {what}: expected a json object, got {type(value).__name__}"
        )
    return value


def _str(d: dict[str, Any], key: str, what: str, *, required: bool = False) -> str | None:
    value = d.get(key)
    if value is None:
        if required:
            raise InvalidArgument(f"malformed {what}: missing {key!r}")
        return None
    if not isinstance(value, str):
        raise InvalidArgument(f"malformed {what}: {key!r} must be a string, got {value!r}")
    return value


def _str_map(d: dict[str, Any], key: str, what: str) -> dict[str, str]:
    value = d.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise InvalidArgument(f"malformed {what}: {key!r} must map strings to strings")
    return dict(value)


def _str_list(d: dict[str, Any], key: str, what: str) -> list[str] | None:
    value = d.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"malformed {what}: {key!r} must be a list of strings")
    return list(value)


# --- platforms -------------------------------------------------------------------------

_UNAME_ARCH: dict[str, tuple[str, str | None]] = {
    "x86_64": ("amd64", None),
    "amd64": ("amd64", None),
    "i386": ("386", None),
    "i486": ("386", None),
    "i586": ("386", None),
    "i686": ("386", None),
    "aarch64": ("arm64", "v8"),
    "arm64": ("arm64", "v8"),
    "armv8l": ("arm", "v8"),
    "armv7l": ("arm", "v7"),
    "armv7": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "armv5tel": ("arm", "v5"),
    "armv5l": ("arm", "v5"),
    "ppc64le": ("ppc64le", None),
    "ppc64": ("ppc64", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
    "mips64": ("mips64", None),
    "loongarch64": ("loong64", None),
}
_KNOWN_OS = frozenset(
    {"linux", "windows", "darwin", "freebsd", "netbsd", "openbsd", "solaris", "illumos"}
)


def _normalize_arch(arch: str, variant: str | None) -> tuple[str, str]:
    """containerd's normalizeArch, except that arm64 keeps v8 as its explicit default."""
    arch, var = arch.lower(), (variant or "").lower()
    if arch in ("x86_64", "x86-64", "amd64"):
        return "amd64", "" if var == "v1" else var
    if arch in ("i386", "386"):
        return "386", ""
    if arch in ("aarch64", "arm64"):
        if var in ("", "8", "v8", "v8.0"):
            return "arm64", "v8"
        if var in ("9", "9.0", "v9.0"):
            return "arm64", "v9"
        return "arm64", var
    if arch == "armhf":
        return "arm", "v7"
    if arch == "armel":
        return "arm", "v6"
    if arch == "arm":
        if var in ("5", "6", "7", "8"):
            var = "v" + var
        return "arm", var
    return arch, var


@dataclass(frozen=True)
class Platform:
    """Where an image runs: os/architecture[/variant] as in OCI descriptors and configs."""

    os: str
    architecture: str
    variant: str | None = None
    os_version: str | None = None
    os_features: tuple[str, ...] | None = None

    @classmethod
    def host(cls) -> Platform:
        """This machine's platform, named as registries name it (x86_64 -> amd64)."""
        machine = _platform.machine().lower()
        arch, variant = _UNAME_ARCH.get(machine, (machine, None))
        return cls("linux", arch, variant)

    @classmethod
    def parse(cls, text: str) -> Platform:
        """Parse "linux/arm64/v8", "linux/amd64", "linux" (host arch) or "arm64" (linux)."""
        parts = text.strip().lower().split("/")
        if not 1 <= len(parts) <= 3 or not all(parts):
            raise InvalidArgument(
                f"invalid platform {text!r}: expected os/arch[/variant] such as linux/arm64/v8"
            )
        if len(parts) == 1:
            if parts[0] in _KNOWN_OS:
                host = cls.host()
                return cls(parts[0], host.architecture, host.variant)
            arch, variant = _normalize_arch(parts[0], None)
            return cls("linux", arch, variant or None)
        arch, variant = _normalize_arch(parts[1], parts[2] if len(parts) == 3 else None)
        return cls(parts[0], arch, variant or None)

    @classmethod
    def from_dict(cls, d: Any, what: str = "platform") -> Platform:
        d = _obj(d, what)
        features = _str_list(d, "os.features", what)
        return cls(
            os=_str(d, "os", what, required=True) or "",
            architecture=_str(d, "architecture", what, required=True) or "",
            variant=_str(d, "variant", what),
            os_version=_str(d, "os.version", what),
            os_features=tuple(features) if features is not None else None,
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.os_version:
            out["os.version"] = self.os_version
        if self.os_features:
            out["os.features"] = list(self.os_features)
        if self.variant:
            out["variant"] = self.variant
        return out

    def normalized(self) -> Platform:
        """The canonical spelling (aarch64 -> arm64/v8, armhf -> arm/v7) used for matching."""
        arch, variant = _normalize_arch(self.architecture, self.variant)
        return Platform(self.os.lower(), arch, variant or None, self.os_version, self.os_features)

    def matches(self, other: Platform) -> bool:
        """Docker's rules: same os and arch; variants equal, or one of them not given."""
        a, b = self.normalized(), other.normalized()
        if a.os != b.os or a.architecture != b.architecture:
            return False
        if a.variant and b.variant and a.variant != b.variant:
            return False
        return not (a.os_version and b.os_version and a.os_version != b.os_version)

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


# --- descriptors, manifests, indexes ------------------------------------------------


@dataclass
class Descriptor:
    """A typed, sized, content-addressed pointer to a blob (OCI descriptor)."""

    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    urls: list[str] = field(default_factory=list)
    artifact_type: str | None = None

    @classmethod
    def from_dict(cls, d: Any, what: str = "descriptor") -> Descriptor:
        d = _obj(d, what)
        media_type = _str(d, "mediaType", what, required=True) or ""
        digest = _str(d, "digest", what, required=True) or ""
        try:
            parse_digest(digest)
        except InvalidArgument as e:
            raise InvalidArgument(f"malformed {what}: {e}") from None
        size = d.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidArgument(
                f"malformed {what}: 'size' must be a non-negative integer, got {size!r}"
            )
        platform = d.get("platform")
        return cls(
            media_type=media_type,
            digest=digest,
            size=size,
            platform=Platform.from_dict(platform, f"{what} platform") if platform else None,
            annotations=_str_map(d, "annotations", what),
            urls=_str_list(d, "urls", what) or [],
            artifact_type=_str(d, "artifactType", what),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest}
        out["size"] = self.size
        if self.urls:
            out["urls"] = list(self.urls)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform is not None:
            out["platform"] = self.platform.to_dict()
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        return out


@dataclass
class Manifest:
    """An image manifest: one config and an ordered list of layers, base first."""

    media_type: str
    config: Descriptor
    layers: list[Descriptor]
    annotations: dict[str, str] = field(default_factory=dict)
    subject: Descriptor | None = None
    artifact_type: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schemaVersion": 2, "mediaType": self.media_type}
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        out["config"] = self.config.to_dict()
        out["layers"] = [layer.to_dict() for layer in self.layers]
        if self.subject is not None:
            out["subject"] = self.subject.to_dict()
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


@dataclass
class Index:
    """An image index (Docker: manifest list): one manifest per platform."""

    media_type: str
    manifests: list[Descriptor]
    annotations: dict[str, str] = field(default_factory=dict)
    subject: Descriptor | None = None
    artifact_type: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schemaVersion": 2, "mediaType": self.media_type}
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        out["manifests"] = [m.to_dict() for m in self.manifests]
        if self.subject is not None:
            out["subject"] = self.subject.to_dict()
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


def manifest_bytes(manifest: Manifest | Index) -> bytes:
    """Compact JSON of a manifest Berth writes; its digest is the digest of these bytes."""
    return json.dumps(manifest.to_dict(), separators=(",", ":"), ensure_ascii=False).encode()


_GENERIC_CONTENT_TYPES = frozenset(
    {"", "application/json", "text/plain", "application/octet-stream"}
)


def parse_manifest(data: bytes, media_type: str | None = None) -> Manifest | Index:
    """Parse a manifest or index, typed by ``media_type`` (Content-Type) or its own mediaType."""
    given = (media_type or "").split(";", 1)[0].strip().lower()
    if given in SCHEMA1_MEDIA_TYPES:
        raise UnsupportedManifest(SCHEMA1_MESSAGE)
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"malformed manifest: not valid json ({e})") from None
    doc = _obj(doc, "manifest")
    if doc.get("schemaVersion") == 1:
        raise UnsupportedManifest(SCHEMA1_MESSAGE)
    declared = _str(doc, "mediaType", "manifest")
    if declared in SCHEMA1_MEDIA_TYPES:
        raise UnsupportedManifest(SCHEMA1_MESSAGE)
    if doc.get("schemaVersion") != 2:
        raise InvalidArgument(
            f"malformed manifest: schemaVersion must be 2, got {doc.get('schemaVersion')!r}"
        )
    if given in _GENERIC_CONTENT_TYPES:
        given = ""
    if given and declared and given != declared:
        # The content type and the signed body disagree: trusting either invites confusion.
        raise InvalidArgument(
            f"manifest media type mismatch: served as {given!r} but the document says "
            f"{declared!r}: the registry or the pusher is broken"
        )
    kind = declared or given
    has_manifests = "manifests" in doc
    has_image = "config" in doc or "layers" in doc
    if not kind:
        if has_manifests and has_image:
            raise InvalidArgument(
                "malformed manifest: it has both 'manifests' and 'config'/'layers' and no "
                "mediaType, so it is ambiguous"
            )
        if has_manifests:
            kind = OCI_INDEX
        elif has_image:
            kind = OCI_MANIFEST
        else:
            raise InvalidArgument(
                "malformed manifest: no mediaType and neither 'manifests' nor 'config'/'layers'"
            )
    if kind in INDEX_MEDIA_TYPES:
        return _parse_index(doc, kind)
    if kind in MANIFEST_MEDIA_TYPES:
        return _parse_image_manifest(doc, kind)
    raise UnsupportedManifest(
        f"unsupported manifest media type {kind!r}: expected an OCI or Docker schema 2 "
        "manifest or index"
    )


def _subject(doc: dict[str, Any]) -> Descriptor | None:
    subject = doc.get("subject")
    return Descriptor.from_dict(subject, "manifest subject") if subject is not None else None


def _parse_index(doc: dict[str, Any], kind: str) -> Index:
    if "config" in doc or "layers" in doc:
        raise InvalidArgument(f"malformed index: a {kind} must not have 'config' or 'layers'")
    entries = doc.get("manifests")
    if not isinstance(entries, list):
        raise InvalidArgument("malformed index: 'manifests' must be a list")
    return Index(
        media_type=kind,
        manifests=[Descriptor.from_dict(m, f"index entry {i}") for i, m in enumerate(entries)],
        annotations=_str_map(doc, "annotations", "index"),
        subject=_subject(doc),
        artifact_type=_str(doc, "artifactType", "index"),
    )


def _parse_image_manifest(doc: dict[str, Any], kind: str) -> Manifest:
    if "manifests" in doc:
        raise InvalidArgument(f"malformed manifest: a {kind} must not have 'manifests'")
    if "config" not in doc:
        raise InvalidArgument("malformed manifest: missing 'config'")
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise InvalidArgument("malformed manifest: 'layers' must be a list")
    return Manifest(
        media_type=kind,
        config=Descriptor.from_dict(doc["config"], "manifest config"),
        layers=[
            Descriptor.from_dict(layer, f"manifest layer {i}") for i, layer in enumerate(layers)
        ],
        annotations=_str_map(doc, "annotations", "manifest"),
        subject=_subject(doc),
        artifact_type=_str(doc, "artifactType", "manifest"),
    )


def _is_attestation(desc: Descriptor) -> bool:
    if desc.annotations.get(ANNOTATION_DOCKER_REFERENCE_TYPE) == ATTESTATION_MANIFEST:
        return True
    p = desc.platform
    return p is not None and p.os == "unknown" and p.architecture == "unknown"


def select_platform(index: Index, want: Platform) -> Descriptor:
    """The index entry for ``want``: an exact variant first, then a compatible one."""
    best: Descriptor | None = None
    best_rank = -1
    wanted = want.normalized()
    for desc in index.manifests:
        if _is_attestation(desc):
            continue
        if desc.platform is None:
            rank = 0  # an entry that names no platform: a last resort, as in containerd
        elif desc.platform.matches(want):
            have = desc.platform.normalized()
            rank = 3 if have.variant == wanted.variant else 2 if not have.variant else 1
        else:
            continue
        if rank > best_rank:
            best, best_rank = desc, rank
    if best is None:
        available = ", ".join(
            str(d.platform) for d in index.manifests if d.platform and not _is_attestation(d)
        )
        raise NoMatchingPlatform(
            f"no matching manifest for {want} in the manifest list entries: {available or 'none'}"
        )
    return best


# --- image config ------------------------------------------------------------------------


class ImageConfig:
    """The image config JSON (architecture, os, runtime defaults, rootfs, history)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = _obj(data, "image config")
        rootfs = self.data.get("rootfs")
        if rootfs is not None:
            rootfs = _obj(rootfs, "image config rootfs")
            diff_ids = rootfs.get("diff_ids") or []
            if not isinstance(diff_ids, list):
                raise InvalidArgument("malformed image config: rootfs.diff_ids must be a list")
            for d in diff_ids:
                try:
                    parse_digest(d)
                except InvalidArgument as e:
                    raise InvalidArgument(f"malformed image config: rootfs.diff_ids: {e}") from None

    @classmethod
    def parse(cls, data: bytes) -> ImageConfig:
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise InvalidArgument(f"malformed image config: not valid json ({e})") from None
        return cls(_obj(doc, "image config"))

    def to_bytes(self) -> bytes:
        """Compact JSON in insertion order (Docker does not sort keys)."""
        return json.dumps(self.data, separators=(",", ":"), ensure_ascii=False).encode()

    @property
    def digest(self) -> str:
        """The digest of ``to_bytes()`` (the image id of a config Berth writes)."""
        return "sha256:" + hashlib.sha256(self.to_bytes()).hexdigest()

    @property
    def architecture(self) -> str:
        return str(self.data.get("architecture") or "")

    @property
    def os(self) -> str:
        return str(self.data.get("os") or "")

    @property
    def variant(self) -> str | None:
        value = self.data.get("variant")
        return str(value) if value else None

    @property
    def platform(self) -> Platform:
        os_version = self.data.get("os.version")
        return Platform(self.os, self.architecture, self.variant, os_version or None)

    @property
    def created(self) -> str | None:
        value = self.data.get("created")
        return str(value) if value else None

    @property
    def author(self) -> str | None:
        value = self.data.get("author")
        return str(value) if value else None

    @property
    def config(self) -> dict[str, Any]:
        """The runtime defaults ("config"): Env, Cmd, Entrypoint, WorkingDir, User, ..."""
        value = self.data.get("config")
        return value if isinstance(value, dict) else {}

    @property
    def env(self) -> list[str]:
        return list(self.config.get("Env") or [])

    @property
    def cmd(self) -> list[str] | None:
        value = self.config.get("Cmd")
        return list(value) if value is not None else None

    @property
    def entrypoint(self) -> list[str] | None:
        value = self.config.get("Entrypoint")
        return list(value) if value is not None else None

    @property
    def working_dir(self) -> str:
        return str(self.config.get("WorkingDir") or "")

    @property
    def user(self) -> str:
        return str(self.config.get("User") or "")

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.config.get("Labels") or {})

    @property
    def exposed_ports(self) -> list[str]:
        return list(self.config.get("ExposedPorts") or {})

    @property
    def volumes(self) -> list[str]:
        return list(self.config.get("Volumes") or {})

    @property
    def stop_signal(self) -> str | None:
        value = self.config.get("StopSignal")
        return str(value) if value else None

    @property
    def healthcheck(self) -> dict[str, Any] | None:
        value = self.config.get("Healthcheck")
        return value if isinstance(value, dict) else None

    @property
    def diff_ids(self) -> list[str]:
        rootfs = self.data.get("rootfs")
        if not isinstance(rootfs, dict):
            return []
        return list(rootfs.get("diff_ids") or [])

    @property
    def history(self) -> list[dict[str, Any]]:
        value = self.data.get("history")
        return [h for h in value if isinstance(h, dict)] if isinstance(value, list) else []

    @property
    def chain_ids(self) -> list[str]:
        return chain_ids(self.diff_ids)


def chain_ids(diff_ids: list[str]) -> list[str]:
    """OCI ChainIDs, which name committed snapshots so equal layer stacks are shared.

    ChainID(L0) = DiffID(L0); ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln)).
    """
    out: list[str] = []
    for diff_id in diff_ids:
        if not out:
            out.append(diff_id)
        else:
            h = hashlib.sha256(f"{out[-1]} {diff_id}".encode()).hexdigest()
            out.append(f"sha256:{h}")
    return out
