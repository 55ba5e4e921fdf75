"""End to end with the real platform: simulated site probe -> agent cycle -> spool -> uploader ->
the platform's intake (uvicorn on loopback) -> PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import serving

from agents.daemon import Agent, start_probes
from agents.spool import Spool
from agents.uploader import Outcome, Uploader
from jinsuan.app import create_app
from jinsuan.kernel.platform import Platform
from tests.clocks import FixedClock
from tests.site_agent import enrolled_simulated_agent


@pytest.fixture
def platform_url(settings, db) -> Iterator[str]:
    with serving(create_app(Platform(settings=settings, db=db))) as url:
        yield url


def test_simulated_site_reports_reach_the_store_exactly_once(tmp_path: Path, conn, platform_url):
    config, identity = enrolled_simulated_agent(
        conn, platform_url, tmp_path, site="taiyuan-e2e", city="Taiyuan",
        enterprise="Shanxi Compute Co", seed=3, fleet={"NVIDIA H800": 8, "Ascend910B3": 4})
    start = time.time() - 60
    clock = FixedClock(start)
    with Spool(config.agent.state_dir / "spool.sqlite") as spool:
        agent = Agent(config, identity, spool, start_probes(config), clock=clock)
        reports = []
        for k in range(3):
            clock.t = start + 10 * k
            reports.append(agent.cycle())
        clock.t = time.time() + 86_400  # a batch stamped a day ahead: the platform refuses it
        future = agent.cycle()
        uploader = Uploader(spool, platform_url, timeout_s=10)
        try:
            outcomes = []
            while (attempt := uploader.send_oldest()).outcome is not Outcome.IDLE:
                outcomes.append((attempt.outcome, attempt.seq, attempt.detail))
        finally:
            uploader.close()
        assert outcomes[:3] == [(Outcome.ACKED, r.seq, "stored") for r in reports]
        assert outcomes[3][:2] == (Outcome.DROPPED, future.seq)
        assert outcomes[3][2].startswith("HTTP 422 invalid at series[0].points[0].ts: ")
        assert "clock skew" in outcomes[3][2]
        assert spool.pending() == 0
        assert [r.seq for r in spool.rejected()] == [future.seq]

    sent = sum(r.series for r in reports)  # one point per series per cycle
    stored = conn.execute(
        "SELECT count(*) FROM samples x JOIN series s ON s.id = x.series_id"
        " WHERE s.site_id = %s", (identity.enrolment.site_id,)).fetchone()[0]
    assert stored == sent > 0
    assert conn.execute("SELECT last_seq FROM agents WHERE id = %s",
                        (identity.agent_id,)).fetchone()[0] == 3
    assert conn.execute("SELECT count(*) FROM accelerators").fetchone()[0] == 12
