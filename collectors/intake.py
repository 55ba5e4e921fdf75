"""``POST /v1/reports``: authenticated, validated, idempotent ingestion of agent batches.

The checks run in this order, each cheaper than the next or needed by it: body size (before
and after gunzip, the latter with a bounded decompressor so a gzip bomb costs at most
``max_body_bytes`` of memory) → agent header → the agent's public key (cached per process) →
Ed25519 signature over the uncompressed bytes → parse and validate → agent id in the body
equals the header's → the write (``collectors.writer``), which keeps the signed bytes as one
gzip member (:func:`kept_body`) in the report's transaction.

Parsing takes the fast path for a well-formed, valid batch: the body is parsed once with the
same JSON parser pydantic uses (``pydantic_core.from_json``), everything but the series is
validated by the wire model, and the series are checked as flat columns
(``collectors.validation.checked_samples``), with no pydantic object per series. Anything that
path is unsure of goes the canonical way, so every refusal is named exactly as the wire model
and ``first_problem`` name it.

Every refusal is counted by reason in ``jinsuan_ingest_rejected_total`` and answered with the
platform's JSON error shape; a 4xx tells the agent not to retry that batch, a 503 (the store
failed) that it should.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import operator
import time
import zlib
from dataclasses import dataclass
from itertools import islice

import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from psycopg_pool import ConnectionPool
from pydantic import ValidationError
from pydantic_core import PydanticSerializationError, from_json, to_json
from starlette.concurrency import run_in_threadpool

from collectors.exposition import IngestMetrics
from collectors.validation import Limits, Samples, checked_samples, first_problem
from collectors.writer import Writer
from jinsuan.contract.metrics import CATALOGUE, Kind
from jinsuan.contract.signing import BadKey, load_public_key, verify
from jinsuan.contract.wire import (
    AGENT_HEADER,
    SIGNATURE_HEADER,
    Batch,
    ErrorBody,
    ErrorResponse,
    ReportAck,
)
from jinsuan.kernel.deps import public
from jinsuan.kernel.errors import (
    Forbidden,
    Invalid,
    JinsuanError,
    SeqConflict,
    TooLarge,
    Unauthenticated,
)
from jinsuan.kernel.openapi import signed_body
from jinsuan.kernel.platform import Platform

log = logging.getLogger(__name__)

_COUNTERS = frozenset(m.name for m in CATALOGUE.values() if m.kind is Kind.COUNTER)

class Rejected(Exception):
    """A refused report: the domain error to answer with and the counter's reason label."""

    def __init__(self, label: str, error: JinsuanError) -> None:
        super().__init__(error.reason)
        self.label = label
        self.error = error


@dataclass(frozen=True, slots=True)
class AgentKey:
    public_key: Ed25519PublicKey
    site_id: int


class AgentKeys:
    """Enrolled agents' public keys, cached per process.

    Only agents not revoked are cached. A revocation made by another process is still honoured
    at once: the write transaction refuses a revoked agent, and the intake then calls
    :meth:`forget`.
    """

    def __init__(self) -> None:
        self._keys: dict[str, AgentKey] = {}

    def get(self, pool: ConnectionPool, agent_id: str) -> AgentKey | None:
        """The agent's key; the store is asked (for a pooled connection) only on a miss."""
        key = self._keys.get(agent_id)
        if key is not None:
            return key
        with pool.connection() as conn:
            row = conn.execute(
                "SELECT public_key, site_id FROM agents WHERE id = %s AND revoked_at IS NULL",
                (agent_id,),
            ).fetchone()
        if row is None:
            return None
        try:
            key = AgentKey(load_public_key(row[0]), row[1])
        except BadKey:
            log.error("agent %s has a malformed public key in the store", agent_id)
            return None
        self._keys[agent_id] = key
        return key

    def forget(self, agent_id: str) -> None:
        self._keys.pop(agent_id, None)


def gunzip_bounded(data: bytes, limit: int) -> bytes:
    """Decompress a single gzip member, refusing output beyond ``limit`` bytes."""
    inflater = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        error = Invalid(f"body is not valid gzip: {exc}", field="body")
        raise Rejected("bad_gzip", error) from None
    if len(out) > limit:
        raise Rejected("too_large", TooLarge(
            f"body inflates to more than the {limit} bytes allowed", field="body"))
    if not inflater.eof:
        raise Rejected("bad_gzip", Invalid("gzip body is truncated", field="body"))
    if inflater.unused_data:
        raise Rejected("bad_gzip", Invalid("data after the end of the gzip body", field="body"))
    return out


def kept_body(raw: bytes, encoding: str, body: bytes) -> bytes:
    """The evidence kept of a report: one gzip member whose content is exactly ``body``, the
    bytes the signature covers. A gzip'd request is that already (``gunzip_bounded`` refused
    anything after its one member), and is kept as sent at no cost; a plain one is compressed
    as agents compress (level 6)."""
    return raw if encoding == "gzip" else gzip.compress(body, compresslevel=6, mtime=0)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise Rejected("too_large", TooLarge(f"body is {declared} bytes; at most {limit} allowed",
                                             field="body"))
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise Rejected("too_large", TooLarge(f"body exceeds the {limit} bytes allowed",
                                                 field="body"))
    return bytes(body)


def _field_path(loc: tuple[int | str, ...]) -> str:
    """Render a pydantic error location as ``series[3].points[17]``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse_checked(body: bytes, limits: Limits) -> tuple[Batch, Samples] | None:
    """The fast path: a well-formed, valid body as its envelope and its samples, else None.

    The envelope (all but ``series``) is validated by the wire model itself, in JSON mode, from
    the parsed document re-serialised without its series (a few kilobytes of inventory);
    the returned ``Batch`` therefore has no series: they are in the ``Samples``. None means
    "take the canonical path", which names the problem or accepts after lax coercion.
    """
    try:
        document = from_json(body)
    except ValueError:
        return None
    if type(document) is not dict:
        return None
    series = document.pop("series", [])
    try:
        batch = Batch.model_validate_json(to_json(document))
    except (ValidationError, PydanticSerializationError):
        return None
    samples = checked_samples(series, batch.inventory, limits)
    return None if samples is None else (batch, samples)


class Intake:
    """The ingest path of one platform process: its caches, writer and counters."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.settings = platform.settings
        self.keys = AgentKeys()
        self.writer = Writer(platform.db)
        self.metrics = IngestMetrics(platform.registry)
        self._counters: dict[tuple[int, str, str], tuple[int, float]] = {}  # last counter points

    def accept(self, raw: bytes, encoding: str, agent_id: str | None,
               signature: str | None) -> ReportAck:
        """Check and store one report body as received; raise ``Rejected`` to refuse it."""
        limit = self.settings.max_body_bytes
        if encoding == "gzip":
            body = gunzip_bounded(raw, limit)
        elif encoding in ("", "identity"):
            body = raw
        else:
            raise Rejected("bad_encoding", Invalid(
                f"Content-Encoding {encoding!r} is not supported; use gzip or none",
                field="Content-Encoding"))
        if not agent_id:
            raise Rejected("unauthenticated", Unauthenticated(
                f"the {AGENT_HEADER} header is required", field=AGENT_HEADER))
        if not signature:
            raise Rejected("unauthenticated", Unauthenticated(
                f"the {SIGNATURE_HEADER} header is required", field=SIGNATURE_HEADER))
        pool = self.platform.db.pool
        key = self.keys.get(pool, agent_id)
        if key is None:
            raise Rejected("unknown_agent", Unauthenticated(
                f"agent {agent_id!r} is not enrolled or was revoked", field=AGENT_HEADER))
        if not verify(key.public_key, body, signature):
            raise Rejected("bad_signature", Unauthenticated(
                "signature does not verify with the agent's enrolled key",
                field=SIGNATURE_HEADER))
        limits = self._limits()
        fast = parse_checked(body, limits)
        batch = fast[0] if fast is not None else self._parse(body)
        if batch.agent_id != agent_id:
            raise Rejected("agent_mismatch", Forbidden(
                f"body says agent {batch.agent_id!r} but it was signed by {agent_id!r}",
                field="agent_id"))
        if fast is not None:
            samples = fast[1]
        else:
            problem = first_problem(batch, limits)
            if problem is not None:
                raise Rejected(problem.rule.value, problem.error())
            samples = Samples.of(batch.series)
        evidence = kept_body(raw, encoding, body)
        with pool.connection() as conn:  # held for the write only, not for the checks
            try:
                written = self.writer.write(
                    conn, batch, samples, site_id=key.site_id,
                    body_sha256=hashlib.sha256(body).digest(), signature=signature,
                    body_gzip=evidence,
                )
            except Unauthenticated as exc:
                self.keys.forget(agent_id)
                raise Rejected("revoked", exc) from None
            except SeqConflict as exc:
                raise Rejected("seq_conflict", exc) from None
        if written.status == "duplicate":
            self.metrics.duplicates.inc()
        else:
            self.metrics.batches.inc()
            self.metrics.samples.inc(written.samples)
            self._count_resets(key.site_id, samples)
        return ReportAck(agent_id=agent_id, seq=batch.seq, status=written.status,
                         samples=written.samples)

    def _parse(self, body: bytes) -> Batch:
        """The canonical parse: the wire model, naming the first malformed field."""
        try:
            return Batch.model_validate_json(body)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            raise Rejected("malformed", Invalid(
                first["msg"], field=_field_path(tuple(first["loc"])) or "body")) from None

    def _limits(self) -> Limits:
        now_ms = int(time.time() * 1000)
        retention_ms = self.settings.retention_days * 86_400_000
        return Limits(oldest_ms=now_ms - retention_ms,
                      newest_ms=now_ms + int(self.settings.max_future_skew_s * 1000))

    def _count_resets(self, site_id: int, samples: Samples) -> None:
        """Count counters going backwards, within the batch and since this process's last one."""
        resets = 0
        times, values = samples.times, samples.values
        for metric, device, start, stop in samples.spans():
            if metric not in _COUNTERS:
                continue
            series = values[start:stop]
            resets += sum(map(operator.gt, series, islice(series, 1, None)))
            key = (site_id, metric, device)
            previous = self._counters.get(key)
            first, last = (times[start], values[start]), (times[stop - 1], values[stop - 1])
            if previous is not None and previous[0] < first[0] and previous[1] > first[1]:
                resets += 1
            if previous is None or previous[0] < last[0]:
                self._counters[key] = last
        if resets:
            self.metrics.counter_resets.inc(resets)


def _error(status: int, code: str, reason: str, field: str | None = None) -> JSONResponse:
    body = ErrorResponse(error=ErrorBody(code=code, field=field, reason=reason))
    content = body.model_dump(exclude={"error": {"next_seq"}})
    return JSONResponse(status_code=status, content=content)


def router(intake: Intake) -> APIRouter:
    api = APIRouter(tags=["intake"])

    @api.post(
        "/v1/reports",
        dependencies=[public("authenticated by the agent's Ed25519 signature over the body")],
        response_model=ReportAck,
        responses={401: {}, 403: {}, 409: {"model": ErrorResponse}, 413: {}, 415: {}, 422: {},
                   503: {}},
        openapi_extra=signed_body(Batch, gzip=True),
    )
    async def post_report(request: Request) -> ReportAck | JSONResponse:
        """Store one signed batch of samples from a site agent (``jinsuan.contract.wire.Batch``)."""
        started = time.perf_counter()
        try:
            raw = await read_body(request, intake.settings.max_body_bytes)
            headers = request.headers
            ack = await run_in_threadpool(
                intake.accept, raw, headers.get("content-encoding", "").strip().lower(),
                headers.get(AGENT_HEADER), headers.get(SIGNATURE_HEADER),
            )
        except Rejected as exc:
            intake.metrics.rejected.labels(exc.label).inc()
            if exc.label == "bad_encoding":
                return _error(415, exc.error.code, exc.error.reason, exc.error.field)
            if isinstance(exc.error, SeqConflict):
                log.warning("agent %s: %s", request.headers.get(AGENT_HEADER), exc.error.reason)
                body = ErrorResponse(error=ErrorBody(
                    code=exc.error.code, field=exc.error.field, reason=exc.error.reason,
                    next_seq=exc.error.next_seq))
                return JSONResponse(status_code=409, content=body.model_dump())
            raise exc.error from None
        except psycopg.Error:
            log.exception("storing a report failed")
            intake.metrics.rejected.labels("store_error").inc()
            return _error(503, "unavailable", "the store could not take the report; retry later")
        intake.metrics.latency.observe(time.perf_counter() - started)
        return ack


    return api
