"""The upper tier's side of federation: registered peers, their signed hourly batches, and
reading them back (docs/federation.md).

``POST /v1/federation/hourly`` is open without an API key, like ``/v1/reports``: the body is
signed by the sending platform's Ed25519 key, which an admin registered with
``POST /v1/federation/peers``. The checks, in order: the platform and signature headers, the
peer, the signature over the exact bytes, the body against the wire model (naming the first
bad field), the body's platform against the header's, ``sent_at`` within ``WINDOW_S`` of this
platform's clock (a captured body cannot be replayed later), then the batch's own consistency.
The size is limited before any of it by the app's request limit (``JINSUAN_MAX_REQUEST_BYTES``).

Storing is one transaction per batch, serialised per peer by a row lock on the peer: a site-hour
is stored as revision 1 when new; a version whose figures differ from the current one and that
the peer computed later is stored as the next revision, the earlier ones kept; the same figures
again are a duplicate (a retry, a replay within the window), and a version computed before the
current one is stale. Neither of the last two stores anything; every site-hour is acknowledged
with its status, so the sender records them all and moves on.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import psycopg
from fastapi import APIRouter, Query, Request
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from pydantic import AwareDatetime, BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from collectors.federation import (
    PLATFORM_HEADER,
    BatchAck,
    FederatedBatch,
    HourAck,
    PlatformName,
    Status,
    figures_sha256,
)
from jinsuan.contract.signing import BadKey, load_public_key, verify
from jinsuan.contract.wire import SIGNATURE_HEADER
from jinsuan.kernel.auth import Principal, Role
from jinsuan.kernel.deps import ConnDep, allow, public
from jinsuan.kernel.errors import Conflict, Invalid, Unauthenticated
from jinsuan.kernel.openapi import signed_body

WINDOW_S = 300.0  # as for agents' signed requests (jinsuan.kernel.agentauth)
MAX_RANGE = timedelta(days=31)

Admin = Annotated[Principal, allow(Role.ADMIN)]
Readers = Annotated[Principal, allow(Role.ADMIN, Role.BUREAU, Role.VIEWER)]


class PeerRequest(BaseModel):
    name: PlatformName = Field(description="The lower-tier platform's name, as it sends it in"
                               f" {PLATFORM_HEADER} (its JINSUAN_FEDERATION_PLATFORM).")
    public_key: str = Field(max_length=100, description="Its forwarding key's Ed25519 public"
                            " key, base64 of the raw 32 bytes (`jinsuan federation public-key`"
                            " on that platform).")


class PeerOut(BaseModel):
    id: int
    name: str
    public_key: str
    created_at: datetime


class FederatedHour(BaseModel):
    peer: str
    site: str = Field(description="The site's key at the peer (its site id there).")
    site_name: str
    enterprise: str
    credit_code: str | None
    city: str
    hour: datetime
    revision: int
    current: bool = Field(description="Whether this is the version the peer computed last.")
    computed_at: datetime
    received_at: datetime
    figures: dict[str, Any]
    provenance: dict[str, Any]
    body_sha256: str


def _signed_batch_doc() -> dict[str, Any]:
    """The OpenAPI description of the signed body: the batch, and the platform's headers."""
    extra = signed_body(FederatedBatch)
    extra["parameters"] = [
        {"name": PLATFORM_HEADER, "in": "header", "required": True,
         "description": "The sending platform's registered name.", "schema": {"type": "string"}},
        {"name": SIGNATURE_HEADER, "in": "header", "required": True,
         "description": "Ed25519 signature over the exact body bytes, base64.",
         "schema": {"type": "string"}},
    ]
    return extra


def authenticate(conn: psycopg.Connection, body: bytes, platform: str | None,
                 signature: str | None, *, now: datetime | None = None
                 ) -> tuple[int, FederatedBatch]:
    """The peer's id and its parsed batch; ``Unauthenticated`` (401) or ``Invalid`` (422)."""
    if not platform:
        raise Unauthenticated(f"the {PLATFORM_HEADER} header is required", field=PLATFORM_HEADER)
    if not signature:
        raise Unauthenticated(f"the {SIGNATURE_HEADER} header is required",
                              field=SIGNATURE_HEADER)
    row = conn.execute("SELECT id, public_key FROM federation_peers WHERE name = %s",
                       (platform,)).fetchone()
    if row is None:
        raise Unauthenticated(f"platform {platform!r} is not a registered peer",
                              field=PLATFORM_HEADER)
    try:
        key = load_public_key(row[1])
    except BadKey:
        raise Unauthenticated("the peer's registered key is malformed",
                              field=PLATFORM_HEADER) from None
    if not verify(key, body, signature):
        raise Unauthenticated("signature does not verify with the peer's registered key",
                              field=SIGNATURE_HEADER)
    try:
        batch = FederatedBatch.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        raise Invalid(first["msg"], field=_path(first["loc"]) or "body") from None
    if batch.platform != platform:
        raise Unauthenticated(f"the body says platform {batch.platform!r} but {platform!r}"
                              " signed it", field="platform")
    skew = abs(((now or datetime.now(UTC)) - batch.sent_at).total_seconds())
    if skew > WINDOW_S:
        raise Unauthenticated(f"sent_at is {skew:.0f} s from this platform's clock; at most"
                              f" {WINDOW_S:.0f} s allowed", field="sent_at")
    _check(batch, now or datetime.now(UTC))
    return row[0], batch


def _check(batch: FederatedBatch, now: datetime) -> None:
    """What the wire model cannot say: keys unique, hours whole, past, and of a named site."""
    keys: set[str] = set()
    for i, site in enumerate(batch.sites):
        if site.key in keys:
            raise Invalid(f"site {site.key!r} is listed twice", field=f"sites[{i}].key")
        keys.add(site.key)
    seen: set[tuple[str, datetime]] = set()
    for i, hour in enumerate(batch.hours):
        if hour.site not in keys:
            raise Invalid(f"site {hour.site!r} is not in the batch's sites",
                          field=f"hours[{i}].site")
        moment = hour.hour.astimezone(UTC)
        if moment.minute or moment.second or moment.microsecond:
            raise Invalid("an hour starts on the hour", field=f"hours[{i}].hour")
        if moment + timedelta(hours=1) > now + timedelta(seconds=WINDOW_S):
            raise Invalid("the hour has not ended yet", field=f"hours[{i}].hour")
        if (hour.site, moment) in seen:
            raise Invalid("the site-hour is in the batch twice", field=f"hours[{i}]")
        seen.add((hour.site, moment))


def store(conn: psycopg.Connection, peer_id: int, batch: FederatedBatch, body: bytes
          ) -> BatchAck:
    """Store ``batch`` in one transaction (see the module's docstring); return the answer."""
    body_sha256 = hashlib.sha256(body).digest()
    acks = []
    with conn.transaction():
        conn.execute("SELECT 1 FROM federation_peers WHERE id = %s FOR UPDATE", (peer_id,))
        for site in batch.sites:
            conn.execute(
                "INSERT INTO federated_sites (peer_id, site_key, name, enterprise, credit_code,"
                " city, data_centre, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (peer_id, site_key) DO UPDATE SET name = EXCLUDED.name,"
                " enterprise = EXCLUDED.enterprise, credit_code = EXCLUDED.credit_code,"
                " city = EXCLUDED.city, data_centre = EXCLUDED.data_centre,"
                " updated_at = EXCLUDED.updated_at",
                (peer_id, site.key, site.name, site.enterprise, site.credit_code, site.city,
                 site.data_centre, batch.sent_at))
        for hour in batch.hours:
            digest = figures_sha256(hour.figures)
            latest = conn.execute(
                "SELECT revision, computed_at, figures_sha256, max(revision) OVER ()"
                " FROM federated_site_hourly WHERE peer_id = %s AND site_key = %s AND hour = %s"
                " ORDER BY computed_at DESC, revision DESC LIMIT 1",
                (peer_id, hour.site, hour.hour)).fetchone()
            status: Status
            if latest is None:
                status, revision = "stored", 1
            elif latest[2] == digest:
                status, revision = "duplicate", latest[0]
            elif hour.computed_at <= latest[1]:
                status, revision = "stale", latest[0]
            else:
                status, revision = "revised", latest[3] + 1
            if status in ("stored", "revised"):
                conn.execute(
                    "INSERT INTO federated_site_hourly (peer_id, site_key, hour, revision,"
                    " computed_at, figures, figures_sha256, provenance, body_sha256)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    (peer_id, hour.site, hour.hour, revision, hour.computed_at,
                     Jsonb(hour.figures.model_dump(mode="json")), digest,
                     Jsonb(hour.provenance.model_dump(mode="json")), body_sha256))
            acks.append(HourAck(site=hour.site, hour=hour.hour, status=status,
                                revision=revision))
    return BatchAck(platform=batch.platform, hours=acks)


def _path(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as ``hours[3].figures.it_kwh``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def router() -> APIRouter:
    api = APIRouter(tags=["federation"])

    @api.post(
        "/v1/federation/hourly",
        dependencies=[public("authenticated by the sending platform's Ed25519 signature over"
                             " the body, with the key an admin registered for it")],
        responses={401: {}, 413: {}, 422: {}},
        openapi_extra=_signed_batch_doc(),
    )
    async def receive(request: Request, conn: ConnDep) -> BatchAck:
        """Store a lower-tier platform's signed batch of site-hours; answer each one's status."""
        body = await request.body()
        platform = request.headers.get(PLATFORM_HEADER)
        signature = request.headers.get(SIGNATURE_HEADER)

        def accept() -> BatchAck:
            peer_id, batch = authenticate(conn, body, platform, signature)
            return store(conn, peer_id, batch, body)

        return await run_in_threadpool(accept)

    @api.post("/v1/federation/peers", status_code=201)
    def add_peer(peer: PeerRequest, conn: ConnDep, _: Admin) -> PeerOut:
        """Register a lower-tier platform and the public key its batches are signed with."""
        try:
            load_public_key(peer.public_key)
        except BadKey as exc:
            raise Invalid(str(exc), field="public_key") from None
        with conn.cursor(row_factory=dict_row) as cur:
            row = cur.execute(
                "INSERT INTO federation_peers (name, public_key) VALUES (%s, %s)"
                " ON CONFLICT (name) DO NOTHING RETURNING id, name, public_key, created_at",
                (peer.name, peer.public_key)).fetchone()
        if row is None:
            raise Conflict(f"peer {peer.name!r} is registered already", field="name")
        return PeerOut(**row)

    @api.get("/v1/federation/peers")
    def list_peers(conn: ConnDep, _: Admin) -> list[PeerOut]:
        """The registered lower-tier platforms."""
        with conn.cursor(row_factory=dict_row) as cur:
            rows = cur.execute("SELECT id, name, public_key, created_at FROM federation_peers"
                               " ORDER BY name").fetchall()
        return [PeerOut(**row) for row in rows]

    @api.get("/v1/federation/hourly")
    def read_hours(
        conn: ConnDep, _: Readers,
        start: Annotated[AwareDatetime | None, Query(
            alias="from", description="Start (inclusive); default: 24 hours before `to`.")]
        = None,
        end: Annotated[AwareDatetime | None, Query(
            alias="to", description="End (exclusive); default: now.")] = None,
        peer: Annotated[str | None, Query(description="Only this peer's (its name).")] = None,
        site: Annotated[str | None, Query(description="Only this site's (its name).")] = None,
        history: Annotated[bool, Query(
            description="Every revision, not only the current version.")] = False,
    ) -> list[FederatedHour]:
        """Lower tiers' site-hours over ``[from, to)`` (at most 31 days), by peer, site, hour."""
        end = end or datetime.now(UTC)
        start = start or end - timedelta(hours=24)
        if start >= end:
            raise Invalid("`from` must be before `to`", field="from")
        if end - start > MAX_RANGE:
            raise Invalid(f"the range may span at most {MAX_RANGE.days} days", field="to")
        with conn.cursor(row_factory=dict_row) as cur:
            rows = cur.execute(
                "SELECT * FROM ("
                "  SELECT p.name AS peer, h.site_key AS site, s.name AS site_name,"
                "   s.enterprise, s.credit_code, s.city, h.hour, h.revision, h.computed_at,"
                "   h.received_at, h.figures, h.provenance, encode(h.body_sha256, 'hex')"
                "   AS body_sha256, row_number() OVER (PARTITION BY h.peer_id, h.site_key,"
                "   h.hour ORDER BY h.computed_at DESC, h.revision DESC) = 1 AS current"
                "  FROM federated_site_hourly h"
                "  JOIN federation_peers p ON p.id = h.peer_id"
                "  JOIN federated_sites s ON s.peer_id = h.peer_id AND s.site_key = h.site_key"
                "  WHERE h.hour >= %(start)s AND h.hour < %(end)s"
                "   AND (%(peer)s::text IS NULL OR p.name = %(peer)s)"
                "   AND (%(site)s::text IS NULL OR s.name = %(site)s)) v"
                " WHERE %(history)s OR current"
                " ORDER BY peer, site_name, hour, revision",
                {"start": start, "end": end, "peer": peer, "site": site, "history": history},
            ).fetchall()
        return [FederatedHour(**row) for row in rows]

    return api
