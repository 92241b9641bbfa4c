"""One module per inference engine, all behind `engines.base.EngineSpec`."""

from outrider.engines.base import EngineSpec
from outrider.engines.sglang import SGLANG
from outrider.engines.vllm import VLLM

_SPECS = {spec.name: spec for spec in (VLLM, SGLANG)}


def get_engine_spec(name: str) -> EngineSpec:
    """The spec for an engine name already validated by settings."""
    return _SPECS[name]


__all__ = ["EngineSpec", "get_engine_spec"]
