"""Sends spooled batches to the platform, oldest first, and acknowledges each one it delivered.

One batch is in flight at a time. The platform deduplicates by ``(agent, seq)`` and does not need
order, so pipelining would be safe; it is not done because one request at a time already drains
an hour's backlog in seconds, keeps arrival strictly oldest first, and keeps memory at one
batch whatever the backlog.

What each answer means:

* 2xx (``stored`` or ``duplicate``): the platform has the batch; ``ack`` removes it. A duplicate
  is the normal result of resending a batch whose acknowledgement was lost (agent killed
  mid-upload, connection dropped after the platform committed).
* Connection errors, timeouts, 5xx, 408, 429: the platform could not take it now. The same batch
  is retried after an exponential backoff with full jitter (``Retry-After`` honoured up to the
  cap), and nothing newer is sent before it.
* 401, 403, 404, 405: the platform does not accept this agent or this URL at all. That is a
  credentials or configuration fault, not the batch's, and dropping would throw away every batch
  until an operator notices; so these are retried with backoff too and logged as errors.
* 409 ``seq_conflict``: the platform already holds this batch's seq with another body (the
  agent's state was restored without its spool, so its numbers restarted). The platform names
  the first seq it has not stored; every pending batch is renumbered from there and re-signed
  (``Spool.renumber``) and sent again at once: nothing is lost and nothing stored twice.
* Any other 4xx (422 invalid, 413 too large, ...): the batch itself is refused. The platform's
  error (field and reason) is logged, the batch is moved to the spool's ``rejected`` table with
  that reason, and the next one is sent: a bad batch never blocks the queue.

A spooled record is ``MAGIC, len(agent), len(signature), agent id, signature, gzip body``: the
signature is over the uncompressed JSON, made when the batch was spooled, so the uploader sends
the bytes unchanged; it needs the key and a JSON parser only to renumber after a seq conflict.
"""

from __future__ import annotations

import enum
import gzip
import logging
import random
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from agents.clock import Clock, SystemClock
from agents.exporter import AgentMetrics
from agents.identity import describe_error
from agents.spool import Spool, SpooledBatch, SpoolError
from jinsuan import __version__
from jinsuan.contract import signing
from jinsuan.contract.wire import (
    AGENT_HEADER,
    SEQ_CONFLICT_CODE,
    SIGNATURE_HEADER,
    Batch,
    ErrorResponse,
    ReportAck,
)

log = logging.getLogger("jinsuan.agent.uploader")

MAGIC = b"JSB1"
_LENGTHS = struct.Struct(">HH")
REPORTS_PATH = "/v1/reports"
IDLE_POLL_S = 5.0  # re-check the spool this often even if no append woke us
_NOT_THE_BATCH = frozenset({401, 403, 404, 405})
_TRY_LATER = frozenset({408, 429})


class CorruptRecord(ValueError):
    """A spooled record that is not in the format ``seal`` writes."""


@dataclass(frozen=True, slots=True)
class SealedBatch:
    agent_id: str
    signature: str
    gzip_body: bytes


def seal(agent_id: str, key: Ed25519PrivateKey, body: bytes) -> bytes:
    """Sign the uncompressed ``body``, gzip it, and frame both for the spool."""
    signature = signing.sign(key, body).encode("ascii")
    agent = agent_id.encode()
    compressed = gzip.compress(body, compresslevel=6, mtime=0)
    return MAGIC + _LENGTHS.pack(len(agent), len(signature)) + agent + signature + compressed


def reseal(record: bytes, seq: int, key: Ed25519PrivateKey) -> bytes:
    """The spooled ``record`` with its batch's ``seq`` changed, signed anew with ``key``."""
    sealed = unseal(record)
    batch = Batch.model_validate_json(gzip.decompress(sealed.gzip_body))
    body = batch.model_copy(update={"seq": seq}).model_dump_json().encode()
    return seal(sealed.agent_id, key, body)


def unseal(record: bytes) -> SealedBatch:
    head = len(MAGIC) + _LENGTHS.size
    if len(record) < head or record[: len(MAGIC)] != MAGIC:
        raise CorruptRecord("record does not start with the batch magic")
    agent_len, signature_len = _LENGTHS.unpack_from(record, len(MAGIC))
    body_at = head + agent_len + signature_len
    if len(record) <= body_at:
        raise CorruptRecord("record is shorter than its header says")
    try:
        agent = record[head : head + agent_len].decode()
        signature = record[head + agent_len : body_at].decode("ascii")
    except UnicodeDecodeError as exc:
        raise CorruptRecord(f"record header is not text: {exc}") from None
    return SealedBatch(agent, signature, record[body_at:])


class Backoff:
    """Exponential backoff with full jitter: the n-th consecutive failure waits
    ``random() × min(cap, base × 2^(n-1))`` seconds, so many agents coming back after a platform
    outage spread their retries instead of arriving together."""

    def __init__(
        self, base_s: float = 0.5, cap_s: float = 60.0, random: Callable[[], float] = random.random
    ) -> None:
        if base_s <= 0 or cap_s < base_s:
            raise ValueError(f"need 0 < base_s <= cap_s, got base_s={base_s} cap_s={cap_s}")
        self.base_s, self.cap_s, self._random = base_s, cap_s, random

    def ceiling(self, failures: int) -> float:
        return min(self.cap_s, self.base_s * 2.0 ** min(failures - 1, 64))

    def delay(self, failures: int) -> float:
        if failures < 1:
            raise ValueError(f"failures must be >= 1, got {failures}")
        return self._random() * self.ceiling(failures)


class Outcome(enum.StrEnum):
    IDLE = "idle"  # nothing pending
    ACKED = "acked"
    DROPPED = "dropped"
    RETRY = "retry"
    RENUMBERED = "renumbered"  # a seq conflict: the batches moved to new numbers, send again


@dataclass(frozen=True, slots=True)
class Attempt:
    outcome: Outcome
    seq: int | None = None
    detail: str = ""
    retry_after_s: float | None = None


class Uploader:
    """Drains the spool to the platform; ``run`` on its own thread, ``stop`` from any thread."""

    def __init__(
        self,
        spool: Spool,
        platform_url: str,
        *,
        metrics: AgentMetrics | None = None,
        clock: Clock | None = None,
        backoff: Backoff | None = None,
        client: httpx.Client | None = None,
        timeout_s: float = 30.0,
        key: Ed25519PrivateKey | None = None,
    ) -> None:
        self.spool = spool
        self.key = key  # to re-sign batches renumbered after a seq conflict
        self.url = platform_url.rstrip("/") + REPORTS_PATH
        self.metrics = metrics
        self.clock = clock or SystemClock()
        self.backoff = backoff or Backoff()
        self._client = client or httpx.Client(
            timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s)),
            headers={"User-Agent": f"jinsuan-agent/{__version__}"},
        )
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.failures = 0  # consecutive failed attempts; resets on any answer about the batch

    def notify(self) -> None:
        """A batch was appended: wake the uploader if it is idle."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def close(self) -> None:
        self._client.close()

    def run(self) -> None:
        """Send until ``stop``; a send in flight when stop is asked is allowed to finish."""
        while not self._stop.is_set():
            self._wake.clear()
            try:
                attempt = self.send_oldest()
            except SpoolError as exc:
                if self._stop.is_set():
                    return  # the spool was closed under us during shutdown
                log.exception("spool error, retrying: %s", exc)
                attempt = Attempt(Outcome.RETRY, detail=str(exc))
            if attempt.outcome is Outcome.IDLE:
                self.clock.wait(self._wake, IDLE_POLL_S)
            elif attempt.outcome is Outcome.RETRY:
                self.failures += 1
                delay = self.backoff.delay(self.failures)
                if attempt.retry_after_s is not None:
                    delay = max(delay, min(attempt.retry_after_s, self.backoff.cap_s))
                log.debug("batch %s: retry in %.2fs (%s)", attempt.seq, delay, attempt.detail)
                self.clock.wait(self._stop, delay)
            else:
                self.failures = 0

    def send_oldest(self) -> Attempt:
        """One attempt to deliver the oldest pending batch; never waits for backoff."""
        pending = self.spool.oldest(1)
        if not pending:
            return Attempt(Outcome.IDLE)
        return self._send(pending[0])

    def _send(self, batch: SpooledBatch) -> Attempt:
        try:
            sealed = unseal(batch.body)
        except CorruptRecord as exc:
            return self._drop(batch.seq, "corrupt", f"corrupt spool record: {exc}")
        headers = {
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
            AGENT_HEADER: sealed.agent_id,
            SIGNATURE_HEADER: sealed.signature,
        }
        try:
            response = self._client.post(self.url, content=sealed.gzip_body, headers=headers)
        except httpx.TimeoutException as exc:
            return self._retry(batch.seq, "timeout", f"{type(exc).__name__}: {exc}")
        except httpx.TransportError as exc:
            return self._retry(batch.seq, "connection", f"{type(exc).__name__}: {exc}")
        status = response.status_code
        if 200 <= status < 300:
            return self._ack(batch.seq, response)
        detail = describe_error(response)
        if status >= 500:
            return self._retry(batch.seq, "http_5xx", detail)
        if status in _TRY_LATER:
            return self._retry(batch.seq, f"http_{status}", detail, _retry_after(response))
        if status in _NOT_THE_BATCH:
            log.error("platform at %s refuses this agent (%s); batch %s kept, retrying",
                      self.url, detail, batch.seq)
            return self._retry(batch.seq, f"http_{status}", detail)
        if status == 409:
            return self._renumber(batch.seq, response, detail)
        if 400 <= status < 500:
            log.error("platform rejected batch %s for good: %s; dropping it", batch.seq, detail)
            return self._drop(batch.seq, str(status), detail)
        return self._retry(batch.seq, "http_other", detail)

    def _ack(self, seq: int, response: httpx.Response) -> Attempt:
        try:
            ack = ReportAck.model_validate_json(response.content)
            status = ack.status
            if ack.seq != seq:
                log.warning("platform acknowledged seq %s for batch %s", ack.seq, seq)
        except ValidationError:
            status = "unparsed"
        self.spool.ack(seq)
        if self.metrics:
            self.metrics.batches_sent.labels(status).inc()
            self.metrics.last_upload.set(self.clock.time())
            self._update_backlog()
        return Attempt(Outcome.ACKED, seq, status)

    def _renumber(self, seq: int, response: httpx.Response, detail: str) -> Attempt:
        """The platform holds this seq with another body (this agent's numbers restarted): move
        every unsent batch to the numbers it names, re-signed, and send again at once. A 409
        that names no number, or an uploader without the key, keeps the batch and retries."""
        try:
            error = ErrorResponse.model_validate_json(response.content).error
        except ValidationError:
            error = None
        if error is None or error.code != SEQ_CONFLICT_CODE or error.next_seq is None:
            return self._retry(seq, "http_409", detail)
        if self.key is None:
            log.error("batch %s: %s; cannot renumber without the agent's key", seq, detail)
            return self._retry(seq, "seq_conflict", detail)
        key = self.key
        shift = self.spool.renumber(error.next_seq, lambda body, new: reseal(body, new, key))
        log.warning("the platform already holds seq %s from this agent with another body (was"
                    " its state restored without its spool?); %d pending batch(es) renumbered"
                    " from %s", seq, self.spool.pending(), seq + shift)
        if self.metrics:
            self.metrics.seq_conflicts.inc()
            self._update_backlog()
        return Attempt(Outcome.RENUMBERED, seq, detail)

    def _drop(self, seq: int, code: str, reason: str) -> Attempt:
        self.spool.drop(seq, reason)
        if self.metrics:
            self.metrics.batches_rejected.labels(code).inc()
            self._update_backlog()
        return Attempt(Outcome.DROPPED, seq, reason)

    def _retry(
        self, seq: int, reason: str, detail: str, retry_after_s: float | None = None
    ) -> Attempt:
        attempts = self.spool.record_failure(seq)
        if attempts == 1 or attempts % 10 == 0:
            log.warning("batch %s not delivered (attempt %d): %s", seq, attempts, detail)
        if self.metrics:
            self.metrics.upload_failures.labels(reason).inc()
        return Attempt(Outcome.RETRY, seq, detail, retry_after_s)

    def _update_backlog(self) -> None:
        assert self.metrics is not None
        self.metrics.spool_pending.set(self.spool.pending())
        self.metrics.spool_pending_bytes.set(self.spool.pending_bytes())


def _retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` as seconds, from either of its two forms; None if absent or unreadable."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
