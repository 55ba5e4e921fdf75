"""The thin layer around the pure calculations: read their inputs from the store, keep each
assessment with an exact copy of them, and read assessments back to explain them.

An assessment is keyed by its year, measure, inputs digest, policy hash and code version:
running it again on unchanged data under an unchanged policy finds the stored one and writes
nothing; late data, another policy version or another calculation makes a new one, listed with
its differences from the last.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from importlib import metadata
from pathlib import Path
from typing import Any

import psycopg

from jinsuan.contract.policytime import days_bounds
from jinsuan.kernel.errors import Invalid, NotFound
from rewards.access import assess_access
from rewards.cloud import assess_cloud
from rewards.domestic import assess_domestic
from rewards.edge import assess_edge
from rewards.inputs import (
    COUNTED_STATES,
    Award,
    Declaration,
    Inputs,
    OtherSupport,
    OutboundUsage,
    PriorAward,
    Site,
    SiteAccelerators,
    SiteHour,
    TerminalsServed,
    number,
)
from rewards.outbound import assess_outbound
from rewards.policy import POLICIES, Policy, PolicyError, in_force
from rewards.pue import assess_pue
from rewards.scale import assess_scale

CALCULATIONS: dict[str, Callable[[Inputs, Policy], list[Award]]] = {
    "5b": assess_access,
    "4": assess_pue,
    "1": assess_scale,
    "2": assess_cloud,
    "3": assess_edge,
    "6": assess_domestic,
    "10": assess_outbound,
}
"""The measures assessed from the platform's own measurements (with accepted declarations)."""

TERMINALS = "site_terminals_served"
"""The gauge of distinct terminals a site served since 1 January (jinsuan.contract.metrics)."""

INVENTORY_SLACK = timedelta(hours=1)
"""How long before a site's last inventory write an accelerator may have been last seen and
still be in that inventory: an agent rewrites an unchanged inventory every ten minutes
(collectors.writer.INVENTORY_REFRESH), so several agents of one site differ by less."""


def code_version() -> str:
    """The package version and a digest of the rewards room's source: the calculation that
    made an assessment is identified even between releases."""
    digest = hashlib.sha256()
    for source in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    return f"{metadata.version('jinsuan')}+rewards.{digest.hexdigest()[:12]}"


def policy_for(year: int, directory: Path = POLICIES) -> Policy:
    try:
        return in_force(year, directory)
    except PolicyError as exc:
        raise Invalid(str(exc), field="year") from None


def read_inputs(conn: psycopg.Connection, year: int, policy: Policy) -> Inputs:
    """Everything the measures read for ``year``, in one consistent snapshot: the in-province
    sites, their hourly rollups inside the policy's window, accepted declarations, awards of
    other years already approved or paid, the other-support register, each site's largest
    terminals-served reading inside the window, its accelerators at the window's end, and
    each enterprise's metered out-of-province usage.

    A site's inventory at the window's end is the one it last wrote before the end (or, when it
    kept reporting after the end, at the end): the accelerators first seen before the end and
    last seen no more than :data:`INVENTORY_SLACK` before that moment. A site whose last write
    before the end lies before the window's start has no inventory in the window.

    Out-of-province usage is Σ ``usage_records.cost_yuan`` at an enterprise's in-province
    sites by tenants bound to voucher applicants registered outside the province, over the
    records (originals and adjustments, an adjustment dated by its original's end) that ended
    inside the window."""
    window = policy.window(year)
    if window is None:
        raise Invalid(f"{year} is outside the policy's dates ({policy.effective_from} .."
                      f" {policy.effective_to}): nothing is paid for it", field="year")
    start, end = days_bounds(*window)
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        sites = tuple(Site(*row) for row in conn.execute(
            "SELECT s.id, s.name, e.name, s.city, s.data_centre FROM sites s"
            " JOIN enterprises e ON e.id = s.enterprise_id WHERE s.in_province ORDER BY s.id"))
        hours = tuple(
            SiteHour(site_id=r[0], hour=r[1], fp16_pflops=number(r[2]),  # type: ignore[arg-type]
                     fp16_pflops_estimated=number(r[3]),  # type: ignore[arg-type]
                     coverage_accelerators=number(r[4]),  # type: ignore[arg-type]
                     it_kwh=r[5], facility_kwh=r[6],
                     coverage_it=number(r[7]), coverage_facility=number(r[8]),  # type: ignore[arg-type]
                     racks=r[9], quality=tuple(r[10]))
            for r in conn.execute(
                "SELECT r.site_id, r.hour, r.fp16_pflops, r.fp16_pflops_estimated,"
                " r.coverage_accelerators, r.it_kwh, r.facility_kwh, r.coverage_it,"
                " r.coverage_facility, r.racks, r.quality FROM rollup_site_hourly r"
                " JOIN sites s ON s.id = r.site_id"
                " WHERE s.in_province AND r.hour >= %s AND r.hour < %s"
                " ORDER BY r.site_id, r.hour", (start, end)))
        declarations = tuple(
            Declaration(r[0], r[1], r[2], r[3], r[4],
                        tuple((e["name"], e["sha256"]) for e in r[5]))
            for r in conn.execute(
                "SELECT d.id, e.name, d.data_centre, d.kind, d.value, d.evidence"
                " FROM reward_declarations d JOIN enterprises e ON e.id = d.enterprise_id"
                " WHERE d.status = 'accepted' ORDER BY d.id"))
        prior = tuple(PriorAward(*r) for r in conn.execute(
            "SELECT a.id, a.measure, a.year, e.name, a.data_centre, a.amount, a.state"
            " FROM reward_awards a JOIN enterprises e ON e.id = a.enterprise_id"
            " WHERE a.state = ANY(%s) AND a.year <> %s ORDER BY a.id",
            (list(COUNTED_STATES), year)))
        support = tuple(OtherSupport(*r) for r in conn.execute(
            "SELECT o.id, e.name, o.measure, o.fund, o.amount, o.granted_on"
            " FROM reward_other_support o JOIN enterprises e ON e.id = o.enterprise_id"
            " ORDER BY o.id"))
        terminals = tuple(TerminalsServed(*r) for r in conn.execute(
            "SELECT se.site_id, floor(max(sa.value))::bigint,"
            " (array_agg(sa.ts ORDER BY sa.value DESC, sa.ts))[1], count(*)"
            " FROM series se JOIN samples sa ON sa.series_id = se.id"
            " JOIN sites s ON s.id = se.site_id"
            " WHERE s.in_province AND se.metric = %s AND sa.ts >= %s AND sa.ts < %s"
            " GROUP BY se.site_id ORDER BY se.site_id", (TERMINALS, start, end)))
        accelerators = tuple(SiteAccelerators(*r) for r in conn.execute(
            "WITH written AS (SELECT site_id, least(max(last_seen), %(end)s) AS as_of"
            "   FROM accelerators WHERE first_seen < %(end)s GROUP BY site_id)"
            " SELECT a.site_id, a.domestic, count(*),"
            " coalesce(sum(a.fp16_tflops::numeric) FILTER (WHERE NOT a.fp16_estimated), 0),"
            " coalesce(sum(a.fp16_tflops::numeric) FILTER (WHERE a.fp16_estimated), 0),"
            " count(*) FILTER (WHERE a.fp16_tflops IS NULL), w.as_of"
            " FROM accelerators a JOIN written w ON w.site_id = a.site_id"
            " JOIN sites s ON s.id = a.site_id"
            " WHERE s.in_province AND a.first_seen < %(end)s AND w.as_of >= %(start)s"
            " AND a.last_seen >= w.as_of - %(slack)s"
            " GROUP BY a.site_id, a.domestic, w.as_of ORDER BY a.site_id, a.domestic",
            {"start": start, "end": end, "slack": INVENTORY_SLACK}))
        outbound = tuple(OutboundUsage(*r) for r in conn.execute(
            "SELECT e.name, sum(u.cost_yuan), count(*) FROM usage_records u"
            " LEFT JOIN usage_records o ON o.id = u.adjusts"
            " JOIN sites s ON s.id = u.site_id JOIN enterprises e ON e.id = s.enterprise_id"
            " JOIN voucher_applicant_tenants t ON t.tenant = u.tenant"
            " JOIN voucher_applicants a ON a.id = t.applicant_id"
            " WHERE s.in_province AND NOT a.in_province"
            " AND coalesce(o.ended_at, u.ended_at) >= %(start)s"
            " AND coalesce(o.ended_at, u.ended_at) < %(end)s"
            " GROUP BY e.name ORDER BY e.name", {"start": start, "end": end}))
    return Inputs(year, sites, hours, declarations, prior, support, terminals, accelerators,
                  outbound)


@dataclass(frozen=True, slots=True)
class Assessed:
    """One measure's assessment: stored now, or found stored from an identical run."""

    id: int
    measure: str
    year: int
    created: bool
    inputs_sha256: str
    policy: str  # "jinzhengbanfa-2024-35 v1 (sha256 ...)"
    code_version: str
    total: Decimal
    awards: int
    differences: list[dict[str, Any]] = field(default_factory=list)


def assess(conn: psycopg.Connection, year: int, measures: list[str], *, by_key: int | None,
           policies: Path = POLICIES) -> list[Assessed]:
    """Assess ``measures`` for ``year``; each is found stored when nothing it rests on changed."""
    unknown = [m for m in measures if m not in CALCULATIONS]
    if unknown:
        raise Invalid(f"measure {unknown[0]!r} is not assessed from measurements; one of"
                      f" {', '.join(CALCULATIONS)}", field="measure")
    policy = policy_for(year, policies)
    inputs = read_inputs(conn, year, policy)
    digest = inputs.sha256()
    version = code_version()
    results = []
    for measure in measures:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('reward_assessment'), %s)",
                         (year,))
            found = conn.execute(
                "SELECT id FROM reward_assessments WHERE year = %s AND measure = %s"
                " AND inputs_sha256 = %s AND policy_sha256 = %s AND code_version = %s",
                (year, measure, digest, policy.sha256, version)).fetchone()
            awards = CALCULATIONS[measure](inputs, policy)
            if found is not None:
                results.append(_assessed(found[0], measure, year, False, digest, policy, version,
                                         awards, []))
                continue
            previous = latest_id(conn, year, measure)
            assessment_id = conn.execute(
                "INSERT INTO reward_assessments (year, measure, policy_id, policy_version,"
                " policy_sha256, policy_text, code_version, inputs_sha256, inputs, created_by)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                (year, measure, policy.id, policy.version, policy.sha256,
                 (policies / policy.file).read_text(encoding="utf-8"), version, digest,
                 json.dumps(inputs.as_json(), ensure_ascii=False), by_key),
            ).fetchone()[0]  # type: ignore[index]
            enterprises = dict(conn.execute("SELECT name, id FROM enterprises").fetchall())
            for award in awards:
                conn.execute(
                    "INSERT INTO reward_awards (assessment_id, measure, year, enterprise_id,"
                    " data_centre, amount, eligible, detail) VALUES (%s, %s, %s, %s, %s, %s,"
                    " %s, %s)",
                    (assessment_id, measure, year, enterprises[award.enterprise],
                     award.data_centre, award.amount, award.eligible,
                     json.dumps(award.as_json(), ensure_ascii=False)))
            differences = _differences(conn, previous, assessment_id) if previous else []
        results.append(_assessed(assessment_id, measure, year, True, digest, policy, version,
                                 awards, differences))
    return results


def latest_id(conn: psycopg.Connection, year: int, measure: str) -> int | None:
    row = conn.execute("SELECT max(id) FROM reward_assessments WHERE year = %s AND measure = %s",
                       (year, measure)).fetchone()
    return row[0] if row else None


def stored_inputs(conn: psycopg.Connection, assessment_id: int) -> tuple[Inputs, str]:
    """An assessment's frozen inputs, checked against their recorded digest."""
    row = conn.execute("SELECT inputs, inputs_sha256 FROM reward_assessments WHERE id = %s",
                       (assessment_id,)).fetchone()
    if row is None:
        raise NotFound(f"no assessment {assessment_id}", field="assessment")
    inputs = Inputs.from_json(row[0])
    if inputs.sha256() != row[1]:
        raise Invalid(f"assessment {assessment_id}: its stored inputs no longer match their"
                      f" digest {row[1]}", field="assessment")
    return inputs, row[1]


def _differences(conn: psycopg.Connection, before: int, after: int) -> list[dict[str, Any]]:
    """Awards whose amount or eligibility differs between two assessments of one measure."""
    rows = conn.execute(
        "SELECT e.name, coalesce(a.data_centre, b.data_centre), b.amount, a.amount,"
        " b.eligible, a.eligible"
        " FROM (SELECT * FROM reward_awards WHERE assessment_id = %s) a"
        " FULL JOIN (SELECT * FROM reward_awards WHERE assessment_id = %s) b"
        "   ON a.enterprise_id = b.enterprise_id"
        "   AND a.data_centre IS NOT DISTINCT FROM b.data_centre"
        " JOIN enterprises e ON e.id = coalesce(a.enterprise_id, b.enterprise_id)"
        " WHERE (a.amount, a.eligible) IS DISTINCT FROM (b.amount, b.eligible)"
        " ORDER BY 1, 2", (after, before)).fetchall()
    return [{"enterprise": r[0], "data_centre": r[1], "before": r[2], "after": r[3],
             "eligible_before": r[4], "eligible_after": r[5], "previous_assessment": before}
            for r in rows]


def _assessed(assessment_id: int, measure: str, year: int, created: bool, digest: str,
              policy: Policy, version: str, awards: list[Award],
              differences: list[dict[str, Any]]) -> Assessed:
    return Assessed(assessment_id, measure, year, created, digest,
                    f"{policy.id} v{policy.version} (sha256 {policy.sha256})", version,
                    sum((a.amount for a in awards), Decimal("0.00")), len(awards), differences)
