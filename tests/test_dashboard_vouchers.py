"""The Rewards dashboard's voucher panels against vouchers issued, drawn, settled, revoked and
clawed back by the rewards room's own code, figures by hand.

Every voucher query of ``dashboards/rewards.json`` is expanded as Grafana would and run as
Grafana's read-only role (``deploy/postgres/grafana-readonly.sql``), which reads no ledger.

The world is tests/test_vouchers.py's (jobs run through the scheduler; 4 H100 at 8.00 yuan an
hour, so 32.00 yuan an hour, of which a voucher draws 20%) with one more site: Taihang Compute
runs ty-1 in 太原 and dt-1 in 大同, Fenhe Cloud fh-1 in 太原; Yanshan's bj-1 is outside Shanxi.
清源智能 (a company in Shanxi, tenant lab-a) and 云冈大学 (a university outside it, lab-b):

====  =========  ===============  =========  ==========================================
      holder     provider         face       what happens
====  =========  ===============  =========  ==========================================
V1    清源智能   Taihang Compute  60,000.00  ty-1 2.5 h: 16.00; dt-1 1 h: 6.40; fh-1: 0;
                                             settled (22.40) and paid; ty-1 1 h: 6.40
V2    云冈大学   Fenhe Cloud       2,000.00  fh-1 1 h: 6.40, settled, not paid; revoked
V3    清源智能   Taihang Compute  10,000.00  ty-1 1 h: 6.40; clawed back (revoked)
V4    云冈大学   Taihang Compute   4,000.00  issued on 2025-08-01, from the 2025 pool
====  =========  ===============  =========  ==========================================

Faces: 300,000.00, 10,000.00, 50,000.00 and 20,000.00 contracts at 20%.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from conftest import fresh_database
from test_dashboard_rewards import by
from test_dashboards import READONLY_SQL, check_columns, grafana_sql, used_variables
from test_vouchers import PAPERS, RUN_AT, World

from dashboards import grafana
from jinsuan.contract.policytime import SHANGHAI
from jinsuan.kernel import ledger
from jinsuan.kernel.agentauth import SignedBy
from jinsuan.kernel.settings import Settings
from jinsuan.kernel.store import Database
from rewards.vouchers import drawing, issuing, parties, settling
from rewards.vouchers.issuing import Contract
from scheduler.seed import PoolSpec, seed_site

UID = "jinsuan-rewards"
PANELS = ("Voucher pool", "Vouchers by city", "Vouchers by applicant type", "Draws by provider")
START, END = RUN_AT - timedelta(days=365), RUN_AT  # no voucher panel reads the time range
ZERO = Decimal("0.00")


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        self.enterprises: dict[str, int] = {}
        self.pool_2026 = ZERO  # the ledger's balance, which Grafana does not read
        self.funded_2026 = ZERO


@pytest.fixture(scope="module")
def store(pg_admin_url: str, template_db: str, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Store]:
    with fresh_database(pg_admin_url, template_db) as url:
        database = Database.open(Settings(database_url=url, run_background_jobs=False,
                                          data_dir=tmp_path_factory.mktemp("vouchers")))
        try:
            with database.pool.connection() as conn:
                made = Store(url)
                _story(conn, database, made)
                conn.execute(READONLY_SQL.read_text(encoding="utf-8"))
        finally:
            database.close()
        yield made


def _story(conn: psycopg.Connection, database: Database, made: Store) -> None:
    world = World(conn, database)
    site, agent = seed_site(conn, database.partitions, name="dt-1", city="大同",
                            enterprise="Taihang Compute", now=RUN_AT - timedelta(hours=1),
                            pools=[PoolSpec("H100", 8, Decimal("8.00"))])
    world.sites["dt-1"] = SignedBy(agent, site)
    made.enterprises = dict(conn.execute("SELECT name, id FROM enterprises").fetchall())
    v1 = world.voucher(world.lab_a, "300000.00", contract="HT-1").voucher_id
    v2 = world.voucher(world.lab_b, "10000.00", provider="Fenhe Cloud", contract="B-1"
                       ).voucher_id
    v3 = world.voucher(world.lab_a, "50000.00", contract="HT-2").voucher_id
    early = issuing.apply(conn, world.lab_b, Contract(
        "Taihang Compute", "B-25", Decimal("20000.00"), date(2025, 8, 1), date(2026, 12, 31),
        False, "", PAPERS))
    issuing.recommend(conn, world.maker, early)
    assert issuing.approve(conn, world.checker, early, on=date(2025, 8, 1)).face_value == (
        Decimal("4000.00"))

    world.run("lab-a", "ty-1", v1, hours=2.5)
    world.run("lab-a", "dt-1", v1, hours=1)
    world.run("lab-a", "fh-1", v1, hours=1)  # not the contracted provider's: draws nothing
    assert drawing.draw_pending(conn) == 3
    day = conn.execute("SELECT max(drawn_at) FROM voucher_draws").fetchone()[0].astimezone(
        SHANGHAI).date()
    settlement = settling.settle(conn, world.maker, world.taihang, day)
    assert settling.mark_paid(conn, world.checker, settlement, "BOC-1") == Decimal("22.40")

    later = RUN_AT + timedelta(days=1)
    world.run("lab-a", "ty-1", v1, hours=1, at=later)
    world.run("lab-b", "fh-1", v2, hours=1, at=later)
    world.run("lab-a", "ty-1", v3, hours=1, at=later)
    assert drawing.draw_pending(conn) == 3
    settling.settle(conn, world.maker, made.enterprises["Fenhe Cloud"], day)  # not paid
    assert issuing.revoke(conn, world.maker, v2, "contract cancelled") == Decimal("1993.60")
    assert issuing.clawback(conn, world.maker, v3, "usage invented") == Decimal("6.40")
    made.pool_2026 = ledger.balance(conn, "pool:voucher:2026")
    made.funded_2026 = conn.execute(
        "SELECT amount FROM ledger_entries WHERE kind = 'voucher.fund'"
        " AND to_account = 'pool:voucher:2026'").fetchone()[0]


@pytest.fixture
def as_grafana(store: Store) -> Iterator[psycopg.Connection]:
    with psycopg.connect(store.url, autocommit=True) as conn, \
            conn.transaction(force_rollback=True):
        conn.execute("SET LOCAL ROLE jinsuan_grafana")
        yield conn


def rows(conn: psycopg.Connection, title: str, year: int = 2026, **chosen: list[str]
         ) -> list[dict[str, Any]]:
    return grafana.panel_rows(conn, UID, title, start=START, end=END,
                              chosen={"year": [str(year)], **chosen})


def _money(row: dict[str, Any], *columns: str) -> tuple[Any, ...]:
    return tuple(row[c] for c in columns)


FIGURES = ("issued", "drawn", "unspent", "returned to the pool")


# --- the panels as Grafana draws them ---------------------------------------------------------

def test_the_voucher_panels_return_what_they_draw_and_follow_the_selection(
        as_grafana: psycopg.Connection) -> None:
    dashboard = grafana.load(UID)
    values = grafana.resolve_variables(as_grafana, dashboard, start=START, end=END)
    values["year"] = ["2026"]
    row = grafana.panel(dashboard, "Vouchers (算力券, measure 9)")
    assert row["type"] == "row"
    for title in PANELS:
        panel = grafana.panel(dashboard, title)
        (target,) = panel["targets"]
        assert used_variables(target["rawSql"]) == {"year", "city", "enterprise"}, title
        assert panel["gridPos"]["y"] > row["gridPos"]["y"]
        got = grafana.rows(as_grafana, grafana_sql(target["rawSql"], values))
        check_columns(f"{UID} {title!r}", panel, target, got)


def test_the_read_only_role_reads_no_names_codes_reasons_references_or_ledger(
        as_grafana: psycopg.Connection) -> None:
    for sql in ("SELECT name FROM voucher_applicants",
                "SELECT credit_code FROM voucher_applicants",
                "SELECT * FROM voucher_applications",
                "SELECT * FROM voucher_applicant_tenants",
                "SELECT * FROM voucher_affiliations",
                "SELECT end_reason FROM vouchers",
                "SELECT reason FROM voucher_draws",
                "SELECT job_id FROM voucher_draws",
                "SELECT reason FROM voucher_clawbacks",
                "SELECT paid_reference FROM voucher_settlements",
                "SELECT amount FROM ledger_entries"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege), as_grafana.transaction():
            as_grafana.execute(sql)
    with pytest.raises(psycopg.errors.InsufficientPrivilege), as_grafana.transaction():
        as_grafana.execute("UPDATE vouchers SET state = 'active'")


# --- the pool -----------------------------------------------------------------------------------

def test_the_pool_issued_drawn_unspent_and_returned(as_grafana: psycopg.Connection,
                                                    store: Store) -> None:
    (got,) = rows(as_grafana, "Voucher pool")
    # Issued: 60,000.00 + 2,000.00 + 10,000.00 = 72,000.00 (V4 is 2025's).
    # Drawn: V1 16.00 + 6.40 + 0 + 6.40 = 28.80; V2 6.40; V3 6.40: 41.60.
    # Unspent: V1 alone is active: 60,000.00 - 28.80 = 59,971.20.
    # Returned: V2 2,000.00 - 6.40 = 1,993.60; V3 10,000.00 - 6.40 = 9,993.60 and the 6.40
    # clawed back from Taihang: 1,993.60 + 9,993.60 + 6.40 = 11,993.60.
    # Taken from the pool: 72,000.00 - 11,993.60 = 60,006.40.
    assert got == {"vouchers": 3, "issued": Decimal("72000.00"), "drawn": Decimal("41.60"),
                   "unspent on active vouchers": Decimal("59971.20"),
                   "returned to the pool": Decimal("11993.60"),
                   "taken from the pool": Decimal("60006.40")}
    # The ledger, which Grafana does not read, agrees: the 2026 pool was funded with the
    # policy's 50,000,000.00 and has 50,000,000.00 - 60,006.40 = 49,939,993.60 left.
    assert store.funded_2026 == Decimal("50000000.00")
    assert store.funded_2026 - store.pool_2026 == got["taken from the pool"]
    # 2025: V4 alone, untouched.
    (earlier,) = rows(as_grafana, "Voucher pool", year=2025)
    assert (earlier["vouchers"], earlier["issued"], earlier["unspent on active vouchers"],
            earlier["drawn"], earlier["returned to the pool"]) == (
        1, Decimal("4000.00"), Decimal("4000.00"), ZERO, ZERO)
    # 2024: none.
    (none,) = rows(as_grafana, "Voucher pool", year=2024)
    assert none["vouchers"] == 0 and none["issued"] == ZERO


def test_a_city_or_provider_selection_shows_its_part(as_grafana: psycopg.Connection,
                                                     store: Store) -> None:
    # 大同: half of each Taihang voucher (ty-1 and dt-1 share them): V1 and V3.
    # Issued 30,000.00 + 5,000.00; drawn (28.80 + 6.40) / 2 = 17.60; unspent 59,971.20 / 2 =
    # 29,985.60; returned V3's 10,000.00 / 2 = 5,000.00; taken 35,000.00 - 5,000.00.
    (datong,) = rows(as_grafana, "Voucher pool", city=["大同"])
    assert datong == {"vouchers": 2, "issued": Decimal("35000.00"), "drawn": Decimal("17.60"),
                      "unspent on active vouchers": Decimal("29985.60"),
                      "returned to the pool": Decimal("5000.00"),
                      "taken from the pool": Decimal("30000.00")}
    fenhe = [str(store.enterprises["Fenhe Cloud"])]
    (only,) = rows(as_grafana, "Voucher pool", enterprise=fenhe)
    assert _money(only, "vouchers", "issued", "drawn", "returned to the pool") == (
        1, Decimal("2000.00"), Decimal("6.40"), Decimal("1993.60"))


# --- by city, applicant type and provider ------------------------------------------------------

def test_vouchers_by_city_share_each_voucher_among_its_providers_sites(
        as_grafana: psycopg.Connection) -> None:
    got = by(rows(as_grafana, "Vouchers by city"), "city")
    # 太原: V1 and V3 half each (ty-1 of ty-1, dt-1), V2 whole (fh-1):
    #   issued 30,000.00 + 5,000.00 + 2,000.00 = 37,000.00; drawn 14.40 + 3.20 + 6.40 = 24.00;
    #   unspent 29,985.60; returned 1,993.60 + 5,000.00 = 6,993.60.
    # 大同: the other halves of V1 and V3. (V1's draws are shared too, not placed where they
    # ran: 22.40 ran at ty-1 and 6.40 at dt-1, 14.40 is shown in each.)
    assert {c: (r["vouchers"], *_money(r, *FIGURES)) for c, r in got.items()} == {
        "太原": (3, Decimal("37000.00"), Decimal("24.00"), Decimal("29985.60"),
                 Decimal("6993.60")),
        "大同": (2, Decimal("35000.00"), Decimal("17.60"), Decimal("29985.60"),
                 Decimal("5000.00"))}
    # The cities add up to the pool: 37,000.00 + 35,000.00 = 72,000.00; 24.00 + 17.60 = 41.60.
    (pool,) = rows(as_grafana, "Voucher pool")
    assert sum(r["issued"] for r in got.values()) == pool["issued"]
    assert sum(r["drawn"] for r in got.values()) == pool["drawn"]
    # 2025: V4 halved between Taihang's two cities.
    earlier = by(rows(as_grafana, "Vouchers by city", year=2025), "city")
    assert {c: r["issued"] for c, r in earlier.items()} == {"太原": Decimal("2000.00"),
                                                            "大同": Decimal("2000.00")}


def test_vouchers_by_applicant_type(as_grafana: psycopg.Connection) -> None:
    got = by(rows(as_grafana, "Vouchers by applicant type"), "applicant type", "applicant from")
    assert len(got) == 6  # three kinds, in and outside Shanxi, 0 where none
    # 清源智能, a company in Shanxi: V1 and V3; issued 70,000.00; drawn 28.80 + 6.40 = 35.20;
    # unspent V1's 59,971.20; returned V3's 10,000.00.
    assert (got["company", "in Shanxi"]["applicants"], got["company", "in Shanxi"]["vouchers"],
            *_money(got["company", "in Shanxi"], *FIGURES)) == (
        1, 2, Decimal("70000.00"), Decimal("35.20"), Decimal("59971.20"), Decimal("10000.00"))
    # 云冈大学, a university outside Shanxi: V2, 2,000.00; drew 6.40; 1,993.60 returned.
    outside = got["university", "outside Shanxi"]
    assert (outside["applicants"], outside["vouchers"], *_money(outside, *FIGURES)) == (
        1, 1, Decimal("2000.00"), Decimal("6.40"), ZERO, Decimal("1993.60"))
    for key, row in got.items():
        if key not in (("company", "in Shanxi"), ("university", "outside Shanxi")):
            assert (row["applicants"], row["vouchers"], row["issued"]) == (0, 0, ZERO), key
    # 2025: V4 is 云冈大学's.
    earlier = by(rows(as_grafana, "Vouchers by applicant type", year=2025), "applicant type",
                 "applicant from")
    assert earlier["university", "outside Shanxi"]["unspent"] == Decimal("4000.00")


def test_the_applicant_types_are_the_registers_kinds() -> None:
    sql = grafana.panel(grafana.load(UID), "Vouchers by applicant type")["targets"][0]["rawSql"]
    (listed,) = re.findall(r"ARRAY\[([^\]]*)\]", sql)
    assert tuple(k.strip(" '") for k in listed.split(",")) == parties.KINDS


def test_draws_by_provider_settled_paid_and_clawed_back(as_grafana: psycopg.Connection,
                                                        store: Store) -> None:
    got = by(rows(as_grafana, "Draws by provider"), "provider")
    assert list(got) == ["Taihang Compute", "Fenhe Cloud"]  # by amount drawn; not Yanshan
    # Taihang: V1 and V3, 70,000.00 issued, 35.20 drawn; the period's settlement took V1's
    # first 16.00 + 6.40 = 22.40 and was paid; V1's later 6.40 and V3's 6.40 are not settled
    # (12.80); V3's 6.40 was clawed back.
    taihang = got["Taihang Compute"]
    columns = ("vouchers", "issued", "drawn", "settled", "paid", "not yet settled",
               "clawed back")
    assert _money(taihang, *columns) == (2, Decimal("70000.00"), Decimal("35.20"),
                                         Decimal("22.40"), Decimal("22.40"), Decimal("12.80"),
                                         Decimal("6.40"))
    # Fenhe: V2's 6.40, settled and not paid.
    assert _money(got["Fenhe Cloud"], *columns) == (1, Decimal("2000.00"), Decimal("6.40"),
                                                    Decimal("6.40"), ZERO, ZERO, ZERO)
    # 大同 selected: Taihang's half of everything (Fenhe has no site there).
    datong = by(rows(as_grafana, "Draws by provider", city=["大同"]), "provider")
    assert _money(datong["Taihang Compute"], *columns) == (
        2, Decimal("35000.00"), Decimal("17.60"), Decimal("11.20"), Decimal("11.20"),
        Decimal("6.40"), Decimal("3.20"))
    assert set(datong) == {"Taihang Compute"}
