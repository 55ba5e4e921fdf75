"""POST /v1/reports against a real PostgreSQL: signatures, idempotency, validation, atomicity."""

from __future__ import annotations

import gzip
import hashlib
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from collectors_kit import (
    Agent,
    Org,
    bearer,
    counts,
    enrol,
    inventory,
    make_app,
    make_org,
    now_ms,
    steady_series,
)
from conftest import FLAVOUR
from fastapi.testclient import TestClient

from collectors.validation import Limits, Rule, first_problem
from jinsuan.contract.accelerators import fp16_peak
from jinsuan.contract.signing import new_private_key, sign
from jinsuan.contract.wire import AGENT_HEADER, SIGNATURE_HEADER, Series
from jinsuan.kernel.auth import Role, create_key


@pytest.fixture
def client(settings, db) -> Iterator[TestClient]:
    app, _ = make_app(settings, db)
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def org(conn) -> Org:
    return make_org(conn, "Jinneng Compute", "taiyuan-1", "Taiyuan")


@pytest.fixture
def agent(client, org) -> Agent:
    return enrol(client, org)


def _recent(points: int = 6) -> list[Series]:
    return steady_series(now_ms() - 120_000, points)


def test_stored_batch_writes_samples_inventory_audit_and_dirty_hours(client, conn, agent):
    batch = agent.batch(_recent())
    body = batch.model_dump_json().encode()
    headers = agent.signed(body)
    reply = client.post("/v1/reports", content=body, headers=headers)

    assert reply.status_code == 200, reply.text
    assert reply.json() == {"agent_id": agent.id, "seq": 1, "status": "stored",
                            "samples": batch.sample_count()}
    assert conn.execute("SELECT count(*) FROM samples").fetchone()[0] == batch.sample_count()
    # every sample points at a series of this site with the right metric and device
    joined = conn.execute(
        "SELECT count(*) FROM samples x JOIN series s ON s.id = x.series_id"
        " WHERE s.site_id = %s", (agent.site_id,)).fetchone()[0]
    assert joined == batch.sample_count()
    stored = conn.execute(
        "SELECT x.ts, x.value FROM samples x JOIN series s ON s.id = x.series_id"
        " WHERE s.metric = 'accelerator_power_watts' AND s.device = 'GPU-0001' ORDER BY x.ts"
    ).fetchall()
    sent = next(s for s in batch.series
                if (s.metric, s.device) == ("accelerator_power_watts", "GPU-0001"))
    assert [(int(ts.timestamp() * 1000), v) for ts, v in stored] == sent.points

    sha, signature = conn.execute(
        "SELECT body_sha256, signature FROM reports WHERE agent_id = %s AND seq = 1",
        (agent.id,)).fetchone()
    assert bytes(sha) == hashlib.sha256(body).digest()
    assert signature == headers[SIGNATURE_HEADER]

    expected = fp16_peak("NVIDIA H100 SXM5 80GB", "NVIDIA")
    rows = conn.execute(
        "SELECT uuid, fp16_tflops, fp16_estimated, fp16_source, domestic FROM accelerators"
        " ORDER BY uuid").fetchall()
    assert rows == [(f"GPU-{i:04d}", expected.tflops, expected.estimated, expected.source,
                     expected.domestic) for i in range(2)]
    assert expected.tflops is not None
    assert conn.execute("SELECT count(*) FROM racks").fetchone()[0] == 2
    assert conn.execute("SELECT id, role FROM meters ORDER BY id").fetchall() == [
        ("fac", "facility"), ("it", "it")]
    assert conn.execute("SELECT last_seq FROM agents WHERE id = %s",
                        (agent.id,)).fetchone()[0] == 1

    first = min(p[0] for s in batch.series for p in s.points)
    last = max(p[0] for s in batch.series for p in s.points)
    hours = {datetime.fromtimestamp(t // 3_600_000 * 3600, UTC) for t in (first, last)}
    dirty = {h for (h,) in conn.execute("SELECT hour FROM rollup_dirty").fetchall()}
    assert dirty == hours


def test_tampered_batch_is_refused_and_nothing_is_written(client, conn, agent):
    body = agent.batch(_recent()).model_dump_json().encode()
    headers = agent.signed(body)
    tampered = body.replace(b"500.0", b"900.0", 1)
    assert tampered != body
    before = counts(conn)

    reply = client.post("/v1/reports", content=tampered, headers=headers)

    assert reply.status_code == 401
    assert reply.json()["error"]["field"] == SIGNATURE_HEADER
    assert counts(conn) == before


def test_signature_by_another_key_is_refused(client, conn, agent):
    body = agent.batch(_recent()).model_dump_json().encode()
    headers = {AGENT_HEADER: agent.id, SIGNATURE_HEADER: sign(new_private_key(), body)}
    before = counts(conn)

    reply = client.post("/v1/reports", content=body, headers=headers)

    assert reply.status_code == 401
    assert reply.json()["error"]["code"] == "unauthenticated"
    assert counts(conn) == before


def test_unknown_agent_and_missing_headers_are_refused(client, agent):
    body = agent.batch(_recent()).model_dump_json().encode()
    signature = sign(agent.key, body)
    cases = [
        ({AGENT_HEADER: "agt_nobody", SIGNATURE_HEADER: signature}, AGENT_HEADER),
        ({SIGNATURE_HEADER: signature}, AGENT_HEADER),
        ({AGENT_HEADER: agent.id}, SIGNATURE_HEADER),
    ]
    for headers, field in cases:
        reply = client.post("/v1/reports", content=body, headers=headers)
        assert reply.status_code == 401, headers
        assert reply.json()["error"]["field"] == field


def test_body_of_another_agent_signed_with_own_key_is_refused(client, conn, org, agent):
    other = enrol(client, org, hostname="other")
    body = other.batch(_recent()).model_dump_json().encode()
    headers = {AGENT_HEADER: agent.id, SIGNATURE_HEADER: sign(agent.key, body)}

    reply = client.post("/v1/reports", content=body, headers=headers)

    assert reply.status_code == 403
    assert reply.json()["error"]["field"] == "agent_id"
    assert counts(conn)["reports"] == 0


def test_a_replay_is_acknowledged_and_another_body_under_a_stored_seq_refused(
        client, conn, agent):
    first = agent.batch(_recent())
    assert agent.post(client, first).json()["status"] == "stored"
    after_first = counts(conn)

    again = agent.post(client, first)
    assert again.status_code == 200
    assert again.json() == {"agent_id": agent.id, "seq": first.seq, "status": "duplicate",
                            "samples": 0}
    # New data under the stored seq (an agent whose numbers restarted) is not "duplicate" and
    # dropped: it is refused, so the agent keeps it, and told where its numbers may resume.
    other = agent.post(client, agent.batch(steady_series(now_ms() - 60_000, 3), seq=first.seq))
    assert other.status_code == 409
    assert other.json()["error"] == {
        "code": "seq_conflict", "field": "seq", "next_seq": first.seq + 1,
        "reason": f"seq {first.seq} is already stored for agent {agent.id!r} with another body;"
                  f" the first seq not stored is {first.seq + 1}"}
    assert counts(conn) == after_first
    second = agent.post(client, agent.batch(steady_series(now_ms() - 50_000, 2)))
    assert second.json()["status"] == "stored"
    assert counts(conn)["reports"] == 2


def test_out_of_bounds_value_is_refused_naming_the_field(client, conn, agent):
    series = _recent()
    index = next(i for i, s in enumerate(series) if s.metric == "accelerator_power_watts")
    points = list(series[index].points)
    points[3] = (points[3][0], 25_000.0)  # kW read as W
    series[index] = Series(metric=series[index].metric, device=series[index].device,
                           points=points)

    reply = agent.post(client, agent.batch(series))

    assert reply.status_code == 422
    error = reply.json()["error"]
    assert error["field"] == f"series[{index}].points[3].value"
    assert "accelerator_power_watts" in error["reason"]
    assert counts(conn)["reports"] == 0


def test_future_timestamp_is_refused(client, conn, settings, agent):
    ahead = now_ms() + int(settings.max_future_skew_s * 1000) + 60_000
    series = [Series(metric="accelerator_up", device="GPU-0000",
                     points=[(now_ms() - 1000, 1.0), (ahead, 1.0)])]

    reply = agent.post(client, agent.batch(series))

    assert reply.status_code == 422
    assert reply.json()["error"]["field"] == "series[0].points[1].ts"
    assert counts(conn)["samples"] == 0


def test_malformed_batch_names_the_field(client, agent):
    body = agent.batch(_recent()).model_dump_json().replace('"seq":1', '"seq":"one"').encode()

    reply = client.post("/v1/reports", content=body, headers=agent.signed(body))

    assert reply.status_code == 422
    assert reply.json()["error"]["field"] == "seq"


def test_counter_going_backwards_is_accepted_as_a_reset(client, conn, agent):
    t = now_ms() - 60_000
    series = [Series(metric="accelerator_energy_joules_total", device="GPU-0000",
                     points=[(t, 9e6), (t + 10_000, 9.1e6), (t + 20_000, 12.0),
                             (t + 30_000, 40.0)])]

    reply = agent.post(client, agent.batch(series))

    assert reply.status_code == 200, reply.text
    values = [v for (v,) in conn.execute("SELECT value FROM samples ORDER BY ts").fetchall()]
    assert values == [9e6, 9.1e6, 12.0, 40.0]


def test_gzip_body_is_accepted(client, conn, agent):
    batch = agent.batch(_recent())

    reply = agent.post(client, batch, compress=True)

    assert reply.status_code == 200, reply.text
    assert conn.execute("SELECT count(*) FROM samples").fetchone()[0] == batch.sample_count()


def test_gzip_bomb_and_oversized_body_are_refused_with_413(conn, settings, db, org):
    limit = 256 * 1024
    app, _ = make_app(settings.model_copy(update={"max_body_bytes": limit}), db)
    with TestClient(app) as client:
        agent = enrol(client, org)
        bomb = gzip.compress(b"\0" * (64 * 2**20))  # 64 MiB inflated, ~64 KiB on the wire
        assert len(bomb) < limit
        headers = {AGENT_HEADER: agent.id, SIGNATURE_HEADER: sign(agent.key, b"irrelevant"),
                   "Content-Encoding": "gzip"}
        bombed = client.post("/v1/reports", content=bomb, headers=headers)
        oversized = client.post("/v1/reports", content=b" " * (limit + 1),
                                headers={AGENT_HEADER: agent.id, SIGNATURE_HEADER: "x"})

    for reply in (bombed, oversized):
        assert reply.status_code == 413
        assert reply.json()["error"]["code"] == "too_large"
    assert counts(conn)["reports"] == 0


def test_unsupported_encoding_is_415(client, agent):
    body = agent.batch(_recent()).model_dump_json().encode()
    headers = agent.signed(body) | {"Content-Encoding": "br"}

    reply = client.post("/v1/reports", content=body, headers=headers)

    assert reply.status_code == 415
    assert reply.json()["error"]["field"] == "Content-Encoding"


def test_batch_whose_copy_fails_midway_writes_nothing(client, conn, agent):
    """A real failure inside COPY (a trigger raising on one row) rolls the whole batch back."""
    if FLAVOUR == "citus":  # Citus makes a trigger on a distributed table only when told to
        conn.execute("SET citus.enable_unsafe_triggers = on")
    conn.execute(
        "CREATE FUNCTION refuse_777() RETURNS trigger LANGUAGE plpgsql AS $$"
        " BEGIN IF NEW.value = 777 THEN RAISE EXCEPTION 'refused by test'; END IF;"
        " RETURN NEW; END $$")
    conn.execute("CREATE TRIGGER refuse_777 BEFORE INSERT ON samples"
                 " FOR EACH ROW EXECUTE FUNCTION refuse_777()")
    series = _recent(points=6)
    middle = len(series) // 2
    points = list(series[middle].points)
    points[2] = (points[2][0], 777.0)
    series[middle] = Series(metric=series[middle].metric, device=series[middle].device,
                            points=points)
    batch = agent.batch(series)
    before = counts(conn)

    failed = agent.post(client, batch)

    assert failed.status_code == 503
    assert failed.json()["error"]["code"] == "unavailable"
    assert counts(conn) == before
    assert conn.execute("SELECT last_seq, inventory_sha256 FROM agents WHERE id = %s",
                        (agent.id,)).fetchone() == (0, None)

    conn.execute("DROP TRIGGER refuse_777 ON samples")
    retried = agent.post(client, batch)
    assert retried.json()["status"] == "stored"
    orphans = conn.execute("SELECT count(*) FROM samples x LEFT JOIN series s"
                           " ON s.id = x.series_id WHERE s.id IS NULL").fetchone()[0]
    assert orphans == 0
    assert counts(conn)["samples"] == batch.sample_count()


def test_revoked_agent_is_refused_although_its_key_is_cached(client, conn, agent):
    assert agent.post(client, agent.batch(_recent())).status_code == 200
    conn.execute("UPDATE agents SET revoked_at = now() WHERE id = %s", (agent.id,))
    before = counts(conn)

    refused = agent.post(client, agent.batch(steady_series(now_ms() - 30_000, 2)))
    again = agent.post(client, agent.batch(steady_series(now_ms() - 20_000, 2)))

    assert refused.status_code == 401
    assert again.status_code == 401
    assert counts(conn) == before


def test_samples_across_midnight_go_to_both_days(client, conn, agent):
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(
        days=1)
    start = int(midnight.timestamp() * 1000) - 30_000
    reply = agent.post(client, agent.batch(steady_series(start, 6)))

    assert reply.status_code == 200, reply.text
    days = conn.execute("SELECT DISTINCT ts::date FROM samples ORDER BY 1").fetchall()
    assert [d for (d,) in days] == [(midnight - timedelta(days=1)).date(), midnight.date()]


def test_inventory_is_upserted_only_when_it_changes(client, conn, agent):
    agent.post(client, agent.batch(_recent()))
    conn.execute("UPDATE accelerators SET fp16_source = 'marker'")
    agent.post(client, agent.batch(steady_series(now_ms() - 60_000, 2)))
    assert {s for (s,) in conn.execute("SELECT fp16_source FROM accelerators")} == {"marker"}

    agent.inventory = inventory(accelerators=3)
    reply = agent.post(client, agent.batch(steady_series(now_ms() - 50_000, 2, accelerators=3)))

    assert reply.status_code == 200, reply.text
    sources = [s for (s,) in conn.execute("SELECT fp16_source FROM accelerators ORDER BY uuid")]
    assert len(sources) == 3 and "marker" not in sources


# --- validation rules, as pure functions ---------------------------------------------------

def _limits() -> Limits:
    now = now_ms()
    return Limits(oldest_ms=now - 86_400_000, newest_ms=now + 300_000)


def _agent_batch(series: list[Series]):
    return Agent("agt_x", 1, new_private_key()).batch(series)


@pytest.mark.parametrize(
    ("series", "rule", "field"),
    [
        (Series(metric="gpu_watts", device="GPU-0000", points=[(1, 1.0)]),
         Rule.UNKNOWN_METRIC, "series[0].metric"),
        (Series(metric="accelerator_up", device="GPU-9999", points=[(1, 1.0)]),
         Rule.UNKNOWN_DEVICE, "series[0].device"),
        (Series(metric="site_racks", device="GPU-0000", points=[(1, 1.0)]),
         Rule.UNKNOWN_DEVICE, "series[0].device"),
        (Series(metric="meter_power_watts", device="nope", points=[(1, 1.0)]),
         Rule.UNKNOWN_DEVICE, "series[0].device"),
        (Series(metric="accelerator_utilization_ratio", device="GPU-0001",
                points=[(0, 0.5), (1, float("nan"))]),
         Rule.OUT_OF_BOUNDS, "series[0].points[1].value"),
        (Series(metric="meter_energy_joules_total", device="it", points=[(0, -1.0)]),
         Rule.OUT_OF_BOUNDS, "series[0].points[0].value"),
        (Series(metric="accelerator_up", device="GPU-0000", points=[(2, 1.0), (1, 1.0)]),
         Rule.OUT_OF_ORDER, "series[0].points[1].ts"),
    ],
)
def test_first_problem_names_rule_and_field(series, rule, field):
    base = now_ms() - 60_000
    shifted = Series(metric=series.metric, device=series.device,
                     points=[(base + t, v) for t, v in series.points])

    problem = first_problem(_agent_batch([shifted]), _limits())

    assert problem is not None
    assert (problem.rule, problem.field) == (rule, field)


def test_first_problem_accepts_valid_batch_and_refuses_stale_points():
    assert first_problem(_agent_batch(steady_series(now_ms() - 60_000, 5)), _limits()) is None
    stale = [Series(metric="accelerator_up", device="GPU-0000",
                    points=[(now_ms() - 2 * 86_400_000, 1.0)])]
    problem = first_problem(_agent_batch(stale), _limits())
    assert problem is not None and problem.rule is Rule.STALE_TIMESTAMP


def test_same_batch_posted_concurrently_is_stored_once(client, conn, agent):
    """Racing copies of one batch meet at the reports primary key: one stored, the rest dups."""
    batch = agent.batch(_recent())
    body = batch.model_dump_json().encode()
    headers = agent.signed(body)
    start = threading.Barrier(6)

    def post() -> str:
        start.wait(timeout=30)
        reply = client.post("/v1/reports", content=body, headers=headers)
        assert reply.status_code == 200, reply.text
        return reply.json()["status"]

    with ThreadPoolExecutor(max_workers=6) as pool:
        statuses = sorted(pool.map(lambda _: post(), range(6)))

    assert statuses == ["duplicate"] * 5 + ["stored"]
    assert counts(conn)["samples"] == batch.sample_count()
    assert counts(conn)["reports"] == 1


def test_unchanged_inventory_is_written_again_after_the_refresh_interval(client, conn, agent):
    from collectors.writer import INVENTORY_REFRESH

    agent.post(client, agent.batch(_recent()))
    conn.execute("UPDATE accelerators SET fp16_source = 'marker',"
                 " last_seen = last_seen - interval '1 day'")
    conn.execute("UPDATE agents SET inventory_seen_at = inventory_seen_at - %s",
                 (INVENTORY_REFRESH,))
    before = datetime.now(UTC)
    reply = agent.post(client, agent.batch(steady_series(now_ms() - 40_000, 2)))

    assert reply.status_code == 200, reply.text
    rows = conn.execute("SELECT fp16_source, last_seen FROM accelerators").fetchall()
    assert rows and all(source != "marker" for source, _ in rows)
    assert all(seen >= before - timedelta(seconds=5) for _, seen in rows)


def test_a_revoked_agent_is_refused_at_once_for_reports_and_leases(client, conn, agent) -> None:
    from jinsuan.contract.leasewire import LEASES_PATH, LeaseRequest

    assert agent.post(client, agent.batch(_recent())).json()["status"] == "stored"
    admin = bearer(create_key(conn, Role.ADMIN))
    assert client.post(f"/v1/agents/{agent.id}/revoke", headers=admin).status_code == 200
    before = counts(conn)
    reply = agent.post(client, agent.batch(steady_series(now_ms() - 30_000, 2)))
    assert reply.status_code == 401  # the very next report, although the key was cached
    assert counts(conn) == before
    lease = LeaseRequest(agent_id=agent.id, sent_at=datetime.now(UTC), executor="process",
                         free_slots=1).model_dump_json().encode()
    assert client.post(LEASES_PATH, content=lease,
                       headers=agent.signed(lease)).status_code == 401
    again = client.post(f"/v1/agents/{agent.id}/revoke", headers=admin)
    assert again.status_code == 409 and "already revoked" in again.json()["error"]["reason"]
