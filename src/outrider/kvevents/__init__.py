"""KV-cache events to Redis, in the layout the Kthena router's prefix-aware (kvcache-aware) scoring reads.

wire.py decodes the engines' messages, hashing.py holds the router's chunk hash, index.py turns engine blocks into
router keys, subscriber.py owns one rank's ZMQ socket thread, ranks.py says which ranks publish where,
redis_writer.py writes, indexer.py runs them together.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry

from outrider.kvevents.index import PodIndex
from outrider.kvevents.indexer import KvIndexer
from outrider.kvevents.metrics import KvMetrics
from outrider.kvevents.redis_writer import RedisWriter
from outrider.kvevents.subscriber import Subscriber
from outrider.settings import Settings


def build_indexer(
    settings: Settings,
    registry: CollectorRegistry,
    model: Callable[[], str | None],
    headers: dict[str, str] | None = None,
    engine_base_url: Callable[[], str | None] | None = None,
) -> KvIndexer:
    """The indexer for these settings (which must have kv_events_endpoint and redis_url set).

    `engine_base_url` says where vLLM lists its ranks' publishers (read at each discovery); by default the
    configured engine's base URL. Other engines have no such route: their ranks follow --kv-events-ranks."""
    assert settings.kv_events_endpoint is not None and settings.redis_url is not None
    metrics = KvMetrics(registry)
    return KvIndexer(
        subscriber=Subscriber(
            settings.kv_events_endpoint,
            settings.kv_events_topic,
            metrics,
            replay_endpoint=settings.kv_events_replay_endpoint,
        ),
        writer=RedisWriter(settings.redis_url.get_secret_value(), settings.pod),
        index=PodIndex(settings.kv_hash_block_size),
        metrics=metrics,
        model=model,
        engine_base_url=None if settings.engine != "vllm" else engine_base_url or (lambda: settings.engine_base_url),
        ranks=settings.kv_events_ranks,
        headers=headers,
    )
