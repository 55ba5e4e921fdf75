"""``explain``: an award traced down to the sites, the hours and the rollup rows behind it and
the policy parameters it used, each figure marked measured, declared, assumption or policy, so
that an auditor can redo the arithmetic by hand. Everything comes from the assessment's frozen
copy (inputs and policy text), so an explanation never changes after the fact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg

from jinsuan.kernel.errors import NotFound
from rewards.policy import parse
from rewards.store import latest_id, stored_inputs


def explain(conn: psycopg.Connection, *, enterprise: str, measure: str, year: int,
            assessment_id: int | None = None, with_hours: bool = False) -> dict[str, Any]:
    """The explanation of ``enterprise``'s awards for ``measure`` and ``year`` in the given
    assessment (by default the latest)."""
    chosen = assessment_id or latest_id(conn, year, measure)
    if chosen is None:
        raise NotFound(f"measure {measure} has not been assessed for {year}", field="year")
    head = conn.execute(
        "SELECT year, measure, policy_id, policy_version, policy_sha256, policy_text,"
        " code_version, inputs_sha256, created_at FROM reward_assessments WHERE id = %s",
        (chosen,)).fetchone()
    if head is None or (head[0], head[1]) != (year, measure):
        raise NotFound(f"no assessment {chosen} of measure {measure} for {year}",
                       field="assessment")
    awards = conn.execute(
        "SELECT a.id, a.data_centre, a.amount, a.eligible, a.state, a.detail"
        " FROM reward_awards a JOIN enterprises e ON e.id = a.enterprise_id"
        " WHERE a.assessment_id = %s AND e.name = %s ORDER BY a.data_centre NULLS FIRST",
        (chosen, enterprise)).fetchall()
    if not awards:
        raise NotFound(f"assessment {chosen} has no award for {enterprise!r}",
                       field="enterprise")
    policy = parse(head[5].encode(), Path(head[2]))
    inputs, _ = stored_inputs(conn, chosen)
    sites = [s for s in inputs.sites if s.enterprise == enterprise]
    ids = {s.id for s in sites}
    rows = [h for h in inputs.hours if h.site_id in ids]
    return {
        "assessment": {"id": chosen, "year": year, "measure": measure,
                       "created_at": head[8].isoformat(), "inputs_sha256": head[7],
                       "policy": f"{head[2]} v{head[3]}", "policy_sha256": head[4],
                       "code_version": head[6], "rounding": policy.rounding,
                       "document": policy.document},
        "measure": {"title": policy.measures[measure].title,
                    "basis": policy.measures[measure].basis},
        "parameters": [p.as_dict() for p in policy.measures[measure].parameters.values()],
        "awards": [{"id": a[0], "data_centre": a[1], "amount": str(a[2]), "eligible": a[3],
                    "state": a[4], "reasons": a[5]["reasons"], "figures": a[5]["figures"],
                    "assumptions": a[5]["assumptions"]} for a in awards],
        "sites": [{"id": s.id, "name": s.name, "city": s.city, "data_centre": s.data_centre,
                   "rollup_rows": sum(1 for h in rows if h.site_id == s.id),
                   "rows_with_quality_flags": sum(1 for h in rows
                                                  if h.site_id == s.id and h.quality)}
                  for s in sites],
        "declarations": [{"id": d.id, "kind": d.kind, "data_centre": d.data_centre,
                          "value": d.value, "evidence": [list(e) for e in d.evidence]}
                         for d in inputs.declarations if d.enterprise == enterprise],
        "hours": [{"site_id": h.site_id, "hour": h.hour.isoformat(),
                   "fp16_pflops": str(h.fp16_pflops),
                   "fp16_pflops_estimated": str(h.fp16_pflops_estimated),
                   "coverage_accelerators": str(h.coverage_accelerators),
                   "it_kwh": None if h.it_kwh is None else str(h.it_kwh),
                   "facility_kwh": None if h.facility_kwh is None else str(h.facility_kwh),
                   "coverage_it": str(h.coverage_it),
                   "coverage_facility": str(h.coverage_facility), "racks": h.racks,
                   "quality": list(h.quality)} for h in rows] if with_hours else None,
    }
