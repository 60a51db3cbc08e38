"""Stages that do not depend on each other build at once (issue 5), against a private
berthd over its socket: the RUN steps of two stages overlap in time (timestamps from
``/proc/uptime`` written by the steps and copied into a final stage), the output still
reads as a sequential build (Dockerfile order, Step N/M numbered up front), a failing
stage fails the build with its exit code while its sibling is cancelled, the cache hits
on a rebuild, ``target`` builds only what it needs, and a client hang-up cancels.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import tarfile
import time
import urllib.parse
from collections.abc import Iterator

import pytest
from tests.compat.berthd import Daemon, UnixHTTPConnection
from tests.registries import REGISTRY_BIN, start_registry, stop_registry

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root and the real kernel"),
]

# two independent stages, each with a RUN that takes a while and prints before and after
# its wait; the last stage reads both stages' timestamps
PARALLEL = """\
FROM busybox AS a
RUN cut -d' ' -f1 /proc/uptime > /start; echo a-'one'; sleep 2; echo a-'two'; \\
    cut -d' ' -f1 /proc/uptime > /end
FROM busybox AS b
RUN cut -d' ' -f1 /proc/uptime > /start; echo b-'one'; sleep 2; echo b-'two'; \\
    cut -d' ' -f1 /proc/uptime > /end
FROM busybox
COPY --from=a /start /a.start
COPY --from=a /end /a.end
COPY --from=b /start /b.start
COPY --from=b /end /b.end
RUN echo "times $(cat /a.start) $(cat /a.end) $(cat /b.start) $(cat /b.end)"
"""


def _context(dockerfile: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = dockerfile.encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def build(daemon: Daemon, dockerfile: str, **query: str) -> list[dict]:
    """POST /build as the docker CLI does; the JSON messages in the order they came."""
    conn = UnixHTTPConnection(daemon.socket, 120)
    try:
        conn.request(
            "POST",
            "/build?" + urllib.parse.urlencode(query),
            body=_context(dockerfile),
            headers={"Content-Type": "application/x-tar"},
        )
        answer = conn.getresponse()
        status, body = answer.status, answer.read()
    finally:
        conn.close()
    assert status == 200, body
    return [json.loads(line) for line in body.decode().splitlines() if line.strip()]


def text(messages: list[dict]) -> str:
    return "".join(m.get("stream", "") for m in messages)


def steps(output: str) -> list[tuple[int, int, str]]:
    return [
        (int(n), int(m), rest)
        for n, m, rest in re.findall(r"^Step (\d+)/(\d+) : (.*)$", output, flags=re.M)
    ]


def wait_clean(daemon: Daemon, output: str = "", cids: tuple[str, ...] = ()) -> list[str]:
    deadline = time.monotonic() + 20
    while (left := daemon.build_leftovers(output, cids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def test_independent_stages_overlap_and_read_in_order(daemon: Daemon) -> None:
    messages = build(daemon, PARALLEL, t="b-par", nocache="1", networkmode="none")
    output = text(messages)
    assert messages[-1] == {"stream": "Successfully tagged b-par:latest\n"}, output
    # the RUN steps of a and b overlapped in time
    found = re.search(r"^times (\S+) (\S+) (\S+) (\S+)$", output, flags=re.M)
    assert found, output
    a_start, a_end, b_start, b_end = (float(x) for x in found.groups())
    assert a_start < b_end and b_start < a_end, (a_start, a_end, b_start, b_end)
    # numbered up front, in Dockerfile order, each stage's output in one piece
    numbered = steps(output)
    assert [n for n, _, _ in numbered] == list(range(1, 11))
    assert {m for _, m, _ in numbered} == {10}
    assert numbered[0][2] == "FROM busybox AS a" and numbered[2][2] == "FROM busybox AS b"
    order = [output.index(s) for s in ("Step 2/10", "a-one", "a-two", "Step 3/10")]
    order += [output.index(s) for s in ("Step 4/10", "b-one", "b-two", "Step 5/10")]
    assert order == sorted(order), output
    assert output.count(" ---> Running in ") == 3
    assert daemon.build_leftovers(output) == []


def test_a_rebuild_hits_the_cache_and_target_builds_only_what_it_needs(daemon: Daemon) -> None:
    dockerfile = PARALLEL.replace("sleep 2", "sleep 0.2")
    first = text(build(daemon, dockerfile, t="b-par-cache", networkmode="none"))
    again = text(build(daemon, dockerfile, t="b-par-cache", networkmode="none"))
    ids = re.findall(r"^Successfully built (\w+)$", first + again, flags=re.M)
    assert len(ids) == 2 and ids[0] == ids[1]
    chunks = re.split(r"^Step \d+/\d+ : ", again, flags=re.M)[1:]
    assert all(" ---> Using cache" in c for c in chunks if not c.startswith("FROM")), again
    assert "Running in" not in again
    only_b = text(build(daemon, dockerfile, target="b", networkmode="none"))
    assert [rest for _, _, rest in steps(only_b)] == ["FROM busybox AS b", steps(first)[3][2]]
    assert {m for _, m, _ in steps(only_b)} == {2}


@pytest.mark.parametrize("bad_first", [False, True], ids=["slow-first", "bad-first"])
def test_a_failing_stage_fails_the_build_and_cancels_its_sibling(
    daemon: Daemon, bad_first: bool
) -> None:
    slow = "FROM busybox AS slow\nRUN echo slow-'started'; sleep 60; echo slow-'done'\n"
    bad = "FROM busybox AS bad\nRUN echo bad-'started'; sleep 0.5; exit 7\n"
    final = "FROM busybox\nCOPY --from=slow /etc/hostname /x\nCOPY --from=bad /etc/hostname /y\n"
    dockerfile = (bad + slow if bad_first else slow + bad) + final
    started = time.monotonic()
    messages = build(daemon, dockerfile, nocache="1", networkmode="none")
    took = time.monotonic() - started
    last = messages[-1]
    assert last["errorDetail"]["code"] == 7, messages
    assert last["error"] == (
        "The command '/bin/sh -c echo bad-'started'; sleep 0.5; exit 7' returned a non-zero code: 7"
    )
    assert took < 30, took  # the sibling's sleep 60 was killed, not waited for
    output = text(messages)
    assert "slow-done" not in output and "Step 5/" not in output
    numbered = [n for n, _, _ in steps(output)]
    if bad_first:  # the build stops at the failing stage, as a sequential one would
        assert numbered == [1, 2] and "slow-started" not in output, output
    else:  # the cancelled stage's output, then the failing one's, in order
        assert numbered == [1, 2, 3, 4], output
        assert output.index("slow-started") < output.index("Step 3/") < output.index("bad-started")
    assert wait_clean(daemon, output) == []


def test_a_client_hang_up_cancels_every_stage(daemon: Daemon) -> None:
    # berthd notices a hang-up when it next writes: a's RUN keeps writing
    dockerfile = (
        "FROM busybox AS a\nRUN echo a-'started'; while :; do sleep 0.2; echo tick; done\n"
        "FROM busybox AS b\nRUN echo b-'started'; sleep 60\n"
        "FROM busybox\nCOPY --from=a /etc/hostname /a\nCOPY --from=b /etc/hostname /b\n"
    )
    conn = UnixHTTPConnection(daemon.socket, 60)
    seen = ""
    try:
        conn.request(
            "POST",
            "/build?nocache=1&networkmode=none",
            body=_context(dockerfile),
            headers={"Content-Type": "application/x-tar"},
        )
        answer = conn.getresponse()
        assert answer.status == 200
        while "a-started" not in seen:
            line = answer.readline()
            assert line, seen
            seen += json.loads(line).get("stream", "")
        # b's RUN runs too, its output held back: two RUN bundles at once
        bundles = os.path.join(daemon.exec_root, "build", "bundles")
        deadline = time.monotonic() + 20
        while len(cids := tuple(os.listdir(bundles))) < 2:
            assert time.monotonic() < deadline, cids
            time.sleep(0.1)
        running = daemon.build_leftovers(cids=cids)
        assert len(running) > len(daemon.build_leftovers())  # the running steps' cgroups
    finally:
        conn.close()
    assert wait_clean(daemon, seen, cids) == []


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not os.access(REGISTRY_BIN, os.X_OK):
        pytest.skip("the CNCF registry is not installed")
    reg = start_registry(tmp_path_factory.mktemp("cncf"))
    yield reg.host
    stop_registry(reg)


def test_pulls_of_parallel_stages_show_under_their_own_step(daemon: Daemon, registry: str) -> None:
    auth = base64.urlsafe_b64encode(b"{}").decode()
    for repo in ("par/one", "par/two"):
        assert daemon.post(f"/images/busybox/tag?repo={registry}/{repo}&tag=1").status == 201
        pushed = daemon.post(
            f"/images/{registry}/{repo}/push?tag=1", headers={"X-Registry-Auth": auth}
        )
        assert pushed.status == 200 and b"error" not in pushed.body, pushed
        assert daemon.delete(f"/images/{registry}/{repo}:1").status == 200
    dockerfile = (
        f"FROM {registry}/par/one:1 AS a\nRUN echo a\n"
        f"FROM {registry}/par/two:1 AS b\nRUN echo b\n"
        "FROM busybox\nCOPY --from=a /etc/hostname /a\nCOPY --from=b /etc/hostname /b\n"
    )
    messages = build(daemon, dockerfile, nocache="1", networkmode="none")
    assert "Successfully built" in text(messages), messages

    def where(wanted: str) -> int:
        return next(
            i for i, m in enumerate(messages) if wanted in str(m.get("stream") or m.get("status"))
        )

    assert (
        where("Step 1/7")
        < where("Pulling from par/one")
        < where("Step 2/7")
        < where("Step 3/7")
        < where("Pulling from par/two")
        < where("Step 4/7")
    ), messages
