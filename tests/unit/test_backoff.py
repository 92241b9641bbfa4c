"""The one retry backoff: grows by doubling, stops at its cap, and spreads retries by jitter; and the store calls
retried with it."""

from __future__ import annotations

import itertools
import random
import threading

import pytest

from outrider.backoff import Backoff, StoreRetries
from outrider.errors import SourceThrottled, SourceTransientError
from outrider.sources._common import retried


def test_without_jitter_it_doubles_up_to_the_cap() -> None:
    b = Backoff(initial=0.25, cap=10.0, jitter=0.0)
    assert [b.delay(n) for n in range(0, 8)] == [0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 10.0]
    assert b.delay(10_000) == 10.0  # a long outage neither overflows nor passes the cap


def test_jitter_takes_off_at_most_its_share_and_spreads_the_waits() -> None:
    random.seed(7)
    b = Backoff(initial=1.0, cap=100.0)  # default jitter: half
    waits = [b.delay(3) for _ in range(200)]
    assert all(2.0 <= w <= 4.0 for w in waits)
    assert max(waits) - min(waits) > 1.0  # spread out, not lock-step
    assert len(set(waits)) == len(waits)


@pytest.mark.parametrize("jitter", [0.0, 0.5])
def test_delays_follow_delay_failure_by_failure(jitter: float) -> None:
    b = Backoff(initial=0.1, cap=1.0, jitter=jitter)
    random.seed(1)
    from_iter = list(itertools.islice(b.delays(), 6))
    random.seed(1)
    assert from_iter == [b.delay(n) for n in range(1, 7)]


def test_store_calls_are_retried_until_they_answer_or_the_attempts_run_out() -> None:
    policy = StoreRetries(attempts=3, initial=0.001, cap=0.002)
    answers: list[BaseException | str] = [SourceTransientError("reset"), SourceThrottled("slow", retry_after=0.0), "ok"]

    def call() -> str:
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    assert retried(call, threading.Event(), policy) == "ok" and answers == []
    failing = [SourceTransientError("reset")] * 3
    with pytest.raises(SourceTransientError, match="reset"):
        retried(lambda: (_ for _ in ()).throw(failing.pop()), threading.Event(), policy)
    assert failing == []


def test_a_throttled_store_call_waits_its_retry_after_unless_the_source_closes() -> None:
    policy = StoreRetries(attempts=6, initial=0.001, cap=0.002)
    assert 2.0 <= policy.wait(1, retry_after=2.0) <= 2.0 * 1.25
    assert policy.wait(1, retry_after=3600.0) <= 60.0 * 1.25  # capped
    closing = threading.Event()
    closing.set()  # closed: the wait ends at once and the failure is raised
    with pytest.raises(SourceThrottled):
        retried(lambda: (_ for _ in ()).throw(SourceThrottled("slow", retry_after=30.0)), closing, policy)
