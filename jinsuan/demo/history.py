"""Simulated history: what a simulated site would have reported over a past range.

``jinsuan demo --history-days N`` sends it through the platform's own intake, as signed reports
of a separate "history" agent per site, before the live agents start, so that the dashboards
and ``jinsuan report`` have days to show rather than minutes; the tests fill their store the same
way (``tests/simulated_fleet.py``).

A history agent is separate from the site's live agent because the platform stores each
``(agent, seq)`` once: history sent under the live agent's id would later swallow its live
batches as duplicates. History is only sent for time before the site's first stored sample, so
running the demo again never stores the same moment twice. Its energy counters start from zero
where the live agent's do not; the platform reads the drop at the seam as a counter reset.
"""

from __future__ import annotations

import gzip
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime, timedelta

import httpx
import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agents.probe import Reading
from agents.probes.simulated import SimulatedSite
from jinsuan.contract.signing import new_private_key, public_key_b64, sign
from jinsuan.contract.wire import AGENT_HEADER, SIGNATURE_HEADER, Batch, Inventory, Series
from jinsuan.kernel.sites import create_enrolment_token, enrol_agent

#: Readings per batch, as an agent sends its spool after an outage.
STEPS_PER_BATCH = 6


def moments(start: datetime, end: datetime, step: timedelta) -> Iterator[datetime]:
    """``start``, ``start + step``, … up to but not including ``end``."""
    moment = start
    while moment < end:
        yield moment
        moment += step


def batch_of(agent_id: str, seq: int, readings: list[tuple[datetime, Reading]],
             step: timedelta) -> Batch:
    """One report holding several readings, stamped with the last one's time and inventory."""
    points: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
    for moment, reading in readings:
        unix_ms = round(moment.timestamp() * 1000)
        for point in reading.points:
            points[(point.metric, point.device)].append((unix_ms, point.value))
    made, last = readings[-1]
    return Batch(agent_id=agent_id, seq=seq, created_at=made, interval_s=step.total_seconds(),
                 inventory=Inventory(racks=last.racks, accelerators=last.accelerators,
                                     meters=last.meters, edge=last.edge),
                 series=[Series(metric=m, device=d, points=p) for (m, d), p in points.items()])


def simulated_batches(agent_id: str, simulator: SimulatedSite, *, start: datetime,
                      end: datetime, step: timedelta,
                      steps_per_batch: int = STEPS_PER_BATCH) -> Iterator[Batch]:
    """The site's readings from ``start`` to ``end``, ``steps_per_batch`` to a report."""
    pending: list[tuple[datetime, Reading]] = []
    seq = 0
    for moment in moments(start, end, step):
        pending.append((moment, simulator.read(moment)))
        if len(pending) == steps_per_batch:
            seq += 1
            yield batch_of(agent_id, seq, pending, step)
            pending = []
    if pending:
        yield batch_of(agent_id, seq + 1, pending, step)


def post_report(client: httpx.Client, key: Ed25519PrivateKey, batch: Batch) -> httpx.Response:
    """Send ``batch`` as an agent does: signed over the JSON body, gzip-encoded."""
    body = batch.model_dump_json().encode()
    return client.post("/v1/reports", content=gzip.compress(body), headers={
        AGENT_HEADER: batch.agent_id, SIGNATURE_HEADER: sign(key, body),
        "Content-Type": "application/json", "Content-Encoding": "gzip"})


def first_sample(conn: psycopg.Connection, site_id: int) -> datetime | None:
    row = conn.execute(
        "SELECT min(x.ts) FROM series s"
        " CROSS JOIN LATERAL (SELECT ts FROM samples WHERE series_id = s.id"
        "                     ORDER BY ts LIMIT 1) x"
        " WHERE s.site_id = %s", (site_id,)).fetchone()
    return None if row is None else row[0]


def send_history(conn: psycopg.Connection, client: httpx.Client, site_id: int,
                 simulator: SimulatedSite, *, start: datetime, end: datetime,
                 step: timedelta) -> int:
    """Report the site from ``start`` until ``end`` or its first stored sample, if earlier.

    Enrols a history agent for the site and returns how many reports the platform stored.
    """
    stored_from = first_sample(conn, site_id)
    if stored_from is not None:
        end = min(end, stored_from)
    if end <= start:
        return 0
    key = new_private_key()
    token = create_enrolment_token(conn, site_id, created_by=None)
    agent_id, _ = enrol_agent(conn, token=token, public_key=public_key_b64(key),
                              hostname=f"{simulator.name}-history")
    sent = 0
    for batch in simulated_batches(agent_id, simulator, start=start, end=end, step=step):
        answer = post_report(client, key, batch)
        if answer.status_code != 200:
            raise RuntimeError(f"the platform refused simulated history for {simulator.name}"
                               f" (seq {batch.seq}): HTTP {answer.status_code} {answer.text}")
        sent += 1
    return sent
