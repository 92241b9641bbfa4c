"""KV-event settings: flags, the Kthena runtime's REDIS_* variables, and the password kept out of reprs."""

from __future__ import annotations

import pytest

from outrider.settings import SettingsError
from tests.unit.test_cli_settings import settings_for


def test_kv_events_are_off_by_default() -> None:
    s = settings_for(["-E", "vllm"])
    assert s.kv_events_endpoint is None and s.redis_url is None and s.kv_hash_block_size == 16


def test_kthena_redis_env_builds_the_url_and_the_password_stays_out_of_repr() -> None:
    env = {"REDIS_HOST": "redis.kthena", "REDIS_PORT": "6380", "REDIS_DB": "2", "REDIS_PASSWORD": "p@ss:w/rd"}
    s = settings_for(["-E", "vllm", "--kv-events-endpoint", "tcp://*:5557", "--kv-events-topic", "kv-events"], env)
    assert s.redis_url and s.redis_url.get_secret_value() == "redis://:p%40ss%3Aw%2Frd@redis.kthena:6380/2"
    assert s.kv_events_endpoint == "tcp://*:5557" and s.kv_events_topic == "kv-events"
    assert "p@ss" not in repr(s) and "p%40ss" not in repr(s)


def test_kv_events_ranks_default_to_asking_the_engine() -> None:
    assert settings_for(["-E", "vllm"]).kv_events_ranks is None
    argv = [
        "-E",
        "sglang",
        "--kv-events-endpoint",
        "tcp://*:5557",
        "--kv-events-ranks",
        "4",
        "--redis-url",
        "redis://r/0",
    ]
    assert settings_for(argv).kv_events_ranks == 4


def test_redis_url_flag_wins_over_redis_host() -> None:
    s = settings_for(["-E", "vllm", "--redis-url", "redis://127.0.0.1:1/0"], {"REDIS_HOST": "elsewhere"})
    assert s.redis_url and s.redis_url.get_secret_value() == "redis://127.0.0.1:1/0"


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--kv-events-endpoint", "tcp://127.0.0.1:5557"], {}, "--redis-url: required"),
        (["--kv-events-endpoint", "http://x:1", "--redis-url", "redis://r:1/0"], {}, "--kv-events-endpoint"),
        (["--redis-url", "http://user:secret@r/0"], {}, "--redis-url"),
        (["--kv-hash-block-size", "0"], {}, "--kv-hash-block-size"),
        ([], {"REDIS_HOST": "r", "REDIS_DB": "x"}, "REDIS_DB"),
        (["--kv-events-ranks", "0"], {}, "--kv-events-ranks"),
        (
            ["--kv-events-ranks", "2", "--kv-events-endpoint", "ipc:///tmp/kv", "--redis-url", "redis://r:1/0"],
            {},
            "--kv-events-ranks: 'ipc:///tmp/kv' has no port",
        ),
        (
            [
                "--kv-events-ranks",
                "3",
                "--kv-events-endpoint",
                "tcp://*:5557",
                "--kv-events-replay-endpoint",
                "tcp://*:65534",
                "--redis-url",
                "redis://r:1/0",
            ],
            {},
            "port 65536, beyond 65535",
        ),
    ],
)
def test_bad_kv_settings_name_the_setting(argv: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message) as info:
        settings_for(["-E", "vllm", *argv], env)
    assert "secret" not in str(info.value)
