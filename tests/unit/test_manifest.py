"""Tests for berth.images.manifest, on real upstream images when the fixtures are present."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from berth.errors import InvalidArgument, NotFound
from berth.images import manifest as m
from berth.images.manifest import (
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
    NoMatchingPlatform,
    Platform,
    UnsupportedManifest,
    chain_ids,
    manifest_bytes,
    parse_manifest,
    select_platform,
)

FIXTURES = Path(__file__).resolve().parents[2] / ".." / "shared" / "fixtures"
BUSYBOX = FIXTURES / "busybox-1.38-musl-oci"
PYTHON = FIXTURES / "python-3.12-alpine-oci"
needs_fixtures = pytest.mark.skipif(
    not BUSYBOX.is_dir() or not PYTHON.is_dir(),
    reason=f"real image fixtures not found at {FIXTURES} (only on the project's build machines)",
)

BUSYBOX_MANIFEST = "sha256:a34ce92094b7b100a98fbd21411a92825f6827b1bc5f6918c253516c90556998"
BUSYBOX_CONFIG = "sha256:654fc8fd836e35f4a64586bddf8f59b9029b48cf80f520834c6c98ca8ab5def9"
BUSYBOX_LAYER = "sha256:5c3b447848a98e48dce106cb3e6acbd4fb6f9b26ee778798137349ce01f4d3c1"
BUSYBOX_DIFF_ID = "sha256:0f8918d0fe4f272ce8acece89916a9ba0b240584d3c1dd1943f343f69b0d0ffb"


def blob(layout: Path, digest: str) -> bytes:
    data = (layout / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()
    assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
    return data


def dig(c: str) -> str:
    return "sha256:" + c * 64


def desc(media_type: str, c: str, size: int = 1, **kw: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": dig(c), "size": size, **kw}


# --- real images -----------------------------------------------------------------------


@needs_fixtures
def test_busybox_layout() -> None:
    index = parse_manifest((BUSYBOX / "index.json").read_bytes())
    assert isinstance(index, Index)
    assert index.media_type == m.OCI_INDEX
    entry = select_platform(index, Platform("linux", "amd64"))
    assert entry.digest == BUSYBOX_MANIFEST
    assert entry.annotations[m.ANNOTATION_REF_NAME] == "busybox:1.38.0-musl"

    raw = blob(BUSYBOX, entry.digest)
    assert len(raw) == entry.size
    manifest = parse_manifest(raw, entry.media_type)
    assert isinstance(manifest, Manifest)
    assert manifest.media_type == m.OCI_MANIFEST
    assert manifest.config.digest == BUSYBOX_CONFIG
    assert manifest.config.media_type == m.OCI_CONFIG
    assert [layer.digest for layer in manifest.layers] == [BUSYBOX_LAYER]
    assert manifest.layers[0].size == 886160
    assert m.layer_compression(manifest.layers[0].media_type) == "gzip"
    # A round trip keeps the content (not the bytes: upstream pretty-prints).
    assert json.loads(manifest_bytes(manifest)) == json.loads(raw)

    config = ImageConfig.parse(blob(BUSYBOX, manifest.config.digest))
    assert config.platform == Platform("linux", "amd64")
    assert config.cmd == ["sh"]
    assert config.entrypoint is None
    assert config.env[0].startswith("PATH=")
    assert config.diff_ids == [BUSYBOX_DIFF_ID]
    # The chain ID of a one-layer image is its diff ID.
    assert config.chain_ids == chain_ids(config.diff_ids) == [BUSYBOX_DIFF_ID]
    assert config.history[0]["created_by"].startswith("BusyBox 1.38.0")
    assert json.loads(config.to_bytes()) == json.loads(blob(BUSYBOX, BUSYBOX_CONFIG))


@needs_fixtures
def test_python_alpine_layout() -> None:
    raw_index = (PYTHON / "index.json").read_bytes()
    assert "mediaType" not in json.loads(raw_index)  # detected by its fields
    index = parse_manifest(raw_index)
    assert isinstance(index, Index)
    assert len(index.manifests) == 2
    names = [d.annotations[m.ANNOTATION_REF_NAME] for d in index.manifests]
    assert names == ["python-3.12.11-alpine3.22", "alpine-3.22.1"]
    # Both are linux/amd64: the first match wins, as in Docker.
    assert select_platform(index, Platform.parse("linux/amd64")) is index.manifests[0]
    with pytest.raises(NoMatchingPlatform, match="linux/amd64, linux/amd64"):
        select_platform(index, Platform.parse("linux/arm64"))

    layer_counts = []
    for entry in index.manifests:
        manifest = parse_manifest(blob(PYTHON, entry.digest))
        assert isinstance(manifest, Manifest)
        config = ImageConfig.parse(blob(PYTHON, manifest.config.digest))
        assert len(config.diff_ids) == len(manifest.layers)
        chains = config.chain_ids
        assert chains[0] == config.diff_ids[0]
        for i in range(1, len(chains)):
            expected = hashlib.sha256(f"{chains[i - 1]} {config.diff_ids[i]}".encode())
            assert chains[i] == "sha256:" + expected.hexdigest()
        layer_counts.append(len(manifest.layers))
    assert layer_counts == [4, 1]


# --- chain ids -------------------------------------------------------------------------


def test_chain_ids() -> None:
    a, b, c = dig("a"), dig("b"), dig("c")
    ab = "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    abc = "sha256:" + hashlib.sha256(f"{ab} {c}".encode()).hexdigest()
    assert chain_ids([]) == []
    assert chain_ids([a]) == [a]
    assert chain_ids([a, b, c]) == [a, ab, abc]


# --- parsing ---------------------------------------------------------------------------


def image_manifest(**extra: Any) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "config": desc(m.OCI_CONFIG, "c", 10),
        "layers": [desc(m.OCI_LAYER_GZIP, "1", 100), desc(m.OCI_LAYER_ZSTD, "2", 200)],
        **extra,
    }


def test_media_type_less_oci_manifest() -> None:
    parsed = parse_manifest(json.dumps(image_manifest()).encode())
    assert isinstance(parsed, Manifest)
    assert parsed.media_type == m.OCI_MANIFEST
    assert [layer.size for layer in parsed.layers] == [100, 200]


def test_media_type_from_content_type() -> None:
    raw = json.dumps(image_manifest()).encode()
    parsed = parse_manifest(raw, m.DOCKER_MANIFEST + "; charset=utf-8")
    assert parsed.media_type == m.DOCKER_MANIFEST
    assert parse_manifest(raw, "application/json").media_type == m.OCI_MANIFEST


def test_content_type_contradicting_document_is_refused() -> None:
    raw = json.dumps(image_manifest(mediaType=m.OCI_MANIFEST)).encode()
    with pytest.raises(InvalidArgument, match="media type mismatch"):
        parse_manifest(raw, m.OCI_INDEX)


def test_docker_manifest_list() -> None:
    doc = {
        "schemaVersion": 2,
        "mediaType": m.DOCKER_MANIFEST_LIST,
        "manifests": [
            desc(m.DOCKER_MANIFEST, "1", platform={"architecture": "amd64", "os": "linux"}),
        ],
    }
    parsed = parse_manifest(json.dumps(doc).encode())
    assert isinstance(parsed, Index)
    assert parsed.media_type == m.DOCKER_MANIFEST_LIST
    assert json.loads(manifest_bytes(parsed)) == doc


@pytest.mark.parametrize(
    "doc",
    [
        {"schemaVersion": 1, "name": "library/busybox", "tag": "latest", "fsLayers": []},
        {"schemaVersion": 1, "mediaType": m.DOCKER_SCHEMA1_SIGNED, "signatures": []},
    ],
)
def test_schema1_refused(doc: dict[str, Any]) -> None:
    with pytest.raises(UnsupportedManifest) as info:
        parse_manifest(json.dumps(doc).encode())
    assert str(info.value) == m.SCHEMA1_MESSAGE
    assert str(info.value).startswith("manifest schema 1 is deprecated and not supported")


def test_schema1_refused_by_content_type() -> None:
    with pytest.raises(UnsupportedManifest, match="schema 1"):
        parse_manifest(b"{}", m.DOCKER_SCHEMA1_SIGNED)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"not json", "not valid json"),
        (b"[]", "expected a json object"),
        (b'{"schemaVersion": 3, "manifests": []}', "schemaVersion must be 2"),
        (b'{"schemaVersion": 2}', "neither"),
        (b'{"schemaVersion": 2, "manifests": [], "layers": []}', "ambiguous"),
        (b'{"schemaVersion": 2, "manifests": {}}', "'manifests' must be a list"),
        (b'{"schemaVersion": 2, "layers": []}', "missing 'config'"),
        (
            json.dumps({**image_manifest(), "layers": [{"mediaType": "x", "size": 1}]}).encode(),
            "manifest layer 0: missing 'digest'",
        ),
        (
            json.dumps({**image_manifest(), "config": desc(m.OCI_CONFIG, "z")}).encode(),
            "invalid digest",
        ),
        (
            json.dumps({**image_manifest(), "config": desc(m.OCI_CONFIG, "c", -1)}).encode(),
            "'size' must be a non-negative integer",
        ),
        (
            json.dumps({**image_manifest(), "annotations": {"a": 1}}).encode(),
            "'annotations' must map strings to strings",
        ),
    ],
)
def test_malformed(raw: bytes, fragment: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_manifest(raw)
    assert fragment in str(info.value)


def test_unknown_media_type() -> None:
    raw = json.dumps(image_manifest(mediaType="application/vnd.example+json")).encode()
    with pytest.raises(UnsupportedManifest, match=r"application/vnd\.example"):
        parse_manifest(raw)


def test_descriptor_round_trip() -> None:
    d = {
        "mediaType": m.OCI_MANIFEST,
        "digest": dig("d"),
        "size": 7,
        "urls": ["https://example.com/blob"],
        "annotations": {"k": "v"},
        "platform": {
            "architecture": "amd64",
            "os": "windows",
            "os.version": "10.0.17763.1",
            "os.features": ["win32k"],
        },
        "artifactType": "application/vnd.example",
    }
    parsed = Descriptor.from_dict(d)
    assert parsed.platform == Platform("windows", "amd64", None, "10.0.17763.1", ("win32k",))
    assert parsed.to_dict() == d


def test_manifest_with_subject_round_trip() -> None:
    doc = image_manifest(
        mediaType=m.OCI_MANIFEST,
        artifactType="application/vnd.example.sbom",
        subject=desc(m.OCI_MANIFEST, "5"),
        annotations={"a": "b"},
    )
    parsed = parse_manifest(json.dumps(doc).encode())
    assert isinstance(parsed, Manifest)
    assert parsed.subject is not None and parsed.subject.digest == dig("5")
    assert json.loads(manifest_bytes(parsed)) == doc
    assert b" " not in manifest_bytes(parsed)  # compact


# --- platforms -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("machine", "expected"),
    [
        ("x86_64", Platform("linux", "amd64")),
        ("aarch64", Platform("linux", "arm64", "v8")),
        ("armv7l", Platform("linux", "arm", "v7")),
        ("armv6l", Platform("linux", "arm", "v6")),
        ("i686", Platform("linux", "386")),
        ("ppc64le", Platform("linux", "ppc64le")),
        ("s390x", Platform("linux", "s390x")),
        ("riscv64", Platform("linux", "riscv64")),
    ],
)
def test_host(machine: str, expected: Platform) -> None:
    with mock.patch("platform.machine", return_value=machine):
        assert Platform.host() == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("linux/arm64/v8", Platform("linux", "arm64", "v8")),
        ("linux/arm64", Platform("linux", "arm64", "v8")),
        ("linux/aarch64", Platform("linux", "arm64", "v8")),
        ("linux/amd64", Platform("linux", "amd64")),
        ("linux/x86_64", Platform("linux", "amd64")),
        ("linux/arm/v7", Platform("linux", "arm", "v7")),
        ("linux/armhf", Platform("linux", "arm", "v7")),
        ("Linux/AMD64", Platform("linux", "amd64")),
        ("arm64", Platform("linux", "arm64", "v8")),
    ],
)
def test_parse_platform(text: str, expected: Platform) -> None:
    assert Platform.parse(text) == expected


@pytest.mark.parametrize("text", ["", "linux/", "a/b/c/d", "/amd64"])
def test_parse_platform_invalid(text: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid platform"):
        Platform.parse(text)


def test_matches() -> None:
    arm64 = Platform("linux", "arm64")
    assert arm64.matches(Platform("linux", "arm64", "v8"))  # v8 is arm64's default
    assert Platform("linux", "aarch64").matches(arm64)
    assert not arm64.matches(Platform("linux", "arm64", "v9"))
    assert Platform("linux", "arm").matches(Platform("linux", "arm", "v6"))  # missing variant
    assert not Platform("linux", "arm", "v7").matches(Platform("linux", "arm", "v6"))
    assert not Platform("linux", "amd64").matches(Platform("windows", "amd64"))
    assert not Platform("linux", "amd64").matches(arm64)
    assert str(Platform("linux", "arm", "v7")) == "linux/arm/v7"


def synthetic_index() -> Index:
    def entry(
        c: str, os: str, arch: str, variant: str | None = None, *, attestation: bool = False
    ) -> Descriptor:
        p = {"os": os, "architecture": arch, **({"variant": variant} if variant else {})}
        d = desc(m.OCI_MANIFEST, c, platform=p)
        if attestation:
            d["annotations"] = {m.ANNOTATION_DOCKER_REFERENCE_TYPE: m.ATTESTATION_MANIFEST}
        return Descriptor.from_dict(d)

    return Index(
        m.OCI_INDEX,
        [
            entry("a", "unknown", "unknown", attestation=True),
            entry("1", "linux", "amd64"),
            entry("2", "linux", "arm", "v6"),
            entry("3", "linux", "arm", "v7"),
            entry("4", "linux", "arm64", "v8"),
            entry("5", "linux", "386"),
            entry("b", "linux", "arm64", attestation=True),
        ],
    )


@pytest.mark.parametrize(
    ("want", "digest"),
    [
        ("linux/amd64", dig("1")),
        ("linux/arm/v6", dig("2")),
        ("linux/arm/v7", dig("3")),
        ("linux/arm64", dig("4")),
        ("linux/arm64/v8", dig("4")),
        ("linux/386", dig("5")),
    ],
)
def test_select_platform(want: str, digest: str) -> None:
    assert select_platform(synthetic_index(), Platform.parse(want)).digest == digest


def test_select_platform_prefers_exact_variant() -> None:
    index = synthetic_index()
    bare_arm = desc(m.OCI_MANIFEST, "9", platform={"os": "linux", "architecture": "arm"})
    index.manifests.insert(0, Descriptor.from_dict(bare_arm))
    assert select_platform(index, Platform.parse("linux/arm/v7")).digest == dig("3")
    assert select_platform(index, Platform("linux", "arm", "v5")).digest == dig("9")


def test_no_matching_platform_lists_entries() -> None:
    def entry(c: str, os: str, arch: str) -> Descriptor:
        platform = {"os": os, "architecture": arch}
        return Descriptor.from_dict(desc(m.DOCKER_MANIFEST, c, platform=platform))

    index = Index(
        m.DOCKER_MANIFEST_LIST,
        [
            entry("1", "linux", "amd64"),
            entry("2", "linux", "386"),
            entry("3", "unknown", "unknown"),
        ],
    )
    with pytest.raises(NoMatchingPlatform) as info:
        select_platform(index, Platform.parse("linux/arm64/v8"))
    assert str(info.value) == (
        "no matching manifest for linux/arm64/v8 in the manifest list entries: "
        "linux/amd64, linux/386"
    )
    assert isinstance(info.value, NotFound)


# --- image config ------------------------------------------------------------------------


def test_image_config_accessors_and_bytes() -> None:
    data = {
        "architecture": "arm64",
        "variant": "v8",
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": {
            "Env": ["A=1"],
            "Entrypoint": ["/init"],
            "Cmd": None,
            "WorkingDir": "/app",
            "User": "1000:1000",
            "Labels": {"l": "v"},
            "ExposedPorts": {"80/tcp": {}},
            "Volumes": {"/data": {}},
            "StopSignal": "SIGQUIT",
            "Healthcheck": {"Test": ["CMD", "true"]},
        },
        "rootfs": {"type": "layers", "diff_ids": [dig("1"), dig("2")]},
        "history": [{"created_by": "x"}],
    }
    config = ImageConfig(data)
    assert config.platform == Platform("linux", "arm64", "v8")
    assert config.entrypoint == ["/init"] and config.cmd is None
    assert config.env == ["A=1"] and config.working_dir == "/app" and config.user == "1000:1000"
    assert config.labels == {"l": "v"} and config.exposed_ports == ["80/tcp"]
    assert config.volumes == ["/data"] and config.stop_signal == "SIGQUIT"
    assert config.healthcheck == {"Test": ["CMD", "true"]}
    assert config.created == "2024-01-01T00:00:00Z"
    assert config.diff_ids == [dig("1"), dig("2")]
    # Compact, insertion order kept (Docker does not sort keys).
    raw = config.to_bytes()
    assert raw.startswith(b'{"architecture":"arm64","variant":"v8","os":"linux"')
    assert json.loads(raw) == data
    assert config.digest == "sha256:" + hashlib.sha256(raw).hexdigest()


def test_image_config_malformed() -> None:
    with pytest.raises(InvalidArgument, match="not valid json"):
        ImageConfig.parse(b"{")
    with pytest.raises(InvalidArgument, match="diff_ids"):
        ImageConfig({"rootfs": {"type": "layers", "diff_ids": ["nope"]}})
    assert ImageConfig({}).diff_ids == []
