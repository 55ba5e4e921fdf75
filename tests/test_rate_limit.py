"""Rate limits per key and per address with 429 and Retry-After, and the lockout of a key
prefix after repeated wrong secrets, on the platform's clock (made to stand still here)."""

from __future__ import annotations

from collectors_kit import bearer, make_app
from fastapi.testclient import TestClient

from jinsuan.kernel.auth import Role, create_key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_key_over_its_rate_waits_and_others_do_not(settings, db, conn) -> None:
    app, _ = make_app(settings.model_copy(update={"rate_per_key": 2, "rate_burst": 3}), db)
    clock = Clock()
    app.state.rate_limiter.clock = clock
    busy, calm = create_key(conn, Role.BUREAU), create_key(conn, Role.BUREAU)
    with TestClient(app) as client:
        # a burst of 3, then 2 a second: the 4th at once is refused, for 1/2 s -> "1"
        codes = [client.get("/v1/sites", headers=bearer(busy)).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        refused = client.get("/v1/sites", headers=bearer(busy))
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "rate_limited"
        assert client.get("/v1/sites", headers=bearer(calm)).status_code == 200
        assert client.get("/healthz").status_code == 200  # never limited
        clock.now += 0.5  # one token back
        assert client.get("/v1/sites", headers=bearer(busy)).status_code == 200
        assert client.get("/v1/sites", headers=bearer(busy)).status_code == 429


def test_wrong_secrets_lock_the_prefix_out_even_for_the_right_one(settings, db, conn) -> None:
    app, _ = make_app(settings.model_copy(update={"wrong_secrets_before_lockout": 3,
                                                  "lockout_s": 60}), db)
    clock = Clock()
    app.state.rate_limiter.clock = clock
    key = create_key(conn, Role.BUREAU)
    prefix = key.split("_")[1]
    guess = f"jsk_{prefix}_" + "A" * 43
    with TestClient(app) as client:
        assert [client.get("/v1/sites", headers=bearer(guess)).status_code
                for _ in range(3)] == [401, 401, 401]
        locked = client.get("/v1/sites", headers=bearer(key))
        assert locked.status_code == 429 and locked.headers["retry-after"] == "60"
        clock.now += 61
        assert client.get("/v1/sites", headers=bearer(key)).status_code == 200


def test_requests_without_a_key_are_limited_by_address(settings, db) -> None:
    app, _ = make_app(settings.model_copy(update={"rate_per_address": 1, "rate_burst": 2}), db)
    app.state.rate_limiter.clock = Clock()
    with TestClient(app) as client:
        assert [client.get("/v1/sites").status_code for _ in range(3)] == [401, 401, 429]
