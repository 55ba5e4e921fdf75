"""``GET /v1/pue/annual``: a ratio of the year's energy, in the Asia/Shanghai year."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from collectors_kit import bearer, make_app, make_org
from fastapi.testclient import TestClient

from jinsuan.kernel.auth import Role, create_key


def _hour(conn, site_id: int, hour: datetime, it, facility, coverage: float = 1.0) -> None:
    conn.execute(
        "INSERT INTO rollup_site_hourly (site_id, hour, it_kwh, facility_kwh, pue, fp16_pflops,"
        " accelerators, racks, coverage_it, coverage_facility, coverage_accelerators)"
        " VALUES (%s, %s, %s, %s, NULL, 0, 0, 0, %s, %s, 1)",
        (site_id, hour, it, facility, coverage, coverage),
    )


@pytest.fixture
def client(settings, db):
    app, _ = make_app(settings, db)
    with TestClient(app) as test_client:
        yield test_client


def test_annual_pue_is_the_energy_ratio_of_the_shanghai_year(client, conn):
    yangquan = make_org(conn, "阳泉云算", "yangquan-1", "阳泉")
    datong = make_org(conn, "云冈数据", "datong-1", "大同")
    site = yangquan.site.id
    conn.execute("INSERT INTO meters (site_id, id, role, measures, first_seen, last_seen)"
                 " VALUES (%s, 'ups', 'it', 'ups_output', now(), now())", (site,))
    # 2025-12-31 23:00 in Shanghai: still 2025, so not counted in 2026.
    _hour(conn, site, datetime(2025, 12, 31, 15, tzinfo=UTC), 100, 200)
    # 2026-01-01 00:00 in Shanghai and later: counted.
    _hour(conn, site, datetime(2025, 12, 31, 16, tzinfo=UTC), 10, 12)
    _hour(conn, site, datetime(2026, 3, 1, 4, tzinfo=UTC), 30, 45, coverage=0.5)
    _hour(conn, site, datetime(2026, 7, 1, 4, tzinfo=UTC), None, 5)  # IT meter silent
    _hour(conn, datong.site.id, datetime(2026, 5, 1, tzinfo=UTC), 50, 55)
    bureau = create_key(conn, Role.BUREAU)

    answer = client.get("/v1/pue/annual", params={"year": 2026}, headers=bearer(bureau))
    assert answer.status_code == 200, answer.text
    by_site = {row["site"]: row for row in answer.json()}
    row = by_site["yangquan-1"]
    # (12 + 45) / (10 + 30) = 1.425: the silent-IT hour and the 2025 hour are left out, and it
    # is not the mean of the hourly ratios 1.2 and 1.5 (1.35).
    assert Decimal(row["pue"]) == Decimal("1.425")
    assert Decimal(row["it_kwh"]) == 40 and Decimal(row["facility_kwh"]) == 57
    assert (row["hours_measured"], row["hours_with_gaps"]) == (2, 1)
    assert row["hours_in_year"] == 8760 and row["it_metered_at"] == ["ups_output"]
    assert Decimal(by_site["datong-1"]["pue"]) == Decimal("1.1")

    mine = client.get("/v1/pue/annual", params={"year": 2026},
                      headers=bearer(datong.operator_key)).json()
    assert [r["site"] for r in mine] == ["datong-1"]
    assert client.get("/v1/pue/annual", params={"year": 1999},
                      headers=bearer(bureau)).status_code == 422
