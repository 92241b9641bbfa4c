"""The engine lifecycle's options: off by default, the operator's command checked at start, its values read once."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from outrider.cli import build_parser, serve_settings
from outrider.settings import Settings, SettingsError


def settings_for(argv: list[str], env: dict[str, str] | None = None) -> Settings:
    return serve_settings(build_parser().parse_args(["serve", "-E", "vllm", *argv]), env or {})


def test_the_lifecycle_is_off_unless_a_command_is_allowed() -> None:
    assert settings_for([]).lifecycle is None


def test_the_options_make_the_lifecycles_settings() -> None:
    env = {
        "OUTRIDER_ENGINE_LAUNCH": f"vllm={sys.executable} -m vllm.entrypoints.openai.api_server",
        "OUTRIDER_ENGINE_PORTS": "21000-21009",
        "PATH": "/bin",
        "AWS_SECRET_ACCESS_KEY": "pod-secret",
        "OUTRIDER_API_TOKEN": "a-token-long-enough-0123",
    }
    s = settings_for(["--engine-dev-routes", "--engine-on-exit", "keep", "--engine-state-dir", "/var/run/o/"], env)

    lifecycle = s.lifecycle

    assert lifecycle is not None
    (command,) = lifecycle.commands
    assert command.engine == "vllm" and command.argv == (sys.executable, "-m", "vllm.entrypoints.openai.api_server")
    assert lifecycle.ports == (21000, 21009) and lifecycle.state_dir == Path("/var/run/o")
    assert lifecycle.dev_routes and lifecycle.on_exit == "keep" and lifecycle.host == "0.0.0.0"
    inherited = dict(lifecycle.environment)
    assert inherited["PATH"] == "/bin" and "AWS_SECRET_ACCESS_KEY" not in inherited
    assert not any(name.startswith("OUTRIDER_") for name in inherited)
    assert "pod-secret" not in repr(s)


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (
            ["--engine-launch", "vllm=/no/such/vllm serve"],
            "--engine-launch: vllm: '/no/such/vllm' is not",
        ),
        (["--engine-launch", "vllm=/bin/sh --port 1"], "must not set --port"),
        (["--engine-launch", "llamacpp=/bin/sh"], "ENGINE=COMMAND"),
        (["--engine-ports", "80-90"], "--engine-ports: expected 1024 <= first"),
        (["--engine-on-exit", "detach"], "--engine-on-exit: expected stop or keep"),
        (["--engine-state-dir", "relative"], "--engine-state-dir: expected an absolute directory path"),
    ],
)
def test_a_bad_value_stops_start_up_with_one_line(argv: list[str], words: str) -> None:
    with pytest.raises(SettingsError, match=words.replace("(", r"\(")) as caught:
        settings_for(argv)
    assert "\n" not in str(caught.value)
