"""Writing one validated report batch to the store: whole, once, or not at all.

One transaction does everything, in this order:

1. insert the ``reports`` row (the idempotency key ``(agent_id, seq)`` and the audit trail:
   body SHA-256 and signature) with ``ON CONFLICT DO NOTHING``; a conflict means a duplicate
   or a replay, and nothing else is written;
2. update the agent's ``last_seq``/``last_report_at``, refusing an agent revoked meanwhile
   (a seq already stored is a duplicate only with the same body: another body under it is a
   ``SeqConflict``);
3. keep the signed body (``report_bodies``), so that an acknowledged report always has its
   evidence (``collectors.evidence`` checks it again);
4. resolve series ids (a per-process cache, misses upserted);
5. ``COPY`` the samples in binary format, each naming the report's id (encoded here, see
   :func:`encode_samples`);
6. upsert the inventory when its hash changed since the agent's last report;
7. mark the touched ``(site, hour)`` pairs dirty for the rollups.

Rows that several transactions may lock (series, inventory, dirty hours) are always written in
sorted order, so concurrent batches of one site cannot deadlock. The daily partitions the
samples need are created before the transaction (``Partitions.ensure``), never inside it.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from itertools import chain, repeat
from typing import Literal, cast

import psycopg

from collectors.validation import Samples
from jinsuan.contract.accelerators import fp16_peak
from jinsuan.contract.wire import Batch, Inventory
from jinsuan.kernel.errors import SeqConflict, Unauthenticated
from jinsuan.kernel.store import Database

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PG_EPOCH_MS = 946_684_800_000  # 2000-01-01T00:00:00Z, PostgreSQL's timestamp origin
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_COPY_TRAILER = struct.pack(">h", -1)
# One row: field count 4, then each field as its byte length and big-endian value. The fixed
# parts are packed as strings: fewer arguments to convert per row. The last field, the report's
# id, is the same for every row of a batch, so it is packed once: 12 bytes, or 4 for NULL.
_ROW = struct.Struct(">6sq4si4sd12s")
_ROW_NO_REPORT = struct.Struct(">6sq4si4sd4s")
_FIELDS_AND_TS_LENGTH = struct.pack(">hi", 4, 8)
_INT4_LENGTH = struct.pack(">i", 4)
_FLOAT8_LENGTH = struct.pack(">i", 8)
_NULL = struct.pack(">i", -1)
_HOUR_MS = 3_600_000
_DAY_MS = 86_400_000

COPY_SAMPLES = "COPY samples (ts, series_id, value, report_id) FROM STDIN (FORMAT BINARY)"


@dataclass(frozen=True, slots=True)
class Written:
    status: Literal["stored", "duplicate"]
    samples: int


@dataclass(frozen=True, slots=True)
class Touched:
    """The UTC days (for partitions) and hours (for the rollups) a batch's samples fall in,
    and its first and last sample's time (kept with its body)."""

    days: frozenset[date]
    hours: tuple[datetime, ...]
    span: tuple[datetime, datetime] | None = None

    @classmethod
    def of(cls, samples: Samples) -> Touched:
        """Days that hold a sample, and every hour from each series' first to last sample.

        Points are sorted within a series (validated), so a series' span is its first and last
        point. The common batch lies within one hour and costs two passes; otherwise each
        series is looked at, and only a series spanning several days is scanned point by point.
        """
        times = samples.times
        if not times:
            return cls(frozenset(), ())
        lo, hi = min(times), max(times)
        span = (_EPOCH + timedelta(milliseconds=lo), _EPOCH + timedelta(milliseconds=hi))
        if lo // _HOUR_MS == hi // _HOUR_MS:
            return cls(frozenset({_day(lo // _DAY_MS)}), (_hour(lo // _HOUR_MS),), span)
        days: set[int] = set()
        hours: set[int] = set()
        for _, _, start, stop in samples.spans():
            first, last = times[start], times[stop - 1]
            if first // _DAY_MS == last // _DAY_MS:
                days.add(first // _DAY_MS)
            else:
                days.update(t // _DAY_MS for t in times[start:stop])
            hours.update(range(first // _HOUR_MS, last // _HOUR_MS + 1))
        return cls(frozenset(map(_day, days)), tuple(map(_hour, sorted(hours))), span)


def _day(days_since_epoch: int) -> date:
    return _EPOCH.date() + timedelta(days=days_since_epoch)


def _hour(hours_since_epoch: int) -> datetime:
    return _EPOCH + timedelta(hours=hours_since_epoch)


#: An unchanged inventory is written again this often, to keep ``last_seen`` (and FP16 figures
#: from an updated model table) current without writing it with every batch.
INVENTORY_REFRESH = timedelta(minutes=10)


def inventory_sha256(inventory: Inventory) -> bytes:
    return hashlib.sha256(inventory.model_dump_json().encode()).digest()


class SeriesIds:
    """Series ids by site and ``(metric, device)``; holds only ids whose rows are committed."""

    def __init__(self) -> None:
        self._by_site: dict[int, dict[tuple[str, str], int]] = {}

    def resolve(
        self, conn: psycopg.Connection, site_id: int, samples: Samples
    ) -> tuple[list[int], dict[tuple[str, str], int]]:
        """The id of each series of ``samples`` at ``site_id``, and those read from the store.

        Misses are upserted in the caller's transaction; the caller hands the second mapping
        to :meth:`remember` once that transaction has committed, so a rolled-back insert never
        leaves a dangling id in the cache.
        """
        known = self._by_site.get(site_id, {})
        pairs = list(zip(samples.metrics, samples.devices, strict=True))
        ids = list(map(known.get, pairs))
        if None not in ids:
            return cast(list[int], ids), {}
        missing = sorted({pair for pair, i in zip(pairs, ids, strict=True) if i is None})
        metrics = [m for m, _ in missing]
        devices = [d for _, d in missing]
        conn.execute(
            "INSERT INTO series (site_id, metric, device)"
            " SELECT %s, m, d FROM unnest(%s::text[], %s::text[]) AS u(m, d) ORDER BY m, d"
            " ON CONFLICT (site_id, metric, device) DO NOTHING",
            (site_id, metrics, devices),
        )
        rows = conn.execute(
            "SELECT s.metric, s.device, s.id FROM series s"
            " JOIN unnest(%s::text[], %s::text[]) AS u(m, d)"
            " ON s.metric = u.m AND s.device = u.d"
            " WHERE s.site_id = %s",
            (metrics, devices, site_id),
        ).fetchall()
        fetched = {(metric, device): series_id for metric, device, series_id in rows}
        return [known.get(p) or fetched[p] for p in pairs], fetched

    def remember(self, site_id: int, fetched: dict[tuple[str, str], int]) -> None:
        if fetched:
            self._by_site.setdefault(site_id, {}).update(fetched)


class Writer:
    """Writes batches for one platform process; holds its series-id cache."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.series_ids = SeriesIds()

    def write(
        self,
        conn: psycopg.Connection,
        batch: Batch,
        samples: Samples,
        *,
        site_id: int,
        body_sha256: bytes,
        signature: str,
        body_gzip: bytes,
    ) -> Written:
        """Store a checked report for the agent's site, or acknowledge it as a duplicate.

        ``batch`` gives the report's agent, seq, creation time and inventory; its samples are
        ``samples`` (``batch.series`` is not read: the intake's fast path leaves it empty).
        ``body_gzip`` is one gzip member holding exactly the bytes the signature covers.
        Raises ``Unauthenticated`` when the agent was revoked; any database error leaves the
        store as it was (the transaction rolls back) and propagates.
        """
        touched = Touched.of(samples)
        self.db.partitions.ensure(conn, touched.days)
        with conn.transaction():
            inserted = conn.execute(
                "INSERT INTO reports (agent_id, seq, created_at, samples, body_sha256, signature)"
                " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (agent_id, seq) DO NOTHING"
                " RETURNING id",
                (batch.agent_id, batch.seq, batch.created_at, len(samples), body_sha256,
                 signature),
            ).fetchone()
            if inserted is None:
                _check_not_revoked(conn, batch.agent_id)
                _check_same_body(conn, batch, body_sha256)
                return Written("duplicate", 0)
            agent = conn.execute(
                "UPDATE agents SET last_seq = greatest(last_seq, %s), last_report_at = now()"
                " WHERE id = %s AND revoked_at IS NULL"
                " RETURNING inventory_sha256, inventory_seen_at",
                (batch.seq, batch.agent_id),
            ).fetchone()
            if agent is None:
                raise Unauthenticated(f"agent {batch.agent_id!r} is revoked", field="agent_id")
            report_id = inserted[0]
            first, last = touched.span or (None, None)
            conn.execute(  # a report without samples is kept as long as those received with it
                "INSERT INTO report_bodies (report_id, first_ts, last_ts, body)"
                " VALUES (%s, coalesce(%s, now()), coalesce(%s, now()), %b)",
                (report_id, first, last, body_gzip))
            ids, fetched = self.series_ids.resolve(conn, site_id, samples)
            conn.execute(  # matches no row unless the agent's declared interval changed
                "UPDATE series SET interval_s = %s WHERE id = ANY(%s)"
                " AND interval_s IS DISTINCT FROM %s",
                (batch.interval_s, sorted(set(ids)), batch.interval_s))
            with conn.cursor() as cur, cur.copy(COPY_SAMPLES) as copy:
                copy.write(encode_samples(ids, samples, report_id))
            digest = inventory_sha256(batch.inventory)
            known_digest, seen_at = agent
            if (known_digest is None or bytes(known_digest) != digest or seen_at is None
                    or batch.created_at - seen_at >= INVENTORY_REFRESH):
                _upsert_inventory(conn, site_id, batch.inventory, batch.created_at)
                conn.execute(
                    "UPDATE agents SET inventory_sha256 = %s,"
                    " inventory_seen_at = greatest(inventory_seen_at, %s) WHERE id = %s",
                    (digest, batch.created_at, batch.agent_id),
                )
            if touched.hours:
                conn.execute(
                    "INSERT INTO rollup_dirty (site_id, hour)"
                    " SELECT %s, h FROM unnest(%s::timestamptz[]) AS h ORDER BY h"
                    " ON CONFLICT (site_id, hour) DO UPDATE SET marked_at = clock_timestamp()",
                    (site_id, list(touched.hours)),
                )
        self.series_ids.remember(site_id, fetched)
        return Written("stored", len(samples))


def _check_not_revoked(conn: psycopg.Connection, agent_id: str) -> None:
    row = conn.execute(
        "SELECT revoked_at IS NULL FROM agents WHERE id = %s", (agent_id,)
    ).fetchone()
    if row is None or not row[0]:
        raise Unauthenticated(f"agent {agent_id!r} is revoked", field="agent_id")


def _check_same_body(conn: psycopg.Connection, batch: Batch, body_sha256: bytes) -> None:
    """A stored seq sent again is a duplicate only with the same bytes; another body under it
    is an agent whose numbers restarted (its state restored without its spool), refused so
    that it stays in the agent's spool until renumbered, never acknowledged and dropped."""
    row = conn.execute(
        "SELECT r.body_sha256, a.last_seq FROM reports r JOIN agents a ON a.id = r.agent_id"
        " WHERE r.agent_id = %s AND r.seq = %s", (batch.agent_id, batch.seq)).fetchone()
    if row is not None and bytes(row[0]) != body_sha256:
        raise SeqConflict(
            f"seq {batch.seq} is already stored for agent {batch.agent_id!r} with another body;"
            f" the first seq not stored is {row[1] + 1}", next_seq=row[1] + 1)


def encode_samples(
    series_ids: Sequence[int], samples: Samples, report_id: int | None = None
) -> bytes:
    """Rows ``(ts, series_id, value, report_id)`` in PostgreSQL's binary COPY format (the
    columns of :data:`COPY_SAMPLES`), header to trailer.

    ``series_ids[i]`` is the id of the ``i``-th series of ``samples``; ``report_id`` is the
    report that carried them (None: no report, as for samples a benchmark loads). Each row is
    one fixed-size ``struct`` pack, driven by ``map`` over the columns: no datetime objects and
    no Python code per row. A batch's points share a few timestamps (one per sampling cycle),
    so each distinct one is converted once. This is the format ``COPY ... (FORMAT BINARY)``
    documents: a signature and two zero int32s, then per row an int16 field count and each
    field as int32 length (-1 for NULL) and big-endian value (timestamptz as int64
    microseconds since 2000-01-01 UTC), then int16 -1.
    """
    micros = {ms: (ms - _PG_EPOCH_MS) * 1000 for ms in set(samples.times)}
    row, report = ((_ROW_NO_REPORT, _NULL) if report_id is None
                   else (_ROW, struct.pack(">iq", 8, report_id)))
    rows = map(
        row.pack,
        repeat(_FIELDS_AND_TS_LENGTH), map(micros.__getitem__, samples.times),
        repeat(_INT4_LENGTH), chain.from_iterable(map(repeat, series_ids, samples.counts)),
        repeat(_FLOAT8_LENGTH), samples.values, repeat(report),
    )
    return b"".join(chain((_COPY_HEADER,), rows, (_COPY_TRAILER,)))


def _upsert_inventory(
    conn: psycopg.Connection, site_id: int, inventory: Inventory, seen: datetime
) -> None:
    """Insert or refresh the racks, accelerators (with their FP16 figure) and meters reported."""
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO racks (site_id, id, first_seen, last_seen) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (site_id, id) DO UPDATE SET"
            " first_seen = least(racks.first_seen, EXCLUDED.first_seen),"
            " last_seen = greatest(racks.last_seen, EXCLUDED.last_seen)",
            [(site_id, rack, seen, seen) for rack in sorted(set(inventory.racks))],
        )
        rows = []
        for acc in sorted(inventory.accelerators, key=lambda a: a.uuid):
            peak = fp16_peak(acc.model, acc.vendor, acc.sm_count, acc.sm_clock_max_mhz,
                              acc.compute_capability)
            rows.append((
                site_id, acc.uuid, acc.model, acc.vendor, peak.domestic, acc.rack,
                acc.memory_total_bytes, peak.tflops, peak.estimated, peak.source, seen, seen,
            ))
        cur.executemany(
            "INSERT INTO accelerators (site_id, uuid, model, vendor, domestic, rack,"
            " memory_total_bytes, fp16_tflops, fp16_estimated, fp16_source, first_seen, last_seen)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (site_id, uuid) DO UPDATE SET"
            " model = EXCLUDED.model, vendor = EXCLUDED.vendor, domestic = EXCLUDED.domestic,"
            " rack = EXCLUDED.rack, memory_total_bytes = EXCLUDED.memory_total_bytes,"
            " fp16_tflops = EXCLUDED.fp16_tflops, fp16_estimated = EXCLUDED.fp16_estimated,"
            " fp16_source = EXCLUDED.fp16_source,"
            " first_seen = least(accelerators.first_seen, EXCLUDED.first_seen),"
            " last_seen = greatest(accelerators.last_seen, EXCLUDED.last_seen)",
            rows,
        )
        cur.executemany(
            "INSERT INTO meters (site_id, id, role, measures, racks, first_seen, last_seen)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (site_id, id) DO UPDATE SET"
            " role = EXCLUDED.role, measures = EXCLUDED.measures, racks = EXCLUDED.racks,"
            " first_seen = least(meters.first_seen, EXCLUDED.first_seen),"
            " last_seen = greatest(meters.last_seen, EXCLUDED.last_seen)",
            [
                (site_id, m.id, m.role.value, m.measures, list(m.racks), seen, seen)
                for m in sorted(inventory.meters, key=lambda m: m.id)
            ],
        )
