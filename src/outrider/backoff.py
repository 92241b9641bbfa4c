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
