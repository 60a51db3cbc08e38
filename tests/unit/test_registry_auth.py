"""Registry credentials, auth challenges and Docker's progress lines, without a network."""

from __future__ import annotations

import base64
import io
import json
import os
import stat
import time
from pathlib import Path

import pytest

from berth.distribution.auth import (
    DOCKER_HUB_AUTH_KEY,
    TokenCache,
    load_credentials,
    logout,
    merge_scopes,
    parse_challenges,
    store_credentials,
)
from berth.distribution.client import (
    RegistryClient,
    _join,
    _with_query,
    display_ref,
    is_loopback,
    normalize_login_host,
)
from berth.distribution.progress import (
    ProgressEvent,
    ProgressRenderer,
    docker_json_line,
    human_size,
    progress_bar,
    pull_status_line,
)
from berth.errors import ConfigError
from berth.images.reference import parse

LAYER = "sha256:5c3b447848a98e48dce106cb3e6acbd4fb6f9b26ee778798137349ce01f4d3c1"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def write_config(path: Path, doc: dict[str, object]) -> str:
    path.write_text(json.dumps(doc))
    return str(path)


# --- config.json ----------------------------------------------------------------------


def test_credentials_from_auth_and_from_fields(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path / "config.json",
        {
            "auths": {
                "localhost:5000": {"auth": b64("alice:pa:ss")},
                "https://registry.example.com/v2/": {"username": "bob", "password": "pw"},
                "empty.example.com": {},
            }
        },
    )
    alice = load_credentials("localhost:5000", cfg)
    assert alice is not None and (alice.username, alice.password) == ("alice", "pa:ss")
    bob = load_credentials("registry.example.com", cfg)
    assert bob is not None and (bob.username, bob.password) == ("bob", "pw")
    assert load_credentials("empty.example.com", cfg) is None
    assert load_credentials("localhost:5001", cfg) is None
    assert load_credentials("localhost:5000", str(tmp_path / "missing.json")) is None


@pytest.mark.parametrize("key", [DOCKER_HUB_AUTH_KEY, "index.docker.io", "docker.io"])
def test_docker_hub_aliases(tmp_path: Path, key: str) -> None:
    cfg = write_config(tmp_path / "config.json", {"auths": {key: {"auth": b64("hub:pw")}}})
    found = load_credentials("docker.io", cfg)
    assert found is not None and found.username == "hub"


def test_bad_auth_entry_is_one_clear_line(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "config.json", {"auths": {"h:1": {"auth": "!!!"}}})
    with pytest.raises(ConfigError, match=r"run `berth login h:1` again"):
        load_credentials("h:1", cfg)
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ConfigError, match="cannot read docker config"):
        load_credentials("h:1", str(tmp_path / "broken.json"))


def test_credential_helpers_are_reported_and_auths_used(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(
        tmp_path / "config.json",
        {"credHelpers": {"h:1": "pass"}, "auths": {"h:1": {"auth": b64("u:p")}}},
    )
    found = load_credentials("h:1", cfg)
    assert found is not None and found.username == "u"
    err = capsys.readouterr().err
    assert "credential helper 'pass'" in err and "not supported yet" in err


def test_store_credentials_keeps_other_keys_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "docker" / "config.json"
    path.parent.mkdir()
    write_config(path, {"auths": {"other": {"auth": b64("x:y")}}, "detachKeys": "ctrl-q"})
    os.chmod(path, 0o644)
    store_credentials("localhost:5000", "alice", "pw", str(path))
    store_credentials("docker.io", "hub", "pw2", str(path))
    doc = json.loads(path.read_text())
    assert doc["detachKeys"] == "ctrl-q"
    assert doc["auths"]["other"] == {"auth": b64("x:y")}
    assert doc["auths"]["localhost:5000"] == {"auth": b64("alice:pw")}
    assert doc["auths"][DOCKER_HUB_AUTH_KEY] == {"auth": b64("hub:pw2")}
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["config.json"]  # no temp files left

    assert logout("docker.io", str(path))
    assert logout("localhost:5000", str(path))
    assert not logout("localhost:5000", str(path))
    assert json.loads(path.read_text())["auths"] == {"other": {"auth": b64("x:y")}}


def test_store_credentials_creates_private_file(tmp_path: Path) -> None:
    path = tmp_path / "new" / "config.json"
    store_credentials("h:1", "u", "p", str(path))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert json.loads(path.read_text()) == {"auths": {"h:1": {"auth": b64("u:p")}}}


def test_default_config_path_honours_docker_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    store_credentials("h:1", "u", "p")
    assert (tmp_path / "config.json").exists()


# --- challenges, scopes, tokens ---------------------------------------------------------


def test_parse_bearer_and_basic_challenges() -> None:
    [bearer] = parse_challenges(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/busybox:pull,push"'
    )
    assert bearer.scheme == "bearer"
    assert bearer.params == {
        "realm": "https://auth.docker.io/token",
        "service": "registry.docker.io",
        "scope": "repository:library/busybox:pull,push",
    }
    [basic] = parse_challenges('Basic realm="basic-realm"')
    assert basic.scheme == "basic" and basic.params == {"realm": "basic-realm"}
    [quoted] = parse_challenges(r'Bearer realm="a\"b", error=insufficient_scope')
    assert quoted.params == {"realm": 'a"b', "error": "insufficient_scope"}
    assert parse_challenges("") == []


def test_merge_scopes() -> None:
    assert merge_scopes("repository:a:pull", "repository:a:push", "repository:b:pull") == [
        "repository:a:pull,push",
        "repository:b:pull",
    ]
    assert merge_scopes("repository:a:pull,push", "") == ["repository:a:pull,push"]


def test_token_cache_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = TokenCache()
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    cache.put("h", ["repository:a:pull"], "tok", 300)
    assert cache.get("h", ["repository:a:pull"]) == "tok"
    assert cache.get("h", ["repository:a:pull,push"]) is None
    assert cache.get("other", ["repository:a:pull"]) is None
    now[0] += 295
    assert cache.get("h", ["repository:a:pull"]) is None


# --- transport choices -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost:5000", True),
        ("127.0.0.1:5000", True),
        ("127.1.2.3", True),
        ("[::1]:5000", True),
        ("registry.example.com", False),
        ("10.0.0.1:5000", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_insecure_registries_match_host_or_host_port() -> None:
    client = RegistryClient(insecure_registries=["reg.lan:5000", "other.lan"])
    assert client.is_insecure("reg.lan:5000")
    assert not client.is_insecure("reg.lan:5001")
    assert client.is_insecure("other.lan:443")
    assert client.is_insecure("localhost:5000")
    assert not client.is_insecure("registry-1.docker.io")


def test_locations_and_login_hosts() -> None:
    base = "http://h:5000/v2/app/blobs/uploads/"
    assert _join(base, "/v2/app/blobs/uploads/u1?_state=a%2Bb") == (
        "http://h:5000/v2/app/blobs/uploads/u1?_state=a%2Bb"
    )
    assert _join(base, "https://store.example.com/x") == "https://store.example.com/x"
    assert _with_query("http://h/u?_state=a%2Bb", digest="sha256:ab") == (
        "http://h/u?_state=a%2Bb&digest=sha256%3Aab"
    )
    assert _with_query("http://h/u", digest="sha256:ab") == "http://h/u?digest=sha256%3Aab"
    assert normalize_login_host("https://index.docker.io/v1/") == "docker.io"
    assert normalize_login_host("Localhost:5000") == "localhost:5000"
    assert display_ref(parse("busybox")) == "busybox:latest"
    assert display_ref(parse("localhost:5000/app@sha256:" + "a" * 64)).endswith(
        "@sha256:" + "a" * 64
    )


# --- Docker's progress stream -----------------------------------------------------------


def test_human_size_matches_go_units() -> None:
    assert human_size(0) == "0B"
    assert human_size(999) == "999B"
    assert human_size(1000) == "1kB"
    assert human_size(32768) == "32.77kB"
    assert human_size(886160) == "886.2kB"
    assert human_size(2152262) == "2.152MB"
    assert human_size(3_400_000_000) == "3.4GB"


def test_docker_json_lines_byte_for_byte() -> None:
    assert docker_json_line(ProgressEvent("latest", "Pulling from library/busybox")) == (
        b'{"status":"Pulling from library/busybox","id":"latest"}\r\n'
    )
    assert docker_json_line(ProgressEvent(LAYER, "Pulling from app")) == (
        b'{"status":"Pulling from app","id":"' + LAYER.encode() + b'"}\r\n'
    )
    assert docker_json_line(ProgressEvent(LAYER, "Pulling fs layer")) == (
        b'{"status":"Pulling fs layer","progressDetail":{},"id":"5c3b447848a9"}\r\n'
    )
    assert docker_json_line(ProgressEvent(LAYER, "Downloading", 32768, 2152262)) == (
        b'{"status":"Downloading","progressDetail":{"current":32768,"total":2152262},'
        b'"progress":"[\\u003e' + b" " * 50 + b']  32.77kB/2.152MB","id":"5c3b447848a9"}\r\n'
    )
    half = docker_json_line(ProgressEvent(LAYER, "Downloading", 443080, 886160))
    assert b'"progress":"[' + b"=" * 25 + b"\\u003e" + b" " * 25 + b']  443.1kB/886.2kB"' in half
    for status in (
        "Verifying Checksum",
        "Download complete",
        "Already exists",
        "Pull complete",
        "Pushed",
        "Layer already exists",
        "Mounted from ns/app",
    ):
        line = json.loads(docker_json_line(ProgressEvent(LAYER, status)))
        assert line == {"status": status, "progressDetail": {}, "id": "5c3b447848a9"}
    assert docker_json_line(ProgressEvent(None, "Digest: " + LAYER)) == (
        b'{"status":"Digest: ' + LAYER.encode() + b'"}\r\n'
    )
    assert docker_json_line(pull_status_line("busybox:latest", True)) == (
        b'{"status":"Status: Downloaded newer image for busybox:latest"}\r\n'
    )
    assert json.loads(docker_json_line(pull_status_line("busybox:latest", False)))["status"] == (
        "Status: Image is up to date for busybox:latest"
    )


def test_progress_bar_edges() -> None:
    assert progress_bar(0, None) == ""
    assert progress_bar(1500, None) == "   1.5kB"
    full = progress_bar(100, 100)
    assert full.startswith("[" + "=" * 50 + ">] ")
    assert progress_bar(200, 100).endswith("]     200B")


def test_plain_renderer_prints_status_changes_once() -> None:
    out = io.StringIO()
    render = ProgressRenderer(out, live=False)
    render(ProgressEvent("1", "Pulling from app"))
    render(ProgressEvent(LAYER, "Pulling fs layer"))
    for n in range(5):
        render(ProgressEvent(LAYER, "Downloading", n * 100, 500))
    render(ProgressEvent(LAYER, "Pull complete"))
    render(ProgressEvent(None, "Digest: sha256:abc"))
    render.close()
    assert out.getvalue().splitlines() == [
        "1: Pulling from app",
        "5c3b447848a9: Pulling fs layer",
        "5c3b447848a9: Downloading",
        "5c3b447848a9: Pull complete",
        "Digest: sha256:abc",
    ]


def test_live_renderer_with_rich() -> None:
    pytest.importorskip("rich")
    out = io.StringIO()
    render = ProgressRenderer(out, live=True)
    render(ProgressEvent(LAYER, "Pulling fs layer"))
    render(ProgressEvent(LAYER, "Downloading", 250, 500))
    render(ProgressEvent(LAYER, "Pull complete"))
    render.feed({"status": "Digest: sha256:abc"})
    render.close()
    text = out.getvalue()
    assert "5c3b447848a9: Pull complete" in text and "Digest: sha256:abc" in text
