"""Bad input gets the platform's JSON error, naming the field where it can, never a 500: the
inputs found by probing the API (NUL characters, prices in scientific notation or beyond the
store's range, run time limits past what a job may ask)."""

from __future__ import annotations

import pytest

from tests.test_scheduler_api import JOB, client, platform, world  # noqa: F401


@pytest.mark.parametrize(("price", "why"), [
    ("1e30", "not written in yuan to the fen"),
    ("1E+2", "not written in yuan to the fen"),
    ("-0.00", "not a price ≥ 0"),
    ("123456789012.00", "above the largest price"),
    ("8.001", "not written in yuan to the fen"),
])
def test_a_price_must_be_plain_yuan_to_the_fen(client, world, price, why) -> None:  # noqa: F811
    cheap, _, keys = world
    reply = client.put(f"/v1/sites/{cheap.site_id}/scheduling", headers=keys["admin"],
                       json={"executor": "process", "prices": {"H100": price}})
    assert reply.status_code == 422, reply.text
    error = reply.json()["error"]
    assert error["field"] == "prices.H100" and why in error["reason"]


def test_a_run_time_limit_past_thirty_days_is_refused(client, world) -> None:  # noqa: F811
    _, _, keys = world
    reply = client.post("/v1/jobs", json={**JOB, "max_runtime_s": 3_000_000_000},
                        headers=keys["t1"])
    assert reply.status_code == 422
    assert reply.json()["error"]["field"] == "max_runtime_s"


@pytest.mark.parametrize(("method", "path", "body"), [
    ("post", "/v1/jobs", {**JOB, "name": "train\u0000"}),
    ("get", "/v1/jobs/job%00x", None),
    ("get", "/v1/usage?from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z&project=p%00", None),
])
def test_a_nul_character_is_refused_not_a_500(
        client, world, method, path, body) -> None:  # noqa: F811
    _, _, keys = world
    reply = client.request(method.upper(), path, json=body, headers=keys["t1"])
    assert reply.status_code == 422, reply.text
    assert reply.json()["error"]["code"] == "invalid"
