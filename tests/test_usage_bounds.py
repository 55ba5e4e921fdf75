"""Usage a site cannot inflate, end to end through the app with signed agent requests and a real
PostgreSQL: claimed times bounded by what the platform saw (the lease, the report's receipt,
max_runtime_s + grace), a claim in the future refused, claims kept beside what was billed, and
runs that ended without their site's report (lost, cancelled) metered to the last moment the
platform heard them alive."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jinsuan.contract.leasewire import LeaseReply
from jinsuan.kernel.errors import Invalid
from scheduler.bounds import bound_claims
from scheduler.service import service_for
from tests.test_scheduler_api import _cycle, _submit, client, platform, world  # noqa: F401

HOUR = timedelta(hours=1)


def _leased(client, platform, world, **job):  # noqa: F811
    cheap, _, keys = world
    job_id = _submit(client, keys["t1"], constraints={"site": "taiyuan-1"}, **job)
    _cycle(platform)
    lease = LeaseReply.model_validate(cheap.lease(client).json()).new[0]
    return job_id, lease


def _record(conn, job_id):
    return conn.execute(
        "SELECT started_at, ended_at, claimed_started_at, claimed_ended_at, accelerator_hours,"
        " cost_yuan, bounded_by FROM usage_records WHERE job_id = %s AND adjusts IS NULL",
        (job_id,)).fetchall()


def test_the_inflated_claim_is_refused_then_billed_within_what_the_platform_saw(
        client, platform, world, conn):  # noqa: F811
    """The issue's story: 4 accelerators at 8.00 yuan, max_runtime_s 3600, a site claiming it
    started 30 days ago and ends 335 days from now."""
    cheap, _, keys = world
    job_id, lease = _leased(client, platform, world, max_runtime_s=3600)
    now = datetime.now(UTC)
    claimed_start, claimed_end = now - timedelta(days=30), now + timedelta(days=335)
    running = cheap.event(client, lease.run_id, lease.fencing_token, "running",
                          started_at=claimed_start)
    assert running.json() == {"status": "recorded"}
    future = cheap.event(client, lease.run_id, lease.fencing_token, "succeeded", exit_code=0,
                         started_at=claimed_start, ended_at=claimed_end)
    assert future.status_code == 422
    error = future.json()["error"]
    assert error["field"] == "ended_at" and "clock skew" in error["reason"]
    assert _record(conn, job_id) == []  # refused: nothing billed, the run still runs
    assert client.get(f"/v1/jobs/{job_id}", headers=keys["t1"]).json()["state"] == "running"
    # The platform granted the lease two hours ago (as far as this story goes): the site may
    # bill up to max_runtime_s + grace from then, however long it says it ran.
    leased_at = conn.execute("UPDATE runs SET leased_at = leased_at - interval '2 hours'"
                             " WHERE id = %s RETURNING leased_at", (lease.run_id,)).fetchone()[0]
    ended = datetime.now(UTC)
    done = cheap.event(client, lease.run_id, lease.fencing_token, "succeeded", exit_code=0,
                       started_at=claimed_start, ended_at=ended)
    assert done.json() == {"status": "recorded"}
    ((start, end, c_start, c_end, hours, cost, why),) = _record(conn, job_id)
    grace = service_for(platform).cfg.runtime_grace_s
    assert (c_start, c_end) == (claimed_start, ended)  # what the site claimed, kept
    assert start == leased_at and end == leased_at + timedelta(seconds=3600 + grace)
    assert hours == (Decimal(4 * (3600 + grace)) / 3600).quantize(Decimal("0.000001"))
    assert cost == (hours * Decimal("8.00")).quantize(Decimal("0.01"))
    assert cost < Decimal("100")  # not 280,320.00
    assert "started before its lease" in why and "max_runtime_s 3600" in why
    shown = client.get(f"/v1/jobs/{job_id}", headers=keys["t1"]).json()
    assert shown["state"] == "succeeded"
    window = {"from": (leased_at - HOUR).isoformat(), "to": (ended + HOUR).isoformat()}
    (listed,) = client.get("/v1/usage", params=window, headers=keys["t1"]).json()["records"]
    assert listed["bounded_by"] == why and listed["claimed_ended_at"] is not None
    assert datetime.fromisoformat(listed["claimed_started_at"]) == claimed_start


def test_claims_inside_what_the_platform_saw_are_billed_as_claimed(
        client, platform, world, conn):  # noqa: F811
    cheap, _, _ = world
    job_id, lease = _leased(client, platform, world)
    leased_at = conn.execute("UPDATE runs SET leased_at = leased_at - interval '1 hour'"
                             " WHERE id = %s RETURNING leased_at", (lease.run_id,)).fetchone()[0]
    start, end = leased_at + timedelta(minutes=5), datetime.now(UTC) - timedelta(minutes=5)
    cheap.event(client, lease.run_id, lease.fencing_token, "succeeded", exit_code=0,
                started_at=start, ended_at=end)
    ((b_start, b_end, c_start, c_end, _, _, why),) = _record(conn, job_id)
    assert (b_start, b_end) == (c_start, c_end) == (start, end)
    assert why == ""


def test_a_lost_run_is_metered_to_its_last_heartbeat(client, platform, world, conn):  # noqa: F811
    cheap, _, _ = world
    job_id, lease = _leased(client, platform, world)
    cheap.event(client, lease.run_id, lease.fencing_token, "running")
    heartbeat = LeaseReply.model_validate(
        cheap.lease(client, held=[(lease.run_id, lease.fencing_token)]).json())
    assert heartbeat.renewed == [lease.run_id]
    heard = conn.execute("SELECT last_heard_at FROM runs WHERE id = %s",
                         (lease.run_id,)).fetchone()[0]
    ttl = timedelta(seconds=service_for(platform).cfg.lease_ttl_s)
    _cycle(platform, datetime.now(UTC) + 2 * ttl)  # the site went silent: the lease expires
    assert conn.execute("SELECT state FROM runs WHERE id = %s",
                        (lease.run_id,)).fetchone()[0] == "lost"
    ((_, end, _, c_end, hours, _, why),) = _record(conn, job_id)
    assert end == heard and c_end is None and hours > 0
    assert why.startswith("lease expired")


def test_a_run_cancelled_while_running_is_metered(client, platform, world, conn):  # noqa: F811
    cheap, _, keys = world
    job_id, lease = _leased(client, platform, world)
    cheap.event(client, lease.run_id, lease.fencing_token, "running")
    heard = conn.execute("SELECT last_heard_at FROM runs WHERE id = %s",
                         (lease.run_id,)).fetchone()[0]
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=keys["t1"]).status_code == 200
    ((_, end, _, _, _, _, why),) = _record(conn, job_id)
    assert end == heard and why.startswith("cancelled by the dispatcher")
    # A queued job cancelled before any lease held nothing: no record.
    queued = _submit(client, keys["t2"])
    client.post(f"/v1/jobs/{queued}/cancel", headers=keys["t2"])
    assert _record(conn, queued) == []


T0 = datetime(2026, 1, 1, tzinfo=UTC)
moments = st.integers(min_value=-10**7, max_value=10**7).map(lambda s: T0 + timedelta(seconds=s))


@given(claimed_start=st.none() | moments, claimed_end=moments, leased=moments, received=moments,
       max_runtime=st.none() | st.integers(min_value=1, max_value=10**6))
def test_billed_times_never_leave_what_the_platform_saw(
        claimed_start, claimed_end, leased, received, max_runtime) -> None:
    try:
        billed = bound_claims(claimed_start=claimed_start, claimed_end=claimed_end,
                              leased_at=leased, received_at=received, max_runtime_s=max_runtime,
                              runtime_grace_s=300, clock_skew_s=30)
    except Invalid as refused:
        assert claimed_end > received + timedelta(seconds=30) or (
            claimed_start is not None and claimed_start > claimed_end), refused
        return
    assert leased <= billed.started_at <= billed.ended_at
    assert billed.ended_at <= max(received, billed.started_at)
    if max_runtime is not None:
        assert billed.ended_at - billed.started_at <= timedelta(seconds=max_runtime + 300)
    inside = (claimed_start or leased) >= leased and claimed_end <= received and (
        max_runtime is None
        or claimed_end - (claimed_start or leased) <= timedelta(seconds=max_runtime + 300))
    assert (billed.bounded_by == "") == (inside and billed.ended_at == claimed_end
                                          and claimed_end >= (claimed_start or leased))


def test_an_unbounded_claim_says_why(platform) -> None:  # noqa: F811
    cfg = service_for(platform).cfg
    skewed = T0 + 2 * HOUR + timedelta(seconds=cfg.clock_skew_s / 2)  # the site's clock is fast
    billed = bound_claims(claimed_start=T0 - HOUR, claimed_end=skewed, leased_at=T0,
                          received_at=T0 + 2 * HOUR, max_runtime_s=None,
                          runtime_grace_s=cfg.runtime_grace_s, clock_skew_s=cfg.clock_skew_s)
    assert (billed.started_at, billed.ended_at) == (T0, T0 + 2 * HOUR)
    assert billed.bounded_by.count(";") == 1
    with pytest.raises(Invalid, match="after the report was received"):
        bound_claims(claimed_start=None, claimed_end=T0 + 3 * HOUR, leased_at=T0,
                     received_at=T0 + HOUR, max_runtime_s=None, runtime_grace_s=0,
                     clock_skew_s=cfg.clock_skew_s)
