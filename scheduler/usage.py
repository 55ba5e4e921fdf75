"""Usage metering: one immutable record per ended run; corrections are adjusting records.

- Accelerator-hours: the run's accelerators × (end − start), the billed start and end that
  :mod:`scheduler.bounds` allows the site's claims (the record keeps the claims beside them);
  kept to 10⁻⁶ h.
- FP16 PFLOP-hours at nameplate: accelerator-hours × the mean ``fp16_tflops`` of the site's
  accelerators of the run's model / 1000.
- Energy: the increase of the ``accelerator_energy_joules_total`` counters of the site's
  accelerators of that model, from the last sample at or before the start to the last sample at
  or before the end, by the one counter rule the rollups use (``jinsuan.kernel.counters``: a
  glitch skipped, a reset counted from zero, a rise above 2 kW a device refused). Which
  devices a run used is not reported, so the pool's energy is apportioned by the run's share of
  the pool (accelerators / pool size); ``energy_method`` says so on each record.
- Cost: accelerator-hours × the site's price for the model, in yuan, rounded to the fen
  (ROUND_HALF_UP). Money and quantities are ``Decimal``; nothing passes through a float.

The table refuses UPDATE and DELETE (a trigger); :func:`record_adjustment` adds a correction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import psycopg

from jinsuan.contract.metrics import CATALOGUE
from jinsuan.contract.money import is_fen, to_fen
from jinsuan.kernel.counters import LOOKAHEAD, steps
from jinsuan.kernel.errors import Invalid, NotFound

MICRO = Decimal("0.000001")
_JOULES_PER_KWH = Decimal(3_600_000)


@dataclass(frozen=True, slots=True)
class Usage:
    accelerator_hours: Decimal
    fp16_pflop_hours: Decimal
    energy_kwh: Decimal | None
    cost_yuan: Decimal


def hours_between(start: datetime, end: datetime) -> Decimal:
    """Exact hours between two instants (to the microsecond), never negative."""
    span = max(end - start, timedelta(0))
    micros = (span.days * 86_400 + span.seconds) * 1_000_000 + span.microseconds
    return Decimal(micros) / Decimal(3_600_000_000)


def compute_usage(accelerators: int, start: datetime, end: datetime, *,
                  mean_fp16_tflops: Decimal, price: Decimal, pool_joules: Decimal | None,
                  pool_size: int) -> Usage:
    """The arithmetic of one record, all in Decimal."""
    acc_hours = (accelerators * hours_between(start, end)).quantize(MICRO, ROUND_HALF_UP)
    pflop_hours = (acc_hours * mean_fp16_tflops / 1000).quantize(MICRO, ROUND_HALF_UP)
    energy = None
    if pool_joules is not None and pool_size > 0:
        share = Decimal(accelerators) / Decimal(pool_size)
        energy = (pool_joules / _JOULES_PER_KWH * share).quantize(MICRO, ROUND_HALF_UP)
    cost = to_fen(acc_hours * price)
    return Usage(acc_hours, pflop_hours, energy, cost)


_POOL_POINTS = """
WITH devs AS (
    SELECT s.id FROM accelerators a
    JOIN series s ON s.site_id = a.site_id AND s.metric = 'accelerator_energy_joules_total'
     AND s.device = a.uuid
    WHERE a.site_id = %(site)s AND a.model = %(model)s
)
SELECT x.series_id, extract(epoch FROM x.ts)::float8, x.value FROM samples x
WHERE x.series_id IN (SELECT id FROM devs) AND x.ts > %(start)s AND x.ts <= %(end)s
UNION ALL
SELECT d.id, extract(epoch FROM b.ts)::float8, b.value FROM devs d CROSS JOIN LATERAL
    samples_last(d.id, '-infinity', %(start)s + interval '1 microsecond', 1) b  -- ts <= start
UNION ALL
SELECT d.id, extract(epoch FROM a.ts)::float8, a.value FROM devs d CROSS JOIN LATERAL
    samples_first(d.id, %(end)s + interval '1 microsecond', 'infinity', %(lookahead)s) a
ORDER BY 1, 2, 3
"""


def pool_joules(conn: psycopg.Connection, site_id: int, model: str, start: datetime,
                end: datetime) -> Decimal | None:
    """The rise of the energy counters of the site's accelerators of ``model`` from the last
    reading at or before ``start`` to the last at or before ``end``, by the one counter rule
    (the readings just after ``end`` only tell a glitch from a reset); None without two
    readings of any counter in that span."""
    by_series: dict[int, list[tuple[float, float]]] = {}
    for series_id, t, value in conn.execute(
            _POOL_POINTS, {"site": site_id, "model": model, "start": start, "end": end,
                           "lookahead": LOOKAHEAD}).fetchall():
        by_series.setdefault(series_id, []).append((t, value))
    limit = end.timestamp()
    max_rate = CATALOGUE["accelerator_energy_joules_total"].max_rate
    rises = [step.increase for points in by_series.values()
             for step in steps(points, max_rate) if step.t1 <= limit]
    return Decimal(sum(rises)) if rises else None


def record_usage(conn: psycopg.Connection, run_id: str, *, started_at: datetime,
                 ended_at: datetime, bounded_by: str = "") -> int:
    """Write the usage record of an ended run, billed from ``started_at`` to ``ended_at`` (the
    times :mod:`scheduler.bounds` allowed; ``bounded_by`` says why they differ from the site's
    claims, which the record keeps beside them); return its id."""
    row = conn.execute(
        "SELECT r.job_id, j.tenant, j.project, r.site_id, r.model, r.accelerators,"
        " r.claimed_started_at, r.claimed_ended_at, p.yuan_per_accelerator_hour"
        " FROM runs r JOIN jobs j ON j.id = r.job_id"
        " LEFT JOIN site_prices p ON p.site_id = r.site_id AND p.model = r.model"
        " WHERE r.id = %s", (run_id,)).fetchone()
    if row is None:
        raise NotFound(f"no run {run_id}", field="run_id")
    job_id, tenant, project, site_id, model, accelerators, claimed_start, claimed_end, price = row
    start, end = started_at, ended_at
    pool_size, tflops = conn.execute(
        "SELECT count(*), coalesce(avg(fp16_tflops), 0)::numeric FROM accelerators"
        " WHERE site_id = %s AND model = %s", (site_id, model)).fetchone()
    joules = pool_joules(conn, site_id, model, start, end)
    price = price if price is not None else Decimal(0)
    usage = compute_usage(accelerators, start, end, mean_fp16_tflops=tflops, price=price,
                          pool_joules=joules, pool_size=pool_size)
    method = (f"pool counters × {accelerators}/{pool_size} of the site's {model}"
              " (device-level attribution not reported)" if joules is not None
              else "no energy counters reported")
    return conn.execute(
        "INSERT INTO usage_records (run_id, job_id, tenant, project, site_id, model,"
        " accelerators, started_at, ended_at, accelerator_hours, fp16_pflop_hours, energy_kwh,"
        " energy_method, yuan_per_accelerator_hour, cost_yuan, claimed_started_at,"
        " claimed_ended_at, bounded_by)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " RETURNING id",
        (run_id, job_id, tenant, project, site_id, model, accelerators, start, end,
         usage.accelerator_hours, usage.fp16_pflop_hours, usage.energy_kwh, method, price,
         usage.cost_yuan, claimed_start, claimed_end, bounded_by)).fetchone()[0]


def record_unreported_end(conn: psycopg.Connection, run_id: str, why: str) -> int | None:
    """Meter a run that held accelerators and ended without its site's report (lease expired,
    or cancelled): from its start (else its lease) to the last moment the platform heard it
    alive. A run never leased held nothing and gets no record."""
    row = conn.execute(
        "SELECT coalesce(started_at, leased_at), coalesce(last_heard_at, leased_at)"
        " FROM runs WHERE id = %s", (run_id,)).fetchone()
    if row is None or row[0] is None:
        return None
    start, heard = row
    return record_usage(conn, run_id, started_at=start, ended_at=max(start, heard),
                        bounded_by=f"{why}: billed to the last moment the platform heard the"
                                   " run alive")


def record_adjustment(conn: psycopg.Connection, original_id: int, *, reason: str,
                      accelerator_hours: Decimal = Decimal(0),
                      fp16_pflop_hours: Decimal = Decimal(0),
                      energy_kwh: Decimal | None = None, cost_yuan: Decimal = Decimal(0)) -> int:
    """Correct a record by adding one that carries the differences; return its id."""
    if not reason.strip():
        raise Invalid("an adjustment needs a reason", field="reason")
    if not is_fen(cost_yuan):
        raise Invalid(f"cost {cost_yuan} is not a whole number of fen", field="cost_yuan")
    row = conn.execute(
        "INSERT INTO usage_records (run_id, job_id, tenant, project, site_id, model,"
        " accelerators, started_at, ended_at, accelerator_hours, fp16_pflop_hours, energy_kwh,"
        " energy_method, yuan_per_accelerator_hour, cost_yuan, adjusts, reason)"
        " SELECT run_id, job_id, tenant, project, site_id, model, accelerators, started_at,"
        " ended_at, %s, %s, %s, 'adjustment', yuan_per_accelerator_hour, %s, id, %s"
        " FROM usage_records WHERE id = %s AND adjusts IS NULL RETURNING id",
        (accelerator_hours, fp16_pflop_hours, energy_kwh, cost_yuan, reason, original_id),
    ).fetchone()
    if row is None:
        raise NotFound(f"no original usage record {original_id}", field="record")
    return row[0]
