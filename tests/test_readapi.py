"""The bureau's read API: who sees which site, latest state from real ingested samples, rollups."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from collectors_kit import Org, bearer, enrol, make_app, make_org, now_ms, steady_series
from fastapi.testclient import TestClient

from collectors.state import site_states
from jinsuan.contract.accelerators import fp16_peak
from jinsuan.kernel.auth import Role, create_key
from jinsuan.kernel.sites import create_site

H100 = "NVIDIA H100 SXM5 80GB"


@dataclass
class World:
    client: TestClient
    jinneng: Org  # two sites: taiyuan-1 and jinzhong-1
    jinzhong_site_id: int
    datong: Org
    bureau: str
    admin: str
    dispatcher: str


@pytest.fixture
def world(settings, db, conn) -> Iterator[World]:
    jinneng = make_org(conn, "Jinneng Compute", "taiyuan-1", "Taiyuan")
    jinzhong = create_site(conn, enterprise="Jinneng Compute", name="jinzhong-1", city="Jinzhong",
                           data_centre="Jinzhong Campus")
    datong = make_org(conn, "Datong Cloud", "datong-1", "Datong")
    app, _ = make_app(settings, db)
    with TestClient(app) as client:
        yield World(
            client, jinneng, jinzhong.id, datong,
            bureau=create_key(conn, Role.BUREAU),
            admin=create_key(conn, Role.ADMIN),
            dispatcher=create_key(conn, Role.DISPATCHER, tenant="shanxi-ai-lab"),
        )


def _names(reply) -> list[str]:
    assert reply.status_code == 200, reply.text
    return [s["name"] for s in reply.json()]


def test_sites_visible_by_role_and_filters(world):
    get = world.client.get
    everything = ["datong-1", "jinzhong-1", "taiyuan-1"]
    assert _names(get("/v1/sites", headers=bearer(world.bureau))) == everything
    assert _names(get("/v1/sites", headers=bearer(world.admin))) == everything
    assert _names(get("/v1/sites", headers=bearer(world.dispatcher))) == everything
    operator = bearer(world.jinneng.operator_key)
    assert _names(get("/v1/sites", headers=operator)) == ["jinzhong-1", "taiyuan-1"]
    assert _names(get("/v1/sites", params={"enterprise": "Datong Cloud"}, headers=operator)) == []
    assert _names(get("/v1/sites", params={"city": "Datong"}, headers=bearer(world.bureau))) == [
        "datong-1"]
    assert _names(get("/v1/sites", params={"site": "jinzhong-1"},
                      headers=bearer(world.bureau))) == ["jinzhong-1"]
    assert get("/v1/sites").status_code == 401
    assert get("/v1/sites", headers=bearer("jsk_nope_nope")).status_code == 401
    # A site is a data centre of its own unless it was created as part of one.
    centres = {s["name"]: s["data_centre"]
               for s in get("/v1/sites", headers=bearer(world.bureau)).json()}
    assert centres == {"datong-1": "datong-1", "jinzhong-1": "Jinzhong Campus",
                       "taiyuan-1": "taiyuan-1"}


def test_dispatcher_may_list_sites_only(world):
    headers = bearer(world.dispatcher)
    site = world.datong.site.id
    for path in (f"/v1/sites/{site}/latest", f"/v1/sites/{site}/accelerators",
                 "/v1/rollups/sites", "/v1/rollups/enterprises"):
        reply = world.client.get(path, headers=headers)
        assert reply.status_code == 403, path
        assert reply.json()["error"]["code"] == "forbidden"


def test_latest_state_from_ingested_samples(world, conn):
    agent = enrol(world.client, world.jinneng)
    start = now_ms() - 20 * 60_000
    reply = agent.post(world.client, agent.batch(steady_series(start, 120)))  # 20 min, every 10 s
    assert reply.status_code == 200, reply.text

    latest = world.client.get(f"/v1/sites/{world.jinneng.site.id}/latest",
                              headers=bearer(world.jinneng.operator_key))

    assert latest.status_code == 200, latest.text
    state = latest.json()
    peak = fp16_peak(H100, "NVIDIA")
    assert state["site"] == "taiyuan-1"
    assert state["accelerators_connected"] == state["accelerators_reporting"] == 2
    assert state["fp16_pflops_connected"] == pytest.approx(2 * peak.tflops / 1000)
    assert state["fp16_estimated"] == 0 and state["fp16_unknown"] == 0
    assert state["racks"] == 2
    assert state["it_kw"] == pytest.approx(20.0)
    assert state["facility_kw"] == pytest.approx(26.0)
    # energy from the meters' counters: 26 kW / 20 kW over the same covered span
    assert state["pue"] == pytest.approx(26_000 / 20_000)
    assert state["it_kwh"] == pytest.approx(20.0 * 119 * 10 / 3600)
    assert state["coverage_it"] == pytest.approx(119 * 10 / 3600)
    assert state["last_report_at"] is not None


def test_latest_state_counts_only_healthy_recent_accelerators(world, conn):
    agent = enrol(world.client, world.jinneng)
    series = steady_series(now_ms() - 60_000, 6)
    for s in series:
        if s.metric == "accelerator_up" and s.device == "GPU-0001":
            s.points[-1] = (s.points[-1][0], 0.0)
    assert agent.post(world.client, agent.batch(series)).status_code == 200

    [state] = site_states(conn, site_ids=[world.jinneng.site.id])
    assert (state.accelerators_reporting, state.accelerators_connected) == (2, 1)
    later = datetime.now(UTC) + timedelta(minutes=10)
    [stale] = site_states(conn, site_ids=[world.jinneng.site.id], now=later)
    assert (stale.accelerators_reporting, stale.fp16_pflops_connected, stale.it_kw) == (0, 0, None)


def test_site_states_filters(world, conn):
    assert [s.site for s in site_states(conn)] == ["datong-1", "jinzhong-1", "taiyuan-1"]
    ent = world.jinneng.site.enterprise_id
    assert [s.site for s in site_states(conn, enterprise_id=ent)] == ["jinzhong-1", "taiyuan-1"]
    assert [s.site for s in site_states(conn, city="Datong")] == ["datong-1"]
    assert [s.site for s in site_states(conn, enterprise_id=ent, city="Datong")] == []
    empty = site_states(conn, site_ids=[world.jinzhong_site_id])[0]
    assert (empty.accelerators_connected, empty.pue, empty.it_kwh) == (0, None, None)


def test_operator_cannot_read_another_enterprises_site(world):
    headers = bearer(world.jinneng.operator_key)
    other = world.datong.site.id
    for path in (f"/v1/sites/{other}/latest", f"/v1/sites/{other}/accelerators"):
        reply = world.client.get(path, headers=headers)  # answered as if it did not exist
        assert reply.status_code == 404, path
        assert reply.json()["error"]["reason"] == f"no site with id {other}"
    own = world.client.get(f"/v1/sites/{world.jinzhong_site_id}/latest", headers=headers)
    assert own.status_code == 200
    assert world.client.get("/v1/sites/999999/latest",
                            headers=bearer(world.bureau)).status_code == 404


def test_accelerators_carry_their_fp16_source(world):
    agent = enrol(world.client, world.jinneng)
    assert agent.post(world.client, agent.batch(steady_series(now_ms() - 30_000, 3))).is_success

    reply = world.client.get(f"/v1/sites/{world.jinneng.site.id}/accelerators",
                             headers=bearer(world.bureau))

    assert reply.status_code == 200, reply.text
    body = reply.json()
    peak = fp16_peak(H100, "NVIDIA")
    assert [a["uuid"] for a in body["accelerators"]] == ["GPU-0000", "GPU-0001"]
    for acc in body["accelerators"]:
        assert (acc["fp16_tflops"], acc["fp16_source"], acc["fp16_estimated"]) == (
            peak.tflops, peak.source, False)
    assert body["fp16_tflops_total"] == pytest.approx(2 * peak.tflops)


def _rollup(conn, site_id: int, hour: datetime, it: str, facility: str) -> None:
    conn.execute(
        "INSERT INTO rollup_site_hourly (site_id, hour, it_kwh, facility_kwh, pue, fp16_pflops,"
        " accelerators, racks, utilization, coverage_it, coverage_facility,"
        " coverage_accelerators) VALUES (%s, %s, %s, %s, %s::numeric / %s::numeric, 1.5, 10, 2,"
        " 0.5, 1, 1, 1)",
        (site_id, hour, Decimal(it), Decimal(facility), Decimal(facility), Decimal(it)),
    )


def test_rollups_by_site_and_enterprise_with_filters_and_visibility(world, conn):
    h0 = datetime(2025, 3, 1, 8, tzinfo=UTC)
    h1 = h0 + timedelta(hours=1)
    _rollup(conn, world.jinneng.site.id, h0, "100.5", "130.25")
    _rollup(conn, world.jinneng.site.id, h1, "101", "131")
    _rollup(conn, world.jinzhong_site_id, h0, "50", "60")
    _rollup(conn, world.datong.site.id, h0, "200", "250")
    window = {"from": h0.isoformat(), "to": (h1 + timedelta(hours=1)).isoformat()}
    get = world.client.get

    every = get("/v1/rollups/sites", params=window, headers=bearer(world.bureau)).json()
    assert [(r["site"], r["hour"]) for r in every] == [
        ("datong-1", h0.isoformat().replace("+00:00", "Z")),
        ("jinzhong-1", h0.isoformat().replace("+00:00", "Z")),
        ("taiyuan-1", h0.isoformat().replace("+00:00", "Z")),
        ("taiyuan-1", h1.isoformat().replace("+00:00", "Z")),
    ]
    assert Decimal(every[2]["it_kwh"]) == Decimal("100.5")
    only_h0 = get("/v1/rollups/sites", params={**window, "to": h1.isoformat(), "city": "Taiyuan"},
                  headers=bearer(world.bureau)).json()
    assert [(r["site"], r["facility_kwh"]) for r in only_h0] == [("taiyuan-1", "130.25")]

    mine = get("/v1/rollups/sites", params=window,
               headers=bearer(world.jinneng.operator_key)).json()
    assert {r["site"] for r in mine} == {"taiyuan-1", "jinzhong-1"}

    enterprises = get("/v1/rollups/enterprises", params=window,
                      headers=bearer(world.bureau)).json()
    jinneng_h0 = next(r for r in enterprises if r["enterprise"] == "Jinneng Compute"
                      and r["hour"].startswith("2025-03-01T08"))
    assert jinneng_h0["sites"] == 2
    assert Decimal(jinneng_h0["it_kwh"]) == Decimal("150.5")
    # PUE of an enterprise is the ratio of its energy sums, not a mean of its sites' PUEs
    assert Decimal(jinneng_h0["pue"]) == pytest.approx(Decimal("190.25") / Decimal("150.5"))
    own = get("/v1/rollups/enterprises", params=window,
              headers=bearer(world.datong.operator_key)).json()
    assert {r["enterprise"] for r in own} == {"Datong Cloud"}


def test_rollup_time_range_is_checked(world):
    headers = bearer(world.bureau)
    backwards = world.client.get("/v1/rollups/sites", headers=headers, params={
        "from": "2025-03-02T00:00:00Z", "to": "2025-03-01T00:00:00Z"})
    assert backwards.status_code == 422
    assert backwards.json()["error"]["field"] == "from"
    naive = world.client.get("/v1/rollups/sites", headers=headers,
                             params={"from": "2025-03-01T00:00:00"})
    assert naive.status_code == 422
    assert naive.json()["error"]["field"] == "from"
    too_long = world.client.get("/v1/rollups/enterprises", headers=headers, params={
        "from": "2023-01-01T00:00:00Z", "to": "2025-01-01T00:00:00Z"})
    assert too_long.status_code == 422
