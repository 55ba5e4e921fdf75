"""The platform through PgBouncer in transaction pooling (``.ci/pgbouncer.sh``: 127.0.0.1:6432
in front of 127.0.0.1:5432), as when many platform replicas share one database.

A transaction pooler lends a server connection for one transaction at a time, so whatever lives
in a session breaks behind it: a statement psycopg prepared on one server connection is missing
on the next; a LISTEN stays on a server connection nobody reads; a session advisory lock stays on
a server connection that another client gets next, and outlives the client that took it. The
``reproduction`` tests show each break with the platform's own code and no settings. The platform
copes with two settings: ``JINSUAN_DATABASE_POOLER=transaction`` (its pool prepares nothing) and
``JINSUAN_DIRECT_DATABASE_URL`` (migrations, the lease wake-ups' LISTEN, the rollup's lock and
the audit writer connect straight to PostgreSQL); the other tests prove it works so.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import psycopg
import pytest
from collectors_kit import bearer, enrol, make_org, steady_series
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError
from servers import Served, jinsuan_serve, serving

from collectors.rollup import LOCK_KEY, floor_hour, run_rollups
from jinsuan.app import create_app
from jinsuan.contract.leasewire import (
    AGENT_HEADER,
    LEASES_PATH,
    SIGNATURE_HEADER,
    ExecutorKind,
    LeaseReply,
    LeaseRequest,
)
from jinsuan.contract.signing import new_private_key, public_key_b64, sign
from jinsuan.kernel.auth import Role, create_key
from jinsuan.kernel.platform import Platform
from jinsuan.kernel.settings import Settings
from jinsuan.kernel.store import Database
from jinsuan.kernel.store.migrate import available
from scheduler.seed import PoolSpec, seed_site
from scheduler.service import service_for
from scheduler.wakeups import PlacementListener, SiteWakeups, notify_placed

BOUNCER_PORT = 6432
ADMIN_CONSOLE = f"host=127.0.0.1 port={BOUNCER_PORT} user=postgres dbname=pgbouncer"
WAIT_S = 60
PREPARED = "prepared statement"  # the start of every error a missing or doubled one raises
JOB = {"project": "llm", "tasks": 1, "accelerators_per_task": 1,
       "payload": {"command": ["python", "train.py"]}}


@dataclass(frozen=True)
class Urls:
    direct: str  # PostgreSQL itself
    pooled: str  # the same database through PgBouncer

    def settings(self, data_dir: Path) -> Settings:
        """What a platform replica behind the pooler is configured with."""
        return Settings(database_url=self.pooled, direct_database_url=self.direct,
                        database_pooler="transaction", data_dir=data_dir,
                        run_background_jobs=False)

    def environment(self) -> dict[str, str]:
        return {"DATABASE_URL": self.pooled, "JINSUAN_DIRECT_DATABASE_URL": self.direct,
                "JINSUAN_DATABASE_POOLER": "transaction"}


@pytest.fixture(scope="module")
def bouncer_config() -> dict[str, str]:
    """PgBouncer's settings, read from its admin console; skips where none answers."""
    try:
        with psycopg.connect(ADMIN_CONSOLE, autocommit=True, connect_timeout=3) as admin:
            config = {row[0]: row[1] for row in admin.execute("SHOW CONFIG")}
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PgBouncer answers on 127.0.0.1:{BOUNCER_PORT} (start one as root with"
                    f" .ci/pgbouncer.sh): {' '.join(str(exc).split())}")
    if config.get("pool_mode") != "transaction":
        pytest.skip(f"the PgBouncer on 127.0.0.1:{BOUNCER_PORT} pools by"
                    f" {config.get('pool_mode')}, not by transaction: nothing here would break")
    return config


def _at_port(url: str, port: int) -> str:
    info = psycopg.conninfo.conninfo_to_dict(url)
    info["port"] = str(port)
    return psycopg.conninfo.make_conninfo(**info)


def _urls(direct: str) -> Urls:
    info = psycopg.conninfo.conninfo_to_dict(direct)
    if (info.get("host"), str(info.get("port", 5432))) != ("127.0.0.1", "5432"):
        pytest.skip("PgBouncer fronts 127.0.0.1:5432; the tests' PostgreSQL is elsewhere")
    return Urls(direct, _at_port(direct, BOUNCER_PORT))


@pytest.fixture
def urls(bouncer_config, database_url: str) -> Urls:
    """A fresh, migrated database, straight and through the pooler."""
    return _urls(database_url)


@pytest.fixture
def empty_urls(bouncer_config, pg_admin_url: str) -> Iterator[Urls]:
    """A database with nothing in it: a first start-up migrates it."""
    name = f"jinsuan_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        info = psycopg.conninfo.conninfo_to_dict(pg_admin_url)
        yield _urls(psycopg.conninfo.make_conninfo(**{**info, "dbname": name}))
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _wait_until(condition: Callable[[], object], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# --- settings -----------------------------------------------------------------------------------


def test_a_transaction_pooler_without_a_direct_url_is_refused_at_start_up(tmp_path) -> None:
    secret = "Sup3r-Secret-pw"
    with pytest.raises(ValidationError) as refused:
        Settings(database_url=f"postgresql://jinsuan:{secret}@db:6432/jinsuan",
                 database_pooler="transaction", data_dir=tmp_path)
    assert "JINSUAN_DIRECT_DATABASE_URL" in str(refused.value)
    assert secret not in str(refused.value)
    with pytest.raises(ValidationError, match="goes with DATABASE_URL") as refused:
        Settings(database_url=None, direct_database_url=f"postgresql://jinsuan:{secret}@db/jinsuan",
                 data_dir=tmp_path)
    assert secret not in str(refused.value)


# --- the store: prepared statements and start-up migrations -------------------------------------


def _queries(db: Database, rounds: int) -> list[str]:
    """Run one statement ``rounds`` times, on the pool's connections in turn; return the errors.

    Behind a transaction pooler, one after another, they share one server connection: each
    psycopg connection, at its sixth run, prepares the statement under the same first name."""
    errors = []
    for i in range(rounds):
        try:
            with db.pool.connection() as conn:
                conn.execute("SELECT count(*) FROM sites WHERE id > %s", (i,))
        except psycopg.Error as exc:
            errors.append(str(exc))
    return errors


def test_reproduction_the_store_through_the_pooler_alone_loses_prepared_statements(
        bouncer_config, empty_urls: Urls, tmp_path: Path) -> None:
    if int(bouncer_config.get("max_prepared_statements", "0")) > 0:
        pytest.skip("this PgBouncer (1.21 or later) keeps prepared statements itself")
    db = Database.open(Settings(database_url=empty_urls.pooled, data_dir=tmp_path,
                                run_background_jobs=False))
    try:
        errors = _queries(db, 30)
    finally:
        db.close()
    assert errors and all(PREPARED in e for e in errors), errors


def test_replicas_start_through_the_pooler_migrate_straight_and_prepare_nothing(
        empty_urls: Urls, tmp_path: Path) -> None:
    settings = empty_urls.settings(tmp_path)
    with ThreadPoolExecutor(2) as pool:  # two replicas starting at once on an empty database
        opened = [pool.submit(Database.open, settings) for _ in range(2)]
        dbs = [f.result(timeout=WAIT_S) for f in opened]
    try:
        for db in dbs:
            assert db.url == empty_urls.direct
            assert db.pool.conninfo == empty_urls.pooled
        with psycopg.connect(empty_urls.direct) as conn:
            versions = [v for (v,) in conn.execute(
                "SELECT version FROM schema_migrations ORDER BY version")]
        assert versions == [m.version for m in available(dbs[0].flavour)]
        with ThreadPoolExecutor(4) as pool:  # in turn, and at once
            runs = [pool.submit(_queries, db, 30) for db in dbs for _ in range(2)]
            assert [e for run in runs for e in run.result(timeout=WAIT_S)] == []
        with dbs[0].pool.connection() as conn:
            assert conn.prepare_threshold is None
    finally:
        for db in dbs:
            db.close()


# --- lease wake-ups: LISTEN/NOTIFY ---------------------------------------------------------------


def test_reproduction_a_listener_through_the_pooler_hears_no_placement(urls: Urls) -> None:
    straight, pooled = SiteWakeups(), SiteWakeups()
    listeners = [PlacementListener(urls.direct, straight), PlacementListener(urls.pooled, pooled)]
    for listener in listeners:
        listener.ensure_started()
    try:
        # The site's own generation (a listener also bumps every site once it listens).
        before = straight.generation(7)[1], pooled.generation(7)[1]
        with psycopg.connect(urls.direct, autocommit=True) as conn:
            for turn in (1, 2):
                with conn.transaction():
                    notify_placed(conn, [7])
                _wait_until(lambda turn=turn: straight.generation(7)[1] == before[0] + turn,
                            f"the direct listener to hear placement {turn}")
        # PostgreSQL delivers a NOTIFY to every listening session at commit: by the time the
        # direct listener heard a second one, the pooled listener had every chance at the first.
        assert pooled.generation(7)[1] == before[1]
    finally:
        for listener in listeners:
            listener.stop()


def _lease(url: str, agent_id: str, key: Ed25519PrivateKey, wait_s: float) -> httpx.Response:
    body = LeaseRequest(agent_id=agent_id, sent_at=datetime.now(UTC),
                        executor=ExecutorKind.PROCESS, held=[], free_slots=4,
                        wait_s=wait_s).model_dump_json().encode()
    return httpx.post(url + LEASES_PATH, content=body, timeout=WAIT_S,
                      headers={AGENT_HEADER: agent_id, SIGNATURE_HEADER: sign(key, body),
                               "Content-Type": "application/json"})


@contextmanager
def replica(urls: Urls, work: Path, **environment: str) -> Iterator[Served]:
    """Run ``jinsuan serve`` against the pooler; yield once it answers; stop it on exit."""
    through_pooler = {**urls.environment(), **environment}
    with jinsuan_serve(through_pooler.pop("DATABASE_URL"), work, **through_pooler) as served:
        yield served


@pytest.mark.slow
def test_a_held_lease_request_is_woken_through_the_pooler_by_a_placement_elsewhere(
        urls: Urls, db, conn, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The request is held at replica A (in this process); the job is submitted to, and placed
    by, replica B (``jinsuan serve``): only a NOTIFY that reached A's listener can wake it."""
    key = new_private_key()
    site_id, agent_id = seed_site(conn, db.partitions, name="taiyuan-1", city="Taiyuan",
                                  now=datetime.now(UTC), public_key=public_key_b64(key),
                                  pools=[PoolSpec("H100", 8, Decimal("9.00"))])
    dispatcher = create_key(conn, Role.DISPATCHER, tenant="t1")
    settings = urls.settings(tmp_path / "a")
    replica_a = Database.open(settings)
    platform = Platform(settings=settings, db=replica_a)
    service = service_for(platform)
    wait_s = service.cfg.lease_ttl_s / 3  # the longest a request is held
    try:
        with replica(urls, tmp_path) as b, serving(create_app(platform)) as a, \
                ThreadPoolExecutor(1) as pool:
            held = pool.submit(_lease, a, agent_id, key, wait_s)
            _wait_until(lambda: service.wakeups._waiters.get(site_id), "the request to be held")
            began = time.monotonic()
            submitted = httpx.post(b.url + "/v1/jobs", json=JOB, headers=bearer(dispatcher),
                                   timeout=WAIT_S)
            assert submitted.status_code == 201, submitted.text
            reply = held.result(timeout=WAIT_S)
            woken_after = time.monotonic() - began
        assert PREPARED not in b.output()
    finally:
        replica_a.close()
    assert reply.status_code == 200, reply.text
    # A request that is not woken ends at its time with the empty answer of its first look.
    assert [lease.job_id for lease in LeaseReply.model_validate_json(reply.content).new] == [
        submitted.json()["id"]]
    assert woken_after < wait_s
    assert PREPARED not in caplog.text


# --- ingest -------------------------------------------------------------------------------------


def test_signed_reports_through_the_pooler_store_every_sample(
        urls: Urls, conn, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = urls.settings(tmp_path)
    db = Database.open(settings)
    platform = Platform(settings=settings, db=db)
    orgs = [make_org(conn, f"Enterprise {i}", f"site-{i}", "Taiyuan") for i in range(4)]
    try:
        with serving(create_app(platform)) as url, httpx.Client(base_url=url,
                                                                timeout=WAIT_S) as client:
            agents = [enrol(client, org, f"host-{i}") for i, org in enumerate(orgs)]
            start = int((datetime.now(UTC) - timedelta(minutes=30)).timestamp() * 1000)

            def report(agent) -> list[tuple[int, dict]]:
                # Six batches in turn, so the same statements run more often than psycopg's
                # threshold for preparing them (five), on whichever pool connection.
                sent = []
                for n in range(6):
                    batch = agent.batch(steady_series(start + n * 60_000, 6))
                    reply = agent.post(client, batch)
                    sent.append((batch.sample_count(), reply.status_code, reply.json()))
                return sent

            with ThreadPoolExecutor(len(agents)) as pool:
                replies = [r for sent in pool.map(report, agents) for r in sent]
    finally:
        db.close()
    assert [(status, body.get("status")) for _, status, body in replies] == [
        (200, "stored")] * len(replies), replies
    assert all(body["samples"] == count for count, _, body in replies)
    stored = conn.execute("SELECT count(*) FROM samples").fetchone()[0]
    assert stored == sum(count for count, _, _ in replies)
    assert PREPARED not in caplog.text


# --- rollups: a session advisory lock ------------------------------------------------------------


def _site_with_hours(db: Database, conn: psycopg.Connection, first: datetime, hours: int,
                     name: str) -> int:
    """A site whose IT meter reported every minute for ``hours`` hours from ``first``."""
    site = conn.execute(
        "INSERT INTO sites (enterprise_id, name, city) VALUES"
        " ((SELECT id FROM enterprises LIMIT 1), %s, 'Taiyuan') RETURNING id", (name,),
    ).fetchone()[0]
    conn.execute("INSERT INTO meters (site_id, id, role, measures, first_seen, last_seen)"
                 " VALUES (%s, 'IT', 'it', 'ups_output', %s, %s)", (site, first, first))
    series = conn.execute(
        "INSERT INTO series (site_id, metric, device) VALUES (%s, 'meter_power_watts', 'IT')"
        " RETURNING id", (site,)).fetchone()[0]
    last = first + timedelta(hours=hours)
    db.partitions.ensure(conn, sorted({first.date(), last.date()}))
    with conn.cursor() as cur, cur.copy("COPY samples (ts, series_id, value) FROM STDIN") as cp:
        for minute in range(hours * 60):
            cp.write_row((first + timedelta(minutes=minute), series, 1000.0))
    return site


def _lock_holders(conn: psycopg.Connection) -> int:
    return conn.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND ((classid::bigint << 32) | objid::bigint) = %s", (LOCK_KEY,)).fetchone()[0]


def _race(a: Database, b: Database, settings: Settings, now: datetime):
    """Runner A takes the rollup lock and waits; runner B runs meanwhile; then A goes on."""
    a_holds, release = threading.Event(), threading.Event()

    def hold() -> None:
        a_holds.set()
        if not release.wait(WAIT_S):
            raise TimeoutError("the test never released runner A")

    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(run_rollups, a, settings, now=now, holder="A", on_locked=hold)
        assert a_holds.wait(WAIT_S), "runner A never took the lock"
        second = run_rollups(b, settings, now=now, holder="B")
        release.set()
        return first.result(timeout=WAIT_S), second


PAST = datetime(2025, 3, 10, 10, tzinfo=UTC)


@pytest.fixture
def rollup_site(db, conn) -> int:
    conn.execute("INSERT INTO enterprises (name) VALUES ('E')")
    return _site_with_hours(db, conn, PAST, 2, "S")


def test_reproduction_a_rollup_lock_through_the_pooler_is_shared_and_outlives_its_run(
        urls: Urls, rollup_site: int, conn, tmp_path: Path) -> None:
    settings = Settings(database_url=urls.pooled, data_dir=tmp_path, run_background_jobs=False)
    a, b = Database.open(settings), Database.open(settings)
    try:
        first, second = _race(a, b, settings, PAST + timedelta(hours=2, minutes=5))
    finally:
        a.close()
        b.close()
    assert first.ran and second.ran, "both replicas rolled up at once"
    # Both runs closed their connections, yet the lock is held: by a server connection the
    # pooler keeps, which the next replica to ask may get (and so the lock) or not, for ever.
    assert _lock_holders(conn) == 1


def test_through_the_pooler_one_replica_rolls_up_the_other_skips_and_no_lock_is_left(
        urls: Urls, rollup_site: int, conn, tmp_path: Path) -> None:
    settings = urls.settings(tmp_path)
    a, b = Database.open(settings), Database.open(settings)
    try:
        first, second = _race(a, b, settings, PAST + timedelta(hours=2, minutes=5))
        assert first.ran and first.hours == 2
        assert not second.ran
        _wait_until(lambda: _lock_holders(conn) == 0, "the lock to go with runner A's session")
        later = run_rollups(b, settings, now=PAST + timedelta(hours=2, minutes=5), holder="B")
        assert later.ran and later.hours == 0
    finally:
        a.close()
        b.close()


@pytest.mark.slow
def test_two_replicas_through_the_pooler_never_roll_up_the_same_hour(
        urls: Urls, db, conn, tmp_path: Path) -> None:
    conn.execute("INSERT INTO enterprises (name) VALUES ('E')")
    first = floor_hour(datetime.now(UTC)) - timedelta(hours=12)
    fast = {"JINSUAN_ROLLUP_EVERY_S": "0.2"}  # both try often, so their tries meet

    def caught_up() -> bool:
        done = conn.execute("SELECT count(*) FROM rollup_site_hourly").fetchone()[0]
        holders = conn.execute("SELECT count(DISTINCT holder) FROM rollup_runs"
                               " WHERE finished_at IS NOT NULL").fetchone()[0]
        return done >= at_least and holders == 2

    with replica(urls, tmp_path, **fast) as one, replica(urls, tmp_path, **fast) as two:
        # The hours to roll up appear while both replicas are trying.
        sites = [_site_with_hours(db, conn, first, 10, f"S{i}") for i in range(4)]
        closable = floor_hour(datetime.now(UTC) - timedelta(seconds=120))  # default grace
        at_least = len(sites) * int((closable - first) / timedelta(hours=1))
        _wait_until(caught_up, "both replicas to run rollups and every hour to be rolled up")
    computed, stored = conn.execute(
        "SELECT (SELECT sum(hours) FROM rollup_runs),"
        " (SELECT count(*) FROM rollup_site_hourly)").fetchone()
    assert computed == stored >= at_least, "an hour was rolled up twice"
    overlapping = conn.execute(
        "SELECT count(*) FROM rollup_runs x JOIN rollup_runs y ON x.id < y.id"
        " AND tstzrange(x.started_at, coalesce(x.finished_at, 'infinity'))"
        " && tstzrange(y.started_at, coalesce(y.finished_at, 'infinity'))").fetchone()[0]
    assert overlapping == 0, "two rollup runs ran at the same time"
    _wait_until(lambda: _lock_holders(conn) == 0, "the replicas' rollup sessions to end")
    for replica_ in (one, two):
        assert PREPARED not in replica_.output()
