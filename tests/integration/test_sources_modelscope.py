"""The `ms://` source against the local ModelScope-protocol server: a listing the hub fails is retried."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from outrider.backoff import StoreRetries
from outrider.errors import SourceTransientError
from outrider.sources import SourceOptions, open_source
from tests.servers.modelscope import ModelScopeServer

TOKEN = "ms-test-token"


@pytest.fixture
def hub() -> Iterator[ModelScopeServer]:
    server = ModelScopeServer(TOKEN)
    server.add_repo("owner/tiny", {"config.json": b"{}", "model.safetensors": b"x" * 1000})
    server.start()
    yield server
    server.stop()


def test_a_failed_listing_is_retried_with_the_store_policy(
    hub: ModelScopeServer, fast_store_retries: StoreRetries
) -> None:
    source = open_source("ms://owner/tiny", SourceOptions(ms_endpoint=hub.url), pvc_root=None, max_workers=2)
    try:
        hub.listing_failures = fast_store_retries.attempts - 1  # every try but the last fails
        assert sorted(f.path for f in source.list_files()) == ["config.json", "model.safetensors"]
        hub.listing_failures = fast_store_retries.attempts  # as many failures as the policy takes
        with pytest.raises(SourceTransientError, match="503"):
            source.list_files()
    finally:
        source.close()
