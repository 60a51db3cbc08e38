"""Berth's registry server over real HTTP on 127.0.0.1, with a plain HTTP client.

Each test starts its own server (in a thread, or ``berth registry serve`` as a
subprocess) on a free port over a private storage folder, and removes both afterwards.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import bcrypt
import pytest

from berth.distribution.registry_store import RegistryStore
from berth.distribution.server import ServerThread, run_in_thread

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures"
BUSYBOX_OCI = FIXTURES / "busybox-1.38-musl-oci"


class Response(NamedTuple):
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def error_codes(self) -> list[str]:
        return [e["code"] for e in self.json()["errors"]]


class Client:
    """A minimal HTTP/1.1 client: every method, raw headers, no redirects or retries."""

    def __init__(self, url: str, auth: tuple[str, str] | None = None) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.auth = auth

    def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> Response:
        headers = dict(headers or {})
        if self.auth is not None:
            token = base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            if method in {"POST", "PUT", "PATCH"} or body:
                headers.setdefault("Content-Length", str(len(body)))
            conn.request(method, path, body=body or None, headers=headers)
            resp = conn.getresponse()
            return Response(resp.status, resp.headers, resp.read())
        finally:
            conn.close()

    def get(self, path: str, **kw: Any) -> Response:
        return self.request("GET", path, **kw)

    def head(self, path: str, **kw: Any) -> Response:
        return self.request("HEAD", path, **kw)

    def push_blob(self, repo: str, data: bytes, algorithm: str = "sha256") -> str:
        """Monolithic POST ?digest= push; returns the digest."""
        digest = f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"
        r = self.request("POST", f"/v2/{repo}/blobs/uploads/?digest={digest}", data)
        assert r.status == 201, r.body
        assert r.headers["Docker-Content-Digest"] == digest
        return digest

    def push_manifest(
        self, repo: str, reference: str, manifest: dict[str, Any], media_type: str = OCI_MANIFEST
    ) -> tuple[str, Response]:
        body = json.dumps(manifest).encode()
        r = self.request(
            "PUT", f"/v2/{repo}/manifests/{reference}", body, {"Content-Type": media_type}
        )
        assert r.status == 201, r.body
        return "sha256:" + hashlib.sha256(body).hexdigest(), r


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def descriptor(media_type: str, data: bytes) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": sha256(data), "size": len(data)}


def image_manifest(config: bytes, layers: list[bytes], **extra: Any) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": [descriptor(OCI_LAYER, layer) for layer in layers],
        **extra,
    }


def small_image(client: Client, repo: str, seed: bytes = b"") -> tuple[dict[str, Any], list[bytes]]:
    """Push a config and two layers; return the manifest (not pushed) and the blobs."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed.hex()}).encode()
    layers = [os.urandom(3000) + seed, os.urandom(5000) + seed]
    for blob in (config, *layers):
        client.push_blob(repo, blob)
    return image_manifest(config, layers), [config, *layers]


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="berth-test-registry-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def registry(workdir: Path) -> Iterator[ServerThread]:
    server = run_in_thread(workdir / "root")
    yield server
    server.close()


@pytest.fixture
def client(registry: ServerThread) -> Client:
    return Client(registry.url)


def test_ping_and_version_header(client: Client) -> None:
    r = client.get("/v2/")
    assert r.status == 200
    assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert client.get("/v2/nope/nope/nope").status == 404


def test_push_pull_round_trip_by_tag_and_digest(client: Client) -> None:
    config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
    layer1, layer2 = os.urandom(4096), os.urandom(70000)
    repo = "team/app/web"
    client.push_blob(repo, config)  # POST ?digest= (monolithic)
    # POST, then PUT with the body
    r = client.request("POST", f"/v2/{repo}/blobs/uploads/")
    assert r.status == 202 and r.headers["Location"]
    r = client.request("PUT", f"{r.headers['Location']}?digest={sha256(layer1)}", layer1)
    assert r.status == 201
    assert r.headers["Location"] == f"/v2/{repo}/blobs/{sha256(layer1)}"
    # POST, PATCH, PUT with no body
    r = client.request("POST", f"/v2/{repo}/blobs/uploads/")
    r = client.request("PATCH", r.headers["Location"], layer2)
    assert r.status == 202 and r.headers["Range"] == f"0-{len(layer2) - 1}"
    r = client.request("PUT", f"{r.headers['Location']}?digest={sha256(layer2)}")
    assert r.status == 201

    manifest = image_manifest(config, [layer1, layer2])
    digest, r = client.push_manifest(repo, "v1", manifest)
    assert r.headers["Docker-Content-Digest"] == digest
    assert r.headers["Location"] == f"/v2/{repo}/manifests/{digest}"
    body = json.dumps(manifest).encode()
    for reference in ("v1", digest):
        r = client.get(f"/v2/{repo}/manifests/{reference}", headers={"Accept": OCI_MANIFEST})
        assert r.status == 200 and r.body == body
        assert r.headers["Content-Type"] == OCI_MANIFEST
        assert r.headers["Docker-Content-Digest"] == digest
        assert r.headers["Content-Length"] == str(len(body))
        r = client.head(f"/v2/{repo}/manifests/{reference}")
        assert r.status == 200 and r.body == b""
        assert r.headers["Content-Length"] == str(len(body))
        assert r.headers["Docker-Content-Digest"] == digest
    # by digest, with a Docker schema 2 manifest
    docker = {**manifest, "mediaType": DOCKER_MANIFEST}
    ddigest, _ = client.push_manifest(
        repo, sha256(json.dumps(docker).encode()), docker, DOCKER_MANIFEST
    )
    r = client.get(f"/v2/{repo}/manifests/{ddigest}")
    assert r.headers["Content-Type"] == DOCKER_MANIFEST
    for blob in (config, layer1, layer2):
        r = client.get(f"/v2/{repo}/blobs/{sha256(blob)}")
        assert r.status == 200 and r.body == blob
        assert r.headers["Docker-Content-Digest"] == sha256(blob)
        r = client.head(f"/v2/{repo}/blobs/{sha256(blob)}")
        assert r.status == 200 and r.headers["Content-Length"] == str(len(blob))
    # a blob pushed to one repository is not readable through another
    r = client.get(f"/v2/other/blobs/{sha256(layer1)}")
    assert r.status == 404 and r.error_codes() == ["BLOB_UNKNOWN"]
    assert client.get(f"/v2/other/manifests/{digest}").status == 404


def test_manifest_validation(client: Client) -> None:
    repo = "val"
    config = b"{}"
    client.push_blob(repo, config)
    missing = os.urandom(100)
    r = client.request(
        "PUT",
        f"/v2/{repo}/manifests/bad",
        json.dumps(image_manifest(config, [missing])).encode(),
        {"Content-Type": OCI_MANIFEST},
    )
    assert r.status == 400 and r.error_codes() == ["MANIFEST_BLOB_UNKNOWN"]
    assert r.json()["errors"][0]["detail"] == {"digest": sha256(missing)}
    body = json.dumps(image_manifest(config, [])).encode()
    r = client.request(
        "PUT", f"/v2/{repo}/manifests/{sha256(body + b' ')}", body, {"Content-Type": OCI_MANIFEST}
    )
    assert r.status == 400 and r.error_codes() == ["DIGEST_INVALID"]
    schema1 = json.dumps({"schemaVersion": 1, "name": repo, "tag": "x", "fsLayers": []}).encode()
    r = client.request(
        "PUT",
        f"/v2/{repo}/manifests/old",
        schema1,
        {"Content-Type": "application/vnd.docker.distribution.manifest.v1+prettyjws"},
    )
    assert r.status == 400 and r.error_codes() == ["MANIFEST_INVALID"]
    assert "schema 1" in r.json()["errors"][0]["message"]
    r = client.request(
        "PUT", f"/v2/{repo}/manifests/junk", b"not json", {"Content-Type": OCI_MANIFEST}
    )
    assert r.status == 400 and r.error_codes() == ["MANIFEST_INVALID"]
    r = client.get("/v2/Bad_Name/tags/list")
    assert r.status == 400 and r.error_codes() == ["NAME_INVALID"]
    r = client.get(f"/v2/{repo}/manifests/sha256:baddigeststring")
    assert r.status == 400 and r.error_codes() == ["DIGEST_INVALID"]
    r = client.get(f"/v2/{repo}/manifests/missing")
    assert r.status == 404 and r.error_codes() == ["MANIFEST_UNKNOWN"]
    # a layer with urls (non-distributable) need not be present
    foreign = {**descriptor(OCI_LAYER, missing), "urls": ["https://example.com/x"]}
    manifest = {**image_manifest(config, []), "layers": [foreign]}
    client.push_manifest(repo, "foreign", manifest)


def test_chunked_upload_enforces_order(client: Client) -> None:
    data = os.urandom(300_000)
    repo = "chunks"
    r = client.request("POST", f"/v2/{repo}/blobs/uploads/")
    location = r.headers["Location"]
    r = client.request("PATCH", location, data[:100_000], {"Content-Range": "0-99999"})
    assert r.status == 202 and r.headers["Range"] == "0-99999"
    location = r.headers["Location"]
    # skipping ahead is refused, and nothing of that chunk is kept
    r = client.request("PATCH", location, data[200_000:], {"Content-Range": "200000-299999"})
    assert r.status == 416 and r.headers["Range"] == "0-99999"
    assert r.error_codes() == ["BLOB_UPLOAD_INVALID"]
    # so is going back
    r = client.request("PATCH", location, data[:100_000], {"Content-Range": "0-99999"})
    assert r.status == 416
    r = client.get(location)
    assert r.status == 204 and r.headers["Range"] == "0-99999"
    assert r.headers["Docker-Upload-UUID"] in location
    # an upload belongs to its repository
    other = location.replace(f"/v2/{repo}/", "/v2/elsewhere/")
    r = client.get(other)
    assert r.status == 404 and r.error_codes() == ["BLOB_UPLOAD_UNKNOWN"]
    r = client.request("PATCH", location, data[100_000:200_000], {"Content-Range": "100000-199999"})
    assert r.status == 202 and r.headers["Range"] == "0-199999"
    # the last chunk comes with the PUT
    r = client.request(
        "PUT",
        f"{r.headers['Location']}?digest={sha256(data)}",
        data[200_000:],
        {"Content-Range": "200000-299999"},
    )
    assert r.status == 201
    assert client.get(f"/v2/{repo}/blobs/{sha256(data)}").body == data
    # the session is gone once the blob is committed
    assert client.get(location).status == 404
    # a wrong digest is refused and the session dropped
    r = client.request("POST", f"/v2/{repo}/blobs/uploads/")
    location = r.headers["Location"]
    client.request("PATCH", location, b"abc")
    r = client.request("PUT", f"{location}?digest={sha256(b'abd')}")
    assert r.status == 400 and r.error_codes() == ["DIGEST_INVALID"]
    assert client.get(f"/v2/{repo}/blobs/{sha256(b'abd')}").status == 404
    # cancel
    r = client.request("POST", f"/v2/{repo}/blobs/uploads/")
    assert client.request("DELETE", r.headers["Location"]).status == 204
    assert client.get(r.headers["Location"]).status == 404


def test_range_requests(client: Client) -> None:
    data = os.urandom(2048)
    digest = client.push_blob("ranges", data)
    path = f"/v2/ranges/blobs/{digest}"
    r = client.get(path, headers={"Range": "bytes=500-1499"})
    assert r.status == 206 and r.body == data[500:1500]
    assert r.headers["Content-Range"] == "bytes 500-1499/2048"
    r = client.get(path, headers={"Range": "bytes=1000-"})
    assert r.status == 206 and r.body == data[1000:]
    r = client.get(path, headers={"Range": "bytes=-48"})
    assert r.status == 206 and r.body == data[-48:]
    assert client.get(path, headers={"Range": "bytes=5000-6000"}).status == 416


def test_cross_repository_mount(client: Client) -> None:
    data = os.urandom(1000)
    digest = client.push_blob("src/repo", data)
    r = client.request("POST", f"/v2/dst/repo/blobs/uploads/?mount={digest}&from=src/repo")
    assert r.status == 201
    assert r.headers["Location"] == f"/v2/dst/repo/blobs/{digest}"
    assert client.get(f"/v2/dst/repo/blobs/{digest}").body == data
    # a source that lacks the blob: a normal upload starts instead
    r = client.request("POST", f"/v2/third/blobs/uploads/?mount={digest}&from=nothing/here")
    assert r.status == 202
    location = r.headers["Location"]
    assert client.get(f"/v2/third/blobs/{digest}").status == 404
    r = client.request("PUT", f"{location}?digest={digest}", data)
    assert r.status == 201
    # a blob nobody has
    missing = sha256(b"never pushed")
    r = client.request("POST", f"/v2/fourth/blobs/uploads/?mount={missing}&from=src/repo")
    assert r.status == 202


def test_tags_pagination(client: Client) -> None:
    manifest, _ = small_image(client, "paged")
    tags = ["v1", "v10", "v2", "alpha", "beta"]
    for tag in tags:
        client.push_manifest("paged", tag, manifest)
    r = client.get("/v2/paged/tags/list")
    assert r.json() == {"name": "paged", "tags": sorted(tags)}
    seen: list[str] = []
    path = "/v2/paged/tags/list?n=2"
    while path:
        r = client.get(path)
        assert r.status == 200
        page = r.json()["tags"]
        assert len(page) <= 2
        seen += page
        link = r.headers.get("Link")
        match = re.match(r"<([^>]+)>", link or "")
        path = match.group(1) if match else ""
    assert seen == sorted(tags)
    assert client.get("/v2/paged/tags/list?last=beta").json()["tags"] == ["v1", "v10", "v2"]
    assert client.get("/v2/paged/tags/list?n=0").json()["tags"] == []
    assert client.get("/v2/never/pushed/tags/list").status == 404


def test_catalog(client: Client) -> None:
    repos = ["a", "b/c", "d/e/f", "g-h.i_j"]
    for repo in repos:
        client.push_blob(repo, repo.encode())
    assert client.get("/v2/_catalog").json() == {"repositories": repos}
    r = client.get("/v2/_catalog?n=3")
    assert r.json()["repositories"] == repos[:3]
    assert r.headers["Link"] == '</v2/_catalog?n=3&last=d%2Fe%2Ff>; rel="next"'
    r = client.get("/v2/_catalog?n=3&last=d/e/f")
    assert r.json()["repositories"] == repos[3:] and "Link" not in r.headers


def test_delete_tags_manifests_blobs(client: Client) -> None:
    manifest, blobs = small_image(client, "del")
    digest, _ = client.push_manifest("del", "keep", manifest)
    client.push_manifest("del", "drop", manifest)
    assert client.request("DELETE", "/v2/del/manifests/drop").status == 202
    assert client.get("/v2/del/manifests/drop").status == 404
    assert client.get("/v2/del/manifests/keep").status == 200
    assert client.request("DELETE", "/v2/del/manifests/drop").status == 404
    # deleting by digest takes the tags pointing at it along
    assert client.request("DELETE", f"/v2/del/manifests/{digest}").status == 202
    assert client.head(f"/v2/del/manifests/{digest}").status == 404
    assert client.get("/v2/del/manifests/keep").status == 404
    assert client.get("/v2/del/tags/list").json()["tags"] == []
    r = client.request("DELETE", f"/v2/del/manifests/{digest}")
    assert r.status == 404 and r.error_codes() == ["MANIFEST_UNKNOWN"]
    blob = sha256(blobs[1])
    assert client.request("DELETE", f"/v2/del/blobs/{blob}").status == 202
    assert client.head(f"/v2/del/blobs/{blob}").status == 404
    r = client.request("DELETE", f"/v2/del/blobs/{blob}")
    assert r.status == 404 and r.error_codes() == ["BLOB_UNKNOWN"]


def test_referrers_with_artifact_type_filter(client: Client) -> None:
    repo = "refs"
    manifest, _ = small_image(client, repo)
    subject_digest, _ = client.push_manifest(repo, "app", manifest)
    subject = {
        "mediaType": OCI_MANIFEST,
        "digest": subject_digest,
        "size": len(json.dumps(manifest)),
    }
    empty = b"{}"
    client.push_blob(repo, empty)
    referrers: dict[str, dict[str, Any]] = {}
    for artifact_type, note in [
        ("application/vnd.example.sbom", "sbom"),
        ("application/vnd.example.sig", "sig"),
    ]:
        payload = note.encode() * 10
        client.push_blob(repo, payload)
        artifact = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": descriptor("application/vnd.oci.empty.v1+json", empty),
            "layers": [descriptor("application/octet-stream", payload)],
            "subject": subject,
            "annotations": {"org.example.note": note},
        }
        body = json.dumps(artifact).encode()
        digest, r = client.push_manifest(repo, sha256(body), artifact)
        assert r.headers["OCI-Subject"] == subject_digest
        referrers[artifact_type] = {
            "mediaType": OCI_MANIFEST,
            "digest": digest,
            "size": len(body),
            "artifactType": artifact_type,
            "annotations": {"org.example.note": note},
        }
    # a plain image pushed without a subject sets no OCI-Subject header
    _, r = client.push_manifest(repo, "plain", manifest)
    assert "OCI-Subject" not in r.headers

    r = client.get(f"/v2/{repo}/referrers/{subject_digest}")
    assert r.status == 200 and r.headers["Content-Type"] == OCI_INDEX
    index = r.json()
    assert index["schemaVersion"] == 2 and index["mediaType"] == OCI_INDEX
    assert sorted(index["manifests"], key=lambda d: d["digest"]) == sorted(
        referrers.values(), key=lambda d: d["digest"]
    )
    r = client.get(
        f"/v2/{repo}/referrers/{subject_digest}?artifactType=application/vnd.example.sig"
    )
    assert r.headers["OCI-Filters-Applied"] == "artifactType"
    assert r.json()["manifests"] == [referrers["application/vnd.example.sig"]]
    # unknown subjects have an empty list
    r = client.get(f"/v2/{repo}/referrers/{sha256(b'nothing')}")
    assert r.status == 200 and r.json()["manifests"] == []
    # a deleted referrer leaves the list
    gone = referrers["application/vnd.example.sbom"]["digest"]
    assert client.request("DELETE", f"/v2/{repo}/manifests/{gone}").status == 202
    r = client.get(f"/v2/{repo}/referrers/{subject_digest}")
    assert [d["digest"] for d in r.json()["manifests"]] == [
        referrers["application/vnd.example.sig"]["digest"]
    ]


def test_sha512_blobs_and_manifests(client: Client) -> None:
    data = os.urandom(10_000)
    digest = f"sha512:{hashlib.sha512(data).hexdigest()}"
    # chunked: the server cannot know the algorithm until the final PUT
    r = client.request("POST", "/v2/five12/blobs/uploads/")
    r = client.request("PATCH", r.headers["Location"], data[:4000], {"Content-Range": "0-3999"})
    r = client.request("PATCH", r.headers["Location"], data[4000:], {"Content-Range": "4000-9999"})
    r = client.request("PUT", f"{r.headers['Location']}?digest={digest}")
    assert r.status == 201 and r.headers["Docker-Content-Digest"] == digest
    r = client.get(f"/v2/five12/blobs/{digest}")
    assert r.status == 200 and r.body == data
    config = b'{"os":"linux"}'
    config_digest = client.push_blob("five12", config, "sha512")
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": digest, "size": len(data)}],
    }
    body = json.dumps(manifest).encode()
    mdigest = f"sha512:{hashlib.sha512(body).hexdigest()}"
    r = client.request(
        "PUT", f"/v2/five12/manifests/{mdigest}?tag=t512", body, {"Content-Type": OCI_MANIFEST}
    )
    assert r.status == 201 and r.headers["Docker-Content-Digest"] == mdigest
    assert r.headers["OCI-Tag"] == "t512"
    assert client.get(f"/v2/five12/manifests/{mdigest}").body == body
    assert client.get("/v2/five12/manifests/t512").headers["Docker-Content-Digest"] == mdigest


def test_concurrent_pushes_of_one_blob(registry: ServerThread, workdir: Path) -> None:
    data = os.urandom(3 << 20)
    digest = sha256(data)
    results: list[int] = []

    def push(n: int) -> None:
        c = Client(registry.url)
        if n % 2:
            r = c.request("POST", f"/v2/race/blobs/uploads/?digest={digest}", data)
        else:
            r = c.request("POST", "/v2/race/blobs/uploads/")
            loc = r.headers["Location"]
            half = len(data) // 2
            r = c.request("PATCH", loc, data[:half])
            r = c.request("PUT", f"{r.headers['Location']}?digest={digest}", data[half:])
        results.append(r.status)

    threads = [threading.Thread(target=push, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [201] * 8
    client = Client(registry.url)
    assert client.get(f"/v2/race/blobs/{digest}").body == data
    root = workdir / "root"
    assert (
        hashlib.sha256((root / "blobs" / "sha256" / digest[7:]).read_bytes()).hexdigest()
        == digest[7:]
    )
    assert list((root / "uploads").iterdir()) == []
    assert list((root / "tmp").iterdir()) == []


def test_basic_auth(workdir: Path) -> None:
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=5)).decode()
    # htpasswd -B writes $2y$, which the CNCF registry reads too
    htpasswd = workdir / "htpasswd"
    htpasswd.write_text(f"# users\nalice:{hashed.replace('$2b$', '$2y$', 1)}\n")
    server = run_in_thread(workdir / "root", htpasswd=htpasswd)
    try:
        r = Client(server.url).get("/v2/")
        assert r.status == 401
        assert r.headers["WWW-Authenticate"] == 'Basic realm="berth-registry"'
        assert r.error_codes() == ["UNAUTHORIZED"]
        assert Client(server.url, ("alice", "wrong")).get("/v2/").status == 401
        assert Client(server.url, ("bob", "s3cret")).get("/v2/").status == 401
        assert Client(server.url).get("/v2/_catalog").status == 401
        alice = Client(server.url, ("alice", "s3cret"))
        assert alice.get("/v2/").status == 200
        digest = alice.push_blob("private", b"data")
        assert alice.get(f"/v2/private/blobs/{digest}").body == b"data"
        assert Client(server.url).get(f"/v2/private/blobs/{digest}").status == 401
    finally:
        server.close()


def test_garbage_collection(client: Client, workdir: Path) -> None:
    root = workdir / "root"
    kept_manifest, kept_blobs = small_image(client, "gc/kept", b"k")
    client.push_manifest("gc/kept", "v1", kept_manifest)
    gone_manifest, gone_blobs = small_image(client, "gc/gone", b"g")
    gone_digest, _ = client.push_manifest("gc/gone", "v1", gone_manifest)
    assert client.request("DELETE", f"/v2/gc/gone/manifests/{gone_digest}").status == 202
    stray = client.push_blob("gc/kept", b"uploaded, never referenced")

    store = RegistryStore(root)
    dry = store.collect_garbage(dry_run=True)
    expected = {sha256(b) for b in gone_blobs} | {gone_digest, stray}
    assert set(dry.blobs_deleted) == expected
    assert all((root / "blobs" / "sha256" / d[7:]).exists() for d in expected)

    out = subprocess.run(
        [sys.executable, "-m", "berth.cli.main", "registry", "gc", "--root", str(root)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"deleted {len(expected)} blobs" in out
    assert not any((root / "blobs" / "sha256" / d[7:]).exists() for d in expected)
    for blob in kept_blobs:
        r = client.get(f"/v2/gc/kept/blobs/{sha256(blob)}")
        assert r.status == 200 and r.body == blob
    assert client.get("/v2/gc/kept/manifests/v1").status == 200
    assert client.head(f"/v2/gc/kept/blobs/{stray}").status == 404
    assert store.collect_garbage().blobs_deleted == []


def _free_port_server(root: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "berth.cli.main", "registry", "serve",
            "--listen", "127.0.0.1:0", "--root", str(root), *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"listening on (http://\S+)", line)
    if match is None:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"registry did not start: {line!r} {err!r}")
    return proc, match.group(1)


def test_cli_serve(workdir: Path) -> None:
    proc, url = _free_port_server(workdir / "root")
    try:
        client = Client(url)
        deadline = time.monotonic() + 10
        while client.get("/v2/").status != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/v2/").headers["Docker-Distribution-API-Version"] == "registry/2.0"
        client.push_blob("cli", b"hello")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["serve", "--root", "{root}", "--listen", "nonsense"], "invalid --listen"),
        (["serve", "--root", "{root}", "--htpasswd", "{root}/missing"], "cannot read htpasswd"),
        (["serve", "--root", "{root}", "--tls-cert", "x.pem"], "--tls-cert and --tls-key"),
        (["gc", "--root", "{root}/nothing"], "no registry storage"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_cli_errors_are_one_line(workdir: Path, args: list[str], message: str) -> None:
    argv = [a.replace("{root}", str(workdir)) for a in args]
    r = subprocess.run(
        [sys.executable, "-m", "berth.cli.main", "registry", *argv],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode in (1, 2)
    assert message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.skipif(not shutil.which("skopeo"), reason="skopeo is not installed")
@pytest.mark.skipif(not BUSYBOX_OCI.is_dir(), reason=f"fixture {BUSYBOX_OCI} is absent")
def test_skopeo_round_trip(registry: ServerThread, workdir: Path) -> None:
    index = json.loads((BUSYBOX_OCI / "index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"]
    target = f"docker://{registry.host_port}/library/busybox:1.38"
    subprocess.run(
        ["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{BUSYBOX_OCI}", target],
        check=True,
        timeout=120,
    )
    out = workdir / "pulled"
    subprocess.run(
        ["skopeo", "copy", "--quiet", "--src-tls-verify=false", target, f"dir:{out}"],
        check=True,
        timeout=120,
    )
    manifest_bytes = (out / "manifest.json").read_bytes()
    assert sha256(manifest_bytes) == manifest_digest
    manifest = json.loads(manifest_bytes)
    for desc in [manifest["config"], *manifest["layers"]]:
        pulled = (out / desc["digest"].split(":", 1)[1]).read_bytes()
        original = (BUSYBOX_OCI / "blobs" / "sha256" / desc["digest"][7:]).read_bytes()
        assert sha256(pulled) == desc["digest"] and pulled == original
    r = Client(registry.url).head(f"/v2/library/busybox/manifests/{manifest_digest}")
    assert r.status == 200
