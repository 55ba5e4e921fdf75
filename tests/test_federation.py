"""Federation (docs/federation.md): a provincial platform forwards its closed site-hours,
signed, to a higher-tier platform.

Two real platforms, each an app served by uvicorn on loopback with a fresh database of its
own: the lower one takes real agents' reports and rolls them up; its forwarder
(collectors.federation.forward) posts the hours to the upper one, which an admin told of the
lower one's key with ``jinsuan federation add-peer``.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import uvicorn
from collectors_kit import Agent, bearer, enrol, make_app, make_org, steady_series
from conftest import fresh_database
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI
from psycopg.rows import dict_row
from servers import free_port
from typer.testing import CliRunner

from collectors.federation import (
    PLATFORM_HEADER,
    FederatedBatch,
    ForwarderConfig,
    decimal_text,
    forward,
)
from collectors.rollup import floor_hour, run_rollups
from jinsuan.cli.federation import federation_app
from jinsuan.contract.signing import new_private_key, public_key_b64, sign
from jinsuan.contract.wire import SIGNATURE_HEADER, Batch
from jinsuan.kernel.auth import Role, create_key
from jinsuan.kernel.ledger import signing_key
from jinsuan.kernel.settings import Settings
from jinsuan.kernel.store import Database

runner = CliRunner()
FIGURES = ("it_kwh", "facility_kwh", "pue", "fp16_pflops", "fp16_pflops_estimated",
           "utilization", "coverage_it", "coverage_facility", "coverage_accelerators")
CREDIT_CODE = "91110000802100433B"


def platform_app(settings: Settings, db: Database) -> FastAPI:
    app, _ = make_app(settings, db)
    return app


@contextmanager
def serving_on(app: FastAPI, port: int) -> Iterator[str]:
    """Serve ``app`` on ``port`` (so that it can be stopped and served again at one URL)."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture
def upper(pg_admin_url: str, template_db: str, tmp_path: Path
          ) -> Iterator[tuple[Database, FastAPI]]:
    """The higher-tier platform: its own fresh database and app (served by each test)."""
    with fresh_database(pg_admin_url, template_db) as url:
        settings = Settings(database_url=url, data_dir=tmp_path / "upper",
                            run_background_jobs=False)
        database = Database.open(settings)
        try:
            yield database, platform_app(settings, database)
        finally:
            database.close()


def admin_and_bureau(database: Database) -> tuple[str, str]:
    with database.pool.connection() as conn:
        return create_key(conn, Role.ADMIN), create_key(conn, Role.BUREAU)


def lower_rows(conn: psycopg.Connection) -> dict[tuple[str, datetime], dict[str, Any]]:
    """The lower platform's site-hours, keyed as the upper one keys them."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute("SELECT * FROM rollup_site_hourly").fetchall()
    return {(str(r["site_id"]), r["hour"]): r for r in rows}


def upper_hours(url: str, key: str, *, history: bool = False, **params: str
                ) -> dict[tuple[str, datetime, int], dict[str, Any]]:
    """``GET /v1/federation/hourly`` over the last two days, keyed by site, hour, revision."""
    now = datetime.now(UTC)
    reply = httpx.get(f"{url}/v1/federation/hourly", headers=bearer(key), params={
        "from": (now - timedelta(days=2)).isoformat(), "to": (now + timedelta(hours=1)).isoformat(),
        "history": str(history).lower(), **params})
    assert reply.status_code == 200, reply.text
    return {(h["site"], datetime.fromisoformat(h["hour"]), h["revision"]): h
            for h in reply.json()}


def as_sent(row: dict[str, Any]) -> dict[str, Any]:
    """A lower rollup row's figures as the wire carries them."""
    figures = {c: decimal_text(row[c]) for c in FIGURES}
    return {**figures, "accelerators": row["accelerators"], "racks": row["racks"],
            "quality": list(row["quality"])}


def post_hour(client: httpx.Client, agent: Agent, hour: datetime, *, watts: float = 0) -> None:
    """A full hour of a small site's samples from ``agent``, in six reports."""
    for part in range(6):
        start_ms = int((hour + timedelta(minutes=10 * part)).timestamp() * 1000)
        series = [s.model_copy(update={"points": [(t, v + watts) for t, v in s.points]})
                  if s.metric == "meter_power_watts" else s
                  for s in steady_series(start_ms, 60)]
        agent.seq += 1  # built as an agent builds it: when its last sample was taken
        batch = Batch(agent_id=agent.id, seq=agent.seq, interval_s=10, inventory=agent.inventory,
                      created_at=datetime.fromtimestamp(series[0].points[-1][0] / 1000, UTC),
                      series=series)
        reply = agent.post(client, batch)  # type: ignore[arg-type]
        assert reply.status_code == 200, reply.text


def test_a_province_forwards_its_hours_signed_revisions_kept_nothing_lost(
        settings: Settings, db: Database, upper: tuple[Database, FastAPI], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    upper_db, upper_app = upper
    admin, bureau = admin_and_bureau(upper_db)
    key = signing_key(tmp_path / "lower" / "federation-ed25519.pem")
    port = free_port()
    config = ForwarderConfig(upstream_url=f"http://127.0.0.1:{port}", platform="shanxi",
                             key=key, batch_hours=2)  # small batches: several posts per run
    monkeypatch.delenv("JINSUAN_URL", raising=False)
    monkeypatch.delenv("JINSUAN_API_KEY", raising=False)

    # The lower platform: two enterprises' sites, each with an agent, reporting an hour that
    # closed three hours ago; the rollups close that hour and the empty ones after it.
    first_hour = floor_hour(datetime.now(UTC)) - timedelta(hours=3)
    with db.pool.connection() as conn:
        taihang = make_org(conn, "Taihang Compute", "ty-1", "太原")
        fenhe = make_org(conn, "Fenhe Cloud", "fh-1", "临汾")
        conn.execute("UPDATE enterprises SET credit_code = %s WHERE name = 'Taihang Compute'",
                     (CREDIT_CODE,))
    with serving_on(platform_app(settings, db), free_port()) as lower_url, \
            httpx.Client(base_url=lower_url, timeout=30) as lower:
        agents = {org.site.name: enrol(lower, org) for org in (taihang, fenhe)}  # type: ignore[arg-type]
        for agent in agents.values():
            post_hour(lower, agent, first_hour)
        assert run_rollups(db, settings).ran
        with db.pool.connection() as conn:
            rows = lower_rows(conn)
        assert len(rows) >= 4 and {h for _, h in rows} >= {first_hour,
                                                             first_hour + timedelta(hours=1)}

        # The upper tier's admin registers the lower platform's forwarding key, then the
        # upper tier goes down: the forwarder keeps every hour and backs off.
        with serving_on(upper_app, port) as upper_url:
            added = runner.invoke(federation_app, ["add-peer", "shanxi", public_key_b64(key),
                                                   "--url", upper_url, "--key", admin])
            assert added.exit_code == 0, added.output
        down = forward(db, config)
        assert down.ran and down.sent == 0 and down.error is not None
        assert "cannot reach" in down.error
        with db.pool.connection() as conn:
            assert conn.execute("SELECT count(*) FROM federation_outbox").fetchone()[0] == 0
            failures, next_attempt = conn.execute(
                "SELECT failures, next_attempt_at FROM federation_forwarder").fetchone()
        assert failures == 1 and next_attempt > datetime.now(UTC)
        assert not forward(db, config).ran  # deferred: the back-off has not run out

        with serving_on(upper_app, port) as upper_url:
            # Back up: once the back-off runs out, everything is delivered, and the upper
            # tier holds exactly the lower one's hours, figures as decimal strings.
            delivered = forward(db, config, now=datetime.now(UTC) + timedelta(hours=2))
            assert delivered.error is None, delivered.error
            assert delivered.sent == len(rows) and delivered.batches == -(-len(rows) // 2)
            held = upper_hours(upper_url, bureau)
            assert {(site, hour) for site, hour, _ in held} == set(rows)
            for (site, hour, revision), got in held.items():
                assert revision == 1 and got["current"] and got["peer"] == "shanxi"
                assert got["figures"] == as_sent(rows[(site, hour)])
                assert (datetime.fromisoformat(got["computed_at"])
                        == rows[(site, hour)]["computed_at"])
            ty = str(taihang.site.id)
            measured = held[(ty, first_hour, 1)]
            assert (measured["site_name"], measured["enterprise"], measured["city"],
                    measured["credit_code"]) == ("ty-1", "Taihang Compute", "太原", CREDIT_CODE)
            assert held[(str(fenhe.site.id), first_hour, 1)]["credit_code"] is None
            assert measured["provenance"]["reports"] == 6  # the six signed reports of the hour
            # the forwarding key was made on first use with mode 0600, like the ledger's
            assert (tmp_path / "lower" / "federation-ed25519.pem").stat().st_mode & 0o777 == 0o600

            # Run again: nothing is pending, nothing sent, nothing stored twice.
            again = forward(db, config)
            assert (again.sent, again.batches, again.error) == (0, 0, None)
            with upper_db.pool.connection() as conn:
                stored = conn.execute("SELECT count(*) FROM federated_site_hourly").fetchone()[0]
            assert stored == len(rows)

            # Late data recomputes an hour (fh-1's second hour gets its samples): the hour is
            # sent again as a revision, and the upper tier keeps both versions.
            late_hour = first_hour + timedelta(hours=1)
            post_hour(lower, agents["fh-1"], late_hour, watts=1000)
            assert run_rollups(db, settings).ran
            with db.pool.connection() as conn:
                recomputed = lower_rows(conn)
            changed = {k for k in rows if recomputed[k]["computed_at"] != rows[k]["computed_at"]}
            fh_late = (str(fenhe.site.id), late_hour)
            assert fh_late in changed
            revised = forward(db, config)
            assert revised.error is None and revised.sent == revised.revisions == len(changed)
            history = upper_hours(upper_url, bureau, history=True, site="fh-1")
            first, second = history[(*fh_late, 1)], history[(*fh_late, 2)]
            assert first["figures"] == as_sent(rows[fh_late]) and not first["current"]
            assert second["figures"] == as_sent(recomputed[fh_late]) and second["current"]
            assert first["figures"]["it_kwh"] != second["figures"]["it_kwh"]
            current = upper_hours(upper_url, bureau)
            assert current[(*fh_late, 2)]["figures"] == as_sent(recomputed[fh_late])
            assert (*fh_late, 1) not in current
            with upper_db.pool.connection() as conn:
                stored = conn.execute("SELECT count(*) FROM federated_site_hourly").fetchone()[0]
            assert stored == len(rows) + len(changed)
            with db.pool.connection() as conn:
                outbox = conn.execute(
                    "SELECT revision, status FROM federation_outbox WHERE site_id = %s"
                    " AND hour = %s", (fenhe.site.id, late_hour)).fetchone()
            assert outbox == (2, "revised")
            assert forward(db, config).sent == 0


# --- the receiver's refusals -----------------------------------------------------------------


def batch_doc(*, sent_at: datetime | None = None, platform: str = "shanxi",
              it_kwh: str = "12.5", computed_at: datetime | None = None,
              hour: datetime | None = None) -> dict[str, Any]:
    hour = hour or floor_hour(datetime.now(UTC)) - timedelta(hours=2)
    return {
        "platform": platform,
        "sent_at": (sent_at or datetime.now(UTC)).isoformat(),
        "sites": [{"key": "7", "name": "ty-1", "enterprise": "Taihang Compute",
                   "credit_code": CREDIT_CODE, "city": "太原", "data_centre": "ty-1"}],
        "hours": [{"site": "7", "hour": hour.isoformat(),
                   "computed_at": (computed_at or hour + timedelta(hours=1, minutes=3)
                                   ).isoformat(),
                   "figures": {"it_kwh": it_kwh, "facility_kwh": "16.25", "pue": "1.3",
                               "fp16_pflops": "3.956", "fp16_pflops_estimated": "0",
                               "accelerators": 4, "racks": 2, "utilization": None,
                               "coverage_it": "1", "coverage_facility": "1",
                               "coverage_accelerators": "0.5", "quality": []},
                   "provenance": {"reports": 360, "sha256": "ab" * 32}}],
    }


def post(url: str, body: bytes, key: Ed25519PrivateKey, platform: str = "shanxi",
         signature: str | None = None) -> httpx.Response:
    return httpx.post(f"{url}/v1/federation/hourly", content=body, headers={
        "Content-Type": "application/json", PLATFORM_HEADER: platform,
        SIGNATURE_HEADER: signature if signature is not None else sign(key, body)})


def encoded(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode()


def test_forged_unknown_replayed_and_malformed_batches_are_refused_and_store_nothing(
        upper: tuple[Database, FastAPI]) -> None:
    upper_db, upper_app = upper
    admin, bureau = admin_and_bureau(upper_db)
    key, stranger = new_private_key(), new_private_key()
    with serving_on(upper_app, free_port()) as url:
        peers = f"{url}/v1/federation/peers"
        assert httpx.post(peers, headers=bearer(admin), json={
            "name": "shanxi", "public_key": public_key_b64(key)}).status_code == 201
        twice = httpx.post(peers, headers=bearer(admin), json={
            "name": "shanxi", "public_key": public_key_b64(key)})
        assert twice.status_code == 409 and twice.json()["error"]["field"] == "name"
        bad_key = httpx.post(peers, headers=bearer(admin), json={
            "name": "hebei", "public_key": "not-a-key"})
        assert bad_key.status_code == 422 and bad_key.json()["error"]["field"] == "public_key"
        assert httpx.post(peers, headers=bearer(bureau), json={
            "name": "hebei", "public_key": public_key_b64(stranger)}).status_code == 403

        good = encoded(batch_doc())
        refused = {
            # the figures changed after signing
            "tampered": (post(url, good.replace(b'"12.5"', b'"99.5"'), key,
                              signature=sign(key, good)), 401, SIGNATURE_HEADER),
            "unknown peer": (post(url, good, stranger, platform="hebei"), 401, PLATFORM_HEADER),
            "another key": (post(url, good, stranger), 401, SIGNATURE_HEADER),
            "no signature": (post(url, good, key, signature=""), 401, SIGNATURE_HEADER),
            "replayed": (post(url, encoded(batch_doc(
                sent_at=datetime.now(UTC) - timedelta(minutes=10))), key), 401, "sent_at"),
            "another platform's body": (post(url, encoded(batch_doc(platform="hebei")), key),
                                        401, "platform"),
            "not a decimal": (post(url, encoded(batch_doc(it_kwh="12,5")), key), 422,
                              "hours[0].figures.it_kwh"),
            "not on the hour": (post(url, encoded(batch_doc(
                hour=floor_hour(datetime.now(UTC)) - timedelta(hours=2, minutes=-5))), key),
                422, "hours[0].hour"),
            "not ended": (post(url, encoded(batch_doc(hour=floor_hour(
                datetime.now(UTC)) + timedelta(hours=1))), key), 422, "hours[0].hour"),
            "not JSON": (post(url, b"{nonsense", key), 422, "body"),
        }
        unlisted = batch_doc()
        unlisted["hours"][0]["site"] = "8"
        refused["site not listed"] = (post(url, encoded(unlisted), key), 422, "hours[0].site")
        huge = batch_doc()
        huge["sites"][0]["name"] = "x" * (2 * 2**20)
        refused["too large"] = (post(url, encoded(huge), key), 413, "body")
        for case, (reply, status, field) in refused.items():
            assert reply.status_code == status, (case, reply.text)
            assert reply.json()["error"]["field"] == field, (case, reply.text)
        with upper_db.pool.connection() as conn:
            for table in ("federated_sites", "federated_site_hourly"):
                assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0

        # The same body, as signed, is taken; again within the window it is a duplicate;
        # a version computed before the current one is stale; neither is stored.
        stored = post(url, good, key)
        assert stored.status_code == 200, stored.text
        assert [(h["status"], h["revision"]) for h in stored.json()["hours"]] == [("stored", 1)]
        assert post(url, good, key).json()["hours"][0]["status"] == "duplicate"
        hour = floor_hour(datetime.now(UTC)) - timedelta(hours=2)
        older = encoded(batch_doc(it_kwh="11", computed_at=hour + timedelta(hours=1)))
        assert post(url, older, key).json()["hours"][0]["status"] == "stale"
        held = upper_hours(url, bureau, history=True)
        assert list(held) == [("7", hour, 1)]
        assert held[("7", hour, 1)]["figures"] == FederatedBatch.model_validate_json(
            good).hours[0].figures.model_dump(mode="json")

        listed = runner.invoke(federation_app, ["peers", "--url", url, "--key", admin])
        assert listed.exit_code == 0 and "shanxi" in listed.output, listed.output
        reader = httpx.get(f"{url}/v1/federation/hourly", headers=bearer(bureau),
                           params={"from": "2025-01-01T00:00:00Z", "to": "2025-03-01T00:00:00Z"})
        assert reader.status_code == 422 and reader.json()["error"]["field"] == "to"


def test_public_key_prints_the_forwarding_key_made_on_first_use(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "federation-ed25519.pem"
    printed = runner.invoke(federation_app, ["public-key", "--key-file", str(path)])
    assert printed.exit_code == 0, printed.output
    assert os.stat(path).st_mode & 0o777 == 0o600
    again = runner.invoke(federation_app, ["public-key", "--key-file", str(path)])
    assert printed.output == again.output == public_key_b64(signing_key(path)) + "\n"
