"""The command line and environment of an engine outrider launches, from the operator's command and a request.

A request names no program, path, variable or free-form flag. What it may add is a short list of engine flags
known to be safe, each with a typed value (AIBrix's `engine_config.args`, values as strings): sizes, dtypes,
parallelism, feature switches. Flags that run code or read files (`--trust-remote-code`, `--chat-template`,
`--tokenizer`, plugins, ...) are not on the list, and anything not on the list is a 400 naming it. The model path
(already confined to the model root), the served name, the host, the port and the API key are outrider's.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping

from outrider.errors import InvalidRequest
from outrider.lifecycle.config import LaunchCommand

# A flag's value parser: the request's string -> the argv tokens to add (none for a switch that is off).
Parser = Callable[[str, str], list[str]]

# kvcached and AIBrix spell segment names this way: anything else becomes '-' (kvcached rewrites it the same, so
# outrider's name and the engine's segment agree).
_IPC_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
# Longest value of one engine flag a request may give.
MAX_FLAG_VALUE = 64
# Variables an engine never inherits from outrider: outrider's own settings and every store or API credential it
# holds. An engine needs none of them (outrider fetches the weights), and an engine's crash dump must not hold them.
_WITHHELD_PREFIXES = ("OUTRIDER_", "AWS_", "TOS_", "OBS_", "INFERENCE_ENGINE", "DOWNLOADER_", "REDIS_")
_WITHHELD = frozenset(
    {
        "ACCESS_KEY",
        "SECRET_KEY",
        "ENDPOINT",
        "HF_TOKEN",
        "HF_AUTH_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        # Set per engine below, never inherited.
        "VLLM_API_KEY",
        "VLLM_SERVER_DEV_MODE",
        "KVCACHED_IPC_NAME",
    }
)


def _integer(low: int, high: int) -> Parser:
    def parse(flag: str, raw: str) -> list[str]:
        text = raw.strip()
        if not re.fullmatch(r"-?[0-9]{1,19}", text) or not low <= int(text) <= high:
            raise ValueError(f"expects a whole number from {low} to {high}")
        return [flag, str(int(text))]

    return parse


def _number(low: float, high: float, *, low_open: bool = False) -> Parser:
    def parse(flag: str, raw: str) -> list[str]:
        try:
            value = float(raw.strip())
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or not (low < value if low_open else low <= value) or value > high:
            raise ValueError(f"expects a number {'above' if low_open else 'from'} {low:g} to {high:g}")
        return [flag, repr(value)]

    return parse


def _choice(*choices: str) -> Parser:
    def parse(flag: str, raw: str) -> list[str]:
        if raw.strip() not in choices:
            raise ValueError(f"expects one of {', '.join(choices)}")
        return [flag, raw.strip()]

    return parse


def _switch(flag: str, raw: str) -> list[str]:
    # AIBrix appends a flag without a value when its value is empty; "true"/"false" read as they say.
    text = raw.strip().lower()
    if text in ("", "true"):
        return [flag]
    if text == "false":
        return []
    raise ValueError('is a switch: expects "", "true" or "false"')


def _name(flag: str, raw: str) -> list[str]:
    # A built-in method's name (a quantization, a parser): looked up in the engine's registry, never a path.
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_\-]{0,63}", raw.strip()):
        raise ValueError("expects a name of letters, digits, '_' and '-'")
    return [flag, raw.strip()]


_DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")
_TP = _integer(1, 256)
_TOKENS = _integer(1, 1 << 24)

VLLM_FLAGS: Mapping[str, Parser] = {
    "--max-model-len": _TOKENS,
    "--dtype": _choice(*_DTYPES),
    "--kv-cache-dtype": _choice("auto", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2", "fp8_inc", "fp8_ds_mla"),
    "--tensor-parallel-size": _TP,
    "--pipeline-parallel-size": _TP,
    "--gpu-memory-utilization": _number(0.0, 1.0, low_open=True),
    "--max-num-seqs": _integer(1, 1 << 20),
    "--max-num-batched-tokens": _TOKENS,
    "--block-size": _choice("1", "8", "16", "32", "64", "128", "256"),
    "--swap-space": _number(0.0, 1 << 20),
    "--cpu-offload-gb": _number(0.0, 1 << 20),
    "--seed": _integer(0, 2**32 - 1),
    "--max-logprobs": _integer(0, 1 << 20),
    "--quantization": _name,
    "--enforce-eager": _switch,
    "--enable-prefix-caching": _switch,
    "--no-enable-prefix-caching": _switch,
    "--enable-chunked-prefill": _switch,
    "--enable-sleep-mode": _switch,
    "--disable-log-stats": _switch,
    "--enable-lora": _switch,
    "--max-loras": _integer(1, 1024),
    "--max-lora-rank": _choice("1", "8", "16", "32", "64", "128", "256", "320", "512"),
    "--max-cpu-loras": _integer(1, 1 << 16),
    "--enable-auto-tool-choice": _switch,
    "--tool-call-parser": _name,
    "--reasoning-parser": _name,
}

SGLANG_FLAGS: Mapping[str, Parser] = {
    "--context-length": _TOKENS,
    "--dtype": _choice(*_DTYPES),
    "--kv-cache-dtype": _choice("auto", "fp8_e5m2", "fp8_e4m3", "bf16", "bfloat16"),
    "--tp-size": _TP,
    "--tensor-parallel-size": _TP,
    "--pp-size": _TP,
    "--mem-fraction-static": _number(0.0, 1.0, low_open=True),
    "--max-running-requests": _integer(1, 1 << 20),
    "--max-total-tokens": _TOKENS,
    "--chunked-prefill-size": _integer(-1, 1 << 24),
    "--random-seed": _integer(0, 2**32 - 1),
    "--quantization": _name,
    "--enable-metrics": _switch,
    "--disable-radix-cache": _switch,
    "--enable-memory-saver": _switch,
    "--enable-lora": _switch,
    "--max-loras-per-batch": _integer(1, 1024),
    "--max-lora-rank": _integer(1, 1024),
    "--tool-call-parser": _name,
    "--reasoning-parser": _name,
}

ENGINE_FLAGS: Mapping[str, Mapping[str, Parser]] = {"vllm": VLLM_FLAGS, "sglang": SGLANG_FLAGS}
# Flags a request may never give, with the reason it is told (every other unknown flag is simply not allowed).
_REFUSED = {
    "--trust-remote-code": "it runs code shipped with the model",
    "--model": "outrider sets it to the fetched artifact",
    "--model-path": "outrider sets it to the fetched artifact",
    "--served-model-name": "outrider sets it to model_name",
    "--host": "outrider sets it",
    "--port": "give the port in the request's port field",
    "--api-key": "outrider sets it from its own --engine-api-key",
}


def sanitize_ipc_name(name: str) -> str:
    return _IPC_UNSAFE.sub("-", name)


def engine_flags(engine: str, args: Mapping[str, str], field: str) -> list[str]:
    """The argv tokens for a request's engine flags (`{"--max-model-len": "2048"}`), each checked against the
    engine's list. Raises InvalidRequest naming `<field><flag>` (`field` ends with its separator)."""
    allowed = ENGINE_FLAGS[engine]
    tokens: list[str] = []
    for flag, raw in args.items():
        where = f"{field}{flag}"
        if flag in _REFUSED:
            raise InvalidRequest(f"{flag} is not accepted: {_REFUSED[flag]}", field=where)
        parser = allowed.get(flag)
        if parser is None:
            known = ", ".join(sorted(allowed))
            raise InvalidRequest(
                f"{flag!r} is not an engine flag a request may set for {engine} (allowed: {known})", field=where
            )
        if len(raw) > MAX_FLAG_VALUE:
            raise InvalidRequest(f"{flag} is longer than {MAX_FLAG_VALUE} characters", field=where)
        try:
            tokens += parser(flag, raw)
        except ValueError as exc:
            raise InvalidRequest(f"{flag} {exc}", field=where) from None
    return tokens


def legacy_flags(additional_config: Mapping[str, str]) -> dict[str, str]:
    """AIBrix's older spelling of engine flags: `additional_config` keys `engine-arg:<flag>`; other keys are ignored,
    as AIBrix ignores them."""
    prefix = "engine-arg:"
    return {key[len(prefix) :]: value for key, value in additional_config.items() if key.startswith(prefix)}


def command_line(
    command: LaunchCommand,
    *,
    model_path: str,
    model_name: str,
    host: str,
    port: int,
    api_key: str | None,
    flags: list[str],
) -> list[str]:
    """The full argv: the operator's command, then what outrider sets, then the request's checked flags."""
    model_flag = "--model" if command.engine == "vllm" else "--model-path"
    argv = [*command.argv, model_flag, model_path, "--served-model-name", model_name]
    argv += ["--host", host, "--port", str(port)]
    if api_key is not None and command.engine == "sglang":
        argv += ["--api-key", api_key]  # SGLang reads no variable for it; outrider's log masks it
    return argv + flags


def environment(
    inherited: Mapping[str, str], *, engine: str, ipc_name: str, api_key: str | None, dev_routes: bool
) -> dict[str, str]:
    """The engine's environment: what outrider was given minus its settings and credentials, plus the engine's
    own: its kvcached segment name, its API key (vLLM reads it from VLLM_API_KEY, kept off the command line, which
    any process can read), and vLLM's development routes when the operator allows them."""
    env = {k: v for k, v in inherited.items() if k not in _WITHHELD and not k.startswith(_WITHHELD_PREFIXES)}
    env["KVCACHED_IPC_NAME"] = ipc_name
    if engine == "vllm":
        if api_key is not None:
            env["VLLM_API_KEY"] = api_key
        if dev_routes:
            env["VLLM_SERVER_DEV_MODE"] = "1"
    return env


def engine_environment(environ: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """What engines may inherit of outrider's own environment (for LifecycleSettings.environment)."""
    return tuple(
        sorted((k, v) for k, v in environ.items() if k not in _WITHHELD and not k.startswith(_WITHHELD_PREFIXES))
    )
