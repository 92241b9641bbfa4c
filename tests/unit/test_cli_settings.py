"""Flags (Kthena spellings), env (AIBrix and OUTRIDER_* spellings), precedence and validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from outrider.cli import build_parser, serve_settings, with_command
from outrider.settings import Settings, SettingsError


def settings_for(argv: list[str], env: dict[str, str] | None = None) -> Settings:
    args = build_parser().parse_args(["serve", *argv])
    return serve_settings(args, env or {})


def test_kthena_flags() -> None:
    s = settings_for(
        [
            "-E",
            "vllmdisaggregated",
            "-H",
            "127.0.0.1",
            "-P",
            "9100",
            "-B",
            "http://engine:8001/",
            "-M",
            "/custom/metrics",
            "-I",
            "pod-a",
            "-N",
            "llama",
        ]
    )
    assert (s.engine, s.host, s.port) == ("vllm", "127.0.0.1", 9100)
    assert s.engine_metrics_url == "http://engine:8001/custom/metrics"
    assert (s.pod, s.model) == ("pod-a", "llama")


def test_kthena_defaults() -> None:
    s = settings_for(["-E", "sglang"])
    assert s.port == 9000 and s.host == "0.0.0.0"
    assert s.engine_base_url == "http://localhost:8000" and s.engine_metrics_path == "/metrics"
    assert s.pod  # from the hostname when POD_NAME is absent
    assert s.model is None
    assert (s.scrape_interval, s.metrics_max_age) == (1.0, 3.0)
    assert s.metrics_profiles == ("outrider",)


def test_engine_defaults_to_vllm_as_aibrix_inference_engine_does() -> None:
    """AIBrix's runtime starts without INFERENCE_ENGINE (its default is vllm); outrider must too."""
    assert settings_for([]).engine == "vllm"
    assert settings_for([], {"INFERENCE_ENGINE": "sglang"}).engine == "sglang"


def test_options_without_a_command_mean_serve() -> None:
    """Kthena's manifests give only `args:`, which replace the image's CMD (serve)."""
    assert with_command(["--port", "8900", "--engine", "vllm"]) == ["serve", "--port", "8900", "--engine", "vllm"]
    assert with_command(["-E", "sglang"])[0] == "serve"
    for kept in (["download", "-s", "x"], ["serve"], ["--help"], ["--version"], []):
        assert with_command(kept) == kept


def test_every_profile_the_metrics_package_publishes_is_accepted() -> None:
    """The gie overlay starts the sidecar with `--metrics-profile outrider,gie`: the flag must take it."""
    s = settings_for(["-E", "sglang", "--metrics-profile", "outrider,gie,kthena,aibrix"])
    assert s.metrics_profiles == ("outrider", "gie", "kthena", "aibrix")


def test_aibrix_env_spellings() -> None:
    s = settings_for(
        ["--port", "8080"],
        {
            "INFERENCE_ENGINE": "vllm",
            "INFERENCE_ENGINE_ENDPOINT": "http://localhost:8010",
            "INFERENCE_ENGINE_API_KEY": "k",
            "METRIC_SCRAPE_PATH": "/m",
            "POD_NAME": "p-1",
        },
    )
    assert s.engine_metrics_url == "http://localhost:8010/m"
    assert s.engine_api_key and s.engine_api_key.get_secret_value() == "k" and s.pod == "p-1" and s.port == 8080


def test_flag_beats_outrider_env_beats_peer_env() -> None:
    env = {
        "OUTRIDER_ENGINE_BASE_URL": "http://a:1",
        "INFERENCE_ENGINE_ENDPOINT": "http://b:2",
        "OUTRIDER_ENGINE": "vllm",
    }
    assert settings_for([], env).engine_base_url == "http://a:1"
    assert settings_for(["-B", "http://c:3"], env).engine_base_url == "http://c:3"
    del env["OUTRIDER_ENGINE_BASE_URL"]
    assert settings_for([], env).engine_base_url == "http://b:2"


def test_every_setting_has_an_outrider_env_name() -> None:
    from outrider.cli import SERVE_OPTIONS

    for opt in SERVE_OPTIONS:
        assert opt.env[0] == "OUTRIDER_" + opt.dest.upper(), opt


def test_max_age_defaults_to_three_intervals() -> None:
    assert settings_for(["-E", "vllm", "--scrape-interval", "2"]).metrics_max_age == 6.0
    assert settings_for(["-E", "vllm", "--scrape-interval", "2", "--metrics-max-age", "1"]).metrics_max_age == 1.0


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["-E", "tgi"], "unknown engine 'tgi'"),
        (["-E", "vllm", "-B", "localhost:8000"], "--engine-base-url"),
        (["-E", "vllm", "-B", "http://"], "--engine-base-url"),
        (["-E", "vllm", "-B", "http://h:8000/?x=1"], "query"),
        (["-E", "vllm", "-P", "99999"], "--port"),
        (["-E", "vllm", "-P", "http"], "--port"),
        (["-E", "vllm", "-M", "metrics"], "--engine-metrics-path"),
        (["-E", "vllm", "--scrape-interval", "0"], "--scrape-interval"),
        (["-E", "vllm", "--scrape-interval", "nan"], "--scrape-interval"),
        (["-E", "vllm", "--metrics-profile", "datadog"], "unknown profile 'datadog'"),
        (["-E", "vllm", "--metrics-prefix", "my-prefix"], "--metrics-prefix"),
        (["-E", "vllm", "--metrics-prefix", "vllm"], "--metrics-prefix: 'vllm' is the namespace of the engine"),
        (["-E", "sglang", "--metrics-prefix", "sglang"], "--metrics-prefix: 'sglang' is the namespace"),
        (["-E", "vllm", "--metrics-prefix", " sglang "], "--metrics-prefix: 'sglang' is the namespace"),
    ],
)
def test_bad_settings_name_the_setting(argv: list[str], needle: str) -> None:
    with pytest.raises(SettingsError) as info:
        settings_for(argv)
    message = str(info.value)
    assert needle in message and "\n" not in message


def test_verify_mode() -> None:
    assert settings_for(["-E", "vllm"]).downloads.verify_checksums is True
    assert settings_for(["-E", "vllm", "--verify", "size"]).downloads.verify_checksums is False
    assert settings_for(["-E", "vllm"], {"OUTRIDER_VERIFY": "size"}).downloads.verify_checksums is False
    with pytest.raises(SettingsError, match="--verify"):
        settings_for(["-E", "vllm", "--verify", "none"])


def test_api_token_from_env_file_and_flag(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("from-a-mounted-secret-0123\n")
    assert settings_for(["-E", "vllm"]).api_token is None
    assert token(["-E", "vllm", "--api-token-file", str(secret)]) == "from-a-mounted-secret-0123"
    env = {"OUTRIDER_API_TOKEN": "from-the-environment-0123", "OUTRIDER_API_TOKEN_FILE": str(secret)}
    assert token(["-E", "vllm"], env) == "from-the-environment-0123"  # the value wins over a file
    assert "from-the-environment" not in repr(settings_for(["-E", "vllm"], env))


def token(argv: list[str], env: dict[str, str] | None = None) -> str | None:
    secret = settings_for(argv, env).api_token
    return secret.get_secret_value() if secret else None


def test_bad_api_token_is_refused_without_echoing_it(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as info:
        settings_for(["-E", "vllm", "--api-token", "short"])
    assert "short" not in str(info.value)
    with pytest.raises(SettingsError, match="--api-token-file"):
        settings_for(["-E", "vllm", "--api-token-file", str(tmp_path / "missing")])
