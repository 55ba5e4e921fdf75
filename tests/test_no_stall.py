"""The platform degrades, never stalls: a real server on loopback under many concurrent
requests, with valid and made-up keys. Every request is answered; one that cannot have a
connection in time gets a fast 503 with Retry-After; /healthz answers without the store;
recovery is immediate (the mechanism: jinsuan/kernel/gate.py)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import psycopg
import pytest
from servers import serving

from jinsuan.app import create_app
from jinsuan.kernel.auth import Role, create_key
from jinsuan.kernel.platform import Platform
from jinsuan.kernel.store import Database

MADE_UP = "jsk_000000000000_" + "x" * 40


@pytest.fixture
def platform_url(settings) -> Iterator[tuple[str, str, str]]:
    """A platform with a pool of 4 (2 for requests) and a 1 s wait; its URL, a key, the DB."""
    tight = settings.model_copy(update={"pool_max_size": 4, "pool_min_size": 1,
                                        "request_wait_s": 1.0})
    db = Database.open(tight)
    try:
        with db.pool.connection() as conn:
            key = create_key(conn, Role.BUREAU)
        with serving(create_app(Platform(settings=tight, db=db))) as url:
            yield url, key, db.url
    finally:
        db.close()


async def _burst(url: str, keys: list[str], n: int, timeout: float = 30) -> Counter[object]:
    async def one(client: httpx.AsyncClient, key: str) -> object:
        try:
            reply = await client.get("/v1/sites", headers={"Authorization": f"Bearer {key}"})
        except httpx.TimeoutException:
            return "no answer"
        return reply.status_code

    async with httpx.AsyncClient(base_url=url, timeout=timeout,
                                 limits=httpx.Limits(max_connections=n)) as client:
        return Counter(await asyncio.gather(*[one(client, keys[i % len(keys)])
                                              for i in range(n)]))


def test_two_hundred_concurrent_requests_are_all_answered(platform_url) -> None:
    url, key, _ = platform_url
    began = time.monotonic()
    codes = asyncio.run(_burst(url, [key, MADE_UP], 200))
    # Every one answered, well inside the pool's own 30 s timeout: 200 for the real key, 401
    # for the made-up one (looked up in turn, never holding up the others) until its wrong
    # secrets lock its prefix out (429, answered without a lookup), or, past the two places
    # this small pool leaves for requests, a fast 503 to retry. Nothing else.
    assert sum(codes.values()) == 200 and set(codes) <= {200, 401, 429, 503}, codes
    assert codes[200] > 0 and codes[401] > 0
    assert time.monotonic() - began < 20


def test_a_blocked_store_gives_fast_503s_health_answers_and_recovery_is_immediate(
        platform_url) -> None:
    url, key, db_url = platform_url
    with psycopg.connect(db_url) as locker:
        locker.execute("LOCK TABLE sites IN ACCESS EXCLUSIVE MODE")  # every /v1/sites waits
        began = time.monotonic()
        # The two requests holding the places wait for the lock (no answer within 4 s); every
        # other one waits 1 s for a place and is told to come back.
        codes = asyncio.run(_burst(url, [key], 20, timeout=4))
        waited = time.monotonic() - began
        health = httpx.get(f"{url}/healthz", timeout=5)
        busy = httpx.get(f"{url}/v1/sites", headers={"Authorization": f"Bearer {key}"},
                         timeout=10)
        locker.rollback()  # the store answers again
    assert codes == Counter({503: 18, "no answer": 2}), codes
    assert waited < 10
    assert health.status_code == 200 and health.elapsed.total_seconds() < 1
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "1"
    assert busy.json()["error"]["code"] == "unavailable"
    assert asyncio.run(_burst(url, [key], 50)) == Counter({200: 50})  # recovered at once
    assert httpx.get(f"{url}/readyz", timeout=5).json() == {"status": "ready"}
