"""Hourly rollups per site, and the incremental run that keeps them up to date.

One site-hour (``[hour, hour + 1h)`` in UTC) is computed from the raw samples of the site's
meters, accelerators and rack count, fetched with a margin on both sides so the sample
intervals that cross the hour's edges are split (the arithmetic is :mod:`collectors.energy`):

- IT / facility energy: per meter, from its cumulative energy counter when it has readings
  around the hour, else from its power; summed over the role's meters. PUE is the ratio of
  the two sums (ISO/IEC 30134-2), NULL without IT energy. Coverage per role is the smallest
  covered fraction among the role's meters, 0 when the role has none: one silent facility
  meter must flag the hour, since its missing energy would make the PUE look better.
- Connected FP16 PFlops: Σ peak TFLOPS × (time-weighted ``accelerator_up`` over the hour)
  / 1000, so a device counts only for the time it reported being up; gaps count as down. The
  part resting on estimated peaks (a model without a datasheet figure) is kept apart too.
- Accelerators connected: distinct devices reporting ``accelerator_up = 1`` in the hour.
- Racks: the largest ``site_racks`` reading in the hour, else the racks in the inventory.
- Utilisation: time-weighted over all accelerator-seconds with samples.

Devices counted for coverage are those of the site's inventory that existed by the hour's end
plus any device with samples in the window: a device that falls silent stays in the
denominator (an honest gap) rather than quietly dropping out.

The incremental run (:func:`run_rollups`) closes each hour once it ended more than the grace
period ago, advancing a per-site watermark, and recomputes hours the intake marked dirty (late
data). Rows are only rewritten when a value changed, so ``computed_at`` is when the figures
last changed and a re-run is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal

import psycopg

from collectors.energy import (
    GAP_INTERVALS,
    Integral,
    integrate_counter,
    integrate_power,
    max_gap_for,
    pue,
    time_weighted_mean,
)
from collectors.queue_rollup import roll_queue_hours
from jinsuan.contract.metrics import CATALOGUE
from jinsuan.kernel.counters import Counted
from jinsuan.kernel.settings import Settings
from jinsuan.kernel.store import Database

log = logging.getLogger(__name__)

HOUR = timedelta(hours=1)
MARGIN = timedelta(minutes=15)
"""Samples this far outside the hour are fetched so intervals crossing its edges are split."""
COUNTER_REACH = timedelta(days=1)
"""How far beyond the margin a counter's nearest reading is looked for. A counter keeps
counting through a gap, so the increase across a gap that straddles the hour is real energy
(attributed pro rata, reported as uncovered); beyond this reach it is left out."""

LOCK_KEY = 0x6A73_726F_6C6C  # "jsroll": one rollup run at a time per database

POWER = "meter_power_watts"
ENERGY = "meter_energy_joules_total"
UP = "accelerator_up"
UTILIZATION = "accelerator_utilization_ratio"
RACKS = "site_racks"
_METRICS = [POWER, ENERGY, UP, UTILIZATION, RACKS]

_KWH = Decimal("0.000001")  # 1 mWh: far below meter accuracy, exact sums over years
_PUE = Decimal("0.000001")

Points = list[tuple[float, float]]


def floor_hour(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError(f"{moment!r} has no time zone; rollups need aware UTC datetimes")
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


# --- one site-hour ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Track:
    """One series' points around a window, and the longest interval bridged."""

    points: Points
    max_gap: float

    def any_in(self, start: float, end: float) -> bool:
        return any(start <= t < end for t, _ in self.points)


@dataclass(frozen=True, slots=True)
class Inventory:
    """The site's devices as the inventory lists them for one hour."""

    meter_roles: dict[str, str]  # every meter of the site: id -> 'it' | 'facility'
    meters_present: frozenset[str]  # meters listed by the hour's end
    fp16_tflops: dict[str, float | None]  # every accelerator of the site: uuid -> peak TFLOPS
    fp16_estimated: frozenset[str]  # accelerators whose peak is an estimate, not a datasheet's
    accelerators_present: frozenset[str]  # accelerators listed by the hour's end
    racks: int  # racks listed by the hour's end


@dataclass(frozen=True, slots=True)
class SiteHour:
    site_id: int
    hour: datetime
    it_kwh: Decimal | None
    facility_kwh: Decimal | None
    pue: Decimal | None
    fp16_pflops: float
    fp16_pflops_estimated: float  # the part of fp16_pflops resting on estimated peaks
    accelerators: int
    racks: int
    utilization: float | None
    coverage_it: float
    coverage_facility: float
    coverage_accelerators: float
    quality: list[str]  # what the counter rule did to the hour's energy readings, by role


@dataclass(frozen=True, slots=True)
class Window:
    """Everything fetched for one site-hour; ``span`` is the first and last point's time."""

    tracks: dict[tuple[str, str], Track]
    inventory: Inventory
    span: tuple[float, float] | None


def summarise(site_id: int, hour: datetime, window: Window) -> SiteHour:
    """The rollup of one site-hour from its fetched points and inventory (no I/O)."""
    start = hour.timestamp()
    end = start + HOUR.total_seconds()
    span = end - start
    tracks, inventory = window.tracks, window.inventory

    reporting = {
        device for (metric, device), track in tracks.items()
        if metric in (POWER, ENERGY) and track.any_in(start, end)
    }
    energy: dict[str, float | None] = {}
    coverage: dict[str, float] = {}
    quality: list[str] = []
    for role in ("it", "facility"):
        meters = {
            m for m in inventory.meters_present | reporting if inventory.meter_roles.get(m) == role
        }
        counted = Counted()
        integrals = [_meter_energy(tracks, m, start, end, counted) for m in sorted(meters)]
        quality += [f"{role}_{flag}" for flag in counted.flags]
        measured = [i for i in integrals if i is not None and (i.joules > 0 or i.covered_s > 0)]
        energy[role] = sum(i.joules for i in measured) if measured else None
        coverage[role] = (
            min(i.covered_s if i is not None else 0.0 for i in integrals) / span
            if integrals else 0.0
        )

    accelerators = set(inventory.accelerators_present)
    up_tracks = {device: t for (metric, device), t in tracks.items() if metric == UP}
    up_seconds: dict[str, float] = {}
    covered: dict[str, float] = {}
    for device, track in up_tracks.items():
        integral = integrate_power(track.points, start, end, track.max_gap)
        up_seconds[device], covered[device] = integral.joules, integral.covered_s
        if integral.covered_s > 0 or track.any_in(start, end):
            accelerators.add(device)
    tflops = {d: (inventory.fp16_tflops.get(d) or 0.0) * min(up_seconds.get(d, 0.0) / span, 1.0)
              for d in accelerators}
    pflops = sum(tflops.values()) / 1000
    estimated = sum(t for d, t in tflops.items() if d in inventory.fp16_estimated) / 1000
    connected = sum(
        1 for t in up_tracks.values() if any(start <= ts < end and v == 1 for ts, v in t.points)
    )

    busy = seconds = 0.0
    for (metric, _), track in tracks.items():
        if metric == UTILIZATION:
            mean, covered_s = time_weighted_mean(track.points, start, end, track.max_gap)
            if mean is not None:
                busy += mean * covered_s
                seconds += covered_s

    rack_readings = [
        v for (metric, _), track in tracks.items() if metric == RACKS
        for t, v in track.points if start <= t < end
    ]
    ratio = pue(energy["facility"], energy["it"])
    return SiteHour(
        site_id=site_id,
        hour=hour,
        it_kwh=_kwh(energy["it"]),
        facility_kwh=_kwh(energy["facility"]),
        pue=None if ratio is None else Decimal(ratio).quantize(_PUE, ROUND_HALF_EVEN),
        fp16_pflops=pflops,
        fp16_pflops_estimated=estimated,
        accelerators=connected,
        racks=round(max(rack_readings)) if rack_readings else inventory.racks,
        utilization=busy / seconds if seconds > 0 else None,
        coverage_it=coverage["it"],
        coverage_facility=coverage["facility"],
        coverage_accelerators=(
            sum(covered.get(d, 0.0) for d in accelerators) / span / len(accelerators)
            if accelerators else 0.0
        ),
        quality=quality,
    )


def _meter_energy(
    tracks: dict[tuple[str, str], Track], meter: str, start: float, end: float, counted: Counted
) -> Integral | None:
    """A meter's energy: from its counter when it has two readings around the hour, else power."""
    counter = tracks.get((ENERGY, meter))
    if counter is not None and len(counter.points) >= 2:
        return integrate_counter(counter.points, start, end, counter.max_gap,
                                 CATALOGUE[ENERGY].max_rate, counted)
    power = tracks.get((POWER, meter))
    if power is not None:
        return integrate_power(power.points, start, end, power.max_gap)
    return None


def _kwh(joules: float | None) -> Decimal | None:
    if joules is None:
        return None
    return Decimal(joules / 3_600_000).quantize(_KWH, ROUND_HALF_EVEN)


_POINTS_SQL = """
SELECT se.metric, se.device, extract(epoch FROM s.ts)::float8 AS t, s.value, true AS inside
FROM series se JOIN samples s ON s.series_id = se.id
WHERE se.site_id = %(site)s AND se.metric = ANY(%(metrics)s)
  AND s.ts >= %(lo)s AND s.ts < %(hi)s
UNION ALL
SELECT se.metric, se.device, extract(epoch FROM b.ts)::float8, b.value, false
FROM series se CROSS JOIN LATERAL samples_last(se.id, %(lo_reach)s, %(lo)s, 1) b
WHERE se.site_id = %(site)s AND se.metric = %(counter)s
UNION ALL
SELECT se.metric, se.device, extract(epoch FROM a.ts)::float8, a.value, false
FROM series se CROSS JOIN LATERAL samples_first(se.id, %(hi)s, %(hi_reach)s, 1) a
WHERE se.site_id = %(site)s AND se.metric = %(counter)s
ORDER BY 1, 2, 3, 4
"""


def fetch_window(conn: psycopg.Connection, site_id: int, hour: datetime) -> Window:
    """The points and inventory the rollup of ``(site_id, hour)`` needs.

    The gap limit of each series is three of the intervals its agent declares for it
    (``series.interval_s``), so that more data never lowers coverage. A series stored before
    intervals were recorded falls back to three of its nominal intervals, estimated from its
    points in the margin-extended window only (a counter's far neighbour must not pass for a
    regular sampling interval).
    """
    lo, hi = hour - MARGIN, hour + HOUR + MARGIN
    rows = conn.execute(
        _POINTS_SQL,
        {"site": site_id, "metrics": _METRICS, "counter": ENERGY, "lo": lo, "hi": hi,
         "lo_reach": lo - COUNTER_REACH, "hi_reach": hi + COUNTER_REACH},
    ).fetchall()
    grouped: dict[tuple[str, str], tuple[Points, list[float]]] = {}
    for metric, device, t, value, inside in rows:
        points, times = grouped.setdefault((metric, device), ([], []))
        points.append((t, value))
        if inside:
            times.append(t)
    declared = {(metric, device): interval for metric, device, interval in conn.execute(
        "SELECT metric, device, interval_s FROM series"
        " WHERE site_id = %s AND interval_s IS NOT NULL", (site_id,)).fetchall()}
    tracks = {
        key: Track(points, GAP_INTERVALS * declared[key] if key in declared
                   else max_gap_for(times))
        for key, (points, times) in grouped.items()
    }
    span = (min(p[0][0] for p, _ in grouped.values()),
            max(p[-1][0] for p, _ in grouped.values())) if grouped else None
    return Window(tracks, _inventory(conn, site_id, hour + HOUR), span)


def _inventory(conn: psycopg.Connection, site_id: int, end: datetime) -> Inventory:
    meters = conn.execute(
        "SELECT id, role, first_seen < %s FROM meters WHERE site_id = %s", (end, site_id)
    ).fetchall()
    accelerators = conn.execute(
        "SELECT uuid, fp16_tflops, first_seen < %s, fp16_estimated FROM accelerators"
        " WHERE site_id = %s",
        (end, site_id),
    ).fetchall()
    racks = conn.execute(
        "SELECT count(*) FROM racks WHERE site_id = %s AND first_seen < %s", (site_id, end)
    ).fetchone()
    return Inventory(
        meter_roles={m: role for m, role, _ in meters},
        meters_present=frozenset(m for m, _, present in meters if present),
        fp16_tflops={u: tflops for u, tflops, _, _ in accelerators},
        fp16_estimated=frozenset(u for u, _, _, estimated in accelerators if estimated),
        accelerators_present=frozenset(u for u, _, present, _ in accelerators if present),
        racks=racks[0] if racks else 0,
    )


_COLUMNS = (
    "it_kwh", "facility_kwh", "pue", "fp16_pflops", "fp16_pflops_estimated", "accelerators",
    "racks", "utilization", "coverage_it", "coverage_facility", "coverage_accelerators", "quality",
)
_UPSERT_SQL = (
    f"INSERT INTO rollup_site_hourly (site_id, hour, {', '.join(_COLUMNS)})"
    f" VALUES (%s, %s, {', '.join(['%s'] * len(_COLUMNS))})"
    " ON CONFLICT (site_id, hour) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in _COLUMNS)
    + ", computed_at = EXCLUDED.computed_at"
    f" WHERE ({', '.join('rollup_site_hourly.' + c for c in _COLUMNS)})"
    f" IS DISTINCT FROM ({', '.join('EXCLUDED.' + c for c in _COLUMNS)})"
)


def write_site_hour(conn: psycopg.Connection, row: SiteHour) -> bool:
    """Upsert ``row``; return whether the stored figures changed (unchanged rows are kept)."""
    values = [getattr(row, c) for c in _COLUMNS]
    return conn.execute(_UPSERT_SQL, (row.site_id, row.hour, *values)).rowcount == 1


def clear_dirty(
    conn: psycopg.Connection, site_id: int, hour: datetime, marked_at: datetime
) -> bool:
    """Drop a dirty mark unless the intake re-marked it since it was read (then it stays)."""
    return conn.execute(
        "DELETE FROM rollup_dirty WHERE site_id = %s AND hour = %s AND marked_at = %s",
        (site_id, hour, marked_at),
    ).rowcount == 1


# --- the incremental run ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunResult:
    ran: bool  # False: another process held the lock and this call did nothing
    hours: int = 0  # site-hours computed
    changed: int = 0  # site-hours whose stored figures changed
    run_id: int | None = None
    stopped: bool = False  # True: ``stop`` was set and the run ended between two hours
    failed_sites: tuple[int, ...] = ()  # sites whose stored data could not be rolled up


@dataclass
class _Tally:
    run_id: int
    hours: int = 0
    changed: int = 0


def default_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def run_rollups(
    db: Database,
    settings: Settings,
    *,
    now: datetime | None = None,
    holder: str | None = None,
    on_locked: Callable[[], None] | None = None,
    stop: threading.Event | None = None,
) -> RunResult:
    """Bring every site's hourly rollups up to date, unless another process is doing it.

    The lock is a session-level ``pg_try_advisory_lock`` on a connection opened for this run
    and closed after it, not borrowed from the pool: each hour commits on its own (a long
    catch-up keeps its progress and holds no long transaction), and a session lock cannot leak
    into a pooled connection if unlocking fails, because closing the session releases it.
    It connects to ``db.url``, straight to PostgreSQL past any pooler in DATABASE_URL
    (``JINSUAN_DIRECT_DATABASE_URL``): through a transaction pooler the lock would stay on a
    server connection after this run, held for whichever client gets that connection next.

    ``now`` fixes the clock (tests); ``on_locked`` is called once the lock is held, before any
    work; ``stop`` ends the run between two hours (shutdown). Stored hours older than the
    raw-data retention are never recomputed (their samples may be gone, and a recompute would
    overwrite measured figures with an empty hour); their dirty marks are dropped.
    """
    now = datetime.now(UTC) if now is None else now
    closable = floor_hour(now - timedelta(seconds=settings.rollup_grace_s))
    # Raw samples of days before this are dropped (Partitions.apply_retention); the first
    # hour after it is the oldest whose whole window (margin included) is still stored.
    today = floor_hour(now).replace(hour=0)
    frozen_before = today - timedelta(days=settings.retention_days) + HOUR
    with psycopg.connect(db.url, autocommit=True, application_name="jinsuan-rollup") as conn:
        locked = conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()
        if not (locked and locked[0]):
            log.debug("rollup skipped: another process holds the lock")
            return RunResult(ran=False)
        if on_locked is not None:
            on_locked()
        row = conn.execute(
            "INSERT INTO rollup_runs (holder) VALUES (%s) RETURNING id",
            (holder or default_holder(),),
        ).fetchone()
        assert row is not None
        tally = _Tally(row[0])
        stopped = False
        failed: list[int] = []
        sites = [s for (s,) in conn.execute("SELECT id FROM sites ORDER BY id").fetchall()]
        for site_id in sites:
            roller = _SiteRoller(conn, site_id, tally, frozen_before)
            try:
                if not roller.run(closable, stop):
                    stopped = True
                    break
            except (psycopg.errors.DataError, ValueError):
                # Bad stored data at one site must not stall every other site's rollups;
                # this site's watermark stays put and the error repeats until it is fixed.
                log.exception("rollup of site %d failed", site_id)
                failed.append(site_id)
        if not stopped:
            roll_queue_hours(conn, closable)
        conn.execute(
            "UPDATE rollup_runs SET finished_at = clock_timestamp() WHERE id = %s",
            (tally.run_id,),
        )
    if tally.hours:
        log.info("rollup run %d: %d site-hours computed, %d changed",
                 tally.run_id, tally.hours, tally.changed)
    return RunResult(True, tally.hours, tally.changed, tally.run_id, stopped, tuple(failed))


@dataclass
class _SiteRoller:
    """One site's share of a run: late hours first, then the hours that closed since."""

    conn: psycopg.Connection
    site_id: int
    tally: _Tally
    frozen_before: datetime
    marks: dict[datetime, datetime] = field(default_factory=dict)
    done: set[datetime] = field(default_factory=set)
    watermark: datetime | None = None

    def run(self, closable: datetime, stop: threading.Event | None) -> bool:
        """Return False when ``stop`` interrupted the site."""
        self.watermark = self._watermark()
        if self.watermark is None:
            return True  # no samples yet
        self.marks = {
            hour.astimezone(UTC): marked_at
            for hour, marked_at in self.conn.execute(
                "SELECT hour, marked_at FROM rollup_dirty WHERE site_id = %s", (self.site_id,)
            ).fetchall()
        }
        for hour in self._late_hours():
            if hour not in self.done and not self._process(hour, False, stop):
                return False
        while self.watermark < closable:
            if not self._process(self.watermark, True, stop):
                return False
        return True

    def _process(self, hour: datetime, advance: bool, stop: threading.Event | None) -> bool:
        """Compute ``hour``, then the stored hours its late data may have changed."""
        queue = [(hour, advance)]
        while queue:
            if stop is not None and stop.is_set():
                return False
            current, advance_here = queue.pop()
            if current in self.done and not advance_here:
                continue
            queue.extend((other, False) for other in self._compute(current, advance_here))
        return True

    def _watermark(self) -> datetime | None:
        row = self.conn.execute(
            "SELECT watermark FROM rollup_state WHERE site_id = %s", (self.site_id,)
        ).fetchone()
        if row is not None:
            return row[0].astimezone(UTC)
        first = self.conn.execute(
            "SELECT min(f.ts) FROM series se"
            " CROSS JOIN LATERAL samples_first(se.id, '-infinity', 'infinity', 1) f"
            " WHERE se.site_id = %s",
            (self.site_id,),
        ).fetchone()
        if first is None or first[0] is None:
            return None
        start = floor_hour(first[0])
        self.conn.execute(
            "INSERT INTO rollup_state (site_id, watermark) VALUES (%s, %s)"
            " ON CONFLICT (site_id) DO NOTHING",
            (self.site_id, start),
        )
        return start

    def _late_hours(self) -> list[datetime]:
        """Dirty hours before the watermark; late data older than every rollup of the site
        also fills the hours between it and the first rollup (honest gaps, not missing rows)."""
        assert self.watermark is not None
        late = sorted(h for h in self.marks if h < self.watermark)
        if not late:
            return []
        row = self.conn.execute(
            "SELECT min(hour) FROM rollup_site_hourly WHERE site_id = %s", (self.site_id,)
        ).fetchone()
        earliest = row[0] if row and row[0] is not None else self.watermark
        return sorted(set(late) | set(_hours(late[0], earliest)))

    def _compute(self, hour: datetime, advance: bool) -> list[datetime]:
        """Compute and store one hour; return the stored hours to recompute if it was dirty."""
        dirty = self.marks.get(hour)
        if not advance and hour < self.frozen_before:
            log.warning("site %d: not recomputing %s, older than raw-data retention",
                        self.site_id, hour.isoformat())
            if dirty is not None:
                clear_dirty(self.conn, self.site_id, hour, dirty)
            self.done.add(hour)
            return []
        window = fetch_window(self.conn, self.site_id, hour)
        row = summarise(self.site_id, hour, window)
        with self.conn.transaction():
            changed = write_site_hour(self.conn, row)
            # The per-device and per-agent hourly figures the dashboards read over long ranges.
            self.conn.execute("SELECT roll_hour_for_dashboards(%s, %s)", (self.site_id, hour))
            if advance:
                self.conn.execute(
                    "UPDATE rollup_state SET watermark = %s WHERE site_id = %s",
                    (hour + HOUR, self.site_id),
                )
            if dirty is not None:
                clear_dirty(self.conn, self.site_id, hour, dirty)
            self.conn.execute(
                "UPDATE rollup_runs SET hours = hours + 1 WHERE id = %s", (self.tally.run_id,)
            )
        if advance:
            self.watermark = hour + HOUR
        self.done.add(hour)
        self.tally.hours += 1
        self.tally.changed += changed
        if dirty is None:
            return []
        return [h for h in self._touched_by(hour, window) if h not in self.done]

    def _touched_by(self, hour: datetime, window: Window) -> list[datetime]:
        """Rolled-up hours whose result may depend on samples in ``hour``.

        Their windows overlap this hour's (the neighbours), or a counter reading of this hour
        is the nearest one across their gap (hours overlapping the span of points fetched).
        Only hours already closed and stored are candidates.
        """
        assert self.watermark is not None
        candidates = {hour - HOUR, hour + HOUR}
        if window.span is not None:
            first = floor_hour(datetime.fromtimestamp(window.span[0], UTC))
            last = floor_hour(datetime.fromtimestamp(window.span[1], UTC))
            candidates.update(_hours(first, last + HOUR))
        wanted = sorted(h for h in candidates if h < self.watermark and h != hour)
        if not wanted:
            return []
        rows = self.conn.execute(
            "SELECT hour FROM rollup_site_hourly WHERE site_id = %s AND hour = ANY(%s)"
            " ORDER BY hour",
            (self.site_id, wanted),
        ).fetchall()
        return [h.astimezone(UTC) for (h,) in rows]


def _hours(start: datetime, end: datetime) -> Iterator[datetime]:
    hour = start
    while hour < end:
        yield hour
        hour += HOUR

