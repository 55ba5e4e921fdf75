"""Prometheus in the loop: a real platform and a real agent on loopback, scraped by Debian's
Prometheus, and the dashboards' key series read back through Prometheus's HTTP API.

The agent samples a simulated site, spools, and uploads to the platform; one of its batches is
stamped a day ahead, so the platform refuses it and both sides count the refusal.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from servers import free_port, running_prometheus, serving

from agents.daemon import Agent, start_probes
from agents.exporter import AgentMetrics, serve
from agents.spool import Spool
from agents.uploader import Outcome, Uploader
from dashboards import grafana
from jinsuan.app import create_app
from jinsuan.kernel.auth import Role, create_key
from jinsuan.kernel.platform import Platform
from tests.clocks import FixedClock
from tests.site_agent import enrolled_simulated_agent

SITE = "taiyuan-loop"
FLEET = {"NVIDIA H800": 8, "Ascend910B3": 4}


@pytest.fixture
def scraped(tmp_path: Path, conn, settings, db) -> Iterator[str]:
    """The platform and an agent that has reported; Prometheus scraping both."""
    with serving(create_app(Platform(settings=settings, db=db))) as platform_url:
        config, identity = enrolled_simulated_agent(
            conn, platform_url, tmp_path, site=SITE, city="太原", enterprise="晋能智算", seed=5,
            fleet=FLEET)
        metrics = AgentMetrics(SITE)
        agent_port = free_port()
        exporter = serve(metrics, "127.0.0.1", agent_port)
        clock = FixedClock(time.time() - 60)
        try:
            with Spool(config.agent.state_dir / "spool.sqlite") as spool:
                agent = Agent(config, identity, spool, start_probes(config), metrics=metrics,
                              clock=clock)
                for _ in range(3):
                    agent.cycle()
                    clock.t += 10
                clock.t += 86_400  # stamped a day ahead: refused for good
                agent.cycle()
                uploader = Uploader(spool, platform_url, metrics=metrics, timeout_s=10)
                try:
                    outcomes = []
                    while (attempt := uploader.send_oldest()).outcome is not Outcome.IDLE:
                        outcomes.append(attempt.outcome)
                finally:
                    uploader.close()
                assert outcomes == [Outcome.ACKED] * 3 + [Outcome.DROPPED]
            platform = platform_url.removeprefix("http://")
            scraper_key = create_key(conn, Role.METRICS, label="prometheus")
            jobs = {"jinsuan-platform": [platform],
                    "jinsuan-sites": {"targets": [platform], "metrics_path": "/metrics/sites",
                                      "authorization": {"credentials": scraper_key}},
                    "jinsuan-agent": [f"127.0.0.1:{agent_port}"]}
            with running_prometheus(tmp_path / "prometheus", jobs, min_scrapes=2) as url:
                yield url
        finally:
            exporter.shutdown()


def query(url: str, expr: str) -> list[dict]:
    answer = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=5)
    assert answer.status_code == 200, answer.text
    return answer.json()["data"]["result"]


def value(url: str, expr: str) -> float:
    (result,) = query(url, expr)
    return float(result["value"][1])


def test_prometheus_scrapes_the_platform_and_the_agent(scraped: str) -> None:
    url = scraped
    # The platform: what it stored and what it refused.
    assert value(url, "sum(jinsuan_ingest_batches_total)") == 3
    assert value(url, "sum(jinsuan_ingest_rejected_total)") == 1
    assert value(url, f'jinsuan_site_accelerators_connected{{site="{SITE}"}}') == 12
    assert value(url, f'jinsuan_site_fp16_pflops_connected{{site="{SITE}", city="太原"}}') > 0
    # The agent: its own health and the latest readings of every device.
    assert value(url, 'jinsuan_agent_batches_rejected_total{code="422"}') == 1
    assert value(url, "jinsuan_agent_spool_pending_batches") == 0
    assert value(url, "count(jinsuan_accelerator_power_watts)") == sum(FLEET.values())
    models = {r["metric"]["model"] for r in query(url, "jinsuan_accelerator_up")}
    assert models == set(FLEET)


def test_site_detail_agent_panels_find_the_sites_agent(scraped: str) -> None:
    """The dashboard's own PromQL, with the site chosen, finds this agent and no other."""
    dashboard = grafana.load("jinsuan-site-detail")
    spool = grafana.panel(dashboard, "Spool backlog")["targets"][0]["expr"]
    found = query(scraped, spool.replace("$site_name", SITE))
    assert [r["metric"]["job"] for r in found] == ["jinsuan-agent"]
    assert query(scraped, spool.replace("$site_name", "another-site")) == []
    refused = grafana.panel(dashboard, "Reports refused by the platform")["targets"][0]["expr"]
    found = query(scraped, refused.replace("$site_name", SITE)
                  .replace("$__rate_interval", "1h"))
    assert [r["metric"]["code"] for r in found] == ["422"]
