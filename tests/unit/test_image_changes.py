"""``docker commit --change`` and ``docker import --change``: one parser for both."""

import pytest

from berth.errors import InvalidArgument
from berth.images.changes import apply_changes


def test_instructions_become_config_keys() -> None:
    config = apply_changes(
        [
            'CMD ["echo", "hi"]',
            "ENV A=1 B='two words'",
            "LABEL team=core",
            "EXPOSE 80 53/UDP",
            "WORKDIR app\n# a comment\nUSER nobody",
            "VOLUME /data /logs",
            "STOPSIGNAL SIGINT",
            "HEALTHCHECK --interval=5s CMD true",
        ],
        {"WorkingDir": "/srv", "Env": ["A=0"]},
    )
    assert config["Cmd"] == ["echo", "hi"]
    assert config["Env"] == ["A=1", "B=two words"]
    assert config["Labels"] == {"team": "core"}
    assert config["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}}
    assert (config["WorkingDir"], config["User"]) == ("/srv/app", "nobody")
    assert config["Volumes"] == {"/data": {}, "/logs": {}}
    assert config["StopSignal"] == "SIGINT"
    assert config["Healthcheck"]["Test"] == ["CMD-SHELL", "true"]  # the shell form
    assert config["Healthcheck"]["Interval"] == 5_000_000_000


def test_a_new_entrypoint_drops_the_inherited_command_unless_cmd_is_given() -> None:
    assert apply_changes(["ENTRYPOINT top"], {"Cmd": ["sh"]})["Cmd"] is None
    both = apply_changes(["CMD -b", "ENTRYPOINT top"], {"Cmd": ["sh"]})
    assert (both["Entrypoint"], both["Cmd"]) == (["/bin/sh", "-c", "top"], ["/bin/sh", "-c", "-b"])


@pytest.mark.parametrize(
    ("change", "message"),
    [("RUN true", "RUN is not a valid change command"), ("EXPOSE http", "invalid port"),
     ("USER", "USER needs an argument")],
)  # fmt: skip
def test_bad_changes_are_refused_in_one_line(change: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        apply_changes([change])
