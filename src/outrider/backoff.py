"""One way to wait between retries: exponential, capped, with jitter.

Every loop in outrider that retries something outside it (a store, the engine, Redis, a ZMQ publisher) asks a
`Backoff` how long to wait before the next try, so that all of them grow, cap and spread out the same way.
Jitter matters because failures are correlated: the chunks of one download, or the replicas of one rollout, fail
together when the store throttles, and without jitter they would retry in lock-step and fail together again.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator

# Doubling: the usual choice, reaching the cap from a small first delay in a handful of tries.
FACTOR = 2.0
# A wait is drawn from [delay * (1 - JITTER), delay]: at most half is taken off, so the backoff still grows.
JITTER = 0.5


@dataclasses.dataclass(frozen=True)
class Backoff:
    """Wait `initial` after the first failure, twice that after the second, ... never more than `cap`."""

    initial: float
    cap: float
    jitter: float = JITTER

    def delay(self, failures: int) -> float:
        """Seconds to wait after `failures` failures in a row (0 or fewer: none)."""
        if failures < 1:
            return 0.0
        # The exponent is bounded so that a long outage cannot overflow the float before the cap applies.
        base = min(self.cap, self.initial * FACTOR ** min(failures - 1, 64))
        return base * (1.0 - self.jitter * random.random())

    def delays(self) -> Iterator[float]:
        """The waits after the first, second, ... failure, for a loop that keeps no failure count of its own."""
        failures = 0
        while True:
            failures += 1
            yield self.delay(failures)


# The longest a store's Retry-After is honoured for: past this, an endpoint (misconfigured, or one a request named)
# could park a download indefinitely; a stalled read is given up after 120 s (stall_timeout) too.
RETRY_AFTER_CAP = 60.0
# A Retry-After wait is lengthened by up to this fraction, at random: every client the store throttled was told the
# same number, and coming back all at once would throttle them all again.
RETRY_AFTER_SPREAD = 0.25


@dataclasses.dataclass(frozen=True)
class StoreRetries:
    """How every call to a store is retried after a transient failure: chunk reads (transfer/engine.py) and the
    listings and metadata requests before them (sources/_common.py), so that one throttled HEAD among a model's
    hundreds of files is waited out as a throttled read is, instead of failing the download."""

    attempts: int = 6  # failures in a row (without progress) before giving up
    initial: float = 0.25
    cap: float = 10.0

    def wait(self, failures: int, retry_after: float | None = None) -> float:
        """Seconds before the next try after `failures` failures in a row; at least the store's Retry-After
        (capped, and spread upwards at random) when it named one."""
        return throttled_wait(Backoff(self.initial, self.cap).delay(failures), retry_after)


def throttled_wait(delay: float, retry_after: float | None) -> float:
    """`delay`, or the store's Retry-After if longer: capped at RETRY_AFTER_CAP and lengthened by up to
    RETRY_AFTER_SPREAD at random."""
    if retry_after is None:
        return delay
    return max(delay, min(retry_after, RETRY_AFTER_CAP) * (1.0 + RETRY_AFTER_SPREAD * random.random()))


STORE_RETRIES = StoreRetries()
