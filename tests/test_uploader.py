"""The uploader against a real HTTP receiver on loopback that verifies signatures.

Backoff is asserted on the schedule the uploader asks its clock to wait, with an injected
random, never on wall time: the test clock records each wait and returns at once.
"""

from __future__ import annotations

import gzip
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from agents.spool import Spool
from agents.uploader import IDLE_POLL_S, Backoff, CorruptRecord, Outcome, Uploader, seal, unseal
from jinsuan.contract import signing
from jinsuan.contract.wire import Batch, Inventory, Series
from tests.agent_peers import Receiver, Rule

AGENT = "agt_test"


class StepClock:
    """Time advances only when the uploader waits; ``on_wait`` lets a test act between waits."""

    def __init__(self, on_wait: Callable[[float], None]) -> None:
        self.t = 1_700_000_000.0
        self.waits: list[float] = []
        self.on_wait = on_wait

    def time(self) -> float:
        return self.t

    def monotonic(self) -> float:
        return self.t

    def wait(self, event: threading.Event, timeout: float) -> bool:
        self.waits.append(timeout)
        self.t += timeout
        self.on_wait(timeout)
        if len(self.waits) > 500:
            raise AssertionError("uploader never finished")
        return event.is_set()


@pytest.fixture
def key():
    return signing.new_private_key()


@pytest.fixture
def receiver(key) -> Iterator[Receiver]:
    peer = Receiver().start()
    peer.register(AGENT, signing.public_key_b64(key))
    yield peer
    peer.release.set()
    peer.stop()


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    with Spool(tmp_path / "spool.sqlite") as s:
        yield s


def batch_json(seq: int) -> bytes:
    batch = Batch(
        agent_id=AGENT, seq=seq, created_at=datetime(2025, 3, 1, tzinfo=UTC), interval_s=10,
        inventory=Inventory(racks=["A01"]),
        series=[Series(metric="meter_power_watts", device="m1", points=[(seq * 10_000, seq)])],
    )
    return batch.model_dump_json().encode()


def fill(spool: Spool, key, n: int) -> None:
    for _ in range(n):
        spool.append(lambda seq: seal(AGENT, key, batch_json(seq)))


def drain(spool: Spool, receiver: Receiver, *, random: Callable[[], float] = lambda: 1.0,
          between: Callable[[Uploader], None] = lambda _: None, timeout_s: float = 5.0
          ) -> tuple[Uploader, StepClock]:
    """Run the real ``Uploader.run`` loop on this thread until the spool is empty."""
    def on_wait(_: float) -> None:
        between(uploader)
        if spool.pending() == 0:
            uploader.stop()

    clock = StepClock(on_wait)
    uploader = Uploader(spool, receiver.url, clock=clock, timeout_s=timeout_s,
                        backoff=Backoff(0.5, 60.0, random=random))
    try:
        uploader.run()
    finally:
        uploader.close()
    # The loop ends in its idle wait once the spool is empty; what came before was backoff.
    assert clock.waits.pop() == IDLE_POLL_S
    return uploader, clock


def test_sealed_record_carries_signature_over_uncompressed_json(key):
    body = batch_json(1)
    sealed = unseal(seal(AGENT, key, body))
    assert sealed.agent_id == AGENT
    assert gzip.decompress(sealed.gzip_body) == body
    public = signing.load_public_key(signing.public_key_b64(key))
    assert signing.verify(public, body, sealed.signature)
    assert not signing.verify(public, sealed.gzip_body, sealed.signature)


@pytest.mark.parametrize(
    "record", [b"", b"JSB1", b"XXXX\x00\x01\x00\x01ab", b"JSB1\x00\x09\x00\x09a"]
)
def test_unseal_rejects_malformed_records(record):
    with pytest.raises(CorruptRecord):
        unseal(record)


def test_backoff_is_exponential_capped_and_fully_jittered():
    top = Backoff(0.5, 60.0, random=lambda: 1.0)
    assert [top.delay(n) for n in range(1, 10)] == [0.5, 1, 2, 4, 8, 16, 32, 60, 60]
    draws = iter([0.0, 0.25, 0.5])
    jittered = Backoff(0.5, 60.0, random=lambda: next(draws))
    assert [jittered.delay(n) for n in (1, 3, 9)] == [0.0, 0.5, 30.0]
    assert top.delay(10_000) == 60.0
    with pytest.raises(ValueError):
        top.delay(0)


def test_sends_oldest_first_and_acks_each(spool, key, receiver):
    fill(spool, key, 12)
    _uploader, clock = drain(spool, receiver)
    assert receiver.first_arrival_order(AGENT) == list(range(1, 13))
    assert [a.answer for a in receiver.state.arrivals] == [200] * 12
    assert spool.pending() == 0
    assert clock.waits == []  # no backoff when every send succeeds


def test_5xx_retried_same_batch_with_backoff_schedule(spool, key, receiver):
    fill(spool, key, 3)
    receiver.add_rule(Rule("503", count=5))
    draws = iter([1.0, 0.5, 1.0, 0.1, 1.0])
    _, clock = drain(spool, receiver, random=lambda: next(draws))
    # Five 503s for batch 1 (never batch 2 before it), then everything in order.
    seqs = [(a.seq, a.answer) for a in receiver.state.arrivals]
    assert seqs == [(1, 503)] * 5 + [(1, 200), (2, 200), (3, 200)]
    assert clock.waits == [1.0 * 0.5, 0.5 * 1, 1.0 * 2, 0.1 * 4, 1.0 * 8]
    assert spool.pending() == 0


def test_failure_count_resets_after_a_success(spool, key, receiver):
    fill(spool, key, 2)
    receiver.add_rule(Rule("503", count=3, seqs=frozenset({1})))
    receiver.add_rule(Rule("503", count=2, seqs=frozenset({2})))
    _, clock = drain(spool, receiver)
    assert clock.waits == [0.5, 1, 2, 0.5, 1]


def test_4xx_dropped_once_not_retried_and_queue_moves_on(spool, key, receiver):
    fill(spool, key, 3)
    receiver.add_rule(Rule("422", count=None, seqs=frozenset({2})))
    _, clock = drain(spool, receiver)
    assert [(a.seq, a.answer) for a in receiver.state.arrivals] == [(1, 200), (2, 422), (3, 200)]
    assert receiver.stored_seqs(AGENT) == [1, 3]
    assert clock.waits == []
    (rejected,) = spool.rejected()
    assert rejected.seq == 2
    assert "422" in rejected.reason and "series[0].points[0]" in rejected.reason
    assert "plausible bound" in rejected.reason
    assert spool.pending() == 0


def test_duplicate_answer_counts_as_acknowledged(spool, key, receiver):
    fill(spool, key, 2)
    receiver.state.stored[(AGENT, 1)] = Batch.model_validate_json(batch_json(1))
    uploader = Uploader(spool, receiver.url)
    try:
        first = uploader.send_oldest()
        second = uploader.send_oldest()
    finally:
        uploader.close()
    assert (first.outcome, first.seq, first.detail) == (Outcome.ACKED, 1, "duplicate")
    assert (second.outcome, second.seq, second.detail) == (Outcome.ACKED, 2, "stored")
    assert spool.pending() == 0


def test_dropped_connection_is_retried_not_dropped(spool, key, receiver):
    fill(spool, key, 2)
    receiver.add_rule(Rule("drop", count=2))
    _, clock = drain(spool, receiver)
    assert [(a.seq, a.answer) for a in receiver.state.arrivals] == [
        (1, 0), (1, 0), (1, 200), (2, 200)]
    assert clock.waits == [0.5, 1.0]
    assert spool.rejected() == []


def test_receiver_down_entirely_then_back(spool, key, receiver):
    fill(spool, key, 4)
    receiver.stop()
    attempts = {"n": 0}

    def come_back_after_six(_: Uploader) -> None:
        attempts["n"] += 1
        if attempts["n"] == 6:
            receiver.start()

    _, clock = drain(spool, receiver, between=come_back_after_six)
    assert clock.waits == [0.5, 1, 2, 4, 8, 16]
    assert receiver.first_arrival_order(AGENT) == [1, 2, 3, 4]
    assert spool.oldest(1) == [] and spool.rejected() == []


def test_throttled_waits_at_least_retry_after(spool, key, receiver):
    fill(spool, key, 1)
    receiver.add_rule(Rule("429", count=1, retry_after="7"))
    _, clock = drain(spool, receiver, random=lambda: 0.0)
    assert clock.waits == [7.0]
    assert receiver.stored_seqs(AGENT) == [1]


def test_unknown_agent_is_not_the_batch_fault_and_is_retried(spool, key, receiver):
    fill(spool, key, 1)
    receiver.add_rule(Rule("401", count=3))
    _, clock = drain(spool, receiver)
    assert [a.answer for a in receiver.state.arrivals] == [401, 401, 401, 200]
    assert clock.waits == [0.5, 1, 2]
    assert spool.rejected() == []


def test_read_timeout_is_retried(spool, key, receiver):
    fill(spool, key, 1)
    receiver.add_rule(Rule("hold", count=1))

    def release_after_timeout(_: Uploader) -> None:
        receiver.release.set()  # the held request has already timed out on the agent side

    _, clock = drain(spool, receiver, between=release_after_timeout, timeout_s=0.3)
    assert clock.waits == [0.5]
    # The platform had committed the held batch; the resend is answered "duplicate" and acked.
    assert [a.status for a in receiver.state.arrivals] == ["held", "duplicate"]
    assert spool.pending() == 0


def test_uploader_only_holds_one_batch_in_memory(spool, key, receiver, monkeypatch):
    fill(spool, key, 5)
    limits: list[int] = []
    real = spool.oldest

    def oldest(limit: int = 1):
        limits.append(limit)
        return real(limit)

    monkeypatch.setattr(spool, "oldest", oldest)
    drain(spool, receiver)
    assert limits and set(limits) == {1}


def test_corrupt_record_is_dropped_without_sending(spool, key, receiver):
    spool.append(lambda seq: b"not a sealed batch")
    fill(spool, key, 1)
    drain(spool, receiver)
    assert [r.seq for r in spool.rejected()] == [1]
    assert receiver.stored_seqs(AGENT) == [2]


def test_platform_url_path_prefix_is_kept(spool, key, receiver):
    fill(spool, key, 1)
    uploader = Uploader(spool, receiver.url + "/", client=httpx.Client(timeout=5))
    try:
        assert uploader.url == receiver.url + "/v1/reports"
        assert uploader.send_oldest().outcome is Outcome.ACKED
    finally:
        uploader.close()
