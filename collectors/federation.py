"""Forwarding this platform's closed site-hours, signed, to a higher-tier platform.

The national integrated computing network has regional, provincial and municipal tiers: each
jinsuan platform can send its sites' hourly figures up (this module, the "forwarder") and take
its lower tiers' in (``collectors.federation_routes``, the "receiver"). docs/federation.md has
the design and its reasons; in short:

- A batch (:class:`FederatedBatch`) names the sending platform, its sites (enterprise, city,
  credit code where known) and site-hours: the rollup's figures as decimal strings, the
  rollup's ``computed_at`` (the version), and a digest of the signed reports behind the hour.
  The forwarder signs the exact body bytes with the platform's Ed25519 forwarding key, as an
  agent signs a report; ``sent_at`` in the body bounds a replay.
- Pending are the site-hours whose rollup row has another ``computed_at`` than the one the
  upper tier acknowledged (``federation_outbox``), and is not marked dirty (about to be
  recomputed). A recomputed hour is therefore sent again, and the upper tier keeps it as a
  revision beside the first.
- One process forwards at a time (a session advisory lock, as the rollup takes). A failed post
  keeps everything pending and defers the next attempt, doubling per failure up to
  ``retry_max_s``; the state lives in ``federation_forwarder``, so a restart keeps the back-off.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any, Literal

import httpx
import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from jinsuan.contract.signing import sign
from jinsuan.contract.wire import SIGNATURE_HEADER
from jinsuan.kernel import ledger

if TYPE_CHECKING:
    from apscheduler.schedulers.base import BaseScheduler

    from jinsuan.kernel.platform import Platform
    from jinsuan.kernel.settings import Settings
    from jinsuan.kernel.store import Database

log = logging.getLogger(__name__)

PLATFORM_HEADER = "X-Jinsuan-Platform"
LOCK_KEY = 0x6A73_6665_6400  # "jsfed": one forwarder at a time, across processes
MAX_HOURS = 5000  # site-hours in one batch, at the receiver
MAX_SITES = 5000
# A report is looked for among those its agent built (``created_at``) from the start of the
# hour to this long after its end: an agent builds a batch as it samples, however late it
# uploads it, so the slack only covers the building.
PROVENANCE_SLACK = timedelta(minutes=10)

# --- the wire: what a lower tier sends and the upper tier answers ---------------------------

DecimalText = Annotated[str, StringConstraints(pattern=r"^-?\d{1,30}(\.\d{1,30})?$")]
Text = Annotated[str, StringConstraints(min_length=1, max_length=200)]
PlatformName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Figures(_Wire):
    """One site-hour as the lower tier's rollup holds it (docs/metering.md names each)."""

    it_kwh: DecimalText | None
    facility_kwh: DecimalText | None
    pue: DecimalText | None
    fp16_pflops: DecimalText
    fp16_pflops_estimated: DecimalText
    accelerators: int = Field(ge=0)
    racks: int = Field(ge=0)
    utilization: DecimalText | None
    coverage_it: DecimalText
    coverage_facility: DecimalText
    coverage_accelerators: DecimalText
    quality: list[Annotated[str, StringConstraints(max_length=64)]] = Field(max_length=32)


class Provenance(_Wire):
    """The signed reports behind a site-hour: how many of the site's agents' reports carry
    samples of the hour, and the SHA-256 over their bodies' SHA-256s (32 bytes each, by agent
    id, then seq), so that the upper tier can hold the lower one to the exact reports."""

    reports: int = Field(ge=0)
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class SiteRef(_Wire):
    key: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    name: Text
    enterprise: Text
    credit_code: Annotated[str, StringConstraints(min_length=18, max_length=18)] | None = None
    city: Text
    data_centre: Text


class HourRow(_Wire):
    site: str = Field(max_length=64, description="A key of the batch's ``sites``.")
    hour: AwareDatetime = Field(description="The start of the hour, UTC.")
    computed_at: AwareDatetime = Field(
        description="When the lower tier computed these figures: a later one is a revision.")
    figures: Figures
    provenance: Provenance


class FederatedBatch(_Wire):
    """``POST /v1/federation/hourly``: signed over the exact body bytes (PLATFORM_HEADER names
    the sender, the signature header carries the Ed25519 signature, base64)."""

    platform: PlatformName
    sent_at: AwareDatetime
    sites: list[SiteRef] = Field(max_length=MAX_SITES)
    hours: list[HourRow] = Field(max_length=MAX_HOURS)


Status = Literal["stored", "revised", "duplicate", "stale"]


class HourAck(_Wire):
    site: str
    hour: datetime
    status: Status = Field(description="stored: the first version; revised: a new version kept"
                           " beside the earlier ones; duplicate: these figures are the current"
                           " version already; stale: an older version than the current one,"
                           " not kept.")
    revision: int = Field(description="The revision now current for the site-hour.")


class BatchAck(_Wire):
    platform: str
    hours: list[HourAck]


def figures_sha256(figures: Figures) -> bytes:
    """The digest both tiers take of a site-hour's figures: its JSON with sorted keys."""
    text = json.dumps(figures.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).digest()


def decimal_text(value: Decimal | float | None) -> str | None:
    """A figure as a plain decimal string: ``numeric`` as stored, a ``double precision`` to
    twelve decimal places (its binary noise beyond is not a measurement)."""
    if value is None:
        return None
    if isinstance(value, float):
        value = Decimal(f"{value:.12f}").normalize()
    return format(value, "f")


# --- the forwarder ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ForwarderConfig:
    upstream_url: str  # the higher-tier platform's base URL
    platform: str  # this platform's name there, as its admin registered it
    key: Ed25519PrivateKey
    batch_hours: int = 500  # site-hours per batch (about 700 bytes each)
    max_body_bytes: int = 900 * 1024  # under the receiver's 1 MiB request limit
    max_batches: int = 20  # per run; the rest next run
    retry_base_s: float = 60
    retry_max_s: float = 3600
    timeout_s: float = 30
    scan_overlap: timedelta = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class ForwardResult:
    ran: bool  # False: another process was forwarding, or the back-off deferred this run
    sent: int = 0  # site-hours the upper tier acknowledged
    batches: int = 0
    revisions: int = 0  # of those, new versions of an hour sent before
    error: str | None = None  # why the last post failed; everything unsent stays pending


def config_from(settings: Settings) -> ForwarderConfig | None:
    """The forwarder's settings, or None when no upper tier is configured. The key is made on
    first use (mode 0600), like the ledger's."""
    if not settings.federation_upstream_url:
        return None
    return ForwarderConfig(upstream_url=settings.federation_upstream_url,
                           platform=settings.federation_platform,
                           key=ledger.signing_key(settings.federation_key_path()))


def schedule(jobs: BaseScheduler, platform: Platform) -> None:
    """Add the forwarder to the platform's background jobs when an upper tier is configured."""
    config = config_from(platform.settings)
    if config is None:
        return
    jobs.add_job(forward, "interval", seconds=platform.settings.federation_every_s,
                 args=(platform.db, config), id="federation-forward", coalesce=True,
                 max_instances=1, misfire_grace_time=None)


_ROLLUP_COLUMNS = ("it_kwh", "facility_kwh", "pue", "fp16_pflops", "fp16_pflops_estimated",
                   "accelerators", "racks", "utilization", "coverage_it", "coverage_facility",
                   "coverage_accelerators", "quality")

_PENDING_SQL = (
    "SELECT r.site_id, r.hour, r.computed_at, "
    + ", ".join(f"r.{c}" for c in _ROLLUP_COLUMNS)
    + ", o.figures_sha256, p.reports, p.sha256"
    " FROM rollup_site_hourly r"
    " LEFT JOIN federation_outbox o ON o.site_id = r.site_id AND o.hour = r.hour"
    " CROSS JOIN LATERAL ("
    "   SELECT count(*)::integer AS reports, sha256(coalesce("
    "     string_agg(rp.body_sha256, ''::bytea ORDER BY rp.agent_id, rp.seq), ''::bytea))"
    "     AS sha256"
    "   FROM agents a JOIN reports rp ON rp.agent_id = a.id"
    "   JOIN report_bodies b ON b.report_id = rp.id"
    "   WHERE a.site_id = r.site_id AND rp.created_at >= r.hour"
    "     AND rp.created_at < r.hour + interval '1 hour' + %(slack)s"
    "     AND b.first_ts < r.hour + interval '1 hour' AND b.last_ts >= r.hour) p"
    " WHERE r.computed_at >= %(from)s"
    "   AND (o.site_id IS NULL OR o.computed_at <> r.computed_at)"
    "   AND NOT EXISTS (SELECT 1 FROM rollup_dirty d"
    "                   WHERE d.site_id = r.site_id AND d.hour = r.hour)"
    " ORDER BY r.computed_at, r.site_id, r.hour LIMIT %(limit)s"
)

_ACK_SQL = (
    "INSERT INTO federation_outbox (site_id, hour, computed_at, figures_sha256, revision,"
    " status, acked_at) VALUES (%s, %s, %s, %s, %s, %s, clock_timestamp())"
    " ON CONFLICT (site_id, hour) DO UPDATE SET computed_at = EXCLUDED.computed_at,"
    " figures_sha256 = EXCLUDED.figures_sha256, revision = EXCLUDED.revision,"
    " status = EXCLUDED.status, acked_at = EXCLUDED.acked_at"
)


@dataclass(frozen=True, slots=True)
class _Pending:
    site_id: int
    hour: datetime
    computed_at: datetime
    figures: Figures
    digest: bytes
    sent_before: bool
    provenance: Provenance


class PostFailed(Exception):
    """The upper tier did not acknowledge a batch (unreachable, or it answered an error)."""


def forward(db: Database, config: ForwarderConfig, *, now: datetime | None = None
            ) -> ForwardResult:
    """Send the pending site-hours up, a batch at a time, unless another process is doing it
    or the back-off after a failure has not yet run out; ``now`` fixes the back-off's clock.

    Like the rollup, the lock is a session lock on a connection of its own to ``db.url``
    (straight to PostgreSQL, past any transaction pooler), closed after the run.
    """
    now = now or datetime.now(UTC)
    with psycopg.connect(db.url, autocommit=True, application_name="jinsuan-federation") as conn:
        locked = conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()
        if not (locked and locked[0]):
            return ForwardResult(ran=False)
        state = conn.execute("SELECT scanned_to, failures, next_attempt_at, now()"
                             " FROM federation_forwarder").fetchone()
        assert state is not None  # the migration inserts the one row
        scanned_to, failures, next_attempt_at, started = state
        if next_attempt_at is not None and now < next_attempt_at:
            return ForwardResult(ran=False)
        scan_from = (scanned_to - config.scan_overlap if scanned_to is not None
                     else datetime(1970, 1, 1, tzinfo=UTC))
        result = _Run(conn, config, _Poster(config)).send(scan_from)
        _record(conn, result, failures, now, started, scan_from, config)
    return result


@dataclass
class _Run:
    conn: psycopg.Connection
    config: ForwarderConfig
    poster: _Poster
    sent: int = 0
    batches: int = 0
    revisions: int = 0

    def send(self, scan_from: datetime) -> ForwardResult:
        while self.batches < self.config.max_batches:
            rows = self._pending(scan_from)
            if not rows:
                break
            changed = [r for r in rows if not self._unchanged(r)]
            if not changed:
                continue  # recomputed to the same figures: noted, nothing to send
            try:
                self._send(changed)
            except PostFailed as exc:
                log.warning("federation: %d site-hours not delivered to %s: %s",
                            len(changed), self.config.upstream_url, exc)
                return self._result(error=str(exc))
        if self.sent:
            log.info("federation: %d site-hours (%d revisions) acknowledged in %d batches",
                     self.sent, self.revisions, self.batches)
        return self._result()

    def _result(self, error: str | None = None) -> ForwardResult:
        return ForwardResult(True, self.sent, self.batches, self.revisions, error)

    def _pending(self, scan_from: datetime) -> list[_Pending]:
        rows = self.conn.execute(_PENDING_SQL, {"from": scan_from, "slack": PROVENANCE_SLACK,
                                                "limit": self.config.batch_hours}).fetchall()
        out = []
        for row in rows:
            values = dict(zip(_ROLLUP_COLUMNS, row[3:3 + len(_ROLLUP_COLUMNS)], strict=True))
            figures = Figures(**{c: v if c in ("accelerators", "racks", "quality")
                                 else decimal_text(v) for c, v in values.items()})
            sent_digest, reports, provenance = row[3 + len(_ROLLUP_COLUMNS):]
            digest = figures_sha256(figures)
            out.append(_Pending(row[0], row[1], row[2], figures, digest,
                                sent_before=sent_digest is not None,
                                provenance=Provenance(reports=reports, sha256=provenance.hex())))
        return out

    def _unchanged(self, row: _Pending) -> bool:
        """Whether the upper tier holds these very figures already (the rollup recomputed the
        hour to what it was); if so the outbox takes the new version without a post."""
        return self.conn.execute(
            "UPDATE federation_outbox SET computed_at = %s"
            " WHERE site_id = %s AND hour = %s AND figures_sha256 = %s",
            (row.computed_at, row.site_id, row.hour, row.digest)).rowcount == 1

    def _send(self, rows: list[_Pending]) -> None:
        """Post ``rows`` (in smaller batches when the body would be too large) and record what
        the upper tier acknowledged."""
        body = self._body(rows)
        if len(body) > self.config.max_body_bytes and len(rows) > 1:
            half = len(rows) // 2
            self._send(rows[:half])
            self._send(rows[half:])
            return
        ack = self.poster.post(body, {"Content-Type": "application/json",
                               PLATFORM_HEADER: self.config.platform,
                               SIGNATURE_HEADER: sign(self.config.key, body)})
        self.batches += 1
        by_key = {(str(r.site_id), r.hour): r for r in rows}
        acknowledged = 0
        with self.conn.transaction():
            for hour in ack.hours:
                row = by_key.get((hour.site, hour.hour))
                if row is None:
                    continue
                self.conn.execute(_ACK_SQL, (row.site_id, row.hour, row.computed_at,
                                             row.digest, hour.revision, hour.status))
                acknowledged += 1
                if row.sent_before and hour.status == "revised":
                    self.revisions += 1
        self.sent += acknowledged
        if acknowledged < len(rows):
            raise PostFailed(f"the upper tier acknowledged {acknowledged} of {len(rows)}"
                             " site-hours sent")

    def _body(self, rows: list[_Pending]) -> bytes:
        site_ids = sorted({r.site_id for r in rows})
        sites = self.conn.execute(
            "SELECT s.id, s.name, e.name, trim(e.credit_code), s.city, s.data_centre"
            " FROM sites s JOIN enterprises e ON e.id = s.enterprise_id"
            " WHERE s.id = ANY(%s) ORDER BY s.id", (site_ids,)).fetchall()
        batch = FederatedBatch(
            platform=self.config.platform, sent_at=datetime.now(UTC),
            sites=[SiteRef(key=str(s[0]), name=s[1], enterprise=s[2], credit_code=s[3],
                           city=s[4], data_centre=s[5]) for s in sites],
            hours=[HourRow(site=str(r.site_id), hour=r.hour, computed_at=r.computed_at,
                           figures=r.figures, provenance=r.provenance) for r in rows])
        return batch.model_dump_json().encode()


def _record(conn: psycopg.Connection, result: ForwardResult, failures: int, now: datetime,
            started: datetime, scan_from: datetime, config: ForwarderConfig) -> None:
    """Store the run's outcome: the back-off after a failure, and how far the next scan may
    start (the earliest version still pending, dirty ones included, or this run's start)."""
    row = conn.execute(
        "SELECT min(r.computed_at) FROM rollup_site_hourly r"
        " LEFT JOIN federation_outbox o ON o.site_id = r.site_id AND o.hour = r.hour"
        " WHERE r.computed_at >= %s AND (o.site_id IS NULL OR o.computed_at <> r.computed_at)",
        (scan_from,)).fetchone()
    earliest = row[0] if row else None
    scanned_to = min(earliest, started) if earliest is not None else started
    if result.error is None:
        conn.execute("UPDATE federation_forwarder SET scanned_to = %s, failures = 0,"
                     " next_attempt_at = NULL, last_error = NULL,"
                     " last_success_at = CASE WHEN %s THEN %s ELSE last_success_at END",
                     (scanned_to, result.batches > 0, now))
        return
    delay = min(config.retry_base_s * 2 ** failures, config.retry_max_s)
    delay *= random.uniform(0.5, 1.0)  # spread the lower tiers out after an outage upstream
    conn.execute("UPDATE federation_forwarder SET scanned_to = %s, failures = failures + 1,"
                 " next_attempt_at = %s, last_error = %s",
                 (scanned_to, now + timedelta(seconds=delay), result.error[:500]))


class _Poster:
    """Posts a signed body to the upper tier; anything but its acknowledgement is a failure."""

    def __init__(self, config: ForwarderConfig) -> None:
        self.url = config.upstream_url.rstrip("/") + "/v1/federation/hourly"
        self.timeout_s = config.timeout_s

    def post(self, body: bytes, headers: dict[str, str]) -> BatchAck:
        try:
            reply = httpx.post(self.url, content=body, headers=headers, timeout=self.timeout_s)
        except httpx.HTTPError as exc:
            raise PostFailed(f"cannot reach {self.url}: {exc}") from None
        if reply.status_code != 200:
            raise PostFailed(f"{reply.status_code}: {_reason(reply)}")
        try:
            return BatchAck.model_validate_json(reply.content)
        except ValueError as exc:
            raise PostFailed(f"the acknowledgement does not parse: {exc}") from None


def _reason(reply: httpx.Response) -> str:
    try:
        error: dict[str, Any] = reply.json()["error"]
        where = f" ({error['field']})" if error.get("field") else ""
        return f"{error['reason']}{where}"
    except (ValueError, KeyError, TypeError):
        return reply.text[:200]
