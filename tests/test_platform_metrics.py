"""The platform's /metrics: fleet gauges per site from the store, ingest counters, rejections."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from collectors_kit import bearer, enrol, make_app, make_org, now_ms, steady_series
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from jinsuan.contract.accelerators import fp16_peak
from jinsuan.contract.wire import Series
from jinsuan.kernel.auth import Role, create_key


@pytest.fixture
def client(settings, db) -> Iterator[TestClient]:
    app, _ = make_app(settings, db)
    with TestClient(app) as test_client:
        yield test_client


def _scrape(client: TestClient, path: str = "/metrics", headers: dict[str, str] | None = None
            ) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    reply = client.get(path, headers=headers)
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(reply.text)
        for sample in family.samples
    }


SITE = (("city", "Taiyuan"), ("enterprise", "Jinneng Compute"), ("site", "taiyuan-1"))


def test_metrics_after_ingest(client, conn):
    org = make_org(conn, "Jinneng Compute", "taiyuan-1", "Taiyuan")
    agent = enrol(client, org)
    batch = agent.batch(steady_series(now_ms() - 10 * 60_000, 60))
    assert agent.post(client, batch).status_code == 200
    assert agent.post(client, batch).json()["status"] == "duplicate"
    reset = [Series(metric="meter_energy_joules_total", device="it",
                    points=[(now_ms() - 5_000, 10.0), (now_ms() - 4_000, 20.0)])]
    assert agent.post(client, agent.batch(reset)).status_code == 200  # counter went 1e9 -> 10
    too_hot = [Series(metric="accelerator_temperature_celsius", device="GPU-0000",
                      points=[(now_ms(), 400.0)])]
    assert agent.post(client, agent.batch(too_hot)).status_code == 422

    metrics = _scrape(client)

    assert metrics[("jinsuan_ingest_batches_total", ())] == 2
    assert metrics[("jinsuan_ingest_samples_total", ())] == batch.sample_count() + 2
    assert metrics[("jinsuan_ingest_duplicates_total", ())] == 1
    assert metrics[("jinsuan_ingest_rejected_total", (("reason", "out_of_bounds"),))] == 1
    assert metrics[("jinsuan_ingest_counter_resets_total", ())] == 1
    assert metrics[("jinsuan_ingest_duration_seconds_count", ())] == 3
    # The open /metrics names no site: the per-site figures need a scraper's key.
    assert not [name for name, labels in metrics if dict(labels).get("site")]
    assert not [name for name, _ in metrics if name.startswith("jinsuan_site_")]
    assert client.get("/metrics/sites").status_code == 401
    operator = bearer(org.operator_key)
    assert client.get("/metrics/sites", headers=operator).status_code == 403
    metrics = _scrape(client, "/metrics/sites", bearer(create_key(conn, Role.METRICS)))
    peak = fp16_peak("NVIDIA H100 SXM5 80GB", "NVIDIA").tflops
    assert metrics[("jinsuan_site_fp16_pflops_connected", SITE)] == pytest.approx(2 * peak / 1000)
    assert metrics[("jinsuan_site_accelerators_connected", SITE)] == 2
    assert metrics[("jinsuan_site_racks", SITE)] == 2
    assert metrics[("jinsuan_site_it_power_kilowatts", SITE)] == pytest.approx(20.0)
    assert metrics[("jinsuan_site_facility_power_kilowatts", SITE)] == pytest.approx(26.0)
    assert metrics[("jinsuan_site_pue_last_hour", SITE)] > 1


def test_rejections_are_counted_by_reason(client, conn):
    org = make_org(conn, "Jinneng Compute", "taiyuan-1", "Taiyuan")
    agent = enrol(client, org)
    body = agent.batch(steady_series(now_ms() - 60_000, 3)).model_dump_json().encode()
    client.post("/v1/reports", content=body.replace(b"500.0", b"501.5", 1),
                headers=agent.signed(body))
    client.post("/v1/reports", content=body, headers={"X-Jinsuan-Agent": "agt_nobody",
                                                      "X-Jinsuan-Signature": "AAAA"})

    metrics = _scrape(client)

    assert metrics[("jinsuan_ingest_rejected_total", (("reason", "bad_signature"),))] == 1
    assert metrics[("jinsuan_ingest_rejected_total", (("reason", "unknown_agent"),))] == 1
    assert ("jinsuan_ingest_batches_total", ()) in metrics
    assert metrics[("jinsuan_ingest_batches_total", ())] == 0


def test_healthz(client):
    reply = client.get("/healthz")
    assert reply.status_code == 200
    assert reply.json() == {"status": "ok"}
