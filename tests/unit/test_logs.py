"""Log formats, the request id on events, and the redactor's values and patterns."""

from __future__ import annotations

import dataclasses
import datetime
import io
import json
import logging
import os
from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from outrider import logs
from outrider.cli import build_parser, main, serve_settings
from outrider.settings import Settings, SettingsError
from outrider.sources.options import SourceOptions, parse_config

SECRET = "s3cr3t-VALUE-for/redaction+test"


@pytest.fixture(autouse=True)
def clean_logging() -> Iterator[None]:
    """`configure` changes the process's root logger: put it back as pytest had it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    logs.REDACTOR.clear()
    yield
    logs.REDACTOR.clear()
    root.handlers[:] = handlers
    root.setLevel(level)


def emit(fmt: str, *args: object, level: int = logging.INFO, **kwargs: object) -> str:
    stream = io.StringIO()
    logs.configure("debug", fmt, stream)
    logging.getLogger("outrider.test").log(level, *args, **kwargs)  # type: ignore[arg-type]
    return stream.getvalue()


def test_json_event_is_one_line_with_time_level_logger_message_extras_and_exc_info() -> None:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        out = emit("json", "hello %s", "world", extra={"route": "/x", "status": 200}, exc_info=True)
    assert out.count("\n") == 1
    event = json.loads(out)
    when = datetime.datetime.fromisoformat(event["time"])
    assert when.utcoffset() == datetime.timedelta(0)
    assert abs((datetime.datetime.now(datetime.UTC) - when).total_seconds()) < 60
    assert (event["level"], event["logger"], event["message"]) == ("info", "outrider.test", "hello world")
    assert (event["route"], event["status"]) == ("/x", 200)
    assert "ValueError: boom" in event["exc_info"] and "Traceback" in event["exc_info"]
    assert "request_id" not in event


def test_events_carry_the_request_id_of_the_request_being_served() -> None:
    token = logs.request_id.set("req-42")
    try:
        event = json.loads(emit("json", "inside"))
        text = emit("text", "inside")
    finally:
        logs.request_id.reset(token)
    assert event["request_id"] == "req-42"
    assert "[req-42] inside" in text
    assert "request_id" not in json.loads(emit("json", "outside"))


def test_text_format_is_one_readable_line() -> None:
    out = emit("text", "hello", extra={"status": 201})
    assert out.count("\n") == 1
    assert " INFO outrider.test hello status=201" in out
    assert out[:4].isdigit() and out.split(" ", 1)[0].endswith("Z")


def test_registered_values_are_masked_in_every_form_and_format() -> None:
    logs.register_secrets(SECRET, "short", None, 42)
    quoted = "s3cr3t-VALUE-for%2Fredaction%2Btest"
    for fmt in ("json", "text"):
        out = emit("json" if fmt == "json" else "text", "key %s in url ?x=%s and %r", SECRET, quoted, {"k": SECRET})
        assert SECRET not in out and quoted not in out
        assert out.count("***") == 3
    assert "short" in emit("json", "short values are not registered: short")


def test_patterns_are_masked_without_registration() -> None:
    lines = [
        "Authorization: Bearer abcdef123456",
        "headers={'Authorization': 'AWS4-HMAC-SHA256 Credential=AKIA/20240101, Signature=abc'}",
        "GET /b/k?X-Amz-Credential=AKIAXYZ&X-Amz-Signature=0123abcd&x=1",
        "GET /b/k?AWSAccessKeyId=AKIAXYZ&Signature=sig%2Fvalue&Expires=1",
        "config secret_key=topsecretvalue access_key=AKIAXYZ",
        '{"secret_key": "topsecretvalue", "hf_token": "hf_abcdef"}',
        "{'session_token': 'tok123456'}",
        "bearer eyJhbGciOi.payload.sig",
    ]
    for line in lines:
        out = logs.redact(line)
        for value in ("abcdef123456", "AKIA", "0123abcd", "sig%2Fvalue", "topsecretvalue", "hf_abcdef", "tok123456"):
            assert value not in out, (line, out)
        assert "***" in out
    assert logs.redact("GET /v1/adapters/sql 200 1.0ms") == "GET /v1/adapters/sql 200 1.0ms"
    assert logs.redact("config.access_key and config.secret_key must be given together").endswith("together")


def test_the_registry_is_bounded_and_keeps_settings_values() -> None:
    redactor = logs.Redactor(max_request_values=3)
    redactor.register(["pinned-value-1"], pinned=True)
    for i in range(10):
        redactor.register([f"request-value-{i}"])
    out = redactor.redact(" ".join(["pinned-value-1", *(f"request-value-{i}" for i in range(10))]))
    assert "pinned-value-1" not in out
    assert "request-value-0" in out  # evicted: the oldest request values go first
    assert all(f"request-value-{i}" not in out for i in (7, 8, 9))


def test_parsing_a_config_registers_its_credentials_even_when_it_is_refused() -> None:
    with pytest.raises(Exception, match="given together"):
        parse_config({"access_key": "half-a-pair-access"})
    parse_config(json.dumps({"secret_key": SECRET, "access_key": "access-key-value", "hf_token": "hf_tokenvalue"}))
    parse_config({"endpoint": "https://s3.example.com", "region": "eu-west-1"})
    out = logs.redact("half-a-pair-access access-key-value hf_tokenvalue " + SECRET + " eu-west-1 s3.example.com")
    assert out == "*** *** *** *** eu-west-1 s3.example.com"


def test_settings_secrets_cover_every_credential_setting() -> None:
    settings = Settings(
        engine="vllm",
        engine_base_url="http://e",
        engine_api_key=SecretStr("engine-key-1"),
        api_token=SecretStr("api-token-0123456789"),
        redis_url=SecretStr("redis://:redis%2Fpass@r:6379/0"),
    )
    pod = SourceOptions(access_key="ak-1234", secret_key="sk-1234", session_token="st-1234", hf_token="hf-1234")
    pod = dataclasses.replace(pod, tos_access_key="tak-1234", tos_secret_key="tsk-1234")
    settings = dataclasses.replace(settings, downloads=dataclasses.replace(settings.downloads, source_defaults=pod))
    logs.REDACTOR.register(logs.secrets_in(settings), pinned=True)
    words = ["engine-key-1", "api-token-0123456789", "redis%2Fpass", "redis/pass", "ak-1234", "sk-1234", "st-1234"]
    words += ["hf-1234", "tak-1234", "tsk-1234"]
    assert logs.redact(" ".join(words)) == " ".join(["***"] * len(words))


def test_log_format_setting_flag_env_and_default() -> None:
    parser = build_parser()
    args = parser.parse_args(["serve", "-E", "vllm", "--log-format", "TEXT"])
    assert serve_settings(args, {}).log_format == "text"
    args = parser.parse_args(["serve", "-E", "vllm"])
    assert serve_settings(args, {"OUTRIDER_LOG_FORMAT": "json"}).log_format == "json"
    assert serve_settings(args, {}).log_format is None
    with pytest.raises(SettingsError, match="--log-format"):
        serve_settings(parser.parse_args(["serve", "-E", "vllm", "--log-format", "xml"]), {})


def test_default_format_is_text_on_a_terminal_and_json_otherwise() -> None:
    assert logs.default_format(io.StringIO()) == "json"
    leader, follower = os.openpty()
    try:
        with os.fdopen(follower, "w", closefd=False) as tty:
            assert logs.default_format(tty) == "text"
    finally:
        os.close(leader)
        os.close(follower)


def test_download_command_takes_the_log_options_too(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["download", "/a", "/b", "--log-format", "xml"], {}) == 2
    assert "--log-format: expected json or text" in capsys.readouterr().err
    assert main(["download", "/a", "/b"], {"OUTRIDER_LOG_LEVEL": "loud"}) == 2
    assert "--log-level" in capsys.readouterr().err
