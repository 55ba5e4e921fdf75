"""A dispatcher's resend never queues a job twice: ``POST /v1/jobs`` with an ``Idempotency-Key``
answers the job stored under it, whichever platform process takes the resend and however many
arrive at once; the key with another job is refused. Real PostgreSQL, real uvicorn servers."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
from servers import serving
from typer.testing import CliRunner

from jinsuan.app import create_app
from jinsuan.cli.job import job_app
from jinsuan.kernel.platform import Platform
from tests.test_scheduler_api import JOB, client, platform, world  # noqa: F401


def _keyed(key: str) -> dict[str, str]:
    return {"Idempotency-Key": key}


def _jobs(conn, tenant: str) -> list[str]:
    return [job_id for (job_id,) in conn.execute(
        "SELECT id FROM jobs WHERE tenant = %s ORDER BY id", (tenant,))]


def test_a_resend_is_answered_with_the_job_stored_the_first_time(client, world, conn):  # noqa: F811
    _, _, keys = world
    first = client.post("/v1/jobs", json=JOB, headers={**keys["t1"], **_keyed("train-0042")})
    again = client.post("/v1/jobs", json=JOB, headers={**keys["t1"], **_keyed("train-0042")})
    assert first.status_code == again.status_code == 201, (first.text, again.text)
    assert again.json() == first.json()
    assert _jobs(conn, "t1") == [first.json()["id"]]
    assert conn.execute("SELECT count(*) FROM job_transitions WHERE job_id = %s",
                        (first.json()["id"],)).fetchone()[0] == 1  # submitted once
    # Resent after the job moved on: the same job, as it is now.
    job_id = first.json()["id"]
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=keys["t1"]).status_code == 200
    late = client.post("/v1/jobs", json=JOB, headers={**keys["t1"], **_keyed("train-0042")})
    assert (late.status_code, late.json()["id"], late.json()["state"]) == (
        201, job_id, "cancelled")
    # Without a key every submit is a job of its own, as before.
    plain = [client.post("/v1/jobs", json=JOB, headers=keys["t1"]).json()["id"]
             for _ in range(2)]
    assert len(set(plain)) == 2 and len(_jobs(conn, "t1")) == 3


def test_the_key_with_another_job_is_refused_and_keys_are_per_tenant(
        client, world, conn):  # noqa: F811
    _, _, keys = world
    kept = client.post("/v1/jobs", json=JOB, headers={**keys["t1"], **_keyed("nightly")})
    assert kept.status_code == 201, kept.text
    other = client.post("/v1/jobs", json={**JOB, "accelerators_per_task": 2},
                        headers={**keys["t1"], **_keyed("nightly")})
    assert other.status_code == 409, other.text
    error = other.json()["error"]
    assert error["code"] == "idempotency_key_reused" and error["field"] == "Idempotency-Key"
    assert kept.json()["id"] in error["reason"]
    assert _jobs(conn, "t1") == [kept.json()["id"]]
    # Another tenant's key of the same name is its own.
    theirs = client.post("/v1/jobs", json=JOB, headers={**keys["t2"], **_keyed("nightly")})
    assert theirs.status_code == 201 and theirs.json()["id"] != kept.json()["id"]


def test_a_key_out_of_bounds_is_refused_before_anything_is_stored(
        client, world, conn):  # noqa: F811
    _, _, keys = world
    for bad in ("two words", "k" * 129, "键".encode()):  # UTF-8 bytes: not printable ASCII
        refused = client.post("/v1/jobs", json=JOB, headers={**keys["t1"], "Idempotency-Key": bad})
        assert refused.status_code == 422, (bad, refused.text)
        assert "Idempotency-Key" in refused.text
    assert _jobs(conn, "t1") == []


def test_resends_at_once_to_two_platform_processes_store_one_job(
        platform, world, conn, settings, db):  # noqa: F811
    """Twenty resends of one submit at once, spread over two platform processes (two apps on
    the store): each process's submit writer may take several in one group, and the two
    groups race on the store. One job, every answer naming it."""
    _, _, keys = world
    other = Platform(settings=settings, db=db)
    with serving(create_app(platform)) as one, serving(create_app(other)) as two:
        def send(i: int) -> httpx.Response:
            return httpx.post(f"{(one, two)[i % 2]}/v1/jobs", json=JOB, timeout=30,
                              headers={**keys["t1"], **_keyed("retry-storm")})

        with ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(send, range(20)))
    assert [a.status_code for a in answers] == [201] * 20, [a.text for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1
    assert _jobs(conn, "t1") == [answers[0].json()["id"]]


def test_the_command_line_resends_under_its_key(platform, world, conn):  # noqa: F811
    """``jinsuan job submit --idempotency-key``: run twice, one job, the same id printed."""
    _, _, keys = world
    with serving(create_app(platform)) as url:
        env = {"JINSUAN_URL": url, "JINSUAN_API_KEY": keys["t1"]["Authorization"][7:]}
        printed = [CliRunner().invoke(job_app, ["submit", "--project", "llm", "-c", "true",
                                                "--idempotency-key", "cli-7"], env=env)
                   for _ in range(2)]
    assert [p.exit_code for p in printed] == [0, 0], [p.output for p in printed]
    assert printed[0].stdout == printed[1].stdout
    assert _jobs(conn, "t1") == [printed[0].stdout.strip()]
