"""Tests for berth.images.reference: Docker's normalization rules, case by case."""

from __future__ import annotations

import pytest

from berth.errors import InvalidArgument
from berth.images.reference import InvalidReference, Reference, parse

D = "sha256:" + "a" * 64
D512 = "sha512:" + "b" * 128

HUB = "docker.io/library/"

# text -> (str(), familiar): Docker's normalization table
VALID = [
    ("busybox", HUB + "busybox:latest", "busybox"),
    ("busybox:1.36", HUB + "busybox:1.36", "busybox"),
    ("ns/app", "docker.io/ns/app:latest", "ns/app"),
    ("docker.io/busybox", HUB + "busybox:latest", "busybox"),
    ("index.docker.io/busybox", HUB + "busybox:latest", "busybox"),
    ("index.docker.io/ns/app:v1", "docker.io/ns/app:v1", "ns/app"),
    ("docker.io/library/busybox", HUB + "busybox:latest", "busybox"),
    ("library/busybox", HUB + "busybox:latest", "busybox"),
    ("docker.io/library/ns/app", HUB + "ns/app:latest", "library/ns/app"),
    ("localhost/app", "localhost/app:latest", "localhost/app"),
    ("localhost:5000/x", "localhost:5000/x:latest", "localhost:5000/x"),
    ("localhost:5000/ns/x:1", "localhost:5000/ns/x:1", "localhost:5000/ns/x"),
    ("ghcr.io/ns/app", "ghcr.io/ns/app:latest", "ghcr.io/ns/app"),
    ("ghcr.io/app", "ghcr.io/app:latest", "ghcr.io/app"),
    ("127.0.0.1:5000/a/b/c", "127.0.0.1:5000/a/b/c:latest", "127.0.0.1:5000/a/b/c"),
    ("[::1]:5000/app", "[::1]:5000/app:latest", "[::1]:5000/app"),
    ("Registry.Example.com/app", "Registry.Example.com/app:latest", "Registry.Example.com/app"),
    ("myregistry:5000/app", "myregistry:5000/app:latest", "myregistry:5000/app"),
    ("a.b-c/d__e.f-g_h--i", "a.b-c/d__e.f-g_h--i:latest", "a.b-c/d__e.f-g_h--i"),
    ("busybox@" + D, HUB + "busybox@" + D, "busybox"),
    ("busybox:1@" + D, HUB + "busybox:1@" + D, "busybox"),
    ("localhost:5000/x@" + D512, "localhost:5000/x@" + D512, "localhost:5000/x"),
    ("busybox:" + "t" * 128, HUB + "busybox:" + "t" * 128, "busybox"),
    ("busybox:_A.b-C", HUB + "busybox:_A.b-C", "busybox"),
    ("localhost", HUB + "localhost:latest", "localhost"),
    ("localhost:5000", HUB + "localhost:5000", "localhost"),
]


@pytest.mark.parametrize(("text", "full", "familiar"), VALID)
def test_valid(text: str, full: str, familiar: str) -> None:
    ref = parse(text)
    assert str(ref) == full
    assert ref.familiar == familiar
    # The normalized form parses back to the same repository and digest.
    again = parse(full)
    assert (again.domain, again.path, again.digest) == (ref.domain, ref.path, ref.digest)


@pytest.mark.parametrize(
    ("text", "fields"),
    [
        ("busybox", ("docker.io", "library/busybox", None, None)),
        ("ns/app:v2", ("docker.io", "ns/app", "v2", None)),
        ("localhost:5000/x", ("localhost:5000", "x", None, None)),
        ("ghcr.io/ns/app:1@" + D, ("ghcr.io", "ns/app", "1", D)),
        ("index.docker.io/busybox@" + D, ("docker.io", "library/busybox", None, D)),
    ],
)
def test_fields(text: str, fields: tuple[str, str, str | None, str | None]) -> None:
    ref = parse(text)
    assert (ref.domain, ref.path, ref.tag, ref.digest) == fields
    assert ref.name == f"{ref.domain}/{ref.path}"


# text -> a fragment the message must contain
INVALID = [
    ("", "at least one component"),
    ("Foo/Bar", "repository name must be lowercase"),
    ("BUSYBOX", "repository name must be lowercase"),
    ("ns/Busybox:1", "repository name must be lowercase"),
    ("a:b:c", "invalid reference format"),
    ("busybox:", "invalid tag format"),
    ("busybox:" + "t" * 129, "invalid tag format"),
    ("busybox:.bad", "invalid tag format"),
    ("busybox:-bad", "invalid tag format"),
    ("busybox@sha256:abc", "invalid digest format"),
    ("busybox@sha256:" + "A" * 64, "lower-case hex"),
    ("busybox@sha256:" + "a" * 63, "invalid digest format"),
    ("busybox@sha256:" + "a" * 128, "sha256 needs 64"),
    ("busybox@md5:" + "a" * 32, "unsupported digest algorithm"),
    ("busybox@", "invalid digest format"),
    ("sha256:" + "a" * 64, "a digest alone is not a name"),
    ("a" * 64, "image id"),
    ("ns/", "invalid repository name component"),
    ("/busybox", "invalid"),
    ("-ab/c", "invalid repository name component"),
    ("ns/a..b", "invalid repository name component"),
    ("ns/a_-b", "invalid repository name component"),
    ("@" + D, "at least one component"),
    ("bad_host:5000/app", "invalid registry host"),
    ("ns/" + "a" * 250, "255 characters"),
    ("busybox latest", "invalid"),
]


@pytest.mark.parametrize(("text", "fragment"), INVALID)
def test_invalid(text: str, fragment: str) -> None:
    with pytest.raises(InvalidReference) as info:
        parse(text)
    message = str(info.value)
    assert fragment in message
    assert message.startswith(f"invalid reference format: '{text}'")
    assert "\n" not in message
    assert isinstance(info.value, InvalidArgument)


def test_uppercase_message_exact() -> None:
    with pytest.raises(InvalidReference, match=r"^invalid reference format: 'Foo/Bar': repository"):
        parse("Foo/Bar")


def test_name_length_boundary() -> None:
    # docker.io/ns/ + path == 255 characters exactly is accepted.
    path = "a" * (255 - len("docker.io/ns/"))
    assert len(parse("ns/" + path).name) == 255
    with pytest.raises(InvalidReference):
        parse("ns/" + path + "a")


def test_with_tag_and_digest() -> None:
    ref = parse("busybox")
    tagged = ref.with_tag("1.36")
    assert str(tagged) == "docker.io/library/busybox:1.36"
    pinned = tagged.with_digest(D)
    assert str(pinned) == f"docker.io/library/busybox:1.36@{D}"
    assert pinned.familiar_string == f"busybox:1.36@{D}"
    assert ref.tag is None  # immutable: the originals are unchanged
    with pytest.raises(InvalidReference):
        ref.with_tag("bad tag")
    with pytest.raises(InvalidReference):
        ref.with_digest("sha256:zz")


def test_immutable_and_hashable() -> None:
    ref = parse("busybox:1")
    with pytest.raises(AttributeError):
        ref.tag = "2"  # type: ignore[misc]
    assert parse("busybox:1") == ref
    assert len({ref, parse("docker.io/library/busybox:1")}) == 1
    assert Reference("docker.io", "library/busybox", "1") == ref


def test_registry_host_and_manifest_ref() -> None:
    assert parse("busybox").registry_host == "registry-1.docker.io"
    assert parse("index.docker.io/ns/app").registry_host == "registry-1.docker.io"
    assert parse("localhost:5000/x").registry_host == "localhost:5000"
    assert parse("busybox").manifest_ref == "latest"
    assert parse("busybox:1").manifest_ref == "1"
    assert parse(f"busybox:1@{D}").manifest_ref == D
    assert parse("busybox").familiar_string == "busybox"
    assert parse("localhost:5000/x:2").familiar_string == "localhost:5000/x:2"
