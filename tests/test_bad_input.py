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


def test_a_body_over_the_limit_is_refused_before_it_is_read_or_stored(
        client, world, conn) -> None:  # noqa: F811
    _, _, keys = world
    before = conn.execute("SELECT count(*) FROM jobs").fetchone()[0]
    huge = {**JOB, "name": "big", "payload": {"command": ["x" * (2 << 20)]}}
    declared = client.post("/v1/jobs", json=huge, headers=keys["t1"])
    assert declared.status_code == 413
    assert declared.json()["error"] == {
        "code": "too_large", "field": "body",
        "reason": f"body is {len(declared.request.content)} bytes; at most 1048576 allowed"}

    def chunks():  # no Content-Length: counted as it arrives
        yield b'{"project": "p", "tasks": 1, "accelerators_per_task": 1, "payload": {"command": ["'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"]}}'

    streamed = client.post("/v1/jobs", content=chunks(),
                           headers={**keys["t1"], "Content-Type": "application/json"})
    assert streamed.status_code == 413
    assert streamed.json()["error"]["code"] == "too_large"
    assert conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == before
    # A job of ordinary size still goes in.
    assert client.post("/v1/jobs", json=JOB, headers=keys["t1"]).status_code == 201
