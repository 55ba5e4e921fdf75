"""End to end with the real platform: simulated site probe -> agent cycle -> spool -> uploader ->
the platform's intake (uvicorn on loopback) -> PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from servers import serving

from agents.daemon import Agent, start_probes
from agents.exporter import AgentMetrics
from agents.spool import Spool, read_summary
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


def test_a_reinstalled_agent_that_lost_its_spool_loses_and_doubles_nothing(
        tmp_path: Path, conn, platform_url):
    """The operator reinstalls the host and restores only the agent's identity: its spool is
    gone, so its numbers start again at 1 under seqs the platform already holds. The platform
    refuses the new bodies (409, naming the first seq it has not stored) instead of answering
    "duplicate" and dropping them; the agent renumbers its unsent batches from there, re-signs
    them and sends them again. Every sample measured is stored exactly once."""
    config, identity = enrolled_simulated_agent(
        conn, platform_url, tmp_path, site="reinstalled", city="Taiyuan",
        enterprise="Shanxi Compute Co", seed=5, fleet={"NVIDIA H800": 4})
    start = time.time() - 600
    clock = FixedClock(start)
    spool_path = config.agent.state_dir / "spool.sqlite"
    metrics = AgentMetrics(config.site.name)

    def cycles_then_upload(first: int, n: int) -> list[tuple[Outcome, int | None]]:
        with Spool(spool_path) as spool:
            agent = Agent(config, identity, spool, start_probes(config), clock=clock)
            for k in range(first, first + n):
                clock.t = start + 10 * k
                agent.cycle()
            uploader = Uploader(spool, platform_url, timeout_s=10, key=identity.key,
                                metrics=metrics)
            try:
                outcomes = []
                while (attempt := uploader.send_oldest()).outcome is not Outcome.IDLE:
                    outcomes.append((attempt.outcome, attempt.seq))
            finally:
                uploader.close()
            assert spool.pending() == 0
            return outcomes

    assert cycles_then_upload(0, 3) == [(Outcome.ACKED, seq) for seq in (1, 2, 3)]
    for leftover in spool_path.parent.glob("spool.sqlite*"):
        leftover.unlink()  # the reinstall: identity restored, spool lost
    after = cycles_then_upload(3, 4)
    assert after == [(Outcome.RENUMBERED, 1)] + [(Outcome.ACKED, seq) for seq in (4, 5, 6, 7)]

    stored = conn.execute(
        "SELECT count(*), count(DISTINCT (x.series_id, x.ts)), count(DISTINCT x.ts)"
        " FROM samples x JOIN series s ON s.id = x.series_id WHERE s.site_id = %s",
        (identity.enrolment.site_id,)).fetchone()
    assert stored[0] == stored[1] > 0  # nothing stored twice
    assert stored[2] == 7  # every cycle's reading, the three before and the four after
    assert [seq for (seq,) in conn.execute(
        "SELECT seq FROM reports WHERE agent_id = %s ORDER BY seq",
        (identity.agent_id,)).fetchall()] == list(range(1, 8))
    assert metrics.seq_conflicts._value.get() == 1
    summary = read_summary(spool_path)
    assert summary is not None and [(old, new, n) for _, old, new, n in
                                    summary.renumberings] == [(1, 4, 4)]
    scraped = httpx.get(f"{platform_url}/metrics").text
    assert 'reason="seq_conflict"} 1.0' in scraped
