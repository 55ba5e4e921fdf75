"""The evidence behind a site's figures, checked again from the store alone, and its retention.

The intake keeps every accepted report's signed bytes (``report_bodies``, written in the
report's own transaction by ``collectors.writer``) and every sample names the report that
carried it (``samples.report_id``). :func:`verify` uses them for one site and a range of time:

- every hour of the range with a stored rollup is computed again from the raw samples by the
  rollup's own code (``collectors.rollup.fetch_window`` and ``summarise``; nothing is written),
  and each figure is compared with the stored one;
- every report that carried a sample in the window those hours read (the range, its margins
  and the counter readings beyond them), and every report of the site's agents whose samples
  lie in it, is checked: its body is decompressed, hashed against the SHA-256 recorded on
  receipt, verified against its agent's enrolled public key (a revoked agent's too: the key was
  good when the report came), parsed, and its samples in the window compared one by one with
  the stored samples that name it;
- samples in the window that name no kept report are reported, since nothing vouches for them.

Any difference is a problem, named by report or by hour and figure. A difference in a dirty hour
(late data the rollup has not taken in yet) is still one, and says so. Hours whose raw samples
are past retention cannot be checked; they are counted, not compared.

:func:`drop_expired_bodies` keeps the bodies exactly as long as the samples they carried;
:func:`recompress_bodies` rewrites the aged ones as xz (the same signed bytes, smaller), and
:func:`signed_bytes` reads a body back whichever way it is kept.
"""

from __future__ import annotations

import hashlib
import lzma
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
from pydantic import ValidationError

from collectors.intake import Rejected, gunzip_bounded
from collectors.rollup import HOUR, MARGIN, SiteHour, Window, fetch_window, floor_hour, summarise
from jinsuan.contract.signing import BadKey, load_public_key
from jinsuan.contract.signing import verify as signature_verifies
from jinsuan.contract.wire import Batch
from jinsuan.kernel.errors import Invalid, TooLarge
from jinsuan.kernel.settings import Settings
from jinsuan.kernel.store.partitions import retained_from

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_FIGURES = tuple(f.name for f in fields(SiteHour) if f.name not in ("site_id", "hour"))
_SHOWN = 5  # sample differences listed per report; the rest are counted

Sample = tuple[str, str, int, float]  # metric, device, ms since the epoch, value


GZIP, XZ = "gzip", "xz"  # report_bodies.codec


def signed_bytes(body: bytes, codec: str, limit: int) -> bytes:
    """The bytes an agent signed, from a body kept as ``codec``; more than ``limit`` bytes, or
    anything but one complete stream, is refused (``Rejected``)."""
    if codec == GZIP:
        return gunzip_bounded(body, limit)
    inflater = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    try:
        out = inflater.decompress(body, limit + 1)
    except lzma.LZMAError as exc:
        raise Rejected("bad_xz", Invalid(f"body is not valid xz: {exc}", field="body")) from None
    if len(out) > limit:
        raise Rejected("too_large", TooLarge(
            f"body inflates to more than the {limit} bytes allowed", field="body"))
    if not inflater.eof or inflater.unused_data:
        raise Rejected("bad_xz", Invalid("the xz body is truncated or followed by data",
                                         field="body"))
    return out


@dataclass(frozen=True, slots=True)
class Recompressed:
    bodies: int
    bytes_before: int
    bytes_after: int


def recompress_bodies(conn: psycopg.Connection, settings: Settings, older_than: datetime,
                      limit: int = 500) -> Recompressed:
    """Rewrite up to ``limit`` gzip bodies whose last sample is older than ``older_than`` as xz
    (preset ``settings.evidence_xz_preset``), in one transaction, skipping bodies another
    process holds. Each new body is read back and compared with the signed bytes before it
    replaces the old one, so a body is never stored that does not give back what was signed."""
    before = after = 0
    with conn.transaction():
        rows = conn.execute(
            "SELECT report_id, body FROM report_bodies WHERE codec = %s AND last_ts < %s"
            " ORDER BY last_ts, report_id LIMIT %s FOR UPDATE SKIP LOCKED",
            (GZIP, older_than, limit)).fetchall()
        updates = []
        for report_id, body in rows:
            signed = gunzip_bounded(bytes(body), settings.max_body_bytes)
            packed = lzma.compress(signed, format=lzma.FORMAT_XZ,
                                   preset=settings.evidence_xz_preset)
            if signed_bytes(packed, XZ, len(signed)) != signed:  # never: lzma is lossless
                raise RuntimeError(f"report {report_id}: xz did not give its body back")
            updates.append((packed, XZ, report_id))
            before, after = before + len(body), after + len(packed)
        if updates:
            with conn.cursor() as cur:
                cur.executemany("UPDATE report_bodies SET body = %s, codec = %s"
                                " WHERE report_id = %s", updates)
    return Recompressed(len(rows), before, after)


def drop_expired_bodies(conn: psycopg.Connection, keep_days: int, today: date) -> int:
    """Delete the bodies whose last sample is older than the raw samples kept (their samples
    are dropped by ``Partitions.apply_retention`` with the same ``keep_days``); return how many."""
    return conn.execute("DELETE FROM report_bodies WHERE last_ts < %s",
                        (retained_from(keep_days, today),)).rowcount


@dataclass
class Verdict:
    """What :func:`verify` found: ``problems`` is empty when every check passed."""

    problems: list[str] = field(default_factory=list)
    hours: int = 0  # hours computed again and compared
    reports: int = 0  # reports whose body was checked
    samples: int = 0  # stored samples compared with what their report signed
    past_retention: int = 0  # stored hours whose samples are gone: not checked
    not_rolled_up: int = 0  # hours of the range the rollup has not closed yet


def verify(conn: psycopg.Connection, settings: Settings, site_id: int, start: datetime,
           end: datetime, *, today: date | None = None) -> Verdict:
    """Check the rollups of ``site_id``'s hours in ``[start, end)`` and the signed reports
    behind them, in one read-only snapshot of the store."""
    today = today or datetime.now(UTC).date()
    kept_from = retained_from(settings.retention_days, today)
    verdict = Verdict()
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        window = _Span(max(floor_hour(start) - MARGIN, kept_from), end + MARGIN)
        _check_hours(conn, site_id, start, end, kept_from + HOUR, window, verdict)
        _check_reports(conn, settings, site_id, window, verdict)
    return verdict


@dataclass
class _Span:
    """The window of sample times checked against the reports, both ends included."""

    lo: datetime
    hi: datetime

    def widen(self, window: Window) -> None:
        if window.span is not None:
            self.lo = min(self.lo, _from_ms(round(window.span[0] * 1000)))
            self.hi = max(self.hi, _from_ms(round(window.span[1] * 1000)))

    def in_ms(self) -> range:
        """The window's milliseconds since the epoch, for ``in``."""
        return range(_to_ms(self.lo), _to_ms(self.hi) + 1)


def _check_hours(conn: psycopg.Connection, site_id: int, start: datetime, end: datetime,
                 checkable_from: datetime, span: _Span, verdict: Verdict) -> None:
    """Compute each hour again and compare it with the stored rollup."""
    stored = {
        row[0].astimezone(UTC): dict(zip(_FIGURES, row[1:], strict=True))
        for row in conn.execute(
            f"SELECT hour, {', '.join(_FIGURES)} FROM rollup_site_hourly"
            " WHERE site_id = %s AND hour >= %s AND hour < %s",
            (site_id, floor_hour(start), end)).fetchall()
    }
    state = conn.execute("SELECT watermark FROM rollup_state WHERE site_id = %s",
                         (site_id,)).fetchone()
    watermark = state[0].astimezone(UTC) if state else None
    dirty = {h.astimezone(UTC) for (h,) in conn.execute(
        "SELECT hour FROM rollup_dirty WHERE site_id = %s", (site_id,)).fetchall()}
    for hour in _hours(floor_hour(start), end):
        row = stored.get(hour)
        if hour < checkable_from:
            verdict.past_retention += row is not None
            continue
        if row is None and (watermark is None or hour >= watermark):
            verdict.not_rolled_up += 1
            continue
        window = fetch_window(conn, site_id, hour)
        span.widen(window)
        again = summarise(site_id, hour, window)
        name = f"hour {hour:%Y-%m-%dT%H:%MZ}"
        if row is None:
            begin, close = hour.timestamp(), (hour + HOUR).timestamp()
            if any(track.any_in(begin, close) for track in window.tracks.values()):
                verdict.problems.append(f"{name}: has samples but no stored rollup")
            continue
        verdict.hours += 1
        note = " (the hour is marked dirty: late data not rolled up yet)" if hour in dirty else ""
        for figure in _FIGURES:
            kept, computed = row[figure], getattr(again, figure)
            if not _same(kept, computed):
                verdict.problems.append(
                    f"{name}: {figure} stored {_text(kept)}, recomputed from the samples"
                    f" {_text(computed)}{note}")


def _text(figure: Any) -> str:
    return "NULL" if figure is None else str(figure)


def _same(stored: Any, computed: Any) -> bool:
    """Equal figures; floats within 1e-9 relative, since a sum's order may differ by process
    (set iteration) in its last bits, which a tampered value would not."""
    if isinstance(stored, float) and isinstance(computed, float):
        return math.isclose(stored, computed, rel_tol=1e-9, abs_tol=1e-12)
    return stored == computed


def _check_reports(conn: psycopg.Connection, settings: Settings, site_id: int, span: _Span,
                   verdict: Verdict) -> None:
    """Check every report with samples in ``span`` against its kept body and signature."""
    series = {i: (metric, device) for i, metric, device in conn.execute(
        "SELECT id, metric, device FROM series WHERE site_id = %s", (site_id,)).fetchall()}
    ids = sorted(series)
    named: set[int] = set()
    for report_id, series_id, count, first, last in conn.execute(
            "SELECT report_id, CASE WHEN report_id IS NULL THEN series_id END, count(*),"
            " min(ts), max(ts) FROM samples"
            " WHERE series_id = ANY(%s) AND ts >= %s AND ts <= %s GROUP BY 1, 2 ORDER BY 1, 2",
            (ids, span.lo, span.hi)).fetchall():
        if report_id is not None:
            named.add(report_id)
            continue
        metric, device = series[series_id]
        verdict.problems.append(
            f"{count} samples of {metric} {device} from {first.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}"
            f" to {last.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ} name no report: nothing vouches"
            " for them")
    bodies = {i for (i,) in conn.execute(
        "SELECT b.report_id FROM report_bodies b JOIN reports r ON r.id = b.report_id"
        " JOIN agents a ON a.id = r.agent_id"
        " WHERE a.site_id = %s AND b.last_ts >= %s AND b.first_ts <= %s",
        (site_id, span.lo, span.hi)).fetchall()}
    wanted = sorted(named | bodies)
    found: set[int] = set()
    for report in _reports(conn, wanted):
        found.add(report.id)
        verdict.reports += 1
        verdict.problems += report.check(conn, settings, site_id, series, span, verdict)
    verdict.problems += [f"samples name report id {i}, which is not stored"
                         for i in wanted if i not in found]


@dataclass(frozen=True, slots=True)
class _Report:
    id: int
    agent_id: str
    seq: int
    body_sha256: bytes
    signature: str
    agent_site: int
    public_key: str
    body: bytes | None
    codec: str | None

    def check(self, conn: psycopg.Connection, settings: Settings, site_id: int,
              series: dict[int, tuple[str, str]], span: _Span, verdict: Verdict) -> list[str]:
        """This report's problems; its samples are compared only once its body is trusted."""
        name = f"report {self.agent_id} seq {self.seq}"
        if self.agent_site != site_id:
            return [f"{name}: its agent is of site {self.agent_site}, yet samples of this site"
                    " name it"]
        if self.body is None:
            return [f"{name}: its body is not kept (stored before bodies were kept, or"
                    " dropped), so its signature cannot be checked"]
        try:
            body = signed_bytes(self.body, self.codec, settings.max_body_bytes)
        except Rejected as exc:
            return [f"{name}: the kept body does not decompress: {exc.error.reason}"]
        problems = []
        if hashlib.sha256(body).digest() != self.body_sha256:
            problems.append(f"{name}: the kept body is not the one received (its SHA-256"
                            " differs from the one recorded on receipt)")
        try:
            key = load_public_key(self.public_key)
        except BadKey:
            return [*problems, f"{name}: agent {self.agent_id} has a malformed public key"]
        if not signature_verifies(key, body, self.signature):
            return [*problems, f"{name}: the signature does not verify with agent"
                               f" {self.agent_id}'s key over the kept body"]
        try:
            batch = Batch.model_validate_json(body)
        except ValidationError as exc:
            return [*problems, f"{name}: the signed body does not parse: {exc.errors()[0]['msg']}"]
        if (batch.agent_id, batch.seq) != (self.agent_id, self.seq):
            return [*problems, f"{name}: the signed body is agent {batch.agent_id} seq"
                               f" {batch.seq}'s"]
        inside = span.in_ms()
        signed = Counter((s.metric, s.device, t, v) for s in batch.series
                         for t, v in s.points if t in inside)
        stored = Counter((*series[i], ms, v) for i, ms, v in conn.execute(
            "SELECT series_id, (extract(epoch FROM ts) * 1000)::bigint, value FROM samples"
            " WHERE report_id = %s AND series_id = ANY(%s) AND ts >= %s AND ts <= %s",
            (self.id, sorted(series), span.lo, span.hi)).fetchall())
        verdict.samples += stored.total()
        return problems + [f"{name}: {d}" for d in _differences(signed, stored)]


def _reports(conn: psycopg.Connection, ids: list[int]) -> Iterator[_Report]:
    """The reports ``ids`` with their agent and kept body, read a few at a time."""
    with conn.cursor(name="evidence_reports") as cur:
        cur.execute(
            "SELECT r.id, r.agent_id, r.seq, r.body_sha256, r.signature, a.site_id,"
            " a.public_key, b.body, b.codec FROM reports r JOIN agents a ON a.id = r.agent_id"
            " LEFT JOIN report_bodies b ON b.report_id = r.id"
            " WHERE r.id = ANY(%s) ORDER BY r.agent_id, r.seq", (ids,))
        for row in cur:
            yield _Report(row[0], row[1], row[2], bytes(row[3]), row[4], row[5], row[6],
                          None if row[7] is None else bytes(row[7]), row[8])


def _differences(signed: Counter[Sample], stored: Counter[Sample]) -> list[str]:
    """Samples stored otherwise than signed: changed, missing or added, the first few named."""
    missing, added = signed - stored, stored - signed
    added_at = {(m, d, t): v for m, d, t, v in added}
    lines = []
    for m, d, t, v in sorted(missing.elements()):
        if (m, d, t) in added_at:
            now = added_at.pop((m, d, t))
            added[(m, d, t, now)] -= 1
            lines.append(f"{m} {d} at {_iso(t)}: stored {now!r}, signed {v!r}")
        else:
            lines.append(f"{m} {d} at {_iso(t)}: signed {v!r}, not stored")
    lines += [f"{m} {d} at {_iso(t)}: stored {v!r}, not signed"
              for m, d, t, v in sorted(added.elements())]
    if len(lines) > _SHOWN:
        lines[_SHOWN:] = [f"and {len(lines) - _SHOWN} more samples that differ"]
    return lines


def _hours(start: datetime, end: datetime) -> Iterator[datetime]:
    hour = start
    while hour < end:
        yield hour
        hour += HOUR


def _from_ms(ms: int) -> datetime:
    return _EPOCH + ms * _MS


def _to_ms(moment: datetime) -> int:
    return (moment - _EPOCH) // _MS


def _iso(ms: int) -> str:
    return f"{_from_ms(ms):%Y-%m-%dT%H:%M:%S.%f}"[:-3] + "Z"
